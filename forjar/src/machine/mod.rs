//! Machines: hosts and what goes on them, made to match.
//!
//! A program describes each [`Machine`] (where it is reached, and its files, directories,
//! symlinks, users, groups, systemd units and hooks). `apply` makes each machine's *system*: a
//! store entry whose `manifest.json` lists every managed path with its digest, owner and mode,
//! and every unit ([`manifest`]). The controller asks the host which entries of the system's
//! closure it lacks (one round trip), sends only those ([`archive`]), and the agent on the host
//! — this same program, itself an entry of the closure — verifies each by its tree digest,
//! installs it with one rename, and activates the system ([`agent`]): a new generation, the
//! profile moved with one rename, files put in place atomically, users created, units started,
//! restarted or stopped as they changed, hooks run; on failure, the previous generation again.
//! The book's machines chapter has the details.

pub mod agent;
pub mod archive;
mod check;
mod delta;
pub mod deploy;
mod hostpath;
pub mod manifest;
mod model;
pub mod secret;
mod slim;
pub mod ssh;
mod unit_state;

use std::io::{self, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::hash::EntryName;

pub use check::{Check, Probe};
pub use model::{
    AbsPath, File, Group, GroupRef, Machine, Mode, Restart, ServiceType, Target, Unit, User,
    UserRef,
};
pub use secret::Secret;

/// Why a machine could not be planned or deployed.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The program's description of a machine is wrong.
    #[error("{0}")]
    Program(String),
    /// Something failed on or on the way to a host.
    #[error("{host}: {message}")]
    Host {
        /// The machine's name.
        host: String,
        /// What failed.
        message: String,
    },
    /// The controller's store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl MachineError {
    /// The message without the host's name.
    pub fn message(&self) -> String {
        match self {
            MachineError::Host { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    pub(crate) fn host(host: &str, message: String) -> MachineError {
        MachineError::Host {
            host: host.to_string(),
            message,
        }
    }
}

/// The agent's command line: `PROGRAM __agent --store DIR --state DIR COMMAND`.
#[derive(Debug, Parser)]
#[command(
    name = "__agent",
    about = "forjar's agent on a host (run by the controller)"
)]
struct AgentCli {
    /// The host's store.
    #[arg(long)]
    store: PathBuf,
    /// The host's machine state.
    #[arg(long, default_value = agent::STATE_DIR)]
    state: PathBuf,
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Reads entry names on stdin; prints which are missing and the current generation.
    Probe,
    /// Installs the uploaded agent binary as its entry.
    Adopt {
        #[arg(long, value_parser = EntryName::parse)]
        entry: EntryName,
        #[arg(long)]
        meta: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Makes the agent binary uploaded as a change to entry `base` (on stdin) in `file`.
    FromDelta {
        #[arg(long, value_parser = EntryName::parse)]
        base: EntryName,
        #[arg(long)]
        file: PathBuf,
    },
    /// Receives an entry stream on stdin.
    Receive,
    /// Activates a system (detached), following its log.
    Activate {
        #[arg(long)]
        request: String,
    },
    /// The detached activator.
    RunActivation {
        #[arg(long)]
        id: String,
        #[arg(long)]
        request: String,
    },
    /// Follows an activation to its outcome.
    Wait {
        #[arg(long)]
        id: String,
    },
    /// Confirms an activation that waits for it.
    Confirm {
        #[arg(long)]
        id: String,
    },
    /// Prints the generations.
    Generations,
    /// Prints the manifest of a generation.
    Manifest {
        #[arg(long)]
        generation: u64,
    },
    /// Reports (and repairs) drift.
    Drift {
        #[arg(long)]
        repair: bool,
    },
    /// Deletes generations (and their roots); prints the numbers deleted.
    DeleteGenerations {
        numbers: Vec<u64>,
        /// Seconds.
        #[arg(long)]
        older_than: Option<u64>,
        #[arg(long)]
        keep: Option<usize>,
    },
    /// Deletes what no generation and no deploy under way needs; prints what it deleted.
    Gc {
        #[arg(long)]
        dry_run: bool,
        /// Seconds to wait at most for processes that have the store open.
        #[arg(long)]
        wait: Option<u64>,
    },
}

/// Runs the agent with `args` (those after `__agent`); returns the process's exit status.
pub fn agent_main(args: Vec<std::ffi::OsString>) -> i32 {
    let cli = match AgentCli::try_parse_from(
        std::iter::once(std::ffi::OsString::from("__agent")).chain(args),
    ) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return 2;
        }
    };
    match run_agent(cli) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(io::stderr().lock(), "error: {e}");
            1
        }
    }
}

fn run_agent(cli: AgentCli) -> Result<i32, agent::AgentError> {
    let store = crate::store::Store::open(&cli.store)?;
    // The commands that only read the host (those of `plan`, `drift`, `generations`, `diff`)
    // leave a state directory that is not there as it is.
    let state = match cli.command {
        AgentCommand::Probe
        | AgentCommand::Generations
        | AgentCommand::Manifest { .. }
        | AgentCommand::Drift { repair: false }
        | AgentCommand::Gc { .. } => agent::State::at(&cli.state),
        _ => agent::State::open(&cli.state)?,
    };
    let print = |text: String| -> Result<i32, agent::AgentError> {
        let mut out = io::stdout().lock();
        writeln!(out, "{text}").map_err(|e| agent::AgentError(format!("cannot write: {e}")))?;
        Ok(0)
    };
    match cli.command {
        AgentCommand::Probe => {
            let wanted = agent::read_names(io::stdin().lock())?;
            let probe = agent::probe(&store, &state, &wanted)?;
            print(serde_json::to_string(&probe).expect("a probe serialises"))
        }
        AgentCommand::Adopt { entry, meta, file } => {
            agent::adopt(&store, &entry, &meta, &file)?;
            Ok(0)
        }
        AgentCommand::FromDelta { base, file } => {
            agent::from_delta(&store, &base, &file)?;
            Ok(0)
        }
        AgentCommand::Receive => {
            agent::receive(&store)?;
            Ok(0)
        }
        AgentCommand::Activate { request } => {
            let request = parse_request(&request)?;
            agent::activate(&store, &state, &request)?;
            Ok(0)
        }
        AgentCommand::RunActivation { id, request } => {
            let request = parse_request(&request)?;
            Ok(agent::run_activation(&store, &state, &id, &request))
        }
        AgentCommand::Wait { id } => {
            agent::follow(&state, &id)?;
            Ok(0)
        }
        AgentCommand::Confirm { id } => {
            agent::confirm(&state, &id)?;
            Ok(0)
        }
        AgentCommand::Generations => {
            let generations = state.generations()?;
            print(serde_json::to_string(&generations).expect("records serialise"))
        }
        AgentCommand::Manifest { generation } => {
            let system = agent::Sys::of(&state.generation(generation)?, &store);
            let manifest = agent::read_manifest(&system)?;
            print(manifest.to_json())
        }
        AgentCommand::Drift { repair } => {
            let drift = match repair {
                false => agent::drift(&store, &state)?,
                true => agent::repair(&store, &state)?,
            };
            print(serde_json::to_string(&drift).expect("drift serialises"))
        }
        AgentCommand::DeleteGenerations {
            numbers,
            older_than,
            keep,
        } => {
            let doomed = agent::Doomed {
                numbers,
                older_than,
                keep,
            };
            let deleted = agent::delete_generations(&store, &state, &doomed)?;
            print(serde_json::to_string(&deleted).expect("numbers serialise"))
        }
        AgentCommand::Gc { dry_run, wait } => {
            let wait = wait.map(std::time::Duration::from_secs);
            let collected = agent::gc(&store, dry_run, wait)?;
            print(serde_json::to_string(&collected).expect("a report serialises"))
        }
    }
}

fn parse_request(text: &str) -> Result<agent::Request, agent::AgentError> {
    serde_json::from_str(text).map_err(|e| agent::AgentError(format!("bad request: {e}")))
}
