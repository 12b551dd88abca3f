//! The tree digest: a public, exact content hash of a file, symlink or directory tree.
//!
//! ```text
//! DK(x)   = BLAKE3 derive-key mode, context "forjar tree v1", over bytes x
//! u64(n)  = n as 8 bytes little-endian
//! node(p) = regular file: "F" || u8(x) || u64(size) || BLAKE3(contents)   x = 1 if owner-executable
//!           symlink:      "L" || u64(len(target)) || target
//!           directory:    "D" || u64(count) || for each entry, ascending by raw name bytes:
//!                                  u64(len(name)) || name || digest(entry)
//! digest(p) = DK(node(p))
//! ```
//!
//! The files of each directory are hashed in parallel (rayon); file contents are read with a
//! large buffer and hashed with BLAKE3's SIMD paths, large files with its multi-threaded path. With a
//! [`DigestCache`], a file whose (device, inode, size, mtime, ctime) was seen before is not read.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::SystemTime;

use super::EntryName;
use super::cache::{DigestCache, FileId};
use super::refs::{Needles, Scanner};
use super::{READ_BUFFER as BUFFER, TREE_CONTEXT, TreeDigest, with_read_buffer};
use crate::walk::{self, At, Kind, Visitor};

/// Why a tree could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The path does not exist.
    #[error("`{}` does not exist", .path.display())]
    NotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// The path could not be read.
    #[error("cannot read `{}`: {source}", .path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The tree holds something that is neither a file, a directory nor a symlink.
    #[error(
        "`{}` is a {kind}; a tree may hold only regular files, directories and symlinks",
        .path.display()
    )]
    SpecialFile {
        /// The special file.
        path: PathBuf,
        /// What it is ("FIFO", "socket", ...).
        kind: &'static str,
    },
    /// A file shrank while it was read.
    #[error(
        "`{}` changed while it was being hashed (it had {expected} bytes, only {got} could be \
         read); hash it again once nothing writes to it",
        .path.display()
    )]
    Changed {
        /// The file.
        path: PathBuf,
        /// Its size when opened.
        expected: u64,
        /// The bytes read.
        got: u64,
    },
    /// Hashing was stopped (Ctrl-C).
    #[error("stopped while hashing `{}`", .path.display())]
    Interrupted {
        /// The file being read.
        path: PathBuf,
    },
}

impl From<walk::WalkError> for HashError {
    fn from(failure: walk::WalkError) -> Self {
        HashError::io(&failure.path, failure.source)
    }
}

impl HashError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            HashError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            HashError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// What a hasher did: how much it read, and how often the cache spared a read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashStats {
    /// Regular files whose contents were read.
    pub files_read: u64,
    /// Bytes of file contents read.
    pub bytes_read: u64,
    /// Regular files whose content hash came from the cache.
    pub cache_hits: u64,
}

/// Computes tree digests, optionally through a [`DigestCache`], counting what it reads.
///
/// The walk is iterative and descriptor-relative, follows no symlink and works at any depth
/// (see the book's sandbox chapter); a hasher given a stop flag ([`TreeHasher::stopped_by`])
/// gives up within a megabyte of reading once it is set.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("hello.c"), "int main(void) { return 0; }\n").unwrap();
/// let hasher = forjar::hash::TreeHasher::new();
/// let digest = hasher.digest(dir.path()).unwrap();
/// assert!(digest.to_string().starts_with("blake3:"));
/// assert_eq!(hasher.stats().files_read, 1);
/// ```
#[derive(Default)]
pub struct TreeHasher<'c> {
    cache: Option<&'c DigestCache>,
    stop: Option<&'c AtomicBool>,
    keep: Option<walk::Keep<'c>>,
    /// What the tree is scanned for while it is read, and what was found.
    scan: Option<(&'c Needles, Mutex<BTreeSet<EntryName>>)>,
    files_read: AtomicU64,
    bytes_read: AtomicU64,
    cache_hits: AtomicU64,
}

/// The tree digest of `path`, reading everything (no cache).
pub fn tree_digest(path: &Path) -> Result<TreeDigest, HashError> {
    TreeHasher::new().digest(path)
}

/// How deep directories are hashed in parallel with each other (on the call stack); deeper
/// ones are walked iteratively.
const PARALLEL_DEPTH: usize = 16;

/// Files at least this large are hashed with BLAKE3's multi-threaded path.
const RAYON_THRESHOLD: u64 = 1 << 20;

/// A directory of fewer entries is hashed on the calling thread: handing a few small files to
/// the thread pool and waiting for them costs more than hashing them (two wake-ups, and idle
/// workers spinning after), and a large file's content is hashed in parallel anyway.
const PARALLEL_ENTRIES: usize = 8;

/// What a hole of a sparse file is hashed from: zeros that need no read.
static ZEROS: [u8; BUFFER] = [0; BUFFER];

/// A hasher in derive-key mode for the tree context. Deriving the context key is a BLAKE3
/// compression of its own; doing it once and cloning saves one per node, which counts on trees
/// of many small files.
fn node_hasher() -> blake3::Hasher {
    static TEMPLATE: LazyLock<blake3::Hasher> =
        LazyLock::new(|| blake3::Hasher::new_derive_key(TREE_CONTEXT));
    TEMPLATE.clone()
}

impl<'c> TreeHasher<'c> {
    /// A hasher that reads every file.
    pub fn new() -> Self {
        Self::default()
    }

    /// A hasher that takes unchanged files' content hashes from `cache` and records new ones.
    pub fn with_cache(cache: &'c DigestCache) -> Self {
        TreeHasher {
            cache: Some(cache),
            ..Self::default()
        }
    }

    /// Makes the hasher stop with [`HashError::Interrupted`] once `stop` is set (Ctrl-C).
    pub fn stopped_by(mut self, stop: &'c AtomicBool) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Makes the hasher see only what `keep` keeps below the root (a source's ignore rules).
    pub(crate) fn keeping(mut self, keep: Option<walk::Keep<'c>>) -> Self {
        self.keep = keep;
        self
    }

    /// Makes the hasher also scan what it reads for the store hashes of `needles`: the
    /// contents of every file, the target of every symlink, and every name below the root
    /// ([`TreeHasher::references`]). It reads every file, with a cache or without.
    pub fn scanning(mut self, needles: &'c Needles) -> Self {
        self.scan = Some((needles, Mutex::default()));
        self
    }

    /// The entries among the needles of [`TreeHasher::scanning`] whose hash occurs in the trees
    /// this hasher hashed.
    pub fn references(self) -> BTreeSet<EntryName> {
        match self.scan {
            Some((_, found)) => found.into_inner().unwrap_or_else(PoisonError::into_inner),
            None => BTreeSet::new(),
        }
    }

    /// A scanner for one item, when scanning.
    fn scanner(&self) -> Option<Scanner<'c>> {
        self.scan.as_ref().map(|(needles, _)| Scanner::new(needles))
    }

    /// Keeps what `scanner` found.
    fn found(&self, scanner: Option<Scanner<'_>>) {
        if let (Some((_, found)), Some(scanner)) = (&self.scan, scanner) {
            let new = scanner.found();
            if !new.is_empty() {
                found
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(new);
            }
        }
    }

    /// Scans a name below the root.
    fn scan_name(&self, name: &CString) {
        let mut scanner = self.scanner();
        feed(&mut scanner, name.as_bytes());
        self.found(scanner);
    }

    /// What this hasher has read so far.
    pub fn stats(&self) -> HashStats {
        HashStats {
            files_read: self.files_read.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
        }
    }

    /// The tree digest of `path`; a symlink at `path` is hashed as a symlink, not followed.
    pub fn digest(&self, path: &Path) -> Result<TreeDigest, HashError> {
        let (dir_path, name) = walk::split(path)?;
        let parent = walk::open_dir_path(dir_path).map_err(|e| HashError::io(path, e))?;
        let root = At::new(parent.as_fd(), &name, dir_path);
        let st = root.stat()?;
        match Kind::from_mode(st.st_mode) {
            Kind::Dir => self.dir(&root, 0),
            kind => self.leaf(&root, kind),
        }
        .map(TreeDigest::from_bytes)
    }

    /// The digest of the directory `at`, its entries hashed in parallel, subdirectories too down
    /// to [`PARALLEL_DEPTH`]; below that, each subtree is one iterative walk (whose files are
    /// still hashed in parallel), so that the call stack stays short at any depth.
    fn dir(&self, at: &At<'_>, depth: usize) -> Result<[u8; 32], HashError> {
        if depth >= PARALLEL_DEPTH {
            return walk::walk_at(
                at.parent,
                at.name,
                at.dir_path(),
                &mut Digests(self),
                walk::Options {
                    keep: self.keep,
                    ..walk::Options::default()
                },
            );
        }
        let path = at.path();
        let fd = walk::openat(at.parent, at.name, walk::DIR_FLAGS).map_err(|e| {
            match e.raw_os_error() {
                Some(nix::libc::ELOOP | nix::libc::ENOTDIR) => HashError::io(
                    &path,
                    io::Error::other("it changed while it was being hashed"),
                ),
                _ => HashError::io(&path, e),
            }
        })?;
        let mut entries = walk::list_sorted(fd.as_fd()).map_err(|e| HashError::io(&path, e))?;
        if let Some(keep) = self.keep {
            keep.retain(&path, &mut entries);
        }
        let one = |(name, kind): &(CString, Kind)| {
            self.scan_name(name);
            let child = At::new(fd.as_fd(), name, &path);
            match kind {
                Kind::Dir => self.dir(&child, depth + 1),
                kind => self.leaf(&child, *kind),
            }
        };
        let digests: Vec<[u8; 32]> = crate::threads::collect::<_, _, Result<_, _>>(
            &entries,
            entries.len() >= PARALLEL_ENTRIES,
            one,
        )?;
        let children: Vec<(CString, [u8; 32])> = entries
            .into_iter()
            .map(|(name, _)| name)
            .zip(digests)
            .collect();
        Ok(dir_node(&children))
    }

    fn check_stop(&self, path: impl FnOnce() -> PathBuf) -> Result<(), HashError> {
        match self.stop {
            Some(stop) if stop.load(Ordering::Relaxed) => {
                Err(HashError::Interrupted { path: path() })
            }
            _ => Ok(()),
        }
    }

    fn leaf(&self, at: &At<'_>, kind: Kind) -> Result<[u8; 32], HashError> {
        match kind {
            Kind::File => self.file(at),
            Kind::Symlink => {
                let target = at.read_link()?;
                let mut scanner = self.scanner();
                feed(&mut scanner, &target);
                self.found(scanner);
                Ok(symlink_node(&target))
            }
            other => Err(HashError::SpecialFile {
                path: at.path(),
                kind: other.special_name(),
            }),
        }
    }

    fn file(&self, at: &At<'_>) -> Result<[u8; 32], HashError> {
        self.check_stop(|| at.path())?;
        // With a cache, one fstatat answers for an unchanged file: no open, no read.
        if let Some(cache) = self.cache.filter(|_| self.scan.is_none()) {
            let st = at.stat()?;
            if Kind::from_mode(st.st_mode) == Kind::File
                && let Some(hash) = cache.get(&FileId::of(&st))
            {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(file_node(is_executable(&st), st.st_size as u64, &hash));
            }
        }
        let started = SystemTime::now();
        // The entry was a regular file when listed; if it was swapped for anything else since,
        // fail rather than hash what it became.
        let (fd, st) = match at.open_file()? {
            Ok(opened) => opened,
            Err(Kind::Symlink | Kind::Dir | Kind::File) => {
                return Err(HashError::io(
                    &at.path(),
                    io::Error::other("it changed while it was being hashed"),
                ));
            }
            Err(other) => {
                return Err(HashError::SpecialFile {
                    path: at.path(),
                    kind: other.special_name(),
                });
            }
        };
        let size = st.st_size as u64;
        let contents = self.contents(&File::from(fd), at, size)?;
        if let Some(cache) = self.cache {
            cache.insert_settled(FileId::of(&st), contents, started);
        }
        Ok(file_node(is_executable(&st), size, &contents))
    }

    /// BLAKE3 of the first `size` bytes of a file (its size when opened), failing if it has
    /// fewer. Reading stops at `size`, saving the `read` that would only report the end of the
    /// file; a file that grows while it is hashed is caught where it matters, when the copy of an
    /// imported source is hashed again. A file that fits the buffer is hashed in one call, which
    /// spares the incremental hasher's bookkeeping on the many small files of a typical tree. The
    /// holes of a sparse file are hashed as the zeros they read as, without reading them.
    /// When scanning, what is read is scanned too.
    fn contents(&self, file: &File, at: &At<'_>, size: u64) -> Result<[u8; 32], HashError> {
        let mut scanner = self.scanner();
        let hashed = with_read_buffer(|buf| -> Result<([u8; 32], u64), HashError> {
            let io = |e| HashError::io(&at.path(), e);
            if size <= BUFFER as u64 {
                let n = read_full(file, 0, &mut buf[..size as usize]).map_err(io)?;
                feed(&mut scanner, &buf[..n]);
                return Ok((*blake3::hash(&buf[..n]).as_bytes(), n as u64));
            }
            let mut hasher = blake3::Hasher::new();
            let spread = size >= RAYON_THRESHOLD && crate::threads::shared();
            let mut update = |bytes: &[u8]| {
                if spread {
                    hasher.update_rayon(bytes);
                } else {
                    hasher.update(bytes);
                }
            };
            let mut total = 0u64;
            'file: while total < size {
                let (data, hole) = next_data(file, total, size);
                if total < data
                    && let Some(scanner) = &mut scanner
                {
                    scanner.gap();
                }
                while total < data {
                    self.check_stop(|| at.path())?;
                    let n = (data - total).min(BUFFER as u64) as usize;
                    update(&ZEROS[..n]);
                    total += n as u64;
                }
                while total < hole {
                    self.check_stop(|| at.path())?;
                    let want = (hole - total).min(BUFFER as u64) as usize;
                    let n = read_full(file, total, &mut buf[..want]).map_err(io)?;
                    update(&buf[..n]);
                    feed(&mut scanner, &buf[..n]);
                    total += n as u64;
                    if n < want {
                        break 'file;
                    }
                }
            }
            Ok((*hasher.finalize().as_bytes(), total))
        });
        let (hash, read) = hashed?;
        self.found(scanner);
        self.files_read.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(read, Ordering::Relaxed);
        if read != size {
            return Err(HashError::Changed {
                path: at.path(),
                expected: size,
                got: read,
            });
        }
        Ok(hash)
    }
}

/// Feeds `bytes` to the scanner, if there is one.
fn feed(scanner: &mut Option<Scanner<'_>>, bytes: &[u8]) {
    if let Some(scanner) = scanner {
        scanner.feed(bytes);
    }
}

/// Where the next data of a file starts from `at`, and where the hole after it starts, both at
/// most `size`; a file system that cannot say has data everywhere.
fn next_data(file: &File, at: u64, size: u64) -> (u64, u64) {
    let seek = |whence| {
        // SAFETY: lseek on a descriptor the file owns.
        let to = unsafe { nix::libc::lseek(file.as_raw_fd(), at as i64, whence) };
        (to >= 0).then_some(to as u64)
    };
    match seek(nix::libc::SEEK_DATA) {
        Some(data) => {
            let data = data.min(size);
            let hole = {
                // SAFETY: as above.
                let to = unsafe {
                    nix::libc::lseek(file.as_raw_fd(), data as i64, nix::libc::SEEK_HOLE)
                };
                if to >= 0 { (to as u64).min(size) } else { size }
            };
            (data, hole.max(data))
        }
        // ENXIO: only a hole is left.
        None if io::Error::last_os_error().raw_os_error() == Some(nix::libc::ENXIO) => (size, size),
        None => (at, size),
    }
}

/// The tree digest as a walk: files and symlinks of a directory hashed in parallel, each
/// directory's node made from its entries' digests on the way out.
struct Digests<'h, 'c>(&'h TreeHasher<'c>);

impl Visitor for Digests<'_, '_> {
    type Out = [u8; 32];
    type Error = HashError;

    fn leaf(&mut self, at: &At<'_>, kind: Kind) -> Result<[u8; 32], HashError> {
        self.0.leaf(at, kind)
    }

    fn leaves(
        &mut self,
        dir: BorrowedFd<'_>,
        dir_path: &Path,
        entries: &[(CString, Kind)],
    ) -> Result<Vec<Option<[u8; 32]>>, HashError> {
        let hasher = self.0;
        let one = |(name, kind): &(CString, Kind)| {
            hasher.scan_name(name);
            match kind {
                Kind::Dir => Ok(None),
                kind => hasher.leaf(&At::new(dir, name, dir_path), *kind).map(Some),
            }
        };
        crate::threads::collect(entries, entries.len() >= PARALLEL_ENTRIES, one)
    }

    fn leave(
        &mut self,
        _: &At<'_>,
        _: BorrowedFd<'_>,
        children: Vec<(CString, [u8; 32])>,
    ) -> Result<[u8; 32], HashError> {
        Ok(dir_node(&children))
    }
}

/// `DK("D" || u64(count) || for each entry: u64(len(name)) || name || digest)`, the entries in
/// ascending order of raw name bytes.
fn dir_node(children: &[(CString, [u8; 32])]) -> [u8; 32] {
    let mut h = node_hasher();
    h.update(b"D")
        .update(&(children.len() as u64).to_le_bytes());
    for (name, digest) in children {
        let name = name.as_bytes();
        h.update(&(name.len() as u64).to_le_bytes())
            .update(name)
            .update(digest);
    }
    *h.finalize().as_bytes()
}

/// Reads from `offset` until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut total = 0;
    while total < buf.len() {
        match file.read_at(&mut buf[total..], offset + total as u64) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// The tree digest of a regular file holding `contents`, with the owner-execute bit or without:
/// what [`tree_digest`] gives for such a file, without one on disk.
pub fn file_digest(contents: &[u8], executable: bool) -> TreeDigest {
    TreeDigest::from_bytes(file_node(
        executable,
        contents.len() as u64,
        blake3::hash(contents).as_bytes(),
    ))
}

/// [`file_digest`] of what `content` reads, streamed.
pub fn file_digest_from(mut content: impl io::Read, executable: bool) -> io::Result<TreeDigest> {
    let mut hasher = FileDigester::default();
    io::copy(&mut content, &mut hasher)?;
    Ok(hasher.finish(executable))
}

/// [`file_digest`] of the bytes written to it, as they are written: of a file whose writer
/// sees every byte (a build's log), without reading the file again.
#[derive(Default)]
pub struct FileDigester {
    contents: blake3::Hasher,
    size: u64,
}

impl FileDigester {
    /// The digest of a file holding what was written, with the owner-execute bit or without.
    pub fn finish(&self, executable: bool) -> TreeDigest {
        TreeDigest::from_bytes(file_node(
            executable,
            self.size,
            self.contents.finalize().as_bytes(),
        ))
    }
}

impl io::Write for FileDigester {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.contents.update(buf);
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn is_executable(st: &nix::libc::stat) -> bool {
    st.st_mode & 0o100 != 0
}

/// `DK("F" || u8(x) || u64(size) || BLAKE3(contents))`.
fn file_node(executable: bool, size: u64, contents: &[u8; 32]) -> [u8; 32] {
    let mut h = node_hasher();
    h.update(b"F")
        .update(&[u8::from(executable)])
        .update(&size.to_le_bytes())
        .update(contents);
    *h.finalize().as_bytes()
}

/// `DK("L" || u64(len(target)) || target)`.
fn symlink_node(target: &[u8]) -> [u8; 32] {
    let mut h = node_hasher();
    h.update(b"L")
        .update(&(target.len() as u64).to_le_bytes())
        .update(target);
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn dk(node: &[u8]) -> [u8; 32] {
        blake3::derive_key(TREE_CONTEXT, node)
    }

    fn u64le(n: usize) -> [u8; 8] {
        (n as u64).to_le_bytes()
    }

    /// The spec, written out by hand for a file.
    fn spec_file(contents: &[u8], executable: bool) -> [u8; 32] {
        let mut node = vec![b'F', u8::from(executable)];
        node.extend(u64le(contents.len()));
        node.extend(blake3::hash(contents).as_bytes());
        dk(&node)
    }

    /// The spec, written out by hand for a directory of (name, digest) sorted by the caller.
    fn spec_dir(entries: &[(&[u8], [u8; 32])]) -> [u8; 32] {
        let mut node = vec![b'D'];
        node.extend(u64le(entries.len()));
        for (name, digest) in entries {
            node.extend(u64le(name.len()));
            node.extend(*name);
            node.extend(digest);
        }
        dk(&node)
    }

    fn digest(path: &Path) -> [u8; 32] {
        *tree_digest(path).unwrap().as_bytes()
    }

    #[test]
    fn an_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(digest(dir.path()), spec_dir(&[]));
        // Pinned, so that another implementation can check itself against this one.
        assert_eq!(
            tree_digest(dir.path()).unwrap().to_string(),
            format!("blake3:{}", super::super::hex(&spec_dir(&[])))
        );
    }

    #[test]
    fn one_file_and_the_same_file_executable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"hello\n").unwrap();
        let plain = digest(&path);
        assert_eq!(plain, spec_file(b"hello\n", false));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let executable = digest(&path);
        assert_eq!(executable, spec_file(b"hello\n", true));
        assert_ne!(plain, executable);
        // Only the owner's execute bit counts.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o611)).unwrap();
        assert_eq!(digest(&path), plain);
    }

    #[test]
    fn a_symlink_is_hashed_by_target_and_a_dangling_one_too() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("l");
        symlink("does/not/exist", &link).unwrap();
        let mut node = vec![b'L'];
        node.extend(u64le("does/not/exist".len()));
        node.extend(b"does/not/exist");
        assert_eq!(digest(&link), dk(&node));
        fs::write(dir.path().join("target"), b"x").unwrap();
        let other = dir.path().join("m");
        symlink("target", &other).unwrap();
        assert_ne!(
            digest(&other),
            spec_file(b"x", false),
            "a symlink is not followed"
        );
    }

    #[test]
    fn nested_directories() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/c"), b"deep").unwrap();
        fs::write(dir.path().join("top"), b"").unwrap();
        let b = spec_dir(&[(b"c", spec_file(b"deep", false))]);
        let a = spec_dir(&[(b"b", b)]);
        let root = spec_dir(&[(b"a", a), (b"top", spec_file(b"", false))]);
        assert_eq!(digest(dir.path()), root);
    }

    #[test]
    fn names_that_are_not_utf8_and_raw_byte_order() {
        let dir = tempfile::tempdir().unwrap();
        let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
        // Raw byte order: "B" (0x42) < "a" (0x61) < "caf\xe9" < "\xc3\xa9" (é in UTF-8).
        let names: [&[u8]; 4] = [b"a", b"B", b"caf\xe9", "é".as_bytes()];
        for name in names {
            fs::write(dir.path().join(std::ffi::OsStr::from_bytes(name)), name).unwrap();
        }
        assert!(dir.path().join(latin1).exists());
        let mut sorted = names.to_vec();
        sorted.sort();
        assert_eq!(sorted, [b"B" as &[u8], b"a", b"caf\xe9", "é".as_bytes()]);
        let entries: Vec<(&[u8], [u8; 32])> =
            sorted.iter().map(|n| (*n, spec_file(n, false))).collect();
        assert_eq!(digest(dir.path()), spec_dir(&entries));
    }

    #[test]
    fn renaming_or_moving_content_changes_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"1").unwrap();
        let before = digest(dir.path());
        fs::rename(dir.path().join("a"), dir.path().join("b")).unwrap();
        assert_ne!(digest(dir.path()), before);
    }

    #[test]
    fn a_fifo_is_an_error_naming_its_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        let fifo = dir.path().join("sub/pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let err = tree_digest(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "`{}` is a FIFO; a tree may hold only regular files, directories and symlinks",
                fifo.display()
            )
        );
    }

    #[test]
    fn a_missing_path_is_named() {
        let err = tree_digest(Path::new("/nonexistent/forjar-test")).unwrap_err();
        assert_eq!(err.to_string(), "`/nonexistent/forjar-test` does not exist");
    }

    #[test]
    fn an_unreadable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        // Reading a regular file as a directory fails whatever the user's privileges are.
        let err = TreeHasher::new().digest(&file.join("x")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read `{}`: ", file.join("x").display())),
            "{err}"
        );
    }

    #[test]
    fn a_sparse_file_hashes_as_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let file = File::create(&path).unwrap();
        // Data, a hole of 7 MiB, data, and a hole to the end.
        file.write_all_at(b"head", 0).unwrap();
        file.write_all_at(b"tail", 7 << 20).unwrap();
        file.set_len(9 << 20).unwrap();
        let mut bytes = vec![0u8; 9 << 20];
        bytes[..4].copy_from_slice(b"head");
        bytes[7 << 20..(7 << 20) + 4].copy_from_slice(b"tail");
        assert_eq!(digest(&path), spec_file(&bytes, false));
    }

    #[test]
    fn a_set_stop_flag_stops_hashing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        File::create(&path).unwrap().set_len(64 << 20).unwrap();
        let stop = AtomicBool::new(true);
        let err = TreeHasher::new()
            .stopped_by(&stop)
            .digest(&path)
            .unwrap_err();
        assert!(matches!(err, HashError::Interrupted { .. }), "{err}");
    }

    #[test]
    fn a_tree_deeper_than_path_max_hashes_as_the_spec_says() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("deep");
        fs::create_dir(&root).unwrap();
        let name = "n".repeat(200);
        let depth = 100;
        let bottom = walk::deep_chain(&root, &name, depth);
        let f = walk::openat_mode(
            bottom.as_fd(),
            c"f",
            nix::libc::O_CREAT | nix::libc::O_WRONLY,
            0o644,
        )
        .unwrap();
        std::io::Write::write_all(&mut File::from(f), b"deep").unwrap();
        let mut expected = spec_dir(&[(b"f", spec_file(b"deep", false))]);
        for _ in 0..depth {
            expected = spec_dir(&[(name.as_bytes(), expected)]);
        }
        assert_eq!(digest(&root), expected);
    }

    #[test]
    fn large_files_hash_as_the_spec_says() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let contents: Vec<u8> = (0..(RAYON_THRESHOLD as usize + 3 * BUFFER + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        fs::write(&path, &contents).unwrap();
        assert_eq!(digest(&path), spec_file(&contents, false));
    }

    /// The vectors published in the book (reference/hashing.md), which the independent Python
    /// implementation there reproduces.
    #[test]
    fn the_published_test_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let p = |rel: &str| dir.path().join(rel);
        fs::create_dir_all(p("empty")).unwrap();
        fs::create_dir_all(p("tree/sub")).unwrap();
        fs::write(p("hello.txt"), b"hello\n").unwrap();
        fs::write(p("hello.sh"), b"hello\n").unwrap();
        fs::set_permissions(p("hello.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("hello.txt", p("link")).unwrap();
        fs::write(p("tree/a"), b"hello\n").unwrap();
        fs::write(p("tree/sub/b"), b"").unwrap();
        symlink("../a", p("tree/sub/c")).unwrap();
        let vectors = [
            (
                "empty",
                "ba8ea6c3b2a571bc420557f2606b39289949c1bbf60786222c20d0e57bb55e5f",
            ),
            (
                "hello.txt",
                "c9ead8039dfa64166770b067c253a4e6ed7fd8162f4c6974add7f6d857cc9e35",
            ),
            (
                "hello.sh",
                "fc70010e563ec87aa0cb65bd24d8dfbee5d0817333875aaff56a8529003910af",
            ),
            (
                "link",
                "557febaa2a03453cdd168b776423dc27a0c2df4ca992ec0189a9d9fd0a88a853",
            ),
            (
                "tree",
                "7912e9d18e21c2c8fb8e75b06679462af936ae89a234368b18b320760273d0f7",
            ),
        ];
        for (rel, hex) in vectors {
            assert_eq!(
                tree_digest(&p(rel)).unwrap().to_string(),
                format!("blake3:{hex}"),
                "{rel}"
            );
        }
    }

    #[test]
    fn a_parallel_walk_of_many_files_is_deterministic() {
        // Directories hashed in parallel (the top, `d0`) and on the calling thread (the rest).
        let dir = tempfile::tempdir().unwrap();
        for i in 0..40 {
            let sub = dir.path().join(format!("d{}", i % 7));
            fs::create_dir_all(&sub).unwrap();
            fs::write(sub.join(format!("f{i}")), i.to_string()).unwrap();
        }
        for i in 0..PARALLEL_ENTRIES {
            fs::write(dir.path().join(format!("top{i}")), i.to_string()).unwrap();
            fs::write(dir.path().join(format!("d0/more{i}")), i.to_string()).unwrap();
        }
        let first = digest(dir.path());
        for _ in 0..5 {
            assert_eq!(digest(dir.path()), first);
        }
    }
}
