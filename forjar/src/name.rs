//! The shared vocabulary at the bottom of forjar: names, the rules on values, and the limits of
//! a build. It imports nothing of forjar's, so everything above may use it.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

pub(crate) use forjar_rules as rules;
pub use forjar_rules::{KNOWN_SYSTEMS, MAX_NAME_LEN, RESERVED_ENV};

/// A value that failed a request invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} `{value}`: {reason}")]
pub struct InvalidValue {
    /// The field or kind of value, e.g. "env key" or "output name".
    pub field: &'static str,
    /// The offending value, escaped for printing.
    pub value: String,
    /// What is wrong and, where it helps, what to do.
    pub reason: String,
}

impl InvalidValue {
    pub(crate) fn new(
        field: &'static str,
        value: impl AsRef<[u8]>,
        reason: impl Into<String>,
    ) -> Self {
        InvalidValue {
            field,
            value: shown(value.as_ref()),
            reason: reason.into(),
        }
    }
}

/// `as_str`, `Display` and serde for the string newtypes of `name` and `request` whose
/// constructor is `new(impl Into<String>)`: each shows exactly its validated text, and is read
/// back through its constructor, so a deserialized value is as valid as a built one.
macro_rules! string_newtype {
    ($($name:ident),+) => {$(
        impl $name {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(d)?;
                $name::new(text).map_err(serde::de::Error::custom)
            }
        }
    )+};
}
pub(crate) use string_newtype;

string_newtype!(Name, OutputName, StoreDir);

/// Bytes printed for a person: UTF-8 as is where it is printable, everything else escaped.
fn shown(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.escape_debug().to_string(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// A derivation or source name: the human part of a store entry name.
///
/// ```
/// use forjar::name::Name;
/// assert!(Name::new("hello-2.12").is_ok());
/// assert!(Name::new("hello world").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(CompactString);

impl Name {
    /// Validates a name: 1 to 200 characters of `A-Z a-z 0-9 + - . _ ? =`, not starting with `.`.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidValue> {
        Name::of_str(&name.into())
    }

    /// [`Name::new`] of borrowed text: a short name is made without an allocation.
    pub(crate) fn of_str(name: &str) -> Result<Self, InvalidValue> {
        rules::name(name).map_err(|reason| InvalidValue::new("name", name, reason))?;
        Ok(Name(name.into()))
    }

    /// A name made from an arbitrary file name: disallowed characters become `_`, a leading
    /// `.` is dropped, and the result is cut to the maximum length. Used for sources, whose
    /// default name is their file name.
    pub fn sanitized(raw: &str) -> Self {
        let mut name: String = raw
            .trim_start_matches('.')
            .chars()
            .map(|c| if rules::is_name_char(c) { c } else { '_' })
            .collect();
        if name.len() > MAX_NAME_LEN {
            let mut end = MAX_NAME_LEN;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name.truncate(end);
        }
        if name.is_empty() {
            name.push_str("source");
        }
        Name(name.into())
    }
}

/// Checks an identifier as used for output and input names.
pub(crate) fn identifier(field: &'static str, value: &str) -> Result<(), InvalidValue> {
    rules::identifier(value).map_err(|reason| InvalidValue::new(field, value, reason))
}

/// The name of one output of a derivation (`out`, `dev`, `doc`, ...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutputName(CompactString);

impl OutputName {
    /// Validates an output name: a shell identifier of at most 64 bytes, not a reserved variable.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidValue> {
        let name = name.into();
        identifier("output name", &name)?;
        Ok(OutputName(name.into()))
    }

    /// The default output, `out`.
    pub fn out() -> Self {
        OutputName(CompactString::const_new("out"))
    }
}

/// A store directory: an absolute, clean path in UTF-8, as outputs are built for it and as it
/// appears in their paths.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreDir(String);

impl StoreDir {
    /// Validates a store directory: it starts with `/`, has no empty, `.` or `..` component
    /// and no NUL, and is not `/` itself.
    pub fn new(path: impl Into<String>) -> Result<Self, InvalidValue> {
        let path = path.into();
        rules::abs_path(&path)
            .map_err(|reason| InvalidValue::new("store directory", &path, reason))?;
        Ok(StoreDir(path))
    }

    /// A host path as a store directory; one that is not UTF-8 is refused too.
    pub fn from_path(path: &Path) -> Result<Self, InvalidValue> {
        match path.to_str() {
            Some(text) => StoreDir::new(text),
            None => Err(InvalidValue::new(
                "store directory",
                path.as_os_str().as_encoded_bytes(),
                "must be UTF-8; choose another with --store or FORJAR_STORE",
            )),
        }
    }

    /// The directory as a `Path`.
    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }
}

/// Resource limits of a build. None of them is part of the closure key: they can make a build
/// fail, but cannot change what a successful build produces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Total wall-clock time.
    pub timeout: Option<Duration>,
    /// Time without output on the log.
    pub max_silent: Option<Duration>,
    /// Memory cap in bytes.
    pub memory: Option<u64>,
    /// CPUs the build may use (`FORJAR_BUILD_CORES`).
    pub cpus: Option<u32>,
    /// Largest total output size in bytes.
    pub max_output_size: Option<u64>,
    /// Largest log kept, in bytes.
    pub max_log_size: Option<u64>,
    /// Most processes the builder and everything it starts may have at once. Left out of the
    /// wire form when unset, so that a peer of an earlier version reads the limits as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u64>,
}

impl Limits {
    /// No limit set: each is then its default.
    pub const UNSET: Limits = Limits {
        timeout: None,
        max_silent: None,
        memory: None,
        cpus: None,
        max_output_size: None,
        max_log_size: None,
        max_processes: None,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::UNSET
    }
}

/// The bound on a build's outputs, in bytes, when a derivation sets none: every byte of an
/// output is read to hash and scan it (a sparse file counts whole), so its size is bounded
/// like every other cost of a build.
pub const DEFAULT_MAX_OUTPUT_SIZE: u64 = 64 << 30;
/// The bound on a build's `/build` directory, in bytes (apparent size).
pub const MAX_BUILD_DIR_SIZE: u64 = 64 << 30;
/// The most processes a build may have at once when a derivation sets nothing: a fork bomb
/// stops here.
pub const DEFAULT_MAX_PROCESSES: u64 = 4096;

impl Limits {
    /// The bound on the outputs' total size: the derivation's, or [`DEFAULT_MAX_OUTPUT_SIZE`].
    pub fn output_cap(&self) -> u64 {
        self.max_output_size.unwrap_or(DEFAULT_MAX_OUTPUT_SIZE)
    }

    /// The bound on the build's processes at once: the derivation's, or
    /// [`DEFAULT_MAX_PROCESSES`].
    pub fn process_cap(&self) -> u64 {
        self.max_processes.unwrap_or(DEFAULT_MAX_PROCESSES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_with_the_offending_character() {
        assert!(Name::new("hello-2.12_x+y").is_ok());
        let err = Name::new("hello world").unwrap_err();
        assert_eq!(err.field, "name");
        assert!(err.to_string().contains("`hello world`"), "{err}");
        assert!(err.to_string().contains("' ' at byte 5"), "{err}");
        assert!(Name::new("").is_err());
        assert!(Name::new(".hidden").is_err());
        assert!(Name::new("x".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn sanitized_names_are_valid() {
        for raw in ["héllo wörld", ".git", "", "a/b", &"é".repeat(150)] {
            let name = Name::sanitized(raw);
            assert_eq!(Name::new(name.as_str()), Ok(name.clone()), "from {raw:?}");
        }
    }
}
