//! Renewing the HTTPS server certificate with no downtime: `govbox tls renew` against a running
//! govboxd. A keep-alive connection opened before the renewal keeps working; a new connection gets
//! the new certificate, which chains to the same CA file the clients already hold; the daemon is
//! the same process; the audit log records the swap and verifies. Offline, the renewal only writes
//! the files (and its audit entry), and govboxd serves them at its next start.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use govbox_e2e::{TestBox, bin, govbox};

/// The serial of a PEM certificate file, lower-case hex, as openssl reads it.
fn file_serial(path: &std::path::Path) -> String {
    let o = Command::new("openssl").args(["x509", "-noout", "-serial", "-in"]).arg(path).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().trim_start_matches("serial=").to_ascii_lowercase()
}

/// Opens a new TLS connection with openssl, verifying against the clients' CA file, and returns
/// the serial of the certificate the server presented.
fn presented_serial(b: &TestBox) -> String {
    let o = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{}", b.port), "-verify_return_error"])
        .args(["-verify_ip", "127.0.0.1", "-CAfile"])
        .arg(b.certs.join("ca.crt"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("Verify return code: 0 (ok)"), "the new certificate must chain to the same CA:\n{out}");
    let begin = out.find("-----BEGIN CERTIFICATE-----").expect("a certificate in the output");
    let end = out.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let pem = format!("{}\n", &out[begin..end]);
    let file = b.dir.join(format!("presented-{}.pem", rand_suffix()));
    std::fs::write(&file, pem).unwrap();
    file_serial(&file)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// One kept-alive TLS connection (openssl s_client), sending requests and reading answers.
struct KeepAlive {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl KeepAlive {
    fn open(b: &TestBox) -> Self {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", &format!("127.0.0.1:{}", b.port), "-verify_return_error"])
            .args(["-verify_ip", "127.0.0.1", "-CAfile"])
            .arg(b.certs.join("ca.crt"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        KeepAlive { child, stdin, lines }
    }

    /// GET /healthz on this connection; returns the status line.
    fn get(&mut self) -> String {
        self.stdin.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                // The previous answer's body has no final newline: the status line may follow it.
                Ok(l) if l.contains("HTTP/1.1 ") => return l[l.find("HTTP/1.1 ").unwrap_or(0)..].trim().to_string(),
                Ok(_) => {}
                Err(e) => panic!("no answer on the kept-alive connection: {e}"),
            }
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_raw(b: &TestBox, args: &[&str]) -> std::process::Output {
    Command::new(bin("govbox")).arg("--state").arg(&b.state).args(args).output().unwrap()
}

fn stop(d: &mut govbox_e2e::Daemon) {
    let pid = d.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "govboxd did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn renewal_swaps_the_certificate_for_new_connections_with_no_restart() {
    let b = TestBox::provisioned("tls-renew");
    let cert_file = b.state.join("tls/server.crt");
    let ca_before = std::fs::read(b.certs.join("ca.crt")).unwrap();
    // hyper counts the wait for a kept-alive connection's next request against the header timeout:
    // give the kept-alive connection room between its requests.
    let mut config = std::fs::read_to_string(&b.config).unwrap();
    config.push_str("[limits]\nheader_timeout_secs = 300\nidle_timeout_secs = 300\n");
    std::fs::write(&b.config, config).unwrap();
    let mut d = b.start();
    let pid = d.child.id();
    let old = file_serial(&cert_file);
    assert_eq!(presented_serial(&b), old);

    let mut kept = KeepAlive::open(&b);
    assert_eq!(kept.get(), "HTTP/1.1 200 OK");

    // Not due: a no-op.
    let out = govbox(&b.state, &["tls", "renew", "--if-expiring-within", "30"]);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(file_serial(&cert_file), old);

    let out = govbox(&b.state, &["tls", "renew"]);
    let new = file_serial(&cert_file);
    assert_ne!(new, old);
    assert!(out.contains(&format!("old  serial {old}")) && out.contains(&format!("new  serial {new}")), "{out}");
    assert!(out.contains("govboxd serves the new certificate"), "{out}");

    // The connection opened before the renewal still works; a new one gets the new certificate,
    // verified against the unchanged CA file; the daemon never restarted.
    assert_eq!(kept.get(), "HTTP/1.1 200 OK", "log:\n{}", d.log_text());
    assert_eq!(presented_serial(&b), new, "log:\n{}", d.log_text());
    let o = b.curl(&["-o", "/dev/null", "-w", "%{http_code}", &b.url("/healthz")]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200", "curl with the same --cacert");
    assert_eq!(kept.get(), "HTTP/1.1 200 OK");
    assert!(d.child.try_wait().unwrap().is_none(), "govboxd is still running");
    assert_eq!(d.child.id(), pid);
    assert_eq!(std::fs::read(b.certs.join("ca.crt")).unwrap(), ca_before);
    assert_eq!(std::fs::read(b.state.join("tls/ca.crt")).unwrap(), ca_before, "the box's CA is untouched");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(b.state.join("tls/server.key")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // govbox status shows the served certificate.
    let status: serde_json::Value = serde_json::from_str(&govbox(&b.state, &["status", "--json"])).unwrap();
    assert_eq!(status["tls_certificate"]["serial"], new.as_str(), "{status}");
    let human = govbox(&b.state, &["status"]);
    let row = human.lines().find(|l| l.trim_start().starts_with("certificate")).expect("certificate row");
    assert!(row.contains(&format!("(serial {new})")) && row.contains("days"), "{row}");

    // The swap is in the audit log, which verifies.
    let entries = govbox_e2e::verified_entries(&b.state, &b.dir, "online.json");
    let reload = entries.iter().find(|e| e.to_string().contains("tls_reload")).expect("a tls_reload entry");
    let text = reload.to_string();
    assert!(text.contains(&new) && text.contains(&old), "{text}");
    drop(kept);

    // Offline: the files change, the renewal is recorded, and govboxd serves them when it starts.
    stop(&mut d);
    let o = run_raw(&b, &["tls", "renew", "--days", "20"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("govboxd is not running"), "{out}");
    let offline = file_serial(&cert_file);
    assert_ne!(offline, new);
    let _d = b.start();
    assert_eq!(presented_serial(&b), offline);
    let human = govbox(&b.state, &["status"]);
    assert!(human.contains("run `govbox tls renew`"), "a 20-day certificate is flagged:\n{human}");
    let entries = govbox_e2e::verified_entries(&b.state, &b.dir, "offline.json");
    assert!(entries.iter().any(|e| e.to_string().contains("tls_renew") && e.to_string().contains(&offline)));

    // Bad input changes nothing.
    let o = run_raw(&b, &["tls", "renew", "--days", "0"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--days must be 1 to"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(file_serial(&cert_file), offline);
}
