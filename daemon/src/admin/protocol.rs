//! The admin protocol's messages and what each command does.

use std::sync::Arc;

use govbox_provisioning::{ClientName, ClientRecord, DEFAULT_CERT_DAYS, IssuedClient, NewClient, ProvisionError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::state::AppState;

/// One request line.
#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    /// The daemon's state.
    Status,
    /// Add a client; the answer holds its certificate, key and (if asked) token.
    ClientAdd {
        /// Its name.
        name: String,
        /// Models it may use; empty or absent means all.
        #[serde(default)]
        models: Vec<String>,
        /// Requests per minute; absent means no limit.
        rpm: Option<u32>,
        /// Tokens per day; absent means no limit.
        tokens_per_day: Option<u64>,
        /// Certificate validity in days (default 365).
        cert_days: Option<u32>,
        /// Also issue a bearer token.
        #[serde(default)]
        token: bool,
    },
    /// All clients.
    ClientList,
    /// Revoke a client.
    ClientRevoke {
        /// Its name.
        name: String,
    },
    /// Issue a new certificate for a client.
    ClientRenew {
        /// Its name.
        name: String,
        /// Certificate validity in days (default 365).
        cert_days: Option<u32>,
    },
}

impl AdminRequest {
    /// The command name, for the log.
    pub fn name(&self) -> &'static str {
        match self {
            AdminRequest::Status => "status",
            AdminRequest::ClientAdd { .. } => "client_add",
            AdminRequest::ClientList => "client_list",
            AdminRequest::ClientRevoke { .. } => "client_revoke",
            AdminRequest::ClientRenew { .. } => "client_renew",
        }
    }

    /// The client the command is about, for the log.
    pub fn subject(&self) -> Option<&str> {
        match self {
            AdminRequest::ClientAdd { name, .. }
            | AdminRequest::ClientRevoke { name }
            | AdminRequest::ClientRenew { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// An error answer's body.
#[derive(Debug, Serialize)]
pub struct AdminFailure {
    /// A stable short code.
    pub code: &'static str,
    /// What went wrong, in words.
    pub message: String,
}

impl From<ProvisionError> for AdminFailure {
    fn from(e: ProvisionError) -> Self {
        AdminFailure { code: e.code(), message: e.to_string() }
    }
}

fn issued_json(i: IssuedClient) -> Value {
    json!({
        "client": i.record,
        "cert_pem": i.cert.cert_pem,
        "key_pem": i.cert.key_pem,
        "ca_pem": i.ca_pem,
        "token": i.token.as_ref().map(|t| t.expose().to_string()),
    })
}

fn client_json(r: &ClientRecord) -> Value {
    json!(r)
}

/// Runs one command (blocking: store writes flush to disk and certificates are signed).
pub fn execute(state: &Arc<AppState>, req: AdminRequest) -> Result<Value, AdminFailure> {
    let store = &state.store;
    match req {
        AdminRequest::Status => Ok(status(state)),
        AdminRequest::ClientAdd { name, models, rpm, tokens_per_day, cert_days, token } => {
            let name = ClientName::parse(&name)?;
            let new = NewClient {
                name,
                models,
                rpm,
                tokens_per_day,
                cert_days: cert_days.unwrap_or(DEFAULT_CERT_DAYS),
                with_token: token,
            };
            Ok(issued_json(store.add(new)?))
        }
        AdminRequest::ClientList => {
            let clients: Vec<Value> = store.list()?.iter().map(client_json).collect();
            Ok(json!({ "clients": clients }))
        }
        AdminRequest::ClientRevoke { name } => Ok(json!({ "client": client_json(&store.revoke(&name)?) })),
        AdminRequest::ClientRenew { name, cert_days } => {
            Ok(issued_json(store.renew(&name, cert_days.unwrap_or(DEFAULT_CERT_DAYS))?))
        }
    }
}

fn status(state: &AppState) -> Value {
    let info = state.backend.info();
    let models: Vec<Value> = state
        .models
        .get()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    json!({
                        "name": m.name,
                        "kind": m.kind.as_str(),
                        "format": m.engine.format(),
                        "path": m.path.display().to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "ready": state.ready(),
        "shutting_down": state.admission.is_closed(),
        "listen": state.listen.to_string(),
        "configured_models": state.config.models.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
        "models": models,
        "backend": {
            "kind": format!("{:?}", info.kind).to_lowercase(),
            "name": info.name,
            "threads": info.threads,
            "simulated": info.simulated,
            "memory_used": info.memory_used,
            "memory_total": info.memory_total,
        },
        "active_generations": state.metrics.active.get(),
        "queued_requests": state.metrics.queued.get(),
        "open_connections": state.metrics.connections.get(),
    })
}
