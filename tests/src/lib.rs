//! govbox-e2e: helpers for black-box tests that run the real `govbox` and `govboxd` binaries.
//!
//! Each test gets its own temporary box: a vendor key, a provisioned state folder, a client with
//! a certificate and a token, and a `govboxd` on a free loopback port. Nothing here talks to
//! anything but 127.0.0.1.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A workspace binary (`govbox`, `govboxd`), built by `cargo build --workspace --bins`.
pub fn bin(name: &str) -> PathBuf {
    // Integration tests run from target/<profile>/deps; the binaries sit one level up.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Runs `govbox` with `args`, asserting success, and returns its stdout.
pub fn govbox(state: &Path, args: &[&str]) -> String {
    let o = Command::new(bin("govbox")).arg("--state").arg(state).args(args).output().unwrap();
    assert!(o.status.success(), "govbox {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// A provisioned temporary box with one client.
pub struct TestBox {
    /// Scratch folder holding everything.
    pub dir: PathBuf,
    /// The state folder.
    pub state: PathBuf,
    /// The client's certificate folder (`app.crt`, `app.key`, `ca.crt`).
    pub certs: PathBuf,
    /// The client's bearer token.
    pub token: String,
    /// The HTTPS port.
    pub port: u16,
    /// The config file.
    pub config: PathBuf,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl TestBox {
    /// Provisions a box in a fresh temporary folder, adds client `app` with a certificate and a
    /// token, and writes a config serving the tiny Qwen2 chat model and the real MiniLM.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("govbox-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state");
        let key = dir.join("vendor.key");
        let o = Command::new(bin("govbox"))
            .args(["keygen", "--out"])
            .arg(&key)
            .arg("--pub")
            .arg(dir.join("vendor.pub"))
            .output()
            .unwrap();
        assert!(o.status.success(), "keygen: {}", String::from_utf8_lossy(&o.stderr));
        govbox(&state, &["provision", "--trust-key", dir.join("vendor.pub").to_str().unwrap()]);
        let certs = dir.join("certs");
        let out = govbox(&state, &["client", "add", "app", "--token", "--cert-out", certs.to_str().unwrap()]);
        let token = out.lines().find(|l| l.trim_start().starts_with("gbx_")).expect("token line").trim().to_string();
        let port = free_port();
        let minilm = minilm();
        let config = dir.join("govbox.toml");
        std::fs::write(
            &config,
            format!(
                "config_version = 1\nlisten = \"127.0.0.1:{port}\"\nthreads = 2\nlog_level = \"trace\"\n\n\
                 [[models]]\nname = \"tiny-qwen2\"\npath = \"{}\"\n\n[[models]]\nname = \"minilm\"\npath = \"{}\"\n",
                repo().join("tests/fixtures/tiny-qwen2").display(),
                minilm.display()
            ),
        )
        .unwrap();
        Self { dir, state, certs, token, port, config }
    }

    /// Starts govboxd and waits (polling, with a deadline) until /readyz answers 200.
    pub fn start(&self) -> Daemon {
        let log = self.dir.join(format!("govboxd-{}.log", self.port));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin("govboxd"))
            .arg("--state")
            .arg(&self.state)
            .arg("--config")
            .arg(&self.config)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let d = Daemon { child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let o = self.curl(&["-o", "/dev/null", "-w", "%{http_code}", &self.url("/readyz")]);
            if String::from_utf8_lossy(&o.stdout) == "200" {
                return d;
            }
            assert!(Instant::now() < deadline, "govboxd not ready in 60 s; log:\n{}", d.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `https://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Runs curl against the box with its CA (no client credentials unless in `args`).
    pub fn curl(&self, args: &[&str]) -> Output {
        Command::new("curl")
            .args(["-sS", "--max-time", "60", "--cacert"])
            .arg(self.certs.join("ca.crt"))
            .args(args)
            .output()
            .expect("curl must be installed (.ci/run installs it)")
    }
}

/// The real MiniLM folder, fetched by scripts/fetch-models.sh.
pub fn minilm() -> PathBuf {
    let p =
        std::env::var_os("GOVBOX_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join(".cache/models/minilm"));
    assert!(p.join("modules.json").exists(), "{} is missing: run scripts/fetch-models.sh minilm", p.display());
    p
}

/// A running govboxd; killed when dropped.
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Its combined stdout and stderr.
    pub log: PathBuf,
}

impl Daemon {
    /// Everything the daemon has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python interpreter with the `openai` package (a venv that scripts/test.sh makes).
pub fn python_with_openai() -> PathBuf {
    let p =
        std::env::var_os("GOVBOX_E2E_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo().join(".venv-e2e/bin/python"));
    let ok = Command::new(&p).args(["-c", "import openai"]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(
        ok,
        "{} cannot import openai: run scripts/test.sh (it makes .venv-e2e) or set GOVBOX_E2E_PYTHON",
        p.display()
    );
    p
}
