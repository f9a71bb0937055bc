//! A software TPM (Debian's `swtpm`) for the tests that need one: the attestation quote
//! (`attestation/tests/tpm_swtpm.rs`) and the audit log's TPM anchor
//! (`audit/tests/audit_tpm_anchor.rs`), which include this file by path.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running swtpm, killed (by its own pid) when dropped.
pub struct Swtpm {
    child: Child,
    port: u16,
    _state: tempfile::TempDir,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Swtpm {
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

/// Two free consecutive loopback ports (server, control).
pub fn free_port_pair() -> Option<u16> {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").ok()?;
        let port = a.local_addr().ok()?.port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Some(port);
        }
    }
    None
}

/// Starts swtpm, or says exactly why it could not.
pub fn start_swtpm() -> Result<Swtpm, String> {
    let mut last = String::new();
    for _ in 0..3 {
        let state = tempfile::tempdir().map_err(|e| format!("temporary state folder: {e}"))?;
        let port = free_port_pair().ok_or("no two free consecutive loopback ports")?;
        let log = state.path().join("swtpm.log");
        let mut child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .args(["--server", &format!("type=tcp,port={port},bindaddr=127.0.0.1")])
            .args(["--ctrl", &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1)])
            .args(["--tpmstate", &format!("dir={}", state.path().display())])
            .args(["--flags", "not-need-init,startup-clear"])
            .args(["--log", &format!("file={},level=1", log.display())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run swtpm (apt-get install swtpm): {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    use std::io::Read;
                    let _ = s.read_to_string(&mut err);
                }
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                last = format!("swtpm exited with {status}: {} {}", err.trim(), log.trim());
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Tests run in parallel, each with its own swtpm: a port pair can overlap
                // another's, and then that one answers here while ours fails to bind and exits
                // (a CI run quoted against another test's control port this way). Ours must
                // still be running a moment later to own the port.
                std::thread::sleep(Duration::from_millis(300));
                if child.try_wait().map_err(|e| e.to_string())?.is_none() {
                    return Ok(Swtpm { child, port, _state: state });
                }
                continue;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                last = format!("swtpm did not listen on 127.0.0.1:{port} within 10 s");
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Err(last)
}

/// A running swtpm, or `None` after printing `SKIPPED: <why>` (the test then returns).
pub fn swtpm_or_skip() -> Option<Swtpm> {
    match start_swtpm() {
        Ok(s) => Some(s),
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}
