//! The admin socket's messages.
//!
//! A request line is an [`AdminRequest`]: `{"cmd":"client_revoke","name":"hr-portal"}`. Each
//! variant wraps a struct that implements [`Call`]; its `Answer` is the `result` of the answer
//! line ([`Reply`]): `{"ok":true,"result":{...}}` or
//! `{"ok":false,"error":{"code":"client_not_found","message":"..."}}`. The daemon builds each
//! answer as its `Call::Answer` type and the CLI reads it back as the same type, so that a field
//! one side renames or drops no longer compiles on the other.

use govbox_attestation::{EgressMeasurement, SignedReport};
use govbox_audit::{Entry, Event, PruneReport, WitnessStatus};
use govbox_images::{ModelRecord, VersionRecord};
use govbox_provisioning::{ClientRecord, Scope};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One request, with the type of its answer.
pub trait Call: Serialize + Into<AdminRequest> {
    /// The `cmd` of its request line.
    const CMD: &'static str;
    /// The `result` of a successful answer.
    type Answer: Serialize + DeserializeOwned;
}

/// Declares the request enum, one variant per request struct, with each struct's [`Call`].
macro_rules! requests {
    ($( $(#[$meta:meta])* $variant:ident($req:ident) => $cmd:literal, $answer:ty; )*) => {
        /// One request line; `cmd` selects the variant.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        #[serde(tag = "cmd", rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum AdminRequest {
            $( $(#[$meta])* #[doc = concat!("`", $cmd, "`: see [`", stringify!($req), "`].")] #[serde(rename = $cmd)] $variant($req), )*
        }

        impl AdminRequest {
            /// The command name (`cmd`), for logs and audit entries.
            pub fn name(&self) -> &'static str {
                match self {
                    $( $(#[$meta])* AdminRequest::$variant(_) => <$req as Call>::CMD, )*
                }
            }
        }

        $(
            $(#[$meta])*
            impl Call for $req {
                const CMD: &'static str = $cmd;
                type Answer = $answer;
            }
            $(#[$meta])*
            impl From<$req> for AdminRequest {
                fn from(r: $req) -> Self {
                    AdminRequest::$variant(r)
                }
            }
        )*
    };
}

requests! {
    Status(Status) => "status", StatusAnswer;
    ClientAdd(ClientAdd) => "client_add", IssuedClient;
    ClientList(ClientList) => "client_list", ClientListAnswer;
    ClientRevoke(ClientRevoke) => "client_revoke", ClientAnswer;
    ClientRenew(ClientRenew) => "client_renew", IssuedClient;
    ModelImport(ModelImport) => "model_import", ModelImported;
    ModelList(ModelList) => "model_list", ModelListAnswer;
    ModelActivate(ModelActivate) => "model_activate", ModelSwitched;
    ModelRollback(ModelRollback) => "model_rollback", ModelSwitched;
    ModelRemove(ModelRemove) => "model_remove", ModelRemoved;
    ModelDisable(ModelDisable) => "model_disable", ModelToggled;
    ModelEnable(ModelEnable) => "model_enable", ModelToggled;
    PolicyImport(PolicyImport) => "policy_import", PolicyImported;
    PolicyList(PolicyList) => "policy_list", PolicyListAnswer;
    PolicyActivate(PolicyActivate) => "policy_activate", ModelSwitched;
    PolicyRollback(PolicyRollback) => "policy_rollback", ModelSwitched;
    AuditExport(AuditExport) => "audit_export", AuditExported;
    AuditTail(AuditTail) => "audit_tail", AuditTailAnswer;
    AuditHmac(AuditHmac) => "audit_hmac", AuditHmacAnswer;
    AuditPrune(AuditPrune) => "audit_prune", PruneReport;
    Attest(Attest) => "attest", SignedReport;
    ContentRead(ContentRead) => "content_read", ContentAnswer;
    TlsReload(TlsReload) => "tls_reload", TlsReloaded;
    UpdateEvent(UpdateEvent) => "update_event", Recorded;
    #[cfg(debug_assertions)]
    DebugEgressProbe(DebugEgressProbe) => "debug_egress_probe", serde_json::Value;
}

/// `status`: the daemon's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {}

/// `client_add`: add a client; the answer holds its certificate, key and (if asked) token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAdd {
    /// Its name.
    pub name: String,
    /// Models it may use, or `["all"]`; required with the inference scope.
    #[serde(default)]
    pub models: Vec<String>,
    /// What it may call (`inference`, `metrics`); absent means inference.
    #[serde(default = "inference_scope")]
    pub scopes: Vec<Scope>,
    /// Requests per minute; absent means no limit.
    pub rpm: Option<u32>,
    /// Tokens per day; absent means no limit.
    pub tokens_per_day: Option<u64>,
    /// Requests running at once; absent means none of its own (fair share while others wait).
    pub max_concurrent: Option<u32>,
    /// Certificate validity in days (default 365).
    pub cert_days: Option<u32>,
    /// Also issue a bearer token.
    #[serde(default)]
    pub token: bool,
    /// Its completions prompts may write control tokens.
    #[serde(default)]
    pub allow_special_tokens: bool,
    /// Its content-safety library (a name or `off`); absent means `[policy] default`.
    #[serde(default)]
    pub policy: Option<String>,
}

fn inference_scope() -> Vec<Scope> {
    vec![Scope::Inference]
}

/// `client_list`: all clients.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientList {}

/// `client_revoke`: revoke a client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRevoke {
    /// Its name.
    pub name: String,
}

/// `client_renew`: issue a new certificate for a client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRenew {
    /// Its name.
    pub name: String,
    /// Certificate validity in days (default 365).
    pub cert_days: Option<u32>,
}

/// `model_import`: verify and import a model package file that govboxd can read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelImport {
    /// The package file (absolute).
    pub path: String,
    /// Make it the active version (the first version of a name always is).
    #[serde(default)]
    pub activate: bool,
}

/// `model_list`: every stored model version.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelList {}

/// `model_activate`: serve another version of a model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelActivate {
    /// The model name.
    pub name: String,
    /// The version; absent means the highest.
    pub version: Option<String>,
}

/// `model_rollback`: serve the previously active version again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRollback {
    /// The model name.
    pub name: String,
}

/// `model_remove`: remove a version that is not active.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRemove {
    /// The model name.
    pub name: String,
    /// The version.
    pub version: String,
}

/// `model_disable`: take a model out of service: its name answers 404 until `model_enable`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDisable {
    /// The model name.
    pub name: String,
}

/// `model_enable`: serve a disabled model's active version again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEnable {
    /// The model name.
    pub name: String,
}

/// `policy_import`: verify and import a content-safety policy package govboxd can read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyImport {
    /// The package file (absolute).
    pub path: String,
    /// Make it the active version (the first version of a name always is).
    #[serde(default)]
    pub activate: bool,
}

/// `policy_list`: every stored policy library version.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyList {}

/// `policy_activate`: serve another version of a policy library.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyActivate {
    /// The library name.
    pub name: String,
    /// The version; absent means the highest.
    pub version: Option<String>,
}

/// `policy_rollback`: serve the previously active version of a policy library again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRollback {
    /// The library name.
    pub name: String,
}

/// `audit_export`: a range of the audit log as one signed file (base64 in the answer). The export
/// is recorded first, so it holds its own record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditExport {
    /// The first seq.
    pub from: Option<u64>,
    /// The first entry at or after this RFC 3339 time (when `from` is absent).
    pub since: Option<String>,
    /// The last seq (inclusive).
    pub to: Option<u64>,
}

/// `audit_tail`: the newest entries (metadata only: the log holds no content).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditTail {
    /// How many (default 20).
    pub n: Option<usize>,
}

/// `audit_hmac`: the HMAC of a text under the box's audit secret, to match a prompt hash. The
/// query is itself audited.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditHmac {
    /// The text.
    pub text: String,
    /// The client that sent (or received) it: prompt and response hashes are keyed per client.
    /// Absent: the bare HMAC, as entries of govbox before per-client keying hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// `audit_prune`: remove entries older than the retention period (or `before`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditPrune {
    /// RFC 3339 cut-off; absent means now minus `[audit] retention_days`.
    pub before: Option<String>,
    /// Prune even entries no export covers yet.
    #[serde(default)]
    pub force: bool,
    /// Why a forced prune is made: required with `force`, and recorded in its audit entry.
    #[serde(default)]
    pub confirm: Option<String>,
}

impl AuditPrune {
    /// The reason a forced prune must give; `Err` names what is missing.
    pub fn forced_reason(&self) -> Result<Option<&str>, String> {
        match (self.force, self.confirm.as_deref().map(str::trim)) {
            (false, _) => Ok(None),
            (true, Some(r)) if !r.is_empty() && r.len() <= 500 => Ok(Some(r)),
            (true, Some(r)) if !r.is_empty() => Err("--confirm: the reason is longer than 500 bytes".into()),
            (true, _) => Err("a forced prune removes entries that no export holds: give its reason with --confirm \
                              REASON (it is recorded in the audit log)"
                .into()),
        }
    }

    /// A forced prune's entry, written before anything is removed: who forces it, the cut-off
    /// and the reason. `None` for a prune by the retention rule; `Err` as [`Self::forced_reason`].
    pub fn forced_entry(&self, actor: String, cutoff: &str) -> Result<Option<Event>, String> {
        let entry = |reason| Event::Admin {
            actor,
            action: "forced_prune".into(),
            subject: format!("{cutoff}; reason: {reason}"),
        };
        Ok(self.forced_reason()?.map(entry))
    }
}

/// `attest`: a signed `govbox-attestation/1` report for a verifier's nonce (recorded first).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attest {
    /// 16 to 64 bytes, hex.
    pub nonce: String,
}

/// `content_read`: the stored prompt and response of a request (`[retention] store_content`); the
/// read is recorded in the audit log first, and fails if it cannot be.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentRead {
    /// The request id (`req-` and 16 hex digits, as in `x-request-id`).
    pub request_id: String,
}

/// `tls_reload`: serve the certificate and key now in `tls/` to new handshakes (after `govbox tls
/// renew`); open connections and the listener are not touched.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsReload {}

/// `update_event`: record one step of `govbox update apply` (run as root beside the daemon).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateEvent {
    /// The step, e.g. `staged`, `switched`, `committed`, `reverted`.
    pub step: String,
    /// Versions, slots, reasons.
    pub detail: String,
}

/// `debug_egress_probe` (builds with debug assertions only: the e2e tests): try connects to
/// `addr` from inside the process.
#[cfg(debug_assertions)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugEgressProbe {
    /// `IP:PORT`.
    pub addr: String,
}

/// `status`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusAnswer {
    /// govboxd's version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// What `/readyz` answers.
    pub ready: bool,
    /// Draining for a stop.
    pub shutting_down: bool,
    /// The HTTPS listener's address.
    pub listen: String,
    /// The process id of govboxd.
    pub pid: u32,
    /// The state folder it serves.
    pub state_dir: String,
    /// The models the config names.
    pub configured_models: Vec<String>,
    /// Unsigned development model folders are served (`--insecure-dev-models`).
    pub insecure_dev_models: bool,
    /// The models loaded now.
    pub models: Vec<ServedModel>,
    /// The backend in use.
    pub backend: BackendStatus,
    /// Every accelerator probe.
    pub accelerators: Vec<AcceleratorProbe>,
    /// Requests running on the engine.
    pub active_generations: i64,
    /// Requests waiting for an engine slot.
    pub queued_requests: i64,
    /// Open HTTPS connections.
    pub open_connections: i64,
    /// The served server certificate.
    pub tls_certificate: Option<CertificateSummary>,
    /// The egress lockdown in force.
    pub egress: Option<EgressMeasurement>,
    /// The audit witness, when one is configured.
    pub audit_witness: Option<WitnessStatus>,
}

/// A model being served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedModel {
    /// Its name.
    pub name: String,
    /// `chat`, `embedding`, `rerank`.
    pub kind: String,
    /// The weights' format.
    pub format: String,
    /// Where it was loaded from.
    pub path: String,
    /// The package version (`dev` for an unsigned folder).
    pub version: String,
    /// The package digest (hex), or `unsigned-dev-folder`.
    pub digest: String,
}

/// The backend in use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// `cpu`, `ascend`, `cuda`.
    pub kind: String,
    /// The device chosen (`cpu`, `cuda:0`, …).
    pub device: String,
    /// The device the config asked for (`auto`, …).
    pub requested: String,
    /// Its name.
    pub name: String,
    /// Worker threads.
    pub threads: usize,
    /// A simulator, not hardware.
    pub simulated: bool,
    /// Device memory in use, bytes.
    pub memory_used: Option<u64>,
    /// Device memory, bytes.
    pub memory_total: Option<u64>,
    /// Temperature, when the device reports one.
    pub temperature_c: Option<f32>,
    /// Health, when the device reports it.
    pub health: Option<String>,
    /// Notes on how models run there.
    pub notes: Vec<String>,
}

/// One accelerator probe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceleratorProbe {
    /// `ascend`, `cuda`.
    pub kind: String,
    /// Support was compiled in.
    pub compiled: bool,
    /// The accelerator is present.
    pub present: bool,
    /// How many devices.
    pub devices: u32,
    /// A simulator, not hardware.
    pub simulated: bool,
    /// What the probe found, in words.
    pub detail: String,
}

/// What a certificate says about itself (`status`, `tls_reload`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateSummary {
    /// The serial number, lower-case hex.
    pub serial: String,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// End of validity, RFC 3339.
    pub expires: String,
    /// SHA-256 of the certificate's DER, lower-case hex.
    pub sha256: String,
}

/// `client_add` and `client_renew`'s answer. The secrets exist only in this answer: the CLI writes
/// them to files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedClient {
    /// The stored record.
    pub client: ClientRecord,
    /// The client certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// The box's CA certificate.
    pub ca_pem: String,
    /// The bearer token, only from `client_add` with `token`.
    pub token: Option<String>,
}

/// `client_list`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientListAnswer {
    /// Every client record.
    pub clients: Vec<ClientRecord>,
}

/// `client_revoke`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientAnswer {
    /// The record, now revoked.
    pub client: ClientRecord,
}

/// A model self-test that passed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SelfTestPassed {
    /// Values compared.
    pub checked: usize,
    /// The largest difference from the vendor's reference.
    pub max_abs_diff: f32,
}

/// `model_import`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelImported {
    /// The model name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The manifest's digest label, `sha256-…` or `sm3-…` after its `hash`.
    pub digest: String,
    /// Payload bytes.
    pub size: u64,
    /// It is the active version now.
    pub active: bool,
    /// Seconds the import took.
    pub secs: f64,
    /// Verification speed.
    pub mb_per_s: f64,
    /// The package's self-test, when it has one.
    pub selftest: Option<SelfTestPassed>,
}

/// `model_list`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelListAnswer {
    /// Every stored model.
    pub models: Vec<StoredModel>,
}

/// One stored model name with its versions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredModel {
    /// The model name.
    pub name: String,
    /// The active version, if any.
    pub active: Option<String>,
    /// Earlier active versions, most recent last.
    pub history: Vec<String>,
    /// Every stored version, lowest first; in answers each digest is its label (`sha256-…`, `sm3-…`).
    pub versions: Vec<VersionRecord>,
    /// Taken out of service (`model_disable`).
    pub disabled: bool,
    /// The version govboxd serves now (absent offline, or when it is not loaded).
    #[serde(default)]
    pub serving: Option<String>,
}

impl StoredModel {
    /// A store record, with what govboxd serves of it.
    pub fn new(record: ModelRecord, serving: Option<String>) -> Self {
        Self {
            name: record.name,
            active: record.active,
            history: record.history,
            versions: record.versions,
            disabled: record.disabled,
            serving,
        }
    }
}

/// `model_disable` and `model_enable`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelToggled {
    /// The model name.
    pub name: String,
    /// Out of service now.
    pub disabled: bool,
    /// Its active version (served again after `model_enable`).
    pub active: Option<String>,
}

/// `model_activate`, `model_rollback`, `policy_activate` and `policy_rollback`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSwitched {
    /// The name.
    pub name: String,
    /// The version active now.
    pub version: String,
    /// The version active before, if any.
    #[serde(default)]
    pub previous: Option<String>,
    /// The active version's manifest digest label (`sha256-…` or `sm3-…`).
    pub digest: String,
}

/// `model_remove`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRemoved {
    /// The model name.
    pub name: String,
    /// The version removed.
    pub version: String,
    /// Its manifest digest label (`sha256-…` or `sm3-…`).
    pub digest: String,
}

/// `policy_import`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyImported {
    /// The library name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The manifest's digest label, `sha256-…` or `sm3-…` after its `hash`.
    pub digest: String,
    /// Keywords compiled.
    pub keywords: usize,
    /// It is the active version now.
    pub active: bool,
    /// The same package was already stored (nothing changed).
    pub already_present: bool,
}

/// `policy_list`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyListAnswer {
    /// Every stored library; each version's digest is its label (`sha256-…`, `sm3-…`).
    pub policies: Vec<ModelRecord>,
}

/// `audit_export`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditExported {
    /// The export file, base64.
    pub export_b64: String,
}

/// `audit_tail`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditTailAnswer {
    /// The entries, oldest first.
    pub entries: Vec<Entry>,
}

/// `audit_hmac`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditHmacAnswer {
    /// Lower-case hex.
    pub hmac: String,
}

/// `content_read`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContentAnswer {
    /// The request id.
    pub request_id: String,
    /// The stored prompt, if any.
    pub prompt: Option<StoredContent>,
    /// The stored response, if any.
    pub response: Option<StoredContent>,
}

/// One stored prompt or response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredContent {
    /// The text, when it is UTF-8.
    pub text: Option<String>,
    /// The bytes, base64, when they are not UTF-8.
    pub base64: Option<String>,
    /// The HMAC the audit log holds for it.
    pub audit_hmac: String,
    /// The stored bytes hash to that HMAC.
    pub hmac_matches: bool,
    /// Only the start was stored.
    pub truncated: bool,
    /// When it was stored, RFC 3339.
    pub stored: String,
}

/// `tls_reload`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsReloaded {
    /// The certificate served before.
    pub old: CertificateSummary,
    /// The certificate served now.
    pub new: CertificateSummary,
}

/// `update_event`'s answer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Recorded {
    /// Always true: the entry is durable.
    pub recorded: bool,
}

/// An error answer's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// A stable short code (`client_not_found`, `bad_request`, …).
    pub code: String,
    /// What went wrong, in words.
    pub message: String,
}

/// One answer line: `{"ok":true,"result":...}` or `{"ok":false,"error":{...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply<T> {
    /// Whether the command succeeded.
    pub ok: bool,
    /// The command's answer, when it succeeded.
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Refusal>,
}

impl<T> Reply<T> {
    /// A success.
    pub fn ok(result: T) -> Self {
        Self { ok: true, result: Some(result), error: None }
    }

    /// A failure.
    pub fn refused(error: Refusal) -> Self {
        Self { ok: false, result: None, error: Some(error) }
    }

    /// The result, or the refusal; `None` when the line is neither (`ok` true without a result
    /// or false without an error).
    pub fn into_result(self) -> Option<Result<T, Refusal>> {
        match (self.ok, self.result, self.error) {
            (true, Some(r), _) => Some(Ok(r)),
            (false, _, Some(e)) => Some(Err(e)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn request_lines_are_tagged_by_cmd_and_refuse_unknown_fields() {
        let r: AdminRequest = serde_json::from_str(r#"{"cmd":"client_revoke","name":"x"}"#).unwrap();
        assert!(matches!(&r, AdminRequest::ClientRevoke(c) if c.name == "x"));
        assert_eq!(r.name(), "client_revoke");
        let s: AdminRequest = serde_json::from_str(r#"{"cmd":"status"}"#).unwrap();
        assert_eq!(s.name(), "status");
        assert_eq!(serde_json::to_string(&AdminRequest::from(Status {})).unwrap(), r#"{"cmd":"status"}"#);
        assert!(serde_json::from_str::<AdminRequest>(r#"{"cmd":"client_revoke","name":"x","y":1}"#).is_err());
        assert!(serde_json::from_str::<AdminRequest>(r#"{"cmd":"nope"}"#).is_err());
        let add: AdminRequest = serde_json::from_str(r#"{"cmd":"client_add","name":"a","models":["m"]}"#).unwrap();
        assert!(matches!(add, AdminRequest::ClientAdd(a) if a.scopes == vec![Scope::Inference] && !a.token));
    }

    #[test]
    fn replies_round_trip() {
        let line = serde_json::to_string(&Reply::ok(AuditHmacAnswer { hmac: "ab".into() })).unwrap();
        assert_eq!(line, r#"{"ok":true,"result":{"hmac":"ab"}}"#);
        let back: Reply<AuditHmacAnswer> = serde_json::from_str(&line).unwrap();
        assert_eq!(back.into_result().unwrap().unwrap().hmac, "ab");
        let no: Reply<AuditHmacAnswer> =
            serde_json::from_str(r#"{"ok":false,"error":{"code":"c","message":"m"}}"#).unwrap();
        assert_eq!(no.into_result().unwrap().unwrap_err().code, "c");
        let odd: Reply<AuditHmacAnswer> = serde_json::from_str(r#"{"ok":true}"#).unwrap();
        assert!(odd.into_result().is_none());
    }
}
