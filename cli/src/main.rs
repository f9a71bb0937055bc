//! `govbox`: the command line for agency IT, vendors and auditors.
//!
//! A thin clap front over the library crates. Each command group lives in its own module.
#![forbid(unsafe_code)]

mod model;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Model(c) => model::run(c),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
