//! `govbox tls tlcp-init` and `govbox tls tlcp-client`: the box's SM2 CA for TLCP (GB/T 38636,
//! 国密 SSL), the signing and encryption certificates of govboxd's `[tlcp]` listener, and client
//! certificate pairs (see `govbox_provisioning::tlcp_ca`). Both work on the state folder directly:
//! `tlcp-client` registers the pair in the client store, which a running govboxd holds locked, so
//! it runs while govboxd is stopped.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use govbox_provisioning::tlcp_ca::{init_tlcp, issue_tlcp_client, write_tlcp_client_pair};
use govbox_provisioning::{ClientStore, DEFAULT_CERT_DAYS, ProvisionError};

/// Arguments of `govbox tls tlcp-client`.
#[derive(Args, Debug)]
pub struct TlcpClientArgs {
    /// The client (added before with `govbox client add`).
    name: String,
    /// Folder for NAME.sign.crt/.key, NAME.enc.crt/.key and tlcp-ca.crt (default: ./NAME-tlcp).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Validity of the pair in days.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CERT_DAYS)]
    days: u32,
}

/// `govbox tls tlcp-init`.
pub fn init(state: &Path) -> Result<()> {
    let report = init_tlcp(state)?;
    println!(
        "TLCP: the box's SM2 CA (sha256 {}) and the listener's certificates, for {}",
        report.ca_sha256,
        report.names.join(", ")
    );
    for f in &report.files {
        println!("  wrote {}", f.display());
    }
    println!("set [tlcp] listen = \"0.0.0.0:8444\" in the config and restart govboxd to serve TLCP");
    Ok(())
}

/// `govbox tls tlcp-client NAME`.
pub fn client(state: &Path, args: TlcpClientArgs) -> Result<()> {
    let dir = args.out.unwrap_or_else(|| PathBuf::from(format!("{}-tlcp", args.name)));
    let store = match ClientStore::open(state) {
        Err(ProvisionError::StoreLocked { path }) => bail!(
            "the client store {} is held by a running govboxd: stop it (`systemctl stop govboxd`), run \
             `govbox tls tlcp-client` again, and start it",
            path.display()
        ),
        r => r?,
    };
    let pair = issue_tlcp_client(&store, &args.name, args.days)?;
    let files = write_tlcp_client_pair(&dir, &pair)
        .with_context(|| format!("the pair of '{}' is registered but its files were not written", args.name))?;
    println!(
        "TLCP client pair of '{}' (signing certificate sha256 {}), valid {} days:",
        pair.name,
        govbox_provisioning::hex(&pair.sign.sha256),
        args.days
    );
    for f in files {
        println!("  wrote {}", f.display());
    }
    Ok(())
}
