//! What each admin command does in govboxd. The messages are `govbox_admin::protocol`'s: each
//! handler returns its request's typed `Call::Answer`, and the audit entries a successful command
//! makes are `govbox_admin::events`', the same ones `govbox` makes on a stopped box.

use std::cell::Cell;
use std::sync::Arc;

use base64::Engine as _;
use govbox_admin::events::Audited;
use govbox_admin::protocol::{
    AuditExported, AuditHmacAnswer, AuditTailAnswer, CertificateSummary, ClientAnswer, ClientListAnswer, ContentAnswer,
    IssuedClient, Recorded, ServedModel, StatusAnswer, StoredContent, TlsReloaded,
};
use govbox_admin::{AdminRequest, Call, Refusal};
use govbox_audit::{AuditError, Event, ExportRange};
use govbox_provisioning::{ClientName, DEFAULT_CERT_DAYS, NewClient, ProvisionError, check_known_models};
use serde_json::Value;

use crate::auditing::Gate;
use crate::packages::{ServeError, Switch};
use crate::policy::admin::PolicyAdminError;
use crate::state::AppState;

/// An error answer's body, as the daemon's modules make it.
#[derive(Debug)]
pub struct AdminFailure {
    /// A stable short code.
    pub code: &'static str,
    /// What went wrong, in words.
    pub message: String,
}

impl From<AdminFailure> for Refusal {
    fn from(f: AdminFailure) -> Self {
        Refusal { code: f.code.to_string(), message: f.message }
    }
}

/// The admin edge's one mapping of the service modules' errors: each has a stable `code()`, and
/// its message is the answer's.
macro_rules! coded_failure {
    ($($error:ty),+) => {$(
        impl From<$error> for AdminFailure {
            fn from(e: $error) -> Self {
                AdminFailure { code: e.code(), message: e.to_string() }
            }
        }
    )+};
}

coded_failure!(AuditError, ProvisionError, ServeError, PolicyAdminError, govbox_attestation::AttestError);

#[cfg(debug_assertions)]
impl From<crate::sandbox::ProbeAddrError> for AdminFailure {
    fn from(e: crate::sandbox::ProbeAddrError) -> Self {
        invalid(e.to_string())
    }
}

/// Who asked, in audit entries.
pub fn actor(uid: &str) -> String {
    format!("admin-socket uid {uid}")
}

/// Records a refused package import (model or policy library) as its own entry, best effort: the
/// refusal is answered whether or not the entry could be written.
fn record_refused(state: &AppState, uid: &str, path: &std::path::Path, code: &str, reason: &dyn std::fmt::Display) {
    crate::auditing::record_blocking(&state.audit, govbox_admin::events::refused(&actor(uid), path, code, reason));
}

/// Runs `run` for `req` with its audit entries (see `govbox_admin::events`), as
/// [`serve_gated`] does for a command that takes effect as soon as it has run.
fn serve<C: Call + Audited>(
    state: &AppState,
    uid: &str,
    req: C,
    run: impl FnOnce(&C) -> Result<C::Answer, AdminFailure>,
) -> Result<Value, AdminFailure> {
    serve_gated(state, uid, req, |r, _| run(r))
}

/// Runs `run` for `req` with its audit entries (see `govbox_admin::events`): those the request
/// decides are written first, and the command is refused when they cannot be. Those of its
/// outcome are written through the [`Gate`] that `run` is given, which a command whose change
/// takes effect at a step of its own (a model or library served, a certificate handed to new
/// handshakes, a stored version deleted) calls just before that step, undoing what it prepared
/// when the entries cannot be written: no such change is in effect without its entry. Entries a
/// command did not write through the gate are written after its success. A `…_failed` entry
/// follows a failure once a first entry was written. Gives the typed answer as the answer line's
/// `result`.
fn serve_gated<C: Call + Audited>(
    state: &AppState,
    uid: &str,
    req: C,
    run: impl FnOnce(&C, &Gate<'_, C::Answer>) -> Result<C::Answer, AdminFailure>,
) -> Result<Value, AdminFailure> {
    let who = actor(uid);
    let before = req.before(&who);
    let wrote = !before.is_empty();
    for ev in before {
        state.audit.append_blocking(ev).map_err(|e| AdminFailure {
            code: "audit_unavailable",
            message: format!("{} is refused: its audit entry cannot be written ({e})", C::CMD),
        })?;
    }
    let gated = Cell::new(false);
    let gate = |answer: &C::Answer| {
        gated.set(true);
        req.events(&who, answer).into_iter().try_for_each(|ev| state.audit.append_blocking(ev).map(drop))
    };
    let answer = match run(&req, &gate) {
        Ok(a) => a,
        Err(f) => {
            if wrote || gated.get() {
                let ev = govbox_admin::events::failed(&who, C::CMD, f.code, &f.message);
                crate::auditing::record_blocking(&state.audit, ev);
            }
            return Err(f);
        }
    };
    if !gated.get() {
        for ev in req.events(&who, &answer) {
            crate::auditing::record_blocking(&state.audit, ev);
        }
    }
    serde_json::to_value(&answer)
        .map_err(|e| AdminFailure { code: "internal_error", message: format!("encoding the answer: {e}") })
}

fn issued(i: govbox_provisioning::IssuedClient) -> IssuedClient {
    IssuedClient {
        client: i.record,
        cert_pem: i.cert.cert_pem,
        key_pem: i.cert.key_pem,
        ca_pem: i.ca_pem,
        token: i.token.as_ref().map(|t| t.expose().to_string()),
    }
}

fn invalid(message: String) -> AdminFailure {
    AdminFailure { code: "invalid_request", message }
}

fn time_arg(field: &str, s: &str) -> Result<time::OffsetDateTime, AdminFailure> {
    govbox_audit::parse_time(s).ok_or_else(|| invalid(format!("{field}: '{s}' is not an RFC 3339 time")))
}

/// Runs one command (blocking: store writes flush to disk and certificates are signed).
pub fn execute(state: &Arc<AppState>, req: AdminRequest, uid: &str) -> Result<Value, AdminFailure> {
    let store = &state.store;
    let st = state.as_ref();
    match req {
        AdminRequest::Status(r) => serve(st, uid, r, |_| Ok(status(state))),
        AdminRequest::ClientAdd(r) => serve(st, uid, r, |r| {
            let name = ClientName::parse(&r.name)?;
            // What the box knows: the stored packages and whatever it serves (dev folders too).
            let mut known = state.packages.names()?;
            known.extend(state.models.get().iter().flat_map(|v| v.iter()).map(|m| m.name.clone()));
            known.sort();
            known.dedup();
            check_known_models(name.as_str(), &r.models, &known)?;
            let new = NewClient {
                name,
                models: r.models.clone(),
                scopes: r.scopes.clone(),
                rpm: r.rpm,
                tokens_per_day: r.tokens_per_day,
                max_concurrent: r.max_concurrent,
                cert_days: r.cert_days.unwrap_or(DEFAULT_CERT_DAYS),
                with_token: r.token,
                allow_special_tokens: r.allow_special_tokens,
                policy: r.policy.clone(),
            };
            Ok(issued(store.add(new)?))
        }),
        AdminRequest::ClientList(r) => serve(st, uid, r, |_| Ok(ClientListAnswer { clients: store.list()? })),
        AdminRequest::ClientRevoke(r) => serve(st, uid, r, |r| Ok(ClientAnswer { client: store.revoke(&r.name)? })),
        AdminRequest::ClientRenew(r) => {
            serve(st, uid, r, |r| Ok(issued(store.renew(&r.name, r.cert_days.unwrap_or(DEFAULT_CERT_DAYS))?)))
        }
        AdminRequest::ModelImport(r) => serve_gated(st, uid, r, |r, gate| {
            let path = std::path::PathBuf::from(&r.path);
            if !path.is_absolute() {
                return Err(invalid("the package path must be absolute".into()));
            }
            let result = state.packages.import(&path, r.activate, gate);
            if let Err(e) = &result {
                record_refused(state, uid, &path, e.code(), e);
            }
            Ok(result?)
        }),
        AdminRequest::ModelList(r) => serve(st, uid, r, |_| Ok(state.packages.list()?)),
        AdminRequest::ModelActivate(r) => serve_gated(st, uid, r, |r, gate| {
            Ok(state.packages.switch(&r.name, Switch::Activate(r.version.as_deref()), gate)?)
        }),
        AdminRequest::ModelRollback(r) => {
            serve_gated(st, uid, r, |r, gate| Ok(state.packages.switch(&r.name, Switch::Rollback, gate)?))
        }
        AdminRequest::ModelRemove(r) => {
            serve_gated(st, uid, r, |r, gate| Ok(state.packages.remove(&r.name, &r.version, gate)?))
        }
        AdminRequest::ModelDisable(r) => serve(st, uid, r, |r| Ok(state.packages.set_disabled(&r.name, true)?)),
        AdminRequest::ModelEnable(r) => serve(st, uid, r, |r| Ok(state.packages.set_disabled(&r.name, false)?)),
        AdminRequest::PolicyImport(r) => serve_gated(st, uid, r, |r, gate| {
            let path = std::path::PathBuf::from(&r.path);
            let result = policies(state).and_then(|ops| ops.import(&path, r.activate, gate));
            if let Err(e) = &result {
                record_refused(state, uid, &path, e.code(), e);
            }
            Ok(result?)
        }),
        AdminRequest::PolicyList(r) => serve(st, uid, r, |_| Ok(policies(state)?.list()?)),
        AdminRequest::PolicyActivate(r) => serve_gated(st, uid, r, |r, gate| {
            Ok(policies(state)?.switch(&r.name, Switch::Activate(r.version.as_deref()), gate)?)
        }),
        AdminRequest::PolicyRollback(r) => {
            serve_gated(st, uid, r, |r, gate| Ok(policies(state)?.switch(&r.name, Switch::Rollback, gate)?))
        }
        AdminRequest::AuditExport(r) => serve(st, uid, r, |r| {
            let since = r.since.as_deref().map(|s| time_arg("since", s)).transpose()?;
            // Everything refused until now is in the export, and so is the export itself: it is
            // recorded first, and fails if that record cannot be made.
            state.refusals.flush_blocking(&state.audit, true);
            let show = |v: Option<u64>, none: &str| v.map_or_else(|| none.to_string(), |n| format!("seq {n}"));
            let subject = format!(
                "from {} to {}{}",
                show(r.from, "the oldest entry"),
                show(r.to, "the newest"),
                since.map(|t| format!(", since {}", govbox_audit::format_time(t))).unwrap_or_default()
            );
            let ev = Event::Admin { actor: actor(uid), action: "audit_export".into(), subject };
            state.audit.append_blocking(ev)?;
            let bytes = state.audit.export(ExportRange { from_seq: r.from, since, to_seq: r.to })?;
            Ok(AuditExported { export_b64: base64::engine::general_purpose::STANDARD.encode(bytes) })
        }),
        AdminRequest::AuditTail(r) => {
            serve(st, uid, r, |r| Ok(AuditTailAnswer { entries: state.audit.tail(r.n.unwrap_or(20))? }))
        }
        AdminRequest::AuditPrune(r) => serve(st, uid, r, |r| {
            let days = i64::from(state.config.audit.retention_days);
            let cutoff = match &r.before {
                None => time::OffsetDateTime::now_utc() - time::Duration::days(days),
                Some(s) => time_arg("before", s)?,
            };
            let intent = r.forced_entry(actor(uid), &govbox_audit::format_time(cutoff)).map_err(invalid)?;
            Ok(match intent {
                Some(entry) => state.audit.prune_forced(cutoff, entry)?,
                None => state.audit.prune(cutoff, false)?,
            })
        }),
        AdminRequest::AuditHmac(r) => serve(st, uid, r, |r| {
            // An oracle for the box's audit key: rate-limited per caller, and every answer is in
            // the log before it is given (an auditor's question is itself an audited action).
            hmac_limit(uid)?;
            let hmac = match &r.client {
                Some(c) => crate::auditing::client_hmac(&state.audit, c, r.text.as_bytes()),
                None => state.audit.hmac(r.text.as_bytes()),
            };
            let subject = match &r.client {
                Some(c) => format!("client {c}; hmac {hmac}"),
                None => format!("hmac {hmac}"),
            };
            let ev = Event::Admin { actor: actor(uid), action: "audit_hmac_query".into(), subject };
            state.audit.append_blocking(ev)?;
            Ok(AuditHmacAnswer { hmac })
        }),
        AdminRequest::Attest(r) => serve(st, uid, r, |r| super::attest::attest(state, &r.nonce)),
        AdminRequest::ContentRead(r) => serve(st, uid, r, |r| content_read(state, &r.request_id, uid)),
        AdminRequest::TlsReload(r) => serve_gated(st, uid, r, |_, gate| {
            let material = govbox_provisioning::load_server_tls(&state.state_dir)?;
            let keep = "govboxd keeps serving the previous certificate";
            let next = crate::tls::ServerCert::check(&material)
                .map_err(|e| AdminFailure { code: "tls_invalid", message: format!("{e}; {keep}") })?;
            let answer = TlsReloaded { old: state.server_cert.served(), new: next.summary().clone() };
            gate(&answer).map_err(|e| AdminFailure {
                code: "audit_unavailable",
                message: format!("tls_reload: its audit entry cannot be written ({e}); {keep}"),
            })?;
            state.server_cert.install(next);
            log::info!(
                "tls_reload: new connections get the server certificate serial {} (expires {}); it was serial {}",
                answer.new.serial,
                answer.new.expires,
                answer.old.serial
            );
            Ok(answer)
        }),
        AdminRequest::UpdateEvent(r) => serve(st, uid, r, |r| {
            // The entry names who reported the step: any member of the admin group may.
            let detail = format!("{} [{}]", r.detail, actor(uid));
            state.audit.append_blocking(Event::Update { step: r.step.clone(), detail })?;
            Ok(Recorded { recorded: true })
        }),
        #[cfg(debug_assertions)]
        AdminRequest::DebugEgressProbe(r) => serve(st, uid, r, |r| Ok(crate::sandbox::probe(&r.addr)?)),
        // A request this build does not serve (a debug-only one in a release build).
        #[allow(unreachable_patterns)]
        other => Err(AdminFailure { code: "bad_request", message: format!("'{}' is not served here", other.name()) }),
    }
}

/// The policy commands on the box's store, served through its libraries.
fn policies(
    state: &AppState,
) -> Result<govbox_admin::ops::policies::PolicyOps<crate::policy::admin::Reload>, PolicyAdminError> {
    crate::policy::admin::ops(&state.policies, &state.state_dir)
}

/// `audit_hmac` queries one caller may make per [`HMAC_WINDOW`].
pub const HMAC_QUERIES: usize = 30;
/// The window of [`HMAC_QUERIES`].
const HMAC_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Refuses an `audit_hmac` query beyond [`HMAC_QUERIES`] a minute from one uid: each answer tests
/// a guess of a prompt against the box's key, so an auditor gets enough to check entries, not to
/// search a dictionary.
fn hmac_limit(uid: &str) -> Result<(), AdminFailure> {
    use std::collections::{HashMap, VecDeque};
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;
    static SEEN: OnceLock<Mutex<HashMap<String, VecDeque<Instant>>>> = OnceLock::new();
    let mut seen = SEEN.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let times = seen.entry(uid.to_string()).or_default();
    while times.front().is_some_and(|t| now.duration_since(*t) >= HMAC_WINDOW) {
        times.pop_front();
    }
    if times.len() >= HMAC_QUERIES {
        return Err(AdminFailure {
            code: "rate_limited",
            message: format!("at most {HMAC_QUERIES} audit_hmac queries a minute per caller; try again later"),
        });
    }
    times.push_back(now);
    Ok(())
}

/// `content_read`: audit the read, then open the request's sealed prompt and response.
fn content_read(state: &AppState, request_id: &str, uid: &str) -> Result<ContentAnswer, AdminFailure> {
    use crate::content::{ContentError, Kind, is_request_id};
    if !is_request_id(request_id) {
        return Err(invalid(
            "request_id must be 'req-' and 16 lower-case hex digits, as in the x-request-id header".into(),
        ));
    }
    // Recorded before anything is decrypted: a read that cannot be audited does not happen.
    state.audit.append_blocking(Event::Admin {
        actor: actor(uid),
        action: "content_read".into(),
        subject: request_id.to_string(),
    })?;
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
    let part = |o: crate::content::Opened| {
        let hmac_matches = match &o.client {
            Some(c) => crate::auditing::client_hmac(&state.audit, c, &o.plaintext) == o.hash,
            None => state.audit.hmac(&o.plaintext) == o.hash,
        };
        let (text, base64) = match String::from_utf8(o.plaintext) {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes()))),
        };
        StoredContent {
            text,
            base64,
            audit_hmac: o.hash,
            hmac_matches,
            truncated: o.truncated,
            stored: govbox_audit::format_time(
                time::OffsetDateTime::from_unix_timestamp(o.created).unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            ),
        }
    };
    Ok(ContentAnswer { request_id: request_id.to_string(), prompt: prompt.map(part), response: response.map(part) })
}

fn status(state: &AppState) -> StatusAnswer {
    let info = state.backend.info();
    let models = state
        .models
        .get()
        .map(|ms| {
            ms.iter()
                .map(|m| ServedModel {
                    name: m.name.clone(),
                    kind: m.kind.as_str().to_string(),
                    format: m.engine.format().to_string(),
                    path: m.path.display().to_string(),
                    version: m.source.version().to_string(),
                    digest: m.source.digest().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let served: CertificateSummary = state.server_cert.served();
    StatusAnswer {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: state.started.elapsed().as_secs(),
        ready: state.ready(),
        shutting_down: state.admission.is_closed(),
        listen: state.listen.to_string(),
        pid: std::process::id(),
        state_dir: state.state_dir.display().to_string(),
        configured_models: state.config.models.iter().map(|m| m.name.clone()).collect(),
        insecure_dev_models: state.insecure_dev_models,
        models,
        backend: crate::device::backend_status(&info, &state.device),
        accelerators: crate::device::probes(&state.device),
        active_generations: state.metrics.active.get(),
        queued_requests: state.metrics.queued.get(),
        open_connections: state.metrics.connections.get(),
        tls_certificate: Some(served),
        egress: crate::sandbox::current().cloned(),
        audit_witness: state.audit.witness_status(),
    }
}

#[cfg(test)]
mod tests {
    use govbox_admin::protocol::TlsReload;

    use super::*;

    fn tls_reload(state: &Arc<AppState>) -> Result<Value, AdminFailure> {
        execute(state, AdminRequest::TlsReload(TlsReload {}), "0")
    }

    /// An admin change whose audit entry cannot be written does not take effect (fail-closed):
    /// with the log closed, `tls_reload` is refused and the old certificate is still served; with
    /// it open, the renewed one is served and its entry is in the log.
    #[test]
    fn a_change_whose_entry_cannot_be_written_is_not_made() {
        let (_tmp, state) = crate::state::test_state();
        let before = state.server_cert.served();
        govbox_provisioning::renew_server_cert(&state.state_dir, 30).unwrap();
        state.audit.close().unwrap();
        let refused = tls_reload(&state).unwrap_err();
        assert_eq!(refused.code, "audit_unavailable", "{}", refused.message);
        assert!(refused.message.contains("keeps serving the previous certificate"), "{}", refused.message);
        assert_eq!(state.server_cert.served(), before, "the renewed certificate must not be served");

        let (_tmp, state) = crate::state::test_state();
        let before = state.server_cert.served();
        let renewed = govbox_provisioning::renew_server_cert(&state.state_dir, 30).unwrap();
        tls_reload(&state).unwrap();
        assert_eq!(state.server_cert.served().serial, renewed.new.serial);
        assert_ne!(state.server_cert.served(), before);
        let last = state.audit.tail(1).unwrap();
        let text = serde_json::to_string(&last).unwrap();
        assert!(text.contains("tls_reload") && text.contains(&renewed.new.serial), "{text}");
    }
}
