//! The plan: a petgraph DAG of a program's derivations and sources, with keys and statuses.
//!
//! Planning hashes every source (through the store's digest cache), computes every closure key
//! in topological order, and asks the store which outputs exist. It builds and imports nothing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use petgraph::Direction;
use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use rayon::prelude::*;
use serde::Serialize;

use crate::derivation::graph::Slot;
use crate::derivation::{
    Derivation, DerivationError, Drv, DrvId, Graph, GraphError, Input, IntoDerivation, Source,
};
use crate::hash::{self, HashError, HostFingerprint, Key, TreeDigest, TreeHasher};
use crate::name::Limits;
use crate::name::{Name, OutputName};
use crate::request::{
    BuildRequest, CleanRelPath, InputName, RequestError, RequestParts, ResolvedInput, SandboxLevel,
};
use crate::store::{EntryName, Store};

/// Why a program's graph cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
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
#[derive(Debug, Clone, Serialize)]
pub struct PlannedOutput {
    /// The output's key.
    pub key: Key,
    /// Its store entry.
    pub entry: EntryName,
}

/// What a node is.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum NodeKind {
    /// A derivation.
    Derivation {
        /// The normalised request.
        #[serde(skip)]
        request: Box<BuildRequest>,
        /// The closure key.
        key: Key,
        /// Its outputs.
        outputs: BTreeMap<OutputName, PlannedOutput>,
        /// Its limits (not in the key).
        #[serde(skip)]
        limits: Limits,
    },
    /// A source.
    Source {
        /// The host path.
        path: PathBuf,
        /// The content's tree digest.
        digest: TreeDigest,
        /// Its store entry.
        entry: EntryName,
    },
}

/// A node of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// The derivation or source name.
    pub name: Name,
    /// Where it was defined (derivations).
    pub location: Option<String>,
    /// What it is.
    #[serde(flatten)]
    pub kind: NodeKind,
    /// What it needs.
    pub status: Status,
    /// Whether it sees the host (`host-tools`).
    pub impure: bool,
    /// Its parallel level: 0 for nodes without dependencies, else one more than its deepest one.
    pub level: usize,
}

/// A planned root.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedRoot {
    /// The root's name.
    pub name: String,
    /// The node that produces it.
    #[serde(skip)]
    pub node: NodeIndex,
    /// The entry it points at.
    pub entry: EntryName,
}

/// The DAG of a program, keyed and checked against the store.
#[derive(Debug)]
pub struct Plan {
    dag: DiGraph<Node, InputName>,
    order: Vec<NodeIndex>,
    /// The node of each derivation, by its index in the graph.
    drv_nodes: HashMap<usize, NodeIndex>,
    roots: Vec<PlannedRoot>,
    /// Problems that did not stop planning (such as a digest cache that could not be saved).
    pub warnings: Vec<String>,
}

/// Counts of a plan's nodes by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Derivations to build.
    pub build: usize,
    /// Derivations whose outputs are all in the store.
    pub cached: usize,
    /// Sources to import.
    pub import: usize,
    /// Sources already in the store.
    pub sources_cached: usize,
    /// Derivations and sources not in the store that nothing to be built needs.
    pub unneeded: usize,
}

/// `targets` and what they need: the inputs of each node that is not in the store, and theirs.
/// A node in the store needs nothing else, so the walk stops there.
pub(crate) fn needed_from(
    dag: &DiGraph<Node, InputName>,
    targets: impl IntoIterator<Item = NodeIndex>,
) -> std::collections::HashSet<NodeIndex> {
    let mut needed = std::collections::HashSet::new();
    let mut queue: Vec<NodeIndex> = targets.into_iter().collect();
    while let Some(node) = queue.pop() {
        if needed.insert(node) && dag[node].status != Status::Cached {
            queue.extend(dag.neighbors_directed(node, petgraph::Direction::Incoming));
        }
    }
    needed
}

impl Plan {
    /// Plans `graph` against `store`.
    pub fn new(graph: &Graph, store: &Store) -> Result<Plan, PlanError> {
        let mut planner = Planner {
            graph,
            dag: DiGraph::new(),
            origins: Vec::new(),
            drv_nodes: HashMap::new(),
            source_nodes: HashMap::new(),
        };
        planner.nodes()?;
        planner.edges()?;
        let order = toposort(&planner.dag, None).map_err(|_| planner.cycle())?;
        let mut warnings = Vec::new();
        planner.hash_sources(store)?;
        if let Err(e) = store.save_digest_cache() {
            warnings.push(format!("the source digest cache was not saved ({e}); the next plan will read every source again"));
        }
        let levels = planner.keys(&order, store)?;
        let roots = planner.roots(store)?;
        let Planner { dag, drv_nodes, .. } = planner;
        let mut dag = dag.map_owned(
            |_, n| n.expect("every node was keyed in topological order"),
            |_, e| e,
        );
        let cached: Vec<NodeIndex> = order
            .par_iter()
            .copied()
            .filter(|&i| match &dag[i].kind {
                NodeKind::Derivation { outputs, .. } => {
                    outputs.values().all(|o| store.contains(&o.entry))
                }
                NodeKind::Source { .. } => false,
            })
            .collect();
        for node in cached {
            dag[node].status = Status::Cached;
        }
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
            drv_nodes,
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
        self.drv_nodes.get(&drv.id.index).copied()
    }

    /// The closure key of a derivation of the planned graph.
    pub fn key<T: IntoDerivation>(&self, drv: &Drv<T>) -> Option<Key> {
        match &self.dag[self.node_of(drv)?].kind {
            NodeKind::Derivation { key, .. } => Some(*key),
            NodeKind::Source { .. } => None,
        }
    }

    /// The store entries a node produces.
    pub fn entry_names(&self, index: NodeIndex) -> Vec<String> {
        match &self.dag[index].kind {
            NodeKind::Derivation { outputs, .. } => {
                outputs.values().map(|o| o.entry.to_string()).collect()
            }
            NodeKind::Source { entry, .. } => vec![entry.to_string()],
        }
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
                (NodeKind::Derivation { .. }, Status::Build) => s.build += 1,
                (NodeKind::Derivation { .. }, _) => s.cached += 1,
                (NodeKind::Source { .. }, Status::Import) => s.import += 1,
                (NodeKind::Source { .. }, _) => s.sources_cached += 1,
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
        struct JsonNode<'a> {
            id: usize,
            #[serde(flatten)]
            node: &'a Node,
        }
        #[derive(Serialize)]
        struct JsonEdge<'a> {
            from: usize,
            to: usize,
            input: &'a InputName,
        }
        let nodes: Vec<JsonNode> = self
            .nodes()
            .map(|(i, node)| JsonNode {
                id: i.index(),
                node,
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
            "roots": self.roots,
            "summary": self.summary(),
        })
    }
}

/// Planning state: nodes are filled in (`Some`) once keyed.
struct Planner<'g> {
    graph: &'g Graph,
    dag: DiGraph<Option<Node>, InputName>,
    /// What each node is made from, by node index.
    origins: Vec<Origin<'g>>,
    drv_nodes: HashMap<usize, NodeIndex>,
    source_nodes: HashMap<&'g Source, NodeIndex>,
}

/// What a node is made from.
#[derive(Clone, Copy)]
enum Origin<'g> {
    Derivation(&'g Derivation),
    Source(&'g Source),
}

/// Keying in dependency order on the thread pool ([`Planner::keys`]).
#[derive(Clone, Copy)]
struct Wave<'p, 'g> {
    planner: &'p Planner<'g>,
    store: &'p Store,
    /// Per node, the input edges from derivations not yet keyed.
    waiting: &'p [AtomicUsize],
    /// Per node, how keying it went.
    keyed: &'p [OnceLock<Result<Node, PlanError>>],
}

impl<'p> Wave<'p, '_> {
    /// Keys `node`, then starts each dependent whose last input it was.
    fn run(self, node: NodeIndex, scope: &rayon::Scope<'p>) {
        let dag = &self.planner.dag;
        let planned = |dep: NodeIndex| match &dag[dep] {
            Some(source) => source,
            None => match self.keyed[dep.index()].get() {
                Some(Ok(planned)) => planned,
                _ => unreachable!("a node starts once its inputs are keyed"),
            },
        };
        let result = self.planner.key(node, self.store, planned);
        let ok = result.is_ok();
        let _ = self.keyed[node.index()].set(result);
        if !ok {
            return;
        }
        for dependent in dag.neighbors_directed(node, Direction::Outgoing) {
            // One count per edge, as there may be several from one input.
            if self.waiting[dependent.index()].fetch_sub(1, Ordering::AcqRel) == 1 {
                scope.spawn(move |scope| self.run(dependent, scope));
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
        self.dag.add_node(None)
    }

    fn nodes(&mut self) -> Result<(), PlanError> {
        for (index, slot) in self.graph.slots.iter().enumerate() {
            match slot {
                Slot::Declared { name, location } => {
                    return Err(PlanError::Undefined {
                        name: name.clone(),
                        location: format!("{}:{}", location.file(), location.line()),
                    });
                }
                Slot::Invalid(error) => {
                    return Err(PlanError::Derivation(error.clone()));
                }
                Slot::Defined(drv) => {
                    let node = self.add(Origin::Derivation(drv));
                    self.drv_nodes.insert(index, node);
                }
            }
        }
        Ok(())
    }

    fn edges(&mut self) -> Result<(), PlanError> {
        for index in 0..self.graph.slots.len() {
            let drv = self.derivation(index);
            let consumer = self.drv_nodes[&index];
            for (input_name, input) in &drv.inputs {
                let from = match input {
                    Input::Source(source) => match self.source_nodes.get(source) {
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
                                output: output.output.clone(),
                                producer: self.derivation(producer).name.to_string(),
                                declared: declared
                                    .iter()
                                    .map(|o| format!("`{o}`"))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            })));
                        }
                        self.drv_nodes[&producer]
                    }
                };
                self.dag.add_edge(from, consumer, input_name.clone());
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
        let hashed = sources
            .par_iter()
            .map(|(source, node)| {
                TreeHasher::with_cache(cache)
                    .digest(source.host_path())
                    .map(|digest| (source, *node, digest))
                    .map_err(|error| PlanError::Source {
                        path: source.host_path().to_path_buf(),
                        error,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (source, node, digest) in hashed {
            let key = hash::source_key(source.name(), &digest);
            let entry = EntryName::new(&key, source.name(), None);
            let status = if store.contains(&entry) {
                Status::Cached
            } else {
                Status::Import
            };
            self.dag[node] = Some(Node {
                name: source.name().clone(),
                location: None,
                kind: NodeKind::Source {
                    path: source.host_path().to_path_buf(),
                    digest,
                    entry,
                },
                status,
                impure: false,
                level: 0,
            });
        }
        Ok(())
    }

    /// Keys every derivation. A key needs only the keys of the node's inputs, so each node is
    /// keyed on the thread pool as soon as its last input is: the graph's own parallelism,
    /// whatever its shape. Returns every node's level (one more than its inputs' highest), by
    /// index.
    fn keys(&mut self, order: &[NodeIndex], store: &Store) -> Result<Vec<usize>, PlanError> {
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
        let keyed: Vec<OnceLock<Result<Node, PlanError>>> =
            (0..count).map(|_| OnceLock::new()).collect();
        let this = &*self;
        let wave = Wave {
            planner: this,
            store,
            waiting: &waiting,
            keyed: &keyed,
        };
        rayon::scope(|scope| {
            for &node in order {
                if is_derivation(node) && waiting[node.index()].load(Ordering::Relaxed) == 0 {
                    scope.spawn(move |scope| wave.run(node, scope));
                }
            }
        });
        // The first failure in topological order; a node after a failure was never keyed.
        let mut keyed: Vec<Option<Result<Node, PlanError>>> =
            keyed.into_iter().map(OnceLock::into_inner).collect();
        for &node in order {
            if is_derivation(node) {
                match keyed[node.index()].take() {
                    Some(Ok(planned)) => self.dag[node] = Some(planned),
                    Some(Err(error)) => return Err(error),
                    None => unreachable!("a node is left unkeyed only after a failure"),
                }
            }
        }
        Ok(level_of)
    }

    /// The planned node of derivation `node`, given its inputs' planned nodes (`planned`).
    fn key<'a>(
        &'a self,
        node: NodeIndex,
        store: &Store,
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
        let mut inputs = BTreeMap::new();
        for edge in self.dag.edges_directed(node, Direction::Incoming) {
            let input = &drv.inputs[edge.weight()];
            let dep = planned(edge.source());
            let resolved = match (&dep.kind, input) {
                (NodeKind::Source { entry, digest, .. }, _) => ResolvedInput::Source {
                    entry: entry.clone(),
                    digest: *digest,
                },
                (NodeKind::Derivation { outputs, .. }, Input::Output(o)) => {
                    let planned = outputs
                        .iter()
                        .find(|(name, _)| name.as_str() == o.output)
                        .map(|(_, p)| p)
                        .expect("outputs were checked when the edges were made");
                    ResolvedInput::Output {
                        entry: planned.entry.clone(),
                        key: planned.key,
                    }
                }
                (NodeKind::Derivation { .. }, Input::Source(_)) => {
                    unreachable!("a source input has a source node")
                }
            };
            inputs.insert(edge.weight().clone(), resolved);
        }
        let host = (drv.sandbox == SandboxLevel::HostTools).then(HostFingerprint::current);
        let request = BuildRequest::new(RequestParts {
            name: drv.name.clone(),
            system: drv.system.clone(),
            args: drv.args.clone(),
            working_dir: CleanRelPath::new("working directory", "build")
                .expect("`build` is a clean path"),
            scratch_paths: Default::default(),
            outputs: drv.outputs.clone(),
            env: drv.env.clone(),
            inputs,
            files: drv.files.clone(),
            constraints: drv.constraints.clone(),
            sandbox: drv.sandbox,
            fixed_output: drv.fixed_output,
            store_dir: store.store_dir().clone(),
            host,
        })
        .map_err(request_error)?;
        let key = request.key();
        let outputs: BTreeMap<OutputName, PlannedOutput> = drv
            .outputs
            .iter()
            .map(|o| {
                let key = hash::output_key(&key, o);
                (
                    o.clone(),
                    PlannedOutput {
                        key,
                        entry: EntryName::new(&key, &drv.name, Some(o)),
                    },
                )
            })
            .collect();
        // The store is asked in one parallel pass once every node is keyed.
        let status = Status::Build;
        Ok(Node {
            name: drv.name.clone(),
            location: Some(drv.location()),
            kind: NodeKind::Derivation {
                request: Box::new(request),
                key,
                outputs,
                limits: drv.limits.clone(),
            },
            status,
            impure: drv.sandbox == SandboxLevel::HostTools,
            level: 0,
        })
    }

    fn roots(&self, _store: &Store) -> Result<Vec<PlannedRoot>, PlanError> {
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
            let node = self.drv_nodes[&index];
            let Some(Node {
                kind: NodeKind::Derivation { outputs, .. },
                name: producer,
                ..
            }) = &self.dag[node]
            else {
                unreachable!("derivation nodes are keyed")
            };
            let Some((_, planned)) = outputs.iter().find(|(o, _)| o.as_str() == output.output)
            else {
                return Err(PlanError::UnknownOutput(Box::new(UnknownOutput {
                    consumer,
                    location: String::from("root"),
                    input: name.clone(),
                    output: output.output.clone(),
                    producer: producer.to_string(),
                    declared: outputs
                        .keys()
                        .map(|o| format!("`{o}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                })));
            };
            roots.push(PlannedRoot {
                name: name.clone(),
                node,
                entry: planned.entry.clone(),
            });
        }
        Ok(roots)
    }
}
