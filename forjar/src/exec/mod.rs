//! Realising a plan: a parallel scheduler over the DAG, and the lifecycle of each build.
//!
//! The scheduler runs up to `jobs` builds and imports at once, always starting the ready node
//! with the longest chain of work still behind it (critical path first). Cached nodes are
//! settled on the spot and take no job. A failure stops the apply (cancelling the running
//! builds) unless `keep_going`, where it stops only what depends on it.
//!
//! For one derivation: closure key (from the plan) -> store check (a hit is skipped) -> the
//! key's lock -> its inputs' closure in the store -> staging for each output -> the sandbox
//! runs the builder, which writes its outputs -> every declared output must exist, and nothing
//! else -> reference scan -> fixed-output digest check -> canonicalise, hash, `meta.yaml`, and
//! one rename per output into the store.

mod check;
mod refscan;

pub use check::{CheckedOutput, check};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use petgraph::Direction;
use petgraph::graph::NodeIndex;

use crate::hash::{Key, TreeDigest, TreeHasher};
use crate::plan::{Node, NodeKind, Plan, Status};
use crate::remote::RemoteError;
use crate::remote::cache::Cache;
use crate::remote::exec::{BuildAction, Executed};
use crate::request::BuildRequest;
use crate::sandbox::{self, BuildSpec, Outcome, SandboxError};
use crate::store::{Committed, Draft, EntryKind, EntryName, KeyLock, Staging, Store, StoreError};

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
        /// The declared digest.
        specified: TreeDigest,
        /// What the output hashes to.
        got: TreeDigest,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// Remote execution failed (not the build itself: the remote or its worker).
    #[error("cannot build `{name}` ({location}) remotely: {error}")]
    Remote {
        /// The derivation.
        name: String,
        /// Where it was defined.
        location: String,
        /// Why.
        error: Box<RemoteError>,
    },
    /// The build was stopped because the apply was: another build failed, or Ctrl-C.
    #[error("the build of `{0}` was cancelled")]
    Cancelled(String),
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
        if failures.len() == 1 {
            "1 build".to_string()
        } else {
            format!("{} builds", failures.len())
        }
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
    /// The remote cache failed while looking up, downloading or uploading the node's outputs.
    /// The apply goes on: a failed download is a miss (the node is built here), a failed upload
    /// loses nothing local.
    Remote(&'a Node, &'a RemoteError),
}

/// How to apply.
#[derive(Debug, Clone)]
pub struct Options {
    /// `FORJAR_BUILD_CORES` for each build.
    pub cores: u32,
    /// How many builds and imports run at once.
    pub jobs: usize,
    /// Go on after a failure with everything that does not depend on it.
    pub keep_going: bool,
    /// Keep a failed build's directory, and say where it is.
    pub keep_failed: bool,
    /// When set (by a Ctrl-C handler), the apply stops its builds and returns
    /// [`ExecError::Interrupted`].
    pub interrupt: Option<&'static AtomicBool>,
    /// A remote cache: each derivation is looked up there before it is built, and what is
    /// built here is uploaded to it.
    pub remote: Option<Arc<Cache>>,
}

impl Default for Options {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Options {
            cores: cores as u32,
            jobs: cores,
            keep_going: false,
            keep_failed: false,
            interrupt: None,
            remote: None,
        }
    }
}

/// The nodes the plan's roots need (every node when it has no roots), in topological order.
pub fn needed(plan: &Plan) -> Vec<NodeIndex> {
    if plan.roots().is_empty() {
        return plan.nodes().map(|(i, _)| i).collect();
    }
    needed_for(plan, plan.roots().iter().map(|r| r.node))
}

/// `targets` and everything they depend on, in topological order.
pub fn needed_for(plan: &Plan, targets: impl IntoIterator<Item = NodeIndex>) -> Vec<NodeIndex> {
    let mut wanted = BTreeSet::new();
    let mut queue: VecDeque<NodeIndex> = targets.into_iter().collect();
    while let Some(node) = queue.pop_front() {
        if wanted.insert(node) {
            queue.extend(plan.dag().neighbors_directed(node, Direction::Incoming));
        }
    }
    plan.nodes()
        .map(|(i, _)| i)
        .filter(|i| wanted.contains(i))
        .collect()
}

/// Realises everything the plan's roots need, in parallel, and registers the roots.
pub fn apply(
    plan: &Plan,
    store: &Store,
    options: &Options,
    observer: &(dyn Fn(Event<'_>) + Sync),
) -> Result<Report, ExecError> {
    let mut report = realise_all(plan, store, &needed(plan), options, observer)?;
    report.roots = register_roots(plan, store)?;
    Ok(report)
}

/// Makes each of the plan's roots a GC root of the store, and returns them with their entries.
pub fn register_roots(plan: &Plan, store: &Store) -> Result<Vec<(String, EntryName)>, StoreError> {
    plan.roots()
        .iter()
        .map(|root| {
            store.add_root(&root.name, &root.entry)?;
            Ok((root.name.clone(), root.entry.clone()))
        })
        .collect()
}

/// Realises `nodes`, which must hold everything they depend on (see [`needed_for`]), running
/// up to `options.jobs` at once.
pub fn realise_all(
    plan: &Plan,
    store: &Store,
    nodes: &[NodeIndex],
    options: &Options,
    observer: &(dyn Fn(Event<'_>) + Sync),
) -> Result<Report, ExecError> {
    let stop = AtomicBool::new(false);
    Scheduler::new(plan, store, nodes, options, observer, &stop).run()
}

/// The state of one parallel realisation.
struct Scheduler<'a> {
    plan: &'a Plan,
    store: &'a Store,
    options: &'a Options,
    observer: &'a (dyn Fn(Event<'_>) + Sync),
    /// For each node still to do: how many of its dependencies are not done.
    waiting: HashMap<NodeIndex, usize>,
    /// The length of the longest chain of work from each node to the end.
    priority: HashMap<NodeIndex, usize>,
    /// Position in topological order, to break priority ties the same way every run.
    position: HashMap<NodeIndex, usize>,
    ready: BinaryHeap<(usize, Reverse<usize>, NodeIndex)>,
    /// Set to stop the running builds: a failure without `keep_going`, or an interrupt.
    stop: &'a AtomicBool,
    report: Report,
    failures: Vec<(NodeIndex, ExecError)>,
    skipped: Vec<String>,
}

impl<'a> Scheduler<'a> {
    fn new(
        plan: &'a Plan,
        store: &'a Store,
        nodes: &[NodeIndex],
        options: &'a Options,
        observer: &'a (dyn Fn(Event<'_>) + Sync),
        stop: &'a AtomicBool,
    ) -> Self {
        let wanted: BTreeSet<NodeIndex> = nodes.iter().copied().collect();
        let dag = plan.dag();
        let mut priority = HashMap::new();
        for &node in nodes.iter().rev() {
            let own = usize::from(plan.node(node).status != Status::Cached);
            let behind = dag
                .neighbors_directed(node, Direction::Outgoing)
                .filter_map(|d| priority.get(&d).copied())
                .max()
                .unwrap_or(0);
            priority.insert(node, own + behind);
        }
        let waiting: HashMap<NodeIndex, usize> = nodes
            .iter()
            .map(|&n| {
                let deps = dag
                    .neighbors_directed(n, Direction::Incoming)
                    .filter(|d| wanted.contains(d))
                    .collect::<BTreeSet<_>>()
                    .len();
                (n, deps)
            })
            .collect();
        let position = nodes.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut scheduler = Scheduler {
            plan,
            store,
            options,
            observer,
            waiting,
            priority,
            position,
            ready: BinaryHeap::new(),
            stop,
            report: Report::default(),
            failures: Vec::new(),
            skipped: Vec::new(),
        };
        for &node in nodes {
            if scheduler.waiting[&node] == 0 {
                scheduler.make_ready(node);
            }
        }
        scheduler
    }

    fn make_ready(&mut self, node: NodeIndex) {
        self.ready
            .push((self.priority[&node], Reverse(self.position[&node]), node));
    }

    fn interrupted(&self) -> bool {
        self.options
            .interrupt
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
    }

    /// Whether every output of `node` is in the store already.
    fn present(&self, node: NodeIndex) -> bool {
        match &self.plan.node(node).kind {
            NodeKind::Derivation { outputs, .. } => {
                outputs.values().all(|o| self.store.contains(&o.entry))
            }
            NodeKind::Source { entry, .. } => self.store.contains(entry),
        }
    }

    fn run(mut self) -> Result<Report, ExecError> {
        let jobs = self.options.jobs.max(1);
        let mut running: BTreeMap<NodeIndex, String> = BTreeMap::new();
        // Builds run on up to `jobs` worker threads, started as they are first needed and kept
        // for the whole run (with their read buffers), fed through one queue.
        let (work_tx, work_rx) = mpsc::channel::<NodeIndex>();
        let work_rx = Mutex::new(work_rx);
        let mut workers = 0;
        std::thread::scope(|scope| {
            let (done_tx, done_rx) = mpsc::channel::<(NodeIndex, Result<Done, ExecError>)>();
            loop {
                if self.interrupted() {
                    self.stop.store(true, Ordering::Relaxed);
                }
                while !self.stop.load(Ordering::Relaxed) && running.len() < jobs {
                    let Some((_, _, node)) = self.ready.pop() else {
                        break;
                    };
                    if self.present(node) {
                        self.settle(node, Ok(Done::Cached));
                        continue;
                    }
                    let plan_node = self.plan.node(node);
                    (self.observer)(Event::Started(plan_node));
                    running.insert(node, plan_node.name.to_string());
                    if running.len() > workers {
                        workers += 1;
                        let (plan, store, options, observer, stop, work, tx) = (
                            self.plan,
                            self.store,
                            self.options,
                            self.observer,
                            self.stop,
                            &work_rx,
                            done_tx.clone(),
                        );
                        scope.spawn(move || {
                            loop {
                                // The lock is held only to take the next node; the queue
                                // closes when the scheduler is done.
                                let next = work.lock().unwrap_or_else(|e| e.into_inner()).recv();
                                let Ok(node) = next else { break };
                                let started = Instant::now();
                                let result = realise(plan, store, node, options, stop, observer);
                                if let Ok(done) = &result {
                                    let took = started.elapsed();
                                    observer(Event::Finished(plan.node(node), *done, took));
                                }
                                let _ = tx.send((node, result));
                            }
                        });
                    }
                    work_tx
                        .send(node)
                        .expect("the workers outlive the scheduler loop");
                }
                if running.is_empty() {
                    drop(work_tx);
                    break;
                }
                match done_rx.recv_timeout(Duration::from_millis(100)) {
                    Ok((node, result)) => {
                        running.remove(&node);
                        self.settle(node, result);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        unreachable!("the scheduler holds a sender")
                    }
                }
            }
        });
        if self.interrupted() {
            let stopped = self
                .failures
                .iter()
                .filter(|(_, e)| matches!(e, ExecError::Cancelled(_)))
                .map(|(n, _)| self.plan.node(*n).name.to_string())
                .collect();
            return Err(ExecError::Interrupted(stopped));
        }
        let mut failures: Vec<ExecError> = self
            .failures
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| !matches!(e, ExecError::Cancelled(_)))
            .collect();
        match (failures.len(), self.skipped.is_empty()) {
            (0, _) => Ok(self.report),
            (_, _) if !self.options.keep_going => Err(failures.remove(0)),
            (1, true) => Err(failures.remove(0)),
            _ => Err(ExecError::Several {
                failures,
                skipped: self.skipped,
            }),
        }
    }

    /// Records how `node` ended and releases or skips what depends on it.
    fn settle(&mut self, node: NodeIndex, result: Result<Done, ExecError>) {
        let plan_node = self.plan.node(node);
        match result {
            Ok(done) => {
                match (done, &plan_node.kind) {
                    (Done::Cached, _) => self.report.cached += 1,
                    (Done::Made, NodeKind::Derivation { .. }) => {
                        self.report.built.push(plan_node.name.to_string())
                    }
                    (Done::Made, NodeKind::Source { .. }) => {
                        self.report.imported.push(plan_node.name.to_string())
                    }
                    (Done::Downloaded, _) => {
                        self.report.downloaded.push(plan_node.name.to_string())
                    }
                    (Done::Executed, _) => {
                        self.report.built.push(plan_node.name.to_string());
                        self.report.executed.push(plan_node.name.to_string());
                    }
                }
                let dependents: BTreeSet<NodeIndex> = self
                    .plan
                    .dag()
                    .neighbors_directed(node, Direction::Outgoing)
                    .collect();
                for dependent in dependents {
                    if let Some(count) = self.waiting.get_mut(&dependent) {
                        *count -= 1;
                        if *count == 0 {
                            self.make_ready(dependent);
                        }
                    }
                }
            }
            Err(error) => {
                if !matches!(error, ExecError::Cancelled(_)) {
                    (self.observer)(Event::Failed(plan_node, &error));
                    if self.options.keep_going {
                        self.skip_dependents(node);
                    } else {
                        self.stop.store(true, Ordering::Relaxed);
                    }
                }
                self.failures.push((node, error));
            }
        }
    }

    /// Leaves out everything that depends on the failed `node`.
    fn skip_dependents(&mut self, node: NodeIndex) {
        let mut queue = VecDeque::from([node]);
        let mut seen = BTreeSet::new();
        while let Some(at) = queue.pop_front() {
            for dependent in self.plan.dag().neighbors_directed(at, Direction::Outgoing) {
                if self.waiting.remove(&dependent).is_some() && seen.insert(dependent) {
                    (self.observer)(Event::Skipped(
                        self.plan.node(dependent),
                        self.plan.node(node),
                    ));
                    self.skipped
                        .push(self.plan.node(dependent).name.to_string());
                    queue.push_back(dependent);
                }
            }
        }
    }
}

/// Realises one node whose dependencies are in the store. `stop` cancels a running build.
pub fn realise(
    plan: &Plan,
    store: &Store,
    index: NodeIndex,
    options: &Options,
    stop: &AtomicBool,
    observer: &(dyn Fn(Event<'_>) + Sync),
) -> Result<Done, ExecError> {
    let node = plan.node(index);
    match &node.kind {
        NodeKind::Source {
            path,
            digest,
            entry,
        } => {
            if store.contains(entry) {
                return Ok(Done::Cached);
            }
            let outcome = store.import_source_as(path, &node.name, *digest)?;
            Ok(if outcome.imported {
                Done::Made
            } else {
                Done::Cached
            })
        }
        NodeKind::Derivation { .. } => build(node, store, options, stop, observer, None),
    }
}

/// The build log on disk, with each complete line also told to the observer.
struct LogTap<'a> {
    file: fs::File,
    partial: Vec<u8>,
    node: &'a Node,
    observer: &'a (dyn Fn(Event<'_>) + Sync),
}

impl Write for LogTap<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.partial.extend_from_slice(&buf[..n]);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]);
            (self.observer)(Event::Log(self.node, text.trim_end_matches('\r')));
        }
        if self.partial.len() > 4096 {
            self.partial.clear();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Every entry reachable from `roots` through references, the roots included.
pub(crate) fn closure(
    store: &Store,
    roots: impl IntoIterator<Item = EntryName>,
) -> Result<BTreeSet<EntryName>, StoreError> {
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<EntryName> = roots.into_iter().collect();
    while let Some(entry) = queue.pop_front() {
        if seen.insert(entry.clone()) {
            queue.extend(store.meta(&entry)?.references);
        }
    }
    Ok(seen)
}

/// The bytes a staged output holds so far; a builder may be changing it, so an entry that
/// vanishes mid-walk counts as nothing until the next look.
fn staged_size(path: &Path) -> u64 {
    crate::store::tree_size(path).unwrap_or(0)
}

/// The `/build` directory of one build, removed when dropped.
struct BuildDir(PathBuf);

/// Moves a failed build's directory to `.failed/<hash>-<name>` in the store, out of the way of
/// the staging sweep, and returns where it went. Best effort: `None` if it cannot be moved.
fn keep_build_dir(store: &Store, dir: &Path, hash: &str, name: &str) -> Option<PathBuf> {
    let failed = store.dir().join(".failed");
    fs::create_dir_all(&failed).ok()?;
    let kept = failed.join(format!("{hash}-{name}"));
    crate::store::remove_tree(&kept).ok()?;
    fs::rename(dir, &kept).ok()?;
    Some(kept)
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        let _ = crate::store::remove_tree(&self.0);
    }
}

/// Runs a build on the remote executor and installs its outputs from the remote cache, where
/// the worker records them.
fn build_remotely(
    node: &Node,
    store: &Store,
    lock: &KeyLock,
    cache: &Cache,
    action: &BuildAction<'_>,
    stop: &AtomicBool,
) -> Result<Done, ExecError> {
    let name = node.name.to_string();
    let location = node.location.clone().unwrap_or_default();
    let remote_error = |error: RemoteError| ExecError::Remote {
        name: name.clone(),
        location: location.clone(),
        error: Box::new(error),
    };
    match cache.execute(store, action, stop).map_err(remote_error)? {
        Executed::Built { worker } => {
            let NodeKind::Derivation { outputs, .. } = &node.kind else {
                unreachable!("only derivations are built")
            };
            let wanted: Vec<(EntryName, Key)> =
                outputs.values().map(|o| (o.entry.clone(), o.key)).collect();
            if cache.pull(store, lock, &wanted).map_err(remote_error)? {
                Ok(Done::Executed)
            } else {
                Err(remote_error(RemoteError::Malformed {
                    what: format!("build of `{name}` on worker {worker}"),
                    reason: "the worker reported success, but the cache does not hold the outputs"
                        .to_string(),
                }))
            }
        }
        Executed::Failed {
            worker,
            reason,
            log,
        } => {
            let log_path = store.log_path(&action.key.store_hash());
            fs::write(&log_path, &log).map_err(StoreError::io("cannot write", &log_path))?;
            Err(ExecError::Failed(Box::new(BuildFailure {
                name,
                location,
                reason: format!("{reason} (on worker {worker})"),
                log_tail: sandbox::log_tail(&log),
                log_path,
                kept: None,
            })))
        }
        Executed::Cancelled => Err(ExecError::Cancelled(name)),
    }
}

/// Where `entry`'s content is in the store `request` was planned for.
fn planned_content(request: &BuildRequest, entry: &EntryName) -> PathBuf {
    request.store_dir().join(entry.as_str()).join("content")
}

/// Builds one derivation node into `store` (see the module documentation for the steps).
pub(crate) fn build(
    node: &Node,
    store: &Store,
    options: &Options,
    stop: &AtomicBool,
    observer: &(dyn Fn(Event<'_>) + Sync),
    check: Option<&mut Vec<CheckedOutput>>,
) -> Result<Done, ExecError> {
    let NodeKind::Derivation {
        request,
        key,
        outputs,
        limits,
    } = &node.kind
    else {
        unreachable!("build is called for derivations")
    };
    let name = node.name.to_string();
    let location = node.location.clone().unwrap_or_default();
    let all_present = || check.is_none() && outputs.values().all(|o| store.contains(&o.entry));
    if all_present() {
        return Ok(Done::Cached);
    }
    let hash = key.store_hash();
    let lock = KeyLock::acquire(store, &hash)?;
    if all_present() {
        return Ok(Done::Cached);
    }
    if let Some(cache) = &options.remote
        && check.is_none()
    {
        let wanted: Vec<(EntryName, Key)> =
            outputs.values().map(|o| (o.entry.clone(), o.key)).collect();
        match cache.pull(store, &lock, &wanted) {
            Ok(true) => return Ok(Done::Downloaded),
            Ok(false) => {}
            Err(error) => observer(Event::Remote(node, &error)),
        }
    }
    let started = SystemTime::now();

    let mut inputs = Vec::new();
    for (input, resolved) in request.inputs() {
        let entry = resolved.entry();
        if !store.contains(entry) {
            return Err(ExecError::MissingInput {
                name,
                input: input.to_string(),
                entry: entry.clone(),
            });
        }
        // Bound at the path the request was planned for, which is this store's own except on a
        // remote worker.
        inputs.push((
            input.clone(),
            store.content_path(entry),
            planned_content(request, entry),
        ));
    }
    // What the inputs refer to is bound too (without a variable), so that what they need at
    // run time is there; it is also what the outputs may refer to.
    let direct: BTreeSet<EntryName> = request
        .inputs()
        .values()
        .map(|i| i.entry().clone())
        .collect();
    let input_closure = closure(store, direct.iter().cloned())?;
    if let Some(cache) = options.remote.as_deref()
        && cache.executes()
        && !cache.is_down()
        && check.is_none()
    {
        let action = BuildAction {
            request,
            key,
            limits,
            location: node.location.as_deref(),
            closure: &input_closure,
            outputs: outputs.values().map(|o| o.entry.clone()).collect(),
        };
        match build_remotely(node, store, &lock, cache, &action, stop) {
            Err(ExecError::Remote { error, .. }) if error.is_outage() => {
                // Built here instead, as when the cache fails.
                observer(Event::Remote(node, &error));
            }
            done => return done,
        }
    }
    let referenced: Vec<(PathBuf, PathBuf)> = input_closure
        .difference(&direct)
        .map(|e| (store.content_path(e), planned_content(request, e)))
        .collect();

    let stagings = outputs
        .values()
        .map(|o| Staging::new(store, &lock, o.entry.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let build_dir = BuildDir(
        store
            .dir()
            .join(".tmp")
            .join(format!("{hash}.{}-build", std::process::id())),
    );
    fs::create_dir(&build_dir.0).map_err(StoreError::io("cannot create", &build_dir.0))?;
    let log_path = match check {
        None => store.log_path(&hash),
        // A rebuild for comparison keeps the original build's log, which meta.yaml hashes.
        Some(_) => store.dir().join(".logs").join(format!("{hash}.check.log")),
    };
    let mut log = LogTap {
        file: fs::File::create(&log_path).map_err(StoreError::io("cannot create", &log_path))?,
        partial: Vec::new(),
        node,
        observer,
    };

    let spec = BuildSpec {
        request,
        inputs,
        referenced,
        outputs: outputs
            .iter()
            .zip(&stagings)
            .map(|((output, planned), staging)| {
                (
                    output.clone(),
                    staging.dir().to_path_buf(),
                    request.store_dir().join(planned.entry.as_str()),
                )
            })
            .collect(),
        build_dir: build_dir.0.clone(),
        limits: limits.clone(),
        cores: limits.cpus.unwrap_or(options.cores),
        cancel: Some(stop),
        hold: Some(lock.as_fd()),
    };
    let content_paths: Vec<PathBuf> = stagings.iter().map(Staging::content_path).collect();
    let output_size = || content_paths.iter().map(|p| staged_size(p)).sum();
    let finished =
        sandbox::run(&spec, &mut log, &output_size).map_err(|error| ExecError::Sandbox {
            name: name.clone(),
            location: location.clone(),
            error,
        })?;
    drop(log);
    if finished.outcome == Outcome::Cancelled {
        return Err(ExecError::Cancelled(name));
    }
    let fail = |reason: String, log_tail: Vec<String>| {
        ExecError::Failed(Box::new(BuildFailure {
            name: name.clone(),
            location: location.clone(),
            reason,
            log_tail,
            log_path: log_path.clone(),
            kept: options
                .keep_failed
                .then(|| keep_build_dir(store, &build_dir.0, &hash, &name))
                .flatten(),
        }))
    };
    // Hashing and scanning give up once the apply is stopped: that is a cancelled build, not a
    // failed one.
    let stopped_or = |error: StoreError| {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            ExecError::Cancelled(name.clone())
        } else {
            ExecError::Store(error)
        }
    };
    if !finished.outcome.success() {
        // RLIMIT_FSIZE stops a write at the cap with SIGXFSZ, which the builder reports as a
        // plain failure; the staged size says what happened.
        let cap = limits.output_cap();
        let outcome = match finished.outcome {
            Outcome::Exited(_) | Outcome::Signaled(_) if output_size() >= cap => {
                Outcome::OutputLimit(cap)
            }
            _ => finished.outcome.clone(),
        };
        let mut reason = outcome.to_string();
        if limits.memory.is_some()
            && !matches!(outcome, Outcome::MemoryLimit(_))
            && !nix::unistd::geteuid().is_root()
        {
            reason.push_str(
                " (its memory limit is enforced by RLIMIT_AS here, and may have been hit)",
            );
        }
        return Err(fail(reason, finished.log_tail));
    }

    // Every process of the build is gone (`sandbox::run` returns once its pid namespace is
    // empty). What it left is taken back from the build user before anything reads it.
    for staging in &stagings {
        staging.reclaim()?;
    }
    for ((output, _), staging) in outputs.iter().zip(&stagings) {
        if fs::symlink_metadata(staging.content_path()).is_err() {
            return Err(fail(
                format!(
                    "output `{output}` was not produced: the builder exited 0 without creating ${output}"
                ),
                finished.log_tail,
            ));
        }
        let stray: Vec<String> = fs::read_dir(staging.dir())
            .map_err(StoreError::io("cannot read", staging.dir()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "content")
            .collect();
        if !stray.is_empty() {
            return Err(fail(
                format!(
                    "the builder wrote `{}` beside output `{output}`; a build may only create ${output} itself",
                    stray.join("`, `")
                ),
                finished.log_tail,
            ));
        }
    }
    if output_size() > limits.output_cap() {
        return Err(fail(
            Outcome::OutputLimit(limits.output_cap()).to_string(),
            finished.log_tail,
        ));
    }
    // A fixed-output build shares the host's network, and with it a way to hand descriptors of
    // its outputs to a process outside the sandbox, which could still write through them after
    // the build: its outputs are copied into fresh files of the store's own first, and only the
    // copies are checked and installed.
    let stagings = if request.fixed_output().is_some() {
        stagings
            .into_iter()
            .map(|staging| staging.fresh_copy(&lock))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        stagings
    };

    if let Some(checked) = check {
        for ((output, planned), staging) in outputs.iter().zip(&stagings) {
            let expected = store.meta(&planned.entry)?.digest;
            let got = TreeHasher::new()
                .stopped_by(stop)
                .digest(&staging.content_path())
                .map_err(|e| stopped_or(StoreError::from(e)))?;
            let differences = if got == expected {
                Vec::new()
            } else {
                check::differences(&store.content_path(&planned.entry), &staging.content_path())
                    .map_err(StoreError::io("cannot compare", &staging.content_path()))?
            };
            checked.push(CheckedOutput {
                output: output.clone(),
                entry: planned.entry.clone(),
                expected,
                got,
                differences,
            });
        }
        return Ok(Done::Made);
    }
    let own: Vec<EntryName> = outputs.values().map(|o| o.entry.clone()).collect();
    let candidates: Vec<EntryName> = input_closure
        .iter()
        .cloned()
        .chain(own.iter().cloned())
        .collect();
    let log_digest = TreeHasher::new().digest(&log_path).ok();
    let input_entries: BTreeMap<String, EntryName> = request
        .inputs()
        .iter()
        .map(|(n, i)| (n.to_string(), i.entry().clone()))
        .collect();
    let mut drafts = Vec::new();
    for ((output, planned), staging) in outputs.iter().zip(stagings) {
        let references: Vec<EntryName> = refscan::scan(&staging.content_path(), &candidates, stop)
            .map_err(|e| stopped_or(StoreError::io("cannot scan", &staging.content_path())(e)))?
            .into_iter()
            .collect();
        if request.fixed_output().is_some() && !references.is_empty() {
            return Err(fail(
                format!(
                    "a fixed-output derivation may not refer to store entries, and its output refers to {}",
                    references
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                finished.log_tail.clone(),
            ));
        }
        drafts.push((
            staging,
            Draft {
                name: node.name.clone(),
                output: output.to_string(),
                kind: if request.fixed_output().is_some() {
                    EntryKind::Fixed
                } else {
                    EntryKind::Build
                },
                key: planned.key,
                derivation: Some(*key),
                references,
                inputs: input_entries.clone(),
                system: Some(request.system().to_string()),
                sandbox: Some(request.sandbox().as_str().to_string()),
                started,
                log_digest,
                location: node.location.clone(),
                source_path: None,
                expected: request.fixed_output().copied(),
            },
        ));
    }
    for (staging, draft) in drafts {
        match staging.commit_unless(draft, stop).map_err(stopped_or)? {
            Committed::Installed(_) => {}
            Committed::Mismatch(m) => {
                return Err(ExecError::HashMismatch {
                    name,
                    location,
                    specified: m.expected,
                    got: m.got,
                });
            }
        }
    }
    // The build directory goes while the lock is held: staging of this key is only ever
    // touched under it.
    drop(build_dir);
    drop(lock);
    if let Some(cache) = &options.remote
        && let Err(error) = cache.push(store, &own)
    {
        observer(Event::Remote(node, &error));
    }
    Ok(Done::Made)
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
        write!(f, "{} cached", self.cached)
    }
}
