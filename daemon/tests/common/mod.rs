//! Test harness: a provisioned state folder, a real `govboxd` process on a free port of
//! 127.0.0.1, an HTTPS client that trusts the box's CA (optionally with a client certificate),
//! and the admin socket. Every wait polls with a deadline.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use govbox_provisioning::{
    ClientStore, IssuedClient, NewClient, Overwrite, ProvisionOptions, Role, Scope, SigningKey, TrustKeySpec, provision,
};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

/// The tiny qwen2 chat model of the engine's fixtures.
pub fn tiny_qwen2() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-qwen2"))
}

/// The real MiniLM, or `None` (after saying so) when it is absent and
/// `GOVBOX_SKIP_REAL_MODELS=1`. Absent otherwise is a failure: the property must not pass untested.
pub fn minilm() -> Option<PathBuf> {
    let dir = std::env::var_os("GOVBOX_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/models/minilm")));
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    if std::env::var("GOVBOX_SKIP_REAL_MODELS").as_deref() == Ok("1") {
        println!("SKIPPED: real MiniLM model not found at {} (GOVBOX_SKIP_REAL_MODELS=1)", dir.display());
        return None;
    }
    panic!(
        "real MiniLM model not found at {}: run scripts/fetch-models.sh minilm, set GOVBOX_MINILM_DIR, \
         or set GOVBOX_SKIP_REAL_MODELS=1 to skip",
        dir.display()
    );
}

/// A provisioned state folder.
pub struct Box_ {
    pub tmp: tempfile::TempDir,
    pub state: PathBuf,
    pub ca_pem: String,
}

/// A client's credentials as the tests hold them.
#[derive(Clone)]
pub struct Creds {
    pub token: Option<String>,
    pub cert: Option<(String, String)>,
}

impl Creds {
    pub fn none() -> Self {
        Creds { token: None, cert: None }
    }
    pub fn token(t: &str) -> Self {
        Creds { token: Some(t.to_string()), cert: None }
    }
    pub fn cert_only(&self) -> Self {
        Creds { token: None, cert: self.cert.clone() }
    }
    pub fn token_only(&self) -> Self {
        Creds { token: self.token.clone(), cert: None }
    }
}

pub fn creds_of(i: &IssuedClient) -> Creds {
    Creds {
        token: i.token.as_ref().map(|t| t.expose().to_string()),
        cert: Some((i.cert.cert_pem.clone(), i.cert.key_pem.clone())),
    }
}

impl Box_ {
    pub fn provision() -> Self {
        Self::provision_with(&SigningKey::generate().unwrap())
    }

    /// A box whose trust root gives every role (the optional `policy` role too) to `vendor`.
    pub fn provision_with(vendor_key: &SigningKey) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let vendor = tmp.path().join("vendor.pub");
        vendor_key.public_key().write_pem(&vendor, Overwrite::Refuse).unwrap();
        let state = tmp.path().join("state");
        provision(&ProvisionOptions {
            state_dir: state.clone(),
            hostname: Some("govbox-test".into()),
            extra_sans: vec![],
            trust_keys: vec![TrustKeySpec { roles: Role::ALL.to_vec(), path: vendor }],
            thresholds: vec![],
            force: false,
            audit_pub: None,
            suite: govbox_provisioning::Suite::Intl,
        })
        .unwrap();
        let ca_pem = std::fs::read_to_string(state.join("tls/ca.crt")).unwrap();
        Box_ { tmp, state, ca_pem }
    }

    /// Adds an inference client through the library (the daemon must not be running); no models
    /// means `all`.
    pub fn add_client(&self, name: &str, models: &[&str], rpm: Option<u32>, tokens_per_day: Option<u64>) -> Creds {
        let models = if models.is_empty() { &["all"][..] } else { models };
        self.add_scoped(name, models, &[Scope::Inference], rpm, tokens_per_day)
    }

    /// Adds a client that may read `/metrics` only (the daemon must not be running).
    pub fn add_metrics_client(&self, name: &str) -> Creds {
        self.add_scoped(name, &[], &[Scope::Metrics], None, None)
    }

    fn add_scoped(
        &self,
        name: &str,
        models: &[&str],
        scopes: &[Scope],
        rpm: Option<u32>,
        tokens_per_day: Option<u64>,
    ) -> Creds {
        // sled releases its lock shortly after the previous handle is dropped, not at once.
        let store = wait_for(10, "the client store's lock", || match ClientStore::open(&self.state) {
            Err(govbox_provisioning::ProvisionError::StoreLocked { .. }) => None,
            r => Some(r.unwrap()),
        });
        let issued = store
            .add(NewClient {
                name: name.parse().unwrap(),
                models: models.iter().map(|m| m.to_string()).collect(),
                scopes: scopes.to_vec(),
                rpm,
                tokens_per_day,
                max_concurrent: None,
                cert_days: 30,
                with_token: true,
                allow_special_tokens: false,
                policy: None,
            })
            .unwrap();
        creds_of(&issued)
    }

    /// Writes a config with `listen = 127.0.0.1:0`, the given models and extra TOML.
    pub fn config(&self, models: &[(&str, &Path)], extra: &str) -> PathBuf {
        let mut text = String::from("config_version = 1\nlisten = \"127.0.0.1:0\"\nthreads = 1\n");
        text.push_str(extra);
        text.push('\n');
        for (name, path) in models {
            text.push_str(&format!("[[models]]\nname = \"{name}\"\npath = \"{}\"\n", path.display()));
        }
        let path = self.tmp.path().join("govbox.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A running govboxd.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: PathBuf,
    pub ca_pem: String,
    pub output: Arc<Mutex<Vec<String>>>,
}

/// govboxd serving the test config's unsigned `[[models]]` folders (the package path is tested
/// in the e2e crate).
pub fn govboxd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_govboxd"));
    cmd.arg("--insecure-dev-models");
    cmd
}

/// Collects a child's stdout and stderr lines.
pub fn capture(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let pipes: Vec<Box<dyn std::io::Read + Send>> = vec![
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ];
    for pipe in pipes {
        let out = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                out.lock().unwrap().push(line);
            }
        });
    }
    out
}

/// Polls `f` until it gives `Some`, or panics after `secs` seconds with `what`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Daemon {
    /// Starts govboxd with `cmd`'s extra settings and waits until it listens.
    pub fn start(b: &Box_, config: &Path) -> Daemon {
        Self::start_with(b, config, &[], &[])
    }

    pub fn start_with(b: &Box_, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = govboxd();
        cmd.arg("--state").arg(&b.state).arg("--config").arg(config).args(args);
        cmd.env_remove("NOTIFY_SOCKET").env_remove("WATCHDOG_USEC").env_remove("JOURNAL_STREAM");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let output = capture(&mut child);
        let addr = wait_for(60, "the 'listening on' log line", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("govboxd exited with {status}: {:#?}", output.lock().unwrap());
            }
            output.lock().unwrap().iter().find_map(|l| {
                let rest = l.split("listening on https://").nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            })
        });
        Daemon { child, addr, admin: b.state.join("admin.sock"), ca_pem: b.ca_pem.clone(), output }
    }

    /// Starts and waits for `/readyz` to say 200.
    pub async fn ready(b: &Box_, config: &Path) -> Daemon {
        let d = Self::start(b, config);
        d.wait_ready().await;
        d
    }

    pub async fn wait_ready(&self) {
        self.wait_ready_with(&Creds::none()).await
    }

    pub async fn wait_ready_with(&self, creds: &Creds) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = self.get(creds, "/readyz").await
                && r.status == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "govboxd not ready: {:#?}", self.output.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn logs(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Opens a TLS connection and an HTTP/1.1 sender on it.
    pub async fn connect(&self, creds: &Creds) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        Ok(connect_to(self.addr, &self.ca_pem, creds.cert.as_ref()).await?.0)
    }

    /// Sends a POST on a fresh connection; returns the response with its body unread and the
    /// connection's task, which the caller may abort to drop the connection.
    pub async fn post_streaming(
        &self,
        creds: &Creds,
        path: &str,
        body: &Value,
    ) -> (hyper::Response<Incoming>, tokio::task::JoinHandle<()>) {
        let (mut sender, conn) = connect_to(self.addr, &self.ca_pem, creds.cert.as_ref()).await.unwrap();
        let mut req = hyper::Request::builder().method("POST").uri(path).header("host", "localhost");
        if let Some(t) = &creds.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        (sender.send_request(req).await.unwrap(), conn)
    }

    pub async fn send(&self, creds: &Creds, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Resp, String> {
        let resp = self.send_raw(creds, method, path, body).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes().to_vec();
        Ok(Resp { status, headers, body })
    }

    /// Sends a request and returns the response with its body unread.
    pub async fn send_raw(
        &self,
        creds: &Creds,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, String> {
        let mut sender = self.connect(creds).await?;
        let mut req = hyper::Request::builder().method(method).uri(path).header("host", "localhost");
        if let Some(t) = &creds.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
        sender.send_request(req).await.map_err(|e| e.to_string())
    }

    pub async fn get(&self, creds: &Creds, path: &str) -> Result<Resp, String> {
        self.send(creds, "GET", path, None).await
    }

    pub async fn post(&self, creds: &Creds, path: &str, body: &Value) -> Resp {
        self.send(creds, "POST", path, Some(body.to_string().into_bytes())).await.unwrap()
    }

    /// One admin-socket request.
    pub fn admin(&self, req: &Value) -> Value {
        admin_call(&self.admin, req)
    }

    /// The whole audit log, exported through the admin socket: its entries.
    pub fn audit_entries(&self) -> Vec<Value> {
        use base64::Engine as _;
        let a = self.admin(&serde_json::json!({"cmd": "audit_export"}));
        assert_eq!(a["ok"], true, "{a}");
        let b64 = a["result"]["export_b64"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let doc: Value = serde_json::from_slice(&bytes).unwrap();
        let entries = doc["entries"].as_array().unwrap();
        entries.iter().map(|e| serde_json::from_str(e["entry"].as_str().unwrap()).unwrap()).collect()
    }

    /// A metric's value from `/metrics`, read with `creds` (a client with the `metrics` scope):
    /// the first sample line starting with `prefix`.
    pub async fn metric(&self, creds: &Creds, prefix: &str) -> Option<f64> {
        let r = self.get(creds, "/metrics").await.ok()?;
        let text = String::from_utf8(r.body).ok()?;
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        signal(&self.child, nix::sys::signal::Signal::SIGTERM);
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, secs: u64) -> ExitStatus {
        let child = &mut self.child;
        wait_for(secs, "govboxd to exit", || child.try_wait().unwrap())
    }
}

pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, sig).unwrap();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn admin_call(path: &Path, req: &Value) -> Value {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap()
}

pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Asserts OpenAI's error shape and returns the `code`.
    pub fn error_code(&self) -> String {
        let v = self.json();
        let e = v["error"].as_object().unwrap_or_else(|| panic!("no error object: {v}"));
        let keys: Vec<&str> = e.keys().map(String::as_str).collect();
        for k in ["message", "type", "param", "code"] {
            assert!(keys.contains(&k), "error lacks '{k}': {v}");
        }
        assert!(e["message"].is_string() && e["type"].is_string(), "{v}");
        e["code"].as_str().unwrap_or_default().to_string()
    }
}

/// A rustls client config trusting `ca_pem`, with an optional client certificate.
pub fn client_config(ca_pem: &str, cert: Option<&(String, String)>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match cert {
        Some((cert_pem, key_pem)) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).map(|c| c.unwrap()).collect();
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    }
}

/// A bare TLS connection to the daemon, for tests that write HTTP by hand.
pub async fn raw_tls(
    addr: SocketAddr,
    ca_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = client_config(ca_pem, None);
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

pub async fn connect_to(
    addr: SocketAddr,
    ca_pem: &str,
    cert: Option<&(String, String)>,
) -> Result<(hyper::client::conn::http1::SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>), String> {
    let config = client_config(ca_pem, cert);
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("HTTP: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, task))
}

/// Reads an SSE body to its end; returns the `data:` payloads.
pub async fn sse_events(resp: hyper::Response<Incoming>) -> Vec<String> {
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    parse_sse(&body)
}

/// The `data:` payloads of an SSE body.
pub fn parse_sse(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.split("\n\n").filter_map(|e| e.strip_prefix("data: ").map(str::to_string)).collect()
}
