//! GC roots and garbage collection.
//!
//! A root is a symlink in `.roots/`. A *direct* root points at an entry directory. An *indirect*
//! root points at a link outside the store (such as the `result` link `build` and `apply
//! --out-link` make); the entry that link points at is live for as long as the link is there,
//! and an indirect root whose link is gone is removed by the next collection. Each profile's
//! current roots are links in `.profiles/<profile>/roots/`, listed as `<profile>/<root>`; every
//! generation of every profile is a root too.
//! Everything reachable from a root through the `references` of `meta.yaml` is live; everything
//! else is garbage. A collection also removes the build logs no live entry needs.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, TryLockError};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::tree::{remove_tree, tree_size};
use super::{EntryName, Store, StoreError};
use crate::hash::base32;
use crate::name::Name;

/// What a root keeps alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootTarget {
    /// A store entry.
    Entry(EntryName),
    /// Nothing any more: the entry or the outside link is gone.
    Dangling,
}

/// One GC root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// Its name in `.roots/`, or `<profile>/<root>` for a profile's root.
    pub name: String,
    /// Where its symlink points.
    pub link: PathBuf,
    /// Whether it goes through a link outside the store.
    pub indirect: bool,
    /// What it keeps alive.
    pub target: RootTarget,
    /// When its link was made (or last replaced), if the file system says.
    pub made: Option<std::time::SystemTime>,
}

/// What a garbage collection deleted, or would delete.
#[derive(Debug, Default)]
pub struct GcReport {
    /// The dead entries with their sizes in bytes, sorted by name.
    pub dead: Vec<(EntryName, u64)>,
    /// Total bytes of the dead entries.
    pub bytes: u64,
    /// The number of live entries.
    pub live: usize,
    /// Roots that keep nothing alive.
    pub dangling_roots: Vec<String>,
    /// Roots the collection was told had expired: removed (in a dry run, only left out).
    pub expired_roots: Vec<String>,
    /// The build logs (`.logs/<h>.log`, and `check`'s) of derivations no live entry was built
    /// by, those of failed builds among them: removed (in a dry run, counted).
    pub logs: usize,
    /// Whether this was a dry run (nothing deleted).
    pub dry_run: bool,
}

/// Points the symlink `dir/name` at `target`: made beside its final name and renamed over, so
/// the link is never missing while it is replaced.
pub(super) fn replace_link(dir: &Path, name: &str, target: &Path) -> Result<(), StoreError> {
    let path = dir.join(name);
    // Unique per process and per call: two stores in one process may register the same root.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}-{seq}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp).map_err(StoreError::io("cannot create", &tmp))?;
    fs::rename(&tmp, &path).map_err(StoreError::io("cannot create", &path))
}

/// A root's name is a name: no `/`, no leading `.`.
fn root_name(name: &str) -> Result<(), StoreError> {
    match Name::new(name) {
        Ok(_) => Ok(()),
        Err(_) => Err(StoreError::BadRootName(name.to_string())),
    }
}

impl Store {
    fn roots_dir(&self) -> PathBuf {
        self.dir().join(".roots")
    }

    /// The entry a path inside this store belongs to, if any.
    fn entry_of(&self, path: &Path) -> Option<EntryName> {
        let rest = path.strip_prefix(self.dir()).ok()?;
        let first = rest.components().next()?.as_os_str().to_str()?;
        EntryName::parse(first).ok().filter(|e| self.contains(e))
    }

    /// Makes `entry` a root named `name`, replacing a root of that name.
    pub fn add_root(&self, name: &str, entry: &EntryName) -> Result<(), StoreError> {
        root_name(name)?;
        // A root must not outlive, after a crash, the entry it names.
        self.sync()?;
        self.put_root(name, &self.entry_path(entry))
    }

    /// Makes `entry` a root named `name`, as [`Store::add_root`], without first making what
    /// this process installed durable: for a root that only saves work (after a crash it may
    /// name an entry that is gone, and then keeps nothing), where a `syncfs` of the store's file
    /// system would cost more than what it keeps.
    pub fn add_root_unsynced(&self, name: &str, entry: &EntryName) -> Result<(), StoreError> {
        root_name(name)?;
        self.put_root(name, &self.entry_path(entry))
    }

    /// Registers `link`, a symlink outside the store that points at an entry, as an indirect
    /// root: the entry stays alive while the link does.
    pub fn add_indirect_root(&self, link: &Path) -> Result<(), StoreError> {
        let link = std::path::absolute(link).map_err(StoreError::io("cannot resolve", link))?;
        let name = format!(
            "auto-{}",
            &base32(blake3::hash(link.as_os_str().as_encoded_bytes()).as_bytes())[..32]
        );
        self.put_root(&name, &link)
    }

    /// Removes the root `name`; a missing root is not an error.
    pub fn remove_root(&self, name: &str) -> Result<(), StoreError> {
        let path = self.roots_dir().join(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::io("cannot remove", &path)(e))
            }
            _ => Ok(()),
        }
    }

    /// Creates the root symlink beside its final name and renames it over, so a root is never
    /// missing while it is replaced.
    fn put_root(&self, name: &str, target: &Path) -> Result<(), StoreError> {
        replace_link(&self.roots_dir(), name, target)
    }

    /// Every root, sorted by name: those of `.roots/`, then each profile's.
    pub fn roots(&self) -> Result<Vec<Root>, StoreError> {
        let mut roots = self.roots_in(&self.roots_dir(), "")?;
        for profile in self.profile_names()? {
            let dir = self.profiles_dir().join(&profile).join("roots");
            if dir.is_dir() {
                roots.extend(self.roots_in(&dir, &format!("{profile}/"))?);
            }
        }
        Ok(roots)
    }

    /// The root links in `dir`, named with `prefix`, sorted by name.
    fn roots_in(&self, dir: &Path, prefix: &str) -> Result<Vec<Root>, StoreError> {
        let mut roots = Vec::new();
        for item in fs::read_dir(dir).map_err(StoreError::io("cannot read", dir))? {
            let item = item.map_err(StoreError::io("cannot read", dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let name = format!("{prefix}{name}");
            let Ok(link) = fs::read_link(item.path()) else {
                continue;
            };
            // The link's own time: `DirEntry::metadata` does not follow it.
            let made = item.metadata().and_then(|m| m.modified()).ok();
            let indirect = !link.starts_with(self.dir());
            let pointed = if indirect {
                fs::read_link(&link).ok()
            } else {
                Some(link.clone())
            };
            let target = match pointed.and_then(|p| self.entry_of(&p)) {
                Some(entry) => RootTarget::Entry(entry),
                None => RootTarget::Dangling,
            };
            roots.push(Root {
                name,
                link,
                indirect,
                target,
                made,
            });
        }
        roots.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(roots)
    }

    /// The entries reachable from the roots through `references`. A live entry whose
    /// `meta.yaml` cannot be read stops the walk with an error: its references are unknown, and
    /// guessing could delete what it needs.
    ///
    /// With `keep_build_inputs`, the inputs each live entry was built from are live too, and
    /// theirs (Nix's `keep-outputs`): what the live entries were built with stays, so that
    /// building them again, or what is next to them, fetches and builds nothing again.
    pub fn live(&self, keep_build_inputs: bool) -> Result<BTreeSet<EntryName>, StoreError> {
        self.live_from(&self.roots()?, keep_build_inputs, None)
    }

    /// [`Store::live`], from `roots` (and every profile's generations); adds to `derivations`,
    /// when given, the store hash of each derivation a live entry was built by.
    fn live_from(
        &self,
        roots: &[Root],
        keep_build_inputs: bool,
        mut derivations: Option<&mut BTreeSet<String>>,
    ) -> Result<BTreeSet<EntryName>, StoreError> {
        let mut live = BTreeSet::new();
        let mut queue: VecDeque<EntryName> = roots
            .iter()
            .filter_map(|r| match &r.target {
                RootTarget::Entry(e) => Some(e.clone()),
                RootTarget::Dangling => None,
            })
            .chain(self.generation_roots()?)
            .collect();
        while let Some(entry) = queue.pop_front() {
            if !self.contains(&entry) || !live.insert(entry.clone()) {
                continue;
            }
            let meta = self.meta(&entry)?;
            if let (Some(derivations), Some(derivation)) =
                (derivations.as_deref_mut(), meta.derivation)
            {
                derivations.insert(derivation.store_hash());
            }
            if keep_build_inputs {
                queue.extend(meta.inputs.into_values());
            }
            queue.extend(meta.references);
        }
        Ok(live)
    }

    /// Deletes every entry not reachable from a root, and removes indirect roots whose link is
    /// gone; keeps the build inputs of live entries when the store's settings say so (see
    /// [`Store::live`]). Deleting needs the store to itself: if another handle has it open
    /// (another forjar process, or another `Store` in this one), `on_wait` is called and the
    /// collection waits. A dry run only reads, and neither waits nor deletes.
    pub fn gc(&self, dry_run: bool, on_wait: impl FnOnce()) -> Result<GcReport, StoreError> {
        let keep = self.settings()?.keep_build_inputs;
        self.gc_keeping(dry_run, keep, on_wait)
    }

    /// [`Store::gc`], keeping build inputs or not as `keep_build_inputs` says.
    pub fn gc_keeping(
        &self,
        dry_run: bool,
        keep_build_inputs: bool,
        on_wait: impl FnOnce(),
    ) -> Result<GcReport, StoreError> {
        self.gc_expiring(dry_run, keep_build_inputs, &|_| false, on_wait, None)
    }

    /// [`Store::gc_keeping`], where the roots of `.roots/` that `expired` picks keep nothing:
    /// they are removed (in a dry run, only left out) before the live entries are found, and
    /// listed in the report. The roots are read once the store is this handle's alone.
    /// With `wait` given, a store other handles keep open longer than that is not collected:
    /// the error says so, and nothing was deleted.
    pub fn gc_expiring(
        &self,
        dry_run: bool,
        keep_build_inputs: bool,
        expired: &dyn Fn(&Root) -> bool,
        on_wait: impl FnOnce(),
        wait: Option<Duration>,
    ) -> Result<GcReport, StoreError> {
        if dry_run {
            return self.collect(true, keep_build_inputs, expired);
        }
        self.exclusively_within(on_wait, wait, || {
            self.collect(false, keep_build_inputs, expired)
        })
    }

    /// Runs `f` with the store to this handle alone: waits (after `on_wait`) while other
    /// handles have it open.
    pub(super) fn exclusively<T>(
        &self,
        on_wait: impl FnOnce(),
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.exclusively_within(on_wait, None, f)
    }

    /// [`Store::exclusively`], waiting at most `wait` when it is given.
    fn exclusively_within<T>(
        &self,
        on_wait: impl FnOnce(),
        wait: Option<Duration>,
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let lock_path = self.dir().join(".locks/store.lock");
        let Some(lock) = &self.lock else {
            // A store that does not exist holds nothing to delete.
            return f();
        };
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                on_wait();
                match wait {
                    None => lock
                        .lock()
                        .map_err(StoreError::io("cannot lock", &lock_path))?,
                    Some(wait) => lock_within(lock, wait)
                        .map_err(StoreError::io("cannot lock", &lock_path))?,
                }
            }
            Err(TryLockError::Error(e)) => {
                return Err(StoreError::io("cannot lock", &lock_path)(e));
            }
        }
        let result = f();
        lock.lock_shared()
            .map_err(StoreError::io("cannot lock", &lock_path))?;
        result
    }

    /// Deletes `entries`, refusing (and deleting none) when a root or another entry still needs
    /// one of them, unless `force`. Needs the store to itself, as [`Store::gc`] does.
    pub fn delete(
        &self,
        entries: &[EntryName],
        force: bool,
        on_wait: impl FnOnce(),
    ) -> Result<(), StoreError> {
        self.exclusively(on_wait, || {
            if !force {
                let doomed: BTreeSet<&EntryName> = entries.iter().collect();
                let mut needed: Vec<(EntryName, String)> = Vec::new();
                for root in self.roots()? {
                    if let RootTarget::Entry(entry) = root.target
                        && doomed.contains(&entry)
                    {
                        needed.push((entry, format!("root `{}`", root.name)));
                    }
                }
                for entry in self.generation_roots()? {
                    if doomed.contains(&entry) {
                        needed.push((entry, "a generation of a profile".to_string()));
                    }
                }
                for entry in self.entries()? {
                    if doomed.contains(&entry) {
                        continue;
                    }
                    // An entry whose meta cannot be read is `verify`'s to report, not a user.
                    let Ok(meta) = self.meta(&entry) else {
                        continue;
                    };
                    for reference in meta.references {
                        if doomed.contains(&reference) {
                            needed.push((reference, format!("entry `{entry}`")));
                        }
                    }
                }
                if !needed.is_empty() {
                    return Err(StoreError::InUse(needed));
                }
            }
            for entry in entries {
                self.remove_entry(entry)?;
            }
            self.sweep_realisations()?;
            Ok(())
        })
    }

    /// Removes `entry` in one step (renamed out of place, then deleted).
    pub(super) fn remove_entry(&self, entry: &EntryName) -> Result<(), StoreError> {
        let path = self.entry_path(entry);
        // Renamed out of place first, so the entry vanishes in one step; a crash during the
        // removal leaves only staging garbage, swept on the next open.
        let doomed = self.dir().join(".tmp").join(format!("{}.gc", entry.hash()));
        fs::rename(&path, &doomed).map_err(StoreError::io("cannot remove", &path))?;
        self.forget_references(entry);
        remove_tree(&doomed)?;
        self.forget_digest(entry)
    }

    fn collect(
        &self,
        dry_run: bool,
        keep_build_inputs: bool,
        expired: &dyn Fn(&Root) -> bool,
    ) -> Result<GcReport, StoreError> {
        let (gone, roots): (Vec<Root>, Vec<Root>) =
            // Only the store's own roots: a profile's are its generations' to change.
            self.roots()?
                .into_iter()
                .partition(|r| !r.name.contains('/') && expired(r));
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        for root in gone {
            if !dry_run {
                self.remove_root(&root.name)?;
            }
            report.expired_roots.push(root.name);
        }
        let mut derivations = BTreeSet::new();
        let live = self.live_from(&roots, keep_build_inputs, Some(&mut derivations))?;
        report.live = live.len();
        for root in roots {
            if root.target == RootTarget::Dangling {
                if root.indirect && !dry_run {
                    self.remove_root(&root.name)?;
                }
                report.dangling_roots.push(root.name);
            }
        }
        for entry in self.entries()? {
            if live.contains(&entry) {
                continue;
            }
            let path = self.entry_path(&entry);
            let size = tree_size(&path).map_err(StoreError::io("cannot read", &path))?;
            if !dry_run {
                self.remove_entry(&entry)?;
            }
            report.bytes += size;
            report.dead.push((entry, size));
        }
        report.logs = self.sweep_logs(&derivations, dry_run)?;
        if !dry_run {
            self.sweep_realisations()?;
        }
        Ok(report)
    }

    /// Removes (with `dry_run`, counts) the build logs of derivations whose store hash is not in
    /// `live`: `<h>.log` and `<h>.<what>.log` in `.logs`. Through the directory's descriptor,
    /// not following a link; what is not a file of that form is left.
    fn sweep_logs(&self, live: &BTreeSet<String>, dry_run: bool) -> Result<usize, StoreError> {
        let Some(logs) =
            self.own_files(".logs", |name| name.strip_suffix(".log")?.split('.').next())?
        else {
            return Ok(0);
        };
        let mut removed = 0;
        for (name, hash) in &logs.files {
            if live.contains(hash) {
                continue;
            }
            if !dry_run {
                match crate::walk::unlink_at(logs.dir.as_fd(), name, false) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StoreError::io("cannot remove", &logs.path_of(name))(e)),
                }
            }
            removed += 1;
        }
        Ok(removed)
    }
}

/// Takes `lock` exclusively, trying again every tenth of a second for at most `wait`. A failed
/// try gives up the shared lock the handle held (the kernel removes it before it tries), so
/// one that times out takes it again before it says so.
fn lock_within(lock: &std::fs::File, wait: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(TryLockError::WouldBlock) => {
                lock.lock_shared()?;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "other processes kept the store open for {} s; nothing was deleted",
                        wait.as_secs()
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
}
