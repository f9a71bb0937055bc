//! `govbox update` end to end, with the real govboxd running from the install folder's slots:
//! first install (its steps taken before any govboxd ran go through the root-owned update
//! journal, which the first govboxd imports into its audit log), an automatic revert of a
//! version that never becomes ready (recorded in the audit log through the running daemon),
//! config across versions with a rollback, and a rollback refused below the stored security
//! version. It runs on an `intl` box and on a `gm` one.
//!
//! What is simulated, honestly:
//! - systemd: `--restart-cmd` runs a small script that stops the govboxd it started last and
//!   starts `ROOT/current/govboxd` with this box's state and config;
//! - a second govbox release: we cannot build another version of the daemon inside a test, so
//!   the "new" version is the same govboxd binary in a bundle with a higher version number. The
//!   config part is shown with what a newer release would write: `config_version = 3` and a
//!   setting this govboxd does not know, which it must accept with a warning, so that the
//!   rolled-back version starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use govbox_e2e::{TestBox, bin};
use govbox_provisioning::Suite;
use serde_json::Value;

/// Kills the govboxd that the restart script started last.
struct StopDaemon(PathBuf);

impl Drop for StopDaemon {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

fn run(b: &TestBox, args: &[&str]) -> Output {
    Command::new(bin("govbox"))
        .arg("--state")
        .arg(&b.state)
        .args(args)
        .env_remove("GOVBOX_UPDATE_FAULT")
        .output()
        .unwrap()
}

fn ok(b: &TestBox, args: &[&str]) -> String {
    let o = run(b, args);
    assert!(
        o.status.success(),
        "govbox {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn build(b: &TestBox, version: &str, sv: u64, daemon: &Path) -> String {
    let cli = b.dir.join("govbox-stand-in");
    std::fs::write(&cli, "#!/bin/sh\necho govbox stand-in\n").unwrap();
    let out = b.dir.join(format!("govbox-{version}.gbu")).display().to_string();
    let key = b.dir.join("keys/updates.key").display().to_string();
    let (d, c, sv) = (daemon.display().to_string(), cli.display().to_string(), sv.to_string());
    // A gm box's vendor builds SM3 bundles (SM3 file digests and bundle digest).
    let hash = if b.suite == Suite::Gm { "sm3" } else { "sha256" };
    let printed = ok(
        b,
        &[
            "update",
            "build",
            "--version",
            version,
            "--security-version",
            &sv,
            "--daemon",
            &d,
            "--cli",
            &c,
            "--sign",
            &key,
            "--hash",
            hash,
            "-o",
            &out,
        ],
    );
    assert!(printed.contains(&format!("digest       {hash}-")), "{printed}");
    out
}

fn ready(b: &TestBox) -> bool {
    let o = b.curl(&["-o", "/dev/null", "-w", "%{http_code}", &b.url("/readyz")]);
    String::from_utf8_lossy(&o.stdout) == "200"
}

fn update_steps(b: &TestBox) -> Vec<(String, String)> {
    ok(b, &["audit", "tail", "-n", "500", "--json"])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == "update")
        .map(|e| (e["step"].as_str().unwrap_or("").to_string(), e["detail"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn current_exe(pidfile: &Path) -> PathBuf {
    let pid = std::fs::read_to_string(pidfile).unwrap();
    std::fs::read_link(format!("/proc/{}/exe", pid.trim())).unwrap()
}

#[test]
fn apply_revert_config_across_versions_and_rollback() {
    apply_revert_config_and_rollback(Suite::Intl);
}

/// The same on a `gm` box, whose bundles are built with SM3 and signed by an SM2 `updates` key
/// and whose journal and audit entries go into an SM3 tree with SM2 heads.
#[test]
fn on_a_gm_box_apply_revert_config_across_versions_and_rollback() {
    apply_revert_config_and_rollback(Suite::Gm);
}

fn apply_revert_config_and_rollback(suite: Suite) {
    let b = TestBox::provisioned_suite("update", "root,updates", suite);
    let root = b.dir.join("opt");
    let pidfile = b.dir.join("govboxd.pid");
    let log = b.dir.join("govboxd-update.log");
    let _stop = StopDaemon(pidfile.clone());
    // Stands in for `systemctl restart govboxd`.
    let script = b.dir.join("restart.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\nP='{pid}'\n\
             if [ -f \"$P\" ]; then old=$(cat \"$P\"); kill \"$old\" 2>/dev/null || true; \
             while kill -0 \"$old\" 2>/dev/null; do sleep 0.1; done; fi\n\
             \"$GOVBOX_ROOT/current/govboxd\" --state '{state}' --config '{config}' >>'{log}' 2>&1 </dev/null &\n\
             echo $! > \"$P\"\n",
            pid = pidfile.display(),
            state = b.state.display(),
            config = b.config.display(),
            log = log.display()
        ),
    )
    .unwrap();
    let restart = format!("sh {}", script.display());
    let root_s = root.display().to_string();
    let apply = |bundle: &str| {
        run(&b, &["update", "apply", bundle, "--root", &root_s, "--restart-cmd", &restart, "--ready-timeout", "60"])
    };
    let status =
        || -> Value { serde_json::from_str(&ok(&b, &["update", "status", "--root", &root_s, "--json"])).unwrap() };

    // 1. First install: the update trust anchor, then the real govboxd, from slot a.
    let from = b.state.join("trust/root.json").display().to_string();
    ok(&b, &["update", "init", "--root", &root_s, "--from", &from]);
    let v1 = build(&b, "1.0.0", 1, &bin("govboxd"));
    let o = apply(&v1);
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(ready(&b));
    assert_eq!(current_exe(&pidfile), root.join("slots/a/payload/bin/govboxd"));
    assert_eq!(status()["security_version"], 1);

    // 2. A version whose govboxd exits at once never becomes ready: reverted automatically.
    let broken = b.dir.join("broken-govboxd");
    std::fs::write(&broken, "#!/bin/sh\necho 'govboxd 2.0.0: cannot start' >&2\nexit 1\n").unwrap();
    let v2 = build(&b, "2.0.0", 2, &broken);
    let started = Instant::now();
    let o = run(&b, &["update", "apply", &v2, "--root", &root_s, "--restart-cmd", &restart, "--ready-timeout", "3"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("(update_reverted)"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(ready(&b), "the previous version runs again");
    assert_eq!(current_exe(&pidfile), root.join("slots/a/payload/bin/govboxd"));
    let s = status();
    assert_eq!((s["current"].as_str(), s["state"]["phase"].as_str()), (Some("a"), Some("reverted")));
    assert_eq!(s["security_version"], 1, "a reverted update stores no security version");
    let steps = update_steps(&b);
    let names: Vec<&str> = steps.iter().map(|(s, _)| s.as_str()).collect();
    for step in ["staged", "switched", "committed", "reverted"] {
        assert!(names.contains(&step), "no '{step}' update entry: {steps:?}");
    }
    let (_, staged) = steps.iter().find(|(s, _)| s == "staged").unwrap();
    assert!(staged.contains("version 1.0.0") && staged.contains("[update journal "), "{staged}");
    assert_eq!(steps.iter().filter(|(s, d)| s == "staged" && d.contains("version 1.0.0")).count(), 1);
    let (_, detail) = steps.iter().find(|(s, _)| s == "reverted").unwrap();
    assert!(detail.contains("2.0.0") && detail.contains("back on slot a"), "{detail}");

    // 3. Config across versions: "2.1.0" (same binary, see the module comment) is applied, a
    //    setting it would add is set with its newer config_version, and after a rollback the
    //    old version starts with that config, warning about the setting it does not know.
    let v3 = build(&b, "2.1.0", 1, &bin("govboxd"));
    ok(&b, &["update", "apply", &v3, "--root", &root_s, "--restart-cmd", &restart, "--ready-timeout", "60"]);
    assert_eq!(current_exe(&pidfile), root.join("slots/b/payload/bin/govboxd"));
    let config = std::fs::read_to_string(&b.config).unwrap();
    let newer = config.replace("config_version = 2", "config_version = 3") + "update_channel = \"stable\"\n";
    std::fs::write(&b.config, newer).unwrap();
    let rolled = ok(&b, &["update", "rollback", "--root", &root_s, "--restart-cmd", &restart, "--ready-timeout", "60"]);
    assert!(rolled.contains("rolled back  to 1.0.0"), "{rolled}");
    assert!(ready(&b));
    assert_eq!(current_exe(&pidfile), root.join("slots/a/payload/bin/govboxd"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("ignoring unknown setting 'update_channel'") {
            assert!(text.contains("config_version 3 is newer"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "no warning about the newer setting in:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(update_steps(&b).iter().any(|(s, _)| s == "rolled_back"));

    // 4. After a security release is committed, rolling back below it is refused.
    let v4 = build(&b, "3.0.0", 5, &bin("govboxd"));
    ok(&b, &["update", "apply", &v4, "--root", &root_s, "--restart-cmd", &restart, "--ready-timeout", "60"]);
    assert_eq!(status()["security_version"], 5);
    let o = run(&b, &["update", "rollback", "--root", &root_s, "--restart-cmd", &restart, "--ready-timeout", "60"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("(rollback_refused)"), "{err}");
    let s = status();
    assert_eq!((s["current"].as_str(), s["security_version"].as_u64()), (Some("b"), Some(5)));
    assert!(ready(&b));
    assert!(update_steps(&b).iter().any(|(s, _)| s == "rollback_refused"));

    // The bundles and slots hold four copies of govboxd: do not leave them in /tmp.
    drop(_stop);
    let _ = std::fs::remove_dir_all(&b.dir);
}
