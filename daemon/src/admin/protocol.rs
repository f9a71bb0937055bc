//! The admin protocol's messages and what each command does.

use std::sync::Arc;

use govbox_provisioning::{
    ClientName, ClientRecord, DEFAULT_CERT_DAYS, IssuedClient, NewClient, ProvisionError, Scope, check_known_models,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use base64::Engine as _;
use govbox_audit::{AuditError, Event, ExportRange};

use crate::packages::Switch;
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
        /// Models it may use, or `["all"]`; required with the inference scope.
        #[serde(default)]
        models: Vec<String>,
        /// What it may call (`inference`, `metrics`); absent means inference.
        #[serde(default = "inference_scope")]
        scopes: Vec<Scope>,
        /// Requests per minute; absent means no limit.
        rpm: Option<u32>,
        /// Tokens per day; absent means no limit.
        tokens_per_day: Option<u64>,
        /// Requests running at once; absent means none of its own (fair share while others wait).
        max_concurrent: Option<u32>,
        /// Certificate validity in days (default 365).
        cert_days: Option<u32>,
        /// Also issue a bearer token.
        #[serde(default)]
        token: bool,
        /// Its completions prompts may write control tokens.
        #[serde(default)]
        allow_special_tokens: bool,
        /// Its content-safety library (a name or `off`); absent means `[policy] default`.
        #[serde(default)]
        policy: Option<String>,
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
    /// Verify and import a model package file that govboxd can read.
    ModelImport {
        /// The package file (absolute).
        path: String,
        /// Make it the active version (the first version of a name always is).
        #[serde(default)]
        activate: bool,
    },
    /// Every stored model version.
    ModelList,
    /// Serve another version of a model.
    ModelActivate {
        /// The model name.
        name: String,
        /// The version; absent means the highest.
        version: Option<String>,
    },
    /// Serve the previously active version again.
    ModelRollback {
        /// The model name.
        name: String,
    },
    /// Remove a version that is not active.
    ModelRemove {
        /// The model name.
        name: String,
        /// The version.
        version: String,
    },
    /// Verify and import a content-safety policy package file that govboxd can read.
    PolicyImport {
        /// The package file (absolute).
        path: String,
        /// Make it the active version (the first version of a name always is).
        #[serde(default)]
        activate: bool,
    },
    /// Every stored policy library version.
    PolicyList,
    /// Serve another version of a policy library.
    PolicyActivate {
        /// The library name.
        name: String,
        /// The version; absent means the highest.
        version: Option<String>,
    },
    /// Serve the previously active version of a policy library again.
    PolicyRollback {
        /// The library name.
        name: String,
    },
    /// Export a range of the audit log as one signed file (base64 in the answer).
    AuditExport {
        /// The first seq.
        from: Option<u64>,
        /// The first entry at or after this RFC 3339 time (when `from` is absent).
        since: Option<String>,
        /// The last seq (inclusive).
        to: Option<u64>,
    },
    /// The newest entries (metadata only: the log holds no content).
    AuditTail {
        /// How many.
        n: Option<usize>,
    },
    /// The HMAC of a text under the box's audit secret, to match a prompt hash (itself audited).
    AuditHmac {
        /// The text.
        text: String,
        /// The client that sent (or received) it: prompt and response hashes are keyed per client.
        /// Absent: the bare HMAC, as entries of govbox before per-client keying hold it.
        client: Option<String>,
    },
    /// Remove old entries (see `govbox audit prune`).
    AuditPrune {
        /// An RFC 3339 cut-off; absent means the retention period.
        before: Option<String>,
        /// Also remove entries that no export holds yet.
        #[serde(default)]
        force: bool,
    },
    /// A signed attestation report for the verifier's nonce (itself audited).
    Attest {
        /// 16 to 64 bytes, hex.
        nonce: String,
    },
    /// Serve the server certificate and key now in `tls/` to new handshakes (after `govbox tls
    /// renew`); open connections and the listener are not touched.
    TlsReload,
    /// The stored prompt and response of a request (`[retention] store_content`); the read is
    /// recorded in the audit log first, and fails if it cannot be.
    ContentRead {
        /// The request id (`req-` and 16 hex digits, as in `x-request-id`).
        request_id: String,
    },
    /// Record one step of `govbox update apply` (run as root beside the daemon) in the audit log.
    UpdateEvent {
        /// The step, e.g. `staged`, `switched`, `committed`, `reverted`.
        step: String,
        /// Versions, slots, reasons.
        detail: String,
    },
    /// Test builds only: try TCP connects to `addr` from inside the process (see
    /// `crate::sandbox::probe`).
    #[cfg(debug_assertions)]
    DebugEgressProbe {
        /// `IP:PORT`.
        addr: String,
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
            AdminRequest::ModelImport { .. } => "model_import",
            AdminRequest::ModelList => "model_list",
            AdminRequest::ModelActivate { .. } => "model_activate",
            AdminRequest::ModelRollback { .. } => "model_rollback",
            AdminRequest::ModelRemove { .. } => "model_remove",
            AdminRequest::PolicyImport { .. } => "policy_import",
            AdminRequest::PolicyList => "policy_list",
            AdminRequest::PolicyActivate { .. } => "policy_activate",
            AdminRequest::PolicyRollback { .. } => "policy_rollback",
            AdminRequest::AuditExport { .. } => "audit_export",
            AdminRequest::AuditTail { .. } => "audit_tail",
            AdminRequest::AuditHmac { .. } => "audit_hmac",
            AdminRequest::AuditPrune { .. } => "audit_prune",
            AdminRequest::Attest { .. } => "attest",
            AdminRequest::UpdateEvent { .. } => "update_event",
            AdminRequest::TlsReload => "tls_reload",
            AdminRequest::ContentRead { .. } => "content_read",
            #[cfg(debug_assertions)]
            AdminRequest::DebugEgressProbe { .. } => "debug_egress_probe",
        }
    }

    /// The client the command is about, for the log.
    pub fn subject(&self) -> Option<&str> {
        match self {
            AdminRequest::ClientAdd { name, .. }
            | AdminRequest::ClientRevoke { name }
            | AdminRequest::ClientRenew { name, .. }
            | AdminRequest::ModelActivate { name, .. }
            | AdminRequest::ModelRollback { name }
            | AdminRequest::ModelRemove { name, .. }
            | AdminRequest::PolicyActivate { name, .. }
            | AdminRequest::PolicyRollback { name } => Some(name),
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

impl From<AuditError> for AdminFailure {
    fn from(e: AuditError) -> Self {
        AdminFailure { code: e.code(), message: e.to_string() }
    }
}

impl From<ProvisionError> for AdminFailure {
    fn from(e: ProvisionError) -> Self {
        AdminFailure { code: e.code(), message: e.to_string() }
    }
}

fn inference_scope() -> Vec<Scope> {
    vec![Scope::Inference]
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
pub fn execute(state: &Arc<AppState>, req: AdminRequest, uid: &str) -> Result<Value, AdminFailure> {
    let store = &state.store;
    match req {
        AdminRequest::Status => Ok(status(state)),
        AdminRequest::ClientAdd {
            name,
            models,
            scopes,
            rpm,
            tokens_per_day,
            max_concurrent,
            cert_days,
            token,
            allow_special_tokens,
            policy,
        } => {
            let name = ClientName::parse(&name)?;
            // What the box knows: the stored packages and whatever it serves (dev folders too).
            let mut known = state.packages.names()?;
            known.extend(state.models.get().iter().flat_map(|v| v.iter()).map(|m| m.name.clone()));
            known.sort();
            known.dedup();
            check_known_models(name.as_str(), &models, &known)?;
            let new = NewClient {
                name,
                models,
                scopes,
                rpm,
                tokens_per_day,
                max_concurrent,
                cert_days: cert_days.unwrap_or(DEFAULT_CERT_DAYS),
                with_token: token,
                allow_special_tokens,
                policy,
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
        AdminRequest::ModelImport { path, activate } => {
            let path = std::path::PathBuf::from(path);
            if !path.is_absolute() {
                return Err(AdminFailure {
                    code: "invalid_request",
                    message: "the package path must be absolute".into(),
                });
            }
            let r = state.packages.import(state, &path, activate);
            if let Err(e) = &r {
                let file = path.display().to_string();
                crate::auditing::record_blocking(
                    &state.audit,
                    &state.metrics,
                    Event::PackageRefused {
                        actor: format!("admin-socket uid {uid}"),
                        file,
                        code: e.code().to_string(),
                        reason: e.to_string(),
                    },
                );
            }
            Ok(r?)
        }
        AdminRequest::ModelList => Ok(state.packages.list(state)?),
        AdminRequest::ModelActivate { name, version } => {
            Ok(state.packages.switch(state, &name, Switch::Activate(version.as_deref()))?)
        }
        AdminRequest::ModelRollback { name } => Ok(state.packages.switch(state, &name, Switch::Rollback)?),
        AdminRequest::ModelRemove { name, version } => Ok(state.packages.remove(&name, &version)?),
        AdminRequest::PolicyImport { path, activate } => {
            let path = std::path::PathBuf::from(path);
            let r = crate::policy::admin::import(state, &path, activate);
            if let Err(e) = &r {
                let refused = Event::PackageRefused {
                    actor: format!("admin-socket uid {uid}"),
                    file: path.display().to_string(),
                    code: e.code.to_string(),
                    reason: e.message.clone(),
                };
                crate::auditing::record_blocking(&state.audit, &state.metrics, refused);
            }
            r
        }
        AdminRequest::PolicyList => crate::policy::admin::list(state),
        AdminRequest::PolicyActivate { name, version } => {
            crate::policy::admin::switch(state, &name, Some(version.as_deref()))
        }
        AdminRequest::PolicyRollback { name } => crate::policy::admin::switch(state, &name, None),
        AdminRequest::AuditExport { from, since, to } => {
            let since = match since {
                None => None,
                Some(s) => Some(govbox_audit::parse_time(&s).ok_or_else(|| AdminFailure {
                    code: "invalid_request",
                    message: format!("since: '{s}' is not an RFC 3339 time"),
                })?),
            };
            // Everything refused until now is in the export, and so is the export itself: it is
            // recorded first, and fails if that record cannot be made.
            state.refusals.flush_blocking(&state.audit, &state.metrics, true);
            let show = |v: Option<u64>, none: &str| v.map_or_else(|| none.to_string(), |n| format!("seq {n}"));
            let subject = format!(
                "from {} to {}{}",
                show(from, "the oldest entry"),
                show(to, "the newest"),
                since.map(|t| format!(", since {}", govbox_audit::format_time(t))).unwrap_or_default()
            );
            let ev = Event::Admin { actor: format!("admin-socket uid {uid}"), action: "audit_export".into(), subject };
            state.audit.append_blocking(ev)?;
            state.metrics.audit_entries.inc();
            let bytes = state.audit.export(ExportRange { from_seq: from, since, to_seq: to })?;
            Ok(json!({"export_b64": base64::engine::general_purpose::STANDARD.encode(bytes)}))
        }
        AdminRequest::AuditTail { n } => {
            let entries = state.audit.tail(n.unwrap_or(20))?;
            Ok(json!({"entries": entries}))
        }
        AdminRequest::AuditPrune { before, force } => {
            let days = i64::from(state.config.audit.retention_days);
            let cutoff = match before {
                None => time::OffsetDateTime::now_utc() - time::Duration::days(days),
                Some(s) => govbox_audit::parse_time(&s).ok_or_else(|| AdminFailure {
                    code: "invalid_request",
                    message: format!("before: '{s}' is not an RFC 3339 time"),
                })?,
            };
            let report = state.audit.prune(cutoff, force)?;
            if force {
                // Who forced it, after the log's own policy entry with the counts.
                state.audit.append_blocking(Event::Admin {
                    actor: format!("admin-socket uid {uid}"),
                    action: "forced_prune".into(),
                    subject: govbox_audit::format_time(cutoff),
                })?;
            }
            Ok(serde_json::to_value(report).unwrap_or_default())
        }
        AdminRequest::AuditHmac { text, client } => {
            // The query is recorded first: an auditor's question is itself an audited action,
            // and no hash is given out unless that record is durable.
            let ev = Event::Admin {
                actor: format!("admin-socket uid {uid}"),
                action: "audit_hmac_query".into(),
                subject: client.as_deref().map(|c| format!("client {c}")).unwrap_or_default(),
            };
            state.audit.append_blocking(ev)?;
            state.metrics.audit_entries.inc();
            let hmac = match &client {
                Some(c) => crate::auditing::client_hmac(&state.audit, c, text.as_bytes()),
                None => state.audit.hmac(text.as_bytes()),
            };
            Ok(json!({"hmac": hmac}))
        }
        AdminRequest::Attest { nonce } => super::attest::attest(state, &nonce),
        AdminRequest::ContentRead { request_id } => content_read(state, &request_id, uid),
        AdminRequest::TlsReload => {
            let material = govbox_provisioning::load_server_tls(&state.state_dir)?;
            let (old, new) = state.server_cert.replace(&material).map_err(|e| AdminFailure {
                code: "tls_invalid",
                message: format!("{e}; govboxd keeps serving the previous certificate"),
            })?;
            log::info!(
                "tls_reload: new connections get the server certificate serial {} (expires {}); it was serial {}",
                new.serial,
                new.expires,
                old.serial
            );
            Ok(json!({"old": old, "new": new}))
        }
        AdminRequest::UpdateEvent { step, detail } => {
            // The entry names who reported the step: any member of the admin group may.
            let detail = format!("{detail} [admin-socket uid {uid}]");
            state.audit.append_blocking(Event::Update { step, detail })?;
            state.metrics.audit_entries.inc();
            Ok(json!({"recorded": true}))
        }
        #[cfg(debug_assertions)]
        AdminRequest::DebugEgressProbe { addr } => crate::sandbox::probe(&addr),
    }
}

/// `content_read`: audit the read, then open the request's sealed prompt and response.
fn content_read(state: &AppState, request_id: &str, uid: &str) -> Result<Value, AdminFailure> {
    use crate::content::{ContentError, Kind, is_request_id};
    if !is_request_id(request_id) {
        return Err(AdminFailure {
            code: "invalid_request",
            message: "request_id must be 'req-' and 16 lower-case hex digits, as in the x-request-id header".into(),
        });
    }
    // Recorded before anything is decrypted: a read that cannot be audited does not happen.
    state.audit.append_blocking(Event::Admin {
        actor: format!("admin-socket uid {uid}"),
        action: "content_read".into(),
        subject: request_id.to_string(),
    })?;
    state.metrics.audit_entries.inc();
    let Some(store) = &state.content else {
        return Err(AdminFailure {
            code: "content_not_stored",
            message: "this box stores no content ([retention] store_content = false, and nothing was stored \
                      before)"
                .into(),
        });
    };
    let fail = |e: ContentError| AdminFailure { code: "content_unreadable", message: e.to_string() };
    let prompt = store.get(request_id, Kind::Prompt).map_err(fail)?;
    let response = store.get(request_id, Kind::Response).map_err(fail)?;
    if prompt.is_none() && response.is_none() {
        return Err(AdminFailure {
            code: "content_not_found",
            message: format!(
                "no stored content for {request_id}: it was made while store_content was off, is older than \
                 content_days ({}), or the id is unknown",
                state.config.retention.content_days
            ),
        });
    }
    let part = |o: Option<crate::content::Opened>| match o {
        None => Value::Null,
        Some(o) => {
            let matches = match &o.client {
                Some(c) => crate::auditing::client_hmac(&state.audit, c, &o.plaintext) == o.hash,
                None => state.audit.hmac(&o.plaintext) == o.hash,
            };
            let (text, b64) = match String::from_utf8(o.plaintext) {
                Ok(t) => (Some(t), None),
                Err(e) => (None, Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes()))),
            };
            json!({
                "text": text,
                "base64": b64,
                "audit_hmac": o.hash,
                "hmac_matches": matches,
                "truncated": o.truncated,
                "stored": govbox_audit::format_time(
                    time::OffsetDateTime::from_unix_timestamp(o.created).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
                ),
            })
        }
    };
    Ok(json!({"request_id": request_id, "prompt": part(prompt), "response": part(response)}))
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
                        "version": m.source.version(),
                        "digest": m.source.digest(),
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
        "insecure_dev_models": state.insecure_dev_models,
        "models": models,
        "backend": crate::device::backend_json(&info, &state.device),
        "accelerators": crate::device::probes_json(&state.device),
        "active_generations": state.metrics.active.get(),
        "queued_requests": state.metrics.queued.get(),
        "open_connections": state.metrics.connections.get(),
        "tls_certificate": state.server_cert.served(),
        "egress": crate::sandbox::status_json(),
        "audit_witness": state.audit.witness_status(),
    })
}
