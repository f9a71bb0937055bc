//! What the log records: [`Event`]s from callers, stored as [`Entry`]s with a seq and a time.
//!
//! An entry's stored bytes are `serde_json` of [`Entry`]: a struct with a fixed field order
//! (`seq`, `time`, `kind`, then the kind's fields in declaration order), so the same entry always
//! has the same bytes. The Merkle leaf is over exactly those stored bytes; nothing re-serializes
//! an entry to check it.
//!
//! No entry holds a prompt or a completion: callers pass their HMACs (see
//! [`crate::AuditLog::hmac`]).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Longest string field kept in an entry, in bytes. Longer values (a model name taken from a
/// request body, say) are cut at a character boundary and end in `…`, so that no caller can make
/// one entry arbitrarily large.
pub const MAX_FIELD_BYTES: usize = 512;

/// What happened to a model package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageAction {
    /// Verified and stored.
    Imported,
    /// Made the active version.
    Activated,
    /// The previous version was made active again.
    RolledBack,
    /// Deleted from the store.
    Removed,
}

/// Which end of the daemon's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleAction {
    /// govboxd started serving.
    Start,
    /// govboxd stopped cleanly.
    Stop,
}

/// One thing to record, as callers pass it. The log adds the seq and the time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// An inference request was accepted; durable before the first byte of the answer.
    InferenceRequest {
        /// The request id, also returned to the client.
        request_id: String,
        /// The client's name (or certificate fingerprint).
        client: String,
        /// The model asked for.
        model: String,
        /// The active model package's manifest digest, hex, under the manifest's own `hash`.
        model_digest: String,
        /// HMAC-SHA256 of the prompt under the box's audit secret, keyed per client (see
        /// [`crate::HmacKey::client_hmac`]), lower-case hex.
        prompt_hmac: String,
        /// The endpoint, e.g. `/v1/chat/completions`.
        endpoint: String,
        /// HMAC of the request's `user` field (the calling application's end user), keyed per
        /// client like `prompt_hmac`: an end-user id is often a person's name or e-mail, which
        /// an append-only log must not hold in clear, yet an auditor holding the key can check
        /// whether a given user made a request. Absent when the request named no user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_hmac: Option<String>,
    },
    /// The answer to an inference request ended.
    InferenceCompletion {
        /// The request id of the matching `inference_request`.
        request_id: String,
        /// The client's name.
        client: String,
        /// The model that answered.
        model: String,
        /// HMAC-SHA256 of the response under the box's audit secret, keyed per client like
        /// `prompt_hmac`, lower-case hex.
        response_hmac: String,
        /// Prompt tokens.
        prompt_tokens: u64,
        /// Completion tokens.
        completion_tokens: u64,
        /// `ok`, `error:<code>` or `cancelled`.
        status: String,
        /// Wall time from request to end of answer.
        latency_ms: u64,
    },
    /// Failed authentications from one source within one minute (see
    /// [`crate::AuditLog::record_auth_failure`]).
    AuthFailure {
        /// The source IP address, or `other` for sources beyond the aggregation cap.
        source: String,
        /// The minute, RFC 3339 UTC (`2025-01-02T03:04:00Z`).
        minute: String,
        /// How many failures.
        count: u64,
        /// The reasons seen, comma-separated.
        reason: String,
    },
    /// Requests of one authenticated client refused within one minute before their
    /// `inference_request` entry (400, 403, 404, 413, 429, ...), counted the way auth failures
    /// are, so that a flood cannot fill the disk.
    RequestRefused {
        /// The client's name, or `other` for clients beyond the aggregation cap.
        client: String,
        /// The minute, RFC 3339 UTC (`2025-01-02T03:04:00.000Z`).
        minute: String,
        /// How many requests.
        count: u64,
        /// The refusals seen, as `STATUS code` (`403 model_not_allowed`), comma-separated.
        reason: String,
    },
    /// A model package import was refused (a signature, a key, a member or the model itself).
    PackageRefused {
        /// Who: `admin-socket uid N` or `uid N` (the CLI on the state folder).
        actor: String,
        /// The package file as given.
        file: String,
        /// The error's short code, e.g. `untrusted_key`, `digest_mismatch`.
        code: String,
        /// The error message (it names the package and member when they are known).
        reason: String,
    },
    /// An administrative action.
    Admin {
        /// Who: `uid 0` (local CLI) or `admin-socket uid N`.
        actor: String,
        /// What, e.g. `client_add`, `client_revoke`, `audit_hmac_query`, `forced_prune`.
        action: String,
        /// To what, e.g. the client's name.
        subject: String,
    },
    /// A model package changed.
    Package {
        /// What happened.
        action: PackageAction,
        /// The package name.
        name: String,
        /// The package version.
        version: String,
        /// Its manifest's digest, hex, under the manifest's own `hash` (SHA-256, or SM3).
        digest: String,
    },
    /// The configuration was reloaded.
    ConfigReload,
    /// govboxd started or stopped.
    Lifecycle {
        /// Start or stop.
        action: LifecycleAction,
        /// govboxd's version.
        version: String,
    },
    /// A step of a software update.
    Update {
        /// The step, e.g. `staged`, `switched`, `rolled_back`.
        step: String,
        /// Details: versions, slot.
        detail: String,
    },
    /// A policy decision about the log itself, e.g. a forced prune.
    Policy {
        /// What was decided and why.
        detail: String,
    },
    /// A content-safety verdict: a question refused, or an answer stopped or changed by the
    /// content-safety library. Never the text: which category and rule of which library decided.
    PolicyVerdict {
        /// The request id, also in the request's `inference_request` entry.
        request_id: String,
        /// The client's name.
        client: String,
        /// `input` (the question) or `output` (the answer).
        stage: String,
        /// `refuse` or `replace`.
        action: String,
        /// The category id.
        category: String,
        /// The rule id.
        rule: String,
        /// The library package's name and version.
        package: String,
        /// Its signed manifest's digest label (`sha256-<hex>`, or `sm3-<hex>` for an SM3 package).
        digest: String,
    },
    /// A content-safety policy package changed, or the box's choice of library did.
    PolicyPackage {
        /// What happened.
        action: PackageAction,
        /// Who: `admin-socket uid N` or `uid N` (the CLI on the state folder).
        actor: String,
        /// The package name.
        name: String,
        /// The package version.
        version: String,
        /// Its manifest's digest, hex, under the manifest's own `hash` (SHA-256, or SM3).
        digest: String,
    },
}

impl Event {
    /// The entry kind, as stored in the `kind` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InferenceRequest { .. } => "inference_request",
            Self::InferenceCompletion { .. } => "inference_completion",
            Self::AuthFailure { .. } => "auth_failure",
            Self::RequestRefused { .. } => "request_refused",
            Self::PackageRefused { .. } => "package_refused",
            Self::Admin { .. } => "admin",
            Self::Package { .. } => "package",
            Self::ConfigReload => "config_reload",
            Self::Lifecycle { .. } => "lifecycle",
            Self::Update { .. } => "update",
            Self::Policy { .. } => "policy",
            Self::PolicyVerdict { .. } => "policy_verdict",
            Self::PolicyPackage { .. } => "policy_package",
        }
    }

    /// Cuts every string field to [`MAX_FIELD_BYTES`].
    pub(crate) fn bounded(mut self) -> Self {
        let fields: Vec<&mut String> = match &mut self {
            Self::InferenceRequest { request_id, client, model, model_digest, prompt_hmac, endpoint, user_hmac } => {
                let mut v = vec![request_id, client, model, model_digest, prompt_hmac, endpoint];
                v.extend(user_hmac.as_mut());
                v
            }
            Self::InferenceCompletion { request_id, client, model, response_hmac, status, .. } => {
                vec![request_id, client, model, response_hmac, status]
            }
            Self::AuthFailure { source, minute, reason, .. } => vec![source, minute, reason],
            Self::RequestRefused { client, minute, reason, .. } => vec![client, minute, reason],
            Self::PackageRefused { actor, file, code, reason } => vec![actor, file, code, reason],
            Self::Admin { actor, action, subject } => vec![actor, action, subject],
            Self::Package { name, version, digest, .. } => vec![name, version, digest],
            Self::ConfigReload => vec![],
            Self::Lifecycle { version, .. } => vec![version],
            Self::Update { step, detail } => vec![step, detail],
            Self::Policy { detail } => vec![detail],
            Self::PolicyVerdict { request_id, client, stage, action, category, rule, package, digest } => {
                vec![request_id, client, stage, action, category, rule, package, digest]
            }
            Self::PolicyPackage { actor, name, version, digest, .. } => vec![actor, name, version, digest],
        };
        for f in fields {
            truncate_field(f);
        }
        self
    }
}

fn truncate_field(s: &mut String) {
    if s.len() <= MAX_FIELD_BYTES {
        return;
    }
    let mut cut = MAX_FIELD_BYTES - '…'.len_utf8();
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push('…');
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 0, without gaps.
    pub seq: u64,
    /// When the writer committed it: RFC 3339 UTC with milliseconds. Never decreases along the log.
    pub time: String,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

impl Entry {
    /// The stored bytes: the Merkle leaf is over exactly these.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Parses stored bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The time as a value, if it parses.
    pub fn parsed_time(&self) -> Option<OffsetDateTime> {
        parse_time(&self.time)
    }
}

/// Formats a time as stored: RFC 3339, UTC, exactly three fractional digits, `Z`.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// `t` cut to whole milliseconds, so that a formatted time parses back to the same value.
pub(crate) fn truncate_to_ms(t: OffsetDateTime) -> OffsetDateTime {
    let ns = t.nanosecond();
    t.replace_nanosecond(ns - ns % 1_000_000).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_bytes_have_fixed_field_order_and_round_trip() {
        let e = Entry {
            seq: 7,
            time: "2025-01-02T03:04:05.006Z".into(),
            event: Event::Admin { actor: "uid 0".into(), action: "client_add".into(), subject: "hr-app".into() },
        };
        let bytes = e.to_bytes().unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"seq":7,"time":"2025-01-02T03:04:05.006Z","kind":"admin","actor":"uid 0","action":"client_add","subject":"hr-app"}"#
        );
        assert_eq!(Entry::from_bytes(&bytes).unwrap(), e);
        let unit = Entry { seq: 0, time: e.time.clone(), event: Event::ConfigReload };
        assert_eq!(Entry::from_bytes(&unit.to_bytes().unwrap()).unwrap(), unit);
    }

    #[test]
    fn time_format_is_ms_utc_and_parses_back() {
        let t = parse_time("2025-06-30T23:59:58.123456+02:00").unwrap();
        let s = format_time(truncate_to_ms(t));
        assert_eq!(s, "2025-06-30T21:59:58.123Z");
        assert_eq!(parse_time(&s).unwrap(), truncate_to_ms(t));
    }

    #[test]
    fn long_fields_are_cut_at_a_char_boundary() {
        let e = Event::Policy { detail: "é".repeat(MAX_FIELD_BYTES) }.bounded();
        let Event::Policy { detail } = e else { unreachable!() };
        assert!(detail.len() <= MAX_FIELD_BYTES && detail.ends_with('…'));
    }
}
