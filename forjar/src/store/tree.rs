//! What the store does to whole trees: canonicalise, copy, measure and remove them. Each is a
//! [`walk`](crate::walk): iterative, descriptor-relative, following no symlink, at any depth.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::libc;

use super::StoreError;
use crate::hash::HashError;
use crate::walk::{self, At, Kind, Visitor, WalkError};

impl From<WalkError> for StoreError {
    fn from(failure: WalkError) -> Self {
        StoreError::Hash(HashError::from(failure))
    }
}

fn special(at: &At<'_>, kind: Kind) -> StoreError {
    HashError::SpecialFile {
        path: at.path(),
        kind: kind.special_name(),
    }
    .into()
}

fn os(at: &At<'_>, what: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    let path = at.path();
    move |source| StoreError::Io { what, path, source }
}

fn check(rc: i32) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Extended attributes a file may keep: the labels a security module gives every file, which
/// no build chose and no digest covers.
fn is_label(name: &[u8]) -> bool {
    name == b"security.selinux"
        || name == b"security.apparmor"
        || name == b"security.ima"
        || name == b"security.evm"
        || name.starts_with(b"security.SMACK64")
}

/// Removes every extended attribute of the open file but security labels: a store entry carries
/// nothing its digest does not cover.
fn strip_xattrs(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut buf = [0u8; 1024];
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    let list: Vec<u8> = match n {
        0 => return Ok(()),
        n if n > 0 => buf[..n as usize].to_vec(),
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
            e if e.raw_os_error() == Some(libc::ERANGE) => {
                // SAFETY: a NULL buffer of size 0 asks for the size.
                let size = unsafe { libc::flistxattr(fd.as_raw_fd(), std::ptr::null_mut(), 0) };
                let mut big = vec![0u8; size.max(0) as usize];
                // SAFETY: the buffer is valid for its length.
                let n =
                    unsafe { libc::flistxattr(fd.as_raw_fd(), big.as_mut_ptr().cast(), big.len()) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                big.truncate(n as usize);
                big
            }
            e => return Err(e),
        },
    };
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if is_label(name) {
            continue;
        }
        let c = CString::new(name).expect("split at NUL");
        // SAFETY: a valid descriptor and C string.
        check(unsafe { libc::fremovexattr(fd.as_raw_fd(), c.as_ptr()) })?;
    }
    Ok(())
}

const ONE: [libc::timespec; 2] = [libc::timespec {
    tv_sec: 1,
    tv_nsec: 0,
}; 2];

/// Gives an open file or directory its canonical owner, mode and time, and strips its extended
/// attributes.
fn settle(
    fd: BorrowedFd<'_>,
    st: &libc::stat,
    owner: Option<(u32, u32)>,
    mode: u32,
) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    if let Some((uid, gid)) = owner
        && (st.st_uid != uid || st.st_gid != gid)
    {
        // SAFETY: fchown on a valid descriptor.
        check(unsafe { libc::fchown(raw, uid, gid) })?;
    }
    if st.st_mode & 0o7777 != mode {
        // SAFETY: fchmod on a valid descriptor.
        check(unsafe { libc::fchmod(raw, mode) })?;
    }
    strip_xattrs(fd)?;
    // SAFETY: futimens on a valid descriptor with two valid timespecs.
    check(unsafe { libc::futimens(raw, ONE.as_ptr()) })
}

/// Opens a regular file of the tree for reading, also one its owner may not read (a build may
/// leave mode 0000): such a file gets its owner's read bit through an `O_PATH` descriptor.
fn open_readable(at: &At<'_>) -> Result<Result<(OwnedFd, libc::stat), Kind>, StoreError> {
    match at.open_file() {
        Err(f) if f.source.raw_os_error() == Some(libc::EACCES) => {
            let handle = walk::openat(at.parent, at.name, libc::O_PATH | libc::O_NOFOLLOW)
                .map_err(os(at, "cannot open"))?;
            let st = walk::fstat(handle.as_fd()).map_err(os(at, "cannot open"))?;
            if Kind::from_mode(st.st_mode) != Kind::File {
                return Ok(Err(Kind::from_mode(st.st_mode)));
            }
            walk::chmod_handle(handle.as_fd(), (st.st_mode & 0o7777) | 0o400)
                .map_err(os(at, "cannot set the mode of"))?;
            let fd = walk::reopen(handle.as_fd(), libc::O_RDONLY).map_err(os(at, "cannot open"))?;
            let st = walk::fstat(fd.as_fd()).map_err(os(at, "cannot open"))?;
            Ok(Ok((fd, st)))
        }
        other => Ok(other?),
    }
}

/// Sets modes to 0444 (0555 where the owner could execute, and for directories), owners to
/// `owner` (when set), and modification times to 1 second past the epoch; strips extended
/// attributes; refuses special files. Returns the total size of the regular files.
pub(crate) fn canonicalise(path: &Path, owner: Option<(u32, u32)>) -> Result<u64, StoreError> {
    walk::walk(
        path,
        &mut Canonicalise { owner },
        walk::Options {
            force: true,
            ..walk::Options::default()
        },
    )
}

struct Canonicalise {
    owner: Option<(u32, u32)>,
}

impl Visitor for Canonicalise {
    type Out = u64;
    type Error = StoreError;

    fn leaf(&mut self, at: &At<'_>, kind: Kind) -> Result<u64, StoreError> {
        match kind {
            Kind::File => {
                let (fd, st) = regular(at, open_readable(at))?;
                let mode = if st.st_mode & 0o100 != 0 {
                    0o555
                } else {
                    0o444
                };
                settle(fd.as_fd(), &st, self.owner, mode).map_err(os(at, "cannot canonicalise"))?;
                Ok(st.st_size as u64)
            }
            Kind::Symlink => {
                if let Some((uid, gid)) = self.owner {
                    // SAFETY: fchownat of a valid descriptor and C string, not following.
                    check(unsafe {
                        libc::fchownat(
                            at.parent.as_raw_fd(),
                            at.name.as_ptr(),
                            uid,
                            gid,
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    })
                    .map_err(os(at, "cannot set the owner of"))?;
                }
                // SAFETY: utimensat of a valid descriptor and C string, not following.
                check(unsafe {
                    libc::utimensat(
                        at.parent.as_raw_fd(),
                        at.name.as_ptr(),
                        ONE.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                })
                .map_err(os(at, "cannot set the times of"))?;
                Ok(0)
            }
            other => Err(special(at, other)),
        }
    }

    fn leave(
        &mut self,
        at: &At<'_>,
        dir: BorrowedFd<'_>,
        children: Vec<(CString, u64)>,
    ) -> Result<u64, StoreError> {
        let st = walk::fstat(dir).map_err(os(at, "cannot read"))?;
        settle(dir, &st, self.owner, 0o555).map_err(os(at, "cannot canonicalise"))?;
        Ok(children.iter().map(|(_, size)| size).sum())
    }
}

/// The regular file `at` opened, or why it is not one any more: a file listed as regular that
/// turned into something else was changed under the walk.
fn regular(
    at: &At<'_>,
    opened: Result<Result<(OwnedFd, libc::stat), Kind>, StoreError>,
) -> Result<(OwnedFd, libc::stat), StoreError> {
    opened?.map_err(|kind| changed_or_special(at, kind))
}

fn changed_or_special(at: &At<'_>, kind: Kind) -> StoreError {
    match kind {
        Kind::File | Kind::Dir | Kind::Symlink => StoreError::Hash(HashError::io(
            &at.path(),
            io::Error::other("it changed while it was being read; nothing may write to it"),
        )),
        other => special(at, other),
    }
}

/// Copies the tree at `from` to `to` (which must not exist), as fresh files of this process's
/// own: regular files (owner-executable kept), directories and symlinks; refuses special files.
/// Nothing of the copy shares an inode with the original. Modes and times are left for
/// [`canonicalise`].
pub(crate) fn copy(from: &Path, to: &Path) -> Result<(), StoreError> {
    copy_keeping(from, to, None)
}

/// [`copy`] of what `keep` keeps below `from`.
pub(crate) fn copy_keeping(
    from: &Path,
    to: &Path,
    keep: Option<crate::walk::Keep<'_>>,
) -> Result<(), StoreError> {
    let name = to.file_name().ok_or_else(|| StoreError::Io {
        what: "cannot create",
        path: to.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "it does not end in a name"),
    })?;
    let parent = to.parent().unwrap_or(Path::new("."));
    let dest = walk::open_dir_path(parent).map_err(StoreError::io("cannot open", parent))?;
    let mut copy = Copy {
        at: dest,
        root: walk::cstring(std::os::unix::ffi::OsStrExt::as_bytes(name)),
        depth: 0,
    };
    walk::walk(
        from,
        &mut copy,
        walk::Options {
            keep,
            ..walk::Options::default()
        },
    )
}

struct Copy {
    /// The directory of the copy that the walk is in.
    at: OwnedFd,
    /// The name of the copy's root.
    root: CString,
    depth: usize,
}

impl Copy {
    /// The name the entry `at` gets in the copy.
    fn name<'a>(&'a self, at: &'a At<'_>) -> &'a CStr {
        if self.depth == 0 { &self.root } else { at.name }
    }
}

impl Visitor for Copy {
    type Out = ();
    type Error = StoreError;

    fn leaf(&mut self, at: &At<'_>, kind: Kind) -> Result<(), StoreError> {
        let name = self.name(at);
        match kind {
            Kind::File => {
                let (fd, st) = regular(at, at.open_file().map_err(StoreError::from))?;
                let mode = if st.st_mode & 0o100 != 0 {
                    0o700
                } else {
                    0o600
                };
                let out = walk::openat_mode(
                    self.at.as_fd(),
                    name,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    mode,
                )
                .map_err(os(at, "cannot copy"))?;
                io::copy(&mut File::from(fd), &mut File::from(out))
                    .map_err(os(at, "cannot copy"))?;
                Ok(())
            }
            Kind::Symlink => {
                let target = CString::new(at.read_link()?).map_err(|_| {
                    os(at, "cannot copy")(io::Error::other("a symlink target holds a NUL"))
                })?;
                // SAFETY: symlinkat with valid C strings and descriptor.
                check(unsafe {
                    libc::symlinkat(target.as_ptr(), self.at.as_raw_fd(), name.as_ptr())
                })
                .map_err(os(at, "cannot copy"))
            }
            other => Err(special(at, other)),
        }
    }

    fn enter(&mut self, at: &At<'_>, _: BorrowedFd<'_>) -> Result<(), StoreError> {
        let name = self.name(at).to_owned();
        // SAFETY: mkdirat with a valid descriptor and C string.
        check(unsafe { libc::mkdirat(self.at.as_raw_fd(), name.as_ptr(), 0o700) })
            .map_err(os(at, "cannot copy"))?;
        self.at = walk::openat(
            self.at.as_fd(),
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )
        .map_err(os(at, "cannot copy"))?;
        self.depth += 1;
        Ok(())
    }

    fn leave(
        &mut self,
        at: &At<'_>,
        _: BorrowedFd<'_>,
        _: Vec<(CString, ())>,
    ) -> Result<(), StoreError> {
        // The copy is this process's own, in a directory nobody else may enter: `..` is sure.
        self.at = walk::openat(self.at.as_fd(), c"..", libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(os(at, "cannot copy"))?;
        self.depth -= 1;
        Ok(())
    }
}

/// A directory of forjar's own making, removed with everything in it when dropped: a worker's
/// action.
#[cfg(feature = "remote")]
#[derive(Debug)]
pub(crate) struct ScratchDir(pub(crate) std::path::PathBuf);

#[cfg(feature = "remote")]
impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
    }
}

/// Removes a file or tree, making read-only directories writable first. A missing path is fine.
pub fn remove_tree(path: &Path) -> Result<(), StoreError> {
    gone(walk::walk(path, &mut Remove, REMOVE))
}

/// [`remove_tree`] of `name` in the open directory `parent` (whose path, for messages, is
/// `dir_path`): nothing above it is looked up again.
pub(crate) fn remove_tree_at(
    parent: BorrowedFd<'_>,
    name: &CStr,
    dir_path: &Path,
) -> Result<(), StoreError> {
    gone(walk::walk_at(parent, name, dir_path, &mut Remove, REMOVE))
}

/// A read-only directory is made writable to be emptied; nothing is left out.
const REMOVE: walk::Options<'static> = walk::Options {
    force: true,
    keep: None,
};

/// What vanished meanwhile was removed by someone else (a sweep racing a drop): either way,
/// it is gone.
fn gone(removed: Result<(), StoreError>) -> Result<(), StoreError> {
    match removed {
        Err(StoreError::Hash(HashError::NotFound { .. })) => Ok(()),
        other => other,
    }
}

struct Remove;

impl Visitor for Remove {
    type Out = ();
    type Error = StoreError;

    fn leaf(&mut self, at: &At<'_>, _: Kind) -> Result<(), StoreError> {
        walk::unlink_at(at.parent, at.name, false).map_err(os(at, "cannot remove"))
    }

    fn leave(
        &mut self,
        at: &At<'_>,
        _: BorrowedFd<'_>,
        _: Vec<(CString, ())>,
    ) -> Result<(), StoreError> {
        walk::unlink_at(at.parent, at.name, true).map_err(os(at, "cannot remove"))
    }
}

/// The apparent size in bytes of the regular files under `path` (what reading them costs; a
/// sparse file counts whole).
pub fn tree_size(path: &Path) -> io::Result<u64> {
    walk::apparent_size(path).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    use super::*;

    fn xattrs(path: &Path) -> Vec<u8> {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let mut buf = [0u8; 256];
        // SAFETY: a valid C string and a buffer valid for its length.
        let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n >= 0, "{}", io::Error::last_os_error());
        buf[..n as usize].to_vec()
    }

    fn set_xattr(path: &Path, name: &CStr) {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid C strings and a one-byte value.
        let rc = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
    }

    #[test]
    fn canonicalising_strips_extended_attributes_and_settles_modes_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("sub/f"), b"x").unwrap();
        fs::write(root.join("run"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("run"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(root.join("sub/f"), fs::Permissions::from_mode(0o000)).unwrap();
        symlink("sub/f", root.join("l")).unwrap();
        set_xattr(&root.join("run"), c"user.planted");
        set_xattr(&root.join("sub"), c"user.planted");
        assert_eq!(canonicalise(&root, None).unwrap(), 11);
        for (path, mode) in [
            ("", 0o555),
            ("sub", 0o555),
            ("sub/f", 0o444),
            ("run", 0o555),
        ] {
            let path = root.join(path);
            let meta = fs::symlink_metadata(&path).unwrap();
            assert_eq!(meta.mode() & 0o7777, mode, "{}", path.display());
            assert_eq!(meta.mtime(), 1, "{}", path.display());
            assert_eq!(xattrs(&path), b"", "{}", path.display());
        }
        assert_eq!(fs::symlink_metadata(root.join("l")).unwrap().mtime(), 1);
    }

    #[test]
    fn a_copy_shares_no_inode_and_a_removal_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        fs::create_dir_all(from.join("a/b")).unwrap();
        fs::write(from.join("a/b/f"), b"content").unwrap();
        fs::set_permissions(from.join("a/b/f"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("/etc/hostname", from.join("a/l")).unwrap();
        let to = dir.path().join("to");
        copy(&from, &to).unwrap();
        assert_eq!(
            crate::hash::tree_digest(&from).unwrap(),
            crate::hash::tree_digest(&to).unwrap()
        );
        let (a, b) = (
            fs::metadata(from.join("a/b/f")).unwrap(),
            fs::metadata(to.join("a/b/f")).unwrap(),
        );
        assert_ne!(a.ino(), b.ino());
        assert_eq!(
            fs::read_link(to.join("a/l")).unwrap(),
            Path::new("/etc/hostname")
        );

        canonicalise(&to, None).unwrap();
        remove_tree(&to).unwrap();
        assert!(!to.exists());
        remove_tree(&to).unwrap();
    }
}
