//! Realising a plan: the lifecycle of each build, in dependency order.
//!
//! For one derivation: closure key (from the plan) -> store check (a hit is skipped) -> the
//! key's lock -> its inputs' closure in the store -> staging for each output -> the sandbox
//! runs the builder, which writes its outputs -> every declared output must exist, and nothing
//! else -> reference scan -> fixed-output digest check -> canonicalise, hash, `meta.yaml`, and
//! one rename per output into the store.

mod refscan;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use petgraph::Direction;
use petgraph::graph::NodeIndex;

use crate::hash::{TreeDigest, TreeHasher};
use crate::plan::{Node, NodeKind, Plan, Status};
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
}

/// What an apply did.
#[derive(Debug, Default)]
pub struct Report {
    /// Derivations built, in order.
    pub built: Vec<String>,
    /// Sources imported.
    pub imported: Vec<String>,
    /// Nodes that were in the store already.
    pub cached: usize,
    /// The roots registered, with their entries.
    pub roots: Vec<(String, EntryName)>,
}

/// How to apply.
#[derive(Debug, Clone)]
pub struct Options {
    /// `FORJAR_BUILD_CORES` for each build.
    pub cores: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        }
    }
}

/// The nodes the plan's roots need (every node when it has no roots), in topological order.
pub fn needed(plan: &Plan) -> Vec<NodeIndex> {
    if plan.roots().is_empty() {
        return plan.nodes().map(|(i, _)| i).collect();
    }
    let mut wanted = BTreeSet::new();
    let mut queue: VecDeque<NodeIndex> = plan.roots().iter().map(|r| r.node).collect();
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

/// Realises everything the plan's roots need, one node at a time in dependency order, and
/// registers the roots. `progress` hears of each node as it starts.
pub fn apply(
    plan: &Plan,
    store: &Store,
    options: &Options,
    progress: &mut dyn FnMut(&Node),
) -> Result<Report, ExecError> {
    let mut report = Report::default();
    for index in needed(plan) {
        let node = plan.node(index);
        if node.status != Status::Cached {
            progress(node);
        }
        match (realise(plan, store, index, options)?, &node.kind) {
            (Done::Cached, _) => report.cached += 1,
            (Done::Made, NodeKind::Derivation { .. }) => report.built.push(node.name.to_string()),
            (Done::Made, NodeKind::Source { .. }) => report.imported.push(node.name.to_string()),
        }
    }
    for root in plan.roots() {
        store.add_root(&root.name, &root.entry)?;
        report.roots.push((root.name.clone(), root.entry.clone()));
    }
    Ok(report)
}

/// Realises one node whose dependencies are in the store.
pub fn realise(
    plan: &Plan,
    store: &Store,
    index: NodeIndex,
    options: &Options,
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
        NodeKind::Derivation { .. } => build(node, store, options),
    }
}

/// Every entry reachable from `roots` through references, the roots included.
fn closure(
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

impl Drop for BuildDir {
    fn drop(&mut self) {
        let _ = crate::store::remove_tree(&self.0);
    }
}

fn build(node: &Node, store: &Store, options: &Options) -> Result<Done, ExecError> {
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
    let all_present = || outputs.values().all(|o| store.contains(&o.entry));
    if all_present() {
        return Ok(Done::Cached);
    }
    let hash = key.store_hash();
    let lock = KeyLock::acquire(store, &hash)?;
    if all_present() {
        return Ok(Done::Cached);
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
        inputs.push((
            input.clone(),
            store.content_path(entry),
            store.content_path(entry),
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
    let referenced: Vec<PathBuf> = input_closure
        .difference(&direct)
        .map(|e| store.content_path(e))
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
    let log_path = store.log_path(&hash);
    let mut log =
        fs::File::create(&log_path).map_err(StoreError::io("cannot create", &log_path))?;

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
                    store.entry_path(&planned.entry),
                )
            })
            .collect(),
        build_dir: build_dir.0.clone(),
        limits: limits.clone(),
        cores: limits.cpus.unwrap_or(options.cores),
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
    let fail = |reason: String, log_tail: Vec<String>| {
        ExecError::Failed(Box::new(BuildFailure {
            name: name.clone(),
            location: location.clone(),
            reason,
            log_tail,
            log_path: log_path.clone(),
        }))
    };
    if !finished.outcome.success() {
        // RLIMIT_FSIZE stops a write at the cap with SIGXFSZ, which the builder reports as a
        // plain failure; the staged size says what happened.
        let outcome = match limits.max_output_size {
            Some(cap)
                if matches!(finished.outcome, Outcome::Exited(_) | Outcome::Signaled(_))
                    && output_size() >= cap =>
            {
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
        if let Some(cap) = limits.max_output_size
            && staged_size(&staging.content_path()) > cap
        {
            return Err(fail(
                Outcome::OutputLimit(cap).to_string(),
                finished.log_tail,
            ));
        }
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
        let references: Vec<EntryName> = refscan::scan(&staging.content_path(), &candidates)
            .map_err(StoreError::io("cannot scan", &staging.content_path()))?
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
        match staging.commit(draft)? {
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
    drop(lock);
    Ok(Done::Made)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.built.is_empty() && self.imported.is_empty() {
            return write!(f, "Nothing to do: all {} cached", self.cached);
        }
        write!(
            f,
            "Built {}, imported {}, {} cached",
            self.built.len(),
            self.imported.len(),
            self.cached
        )
    }
}
