//! `forjar`: the store tool. Hashes content and inspects, verifies and collects a store.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use forjar::cli::store::{self, EntryCommand, HashCommand, StoreCommand};
#[cfg(feature = "remote")]
use forjar::cli::worker::{self, WorkerArgs};
use forjar::cli::{ExitCode, Failure};
use forjar::store::Store;

/// forjar's store tool.
#[derive(Debug, Parser)]
#[command(
    name = "forjar",
    version,
    about = "Hash content; inspect, verify and garbage-collect a forjar store; run a remote worker"
)]
struct Cli {
    /// The store directory [default: $FORJAR_STORE, /var/lib/forjar/store for root, else
    /// ~/.local/share/forjar/store].
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Hash content.
    #[command(subcommand)]
    Hash(HashCommand),
    /// Download a URL (or read a path) and print the digests a fixed-output derivation of it
    /// declares: SHA-256 flat and recursive in Nix's SRI form, and forjar's tree digest.
    Prefetch {
        /// An `http://` or `https://` URL, or a path.
        target: String,
        /// As JSON: `{target, sha256, sha256_recursive, blake3}` (`sha256` null for a
        /// directory).
        #[arg(long)]
        json: bool,
    },
    /// Print a completion script for SHELL: `source <(forjar completions bash)`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Inspect and maintain the store.
    #[command(subcommand)]
    Store(StoreCommands),
    /// Run actions for a REAPI server (BuildGrid's Bots API), each in forjar's sandbox, with
    /// the store (--store) holding inputs and outputs.
    #[cfg(feature = "remote")]
    Worker(WorkerArgs),
}

#[derive(Debug, Subcommand)]
enum StoreCommands {
    #[command(flatten)]
    Store(StoreCommand),
    #[command(flatten)]
    Entry(EntryCommand),
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::Usage
            } else {
                ExitCode::Success
            }
            .into();
        }
    };
    let result: Result<ExitCode, Failure> = match cli.command {
        Command::Hash(command) => store::hash(command),
        Command::Prefetch { target, json } => store::prefetch(&target, json),
        Command::Completions { shell } => {
            forjar::cli::completions(<Cli as clap::CommandFactory>::command(), "forjar", shell)
        }
        #[cfg(feature = "remote")]
        Command::Worker(args) => worker::run(&cli.store.unwrap_or_else(Store::default_dir), args),
        Command::Store(command) => {
            let dir = cli.store.unwrap_or_else(Store::default_dir);
            match command {
                StoreCommands::Store(command) => store::run(&dir, command),
                StoreCommands::Entry(command) => Store::open_existing(&dir)
                    .map_err(Failure::from)
                    .and_then(|store| store::entry(&store, command)),
            }
        }
    };
    forjar::cli::report(result).into()
}
