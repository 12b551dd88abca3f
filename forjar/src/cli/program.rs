//! A user program's command line: the session its planned commands work on, and the dispatch
//! of every command.

use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::path::Path;

use petgraph::graph::NodeIndex;

use super::progress::Verbosity;
use super::{ExitCode, Failure, ProgramCli, ProgramCommand, profile, store};
use crate::derivation::Graph;
use crate::plan::Plan;
use crate::store::Store;

/// The state every program command works on.
pub(super) struct Session {
    pub(super) store: Store,
    pub(super) plan: Plan,
    pub(super) verbosity: Verbosity,
    pub(super) profile: String,
}

impl Session {
    /// Runs `define`, and plans its graph against the store at `store_dir`.
    fn open(
        define: impl FnOnce(&mut Graph) -> crate::Result<()>,
        store_dir: &Path,
        profile: String,
        verbosity: Verbosity,
    ) -> Result<ManuallyDrop<Session>, Failure> {
        // The graph and the session are left to the process's exit, not freed one allocation at a
        // time: in a no-op plan of 10,000 derivations the frees took a quarter of the CPU time.
        let mut graph = ManuallyDrop::new(Graph::new());
        define(&mut graph).map_err(|e| Failure::new(ExitCode::InvalidProgram, e))?;
        let store = Store::open(store_dir)?;
        let plan =
            Plan::new(&graph, &store).map_err(|e| Failure::new(ExitCode::InvalidProgram, e))?;
        for warning in &plan.warnings {
            let _ = writeln!(io::stderr().lock(), "warning: {warning}");
        }
        Ok(ManuallyDrop::new(Session {
            store,
            plan,
            verbosity,
            profile,
        }))
    }

    /// Exactly one node named `name`.
    pub(super) fn find(&self, name: &str) -> Result<Option<NodeIndex>, Failure> {
        match self.plan.find(name).as_slice() {
            [one] => Ok(Some(*one)),
            [] => Ok(None),
            many => Err(Failure::new(
                ExitCode::Usage,
                format!(
                    "`{name}` names {} nodes; name one by its store entry: {}",
                    many.len(),
                    many.iter()
                        .map(|&i| self.plan.entry_names(i).join(" "))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    pub(super) fn find_node(&self, name: &str) -> Result<NodeIndex, Failure> {
        self.find(name)?.ok_or_else(|| {
            Failure::new(
                ExitCode::Usage,
                format!("no derivation or source is named `{name}`; `plan` lists them"),
            )
        })
    }
}

/// Runs the command `cli` names on the program `define` describes.
pub(super) fn run(
    cli: ProgramCli,
    define: impl FnOnce(&mut Graph) -> crate::Result<()>,
) -> Result<ExitCode, Failure> {
    let store_dir = cli.store.unwrap_or_else(Store::default_dir);
    let profile = cli.profile.unwrap_or_else(default_profile);
    let verbosity = match (cli.quiet, cli.verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Verbose,
        _ => Verbosity::Normal,
    };
    match cli.command {
        ProgramCommand::Store(command) => store::run(&store_dir, command),
        ProgramCommand::Hash(command) => store::hash(command),
        ProgramCommand::Profile(command) => {
            profile::run(&Store::open(&store_dir)?, &profile, command)
        }
        ProgramCommand::Build(command) => {
            Session::open(define, &store_dir, profile, verbosity)?.run_build(command)
        }
        ProgramCommand::Inspect(command) => {
            Session::open(define, &store_dir, profile, verbosity)?.inspect(command)
        }
    }
}

/// The profile a program applies into when none is named: its file name.
fn default_profile() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .filter(|n| crate::name::Name::new(*n).is_ok())
        .unwrap_or("default")
        .to_string()
}
