//! The HTTPS server's TLS settings, built from the provisioned state with rustls and the ring
//! provider.
//!
//! Only TLS 1.3 and TLS 1.2, only ECDHE key exchange (X25519, P-256, P-384), only AEAD ciphers
//! (AES-GCM and ChaCha20-Poly1305). Client certificates are verified against the box's own CA
//! and nothing else; whether one is required follows `tls.mtls`. Which client a verified
//! certificate belongs to is decided per request, by its SHA-256 fingerprint, in `auth`.
//!
//! One exception to webpki's verdict, and only one: a client certificate past its own notAfter
//! completes the handshake when its whole chain verifies at that moment. Its requests are then
//! refused by `auth` with a 401 in OpenAI's error shape, which a client can read, instead of a
//! `certificate expired` alert that SDKs report as an opaque connection error. A certificate of
//! another CA, a bad signature, or an intermediate past its own notAfter still fail the handshake.

use std::sync::{Arc, RwLock};

use govbox_provisioning::ServerTls;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::{CryptoProvider, ring};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::MtlsMode;

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// A PEM file of the state folder does not parse.
    #[error("TLS setup: {what}: {reason}")]
    Pem {
        /// Which file.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// rustls refused the material or the settings.
    #[error("TLS setup: {what}: {source}")]
    Rustls {
        /// What was being built.
        what: &'static str,
        /// rustls's error.
        source: rustls::Error,
    },
}

/// The ring provider, cut down to ECDHE with AEAD suites.
pub fn provider() -> CryptoProvider {
    use ring::cipher_suite::*;
    use ring::kx_group::*;
    CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_256_GCM_SHA384,
            TLS13_AES_128_GCM_SHA256,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![X25519, SECP256R1, SECP384R1],
        ..ring::default_provider()
    }
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Pem { what, reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Pem { what, reason: "no CERTIFICATE block".into() });
    }
    Ok(certs)
}

/// What the served certificate says about itself (`status`, `tls_reload`): the admin protocol's
/// type, so that the CLI reads the same fields.
pub type ServedCert = govbox_admin::protocol::CertificateSummary;

/// The server certificate and key that new handshakes get. `tls_reload` swaps them: a handshake
/// takes the current pair once, so connections already open keep theirs, and the listener, its
/// settings and the TLS session cache stay as they are.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<(Arc<CertifiedKey>, ServedCert)>,
}

impl ServerCert {
    /// The pair of `material`, checked: the key matches the certificate and the certificate chains
    /// to the box's CA (the one in `material`) for the first name it carries.
    pub fn load(material: &ServerTls) -> Result<Self, TlsSetupError> {
        Ok(ServerCert { current: RwLock::new(certified(material)?) })
    }

    /// Serves `material` to new handshakes from now on; on an error the current pair stays.
    /// Returns what was served before and what is served now.
    pub fn replace(&self, material: &ServerTls) -> Result<(ServedCert, ServedCert), TlsSetupError> {
        let next = Self::check(material)?;
        let now = next.summary().clone();
        Ok((self.install(next), now))
    }

    /// Checks `material` as [`ServerCert::load`] does, without serving it yet.
    pub fn check(material: &ServerTls) -> Result<CheckedCert, TlsSetupError> {
        Ok(CheckedCert(certified(material)?))
    }

    /// Serves a checked pair to new handshakes from now on; returns what was served before.
    pub fn install(&self, next: CheckedCert) -> ServedCert {
        std::mem::replace(&mut *self.current.write().unwrap_or_else(|p| p.into_inner()), next.0).1
    }

    /// What is being served.
    pub fn served(&self) -> ServedCert {
        self.current.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }
}

/// A certificate and key that [`ServerCert::check`] accepted, not yet served.
#[derive(Debug)]
pub struct CheckedCert((Arc<CertifiedKey>, ServedCert));

impl CheckedCert {
    /// What it is.
    pub fn summary(&self) -> &ServedCert {
        &self.0.1
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).0.clone())
    }
}

fn certified(material: &ServerTls) -> Result<(Arc<CertifiedKey>, ServedCert), TlsSetupError> {
    let what = "server certificate (tls/server.crt)";
    let chain = certs(&material.cert_chain_pem, what)?;
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes())
        .map_err(|e| TlsSetupError::Pem { what: "server key (tls/server.key)", reason: e.to_string() })?;
    let provider = Arc::new(provider());
    let ck = CertifiedKey::from_der(chain.clone(), key, &provider)
        .map_err(|source| TlsSetupError::Rustls { what: "server certificate and key", source })?;
    let info = govbox_provisioning::ServerCertSummary::from_der(chain[0].as_ref(), "tls/server.crt")
        .map_err(|e| TlsSetupError::Pem { what, reason: e.to_string() })?;
    // A certificate that does not chain to the CA the clients hold would break every one of them.
    let mut roots = RootCertStore::empty();
    for ca in certs(&material.ca_pem, "CA certificate (tls/ca.crt)")? {
        roots.add(ca).map_err(|source| TlsSetupError::Rustls { what: "CA certificate", source })?;
    }
    let name = info.sans.first().cloned().unwrap_or_default();
    let server_name = ServerName::try_from(name.clone()).map_err(|e| TlsSetupError::Pem {
        what,
        reason: format!("its first subjectAltName '{name}' is not a usable server name: {e}"),
    })?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().map_err(|e| {
        TlsSetupError::Rustls { what: "server certificate check", source: rustls::Error::General(e.to_string()) }
    })?;
    verifier.verify_server_cert(&chain[0], &chain[1..], &server_name, &[], UnixTime::now()).map_err(|source| {
        TlsSetupError::Rustls { what: "server certificate against the box's CA (tls/ca.crt)", source }
    })?;
    let served = ServedCert {
        serial: info.serial.clone(),
        not_after: info.not_after,
        expires: info.not_after_rfc3339(),
        sha256: info.sha256,
    };
    Ok((Arc::new(ck), served))
}

/// The server configuration for `material` and `mtls`, with its own certificate resolver.
pub fn server_config(material: &ServerTls, mtls: MtlsMode) -> Result<ServerConfig, TlsSetupError> {
    server_config_with(material, mtls, Arc::new(ServerCert::load(material)?))
}

/// The server configuration for `material`'s CA and `mtls`, serving `cert`'s current pair.
pub fn server_config_with(
    material: &ServerTls,
    mtls: MtlsMode,
    cert: Arc<ServerCert>,
) -> Result<ServerConfig, TlsSetupError> {
    let provider = Arc::new(provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsSetupError::Rustls { what: "protocol versions", source })?;
    let verifier: Arc<dyn ClientCertVerifier> = match mtls {
        MtlsMode::Off => WebPkiClientVerifier::no_client_auth(),
        MtlsMode::Required | MtlsMode::Optional => {
            let mut roots = RootCertStore::empty();
            for ca in certs(&material.ca_pem, "CA certificate (tls/ca.crt)")? {
                roots.add(ca).map_err(|source| TlsSetupError::Rustls { what: "CA certificate", source })?;
            }
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let b = if mtls == MtlsMode::Optional { b.allow_unauthenticated() } else { b };
            let inner = b.build().map_err(|e| TlsSetupError::Rustls {
                what: "client certificate verifier",
                source: rustls::Error::General(e.to_string()),
            })?;
            Arc::new(ExpiryAnsweredInHttp { inner })
        }
    };
    let mut config = builder.with_client_cert_verifier(verifier).with_cert_resolver(cert);
    // HTTP/1.1 only: every OpenAI SDK speaks it, and it keeps one code path to harden.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// webpki's client certificate verifier, except for an end-entity certificate past its own
/// notAfter (see the module docs): that one is verified again, chain and all, at its notAfter.
#[derive(Debug)]
struct ExpiryAnsweredInHttp {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for ExpiryAnsweredInHttp {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict = self.inner.verify_client_cert(end_entity, intermediates, now);
        let Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { not_after, .. })) = &verdict
        else {
            return verdict;
        };
        // Only the client's own expiry: an expired intermediate (another notAfter) keeps webpki's verdict.
        let own = govbox_provisioning::CertInfo::from_der(end_entity.as_ref(), "client certificate").ok();
        if own.is_some_and(|c| u64::try_from(c.not_after).ok() == Some(not_after.as_secs())) {
            self.inner.verify_client_cert(end_entity, intermediates, *not_after)
        } else {
            verdict
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// SHA-256 of a certificate's DER: how the client store names certificates.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    let d = ::ring::digest::digest(&::ring::digest::SHA256, cert.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_swaps_the_served_pair_and_refuses_a_bad_one() {
        let (_tmp, state) = crate::state::test_state();
        let before = state.server_cert.served();
        let old_material = govbox_provisioning::load_server_tls(&state.state_dir).unwrap();
        let renewed = govbox_provisioning::renew_server_cert(&state.state_dir, 30).unwrap();
        assert_eq!(renewed.old.serial, before.serial);
        let material = govbox_provisioning::load_server_tls(&state.state_dir).unwrap();
        let (old, new) = state.server_cert.replace(&material).unwrap();
        assert_eq!((old.serial.as_str(), new.serial.as_str()), (before.serial.as_str(), renewed.new.serial.as_str()));
        assert_eq!(state.server_cert.served(), new);
        // The new certificate with the old key: refused, and the served pair stays.
        let mismatched = ServerTls { key_pem: old_material.key_pem.clone(), ..material.clone() };
        let e = state.server_cert.replace(&mismatched).unwrap_err();
        assert!(e.to_string().contains("server certificate and key"), "{e}");
        // A pair that does not chain to the CA the clients hold: refused too.
        let foreign = ServerTls {
            ca_pem: old_material
                .cert_chain_pem
                .split_inclusive("-----END CERTIFICATE-----\n")
                .next()
                .unwrap()
                .to_string(),
            ..material.clone()
        };
        assert!(state.server_cert.replace(&foreign).is_err());
        assert_eq!(state.server_cert.served(), new);
    }

    #[test]
    fn only_ecdhe_aead_suites_are_offered() {
        let p = provider();
        for s in &p.cipher_suites {
            let name = format!("{:?}", s.suite());
            let ok = name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_");
            assert!(ok && (name.contains("GCM") || name.contains("CHACHA20_POLY1305")), "{name}");
        }
        assert_eq!(p.cipher_suites.len(), 9);
    }
}
