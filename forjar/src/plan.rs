//! The plan: a petgraph DAG of a program's derivations and sources, with keys and statuses.
//!
//! Planning hashes every source (through the store's digest cache), computes every closure key
//! in topological order, and asks the store which outputs exist. It builds and imports nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};

use petgraph::Direction;
use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use serde::Serialize;

use crate::derivation::graph::Slot;
use crate::derivation::{
    Derivation, DerivationError, Drv, DrvId, Graph, GraphError, Input, IntoDerivation, Source,
};
use crate::hash::{self, HashError, HostFingerprint, Key, TreeDigest, TreeHasher};
use crate::map::{SortedMap, SortedSet};
use crate::name::Limits;
use crate::name::{Name, OutputName, StoreDir};
use crate::request::{
    BuildRequest, CleanRelPath, InputName, PartsRef, RequestError, RequestParts, ResolvedInput,
    SandboxLevel, ToolchainInput,
};
use crate::store::{EntryName, Listing, Store, StoreError};
use crate::toolchain::{self, Database, Lock, PlannedToolchain, Toolchain, ToolchainError};

/// Why a program's graph cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A toolchain is not locked, or its lock is out of date.
    #[error(transparent)]
    Toolchain(#[from] ToolchainError),
    /// The derivations depend on each other in a circle.
    #[error("derivation cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// A declared derivation was never defined.
    #[error(
        "derivation `{name}` was declared at {location} but never defined; call `define` on its handle"
    )]
    Undefined {
        /// Its name.
        name: String,
        /// Where it was declared.
        location: String,
    },
    /// A derivation added to the graph failed validation.
    #[error(transparent)]
    Derivation(Box<DerivationError>),
    /// An input names an output its derivation does not declare.
    #[error(transparent)]
    UnknownOutput(Box<UnknownOutput>),
    /// A handle of another graph, or of no graph, was used.
    #[error("in `{consumer}`: {error}")]
    Handle {
        /// Where the handle was used.
        consumer: String,
        /// The misuse.
        error: GraphError,
    },
    /// Two roots have one name.
    #[error("two roots are named `{0}`; root names must be unique")]
    DuplicateRoot(String),
    /// A root name is not a valid name.
    #[error("invalid root name `{0}`: use letters, digits and + - . _ ? =")]
    BadRootName(String),
    /// A source could not be hashed.
    #[error("source `{}`: {error}", .path.display())]
    Source {
        /// The source's path.
        path: PathBuf,
        /// The error.
        error: HashError,
    },
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A request could not be formed.
    #[error("derivation `{name}` ({location}): {error}")]
    Request {
        /// The derivation.
        name: String,
        /// Where it was defined.
        location: String,
        /// The error.
        error: RequestError,
    },
}

/// An input (or root) that names an output its derivation does not declare.
#[derive(Debug, thiserror::Error)]
#[error(
    "input `{input}` of `{consumer}` ({location}) names output `{output}` of `{producer}`, which declares only {declared}"
)]
pub struct UnknownOutput {
    /// The derivation with the input.
    pub consumer: String,
    /// Where it was defined.
    pub location: String,
    /// The input's name.
    pub input: String,
    /// The output asked for.
    pub output: String,
    /// The derivation asked.
    pub producer: String,
    /// Its outputs.
    pub declared: String,
}

/// What a node needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Every output is in the store.
    Cached,
    /// To be built.
    Build,
    /// A source to import.
    Import,
    /// Not in the store, and not needed: everything that depends on it is (a build-time input
    /// of a cached derivation, say, after `gc`). A valid output needs nothing else.
    Unneeded,
}

impl Status {
    /// The word the plan prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Cached => "cached",
            Status::Build => "build",
            Status::Import => "import",
            Status::Unneeded => "unneeded",
        }
    }
}

/// One output of a planned derivation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedOutput {
    /// The output's key: the key that names its entry.
    pub key: Key,
    /// Its store entry.
    pub entry: EntryName,
}

/// A derivation's build once every input is in the store: its request, which names the entries
/// its inputs are realised to, the request's key, and the outputs that key names (where the build
/// puts them).
///
/// A plan keys each derivation from its parts where they are; the request, a copy of them, is
/// made when it is first asked for, which for a derivation found built is usually never.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Its key.
    pub key: Key,
    /// The outputs as the key names them.
    pub outputs: SortedMap<OutputName, PlannedOutput>,
    request: OnceLock<Box<BuildRequest>>,
    /// What the request is made of, when it was not made at once.
    parts: Option<DerivationParts>,
}

/// A derivation's request as parts: the derivation's own, the inputs resolved.
#[derive(Debug, Clone)]
struct DerivationParts {
    derivation: Arc<Derivation>,
    inputs: SortedMap<InputName, ResolvedInput>,
    store_dir: Arc<StoreDir>,
    host: Option<HostFingerprint>,
    toolchain: Option<Box<ToolchainInput>>,
}

/// Whether `graph` is small enough to be laid out and keyed on the calling thread (fewer than
/// 64 derivations): handing work to the thread pool and waking it costs more than the work.
fn small(graph: &Graph) -> bool {
    graph.slots.len() < 64
}

/// The working directory and scratch paths of every derivation's request.
static BUILD_DIR: LazyLock<(CleanRelPath, SortedSet<CleanRelPath>)> = LazyLock::new(|| {
    let build = CleanRelPath::new("working directory", "build").expect("`build` is a clean path");
    (build, SortedSet::new())
});

impl DerivationParts {
    fn by_ref(&self) -> PartsRef<'_> {
        let d = &*self.derivation;
        PartsRef {
            name: &d.name,
            system: &d.system,
            args: &d.args,
            working_dir: &BUILD_DIR.0,
            scratch_paths: &BUILD_DIR.1,
            outputs: &d.outputs,
            env: &d.env,
            inputs: &self.inputs,
            files: &d.files,
            constraints: &d.constraints,
            sandbox: d.sandbox,
            fixed_output: d.fixed_output.as_deref(),
            store_dir: &self.store_dir,
            host: self.host.as_ref(),
            toolchain: self.toolchain.as_deref(),
            input_lists: &d.input_lists,
        }
    }
}

impl Resolved {
    fn new(request: BuildRequest) -> Self {
        let key = request.key();
        let outputs = outputs_of(&key, &request.name, &request.outputs);
        Resolved {
            key,
            outputs,
            request: OnceLock::from(Box::new(request)),
            parts: None,
        }
    }

    /// Checks `parts` as a request and keys them, without copying them into one.
    ///
    /// Their names are the derivation's, which [`DerivationBuilder::build`] checked by the same
    /// rules (it makes every [`Derivation`]): what is left to check is what the plan added.
    ///
    /// [`DerivationBuilder::build`]: crate::derivation::DerivationBuilder::build
    fn of_parts(parts: DerivationParts) -> Result<Self, RequestError> {
        let view = parts.by_ref();
        view.check_rest()?;
        debug_assert!(
            view.check().is_ok(),
            "a derivation's names pass a request's rules"
        );
        let key = view.key();
        let outputs = outputs_of(&key, view.name, view.outputs);
        Ok(Resolved {
            key,
            outputs,
            request: OnceLock::new(),
            parts: Some(parts),
        })
    }

    /// The normalised request.
    pub fn request(&self) -> &BuildRequest {
        self.request.get_or_init(|| {
            let parts = self
                .parts
                .as_ref()
                .expect("a request not made at once has its parts");
            Box::new(BuildRequest::checked(parts.by_ref().to_parts()))
        })
    }
}

/// The outputs `key` names for derivation `name`.
fn outputs_of(
    key: &Key,
    name: &Name,
    outputs: &SortedSet<OutputName>,
) -> SortedMap<OutputName, PlannedOutput> {
    outputs
        .iter()
        .map(|o| {
            let key = hash::output_key(key, o);
            let entry = EntryName::new(&key, name, Some(o));
            (o.clone(), PlannedOutput { key, entry })
        })
        .collect()
}

/// Where the outputs of the build keyed `key` are in `store` when every one is there: as a
/// realisation of the key records them (a rebuild that made what an earlier build had made is
/// realised to that build's entries), else where the key names them. `listing` is the store as
/// the plan read it once; `None` looks at the store for each.
pub(crate) fn lookup(
    store: &Store,
    key: &Key,
    named: &SortedMap<OutputName, PlannedOutput>,
    listing: Option<&Listing>,
) -> Option<Found> {
    let contains = |entry: &EntryName| match listing {
        Some(listing) => listing.contains(store, entry),
        None => store.contains(entry),
    };
    // A record that cannot be read is no record.
    let recorded = match listing {
        Some(listing) if !listing.may_have_realisation(key) => Ok(None),
        Some(listing) => listing.realisation(store, key),
        None => store.realisation(key),
    };
    if let Ok(Some(recorded)) = recorded
        && recorded.keys().eq(named.keys())
        && recorded.values().all(|o| contains(&o.entry))
    {
        return Some(Found::Elsewhere(
            recorded
                .into_iter()
                .map(|(name, o)| {
                    let planned = PlannedOutput {
                        key: o.key,
                        entry: o.entry,
                    };
                    (name, planned)
                })
                .collect(),
        ));
    }
    named
        .values()
        .all(|o| contains(&o.entry))
        .then_some(Found::Named)
}

/// Whether a build of `key` could be realised to the last build of `name` (see
/// `exec::record_build`): there is one, of another key, and its outputs are in the store.
fn may_be_cut_off(store: &Store, name: &Name, key: &Key) -> bool {
    // A record that cannot be read is not compared with.
    store
        .last_outputs(name)
        .ok()
        .flatten()
        .is_some_and(|(last, outputs)| {
            last != *key && outputs.values().all(|o| store.contains(&o.entry))
        })
}

/// Where [`lookup`] found outputs.
#[derive(Debug, Clone)]
pub(crate) enum Found {
    /// Where the key names them.
    Named,
    /// As a realisation records them.
    Elsewhere(SortedMap<OutputName, PlannedOutput>),
}

impl Found {
    /// The outputs, given those the key names.
    pub(crate) fn outputs<'a>(
        &'a self,
        named: &'a SortedMap<OutputName, PlannedOutput>,
    ) -> &'a SortedMap<OutputName, PlannedOutput> {
        match self {
            Found::Named => named,
            Found::Elsewhere(outputs) => outputs,
        }
    }
}

/// A planned derivation.
///
/// Its key is known when planned: the key of its request with each input from a derivation
/// named by that derivation's key (input-addressed, as Nix's derivation hashes). A build's
/// outputs are realised under that key, so a valid output needs nothing else: its inputs may be
/// gone.
///
/// Its request is resolved once the derivations it takes are in the store: each such input then
/// names the entry it is realised to. Those are the entries their keys name unless a rebuild
/// made exactly what an earlier build had made, in which case they are the earlier build's
/// entries; then the resolved request is the one built before, and is found in the store
/// (early cutoff).
#[derive(Debug, Clone)]
pub struct Planned {
    /// The request's parts, with the inputs from sources resolved and those from derivations
    /// still to come; `None` once resolved at planning (a plan of many cached derivations
    /// keeps one request each).
    template: Option<Box<RequestParts>>,
    /// The inputs from derivations: input name, producing node, output name.
    from: Vec<(InputName, NodeIndex, OutputName)>,
    /// The input-addressed key.
    key: Key,
    /// The outputs as `key` names them; `None` when they are the resolved request's (its key is
    /// `key`, as it is unless an input was realised to an earlier build's entries).
    named: Option<SortedMap<OutputName, PlannedOutput>>,
    resolved: Settled<Resolved>,
    /// Where the outputs are in the store, once they are there.
    realised: Settled<Found>,
    /// Whether the outputs are, or will be, where the key names them: in the store so, or to be
    /// built by the request the key names with no earlier build of the name they could be
    /// realised to instead. What takes it is then resolved at planning.
    lands_where_named: bool,
    /// Its limits (not in the key), when any is set.
    limits: Option<Box<Limits>>,
}

impl Planned {
    /// Its limits (not in the key).
    pub fn limits(&self) -> &Limits {
        self.limits.as_deref().unwrap_or(&Limits::UNSET)
    }

    /// The input-addressed key (see the type).
    pub fn key(&self) -> Key {
        self.key
    }

    /// The outputs as the input-addressed key names them.
    pub fn named(&self) -> &SortedMap<OutputName, PlannedOutput> {
        match &self.named {
            Some(named) => named,
            None => {
                &self
                    .resolved()
                    .expect("outputs are only left to the resolved request once it is set")
                    .outputs
            }
        }
    }

    /// The request, its key and outputs, once the inputs are in the store.
    pub fn resolved(&self) -> Option<&Resolved> {
        self.resolved.get()
    }

    /// The outputs: where they are realised once in the store, else where the build will put
    /// them; `None` while that waits on the builds of inputs.
    pub fn outputs(&self) -> Option<&SortedMap<OutputName, PlannedOutput>> {
        self.realised()
            .or_else(|| self.resolved().map(|r| &r.outputs))
    }

    /// The outputs as realised in the store, once they are there.
    pub fn realised(&self) -> Option<&SortedMap<OutputName, PlannedOutput>> {
        self.realised.get().map(|found| found.outputs(self.named()))
    }

    /// The request as far as it is known: once resolved, the resolved request; before, its
    /// parts without the inputs from derivations.
    pub fn request(&self) -> &RequestParts {
        match (self.resolved(), &self.template) {
            (Some(resolved), _) => resolved.request(),
            (None, Some(template)) => template,
            (None, None) => {
                unreachable!("the template is dropped only once the request is resolved")
            }
        }
    }

    /// The inputs from derivations: input name, producing node, output name.
    pub fn derivation_inputs(&self) -> &[(InputName, NodeIndex, OutputName)] {
        &self.from
    }

    /// Where the outputs are in `store`, when every one is there: under the input-addressed
    /// key, else, once resolved, under the resolved request's key (what an earlier build of the
    /// same request made). Records what it finds as the realisation, and under `record` also
    /// in the store, so that the next plan finds it from the key alone. `listing` is as
    /// [`lookup`]'s.
    pub(crate) fn find(
        &self,
        store: &Store,
        record: bool,
        listing: Option<&Listing>,
    ) -> Result<Option<&SortedMap<OutputName, PlannedOutput>>, StoreError> {
        if let Some(found) = self.realised() {
            return Ok(Some(found));
        }
        let found = self.look(store, record, listing)?;
        Ok(found.map(|found| self.realised.get_or_init(|| found).outputs(self.named())))
    }

    /// What [`Planned::find`] finds, not yet recorded as the realisation.
    fn look(
        &self,
        store: &Store,
        record: bool,
        listing: Option<&Listing>,
    ) -> Result<Option<Found>, StoreError> {
        match lookup(store, &self.key, self.named(), listing) {
            Some(found) => Ok(Some(found)),
            None => self.look_resolved(store, record, listing),
        }
    }

    /// What [`Planned::look`] finds under the resolved request's key, when it is known and not
    /// the input-addressed key.
    fn look_resolved(
        &self,
        store: &Store,
        record: bool,
        listing: Option<&Listing>,
    ) -> Result<Option<Found>, StoreError> {
        Ok(match self.resolved() {
            Some(resolved) if resolved.key != self.key => {
                let found = lookup(store, &resolved.key, &resolved.outputs, listing)
                    .map(|f| Found::Elsewhere(f.outputs(&resolved.outputs).clone()));
                if let (Some(found), true) = (&found, record) {
                    let outputs = found
                        .outputs(&resolved.outputs)
                        .iter()
                        .map(|(name, o)| {
                            Ok((name.clone(), store.realised_output(&o.entry, o.key)?))
                        })
                        .collect::<Result<_, StoreError>>()?;
                    store.record_realisation(&self.key, &outputs)?;
                }
                found
            }
            _ => None,
        })
    }

    /// Resolves the request once every producer's outputs are realised (`producer`); `Ok(None)`
    /// while one is not.
    fn resolve_with<'a>(
        &'a self,
        producer: impl Fn(NodeIndex) -> Option<&'a SortedMap<OutputName, PlannedOutput>>,
    ) -> Result<Option<&'a Resolved>, RequestError> {
        if let Some(resolved) = self.resolved.get() {
            return Ok(Some(resolved));
        }
        let Some(template) = &self.template else {
            unreachable!("the template is dropped only once the request is resolved")
        };
        let Some(from) = self.inputs_from(producer) else {
            return Ok(None);
        };
        let resolved = Self::resolve(RequestParts::clone(template), from)?;
        Ok(Some(self.resolved.get_or_init(|| resolved)))
    }

    /// [`Planned::resolve_with`] while the plan is made, when nothing else holds this: once
    /// every producer's outputs are realised, the template becomes the request without a copy.
    fn resolve_now<'a>(
        &mut self,
        producer: impl Fn(NodeIndex) -> Option<&'a SortedMap<OutputName, PlannedOutput>>,
    ) -> Result<(), RequestError> {
        if self.resolved.get().is_some() {
            return Ok(());
        }
        let Some(from) = self.inputs_from(producer) else {
            return Ok(());
        };
        let Some(template) = self.template.take() else {
            unreachable!("the template is dropped only once the request is resolved")
        };
        self.resolved = Settled::Known(Self::resolve(*template, from)?);
        Ok(())
    }

    /// The inputs from derivations where their producers' outputs are realised (`producer`);
    /// `None` while one is not.
    fn inputs_from<'a>(
        &self,
        producer: impl Fn(NodeIndex) -> Option<&'a SortedMap<OutputName, PlannedOutput>>,
    ) -> Option<Vec<(InputName, ResolvedInput)>> {
        let mut from = Vec::with_capacity(self.from.len());
        for (input, node, output) in &self.from {
            let planned = producer(*node)?
                .get(output)
                .expect("outputs were checked when the edges were made");
            let resolved = ResolvedInput::Output {
                entry: planned.entry.clone(),
                key: planned.key,
            };
            from.push((input.clone(), resolved));
        }
        Some(from)
    }

    /// The request of the template's `parts` with the inputs from derivations (`from`).
    fn resolve(
        mut parts: RequestParts,
        from: Vec<(InputName, ResolvedInput)>,
    ) -> Result<Resolved, RequestError> {
        // Sorted once with the rest, not inserted one at a time.
        parts.inputs.extend(from);
        Ok(Resolved::new(BuildRequest::new(parts)?))
    }
}

/// A value known when the plan is made, or one set once later, by any thread: one known at
/// once is held as it is, without the handshake of a cell set afterwards.
#[derive(Debug, Clone)]
enum Settled<T> {
    Known(T),
    Later(OnceLock<T>),
}

impl<T> Settled<T> {
    fn later() -> Self {
        Settled::Later(OnceLock::new())
    }

    fn get(&self) -> Option<&T> {
        match self {
            Settled::Known(value) => Some(value),
            Settled::Later(cell) => cell.get(),
        }
    }

    fn get_or_init(&self, make: impl FnOnce() -> T) -> &T {
        match self {
            Settled::Known(value) => value,
            Settled::Later(cell) => cell.get_or_init(make),
        }
    }
}

/// What a node is.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// A derivation.
    Derivation(Box<Planned>),
    /// A source.
    Source {
        /// Where it is read from, and what of it.
        planned: Box<PlannedSource>,
        /// Its store entry.
        entry: EntryName,
    },
    /// A toolchain, as locked.
    Toolchain {
        /// The toolchain and its lock entry.
        planned: Box<PlannedToolchain>,
        /// Its store entry.
        entry: EntryName,
    },
}

/// A source as planned: boxed in its node, as a derivation's plan is, so that a node of the
/// plan is small for the many derivations.
#[derive(Debug, Clone)]
pub struct PlannedSource {
    /// The host path.
    pub path: PathBuf,
    /// The content's tree digest.
    pub digest: TreeDigest,
    /// What it leaves out of the tree at `path`.
    pub ignore: crate::derivation::ignore::IgnoreRules,
}

/// A node of the plan.
#[derive(Debug, Clone)]
pub struct Node {
    /// The derivation or source name.
    pub name: Name,
    /// Where it was defined (derivations).
    pub location: Option<std::sync::Arc<str>>,
    /// What it is.
    pub kind: NodeKind,
    /// What it needs, as planned.
    pub status: Status,
    /// Whether it sees the host (`host-tools`).
    pub impure: bool,
    /// Its parallel level: 0 for nodes without dependencies, else one more than its deepest one.
    pub level: usize,
}

impl Node {
    /// The planned derivation; `None` for a source.
    pub fn derivation(&self) -> Option<&Planned> {
        match &self.kind {
            NodeKind::Derivation(planned) => Some(planned),
            NodeKind::Source { .. } | NodeKind::Toolchain { .. } => None,
        }
    }

    /// Whether it is a derivation to build whose key waits on the outputs of another build.
    pub fn waits_on_a_build(&self) -> bool {
        self.derivation().is_some_and(|d| d.resolved().is_none())
    }
}

/// A planned root.
#[derive(Debug, Clone)]
pub struct PlannedRoot {
    /// The root's name.
    pub name: String,
    /// The node that produces it.
    pub node: NodeIndex,
    /// The output it points at.
    pub output: OutputName,
}

/// The DAG of a program, keyed and checked against the store.
#[derive(Debug)]
pub struct Plan {
    dag: DiGraph<Node, InputName>,
    order: Vec<NodeIndex>,
    /// How many derivations the graph has: derivation `i` of the graph is node `i`.
    derivations: usize,
    roots: Vec<PlannedRoot>,
    /// Problems that did not stop planning (such as a digest cache that could not be saved).
    pub warnings: Vec<String>,
}

/// Counts of a plan's nodes by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Derivations to build.
    pub build: usize,
    /// Of those, the ones whose key waits on another build: they build only if what that
    /// build makes differs from what the store has (early cutoff).
    pub waiting: usize,
    /// Derivations whose outputs are all in the store.
    pub cached: usize,
    /// Sources to import.
    pub import: usize,
    /// Toolchains to import.
    pub toolchains: usize,
    /// Sources and toolchains already in the store.
    pub sources_cached: usize,
    /// Derivations and sources not in the store that nothing to be built needs.
    pub unneeded: usize,
}

/// `targets` and what they need: the inputs of each node that is not in the store, and theirs.
/// A node in the store needs nothing else, so the walk stops there.
pub(crate) fn needed_from(
    dag: &DiGraph<Node, InputName>,
    targets: impl IntoIterator<Item = NodeIndex>,
) -> HashSet<NodeIndex> {
    let mut needed = HashSet::new();
    let mut queue: Vec<NodeIndex> = targets.into_iter().collect();
    while let Some(node) = queue.pop() {
        if needed.insert(node) && dag[node].status != Status::Cached {
            queue.extend(dag.neighbors_directed(node, petgraph::Direction::Incoming));
        }
    }
    needed
}

impl Plan {
    /// Plans `graph` against `store`, with the toolchains it uses as the lock file at its
    /// default place ([`Lock::default_path`]) pins them.
    pub fn new(graph: &Graph, store: &Store) -> Result<Plan, PlanError> {
        let lock = match !graph.toolchains().is_empty() {
            true => Lock::read(&Lock::default_path())?,
            false => Lock::empty(Lock::default_path()),
        };
        Self::with_lock(graph, store, &lock)
    }

    /// Plans `graph` against `store`, with the toolchains it uses as `lock` pins them.
    pub fn with_lock(graph: &Graph, store: &Store, lock: &Lock) -> Result<Plan, PlanError> {
        let mut planner = Planner {
            graph,
            dag: DiGraph::with_capacity(graph.slots.len(), 0),
            others: HashMap::new(),
            origins: Vec::with_capacity(graph.slots.len()),
            store_dir: store.store_dir().clone(),
            source_nodes: HashMap::new(),
            toolchain_nodes: HashMap::new(),
        };
        let mut lay_out = || -> Result<Vec<NodeIndex>, PlanError> {
            planner.nodes()?;
            planner.edges()?;
            toposort(&planner.dag, None).map_err(|_| planner.cycle())
        };
        let read = || store.read_listing(graph.slots.len());
        // The store is read while the graph is laid out: neither needs the other.
        let (order, listing) = match small(graph) || !crate::threads::shared() {
            true => (lay_out(), read()),
            false => rayon::join(lay_out, read),
        };
        let (order, listing) = (order?, listing?);
        let mut warnings = Vec::new();
        planner.hash_sources(store)?;
        planner.toolchains(store, lock)?;
        if let Err(e) = store.save_digest_cache() {
            warnings.push(format!("the source digest cache was not saved ({e}); the next plan will read every source again"));
        }
        let (levels, mut keyed) = planner.keys(&order, store, &listing)?;
        let roots = planner.roots()?;
        let Planner {
            dag, mut others, ..
        } = planner;
        let mut dag = dag.map_owned(
            |node, ()| match keyed.get_mut(node.index()) {
                Some(keyed) => keyed.take().expect("every derivation was keyed"),
                None => others
                    .remove(&node)
                    .expect("every source and toolchain was planned"),
            },
            |_, e| e,
        );
        drop(keyed);
        // Without roots every node is wanted; with them, what they need.
        if !roots.is_empty() {
            let needed = needed_from(&dag, roots.iter().map(|r| r.node));
            for node in dag.node_indices() {
                if dag[node].status != Status::Cached && !needed.contains(&node) {
                    dag[node].status = Status::Unneeded;
                }
            }
        }
        for node in dag.node_indices() {
            dag[node].level = levels[node.index()];
        }
        Ok(Plan {
            dag,
            order,
            derivations: graph.slots.len(),
            roots,
            warnings,
        })
    }

    /// The nodes in topological order (dependencies first).
    pub fn nodes(&self) -> impl Iterator<Item = (NodeIndex, &Node)> {
        self.order.iter().map(|&i| (i, &self.dag[i]))
    }

    /// The node of a derivation of the planned graph.
    pub fn node_of<T: IntoDerivation>(&self, drv: &Drv<T>) -> Option<NodeIndex> {
        (drv.id.index < self.derivations).then(|| NodeIndex::new(drv.id.index))
    }

    /// The closure key of a derivation of the planned graph.
    /// (input-addressed: see [`Planned`]).
    pub fn key<T: IntoDerivation>(&self, drv: &Drv<T>) -> Option<Key> {
        Some(self.dag[self.node_of(drv)?].derivation()?.key())
    }

    /// The store entries a node produces (none for a derivation whose key waits on a build).
    pub fn entry_names(&self, index: NodeIndex) -> Vec<String> {
        match &self.dag[index].kind {
            NodeKind::Derivation(planned) => planned
                .outputs()
                .into_iter()
                .flat_map(|outputs| outputs.values().map(|o| o.entry.to_string()))
                .collect(),
            NodeKind::Source { entry, .. } | NodeKind::Toolchain { entry, .. } => {
                vec![entry.to_string()]
            }
        }
    }

    /// The entry a root points at: where its output is realised, or where it will be built;
    /// `None` while the producing derivation's key waits on a build.
    pub fn root_entry(&self, root: &PlannedRoot) -> Option<EntryName> {
        let outputs = self.dag[root.node].derivation()?.outputs()?;
        outputs.get(&root.output).map(|o| o.entry.clone())
    }

    /// Whether the request of derivation `planned` waits on the outputs of builds: it is not
    /// resolved, and an input's producer is not realised. (A derivation found in the store under
    /// its own key is planned without its resolved request, which [`Plan::resolve`] makes.)
    pub fn waits_on_outputs(&self, planned: &Planned) -> bool {
        planned.resolved().is_none()
            && planned.derivation_inputs().iter().any(|(_, dep, _)| {
                self.dag[*dep]
                    .derivation()
                    .is_none_or(|d| d.realised().is_none())
            })
    }

    /// The derivations whose builds the request of derivation `planned` waits on (those it
    /// takes that are not in the store), by name.
    pub fn waits_on(&self, planned: &Planned) -> std::collections::BTreeSet<&Name> {
        planned
            .derivation_inputs()
            .iter()
            .map(|(_, dep, _)| &self.dag[*dep])
            .filter(|dep| dep.status != Status::Cached)
            .map(|dep| &dep.name)
            .collect()
    }

    /// Resolves the request of derivation `index` once the outputs of every derivation it
    /// takes are realised; `Ok(None)` while one is not.
    pub fn resolve(&self, index: NodeIndex) -> Result<Option<&Resolved>, PlanError> {
        let node = &self.dag[index];
        let Some(planned) = node.derivation() else {
            return Ok(None);
        };
        planned
            .resolve_with(|dep| self.dag[dep].derivation()?.realised())
            .map_err(|error| PlanError::Request {
                name: node.name.to_string(),
                location: node.location.as_deref().unwrap_or_default().to_string(),
                error,
            })
    }

    /// A node by index.
    pub fn node(&self, index: NodeIndex) -> &Node {
        &self.dag[index]
    }

    /// The underlying graph; edges run from a dependency to its dependent, labelled with the
    /// input name.
    pub fn dag(&self) -> &DiGraph<Node, InputName> {
        &self.dag
    }

    /// The requested roots.
    pub fn roots(&self) -> &[PlannedRoot] {
        &self.roots
    }

    /// The nodes grouped by parallel level: every node of a level depends only on earlier ones.
    pub fn levels(&self) -> Vec<Vec<NodeIndex>> {
        let mut levels: Vec<Vec<NodeIndex>> = Vec::new();
        for &i in &self.order {
            let level = self.dag[i].level;
            if levels.len() <= level {
                levels.resize(level + 1, Vec::new());
            }
            levels[level].push(i);
        }
        levels
    }

    /// How many nodes need what.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for node in self.dag.node_weights() {
            match (&node.kind, node.status) {
                (_, Status::Unneeded) => s.unneeded += 1,
                (NodeKind::Derivation(planned), Status::Build) => {
                    s.build += 1;
                    s.waiting += usize::from(planned.resolved().is_none());
                }
                (NodeKind::Derivation { .. }, _) => s.cached += 1,
                (NodeKind::Source { .. }, Status::Import) => s.import += 1,
                (NodeKind::Toolchain { .. }, Status::Import) => s.toolchains += 1,
                (NodeKind::Source { .. } | NodeKind::Toolchain { .. }, _) => {
                    s.sources_cached += 1;
                }
            }
        }
        s
    }

    /// The nodes named `name` (a derivation or source name, or a store entry name).
    pub fn find(&self, name: &str) -> Vec<NodeIndex> {
        self.order
            .iter()
            .copied()
            .filter(|&i| {
                self.dag[i].name.as_str() == name || self.entry_names(i).iter().any(|e| e == name)
            })
            .collect()
    }

    /// A shortest chain of dependencies from `from` to `to`, each step with the input name
    /// that links it; `None` if `from` does not depend on `to`.
    pub fn why_depends(
        &self,
        from: NodeIndex,
        to: NodeIndex,
    ) -> Option<Vec<(NodeIndex, Option<InputName>)>> {
        // came_from[dep] = (node, input): `node` depends on `dep` through `input`.
        let mut came_from: HashMap<NodeIndex, (NodeIndex, InputName)> = HashMap::new();
        let mut queue = VecDeque::from([from]);
        while let Some(node) = queue.pop_front() {
            if node == to {
                let mut chain = vec![(to, None)];
                let mut at = to;
                while at != from {
                    let (prev, input) = came_from[&at].clone();
                    chain.push((prev, Some(input)));
                    at = prev;
                }
                chain.reverse();
                return Some(chain);
            }
            for edge in self.dag.edges_directed(node, Direction::Incoming) {
                let dep = edge.source();
                if dep != from && !came_from.contains_key(&dep) {
                    came_from.insert(dep, (node, edge.weight().clone()));
                    queue.push_back(dep);
                }
            }
        }
        None
    }

    /// The plan in Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let mut dot = String::from(
            "digraph forjar {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for (i, node) in self.nodes() {
            let shape = match node.kind {
                NodeKind::Source { .. } => ", shape=note",
                NodeKind::Toolchain { .. } => ", shape=component",
                NodeKind::Derivation { .. } => "",
            };
            let style = match node.status {
                Status::Cached => ", style=dashed",
                Status::Unneeded => ", style=dotted",
                Status::Build | Status::Import => ", style=bold",
            };
            let _ = writeln!(
                dot,
                "  n{} [label=\"{}\\n{}\"{shape}{style}];",
                i.index(),
                node.name,
                node.status.as_str()
            );
        }
        for edge in self.dag.edge_references() {
            let _ = writeln!(
                dot,
                "  n{} -> n{} [label=\"{}\"];",
                edge.source().index(),
                edge.target().index(),
                edge.weight()
            );
        }
        dot.push_str("}\n");
        dot
    }

    /// The plan as JSON: nodes (in topological order) and edges.
    pub fn to_json(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct JsonEdge<'a> {
            from: usize,
            to: usize,
            input: &'a InputName,
        }
        let nodes: Vec<serde_json::Value> = self
            .nodes()
            .map(|(i, node)| {
                let mut value = serde_json::json!({
                    "id": i.index(),
                    "name": node.name,
                    "location": node.location.as_deref(),
                    "status": node.status,
                    "impure": node.impure,
                    "level": node.level,
                });
                match &node.kind {
                    NodeKind::Derivation(planned) => {
                        value["kind"] = "derivation".into();
                        value["key"] = serde_json::json!(planned.key());
                        value["outputs"] = serde_json::json!(planned.outputs());
                        if self.waits_on_outputs(planned) {
                            // The key names what the inputs' builds are realised to.
                            value["waits_on"] = serde_json::json!(self.waits_on(planned));
                        }
                    }
                    NodeKind::Source { planned, entry } => {
                        let PlannedSource {
                            path,
                            digest,
                            ignore,
                        } = &**planned;
                        value["kind"] = "source".into();
                        value["path"] = serde_json::json!(path);
                        value["digest"] = serde_json::json!(digest);
                        value["entry"] = serde_json::json!(entry);
                        if !ignore.is_empty() {
                            value["ignore"] = serde_json::json!(ignore.patterns);
                            value["gitignore"] = ignore.gitignore.into();
                        }
                    }
                    NodeKind::Toolchain { planned, entry } => {
                        value["kind"] = "toolchain".into();
                        value["digest"] = serde_json::json!(planned.digest());
                        value["entry"] = serde_json::json!(entry);
                        value["packages"] = serde_json::json!(
                            planned
                                .locked
                                .packages
                                .iter()
                                .map(|p| format!("{} {}", p.name, p.version))
                                .collect::<Vec<_>>()
                        );
                    }
                }
                value
            })
            .collect();
        let edges: Vec<JsonEdge> = self
            .dag
            .edge_references()
            .map(|e| JsonEdge {
                from: e.source().index(),
                to: e.target().index(),
                input: e.weight(),
            })
            .collect();
        serde_json::json!({
            "nodes": nodes,
            "edges": edges,
            "roots": self.roots.iter().map(|r| serde_json::json!({
                "name": r.name,
                "output": r.output,
                "entry": self.root_entry(r),
            })).collect::<Vec<_>>(),
            "summary": self.summary(),
        })
    }
}

/// The weight of the edge from a toolchain to a derivation that uses it.
fn toolchain_edge() -> InputName {
    InputName::new("toolchain").expect("`toolchain` is an identifier")
}

/// Planning state: the graph's shape, what each node is made from, and the planned sources and
/// toolchains; the derivations' planned nodes are [`Planner::keys`]'s.
struct Planner<'g> {
    graph: &'g Graph,
    /// The graph's shape: a node's plan is kept apart (`others`, and the keys' own vector for
    /// derivations) until the plan is put together, not in a second vector of nodes.
    dag: DiGraph<(), InputName>,
    /// The planned nodes of sources and toolchains, which come after the derivations.
    others: HashMap<NodeIndex, Node>,
    /// What each node is made from, by node index.
    origins: Vec<Origin<'g>>,
    /// The store directory of every request (each chain of keys shares a copy of its own).
    store_dir: StoreDir,
    source_nodes: HashMap<&'g Source, NodeIndex>,
    toolchain_nodes: HashMap<&'g Toolchain, NodeIndex>,
}

/// What a node is made from.
#[derive(Clone, Copy)]
enum Origin<'g> {
    Derivation(&'g Arc<Derivation>),
    Source(&'g Source),
    Toolchain(&'g Toolchain),
}

/// A derivation's planned node, once it has been keyed. (Why keying one failed is kept apart:
/// an error is larger than a node, and there is one for at most a few of them.)
type Keyed = OnceLock<Node>;

/// Keying in dependency order on the thread pool ([`Planner::keys`]).
#[derive(Clone, Copy)]
struct Wave<'p, 'g> {
    planner: &'p Planner<'g>,
    store: &'p Store,
    /// Per node, the input edges from derivations not yet keyed.
    waiting: &'p [AtomicUsize],
    /// Per derivation, its planned node once keyed.
    keyed: &'p [Keyed],
    /// The derivations whose keying failed, and why.
    failed: &'p Mutex<Vec<(NodeIndex, PlanError)>>,
    /// The store as the plan read it.
    listing: &'p Listing,
}

impl<'p> Wave<'p, '_> {
    /// Keys `node`, then each dependent whose last input it was: one on this thread (what a
    /// chain of derivations is, without a task or a trip to another core per link), the others
    /// as tasks of their own.
    fn run(self, node: NodeIndex, scope: &rayon::Scope<'p>) {
        // The store directory each request of this chain holds, counted here: a count shared
        // with the other threads would move between their cores at every node.
        let store_dir = Arc::new(self.planner.store_dir.clone());
        let mut next = Some(node);
        while let Some(node) = next.take() {
            self.key_one(node, &store_dir, |dependent| {
                if let Some(ready) = next.replace(dependent) {
                    scope.spawn(move |scope| self.run(ready, scope));
                }
            });
        }
    }

    /// Keys `ready` and everything that follows from them on this thread, in a small plan:
    /// waking the thread pool would cost more than the keying.
    fn run_here(self, mut ready: Vec<NodeIndex>) {
        let store_dir = Arc::new(self.planner.store_dir.clone());
        while let Some(node) = ready.pop() {
            self.key_one(node, &store_dir, |dependent| ready.push(dependent));
        }
    }

    /// Keys `node`, and, when that went well, gives `ready` each dependent whose last input it
    /// was.
    fn key_one(self, node: NodeIndex, store_dir: &Arc<StoreDir>, mut ready: impl FnMut(NodeIndex)) {
        let planned = |dep: NodeIndex| match self.keyed.get(dep.index()) {
            Some(keyed) => keyed
                .get()
                .expect("a node starts once its inputs are keyed"),
            None => &self.planner.others[&dep],
        };
        let result = self
            .planner
            .key(node, self.store, self.listing, store_dir, planned);
        match result {
            Ok(planned) => {
                let first = self.keyed[node.index()].set(planned).is_ok();
                debug_assert!(first, "node {} keyed twice", node.index());
            }
            Err(error) => {
                // Its dependents are not keyed.
                let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
                failed.push((node, error));
                return;
            }
        }
        for dependent in self
            .planner
            .dag
            .neighbors_directed(node, Direction::Outgoing)
        {
            // One count per edge, as there may be several from one input.
            if self.waiting[dependent.index()].fetch_sub(1, Ordering::AcqRel) == 1 {
                ready(dependent);
            }
        }
    }
}

impl<'g> Planner<'g> {
    fn derivation(&self, index: usize) -> &'g Derivation {
        match &self.graph.slots[index] {
            Slot::Defined(d) => d,
            Slot::Declared { .. } | Slot::Invalid(_) => {
                unreachable!("undefined and invalid slots are refused before edges are made")
            }
        }
    }

    fn add(&mut self, origin: Origin<'g>) -> NodeIndex {
        self.origins.push(origin);
        self.dag.add_node(())
    }

    /// Adds a node per derivation, derivation `i` of the graph as node `i`, before any other.
    fn nodes(&mut self) -> Result<(), PlanError> {
        for (index, slot) in self.graph.slots.iter().enumerate() {
            match slot {
                Slot::Declared { name, location } => {
                    return Err(PlanError::Undefined {
                        name: name.clone(),
                        location: crate::derivation::site(location),
                    });
                }
                Slot::Invalid(error) => {
                    return Err(PlanError::Derivation(error.clone()));
                }
                Slot::Defined(drv) => {
                    let node = self.add(Origin::Derivation(drv));
                    debug_assert_eq!(node.index(), index, "derivation `i` is node `i`");
                }
            }
        }
        Ok(())
    }

    fn edges(&mut self) -> Result<(), PlanError> {
        // Counted first: grown as they come, the edges would be copied as often as they double.
        let count: usize = (0..self.graph.slots.len())
            .map(|index| {
                let drv = self.derivation(index);
                drv.inputs.len() + usize::from(drv.toolchain.is_some())
            })
            .sum();
        self.dag.reserve_exact_edges(count);
        for index in 0..self.graph.slots.len() {
            let drv = self.derivation(index);
            let consumer = NodeIndex::new(index);
            for (input_name, input) in &drv.inputs {
                let from = match input {
                    Input::Source(source) => match self.source_nodes.get(&**source) {
                        Some(&node) => node,
                        None => {
                            let node = self.add(Origin::Source(source));
                            self.source_nodes.insert(source, node);
                            node
                        }
                    },
                    Input::Output(output) => {
                        let producer = self.producer(drv, output.drv)?;
                        let declared = &self.derivation(producer).outputs;
                        if !declared.iter().any(|o| o.as_str() == output.output) {
                            return Err(PlanError::UnknownOutput(Box::new(UnknownOutput {
                                consumer: drv.name.to_string(),
                                location: drv.location(),
                                input: input_name.to_string(),
                                output: output.output.to_string(),
                                producer: self.derivation(producer).name.to_string(),
                                declared: declared
                                    .iter()
                                    .map(|o| format!("`{o}`"))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            })));
                        }
                        NodeIndex::new(producer)
                    }
                };
                self.dag.add_edge(from, consumer, input_name.clone());
            }
            if let Some(toolchain) = drv.toolchain.as_deref() {
                let from = match self.toolchain_nodes.get(toolchain) {
                    Some(&node) => node,
                    None => {
                        let node = self.add(Origin::Toolchain(toolchain));
                        self.toolchain_nodes.insert(toolchain, node);
                        node
                    }
                };
                self.dag.add_edge(from, consumer, toolchain_edge());
            }
        }
        Ok(())
    }

    fn producer(&self, consumer: &Derivation, id: DrvId) -> Result<usize, PlanError> {
        match self.graph.slot(id) {
            Ok(_) => Ok(id.index),
            Err(error) => Err(PlanError::Handle {
                consumer: consumer.name.to_string(),
                error,
            }),
        }
    }

    fn name_of(&self, node: NodeIndex) -> String {
        match self.origins[node.index()] {
            Origin::Derivation(d) => d.name.to_string(),
            Origin::Source(s) => s.name().to_string(),
            Origin::Toolchain(t) => t.name().to_string(),
        }
    }

    /// The error for a graph that has a cycle: the names along one cycle, first name repeated.
    fn cycle(&self) -> PlanError {
        let scc = tarjan_scc(&self.dag)
            .into_iter()
            .find(|c| c.len() > 1 || self.dag.contains_edge(c[0], c[0]))
            .expect("toposort failed, so some strongly connected component is a cycle");
        // Walk dependency edges inside the component until a node repeats.
        let start = *scc.iter().min().expect("component is not empty");
        let mut path = vec![start];
        let mut at = start;
        loop {
            let next = self
                .dag
                .neighbors_directed(at, Direction::Outgoing)
                .filter(|n| scc.contains(n))
                .min()
                .expect("every node of a cyclic component has a successor inside it");
            if let Some(pos) = path.iter().position(|&n| n == next) {
                let mut cycle: Vec<String> = path[pos..].iter().map(|&n| self.name_of(n)).collect();
                cycle.push(self.name_of(next));
                // Edges run from dependency to dependent; print as "a depends on b".
                cycle.reverse();
                return PlanError::Cycle(cycle);
            }
            path.push(next);
            at = next;
        }
    }

    fn hash_sources(&mut self, store: &Store) -> Result<(), PlanError> {
        let cache = store.digest_cache();
        let sources: Vec<(&Source, NodeIndex)> =
            self.source_nodes.iter().map(|(&s, &n)| (s, n)).collect();
        let hash_one = |&(source, node): &(&'g Source, NodeIndex)| {
            crate::derivation::ignore::with_rules(
                source.ignore_rules(),
                source.host_path(),
                |keep| {
                    TreeHasher::with_cache(cache)
                        .keeping(keep)
                        .digest(source.host_path())
                },
            )
            .map(|digest| (source, node, digest))
            .map_err(|error| PlanError::Source {
                path: source.host_path().to_path_buf(),
                error,
            })
        };
        let hashed: Vec<_> =
            crate::threads::collect::<_, _, Result<_, _>>(&sources, sources.len() > 1, hash_one)?;
        for (source, node, digest) in hashed {
            let key = hash::source_key(source.name(), &digest);
            let entry = EntryName::new(&key, source.name(), None);
            let status = if store.contains(&entry) {
                Status::Cached
            } else {
                Status::Import
            };
            self.others.insert(
                node,
                Node {
                    name: source.name().clone(),
                    location: None,
                    kind: NodeKind::Source {
                        planned: Box::new(PlannedSource {
                            path: source.host_path().to_path_buf(),
                            digest,
                            ignore: source.ignore_rules().clone(),
                        }),
                        entry,
                    },
                    status,
                    impure: false,
                    level: 0,
                },
            );
        }
        Ok(())
    }

    /// Plans each toolchain as `lock` pins it, checked against the system it comes from.
    fn toolchains(&mut self, store: &Store, lock: &Lock) -> Result<(), PlanError> {
        let mut databases: HashMap<&Path, Database> = HashMap::new();
        let toolchains: Vec<(&Toolchain, NodeIndex)> =
            self.toolchain_nodes.iter().map(|(&t, &n)| (t, n)).collect();
        for (toolchain, node) in toolchains {
            // Installed packages are checked against what is installed now; archive ones are
            // pinned by the lock alone.
            let db = match (toolchain.origin(), databases.entry(toolchain.root())) {
                (toolchain::Origin::Archive, _) => None,
                (toolchain::Origin::Installed, std::collections::hash_map::Entry::Occupied(e)) => {
                    Some(&*e.into_mut())
                }
                (toolchain::Origin::Installed, std::collections::hash_map::Entry::Vacant(e)) => {
                    Some(&*e.insert(Database::read(toolchain.root())?))
                }
            };
            let locked = lock.check(toolchain, db)?.clone();
            let entry = EntryName::of_source(toolchain.name(), &locked.digest);
            let status = if store.contains(&entry) {
                Status::Cached
            } else {
                Status::Import
            };
            self.others.insert(
                node,
                Node {
                    name: toolchain.name().clone(),
                    location: None,
                    kind: NodeKind::Toolchain {
                        planned: Box::new(PlannedToolchain {
                            toolchain: toolchain.clone(),
                            locked,
                            lock: lock.path().to_path_buf(),
                        }),
                        entry,
                    },
                    status,
                    impure: false,
                    level: 0,
                },
            );
        }
        Ok(())
    }

    /// Keys every derivation. A key needs only the keys of the node's inputs, so each node is
    /// keyed on the thread pool as soon as its last input is: the graph's own parallelism,
    /// whatever its shape. Returns every node's level (one more than its inputs' highest), by
    /// index, and each derivation's planned node, by index.
    fn keys(
        &self,
        order: &[NodeIndex],
        store: &Store,
        listing: &Listing,
    ) -> Result<(Vec<usize>, Vec<Keyed>), PlanError> {
        let count = self.dag.node_count();
        let mut level_of = vec![0usize; count];
        for &node in order {
            level_of[node.index()] = self
                .dag
                .neighbors_directed(node, Direction::Incoming)
                .map(|dep| level_of[dep.index()] + 1)
                .max()
                .unwrap_or(0);
        }
        let is_derivation = |n: NodeIndex| matches!(self.origins[n.index()], Origin::Derivation(_));
        // Per node, the input edges from derivations not yet keyed.
        let waiting: Vec<AtomicUsize> = self
            .dag
            .node_indices()
            .map(|n| {
                let from_derivations = self
                    .dag
                    .neighbors_directed(n, Direction::Incoming)
                    .filter(|&dep| is_derivation(dep))
                    .count();
                AtomicUsize::new(from_derivations)
            })
            .collect();
        let keyed: Vec<Keyed> = (0..self.graph.slots.len())
            .map(|_| OnceLock::new())
            .collect();
        let failed = Mutex::new(Vec::new());
        let wave = Wave {
            planner: self,
            store,
            waiting: &waiting,
            keyed: &keyed,
            failed: &failed,
            listing,
        };
        // Chosen before any starts: once one has, a count may reach zero while the others are
        // being started, and a node taken then would be started twice.
        let ready: Vec<NodeIndex> = order
            .iter()
            .copied()
            .filter(|&node| {
                is_derivation(node) && waiting[node.index()].load(Ordering::Relaxed) == 0
            })
            .collect();
        if small(self.graph) || !crate::threads::shared() {
            wave.run_here(ready);
        } else {
            rayon::scope(|scope| {
                for node in ready {
                    scope.spawn(move |scope| wave.run(node, scope));
                }
            });
        }
        // The first failure in topological order; a node after a failure was never keyed.
        let unkeyed = order
            .iter()
            .find(|&&node| is_derivation(node) && keyed[node.index()].get().is_none());
        if let Some(&node) = unkeyed {
            let mut failed = failed.into_inner().unwrap_or_else(PoisonError::into_inner);
            match failed.iter().position(|&(at, _)| at == node) {
                Some(first) => return Err(failed.swap_remove(first).1),
                None => unreachable!("a node is left unkeyed only after a failure"),
            }
        }
        Ok((level_of, keyed))
    }

    /// The planned node of derivation `node`, given its inputs' planned nodes (`planned`).
    fn key<'a>(
        &'a self,
        node: NodeIndex,
        store: &Store,
        listing: &Listing,
        store_dir: &Arc<StoreDir>,
        planned: impl Fn(NodeIndex) -> &'a Node,
    ) -> Result<Node, PlanError> {
        let Origin::Derivation(drv) = self.origins[node.index()] else {
            unreachable!("only derivations are keyed");
        };
        let request_error = |error: RequestError| PlanError::Request {
            name: drv.name.to_string(),
            location: drv.location(),
            error,
        };
        // The inputs from sources are known; those from derivations are named by their
        // producers' keys, and are also where they are realised when every producer lands
        // where its key names it (as it does unless a rebuild may be cut off).
        let mut inputs = Vec::with_capacity(drv.inputs.len());
        let mut realised_as_named = true;
        let mut named_inputs = Vec::with_capacity(drv.inputs.len());
        let mut toolchain = None;
        if drv.toolchain.is_some() {
            for edge in self.dag.edges_directed(node, Direction::Incoming) {
                if let NodeKind::Toolchain { planned, entry } = &planned(edge.source()).kind {
                    toolchain = Some(Box::new(ToolchainInput {
                        entry: entry.clone(),
                        digest: planned.digest(),
                    }));
                }
            }
        }
        // In the derivation's own order (by name), each input's node as the edges were made
        // from it: the inputs need no search by name and no sort.
        for (input_name, input) in &drv.inputs {
            match input {
                Input::Source(source) => {
                    let NodeKind::Source {
                        planned: source,
                        entry,
                    } = &planned(self.source_nodes[&**source]).kind
                    else {
                        unreachable!("a source input has a source node")
                    };
                    let resolved = ResolvedInput::Source {
                        entry: entry.clone(),
                        digest: source.digest,
                    };
                    inputs.push((input_name.clone(), resolved));
                }
                Input::Output(o) => {
                    let dep = NodeIndex::new(o.drv.index);
                    let NodeKind::Derivation(producer) = &planned(dep).kind else {
                        unreachable!("an output input has a derivation node")
                    };
                    realised_as_named &= producer.lands_where_named;
                    let (output, named) = producer
                        .named()
                        .iter()
                        .find(|(name, _)| name.as_str() == o.output)
                        .expect("outputs were checked when the edges were made");
                    named_inputs.push((input_name, dep, output, named));
                }
            }
        }
        // Kept only for a request resolved after planning.
        let from: Vec<(InputName, NodeIndex, OutputName)> = if realised_as_named {
            Vec::new()
        } else {
            named_inputs
                .iter()
                .map(|(input, dep, output, _)| ((*input).clone(), *dep, (*output).clone()))
                .collect()
        };
        let host = (drv.sandbox == SandboxLevel::HostTools).then(HostFingerprint::current);
        // The parts of the request the template would be, before the inputs from derivations.
        let template = (!realised_as_named).then(|| {
            let parts = DerivationParts {
                derivation: Arc::clone(drv),
                inputs: inputs.iter().cloned().collect(),
                store_dir: Arc::clone(store_dir),
                host,
                toolchain: toolchain.clone(),
            };
            Box::new(parts.by_ref().to_parts())
        });
        // Sorted once with the rest, not inserted one at a time.
        inputs.extend(named_inputs.into_iter().map(|(input, _, _, named)| {
            let resolved = ResolvedInput::Output {
                entry: named.entry.clone(),
                key: named.key,
            };
            (input.clone(), resolved)
        }));
        let addressed = Resolved::of_parts(DerivationParts {
            derivation: Arc::clone(drv),
            inputs: inputs.into_iter().collect(),
            store_dir: Arc::clone(store_dir),
            host,
            toolchain,
        })
        .map_err(request_error)?;
        // Resolved now when every derivation it takes is, or will be, where its key names it;
        // otherwise once the builds it waits on are done.
        let key = addressed.key;
        let (resolved, named) = match realised_as_named {
            true => (Settled::Known(addressed), None),
            false => (Settled::later(), Some(addressed.outputs)),
        };
        let mut planned_drv = Planned {
            template,
            from,
            key,
            named,
            resolved,
            realised: Settled::later(),
            lands_where_named: false,
            limits: drv.limits.clone(),
        };
        // Found under its own key, it needs no resolved request to be planned: one is made if
        // it is asked for ([`Plan::resolve`]). Else the request is resolved to be looked for.
        let mut found = planned_drv.look(store, false, Some(listing))?;
        if found.is_none() && !realised_as_named {
            planned_drv
                .resolve_now(|dep| planned(dep).derivation()?.realised())
                .map_err(request_error)?;
            found = planned_drv.look_resolved(store, false, Some(listing))?;
        }
        let status = match found {
            Some(found) => {
                planned_drv.realised = Settled::Known(found);
                Status::Cached
            }
            None => Status::Build,
        };
        planned_drv.lands_where_named = match (planned_drv.realised.get(), planned_drv.resolved()) {
            (Some(found), _) => matches!(found, Found::Named),
            // A build is realised to the last build of its name when it makes what that made.
            (None, Some(resolved)) => {
                resolved.key == planned_drv.key && !may_be_cut_off(store, &drv.name, &resolved.key)
            }
            (None, None) => false,
        };
        Ok(Node {
            name: drv.name.clone(),
            location: Some(drv.shared_location()),
            kind: NodeKind::Derivation(Box::new(planned_drv)),
            status,
            impure: drv.sandbox == SandboxLevel::HostTools,
            level: 0,
        })
    }

    fn roots(&self) -> Result<Vec<PlannedRoot>, PlanError> {
        let mut roots: Vec<PlannedRoot> = Vec::new();
        for (name, output) in &self.graph.roots {
            if Name::new(name.as_str()).is_err() {
                return Err(PlanError::BadRootName(name.clone()));
            }
            if roots.iter().any(|r| &r.name == name) {
                return Err(PlanError::DuplicateRoot(name.clone()));
            }
            let consumer = format!("root `{name}`");
            let index = match self.graph.slot(output.drv) {
                Ok(_) => output.drv.index,
                Err(error) => return Err(PlanError::Handle { consumer, error }),
            };
            let node = NodeIndex::new(index);
            let producer = self.derivation(index);
            let Some(declared) = producer
                .outputs
                .iter()
                .find(|o| o.as_str() == output.output)
            else {
                return Err(PlanError::UnknownOutput(Box::new(UnknownOutput {
                    consumer,
                    location: String::from("root"),
                    input: name.clone(),
                    output: output.output.to_string(),
                    producer: producer.name.to_string(),
                    declared: producer
                        .outputs
                        .iter()
                        .map(|o| format!("`{o}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                })));
            };
            roots.push(PlannedRoot {
                name: name.clone(),
                node,
                output: declared.clone(),
            });
        }
        Ok(roots)
    }
}
