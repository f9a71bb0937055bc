//! `govbox trust ...`: show the trust root, sign a new one, and rotate to it offline.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use govbox_images::{install_root, sign_root};
use govbox_provisioning::{Overwrite, Role, SigningKey, StatePaths, TrustRoot, describe_role};

/// `govbox trust ...`.
#[derive(Subcommand, Debug)]
pub enum TrustCommand {
    /// Print a trust root: version, expiry, and each role's threshold and keys.
    Show {
        /// A root.json file [default: STATE/trust/root.json].
        #[arg(long, value_name = "ROOT_JSON")]
        root: Option<PathBuf>,
    },
    /// Sign a root document with root keys (the current ones, to approve it, and its own).
    SignRoot {
        /// A root signing key (PKCS#8 PEM); repeat for several.
        #[arg(long = "key", value_name = "KEY", required = true)]
        keys: Vec<PathBuf>,
        /// The root document to sign.
        root: PathBuf,
        /// Where to write the signed document.
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: PathBuf,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
    },
    /// Install a new root into STATE/trust/root.json, if the current root's root threshold (and
    /// its own) signed it and its version is higher. Run with govboxd stopped, then start it.
    Rotate {
        /// The new, signed root document.
        new_root: PathBuf,
    },
}

/// Runs one `govbox trust` command.
pub fn run(state: Option<&Path>, cmd: TrustCommand) -> Result<()> {
    let paths = StatePaths::new(crate::provision::state_dir(state));
    match cmd {
        TrustCommand::Show { root } => {
            let path = root.unwrap_or_else(|| paths.root_json());
            let r = TrustRoot::load(&path)?;
            println!("trust root   {}", path.display());
            print_root(&r);
            Ok(())
        }
        TrustCommand::SignRoot { keys, root, out, force } => {
            let keys: Vec<SigningKey> = keys
                .iter()
                .map(|p| SigningKey::load_pem(p).with_context(|| format!("loading {}", p.display())))
                .collect::<Result<_>>()?;
            let bytes = std::fs::read(&root).with_context(|| format!("reading {}", root.display()))?;
            let refs: Vec<&SigningKey> = keys.iter().collect();
            let signed = sign_root(&bytes, &refs).map_err(crate::package::flat)?;
            let overwrite = if force { Overwrite::Replace } else { Overwrite::Refuse };
            if overwrite == Overwrite::Refuse && out.symlink_metadata().is_ok() {
                anyhow::bail!("signing root: refusing to overwrite {} (use --force)", out.display());
            }
            std::fs::write(&out, &signed).with_context(|| format!("writing {}", out.display()))?;
            let r = TrustRoot::parse(&signed, &out.display().to_string())?;
            println!("signed       {} (version {}, {} signature(s))", out.display(), r.version(), r.signatures().len());
            for k in &keys {
                println!("signed by    {}", k.public_key().keyid());
            }
            Ok(())
        }
        TrustCommand::Rotate { new_root } => {
            let bytes = std::fs::read(&new_root).with_context(|| format!("reading {}", new_root.display()))?;
            let (old, new) = install_root(&paths, &bytes).map_err(crate::package::flat)?;
            println!("rotated      trust root version {} -> {}", old.version(), new.version());
            println!("installed    {}", paths.root_json().display());
            print_root(&new);
            Ok(())
        }
    }
}

fn print_root(r: &TrustRoot) {
    println!("version      {}", r.version());
    println!("expires      {}", r.expires_rfc3339());
    for role in Role::ALL {
        println!("  {:<8} {}", role.as_str(), describe_role(r, role));
    }
    let sigs: Vec<&str> = r.signatures().iter().map(|s| s.keyid.as_str()).collect();
    println!("signatures   {}", if sigs.is_empty() { "none (the provisioned root)".into() } else { sigs.join(", ") });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use govbox_provisioning::{PublicKey, ThresholdSpec};
    use time::{Duration, OffsetDateTime};

    #[test]
    fn sign_root_then_rotate_installs_a_higher_version_once() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = StatePaths::new(tmp.path().join("state"));
        std::fs::create_dir_all(paths.trust_dir()).unwrap();
        let key = SigningKey::generate().unwrap();
        key.write_pem(&tmp.path().join("root.key"), Overwrite::Refuse).unwrap();
        let a: Vec<(Vec<Role>, PublicKey)> = vec![(Role::ALL.to_vec(), key.public_key())];
        let v1 = TrustRoot::build(&a, &[] as &[ThresholdSpec], OffsetDateTime::now_utc() + Duration::days(9)).unwrap();
        std::fs::write(paths.root_json(), v1.to_canonical_json()).unwrap();
        let mut doc: serde_json::Value = serde_json::from_str(&v1.to_canonical_json()).unwrap();
        doc["signed"]["version"] = 2.into();
        std::fs::write(tmp.path().join("v2.json"), doc.to_string()).unwrap();

        let state = Some(paths.root());
        let rotate = |f: &str| run(state, TrustCommand::Rotate { new_root: tmp.path().join(f) });
        assert!(rotate("v2.json").unwrap_err().to_string().contains("signed by 0 of threshold 1 root keys"));
        let sign = TrustCommand::SignRoot {
            keys: vec![tmp.path().join("root.key")],
            root: tmp.path().join("v2.json"),
            out: tmp.path().join("v2.signed.json"),
            force: false,
        };
        run(state, sign).unwrap();
        rotate("v2.signed.json").unwrap();
        assert_eq!(TrustRoot::load(&paths.root_json()).unwrap().version(), 2);
        assert!(rotate("v2.signed.json").unwrap_err().to_string().contains("not higher"));
        run(state, TrustCommand::Show { root: None }).unwrap();
    }
}
