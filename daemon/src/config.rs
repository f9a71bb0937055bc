//! `govbox.toml`: the daemon's settings.
//!
//! Every setting has a default, written once on the `Default` impl of its section with the reason
//! for it; `dist/govbox.toml` shows the same defaults to the operator. Unknown keys are an error
//! when the file's `config_version` is one this daemon knows, and only a warning when the file
//! comes from a newer govbox, so that a rollback to an older daemon can always start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use govbox_drivers::{DeviceSpec, KvDType};
use serde::{Deserialize, Serialize};

use crate::logging::LogLevel;

/// The `config_version` this daemon writes and fully understands.
pub const CONFIG_VERSION: u32 = 2;
/// Config files are a few kilobytes; anything much larger is not a config file.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is larger than any config file should be.
    #[error("config file {}: {size} bytes is larger than the 1 MiB a config file may have", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file is not valid TOML, or a value has the wrong type, or a key is unknown.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser reported (it quotes the config file, never a request).
        message: String,
    },
    /// A value is out of its allowed range.
    #[error("config file {}: {key}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The setting.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The format version of this file.
    pub config_version: u32,
    /// Address and port of the HTTPS listener.
    pub listen: SocketAddr,
    /// Which device runs the models: `auto` (Ascend, then CUDA, then the CPU), `cpu`, `cuda:N`
    /// or `ascend:N`.
    #[serde(with = "as_text")]
    pub device: DeviceSpec,
    /// Worker threads of the CPU backend; 0 means one per core.
    pub threads: usize,
    /// `error`, `warn`, `info`, `debug` or `trace`; each `-v` on the command line raises it.
    #[serde(with = "as_text")]
    pub log_level: LogLevel,
    /// The admin socket; empty means `STATE/admin.sock`.
    pub admin_socket: PathBuf,
    /// TLS and client authentication.
    pub tls: TlsConfig,
    /// The TLCP (GB/T 38636, 国密 SSL) listener; off unless `listen` is set.
    pub tlcp: TlcpConfig,
    /// Connection and request limits.
    pub limits: Limits,
    /// How requests are queued and run.
    pub serving: Serving,
    /// Re-hash every installed package's payload at start-up (signatures are always re-checked).
    pub verify_payload_on_start: bool,
    /// The audit log.
    pub audit: AuditConfig,
    /// Optional encrypted retention of request content.
    pub retention: RetentionConfig,
    /// What govboxd gives up at start-up (the egress lockdown).
    pub sandbox: crate::sandbox::SandboxConfig,
    /// Content safety: which library applies.
    pub policy: PolicyConfig,
    /// Unsigned model folders, served only under `--insecure-dev-models` (development).
    pub models: Vec<ModelEntry>,
}

/// `[policy]`: which content-safety library (`govbox policy list`) applies to requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The library for clients that name none: a library name, or `off` to serve unfiltered
    /// (an explicit choice, recorded in the audit log at every start). Empty: the one imported
    /// library when there is exactly one, none while none is imported, and a refusal (503
    /// `policy_unavailable`) when several are and none is named.
    pub default: String,
}

// Written out, not derived, so that the default carries its reason like every other one.
#[allow(clippy::derivable_impls)]
impl Default for PolicyConfig {
    fn default() -> Self {
        // Empty: a box filters with its library as soon as one is imported, with no config
        // change, and a freshly installed box without one still serves.
        PolicyConfig { default: String::new() }
    }
}

/// `[audit]`: checkpoints and retention of the tamper-evident audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// A signed tree head after this many entries.
    pub checkpoint_every: u64,
    /// A signed tree head after this many seconds with new entries.
    pub checkpoint_interval_secs: u64,
    /// Days that entries are kept (exported entries only, unless a prune is forced).
    pub retention_days: u32,
    /// Where every signed tree head is also sent, as RFC 5424 syslog over TCP or TLS:
    /// `tcp://IP:PORT`, `tls://IP:PORT`, or empty for none (see `govbox_audit::witness`).
    pub witness: String,
    /// With `tls://`: PEM file of the CA the log server's certificate must chain to.
    pub witness_ca: PathBuf,
    /// With `tls://`: the DNS name in the log server's certificate; empty: its IP address.
    pub witness_server_name: String,
    /// With `tls://`: the PEM certificate chain the box presents when the log server asks for
    /// one (mutual TLS); empty: none. Needs `witness_client_key`.
    pub witness_client_cert: PathBuf,
    /// The PKCS#8 PEM private key of `witness_client_cert`.
    pub witness_client_key: PathBuf,
    /// The TPM that anchors the latest signed head (`govbox_audit::anchor`), as a TCTI:
    /// `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`; empty: none.
    pub tpm_anchor: String,
    /// The NV index of the anchor's record; its counter is the next index.
    pub tpm_anchor_index: u32,
    /// The least time between anchorings of heads made by the timer or the entry count.
    pub tpm_anchor_interval_secs: u64,
    /// govbox-auditd's socket: govboxd appends there and holds neither the store nor the audit
    /// key. Empty: the single-process mode, where govboxd opens `STATE/audit` itself (tests, demo).
    pub socket: PathBuf,
}

/// `[retention]`: optional encrypted retention of prompts and responses (see `crate::content`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Keep each request's prompt and response, AES-256-GCM sealed under the device's content key.
    pub store_content: bool,
    /// Days that stored content is kept.
    pub content_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        // Off: content is kept only where a policy asks for it, and then for 30 days.
        RetentionConfig { store_content: false, content_days: 30 }
    }
}

impl AuditConfig {
    /// The TLS settings of the witness.
    pub fn witness_tls(&self) -> govbox_audit::WitnessTls {
        govbox_audit::WitnessTls {
            ca: (!self.witness_ca.as_os_str().is_empty()).then(|| self.witness_ca.clone()),
            server_name: (!self.witness_server_name.is_empty()).then(|| self.witness_server_name.clone()),
            client_cert: (!self.witness_client_cert.as_os_str().is_empty()).then(|| self.witness_client_cert.clone()),
            client_key: (!self.witness_client_key.as_os_str().is_empty()).then(|| self.witness_client_key.clone()),
        }
    }

    /// The TPM anchor, `None` when `tpm_anchor` is empty.
    pub fn tpm_anchor(&self) -> Option<govbox_audit::TpmAnchorConfig> {
        (!self.tpm_anchor.is_empty()).then(|| govbox_audit::TpmAnchorConfig {
            tcti: self.tpm_anchor.clone(),
            nv_index: self.tpm_anchor_index,
            interval: std::time::Duration::from_secs(self.tpm_anchor_interval_secs),
        })
    }

    /// The parsed `witness`, `None` when it is empty.
    pub fn witness_addr(&self) -> Result<Option<govbox_audit::WitnessAddr>, String> {
        (!self.witness.is_empty()).then(|| self.witness.parse()).transpose()
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            // 1000 entries or 60 s: a lost tail is small, and signing stays far below 1 % of the work.
            checkpoint_every: 1000,
            checkpoint_interval_secs: 60,
            // 180 days: China's six-month minimum for network logs (网络安全法 第二十一条).
            retention_days: 180,
            // None: the agency's log server is site-specific. Without one, the newest entries
            // can be cut with file access alone until the next export (audit/README.md).
            witness: String::new(),
            witness_ca: PathBuf::new(),
            witness_server_name: String::new(),
            // No client certificate: most log servers authenticate only themselves.
            witness_client_cert: PathBuf::new(),
            witness_client_key: PathBuf::new(),
            // None: not every box has a TPM (audit/README.md says what it adds).
            tpm_anchor: String::new(),
            tpm_anchor_index: govbox_audit::anchor::DEFAULT_NV_INDEX,
            // One NV write a minute at most: TPM memory wears (govbox_audit::anchor).
            tpm_anchor_interval_secs: govbox_audit::anchor::DEFAULT_INTERVAL.as_secs(),
            // The single-process mode, so that `--state DIR` alone runs (tests, demo); the
            // packaged config names govbox-auditd's socket.
            socket: PathBuf::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            config_version: CONFIG_VERSION,
            // Every interface, port 8443: intranet applications reach the box by its address, and
            // 8443 needs no privilege to bind.
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            // The accelerator when there is one: the box is sold with one, and the CPU still works
            // when its driver is missing.
            device: DeviceSpec::Auto,
            // All cores: the box exists to run models.
            threads: 0,
            // Operational messages only; request lines carry no content at any level.
            log_level: LogLevel(log::LevelFilter::Info),
            // Beside the state it administers, so that `--state DIR` alone finds it (tests, demo);
            // the packaged config moves it to /run/govbox, where the CLI looks by default.
            admin_socket: PathBuf::new(),
            tls: TlsConfig::default(),
            tlcp: TlcpConfig::default(),
            limits: Limits::default(),
            serving: Serving::default(),
            // Re-hash at start: a changed byte on disk is found before it is served.
            verify_payload_on_start: true,
            audit: AuditConfig::default(),
            retention: RetentionConfig::default(),
            // The reasons are on SandboxConfig's Default impl.
            sandbox: crate::sandbox::SandboxConfig::default(),
            // The reasons are on PolicyConfig's Default impl.
            policy: PolicyConfig::default(),
            // No model until one is configured: the daemon still serves /healthz and the admin socket.
            models: Vec::new(),
        }
    }
}

/// How clients must authenticate at the TLS layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Every connection must present a client certificate of the box's CA; tokens are refused.
    Required,
    /// A client certificate of the box's CA, or a bearer token.
    Optional,
    /// No client certificates are asked for; bearer tokens only.
    Off,
}

/// `[tls]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `required`, `optional` or `off`.
    pub mtls: MtlsMode,
}

impl Default for TlsConfig {
    fn default() -> Self {
        // Optional: most OpenAI SDKs make bearer tokens easy and client certificates hard, and
        // agency IT decides per client which one to issue.
        TlsConfig { mtls: MtlsMode::Optional }
    }
}

/// `[tlcp]`: a second listener speaking TLCP (GB/T 38636-2020) with the box's SM2 certificates
/// (`govbox tls tlcp-init`), serving the same API, auth, quotas and audit as the HTTPS port.
/// Client certificate pairs are asked for as `tls.mtls` says. Needs a govboxd built with the
/// `tlcp` feature (the release build and the .deb).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlcpConfig {
    /// Address and port, e.g. `0.0.0.0:8444`; absent means no TLCP listener.
    pub listen: Option<SocketAddr>,
}

/// `[limits]`: protection against clients that send too much or too slowly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body, in bytes; larger gives 413.
    pub max_body_bytes: usize,
    /// Seconds a client has to finish the TLS handshake and to send a request's headers (a new
    /// connection's first request must begin within it too).
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's body.
    pub body_timeout_secs: u64,
    /// Seconds a connection may sit with no traffic before it is closed.
    pub idle_timeout_secs: u64,
    /// Open connections at most; further connections are closed at once.
    pub max_connections: usize,
    /// Open connections from one IP address at most; further ones from it are closed at once.
    pub max_connections_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // 1 MiB holds a long conversation or a large embedding batch; more is a mistake or an attack.
            max_body_bytes: 1 << 20,
            // 10 s is ample on an intranet and short enough that slow-header clients cannot pile up.
            header_timeout_secs: 10,
            // 30 s moves a full 1 MiB body at 35 kB/s.
            body_timeout_secs: 30,
            // 60 s keeps SDK connection pools useful without holding sockets forever.
            idle_timeout_secs: 60,
            // 512 connections: far above what the accelerators can serve, far below the fd limit.
            max_connections: 512,
            // 32: one application server's SDK pool (one request per HTTP/1.1 connection) already
            // has four times the engine's default 8 slots; at 512 in all, filling the box takes
            // 16 addresses, so one host holding idle connections cannot lock the others out.
            max_connections_per_address: 32,
        }
    }
}

/// `[serving]`: admission, deadlines and shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Serving {
    /// Requests that run on the engine at once (generation and embedding); also the sequences a
    /// sliding-window KV pool is sized for (`EngineOptions::max_sequences`).
    pub max_concurrent: usize,
    /// Requests that may wait for a free slot; more give 503.
    pub queue_depth: usize,
    /// Seconds from the request's arrival to the end of its answer; longer gives 504 (or ends a stream with an error).
    pub request_deadline_secs: u64,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// Tokens the KV cache of each chat model holds across all running requests. This is also
    /// the prefix cache's cap: blocks of ended requests stay reusable until new ones need them.
    pub kv_tokens: usize,
    /// The element type of the KV cache: `f32`, `f16` or `q8_0` (see [`Serving::engine_options`]).
    #[serde(with = "as_text")]
    pub kv_dtype: KvDType,
    /// Seconds that SIGTERM waits for running answers to finish before the daemon exits.
    pub shutdown_grace_secs: u64,
    /// Who may reuse whose cached prompt prefixes: `per_client`, `shared` or `off`.
    pub prefix_cache: PrefixCacheMode,
    /// Requests per minute of a client added without `--rpm`; 0 means no limit.
    pub default_client_rpm: u32,
    /// Batch-invariant matmul for every weight format on the CPU backend
    /// (`CpuOptions::batch_invariant`): a request's answer is then bitwise the same whatever
    /// else shares its pass for F32/F16/BF16 and Q4_K/Q5_K weights too, at their measured cost.
    /// Q8_0, Q4_0/1 and Q5_0/1 are invariant either way. `true` with an accelerator device is
    /// refused at startup.
    pub batch_invariant: bool,
}

/// `[serving] prefix_cache`: which requests share cached prompt prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixCacheMode {
    /// Each client reuses only its own prefixes: another client's reuse (its
    /// `cached_tokens`, its time to first token) says nothing about what this one sent.
    PerClient,
    /// Every client reuses every prefix: the most reuse, but a client can learn, block by
    /// block, whether another has sent a prompt that starts as its guess does.
    Shared,
    /// Nothing is reused.
    Off,
}

impl Serving {
    /// What the engine of each chat model is loaded with.
    pub fn engine_options(&self) -> govbox_engine::EngineOptions {
        govbox_engine::EngineOptions {
            kv_tokens: self.kv_tokens,
            kv_dtype: self.kv_dtype,
            // The requests that run at once: what a sliding-window pool is sized for.
            max_sequences: self.max_concurrent,
        }
    }
}

impl Default for Serving {
    fn default() -> Self {
        Serving {
            // 8 requests decode together: the engine batches every running sequence into one
            // forward pass per token, so the weights are read once per step for all of them.
            max_concurrent: 8,
            // 64 waiting requests are several minutes of work on a CPU; beyond that, fail fast.
            queue_depth: 64,
            // 300 s bounds the longest answer a CPU box should attempt.
            request_deadline_secs: 300,
            // 1024 tokens answer almost every question without letting a forgotten limit run long.
            default_max_tokens: 1024,
            // The engine's own defaults, whose reasons are on `EngineOptions`' Default impl.
            kv_tokens: govbox_engine::EngineOptions::default().kv_tokens,
            kv_dtype: govbox_engine::EngineOptions::default().kv_dtype,
            // 30 s finishes a typical streamed answer and stays under systemd's 90 s stop timeout.
            shutdown_grace_secs: 30,
            // Per client: clients of one box are separate applications, and a shared cache lets
            // one probe another's prompts; a client's own system prompt is still reused.
            prefix_cache: PrefixCacheMode::PerClient,
            // 600 a minute (10 a second) is far more than an application with people behind it
            // sends, and stops one client's runaway loop from taking the box from the others.
            default_client_rpm: 600,
            // Off: the fast kernels, invariant for Q8_0/Q4_x/Q5_0/Q5_1 only; on costs about 13 to
            // 17 % of F16 prefill and Q4_K decode and 20 % of F32 batch embedding (bench/README.md).
            batch_invariant: false,
        }
    }
}

/// `[[models]]`: one model to serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The name clients ask for in `model`.
    pub name: String,
    /// A `.gguf` file, a HuggingFace decoder folder or a sentence-transformers folder; relative
    /// paths are taken from the config file's folder.
    pub path: PathBuf,
}

impl Config {
    /// Reads and checks a config file; returns it with warnings about ignored keys (see
    /// [`Config::parse`]), to be logged once logging is set up.
    pub fn load(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let read_err = |source| ConfigError::Read { path: path.to_path_buf(), source };
        let size = std::fs::metadata(path).map_err(read_err)?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path: path.to_path_buf(), size });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let (mut config, warnings) = Config::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for m in &mut config.models {
            if m.path.is_relative() {
                m.path = base.join(&m.path);
            }
        }
        Ok((config, warnings))
    }

    /// Parses config text; returns the config and warnings about keys ignored because the file
    /// comes from a newer govbox. `path` is used in messages only.
    pub fn parse(text: &str, path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let parse_err = |e: toml::de::Error| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() };
        let mut table: toml::Table = toml::from_str(text).map_err(parse_err)?;
        let version = match table.get("config_version") {
            None => CONFIG_VERSION,
            Some(toml::Value::Integer(v)) if *v >= 1 => u32::try_from(*v).unwrap_or(u32::MAX),
            Some(_) => {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    key: "config_version".into(),
                    reason: "must be a positive integer".into(),
                });
            }
        };
        let mut warnings = Vec::new();
        if version > CONFIG_VERSION {
            warnings.push(format!(
                "config file {}: config_version {version} is newer than this govboxd knows ({CONFIG_VERSION}); \
                 settings it does not know are ignored",
                path.display()
            ));
            prune_unknown(&mut table, &known_keys(), "", &mut warnings, path);
            table.insert("config_version".into(), toml::Value::Integer(CONFIG_VERSION.into()));
        }
        let config: Config = table.try_into().map_err(parse_err)?;
        config.check(path)?;
        Ok((config, warnings))
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| {
            Err(ConfigError::Invalid { path: path.to_path_buf(), key: key.into(), reason: reason.into() })
        };
        let l = &self.limits;
        let s = &self.serving;
        for (key, v) in [
            ("limits.max_body_bytes", l.max_body_bytes as u64),
            ("limits.header_timeout_secs", l.header_timeout_secs),
            ("limits.body_timeout_secs", l.body_timeout_secs),
            ("limits.idle_timeout_secs", l.idle_timeout_secs),
            ("limits.max_connections", l.max_connections as u64),
            ("limits.max_connections_per_address", l.max_connections_per_address as u64),
            ("serving.max_concurrent", s.max_concurrent as u64),
            ("serving.request_deadline_secs", s.request_deadline_secs),
            ("serving.default_max_tokens", s.default_max_tokens as u64),
            ("serving.kv_tokens", s.kv_tokens as u64),
            ("audit.checkpoint_every", self.audit.checkpoint_every),
            ("audit.checkpoint_interval_secs", self.audit.checkpoint_interval_secs),
            ("audit.retention_days", u64::from(self.audit.retention_days)),
            ("retention.content_days", u64::from(self.retention.content_days)),
        ] {
            if v == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        match (self.audit.witness_addr(), self.audit.witness_ca.as_os_str().is_empty()) {
            (Err(e), _) => return invalid("audit.witness", &e),
            (Ok(Some(w)), true) if w.transport == govbox_audit::WitnessTransport::Tls => {
                return invalid(
                    "audit.witness_ca",
                    "a tls:// witness needs the PEM file of the CA that issued the log server's certificate",
                );
            }
            (Ok(w), false) if w.is_none_or(|w| w.transport == govbox_audit::WitnessTransport::Tcp) => {
                return invalid("audit.witness_ca", "is set, but the witness is not tls:// (use tls://IP:PORT)");
            }
            _ => {}
        }
        if self.audit.witness_client_cert.as_os_str().is_empty() != self.audit.witness_client_key.as_os_str().is_empty()
        {
            return invalid(
                "audit.witness_client_cert",
                "and audit.witness_client_key go together: set both or neither",
            );
        }
        if let Some(anchor) = self.audit.tpm_anchor()
            && let Err(e) = anchor.validate()
        {
            return invalid("audit.tpm_anchor", &e.to_string());
        }
        // tokio's semaphore holds at most usize::MAX >> 3 permits; any real limit is far below.
        if l.max_connections > 1 << 20 || s.max_concurrent > 1 << 20 {
            return invalid("limits", "max_connections and max_concurrent must be at most 1048576");
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.models {
            if !is_model_name(&m.name) {
                return invalid("models.name", "1 to 128 characters of A-Z, a-z, 0-9, '.', '_', '-', ':' or '/'");
            }
            if !seen.insert(m.name.as_str()) {
                return invalid("models.name", &format!("model '{}' is configured twice", m.name));
            }
        }
        Ok(())
    }
}

/// Settings held as their parsed types and written in the file as text, through their
/// `FromStr` and `Display`: a value that does not parse is refused when the file is read, with
/// the key and the parser's reason, so nothing downstream parses it again.
mod as_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// The keys this version knows, as a table shaped like the config: a table for each section and,
/// for `models`, a one-element array holding the keys of one entry.
fn known_keys() -> toml::Table {
    let mut t = toml::Table::try_from(Config::default()).unwrap_or_default();
    let entry = ModelEntry { name: String::new(), path: PathBuf::new() };
    let entry = toml::Table::try_from(entry).unwrap_or_default();
    t.insert("models".into(), toml::Value::Array(vec![toml::Value::Table(entry)]));
    t
}

fn prune_unknown(table: &mut toml::Table, known: &toml::Table, prefix: &str, warnings: &mut Vec<String>, path: &Path) {
    table.retain(|k, _| {
        let keep = known.contains_key(k);
        if !keep {
            warnings.push(format!("config file {}: ignoring unknown setting '{prefix}{k}'", path.display()));
        }
        keep
    });
    for (k, v) in table.iter_mut() {
        let name = format!("{prefix}{k}.");
        match (v, known.get(k)) {
            (toml::Value::Table(t), Some(toml::Value::Table(kt))) => prune_unknown(t, kt, &name, warnings, path),
            (toml::Value::Array(items), Some(toml::Value::Array(kitems))) => {
                if let Some(toml::Value::Table(kt)) = kitems.first() {
                    for item in items.iter_mut() {
                        if let toml::Value::Table(t) = item {
                            prune_unknown(t, kt, &name, warnings, path);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// The shape of a configured model name.
pub fn is_model_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
        Config::parse(text, Path::new("govbox.toml"))
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let (c, w) = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert!(w.is_empty());
    }

    #[test]
    fn the_shipped_config_is_the_defaults_but_the_admin_socket() {
        let text = include_str!("../../dist/govbox.toml");
        let (mut c, w) = parse(text).unwrap();
        assert!(w.is_empty(), "{w:?}");
        // The one production setting: the socket where the CLI looks by default.
        assert_eq!(c.admin_socket, PathBuf::from("/run/govbox/admin.sock"));
        c.admin_socket = PathBuf::new();
        assert_eq!(c.audit.socket, PathBuf::from("/run/govbox-audit/audit.sock"));
        c.audit.socket = PathBuf::new();
        assert_eq!(c, Config::default(), "dist/govbox.toml must show exactly the built-in defaults");
    }

    #[test]
    fn unknown_keys_are_refused_in_this_version() {
        let e = parse("config_version = 1\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
        let e = parse("[limits]\nmax_body = 3\n").unwrap_err();
        assert!(e.to_string().contains("max_body"), "{e}");
        let e = parse("[[models]]\nname = \"a\"\npath = \"x\"\nsha = 1\n").unwrap_err();
        assert!(e.to_string().contains("sha"), "{e}");
    }

    #[test]
    fn unknown_keys_of_a_newer_version_are_warnings() {
        let text = "config_version = 3\nfuture = true\n[limits]\nmax_body_bytes = 5\nnew_limit = 1\n\
                    [[models]]\nname = \"m\"\npath = \"p\"\nsigned = true\n[newsection]\nx = 1\n";
        let (c, w) = parse(text).unwrap();
        assert_eq!(c.limits.max_body_bytes, 5);
        assert_eq!(c.models[0].name, "m");
        let all = w.join("\n");
        for k in ["'future'", "'limits.new_limit'", "'models.signed'", "'newsection'", "newer"] {
            assert!(all.contains(k), "{k} missing from {all}");
        }
    }

    #[test]
    fn values_are_checked() {
        assert!(parse("[tls]\nmtls = \"sometimes\"\n").is_err());
        assert!(parse("[serving]\nmax_concurrent = 0\n").unwrap_err().to_string().contains("max_concurrent"));
        assert!(parse("log_level = \"loud\"\n").unwrap_err().to_string().contains("log_level"));
        let dup = "[[models]]\nname = \"a\"\npath = \"x\"\n[[models]]\nname = \"a\"\npath = \"y\"\n";
        assert!(parse(dup).unwrap_err().to_string().contains("twice"));
        assert!(parse("config_version = 0\n").is_err());
        let tls_no_ca = parse("[audit]\nwitness = \"tls://10.0.0.5:6514\"\n").unwrap_err().to_string();
        assert!(tls_no_ca.contains("audit.witness_ca"), "{tls_no_ca}");
        let ca_tcp = "[audit]\nwitness = \"tcp://10.0.0.5:6514\"\nwitness_ca = \"/etc/govbox/ca.pem\"\n";
        assert!(parse(ca_tcp).unwrap_err().to_string().contains("not tls://"));
        let tls = "[audit]\nwitness = \"tls://10.0.0.5:6514\"\nwitness_ca = \"/etc/govbox/ca.pem\"\n";
        assert_eq!(parse(tls).unwrap().0.audit.witness_tls().ca, Some(PathBuf::from("/etc/govbox/ca.pem")));
        let (c, _) = parse("[tls]\nmtls = \"required\"\n").unwrap();
        assert_eq!(c.tls.mtls, MtlsMode::Required);
        let (c, _) = parse("[serving]\nprefix_cache = \"shared\"\n").unwrap();
        assert_eq!(c.serving.prefix_cache, PrefixCacheMode::Shared);
        assert!(parse("[serving]\nprefix_cache = \"global\"\n").unwrap_err().to_string().contains("per_client"));
        assert_eq!(Config::default().serving.engine_options().kv_dtype, KvDType::F16);
        let (c, _) = parse("[serving]\nkv_dtype = \"f32\"\n").unwrap();
        assert_eq!(c.serving.engine_options().kv_dtype, KvDType::F32);
        let (c, _) = parse("device = \"cuda:1\"\nlog_level = \"debug\"\n").unwrap();
        assert_eq!((c.device, c.log_level.0), (DeviceSpec::Cuda(1), log::LevelFilter::Debug));
        for (bad, says) in [("device = \"gpu\"", "device"), ("log_level = \"DEBUG\"", "log_level")] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let (c, _) = parse("[serving]\nkv_dtype = \"q8_0\"\n").unwrap();
        assert_eq!(c.serving.engine_options().kv_dtype, KvDType::Q8_0);
        let e = parse("[serving]\nkv_dtype = \"bf16\"\n").unwrap_err().to_string();
        assert!(e.contains("serving.kv_dtype") && e.contains("expected \"f32\", \"f16\" or \"q8_0\""), "{e}");
        assert!(!Config::default().serving.batch_invariant);
        assert!(parse("[serving]\nbatch_invariant = true\n").unwrap().0.serving.batch_invariant);
        let e = parse("[serving]\nbatch_invariant = \"yes\"\n").unwrap_err().to_string();
        assert!(e.contains("batch_invariant") && e.contains("bool"), "{e}");
        let e = parse("[serving]\nkv_dtype = 16\n").unwrap_err().to_string();
        assert!(e.contains("kv_dtype"), "{e}");
    }

    #[test]
    fn relative_model_paths_are_taken_from_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("govbox.toml");
        std::fs::write(&file, "[[models]]\nname = \"a\"\npath = \"m/a.gguf\"\n").unwrap();
        let (c, _) = Config::load(&file).unwrap();
        assert_eq!(c.models[0].path, dir.path().join("m/a.gguf"));
    }
}
