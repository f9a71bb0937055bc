//! `govbox update ...`: build signed update bundles (vendors), and apply, inspect, roll back
//! and boot-check them on the box (agency IT, as root, or the unit's `ExecStartPre`/`Post`).
//!
//! The state machine lives in `govbox_images::update`; this module is its host: it restarts
//! govboxd (`systemctl restart` under systemd, else `--restart-cmd`), waits until govboxd's
//! admin socket reports ready (the predicate `/readyz` answers with), and records every step as
//! an audit `update` entry: through the admin socket while govboxd answers, else in the
//! root-owned update journal (`ROOT/update-journal.jsonl`) that govboxd imports at its next start.
//!
//! These commands run as root and never open, walk or chown anything in the service's state
//! folder (which the `govbox` account could have turned into a link to `/etc`): bundles are
//! checked against the root-owned update trust anchor (`ROOT/trust/root.json`), and the one read
//! of a service-owned file, `update init --from`, follows no symlink.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use govbox_admin::protocol::{Status, UpdateEvent};
use govbox_images::update::{
    self, BootAction, BundleSpec, FaultPoint, InstallRoot, UpdateError, UpdateHost, UpdateStatus,
};
use govbox_provisioning::{HashAlgorithm, SigningKey};

use crate::admin::AdminClient;

/// The production install folder.
const DEFAULT_ROOT: &str = "/opt/govbox";
/// Set to a fault point's name, makes `apply` abort there (the power-loss tests).
const FAULT_ENV: &str = "GOVBOX_UPDATE_FAULT";
/// dpkg's database; `GOVBOX_DPKG_ADMINDIR` points elsewhere (tests, `dpkg --root` installs).
const DPKG_ADMINDIR: &str = "/var/lib/dpkg";
/// The Debian package's name (cli/Cargo.toml, `[package.metadata.deb]`).
const DEB_PACKAGE: &str = "govbox";

/// `govbox update ...`.
#[derive(Subcommand, Debug)]
pub enum UpdateCommand {
    /// Build and sign an update bundle (.gbu) from a govboxd and a govbox binary (vendors).
    #[command(disable_version_flag = true)]
    Build(BuildArgs),
    /// Verify a bundle, stage it into the inactive slot, switch, restart govboxd, and commit once
    /// it is ready, or revert (run as root).
    Apply(ApplyArgs),
    /// Both slots, their versions, which is current, the trial state and the security version.
    Status(StatusArgs),
    /// Go back to the other slot (refused below the stored security version) and restart.
    Rollback(RestartArgs),
    /// Before govboxd starts (ExecStartPre=+): finish an interrupted switch, count the starts of
    /// an unconfirmed update, and revert it after too many.
    BootCheck(RootArg),
    /// After govboxd reported ready (ExecStartPost=+): commit an update whose apply was interrupted.
    BootOk(RootArg),
    /// Install the update trust anchor (ROOT/trust/root.json) once, from the provisioned trust
    /// root (run as root, after `govbox provision`).
    Init(InitArgs),
}

/// `govbox update init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    root: RootArg,
    /// The trust root to install, e.g. /var/lib/govbox/trust/root.json (read without following
    /// any symlink).
    #[arg(long, value_name = "ROOT_JSON")]
    from: PathBuf,
}

/// `--root`.
#[derive(Args, Debug)]
pub struct RootArg {
    /// The install folder holding `current` and `slots/`.
    #[arg(long, env = "GOVBOX_ROOT", default_value = DEFAULT_ROOT)]
    root: PathBuf,
}

/// `govbox update build`.
#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The release's semantic version.
    #[arg(long)]
    version: String,
    /// Its security version: boxes refuse bundles below the one they store.
    #[arg(long)]
    security_version: u64,
    /// The govboxd binary.
    #[arg(long)]
    daemon: PathBuf,
    /// The govbox binary.
    #[arg(long)]
    cli: PathBuf,
    /// A folder to ship as dist/ (unit files, default config).
    #[arg(long)]
    dist: Option<PathBuf>,
    /// A new signed root.json to rotate to when the update is committed.
    #[arg(long = "root", value_name = "NEW_ROOT_JSON")]
    new_root: Option<PathBuf>,
    /// A signing key (PEM) of the `updates` role; repeat to meet its threshold.
    #[arg(long = "sign", value_name = "KEY", required = true)]
    sign: Vec<PathBuf>,
    /// The hash of the files' digests and of the bundle's digest, named in its manifest:
    /// `sha256`, or `sm3` for boxes provisioned with `--suite gm`. Bundles are built off the box,
    /// so the vendor names it; `update apply` verifies either.
    #[arg(long, value_name = "sha256|sm3", default_value = "sha256")]
    hash: HashAlgorithm,
    /// The bundle to write.
    #[arg(short = 'o', long = "output")]
    out: PathBuf,
}

/// How to restart govboxd and how long to wait for it.
#[derive(Args, Debug)]
pub struct RestartArgs {
    #[command(flatten)]
    root: RootArg,
    /// Restart with this shell command instead of `systemctl restart govboxd` (required when
    /// not under systemd). It runs with GOVBOX_ROOT set and must return once govboxd runs
    /// `ROOT/current/govboxd`.
    #[arg(long, value_name = "CMD")]
    restart_cmd: Option<String>,
    /// Switch A/B slots even though dpkg lists the `govbox` package as installed (a box that
    /// runs both a .deb and an A/B install folder on purpose).
    #[arg(long)]
    allow_dpkg: bool,
    /// Seconds to wait for govboxd to report ready before the update is reverted.
    #[arg(long, default_value_t = 120)]
    ready_timeout: u64,
    /// The systemd unit.
    #[arg(long, default_value = "govboxd")]
    service: String,
}

/// `govbox update apply`.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The bundle (.gbu).
    file: PathBuf,
    #[command(flatten)]
    restart: RestartArgs,
}

/// `govbox update status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    root: RootArg,
    /// Re-hash each slot against its signed manifest.
    #[arg(long)]
    verify: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `govbox update ...`. The state folder is not used: see the module documentation.
pub fn run(socket: &Path, cmd: UpdateCommand) -> Result<()> {
    match cmd {
        UpdateCommand::Build(a) => build(a),
        UpdateCommand::Init(a) => init(&a),
        UpdateCommand::Apply(a) => {
            refuse_on_dpkg_box(&a.restart, "apply")?;
            let root = InstallRoot::new(&a.restart.root.root);
            let mut host = Host::new(socket, &root, Some(&a.restart))?;
            let applied = update::apply(&root, &a.file, &mut host).map_err(flat)?;
            println!(
                "committed    {} in slot {} (security version {}{})",
                applied.version,
                applied.slot,
                applied.security_version,
                if applied.root_rotated { ", trust root rotated" } else { "" }
            );
            Ok(())
        }
        UpdateCommand::Status(a) => {
            let root = InstallRoot::new(&a.root.root);
            let trust = root.anchor().ok();
            let s = update::status(&root, trust.as_ref(), a.verify).map_err(flat)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
            Ok(())
        }
        UpdateCommand::Rollback(a) => {
            refuse_on_dpkg_box(&a, "rollback")?;
            let root = InstallRoot::new(&a.root.root);
            let trust = root.anchor().map_err(flat)?;
            let mut host = Host::new(socket, &root, Some(&a))?;
            let meta = update::rollback(&root, &trust, &mut host).map_err(flat)?;
            println!("rolled back  to {} (security version {})", meta.version, meta.security_version);
            Ok(())
        }
        UpdateCommand::BootCheck(a) => {
            let root = InstallRoot::new(&a.root);
            let trust = root.anchor().ok();
            let mut host = Host::new(socket, &root, None)?;
            print_boot(&update::boot_check(&root, trust.as_ref(), &mut host).map_err(flat)?);
            Ok(())
        }
        UpdateCommand::BootOk(a) => {
            let root = InstallRoot::new(&a.root);
            let mut host = Host::new(socket, &root, None)?;
            print_boot(&update::boot_ok(&root, &mut host).map_err(flat)?);
            Ok(())
        }
    }
}

/// `govbox update init`: the operator accepts the provisioned trust root as the update trust
/// anchor. The file is the service account's, so it is read without following links, and must
/// be writable by its owner only.
fn init(a: &InitArgs) -> Result<()> {
    let root = InstallRoot::new(&a.root.root);
    let (bytes, owner) = govbox_provisioning::read_unfollowed(&a.from, 1 << 20, "the trust root to install")?;
    let anchor = root.init_anchor(&bytes, &a.from.display().to_string()).map_err(flat)?;
    println!(
        "installed    {} (version {}, from {}, owned by uid {owner})",
        root.anchor_file().display(),
        anchor.version(),
        a.from.display()
    );
    for role in govbox_provisioning::Role::ALL.into_iter().filter(|&r| anchor.has_role(r)) {
        let r = anchor.role(role);
        println!("  role {:<8} threshold {} of {} key(s)", role.as_str(), r.threshold, r.keyids.len());
    }
    Ok(())
}

/// A box installed from the Debian package runs the binaries dpkg put in /usr (the package's
/// unit drop-in points ExecStart there and clears the A/B hooks), so switching slots in the
/// install folder would report success and change nothing that runs. Refuse, and say how such a
/// box is updated, before anything is verified, staged or restarted.
fn refuse_on_dpkg_box(args: &RestartArgs, what: &str) -> Result<()> {
    let admindir = std::env::var_os("GOVBOX_DPKG_ADMINDIR").map(PathBuf::from);
    match dpkg_record(admindir.as_deref().unwrap_or(Path::new(DPKG_ADMINDIR))) {
        Some(list) if !args.allow_dpkg => bail!(
            "this box was installed from the Debian package (dpkg lists {DEB_PACKAGE} in {}), and its govboxd \
             runs from /usr/sbin, not from the A/B slots under {}: `govbox update {what}` would change nothing \
             that runs. Update it as a Debian package instead, from the agency's offline mirror \
             (apt-get install {DEB_PACKAGE}) or with `dpkg -i govbox_<version>_amd64.deb`; pass --allow-dpkg \
             only if this box also runs an A/B install folder on purpose",
            list.display(),
            args.root.root.display()
        ),
        _ => Ok(()),
    }
}

/// dpkg's file list of the installed package under `admindir`, when there is one.
fn dpkg_record(admindir: &Path) -> Option<PathBuf> {
    let list = admindir.join("info").join(format!("{DEB_PACKAGE}.list"));
    list.is_file().then_some(list)
}

/// The error with its stable code, e.g. `... (security_version_too_low)`.
fn flat(e: UpdateError) -> anyhow::Error {
    anyhow::anyhow!("{e} ({})", e.code())
}

fn build(a: BuildArgs) -> Result<()> {
    let keys: Vec<SigningKey> = a
        .sign
        .iter()
        .map(|p| SigningKey::load_pem(p).with_context(|| format!("loading {}", p.display())))
        .collect::<Result<_>>()?;
    let new_root = a
        .new_root
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let spec = BundleSpec {
        version: a.version,
        security_version: a.security_version,
        daemon: a.daemon,
        cli: a.cli,
        dist: a.dist,
        new_root,
        hash: a.hash,
    };
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let built = update::build_bundle(&spec, &refs, &a.out).map_err(flat)?;
    println!(
        "built        {} ({} {}, security version {}, {} files)",
        a.out.display(),
        built.manifest.name,
        built.manifest.version,
        spec.security_version,
        built.manifest.files.len()
    );
    println!("digest       {}", built.manifest.digest_label(&built.digest));
    Ok(())
}

fn print_status(s: &UpdateStatus) {
    println!("install folder   {}", s.root);
    println!("current          {}", s.current.map_or("(none)".to_string(), |c| format!("slot {c}")));
    println!("security version {}", s.security_version);
    match &s.state {
        Some(st) => println!(
            "state            {:?} (slot {}, previous {}, boot count {}, since {})",
            st.phase,
            st.current,
            st.previous.map_or("-".to_string(), |p| p.to_string()),
            st.boot_count,
            st.since
        ),
        None => println!("state            (no update applied yet)"),
    }
    for slot in &s.slots {
        let mark = if slot.current { "*" } else { " " };
        match &slot.meta {
            Some(m) => println!(
                "{mark} slot {}         {} (security version {}, digest {}, staged {}){}",
                slot.slot,
                m.version,
                m.security_version,
                m.digest,
                m.staged,
                slot.problem.as_ref().map_or(String::new(), |p| format!(" PROBLEM: {p}"))
            ),
            None => println!("{mark} slot {}         (empty)", slot.slot),
        }
    }
}

fn print_boot(a: &BootAction) {
    match a {
        BootAction::ApplyRunning => println!("boot-check   an update apply is running; it decides"),
        BootAction::Nothing => println!("boot-check   nothing to do"),
        BootAction::Counted { boot_count } => println!("boot-check   unconfirmed update, start {boot_count}"),
        BootAction::Committed => println!("boot-check   update committed"),
        BootAction::Reverted { reason } => println!("boot-check   reverted: {reason}"),
        BootAction::Repaired { reason } => println!("boot-check   repaired: {reason}"),
        other => println!("boot-check   {other:?}"),
    }
}

/// How govboxd is restarted.
#[derive(Debug)]
enum Restart {
    /// `systemctl restart UNIT`, and `systemctl is-active UNIT` while waiting.
    Systemd(String),
    /// `sh -c CMD`.
    Command(String, PathBuf),
    /// boot-check and boot-ok never restart.
    Never,
}

/// [`UpdateHost`] for the command line.
struct Host {
    socket: PathBuf,
    root: InstallRoot,
    restart: Restart,
    ready_timeout: Duration,
}

impl Host {
    fn new(socket: &Path, root: &InstallRoot, restart: Option<&RestartArgs>) -> Result<Self> {
        let (how, ready_timeout) = match restart {
            None => (Restart::Never, Duration::ZERO),
            Some(a) => {
                let how = match &a.restart_cmd {
                    Some(cmd) => Restart::Command(cmd.clone(), a.root.root.clone()),
                    // sd_booted(): the system runs systemd.
                    None if Path::new("/run/systemd/system").is_dir() => Restart::Systemd(a.service.clone()),
                    None => bail!("not running under systemd: pass --restart-cmd to say how govboxd is restarted"),
                };
                (how, Duration::from_secs(a.ready_timeout))
            }
        };
        Ok(Self { socket: socket.to_path_buf(), root: root.clone(), restart: how, ready_timeout })
    }

    /// Through govboxd when it answers; else, and when it answers with a failure, into the
    /// update journal, so that the step is recorded once and not lost.
    fn append(&self, step: &str, detail: &str) -> std::result::Result<&'static str, String> {
        let online = AdminClient::connect(&self.socket).map_err(|e| e.to_string()).and_then(|mut c| {
            c.call(UpdateEvent { step: step.to_string(), detail: detail.to_string() }).map_err(|e| e.to_string())
        });
        match online {
            Ok(_) => Ok("audit log"),
            Err(why) => match self.root.journal_append(step, detail) {
                Ok(_) => Ok("update journal"),
                Err(e) => Err(format!("govboxd: {why}; update journal: {e}")),
            },
        }
    }

    fn ready_now(&self) -> std::result::Result<(), String> {
        if let Restart::Systemd(unit) = &self.restart {
            let active = Command::new("systemctl").args(["is-active", "--quiet", unit]).status();
            if !active.map(|s| s.success()).unwrap_or(false) {
                return Err(format!("systemd does not report {unit} active"));
            }
        }
        let mut c = AdminClient::connect(&self.socket).map_err(|e| e.to_string())?;
        let status = c.call(Status {}).map_err(|e| e.to_string())?;
        if status.ready { Ok(()) } else { Err("govboxd answers but is not ready".into()) }
    }
}

impl UpdateHost for Host {
    fn record(&mut self, step: &str, detail: &str) {
        println!("update       {step}: {detail}");
        if let Err(e) = self.append(step, detail) {
            eprintln!("warning: audit entry 'update {step}: {detail}' could not be recorded: {e}");
        }
    }

    fn restart(&mut self) -> std::result::Result<(), String> {
        let status = match &self.restart {
            Restart::Never => return Ok(()),
            Restart::Systemd(unit) => Command::new("systemctl").args(["restart", unit]).status(),
            Restart::Command(cmd, root) => Command::new("sh").args(["-c", cmd]).env("GOVBOX_ROOT", root).status(),
        };
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("the restart command failed ({s})")),
            Err(e) => Err(format!("the restart command could not run: {e}")),
        }
    }

    fn wait_ready(&mut self) -> std::result::Result<(), String> {
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            let r = self.ready_now();
            if r.is_ok() {
                return r;
            }
            if Instant::now() >= deadline {
                return r.map_err(|e| format!("not ready within {} s: {e}", self.ready_timeout.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn fault(&mut self, point: FaultPoint) {
        if std::env::var(FAULT_ENV).is_ok_and(|v| v == point.as_str()) {
            eprintln!("{FAULT_ENV}={}: aborting here", point.as_str());
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_record_is_found_only_for_the_govbox_package() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(dpkg_record(dir.path()), None);
        std::fs::create_dir(dir.path().join("info")).unwrap();
        std::fs::write(dir.path().join("info/govbox-other.list"), "/usr/bin/x\n").unwrap();
        assert_eq!(dpkg_record(dir.path()), None);
        std::fs::write(dir.path().join("info/govbox.list"), "/usr/sbin/govboxd\n").unwrap();
        assert_eq!(dpkg_record(dir.path()), Some(dir.path().join("info/govbox.list")));
    }
}
