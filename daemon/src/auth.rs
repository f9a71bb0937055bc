//! Who is calling, and what they may do.
//!
//! Every request looks its client up in the store again, so a revocation (which the admin socket
//! writes to the same store) refuses the very next request; nothing is cached.
//!
//! A connection that presented a client certificate is that certificate's client: the TLS layer
//! has already checked that the box's CA issued it, and the store says whether it is still the
//! current, unrevoked, unexpired certificate of an active client. Otherwise, unless `tls.mtls` is
//! `required`, an `Authorization: Bearer` token names the client.

use std::net::SocketAddr;
use std::time::Instant;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use govbox_provisioning::{ClientRecord, Scope};

use crate::api::error::ApiError;
use crate::config::MtlsMode;
use crate::models::LoadedModel;
use crate::state::AppState;

/// What the TLS (or TLCP) layer learnt about a connection; every request on it carries a copy.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The verified client certificate, when one was presented.
    pub client_cert: Option<ClientCert>,
}

/// A verified client certificate, by the SHA-256 of its DER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    /// An mTLS certificate of the box's CA, on the HTTPS port.
    Tls([u8; 32]),
    /// The signing certificate of a TLCP client pair of the box's SM2 CA, on the TLCP port.
    Tlcp([u8; 32]),
}

/// Identifies the client of a request.
pub fn authenticate(state: &AppState, conn: Option<&ConnInfo>, headers: &HeaderMap) -> Result<ClientRecord, ApiError> {
    match conn.and_then(|c| c.client_cert) {
        Some(ClientCert::Tls(fp)) => {
            return state.store.find_by_cert_fingerprint(&fp).ok_or(ApiError::CertificateNotAuthorised);
        }
        Some(ClientCert::Tlcp(fp)) => return find_tlcp_client(state, &fp).ok_or(ApiError::CertificateNotAuthorised),
        None => {}
    }
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(ApiError::MissingCredentials);
    };
    if state.config.tls.mtls == MtlsMode::Required {
        return Err(ApiError::MissingCredentials);
    }
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or(ApiError::InvalidToken)?;
    state.store.find_by_token(token).ok_or(ApiError::InvalidToken)
}

#[cfg(feature = "tlcp")]
fn find_tlcp_client(state: &AppState, fp: &[u8; 32]) -> Option<ClientRecord> {
    govbox_provisioning::tlcp_ca::find_by_tlcp_cert(&state.store, fp)
}

/// Without the `tlcp` feature no connection carries a TLCP certificate.
#[cfg(not(feature = "tlcp"))]
fn find_tlcp_client(_: &AppState, _: &[u8; 32]) -> Option<ClientRecord> {
    None
}

/// Checks that `client` may use `model`, and takes the request from its rate and budget.
pub fn authorise(state: &AppState, client: &ClientRecord, model: &LoadedModel) -> Result<(), ApiError> {
    if !may_use(client, &model.name) {
        return Err(ApiError::ModelNotAllowed { client: client.name.clone(), model: model.name.clone() });
    }
    state.quotas.take_request(client, state.config.serving.default_client_rpm, Instant::now())?;
    Ok(state.quotas.check_budget(client)?)
}

/// Whether the client is an inference client whose model list allows `model` (an empty list,
/// chosen as `--models all`, allows every model).
pub fn may_use(client: &ClientRecord, model: &str) -> bool {
    client.has_scope(Scope::Inference) && (client.models.is_empty() || client.models.iter().any(|m| m == model))
}

/// Whether the caller may read what is behind `scope`.
pub fn require_scope(client: &ClientRecord, scope: Scope) -> Result<(), ApiError> {
    match client.has_scope(scope) {
        true => Ok(()),
        false => Err(ApiError::ScopeNotGranted { client: client.name.clone(), scope: scope.as_str() }),
    }
}

/// Whether the request carries any credential (a client certificate or an `Authorization`
/// header): endpoints open to anyone say more to a caller that does.
pub fn presents_credentials(conn: Option<&ConnInfo>, headers: &HeaderMap) -> bool {
    conn.is_some_and(|c| c.client_cert.is_some()) || headers.contains_key(AUTHORIZATION)
}
