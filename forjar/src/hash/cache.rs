//! A cache of file content hashes keyed by (device, inode, size, mtime, ctime).
//!
//! It lets a re-plan of unchanged sources skip reading file contents. Only sources go through
//! it: `verify` and the ingestion of build outputs always read everything.
//!
//! A file's timestamps have a granularity (a kernel tick for most filesystems, whole seconds for
//! some), so a write right after the hash was taken could leave (size, mtime, ctime) as they
//! were. As in git's "racily clean" rule, a hash is cached only when the file's timestamps lie
//! far enough before the moment its reading started that any later write must show.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The identity and change markers of a file, as `fstat` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    pub(crate) fn of(st: &nix::libc::stat) -> Self {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }

    const ENCODED: usize = 7 * 8;

    fn encode(&self, out: &mut Vec<u8>) {
        for v in [self.dev, self.ino, self.size] {
            out.extend(v.to_le_bytes());
        }
        for v in [self.mtime.0, self.mtime.1, self.ctime.0, self.ctime.1] {
            out.extend(v.to_le_bytes());
        }
    }

    fn decode(b: &[u8]) -> Self {
        let u =
            |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8-byte slice"));
        let s = |i: usize| u(i) as i64;
        FileId {
            dev: u(0),
            ino: u(1),
            size: u(2),
            mtime: (s(3), s(4)),
            ctime: (s(5), s(6)),
        }
    }

    /// How long after this file's last change a hash of it can be trusted to be of its
    /// current content: a few kernel ticks, or two seconds on a filesystem that stores whole
    /// seconds only.
    fn settled_by(&self) -> SystemTime {
        let latest = self.mtime.max(self.ctime);
        let margin = if self.mtime.1 == 0 && self.ctime.1 == 0 {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(50)
        };
        let at = if latest.0 >= 0 {
            UNIX_EPOCH + Duration::new(latest.0 as u64, latest.1.clamp(0, 999_999_999) as u32)
        } else {
            UNIX_EPOCH
        };
        at + margin
    }
}

const MAGIC: &[u8] = b"forjar digest cache v1\n";
const RECORD: usize = FileId::ENCODED + 32;
/// The most entries kept on disk: about 23 MB; entries used by this process are kept first.
const MAX_ENTRIES: usize = 1 << 18;

struct Slot {
    hash: [u8; 32],
    used: AtomicBool,
}

/// File content hashes by file identity; loaded from and saved to one file.
#[derive(Default)]
pub struct DigestCache {
    entries: RwLock<HashMap<FileId, Slot>>,
    dirty: AtomicBool,
}

impl DigestCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads a cache file. A missing, truncated or corrupt file gives an empty cache: it is
    /// only a cache.
    pub fn load(path: &Path) -> Self {
        let cache = Self::new();
        let Ok(bytes) = fs::read(path) else {
            return cache;
        };
        let Some(body) = bytes.strip_prefix(MAGIC) else {
            return cache;
        };
        if body.len() < 32 || (body.len() - 32) % RECORD != 0 {
            return cache;
        }
        let (records, checksum) = body.split_at(body.len() - 32);
        if blake3::hash(records).as_bytes() != checksum {
            return cache;
        }
        let mut map = HashMap::with_capacity(records.len() / RECORD);
        for record in records.chunks_exact(RECORD) {
            let (id, hash) = record.split_at(FileId::ENCODED);
            let hash: [u8; 32] = hash.try_into().expect("record holds a 32-byte hash");
            map.insert(
                FileId::decode(id),
                Slot {
                    hash,
                    used: AtomicBool::new(false),
                },
            );
        }
        *cache.entries.write().unwrap_or_else(|e| e.into_inner()) = map;
        cache
    }

    /// Writes the cache to `path` (through a temporary file and a rename) if anything was added.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        if !self.dirty.load(Ordering::Relaxed) {
            return Ok(());
        }
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let (used, unused): (Vec<_>, Vec<_>) = entries
            .iter()
            .partition(|(_, s)| s.used.load(Ordering::Relaxed));
        let mut records = Vec::with_capacity(entries.len().min(MAX_ENTRIES) * RECORD);
        for (id, slot) in used.into_iter().chain(unused).take(MAX_ENTRIES) {
            id.encode(&mut records);
            records.extend(slot.hash);
        }
        drop(entries);
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let write = || -> io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(&records)?;
            file.write_all(blake3::hash(&records).as_bytes())?;
            fs::rename(&tmp, path)
        };
        write().inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        self.dirty.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// The number of cached file hashes.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get(&self, id: &FileId) -> Option<[u8; 32]> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.get(id).map(|slot| {
            slot.used.store(true, Ordering::Relaxed);
            slot.hash
        })
    }

    /// Records the content hash of a file whose reading began at `started`, unless the file
    /// changed so shortly before that a later change might not show in its timestamps.
    pub(crate) fn insert_settled(&self, id: FileId, hash: [u8; 32], started: SystemTime) {
        if id.settled_by() > started {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.insert(
            id,
            Slot {
                hash,
                used: AtomicBool::new(true),
            },
        );
        self.dirty.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::thread::sleep;

    use super::*;
    use crate::hash::TreeHasher;

    fn tree(dir: &Path) {
        fs::create_dir_all(dir.join("src")).unwrap();
        fs::write(dir.join("src/main.c"), vec![b'x'; 10_000]).unwrap();
        fs::write(dir.join("README"), b"read me\n").unwrap();
    }

    #[test]
    fn a_second_hash_of_an_unchanged_tree_reads_no_file_contents() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        sleep(Duration::from_millis(120));
        let cache = DigestCache::new();
        let first = TreeHasher::with_cache(&cache);
        let digest = first.digest(dir.path()).unwrap();
        assert_eq!(first.stats().bytes_read, 10_008);
        assert_eq!(cache.len(), 2);

        let second = TreeHasher::with_cache(&cache);
        assert_eq!(second.digest(dir.path()).unwrap(), digest);
        assert_eq!(second.stats().bytes_read, 0);
        assert_eq!(second.stats().files_read, 0);
        assert_eq!(second.stats().cache_hits, 2);
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        sleep(Duration::from_millis(120));
        let cache = DigestCache::new();
        let before = TreeHasher::with_cache(&cache).digest(dir.path()).unwrap();
        fs::write(dir.path().join("README"), b"read me!\n").unwrap();
        let hasher = TreeHasher::with_cache(&cache);
        let after = hasher.digest(dir.path()).unwrap();
        assert_ne!(before, after);
        assert_eq!(after, crate::hash::tree_digest(dir.path()).unwrap());
        assert_eq!(hasher.stats().bytes_read, 9);
    }

    #[test]
    fn a_file_changed_just_before_hashing_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let cache = DigestCache::new();
        TreeHasher::with_cache(&cache).digest(dir.path()).unwrap();
        assert!(
            cache.is_empty(),
            "files written moments ago are racily clean and must not be cached"
        );
    }

    #[test]
    fn the_cache_survives_a_save_and_load_and_ignores_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        tree(&dir.path().join("t"));
        sleep(Duration::from_millis(120));
        let cache = DigestCache::new();
        let digest = TreeHasher::with_cache(&cache)
            .digest(&dir.path().join("t"))
            .unwrap();
        let file = dir.path().join("cache");
        cache.save(&file).unwrap();

        let loaded = DigestCache::load(&file);
        assert_eq!(loaded.len(), 2);
        let hasher = TreeHasher::with_cache(&loaded);
        assert_eq!(hasher.digest(&dir.path().join("t")).unwrap(), digest);
        assert_eq!(hasher.stats().bytes_read, 0);

        let mut bytes = fs::read(&file).unwrap();
        let last = bytes.len() - 40;
        bytes[last] ^= 1;
        fs::write(&file, &bytes).unwrap();
        assert!(DigestCache::load(&file).is_empty());
        fs::write(&file, b"garbage").unwrap();
        assert!(DigestCache::load(&file).is_empty());
        assert!(DigestCache::load(&dir.path().join("missing")).is_empty());
    }
}
