//! Procedural macros for forjar.
//!
//! The `#[derive(Derivation)]` and `#[forjar::derivation]` macros of the DSL live here; they expand
//! to forjar's runtime builder API (`forjar::Derivation::builder`). This crate parses, checks and
//! expands; it never reads files or hashes anything.
