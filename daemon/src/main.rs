//! `govboxd`: the govbox appliance daemon. Everything is in the `govbox_daemon` library; this is
//! the command line and the exit status.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use govbox_daemon::{Options, run};
use govbox_provisioning::DEFAULT_STATE_DIR;

/// govboxd: serves the OpenAI-compatible API over HTTPS, the admin socket and systemd's protocol.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The state folder that `govbox provision` wrote.
    #[arg(long, value_name = "DIR", env = "GOVBOX_STATE", default_value = DEFAULT_STATE_DIR)]
    state: PathBuf,
    /// The config file (TOML); without it, the built-in defaults apply.
    #[arg(long, value_name = "FILE", env = "GOVBOX_CONFIG")]
    config: Option<PathBuf>,
    /// Also serve the config's unsigned `[[models]]` folders (development only: logged as a warning
    /// at every start and shown in /readyz and `govbox status`).
    #[arg(long)]
    insecure_dev_models: bool,
    /// The A/B install folder: govboxd imports the steps `govbox update` recorded in its update
    /// journal (ROOT/update-journal.jsonl) into the audit log at start.
    #[arg(long, value_name = "DIR", env = "GOVBOX_ROOT", default_value = "/opt/govbox")]
    install_root: PathBuf,
    /// More log detail (-v debug, -vv trace); never request content.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    // clap exits with status 2 on a usage error, like a bad config does below.
    let args = Args::parse();
    match run(Options {
        state: args.state,
        config: args.config,
        verbose: args.verbose,
        insecure_dev_models: args.insecure_dev_models,
        install_root: args.install_root,
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Also to stderr, which the logger may not be set up to reach yet.
            eprintln!("govboxd: error: {e}");
            log::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
