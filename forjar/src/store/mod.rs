//! The store: content-checked entries with provenance (the book: "The store").
//!
//! ```text
//! <store>/.forjar-store            marks the directory as a store, with its format version
//! <store>/<h>-<name>/content       the output; read-only, mtime 1
//! <store>/<h>-<name>/meta.yaml     provenance
//! <store>/.tmp/                    staging on the same filesystem; swept on open
//! <store>/.locks/keys              every key's lock (a byte of it) and its holder's note
//! <store>/.logs/<h>.log            build logs
//! <store>/.roots/                  GC roots (symlinks)
//! <store>/.profiles/<p>/           a profile: `<n>.yaml` generations, `current`, `roots/<root>`
//! <store>/.cache/                  the source digest cache
//! <store>/.digests/<h>-<name>      each entry's tree digest, kept apart from the entry
//! <store>/.failed/                 build directories kept by `--keep-failed`
//! <store>/.realisations/<h>         where a build's outputs are, when not where its key says
//! <store>/.builds/<name>.json       the last build of each derivation name
//! <store>/.settings.yaml            the store's settings (`keep-build-inputs`)
//! <store>/.pending/<boot>.<pid>.<n>/ entries installed and not yet synced (`pending`)
//! ```
//!
//! An entry is valid exactly when its directory exists: it is staged in `.tmp/` and renamed
//! into place in one `rename(2)`, after a marker of its name in the process's window of
//! entries not yet synced. A sync (`Store::sync`, before any generation or root is recorded)
//! makes a window's entries durable at once; after a crash, the entries an earlier boot's
//! window names are checked and removed if they lost anything (`pending`).
//!
//! Every open `Store` holds a shared lock on `.locks/store.lock`; garbage collection takes it
//! exclusively, so that it never deletes an entry another process is about to use or build on.

mod builddir;
mod gc;
mod install;
mod listing;
mod meta;
mod pending;
mod profile;
mod realisation;
mod settings;
mod tree;
mod verify;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

pub use crate::hash::EntryName;
pub(crate) use builddir::BuildDir;
pub use gc::{GcReport, Root, RootTarget};
pub(crate) use install::Scanned;
pub use install::{Committed, Draft, ImportOutcome, KeyLock, Mismatch, Staging};
pub use listing::Listing;
pub use meta::{EntryKind, Meta, MetaError, SCHEMA};
pub use pending::Recovered;
pub use profile::{Generation, Profile, RootChanges, generations_to_delete};
pub use realisation::{BuildRecord, Realised, RealisedOutput};
pub use settings::Settings;
#[cfg(feature = "remote")]
pub(crate) use tree::ScratchDir;
pub(crate) use tree::remove_tree_at;
pub use tree::{remove_tree, tree_size};

/// Writes `bytes` to the file at `path` (in one of the store's own directories) beside it,
/// then renames it over: a reader sees the old file or the new, and a crash leaves a
/// temporary file, never half a record.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().expect("a store file lives in a directory");
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(StoreError::io("cannot write in", dir))?;
    io::Write::write_all(&mut tmp, bytes).map_err(StoreError::io("cannot write", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| StoreError::io("cannot write", path)(e.error))?;
    Ok(())
}

/// Removes the file at `path` unless it is already gone.
pub(crate) fn remove_if_there(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(StoreError::io("cannot remove", path)(e))
        }
        _ => Ok(()),
    }
}

/// `n` and the noun for that many: `1 entry`, `3 entries`, `0 entries`.
pub fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Bytes in a form people read: `512 B`, `1.2 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
pub use verify::{Problem, VerifyReport};

use std::os::unix::fs::PermissionsExt;

use crate::hash::{DigestCache, HashError, TreeDigest, is_store_hash};
use crate::name::StoreDir;

/// The marker file of a store, and the format it holds.
const MARKER: &str = ".forjar-store";
const FORMAT: &str = "forjar store v2\n";
/// The format before it, whose key locks were a file each (`.locks/<h>.lock`); upgraded on open
/// ([`upgrade_v1`]).
const FORMAT_V1: &str = "forjar store v1\n";
const DIRS: [&str; 10] = [
    ".tmp",
    ".locks",
    ".logs",
    ".roots",
    ".cache",
    ".digests",
    ".failed",
    ".realisations",
    ".builds",
    ".pending",
];
/// The directories no one but the store's owner may enter: what builds are writing, what failed
/// builds left.
const PRIVATE_DIRS: [&str; 2] = [".tmp", ".failed"];

/// Errors of store operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is of the format before this one, and another process (perhaps a forjar of
    /// that format) has it open, so it cannot be upgraded now.
    #[error(
        "the store `{}` is of an older format (forjar store v1), which this forjar upgrades when no \
         other process has the store open; another process has it open now (a forjar of that \
         format would not see this one's key locks): let it finish, then run again",
        .dir.display()
    )]
    InUseByOlder {
        /// The store directory.
        dir: PathBuf,
    },
    /// The directory is not a store and cannot be made one.
    #[error("`{}` is not a forjar store: {reason}", .dir.display())]
    NotAStore {
        /// The directory.
        dir: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{what} `{}`: {source}{}", .path.display(), advice(.source))]
    Io {
        /// What was being done ("cannot create", "cannot read", ...).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A `meta.yaml` could not be read.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// Content could not be hashed.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// A source changed between planning and import.
    #[error(
        "source `{}` changed while it was being imported (expected {expected}, the copy hashes to \
         {got}); run again once nothing writes to it",
        .path.display()
    )]
    SourceChanged {
        /// The source path.
        path: PathBuf,
        /// The digest it had when planned.
        expected: crate::hash::TreeDigest,
        /// The digest of what was copied.
        got: crate::hash::TreeDigest,
    },
    /// No entry matches a name given on the command line.
    #[error("no store entry matches `{0}`; `forjar store ls` lists the entries")]
    NoSuchEntry(String),
    /// More than one entry matches a name given on the command line.
    #[error("`{query}` matches {} store entries ({}); give more of the hash or the whole entry name", .matches.len(), .matches.join(", "))]
    Ambiguous {
        /// What was asked for.
        query: String,
        /// The entries that match.
        matches: Vec<String>,
    },
    /// An entry has no build log.
    #[error("`{entry}` has no build log: {reason}")]
    NoLog {
        /// The entry.
        entry: EntryName,
        /// Why.
        reason: &'static str,
    },
    /// A root name is not usable as a file name.
    #[error("invalid root name `{0}`: use letters, digits and + - . _ ? = (no `/`)")]
    BadRootName(String),
    /// A profile name is not usable as a file name.
    #[error("invalid profile name `{0}`: use letters, digits and + - . _ ? = (no `/`)")]
    BadProfileName(String),
    /// A generation that does not exist was asked for.
    #[error("profile `{profile}` has no generation {number}; `generations` lists them")]
    NoSuchGeneration {
        /// The profile.
        profile: String,
        /// The number asked for.
        number: u64,
    },
    /// The current generation of a profile was asked to be deleted.
    #[error(
        "generation {number} is the current one of profile `{profile}` and cannot be deleted; \
         `rollback --to` another generation, or `apply`, first"
    )]
    CurrentGeneration {
        /// The profile.
        profile: String,
        /// The generation.
        number: u64,
    },
    /// A file of the store's own bookkeeping cannot be read.
    #[error("`{}` is damaged: {reason}", .path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Entries to delete that a root or another entry still needs.
    #[error(
        "not deleted: {}; delete what needs them first, or pass --force to leave it broken",
        .0.iter().map(|(entry, by)| format!("{by} needs `{entry}`")).collect::<Vec<_>>().join(", ")
    )]
    InUse(Vec<(EntryName, String)>),
}

impl StoreError {
    pub(crate) fn io<'p>(
        what: &'static str,
        path: &'p Path,
    ) -> impl FnOnce(io::Error) -> StoreError + 'p {
        move |source| StoreError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What to do about `error`, after it, where there is something to say.
fn advice(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(nix::libc::EMFILE) => format!("; {}", crate::walk::open_file_limit_advice()),
        _ => String::new(),
    }
}

/// An open store.
pub struct Store {
    /// The store directory, canonical, as builds are keyed by it.
    dir: StoreDir,
    /// Shared for the life of the handle; exclusive while collecting garbage. `None` for a
    /// store that does not exist yet ([`Store::open_to_read`]).
    lock: Option<File>,
    cache: OnceLock<DigestCache>,
    /// The store directory, opened at the first look for an entry that finds it there.
    root: OnceLock<std::os::fd::OwnedFd>,
    /// Build directories of finished builds, kept for the next.
    build_dirs: builddir::Pool,
    /// Entries installed and not yet synced ([`Store::sync`]).
    pending: pending::Pending,
    /// What opening the store settled of earlier processes' windows.
    recovered: Recovered,
    /// The references of entries this handle has read or installed, for [`Store::closure`].
    references: References,
    /// [`Store::owner`], read at its first use: the store directory's owner does not change
    /// while a handle is open, and it was read three times for every build.
    owner: OnceLock<Option<(u32, u32)>>,
}

/// An entry's references, kept once read: they do not change while it is in the store, and
/// no other handle removes an entry while this one is open (every handle holds the store lock
/// shared; removing takes it exclusive). This handle's own removals forget them.
#[derive(Default)]
struct References(Mutex<HashMap<EntryName, Arc<[EntryName]>>>);

impl References {
    fn lock(&self) -> MutexGuard<'_, HashMap<EntryName, Arc<[EntryName]>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir())
            .finish_non_exhaustive()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let dirs = self
            .build_dirs
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(dirs) = dirs {
            dirs.remove();
        }
    }
}

impl Store {
    /// The store used when none is named: `$FORJAR_STORE`, else `/var/lib/forjar/store` for
    /// root, else `$XDG_DATA_HOME/forjar/store` (`~/.local/share/forjar/store`).
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("FORJAR_STORE").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/forjar/store");
        }
        let data = std::env::var_os("XDG_DATA_HOME")
            .filter(|d| Path::new(d).is_absolute())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        data.join("forjar/store")
    }

    /// Opens the store at `dir`, which must exist: a command that only reads or maintains a
    /// store never creates one (a mistyped `--store` is an error naming the path).
    pub fn open_existing(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref();
        match fs::symlink_metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotAStore {
                dir: dir.to_path_buf(),
                reason: "it does not exist; check `--store` and `$FORJAR_STORE` (`apply` makes \
                         a store)"
                    .into(),
            }),
            _ => Self::open(dir),
        }
    }

    /// Opens the store at `dir` for what only reads it: a store that does not exist yet (no
    /// directory, or an empty one [`Store::open`] would make a store in) is taken as an empty
    /// one there, and nothing is created (a plan against it builds everything; its keys are
    /// those the store will have). An existing store is opened as [`Store::open`] does.
    pub fn open_to_read(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref();
        let absent = match fs::symlink_metadata(dir) {
            Err(e) => e.kind() == io::ErrorKind::NotFound,
            Ok(meta) => meta.is_dir() && fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()),
        };
        if !absent {
            return Self::open(dir);
        }
        // The path it will have: the nearest existing ancestor resolved, the rest as written.
        let absolute = std::path::absolute(dir)
            .map_err(StoreError::io("cannot open the store directory", dir))?;
        let mut existing = absolute.as_path();
        let mut rest = Vec::new();
        let resolved = loop {
            match fs::canonicalize(existing) {
                Ok(resolved) => break resolved,
                Err(_) => match (existing.parent(), existing.file_name()) {
                    (Some(parent), Some(name)) => {
                        rest.push(name.to_os_string());
                        existing = parent;
                    }
                    _ => break PathBuf::from("/"),
                },
            }
        };
        let path = rest
            .iter()
            .rev()
            .fold(resolved, |path, name| path.join(name));
        let store_dir = StoreDir::from_path(&path).map_err(|e| StoreError::NotAStore {
            dir: path.clone(),
            reason: format!("its path {}", e.reason),
        })?;
        Ok(Store {
            dir: store_dir,
            lock: None,
            cache: OnceLock::new(),
            root: OnceLock::new(),
            build_dirs: Default::default(),
            pending: Default::default(),
            recovered: Recovered::default(),
            references: References::default(),
            owner: OnceLock::new(),
        })
    }

    /// Whether the store's directory exists: false for a store [`Store::open_to_read`] took as
    /// empty.
    pub fn exists(&self) -> bool {
        self.lock.is_some()
    }

    /// Opens the store at `dir`, creating it if `dir` does not exist or is empty (what builds
    /// into a store does; [`Store::open_existing`] is for what only reads one), and sweeps
    /// staging left behind by crashed processes.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref();
        let not_a_store = |reason: String| StoreError::NotAStore {
            dir: dir.to_path_buf(),
            reason,
        };
        match fs::metadata(dir) {
            Ok(meta) if !meta.is_dir() => return Err(not_a_store("it is not a directory".into())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir)
                    .map_err(StoreError::io("cannot create the store directory", dir))?;
            }
            Err(e) => return Err(StoreError::io("cannot open the store directory", dir)(e)),
        }
        let dir = fs::canonicalize(dir)
            .map_err(StoreError::io("cannot open the store directory", dir))?;
        let store_dir = StoreDir::from_path(&dir).map_err(|e| StoreError::NotAStore {
            dir: dir.clone(),
            reason: format!("its path {}", e.reason),
        })?;
        let marker = dir.join(MARKER);
        match fs::read(&marker) {
            Ok(format) if format == FORMAT.as_bytes() => {}
            Ok(format) if format == FORMAT_V1.as_bytes() => upgrade_v1(&dir)?,
            Ok(format) => {
                return Err(StoreError::NotAStore {
                    dir,
                    reason: format!(
                        "its `{MARKER}` says {:?}, and this forjar reads {:?}",
                        String::from_utf8_lossy(&format).trim(),
                        FORMAT.trim()
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Another process may be making this store at the same moment: its marker is
                // written beside its final name first (`.forjar-store.<pid>.tmp`), and once the
                // marker is in place the directory may fill at any time.
                let listing = fs::read_dir(&dir)
                    .map_err(StoreError::io("cannot read the store directory", &dir))?;
                let foreign = listing.flatten().any(|item| {
                    !item
                        .file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{MARKER}."))
                });
                let made_meanwhile = || fs::read(&marker).is_ok_and(|f| f == FORMAT.as_bytes());
                if foreign && !made_meanwhile() {
                    return Err(StoreError::NotAStore {
                        dir,
                        reason: format!(
                            "it is not empty and has no `{MARKER}` file; name a new or empty directory to \
                             create a store there"
                        ),
                    });
                }
                if !foreign {
                    write_marker(&dir)?;
                }
            }
            Err(e) => return Err(StoreError::io("cannot read", &marker)(e)),
        }
        for sub in DIRS {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(StoreError::io("cannot create", &path))?;
        }
        for sub in PRIVATE_DIRS {
            let path = dir.join(sub);
            if fs::symlink_metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
                    .map_err(StoreError::io("cannot set the mode of", &path))?;
            }
        }
        let lock_path = dir.join(".locks/store.lock");
        let lock = open_lock_file(&lock_path)?;
        lock.lock_shared()
            .map_err(StoreError::io("cannot lock", &lock_path))?;
        let mut store = Store {
            dir: store_dir,
            lock: Some(lock),
            cache: OnceLock::new(),
            root: OnceLock::new(),
            build_dirs: Default::default(),
            pending: Default::default(),
            recovered: Recovered::default(),
            references: References::default(),
            owner: OnceLock::new(),
        };
        store.sweep_staging()?;
        store.recovered = store.recover_pending()?;
        Ok(store)
    }

    /// What opening the store found of processes that were gone before their entries were
    /// synced: after a crash, the entries checked and those removed (they are built again).
    pub fn recovered(&self) -> &Recovered {
        &self.recovered
    }

    /// The store's directory (absolute, symlinks resolved).
    pub fn dir(&self) -> &Path {
        self.dir.as_path()
    }

    /// The store directory as builds are keyed by it.
    pub fn store_dir(&self) -> &StoreDir {
        &self.dir
    }

    /// The owner that entries must have: the store directory's, when this process may set
    /// owners (root); `None` when whatever it writes is already its own.
    pub fn owner(&self) -> Option<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        *self.owner.get_or_init(|| {
            if !nix::unistd::geteuid().is_root() {
                return None;
            }
            fs::metadata(self.dir()).ok().map(|m| (m.uid(), m.gid()))
        })
    }

    /// The directory of an entry.
    pub fn entry_path(&self, entry: &EntryName) -> PathBuf {
        self.dir().join(entry.as_str())
    }

    /// The `content` of an entry.
    pub fn content_path(&self, entry: &EntryName) -> PathBuf {
        self.entry_path(entry).join("content")
    }

    /// Whether an entry is in the store (an entry is valid exactly when its directory exists).
    ///
    /// An entry is a directory: a symlink by its name is none. The name is looked up in the
    /// store directory's descriptor, so a plan of many entries walks the store's path once.
    pub fn contains(&self, entry: &EntryName) -> bool {
        let Ok(root) = self.root_fd() else {
            return false;
        };
        let name = crate::walk::cstring(entry.as_str().as_bytes());
        crate::walk::stat_at(root.as_fd(), &name).is_ok_and(|st| {
            matches!(
                crate::walk::Kind::from_mode(st.st_mode),
                crate::walk::Kind::Dir
            )
        })
    }

    /// The store directory's descriptor, kept for the handle's life. Opened only once the
    /// store exists: a store planned before it was made is looked at again by the next call.
    fn root_fd(&self) -> io::Result<&std::os::fd::OwnedFd> {
        match self.root.get() {
            Some(root) => Ok(root),
            None => {
                let root = crate::walk::open_dir_path(self.dir())?;
                Ok(self.root.get_or_init(|| root))
            }
        }
    }

    /// [`own_files`] of this store.
    fn own_files(
        &self,
        name: &str,
        hash_of: impl Fn(&str) -> Option<&str>,
    ) -> Result<Option<OwnFiles>, StoreError> {
        let root = self
            .root_fd()
            .map_err(StoreError::io("cannot open", self.dir()))?;
        own_files(root.as_fd(), self.dir(), name, hash_of)
    }

    /// The tree digest recorded for `entry` when it was installed, apart from the entry (whose
    /// `meta.yaml` says the same, but lives where a build once wrote); `None` if there is none.
    pub fn recorded_digest(&self, entry: &EntryName) -> Result<Option<TreeDigest>, StoreError> {
        let path = self.digest_record(entry);
        match fs::read_to_string(&path) {
            Ok(text) => {
                text.trim()
                    .parse::<TreeDigest>()
                    .map(Some)
                    .map_err(|e| StoreError::Damaged {
                        path,
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("cannot read", &path)(e)),
        }
    }

    fn digest_record(&self, entry: &EntryName) -> PathBuf {
        self.dir().join(".digests").join(entry.as_str())
    }

    /// Records `entry`'s digest (replacing any record), in one rename.
    pub(crate) fn record_digest(
        &self,
        entry: &EntryName,
        digest: &TreeDigest,
    ) -> Result<(), StoreError> {
        let path = self.digest_record(entry);
        let tmp = self
            .dir()
            .join(".digests")
            .join(format!(".{entry}.{}.tmp", std::process::id()));
        fs::write(&tmp, format!("{digest}\n")).map_err(StoreError::io("cannot write", &tmp))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o444))
            .map_err(StoreError::io("cannot set the mode of", &tmp))?;
        fs::rename(&tmp, &path).map_err(StoreError::io("cannot write", &path))
    }

    /// Removes `entry`'s digest record (the entry is gone).
    pub(crate) fn forget_digest(&self, entry: &EntryName) -> Result<(), StoreError> {
        remove_if_there(&self.digest_record(entry))
    }

    /// Where a build of the key with store hash `hash` that failed is kept (`--keep-failed`),
    /// `what` naming it (the derivation's name, or `check-<round>`).
    pub fn kept_path(&self, hash: &str, what: &str) -> PathBuf {
        self.dir().join(".failed").join(format!("{hash}-{what}"))
    }

    /// The build log of the derivation whose key has store hash `hash`.
    pub fn log_path(&self, hash: &str) -> PathBuf {
        self.dir().join(".logs").join(format!("{hash}.log"))
    }

    /// Every entry reachable from `roots` through references, the roots included.
    pub fn closure(
        &self,
        roots: impl IntoIterator<Item = EntryName>,
    ) -> Result<std::collections::BTreeSet<EntryName>, StoreError> {
        let mut seen = std::collections::BTreeSet::new();
        let mut queue: std::collections::VecDeque<EntryName> = roots.into_iter().collect();
        while let Some(entry) = queue.pop_front() {
            if !seen.contains(&entry) {
                queue.extend(self.references(&entry)?.iter().cloned());
                seen.insert(entry);
            }
        }
        Ok(seen)
    }

    /// The entries `entry`'s content names, from its `meta.yaml` the first time this handle
    /// asks.
    fn references(&self, entry: &EntryName) -> Result<Arc<[EntryName]>, StoreError> {
        if let Some(known) = self.references.lock().get(entry) {
            return Ok(known.clone());
        }
        Ok(self.remember_references(entry, &self.meta(entry)?.references))
    }

    /// Keeps the references of `entry`, which is in the store, and returns them; a store that
    /// is not open (a handle to read one that may not exist) keeps none.
    pub(crate) fn remember_references(
        &self,
        entry: &EntryName,
        references: &[EntryName],
    ) -> Arc<[EntryName]> {
        let references: Arc<[EntryName]> = references.into();
        if self.lock.is_some() {
            self.references
                .lock()
                .insert(entry.clone(), references.clone());
        }
        references
    }

    /// `entry` is gone from the store.
    pub(crate) fn forget_references(&self, entry: &EntryName) {
        self.references.lock().remove(entry);
    }

    /// Reads an entry's `meta.yaml`.
    pub fn meta(&self, entry: &EntryName) -> Result<Meta, StoreError> {
        let path = self.entry_path(entry).join("meta.yaml");
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::Meta(MetaError::Damaged {
                path: path.clone(),
                reason: "the entry has no meta.yaml".into(),
            }),
            _ => StoreError::io("cannot read", &path)(e),
        })?;
        Ok(Meta::parse(&bytes, &path)?)
    }

    /// Every entry in the store, sorted; names that are not entry names are skipped (`verify`
    /// reports them).
    pub fn entries(&self) -> Result<Vec<EntryName>, StoreError> {
        let mut entries: Vec<EntryName> = self
            .listing()?
            .into_iter()
            .filter_map(|name| EntryName::parse(&name).ok())
            .collect();
        entries.sort();
        Ok(entries)
    }

    /// The names in the store directory other than its own dot-files.
    fn listing(&self) -> Result<Vec<String>, StoreError> {
        if !self.exists() {
            return Ok(Vec::new());
        }
        let read = fs::read_dir(self.dir()).map_err(StoreError::io(
            "cannot read the store directory",
            self.dir(),
        ))?;
        let mut names = Vec::new();
        for item in read {
            let item = item.map_err(StoreError::io(
                "cannot read the store directory",
                self.dir(),
            ))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Finds the entry a person means: a whole entry name, a path inside the store, a prefix of
    /// a store hash, or the name part of exactly one entry.
    pub fn resolve(&self, query: &str) -> Result<EntryName, StoreError> {
        let in_store = Path::new(query)
            .strip_prefix(self.dir())
            .ok()
            .and_then(|rest| rest.components().next())
            .and_then(|c| c.as_os_str().to_str());
        if let Some(entry) = in_store
            .or(Some(query))
            .and_then(|q| EntryName::parse(q).ok())
            && self.contains(&entry)
        {
            return Ok(entry);
        }
        let matches: Vec<EntryName> = self
            .entries()?
            .into_iter()
            .filter(|e| e.name() == query || (!query.is_empty() && e.hash().starts_with(query)))
            .collect();
        match matches.len() {
            0 => Err(StoreError::NoSuchEntry(query.to_string())),
            1 => Ok(matches.into_iter().next().expect("one match")),
            _ => Err(StoreError::Ambiguous {
                query: query.to_string(),
                matches: matches.iter().map(ToString::to_string).collect(),
            }),
        }
    }

    /// The build log of an entry.
    pub fn log(&self, entry: &EntryName) -> Result<Vec<u8>, StoreError> {
        let meta = self.meta(entry)?;
        let Some(derivation) = meta.derivation else {
            return Err(StoreError::NoLog {
                entry: entry.clone(),
                reason: "it is a source, imported rather than built",
            });
        };
        let path = self.log_path(&derivation.store_hash());
        fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NoLog {
                entry: entry.clone(),
                reason: "the log was removed",
            },
            _ => StoreError::io("cannot read", &path)(e),
        })
    }

    /// The source digest cache of this store, loaded on first use.
    pub fn digest_cache(&self) -> &DigestCache {
        self.cache
            .get_or_init(|| DigestCache::load(&self.cache_file()))
    }

    /// Writes the source digest cache back, if it was used and changed. A failure only costs
    /// speed on the next run, so it is reported and not fatal to the caller.
    pub fn save_digest_cache(&self) -> Result<(), StoreError> {
        match self.cache.get().filter(|_| self.exists()) {
            Some(cache) => cache
                .save(&self.cache_file())
                .map_err(StoreError::io("cannot write", &self.cache_file())),
            None => Ok(()),
        }
    }

    fn cache_file(&self) -> PathBuf {
        self.dir().join(".cache/source-digests")
    }

    /// Removes what crashed or interrupted processes left in `.tmp/`. A staging directory is
    /// named `<h>.<suffix>` and is only ever written under the lock of `<h>`; one whose lock is
    /// free has no living writer.
    fn sweep_staging(&self) -> Result<(), StoreError> {
        let tmp = self.dir().join(".tmp");
        let listing = fs::read_dir(&tmp).map_err(StoreError::io("cannot read", &tmp))?;
        for item in listing {
            let item = item.map_err(StoreError::io("cannot read", &tmp))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let hash = name.split('.').next().unwrap_or_default();
            // A name that is not a store hash was never written by forjar under a lock.
            let lock = match is_store_hash(hash) {
                true => match KeyLock::try_acquire(self, hash)? {
                    Some(lock) => Some(lock),
                    None => continue,
                },
                false => None,
            };
            // Best effort: what cannot be removed now is tried again at the next open, and never
            // keeps the store from opening.
            let _ = remove_tree(&item.path());
            drop(lock);
        }
        Ok(())
    }
}

/// Upgrades the store at `dir` from format v1: removes its key lock files (`.locks/<h>.lock`;
/// a key's lock is now a byte range of `.locks/keys`) and writes the new marker. The two ways of
/// locking keys do not exclude each other, so this is done only with the store to this process
/// alone: with `store.lock`, which every process that has the store open holds shared, taken
/// exclusively. Another process of this forjar may be upgrading it at the same moment, which
/// takes a moment: waited for up to two seconds, then the store is found upgraded. A process that
/// holds it longer is refused with [`StoreError::InUseByOlder`].
fn upgrade_v1(dir: &Path) -> Result<(), StoreError> {
    let marker = dir.join(MARKER);
    let upgraded = || fs::read(&marker).is_ok_and(|f| f == FORMAT.as_bytes());
    let locks = dir.join(".locks");
    fs::create_dir_all(&locks).map_err(StoreError::io("cannot create", &locks))?;
    let lock_path = locks.join("store.lock");
    let lock = open_lock_file(&lock_path)?;
    let waited = std::time::Instant::now();
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::io("cannot lock", &lock_path)(e));
            }
        }
        if upgraded() {
            return Ok(());
        }
        if waited.elapsed() > std::time::Duration::from_secs(2) {
            return Err(StoreError::InUseByOlder {
                dir: dir.to_path_buf(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if upgraded() {
        return Ok(());
    }
    // No key is locked: every holder of one has the store open.
    let root = crate::walk::open_dir_path(dir).map_err(StoreError::io("cannot open", dir))?;
    if let Some(locks) = own_files(root.as_fd(), dir, ".locks", |name| {
        name.strip_suffix(".lock")
    })? {
        for (name, _) in &locks.files {
            crate::walk::unlink_at(locks.dir.as_fd(), name, false)
                .map_err(StoreError::io("cannot remove", &locks.path_of(name)))?;
        }
    }
    write_marker(dir)
}

/// The regular files of the store's own directory `name` (`.logs`; `.locks` in the upgrade
/// from v1) from whose names `hash_of` reads a store hash, each with that hash. The directory
/// is opened through `root`, the store directory's descriptor (`store_dir` its path, for
/// messages), without following a link, and read once. `None` when there is no such directory.
fn own_files(
    root: std::os::fd::BorrowedFd<'_>,
    store_dir: &Path,
    name: &str,
    hash_of: impl Fn(&str) -> Option<&str>,
) -> Result<Option<OwnFiles>, StoreError> {
    let path = store_dir.join(name);
    let dir = match crate::walk::openat(
        root,
        &crate::walk::cstring(name.as_bytes()),
        crate::walk::DIR_FLAGS,
    ) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("cannot open", &path)(e)),
    };
    let files = crate::walk::list(dir.as_fd())
        .map_err(StoreError::io("cannot read", &path))?
        .into_iter()
        .filter(|(_, kind)| *kind == crate::walk::Kind::File)
        .filter_map(|(file, _)| {
            let hash = hash_of(std::str::from_utf8(file.to_bytes()).ok()?)
                .filter(|hash| is_store_hash(hash))?
                .to_string();
            Some((file, hash))
        })
        .collect();
    Ok(Some(OwnFiles { dir, path, files }))
}

/// Writes this format's marker into the store at `dir`: beside its final name first
/// (`.forjar-store.<pid>.tmp`), then renamed over it, so that it is never seen half written.
fn write_marker(dir: &Path) -> Result<(), StoreError> {
    let marker = dir.join(MARKER);
    let tmp = dir.join(format!("{MARKER}.{}.tmp", std::process::id()));
    fs::write(&tmp, FORMAT).map_err(StoreError::io("cannot write", &tmp))?;
    fs::rename(&tmp, &marker).map_err(StoreError::io("cannot write", &marker))
}

/// Opens the lock file at `path` for `flock`, making it if there is none.
fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(StoreError::io("cannot open", path))
}

/// A store's own directory and the files [`Store::own_files`] found in it.
struct OwnFiles {
    /// The directory, opened.
    dir: std::os::fd::OwnedFd,
    /// Its path, for messages.
    path: PathBuf,
    /// Each file's name and the store hash it holds.
    files: Vec<(std::ffi::CString, String)>,
}

impl OwnFiles {
    /// The path of the file `name` in the directory, for messages.
    fn path_of(&self, name: &std::ffi::CStr) -> PathBuf {
        self.path.join(name.to_string_lossy().as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_says_the_limit_and_how_to_raise_it() {
        let error = StoreError::io("cannot open", Path::new("/s/x"))(io::Error::from_raw_os_error(
            nix::libc::EMFILE,
        ));
        let text = error.to_string();
        assert!(text.starts_with("cannot open `/s/x`: "), "{text}");
        assert!(
            text.contains("open files is too low; raise it (`ulimit -n`"),
            "{text}"
        );
        let other = StoreError::io("cannot open", Path::new("/s/x"))(io::Error::from_raw_os_error(
            nix::libc::ENOENT,
        ));
        assert!(!other.to_string().contains("ulimit"), "{other}");
    }

    #[test]
    fn opening_a_new_directory_creates_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/store");
        let store = Store::open(&path).unwrap();
        for sub in DIRS {
            assert!(path.join(sub).is_dir(), "{sub}");
        }
        assert_eq!(fs::read_to_string(path.join(MARKER)).unwrap(), FORMAT);
        assert_eq!(store.entries().unwrap(), vec![]);
        drop(store);
        Store::open(&path).unwrap();
    }

    /// A store of format v1 at `path`, with a key's lock file and a file that is not one.
    fn store_v1(path: &Path) -> String {
        drop(Store::open(path).unwrap());
        fs::write(path.join(MARKER), FORMAT_V1).unwrap();
        let key_lock = format!("{}.lock", "d".repeat(32));
        fs::write(
            path.join(".locks").join(&key_lock),
            b"process 1 (building `x`)",
        )
        .unwrap();
        fs::write(path.join(".locks/kept"), b"").unwrap();
        key_lock
    }

    #[test]
    fn a_store_of_format_v1_is_upgraded_on_open_when_no_one_else_has_it_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let key_lock = store_v1(&path);
        let store = Store::open(&path).unwrap();
        assert_eq!(fs::read_to_string(path.join(MARKER)).unwrap(), FORMAT);
        assert!(!path.join(".locks").join(key_lock).exists());
        assert!(path.join(".locks/kept").exists());
        // Open, with this process's key locks in `.locks/keys`; another handle opens it as is.
        let lock = KeyLock::acquire(&store, &"d".repeat(32)).unwrap();
        let again = Store::open(&path).unwrap();
        assert!(
            KeyLock::try_acquire(&again, &"d".repeat(32))
                .unwrap()
                .is_none()
        );
        drop((lock, store, again));
    }

    #[test]
    fn processes_that_open_a_store_of_format_v1_at_once_all_open_it_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        store_v1(&path);
        let stores: Vec<Store> = std::thread::scope(|scope| {
            let opening: Vec<_> = (0..4).map(|_| scope.spawn(|| Store::open(&path))).collect();
            opening
                .into_iter()
                .map(|o| o.join().unwrap().unwrap())
                .collect()
        });
        assert_eq!(stores.len(), 4);
        assert_eq!(fs::read_to_string(path.join(MARKER)).unwrap(), FORMAT);
    }

    #[test]
    fn a_store_of_format_v1_that_another_process_has_open_is_refused_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let key_lock = store_v1(&path);
        // As a forjar of format v1 holds it while it works.
        let older = File::open(path.join(".locks/store.lock")).unwrap();
        older.lock_shared().unwrap();
        let error = Store::open(&path).unwrap_err();
        assert!(
            matches!(error, StoreError::InUseByOlder { .. }),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("let it finish, then run again"), "{text}");
        assert_eq!(fs::read_to_string(path.join(MARKER)).unwrap(), FORMAT_V1);
        assert!(path.join(".locks").join(&key_lock).exists());
        drop(older);
        Store::open(&path).unwrap();
        assert_eq!(fs::read_to_string(path.join(MARKER)).unwrap(), FORMAT);
    }

    #[test]
    fn a_directory_that_is_not_a_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("important.txt"), b"data").unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown
                .contains("is not a forjar store: it is not empty and has no `.forjar-store` file"),
            "{shown}"
        );
        assert_eq!(
            fs::read(dir.path().join("important.txt")).unwrap(),
            b"data",
            "nothing is lost"
        );
        assert!(!dir.path().join(".tmp").exists(), "nothing is written");

        let file = dir.path().join("important.txt");
        let err = Store::open(&file).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("is not a forjar store: it is not a directory"),
            "{err}"
        );

        let other = tempfile::tempdir().unwrap();
        fs::write(other.path().join(MARKER), "forjar store v9\n").unwrap();
        let err = Store::open(other.path()).unwrap_err();
        assert!(
            err.to_string().contains("says \"forjar store v9\""),
            "{err}"
        );
    }

    #[test]
    fn the_default_store_follows_the_environment() {
        // Only the FORJAR_STORE override is checked here: it is read first, so the test does
        // not depend on who runs it. Other threads of this test binary do not read it.
        // SAFETY: no other thread of the unit tests reads or writes FORJAR_STORE.
        unsafe { std::env::set_var("FORJAR_STORE", "/srv/forjar") };
        assert_eq!(Store::default_dir(), PathBuf::from("/srv/forjar"));
        // SAFETY: as above.
        unsafe { std::env::remove_var("FORJAR_STORE") };
        let default = Store::default_dir();
        assert!(default.ends_with("forjar/store"), "{}", default.display());
    }
}
