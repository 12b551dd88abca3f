//! forjar: infrastructure and build pipelines as typed Rust.
//!
//! A program describes *derivations* — hermetic build steps with named inputs, outputs,
//! environment, files and constraints — in a [`Graph`]. forjar hashes each derivation's closure
//! with BLAKE3 ([`hash`]), plans the DAG ([`plan`]), and keeps what was built in a
//! content-checked [`store`] with provenance.
//!
//! ```no_run
//! use forjar::prelude::*;
//!
//! fn main() -> forjar::Result<()> {
//!     forjar::main(|g| {
//!         let src = Source::dir("examples/hello")?;
//!         let hello = g.add(
//!             Derivation::builder("hello")
//!                 .sandbox(SandboxLevel::HostTools)
//!                 .script("mkdir -p $out/bin && cc -O2 -o $out/bin/hello $src/hello.c")
//!                 .input("src", src)
//!                 .build()?,
//!         );
//!         g.root("hello", hello);
//!         Ok(())
//!     })
//! }
//! ```
#![warn(missing_docs)]

pub mod cli;
pub mod derivation;
pub mod exec;
pub mod hash;
pub mod plan;
pub mod request;
pub mod sandbox;
pub mod store;

pub use cli::main;
pub use derivation::{Derivation, DerivationBuilder, Drv, Graph, Input, Limits, OutputRef, Source};
pub use request::SandboxLevel;

/// Everything a program needs, to `use forjar::prelude::*`.
pub mod prelude {
    pub use crate::derivation::{Derivation, Drv, Graph, Input, OutputRef, Source};
    pub use crate::request::SandboxLevel;
}

/// Any error of forjar's library API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A derivation failed validation.
    #[error(transparent)]
    Derivation(#[from] derivation::DerivationError),
    /// A source could not be used.
    #[error(transparent)]
    Source(#[from] derivation::SourceError),
    /// A graph handle was misused.
    #[error(transparent)]
    Graph(#[from] derivation::GraphError),
    /// The graph could not be planned.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Content could not be hashed.
    #[error(transparent)]
    Hash(#[from] hash::HashError),
    /// A value broke a request invariant.
    #[error(transparent)]
    Request(#[from] request::RequestError),
    /// A value is invalid.
    #[error(transparent)]
    Invalid(#[from] request::InvalidValue),
}

/// `Result` with forjar's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
