//! dist/govboxd.service: its sandbox stays at `systemd-analyze security` exposure 2.0 ("OK") or
//! better, and `systemd-analyze verify` accepts it.
//!
//! Where the installed systemd cannot analyse a unit file offline (systemd < 250, or no systemd at
//! all), the test still checks that every hardening directive is present with its value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use govbox_e2e::repo;

/// The highest exposure accepted (systemd's "OK" band ends at 2.0; "MEDIUM" starts above it).
const MAX_EXPOSURE: f64 = 2.0;

/// The directives whose absence would raise the exposure, with their required values.
const REQUIRED: &[(&str, &str)] = &[
    ("User", "govbox"),
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("PrivateMounts", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"),
    ("ProcSubset", "pid"),
    ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("RemoveIPC", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallFilter", "~@privileged @resources"),
    ("SystemCallFilter", "@chown"),
    ("SystemCallFilter", "seccomp landlock_create_ruleset landlock_add_rule landlock_restrict_self"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("UMask", "0077"),
    // Unix sockets by path: only govboxd's own folder, govbox-auditd's, journald's and systemd's.
    ("TemporaryFileSystem", "/run:ro"),
    ("BindPaths", "/run/govbox /run/govbox-audit"),
    ("BindReadOnlyPaths", "/run/systemd/journal/socket /run/systemd/notify"),
];

fn unit_path() -> PathBuf {
    repo().join("dist/govboxd.service")
}

/// The `Key=Value` lines of the unit's [Service] section.
fn service_directives(text: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
        } else if section == "[Service]"
            && let Some((k, v)) = line.split_once('=')
        {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[test]
fn every_hardening_directive_is_present() {
    let text = fs::read_to_string(unit_path()).unwrap();
    let have = service_directives(&text);
    let missing: Vec<String> = REQUIRED
        .iter()
        .filter(|(k, v)| !have.iter().any(|(hk, hv)| hk == k && hv == v))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert!(missing.is_empty(), "dist/govboxd.service lacks {missing:?}");
    // The daemon must keep what it needs to work.
    assert!(!have.iter().any(|(k, v)| k == "PrivateNetwork" && v == "yes"), "the API serves the intranet");
    assert!(!have.iter().any(|(k, v)| k == "PrivateUsers" && v == "yes"), "the admin socket needs govbox-admin");
}

/// Whether `systemd-analyze` is installed and knows `--offline` (systemd 250 and later).
fn analyze_offline() -> bool {
    let Ok(o) = Command::new("systemd-analyze").arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&o.stdout);
    let version: Option<u32> = text.split_whitespace().nth(1).and_then(|v| v.parse().ok());
    o.status.success() && version.is_some_and(|v| v >= 250)
}

/// The number of "Overall exposure level for X: 1.4 OK" in `systemd-analyze security` output.
fn overall_exposure(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.contains("Overall exposure level"))?;
    line.rsplit_once(": ")?.1.split_whitespace().next()?.parse().ok()
}

#[test]
fn exposure_is_ok_or_better() {
    if !analyze_offline() {
        eprintln!("skipped: systemd-analyze with --offline (systemd >= 250) is not installed");
        return;
    }
    // govbox-auditd.service (issue 19) is held to the same bound, also with the drop-in that
    // gives it the TPM for [audit] tpm_anchor (its [Service] lines placed before [Install]).
    let auditd = repo().join("dist/govbox-auditd.service");
    let with_tpm = std::env::temp_dir().join(format!("govbox-hardening-{}", std::process::id()));
    fs::create_dir_all(&with_tpm).unwrap();
    let drop_in = fs::read_to_string(repo().join("dist/govbox-auditd-tpm.conf")).unwrap();
    let lines: Vec<&str> =
        drop_in.lines().filter(|l| !l.is_empty() && !l.starts_with('#') && *l != "[Service]").collect();
    assert!(lines.iter().any(|l| l.starts_with("DeviceAllow=")), "{drop_in}");
    let unit = fs::read_to_string(&auditd).unwrap().replace("[Install]", &format!("{}\n\n[Install]", lines.join("\n")));
    let with_tpm = with_tpm.join("govbox-auditd.service");
    fs::write(&with_tpm, unit).unwrap();
    for unit in [unit_path(), auditd, with_tpm] {
        let o = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager", "--threshold=20"])
            .arg(&unit)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let exposure = overall_exposure(&out).unwrap_or_else(|| panic!("no overall exposure in:\n{out}"));
        eprintln!("{} exposure: {exposure}", unit.display());
        assert!(exposure <= MAX_EXPOSURE, "{}: exposure {exposure} > {MAX_EXPOSURE}:\n{out}", unit.display());
        assert!(o.status.success(), "systemd-analyze security --threshold=20 failed:\n{out}");
    }
}

#[test]
fn exposure_line_parses() {
    let out = "  ✓ UMask= ...\n\n→ Overall exposure level for govboxd.service: 1.4 OK 🙂\n";
    assert_eq!(overall_exposure(out), Some(1.4));
    assert_eq!(overall_exposure("→ Overall exposure level for x.service: 9.6 UNSAFE 😨"), Some(9.6));
    assert_eq!(overall_exposure("nothing"), None);
}

/// A scratch root that `systemd-analyze verify --root` accepts: the host's unit library and
/// `kill`, and stand-ins for the binaries the unit runs.
fn verify_root(dir: &Path, executables: &[&str]) {
    for d in ["usr/bin", "usr/lib/systemd", "etc/systemd/system"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let copied = Command::new("cp").arg("-a").arg("/usr/lib/systemd/system").arg(dir.join("usr/lib/systemd/")).status();
    assert!(copied.unwrap().success(), "copying /usr/lib/systemd/system failed");
    fs::copy("/usr/bin/kill", dir.join("usr/bin/kill")).unwrap();
    for link in ["bin", "lib"] {
        let _ = std::os::unix::fs::symlink(format!("usr/{link}"), dir.join(link));
    }
    for exe in executables {
        let p = dir.join(exe.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if !analyze_offline() || !Path::new("/usr/lib/systemd/system/sysinit.target").exists() {
        eprintln!("skipped: systemd-analyze (>= 250) with the systemd unit library is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("govbox-verify-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    verify_root(&dir, &["/opt/govbox/current/govboxd", "/opt/govbox/current/govbox"]);
    fs::copy(unit_path(), dir.join("etc/systemd/system/govboxd.service")).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", dir.display()))
        .arg("/etc/systemd/system/govboxd.service")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    fs::remove_dir_all(&dir).unwrap();
    // Unknown keys and bad values are only warnings (exit 0): any output is a failure.
    assert!(o.status.success() && err.trim().is_empty(), "systemd-analyze verify:\n{err}");
}

#[test]
fn update_hooks_use_the_configured_admin_socket_and_never_the_state_folder() {
    let unit = fs::read_to_string(unit_path()).unwrap();
    let config = fs::read_to_string(repo().join("dist/govbox.toml")).unwrap();
    let socket = config
        .lines()
        .find_map(|l| l.strip_prefix("admin_socket = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("dist/govbox.toml sets admin_socket");
    for (key, value) in service_directives(&unit) {
        if key == "ExecStartPre" || key == "ExecStartPost" {
            assert!(value.contains(&format!(" --admin-socket {socket} update ")), "{key}={value}");
            assert!(!value.contains("--state"), "{key}: root's update hooks never open the state folder: {value}");
        }
    }
}

#[test]
fn debian_drop_in_changes_only_paths() {
    // The .deb's drop-in may move the binaries and clear the A/B hooks, but never loosen the sandbox.
    let text = fs::read_to_string(repo().join("dist/debian/govboxd.service.d/debian.conf")).unwrap();
    let allowed = ["Documentation", "ExecStart", "ExecStartPre", "ExecStartPost", "ReadOnlyPaths"];
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('[')) {
        let key = line.split_once('=').map_or(line, |(k, _)| k.trim());
        assert!(allowed.contains(&key), "debian.conf sets {key}: only {allowed:?} may differ from the unit");
    }
    assert!(text.contains("\nExecStart=/usr/sbin/govboxd --state /var/lib/govbox --config /etc/govbox/govbox.toml\n"));
}
