//! `govbox-daemon`: govboxd, the appliance's HTTPS inference server.
//!
//! It serves the OpenAI-compatible API (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/models`), `/healthz`, `/readyz` and `/metrics` over rustls, answers the
//! `govbox` CLI on a Unix admin socket, and talks to systemd (readiness, status, watchdog,
//! graceful stop). It is thin by design: it parses HTTP into typed requests and hands them to the
//! engine, and owns no model math, no crypto formats and no client-store logic.
//!
//! **What it trusts:** the state folder that provisioning wrote (the box's CA, the server key and
//! the client store), the config file, and the trust root, through which it accepts only signed
//! model packages (unsigned config folders only under `--insecure-dev-models`). It trusts nothing a
//! network peer sends: every request is authenticated (a client certificate of the box's CA, or a
//! bearer token), authorised per model, rate- and budget-limited, and bounded in size and time.
//!
//! **What it guarantees:** no log line carries a prompt, an answer, a token, a key or a request
//! body, at any log level; every error reaches the client in OpenAI's error shape without echoing
//! the request; a revoked client is refused on its next request; a client that disconnects stops
//! its generation at the next token; SIGTERM lets running answers finish (up to a grace period)
//! and exits 0. The daemon opens no outbound connection.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod admission;
pub mod api;
pub mod auditing;
pub mod auth;
pub mod config;
pub mod content;
pub mod daemon;
pub mod device;
pub mod logging;
pub mod metrics;
pub mod models;
pub mod packages;
pub mod policy;
pub mod quota;
pub mod refusals;
pub mod sandbox;
pub mod server;
pub mod state;
pub mod systemd;
#[cfg(feature = "tlcp")]
pub mod tlcp;
pub mod tls;
pub mod trust_sync;
pub mod update_journal;

pub use daemon::{DaemonError, Options, run};
