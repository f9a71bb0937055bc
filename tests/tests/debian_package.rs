//! The Debian package: scripts/build-deb.sh (cargo-deb) packs the debug binaries that
//! `cargo build --workspace --bins` made, and `dpkg --root` installs the package into a scratch
//! root with its maintainer scripts run outside a chroot (`--force-script-chrootless`, which sets
//! DPKG_ROOT). Checked: the files and their modes, the conffile registered with dpkg, the accounts
//! systemd-sysusers made, the folders systemd-tmpfiles made, `systemd-analyze verify` and
//! `security` of the installed unit with its Debian drop-in, and that removing and purging keep
//! the configuration and the state folder.
//!
//! Needs cargo-deb (`cargo install cargo-deb --locked`); without it the test fails with that hint
//! unless GOVBOX_SKIP_DEB=1. On a machine without dpkg it is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use govbox_e2e::{bin, repo};

fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).mode() & 0o7777
}

/// The id (third field) of `name` in a passwd or group file.
fn id_in(file: &Path, name: &str) -> Option<u32> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name)).then(|| f.get(2)?.parse().ok())?
    })
}

struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn deb_builds_installs_and_removes_into_a_scratch_root() {
    if !have("dpkg") || !have("dpkg-query") {
        eprintln!("skipped: dpkg is not installed (not a Debian machine)");
        return;
    }
    let cargo_deb = Command::new("cargo").args(["deb", "--version"]).output().is_ok_and(|o| o.status.success());
    if !cargo_deb {
        if std::env::var("GOVBOX_SKIP_DEB").as_deref() == Ok("1") {
            eprintln!("skipped: cargo-deb is not installed and GOVBOX_SKIP_DEB=1");
            return;
        }
        panic!("cargo-deb is not installed: cargo install cargo-deb --locked (or set GOVBOX_SKIP_DEB=1 to skip)");
    }
    let scratch = Scratch(std::env::temp_dir().join(format!("govbox-deb-{}", std::process::id())));
    let _ = fs::remove_dir_all(&scratch.0);
    fs::create_dir_all(&scratch.0).unwrap();
    let deb = scratch.0.join("govbox.deb");

    // 1. Build it from the binaries the test run already has (target/debug).
    let debug_dir = bin("govboxd").parent().unwrap().to_path_buf();
    let target_dir = debug_dir.parent().unwrap();
    run(Command::new(repo().join("scripts/build-deb.sh"))
        .env("NO_BUILD", "1")
        .env("PROFILE", "dev")
        .env("CARGO_TARGET_DIR", target_dir)
        .arg("--quiet")
        .arg("-o")
        .arg(&deb));

    let listing = String::from_utf8(run(Command::new("dpkg").arg("-c").arg(&deb)).stdout).unwrap();
    eprintln!("dpkg -c:\n{listing}");
    for (path, perms) in [
        ("./usr/sbin/govboxd", "-rwxr-xr-x"),
        ("./usr/bin/govbox", "-rwxr-xr-x"),
        ("./usr/lib/systemd/system/govboxd.service", "-rw-r--r--"),
        ("./usr/lib/systemd/system/govboxd.service.d/debian.conf", "-rw-r--r--"),
        ("./usr/sbin/govbox-auditd", "-rwxr-xr-x"),
        ("./usr/lib/systemd/system/govbox-auditd.service", "-rw-r--r--"),
        ("./usr/lib/systemd/system/govbox-auditd.service.d/debian.conf", "-rw-r--r--"),
        ("./usr/lib/sysusers.d/govbox.conf", "-rw-r--r--"),
        ("./usr/lib/tmpfiles.d/govbox.conf", "-rw-r--r--"),
        ("./etc/govbox/govbox.toml", "-rw-r--r--"),
        ("./usr/share/doc/govbox/README.md", "-rw-r--r--"),
        ("./usr/share/doc/govbox/govbox.help.txt", "-rw-r--r--"),
        ("./usr/share/doc/govbox/govboxd.help.txt", "-rw-r--r--"),
    ] {
        assert!(
            listing.lines().any(|l| l.starts_with(perms) && l.ends_with(path)),
            "{path} ({perms}) is not in the package:\n{listing}"
        );
    }
    let info = String::from_utf8(run(Command::new("dpkg-deb").arg("-f").arg(&deb)).stdout).unwrap();
    assert!(info.contains("Package: govbox\n") && info.contains("systemd (>= 250)"), "{info}");

    // 2. Install into an empty root. It has no libc6 or systemd package: --force-depends.
    let root = scratch.0.join("root");
    let admin = root.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        fs::create_dir_all(admin.join(d)).unwrap();
    }
    for d in ["etc", "tmp", "var/log"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(admin.join("status"), "").unwrap();
    fs::write(admin.join("available"), "").unwrap();
    let dpkg = |args: &[&str]| {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", root.display()))
            .args(["--force-script-chrootless", "--force-not-root", "--force-depends", "--no-triggers"])
            .args(args);
        let o = run(&mut c);
        eprintln!("dpkg {args:?}:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    };
    dpkg(&["-i", deb.to_str().unwrap()]);
    let query = |field: &str| {
        let o = run(Command::new("dpkg-query").arg(format!("--admindir={}", admin.display())).args([
            "-W",
            &format!("-f=${{{field}}}"),
            "govbox",
        ]));
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(query("Status"), "install ok installed");
    let conffiles = query("Conffiles");
    assert!(conffiles.trim_start().starts_with("/etc/govbox/govbox.toml "), "conffiles: {conffiles:?}");

    // Files and modes as installed.
    assert_eq!(mode(&root.join("usr/sbin/govboxd")), 0o755);
    assert_eq!(mode(&root.join("usr/bin/govbox")), 0o755);
    // The installed config is the packaged one: its MD5 is the one dpkg registered.
    let config = root.join("etc/govbox/govbox.toml");
    let md5 = String::from_utf8(run(Command::new("md5sum").arg(&config)).stdout).unwrap();
    let md5 = md5.split_whitespace().next().unwrap();
    assert!(conffiles.contains(&format!("/etc/govbox/govbox.toml {md5}")), "{conffiles:?} vs {md5}");
    assert!(fs::read_to_string(&config).unwrap().contains("config_version"));
    let help = fs::read_to_string(root.join("usr/share/doc/govbox/govbox.help.txt")).unwrap();
    assert!(help.contains("doctor") && help.contains("provision"), "{help}");

    // postinst ran systemd-sysusers and systemd-tmpfiles against DPKG_ROOT.
    let passwd = root.join("etc/passwd");
    let uid = id_in(&passwd, "govbox").unwrap_or_else(|| panic!("no govbox user in {}", passwd.display()));
    let gid = id_in(&root.join("etc/group"), "govbox").expect("no govbox group");
    assert!(id_in(&root.join("etc/group"), "govbox-admin").is_some(), "no govbox-admin group");
    assert!(fs::read_to_string(&passwd).unwrap().contains(":/var/lib/govbox:/usr/sbin/nologin"));
    let state = fs::metadata(root.join("var/lib/govbox")).unwrap();
    assert_eq!((state.mode() & 0o7777, state.uid(), state.gid()), (0o700, uid, gid), "/var/lib/govbox");
    let etc = fs::metadata(root.join("etc/govbox")).unwrap();
    assert_eq!((etc.mode() & 0o7777, etc.uid(), etc.gid()), (0o750, 0, gid), "/etc/govbox");

    // 3. The installed unit with its drop-in: no /opt/govbox exists in the root, so `verify`
    //    passing means the drop-in's ExecStart (/usr/sbin/govboxd) replaced the A/B slot's.
    if have("systemd-analyze") && Path::new("/usr/lib/systemd/system/sysinit.target").exists() {
        assert!(!root.join("opt/govbox").exists());
        run(Command::new("cp").arg("-a").arg("/usr/lib/systemd/system/.").arg(root.join("usr/lib/systemd/system")));
        fs::copy("/usr/bin/kill", root.join("usr/bin/kill")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        let rootarg = format!("--root={}", root.display());
        let o = run(Command::new("systemd-analyze").args(["verify", &rootarg, "govboxd.service"]));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.trim().is_empty(), "systemd-analyze verify:\n{err}");
        let o = run(Command::new("systemd-analyze").args([
            "security",
            "--offline=true",
            "--no-pager",
            "--threshold=20",
            &rootarg,
            "govboxd.service",
        ]));
        let out = String::from_utf8_lossy(&o.stdout);
        let line = out.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_default();
        eprintln!("installed unit: {line}");
    } else {
        eprintln!("systemd-analyze checks skipped: no systemd unit library on this machine");
    }

    // 4. The installed govbox refuses A/B updates and rollbacks on a dpkg-installed box, before
    //    it reads the bundle (which does not exist here) or touches the install folder.
    let ab_root = scratch.0.join("opt-govbox");
    for args in [&["update", "apply", "/nonexistent/bundle.gbu"][..], &["update", "rollback"][..]] {
        let o = Command::new(root.join("usr/bin/govbox"))
            .arg("--state")
            .arg(root.join("var/lib/govbox"))
            .args(args)
            .arg("--root")
            .arg(&ab_root)
            .arg("--restart-cmd")
            .arg("false")
            .env("GOVBOX_DPKG_ADMINDIR", &admin)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "govbox {args:?}: {err}");
        assert!(err.contains("installed from the Debian package") && err.contains("dpkg -i"), "{err}");
        assert!(!ab_root.exists(), "govbox {args:?} created {}", ab_root.display());
    }

    // 5. Remove keeps the conffile; purge removes it but keeps the state folder (keys, audit log).
    fs::write(root.join("var/lib/govbox/marker"), "keys live here").unwrap();
    dpkg(&["-r", "govbox"]);
    assert!(!root.join("usr/sbin/govboxd").exists());
    assert!(root.join("etc/govbox/govbox.toml").exists(), "remove must keep the conffile");
    dpkg(&["--purge", "govbox"]);
    assert!(!root.join("etc/govbox/govbox.toml").exists(), "purge removes the conffile");
    assert!(root.join("var/lib/govbox/marker").exists(), "purge must keep /var/lib/govbox");
}
