//! Putting entries into the store: key locks, staging, canonicalisation, one rename.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::FcntlArg;

use super::pending::MarkedAhead;
use super::tree::remove_tree;
use super::{EntryKind, EntryName, Meta, SCHEMA, Store, StoreError};
use crate::hash::{self, Key, Needles, TreeDigest, TreeHasher, is_store_hash};
use crate::name::Name;
use crate::walk;

/// An exclusive lock on one key: one build or import of one key at a time, across processes.
/// Released on drop.
///
/// Every key's lock is one byte of `.locks/keys`, an open file description lock (`F_OFD_SETLK`)
/// at an offset made of the key's store hash: a lock takes no file of its own, so a build makes
/// no inode for it and a collection has none to remove. Like `flock`, it belongs to the open
/// file, so it is held by every process that has that file open (a build's supervisor) and is
/// released when the last of them closes it; unlike a POSIX record lock, two threads of one
/// process exclude each other. The first part of the file is a table of notes, one slot a key
/// (several keys share a slot), in which the holder says who it is and what for.
#[derive(Debug)]
pub struct KeyLock {
    file: File,
    hash: String,
}

/// The file of every key's lock and note.
pub(super) const KEYS: &str = ".locks/keys";
/// The bytes of a note's slot, and how many slots there are.
const NOTE_LEN: u64 = 128;
const NOTE_SLOTS: u64 = 1 << 14;

/// Where in `.locks/keys` the lock and note of store hash `hash` are: its first 60 bits, past
/// the notes; and the slot of its note.
fn key_offsets(hash: &str) -> (i64, u64) {
    assert!(
        is_store_hash(hash),
        "lock names are store hashes, got {hash:?}"
    );
    let bits = hash.bytes().take(12).fold(0u64, |bits, digit| {
        let value = match digit {
            b'a'..=b'z' => digit - b'a',
            _ => digit - b'2' + 26,
        };
        bits << 5 | u64::from(value)
    });
    let lock = NOTE_LEN * NOTE_SLOTS + bits;
    (
        i64::try_from(lock).expect("60 bits past 2 MiB fit an offset"),
        bits % NOTE_SLOTS * NOTE_LEN,
    )
}

impl KeyLock {
    /// Opens `.locks/keys` (making it if there is none) and takes the lock of `hash` in it:
    /// when another holds it, waits for it if `waiting` is given (told the holder's note
    /// first), else gives up.
    fn take(
        store: &Store,
        hash: &str,
        waiting: Option<&dyn Fn(&str)>,
    ) -> Result<Option<File>, StoreError> {
        let path = || store.dir().join(KEYS);
        // Through the store's descriptor: one name to resolve for each build, not the store's
        // whole path.
        let root = store
            .root_fd()
            .map_err(StoreError::io("cannot open", store.dir()))?;
        let file = walk::openat_mode(
            root.as_fd(),
            &walk::cstring(KEYS.as_bytes()),
            nix::libc::O_RDWR | nix::libc::O_CREAT | nix::libc::O_NOFOLLOW,
            0o666,
        )
        .map(File::from)
        .map_err(|e| StoreError::io("cannot open", &path())(e))?;
        let range = nix::libc::flock {
            l_type: nix::libc::F_WRLCK as nix::libc::c_short,
            l_whence: nix::libc::SEEK_SET as nix::libc::c_short,
            l_start: key_offsets(hash).0,
            l_len: 1,
            l_pid: 0,
        };
        let lock = |wait: bool| loop {
            let arg = match wait {
                true => FcntlArg::F_OFD_SETLKW(&range),
                false => FcntlArg::F_OFD_SETLK(&range),
            };
            match nix::fcntl::fcntl(&file, arg) {
                Err(Errno::EINTR) => continue,
                result => break result,
            }
        };
        let cannot_lock = |e: Errno| StoreError::io("cannot lock", &path())(e.into());
        match (lock(false), waiting) {
            (Ok(_), _) => {}
            (Err(Errno::EAGAIN | Errno::EACCES), None) => return Ok(None),
            (Err(Errno::EAGAIN | Errno::EACCES), Some(waiting)) => {
                waiting(&read_note(&file, hash));
                lock(true).map_err(cannot_lock)?;
            }
            (Err(e), _) => return Err(cannot_lock(e)),
        }
        Ok(Some(file))
    }

    /// Waits for and takes the lock of store hash `hash`, then removes the staging a killed
    /// holder left for it: all staging of a hash is made under its lock, so none is in use.
    /// (A process killed while building may hold the lock a moment longer through its build's
    /// supervisor, and so escape the sweep when the store is opened.)
    pub fn acquire(store: &Store, hash: &str) -> Result<KeyLock, StoreError> {
        Self::acquire_for(store, hash, "working on it", &|_| {})
    }

    /// [`acquire`](Self::acquire), saying what for (`building `hello``): the holder writes it
    /// into its note, and one that has to wait is told the holder's (`waiting`).
    pub fn acquire_for(
        store: &Store,
        hash: &str,
        what: &str,
        waiting: &dyn Fn(&str),
    ) -> Result<KeyLock, StoreError> {
        let Some(file) = Self::take(store, hash, Some(waiting))? else {
            unreachable!("a lock waited for is taken or fails")
        };
        // Best effort: it only informs whoever waits next.
        let _ = write_note(&file, hash, what);
        let tmp = store.dir().join(".tmp");
        let prefix = format!("{hash}.");
        for item in fs::read_dir(&tmp).map_err(StoreError::io("cannot read", &tmp))? {
            let item = item.map_err(StoreError::io("cannot read", &tmp))?;
            if item.file_name().to_string_lossy().starts_with(&prefix) {
                remove_tree(&item.path())?;
            }
        }
        Ok(KeyLock {
            file,
            hash: hash.to_string(),
        })
    }

    /// The locked file, which a build's supervisor keeps open (so the lock is held) until its
    /// build is gone, even when this process is killed first.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.file)
    }

    /// Takes the lock if nobody holds it.
    pub(crate) fn try_acquire(store: &Store, hash: &str) -> Result<Option<KeyLock>, StoreError> {
        Ok(Self::take(store, hash, None)?.map(|file| KeyLock {
            file,
            hash: hash.to_string(),
        }))
    }

    /// The store hash this lock is for.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

/// Writes the note of the holder of `hash`'s lock into its slot: the hash, this process and
/// `what`, cut to the slot, ended by a newline and padded with zeros (over a longer note that
/// was there before).
fn write_note(file: &File, hash: &str, what: &str) -> std::io::Result<()> {
    let mut note = format!("{hash} process {} ({what})", std::process::id());
    let mut end = note.len().min(NOTE_LEN as usize - 1);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    let mut slot = note.into_bytes();
    slot.push(b'\n');
    slot.resize(NOTE_LEN as usize, 0);
    std::os::unix::fs::FileExt::write_all_at(file, &slot, key_offsets(hash).1)
}

/// The note of the holder of `hash`'s lock, or "another forjar process" when its slot holds
/// another key's note (keys share slots), a note half written, or none.
fn read_note(file: &File, hash: &str) -> String {
    let mut slot = [0; NOTE_LEN as usize];
    let read =
        std::os::unix::fs::FileExt::read_at(file, &mut slot, key_offsets(hash).1).unwrap_or(0);
    std::str::from_utf8(&slot[..read])
        .ok()
        .and_then(|slot| slot.split_once('\n'))
        .and_then(|(note, _)| note.strip_prefix(hash)?.strip_prefix(' '))
        .unwrap_or("another forjar process")
        .to_string()
}

/// What the producer of an entry knows; [`Staging::commit`] adds the digest, size and times.
#[derive(Debug, Clone)]
pub struct Draft {
    /// The derivation or source name.
    pub name: Name,
    /// The output name.
    pub output: String,
    /// What produces the entry.
    pub kind: EntryKind,
    /// The entry's key.
    pub key: Key,
    /// The derivation's closure key (builds).
    pub derivation: Option<Key>,
    /// The entries the content refers to.
    pub references: Vec<EntryName>,
    /// The build's inputs.
    pub inputs: BTreeMap<String, EntryName>,
    /// The platform.
    pub system: Option<String>,
    /// The sandbox level.
    pub sandbox: Option<String>,
    /// When production started.
    pub started: SystemTime,
    /// The tree digest of the build log.
    pub log_digest: Option<TreeDigest>,
    /// The Rust source location of the definition.
    pub location: Option<String>,
    /// For a source, where it came from.
    pub source_path: Option<PathBuf>,
    /// The digest the content must have (sources, fixed outputs).
    pub expected: Option<TreeDigest>,
}

impl Draft {
    /// The draft of an entry imported by content (a source, a toolchain), which must hash to
    /// `digest`.
    pub(crate) fn imported(name: &Name, digest: TreeDigest, started: SystemTime) -> Draft {
        Draft {
            name: name.clone(),
            output: "out".into(),
            kind: EntryKind::Source,
            key: hash::source_key(name, &digest),
            derivation: None,
            references: Vec::new(),
            inputs: BTreeMap::new(),
            system: None,
            sandbox: None,
            started,
            log_digest: None,
            location: None,
            source_path: None,
            expected: Some(digest),
        }
    }
}

/// The reason a committed content did not have the digest it was expected to have.
#[derive(Debug, thiserror::Error)]
#[error("the content of `{entry}` hashes to {got}, but {expected} was expected")]
pub struct Mismatch {
    /// The entry being committed.
    pub entry: EntryName,
    /// The expected digest.
    pub expected: TreeDigest,
    /// The digest of the staged content.
    pub got: TreeDigest,
}

/// The outcome of a commit.
#[derive(Debug)]
pub enum Committed {
    /// The entry is now in the store, with this provenance.
    Installed(Box<Meta>),
    /// The staged content did not have the expected digest; nothing was installed.
    Mismatch(Mismatch),
}

/// What a commit that scanned its content for references did ([`Staging::commit_scanning`]).
#[derive(Debug)]
pub(crate) enum Scanned {
    /// As [`Staging::commit`]; the entry's provenance lists the references found.
    Committed(Committed),
    /// The draft is a fixed output's, and its content refers to these entries: nothing was
    /// installed.
    FixedRefers(Vec<EntryName>),
}

/// A directory in `.tmp/` in which one entry is put together. Removed on drop unless committed.
#[derive(Debug)]
pub struct Staging<'s> {
    store: &'s Store,
    dir: PathBuf,
    entry: EntryName,
    /// Where the entry was marked ahead of its install, if it was ([`Staging::mark_ahead`]).
    ahead: OnceLock<MarkedAhead>,
}

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

impl<'s> Staging<'s> {
    /// Creates a staging directory for `entry`, written under `lock` (which the sweep of
    /// `.tmp/` respects).
    pub fn new(store: &'s Store, lock: &KeyLock, entry: EntryName) -> Result<Self, StoreError> {
        let seq = STAGING_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = store.dir().join(".tmp").join(format!(
            "{}.{}-{seq}-{entry}",
            lock.hash(),
            std::process::id()
        ));
        fs::create_dir(&dir).map_err(StoreError::io("cannot create", &dir))?;
        Ok(Staging {
            store,
            dir,
            entry,
            ahead: OnceLock::new(),
        })
    }

    /// Marks the entry as about to be installed while its content is still being made (while
    /// its build runs), so that the install waits for no sync of the marker: see the store's
    /// `pending` module. Once is enough; an error is left for the install to meet again.
    pub(crate) fn mark_ahead(&self) {
        if self.ahead.get().is_none()
            && let Ok(marked) = self.store.mark_ahead(&self.entry)
        {
            let _ = self.ahead.set(marked);
        }
    }

    /// Where the producer writes the content: a file, directory or symlink.
    pub fn content_path(&self) -> PathBuf {
        self.dir.join("content")
    }

    /// The staging directory, which becomes the entry's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the staging directory back from a build user: owned by the store's owner (when
    /// this process sets owners) and closed to everyone else, before anything reads what a
    /// build left in it.
    pub(crate) fn reclaim(&self) -> Result<(), StoreError> {
        let fd =
            walk::open_dir_path(&self.dir).map_err(StoreError::io("cannot open", &self.dir))?;
        if let Some((uid, gid)) = self.store.owner() {
            nix::unistd::fchown(
                &fd,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| StoreError::io("cannot set the owner of", &self.dir)(e.into()))?;
        }
        nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(0o700))
            .map_err(|e| StoreError::io("cannot set the mode of", &self.dir)(e.into()))
    }

    /// A new staging for the same entry whose content is a copy of this one's, made of fresh
    /// files of this process's own; this staging is removed.
    pub(crate) fn fresh_copy(self, lock: &KeyLock) -> Result<Staging<'s>, StoreError> {
        let copy = Staging::new(self.store, lock, self.entry.clone())?;
        super::tree::copy(&self.content_path(), &copy.content_path())?;
        // The marker names the entry, not the staging.
        if let Some(&marked) = self.ahead.get() {
            let _ = copy.ahead.set(marked);
        }
        Ok(copy)
    }

    /// Canonicalises the content (mode 0444/0555, mtime 1), hashes it, checks the expected
    /// digest, writes `meta.yaml`, syncs, and renames the staged directory into place.
    ///
    /// If the entry appeared meanwhile (it cannot while the key lock is held, but a store may be
    /// shared with a careless tool), the existing entry wins and the staging is discarded.
    pub fn commit(self, draft: Draft) -> Result<Committed, StoreError> {
        let (size, digest) = self.canonical(&TreeHasher::new())?;
        self.finish(draft, size, digest)
    }

    /// Canonicalises the content and hashes it with `hasher`: its size and digest.
    fn canonical(&self, hasher: &TreeHasher) -> Result<(u64, TreeDigest), StoreError> {
        let content = self.content_path();
        let size = super::tree::canonicalise(&content, self.store.owner())?;
        Ok((size, hasher.digest(&content)?))
    }

    /// [`Staging::commit`] of a build's output, whose references are what its content mentions
    /// of `needles`: the content is read once, for its digest and its references together.
    /// Gives up (nothing installed) once `stop` is set while the content is read: Ctrl-C during
    /// a large output. A fixed output's content may refer to no entry; one that does is not
    /// installed.
    pub(crate) fn commit_scanning(
        self,
        mut draft: Draft,
        needles: &Needles,
        stop: &AtomicBool,
    ) -> Result<Scanned, StoreError> {
        let hasher = TreeHasher::new().stopped_by(stop).scanning(needles);
        let (size, digest) = self.canonical(&hasher)?;
        let references: Vec<EntryName> = hasher.references().into_iter().collect();
        if draft.kind == EntryKind::Fixed && !references.is_empty() {
            return Ok(Scanned::FixedRefers(references));
        }
        draft.references = references;
        self.finish(draft, size, digest).map(Scanned::Committed)
    }

    /// Installs the canonical content of `size` bytes that hashed to `digest`, with `draft`'s
    /// provenance, if `digest` is the one the draft expects.
    fn finish(self, draft: Draft, size: u64, digest: TreeDigest) -> Result<Committed, StoreError> {
        if let Some(expected) = draft.expected
            && expected != digest
        {
            return Ok(Committed::Mismatch(Mismatch {
                entry: self.entry.clone(),
                expected,
                got: digest,
            }));
        }
        let finished = SystemTime::now();
        let meta = Meta {
            schema: SCHEMA,
            name: draft.name.to_string(),
            output: draft.output,
            kind: draft.kind,
            key: draft.key,
            derivation: draft.derivation,
            digest,
            size,
            references: draft.references,
            inputs: draft.inputs,
            system: draft.system,
            sandbox: draft.sandbox,
            forjar_version: env!("CARGO_PKG_VERSION").to_string(),
            started: humantime::format_rfc3339_seconds(draft.started).to_string(),
            finished: humantime::format_rfc3339_seconds(finished).to_string(),
            duration_ms: finished
                .duration_since(draft.started)
                .unwrap_or_default()
                .as_millis() as u64,
            log_digest: draft.log_digest,
            location: draft.location,
            source_path: draft.source_path,
        };
        self.publish(meta)
    }

    /// Installs content made elsewhere (downloaded from a remote cache or worker) with the
    /// provenance its producer wrote: canonicalises it, and installs it only if its tree digest
    /// is the one `meta` records.
    pub fn commit_fetched(self, meta: Meta) -> Result<Committed, StoreError> {
        let content = self.content_path();
        super::tree::canonicalise(&content, self.store.owner())?;
        let digest = TreeHasher::new().digest(&content)?;
        if digest != meta.digest {
            return Ok(Committed::Mismatch(Mismatch {
                entry: self.entry.clone(),
                expected: meta.digest,
                got: digest,
            }));
        }
        self.publish(meta)
    }

    /// Writes `meta.yaml`, syncs, and renames the staged directory into place.
    fn publish(self, meta: Meta) -> Result<Committed, StoreError> {
        self.reclaim()?;
        let meta_path = self.dir.join("meta.yaml");
        fs::write(&meta_path, meta.to_yaml())
            .map_err(StoreError::io("cannot write", &meta_path))?;
        set_mode(&meta_path, 0o444)?;
        self.store.record_digest(&self.entry, &meta.digest)?;
        // The entry is marked in this process's window before it is renamed into place: its
        // files reach the disk at the next sync, and until then a crash leaves it to be
        // checked (`pending`).
        let installing = self
            .store
            .installing(&self.entry, self.ahead.get().copied())?;
        let target = self.store.entry_path(&self.entry);
        match fs::rename(&self.dir, &target) {
            Ok(()) => {}
            Err(e)
                if target.is_dir()
                    && matches!(
                        e.raw_os_error(),
                        Some(nix::libc::EEXIST | nix::libc::ENOTEMPTY)
                    ) =>
            {
                // The record just written is of this staging's content, not the entry's.
                let existing = self.store.meta(&self.entry)?;
                self.store.record_digest(&self.entry, &existing.digest)?;
                self.store
                    .remember_references(&self.entry, &existing.references);
                return Ok(Committed::Installed(Box::new(existing)));
            }
            Err(e) => return Err(StoreError::io("cannot install", &target)(e)),
        }
        set_mode(&target, 0o555)?;
        drop(installing);
        self.store
            .remember_references(&self.entry, &meta.references);
        // The staging directory is gone; nothing is left for drop to remove.
        std::mem::forget(self);
        Ok(Committed::Installed(Box::new(meta)))
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        let _ = remove_tree(&self.dir);
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(StoreError::io("cannot set the mode of", path))
}

/// What importing a source did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOutcome {
    /// The source's entry.
    pub entry: EntryName,
    /// Its tree digest.
    pub digest: TreeDigest,
    /// Whether this call added it (false: it was there already).
    pub imported: bool,
}

impl Store {
    /// Imports a host file or directory by content, hashing it through the source digest cache.
    /// The same content under the same name is one entry.
    pub fn import_source(&self, path: &Path, name: &Name) -> Result<ImportOutcome, StoreError> {
        let digest = TreeHasher::with_cache(self.digest_cache()).digest(path)?;
        self.import_source_as(path, name, digest)
    }

    /// Imports a source already hashed to `digest` (by the planner). The copy is hashed again
    /// and must match, so a source that changed since it was hashed is refused, not stored
    /// under the wrong key.
    pub fn import_source_as(
        &self,
        path: &Path,
        name: &Name,
        digest: TreeDigest,
    ) -> Result<ImportOutcome, StoreError> {
        self.import_source_keeping(path, name, digest, None)
    }

    /// [`Store::import_source_as`] of what `keep` keeps of the tree (a source's ignore rules):
    /// the copy, hashed whole, must be `digest`.
    pub(crate) fn import_source_keeping(
        &self,
        path: &Path,
        name: &Name,
        digest: TreeDigest,
        keep: Option<crate::walk::Keep<'_>>,
    ) -> Result<ImportOutcome, StoreError> {
        self.import_tree(
            path,
            name,
            digest,
            Vec::new(),
            Some(path.to_path_buf()),
            keep,
        )
    }

    /// Imports a tree forjar made itself (a machine's system), keyed by its name and content
    /// like a source, recording `references`, the entries its content names, so that the
    /// entry's closure holds them.
    pub fn import_made(
        &self,
        path: &Path,
        name: &Name,
        references: Vec<EntryName>,
    ) -> Result<ImportOutcome, StoreError> {
        let digest = TreeHasher::new().digest(path)?;
        self.import_tree(path, name, digest, references, None, None)
    }

    /// Imports a toolchain's tree, assembled at `path` and hashed to `digest`, keyed by its
    /// name and content like a source.
    pub(crate) fn import_toolchain(
        &self,
        path: &Path,
        name: &Name,
        digest: TreeDigest,
    ) -> Result<ImportOutcome, StoreError> {
        self.import_tree(path, name, digest, Vec::new(), None, None)
    }

    /// Copies what `keep` keeps of the tree at `path` (all of it for `None`), which hashed to
    /// `digest`, into the store as the entry its name and digest make, unless it is there;
    /// every entry of `references` must be there.
    fn import_tree(
        &self,
        path: &Path,
        name: &Name,
        digest: TreeDigest,
        references: Vec<EntryName>,
        source_path: Option<PathBuf>,
        keep: Option<crate::walk::Keep<'_>>,
    ) -> Result<ImportOutcome, StoreError> {
        let entry = EntryName::of_source(name, &digest);
        let outcome = |imported| ImportOutcome {
            entry: entry.clone(),
            digest,
            imported,
        };
        if self.contains(&entry) {
            return Ok(outcome(false));
        }
        let lock = KeyLock::acquire(self, entry.hash())?;
        if self.contains(&entry) {
            return Ok(outcome(false));
        }
        if let Some(missing) = references.iter().find(|r| !self.contains(r)) {
            return Err(StoreError::NoSuchEntry(missing.to_string()));
        }
        let started = SystemTime::now();
        let staging = Staging::new(self, &lock, entry.clone())?;
        super::tree::copy_keeping(path, &staging.content_path(), keep)?;
        let draft = Draft {
            references,
            source_path,
            ..Draft::imported(name, digest, started)
        };
        match staging.commit(draft)? {
            Committed::Installed(_) => Ok(outcome(true)),
            Committed::Mismatch(m) => Err(StoreError::SourceChanged {
                path: path.to_path_buf(),
                expected: m.expected,
                got: m.got,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, symlink};

    use super::*;

    fn source(dir: &Path) -> PathBuf {
        let src = dir.join("hello");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("hello.c"), b"int main(void) { return 0; }\n").unwrap();
        fs::write(src.join("sub/run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("sub/run.sh"), fs::Permissions::from_mode(0o775)).unwrap();
        symlink("hello.c", src.join("link")).unwrap();
        src
    }

    #[test]
    fn an_imported_source_is_canonical_and_has_its_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let src = source(tmp.path());
        let name = Name::new("hello").unwrap();
        let outcome = store.import_source(&src, &name).unwrap();
        assert!(outcome.imported);
        assert_eq!(outcome.digest, hash::tree_digest(&src).unwrap());

        let content = store.content_path(&outcome.entry);
        assert_eq!(hash::tree_digest(&content).unwrap(), outcome.digest);
        let mode = |p: &str| fs::symlink_metadata(content.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("hello.c"), 0o444);
        assert_eq!(mode("sub/run.sh"), 0o555);
        assert_eq!(mode("sub"), 0o555);
        assert_eq!(
            fs::symlink_metadata(content.join("link")).unwrap().mtime(),
            1
        );
        assert_eq!(fs::metadata(content.join("sub/run.sh")).unwrap().mtime(), 1);

        let meta = store.meta(&outcome.entry).unwrap();
        assert_eq!(meta.digest, outcome.digest);
        assert_eq!(meta.kind, EntryKind::Source);
        assert_eq!(meta.key.store_hash(), outcome.entry.hash());
        assert_eq!(meta.size, 29 + 10);
        assert!(
            fs::read_dir(tmp.path().join("store/.tmp"))
                .unwrap()
                .next()
                .is_none(),
            "no staging left"
        );
    }

    #[test]
    fn identical_content_imported_twice_is_one_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let name = Name::new("hello").unwrap();
        let first = store.import_source(&source(tmp.path()), &name).unwrap();
        let copy = tmp.path().join("elsewhere");
        fs::create_dir(&copy).unwrap();
        let second = store.import_source(&source(&copy), &name).unwrap();
        assert_eq!(first.entry, second.entry);
        assert!(!second.imported);
        assert_eq!(store.entries().unwrap(), vec![first.entry]);
    }

    #[test]
    fn a_source_that_changed_since_it_was_hashed_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let src = source(tmp.path());
        let stale = hash::tree_digest(&src).unwrap();
        fs::write(src.join("hello.c"), b"changed").unwrap();
        let err = store
            .import_source_as(&src, &Name::new("hello").unwrap(), stale)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("changed while it was being imported"),
            "{err}"
        );
        assert_eq!(store.entries().unwrap(), vec![]);
        assert!(
            fs::read_dir(tmp.path().join("store/.tmp"))
                .unwrap()
                .next()
                .is_none(),
            "staging removed"
        );
    }

    #[test]
    fn a_source_holding_a_fifo_is_refused_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let src = source(tmp.path());
        nix::unistd::mkfifo(
            &src.join("pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let err = store
            .import_source(&src, &Name::new("hello").unwrap())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("`{}` is a FIFO", src.join("pipe").display())),
            "{err}"
        );
        assert_eq!(store.entries().unwrap(), vec![]);
    }

    #[test]
    fn staging_left_by_a_dead_process_is_swept_on_open_but_live_staging_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let store = Store::open(&dir).unwrap();
        let live_key = "a".repeat(32);
        let dead_key = "b".repeat(32);
        let lock = KeyLock::acquire(&store, &live_key).unwrap();
        fs::create_dir_all(dir.join(format!(".tmp/{live_key}.1-0-x/content"))).unwrap();
        fs::create_dir_all(dir.join(format!(".tmp/{dead_key}.1-0-y/content"))).unwrap();
        fs::set_permissions(
            dir.join(format!(".tmp/{dead_key}.1-0-y/content")),
            fs::Permissions::from_mode(0o555),
        )
        .unwrap();
        fs::write(dir.join(".tmp/not-a-hash"), b"").unwrap();

        let second = Store::open(&dir).unwrap();
        let left: Vec<String> = fs::read_dir(dir.join(".tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec![format!("{live_key}.1-0-x")]);
        drop((lock, second));
    }

    /// The names in directory `dir`, sorted.
    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The names in the store's `.locks`, sorted.
    fn lock_files(store: &Store) -> Vec<String> {
        names_in(&store.dir().join(".locks"))
    }

    #[test]
    fn a_key_lock_makes_no_file_and_excludes_other_threads_until_its_file_is_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let (one, other) = ("a".repeat(32), "b".repeat(32));
        let lock = KeyLock::acquire(&store, &one).unwrap();
        assert_eq!(lock_files(&store), ["keys", "store.lock"]);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                assert!(KeyLock::try_acquire(&store, &one).unwrap().is_none());
                assert!(KeyLock::try_acquire(&store, &other).unwrap().is_some());
            });
        });
        // Held as long as the file is open anywhere, as by a build's supervisor.
        let supervisor = lock.file.try_clone().unwrap();
        drop(lock);
        assert!(KeyLock::try_acquire(&store, &one).unwrap().is_none());
        drop(supervisor);
        assert!(KeyLock::try_acquire(&store, &one).unwrap().is_some());
        assert_eq!(lock_files(&store), ["keys", "store.lock"]);
    }

    /// The note one waiting for `hash`'s lock would be told.
    fn note_of(store: &Store, hash: &str) -> String {
        let keys = File::open(store.dir().join(KEYS)).unwrap();
        read_note(&keys, hash)
    }

    #[test]
    fn one_waiting_for_a_key_is_told_the_holders_note_then_takes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let hash = "c".repeat(32);
        let holder = KeyLock::acquire_for(&store, &hash, "building `x`", &|_| {}).unwrap();
        let (told, heard) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                KeyLock::acquire_for(&store, &hash, "second", &|note| {
                    told.send(note.to_string()).unwrap();
                })
                .unwrap()
            });
            let note = heard.recv().unwrap();
            assert_eq!(
                note,
                format!("process {} (building `x`)", std::process::id())
            );
            drop(holder);
            drop(waiter.join().unwrap());
        });
    }

    #[test]
    fn a_note_is_cut_to_its_slot_and_not_told_for_another_key_of_the_slot() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        // The same note slot: their first 60 bits differ only above the slot's 14.
        let (one, other) = ("a".repeat(32), format!("b{}", "a".repeat(31)));
        assert_eq!(key_offsets(&one).1, key_offsets(&other).1);
        assert_ne!(key_offsets(&one).0, key_offsets(&other).0);
        let pid = std::process::id();
        let first = KeyLock::acquire_for(&store, &one, &"é".repeat(100), &|_| {}).unwrap();
        let note = note_of(&store, &one);
        assert!(note.starts_with(&format!("process {pid} (éé")), "{note}");
        assert!(note.len() < NOTE_LEN as usize - one.len(), "{note}");
        let second = KeyLock::acquire_for(&store, &other, "building `x`", &|_| {}).unwrap();
        assert_eq!(
            note_of(&store, &other),
            format!("process {pid} (building `x`)")
        );
        // Written over a longer note: nothing of that one is left after it.
        assert_eq!(note_of(&store, &one), "another forjar process");
        drop((first, second));
    }

    #[test]
    fn a_dropped_staging_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let key: Key = "44".repeat(32).parse().unwrap();
        let entry = EntryName::new(&key, &Name::new("x").unwrap(), None);
        let lock = KeyLock::acquire(&store, entry.hash()).unwrap();
        let staging = Staging::new(&store, &lock, entry.clone()).unwrap();
        fs::create_dir(staging.content_path()).unwrap();
        fs::write(staging.content_path().join("f"), b"half").unwrap();
        drop(staging);
        assert!(!store.contains(&entry));
        assert!(
            fs::read_dir(tmp.path().join("store/.tmp"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    /// The markers of each window in `.pending`, sorted.
    fn windows(store: &Store) -> Vec<Vec<String>> {
        let mut windows: Vec<Vec<String>> = fs::read_dir(store.dir().join(".pending"))
            .unwrap()
            .flatten()
            .map(|window| names_in(&window.path()))
            .collect();
        windows.sort();
        windows
    }

    #[test]
    fn an_entry_marked_ahead_is_marked_again_if_its_window_was_synced_before_the_install() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let stage = |n: u8| {
            let name = Name::new(format!("x{n}")).unwrap();
            let entry = EntryName::numbered(n, name.as_str());
            let lock = KeyLock::acquire(&store, entry.hash()).unwrap();
            let staging = Staging::new(&store, &lock, entry.clone()).unwrap();
            fs::write(staging.content_path(), [n]).unwrap();
            let digest = hash::tree_digest(&staging.content_path()).unwrap();
            let draft = Draft::imported(&name, digest, SystemTime::now());
            (entry, lock, staging, draft)
        };
        let installed = |staging: Staging<'_>, draft| {
            matches!(staging.commit(draft).unwrap(), Committed::Installed(_))
        };

        // Marked while "building", installed in the same window: marked there once.
        let (one, _lock, staging, draft) = stage(1);
        staging.mark_ahead();
        assert_eq!(windows(&store), vec![vec![one.to_string()]]);
        assert!(installed(staging, draft));
        assert_eq!(windows(&store), vec![vec![one.to_string()]]);

        // A sync between the mark and the install took the window with the marker: the
        // install marks the entry in a new one before its rename.
        let (two, _lock, staging, draft) = stage(2);
        staging.mark_ahead();
        store.sync().unwrap();
        assert!(windows(&store).is_empty());
        assert!(installed(staging, draft));
        assert_eq!(windows(&store), vec![vec![two.to_string()]]);

        // A marked entry that is never installed leaves a name the next sync removes.
        let (three, _lock, staging, _draft) = stage(3);
        staging.mark_ahead();
        drop(staging);
        assert!(!store.contains(&three));
        let mut both = vec![two.to_string(), three.to_string()];
        both.sort();
        assert_eq!(windows(&store), vec![both]);
        store.sync().unwrap();
        assert!(windows(&store).is_empty());
        assert!(store.contains(&one) && store.contains(&two));
    }
}
