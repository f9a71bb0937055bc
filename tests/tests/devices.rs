//! Device selection end to end: a govboxd built with the CUDA and Ascend backends runs on a machine
//! without their vendor libraries (`auto` falls back to the CPU and reports both absent), refuses
//! to start on a named device that is absent, and serves a chat model on govbox's Ascend
//! SIMULATOR, saying everywhere that it is simulated.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

use govbox_e2e::*;
use serde_json::Value;

fn status(b: &TestBox) -> Value {
    serde_json::from_str(&govbox(&b.state, &["status", "--json"])).unwrap()
}

fn readyz(b: &TestBox) -> Value {
    // The details of readiness are for authenticated clients.
    let o = b.curl(&["-H", &format!("Authorization: Bearer {}", b.token), &b.url("/readyz")]);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn set_device(b: &TestBox, device: &str) {
    let mut text = std::fs::read_to_string(&b.config).unwrap();
    text.push_str(&format!("device = \"{device}\"\n"));
    std::fs::write(&b.config, text).unwrap();
}

/// The simulator library that the dev-dependency builds: the newest copy under target/.
fn sim_lib() -> PathBuf {
    if let Some(p) = std::env::var_os("GOVBOX_ASCEND_SIM_LIB").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from);
    ["debug", "debug/deps", "release", "release/deps"]
        .iter()
        .map(|d| target.join(d).join("libgovbox_ascend_sim.so"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!("no libgovbox_ascend_sim.so under {}: cargo build -p govbox-ascend-sim", target.display())
        })
}

#[test]
fn auto_without_vendor_libraries_runs_on_the_cpu_and_reports_both_absent() {
    let b = TestBox::provisioned("devices-auto");
    let d = b.start_with_env(&[("GOVBOX_ASCEND_SIM_LIB", "")]);
    let s = status(&b);
    assert_eq!(s["backend"]["kind"], "cpu", "{s}");
    assert_eq!(s["backend"]["requested"], "auto", "{s}");
    assert_eq!(s["backend"]["simulated"], false, "{s}");
    let probes = s["accelerators"].as_array().unwrap();
    let kinds: Vec<&str> = probes.iter().map(|p| p["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ascend", "cuda"], "auto's order: {s}");
    for p in probes {
        assert_eq!(p["compiled"], true, "both backends are built into govboxd by default: {p}");
        assert_eq!(p["present"], false, "this machine has no vendor runtime: {p}");
        assert!(!p["detail"].as_str().unwrap().is_empty(), "{p}");
    }
    let text = govbox(&b.state, &["status"]);
    assert!(text.contains("ascend        absent (") && text.contains("cuda          absent ("), "{text}");
    assert_eq!(readyz(&b)["backend"]["kind"], "cpu");
    let auth = format!("Authorization: Bearer {}", b.token);
    let metrics = String::from_utf8(b.curl(&["-H", &auth, &b.url("/metrics")]).stdout).unwrap();
    for line in [
        "govbox_accelerator_present{kind=\"ascend\"} 0",
        "govbox_accelerator_present{kind=\"cuda\"} 0",
        "govbox_device_info{kind=\"cpu\"",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics:\n{metrics}");
    }
    let log = d.log_text();
    assert!(log.contains("device probe: cuda: absent") && log.contains("device probe: ascend: absent"), "{log}");
}

#[test]
fn a_named_device_that_is_absent_stops_govboxd_with_exit_2() {
    for device in ["cuda:0", "ascend:0"] {
        let b = TestBox::provisioned(&format!("devices-absent-{}", device.replace(':', "")));
        set_device(&b, device);
        let o = Command::new(bin("govboxd"))
            .env("GOVBOX_ASCEND_SIM_LIB", "")
            .arg("--state")
            .arg(&b.state)
            .arg("--config")
            .arg(&b.config)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{device}: {err}");
        assert!(err.contains("opening the device"), "{device}: {err}");
        assert!(err.to_lowercase().contains(device.split(':').next().unwrap()), "{device}: {err}");
    }
}

#[test]
fn govboxd_serves_chat_on_the_ascend_simulator_and_says_it_is_simulated() {
    let b = TestBox::new("devices-ascend-sim");
    set_device(&b, "ascend:0");
    let lib = sim_lib();
    let d = b.start_with_env(&[("GOVBOX_ASCEND_SIM_LIB", lib.to_str().unwrap())]);
    let s = status(&b);
    assert_eq!(s["backend"]["kind"], "ascend", "{s}");
    assert_eq!(s["backend"]["device"], "ascend:0", "{s}");
    assert_eq!(s["backend"]["simulated"], true, "{s}");
    assert!(s["backend"]["memory_total"].as_u64().unwrap() > 0, "{s}");
    let text = govbox(&b.state, &["status"]);
    assert!(text.contains("SIMULATED"), "govbox status must say simulated:\n{text}");
    assert_eq!(readyz(&b)["backend"]["simulated"], true);

    let body =
        r#"{"model":"tiny-qwen2","messages":[{"role":"user","content":"hello"}],"max_tokens":4,"temperature":0}"#;
    let auth = format!("Authorization: Bearer {}", b.token);
    let o = b.curl(&["-H", &auth, "-H", "Content-Type: application/json", "-d", body, &b.url("/v1/chat/completions")]);
    let answer: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", String::from_utf8_lossy(&o.stdout), d.log_text()));
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() >= 1, "{answer}");

    let report = b.dir.join("report.json");
    govbox(&b.state, &["attest", "--nonce", "00112233445566778899aabbccddeeff", "-o", report.to_str().unwrap()]);
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let text = r.to_string();
    assert!(text.contains("\"simulated\":true"), "the attestation report must say simulated: {text}");
    assert!(d.log_text().contains("SIMULATOR"), "{}", d.log_text());
}
