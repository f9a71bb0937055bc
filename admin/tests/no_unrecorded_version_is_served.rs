//! Property: no version becomes active (in the store's record, or served) before its audit entry
//! is durable. A crash between the entry and the record leaves the entry and the version active
//! before (the safe side: the log claims a change that did not happen); an entry that cannot be
//! written leaves everything as it was. The crash is a panic inside the gate, just after the
//! entry is "written"; the next start is a fresh `ModelOps` on the same folder.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use govbox_admin::ops::models::{ModelLoadError, ModelOps, Serving};
use govbox_admin::ops::policies::{PolicyLoadError, PolicyOps, PolicyServing};
use govbox_admin::ops::{Gate, Switch};
use govbox_admin::protocol::{ModelImported, ModelSwitched, PolicyImported};
use govbox_audit::AuditError;
use govbox_engine::Engine;
use govbox_images::{ActiveModel, ModelKind, ModelMeta, ModelStore, PackageBuilder, PolicyInfo};
use govbox_provisioning::{Role, SigningKey, StatePaths, TrustRoot};

/// A host that "loads" a version as its name and records what it serves.
#[derive(Default)]
struct Recorder {
    served: RefCell<Vec<String>>,
}

impl Serving for Recorder {
    type Model = String;

    fn load(&self, a: &ActiveModel) -> Result<String, ModelLoadError> {
        Ok(a.version.clone())
    }

    fn engine<'m>(&self, _: &'m String) -> &'m Engine {
        panic!("these packages have no self-test")
    }

    fn backend(&self) -> String {
        "test".into()
    }

    fn serves(&self) -> bool {
        true
    }

    fn serve(&self, m: String) {
        self.served.borrow_mut().push(m);
    }

    fn withdraw(&self, _: &str) {}

    fn serving(&self, _: &str) -> Option<String> {
        self.served.borrow().last().cloned()
    }
}

/// A host that counts its reloads of the policy store.
#[derive(Default)]
struct Reloads(RefCell<usize>);

impl PolicyServing for Reloads {
    fn reload(&self) -> Result<(), PolicyLoadError> {
        *self.0.borrow_mut() += 1;
        Ok(())
    }
}

struct Box_ {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    packages: Vec<PathBuf>,
    policies: Vec<PathBuf>,
}

/// A state folder with a trust root, packages `syn` 1.0.0, 1.1.0 and 1.2.0 and policy packages
/// `lib` 1 and 2 signed for it.
fn setup() -> Box_ {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let expires = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    let root = TrustRoot::build(&[(Role::ALL.to_vec(), key.public_key())], &[], expires).unwrap();
    let state = tmp.path().join("state");
    let paths = StatePaths::new(&state);
    std::fs::create_dir_all(paths.root_json().parent().unwrap()).unwrap();
    std::fs::write(paths.root_json(), root.to_canonical_json()).unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("config.json"), b"{}").unwrap();
    std::fs::write(model.join("model.bin"), [7u8; 64]).unwrap();
    let meta =
        ModelMeta { kind: ModelKind::Chat, architecture: "synthetic".into(), context_length: 64, dtype: "f32".into() };
    let packages = ["1.0.0", "1.1.0", "1.2.0"]
        .iter()
        .map(|v| {
            let file = tmp.path().join(format!("syn-{v}.gbx"));
            let mut b = PackageBuilder::model("syn", v, &model, meta.clone()).unwrap();
            b.write(&file, &[&key], &mut |_, _| {}).unwrap();
            file
        })
        .collect();
    let lib = tmp.path().join("library");
    std::fs::create_dir_all(lib.join("lists")).unwrap();
    std::fs::write(
        lib.join("policy.toml"),
        "format = \"govbox-policy/1\"\nname = \"lib\"\nversion = \"1\"\n[[category]]\nid = \"v\"\n\
         action = \"refuse\"\nrefusal = \"no\"\nkeywords = [\"lists/v.txt\"]\n",
    )
    .unwrap();
    std::fs::write(lib.join("lists/v.txt"), "炸药\n").unwrap();
    let info = PolicyInfo { format: "govbox-policy/1".into(), categories: vec!["v".into()], keywords: 1 };
    let policies = ["1.0.0", "2.0.0"]
        .iter()
        .map(|v| {
            let file = tmp.path().join(format!("lib-{v}.gbp"));
            let mut b = PackageBuilder::policy("lib", v, &lib, info.clone()).unwrap();
            b.write(&file, &[&key], &mut |_, _| {}).unwrap();
            file
        })
        .collect();
    Box_ { _tmp: tmp, state, packages, policies }
}

fn ops(state: &Path) -> ModelOps<Recorder> {
    ModelOps::open(StatePaths::new(state), Recorder::default()).unwrap()
}

/// The active version in the store's record, as the next start would serve it.
fn active(state: &Path) -> Option<String> {
    ops(state).store().active_models().unwrap().into_iter().find(|a| a.name == "syn").map(|a| a.version)
}

/// Writes nothing and fails, as an audit log that cannot take the entry does.
fn unwritable<A>(_: &A) -> Result<(), AuditError> {
    Err(AuditError::Unavailable { reason: "disk full".into() })
}

#[test]
fn a_crash_after_the_entry_leaves_the_old_version_active() {
    let b = setup();
    let log: RefCell<Vec<String>> = RefCell::default();
    let ops0 = ops(&b.state);
    let written = |a: &ModelImported| {
        log.borrow_mut().push(format!("imported {}", a.version));
        Ok(())
    };
    ops0.import(&b.packages[0], false, &mut |_, _| {}, &written).unwrap();
    assert_eq!(active(&b.state).as_deref(), Some("1.0.0"));

    // Import with activation: the entry is written, then the process dies.
    let crash = |a: &ModelImported| -> Result<(), AuditError> {
        log.borrow_mut().push(format!("imported {} active {}", a.version, a.active));
        panic!("crash between the entry and the record")
    };
    let gate: &Gate<'_, ModelImported> = &crash;
    let r = catch_unwind(AssertUnwindSafe(|| ops0.import(&b.packages[1], true, &mut |_, _| {}, gate)));
    assert!(r.is_err(), "the gate's crash must stop the import");
    assert_eq!(log.borrow().last().map(String::as_str), Some("imported 1.1.0 active true"));
    assert_eq!(active(&b.state).as_deref(), Some("1.0.0"), "an unrecorded import was made active");
    assert_eq!(*ops0.host().served.borrow(), vec!["1.0.0".to_string()], "an unrecorded version was served");

    // Activation and rollback: the same.
    let crash = |a: &ModelSwitched| -> Result<(), AuditError> {
        log.borrow_mut().push(format!("switched to {}", a.version));
        panic!("crash between the entry and the record")
    };
    let ops1 = ops(&b.state);
    let r = catch_unwind(AssertUnwindSafe(|| ops1.switch("syn", Switch::Activate(Some("1.1.0")), &crash)));
    assert!(r.is_err());
    assert_eq!(log.borrow().last().map(String::as_str), Some("switched to 1.1.0"));
    assert_eq!(active(&b.state).as_deref(), Some("1.0.0"), "an unrecorded activation was made");
    assert!(ops1.host().served.borrow().is_empty(), "an unrecorded activation was served");

    let ok = |_: &ModelSwitched| Ok(());
    ops1.switch("syn", Switch::Activate(Some("1.1.0")), &ok).unwrap();
    assert_eq!(active(&b.state).as_deref(), Some("1.1.0"));
    let r = catch_unwind(AssertUnwindSafe(|| ops1.switch("syn", Switch::Rollback, &crash)));
    assert!(r.is_err());
    assert_eq!(log.borrow().last().map(String::as_str), Some("switched to 1.0.0"));
    assert_eq!(active(&b.state).as_deref(), Some("1.1.0"), "an unrecorded rollback was made");
    ops1.switch("syn", Switch::Rollback, &ok).unwrap();
    assert_eq!(active(&b.state).as_deref(), Some("1.0.0"));
}

#[test]
fn a_change_whose_entry_cannot_be_written_changes_nothing() {
    let b = setup();
    let ops = ops(&b.state);
    let ok = |_: &ModelImported| Ok(());
    ops.import(&b.packages[0], false, &mut |_, _| {}, &ok).unwrap();
    ops.import(&b.packages[1], false, &mut |_, _| {}, &ok).unwrap();
    let before = std::fs::read(b.state.join("models/registry.json")).unwrap();

    let e = ops.import(&b.packages[2], true, &mut |_, _| {}, &unwritable).unwrap_err();
    assert_eq!(e.code(), "audit_unavailable", "{e}");
    let e = ops.switch("syn", Switch::Activate(Some("1.1.0")), &unwritable).unwrap_err();
    assert_eq!(e.code(), "audit_unavailable", "{e}");
    let e = ops.remove("syn", "1.1.0", &unwritable).unwrap_err();
    assert_eq!(e.code(), "audit_unavailable", "{e}");

    assert_eq!(std::fs::read(b.state.join("models/registry.json")).unwrap(), before, "the record changed");
    assert_eq!(active(&b.state).as_deref(), Some("1.0.0"));
    assert_eq!(*ops.host().served.borrow(), vec!["1.0.0".to_string()]);
    let versions: Vec<String> = ops.store().list().unwrap()[0].versions.iter().map(|v| v.version.clone()).collect();
    assert_eq!(versions, ["1.0.0", "1.1.0"], "the refused import's version must not stay stored");
}

/// The active policy version in the store's record.
fn active_policy(state: &Path) -> Option<String> {
    let store = ModelStore::open_policies(&StatePaths::new(state)).unwrap();
    store.active_models().unwrap().into_iter().find(|a| a.name == "lib").map(|a| a.version)
}

#[test]
fn a_policy_change_is_recorded_before_it_is_made() {
    let b = setup();
    let ops = PolicyOps::open(StatePaths::new(&b.state), Reloads::default()).unwrap();
    let log: RefCell<Vec<String>> = RefCell::default();
    ops.import(&b.policies[0], false, &|_: &PolicyImported| Ok(())).unwrap();
    assert_eq!(active_policy(&b.state).as_deref(), Some("1.0.0"));
    let served = *ops_reloads(&ops);

    let crash = |a: &PolicyImported| -> Result<(), AuditError> {
        log.borrow_mut().push(format!("imported {} active {}", a.version, a.active));
        panic!("crash between the entry and the record")
    };
    assert!(catch_unwind(AssertUnwindSafe(|| ops.import(&b.policies[1], true, &crash))).is_err());
    assert_eq!(log.borrow().last().map(String::as_str), Some("imported 2.0.0 active true"));
    assert_eq!(active_policy(&b.state).as_deref(), Some("1.0.0"), "an unrecorded library was made active");

    let crash = |a: &ModelSwitched| -> Result<(), AuditError> {
        log.borrow_mut().push(format!("switched to {}", a.version));
        panic!("crash between the entry and the record")
    };
    assert!(catch_unwind(AssertUnwindSafe(|| ops.switch("lib", Switch::Activate(Some("2.0.0")), &crash))).is_err());
    assert_eq!(log.borrow().last().map(String::as_str), Some("switched to 2.0.0"));
    assert_eq!(active_policy(&b.state).as_deref(), Some("1.0.0"), "an unrecorded activation was made");

    let e = ops.switch("lib", Switch::Activate(Some("2.0.0")), &unwritable).unwrap_err();
    assert_eq!(e.code(), "audit_unavailable", "{e}");
    assert_eq!(active_policy(&b.state).as_deref(), Some("1.0.0"));
    assert_eq!(*ops_reloads(&ops), served, "nothing new may be served");
    ops.switch("lib", Switch::Activate(Some("2.0.0")), &|_: &ModelSwitched| Ok(())).unwrap();
    assert_eq!(active_policy(&b.state).as_deref(), Some("2.0.0"));
}

fn ops_reloads(ops: &PolicyOps<Reloads>) -> std::cell::Ref<'_, usize> {
    ops.host().0.borrow()
}
