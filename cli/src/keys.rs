//! `govbox keygen`: the vendor's signing key, Ed25519 (default) or SM2 (`--algorithm sm2`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use govbox_provisioning::{KeyAlgorithm, Overwrite, SigningKey};

/// Arguments of `govbox keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, mode 0600). Keep it off the appliance.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Where to write the public key (SubjectPublicKeyInfo PEM) [default: --out with extension .pub].
    #[arg(long = "pub", value_name = "FILE")]
    pub_out: Option<PathBuf>,
    /// The algorithm: `ed25519`, or `sm2` (SM2 with SM3 and ID 1234567812345678, for the 国密
    /// suite). Both write PEM that OpenSSL 3 reads (`openssl pkeyutl -verify -pubin -inkey PUB`).
    #[arg(long, value_name = "ALG", default_value = "ed25519", value_parser = parse_algorithm)]
    algorithm: KeyAlgorithm,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

fn parse_algorithm(s: &str) -> Result<KeyAlgorithm, String> {
    s.parse().map_err(|e: govbox_provisioning::ProvisionError| e.to_string())
}

/// Runs `govbox keygen`.
pub fn run(args: KeygenArgs) -> Result<()> {
    let pub_path = args.pub_out.unwrap_or_else(|| args.out.with_extension("pub"));
    if pub_path == args.out {
        bail!("generating a key: --pub and --out are both {}; give the public key its own file", args.out.display());
    }
    let overwrite = if args.force { Overwrite::Replace } else { Overwrite::Refuse };
    if !args.force {
        // Check both before writing either, so a refusal leaves no half-made key pair behind.
        for p in [&args.out, &pub_path] {
            if p.symlink_metadata().is_ok() {
                bail!("generating a key: refusing to overwrite {}: the file already exists (use --force)", p.display());
            }
        }
    }
    let key = SigningKey::generate_with(args.algorithm)?;
    key.write_pem(&args.out, overwrite)?;
    key.public_key().write_pem(&pub_path, overwrite)?;
    println!("private key  {} (mode 0600; anyone holding it can sign for boxes that trust it)", args.out.display());
    println!("public key   {}", pub_path.display());
    println!("algorithm    {}", key.algorithm());
    println!("key id       {}", key.public_key().keyid());
    Ok(())
}
