//! `govbox status`: what the running govboxd says about itself, over its admin socket.
//!
//! Exit codes follow the LSB `status` convention: 0 when the daemon answers, 3 when it is not
//! running (no socket, or nobody listening on it), 1 for any other failure.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use govbox_admin::protocol::{ClientList, Status, StatusAnswer};
use govbox_provisioning::{ClientRecord, HashAlgorithm};

use crate::admin::AdminClient;

/// Exit code when govboxd is not running (LSB).
const NOT_RUNNING: u8 = 3;

/// Arguments of `govbox status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print the daemon's answer as JSON instead.
    #[arg(long)]
    json: bool,
}

/// Runs `govbox status`.
pub fn run(socket: &Path, args: StatusArgs) -> Result<ExitCode> {
    let mut conn = match AdminClient::connect(socket) {
        Ok(c) => c,
        Err(e) if e.is_not_running() => {
            eprintln!("govboxd is not running (no answer on {}): {}", socket.display(), e.reason());
            return Ok(ExitCode::from(NOT_RUNNING));
        }
        Err(e) => return Err(e.into()),
    };
    let status = conn.call(Status {})?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    // The client count is a second request on the same connection; the status stands without it.
    let clients = conn.call(ClientList {}).ok().map(|c| c.clients);
    print!("{}", render(&status, clients.as_deref(), time::OffsetDateTime::now_utc().unix_timestamp()));
    Ok(ExitCode::SUCCESS)
}

/// The human form of a `status` answer (and, if it came, a `client_list` answer), at `now`
/// (Unix seconds: a client whose certificate has expired is not counted as active).
fn render(s: &StatusAnswer, clients: Option<&[ClientRecord]>, now: i64) -> String {
    let state = if s.shutting_down {
        "shutting down"
    } else if s.ready {
        "ready"
    } else {
        "starting (models loading)"
    };
    let mut out = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(out, "  {k:<13} {v}");
    };
    let head = format!("govboxd {}: {state}\n", s.version);
    row("uptime", duration(s.uptime_secs));
    row("listen", s.listen.clone());
    if let Some(cert) = &s.tls_certificate {
        row("certificate", crate::tls::status_row(cert, time::OffsetDateTime::now_utc().unix_timestamp()));
    }

    let b = &s.backend;
    let mut backend = match b.device.as_str() {
        "cpu" | "" => format!("{} ({})", b.kind, b.name),
        d => format!("{} {d} ({})", b.kind, b.name),
    };
    let _ = write!(backend, ", {} threads, device = \"{}\"", b.threads, b.requested);
    row("backend", backend);
    if b.simulated {
        row("SIMULATED", "the device is govbox's simulator, not real hardware (tests only)".to_string());
    }
    match (b.temperature_c, &b.health) {
        (Some(t), Some(h)) => row("health", format!("{h}, {t:.0} °C")),
        (Some(t), None) => row("health", format!("{t:.0} °C")),
        (None, Some(h)) => row("health", h.clone()),
        (None, None) => {}
    }
    for (i, note) in b.notes.iter().enumerate() {
        row(if i == 0 { "device notes" } else { "" }, note.clone());
    }
    match (b.memory_used, b.memory_total) {
        (Some(u), Some(t)) => row("memory", format!("{} used of {}", bytes(u), bytes(t))),
        (Some(u), None) => row("memory", format!("{} used", bytes(u))),
        (None, Some(t)) => row("memory", format!("{} total", bytes(t))),
        (None, None) => {}
    }
    for p in &s.accelerators {
        let line = if p.present {
            let sim = if p.simulated { " SIMULATED" } else { "" };
            format!("present{sim}, {} device(s) ({})", p.devices, p.detail)
        } else {
            format!("absent ({})", p.detail)
        };
        row(&p.kind, line);
    }

    if s.insecure_dev_models {
        row("WARNING", "--insecure-dev-models: unsigned model folders are served".to_string());
    }
    // Absent before the egress lockdown ran: then no row.
    if let Some(e) = &s.egress {
        let state = if e.denies_egress() {
            "locked"
        } else if e.mechanism != "off" && e.other_inet == "denied" {
            "locked but for the audit witness"
        } else {
            "OFF, outbound connections possible"
        };
        row("egress", format!("{state} ({})", e.summary()));
    }
    // Absent without a witness.
    if let Some(w) = &s.audit_witness {
        let mut line = match w.pending {
            0 => format!("{}: up to date", w.address),
            n => format!("{}: BEHIND, {n} signed head(s) waiting", w.address),
        };
        if let Some(size) = w.last_sent_size {
            let _ = write!(line, "; last sent tree size {size}");
        }
        if let Some(e) = &w.last_error {
            let _ = write!(line, "; last error: {e}");
        }
        row("audit witness", line);
    }
    if s.models.is_empty() {
        row("models", "none loaded".to_string());
    }
    for (i, m) in s.models.iter().enumerate() {
        // A package's digest is labelled with its algorithm (`sha256-…`, `sm3-…`); a development
        // folder's is empty.
        let hex = HashAlgorithm::strip_label(&m.digest);
        let origin = match hex.len() < m.digest.len() {
            true => {
                format!("{} {}{}", m.version, &m.digest[..m.digest.len() - hex.len()], hex.get(..12).unwrap_or(hex))
            }
            false => format!("UNSIGNED {}", m.path),
        };
        let line = format!("{} ({}, {}) {origin}", m.name, m.kind, m.format);
        row(if i == 0 { "models" } else { "" }, line);
    }
    let pending: Vec<&str> =
        s.configured_models.iter().map(String::as_str).filter(|n| !s.models.iter().any(|m| m.name == *n)).collect();
    if !pending.is_empty() {
        row("not loaded", pending.join(", "));
    }

    row(
        "requests",
        format!(
            "{} generating, {} queued, {} open connections",
            s.active_generations, s.queued_requests, s.open_connections
        ),
    );
    if let Some(list) = clients {
        let revoked = list.iter().filter(|c| c.revoked).count();
        let expired = list.iter().filter(|c| !c.revoked && c.cert_not_after <= now).count();
        row(
            "clients",
            format!(
                "{} ({} active, {expired} with an expired certificate, {revoked} revoked)",
                list.len(),
                list.len() - revoked - expired
            ),
        );
    }
    head + &out
}

fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 { format!("{d}d {h:02}h {m:02}m {s:02}s") } else { format!("{h:02}h {m:02}m {s:02}s") }
}

fn bytes(n: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    #[allow(clippy::cast_precision_loss)] // a display value; two decimals are all that is shown
    let f = n as f64;
    if f >= GIB { format!("{:.2} GiB", f / GIB) } else { format!("{:.1} MiB", f / MIB) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::{Value, json};

    use super::*;

    /// A status answer from the fields given, the others at their defaults.
    fn answer(partial: Value) -> StatusAnswer {
        let mut full = serde_json::to_value(StatusAnswer::default()).unwrap();
        merge(&mut full, partial);
        serde_json::from_value(full).unwrap()
    }

    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (slot, v) => *slot = v,
        }
    }

    fn client(revoked: bool, cert_not_after: i64) -> ClientRecord {
        serde_json::from_value(json!({"name": "c", "models": [], "rpm": null, "tokens_per_day": null,
            "cert_sha256": null, "cert_not_after": cert_not_after, "token_sha256": null, "revoked": revoked,
            "created": 0}))
        .unwrap()
    }

    #[test]
    fn renders_ready_daemon_with_models_and_clients() {
        let s = json!({
            "version": "0.1.0", "uptime_secs": 3725, "ready": true, "shutting_down": false,
            "listen": "127.0.0.1:8443", "configured_models": ["tiny-qwen2", "minilm", "late"],
            "models": [
                {"name": "tiny-qwen2", "kind": "chat", "format": "safetensors", "path": "/m/q",
                 "version": "1.2.0", "digest": "sha256-0123456789abcdef0123"},
                {"name": "minilm", "kind": "embedding", "format": "safetensors", "path": "/m/e",
                 "version": "dev", "digest": "unsigned-dev-folder"},
            ],
            "backend": {"kind": "cpu", "device": "cpu", "requested": "auto", "name": "x86_64", "threads": 2,
                        "simulated": false, "memory_used": null, "memory_total": 17179869184u64, "notes": []},
            "accelerators": [
                {"kind": "ascend", "compiled": true, "present": false, "devices": 0, "simulated": false,
                 "detail": "libascendcl.so: cannot open shared object file"},
                {"kind": "cuda", "compiled": false, "present": false, "devices": 0, "simulated": false,
                 "detail": "not compiled in (cargo feature `cuda`)"},
            ],
            "active_generations": 1, "queued_requests": 0, "open_connections": 3,
            "insecure_dev_models": true,
        });
        let clients = [client(false, 2000), client(true, 2000), client(false, 1000)];
        let out = render(&answer(s), Some(&clients), 1500);
        assert!(out.starts_with("govboxd 0.1.0: ready\n"), "{out}");
        for want in [
            "uptime        01h 02m 05s",
            "backend       cpu (x86_64), 2 threads, device = \"auto\"",
            "ascend        absent (libascendcl.so: cannot open shared object file)",
            "cuda          absent (not compiled in (cargo feature `cuda`))",
            "memory        16.00 GiB total",
            "models        tiny-qwen2 (chat, safetensors) 1.2.0 sha256-0123456789ab",
            "              minilm (embedding, safetensors) UNSIGNED /m/e",
            "WARNING       --insecure-dev-models",
            "not loaded    late",
            "requests      1 generating, 0 queued, 3 open connections",
            "clients       3 (1 active, 1 with an expired certificate, 1 revoked)",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }

    #[test]
    fn renders_a_simulated_accelerator_plainly() {
        let s = json!({"ready": true, "models": [],
            "backend": {"kind": "ascend", "device": "ascend:0", "requested": "auto", "name": "Ascend910B-sim (simulated)",
                        "threads": 1, "simulated": true, "memory_used": 1048576u64, "memory_total": 68719476736u64,
                        "temperature_c": 45.0, "health": "ok", "notes": ["Q4_1 weights de-quantised to F32 at upload"]},
            "accelerators": [{"kind": "ascend", "compiled": true, "present": true, "devices": 1, "simulated": true,
                              "detail": "govbox ascend-sim"}]});
        let out = render(&answer(s), None, 0);
        for want in [
            "backend       ascend ascend:0 (Ascend910B-sim (simulated)), 1 threads, device = \"auto\"",
            "SIMULATED     the device is govbox's simulator",
            "health        ok, 45 °C",
            "device notes  Q4_1 weights de-quantised to F32 at upload",
            "ascend        present SIMULATED, 1 device(s) (govbox ascend-sim)",
            "memory        1.0 MiB used of 64.00 GiB",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }

    #[test]
    fn renders_a_witness_that_is_behind() {
        let s = json!({"ready": true, "models": [],
            "egress": {"mechanism": "landlock", "abi": 7, "connect": "allowed only to port 6514 (audit witness 10.0.0.5:6514)",
                       "bind_ports": [8443], "other_inet": "denied"},
            "audit_witness": {"address": "tcp://10.0.0.5:6514", "pending": 2, "last_sent_size": 1000,
                              "last_error": "connecting: Connection refused (os error 111)"}});
        let out = render(&answer(s), None, 0);
        for want in [
            "egress        locked but for the audit witness (landlock ABI 7: TCP connect allowed only to port 6514",
            "audit witness tcp://10.0.0.5:6514: BEHIND, 2 signed head(s) waiting; last sent tree size 1000; \
             last error: connecting: Connection refused (os error 111)",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
        let none = render(&answer(json!({"ready": true, "models": []})), None, 0);
        assert!(!none.contains("audit witness"), "{none}");
    }

    #[test]
    fn renders_the_egress_lockdown() {
        let locked = json!({"ready": true, "models": [], "egress": {"mechanism": "landlock", "abi": 7,
            "connect": "denied", "bind_ports": [8443], "other_inet": "denied"}});
        let out = render(&answer(locked), None, 0);
        let want = "egress        locked (landlock ABI 7: TCP connect denied, bind allowed only on port 8443; \
                    other internet sockets denied)";
        assert!(out.contains(want), "missing {want:?} in\n{out}");
        let off = json!({"ready": true, "models": [], "egress": {"mechanism": "off", "abi": null,
            "connect": "allowed", "bind_ports": null, "other_inet": "allowed"}});
        let out = render(&answer(off), None, 0);
        assert!(out.contains("egress        OFF, outbound connections possible (off: TCP connect allowed"), "{out}");
        let old = render(&answer(json!({"ready": true, "models": []})), None, 0);
        assert!(!old.contains("egress"), "no row for a daemon that does not report it: {old}");
    }

    #[test]
    fn renders_starting_daemon() {
        let out = render(&answer(json!({"ready": false, "models": []})), None, 0);
        assert!(out.contains(": starting (models loading)") && out.contains("none loaded"), "{out}");
        assert!(!out.contains("clients"), "{out}");
    }
}
