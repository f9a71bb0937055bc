//! `govbox-reliability`: the load and abuse part of the reliability campaign against a real
//! govboxd (run by `scripts/reliability.sh`; see tests/RELIABILITY.md).
//!
//! Provisions a temporary box with the tiny Qwen2 chat model and MiniLM, starts govboxd on a
//! loopback port, then: holds `--connections` TLS connections open; soaks the box with mixed
//! chat, streamed chat and embeddings from `--workers` clients for `--soak-secs`; runs the abuse
//! checks; optionally runs `--exec CMD` while the daemon is up (with `GOVBOX_URL`, `GOVBOX_CA`,
//! `GOVBOX_TOKEN`, `GOVBOX_CERT`, `GOVBOX_KEY`, `GOVBOX_STATE` set); stops the daemon, exports and verifies the
//! audit log (govbox-auditd's, which runs beside govboxd as the packaged units run them), and looks up every answered request in it. Prints a summary table, writes it as
//! JSON to `--json FILE`, and exits 1 when any figure is out of bounds.
//!
//! The open-file limit must allow the connections (`ulimit -n 8192`; the script raises it).
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use govbox_e2e::TestBox;
use govbox_e2e::load::{self, Check, Target};

struct Args {
    connections: usize,
    hold_secs: u64,
    soak_secs: u64,
    warmup_secs: Option<u64>,
    workers: usize,
    bad_certs: usize,
    slowloris: usize,
    exec: Option<String>,
    json: Option<PathBuf>,
    max_rss_growth_pct: f64,
}

const USAGE: &str = "usage: govbox-reliability [--quick] [--connections N] [--hold-secs S] [--soak-secs S] \
[--warmup-secs S] [--workers N] [--bad-certs N] [--slowloris N] [--max-rss-growth PCT] [--exec CMD] [--json FILE]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        connections: 1000,
        hold_secs: 30,
        soak_secs: 600,
        warmup_secs: None,
        workers: 32,
        bad_certs: 10_000,
        slowloris: 200,
        exec: None,
        json: None,
        max_rss_growth_pct: 5.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{k} needs a value\n{USAGE}"));
        let num = |v: String| v.parse::<u64>().map_err(|_| format!("{k}: '{v}' is not a whole number\n{USAGE}"));
        match k.as_str() {
            "--quick" => {
                a.soak_secs = 60;
                a.hold_secs = 15;
                a.bad_certs = 1000;
            }
            "--connections" => a.connections = num(val()?)? as usize,
            "--hold-secs" => a.hold_secs = num(val()?)?,
            "--soak-secs" => a.soak_secs = num(val()?)?,
            "--warmup-secs" => a.warmup_secs = Some(num(val()?)?),
            "--workers" => a.workers = num(val()?)? as usize,
            "--bad-certs" => a.bad_certs = num(val()?)? as usize,
            "--slowloris" => a.slowloris = num(val()?)? as usize,
            "--max-rss-growth" => {
                let v = val()?;
                a.max_rss_growth_pct = v.parse().map_err(|_| format!("--max-rss-growth: '{v}' is not a number"))?
            }
            "--exec" => a.exec = Some(val()?),
            "--json" => a.json = Some(PathBuf::from(val()?)),
            "-h" | "--help" => return Err(USAGE.to_string()),
            _ => return Err(format!("unknown argument '{k}'\n{USAGE}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(campaign(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("govbox-reliability: {e}");
            ExitCode::from(2)
        }
    }
}

const HEADER_TIMEOUT: u64 = 5;
const MAX_BODY: usize = 1 << 20;

async fn campaign(args: &Args) -> Result<bool, String> {
    let t_all = Instant::now();
    eprintln!("== provisioning a box (tiny-qwen2, minilm)");
    let b = TestBox::new("reliability");
    // Saturation: more clients than max_concurrent + queue_depth, so that admission says 503.
    // Every client is on 127.0.0.1, so the per-address limit is the whole limit here.
    std::fs::write(
        &b.config,
        format!(
            "config_version = 2\nlisten = \"127.0.0.1:{}\"\nthreads = 2\nlog_level = \"warn\"\n\
             [limits]\nmax_connections = {max}\nmax_connections_per_address = {max}\nheader_timeout_secs = {HEADER_TIMEOUT}\nmax_body_bytes = {MAX_BODY}\n\
             [serving]\nmax_concurrent = 4\nqueue_depth = 16\n",
            b.port,
            max = args.connections + 64
        ),
    )
    .map_err(|e| e.to_string())?;
    // As the packaged units run them: the audit log is govbox-auditd's, and govboxd appends
    // through its socket.
    b.use_auditd("");
    let mut auditd = b.start_auditd();
    // As dist/govboxd.service runs it: two glibc malloc arenas (see the unit's comment).
    let mut d = b.start_with_env(&[("MALLOC_ARENA_MAX", "2")]);
    let pid = d.child.id();
    let t = Target::of(&b)?;
    let ca = std::fs::read_to_string(b.certs.join("ca.crt")).map_err(|e| e.to_string())?;

    // A keep-alive connection left quiet for header_timeout_secs is closed by the daemon (hyper's
    // header read timeout also runs while it waits for the next request), so each held
    // connection sends a request every half header timeout.
    eprintln!("== holding {} TLS connections for {} s", args.connections, args.hold_secs);
    let hold = load::hold(&t, args.connections, args.hold_secs, Duration::from_millis(HEADER_TIMEOUT * 500)).await;
    eprintln!("   {hold:?}");

    eprintln!("== soak: {} clients, mixed chat/stream/embeddings, {} s", args.workers, args.soak_secs);
    // Warm-up is the first part of the soak, under the same load; the baseline is RSS at its end.
    // Default: a fifth of the soak, at most 120 s (600 s soak: 120 s warm-up, 480 s measured).
    let warmup = Duration::from_secs(args.warmup_secs.unwrap_or((args.soak_secs / 5).min(120)).min(args.soak_secs));
    eprintln!("   warm-up {} s, then RSS is measured against its end", warmup.as_secs());
    let soak = load::soak(&t, args.workers, args.soak_secs, warmup, pid).await;
    let rss_max = soak.rss_max_after_warmup_kib(warmup);
    eprintln!(
        "   requests={} statuses={:?} transport_errors={} bad_bodies={} rss baseline {:?} -> end {:?} KiB (max after warm-up {:?}); errors {:?}",
        soak.requests,
        soak.by_status,
        soak.transport_errors,
        soak.bad_bodies,
        soak.rss_warm_kib,
        soak.rss_end_kib,
        rss_max,
        soak.errors
    );
    eprintln!("   rss series (s since soak start: KiB): {}", soak.rss_series_text());

    eprintln!("== abuse");
    let m = Duration::from_secs(600);
    let checks: Vec<Check> = vec![
        load::bounded("slowloris", m, load::slowloris(&t, args.slowloris, Duration::from_secs(HEADER_TIMEOUT))).await,
        load::bounded("oversized_headers", m, load::oversized_headers(&t)).await,
        load::bounded("oversized_body", m, load::oversized_body(&t, MAX_BODY)).await,
        // Each refused handshake costs the daemon a certificate check; on a shared 2-CPU machine
        // 10,000 took longer than 600 s, so this bound grows with the count (a hang still ends).
        load::bounded("bad_client_certificates", m.max(Duration::from_millis(200) * args.bad_certs as u32), {
            load::bad_certificates(&t, &ca, args.bad_certs)
        })
        .await,
        load::bounded("invalid_utf8_json", m, load::invalid_utf8(&t)).await,
        load::bounded("nested_json", m, load::nested_json(&t, 100_000)).await,
        load::bounded("huge_max_tokens", m, load::huge_max_tokens(&t, 4096)).await,
    ];

    let mut exec_ok = true;
    if let Some(cmd) = &args.exec {
        eprintln!("== exec: {cmd}");
        let st = std::process::Command::new("bash")
            .args(["-c", cmd])
            .env("GOVBOX_URL", b.url(""))
            .env("GOVBOX_CA", b.certs.join("ca.crt"))
            .env("GOVBOX_CERT", b.certs.join("app.crt"))
            .env("GOVBOX_KEY", b.certs.join("app.key"))
            .env("GOVBOX_TOKEN", &b.token)
            .env("GOVBOX_STATE", &b.state)
            .status()
            .map_err(|e| format!("running --exec: {e}"))?;
        exec_ok = st.success();
        eprintln!("   exec exit: {st}");
    }
    let ready_end = t.readyz().await;
    let rss_final = load::rss_kib(pid);
    let crashed = d.child.try_wait().map_err(|e| e.to_string())?;
    drop(d);
    let auditd_crashed = auditd.child.try_wait().map_err(|e| e.to_string())?;

    eprintln!("== audit export (through govbox-auditd) and verify (offline)");
    let export = b.dir.join("audit-export.json");
    let (verified, entries, ids, verify_out) = load::audit_export_verify(&b.state, Some(&b.auditd_socket()), &export)?;
    let audited: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let lost = soak.request_ids.iter().filter(|id| !audited.contains(id.as_str())).count();
    eprintln!("   {verify_out}");

    let growth = soak.rss_growth_pct();
    let faults: u64 = checks.iter().map(|c| c.faults).sum();
    let rows = [
        ("connections held", format!("{}/{} ({} s)", hold.held, hold.wanted, args.hold_secs)),
        ("requests served (soak)", format!("{} in {} s, {} clients", soak.requests, args.soak_secs, args.workers)),
        ("statuses (soak)", format!("{:?}", soak.by_status)),
        ("5xx other than 503", soak.unexpected_5xx().to_string()),
        ("transport errors / bad bodies", format!("{} / {}", soak.transport_errors, soak.bad_bodies)),
        (
            "RSS after warm-up -> end",
            format!(
                "{:?} -> {:?} KiB ({}; warm-up {} s; max after warm-up {:?} KiB), {:?} KiB after abuse",
                soak.rss_warm_kib,
                soak.rss_end_kib,
                growth.map_or("n/a".into(), |g| format!("{g:+.2} %")),
                warmup.as_secs(),
                rss_max,
                rss_final
            ),
        ),
        (
            "RssAnon after warm-up -> end",
            format!(
                "{:?} -> {:?} KiB (heap and stacks; RSS less file-backed pages)",
                soak.rss_anon_kib.0, soak.rss_anon_kib.1
            ),
        ),
        ("RSS series (s: KiB, every 10 s)", soak.rss_series_text()),
        (
            "faults injected",
            format!("{faults} ({} checks, {} passed)", checks.len(), checks.iter().filter(|c| c.ok).count()),
        ),
        ("audit entries / verify", format!("{entries} / {}", if verified { "passed" } else { "FAILED" })),
        ("lost audit entries", format!("{lost} of {} answered requests", soak.request_ids.len())),
        ("daemon alive at end", format!("{} (/readyz {ready_end:?})", crashed.is_none())),
        ("govbox-auditd alive at end", auditd_crashed.is_none().to_string()),
        ("wall time", format!("{:.0} s", t_all.elapsed().as_secs_f64())),
    ];
    println!("\n| figure | value |\n|---|---|");
    for (k, v) in &rows {
        println!("| {k} | {v} |");
    }
    let pass = hold.held == hold.wanted
        && soak.unexpected_5xx() == 0
        && soak.bad_bodies == 0
        && soak.by_status.get(&200).copied().unwrap_or(0) > 0
        && growth.is_some_and(|g| g < args.max_rss_growth_pct)
        && checks.iter().all(|c| c.ok)
        && verified
        && lost == 0
        && crashed.is_none()
        && auditd_crashed.is_none()
        && ready_end == Ok(200)
        && exec_ok;
    if let Some(path) = &args.json {
        let v = serde_json::json!({
            "pass": pass,
            "rows": rows.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
            "checks": checks.iter().map(|c| serde_json::json!({"name": c.name, "faults": c.faults,
                "expected": c.expected, "got": c.got, "ok": c.ok})).collect::<Vec<_>>(),
            "hold_errors": hold.errors, "soak_errors": soak.errors,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&v).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("\nresult: {}", if pass { "PASS" } else { "FAIL" });
    if pass {
        // A passing run leaves nothing behind; a failing one keeps the box for inspection.
        drop(b);
    } else {
        eprintln!("box kept for inspection: {}", b.dir.display());
        std::mem::forget(b);
    }
    Ok(pass)
}
