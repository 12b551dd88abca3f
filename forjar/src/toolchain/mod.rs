//! Toolchains: the tools a hermetic build runs, brought into the store by content (the book's
//! reference, "Toolchains").
//!
//! A [`Toolchain`] names Debian packages. Their files — the files dpkg lists for each package
//! and everything it depends on, as the host has them installed, or as the Debian archive has
//! them ([`Toolchain::from_archive`]) — are imported into one store entry laid out as a merged-`/usr` root file system, keyed by its content. A build given the
//! toolchain sees that entry's `/usr` (and `/bin`, `/lib`, ... as links into it), and nothing
//! else of the host: `/usr/bin/cc` works, and the build's key depends on exactly the files of
//! the packages it names, not on whatever else the host has installed.
//!
//! The packages a toolchain resolved to are pinned in the program's lock file
//! ([`lock`](Lock), `forjar.lock`), like `Cargo.lock`: names, versions and digests. A build
//! whose toolchain is missing from the lock, or whose lock no longer matches what is
//! installed, is refused with the command that updates it.
//!
//! ```
//! use forjar::prelude::*;
//!
//! let cc = Toolchain::from_host("cc", ["gcc", "libc6-dev", "coreutils"])?;
//! let hello = Derivation::builder("hello")
//!     .toolchain(&cc)
//!     .script("mkdir -p $out/bin && printf 'int main(void) { return 0; }' | cc -x c -o $out/bin/hello -")
//!     .build()?;
//! # let _ = hello;
//! # Ok::<(), forjar::Error>(())
//! ```

mod archive;
mod assemble;
mod dpkg;
mod lock;

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

pub(crate) use archive::download;
pub(crate) use assemble::import;
pub(crate) use dpkg::Database;
pub use lock::{LOCK_FILE, Lock, LockedPackage, LockedToolchain, changes};

use crate::hash::{HashError, TreeDigest};
use crate::name::{InvalidValue, Name};
use crate::store::StoreError;

/// The package every toolchain holds, for the `/bin/sh` a script runs under.
pub const SHELL_PACKAGE: &str = "dash";

/// A set of Debian packages whose files a hermetic build sees as its `/usr`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Toolchain {
    name: Name,
    /// `name`, or `name=version` for a pinned archive package.
    packages: BTreeSet<String>,
    root: PathBuf,
    origin: Origin,
}

/// Where a toolchain's packages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// As installed in a Debian system: the host's, or one at another root.
    Installed,
    /// Fetched from the Debian archive the machine's apt is configured with.
    Archive,
}

impl Origin {
    /// As the lock file writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Installed => "host",
            Origin::Archive => "archive",
        }
    }
}

impl Toolchain {
    /// The host's installed `packages` (with what they depend on, and `dash` for `/bin/sh`),
    /// under the store name `name`. The files are read from the host when the toolchain is
    /// locked or missing from the store; see the module documentation.
    pub fn from_host<I, P>(name: &str, packages: I) -> Result<Toolchain, InvalidValue>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        Self::new(name, packages, Origin::Installed)
    }

    /// `packages` from the Debian archive the machine's apt is configured with (its sources
    /// and package lists, `apt-get update`), with what they depend on and `dash`: each at the
    /// version apt would install, or at the one pinned as `name=version` (`make=4.3-4.1`).
    /// `lock` resolves them and fetches each `.deb`, checked against the SHA-256 apt's index
    /// gives; the lock then pins the URLs and digests, so another machine fetches the same
    /// files, whatever it has installed. Downloading needs forjar's `fetch` feature.
    pub fn from_archive<I, P>(name: &str, packages: I) -> Result<Toolchain, InvalidValue>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        Self::new(name, packages, Origin::Archive)
    }

    fn new<I, P>(name: &str, packages: I, origin: Origin) -> Result<Toolchain, InvalidValue>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        let name = Name::new(name)?;
        let mut set = BTreeSet::from([SHELL_PACKAGE.to_string()]);
        for package in packages {
            let package = package.as_ref();
            match (package.split_once('='), origin) {
                (Some((name, version)), Origin::Archive) => {
                    check_package_name(name)?;
                    check_version(version)?;
                }
                (Some(_), Origin::Installed) => {
                    return Err(InvalidValue::new(
                        "Debian package name",
                        package,
                        "a toolchain of installed packages takes the version installed; pin \
                         versions with `Toolchain::from_archive`",
                    ));
                }
                (None, _) => check_package_name(package)?,
            }
            set.insert(package.to_string());
        }
        Ok(Toolchain {
            name,
            packages: set,
            root: PathBuf::from("/"),
            origin,
        })
    }

    /// Where the packages come from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The package names, without pinned versions.
    pub(crate) fn package_names(&self) -> impl Iterator<Item = &str> {
        self.packages
            .iter()
            .map(|p| p.split_once('=').map_or(p.as_str(), |(name, _)| name))
    }

    /// The pinned versions, by package name.
    pub(crate) fn pins(&self) -> impl Iterator<Item = (&str, &str)> {
        self.packages.iter().filter_map(|p| p.split_once('='))
    }

    /// The same packages, as installed in the Debian system whose root is `root` (a chroot or
    /// sysroot) rather than the host's `/`.
    pub fn with_root(self, root: impl AsRef<Path>) -> Result<Toolchain, InvalidValue> {
        let root = root.as_ref();
        if self.origin == Origin::Archive {
            return Err(InvalidValue::new(
                "toolchain root",
                root.to_string_lossy().as_bytes(),
                "a toolchain from the archive has no root; `with_root` goes with `from_host`",
            ));
        }
        if !root.is_absolute() {
            return Err(InvalidValue::new(
                "toolchain root",
                root.to_string_lossy().as_bytes(),
                "must be an absolute path",
            ));
        }
        Ok(Toolchain {
            root: root.to_path_buf(),
            ..self
        })
    }

    /// The store name.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The packages asked for (`dash` included).
    pub fn packages(&self) -> &BTreeSet<String> {
        &self.packages
    }

    /// The root of the system the packages are read from.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Debian policy §5.6.1: at least two characters of `a-z 0-9 + - .`, starting alphanumeric.
fn check_package_name(name: &str) -> Result<(), InvalidValue> {
    let valid = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if valid {
        Ok(())
    } else {
        Err(InvalidValue::new(
            "Debian package name",
            name,
            "package names are at least two of `a-z 0-9 + - .`, starting with a letter or digit \
             (`dpkg -l` lists them)",
        ))
    }
}

/// Debian policy §5.6.12: `[epoch:]upstream[-revision]` of `A-Z a-z 0-9 . + ~ - :`, starting
/// with a digit.
fn check_version(version: &str) -> Result<(), InvalidValue> {
    let valid = version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-:".contains(c));
    if valid {
        Ok(())
    } else {
        Err(InvalidValue::new(
            "Debian package version",
            version,
            "a version starts with a digit and holds `A-Z a-z 0-9 . + ~ - :` (`apt-cache madison \
             PACKAGE` lists those the archive has)",
        ))
    }
}

/// Why a toolchain could not be resolved, locked or imported.
#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    /// A package asked for, or needed by one, is not installed.
    #[error(
        "toolchain package `{package}`{} is not installed in `{}`; install it (`apt-get install {package}`) or take it out of the toolchain",
        .wanted_by.as_ref().map(|w| format!(" (needed by `{w}`)")).unwrap_or_default(),
        .root.display()
    )]
    NotInstalled {
        /// The package (or alternatives, `a | b`).
        package: String,
        /// The package that depends on it.
        wanted_by: Option<String>,
        /// The system's root.
        root: PathBuf,
    },
    /// A file of the host could not be read or written.
    #[error("{what} `{}`: {source}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The lock file has no entry for a toolchain.
    #[error(
        "toolchain `{toolchain}` is not in the lock file `{}`; run `{command}` to lock it",
        .lock.display()
    )]
    NotLocked {
        /// The toolchain's name.
        toolchain: String,
        /// The lock file.
        lock: PathBuf,
        /// The command that locks it.
        command: String,
    },
    /// The lock file's entry no longer matches the program or the host.
    #[error(
        "the lock file `{}` is out of date for toolchain `{toolchain}`: {reason}; run `{command}` to update it",
        .lock.display()
    )]
    Stale {
        /// The toolchain's name.
        toolchain: String,
        /// The lock file.
        lock: PathBuf,
        /// What differs.
        reason: String,
        /// The command that updates it.
        command: String,
    },
    /// The host's files of a locked toolchain are not what was locked.
    #[error(
        "the host's files of toolchain `{toolchain}` differ from the lock file `{}`: {detail}; run `{command}` to lock what is installed now",
        .lock.display()
    )]
    Changed {
        /// The toolchain's name.
        toolchain: String,
        /// The lock file.
        lock: PathBuf,
        /// Which packages differ, and how.
        detail: String,
        /// The command that updates the lock.
        command: String,
    },
    /// The lock file cannot be read.
    #[error("cannot read the lock file `{}`: {reason}", .path.display())]
    BadLock {
        /// The lock file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Importing into the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing the assembled toolchain failed.
    #[error(transparent)]
    Hash(#[from] HashError),
}

/// The command a user runs to (re)lock this program's toolchains: as cargo runs it when cargo
/// started the program, else the program itself.
pub fn lock_command() -> String {
    let exe = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .unwrap_or_default();
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into());
    let under_cargo = std::env::var_os("CARGO_MANIFEST_DIR").is_some();
    let in_examples = exe
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|d| d == "examples");
    match (under_cargo, in_examples) {
        (true, true) => format!("cargo run --example {name} -- lock"),
        (true, false) => "cargo run -- lock".into(),
        (false, _) => format!("{} lock", exe.display()),
    }
}

/// What a toolchain resolved to, as it stands in a plan.
#[derive(Debug, Clone)]
pub struct PlannedToolchain {
    /// The toolchain as the program gives it.
    pub toolchain: Toolchain,
    /// Its entry in the lock file.
    pub locked: LockedToolchain,
    /// The lock file.
    pub lock: PathBuf,
}

impl PlannedToolchain {
    /// The digest of the toolchain's tree, from the lock.
    pub fn digest(&self) -> TreeDigest {
        self.locked.digest
    }
}
