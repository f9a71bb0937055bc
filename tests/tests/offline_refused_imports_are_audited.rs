//! Property: a model import refused by `govbox model import` on the state folder (govboxd
//! stopped) leaves a `package_refused` entry, as one refused through govboxd's socket does: an
//! untrusted key, a tampered member, a model govbox cannot load. The export records itself too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use govbox_e2e::{TestBox, bin, repo};
use govbox_images::corpus::{write_corpus, write_unsupported_architecture};

#[test]
fn imports_refused_offline_leave_audit_entries() {
    let b = TestBox::provisioned("offline-refused");
    let corpus = b.dir.join("corpus");
    let model = repo().join("tests/fixtures/tiny-qwen2");
    let cases = write_corpus(&corpus, &b.keys, &model).unwrap();
    let mut want = vec![];
    for name in ["unknown_key", "payload_byte_flipped"] {
        let case = cases.iter().find(|c| c.name == name).unwrap();
        want.push((case.file.clone(), case.expect_code));
    }
    want.push((write_unsupported_architecture(&b.dir, &b.keys, &model).unwrap(), "model_load_failed"));
    for (file, _) in &want {
        let o = Command::new(bin("govbox"))
            .arg("--state")
            .arg(&b.state)
            .args(["model", "import"])
            .arg(file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{} was imported", file.display());
        assert!(!err.contains("could not be recorded"), "{err}");
    }

    let entries = govbox_e2e::exported_entries(&b.state, &b.dir);
    for (file, code) in &want {
        assert!(
            entries.iter().any(|e| e["kind"] == "package_refused"
                && e["file"] == file.display().to_string().as_str()
                && e["code"] == *code
                && e["actor"].as_str().unwrap().starts_with("uid ")),
            "no package_refused entry for {} ({code}): {entries:#?}",
            file.display()
        );
    }
    let last = entries.last().unwrap();
    assert_eq!((last["kind"].as_str(), last["action"].as_str()), (Some("admin"), Some("audit_export")), "{last}");
}
