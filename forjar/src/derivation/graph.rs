//! The graph a program builds: its derivations and the roots it wants realised.

use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Derivation, DerivationError, Drv, DrvId, IntoDerivation, OutputRef};

/// Misuse of a graph's handles.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A handle from another graph was used.
    #[error(
        "a derivation handle from another graph was used with this one; add the derivation to this graph"
    )]
    ForeignHandle,
    /// `define` was called on a handle that already has a derivation.
    #[error("derivation `{0}` is already defined; `define` fills a handle made by `declare` once")]
    AlreadyDefined(String),
    /// The derivation given to `define` has another name than the one declared.
    #[error("`{declared}` was declared, but a derivation named `{defined}` was given to define it")]
    NameMismatch {
        /// The declared name.
        declared: String,
        /// The defined name.
        defined: String,
    },
}

pub(crate) enum Slot {
    /// Made by `declare`, not yet defined.
    Declared {
        name: String,
        location: &'static Location<'static>,
    },
    /// Shared with the plan, which makes a request of it only for a build.
    Defined(std::sync::Arc<Derivation>),
    /// Added, but failed validation; reported when planning.
    Invalid(Box<DerivationError>),
}

/// The derivations of one program and the roots it wants realised.
///
/// Handles returned by [`Graph::add`] can only refer to derivations added before, so a graph
/// built with `add` alone is acyclic. [`Graph::declare`] makes a handle first and
/// [`Graph::define`] gives it its derivation later (for graphs read from data, where the order
/// is not known up front); cycles made that way are found by the planner.
pub struct Graph {
    id: u64,
    pub(crate) slots: Vec<Slot>,
    pub(crate) roots: Vec<(String, OutputRef)>,
}

static GRAPH_IDS: AtomicU64 = AtomicU64::new(0);

impl Default for Graph {
    fn default() -> Self {
        Self::new()
    }
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Graph {
            id: GRAPH_IDS.fetch_add(1, Ordering::Relaxed),
            slots: Vec::new(),
            roots: Vec::new(),
        }
    }

    /// Adds a derivation, made with the builder API or from a type of the DSL; the handle can
    /// be used as an input of later ones.
    ///
    /// For a DSL type, the caller's source location is the derivation's location. A derivation
    /// that fails validation here (an env value holding a NUL byte, a file that cannot be
    /// rendered) is reported, with that location, when the graph is planned.
    #[track_caller]
    pub fn add<T: IntoDerivation>(&mut self, value: T) -> Drv<T> {
        self.push(value.into_derivation(Location::caller()))
    }

    /// Adds a derivation, or the error that stands in its place until planning.
    pub(crate) fn push<T: IntoDerivation>(
        &mut self,
        derivation: Result<Derivation, DerivationError>,
    ) -> Drv<T> {
        self.slots.push(match derivation {
            Ok(derivation) => Slot::Defined(std::sync::Arc::new(derivation)),
            Err(error) => Slot::Invalid(Box::new(error)),
        });
        Drv::new(DrvId {
            graph: self.id,
            index: self.slots.len() - 1,
        })
    }

    /// Makes a handle for a derivation defined later with [`Graph::define`].
    #[track_caller]
    pub fn declare(&mut self, name: &str) -> Drv {
        self.slots.push(Slot::Declared {
            name: name.to_string(),
            location: Location::caller(),
        });
        Drv::new(DrvId {
            graph: self.id,
            index: self.slots.len() - 1,
        })
    }

    /// Gives a declared handle its derivation.
    pub fn define(&mut self, handle: &Drv, derivation: Derivation) -> Result<(), GraphError> {
        let slot = self.slot_mut(handle.id)?;
        match slot {
            Slot::Defined(existing) => Err(GraphError::AlreadyDefined(existing.name.to_string())),
            Slot::Invalid(existing) => Err(GraphError::AlreadyDefined(existing.name.clone())),
            Slot::Declared { name, .. } if name != derivation.name.as_str() => {
                Err(GraphError::NameMismatch {
                    declared: name.clone(),
                    defined: derivation.name.to_string(),
                })
            }
            Slot::Declared { .. } => {
                *slot = Slot::Defined(std::sync::Arc::new(derivation));
                Ok(())
            }
        }
    }

    /// Asks for `output` to be realised and registered as the GC root `name`.
    pub fn root(&mut self, name: &str, output: impl Into<OutputRef>) {
        self.roots.push((name.to_string(), output.into()));
    }

    /// The derivation behind a handle, if it is of this graph, defined and valid.
    pub fn get<T: IntoDerivation>(&self, handle: &Drv<T>) -> Option<&Derivation> {
        match self.slot(handle.id).ok()? {
            Slot::Defined(d) => Some(d),
            Slot::Declared { .. } | Slot::Invalid(_) => None,
        }
    }

    /// The toolchains the derivations use, each once.
    pub fn toolchains(&self) -> Vec<crate::toolchain::Toolchain> {
        let set: std::collections::BTreeSet<&crate::toolchain::Toolchain> = self
            .slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::Defined(drv) => drv.toolchain.as_deref(),
                _ => None,
            })
            .collect();
        set.into_iter().cloned().collect()
    }

    /// The number of derivations (declared or defined).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the graph has no derivations.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub(crate) fn slot(&self, id: DrvId) -> Result<&Slot, GraphError> {
        if id.graph != self.id {
            return Err(GraphError::ForeignHandle);
        }
        self.slots.get(id.index).ok_or(GraphError::ForeignHandle)
    }

    fn slot_mut(&mut self, id: DrvId) -> Result<&mut Slot, GraphError> {
        if id.graph != self.id {
            return Err(GraphError::ForeignHandle);
        }
        self.slots
            .get_mut(id.index)
            .ok_or(GraphError::ForeignHandle)
    }
}
