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
//! fn main() -> forjar::ExitCode {
//!     forjar::main!(|g| {
//!         // `src/hello.c` beside the program's Cargo.toml, wherever it is run from.
//!         let src = Source::dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))?;
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
pub mod explain;
pub mod hash;
pub mod machine;
pub mod map;
pub mod name;
pub mod plan;
#[cfg(feature = "remote")]
pub mod remote;
pub mod request;
pub mod sandbox;
pub mod store;
mod threads;
pub mod toolchain;
mod walk;

pub use cli::{ExitCode, Program};
pub use derivation::{Derivation, DerivationBuilder, Drv, Graph, Input, OutputRef, Source};
pub use forjar_macros::{Derivation, derivation};
pub use name::Limits;
pub use request::{HashMode, SandboxLevel};
pub use toolchain::Toolchain;

/// Everything a program needs, to `use forjar::prelude::*`.
pub mod prelude {
    pub use crate::derivation::{Derivation, Drv, Graph, Input, OutputRef, Source};
    pub use crate::request::{HashMode, SandboxLevel};
    pub use crate::toolchain::Toolchain;
    pub use forjar_macros::Derivation;
}

/// The book's guide chapters, whose examples are compiled (and run) as doc tests.
#[cfg(doctest)]
mod book {
    #[doc = include_str!("../../book/src/guide/your-own-program.md")]
    mod your_own_program {}
    #[doc = include_str!("../../book/src/guide/writing-derivations.md")]
    mod writing_derivations {}
    #[doc = include_str!("../../book/src/guide/builder-api.md")]
    mod builder_api {}
    #[doc = include_str!("../../book/src/reference/toolchains.md")]
    mod toolchains {}
}

/// What the macros' expansions call; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::derivation::{
        DefaultOutputs, Derivation, DerivationError, Drv, DrvId, Graph, InputField, IntoDerivation,
        IntoEnv, IntoInput, IntoToolchain, OutputRef, Param, Part, Spec,
    };
    pub use crate::request::{HashMode, RequestError, SandboxLevel};
    pub use core::option::Option::{None, Some};
    pub use core::panic::Location;
    pub use core::result::Result;
    pub use serde::Serialize;

    /// The output `name` of the handle `drv`.
    pub fn output(drv: DrvId, name: &str) -> OutputRef {
        OutputRef::new(drv, name)
    }

    /// A file field's contents, rendered by its path's extension.
    pub fn render<T: Serialize + ?Sized>(path: &str, value: &T) -> Result<Vec<u8>, RequestError> {
        crate::derivation::render_file(path, value)
    }

    /// Adds what a derivation fn made to the graph, typed by its handle type.
    pub fn add<T: IntoDerivation>(
        graph: &mut Graph,
        derivation: Result<Derivation, DerivationError>,
    ) -> Drv<T> {
        graph.push(derivation)
    }

    /// The type of a `#[forjar(name)]` field: text.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the name of a derivation",
        label = "not text",
        note = "a `#[forjar(name)]` field is a `String` or `&str` (letters, digits and `+ - . _ ? =`), checked when the derivation is added"
    )]
    pub trait IntoName {
        /// The name.
        fn into_name(self) -> String;
    }

    impl IntoName for String {
        fn into_name(self) -> String {
            self
        }
    }

    impl IntoName for &str {
        fn into_name(self) -> String {
            self.to_string()
        }
    }

    impl IntoName for &String {
        fn into_name(self) -> String {
            self.clone()
        }
    }

    impl IntoName for Box<str> {
        fn into_name(self) -> String {
            self.into()
        }
    }

    impl IntoName for std::borrow::Cow<'_, str> {
        fn into_name(self) -> String {
            self.into_owned()
        }
    }
}

/// Any error of forjar's library API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A derivation failed validation.
    #[error(transparent)]
    Derivation(Box<derivation::DerivationError>),
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
    Invalid(#[from] name::InvalidValue),
    /// A toolchain could not be resolved or locked.
    #[error(transparent)]
    Toolchain(#[from] toolchain::ToolchainError),
}

impl From<derivation::DerivationError> for Error {
    fn from(error: derivation::DerivationError) -> Self {
        Error::Derivation(Box::new(error))
    }
}

/// `Result` with forjar's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
