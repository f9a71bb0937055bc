//! `govbox status`: what the running govboxd says about itself, over its admin socket.
//!
//! Exit codes follow the LSB `status` convention: 0 when the daemon answers, 3 when it is not
//! running (no socket, or nobody listening on it), 1 for any other failure.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::{Value, json};

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
    let status = conn.request(&json!({"cmd": "status"}))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    // The client count is a second request on the same connection; the status stands without it.
    let clients = conn.request(&json!({"cmd": "client_list"})).ok();
    print!("{}", render(&status, clients.as_ref(), time::OffsetDateTime::now_utc().unix_timestamp()));
    Ok(ExitCode::SUCCESS)
}

/// The human form of a `status` answer (and, if it came, a `client_list` answer), at `now`
/// (Unix seconds: a client whose certificate has expired is not counted as active).
fn render(s: &Value, clients: Option<&Value>, now: i64) -> String {
    let str_of = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| "?".to_string());
    let state = if s["shutting_down"].as_bool() == Some(true) {
        "shutting down"
    } else if s["ready"].as_bool() == Some(true) {
        "ready"
    } else {
        "starting (models loading)"
    };
    let mut out = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(out, "  {k:<13} {v}");
    };
    let head = format!("govboxd {}: {state}\n", str_of(&s["version"]));
    row("uptime", s["uptime_secs"].as_u64().map_or_else(|| "?".to_string(), duration));
    row("listen", str_of(&s["listen"]));
    if let Some(cert) = crate::tls::status_row(&s["tls_certificate"], time::OffsetDateTime::now_utc().unix_timestamp())
    {
        row("certificate", cert);
    }

    let b = &s["backend"];
    let mut backend = match b["device"].as_str() {
        Some(d) if d != "cpu" => format!("{} {d} ({})", str_of(&b["kind"]), str_of(&b["name"])),
        _ => format!("{} ({})", str_of(&b["kind"]), str_of(&b["name"])),
    };
    if let Some(t) = b["threads"].as_u64() {
        let _ = write!(backend, ", {t} threads");
    }
    if let Some(r) = b["requested"].as_str() {
        let _ = write!(backend, ", device = \"{r}\"");
    }
    row("backend", backend);
    if b["simulated"].as_bool() == Some(true) {
        row("SIMULATED", "the device is govbox's simulator, not real hardware (tests only)".to_string());
    }
    match (b["temperature_c"].as_f64(), b["health"].as_str()) {
        (Some(t), Some(h)) => row("health", format!("{h}, {t:.0} °C")),
        (Some(t), None) => row("health", format!("{t:.0} °C")),
        (None, Some(h)) => row("health", h.to_string()),
        (None, None) => {}
    }
    for (i, note) in b["notes"].as_array().into_iter().flatten().filter_map(Value::as_str).enumerate() {
        row(if i == 0 { "device notes" } else { "" }, note.to_string());
    }
    match (b["memory_used"].as_u64(), b["memory_total"].as_u64()) {
        (Some(u), Some(t)) => row("memory", format!("{} used of {}", bytes(u), bytes(t))),
        (Some(u), None) => row("memory", format!("{} used", bytes(u))),
        (None, Some(t)) => row("memory", format!("{} total", bytes(t))),
        (None, None) => {}
    }
    for p in s["accelerators"].as_array().into_iter().flatten() {
        let kind = str_of(&p["kind"]);
        let line = if p["present"].as_bool() == Some(true) {
            let sim = if p["simulated"].as_bool() == Some(true) { " SIMULATED" } else { "" };
            format!("present{sim}, {} device(s) ({})", p["devices"].as_u64().unwrap_or(0), str_of(&p["detail"]))
        } else {
            format!("absent ({})", str_of(&p["detail"]))
        };
        row(&kind, line);
    }

    if s["insecure_dev_models"].as_bool() == Some(true) {
        row("WARNING", "--insecure-dev-models: unsigned model folders are served".to_string());
    }
    // Absent from a govboxd that predates the egress lockdown: then no row.
    if let Ok(e) = serde_json::from_value::<govbox_attestation::EgressMeasurement>(s["egress"].clone()) {
        let state = if e.denies_egress() {
            "locked"
        } else if e.mechanism != "off" && e.other_inet == "denied" {
            "locked but for the audit witness"
        } else {
            "OFF, outbound connections possible"
        };
        row("egress", format!("{state} ({})", e.summary()));
    }
    // Absent without a witness, and from a govboxd that predates it.
    let w = &s["audit_witness"];
    if !w.is_null() {
        let mut line = match w["pending"].as_u64() {
            Some(0) => format!("{}: up to date", str_of(&w["address"])),
            Some(n) => format!("{}: BEHIND, {n} signed head(s) waiting", str_of(&w["address"])),
            None => str_of(&w["address"]).to_string(),
        };
        if let Some(size) = w["last_sent_size"].as_u64() {
            let _ = write!(line, "; last sent tree size {size}");
        }
        if let Some(e) = w["last_error"].as_str() {
            let _ = write!(line, "; last error: {e}");
        }
        row("audit witness", line);
    }
    let loaded: Vec<&Value> = s["models"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    if loaded.is_empty() {
        row("models", "none loaded".to_string());
    }
    for (i, m) in loaded.iter().enumerate() {
        let origin = match m["digest"].as_str() {
            Some(d) if d.starts_with("sha256-") => {
                format!("{} {}", str_of(&m["version"]), d.get(..19).unwrap_or(d))
            }
            _ => format!("UNSIGNED {}", str_of(&m["path"])),
        };
        let line = format!("{} ({}, {}) {origin}", str_of(&m["name"]), str_of(&m["kind"]), str_of(&m["format"]));
        row(if i == 0 { "models" } else { "" }, line);
    }
    let loaded_names: Vec<&str> = loaded.iter().filter_map(|m| m["name"].as_str()).collect();
    let pending: Vec<&str> = s["configured_models"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).filter(|n| !loaded_names.contains(n)).collect())
        .unwrap_or_default();
    if !pending.is_empty() {
        row("not loaded", pending.join(", "));
    }

    let num = |k: &str| s[k].as_u64().map_or_else(|| "?".to_string(), |n| n.to_string());
    row(
        "requests",
        format!(
            "{} generating, {} queued, {} open connections",
            num("active_generations"),
            num("queued_requests"),
            num("open_connections")
        ),
    );
    if let Some(list) = clients.and_then(|c| c["clients"].as_array()) {
        let revoked = list.iter().filter(|c| c["revoked"].as_bool() == Some(true)).count();
        let expired = list
            .iter()
            .filter(|c| c["revoked"].as_bool() != Some(true) && c["cert_not_after"].as_i64().is_some_and(|t| t <= now))
            .count();
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
    use super::*;

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
        let clients = json!({"clients": [
            {"revoked": false, "cert_not_after": 2000},
            {"revoked": true, "cert_not_after": 2000},
            {"revoked": false, "cert_not_after": 1000},
        ]});
        let out = render(&s, Some(&clients), 1500);
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
        let out = render(&s, None, 0);
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
        let out = render(&s, None, 0);
        for want in [
            "egress        locked but for the audit witness (landlock ABI 7: TCP connect allowed only to port 6514",
            "audit witness tcp://10.0.0.5:6514: BEHIND, 2 signed head(s) waiting; last sent tree size 1000; \
             last error: connecting: Connection refused (os error 111)",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
        let none = render(&json!({"ready": true, "models": []}), None, 0);
        assert!(!none.contains("audit witness"), "{none}");
    }

    #[test]
    fn renders_the_egress_lockdown() {
        let locked = json!({"ready": true, "models": [], "egress": {"mechanism": "landlock", "abi": 7,
            "connect": "denied", "bind_ports": [8443], "other_inet": "denied"}});
        let out = render(&locked, None, 0);
        let want = "egress        locked (landlock ABI 7: TCP connect denied, bind allowed only on port 8443; \
                    other internet sockets denied)";
        assert!(out.contains(want), "missing {want:?} in\n{out}");
        let off = json!({"ready": true, "models": [], "egress": {"mechanism": "off", "abi": null,
            "connect": "allowed", "bind_ports": null, "other_inet": "allowed"}});
        let out = render(&off, None, 0);
        assert!(out.contains("egress        OFF, outbound connections possible (off: TCP connect allowed"), "{out}");
        let old = render(&json!({"ready": true, "models": []}), None, 0);
        assert!(!old.contains("egress"), "no row for a daemon that does not report it: {old}");
    }

    #[test]
    fn renders_starting_daemon() {
        let out = render(&json!({"ready": false, "models": []}), None, 0);
        assert!(out.contains(": starting (models loading)") && out.contains("none loaded"), "{out}");
        assert!(!out.contains("clients"), "{out}");
    }
}
