//! Build directories (`/build`), kept for the next build rather than made and removed for each.
//!
//! A finished build's directory is emptied, given back to forjar with mode 0755, and renamed
//! to an idle name; the next build of the same store handle renames it to its own. What a
//! build leaves in `/build` is removed as before, but the directory itself is neither made
//! nor removed per build: that is two fewer system calls, and on file systems whose inode
//! allocator skips inodes freed in the last seconds (ext4 without a journal), one fewer freed
//! inode for every later file of the run to skip. The kept ones are removed when a run's builds
//! are done ([`Store::release_build_dirs`]), or the store handle is dropped.
//!
//! Names follow the staging rule of `.tmp/`: `<h>.<suffix>`, written only under the lock of
//! `<h>`. A directory in use is `<key hash>.<pid>-build`, under its build's key lock (which the
//! build's supervisor holds too, so a killed forjar's directory is not swept before its build
//! is gone). An idle one is `<handle hash>.<n>-build`, under a lock the store handle holds for
//! its life; another process's sweep removes idle ones only once this process is gone.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::{KeyLock, Store, StoreError, remove_tree, remove_tree_at};

/// The idle build directories of a store handle, and the lock that keeps them.
pub(super) struct BuildDirs {
    lock: KeyLock,
    idle: Vec<PathBuf>,
    /// Idle names given so far.
    named: usize,
}

impl BuildDirs {
    fn new(store: &Store) -> Result<BuildDirs, StoreError> {
        // A hash no key has: of this process and handle, and the time.
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"forjar build directories\0");
        hasher.update(&std::process::id().to_le_bytes());
        hasher.update(&(store as *const Store as usize).to_le_bytes());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        hasher.update(&now.as_nanos().to_le_bytes());
        let hash = crate::hash::base32(&hasher.finalize().as_bytes()[..20]);
        let lock = KeyLock::try_acquire(store, &hash)?.ok_or_else(|| {
            StoreError::io("cannot lock", &store.dir().join(super::install::KEYS))(
                std::io::Error::other("a fresh lock is held by another process"),
            )
        })?;
        Ok(BuildDirs {
            lock,
            idle: Vec::new(),
            named: 0,
        })
    }

    fn idle_name(&mut self, store: &Store) -> PathBuf {
        let n = self.named;
        self.named += 1;
        store
            .dir()
            .join(".tmp")
            .join(format!("{}.{n}-build", self.lock.hash()))
    }

    /// Removes the idle directories.
    pub(super) fn remove(mut self) {
        for dir in self.idle.drain(..) {
            let _ = remove_tree(&dir);
        }
    }
}

/// A build's directory, `.tmp/<key hash>.<pid>-build`, empty when taken; kept for the next
/// build when dropped, unless it was moved away (`--keep-failed`).
pub(crate) struct BuildDir<'a> {
    store: &'a Store,
    path: PathBuf,
}

impl BuildDir<'_> {
    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BuildDir<'_> {
    fn drop(&mut self) {
        self.store.give_back_build_dir(&self.path);
    }
}

impl Store {
    /// An empty directory for a build of the key whose store hash is `key_hash` (the caller
    /// holds its lock): an idle one of this handle's, or a new one.
    pub(crate) fn build_dir(&self, key_hash: &str) -> Result<BuildDir<'_>, StoreError> {
        let path = self
            .dir()
            .join(".tmp")
            .join(format!("{key_hash}.{}-build", std::process::id()));
        let idle = self.build_dirs_mut(|dirs| Ok(dirs.idle.pop()))?;
        match idle {
            Some(idle) if fs::rename(&idle, &path).is_ok() => {}
            idle => {
                if let Some(idle) = idle {
                    let _ = remove_tree(&idle);
                }
                fs::create_dir(&path).map_err(StoreError::io("cannot create", &path))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(StoreError::io("cannot set the mode of", &path))?;
            }
        }
        Ok(BuildDir { store: self, path })
    }

    /// Empties a finished build's directory and keeps it for the next; removes it if that
    /// fails. A directory no longer there (kept elsewhere) is left alone.
    fn give_back_build_dir(&self, path: &Path) {
        if !fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            return;
        }
        let kept = self.build_dirs_mut(|dirs| {
            // Every process of the build is gone: nothing changes the directory meanwhile.
            empty_dir(path)?;
            let idle = dirs.idle_name(self);
            fs::rename(path, &idle).map_err(StoreError::io("cannot rename", path))?;
            dirs.idle.push(idle);
            Ok(())
        });
        if kept.is_err() {
            let _ = remove_tree(path);
        }
    }

    /// Removes the build directories kept for the next build: once a run's builds are done.
    pub(crate) fn release_build_dirs(&self) {
        let dirs = self
            .build_dirs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(dirs) = dirs {
            dirs.remove();
        }
    }

    fn build_dirs_mut<T>(
        &self,
        f: impl FnOnce(&mut BuildDirs) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut dirs = self
            .build_dirs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if dirs.is_none() {
            *dirs = Some(BuildDirs::new(self)?);
        }
        f(dirs.as_mut().expect("made above"))
    }
}

/// Takes `dir` back from the build user (owner forjar, mode 0755) and removes what is in it:
/// through one descriptor of the directory opened without following a link, listed and
/// removed through that descriptor ([`remove_tree_at`]'s no-follow walk for each thing in it).
fn empty_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let handle = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(dir)
        .map_err(StoreError::io("cannot open", dir))?;
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    std::os::unix::fs::fchown(&handle, Some(uid.as_raw()), Some(gid.as_raw()))
        .map_err(StoreError::io("cannot take back", dir))?;
    handle
        .set_permissions(fs::Permissions::from_mode(0o755))
        .map_err(StoreError::io("cannot set the mode of", dir))?;
    // Through the descriptor taken back, not by the path again.
    let items = crate::walk::list(handle.as_fd()).map_err(StoreError::io("cannot read", dir))?;
    for (name, _) in items {
        remove_tree_at(handle.as_fd(), &name, dir)?;
    }
    Ok(())
}

/// The mutex of a store handle's build directories: none until its first build.
pub(super) type Pool = Mutex<Option<BuildDirs>>;
