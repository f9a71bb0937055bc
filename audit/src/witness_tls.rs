//! The witness over TLS (`[audit] witness = "tls://IP:PORT"`, RFC 5425).
//!
//! Plain TCP lets anyone on the path read the heads (harmless: they are public by design) and,
//! worse, stand in for the agency's log server, which would then "witness" nothing. With TLS the
//! receiver proves that it holds a certificate from the CA the agency names in `witness_ca`
//! (its own PKI, never the public web roots: the box trusts nothing it was not given), for the
//! name in `witness_server_name`, or for the IP address of `witness` when that is unset.
//!
//! When the log server asks for a client certificate (rsyslog's `x509/name` or `x509/certvalid`
//! modes, syslog-ng's `peer-verify(required-trusted)`), the box presents the chain in
//! `witness_client_cert` with the key in `witness_client_key` (mutual TLS); the server then knows
//! the heads come from this box, not from someone feeding it false ones.
//!
//! The files are read once, when the log opens (before the sandbox closes the file system), so a
//! bad path or a file without a certificate or key stops the start with an error naming the file.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::error::{AuditError, Result};
use crate::witness::{WitnessAddr, WitnessTransport};

/// How long a new connection waits for the server to refuse the client's certificate (TLS 1.3
/// sends that refusal after the handshake) before the first head goes out.
const REFUSAL_WAIT: Duration = Duration::from_millis(500);

/// Largest CA, certificate or key file read (1 MiB: a bundle of a few hundred certificates).
const MAX_CA_BYTES: u64 = 1 << 20;

/// The TLS settings of the witness (`[audit] witness_ca`, `witness_server_name`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WitnessTls {
    /// PEM file of the CA certificate(s) the receiver's certificate must chain to. Required with
    /// `tls://`, refused with `tcp://` (it would suggest a protection that is not there).
    pub ca: Option<PathBuf>,
    /// The DNS name the receiver's certificate must carry; unset: the witness's IP address.
    pub server_name: Option<String>,
    /// PEM certificate chain (the box's certificate first) presented to a receiver that asks
    /// for one. Only with `tls://`, and only together with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, or SEC1/PKCS#1) of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// What `tls://` needs to open a connection: the client configuration and the expected name.
pub(crate) struct Connector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Connector {
    /// `None` for `tcp://`; for `tls://` the CA is loaded and the name checked now.
    pub fn new(addr: WitnessAddr, tls: &WitnessTls) -> Result<Option<Self>> {
        let setting = |why: String| AuditError::Config(format!("audit witness {addr}: {why}"));
        match (addr.transport, &tls.ca) {
            (WitnessTransport::Tcp, None) => {
                if tls.server_name.is_some() {
                    return Err(setting("witness_server_name is set but the witness is tcp:// (use tls://)".into()));
                }
                if tls.client_cert.is_some() || tls.client_key.is_some() {
                    return Err(setting("witness_client_cert is set but the witness is tcp:// (use tls://)".into()));
                }
                Ok(None)
            }
            (WitnessTransport::Tcp, Some(_)) => {
                Err(setting("witness_ca is set but the witness is tcp:// (use tls://IP:PORT)".into()))
            }
            (WitnessTransport::Tls, None) => Err(setting(
                "tls:// needs witness_ca, the PEM file of the CA that signed the log server's certificate".into(),
            )),
            (WitnessTransport::Tls, Some(ca)) => {
                let roots = load_roots(ca)?;
                let name = match &tls.server_name {
                    Some(n) => ServerName::try_from(n.clone())
                        .map_err(|e| setting(format!("witness_server_name '{n}' is not a DNS name: {e}")))?,
                    None => ServerName::IpAddress(addr.addr.ip().into()),
                };
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let builder = ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| setting(format!("TLS setup: {e}")))?
                    .with_root_certificates(roots);
                let config = match (&tls.client_cert, &tls.client_key) {
                    (None, None) => builder.with_no_client_auth(),
                    (Some(cert), Some(key)) => {
                        let (chain, key) = (load_chain(cert)?, load_key(key)?);
                        builder.with_client_auth_cert(chain, key).map_err(|e| {
                            setting(format!("witness_client_cert {} with witness_client_key: {e}", cert.display()))
                        })?
                    }
                    _ => {
                        return Err(setting(
                            "witness_client_cert and witness_client_key go together: set both or neither".into(),
                        ));
                    }
                };
                Ok(Some(Self { config: Arc::new(config), name }))
            }
        }
    }

    /// Completes a TLS handshake over `sock` within `timeout`, so that a receiver with the wrong
    /// certificate is reported at once ("invalid peer certificate: …"), not at the first write.
    pub fn handshake(&self, sock: TcpStream, timeout: Duration) -> std::result::Result<TlsConn, String> {
        let conn =
            ClientConnection::new(self.config.clone(), self.name.clone()).map_err(|e| format!("starting TLS: {e}"))?;
        let mut stream = StreamOwned::new(conn, sock);
        stream.sock.set_read_timeout(Some(timeout)).map_err(|e| format!("TLS handshake: {e}"))?;
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).map_err(|e| format!("TLS handshake: {e}"))?;
        }
        // In TLS 1.3 the server judges the client's certificate (or its lack) after the client's
        // handshake is over: a refusal arrives as an alert just after. Wait for it briefly, so
        // that a refused certificate is reported, not taken for a delivered head.
        stream.sock.set_read_timeout(Some(REFUSAL_WAIT)).map_err(|e| format!("TLS handshake: {e}"))?;
        match stream.conn.read_tls(&mut stream.sock) {
            Ok(0) => return Err("TLS: the log server closed the connection after the handshake".into()),
            Ok(_) => {
                stream
                    .conn
                    .process_new_packets()
                    .map_err(|e| format!("TLS: the log server refused the connection: {e}"))?;
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("TLS: after the handshake: {e}")),
        }
        stream.sock.set_read_timeout(Some(timeout)).map_err(|e| format!("TLS handshake: {e}"))?;
        Ok(TlsConn(stream))
    }
}

/// Reads the PEM file of setting `what` (at most [`MAX_CA_BYTES`]).
fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    let io = |source| AuditError::Io { action: format!("reading the witness {what}"), path: path.into(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut pem = Vec::new();
    file.take(MAX_CA_BYTES + 1).read_to_end(&mut pem).map_err(io)?;
    if pem.len() as u64 > MAX_CA_BYTES {
        return Err(AuditError::Config(format!("{what} {}: larger than {MAX_CA_BYTES} bytes", path.display())));
    }
    Ok(pem)
}

/// The client certificate chain of `path`.
fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path, "witness_client_cert")?;
    let bad = |why: String| AuditError::Config(format!("witness_client_cert {}: {why}", path.display()));
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(bad("holds no CERTIFICATE block".into()));
    }
    Ok(chain)
}

/// The client key of `path`.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read_pem(path, "witness_client_key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        AuditError::Config(format!("witness_client_key {}: no usable PEM private key: {e}", path.display()))
    })
}

/// Reads the CA certificates of `path` (at most [`MAX_CA_BYTES`]).
fn load_roots(path: &Path) -> Result<RootCertStore> {
    let pem = read_pem(path, "witness_ca")?;
    let bad = |why: String| AuditError::Config(format!("witness_ca {}: {why}", path.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
        roots.add(cert).map_err(|e| bad(format!("a certificate that is not a usable CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no CERTIFICATE block".into()));
    }
    Ok(roots)
}

/// An established TLS connection to the witness.
pub(crate) struct TlsConn(StreamOwned<ClientConnection, TcpStream>);

impl TlsConn {
    /// Writes `bytes` and flushes them onto the socket.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all(bytes)?;
        self.0.flush()
    }

    /// True when the receiver closed the connection (a close_notify, end of stream or a broken
    /// record); reads what the receiver sent without blocking (TLS 1.3 session tickets, alerts).
    pub fn closed(&mut self) -> bool {
        let StreamOwned { conn, sock } = &mut self.0;
        if sock.set_nonblocking(true).is_err() {
            return true;
        }
        let mut closed = false;
        loop {
            match conn.read_tls(sock) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(_) => match conn.process_new_packets() {
                    Ok(state) if state.peer_has_closed() => {
                        closed = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        // Anything the receiver wrote as application data is not ours to read; drop it.
        let mut sink = [0u8; 512];
        while matches!(conn.reader().read(&mut sink), Ok(n) if n > 0) {}
        closed || sock.set_nonblocking(false).is_err()
    }
}
