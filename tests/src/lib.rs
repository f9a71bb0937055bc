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

pub use govbox_images::corpus::CorpusKeys;
use govbox_provisioning::{Overwrite, Suite};

pub mod load;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A workspace binary (`govbox`, `govboxd`), built by `cargo build --workspace --bins`.
pub fn bin(name: &str) -> PathBuf {
    // Integration tests run from target/<profile>/deps; the binaries sit one level up.
    // A binary of this crate (govbox-reliability) sits beside them.
    let exe = std::env::current_exe().unwrap();
    let beside = exe.parent().unwrap().join(name);
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let p = if beside.exists() { beside } else { dir.join(name) };
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

/// `govbox audit export` of the box at `state` into `dir/export.json`; returns its entries, parsed.
pub fn exported_entries(state: &Path, dir: &Path) -> Vec<serde_json::Value> {
    let export = dir.join("export.json");
    govbox(state, &["audit", "export", "-o", export.to_str().unwrap()]);
    entries_of(&export)
}

/// `govbox audit export` into `dir/name`, checked by `govbox audit verify` against the box's
/// `identity/audit.pub` (asserting it passes); returns the entries, parsed.
pub fn verified_entries(state: &Path, dir: &Path, name: &str) -> Vec<serde_json::Value> {
    let export = dir.join(name);
    govbox(state, &["audit", "export", "-o", export.to_str().unwrap()]);
    let o = Command::new(bin("govbox"))
        .args(["audit", "verify"])
        .arg(&export)
        .arg("--device-key")
        .arg(state.join("identity/audit.pub"))
        .output()
        .unwrap();
    assert!(o.status.success(), "audit verify failed:\n{}", String::from_utf8_lossy(&o.stdout));
    entries_of(&export)
}

/// The entries of an audit export file, parsed.
fn entries_of(export: &Path) -> Vec<serde_json::Value> {
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(export).unwrap()).unwrap();
    doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str(e["entry"].as_str().unwrap()).unwrap())
        .collect()
}

/// A provisioned temporary box with one client, `app`: every model, and `/metrics`.
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
    /// The vendor keys the trust root names (see [`TestBox::provisioned`]).
    pub keys: CorpusKeys,
    /// The crypto suite the box was provisioned with (`govbox provision --suite`); its vendor
    /// keys are of the suite's algorithm too.
    pub suite: Suite,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl TestBox {
    /// Provisions a box in a fresh temporary folder, adds client `app` with a certificate and a
    /// token, builds signed packages of the tiny Qwen2 chat model (with a self-test) and the real
    /// MiniLM, and imports them: govboxd serves them with no `[[models]]` in its config.
    ///
    /// The trust root is the one the bad-package corpus assumes ([`CorpusKeys::trust_root`]'s
    /// roles): `models` needs 2 of the two vendor keys, the third key holds `root` and `updates`.
    pub fn new(tag: &str) -> Self {
        Self::new_with_suite(tag, Suite::Intl)
    }

    /// [`TestBox::new`] on a box of `suite`.
    pub fn new_with_suite(tag: &str, suite: Suite) -> Self {
        let b = Self::provisioned_suite(tag, "root,updates", suite);
        let qwen = b.build_package(&repo().join("tests/fixtures/tiny-qwen2"), "tiny-qwen2", "1.0.0", true);
        b.import(&qwen);
        let minilm = b.build_package(&minilm(), "minilm", "1.0.0", false);
        b.import(&minilm);
        b
    }

    /// A provisioned box with its client and keys, but no model imported.
    pub fn provisioned(tag: &str) -> Self {
        Self::provisioned_with(tag, "root,updates")
    }

    /// [`TestBox::provisioned`] with `updates_roles` held by the third key (e.g. with `policy`
    /// too, for policy packages signed by `keys/updates.key`).
    pub fn provisioned_with(tag: &str, updates_roles: &str) -> Self {
        Self::provisioned_suite(tag, updates_roles, Suite::Intl)
    }

    /// [`TestBox::provisioned_with`] on a box of `suite`, whose vendor keys are of its algorithm.
    pub fn provisioned_suite(tag: &str, updates_roles: &str, suite: Suite) -> Self {
        let dir = std::env::temp_dir().join(format!("govbox-e2e-{tag}-{suite}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        let state = dir.join("state");
        let keys = CorpusKeys::generate_with(suite.signature_algorithm()).unwrap();
        let k = |n: &str| dir.join("keys").join(n);
        for (name, key) in [("models0", &keys.models[0]), ("models1", &keys.models[1]), ("updates", &keys.updates)] {
            key.write_pem(&k(&format!("{name}.key")), Overwrite::Refuse).unwrap();
            key.public_key().write_pem(&k(&format!("{name}.pub")), Overwrite::Refuse).unwrap();
        }
        let spec = |roles: &str, n: &str| format!("{roles}:{}", k(n).display());
        govbox(
            &state,
            &[
                "provision",
                "--trust-key",
                &spec("models", "models0.pub"),
                "--trust-key",
                &spec("models", "models1.pub"),
                "--trust-key",
                &spec(updates_roles, "updates.pub"),
                "--threshold",
                "models:2",
                "--suite",
                suite.as_str(),
            ],
        );
        let certs = dir.join("certs");
        // `app` may also read /metrics (the tests scrape it with the same token); the load tests
        // drive it far beyond [serving] default_client_rpm on purpose.
        let out = govbox(
            &state,
            &[
                "client",
                "add",
                "app",
                "--models",
                "all",
                "--scope",
                "inference,metrics",
                "--token",
                "--rpm",
                "100000000",
                "--cert-out",
                certs.to_str().unwrap(),
            ],
        );
        let token = out.lines().find(|l| l.trim_start().starts_with("gbx_")).expect("token line").trim().to_string();
        let port = free_port();
        let config = dir.join("govbox.toml");
        std::fs::write(
            &config,
            format!("config_version = 2\nlisten = \"127.0.0.1:{port}\"\nthreads = 2\nlog_level = \"trace\"\n"),
        )
        .unwrap();
        Self { dir, state, certs, token, port, config, keys, suite }
    }

    /// Builds `NAME-VERSION.gbx` from `model`, signed by both `models` keys.
    pub fn build_package(&self, model: &Path, name: &str, version: &str, selftest: bool) -> PathBuf {
        self.build_package_with(model, name, version, selftest, &[])
    }

    /// [`build_package`](Self::build_package) with more `govbox package build` arguments
    /// (`--kind rerank` for a causal-LM reranker).
    pub fn build_package_with(
        &self,
        model: &Path,
        name: &str,
        version: &str,
        selftest: bool,
        more: &[&str],
    ) -> PathBuf {
        let out = self.dir.join(format!("{name}-{version}.gbx"));
        let keys = self.dir.join("keys");
        let mut args = vec![
            "package".to_string(),
            "build".into(),
            "--model".into(),
            model.display().to_string(),
            "--name".into(),
            name.into(),
            "--version".into(),
            version.into(),
            "--sign".into(),
            keys.join("models0.key").display().to_string(),
            "--sign".into(),
            keys.join("models1.key").display().to_string(),
            "-o".into(),
            out.display().to_string(),
        ];
        if selftest {
            args.push("--selftest".into());
        }
        // A gm vendor hashes the payload with SM3 too.
        args.extend(["--hash".to_string(), self.suite.hash_algorithm().to_string()]);
        args.extend(more.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        govbox(&self.state, &args);
        out
    }

    /// `govbox model import FILE` (through govboxd when it runs, else offline).
    pub fn import(&self, package: &Path) -> String {
        govbox(&self.state, &["model", "import", package.to_str().unwrap()])
    }

    /// Starts govboxd and waits (polling, with a deadline) until /readyz answers 200.
    pub fn start(&self) -> Daemon {
        self.start_with_env(&[])
    }

    /// govbox-auditd's socket for this box.
    pub fn auditd_socket(&self) -> PathBuf {
        self.dir.join("audit.sock")
    }

    /// Makes govboxd append through govbox-auditd, as the packaged units run them: appends an
    /// `[audit]` section naming [`TestBox::auditd_socket`], with `extra` lines, to the config.
    pub fn use_auditd(&self, extra: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.config).unwrap();
        writeln!(f, "\n[audit]\nsocket = \"{}\"\n{extra}", self.auditd_socket().display()).unwrap();
    }

    /// Starts govbox-auditd (issue 19) as its own process on `STATE/audit`, with the state
    /// folder's identity keys and the `[audit]` section of the box's config, and waits until its
    /// socket answers. Its log is `auditd.log` in the box's folder (appended across restarts).
    pub fn start_auditd(&self) -> Daemon {
        let log = self.dir.join("auditd.log");
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let socket = self.auditd_socket();
        let mut cmd = Command::new(bin("govbox-auditd"));
        cmd.arg("--audit-dir").arg(self.state.join("audit")).arg("--keys").arg(self.state.join("identity"));
        cmd.arg("--socket").arg(&socket).arg("--config").arg(&self.config);
        let mut d = Daemon::spawn(&mut cmd, f, log);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("govbox-auditd exited with {status}; log:\n{}", d.log_text());
            }
            assert!(Instant::now() < deadline, "govbox-auditd did not listen in 30 s; log:\n{}", d.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// [`TestBox::start`] with extra environment variables for govboxd.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        let log = self.dir.join(format!("govboxd-{}.log", self.port));
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin("govboxd"));
        cmd.envs(env.iter().copied()).arg("--state").arg(&self.state).arg("--config").arg(&self.config);
        let d = Daemon::spawn(&mut cmd, f, log);
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

    /// One request on govboxd's admin socket (`STATE/admin.sock`); returns the answer's `result`
    /// (panics on an error answer).
    pub fn admin(&self, req: &serde_json::Value) -> serde_json::Value {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.state.join("admin.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        writeln!(s, "{req}").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], true, "{req} failed: {v}");
        v["result"].clone()
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

    /// POSTs `body` as JSON to `path` with the client's bearer token; the status and the answer
    /// (`Null` when it is not JSON).
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let auth = format!("Authorization: Bearer {}", self.token);
        let body = body.to_string();
        let o = self.curl(&[
            "-w",
            "\n%{http_code}",
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
            "-d",
            &body,
            &self.url(path),
        ]);
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let (json_text, code) = text.rsplit_once('\n').expect("curl -w puts the status on the last line");
        (
            code.trim().parse().expect("an HTTP status"),
            serde_json::from_str(json_text).unwrap_or(serde_json::Value::Null),
        )
    }
}

impl Drop for TestBox {
    /// Removes the box's folder (two model packages and their imported copies, some 200 MB) when
    /// the test passed; a failed test leaves it for inspection.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A syslog receiver on loopback (the audit witness of the tests): accepts connections and
/// appends every byte to `file`, as a log server keeping the frames would. Returns its port.
pub fn syslog_receiver(file: PathBuf) -> u16 {
    use std::io::{Read, Write};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let file = file.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&file).unwrap();
                    f.write_all(&buf[..n]).unwrap();
                }
            });
        }
    });
    port
}

/// The number of entries in the log (the next seq), from `govbox audit tail`.
/// The real MiniLM folder, fetched by scripts/fetch-models.sh.
pub fn minilm() -> PathBuf {
    let p =
        std::env::var_os("GOVBOX_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join(".cache/models/minilm"));
    assert!(p.join("modules.json").exists(), "{} is missing: run scripts/fetch-models.sh minilm", p.display());
    p
}

/// A running govboxd (or govbox-auditd); killed when dropped.
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Its combined stdout and stderr.
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with its stdout and stderr in `file` (the file at `log`).
    fn spawn(cmd: &mut Command, file: std::fs::File, log: PathBuf) -> Self {
        let child = cmd.stdout(file.try_clone().unwrap()).stderr(file).stdin(Stdio::null()).spawn().unwrap();
        Self { child, log }
    }

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
    python_with(&["openai"])
}

/// The end-to-end Python interpreter (`GOVBOX_E2E_PYTHON`, else the `.venv-e2e` that
/// scripts/test.sh makes), checked to import each of `modules`.
pub fn python_with(modules: &[&str]) -> PathBuf {
    let p =
        std::env::var_os("GOVBOX_E2E_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo().join(".venv-e2e/bin/python"));
    let import = format!("import {}", modules.join(", "));
    let ok = Command::new(&p).args(["-c", &import]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "{} cannot {import}: run scripts/test.sh (it makes .venv-e2e) or set GOVBOX_E2E_PYTHON", p.display());
    p
}

/// Runs `tests/python/{script}` with `args` (and `env` added) under `py` against the running
/// `daemon`; on failure, panics with the script's output and the daemon's log. Returns stdout.
pub fn python_check<S: AsRef<std::ffi::OsStr>>(
    py: &Path,
    script: &str,
    args: &[S],
    env: &[(&str, &str)],
    daemon: &Daemon,
) -> String {
    let mut cmd = Command::new(py);
    cmd.arg(repo().join("tests/python").join(script)).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{script} failed:\n{out}\n{}\n--- govboxd log ---\n{}",
        String::from_utf8_lossy(&o.stderr),
        daemon.log_text()
    );
    eprintln!("{script}:\n{out}");
    out
}

/// One query of a rerank fixture's `pairs` (`expected.json`): its documents, HF's scores for
/// them, and the documents' indices from the highest score to the lowest.
pub struct RerankCase<'a> {
    /// The query.
    pub query: &'a str,
    /// Its documents, in the fixture's order.
    pub documents: Vec<&'a str>,
    /// HF's score for each document.
    pub scores: Vec<f64>,
    /// The documents' indices from HF's highest score to its lowest.
    pub order: Vec<usize>,
}

/// Groups a rerank fixture's pairs by query, in the fixture's order.
pub fn rerank_cases(pairs: &[serde_json::Value]) -> Vec<RerankCase<'_>> {
    let mut queries: Vec<&str> = pairs.iter().map(|p| p["query"].as_str().unwrap()).collect();
    queries.dedup();
    queries
        .into_iter()
        .map(|query| {
            let mine: Vec<&serde_json::Value> = pairs.iter().filter(|p| p["query"] == query).collect();
            let documents = mine.iter().map(|p| p["document"].as_str().unwrap()).collect();
            let scores: Vec<f64> = mine.iter().map(|p| p["score"].as_f64().unwrap()).collect();
            let mut order: Vec<usize> = (0..scores.len()).collect();
            order.sort_by(|&a, &c| scores[c].total_cmp(&scores[a]));
            RerankCase { query, documents, scores, order }
        })
        .collect()
}

impl RerankCase<'_> {
    /// Asserts that a rerank answer's `results` score each document within 1e-4 of HF, and
    /// returns the documents' indices in the answer's order.
    pub fn check_scores(&self, results: &[serde_json::Value]) -> Vec<usize> {
        let mut order = Vec::new();
        for r in results {
            let i = r["index"].as_u64().unwrap() as usize;
            let diff = (r["relevance_score"].as_f64().unwrap() - self.scores[i]).abs();
            assert!(
                diff <= 1e-4,
                "query {:?} document {i}: score {} vs HF {}",
                self.query,
                r["relevance_score"],
                self.scores[i]
            );
            order.push(i);
        }
        order
    }
}
