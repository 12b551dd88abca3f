//! Entries made durable a batch at a time, and checked after a crash that came before.
//!
//! ```text
//! <store>/.pending/<boot>.<pid>.<n>/          a window: entries installed since its last sync
//! <store>/.pending/<boot>.<pid>.<n>/<entry>   one marker per entry installed in it
//! ```
//!
//! Installing an entry is a rename into place; its files reach the disk when the kernel writes
//! them back, or at the next [`Store::sync`], one `syncfs` for every entry installed since the
//! last. Before the rename, the entry's name is created as a marker in the process's window,
//! a directory named by the boot it was made in; a build's outputs are marked while the build
//! runs, and marked again at the install only if their window was synced in between. A crash
//! loses at most what was not yet on the disk, and the windows say which entries may have lost
//! something:
//!
//! - A window of a process that is gone, made in this boot, holds nothing at risk: the kernel
//!   has every byte. The next store to open it syncs the file system and removes it.
//! - A window made in another boot may name entries whose files were lost with the machine.
//!   The next store to open it takes the store to itself, checks each named entry as `verify`
//!   does (content against the digest recorded outside the entry, `meta.yaml`, references),
//!   removes those that fail and those that refer to them, drops damaged or stale realisation
//!   and build records, and removes the window. What was removed is built again when needed.
//!
//! A window's first marker is a new empty file; every other is a hard link to it: no inode is
//! made for it, and none freed with the window, which on a file system that skips recently freed
//! inodes (ext4 without a journal) every later file would pay for.
//!
//! That a marker is on the disk whenever the rename after it is rests on the file system
//! committing metadata operations in order, as journaling and copy-on-write ones do (ext4 with
//! its journal, XFS, btrfs); no data of the marker is read, only its name. On any other, each
//! new marker and window is synced before the rename that follows it: the marker's file, so
//! that its inode is on the disk with its link count (`fsync` of a directory writes its
//! entries, not the inodes they name, and `fsck` drops an entry whose inode was never written),
//! and its directory. ext4 without a journal syncs the directory of an inode's new entry, made
//! or linked (`ext4_add_entry` marks the inode, `ext4_sync_parent` follows the mark), with the
//! file, and that directory's own when it is new too, so there one `fsync` of the marker's file
//! does all (a new window is synced by its first marker's); on one this module does not know
//! (ext2, vfat, ...), each file and directory is synced.

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard};

use super::{EntryName, Store, StoreError, remove_tree};

/// The directory of the windows, in the store.
const PENDING: &str = ".pending";

/// This process's open window, and the gate that keeps a sync from running between an
/// entry's marker and its rename.
#[derive(Debug, Default)]
pub(super) struct Pending {
    window: Mutex<Option<Window>>,
    gate: RwLock<()>,
    /// How the store's file system keeps metadata operations; asked once per handle, at its
    /// first window.
    order: OnceLock<Order>,
}

/// How a file system keeps metadata operations (the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// On the disk in the order made: nothing is synced before a rename.
    Kept,
    /// Not in order, but `fsync` of a new file also syncs the directories it is a new entry of
    /// (ext4 without a journal).
    NewEntrySyncsItsDirectory,
    /// Not in order: a new file and its directory are each synced.
    Unknown,
}

impl Order {
    /// Makes `made`, new in the directory that `dir` opens, durable as this order needs.
    fn sync(self, made: &File, dir: impl FnOnce() -> std::io::Result<File>) -> std::io::Result<()> {
        match self {
            Order::Kept => Ok(()),
            Order::NewEntrySyncsItsDirectory => made.sync_all(),
            Order::Unknown => made.sync_all().and_then(|()| dir()?.sync_all()),
        }
    }

    /// Makes a new window, `made` in the `.pending` that `dir` opens, durable as this order
    /// needs before any marker in it. On ext4 without a journal nothing is done here: the window
    /// is still a new entry of `.pending` when its first marker is synced, and that `fsync`
    /// syncs the window and `.pending` too (`ext4_sync_parent` goes up for as long as each
    /// directory is a new entry of its parent; the open window keeps its inode, and that
    /// state, in memory). A window no marker was made in need not survive a crash.
    fn sync_window(
        self,
        made: &File,
        dir: impl FnOnce() -> std::io::Result<File>,
    ) -> std::io::Result<()> {
        match self {
            Order::Kept | Order::NewEntrySyncsItsDirectory => Ok(()),
            Order::Unknown => self.sync(made, dir),
        }
    }
}

/// An open window: its directory, locked (by `flock`) while this process has it.
#[derive(Debug)]
struct Window {
    /// Its number in this process (`WINDOWS`), which a window is never given twice.
    number: u64,
    dir: PathBuf,
    /// The directory, open: its lock, where markers are made, and what is synced after each
    /// when the file system does not keep metadata operations in order.
    handle: File,
    /// Its first marker's name and file, which every later marker is a link to.
    first: Option<(std::ffi::CString, File)>,
    /// How the store's file system keeps metadata operations.
    order: Order,
}

/// What opening the store found of earlier windows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Windows of gone processes of this boot, synced and removed.
    pub synced: usize,
    /// Windows of an earlier boot, checked and removed.
    pub checked: usize,
    /// Entries those windows named that failed their check (or referred to one that did),
    /// removed.
    pub removed: Vec<EntryName>,
}

/// Held from an entry's marker to its rename; a sync waits for every one to be dropped.
pub(super) struct Installing<'s> {
    _gate: RwLockReadGuard<'s, ()>,
}

/// An entry marked ahead of its install ([`Store::mark_ahead`]): the window its marker is in.
/// The marker still counts at the install if that window is still open, not synced and
/// removed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MarkedAhead {
    window: u64,
}

static WINDOWS: AtomicU64 = AtomicU64::new(0);

/// This boot's id, as the kernel gives it (`/proc/sys/kernel/random/boot_id`), without dashes.
fn boot_id() -> Result<String, StoreError> {
    let path = Path::new("/proc/sys/kernel/random/boot_id");
    let text = fs::read_to_string(path).map_err(StoreError::io("cannot read", path))?;
    Ok(text.trim().replace('-', ""))
}

impl Store {
    fn pending_dir(&self) -> PathBuf {
        self.dir().join(PENDING)
    }

    /// Marks `entry` as installed in this process's window (opening one if there is none) and
    /// returns the guard to hold until its rename is done. An entry `ahead` marked in the
    /// window still open is not marked again.
    pub(super) fn installing(
        &self,
        entry: &EntryName,
        ahead: Option<MarkedAhead>,
    ) -> Result<Installing<'_>, StoreError> {
        let gate = self
            .pending
            .gate
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut window = self
            .pending
            .window
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let open = window.as_ref().map(|w| w.number);
        if ahead.is_none_or(|ahead| Some(ahead.window) != open) {
            self.mark(&mut window, entry)?;
        }
        Ok(Installing { _gate: gate })
    }

    /// Marks `entry` in this process's window before its content is ready: while a build
    /// runs, so that the marker's sync is not waited for after it. A marker whose entry is
    /// never installed costs nothing: the window is removed at its sync, and a check after a
    /// crash passes over a name with no entry. Returns the window, for the install.
    pub(super) fn mark_ahead(&self, entry: &EntryName) -> Result<MarkedAhead, StoreError> {
        let mut window = self
            .pending
            .window
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let window = self.mark(&mut window, entry)?;
        Ok(MarkedAhead { window })
    }

    /// Makes the marker of `entry` in `window`, opening one if there is none, and syncs it as
    /// the file system needs; returns the window's number.
    fn mark(&self, window: &mut Option<Window>, entry: &EntryName) -> Result<u64, StoreError> {
        let window = match window {
            Some(window) => window,
            none => none.insert(self.open_window()?),
        };
        // Made through the window's descriptor, not by its path again.
        let marker = || window.dir.join(entry.as_str());
        let name = crate::walk::cstring(entry.as_str().as_bytes());
        let made = match &window.first {
            Some((first, made)) => {
                match nix::unistd::linkat(
                    window.handle.as_fd(),
                    first.as_c_str(),
                    window.handle.as_fd(),
                    name.as_c_str(),
                    nix::fcntl::AtFlags::empty(),
                ) {
                    // Marked before in this window: that marker was synced when made.
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(error) => {
                        return Err(StoreError::io("cannot create", &marker())(error.into()));
                    }
                }
                made
            }
            None => {
                let made = crate::walk::openat_mode(
                    window.handle.as_fd(),
                    &name,
                    nix::libc::O_WRONLY | nix::libc::O_CREAT | nix::libc::O_NOFOLLOW,
                    0o644,
                )
                .map(File::from)
                .map_err(|error| StoreError::io("cannot create", &marker())(error))?;
                &window.first.insert((name, made)).1
            }
        };
        window
            .order
            .sync(made, || window.handle.try_clone())
            .map_err(|error| StoreError::io("cannot sync", &marker())(error))?;
        Ok(window.number)
    }

    fn open_window(&self) -> Result<Window, StoreError> {
        // `.pending` is made with the store.
        let pending = self.pending_dir();
        let number = WINDOWS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}.{}.{number}", boot_id()?, std::process::id());
        // Made and locked under a dot-name, then renamed: a window is never seen unlocked
        // while its process lives.
        let new = pending.join(format!(".{name}"));
        fs::create_dir(&new).map_err(StoreError::io("cannot create", &new))?;
        let lock = File::open(&new).map_err(StoreError::io("cannot open", &new))?;
        lock.lock().map_err(StoreError::io("cannot lock", &new))?;
        let dir = pending.join(name);
        fs::rename(&new, &dir).map_err(StoreError::io("cannot create", &dir))?;
        let root = self
            .root_fd()
            .map_err(StoreError::io("cannot open", self.dir()))?;
        let order = *self
            .pending
            .order
            .get_or_init(|| file_system_order(root.as_fd()));
        order
            .sync_window(&lock, || {
                // Opened through the store's descriptor, not following a link.
                crate::walk::openat(
                    root.as_fd(),
                    &crate::walk::cstring(PENDING.as_bytes()),
                    nix::libc::O_RDONLY | nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW,
                )
                .map(File::from)
            })
            .map_err(StoreError::io("cannot sync", &dir))?;
        Ok(Window {
            number,
            dir,
            handle: lock,
            first: None,
            order,
        })
    }

    /// Makes every entry this handle installed durable: one `syncfs` of the store's file
    /// system, after every install under way is done. Recording a generation or a root does
    /// it first, so that neither can outlive what it names; a program that keeps entries some
    /// other way calls it when they must survive a crash.
    pub fn sync(&self) -> Result<(), StoreError> {
        let _gate = self
            .pending
            .gate
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let window = self
            .pending
            .window
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(window) = window {
            self.syncfs()?;
            remove_window(&window.dir);
        }
        Ok(())
    }

    fn syncfs(&self) -> Result<(), StoreError> {
        let root = self
            .root_fd()
            .map_err(StoreError::io("cannot open", self.dir()))?;
        nix::unistd::syncfs(root.as_fd())
            .map_err(|e| StoreError::io("cannot sync the file system of", self.dir())(e.into()))
    }

    /// Settles the windows of processes that are gone (module docs). Called when the store is
    /// opened, before anything in it is used.
    pub(super) fn recover_pending(&self) -> Result<Recovered, StoreError> {
        let mut recovered = Recovered::default();
        let pending = self.pending_dir();
        let Ok(listing) = fs::read_dir(&pending) else {
            return Ok(recovered);
        };
        let items: Vec<(String, PathBuf)> = listing
            .flatten()
            .map(|item| (item.file_name().to_string_lossy().into_owned(), item.path()))
            .collect();
        // Nearly always none: the boot id is read only when there is a window.
        if items.is_empty() {
            return Ok(recovered);
        }
        let boot = boot_id()?;
        let mut earlier_boot = false;
        let mut gone = Vec::new();
        for (name, path) in items {
            if let Some(new) = name.strip_prefix('.') {
                // A window its process did not get to name holds no marker. One of this boot
                // may be about to be locked, and is left (empty, it costs nothing).
                if !of_boot(new, &boot) {
                    let _ = fs::remove_dir(&path);
                }
                continue;
            }
            if !of_boot(&name, &boot) {
                earlier_boot = true;
                continue;
            }
            // Of this boot: gone when its process no longer holds its lock.
            let Ok(lock) = File::open(&path) else {
                continue;
            };
            if lock.try_lock().is_ok() {
                gone.push((path, lock));
            }
        }
        if !gone.is_empty() {
            self.syncfs()?;
            for (path, _lock) in &gone {
                remove_window(path);
            }
            recovered.synced = gone.len();
        }
        if earlier_boot {
            self.exclusively(|| {}, || self.check_windows(&boot, &mut recovered))?;
        }
        Ok(recovered)
    }

    /// With the store to itself: checks the entries the windows of earlier boots name, and
    /// removes those windows.
    fn check_windows(&self, boot: &str, recovered: &mut Recovered) -> Result<(), StoreError> {
        let pending = self.pending_dir();
        let listing = fs::read_dir(&pending).map_err(StoreError::io("cannot read", &pending))?;
        let mut windows = Vec::new();
        let mut named = Vec::new();
        for item in listing.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || of_boot(&name, boot) {
                continue;
            }
            let path = item.path();
            if let Ok(markers) = fs::read_dir(&path) {
                named.extend(
                    markers
                        .flatten()
                        .filter_map(|m| EntryName::parse(&m.file_name().to_string_lossy()).ok())
                        .filter(|entry| self.contains(entry)),
                );
            }
            windows.push(path);
        }
        named.sort();
        named.dedup();
        // Each named entry checked as `verify` does; then a failed entry fails those that
        // refer to it, and those their referrers, until a round fails none. Entries outside
        // the windows were synced before any of these was installed, and refer to none.
        let (mut failed, mut kept): (Vec<EntryName>, Vec<EntryName>) = named
            .into_iter()
            .partition(|entry| !self.check(entry).is_empty());
        let mut round = failed.clone();
        while !round.is_empty() {
            let (referrers, rest): (Vec<EntryName>, Vec<EntryName>) =
                kept.into_iter().partition(|entry| {
                    self.meta(entry)
                        .is_ok_and(|meta| meta.references.iter().any(|r| round.contains(r)))
                });
            kept = rest;
            failed.extend(referrers.iter().cloned());
            round = referrers;
        }
        for entry in &failed {
            self.remove_entry(entry)?;
        }
        recovered.removed = failed;
        self.sweep_realisations()?;
        self.sweep_build_records()?;
        self.syncfs()?;
        for window in &windows {
            remove_window(window);
        }
        recovered.checked = windows.len();
        recovered.removed.sort();
        Ok(())
    }
}

/// How the file system of the directory `dir` keeps metadata operations: in the order made
/// (a create, then a rename) for a journaling or copy-on-write one, or one that is never on a
/// disk. ext4 is asked whether it has a journal (`journal_task` in its `sysfs` directory,
/// `<none>` without one); what cannot be told is taken as not in order.
fn file_system_order(dir: std::os::fd::BorrowedFd<'_>) -> Order {
    use nix::sys::statfs::{
        BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC, fstatfs,
    };
    let Ok(fs) = fstatfs(dir) else {
        return Order::Unknown;
    };
    match fs.filesystem_type() {
        t if t == BTRFS_SUPER_MAGIC || t == XFS_SUPER_MAGIC || t == TMPFS_MAGIC => Order::Kept,
        // The magic number of ext2, ext3 and ext4 alike: whichever it is, its journal says,
        // and only the ext4 driver has a `sysfs` directory to ask.
        t if t == EXT4_SUPER_MAGIC => match ext4_has_journal(dir) {
            Some(true) => Order::Kept,
            Some(false) => Order::NewEntrySyncsItsDirectory,
            None => Order::Unknown,
        },
        _ => Order::Unknown,
    }
}

/// Whether the ext4 file system of `dir` has a journal; none when the ext4 driver does not say
/// (the ext2 driver has no `sysfs` directory).
fn ext4_has_journal(dir: std::os::fd::BorrowedFd<'_>) -> Option<bool> {
    let stat = nix::sys::stat::fstat(dir).ok()?;
    let device = format!(
        "/sys/dev/block/{}:{}",
        nix::sys::stat::major(stat.st_dev),
        nix::sys::stat::minor(stat.st_dev)
    );
    let name = fs::read_link(&device).ok()?.file_name()?.to_os_string();
    let task = Path::new("/sys/fs/ext4").join(name).join("journal_task");
    fs::read_to_string(task).ok().map(|task| has_journal(&task))
}

/// Whether an ext4 file system's `journal_task` names a journal thread (its process id).
fn has_journal(journal_task: &str) -> bool {
    let task = journal_task.trim();
    !task.is_empty() && task != "<none>"
}

/// Whether the window named `name` was made in the boot `boot`.
fn of_boot(name: &str, boot: &str) -> bool {
    name.split('.').next() == Some(boot)
}

/// Removes a window, markers and all. Best effort: a window left behind is settled again at
/// the next open, which costs a sync or a check and loses nothing.
fn remove_window(dir: &Path) {
    let _ = remove_tree(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ext4_without_a_journal_is_not_taken_as_in_order() {
        assert!(has_journal("412\n"));
        assert!(!has_journal("<none>\n"));
        assert!(!has_journal(""));
        // A file system in memory has nothing to lose.
        let shm = File::open("/dev/shm").unwrap();
        assert_eq!(file_system_order(shm.as_fd()), Order::Kept);
    }

    #[test]
    fn a_windows_markers_are_links_to_its_first_and_go_with_its_sync() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let entries: Vec<EntryName> = ["a", "b", "c"]
            .into_iter()
            .map(|name| {
                let key: crate::hash::Key = "44".repeat(32).parse().unwrap();
                EntryName::new(&key, &crate::name::Name::new(name).unwrap(), None)
            })
            .collect();
        for entry in &entries {
            store.mark_ahead(entry).unwrap();
        }
        // Marked again: nothing changes.
        store.mark_ahead(&entries[1]).unwrap();
        let windows: Vec<PathBuf> = fs::read_dir(store.pending_dir())
            .unwrap()
            .map(|w| w.unwrap().path())
            .collect();
        assert_eq!(windows.len(), 1);
        let markers: Vec<fs::Metadata> = entries
            .iter()
            .map(|entry| fs::symlink_metadata(windows[0].join(entry.as_str())).unwrap())
            .collect();
        assert!(
            markers
                .iter()
                .all(|m| m.is_file() && m.ino() == markers[0].ino())
        );
        assert_eq!(markers[0].nlink(), 3);
        assert_eq!(fs::read_dir(&windows[0]).unwrap().count(), 3);
        store.sync().unwrap();
        assert_eq!(fs::read_dir(store.pending_dir()).unwrap().count(), 0);
    }

    #[test]
    fn the_boot_id_is_a_plain_name() {
        let boot = boot_id().unwrap();
        assert_eq!(boot.len(), 32, "{boot}");
        assert!(boot.chars().all(|c| c.is_ascii_hexdigit()), "{boot}");
    }
}
