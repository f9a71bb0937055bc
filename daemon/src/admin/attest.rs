//! `attest`: a signed attestation report of what this daemon runs, for the verifier's nonce.
//!
//! The daemon only fills in what it alone knows (its own binary, its config path, the models it
//! serves, the audit head, the backend, the egress lockdown); the format, hashing and signing are
//! `govbox-attestation`'s. Each report is itself recorded in the audit log before it is given
//! out, so that who asked the box to vouch for itself, and when, is on the record.

use std::path::Path;

use govbox_attestation::{
    BOOT_ID_PATH, BackendMeasurement, Measurements, Nonce, ReportBody, SELF_EXE, SignedReport, sign_report,
};
use govbox_audit::Event;
use govbox_provisioning::{SigningKey, StatePaths, Suite};

use super::AdminFailure;
use crate::state::AppState;

/// Makes and signs a report for `nonce_hex` (16 to 64 bytes of hex).
pub fn attest(state: &AppState, nonce_hex: &str) -> Result<SignedReport, AdminFailure> {
    let nonce = Nonce::parse(nonce_hex)?;
    let paths = StatePaths::new(&state.state_dir);
    let key = SigningKey::load_pem(paths.device_key())?;
    // The suite names the measurement hash; the device key must be of its algorithm.
    let suite = Suite::load(&paths)?;
    suite.check_key("the device key", key.algorithm())?;

    let mut measurements = Measurements::builder_with(suite.hash_algorithm())
        .binary(Path::new(SELF_EXE))?
        .config(state.config_path.as_deref())?
        .trust_root(&paths.root_json())?
        .boot_id(Path::new(BOOT_ID_PATH))?;
    if let Some(models) = state.models.get() {
        for m in models.iter() {
            measurements = measurements.model(&m.name, m.source.version(), m.source.digest());
        }
    }
    let measurements = measurements.build()?;

    // Record the request first: no report leaves the box unless its record is durable. The head
    // taken afterwards then covers this very entry.
    state
        .audit
        .append_blocking(Event::Policy { detail: format!("attestation report for nonce {}", nonce.as_hex()) })?;
    let head = state.audit.checkpoint()?;

    let info = state.backend.info();
    let backend = BackendMeasurement {
        kind: format!("{:?}", info.kind).to_lowercase(),
        name: info.name,
        simulated: info.simulated,
    };
    let mut body = ReportBody::new(&nonce, &key.public_key(), measurements, head, backend, state.insecure_dev_models)
        .with_tpm_quote();
    if let Some(egress) = crate::sandbox::current() {
        body = body.with_egress(egress.clone());
    }
    Ok(sign_report(&key, body)?)
}
