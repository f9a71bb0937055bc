//! Egress lockdown: once its HTTPS port is bound, govboxd gives up the ability to open network
//! connections of its own ("data stays local").
//!
//! # What is enforced
//!
//! `[sandbox] egress` chooses the mechanism:
//!
//! - `landlock` (what `auto` picks when the kernel's Landlock ABI is 4 or newer): a Landlock
//!   ruleset that handles `LANDLOCK_ACCESS_NET_BIND_TCP` and `LANDLOCK_ACCESS_NET_CONNECT_TCP` and
//!   allows only a bind to the HTTPS port. Every TCP `connect()` (IPv4 and IPv6) then fails with
//!   `EACCES`, and so does a bind to any other TCP port. Landlock ABI 4 to 7 covers TCP only, so a
//!   seccomp filter (as below, narrowed) also refuses new `AF_INET`/`AF_INET6` sockets that are not
//!   plain TCP streams (UDP, raw, SCTP, MPTCP: `socket()` fails with `EPERM`), and `io_uring_setup`
//!   (io_uring's socket operations would not pass through seccomp).
//! - `seccomp` (what `auto` picks on older kernels): a seccomp filter that makes every new
//!   `AF_INET`/`AF_INET6` socket fail with `EPERM` (seccomp sees `socket()`'s domain argument, not
//!   `connect()`'s address, so it refuses the socket instead), and `io_uring_setup` likewise. All
//!   other system calls are allowed; Unix sockets (journald, systemd notify, the admin socket) work.
//! - `off`: nothing is restricted; govboxd logs a warning at every start.
//!
//! With an audit witness (`[audit] witness = "tcp://IP:PORT"`) one outbound connection is
//! needed. Landlock then also allows `connect()` to that TCP port (Landlock rules name ports, not
//! addresses: any host on that port), and every other connect stays refused. The seccomp filter
//! cannot see a connect's address or port, so with `seccomp` new TCP sockets are then allowed
//! (as with Landlock, UDP and other internet sockets stay refused) and the report says `connect`
//! `allowed`. The report's `connect` names the witness port either way.
//!
//! Only the network is restricted: the filesystem is untouched (govboxd writes its state folder).
//! Sockets that exist keep working: the HTTPS listener accepts as before. Unix sockets are not
//! this setting's: sockets with a path are limited by the unit's mount namespace (an empty
//! read-only `/run` with only what govboxd needs bound back, `dist/govboxd.service`), and
//! abstract ones are scoped to govboxd's own Landlock domain where the kernel can (ABI 6 or
//! newer; `scope_abstract_unix`). A TPM reached over TCP (a `swtpm:host=...,port=...` TCTI, used in tests) is
//! refused like any other connection; the appliance's `/dev/tpmrm0` is a device, not a socket.
//! Limits: a seccomp filter cannot see through the x32 system-call ABI on kernels that enable it,
//! and `egress = "seccomp"` cannot tell a TCP connect from any other use of a new socket.
//! Both mechanisms set `PR_SET_NO_NEW_PRIVS`, which govboxd never needs to be without (it execs
//! nothing).
//!
//! # Every thread
//!
//! Landlock's `landlock_restrict_self` applies to the calling thread only (ABI 7 has no way to
//! apply it to the others), and threads inherit the restriction of the thread that creates them.
//! So [`lock_down`] runs in `daemon::run` while the process has exactly one thread: after the
//! config is read, logging is set up and the HTTPS listener is bound (with `std::net`), and before
//! the tokio runtime, the device probes, the engine's rayon pools and every other thread exist.
//! [`lock_down`] counts `/proc/self/task` first; with more than one thread `landlock` is refused
//! (and `auto` falls back to seccomp). The seccomp filter is installed with
//! `SECCOMP_FILTER_FLAG_TSYNC`, so it covers every thread that exists at that moment as well.
//! `tests/tests/egress.rs` checks this from inside the running daemon: a connect from a tokio
//! worker, from a new std thread and from a new rayon thread is refused alike.
//!
//! # What is reported
//!
//! The facts ([`EgressMeasurement`]) are logged once at start, given in the admin `status`
//! (`egress`), shown by `govbox status` and signed into attestation reports. The kernel refuses a
//! blocked call silently, with an error code to the caller: govboxd neither sees nor logs nor
//! audits attempts, and claims nothing about them.

use std::net::{SocketAddr, TcpListener};
use std::sync::OnceLock;

use govbox_attestation::EgressMeasurement;
use serde::{Deserialize, Serialize};

/// `[sandbox]`: what govboxd gives up at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// How outbound network access is taken away: `auto`, `landlock`, `seccomp` or `off`.
    pub egress: EgressMode,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        // auto: the strongest mechanism the kernel offers; an appliance that holds an agency's
        // data has no reason to open connections of its own.
        SandboxConfig { egress: EgressMode::Auto }
    }
}

/// The `egress` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    /// Landlock when the kernel's ABI handles TCP (4 or newer), else seccomp.
    Auto,
    /// Landlock, or govboxd does not start.
    Landlock,
    /// The seccomp filter only.
    Seccomp,
    /// No restriction (warned about at every start).
    Off,
}

/// Why the lockdown could not be applied; govboxd does not start without the one configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// `egress = "landlock"`, but the kernel cannot enforce it.
    #[error("[sandbox] egress = \"landlock\": {0}; use egress = \"auto\" to fall back to seccomp on this kernel")]
    Landlock(String),
    /// The seccomp filter could not be built or installed.
    #[error("[sandbox] egress: installing the seccomp filter: {0}")]
    Seccomp(String),
}

/// The address given to the test-only `debug_egress_probe` is not `IP:PORT`.
#[derive(Debug, thiserror::Error)]
#[error("debug_egress_probe: addr '{addr}' is not IP:PORT: {source}")]
pub struct ProbeAddrError {
    /// What was given.
    pub addr: String,
    /// Why it does not parse.
    pub source: std::net::AddrParseError,
}

/// The lockdown in force, once [`lock_down`] has run.
static CURRENT: OnceLock<EgressMeasurement> = OnceLock::new();

/// What [`lock_down`] put in force, or `None` before it ran (library users, unit tests).
pub fn current() -> Option<&'static EgressMeasurement> {
    CURRENT.get()
}

/// The facts, as the JSON the admin `status` gives (`null` before [`lock_down`] ran).
pub fn status_json() -> serde_json::Value {
    current().and_then(|m| serde_json::to_value(m).ok()).unwrap_or(serde_json::Value::Null)
}

/// Takes away outbound network access as `mode` says, allowing TCP binds only on `listener`'s
/// port, and connects only to the audit witness's port when there is one. Call while the process
/// has one thread (see the module documentation). Logs what is in force and returns it.
pub fn lock_down(
    mode: EgressMode,
    listener: &TcpListener,
    witness: Option<SocketAddr>,
) -> Result<EgressMeasurement, SandboxError> {
    let port = listener.local_addr().map_err(|e| SandboxError::Seccomp(format!("the listener's port: {e}")))?.port();
    let m = match mode {
        EgressMode::Off => {
            log::warn!(
                "egress lockdown is OFF ([sandbox] egress = \"off\"): this process may open outbound connections"
            );
            EgressMeasurement::off()
        }
        EgressMode::Seccomp => seccomp_only(port, witness)?,
        EgressMode::Landlock => landlock(port, witness)?,
        EgressMode::Auto => match landlock(port, witness) {
            Ok(m) => m,
            Err(SandboxError::Landlock(why)) => {
                log::warn!("egress lockdown: Landlock is not usable ({why}); using the seccomp filter instead");
                seccomp_only(port, witness)?
            }
            Err(e) => return Err(e),
        },
    };
    if m.mechanism != "off" {
        log::info!("egress lockdown: {}", m.summary());
        log::info!("abstract unix sockets: {}", scope_abstract_unix());
    }
    let _ = CURRENT.set(m.clone());
    Ok(m)
}

/// Threads of this process, from `/proc/self/task`.
fn thread_count() -> Result<usize, String> {
    Ok(std::fs::read_dir("/proc/self/task").map_err(|e| format!("reading /proc/self/task: {e}"))?.count())
}

/// The report's `connect`: `denied`, or which connects remain for the witness.
fn connect_fact(witness: Option<SocketAddr>, only_port: bool) -> String {
    match witness {
        None => "denied".into(),
        Some(w) if only_port => format!("allowed only to port {} (audit witness {w})", w.port()),
        Some(w) => format!("allowed (audit witness {w}; seccomp cannot narrow it)"),
    }
}

/// Landlock for TCP (bind on `port` only, connect only to the witness's port), then the narrowed
/// seccomp filter.
fn landlock(port: u16, witness: Option<SocketAddr>) -> Result<EgressMeasurement, SandboxError> {
    use landlock::{
        ABI, Access, AccessNet, CompatLevel, Compatible, LandlockStatus, NetPort, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus,
    };
    let err = |e: &dyn std::fmt::Display| SandboxError::Landlock(e.to_string());
    match thread_count() {
        Ok(1) => {}
        Ok(n) => {
            return Err(SandboxError::Landlock(format!(
                "the process already has {n} threads, and Landlock would restrict only the calling one"
            )));
        }
        Err(e) => return Err(SandboxError::Landlock(e)),
    }
    // HardRequirement: a kernel without the TCP access rights (ABI < 4) is an error here, never a
    // ruleset that silently handles less.
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessNet::from_all(ABI::V4))
        .map_err(|e| err(&e))?
        .create()
        .map_err(|e| err(&e))?
        .add_rule(NetPort::new(port, AccessNet::BindTcp))
        .map_err(|e| err(&e))?
        .add_rules(witness.map(|w| Ok::<_, landlock::RulesetError>(NetPort::new(w.port(), AccessNet::ConnectTcp))))
        .map_err(|e| err(&e))?
        .restrict_self()
        .map_err(|e| err(&e))?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(SandboxError::Landlock(format!("the kernel enforces the ruleset only {:?}", status.ruleset)));
    }
    let abi = match status.landlock {
        LandlockStatus::Available { kernel_abi: Some(v), .. } => u32::try_from(v).unwrap_or(0),
        LandlockStatus::Available { effective_abi, .. } => abi_number(effective_abi),
        _ => 0,
    };
    install_seccomp(SeccompScope::NonTcpInet)?;
    Ok(EgressMeasurement {
        mechanism: "landlock".into(),
        abi: Some(abi),
        connect: connect_fact(witness, true),
        bind_ports: Some(vec![port]),
        other_inet: "denied".into(),
    })
}

/// Unix sockets with a path are limited by the unit's mount namespace (an empty read-only `/run`
/// with only govboxd's own folder, journald's and systemd's notify sockets bound back; see
/// `dist/govboxd.service`). Abstract sockets have no path, so no mount hides them: where the
/// kernel's Landlock ABI is 6 or newer, govboxd scopes them to its own Landlock domain, so it can
/// connect only to abstract sockets it made itself (it uses none). Best effort, and said in the
/// log: an older kernel, more than one thread, or an abstract notify socket leaves them reachable.
fn scope_abstract_unix() -> String {
    if std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| s.as_encoded_bytes().starts_with(b"@")) {
        return "reachable (systemd's notify socket is itself abstract)".into();
    }
    match thread_count() {
        Ok(1) => {}
        Ok(n) => return format!("reachable (the process already has {n} threads)"),
        Err(e) => return format!("reachable ({e})"),
    }
    match restrict_abstract_unix() {
        Ok(true) => "scoped to govboxd's own (Landlock ABI 6 or newer)".into(),
        Ok(false) => "reachable (the kernel's Landlock cannot scope them: ABI below 6)".into(),
        Err(e) => format!("reachable (Landlock: {e})"),
    }
}

/// Restricts the calling thread (and the threads it makes later) to abstract sockets of its own
/// Landlock domain; `Ok(false)` when the kernel cannot.
fn restrict_abstract_unix() -> Result<bool, String> {
    use landlock::{CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetStatus, Scope};
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .scope(Scope::AbstractUnixSocket)
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map_err(|e| e.to_string())?;
    Ok(status.ruleset == RulesetStatus::FullyEnforced)
}

/// The ABI's number (the crate's enum has no conversion to one).
fn abi_number(abi: landlock::ABI) -> u32 {
    use landlock::ABI;
    [ABI::V1, ABI::V2, ABI::V3, ABI::V4, ABI::V5, ABI::V6, ABI::V7, ABI::V8, ABI::V9]
        .iter()
        .rposition(|a| *a <= abi)
        .map_or(0, |i| i as u32 + 1)
}

fn seccomp_only(port: u16, witness: Option<SocketAddr>) -> Result<EgressMeasurement, SandboxError> {
    install_seccomp(if witness.is_some() { SeccompScope::NonTcpInet } else { SeccompScope::AllInet })?;
    // Sockets that exist (the HTTPS listener on `port`) keep working; no new one can be made, so
    // nothing else can be bound either.
    Ok(EgressMeasurement {
        mechanism: "seccomp".into(),
        abi: None,
        connect: connect_fact(witness, false),
        bind_ports: Some(vec![port]),
        other_inet: "denied".into(),
    })
}

/// Which `AF_INET`/`AF_INET6` sockets the filter refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeccompScope {
    /// Every new one.
    AllInet,
    /// Those that Landlock's TCP rules do not cover: not `SOCK_STREAM`, or a protocol other than
    /// 0 or `IPPROTO_TCP` (SCTP, MPTCP).
    NonTcpInet,
}

const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;
const SOCK_STREAM: u64 = 1;
/// `SOCK_DGRAM`, `SOCK_RAW`, `SOCK_RDM`, `SOCK_SEQPACKET`, `SOCK_DCCP`, `SOCK_PACKET`.
const OTHER_SOCK_TYPES: [u64; 6] = [2, 3, 4, 5, 6, 10];
/// The low bits of `socket()`'s type argument (the rest are `SOCK_NONBLOCK`/`SOCK_CLOEXEC`).
const SOCK_TYPE_MASK: u64 = 0xf;
const IPPROTO_TCP: u64 = 6;
const EPERM: u32 = 1;

fn install_seccomp(scope: SeccompScope) -> Result<(), SandboxError> {
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
        SeccompFilter, SeccompRule, TargetArch,
    };
    let err = |e: &dyn std::fmt::Display| SandboxError::Seccomp(e.to_string());
    let arch: TargetArch = std::env::consts::ARCH.try_into().map_err(|e| err(&e))?;
    let cond = |arg, op, v| Cond::new(arg, Len::Dword, op, v).map_err(|e| err(&e));
    let mut socket_rules = Vec::new();
    for domain in [AF_INET, AF_INET6] {
        match scope {
            SeccompScope::AllInet => socket_rules.push(vec![cond(0, Op::Eq, domain)?]),
            SeccompScope::NonTcpInet => {
                for ty in OTHER_SOCK_TYPES {
                    socket_rules.push(vec![cond(0, Op::Eq, domain)?, cond(1, Op::MaskedEq(SOCK_TYPE_MASK), ty)?]);
                }
                socket_rules.push(vec![
                    cond(0, Op::Eq, domain)?,
                    cond(1, Op::MaskedEq(SOCK_TYPE_MASK), SOCK_STREAM)?,
                    cond(2, Op::Ne, 0)?,
                    cond(2, Op::Ne, IPPROTO_TCP)?,
                ]);
            }
        }
    }
    let socket_rules =
        socket_rules.into_iter().map(|c| SeccompRule::new(c).map_err(|e| err(&e))).collect::<Result<Vec<_>, _>>()?;
    let rules = [(libc_nr::SOCKET, socket_rules), (libc_nr::IO_URING_SETUP, vec![])].into_iter().collect();
    let filter =
        SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(EPERM), arch).map_err(|e| err(&e))?;
    let program: BpfProgram = filter.try_into().map_err(|e: seccompiler::BackendError| err(&e))?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| err(&e))
}

/// System call numbers of this architecture.
mod libc_nr {
    #[cfg(target_arch = "x86_64")]
    pub const SOCKET: i64 = 41;
    #[cfg(target_arch = "x86_64")]
    pub const IO_URING_SETUP: i64 = 425;
    // aarch64 and riscv64 share the generic table.
    #[cfg(not(target_arch = "x86_64"))]
    pub const SOCKET: i64 = 198;
    #[cfg(not(target_arch = "x86_64"))]
    pub const IO_URING_SETUP: i64 = 425;
}

/// Binds the HTTPS listener with `std::net` (no runtime exists yet), non-blocking for tokio.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The test-only admin command `debug_egress_probe`: a TCP connect to `addr` from a tokio worker
/// thread, from a freshly spawned std thread and from a fresh rayon pool's thread (as the engine
/// uses), each with its outcome, and a UDP datagram to `addr` (`udp`; `connected` means sent). Only in builds with debug assertions (the e2e tests' binaries);
/// release builds and packages do not contain it.
#[cfg(debug_assertions)]
pub fn probe(addr: &str) -> Result<serde_json::Value, ProbeAddrError> {
    use std::time::Duration;
    const TIMEOUT: Duration = Duration::from_secs(5);
    let addr: SocketAddr = addr.parse().map_err(|source| ProbeAddrError { addr: addr.to_string(), source })?;
    let outcome = |thread: String, r: std::io::Result<()>| match r {
        Ok(()) => serde_json::json!({"thread": thread, "connected": true, "errno": null, "error": null}),
        Err(e) => serde_json::json!({
            "thread": thread, "connected": false, "errno": e.raw_os_error(), "error": e.to_string(),
        }),
    };
    let name = || std::thread::current().name().unwrap_or("unnamed").to_string();
    let mut results = Vec::new();
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            let task = h.spawn(async move {
                let r = match tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
                    Ok(r) => r.map(drop),
                    Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
                };
                (format!("tokio worker '{}'", name()), r)
            });
            match h.block_on(task) {
                Ok((t, r)) => results.push(outcome(t, r)),
                Err(e) => results.push(outcome("tokio worker".into(), Err(std::io::Error::other(e.to_string())))),
            }
        }
        Err(e) => results.push(outcome("tokio worker".into(), Err(std::io::Error::other(e.to_string())))),
    }
    let connect = move || std::net::TcpStream::connect_timeout(&addr, TIMEOUT).map(drop);
    let spawned = std::thread::Builder::new().name("egress-probe".into()).spawn(move || (name(), connect()));
    match spawned.map(|h| h.join()) {
        Ok(Ok((t, r))) => results.push(outcome(format!("new std thread '{t}'"), r)),
        _ => results.push(outcome("new std thread".into(), Err(std::io::Error::other("the thread failed")))),
    }
    match rayon::ThreadPoolBuilder::new().num_threads(1).thread_name(|i| format!("probe-rayon-{i}")).build() {
        Ok(pool) => {
            let (t, r) = pool.install(move || (name(), connect()));
            results.push(outcome(format!("rayon pool thread '{t}'"), r));
        }
        Err(e) => results.push(outcome("rayon pool thread".into(), Err(std::io::Error::other(e.to_string())))),
    }
    // A UDP datagram to the same address (Landlock ABI 7 does not cover UDP; the seccomp part does).
    let unspecified: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let udp = std::net::UdpSocket::bind(unspecified).and_then(|u| u.send_to(b"govbox egress probe", addr)).map(drop);
    let udp = outcome(format!("udp from '{}'", name()), udp);
    Ok(serde_json::json!({"addr": addr.to_string(), "egress": status_json(), "probes": results, "udp": udp}))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_scoped_thread_cannot_reach_an_abstract_socket_made_outside_it() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
        let name = format!("govbox-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let _listener = UnixListener::bind_addr(&addr).unwrap();
        assert!(UnixStream::connect_addr(&addr).is_ok(), "reachable before");
        let outcome = std::thread::spawn(move || match super::restrict_abstract_unix() {
            Ok(true) => Some(UnixStream::connect_addr(&addr).map(|_| ()).map_err(|e| e.raw_os_error())),
            _ => None,
        })
        .join()
        .unwrap();
        match outcome {
            Some(r) => assert_eq!(r, Err(Some(1)), "EPERM from the scoped thread"),
            None => eprintln!("skipped: this kernel's Landlock cannot scope abstract sockets"),
        }
    }

    use super::*;

    #[test]
    fn abi_numbers() {
        assert_eq!(abi_number(landlock::ABI::V4), 4);
        assert_eq!(abi_number(landlock::ABI::V7), 7);
        assert_eq!(abi_number(landlock::ABI::Unsupported), 0);
    }

    #[test]
    fn the_config_names_the_modes_in_lower_case() {
        for (text, mode) in [
            ("auto", EgressMode::Auto),
            ("landlock", EgressMode::Landlock),
            ("seccomp", EgressMode::Seccomp),
            ("off", EgressMode::Off),
        ] {
            let c: SandboxConfig = toml::from_str(&format!("egress = \"{text}\"")).unwrap();
            assert_eq!(c.egress, mode);
        }
        assert!(toml::from_str::<SandboxConfig>("egress = \"none\"").is_err());
        assert_eq!(toml::from_str::<SandboxConfig>("").unwrap(), SandboxConfig::default());
    }
}
