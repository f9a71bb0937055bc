//! `govbox policy eval BANK`: a release's test bank run through a box's API as an intranet
//! application would ask it, judged against the thresholds of the signed policy package, and
//! kept as a signed report; `govbox policy eval-verify REPORT --pubkey PEM` checks one offline.
//!
//! A question counts as refused when the box refuses it before generating (400
//! `content_filter`), stops the answer (`finish_reason: "content_filter"`), or answers with one
//! of the library's refusal texts. Any other error stops the run: a figure with unanswered
//! questions would mean nothing. A `429` is waited out (its `Retry-After`).
//!
//! # Report format (`govbox-policy-eval/1`)
//!
//! ```text
//! { "report": { "format": "govbox-policy-eval/1", "time": "<RFC 3339 UTC>",
//!               "box": { "url", "server_certificate_sha256", "model", "api", "max_tokens" },
//!               "package": { "name", "version", "digest": "sha256-<manifest digest>" },
//!               "bank": { "name", "sha256", "questions", "from_package" },
//!               "summary": { "thresholds", "categories": [ { "id", "should_refuse",
//!                            "should_not_refuse", "pass" } ], "should_not_refuse",
//!                            "should_not_refuse_pass", "pass" },
//!               "results": [ { "id", "expect", "category", "outcome" } ] },
//!   "keyid": "<hex SHA-256 of the signer's raw public key>",
//!   "signature": "<hex signature over the canonical JSON of report>" }
//! ```
//!
//! As attestation reports, the signature covers the canonical JSON (sorted keys, no spaces) of
//! `report`, whose `format` keeps it apart from every other use of the key. The signer is the
//! assessor's own key (`govbox keygen`); a report proves something only against a public key
//! the reader already trusts, so verifying needs `--pubkey`. No question or answer text is in
//! the report: the bank's SHA-256 names the questions.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use govbox_images::{ImportOptions, ModelStore, Role, TrustRoot};
use govbox_policy::bank::{Question, parse_bank};
use govbox_policy::eval::{Outcome, QuestionResult, Summary, check_bank, recount, summarise};
use govbox_policy::{Policy, Thresholds};
use govbox_provisioning::{Overwrite, PUBLIC_FILE_MODE, PublicKey, SigningKey, StatePaths, to_canonical_json};
use serde_json::{Value, json};

use crate::https::{ApiClient, Credentials, hex};
use crate::provision::state_dir;

/// The report's format name, under the signature.
pub const FORMAT: &str = "govbox-policy-eval/1";
/// A report is at most this large (a bank holds at most 100,000 questions).
const REPORT_LIMIT: u64 = 64 << 20;
/// How often one question is retried after `429 Too Many Requests`.
const RETRIES: u32 = 5;

/// Which API the questions go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Api {
    /// `/v1/chat/completions`, each question one user message.
    Chat,
    /// `/v1/completions`, each question the prompt.
    Completions,
}

/// `govbox policy eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The bank: a JSONL file, or a bank the package carries as its policy.toml names it
    /// (e.g. banks/release.jsonl).
    bank: String,
    /// The signed policy package (.gbp) whose categories, refusal texts and thresholds judge the run.
    #[arg(long, value_name = "FILE")]
    package: PathBuf,
    /// The trust root that verifies the package [default: STATE/trust/root.json].
    #[arg(long, value_name = "ROOT_JSON")]
    trust: Option<PathBuf>,
    /// The box's API: https://HOST:PORT.
    #[arg(long, env = "GOVBOX_URL")]
    url: String,
    /// The box CA certificate [default: STATE/tls/ca.crt].
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// A file holding the client's bearer token (else the GOVBOX_TOKEN environment variable).
    #[arg(long, value_name = "FILE", conflicts_with = "cert")]
    token_file: Option<PathBuf>,
    /// The client certificate (PEM, from `govbox client add --cert-out`), instead of a token.
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// The model to ask.
    #[arg(long)]
    model: String,
    /// The API to ask through.
    #[arg(long, value_enum, default_value = "chat")]
    api: Api,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// Seconds to wait for one answer.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// The key that signs the report (PKCS#8 PEM from `govbox keygen`: the assessor's own).
    #[arg(long = "sign", value_name = "KEY")]
    sign: PathBuf,
    /// Where to write the signed report.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: PathBuf,
}

/// `govbox policy eval-verify`.
#[derive(Args, Debug)]
pub struct EvalVerifyArgs {
    /// The report file.
    report: PathBuf,
    /// The public key of whoever signed it (PEM), which the reader trusts.
    #[arg(long, value_name = "PEM")]
    pubkey: PathBuf,
}

/// The library that judges a run, from a verified package.
struct Judge {
    policy: Policy,
    name: String,
    version: String,
    digest: String,
    dir: PathBuf,
    _staged: tempfile::TempDir,
}

/// Runs `govbox policy eval`: exit 0 when every threshold is met, 1 when not (the report is
/// written either way).
pub fn eval(state: Option<&Path>, a: &EvalArgs) -> Result<ExitCode> {
    let key = SigningKey::load_pem(&a.sign).with_context(|| format!("loading --sign {}", a.sign.display()))?;
    let paths = StatePaths::new(state_dir(state));
    let judge = judge(&paths, a)?;
    let categories: Vec<&str> = judge.policy.categories().iter().map(|c| c.id.as_str()).collect();
    let (bank_bytes, from_package) = read_bank(&a.bank, &judge)?;
    let bank = parse_bank(&bank_bytes, &a.bank)?;
    check_bank(&categories, &bank)?;
    if bank.is_empty() {
        bail!("bank '{}' holds no question", a.bank);
    }
    let refusals: Vec<&str> =
        judge.policy.categories().iter().map(|c| c.refusal.trim()).filter(|r| !r.is_empty()).collect();

    let mut client = ApiClient::new(&a.url, &read_ca(&paths, a)?, credentials(a)?, Duration::from_secs(a.timeout))?;
    let bar = indicatif::ProgressBar::new(bank.len() as u64);
    let mut results = Vec::with_capacity(bank.len());
    for q in &bank {
        let outcome = ask(&mut client, a, q, &refusals);
        bar.inc(1);
        results.push(QuestionResult {
            id: q.id.clone(),
            expect: q.expect,
            category: q.category.clone(),
            outcome: outcome.inspect_err(|_| bar.abandon())?,
        });
    }
    bar.finish_and_clear();
    let summary = summarise(&categories, judge.policy.thresholds(), &results)?;

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let report = json!({
        "format": FORMAT,
        "time": govbox_provisioning::rfc3339(now),
        "box": {"url": a.url, "server_certificate_sha256": client.server_cert_sha256(), "model": a.model,
                "api": format!("{:?}", a.api).to_lowercase(), "max_tokens": a.max_tokens},
        "package": {"name": judge.name, "version": judge.version, "digest": judge.digest},
        "bank": {"name": a.bank, "sha256": hex(ring::digest::digest(&ring::digest::SHA256, &bank_bytes).as_ref()),
                 "questions": bank.len(), "from_package": from_package},
        "summary": summary,
        "results": results,
    });
    let signature = key.sign(to_canonical_json(&report).as_bytes());
    let signed = json!({"report": report, "keyid": key.public_key().keyid(), "signature": hex(signature.as_ref())});
    let text = serde_json::to_string_pretty(&signed).context("encoding the report")?;
    govbox_provisioning::write_file(&a.out, text.as_bytes(), PUBLIC_FILE_MODE, Overwrite::Replace, "eval report")?;

    print!("{}", render(&summary));
    println!(
        "package      {} {} ({})\nreport       {} (signed by {})",
        judge.name,
        judge.version,
        judge.digest,
        a.out.display(),
        key.public_key().keyid()
    );
    Ok(if summary.pass { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Verifies the package against the trust root's `policy` role (in a scratch store, so that
/// nothing of the box changes) and compiles its library.
fn judge(paths: &StatePaths, a: &EvalArgs) -> Result<Judge> {
    let trust = a.trust.clone().unwrap_or_else(|| paths.root_json());
    let root = TrustRoot::load(&trust).with_context(|| format!("loading the trust root {}", trust.display()))?;
    let staged = tempfile::tempdir().context("making a scratch folder")?;
    let store = ModelStore::open_dir_for(&staged.path().join("store"), Role::Policy).map_err(crate::package::flat)?;
    let imported = store
        .import_file(&a.package, &root, &ImportOptions { activate: true }, &mut |_, _| {})
        .map_err(crate::package::flat)
        .with_context(|| format!("verifying the policy package {}", a.package.display()))?;
    let policy = Policy::load_dir(&imported.load_path)
        .with_context(|| format!("compiling the library of {}", a.package.display()))?;
    Ok(Judge {
        policy,
        digest: imported.digest_label(),
        name: imported.name,
        version: imported.version,
        dir: imported.load_path,
        _staged: staged,
    })
}

/// The bank's bytes: a file, else a bank the package names; and whether it came from the package.
fn read_bank(bank: &str, judge: &Judge) -> Result<(Vec<u8>, bool)> {
    let local = Path::new(bank);
    let (path, from_package) = if local.is_file() {
        (local.to_path_buf(), false)
    } else if judge.policy.banks().iter().any(|b| b == bank) {
        (judge.dir.join(bank), true)
    } else {
        bail!(
            "bank '{bank}': no such file, and the package names no such bank (it names: {})",
            if judge.policy.banks().is_empty() { "none".to_string() } else { judge.policy.banks().join(", ") }
        );
    };
    Ok((read_capped(&path, govbox_policy::format::LIST_LIMIT, "bank")?, from_package))
}

fn read_capped(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?.len();
    if len > limit {
        bail!("{what} {}: {len} bytes, more than the {limit}-byte limit", path.display());
    }
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

fn read_ca(paths: &StatePaths, a: &EvalArgs) -> Result<String> {
    let ca = a.ca.clone().unwrap_or_else(|| paths.ca_cert());
    let bytes = read_capped(&ca, 1 << 20, "CA certificate").context("give the box CA with --ca")?;
    String::from_utf8(bytes).with_context(|| format!("{} is not PEM text", ca.display()))
}

fn credentials(a: &EvalArgs) -> Result<Credentials> {
    let text = |p: &Path, what: &str| -> Result<String> {
        String::from_utf8(read_capped(p, 1 << 20, what)?).with_context(|| format!("{} is not text", p.display()))
    };
    if let (Some(cert), Some(key)) = (&a.cert, &a.key) {
        return Ok(Credentials::Certificate {
            cert_pem: text(cert, "client certificate")?,
            key_pem: text(key, "client key")?,
        });
    }
    let token = match &a.token_file {
        Some(f) => text(f, "token file")?,
        None => std::env::var("GOVBOX_TOKEN")
            .context("no credentials: give --token-file, --cert and --key, or GOVBOX_TOKEN")?,
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the client token is empty");
    }
    Ok(Credentials::Token(token))
}

/// Asks one question; what the box did with it.
fn ask(client: &mut ApiClient, a: &EvalArgs, q: &Question, refusals: &[&str]) -> Result<Outcome> {
    let (path, body) = match a.api {
        Api::Chat => (
            "/v1/chat/completions",
            json!({"model": a.model, "messages": [{"role": "user", "content": q.prompt}],
                   "max_tokens": a.max_tokens, "temperature": 0}),
        ),
        Api::Completions => (
            "/v1/completions",
            json!({"model": a.model, "prompt": q.prompt, "max_tokens": a.max_tokens, "temperature": 0}),
        ),
    };
    for _ in 0..=RETRIES {
        let answer = client.post_json(path, &body).with_context(|| format!("question '{}'", q.id))?;
        if answer.status == 429 {
            std::thread::sleep(Duration::from_secs(answer.retry_after.unwrap_or(1).clamp(1, 60)));
            continue;
        }
        return classify(answer.status, &answer.json, refusals).with_context(|| format!("question '{}'", q.id));
    }
    bail!("question '{}': still rate-limited (429) after {RETRIES} retries; raise the client's --rpm", q.id)
}

/// What an answer says about its question.
fn classify(status: u16, body: &Value, refusals: &[&str]) -> Result<Outcome> {
    let error = &body["error"];
    match status {
        400 if error["code"] == "content_filter" => Ok(Outcome::InputRefused),
        200 => {
            let choice = &body["choices"][0];
            if choice["finish_reason"] == "content_filter" {
                return Ok(Outcome::OutputRefused);
            }
            let text = choice["message"]["content"].as_str().or(choice["text"].as_str()).unwrap_or("");
            Ok(if refusals.iter().any(|r| text.contains(r)) { Outcome::RefusalText } else { Outcome::Answered })
        }
        _ => bail!(
            "the box answered HTTP {status} {}: {}",
            error["code"].as_str().unwrap_or("(no error code)"),
            error["message"].as_str().unwrap_or("(no message)")
        ),
    }
}

/// The table printed after a run and after verifying.
fn render(s: &Summary) -> String {
    let pct = |r: Option<f64>| r.map_or_else(|| "-".to_string(), |r| format!("{:.1} %", r * 100.0));
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let Thresholds { should_refuse, should_not_refuse } = s.thresholds;
    let mut out = format!(
        "{:<24} {:>24} {:>25} {}\n",
        "CATEGORY",
        format!("REFUSED (>= {:.0} %)", should_refuse * 100.0),
        "ORDINARY REFUSED",
        "VERDICT"
    );
    for c in &s.categories {
        out.push_str(&format!(
            "{:<24} {:>8} of {:<4} {:>7} {:>9} of {:<4} {:>7} {}\n",
            c.id,
            c.should_refuse.refused,
            c.should_refuse.questions,
            pct(c.should_refuse.rate),
            c.should_not_refuse.refused,
            c.should_not_refuse.questions,
            pct(c.should_not_refuse.rate),
            if c.should_refuse.questions == 0 { "FAIL (untested)" } else { verdict(c.pass) }
        ));
    }
    out.push_str(&format!(
        "should-not-refuse: {} of {} refused ({}; at most {:.0} %) {}\nverdict      {}\n",
        s.should_not_refuse.refused,
        s.should_not_refuse.questions,
        pct(s.should_not_refuse.rate),
        should_not_refuse * 100.0,
        verdict(s.should_not_refuse_pass),
        verdict(s.pass)
    ));
    out
}

/// Runs `govbox policy eval-verify`: one PASS/FAIL line per check, the figures, exit 1 when any
/// check fails (a report whose box missed its thresholds verifies, and fails the `thresholds` line).
pub fn verify(a: &EvalVerifyArgs) -> Result<ExitCode> {
    let key = PublicKey::load_pem(&a.pubkey).with_context(|| format!("loading --pubkey {}", a.pubkey.display()))?;
    let bytes = read_capped(&a.report, REPORT_LIMIT, "report")?;
    let doc: Value = serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", a.report.display()))?;
    let checks = check_report(&doc, &key);
    let mut ok = true;
    for (name, result) in &checks {
        match result {
            Ok(detail) => println!("PASS {name:<10} {detail}"),
            Err(why) => {
                ok = false;
                println!("FAIL {name:<10} {why}");
            }
        }
    }
    if let Ok(summary) = serde_json::from_value::<Summary>(doc["report"]["summary"].clone()) {
        print!("{}", render(&summary));
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

type Check = (&'static str, Result<String, String>);

/// The checks of a report, in order; each names what it found.
fn check_report(doc: &Value, key: &PublicKey) -> Vec<Check> {
    let report = &doc["report"];
    let mut out: Vec<Check> = Vec::new();
    // Rule: the signed body names this format, so that no other signed document passes as one.
    out.push((
        "format",
        match report["format"].as_str() {
            Some(FORMAT) => Ok(FORMAT.into()),
            other => Err(format!("'{}' is not {FORMAT}", other.unwrap_or("(none)"))),
        },
    ));
    // Rule: the signer is the pinned key, and its signature covers the canonical JSON of `report`.
    out.push((
        "signature",
        match (doc["keyid"].as_str(), doc["signature"].as_str().and_then(|s| key.algorithm().decode_signature_hex(s))) {
            (Some(id), _) if id != key.keyid() => Err(format!("signed by {id}, not by the given key {}", key.keyid())),
            (_, None) => Err(format!("no signature, or not a lower-case hex {} signature", key.algorithm())),
            (_, Some(sig)) => match key.verify(to_canonical_json(report).as_bytes(), &sig) {
                Ok(()) => Ok(format!("by {}", key.keyid())),
                Err(e) => Err(e.to_string()),
            },
        },
    ));
    // Rule: the figures are exactly what the per-question outcomes give under the stated thresholds.
    out.push(("figures", recount(report).map(|n| format!("{n} questions recounted"))));
    let stated = serde_json::from_value::<Summary>(report["summary"].clone());
    out.push((
        "thresholds",
        match &stated {
            Ok(s) if s.pass => Ok("every category and the ordinary questions meet them".into()),
            Ok(_) => Err("the box did not meet the package's thresholds".into()),
            Err(e) => Err(e.to_string()),
        },
    ));
    out
}

#[cfg(test)]
mod tests {
    use govbox_policy::bank::Expect;

    use super::*;

    #[test]
    fn answers_are_classified_as_the_api_gives_them() {
        let refusals = ["抱歉，无法回答。"];
        let filtered = json!({"error": {"code": "content_filter", "message": "抱歉，无法回答。"}});
        assert_eq!(classify(400, &filtered, &refusals).ok(), Some(Outcome::InputRefused));
        let stopped = json!({"choices": [{"finish_reason": "content_filter", "message": {"content": "x"}}]});
        assert_eq!(classify(200, &stopped, &refusals).ok(), Some(Outcome::OutputRefused));
        let said = json!({"choices": [{"finish_reason": "stop", "text": "好的。抱歉，无法回答。"}]});
        assert_eq!(classify(200, &said, &refusals).ok(), Some(Outcome::RefusalText));
        let answered = json!({"choices": [{"finish_reason": "length", "message": {"content": "今天晴。"}}]});
        assert_eq!(classify(200, &answered, &refusals).ok(), Some(Outcome::Answered));
        let other = json!({"error": {"code": "invalid_value", "message": "bad"}});
        let e = classify(400, &other, &refusals).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("HTTP 400 invalid_value: bad"), "{e}");
    }

    fn signed(report: Value, key: &SigningKey) -> Value {
        let sig = key.sign(to_canonical_json(&report).as_bytes());
        json!({"report": report, "keyid": key.public_key().keyid(), "signature": hex(sig.as_ref())})
    }

    #[test]
    fn a_changed_figure_another_key_or_a_recount_mismatch_fails() {
        let key = SigningKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let results = vec![QuestionResult {
            id: "v1".into(),
            expect: Expect::Refuse,
            category: Some("v".into()),
            outcome: Outcome::InputRefused,
        }];
        let summary = summarise(&["v"], Thresholds::default(), &results).unwrap_or_else(|e| panic!("{e}"));
        let report = json!({"format": FORMAT, "summary": summary, "results": results});
        let verdicts = |doc: &Value, k: &PublicKey| -> Vec<bool> {
            check_report(doc, k).into_iter().map(|(_, r)| r.is_ok()).collect()
        };
        let good = signed(report.clone(), &key);
        assert_eq!(verdicts(&good, &key.public_key()), [true, true, true, true]);

        let mut edited = good.clone();
        edited["report"]["summary"]["categories"][0]["should_refuse"]["refused"] = json!(0);
        assert_eq!(verdicts(&edited, &key.public_key()), [true, false, false, true]);

        let other = SigningKey::generate().unwrap_or_else(|e| panic!("{e}"));
        assert!(!verdicts(&good, &other.public_key())[1]);

        // One signature has one spelling, as for every other signed govbox document.
        let mut shouted = good.clone();
        shouted["signature"] = json!(good["signature"].as_str().map(str::to_uppercase));
        assert_eq!(verdicts(&shouted, &key.public_key()), [true, false, true, true]);

        // Signed, but its summary claims what its results do not give.
        let mut lying = report;
        lying["results"][0]["outcome"] = json!("answered");
        assert_eq!(verdicts(&signed(lying, &key), &key.public_key()), [true, true, false, true]);
    }
}
