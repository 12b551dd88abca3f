//! The command lines: the one every user program gets from [`main`], and the standalone
//! `forjar` store tool (`src/bin/forjar.rs`). Both share the store commands of [`store`].
//!
//! Exit codes (see [`ExitCode`]): 0 success, 1 the operation failed (a build, a damaged store,
//! an I/O error), 2 a bad command line, 3 an invalid program or derivation, 130 interrupted by
//! Ctrl-C (143 by SIGTERM).

mod progress;
pub mod store;
mod terminal;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use petgraph::graph::NodeIndex;

use self::progress::{Progress, Verbosity};
use self::store::human_bytes;
use crate::derivation::Graph;
use crate::exec::{self, ExecError, Executor, Local};
use crate::plan::{NodeKind, Plan, Status};
use crate::remote::Address;
use crate::remote::cache::Cache;
use crate::remote::executor::{Cached, Hybrid};
use crate::store::{EntryName, RootChanges, Store};

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
    fn from(e: crate::store::StoreError) -> Self {
        Failure::new(ExitCode::Failure, e)
    }
}

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
    let mut out = io::stdout().lock();
    let text = match out.is_terminal() {
        true => terminal::sanitise(text),
        false => std::borrow::Cow::Borrowed(text),
    };
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
                "error: {}",
                terminal::sanitise(&failure.message)
            );
            failure.code
        }
    }
}

/// The command line of a user program.
#[derive(Debug, Parser)]
#[command(about = "Plan, build and inspect this program's derivations")]
struct ProgramCli {
    /// The store directory [default: $FORJAR_STORE, /var/lib/forjar/store for root, else
    /// ~/.local/share/forjar/store].
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    /// The profile whose generations `apply` records [default: the program's file name].
    #[arg(long, global = true, value_name = "NAME")]
    profile: Option<String>,
    /// Print only errors and results.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Also print every build's log, each line prefixed with the derivation's name.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: ProgramCommand,
}

/// How to run builds.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// How many builds run at once [default: the number of cores].
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// After a failure, go on with everything that does not depend on it.
    #[arg(long)]
    keep_going: bool,
    /// Keep a failed build's directory and print where it is.
    #[arg(long)]
    keep_failed: bool,
    /// A REAPI remote cache (e.g. BuildGrid): each derivation is looked up there before it is
    /// built, and what is built here is uploaded.
    #[arg(
        long,
        value_name = "grpc://HOST:PORT[/INSTANCE]",
        env = "FORJAR_REMOTE"
    )]
    remote: Option<String>,
    /// A REAPI remote executor (e.g. BuildGrid with `forjar worker`s): a cache as with
    /// --remote, and what it does not have is built there (a `host-tools` build only by a
    /// worker on a host with the same software). Raise -j to keep more workers busy.
    #[arg(
        long,
        value_name = "grpc://HOST:PORT[/INSTANCE]",
        env = "FORJAR_REMOTE_EXEC",
        conflicts_with = "remote"
    )]
    remote_exec: Option<String>,
    /// When the remote cannot be reached at the start, warn and build everything here.
    #[arg(long)]
    remote_fallback: bool,
}

#[derive(Debug, Subcommand)]
enum ProgramCommand {
    /// Show every derivation and source with its key and status; builds and writes nothing.
    Plan {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build and import what the roots need, in the sandbox, register the roots, and record a
    /// generation.
    Apply {
        #[command(flatten)]
        run: RunArgs,
        /// Show the plan and do nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Build the named derivations and what they need, and print their outputs; registers no
    /// root.
    Build {
        /// Derivation names (or store entry names).
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Print the dependency graph.
    Graph {
        /// Graphviz DOT (the default).
        #[arg(long, conflicts_with = "json")]
        dot: bool,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show why A depends on B: a shortest chain of inputs from A to B.
    WhyDepends {
        /// The dependent (a derivation or source name, or a store entry name).
        a: String,
        /// The dependency.
        b: String,
    },
    /// Show a derivation: its request, key, outputs, and the meta.yaml of those built.
    Show {
        /// A derivation or source name, or a store entry.
        name: String,
    },
    /// Print a derivation's build log.
    Log {
        /// A derivation name, or a store entry.
        name: String,
    },
    /// Rebuild a derivation and compare the result with the store's, naming differing files.
    Check {
        /// A derivation name.
        name: String,
        /// How many times to rebuild.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        rounds: u16,
    },
    /// List the profile's generations with their time and what changed.
    Generations,
    /// Show what changed between two generations: entries added, removed and changed.
    Diff {
        /// The earlier generation.
        a: u64,
        /// The later generation.
        b: u64,
    },
    /// Delete generations, so that `gc` can free what only they kept. The current one stays.
    #[command(group = clap::ArgGroup::new("which").required(true).multiple(true))]
    DeleteGenerations {
        /// Generation numbers.
        #[arg(group = "which")]
        numbers: Vec<u64>,
        /// Every generation recorded longer ago than AGE (e.g. `30d`, `12h`).
        #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration, group = "which")]
        older_than: Option<Duration>,
        /// Every generation but the newest N.
        #[arg(long, value_name = "N", group = "which")]
        keep: Option<usize>,
    },
    /// Make an earlier generation current again, without building.
    Rollback {
        /// The generation [default: the one before the current one].
        #[arg(long, value_name = "N")]
        to: Option<u64>,
    },
    #[command(flatten)]
    Store(store::StoreCommand),
    /// Hash content.
    #[command(subcommand)]
    Hash(store::HashCommand),
}

/// The signal that interrupted an apply, or 0.
static INTERRUPT_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Set by the first SIGINT or SIGTERM; builds stop within a tenth of a second.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(signal: nix::libc::c_int) {
    // Only async-signal-safe work here: atomics and `_exit`.
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: `_exit` is async-signal-safe. A second signal means "stop now".
        unsafe { nix::libc::_exit(128 + signal) };
    }
    INTERRUPT_SIGNAL.store(signal, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM stop the running builds, remove their staging and exit with
/// 128 + the signal (130 for Ctrl-C). A second signal exits at once.
/// Raises this process's soft limit on open files to its hard limit, as Nix and cargo do: the
/// usual soft limit (1,024) is far below what the hard limit allows, and an apply holds files
/// for many builds at once.
pub(crate) fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn handle_interrupts() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only touches atomics and calls `_exit`.
        let _ = unsafe { sigaction(signal, &action) };
    }
}

/// Runs a user program: `define` adds its derivations to the graph, and the command line says
/// what to do with them. Exits the process with the command's [`ExitCode`]; returns only on
/// success.
///
/// ```no_run
/// fn main() -> forjar::Result<()> {
///     forjar::main(|g| {
///         let greeting = g.add(forjar::Derivation::builder("greeting").script("echo hi > $out").build()?);
///         g.root("greeting", greeting);
///         Ok(())
///     })
/// }
/// ```
pub fn main(define: impl FnOnce(&mut Graph) -> crate::Result<()>) -> crate::Result<()> {
    grow_heap_in_large_steps();
    raise_open_file_limit();
    let cli = match ProgramCli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                ExitCode::Usage as i32
            } else {
                0
            });
        }
    };
    let code = report(run_program(cli, define));
    if code != ExitCode::Success {
        std::process::exit(code as i32);
    }
    Ok(())
}

/// Asks glibc's allocator to grow each heap 32 MiB at a time (address space only; pages are
/// still taken as they are touched). Planning a large graph allocates from every thread of the
/// pool, and with the default step each thread's heap grows by `mprotect` calls that took a
/// sixth of a no-op plan of 10,000 derivations. The program owns its process, so the setting
/// is made here and not in the library.
fn grow_heap_in_large_steps() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets an allocator parameter under the allocator's own lock.
    unsafe {
        nix::libc::mallopt(nix::libc::M_TOP_PAD, 32 << 20);
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

/// What an interrupted or failed run exits with.
fn exec_failure(error: ExecError) -> Failure {
    match error {
        ExecError::Interrupted(_) => {
            let signal = INTERRUPT_SIGNAL.load(Ordering::SeqCst);
            let code = if signal == nix::libc::SIGTERM {
                ExitCode::Terminated
            } else {
                ExitCode::Interrupted
            };
            Failure::new(code, format!("{error}; their staging was removed"))
        }
        error => Failure::new(ExitCode::Failure, error),
    }
}

/// The state every program command works on.
struct Session {
    store: Store,
    plan: Plan,
    verbosity: Verbosity,
    profile: String,
}

impl Session {
    /// Exactly one node named `name`.
    fn find(&self, name: &str) -> Result<Option<NodeIndex>, Failure> {
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

    fn find_node(&self, name: &str) -> Result<NodeIndex, Failure> {
        self.find(name)?.ok_or_else(|| {
            Failure::new(
                ExitCode::Usage,
                format!("no derivation or source is named `{name}`; `plan` lists them"),
            )
        })
    }

    fn options(&self, run: &RunArgs) -> exec::Options {
        exec::Options {
            jobs: run.jobs.map_or(exec::Options::default().jobs, usize::from),
            keep_going: run.keep_going,
            interrupt: Some(&INTERRUPTED),
        }
    }

    /// The local sandbox, with the remote cache or executor composed around it if one is asked
    /// for.
    fn executor(&self, run: &RunArgs) -> Result<Box<dyn Executor>, Failure> {
        let local = Local {
            keep_failed: run.keep_failed,
            ..Local::default()
        };
        Ok(match self.remote(run)? {
            None => Box::new(local),
            Some(cache) if cache.executes() => Box::new(Cached {
                cache: cache.clone(),
                inner: Hybrid { cache, local },
            }),
            Some(cache) => Box::new(Cached {
                cache,
                inner: local,
            }),
        })
    }

    /// Connects to the remote cache or executor, if one is asked for.
    fn remote(&self, run: &RunArgs) -> Result<Option<Arc<Cache>>, Failure> {
        let nonempty = |t: &Option<String>| t.clone().filter(|t| !t.is_empty());
        let (text, execute) = match (nonempty(&run.remote), nonempty(&run.remote_exec)) {
            (_, Some(text)) => (text, true),
            (Some(text), None) => (text, false),
            (None, None) if run.remote_fallback => {
                return Err(Failure::new(
                    ExitCode::Usage,
                    "--remote-fallback needs --remote or --remote-exec",
                ));
            }
            (None, None) => return Ok(None),
        };
        let address = Address::parse(&text)?;
        let connected = if execute {
            Cache::connect_executor(&address)
        } else {
            Cache::connect(&address)
        };
        match connected {
            Ok(cache) => Ok(Some(Arc::new(cache))),
            Err(error) if run.remote_fallback && error.is_outage() => {
                if self.verbosity != Verbosity::Quiet {
                    eprintln!(
                        "warning: {}; building here (--remote-fallback)",
                        terminal::sanitise(&error.to_string())
                    );
                }
                Ok(None)
            }
            Err(error) if error.is_outage() => Err(Failure::new(
                ExitCode::Failure,
                format!("{error}; or pass --remote-fallback to build here when it is down"),
            )),
            Err(error) => Err(error.into()),
        }
    }

    /// Realises `nodes` with a progress display.
    fn realise(
        &self,
        nodes: &[NodeIndex],
        executor: &dyn Executor,
        options: &exec::Options,
    ) -> Result<exec::Report, Failure> {
        handle_interrupts();
        let to_do = nodes
            .iter()
            .filter(|&&n| self.plan.node(n).status != Status::Cached)
            .count();
        let progress = Progress::new(self.verbosity, to_do);
        let result = exec::realise_all(
            &self.plan,
            &self.store,
            nodes,
            executor,
            options,
            &|event| progress.observe(event),
        );
        progress.finish();
        result.map_err(exec_failure)
    }

    fn apply(&self, run: &RunArgs) -> Result<ExitCode, Failure> {
        let report = self.realise(
            &exec::needed(&self.plan),
            &*self.executor(run)?,
            &self.options(run),
        )?;
        let roots: BTreeMap<String, EntryName> = exec::register_roots(&self.plan, &self.store)?
            .into_iter()
            .collect();
        let mut text = String::new();
        for (name, entry) in &roots {
            let _ = writeln!(
                text,
                "{name} -> {}",
                self.store.content_path(entry).display()
            );
        }
        let _ = writeln!(text, "{report}");
        if !roots.is_empty() {
            let (generation, new) = self.store.profile(&self.profile)?.record(roots)?;
            let _ = writeln!(
                text,
                "{} {} of profile `{}`",
                if new {
                    "Recorded generation"
                } else {
                    "Still generation"
                },
                generation.number,
                self.profile
            );
        }
        emit(&text)?;
        Ok(ExitCode::Success)
    }

    fn build(&self, names: &[String], run: &RunArgs) -> Result<ExitCode, Failure> {
        let targets = names
            .iter()
            .map(|n| self.find_node(n))
            .collect::<Result<Vec<_>, _>>()?;
        let report = self.realise(
            &exec::needed_for(&self.plan, targets.iter().copied()),
            &*self.executor(run)?,
            &self.options(run),
        )?;
        let mut text = String::new();
        for &target in &targets {
            for entry in self.plan.entry_names(target) {
                let _ = writeln!(
                    text,
                    "{} -> {}",
                    self.plan.node(target).name,
                    self.store.dir().join(&entry).join("content").display()
                );
            }
        }
        let _ = writeln!(text, "{report}");
        emit(&text)?;
        Ok(ExitCode::Success)
    }

    fn show(&self, name: &str) -> Result<ExitCode, Failure> {
        let Some(index) = self.find(name)? else {
            let entry = self.store.resolve(name)?;
            emit(&store::show_entry(&self.store, &entry)?)?;
            return Ok(ExitCode::Success);
        };
        let node = self.plan.node(index);
        let mut text = format!("name: {}\n", node.name);
        if let Some(location) = &node.location {
            let _ = writeln!(text, "location: {location}");
        }
        let _ = writeln!(text, "status: {}", node.status.as_str());
        let indent = |yaml: String| -> String {
            yaml.lines().map(|l| format!("  {l}\n")).collect::<String>()
        };
        let entries: Vec<(String, EntryName)> = match &node.kind {
            NodeKind::Derivation {
                request,
                key,
                outputs,
                ..
            } => {
                let _ = writeln!(text, "key: {key}");
                let _ = writeln!(text, "request:");
                text.push_str(&indent(
                    serde_yaml_ng::to_string(request).unwrap_or_else(|e| format!("({e})")),
                ));
                outputs
                    .iter()
                    .map(|(o, p)| (o.to_string(), p.entry.clone()))
                    .collect()
            }
            NodeKind::Source {
                path,
                digest,
                entry,
            } => {
                let _ = writeln!(text, "path: {}", path.display());
                let _ = writeln!(text, "digest: {digest}");
                vec![("out".to_string(), entry.clone())]
            }
        };
        for (output, entry) in entries {
            let _ = writeln!(
                text,
                "output {output}: {}",
                self.store.entry_path(&entry).display()
            );
            if self.store.contains(&entry) {
                text.push_str(&indent(self.store.meta(&entry)?.to_yaml()));
            } else {
                text.push_str("  (not in the store)\n");
            }
        }
        emit(&text)?;
        Ok(ExitCode::Success)
    }

    fn log(&self, name: &str) -> Result<ExitCode, Failure> {
        let Some(index) = self.find(name)? else {
            let entry = self.store.resolve(name)?;
            emit(&String::from_utf8_lossy(&self.store.log(&entry)?))?;
            return Ok(ExitCode::Success);
        };
        let node = self.plan.node(index);
        let NodeKind::Derivation { key, .. } = &node.kind else {
            return Err(Failure::new(
                ExitCode::Failure,
                format!("`{name}` is a source; sources are imported, not built, and have no log"),
            ));
        };
        let path = self.store.log_path(&key.store_hash());
        match std::fs::read(&path) {
            Ok(log) => emit(&String::from_utf8_lossy(&log))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Failure::new(
                    ExitCode::Failure,
                    format!(
                        "`{name}` has no build log in this store: it has not been built here (status: {}); `build {name}` builds it",
                        node.status.as_str()
                    ),
                ));
            }
            Err(e) => {
                return Err(Failure::new(
                    ExitCode::Failure,
                    format!("cannot read `{}`: {e}", path.display()),
                ));
            }
        }
        Ok(ExitCode::Success)
    }

    fn check(&self, name: &str, rounds: u16) -> Result<ExitCode, Failure> {
        let index = self.find_node(name)?;
        if !matches!(self.plan.node(index).kind, NodeKind::Derivation { .. }) {
            return Err(Failure::new(
                ExitCode::Usage,
                format!("`{name}` is a source; only derivations are rebuilt"),
            ));
        }
        let options = exec::Options {
            interrupt: Some(&INTERRUPTED),
            ..exec::Options::default()
        };
        let local = Local::default();
        self.realise(&exec::needed_for(&self.plan, [index]), &local, &options)?;
        let progress = Progress::new(self.verbosity, 0);
        let mut text = String::new();
        let mut mismatch = false;
        for round in 1..=rounds {
            if INTERRUPTED.load(Ordering::SeqCst) {
                return Err(exec_failure(ExecError::Interrupted(vec![name.to_string()])));
            }
            let started = std::time::Instant::now();
            let checked = exec::check(&self.plan, &self.store, index, &local, &INTERRUPTED, &|e| {
                progress.observe(e)
            })
            .map_err(|e| match e {
                ExecError::Cancelled(name) => exec_failure(ExecError::Interrupted(vec![name])),
                e => exec_failure(e),
            })?;
            for output in &checked {
                if output.matches() {
                    let _ = writeln!(
                        text,
                        "round {round}: {} output `{}` matches the store ({}, rebuilt in {:.1}s)",
                        name,
                        output.output,
                        output.got,
                        started.elapsed().as_secs_f64()
                    );
                } else {
                    mismatch = true;
                    let _ = writeln!(
                        text,
                        "round {round}: {name} output `{}` differs from the store: {} in the store, {} rebuilt",
                        output.output, output.expected, output.got
                    );
                    for difference in &output.differences {
                        let _ = writeln!(text, "  {difference}");
                    }
                }
            }
            if mismatch {
                break;
            }
        }
        progress.finish();
        emit(&text)?;
        if mismatch {
            return Err(Failure::new(
                ExitCode::Failure,
                format!("`{name}` is not reproducible: a rebuild differs from the store"),
            ));
        }
        Ok(ExitCode::Success)
    }
}

fn run_program(
    cli: ProgramCli,
    define: impl FnOnce(&mut Graph) -> crate::Result<()>,
) -> Result<ExitCode, Failure> {
    let store_dir = cli.store.unwrap_or_else(Store::default_dir);
    let profile = cli.profile.unwrap_or_else(default_profile);
    let command = match cli.command {
        ProgramCommand::Store(command) => return store::run(&store_dir, command),
        ProgramCommand::Hash(command) => return store::hash(command),
        ProgramCommand::Generations => return generations(&Store::open(&store_dir)?, &profile),
        ProgramCommand::Diff { a, b } => return diff(&Store::open(&store_dir)?, &profile, a, b),
        ProgramCommand::Rollback { to } => {
            return rollback(&Store::open(&store_dir)?, &profile, to);
        }
        ProgramCommand::DeleteGenerations {
            numbers,
            older_than,
            keep,
        } => {
            let store = Store::open(&store_dir)?;
            return delete_generations(&store, &profile, &numbers, older_than, keep);
        }
        command => command,
    };
    // The graph and the session are left to the process's exit, not freed one allocation at a
    // time: in a no-op plan of 10,000 derivations the frees took a quarter of the CPU time.
    let mut graph = ManuallyDrop::new(Graph::new());
    define(&mut graph).map_err(|e| Failure::new(ExitCode::InvalidProgram, e))?;
    let store = Store::open(&store_dir)?;
    let plan = Plan::new(&graph, &store).map_err(|e| Failure::new(ExitCode::InvalidProgram, e))?;
    for warning in &plan.warnings {
        let _ = writeln!(io::stderr().lock(), "warning: {warning}");
    }
    let verbosity = match (cli.quiet, cli.verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Verbose,
        _ => Verbosity::Normal,
    };
    let session = ManuallyDrop::new(Session {
        store,
        plan,
        verbosity,
        profile,
    });
    let plan = &session.plan;
    match command {
        ProgramCommand::Plan { json: true } | ProgramCommand::Graph { json: true, .. } => {
            emit(&format!("{:#}\n", plan.to_json()))?;
        }
        ProgramCommand::Plan { json: false } => emit(&render_plan(plan))?,
        ProgramCommand::Apply { dry_run: true, .. } => {
            emit(&render_plan(plan))?;
            emit("dry run: nothing was built, imported or registered\n")?;
        }
        ProgramCommand::Apply {
            dry_run: false,
            run,
        } => return session.apply(&run),
        ProgramCommand::Build { names, run } => return session.build(&names, &run),
        ProgramCommand::Graph { .. } => emit(&plan.to_dot())?,
        ProgramCommand::WhyDepends { a, b } => {
            let (from, to) = (session.find_node(&a)?, session.find_node(&b)?);
            let Some(chain) = plan.why_depends(from, to) else {
                emit(&format!("`{a}` does not depend on `{b}`\n"))?;
                return Ok(ExitCode::Failure);
            };
            let mut text = String::new();
            for (depth, (node, input)) in chain.iter().enumerate() {
                let indent = if depth == 0 {
                    String::new()
                } else {
                    format!("{}└── ", "    ".repeat(depth - 1))
                };
                let via = input
                    .as_ref()
                    .map(|i| format!("  (input `{i}`)"))
                    .unwrap_or_default();
                text.push_str(&format!("{indent}{}{via}\n", plan.node(*node).name));
            }
            emit(&text)?;
        }
        ProgramCommand::Show { name } => return session.show(&name),
        ProgramCommand::Log { name } => return session.log(&name),
        ProgramCommand::Check { name, rounds } => return session.check(&name, rounds),
        ProgramCommand::Store(_)
        | ProgramCommand::Hash(_)
        | ProgramCommand::Generations
        | ProgramCommand::Diff { .. }
        | ProgramCommand::Rollback { .. }
        | ProgramCommand::DeleteGenerations { .. } => {
            unreachable!("handled before planning")
        }
    }
    Ok(ExitCode::Success)
}

fn generations(store: &Store, profile: &str) -> Result<ExitCode, Failure> {
    let profile = store.profile(profile)?;
    let current = profile.current()?;
    let generations = profile.generations()?;
    if generations.is_empty() {
        emit(&format!(
            "profile `{}` has no generations yet; `apply` records one\n",
            profile.name()
        ))?;
        return Ok(ExitCode::Success);
    }
    let mut text = String::new();
    let mut before = BTreeMap::new();
    for generation in &generations {
        let changes = RootChanges::between(&before, &generation.roots);
        let mut summary: Vec<String> = Vec::new();
        summary.extend(changes.added.iter().map(|r| format!("+{r}")));
        summary.extend(changes.changed.iter().map(|r| format!("~{r}")));
        summary.extend(changes.removed.iter().map(|r| format!("-{r}")));
        if summary.is_empty() {
            summary.push("(same roots)".into());
        }
        let _ = writeln!(
            text,
            "{} {:>4}  {}  {}",
            if current == Some(generation.number) {
                '*'
            } else {
                ' '
            },
            generation.number,
            humantime::format_rfc3339_seconds(generation.created()),
            summary.join(" ")
        );
        before = generation.roots.clone();
    }
    emit(&text)?;
    Ok(ExitCode::Success)
}

fn diff(store: &Store, profile: &str, a: u64, b: u64) -> Result<ExitCode, Failure> {
    let profile = store.profile(profile)?;
    let (from, to) = (profile.read(a)?, profile.read(b)?);
    let contents = |roots: &BTreeMap<String, EntryName>| -> Result<BTreeMap<String, (BTreeSet<EntryName>, u64)>, Failure> {
        let mut by_name: BTreeMap<String, (BTreeSet<EntryName>, u64)> = BTreeMap::new();
        for entry in store.closure(roots.values().cloned())? {
            let size = store.meta(&entry)?.size;
            let slot = by_name.entry(entry.name().to_string()).or_default();
            slot.0.insert(entry);
            slot.1 += size;
        }
        Ok(by_name)
    };
    let (left, right) = (contents(&from.roots)?, contents(&to.roots)?);
    let mut text = String::new();
    let names: BTreeSet<&String> = left.keys().chain(right.keys()).collect();
    for name in names {
        match (left.get(name), right.get(name)) {
            (None, Some((_, size))) => {
                let _ = writeln!(text, "+ {name}  {}", human_bytes(*size));
            }
            (Some((_, size)), None) => {
                let _ = writeln!(text, "- {name}  {}", human_bytes(*size));
            }
            (Some((old, old_size)), Some((new, new_size))) if old != new => {
                let _ = writeln!(
                    text,
                    "~ {name}  {} -> {}",
                    human_bytes(*old_size),
                    human_bytes(*new_size)
                );
            }
            _ => {}
        }
    }
    if text.is_empty() {
        text = format!("generations {a} and {b} hold the same entries\n");
    }
    emit(&text)?;
    Ok(ExitCode::Success)
}

fn delete_generations(
    store: &Store,
    profile: &str,
    numbers: &[u64],
    older_than: Option<Duration>,
    keep: Option<usize>,
) -> Result<ExitCode, Failure> {
    let profile = store.profile(profile)?;
    let current = profile.current()?;
    let generations = profile.generations()?;
    // Named numbers are taken as given (naming the current one is an error); the current one is
    // left out of what the age and count select.
    let mut doomed: BTreeSet<u64> = numbers.iter().copied().collect();
    let not_current = |number: u64| current != Some(number);
    if let Some(age) = older_than {
        let cutoff = SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH);
        doomed.extend(
            generations
                .iter()
                .filter(|g| g.created() < cutoff && not_current(g.number))
                .map(|g| g.number),
        );
    }
    if let Some(keep) = keep {
        let older = generations.len().saturating_sub(keep);
        doomed.extend(
            generations[..older]
                .iter()
                .map(|g| g.number)
                .filter(|&n| not_current(n)),
        );
    }
    if doomed.is_empty() {
        emit(&format!(
            "no generation of profile `{}` matches; nothing was deleted\n",
            profile.name()
        ))?;
        return Ok(ExitCode::Success);
    }
    profile.delete(&doomed)?;
    let list: Vec<String> = doomed.iter().map(u64::to_string).collect();
    emit(&format!(
        "Deleted generation{} {} of profile `{}`; `gc` frees what only they kept\n",
        if doomed.len() == 1 { "" } else { "s" },
        list.join(", "),
        profile.name()
    ))?;
    Ok(ExitCode::Success)
}

fn rollback(store: &Store, profile: &str, to: Option<u64>) -> Result<ExitCode, Failure> {
    let profile = store.profile(profile)?;
    let current = profile.current()?;
    let target = match to {
        Some(n) => n,
        None => {
            let Some(current) = current else {
                return Err(Failure::new(
                    ExitCode::Failure,
                    format!(
                        "profile `{}` has no generations to roll back",
                        profile.name()
                    ),
                ));
            };
            profile
                .generations()?
                .iter()
                .map(|g| g.number)
                .filter(|&n| n < current)
                .max()
                .ok_or_else(|| {
                    Failure::new(
                        ExitCode::Failure,
                        format!(
                            "generation {current} is the oldest of profile `{}`; there is nothing to roll back to",
                            profile.name()
                        ),
                    )
                })?
        }
    };
    let generation = profile.switch(target)?;
    let mut text = String::new();
    for (name, entry) in &generation.roots {
        let _ = writeln!(text, "{name} -> {}", store.content_path(entry).display());
    }
    let _ = writeln!(
        text,
        "Generation {} of profile `{}` is current (was {})",
        generation.number,
        profile.name(),
        current.map_or("none".to_string(), |c| c.to_string())
    );
    emit(&text)?;
    Ok(ExitCode::Success)
}

/// The plan as people read it: one line per node, dependencies first, then a summary.
pub fn render_plan(plan: &Plan) -> String {
    let rows: Vec<[String; 4]> = plan
        .nodes()
        .map(|(_, node)| {
            let (entry, origin) = match &node.kind {
                NodeKind::Derivation { outputs, .. } => (
                    outputs
                        .values()
                        .map(|o| o.entry.to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                    node.location.clone().unwrap_or_default(),
                ),
                NodeKind::Source { entry, path, .. } => {
                    (entry.to_string(), path.display().to_string())
                }
            };
            let status = if node.impure {
                format!("{}*", node.status.as_str())
            } else {
                node.status.as_str().to_string()
            };
            [status, node.name.to_string(), origin, entry]
        })
        .collect();
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut text = String::with_capacity(rows.len() * (w0 + w1 + w2 + 48));
    for [status, name, origin, entry] in &rows {
        let _ = writeln!(text, "{status:<w0$}  {name:<w1$}  {origin:<w2$}  {entry}");
    }
    if plan.nodes().any(|(_, n)| n.impure) {
        text.push_str(
            "* impure: sees the host's tools (host-tools); keyed by a host fingerprint\n",
        );
    }
    let s = plan.summary();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    text.push_str(&format!(
        "Plan: {} to build, {} cached, {} to import\n",
        s.build,
        s.cached,
        plural(s.import, "source", "sources")
    ));
    text
}
