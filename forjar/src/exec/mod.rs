//! Realising a plan: a parallel scheduler over the DAG, and each build as one job run by an
//! executor.
//!
//! The scheduler ([`realise_all`]) runs up to `jobs` builds and imports at once, always starting
//! the ready node with the longest chain of work still behind it (critical path first). Cached
//! nodes are settled on the spot and take no job. A failure stops the apply (cancelling the
//! running builds) unless `keep_going`, where it stops only what depends on it.
//!
//! A derivation's build is a [`BuildJob`]. [`run_job`] takes the key's lock and hands the job,
//! unless its outputs are in the store by then, to an [`Executor`]: [`Local`] builds it in the
//! sandbox; the remote cache and remote execution (in `remote`) are executors composed around
//! it, as buck2's caching and hybrid executors are around its local one.

mod check;
mod enter;
mod local;
mod scheduler;

pub use check::{CheckedOutput, check};
pub use enter::{SHELL, enter, enter_needs};
pub use local::Local;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use petgraph::graph::NodeIndex;

use crate::hash::Key;
use crate::map::SortedMap;
use crate::name::{Limits, Name, OutputName};
use crate::plan::{Node, NodeKind, Plan, PlannedOutput};
use crate::request::BuildRequest;
use crate::request::RequestParts;
use crate::sandbox::SandboxError;
use crate::store::{BuildRecord, Realised};
use crate::store::{EntryName, KeyLock, Store, StoreError};

/// Why realising a plan stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A builder failed, or was stopped by a limit.
    #[error("{}", BuildFailure::describe(.0))]
    Failed(Box<BuildFailure>),
    /// The build could not be run at all.
    #[error("cannot build `{name}` ({location}): {error}")]
    Sandbox {
        /// The derivation.
        name: String,
        /// Where it was defined.
        location: String,
        /// Why.
        error: SandboxError,
    },
    /// A fixed-output derivation produced something other than it declared.
    #[error(
        "hash mismatch in fixed-output derivation `{name}` ({location}):\n  specified: {specified}\n  got:       {got}"
    )]
    HashMismatch {
        /// The derivation.
        name: String,
        /// Where it was defined.
        location: String,
        /// The declared digest, as it was written.
        specified: String,
        /// What the output hashes to, written the same way.
        got: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A toolchain could not be imported.
    #[error(transparent)]
    Toolchain(#[from] crate::toolchain::ToolchainError),
    /// An input is not in the store although the plan put it before.
    #[error(
        "input `{input}` of `{name}` is not in the store ({entry}); was it collected while planning?"
    )]
    MissingInput {
        /// The derivation.
        name: String,
        /// The input.
        input: String,
        /// The entry.
        entry: EntryName,
    },
    /// A build ended well, but its outputs are not in the store.
    #[error("the build of `{name}` ended, but its outputs are not in the store: {}", .entries.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", "))]
    MissingOutput {
        /// The derivation.
        name: String,
        /// The entries it should have made.
        entries: Vec<EntryName>,
    },
    /// A root's derivation was not realised by the apply.
    #[error("the root's derivation `{name}` was not built; apply it first")]
    NotRealised {
        /// The derivation.
        name: String,
    },
    /// A request could not be formed once its inputs were built.
    #[error(transparent)]
    Plan(Box<crate::plan::PlanError>),
    /// Remote execution failed (not the build itself: the remote or its worker).
    #[error("cannot build `{name}` ({location}) remotely: {error}")]
    Remote {
        /// The derivation.
        name: String,
        /// Where it was defined.
        location: String,
        /// Why.
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The build was stopped because the apply was: another build failed, or Ctrl-C.
    #[error("the build of `{0}` was cancelled")]
    Cancelled(String),
    /// No thread could be started to build on.
    #[error("cannot start a thread to build `{name}` on: {}", crate::threads::Said(.source))]
    NoThread {
        /// The derivation.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The apply was interrupted (Ctrl-C); the running builds were stopped and their staging
    /// removed.
    #[error("interrupted; stopped {}", stopped_list(.0))]
    Interrupted(Vec<String>),
    /// More than one build failed (`keep_going`), or builds were left out because a
    /// dependency failed.
    #[error("{}", describe_several(.failures, .skipped))]
    Several {
        /// Each failure, in the order they happened.
        failures: Vec<ExecError>,
        /// The derivations not built because something they depend on failed.
        skipped: Vec<String>,
    },
}

fn stopped_list(names: &[String]) -> String {
    if names.is_empty() {
        "no build was running".to_string()
    } else {
        format!("`{}`", names.join("`, `"))
    }
}

fn describe_several(failures: &[ExecError], skipped: &[String]) -> String {
    let mut text = format!(
        "{} failed",
        crate::store::counted(failures.len(), "build", "builds")
    );
    if !skipped.is_empty() {
        text.push_str(&format!(
            "; not built because a dependency failed: `{}`",
            skipped.join("`, `")
        ));
    }
    for failure in failures {
        text.push_str("\n\n");
        text.push_str(&failure.to_string());
    }
    text
}

/// A build that ran and failed.
#[derive(Debug)]
pub struct BuildFailure {
    /// The derivation.
    pub name: String,
    /// Where it was defined.
    pub location: String,
    /// What went wrong.
    pub reason: String,
    /// The last lines of the log.
    pub log_tail: Vec<String>,
    /// The whole log.
    pub log_path: PathBuf,
    /// The build directory, kept for inspection (`keep_failed`).
    pub kept: Option<PathBuf>,
}

impl BuildFailure {
    fn describe(&self) -> String {
        let mut text = format!(
            "build of `{}` ({}) failed: {}",
            self.name, self.location, self.reason
        );
        if self.log_tail.is_empty() {
            text.push_str(&format!(
                "\nthe build printed nothing (log: {})",
                self.log_path.display()
            ));
        } else {
            text.push_str(&format!(
                "\nlast {} log lines (the whole log: {}):",
                self.log_tail.len(),
                self.log_path.display()
            ));
            for line in &self.log_tail {
                text.push_str("\n  | ");
                text.push_str(line);
            }
        }
        if let Some(kept) = &self.kept {
            text.push_str(&format!(
                "\nthe build directory is kept at {}",
                kept.display()
            ));
        }
        text
    }
}

/// What happened to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// It was in the store already.
    Cached,
    /// It was built (a derivation) or imported (a source).
    Made,
    /// It was downloaded from the remote cache.
    Downloaded,
    /// It was built by the remote executor.
    Executed,
}

/// What an apply did.
#[derive(Debug, Default)]
pub struct Report {
    /// Derivations built, in the order they finished.
    pub built: Vec<String>,
    /// Sources imported.
    pub imported: Vec<String>,
    /// Derivations whose outputs were downloaded from the remote cache.
    pub downloaded: Vec<String>,
    /// Derivations built by the remote executor (also in `built`).
    pub executed: Vec<String>,
    /// Nodes that were in the store already.
    pub cached: usize,
    /// Derivations among the cached whose key waited on builds that made what the store had:
    /// not rebuilt (early cutoff).
    pub cut_off: Vec<String>,
    /// The roots registered, with their entries.
    pub roots: Vec<(String, EntryName)>,
}

/// Something that happened during an apply, for progress displays. Sent from the scheduler
/// and from the threads that run builds.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A build or import started.
    Started(&'a Node),
    /// A line of a running build's log.
    Log(&'a Node, &'a str),
    /// A build or import ended well, after this long.
    Finished(&'a Node, Done, Duration),
    /// A build or import failed.
    Failed(&'a Node, &'a ExecError),
    /// A node was left out because its dependency (the second) failed.
    Skipped(&'a Node, &'a Node),
    /// The remote cache or executor failed while looking up, downloading, uploading or building
    /// the node's outputs. The apply goes on: a failed download is a miss and a failed remote
    /// build is built here, a failed upload loses nothing local.
    Remote(&'a Node, &'a dyn std::error::Error),
    /// Another process holds the node's key, as it says (`process 1234 (building `hello`)`);
    /// the node waits for it.
    Waiting(&'a Node, &'a str),
    /// The node's builder succeeded; what is left is checking and installing what it made,
    /// which no longer counts against [`Options::jobs`].
    Built(&'a Node),
}

/// How to apply: the scheduler's settings. How each build is run is its executor's.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many builders and imports run at once. A build whose builder is done checks and
    /// installs its outputs beside the next ones (up to this many more), as Nix frees a build
    /// slot when the builder exits.
    pub jobs: usize,
    /// Go on after a failure with everything that does not depend on it.
    pub keep_going: bool,
    /// When set (by a Ctrl-C handler), the apply stops its builds and returns
    /// [`ExecError::Interrupted`].
    pub interrupt: Option<&'static AtomicBool>,
}

/// The CPUs this process may use (`available_parallelism`: its affinity and its cgroup's
/// quota), found once: each look opens and reads several cgroup files.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl Default for Options {
    fn default() -> Self {
        Options {
            jobs: cores(),
            keep_going: false,
            interrupt: None,
        }
    }
}

/// One derivation's build: everything an executor needs to make its outputs.
#[derive(Debug, Clone, Copy)]
pub struct BuildJob<'a> {
    /// The validated request.
    pub request: &'a BuildRequest,
    /// Its closure key.
    pub key: &'a Key,
    /// Its outputs, with their keys and store entries.
    pub outputs: &'a SortedMap<OutputName, PlannedOutput>,
    /// Its limits, which are not part of the key.
    pub limits: &'a Limits,
    /// Where the derivation is defined, for messages.
    pub location: Option<&'a str>,
}

impl<'a> BuildJob<'a> {
    /// The job of a plan's derivation node; `None` for a source, or for a derivation whose
    /// request waits on a build (see [`Plan::resolve`]).
    pub fn of(node: &'a Node) -> Option<Self> {
        let planned = node.derivation()?;
        let resolved = planned.resolved()?;
        Some(BuildJob {
            request: resolved.request(),
            key: &resolved.key,
            outputs: &resolved.outputs,
            limits: planned.limits(),
            location: node.location.as_deref(),
        })
    }

    /// The derivation's name.
    pub fn name(&self) -> &'a Name {
        &self.request.name
    }

    /// Where it is defined, or nothing.
    pub fn location(&self) -> &'a str {
        self.location.unwrap_or_default()
    }

    /// Its outputs' store entries with their keys.
    pub fn entries(&self) -> Vec<(EntryName, Key)> {
        self.outputs
            .values()
            .map(|o| (o.entry.clone(), o.key))
            .collect()
    }

    /// Whether every output is in `store`, where a realisation records it or where the key
    /// names it.
    pub fn present(&self, store: &Store) -> bool {
        self.realised(store).is_some()
    }

    /// Where the outputs are in `store`, when every one is there.
    pub fn realised(&self, store: &Store) -> Option<SortedMap<OutputName, PlannedOutput>> {
        crate::plan::lookup(store, self.key, self.outputs, None)
            .map(|found| found.outputs(self.outputs).clone())
    }

    /// The error of a build that was stopped by the apply.
    pub fn cancelled(&self) -> ExecError {
        ExecError::Cancelled(self.name().to_string())
    }
}

/// Something an executor tells about the job it runs.
#[derive(Debug, Clone, Copy)]
pub enum JobEvent<'a> {
    /// A line of the build's log.
    Log(&'a str),
    /// The remote failed and the job goes on without it (see [`Event::Remote`]).
    Remote(&'a dyn std::error::Error),
    /// Another process holds the job's key (`process 1234 (building `hello`)`); the job
    /// waits for it to finish.
    Waiting(&'a str),
    /// The job's builder succeeded: what the executor does from here (checking and installing
    /// the outputs) no longer counts against [`Options::jobs`]. An executor says so only of a
    /// builder that succeeded, so that no build starts after a failure before it is reported;
    /// one that never says so holds its place until it returns.
    Built,
}

/// What an executor works with besides its job.
pub struct Context<'a> {
    /// The store the outputs go into.
    pub store: &'a Store,
    /// The lock of the job's key, held while the executor runs.
    pub lock: &'a KeyLock,
    /// Set when the apply stops: the executor ends the build and returns
    /// [`ExecError::Cancelled`].
    pub stop: &'a AtomicBool,
    /// Where the executor tells what happens.
    pub events: &'a (dyn Fn(JobEvent<'_>) + Sync),
}

/// Runs builds: makes a job's outputs present in the store.
pub trait Executor: Sync {
    /// Builds `job`, whose key `cx.lock` holds and whose inputs' closure is in `cx.store`.
    fn execute(&self, job: &BuildJob<'_>, cx: &Context<'_>) -> Result<Done, ExecError>;
}

impl<E: Executor + ?Sized> Executor for &E {
    fn execute(&self, job: &BuildJob<'_>, cx: &Context<'_>) -> Result<Done, ExecError> {
        (**self).execute(job, cx)
    }
}

impl<E: Executor + ?Sized> Executor for Box<E> {
    fn execute(&self, job: &BuildJob<'_>, cx: &Context<'_>) -> Result<Done, ExecError> {
        (**self).execute(job, cx)
    }
}

/// Builds `job` with `executor` unless its outputs are in the store: takes the key's lock, and
/// looks again under it, since another process may have built it meanwhile.
pub fn run_job(
    executor: &dyn Executor,
    job: &BuildJob<'_>,
    store: &Store,
    stop: &AtomicBool,
    events: &(dyn Fn(JobEvent<'_>) + Sync),
) -> Result<Done, ExecError> {
    if job.present(store) {
        return Ok(Done::Cached);
    }
    let lock = KeyLock::acquire_for(
        store,
        &job.key.store_hash(),
        &format!("building `{}`", job.name()),
        &|holder| events(JobEvent::Waiting(holder)),
    )?;
    if job.present(store) {
        return Ok(Done::Cached);
    }
    let cx = Context {
        store,
        lock: &lock,
        stop,
        events,
    };
    let done = executor.execute(job, &cx)?;
    if done != Done::Cached {
        // Under the key's lock, so that whoever waits on it finds the realisation.
        record_build(store, job)?;
    }
    Ok(done)
}

/// Records what the build of `job` made: the store's last build of its derivation name, and,
/// when every output is bit-identical to that last build's and those entries are still in the
/// store, a realisation of `job`'s key to them. What depends on the derivation then names the
/// same entries as before and keeps its key: early cutoff.
fn record_build(store: &Store, job: &BuildJob<'_>) -> Result<(), StoreError> {
    let mut built = Realised::new();
    for (name, output) in job.outputs {
        built.insert(
            name.clone(),
            store.realised_output(&output.entry, output.key)?,
        );
    }
    // A record that cannot be read is replaced; it only ever saves work.
    let last = store.last_outputs(job.name()).ok().flatten();
    let unchanged = last.filter(|(key, outputs)| {
        key != job.key
            && outputs.len() == built.len()
            && outputs.iter().all(|(name, was)| {
                built.get(name).is_some_and(|now| {
                    now.digest == was.digest && now.entry != was.entry && store.contains(&was.entry)
                })
            })
    });
    let outputs = match unchanged {
        Some((_, outputs)) => {
            store.record_realisation(job.key, &outputs)?;
            outputs
        }
        None => {
            store.forget_realisation(job.key)?;
            built
        }
    };
    store.record_build(&BuildRecord {
        key: *job.key,
        request: RequestParts::clone(job.request),
        host: job
            .request
            .host
            .map(|_| crate::hash::HostFingerprint::current_parts()),
        outputs,
    })
}

/// Realises one node whose dependencies are in the store: imports a source, runs a
/// derivation's job. `stop` cancels a running build.
pub fn realise(
    plan: &Plan,
    store: &Store,
    index: NodeIndex,
    executor: &dyn Executor,
    stop: &AtomicBool,
    observer: &(dyn Fn(Event<'_>) + Sync),
) -> Result<Done, ExecError> {
    let node = plan.node(index);
    match &node.kind {
        NodeKind::Source { planned, entry } => {
            let crate::plan::PlannedSource {
                path,
                digest,
                ignore,
            } = &**planned;
            if store.contains(entry) {
                return Ok(Done::Cached);
            }
            let outcome = crate::derivation::ignore::with_rules(ignore, path, |keep| {
                store.import_source_keeping(path, &node.name, *digest, keep)
            })?;
            Ok(if outcome.imported {
                Done::Made
            } else {
                Done::Cached
            })
        }
        NodeKind::Toolchain { planned, entry } => {
            if store.contains(entry) {
                return Ok(Done::Cached);
            }
            let expected = (&planned.locked, planned.lock.as_path());
            let (_, outcome) = crate::toolchain::import(store, &planned.toolchain, Some(expected))?;
            Ok(if outcome.imported {
                Done::Made
            } else {
                Done::Cached
            })
        }
        NodeKind::Derivation(planned) => {
            let Some(job) = BuildJob::of(node) else {
                unreachable!("the scheduler resolves a derivation before it realises it")
            };
            let done = run_job(executor, &job, store, stop, &node_events(node, observer))?;
            // Recorded under the derivation's own key too, so that the next plan finds the
            // outputs from the key alone.
            planned
                .find(store, true, None)?
                .ok_or_else(|| ExecError::MissingOutput {
                    name: node.name.to_string(),
                    entries: job.entries().into_iter().map(|(e, _)| e).collect(),
                })?;
            Ok(done)
        }
    }
}

/// What a job tells, as events of its plan node.
fn node_events<'a>(
    node: &'a Node,
    observer: &'a (dyn Fn(Event<'_>) + Sync),
) -> impl Fn(JobEvent<'_>) + Sync + 'a {
    move |event| match event {
        JobEvent::Log(line) => observer(Event::Log(node, line)),
        JobEvent::Remote(error) => observer(Event::Remote(node, error)),
        JobEvent::Waiting(holder) => observer(Event::Waiting(node, holder)),
        JobEvent::Built => observer(Event::Built(node)),
    }
}

/// The nodes the plan's roots need (every node when it has no roots), in topological order.
pub fn needed(plan: &Plan) -> Vec<NodeIndex> {
    if plan.roots().is_empty() {
        return plan.nodes().map(|(i, _)| i).collect();
    }
    needed_for(plan, plan.roots().iter().map(|r| r.node))
}

/// `targets` and what they need, in topological order: the inputs of each one that is not in
/// the store when planned, and theirs. An output in the store needs nothing else, so the inputs
/// of a cached derivation are neither built nor imported.
pub fn needed_for(plan: &Plan, targets: impl IntoIterator<Item = NodeIndex>) -> Vec<NodeIndex> {
    let wanted = crate::plan::needed_from(plan.dag(), targets);
    plan.nodes()
        .map(|(i, _)| i)
        .filter(|i| wanted.contains(i))
        .collect()
}

/// Realises everything the plan's roots need with `executor`, in parallel, makes what it
/// installed durable with one sync ([`Store::sync`]), and registers the roots.
pub fn apply(
    plan: &Plan,
    store: &Store,
    executor: &dyn Executor,
    options: &Options,
    observer: &(dyn Fn(Event<'_>) + Sync),
) -> Result<Report, ExecError> {
    let realised = realise_all(plan, store, &needed(plan), executor, options, observer);
    // What was installed, before a failure too.
    let synced = store.sync();
    let mut report = realised?;
    synced?;
    report.roots = register_roots(plan, store)?;
    Ok(report)
}

/// Makes each of the plan's roots a GC root of the store, and returns them with their entries.
pub fn register_roots(plan: &Plan, store: &Store) -> Result<Vec<(String, EntryName)>, ExecError> {
    let roots = root_entries(plan)?;
    for (name, entry) in &roots {
        store.add_root(name, entry)?;
    }
    Ok(roots)
}

/// Each of the plan's roots with the entry it names, once realised.
pub fn root_entries(plan: &Plan) -> Result<Vec<(String, EntryName)>, ExecError> {
    plan.roots()
        .iter()
        .map(|root| {
            let entry = plan
                .root_entry(root)
                .ok_or_else(|| ExecError::NotRealised {
                    name: plan.node(root.node).name.to_string(),
                })?;
            Ok((root.name.clone(), entry))
        })
        .collect()
}

/// Realises `nodes`, which must hold everything they depend on (see [`needed_for`]), running
/// up to `options.jobs` at once.
pub fn realise_all(
    plan: &Plan,
    store: &Store,
    nodes: &[NodeIndex],
    executor: &dyn Executor,
    options: &Options,
    observer: &(dyn Fn(Event<'_>) + Sync),
) -> Result<Report, ExecError> {
    let stop = AtomicBool::new(false);
    // The cgroups kept for this run's next builds go with it, as do its build directories.
    let _cgroups = crate::sandbox::KeepIdle::hold();
    let report =
        scheduler::Scheduler::new(plan, store, nodes, executor, options, observer, &stop).run();
    store.release_build_dirs();
    report
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.built.is_empty() && self.imported.is_empty() && self.downloaded.is_empty() {
            return write!(f, "Nothing to do: all {} cached", self.cached);
        }
        write!(f, "Built {}", self.built.len())?;
        if !self.executed.is_empty() {
            write!(f, " ({} remotely)", self.executed.len())?;
        }
        write!(f, ", imported {}, ", self.imported.len())?;
        if !self.downloaded.is_empty() {
            write!(f, "downloaded {}, ", self.downloaded.len())?;
        }
        write!(f, "{} cached", self.cached)?;
        if !self.cut_off.is_empty() {
            write!(
                f,
                " ({} of them after a rebuild that changed nothing: `{}`)",
                self.cut_off.len(),
                self.cut_off.join("`, `")
            )?;
        }
        Ok(())
    }
}
