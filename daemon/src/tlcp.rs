//! The TLCP listener (GB/T 38636-2020, the dual-certificate 国密 SSL), on `[tlcp] listen`.
//!
//! The handshake is Tongsuo's (NTLS, through `tokio-tongsuo`), with the box's SM2 signing and
//! encryption certificates of `state/tls/tlcp/` (`govbox tls tlcp-init`). Only the four TLCP
//! suites of GB/T 38636 with SM4 and SM3 are offered: ECC_SM4_GCM_SM3, ECDHE_SM4_GCM_SM3,
//! ECC_SM4_CBC_SM3 and ECDHE_SM4_CBC_SM3 (Tongsuo's `ECC-SM2-SM4-GCM-SM3`, ...), GCM first. The
//! NTLS server method speaks TLCP only: a TLS ClientHello gets a protocol-version alert.
//!
//! Client certificate pairs are asked for and checked against the box's SM2 CA as `tls.mtls` says
//! for the HTTPS port (`off`: not asked; `optional`: checked when sent; `required`: a connection
//! without one fails the handshake). A verified signing certificate names its client through the
//! client store (`tlcp_ca::find_by_tlcp_cert`), so revocation and a pair issued again refuse the
//! next request, as for mTLS. After the handshake the connection is the HTTPS port's: the same
//! router, auth, quotas, limits and audit (`server::serve_with`).

use std::path::Path;
use std::pin::Pin;

use govbox_provisioning::tlcp_ca::{self, TlcpCaError};
use tokio::net::TcpStream;
use tokio_tongsuo::SslStream;
use tongsuo::error::ErrorStack;
use tongsuo::pkey::PKey;
use tongsuo::ssl::{Ssl, SslContext, SslMethod, SslVerifyMode};
use tongsuo::x509::X509;

use crate::auth::ClientCert;
use crate::config::MtlsMode;
use crate::server::Handshake;
use crate::state::AppState;

/// The suites offered, in order of preference (Tongsuo's names for the GB/T 38636 suites).
pub const CIPHERS: &str = "ECC-SM2-SM4-GCM-SM3:ECDHE-SM2-SM4-GCM-SM3:ECC-SM2-SM4-CBC-SM3:ECDHE-SM2-SM4-CBC-SM3";

/// Why the TLCP listener could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlcpError {
    /// The TLCP material of the state folder is missing or damaged.
    #[error(transparent)]
    Material(#[from] TlcpCaError),
    /// Tongsuo refused the material or the settings.
    #[error("TLCP setup: {what}: {source}")]
    Tongsuo {
        /// What was being set up.
        what: &'static str,
        /// Tongsuo's error stack.
        source: ErrorStack,
    },
}

fn ts(what: &'static str) -> impl FnOnce(ErrorStack) -> TlcpError {
    move |source| TlcpError::Tongsuo { what, source }
}

/// Tongsuo's NTLS handshake with the box's TLCP certificates.
pub struct TlcpHandshake {
    ctx: SslContext,
}

impl std::fmt::Debug for TlcpHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlcpHandshake").finish_non_exhaustive()
    }
}

impl TlcpHandshake {
    /// The settings of the TLCP port, from the state folder's `tls/tlcp/`.
    pub fn new(state_dir: &Path, mtls: MtlsMode) -> Result<Self, TlcpError> {
        let m = tlcp_ca::load_tlcp(state_dir)?;
        let mut b = SslContext::builder(SslMethod::ntls_server()).map_err(ts("the NTLS context"))?;
        b.enable_ntls();
        b.set_cipher_list(CIPHERS).map_err(ts("the TLCP suites"))?;
        let cert = |pem: &str, what| X509::from_pem(pem.as_bytes()).map_err(ts(what));
        let key = |pem: &str, what| PKey::private_key_from_pem(pem.as_bytes()).map_err(ts(what));
        let sign_cert = cert(&m.sign.cert_pem, "the signing certificate")?;
        let sign_key = key(&m.sign.key_pem, "the signing key")?;
        let enc_cert = cert(&m.enc.cert_pem, "the encryption certificate")?;
        let enc_key = key(&m.enc.key_pem, "the encryption key")?;
        b.set_sign_certificate(&sign_cert).map_err(ts("the signing certificate"))?;
        b.set_sign_private_key(&sign_key).map_err(ts("the signing key"))?;
        b.set_enc_certificate(&enc_cert).map_err(ts("the encryption certificate"))?;
        b.set_enc_private_key(&enc_key).map_err(ts("the encryption key"))?;
        let ca = cert(&m.ca_pem, "the TLCP CA certificate")?;
        b.cert_store_mut().add_cert(ca.clone()).map_err(ts("trusting the TLCP CA"))?;
        b.add_client_ca(&ca).map_err(ts("naming the TLCP CA to clients"))?;
        b.set_verify(match mtls {
            MtlsMode::Off => SslVerifyMode::NONE,
            MtlsMode::Optional => SslVerifyMode::PEER,
            MtlsMode::Required => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        });
        b.set_session_id_context(b"govbox-tlcp").map_err(ts("the session id context"))?;
        Ok(TlcpHandshake { ctx: b.build() })
    }
}

impl Handshake for TlcpHandshake {
    type Stream = SslStream<TcpStream>;
    const NAME: &'static str = "TLCP";

    async fn accept(&self, tcp: TcpStream, _state: &AppState) -> Result<(Self::Stream, Option<ClientCert>), String> {
        let ssl = Ssl::new(&self.ctx).map_err(|e| e.to_string())?;
        let mut stream = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
        Pin::new(&mut stream).accept().await.map_err(|e| e.to_string())?;
        // The client's signing certificate: the one verified against the CA, naming the client.
        let cert = match stream.ssl().peer_certificate() {
            Some(c) => Some(c.to_der().map_err(|e| e.to_string())?),
            None => None,
        };
        let fp = cert.map(|der| {
            let d = ring::digest::digest(&ring::digest::SHA256, &der);
            let mut out = [0u8; 32];
            out.copy_from_slice(d.as_ref());
            ClientCert::Tlcp(out)
        });
        Ok((stream, fp))
    }
}
