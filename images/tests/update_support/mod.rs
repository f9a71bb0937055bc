//! Shared fixtures for the `update_*` tests: a state folder with a trust root, an install folder
//! whose update trust anchor was installed from it,
//! bundles with stand-in binaries, and a scripted [`UpdateHost`].
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use govbox_images::corpus::CorpusKeys;
use govbox_images::update::{BundleSpec, FaultPoint, InstallRoot, Slot, UpdateHost, build_bundle};
use govbox_images::{SigningKey, TrustRoot};
use govbox_provisioning::{HashAlgorithm, StatePaths};
use time::{Duration, OffsetDateTime};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub root: InstallRoot,
    pub paths: StatePaths,
    pub keys: CorpusKeys,
    /// The hash the fixture's bundles are built with (`govbox update build --hash`).
    pub hash: HashAlgorithm,
}

impl Fixture {
    /// The corpus trust root: `updates` (and `root`) threshold 1, `models` threshold 2.
    pub fn new() -> Self {
        let keys = CorpusKeys::generate().unwrap();
        let trust = keys.trust_root(OffsetDateTime::now_utc() + Duration::days(365)).unwrap();
        Self::with_root(keys, &trust)
    }

    pub fn with_root(keys: CorpusKeys, trust: &TrustRoot) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let paths = StatePaths::new(dir.path().join("state"));
        fs::create_dir_all(paths.root_json().parent().unwrap()).unwrap();
        fs::write(paths.root_json(), trust.to_canonical_json()).unwrap();
        let root = InstallRoot::new(dir.path().join("opt"));
        // What `govbox update init --from STATE/trust/root.json` does once, as root.
        root.init_anchor(trust.to_canonical_json().as_bytes(), "test root").unwrap();
        Self { dir, root, paths, keys, hash: HashAlgorithm::Sha256 }
    }

    /// Builds its bundles with `hash`.
    pub fn with_hash(mut self, hash: HashAlgorithm) -> Self {
        self.hash = hash;
        self
    }

    /// The install folder's update trust anchor.
    pub fn trust(&self) -> TrustRoot {
        self.root.anchor().unwrap()
    }

    /// A bundle whose govboxd is the text `daemon`, signed by `keys`.
    pub fn bundle_by(&self, version: &str, sv: u64, daemon: &str, keys: &[&SigningKey]) -> PathBuf {
        let src = self.dir.path().join(format!("src-{version}-{sv}"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("govboxd"), format!("#!/bin/sh\n# govboxd {version}\n{daemon}\n")).unwrap();
        fs::write(src.join("govbox"), format!("#!/bin/sh\necho govbox {version}\n")).unwrap();
        let out = self.dir.path().join(format!("govbox-{version}-{sv}.gbu"));
        let spec = BundleSpec {
            version: version.into(),
            security_version: sv,
            daemon: src.join("govboxd"),
            cli: src.join("govbox"),
            dist: None,
            new_root: None,
            hash: self.hash,
        };
        build_bundle(&spec, keys, &out).unwrap();
        out
    }

    /// A bundle signed by the `updates` key.
    pub fn bundle(&self, version: &str, sv: u64) -> PathBuf {
        self.bundle_by(version, sv, "exec sleep 1000", &[&self.keys.updates])
    }

    pub fn current(&self) -> Option<Slot> {
        self.root.current().unwrap()
    }

    /// No staging folder, half-removed slot or temporary link is left.
    pub fn assert_no_leftovers(&self) {
        for d in [self.root.path().to_path_buf(), self.root.slots_dir()] {
            for e in fs::read_dir(&d).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    !name.starts_with(".staging-") && !name.starts_with(".old-") && !name.starts_with(".current.tmp"),
                    "leftover {name} in {}",
                    d.display()
                );
            }
        }
    }

    /// Reads a payload file of a slot.
    pub fn slot_file(&self, slot: Slot, path: &str) -> String {
        fs::read_to_string(self.root.slot_dir(slot).join("payload").join(path)).unwrap()
    }
}

/// A scripted host: `ready` answers in turn (the last one repeats); `fault` panics at a point.
#[derive(Default)]
pub struct TestHost {
    pub ready: Vec<bool>,
    pub steps: Vec<(String, String)>,
    pub fault: Option<FaultPoint>,
    pub restarts: u32,
}

impl TestHost {
    pub fn ready() -> Self {
        Self { ready: vec![true], ..Self::default() }
    }

    pub fn never_ready() -> Self {
        Self { ready: vec![false], ..Self::default() }
    }

    pub fn has_step(&self, step: &str) -> bool {
        self.steps.iter().any(|(s, _)| s == step)
    }
}

impl UpdateHost for TestHost {
    fn record(&mut self, step: &str, detail: &str) {
        self.steps.push((step.into(), detail.into()));
    }

    fn restart(&mut self) -> Result<(), String> {
        self.restarts += 1;
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let r = if self.ready.len() > 1 { self.ready.remove(0) } else { self.ready.first().copied().unwrap_or(true) };
        if r { Ok(()) } else { Err("not ready (test)".into()) }
    }

    fn fault(&mut self, point: FaultPoint) {
        if self.fault == Some(point) {
            panic!("injected fault at {}", point.as_str());
        }
    }
}

pub fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}
