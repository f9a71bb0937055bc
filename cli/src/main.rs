//! `govbox`: the command line for agency IT, vendors and auditors.
//!
//! A thin clap front over the library crates. Each command group lives in its own module.
#![forbid(unsafe_code)]

mod client;
mod keys;
mod model;
mod provision;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// govbox: the government model appliance's command line.
#[derive(Parser, Debug)]
#[command(name = "govbox", version, about, propagate_version = true)]
struct Cli {
    /// State folder (production: /var/lib/govbox).
    #[arg(long, global = true, env = "GOVBOX_STATE")]
    state: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run, inspect and measure models directly (no daemon needed).
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Make an Ed25519 signing key pair (vendors: for signing model packages and update bundles).
    Keygen(keys::KeygenArgs),
    /// First boot: create the box's identity, CA, server certificate and trust root (or --show them).
    Provision(provision::ProvisionArgs),
    /// Manage the intranet applications allowed to call the box (govboxd must be stopped).
    #[command(subcommand)]
    Client(client::ClientCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Model(c) => model::run(c),
        Command::Keygen(a) => keys::run(a),
        Command::Provision(a) => provision::run(cli.state.as_deref(), a),
        Command::Client(c) => client::run(cli.state.as_deref(), c),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
