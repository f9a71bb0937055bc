//! Property: govboxd behaves as a systemd `Type=notify` service. It sends `READY=1` once it
//! listens and its models are loaded, then `WATCHDOG=1` at half `WATCHDOG_USEC`; on SIGTERM it
//! sends `STOPPING=1`, lets a running stream finish with `[DONE]` and exits 0; SIGHUP reloads
//! without stopping; a bad config or state folder stops it at once with exit status 2 and a
//! message that names the cause.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Box_, Daemon, govboxd, parse_sse, signal, tiny_qwen2, wait_for};
use http_body_util::BodyExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_ready_then_watchdog_then_stopping() {
    let b = Box_::provision();
    let sock_path = b.tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let cfg = b.config(&[("tiny", &tiny_qwen2())], "");
    let mut d = Daemon::start_with(
        &b,
        &cfg,
        &[],
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")],
    );
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut recv_until = |seen: &mut Vec<String>, what: &str, pred: &dyn Fn(&[String]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pred(seen) {
            assert!(Instant::now() < deadline, "no {what}; got {seen:?}");
            if let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.extend(msg.lines().map(str::to_string));
            }
        }
    };
    recv_until(&mut seen, "READY=1", &|s| s.iter().any(|l| l == "READY=1"));
    let ready_at = seen.iter().position(|l| l == "READY=1").unwrap();
    recv_until(&mut seen, "WATCHDOG=1 after READY=1", &|s| s[ready_at..].iter().any(|l| l == "WATCHDOG=1"));
    assert!(seen.iter().any(|l| l.starts_with("STATUS=ready")), "{seen:?}");
    // Ready means ready: the API answers at once.
    assert_eq!(d.get(&common::Creds::none(), "/readyz").await.unwrap().status, 200);

    d.sigterm();
    recv_until(&mut seen, "STOPPING=1", &|s| s.iter().any(|l| l == "STOPPING=1"));
    let status = d.wait_exit(30);
    assert_eq!(status.code(), Some(0), "{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_stream_finish_then_exits_0() {
    let b = Box_::provision();
    let app = b.add_client("app", &[], None, None);
    let mut d = Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], "")).await;
    // About a second of greedy generation.
    let req = json!({"model": "tiny", "prompt": "hello", "max_tokens": 1200, "temperature": 0, "stream": true});
    let (resp, _conn) = d.post_streaming(&app.token_only(), "/v1/completions", &req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut all = body.frame().await.unwrap().unwrap().into_data().unwrap().to_vec();
    d.sigterm();
    let logs = d.output.clone();
    wait_for(10, "the listener to close", || {
        logs.lock().unwrap().iter().any(|l| l.contains("stopped accepting connections")).then_some(())
    });
    // While the answer drains, the listener is closed and the daemon is not ready.
    assert!(d.get(&app.token_only(), "/readyz").await.is_err(), "a new connection was accepted after SIGTERM");
    all.extend_from_slice(&body.collect().await.unwrap().to_bytes());
    let events = parse_sse(&all);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "the stream was cut: {:?}", events.last());
    let finish: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let status = d.wait_exit(30);
    assert_eq!(status.code(), Some(0), "{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_without_stopping() {
    let b = Box_::provision();
    let app = b.add_client("app", &[], None, None);
    let cfg = b.config(&[("tiny", &tiny_qwen2())], "");
    let d = Daemon::ready(&b, &cfg).await;
    // A changed log level applies; a changed listen address needs a restart and says so.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("config_version = 1", "config_version = 1\nlog_level = \"debug\"");
    std::fs::write(&cfg, text.replace("threads = 1", "threads = 2")).unwrap();
    signal(&d.child, nix::sys::signal::Signal::SIGHUP);
    let logs = d.output.clone();
    wait_for(10, "the reload", || {
        logs.lock().unwrap().iter().any(|l| l.contains("client store re-read: 1 clients")).then_some(())
    });
    let all = d.logs();
    assert!(all.contains("log level is now debug"), "{all}");
    assert!(all.contains("restart govboxd to apply"), "{all}");
    assert!(all.contains("reloaded the TLS certificate"), "{all}");
    assert_eq!(d.get(&app.token_only(), "/v1/models").await.unwrap().status, 200);
}

fn run_to_exit(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = govboxd().args(args).stdin(Stdio::null()).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_config_or_state_exits_2_with_a_clear_message() {
    let b = Box_::provision();
    let state = b.state.as_os_str();
    let cfg = b.tmp.path().join("bad.toml");
    std::fs::write(&cfg, "config_version = 1\n[limits]\nmax_body_byte = 5\n").unwrap();
    let (code, err) = run_to_exit(&["--state".as_ref(), state, "--config".as_ref(), cfg.as_os_str()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("bad.toml") && err.contains("max_body_byte"), "{err}");

    std::fs::write(&cfg, "listen = \"not an address\"\n").unwrap();
    let (code, err) = run_to_exit(&["--state".as_ref(), state, "--config".as_ref(), cfg.as_os_str()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("listen"), "{err}");

    let (code, err) =
        run_to_exit(&["--state".as_ref(), state, "--config".as_ref(), b.tmp.path().join("none.toml").as_os_str()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("none.toml"), "{err}");

    let missing = b.tmp.path().join("no-such-state");
    let (code, err) = run_to_exit(&["--state".as_ref(), missing.as_os_str()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no-such-state") && err.contains("does not exist"), "{err}");

    let empty = b.tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, err) = run_to_exit(&["--state".as_ref(), empty.as_os_str()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("provision"), "{err}");

    let (code, err) = run_to_exit(&["--state".as_ref(), state, "--no-such-flag".as_ref()]);
    assert_eq!(code, Some(2), "{err}");

    // Unsigned model folders are refused unless the development flag is given.
    std::fs::write(&cfg, "[[models]]\nname = \"m\"\npath = \"somewhere\"\n").unwrap();
    let plain = Command::new(env!("CARGO_BIN_EXE_govboxd"))
        .args(["--state".as_ref(), state, "--config".as_ref(), cfg.as_os_str()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&plain.stderr);
    assert_eq!(plain.status.code(), Some(2), "{err}");
    assert!(err.contains("--insecure-dev-models") && err.contains("govbox model import"), "{err}");
}
