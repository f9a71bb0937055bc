//! The box's HTTPS API as an intranet application calls it, for `govbox policy eval`: TLS that
//! trusts only the box CA, and a bearer token or a client certificate of that CA. One HTTP/1.1
//! connection, opened again when the server closes it.
//!
//! The server certificate's SHA-256 is kept, so that a report can name the box it spoke to.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use ring::digest::{SHA256, digest};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// No answer of the API to one question is anywhere near this size.
const ANSWER_LIMIT: usize = 16 << 20;

/// How the client proves who it is.
pub enum Credentials {
    /// `Authorization: Bearer` with this token.
    Token(String),
    /// A client certificate (and its key), PEM, issued by the box CA (`govbox client add`).
    Certificate {
        /// The certificate chain.
        cert_pem: String,
        /// Its private key.
        key_pem: String,
    },
}

/// One answer: status, JSON body (`null` when not JSON) and `Retry-After` when given.
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body as JSON.
    pub json: Value,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
}

/// A client of one box's API.
pub struct ApiClient {
    rt: tokio::runtime::Runtime,
    conn: Connection,
    timeout: Duration,
}

/// What a request needs; apart from the runtime that drives it.
struct Connection {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    token: Option<String>,
    sender: Option<SendRequest<Full<Bytes>>>,
    server_cert_sha256: Option<String>,
}

impl ApiClient {
    /// A client of the API at `url` (`https://HOST[:PORT]`), trusting `ca_pem` only.
    pub fn new(url: &str, ca_pem: &str, credentials: Credentials, timeout: Duration) -> Result<Self> {
        let uri: hyper::Uri = url.parse().with_context(|| format!("--url '{url}' is not a URL"))?;
        if uri.scheme_str() != Some("https") {
            bail!("--url '{url}': the box's API is served over https only");
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            bail!("--url '{url}': give the box's address only (https://HOST:PORT), without a path");
        }
        let host = uri.host().ok_or_else(|| anyhow!("--url '{url}' names no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| anyhow!("--url '{url}': '{host}' is not a server name: {e}"))?;
        let (config, token) = client_config(ca_pem, credentials)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
        let conn = Connection {
            port: uri.port_u16().unwrap_or(443),
            host,
            server_name,
            tls: TlsConnector::from(Arc::new(config)),
            token,
            sender: None,
            server_cert_sha256: None,
        };
        Ok(ApiClient { rt, conn, timeout })
    }

    /// Lower-case hex SHA-256 of the server's certificate (DER), once connected.
    pub fn server_cert_sha256(&self) -> Option<&str> {
        self.conn.server_cert_sha256.as_deref()
    }

    /// `POST path` with a JSON body; the whole answer.
    pub fn post_json(&mut self, path: &str, body: &Value) -> Result<Answer> {
        let bytes = Bytes::from(serde_json::to_vec(body).context("encoding the request")?);
        let timeout = self.timeout;
        self.rt.block_on(async {
            tokio::time::timeout(timeout, self.conn.send(path, bytes))
                .await
                .map_err(|_| anyhow!("no answer from the box within {} s", timeout.as_secs()))?
        })
    }
}

impl Connection {
    async fn send(&mut self, path: &str, body: Bytes) -> Result<Answer> {
        let mut req = hyper::Request::builder()
            .method("POST")
            .uri(path)
            .header("host", format!("{}:{}", self.host, self.port))
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Full::new(body)).context("building the request")?;
        // A kept connection the server has closed is opened again.
        let kept = match self.sender.take() {
            Some(mut s) => s.ready().await.ok().map(|()| s),
            None => None,
        };
        let mut sender = match kept {
            Some(s) => s,
            None => self.connect().await?,
        };
        let resp = sender.send_request(req).await.context("sending the request")?;
        let status = resp.status().as_u16();
        let retry_after =
            resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        let bytes = Limited::new(resp.into_body(), ANSWER_LIMIT)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer (at most {ANSWER_LIMIT} bytes): {e}"))?
            .to_bytes();
        self.sender = Some(sender);
        Ok(Answer { status, json: serde_json::from_slice(&bytes).unwrap_or(Value::Null), retry_after })
    }

    async fn connect(&mut self) -> Result<SendRequest<Full<Bytes>>> {
        let at = format!("{}:{}", self.host, self.port);
        let tcp =
            TcpStream::connect((self.host.as_str(), self.port)).await.with_context(|| format!("connecting to {at}"))?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .with_context(|| format!("TLS with {at} (is --ca the box CA, and the client certificate its?)"))?;
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        self.server_cert_sha256 = leaf.map(|c| hex(digest(&SHA256, c.as_ref()).as_ref()));
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

fn client_config(ca_pem: &str, credentials: Credentials) -> Result<(rustls::ClientConfig, Option<String>)> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.context("the CA file is not PEM certificates")?).context("the CA certificate")?;
    }
    if roots.is_empty() {
        bail!("the CA file holds no certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots);
    Ok(match credentials {
        Credentials::Token(t) => (builder.with_no_client_auth(), Some(t)),
        Credentials::Certificate { cert_pem, key_pem } => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .context("the client certificate is not PEM")?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the client key is not PEM")?;
            (builder.with_client_auth_cert(chain, key).context("the client certificate and key")?, None)
        }
    })
}

pub use govbox_provisioning::hex;
