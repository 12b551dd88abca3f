//! The lock file: what each toolchain of a program resolved to — its packages' names,
//! versions, architectures and digests, and the digest of the whole tree — written by the
//! program's `lock` command and read by every plan.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::dpkg::Database;
use super::{Toolchain, ToolchainError, lock_command};
use crate::hash::TreeDigest;

/// The lock file's name.
pub const LOCK_FILE: &str = "forjar.lock";

/// The format this version writes and reads.
const VERSION: u32 = 1;

const HEADER: &str = "# The toolchains of a forjar program, as its `lock` command resolved them.\n\
# Commit it with the program; run `lock` again to take newer packages.\n\n";

/// One package of a locked toolchain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    /// The package name.
    pub name: String,
    /// The installed version.
    pub version: String,
    /// The architecture (`amd64`, `all`, ...).
    pub architecture: String,
    /// For a host package, the BLAKE3 digest of its files as the toolchain holds them; for an
    /// archive package, `sha256:<hex>` of its `.deb`, as the archive's index gives it.
    pub digest: String,
    /// Where an archive package is fetched from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A toolchain as it was locked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedToolchain {
    /// The toolchain's name.
    pub name: String,
    /// Where its packages come from: `host`, the system at `root`; or `archive`, the Debian
    /// archive, each package by its `url`.
    pub source: String,
    /// The root of the system the packages were read from.
    pub root: PathBuf,
    /// The packages the program asks for.
    pub asked: Vec<String>,
    /// The digest of the toolchain's tree, which names its store entry.
    pub digest: TreeDigest,
    /// Every package, the asked ones and what they depend on, by name.
    #[serde(rename = "package")]
    pub packages: Vec<LockedPackage>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockFile {
    version: u32,
    #[serde(default, rename = "toolchain")]
    toolchains: Vec<LockedToolchain>,
}

/// A program's lock file, read (or empty when there is none yet).
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    exists: bool,
    toolchains: BTreeMap<String, LockedToolchain>,
}

impl Lock {
    /// Where a program's lock file is unless it is given: beside the program's `Cargo.toml`
    /// when cargo runs it (`$CARGO_MANIFEST_DIR`), else in the working directory.
    pub fn default_path() -> PathBuf {
        std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(LOCK_FILE)
    }

    /// An empty lock, to be written at `path`.
    pub fn empty(path: PathBuf) -> Lock {
        Lock {
            path,
            exists: false,
            toolchains: BTreeMap::new(),
        }
    }

    /// Reads the lock file at `path`; none there is an empty lock.
    pub fn read(path: &Path) -> Result<Lock, ToolchainError> {
        let bad = |reason: String| ToolchainError::BadLock {
            path: path.to_path_buf(),
            reason,
        };
        let (file, exists) = match fs::read_to_string(path) {
            Ok(text) => {
                let file: LockFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
                if file.version != VERSION {
                    return Err(bad(format!(
                        "it is of format version {}; this forjar reads version {VERSION}",
                        file.version
                    )));
                }
                (file, true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (LockFile::default(), false),
            Err(e) => return Err(bad(e.to_string())),
        };
        Ok(Lock {
            path: path.to_path_buf(),
            exists,
            toolchains: file
                .toolchains
                .into_iter()
                .map(|t| (t.name.clone(), t))
                .collect(),
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked toolchains, by name.
    pub fn toolchains(&self) -> &BTreeMap<String, LockedToolchain> {
        &self.toolchains
    }

    /// The entry of `toolchain`, checked against what the program asks for and what `db` says
    /// is installed now.
    pub(crate) fn check(
        &self,
        toolchain: &Toolchain,
        db: Option<&Database>,
    ) -> Result<&LockedToolchain, ToolchainError> {
        let name = toolchain.name().as_str();
        let Some(locked) = self.toolchains.get(name) else {
            return Err(ToolchainError::NotLocked {
                toolchain: name.to_string(),
                lock: self.path.clone(),
                command: lock_command(),
            });
        };
        let stale = |reason: String| ToolchainError::Stale {
            toolchain: name.to_string(),
            lock: self.path.clone(),
            reason,
            command: lock_command(),
        };
        let asked: Vec<&String> = toolchain.packages().iter().collect();
        if locked.asked.iter().collect::<Vec<_>>() != asked {
            return Err(stale(format!(
                "the program asks for {}, the lock has {}",
                list(asked),
                list(locked.asked.iter())
            )));
        }
        if locked.source != toolchain.origin().as_str() {
            return Err(stale(format!(
                "the program takes its packages from the {}, the lock from the {}",
                toolchain.origin().as_str(),
                locked.source
            )));
        }
        // An archive toolchain is pinned by the lock alone; the host's packages do not matter.
        let Some(db) = db else {
            return Ok(locked);
        };
        if locked.root != toolchain.root() {
            return Err(stale(format!(
                "the program reads packages from `{}`, the lock from `{}`",
                toolchain.root().display(),
                locked.root.display()
            )));
        }
        for package in &locked.packages {
            match db.get(&package.name) {
                None => {
                    return Err(stale(format!(
                        "`{}` {} is no longer installed",
                        package.name, package.version
                    )));
                }
                Some(installed) if installed.version != package.version => {
                    return Err(stale(format!(
                        "`{}` is {} on the host, {} in the lock",
                        package.name, installed.version, package.version
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(locked)
    }

    /// Records `locked` under its name, replacing what was there; returns the old entry.
    pub fn insert(&mut self, locked: LockedToolchain) -> Option<LockedToolchain> {
        self.toolchains.insert(locked.name.clone(), locked)
    }

    /// Whether the file existed when it was read.
    pub fn exists(&self) -> bool {
        self.exists
    }

    /// Writes the lock file: beside it first, then renamed over, so that a reader sees the old
    /// lock or the new one.
    pub fn write(&self) -> Result<(), ToolchainError> {
        let file = LockFile {
            version: VERSION,
            toolchains: self.toolchains.values().cloned().collect(),
        };
        let text = toml::to_string_pretty(&file).map_err(|e| ToolchainError::BadLock {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let io = |source| ToolchainError::Io {
            what: "cannot write the lock file",
            path: self.path.clone(),
            source,
        };
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        io::Write::write_all(&mut tmp, format!("{HEADER}{text}").as_bytes()).map_err(io)?;
        // A file to commit, read by whoever builds the program.
        tmp.as_file()
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(io)?;
        tmp.persist(&self.path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

fn list<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    let names: Vec<String> = names.into_iter().map(|n| format!("`{n}`")).collect();
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// How `new` differs from `old`, package by package: `make 4.3-4.1 -> 4.3-4.2`, `+ libfoo 1`.
pub fn changes(old: Option<&LockedToolchain>, new: &LockedToolchain) -> Vec<String> {
    let before: BTreeMap<&str, &LockedPackage> = old
        .map(|o| o.packages.iter().map(|p| (p.name.as_str(), p)).collect())
        .unwrap_or_default();
    let after: BTreeMap<&str, &LockedPackage> =
        new.packages.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut lines = Vec::new();
    for (name, package) in &after {
        match before.get(name) {
            None => lines.push(format!("+ {name} {}", package.version)),
            Some(old) if old.version != package.version => {
                lines.push(format!("~ {name} {} -> {}", old.version, package.version));
            }
            Some(old) if old.digest != package.digest => {
                lines.push(format!("~ {name} {} (its files changed)", package.version));
            }
            Some(_) => {}
        }
    }
    for (name, package) in &before {
        if !after.contains_key(name) {
            lines.push(format!("- {name} {}", package.version));
        }
    }
    lines
}
