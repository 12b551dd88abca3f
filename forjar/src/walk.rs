//! Walking a tree that a build may have written: iterative, descriptor-relative, and never
//! following a symlink (the book's sandbox chapter, "What forjar does as root").
//!
//! Every step below the tree's root is taken from an open directory descriptor with `*at` calls
//! and `O_NOFOLLOW`, so a directory swapped for a symlink mid-walk fails the walk instead of
//! leading out of the tree, and no path handed to the kernel is longer than one name. The walk
//! keeps its own stack, not the call stack, so any depth works; it holds at most [`OPEN_DIRS`]
//! directory descriptors, closing those of deep ancestors and reopening them through `..` when
//! it returns, checked by device and inode.
//!
//! The path up to the tree's root is trusted: it is opened by path, and is always a directory
//! of forjar's own (a staging directory, a store entry) or one the user named.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::libc;

/// The most directory descriptors one walk keeps open.
pub(crate) const OPEN_DIRS: usize = 48;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Block,
    Char,
    Unknown,
}

impl Kind {
    pub(crate) fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFBLK => Kind::Block,
            libc::S_IFCHR => Kind::Char,
            _ => Kind::Unknown,
        }
    }

    fn from_dtype(t: u8) -> Option<Kind> {
        Some(match t {
            libc::DT_REG => Kind::File,
            libc::DT_DIR => Kind::Dir,
            libc::DT_LNK => Kind::Symlink,
            libc::DT_FIFO => Kind::Fifo,
            libc::DT_SOCK => Kind::Socket,
            libc::DT_BLK => Kind::Block,
            libc::DT_CHR => Kind::Char,
            _ => return None,
        })
    }

    /// What a tree may not hold, by name ("FIFO", "socket", ...).
    pub(crate) fn special_name(self) -> &'static str {
        match self {
            Kind::Fifo => "FIFO",
            Kind::Socket => "socket",
            Kind::Block => "block device",
            Kind::Char => "character device",
            _ => "file of unknown type",
        }
    }
}

/// The advice that goes with running out of descriptors (`EMFILE`): this process's limit and
/// how to raise it.
pub(crate) fn open_file_limit_advice() -> String {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or_else(|_| "unknown".to_string(), |(soft, _)| soft.to_string());
    format!(
        "the limit of {limit} open files is too low; raise it (`ulimit -n`, or LimitNOFILE= for \
         a service) and run again"
    )
}

/// A failed step of a walk: the path (for people) and the OS error.
#[derive(Debug)]
pub(crate) struct WalkError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl WalkError {
    pub(crate) fn new(path: PathBuf, source: io::Error) -> Self {
        WalkError { path, source }
    }

    fn changed(path: PathBuf) -> Self {
        WalkError::new(
            path,
            io::Error::other("it changed while it was being read; nothing may write to it"),
        )
    }
}

impl From<WalkError> for io::Error {
    fn from(f: WalkError) -> Self {
        io::Error::new(
            f.source.kind(),
            format!("`{}`: {}", f.path.display(), f.source),
        )
    }
}

/// Where a visited entry is: its parent directory's descriptor and its name.
pub(crate) struct At<'a> {
    pub parent: BorrowedFd<'a>,
    pub name: &'a CStr,
    dir_path: &'a Path,
}

impl<'a> At<'a> {
    /// The entry `name` of the directory `parent`, whose path is `dir_path`.
    pub(crate) fn new(parent: BorrowedFd<'a>, name: &'a CStr, dir_path: &'a Path) -> Self {
        At {
            parent,
            name,
            dir_path,
        }
    }

    /// The path of the entry's directory, for messages.
    pub(crate) fn dir_path(&self) -> &'a Path {
        self.dir_path
    }

    /// The entry's path, for messages.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir_path.join(OsStr::from_bytes(self.name.to_bytes()))
    }

    /// `fstatat` of the entry, not following a symlink.
    pub(crate) fn stat(&self) -> Result<libc::stat, WalkError> {
        stat_at(self.parent, self.name).map_err(|e| WalkError::new(self.path(), e))
    }

    /// Opens the entry for reading if it is a regular file, never following a symlink nor
    /// blocking on a FIFO swapped in; returns it with its `fstat`, or `None` with the kind it
    /// turned out to be.
    pub(crate) fn open_file(&self) -> Result<Result<(OwnedFd, libc::stat), Kind>, WalkError> {
        let fd = openat(
            self.parent,
            self.name,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
        );
        let fd = match fd {
            Ok(fd) => fd,
            // A symlink swapped in, or a file the caller may not read: say what it is.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENXIO)) => {
                return Ok(Err(Kind::from_mode(self.stat()?.st_mode)));
            }
            Err(e) => return Err(WalkError::new(self.path(), e)),
        };
        let st = fstat(fd.as_fd()).map_err(|e| WalkError::new(self.path(), e))?;
        match Kind::from_mode(st.st_mode) {
            Kind::File => Ok(Ok((fd, st))),
            other => Ok(Err(other)),
        }
    }

    /// The target of the symlink.
    pub(crate) fn read_link(&self) -> Result<Vec<u8>, WalkError> {
        read_link_at(self.parent, self.name).map_err(|e| WalkError::new(self.path(), e))
    }
}

/// What a walk does at each entry. Directories are visited twice: on the way in (`enter`) and,
/// after everything in them, on the way out (`leave`), with the results of their entries in
/// ascending order of raw name bytes.
pub(crate) trait Visitor {
    type Out;
    type Error: From<WalkError>;

    /// Anything that is not a directory.
    fn leaf(&mut self, at: &At<'_>, kind: Kind) -> Result<Self::Out, Self::Error>;

    /// The entries of one directory (its descriptor and path), in ascending name order: the
    /// result of each one that is not a directory, `None` for directories (visited on their
    /// own). Each through [`Visitor::leaf`] unless a visitor does them together.
    fn leaves(
        &mut self,
        dir: BorrowedFd<'_>,
        dir_path: &Path,
        entries: &[(CString, Kind)],
    ) -> Result<Vec<Option<Self::Out>>, Self::Error> {
        entries
            .iter()
            .map(|(name, kind)| match kind {
                Kind::Dir => Ok(None),
                kind => self.leaf(&At::new(dir, name, dir_path), *kind).map(Some),
            })
            .collect()
    }

    /// A directory, open, before anything in it.
    fn enter(&mut self, _at: &At<'_>, _dir: BorrowedFd<'_>) -> Result<(), Self::Error> {
        Ok(())
    }

    /// A directory after everything in it.
    fn leave(
        &mut self,
        at: &At<'_>,
        dir: BorrowedFd<'_>,
        children: Vec<(CString, Self::Out)>,
    ) -> Result<Self::Out, Self::Error>;
}

/// How to walk.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Options<'a> {
    /// Give a directory its owner's read, write and search bits when it lacks them (what
    /// removing a read-only tree needs when not root).
    pub force: bool,
    /// Which entries below the root the walk sees; a directory left out is not entered.
    pub keep: Option<Keep<'a>>,
}

/// A choice of the entries below a tree's root, by path and kind: a source's ignore rules.
#[derive(Clone, Copy)]
pub(crate) struct Keep<'a>(pub &'a (dyn Fn(&Path, Kind) -> bool + Sync));

impl std::fmt::Debug for Keep<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keep")
    }
}

impl Keep<'_> {
    /// Leaves out of `entries`, listed in the directory `dir_path`, what is not kept.
    pub(crate) fn retain(&self, dir_path: &Path, entries: &mut Vec<(CString, Kind)>) {
        entries.retain(|(name, kind)| {
            (self.0)(&dir_path.join(OsStr::from_bytes(name.to_bytes())), *kind)
        });
    }
}

/// One directory on the walk's stack.
struct Frame<O> {
    /// Closed for deep ancestors; reopened through `..` on the way back.
    fd: Option<OwnedFd>,
    id: (u64, u64),
    /// Its name in its parent, and its index among the parent's entries.
    name: CString,
    index: usize,
    entries: Vec<(CString, Kind)>,
    results: Vec<Option<O>>,
    /// The next entry to look at for a directory to descend into.
    next: usize,
}

/// Walks the tree at `path` (a file, symlink or directory; a symlink is visited, not followed).
pub(crate) fn walk<V: Visitor>(
    path: &Path,
    visitor: &mut V,
    options: Options<'_>,
) -> Result<V::Out, V::Error> {
    let (dir_path, name) = split(path)?;
    // A missing directory on the way is reported as the path asked for being missing.
    let parent = open_dir_path(dir_path).map_err(|e| WalkError::new(path.to_path_buf(), e))?;
    walk_at(parent.as_fd(), &name, dir_path, visitor, options)
}

/// Walks the tree `name` in the directory `parent` (whose path, for messages, is `dir_path`).
pub(crate) fn walk_at<V: Visitor>(
    parent: BorrowedFd<'_>,
    name: &CStr,
    dir_path: &Path,
    visitor: &mut V,
    options: Options<'_>,
) -> Result<V::Out, V::Error> {
    let root = At {
        parent,
        name,
        dir_path,
    };
    let st = root.stat()?;
    if Kind::from_mode(st.st_mode) != Kind::Dir {
        return visitor.leaf(&root, Kind::from_mode(st.st_mode));
    }
    let mut path = root.path();
    let first = open_frame(parent, name, dir_path, 0, options, visitor)?;
    let mut stack = vec![first];
    loop {
        let depth = stack.len();
        let top = stack
            .last_mut()
            .expect("the stack holds the directory being walked");
        let next = top.entries[top.next..]
            .iter()
            .position(|(_, kind)| *kind == Kind::Dir)
            .map(|i| i + top.next);
        if let Some(i) = next {
            top.next = i + 1;
            let fd = top.fd.as_ref().expect("the top of the stack is open");
            let child = open_frame(fd.as_fd(), &top.entries[i].0, &path, i, options, visitor)?;
            path.push(OsStr::from_bytes(child.name.to_bytes()));
            stack.push(child);
            if depth >= OPEN_DIRS {
                stack[depth - OPEN_DIRS].fd = None;
            }
            continue;
        }
        let frame = stack
            .pop()
            .expect("the stack holds the directory being walked");
        path.pop();
        let fd = frame.fd.expect("the top of the stack is open");
        let children: Vec<(CString, V::Out)> = frame
            .entries
            .into_iter()
            .zip(frame.results)
            .map(|((name, _), out)| (name, out.expect("every entry was visited")))
            .collect();
        let Some(parent_frame) = stack.last_mut() else {
            return visitor.leave(&root, fd.as_fd(), children);
        };
        if parent_frame.fd.is_none() {
            let reopened = openat(fd.as_fd(), c"..", DIR_FLAGS)
                .and_then(|up| Ok((fstat(up.as_fd())?, up)))
                .map_err(|e| WalkError::new(path.clone(), e))?;
            if (reopened.0.st_dev, reopened.0.st_ino) != parent_frame.id {
                return Err(WalkError::changed(path).into());
            }
            parent_frame.fd = Some(reopened.1);
        }
        let parent_fd = parent_frame.fd.as_ref().expect("reopened above");
        let at = At {
            parent: parent_fd.as_fd(),
            name: &frame.name,
            dir_path: &path,
        };
        let out = visitor.leave(&at, fd.as_fd(), children)?;
        parent_frame.results[frame.index] = Some(out);
    }
}

/// How a directory of a walked tree is opened: never through a symlink.
pub(crate) const DIR_FLAGS: i32 = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// Opens the directory `name` of `parent`, lists it, visits its leaves, and enters it.
fn open_frame<V: Visitor>(
    parent: BorrowedFd<'_>,
    name: &CStr,
    dir_path: &Path,
    index: usize,
    options: Options<'_>,
    visitor: &mut V,
) -> Result<Frame<V::Out>, V::Error> {
    let at = At {
        parent,
        name,
        dir_path,
    };
    let fd = match openat(parent, name, DIR_FLAGS) {
        Ok(fd) => fd,
        Err(e) if options.force && e.raw_os_error() == Some(libc::EACCES) => {
            force_open(parent, name).map_err(|e| WalkError::new(at.path(), e))?
        }
        // Listed as a directory, but a symlink or something else now.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            return Err(WalkError::changed(at.path()).into());
        }
        Err(e) => return Err(WalkError::new(at.path(), e).into()),
    };
    let st = fstat(fd.as_fd()).map_err(|e| WalkError::new(at.path(), e))?;
    if options.force && st.st_mode & 0o700 != 0o700 && st.st_uid == nix::unistd::geteuid().as_raw()
    {
        // SAFETY: fchmod on a descriptor this function owns.
        if unsafe { libc::fchmod(fd.as_raw_fd(), (st.st_mode & 0o7777) | 0o700) } != 0 {
            return Err(WalkError::new(at.path(), io::Error::last_os_error()).into());
        }
    }
    visitor.enter(&at, fd.as_fd())?;
    let path = at.path();
    let mut entries = list_sorted(fd.as_fd()).map_err(|e| WalkError::new(path.clone(), e))?;
    if let Some(keep) = options.keep {
        keep.retain(&path, &mut entries);
    }
    let results = visitor.leaves(fd.as_fd(), &path, &entries)?;
    Ok(Frame {
        fd: Some(fd),
        id: (st.st_dev, st.st_ino),
        name: name.to_owned(),
        index,
        entries,
        results,
        next: 0,
    })
}

/// The apparent size in bytes of the regular files under `path` (what reading them costs; a
/// sparse file counts whole).
pub(crate) fn apparent_size(path: &Path) -> Result<u64, WalkError> {
    walk(path, &mut Size, Options::default())
}

struct Size;

impl Visitor for Size {
    type Out = u64;
    type Error = WalkError;

    fn leaf(&mut self, at: &At<'_>, kind: Kind) -> Result<u64, WalkError> {
        Ok(match kind {
            Kind::File => at.stat()?.st_size as u64,
            _ => 0,
        })
    }

    fn leave(
        &mut self,
        _: &At<'_>,
        _: BorrowedFd<'_>,
        children: Vec<(CString, u64)>,
    ) -> Result<u64, WalkError> {
        Ok(children.iter().map(|(_, n)| n).sum())
    }
}

/// Opens a directory its owner may not read: gives the owner `rwx` through an `O_PATH`
/// descriptor, then opens it.
fn force_open(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    let handle = openat(
        parent,
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
    )?;
    let st = fstat(handle.as_fd())?;
    chmod_handle(handle.as_fd(), (st.st_mode & 0o7777) | 0o700)?;
    reopen(handle.as_fd(), DIR_FLAGS & !libc::O_NOFOLLOW)
}

/// The `/proc/self/fd` path of a descriptor: a magic link to its inode, which resolves to
/// exactly that inode and follows nothing further.
fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("a number has no NUL")
}

/// `chmod` of what an `O_PATH` descriptor holds (`fchmod` refuses such descriptors).
pub(crate) fn chmod_handle(handle: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: chmod of a valid C string.
    if unsafe { libc::chmod(proc_path(handle).as_ptr(), mode) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens again, with `flags`, what an `O_PATH` descriptor holds.
pub(crate) fn reopen(handle: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: open of a valid C string; the result is checked by `owned`.
    owned(unsafe { libc::open(proc_path(handle).as_ptr(), flags | libc::O_CLOEXEC) })
}

/// The directory and the final name of `path`.
pub(crate) fn split(path: &Path) -> Result<(&Path, CString), WalkError> {
    let name = path.file_name().ok_or_else(|| {
        WalkError::new(
            path.to_path_buf(),
            io::Error::new(io::ErrorKind::InvalidInput, "it does not end in a name"),
        )
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    Ok((dir, cstring(name.as_bytes())))
}

pub(crate) fn cstring(bytes: &[u8]) -> CString {
    CString::new(bytes).expect("names from the file system hold no NUL")
}

/// Opens a directory by path, following symlinks (the trusted part of a path).
pub(crate) fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path holds a NUL byte"))?;
    // SAFETY: open of a valid C string; a non-negative result is a descriptor we own.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    owned(fd)
}

fn owned(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: a non-negative return of open/openat is a new descriptor this process owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// `openat(2)`, close-on-exec.
pub(crate) fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<OwnedFd> {
    openat_mode(dir, name, flags, 0)
}

/// `openat(2)` with a mode (for `O_CREAT`), close-on-exec.
pub(crate) fn openat_mode(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: openat with a valid descriptor and C string.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode,
            )
        };
        match owned(fd) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `fstat(2)`.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: `st` is plain data that fstat fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a pointer to `st`.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// `fstatat(2)` without following a symlink.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: as for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, C string, and a pointer to `st`.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// `readlinkat(2)`: a symlink's target, whatever its length.
pub(crate) fn read_link_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// `unlinkat(2)`; `dir` removes a directory.
pub(crate) fn unlink_at(parent: BorrowedFd<'_>, name: &CStr, dir: bool) -> io::Result<()> {
    let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: a valid descriptor and C string.
    if unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The entries of an open directory, but `.` and `..`, with their kinds, in ascending order of
/// raw name bytes.
pub(crate) fn list_sorted(dir: BorrowedFd<'_>) -> io::Result<Vec<(CString, Kind)>> {
    let mut entries = list(dir)?;
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(entries)
}

/// The entries of an open directory (read from its start), but `.` and `..`, with their kinds.
pub(crate) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<(CString, Kind)>> {
    let mut entries = Vec::new();
    each_entry(dir, |name, kind| {
        entries.push((name.to_owned(), kind));
        ControlFlow::Continue(())
    })?;
    Ok(entries)
}

/// Gives `visit` each entry of an open directory (read from its start), but `.` and `..`, with
/// its kind, until it breaks; `Ok(true)` when it saw every entry.
pub(crate) fn each_entry(
    dir: BorrowedFd<'_>,
    mut visit: impl FnMut(&CStr, Kind) -> ControlFlow<()>,
) -> io::Result<bool> {
    // struct linux_dirent64: u64 d_ino, i64 d_off, u16 d_reclen, u8 d_type, char d_name[].
    const NAME: usize = 19;
    let mut buf = vec![0u8; 32 << 10];
    loop {
        // SAFETY: getdents64 fills at most `buf.len()` bytes of `buf`.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(true);
        }
        let mut at = 0usize;
        while at < n as usize {
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            let dtype = buf[at + 18];
            let record = &buf[at + NAME..at + reclen];
            let name = CStr::from_bytes_until_nul(record)
                .map_err(|_| io::Error::other("a directory entry without an end"))?;
            at += reclen;
            if name == c"." || name == c".." {
                continue;
            }
            let kind = match Kind::from_dtype(dtype) {
                Some(kind) => kind,
                None => Kind::from_mode(stat_at(dir, name)?.st_mode),
            };
            if visit(name, kind).is_break() {
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
pub(crate) fn deep_chain(root: &Path, name: &str, depth: usize) -> OwnedFd {
    let name = cstring(name.as_bytes());
    let mut fd = open_dir_path(root).expect("the root opens");
    for _ in 0..depth {
        // SAFETY: mkdirat with a valid descriptor and C string.
        assert_eq!(
            unsafe { libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o755) },
            0
        );
        fd = openat(fd.as_fd(), &name, DIR_FLAGS).expect("the new directory opens");
    }
    fd
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    /// Collects every path, in the order visited.
    struct Paths(Vec<String>);

    impl Visitor for Paths {
        type Out = usize;
        type Error = WalkError;
        fn leaf(&mut self, at: &At<'_>, _: Kind) -> Result<usize, WalkError> {
            self.0.push(at.path().display().to_string());
            Ok(1)
        }
        fn leave(
            &mut self,
            at: &At<'_>,
            _: BorrowedFd<'_>,
            children: Vec<(CString, usize)>,
        ) -> Result<usize, WalkError> {
            self.0.push(format!("{}/", at.path().display()));
            Ok(1 + children.iter().map(|(_, n)| n).sum::<usize>())
        }
    }

    #[test]
    fn a_tree_is_visited_leaves_first_in_name_order_and_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        fs::create_dir_all(root.join("b/c")).unwrap();
        fs::write(root.join("b/z"), b"").unwrap();
        fs::write(root.join("a"), b"").unwrap();
        symlink("/", root.join("b/c/up")).unwrap();
        let mut paths = Paths(Vec::new());
        let count = walk(&root, &mut paths, Options::default()).unwrap();
        let r = root.display();
        assert_eq!(
            paths.0,
            [
                format!("{r}/a"),
                format!("{r}/b/z"),
                format!("{r}/b/c/up"),
                format!("{r}/b/c/"),
                format!("{r}/b/"),
                format!("{r}/"),
            ]
        );
        assert_eq!(count, 6);
    }

    #[test]
    fn a_tree_deeper_than_path_max_and_the_open_descriptors_is_walked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("deep");
        fs::create_dir(&root).unwrap();
        // 3,000 levels of 100-byte names: 300 kB of path, far past PATH_MAX and OPEN_DIRS.
        let bottom = deep_chain(&root, &"d".repeat(100), 3000);
        openat_mode(
            bottom.as_fd(),
            c"leaf",
            libc::O_CREAT | libc::O_WRONLY,
            0o644,
        )
        .unwrap();
        let mut paths = Paths(Vec::new());
        assert_eq!(walk(&root, &mut paths, Options::default()).unwrap(), 3002);
        assert!(paths.0[0].ends_with("/leaf"));
        assert!(paths.0[0].len() > 300_000);
    }
}
