//! The command lines: the one every user program gets from [`main`], and the standalone
//! `forjar` store tool (`src/bin/forjar.rs`). Both share the store commands of [`store`].
//!
//! Exit codes (see [`ExitCode`]): 0 success, 1 the operation failed (a build, a damaged store,
//! an I/O error), 2 a bad command line, 3 an invalid program or derivation, 4 a host rolled back
//! (its activation failed), 130 interrupted by Ctrl-C (143 by SIGTERM).

mod build;
mod fleet;
mod inspect;
mod machine;
mod process;
mod profile;
mod program;
mod progress;
#[cfg(feature = "remote")]
mod remote;
pub mod store;
mod terminal;
#[cfg(feature = "remote")]
pub mod worker;

pub use inspect::render_plan;

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::derivation::{Graph, OutputRef};
use crate::machine::Machine;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Everything worked.
    Success = 0,
    /// The operation failed: a build, a damaged store entry, an I/O error.
    Failure = 1,
    /// The command line was wrong.
    Usage = 2,
    /// The program or one of its derivations is invalid.
    InvalidProgram = 3,
    /// A host's activation failed and the host went back to its previous generation by itself.
    RolledBack = 4,
    /// Ctrl-C (SIGINT) stopped it; the running builds were stopped and their staging removed.
    Interrupted = 130,
    /// SIGTERM stopped it, as with [`ExitCode::Interrupted`].
    Terminated = 143,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}

/// A program's `main` may return the code: `fn main() -> forjar::ExitCode`.
impl std::process::Termination for ExitCode {
    fn report(self) -> std::process::ExitCode {
        self.into()
    }
}

/// A command's failure: its message and exit code.
#[derive(Debug)]
pub struct Failure {
    /// What to print after `error: `.
    pub message: String,
    /// How to exit.
    pub code: ExitCode,
}

impl Failure {
    pub(crate) fn new(code: ExitCode, message: impl ToString) -> Self {
        Failure {
            message: message.to_string(),
            code,
        }
    }
}

impl From<crate::store::StoreError> for Failure {
    /// A name on the command line that names no entry, or several, is a usage error (2), as a
    /// node name that names nothing is; every other store error is a failure (1).
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        let code = match e {
            StoreError::NoSuchEntry(_) | StoreError::Ambiguous { .. } => ExitCode::Usage,
            _ => ExitCode::Failure,
        };
        Failure::new(code, e)
    }
}

#[cfg(feature = "remote")]
impl From<crate::remote::RemoteError> for Failure {
    fn from(e: crate::remote::RemoteError) -> Self {
        let code = match e {
            crate::remote::RemoteError::Address { .. } => ExitCode::Usage,
            _ => ExitCode::Failure,
        };
        Failure::new(code, e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::new(ExitCode::Failure, e)
    }
}

/// Writes to standard output; a reader that went away (`| head`) ends output quietly.
/// On a terminal, control characters are shown as escapes ([`terminal::sanitise`]); a pipe or
/// a file gets the text as it is.
pub(crate) fn emit(text: &str) -> Result<(), Failure> {
    write_out(text, false)
}

/// [`emit`] for a plan or a list of changes, coloured as [`terminal::paint_changes`] says when
/// standard output takes colour.
pub(crate) fn emit_changes(text: &str) -> Result<(), Failure> {
    write_out(text, true)
}

fn write_out(text: &str, changes: bool) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    let is_terminal = out.is_terminal();
    let mut text = match is_terminal {
        true => terminal::sanitise(text),
        false => std::borrow::Cow::Borrowed(text),
    };
    if changes && terminal::colour(is_terminal) {
        text = std::borrow::Cow::Owned(terminal::paint_changes(&text));
    }
    match out.write_all(text.as_bytes()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Prints a failure to standard error and returns the exit code to end with.
pub fn report(result: Result<ExitCode, Failure>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(failure) => {
            let _ = writeln!(
                io::stderr().lock(),
                "{}",
                terminal::message("error", &failure.message)
            );
            failure.code
        }
    }
}

/// The command line of a user program.
#[derive(Debug, Parser)]
#[command(
    about = "Plan, build and inspect this program's derivations",
    version = concat!("(forjar ", env!("CARGO_PKG_VERSION"), ")")
)]
struct ProgramCli {
    /// The store directory [default: $FORJAR_STORE, /var/lib/forjar/store for root, else
    /// ~/.local/share/forjar/store].
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    /// The profile whose generations `apply` records [default: the program's binary target,
    /// e.g. its package's name].
    #[arg(long, global = true, value_name = "NAME")]
    profile: Option<String>,
    /// Print only errors and results.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Also print every build's log, each line prefixed with the derivation's name.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// The machines to plan, apply, check for drift, list, roll back or clean up
    /// (`delete-generations`, `gc`): names, `@tag`s and globs, comma-separated [default: all
    /// of them].
    #[arg(long, global = true, value_name = "MACHINES")]
    on: Option<String>,
    /// An ssh config file to reach the machines with, instead of `~/.ssh/config`.
    #[arg(long, global = true, value_name = "FILE", env = "FORJAR_SSH_CONFIG")]
    ssh_config: Option<PathBuf>,
    /// How many machines to reach at once.
    #[arg(long, global = true, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_hosts: u16,
    /// The lock file pinning the program's toolchains [default: forjar.lock beside the
    /// program's Cargo.toml when cargo runs it, else in the working directory].
    #[arg(long, global = true, value_name = "FILE", env = "FORJAR_LOCK")]
    lock: Option<PathBuf>,
    /// When to colour: auto (on a terminal, unless NO_COLOR is set; CLICOLOR_FORCE forces
    /// it), always or never.
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto")]
    color: clap::ColorChoice,
    #[command(subcommand)]
    command: ProgramCommand,
}

/// Every command of a user program, by group.
#[derive(Debug, Subcommand)]
enum ProgramCommand {
    #[command(flatten)]
    Build(build::BuildCommand),
    #[command(flatten)]
    Inspect(inspect::InspectCommand),
    #[command(flatten)]
    Profile(profile::ProfileCommand),
    #[command(flatten)]
    Machine(machine::MachineCommand),
    #[command(flatten)]
    Store(store::StoreCommand),
    /// Hash content.
    #[command(subcommand)]
    Hash(store::HashCommand),
    /// Resolve the program's toolchains against the packages installed now, import them, and
    /// pin them in the lock file.
    #[command(display_order = 9)]
    Lock {
        /// As JSON: a list of `{name, result, packages, bytes, entry, changes}` and the lock's
        /// `path`.
        #[arg(long)]
        json: bool,
    },
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
    /// Print a completion script for SHELL (`source <(PROGRAM completions bash)`, the program
    /// named as it runs).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Writes the completion script of `command`, named `name`, for `shell` to standard output.
pub fn completions(
    mut command: clap::Command,
    name: &str,
    shell: clap_complete::Shell,
) -> Result<ExitCode, Failure> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    emit(&String::from_utf8_lossy(&script))?;
    Ok(ExitCode::Success)
}

/// The colour `--color` asks for, read before the command line is parsed so that `--help` and
/// usage errors follow it too.
fn colour_asked() -> clap::ColorChoice {
    let args: Vec<String> = std::env::args().collect();
    let asked = args
        .iter()
        .enumerate()
        .find_map(|(i, arg)| match arg.strip_prefix("--color") {
            Some(rest) if rest.starts_with('=') => Some(rest[1..].to_string()),
            Some("") => args.get(i + 1).cloned(),
            _ => None,
        });
    let choice = match asked.as_deref() {
        Some("always") => clap::ColorChoice::Always,
        Some("never") => clap::ColorChoice::Never,
        _ => clap::ColorChoice::Auto,
    };
    terminal::set_colour_choice(choice);
    terminal::clap_choice()
}

/// The program's name: its file's.
fn program_name() -> String {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "program".into())
}

/// Runs a user program: `define` adds its derivations to the graph, and the command line says
/// what to do with them. Evaluates to the command's [`ExitCode`] for `main` to end with, having
/// printed any error. The program's profile is named after its binary target (the package's
/// name for `src/main.rs`) unless `--profile` names another.
///
/// ```no_run
/// fn main() -> forjar::ExitCode {
///     forjar::main!(|g| {
///         let greeting = g.add(forjar::Derivation::builder("greeting").script("echo hi > $out").build()?);
///         g.root("greeting", greeting);
///         Ok(())
///     })
/// }
/// ```
#[macro_export]
macro_rules! main {
    ($define:expr $(,)?) => {
        $crate::cli::__main($crate::__target_name!(), $define)
    };
}

/// [`main!`] for a program with command-line options of its own: `O` is a `clap::Args` struct
/// whose arguments join forjar's (mark them `global = true` to take them after the command as
/// well), and `define` gets them as they were given.
///
/// ```no_run
/// use forjar::prelude::*;
///
/// #[derive(clap::Args)]
/// struct Options {
///     /// Which environment to configure.
///     #[arg(long, global = true, default_value = "dev")]
///     env: String,
/// }
///
/// fn main() -> forjar::ExitCode {
///     forjar::main_with!(|g, options: Options| {
///         let config = g.add(
///             Derivation::builder("config")
///                 .env("ENVIRONMENT", options.env)
///                 .script("printf '%s\\n' \"$ENVIRONMENT\" > $out")
///                 .build()?,
///         );
///         g.root("config", config);
///         Ok(())
///     })
/// }
/// ```
#[macro_export]
macro_rules! main_with {
    ($define:expr $(,)?) => {
        $crate::cli::__main_with($crate::__target_name!(), $define)
    };
}

/// The name of the binary target being compiled (an example's name for an example), else the
/// package's: what a program's profile is named after.
#[doc(hidden)]
#[macro_export]
macro_rules! __target_name {
    () => {
        match ::core::option_env!("CARGO_BIN_NAME") {
            ::core::option::Option::Some(name) => name,
            ::core::option::Option::None => ::core::env!("CARGO_PKG_NAME"),
        }
    };
}

/// What [`main!`] expands to.
#[doc(hidden)]
pub fn __main(target: &str, define: impl FnOnce(&mut Program) -> crate::Result<()>) -> ExitCode {
    __main_with(target, |program, NoOptions {}| define(program))
}

/// No options of the program's own.
#[derive(Debug, clap::Args)]
#[doc(hidden)]
pub struct NoOptions {}

/// What [`main_with!`] expands to.
#[doc(hidden)]
pub fn __main_with<O: clap::Args>(
    target: &str,
    define: impl FnOnce(&mut Program, O) -> crate::Result<()>,
) -> ExitCode {
    // On a host, the program is the agent of the system it is part of.
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(std::ffi::OsStr::new("__agent")) {
        return match crate::machine::agent_main(args.collect()) {
            0 => ExitCode::Success,
            2 => ExitCode::Usage,
            _ => ExitCode::Failure,
        };
    }
    process::grow_heap_in_large_steps();
    process::raise_open_file_limit();
    // Named after the program's file, as `--version` and `--help` show it; with the program's
    // own options.
    let name = program_name();
    let command = O::augment_args(
        <ProgramCli as clap::CommandFactory>::command()
            .mut_subcommand("completions", |completions| {
                completions.about(format!(
                    "Print a completion script for SHELL: `source <({name} completions bash)`"
                ))
            })
            .display_name(name),
    )
    .color(colour_asked());
    let parsed = command.clone().try_get_matches().and_then(|matches| {
        Ok((
            <ProgramCli as clap::FromArgMatches>::from_arg_matches(&matches)?,
            O::from_arg_matches(&matches)?,
        ))
    });
    match parsed {
        Ok((cli, options)) => {
            if matches!(&cli.command, ProgramCommand::Build(command) if command.builds()) {
                // Builds are forked from a process made now, before the program defines its
                // graph: their cost does not grow with it. A failure is the first build's to
                // report.
                let _ = crate::sandbox::start_spawner();
            }
            report(program::run(cli, target, command, |program| {
                define(program, options)
            }))
        }
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                ExitCode::Usage
            } else {
                ExitCode::Success
            }
        }
    }
}

/// What a program describes: its derivations (the [`Graph`], which this dereferences to) and
/// its machines.
pub struct Program {
    graph: Graph,
    pub(crate) machines: Vec<Machine>,
    /// The graph root each machine file's derivation output was registered under.
    pub(crate) machine_roots: std::collections::HashMap<OutputRef, String>,
}

impl Program {
    pub(crate) fn new() -> Program {
        Program {
            graph: Graph::new(),
            machines: Vec::new(),
            machine_roots: std::collections::HashMap::new(),
        }
    }

    /// Adds a machine: `apply` builds what its files need and makes the host match.
    pub fn machine(&mut self, machine: Machine) {
        for output in machine.file_outputs() {
            if !self.machine_roots.contains_key(output) {
                let root = format!(
                    "machine.{}.{}",
                    machine.name(),
                    self.machine_roots.len() + 1
                );
                self.graph.root(&root, output.clone());
                self.machine_roots.insert(output.clone(), root);
            }
        }
        self.machines.push(machine);
    }

    /// The machines added so far.
    pub fn machines(&self) -> &[Machine] {
        &self.machines
    }

    /// The checks on the machines that could not be made as they were described: a mistake
    /// of each, named with the machine and where it was made.
    pub(crate) fn machine_errors(&self) -> Option<String> {
        let mut errors = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for machine in &self.machines {
            if !names.insert(machine.name()) {
                errors.push(format!(
                    "machine `{}` (at {}) is added twice",
                    machine.name(),
                    machine.location
                ));
            }
            for error in &machine.errors {
                errors.push(format!(
                    "machine `{}` (at {}): {error}",
                    machine.name(),
                    machine.location
                ));
            }
        }
        (!errors.is_empty()).then(|| errors.join("\n"))
    }
}

impl std::ops::Deref for Program {
    type Target = Graph;
    fn deref(&self) -> &Graph {
        &self.graph
    }
}

impl std::ops::DerefMut for Program {
    fn deref_mut(&mut self) -> &mut Graph {
        &mut self.graph
    }
}
