//! Inputs of a derivation: other derivations' outputs, and sources imported from the host.

use std::fmt;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use compact_str::CompactString;

use super::{Derivation, IntoDerivation};
use crate::name::{InvalidValue, Name};

/// Identifies a derivation within the [`Graph`](super::Graph) that made its handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DrvId {
    pub(crate) graph: u64,
    pub(crate) index: usize,
}

/// A typed handle to a derivation added to a graph; usable as an input of other derivations.
///
/// `T` is what the derivation was made from: the struct of `#[derive(Derivation)]`, the handle
/// type named by a `#[forjar::derivation]` fn, or [`Derivation`] for the builder API. A handle
/// dereferences to `T`'s output accessors, one method per declared output, so that naming an
/// output the type does not declare is a compile error:
///
/// ```
/// use forjar::prelude::*;
///
/// #[derive(Derivation)]
/// #[forjar(outputs = ["out", "dev"], script = "echo lib > $out; echo headers > $dev")]
/// struct Lib;
///
/// let mut g = Graph::new();
/// let lib = g.add(Lib);
/// let headers: OutputRef = lib.dev();
/// # let _ = headers;
/// ```
///
/// ```compile_fail
/// # use forjar::prelude::*;
/// # #[derive(Derivation)]
/// # #[forjar(outputs = ["out", "dev"], script = "echo lib > $out; echo headers > $dev")]
/// # struct Lib;
/// # let mut g = Graph::new();
/// let lib = g.add(Lib);
/// lib.doc(); // `Lib` declares no output `doc`
/// ```
pub struct Drv<T: IntoDerivation = Derivation> {
    pub(crate) id: DrvId,
    accessors: T::Accessors,
}

impl<T: IntoDerivation> Drv<T> {
    pub(crate) fn new(id: DrvId) -> Self {
        Drv {
            id,
            accessors: T::Accessors::from(id),
        }
    }

    /// The output a handle stands for when it is used as an input: `T`'s first declared output,
    /// `out` unless the type says otherwise.
    pub fn default_output(&self) -> OutputRef {
        OutputRef::new(self.id, T::DEFAULT)
    }

    /// An output named at run time. The name is checked against the derivation's outputs when
    /// the graph is planned; prefer the accessors (`drv.dev()`), which are checked when the
    /// program is compiled.
    pub fn output(&self, name: &str) -> OutputRef {
        OutputRef::new(self.id, name)
    }
}

impl<T: IntoDerivation> Deref for Drv<T> {
    type Target = T::Accessors;

    fn deref(&self) -> &T::Accessors {
        &self.accessors
    }
}

impl<T: IntoDerivation> Clone for Drv<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: IntoDerivation> Copy for Drv<T> {}

impl<T: IntoDerivation> fmt::Debug for Drv<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Drv#{}", self.id.index)
    }
}

impl<T: IntoDerivation> PartialEq for Drv<T> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<T: IntoDerivation> Eq for Drv<T> {}

/// One output of a derivation in a graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OutputRef {
    pub(crate) drv: DrvId,
    pub(crate) output: CompactString,
}

impl OutputRef {
    pub(crate) fn new(drv: DrvId, output: &str) -> Self {
        OutputRef {
            drv,
            output: output.into(),
        }
    }

    /// The output's name.
    pub fn name(&self) -> &str {
        &self.output
    }
}

impl<T: IntoDerivation> From<Drv<T>> for OutputRef {
    fn from(drv: Drv<T>) -> Self {
        drv.default_output()
    }
}

impl<T: IntoDerivation> From<&Drv<T>> for OutputRef {
    fn from(drv: &Drv<T>) -> Self {
        drv.default_output()
    }
}

/// Why a source could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The path does not exist.
    #[error("source `{}` does not exist (relative paths are taken from `{}`)", .path.display(), .cwd.display())]
    NotFound {
        /// The path as given.
        path: PathBuf,
        /// The working directory it was resolved in.
        cwd: PathBuf,
    },
    /// The path is not of the kind asked for.
    #[error("source `{}` is {actual}, not {wanted}; use `Source::{constructor}`", .path.display())]
    WrongKind {
        /// The path.
        path: PathBuf,
        /// What it is.
        actual: &'static str,
        /// What was asked for.
        wanted: &'static str,
        /// The constructor that fits.
        constructor: &'static str,
    },
    /// The path could not be examined.
    #[error("cannot read source `{}`: {source}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The name given to a source is not a valid name.
    #[error(transparent)]
    Name(#[from] InvalidValue),
    /// An ignore pattern is not valid gitignore syntax.
    #[error("source `{}`: ignore pattern `{pattern}` is not valid: {reason}", .path.display())]
    Ignore {
        /// The source's path.
        path: PathBuf,
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A host file or directory, imported into the store by content: what it holds, less what its
/// ignore rules leave out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source {
    path: PathBuf,
    name: Name,
    ignore: super::ignore::IgnoreRules,
}

impl Source {
    /// A directory. Relative paths are resolved against the working directory.
    pub fn dir(path: impl AsRef<Path>) -> Result<Source, SourceError> {
        Self::checked(path.as_ref(), Some(true))
    }

    /// A regular file. Relative paths are resolved against the working directory.
    pub fn file(path: impl AsRef<Path>) -> Result<Source, SourceError> {
        Self::checked(path.as_ref(), Some(false))
    }

    /// A file or directory, whichever is there.
    pub fn path(path: impl AsRef<Path>) -> Result<Source, SourceError> {
        Self::checked(path.as_ref(), None)
    }

    fn checked(path: &Path, want_dir: Option<bool>) -> Result<Source, SourceError> {
        let resolved = std::fs::canonicalize(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => SourceError::NotFound {
                path: path.to_path_buf(),
                cwd: std::env::current_dir().unwrap_or_default(),
            },
            _ => SourceError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let meta = std::fs::metadata(&resolved).map_err(|source| SourceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let actual = if meta.is_dir() {
            "a directory"
        } else if meta.is_file() {
            "a file"
        } else {
            "a special file"
        };
        match want_dir {
            Some(true) if !meta.is_dir() => {
                return Err(SourceError::WrongKind {
                    path: path.to_path_buf(),
                    actual,
                    wanted: "a directory",
                    constructor: "file",
                });
            }
            Some(false) if !meta.is_file() => {
                return Err(SourceError::WrongKind {
                    path: path.to_path_buf(),
                    actual,
                    wanted: "a file",
                    constructor: "dir",
                });
            }
            _ => {}
        }
        let base = resolved
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Source {
            name: Name::sanitized(&base),
            path: resolved,
            ignore: super::ignore::IgnoreRules::default(),
        })
    }

    /// Leaves out of a directory what matches `patterns`, in gitignore syntax relative to its
    /// root: `*.md` at any depth, `/README.md` at the root only, `target/` directories only,
    /// `!NOTES.md` to keep what an earlier pattern left out. What is left out is neither hashed
    /// nor imported: changing it rebuilds nothing. An invalid pattern is an error naming it.
    ///
    /// ```no_run
    /// # fn main() -> forjar::Result<()> {
    /// let patches = forjar::Source::dir("patches")?.ignore(["*.md", "/drafts/"])?;
    /// # Ok(()) }
    /// ```
    pub fn ignore<I, S>(mut self, patterns: I) -> Result<Source, SourceError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.ignore
            .patterns
            .extend(patterns.into_iter().map(Into::into));
        match self.ignore.matcher(&self.path) {
            Ok(_) => Ok(self),
            Err((pattern, reason)) => Err(SourceError::Ignore {
                path: self.path,
                pattern,
                reason,
            }),
        }
    }

    /// Also leaves out what the `.gitignore` files inside the directory ignore (each applying
    /// to its own directory and below, the nearest deciding, as git reads them), and the `.git`
    /// directory. Files outside the source (a `.gitignore` above it, git's global excludes) do
    /// not count, so the source is the same on every machine.
    pub fn gitignore(mut self) -> Source {
        self.ignore.gitignore = true;
        self
    }

    /// Its ignore rules.
    pub(crate) fn ignore_rules(&self) -> &super::ignore::IgnoreRules {
        &self.ignore
    }

    /// The same source under another store name (by default, its file name).
    pub fn named(self, name: &str) -> Result<Source, SourceError> {
        Ok(Source {
            name: Name::new(name)?,
            ..self
        })
    }

    /// The absolute host path.
    pub fn host_path(&self) -> &Path {
        &self.path
    }

    /// The name of its store entry.
    pub fn name(&self) -> &Name {
        &self.name
    }
}

/// An input of a derivation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// An output of another derivation (fixed-output ones included).
    Output(OutputRef),
    /// A host file or directory, imported by content. Boxed: a derivation's inputs are mostly
    /// outputs, and each input is as large as the larger kind.
    Source(Box<Source>),
}

impl From<OutputRef> for Input {
    fn from(output: OutputRef) -> Self {
        Input::Output(output)
    }
}

impl From<&OutputRef> for Input {
    fn from(output: &OutputRef) -> Self {
        Input::Output(output.clone())
    }
}

impl<T: IntoDerivation> From<Drv<T>> for Input {
    fn from(drv: Drv<T>) -> Self {
        Input::Output(drv.default_output())
    }
}

impl<T: IntoDerivation> From<&Drv<T>> for Input {
    fn from(drv: &Drv<T>) -> Self {
        Input::Output(drv.default_output())
    }
}

impl From<Source> for Input {
    fn from(source: Source) -> Self {
        Input::Source(Box::new(source))
    }
}

impl From<&Source> for Input {
    fn from(source: &Source) -> Self {
        Input::Source(Box::new(source.clone()))
    }
}
