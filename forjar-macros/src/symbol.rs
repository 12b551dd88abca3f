//! The names of forjar's attributes.

use std::fmt;

use syn::{Ident, Path};

#[derive(Copy, Clone, PartialEq, Eq)]
pub struct Symbol(pub &'static str);

pub const FORJAR: Symbol = Symbol("forjar");

// Container attributes.
pub const SCRIPT: Symbol = Symbol("script");
pub const BUILDER: Symbol = Symbol("builder");
pub const OUTPUTS: Symbol = Symbol("outputs");
pub const SYSTEM: Symbol = Symbol("system");
pub const SANDBOX: Symbol = Symbol("sandbox");
pub const FIXED_OUTPUT: Symbol = Symbol("fixed_output");
pub const FIXED_OUTPUT_MODE: Symbol = Symbol("fixed_output_mode");
pub const NETWORK: Symbol = Symbol("network");
pub const PROVIDE_BIN_SH: Symbol = Symbol("provide_bin_sh");
pub const RO_PATHS: Symbol = Symbol("ro_paths");
pub const TIMEOUT: Symbol = Symbol("timeout");
pub const MAX_SILENT: Symbol = Symbol("max_silent");
pub const MEMORY: Symbol = Symbol("memory");
pub const CPUS: Symbol = Symbol("cpus");
pub const NAME: Symbol = Symbol("name");
pub const ALLOW_IMPURE: Symbol = Symbol("allow_impure");

/// Every container attribute, for "unknown attribute" messages.
pub const CONTAINER: &[Symbol] = &[
    SCRIPT,
    BUILDER,
    OUTPUTS,
    SYSTEM,
    SANDBOX,
    FIXED_OUTPUT,
    FIXED_OUTPUT_MODE,
    NETWORK,
    PROVIDE_BIN_SH,
    RO_PATHS,
    TIMEOUT,
    MAX_SILENT,
    MEMORY,
    CPUS,
    NAME,
    ALLOW_IMPURE,
];

// Field (and fn parameter) attributes.
pub const INPUT: Symbol = Symbol("input");
pub const ENV: Symbol = Symbol("env");
pub const FILE: Symbol = Symbol("file");
pub const SKIP: Symbol = Symbol("skip");
pub const TOOLCHAIN: Symbol = Symbol("toolchain");

/// Every field attribute (`name` included).
pub const FIELD: &[Symbol] = &[INPUT, ENV, FILE, TOOLCHAIN, NAME, SKIP];

/// Every attribute of a derivation fn's parameters.
pub const PARAM: &[Symbol] = &[INPUT, ENV, FILE];

pub fn list(symbols: &[Symbol]) -> String {
    symbols
        .iter()
        .map(|s| format!("`{}`", s.0))
        .collect::<Vec<_>>()
        .join(", ")
}

impl PartialEq<Symbol> for Ident {
    fn eq(&self, word: &Symbol) -> bool {
        self == word.0
    }
}

impl PartialEq<Symbol> for &Ident {
    fn eq(&self, word: &Symbol) -> bool {
        *self == word.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl PartialEq<Symbol> for &Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
