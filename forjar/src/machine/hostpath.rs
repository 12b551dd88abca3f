//! Managed paths on a host, reached as root without following links a user could have placed.
//!
//! Every operation works on the descriptor of the path's directory, reached from `/` one
//! component at a time with `O_NOFOLLOW`: a service that owns `/var/lib/app` cannot turn
//! `/var/lib/app/conf` into a link and have the agent write through it. A component that is a
//! symlink is followed only when both the link and the directory holding it are root's and
//! writable by nobody else (the distribution's `/lib -> usr/lib`); any other link stops the
//! operation with an error naming it. The final component is never followed: files and links are
//! made under a new name beside it and renamed over it, and owner and mode are set on the open
//! descriptor.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::libc;

use crate::hash::{TreeDigest, file_digest_from};
use crate::walk::{self, DIR_FLAGS, Kind};

/// The directory of a managed path, open, and the path's last name in it.
pub(crate) struct Parent {
    dir: OwnedFd,
    name: CString,
}

/// What a managed path is now.
pub(crate) struct Found {
    pub kind: Kind,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub size: u64,
}

/// A path the agent will not reach: a link on the way is not one it trusts.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refused(path: &Path, component: &Path) -> io::Error {
    io::Error::other(Refused(format!(
        "`{}` is reached through `{}`, which is a symlink not owned by root or in a directory \
         others can write; the agent follows no such link as root",
        path.display(),
        component.display()
    )))
}

/// Whether `error` is a refusal to reach a path through an untrusted link (so nothing of
/// forjar's can be there).
pub(crate) fn is_refusal(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|e| e.is::<Refused>())
}

/// Whether the directory `dir` and its entry `name` (a symlink) are root's and writable by no
/// one else, so that the link can be trusted.
fn trusted_link(dir: &OwnedFd, name: &CStr) -> io::Result<bool> {
    let parent = walk::fstat(dir.as_fd())?;
    let link = walk::stat_at(dir.as_fd(), name)?;
    Ok(parent.st_uid == 0 && parent.st_mode & 0o022 == 0 && link.st_uid == 0)
}

impl Parent {
    /// Opens the directory of the absolute `path`; with `create`, makes missing directories
    /// on the way (root's, 0755). `None` when a directory on the way is missing.
    pub(crate) fn open(path: &Path, create: bool) -> io::Result<Option<Parent>> {
        let mut components: Vec<&[u8]> = Vec::new();
        for component in path.components() {
            match component {
                Component::RootDir => {}
                Component::Normal(name) => components.push(name.as_bytes()),
                _ => {
                    return Err(io::Error::other(format!(
                        "`{}` is not an absolute, normal path",
                        path.display()
                    )));
                }
            }
        }
        let Some((last, dirs)) = components.split_last() else {
            return Err(io::Error::other("`/` itself is not a managed path"));
        };
        let mut dir = walk::open_dir_path(Path::new("/"))?;
        let mut so_far = std::path::PathBuf::from("/");
        for component in dirs {
            let name = walk::cstring(component);
            so_far.push(std::ffi::OsStr::from_bytes(component));
            let next = match walk::openat(dir.as_fd(), &name, DIR_FLAGS) {
                Ok(next) => next,
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    mkdir(&dir, &name, 0o755)?;
                    walk::openat(dir.as_fd(), &name, DIR_FLAGS)?
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    let st = walk::stat_at(dir.as_fd(), &name)?;
                    if Kind::from_mode(st.st_mode) != Kind::Symlink || !trusted_link(&dir, &name)? {
                        return Err(refused(path, &so_far));
                    }
                    walk::openat(dir.as_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY)?
                }
                Err(e) => return Err(e),
            };
            dir = next;
        }
        Ok(Some(Parent {
            dir,
            name: walk::cstring(last),
        }))
    }

    fn beside(&self) -> CString {
        let mut name = b".".to_vec();
        name.extend_from_slice(self.name.to_bytes());
        name.extend_from_slice(b".forjar-new");
        walk::cstring(&name)
    }

    /// What the path is, without following it; `None` if it does not exist.
    pub(crate) fn stat(&self) -> io::Result<Option<Found>> {
        match walk::stat_at(self.dir.as_fd(), &self.name) {
            Ok(st) => Ok(Some(Found {
                kind: Kind::from_mode(st.st_mode),
                uid: st.st_uid,
                gid: st.st_gid,
                mode: st.st_mode & 0o7777,
                size: st.st_size as u64,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The tree digest of the regular file at the path, read without following it, as a file
    /// node whose executable bit is `executable`: its content's, whatever its mode (which is
    /// compared on its own).
    pub(crate) fn file_digest(&self, executable: bool) -> io::Result<TreeDigest> {
        let fd = walk::openat(
            self.dir.as_fd(),
            &self.name,
            libc::O_RDONLY | libc::O_NOFOLLOW,
        )?;
        file_digest_from(File::from(fd), executable)
    }

    /// Whether the path is a regular file holding exactly `bytes`, read without following it
    /// and no further than one byte past their length (whatever else is there is not read).
    pub(crate) fn holds(&self, bytes: &[u8]) -> io::Result<bool> {
        let fd = match walk::openat(
            self.dir.as_fd(),
            &self.name,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        ) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP)) => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        if Kind::from_mode(walk::fstat(fd.as_fd())?.st_mode) != Kind::File {
            return Ok(false);
        }
        let mut found = Vec::with_capacity(bytes.len() + 1);
        File::from(fd)
            .take(bytes.len() as u64 + 1)
            .read_to_end(&mut found)?;
        Ok(found == bytes)
    }

    /// Whether the path's directory is on tmpfs, which lives in memory.
    pub(crate) fn in_memory(&self) -> io::Result<bool> {
        use nix::sys::statfs::{TMPFS_MAGIC, fstatfs};
        Ok(fstatfs(self.dir.as_fd())?.filesystem_type() == TMPFS_MAGIC)
    }

    /// The symlink's target.
    pub(crate) fn link_target(&self) -> io::Result<Vec<u8>> {
        walk::read_link_at(self.dir.as_fd(), &self.name)
    }

    /// Puts a regular file with `content`, owner and mode at the path: written beside it,
    /// owned, synced, and renamed over it.
    pub(crate) fn put_file(
        &self,
        content: &mut impl Read,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> io::Result<()> {
        let beside = self.beside();
        let _ = walk::unlink_at(self.dir.as_fd(), &beside, false);
        let fd = walk::openat_mode(
            self.dir.as_fd(),
            &beside,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        )?;
        let mut file = File::from(fd);
        let written = io::copy(content, &mut file)
            .and_then(|_| own(&file, uid, gid, mode))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = walk::unlink_at(self.dir.as_fd(), &beside, false);
            return Err(e);
        }
        self.rename_over(&beside)
    }

    /// Puts a symlink to `target` at the path: made beside it and renamed over it.
    pub(crate) fn put_symlink(&self, target: &str) -> io::Result<()> {
        let beside = self.beside();
        let _ = walk::unlink_at(self.dir.as_fd(), &beside, false);
        nix::unistd::symlinkat(target, self.dir.as_fd(), beside.as_c_str())?;
        self.rename_over(&beside)
    }

    /// Makes the path a directory (replacing anything else there) with owner and mode.
    pub(crate) fn put_directory(&self, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        match self.stat()? {
            Some(found) if found.kind == Kind::Dir => {}
            Some(_) => {
                walk::unlink_at(self.dir.as_fd(), &self.name, false)?;
                mkdir(&self.dir, &self.name, 0o700)?;
            }
            None => mkdir(&self.dir, &self.name, 0o700)?,
        }
        let fd = walk::openat(self.dir.as_fd(), &self.name, DIR_FLAGS)?;
        own(&File::from(fd), uid, gid, mode)
    }

    /// Removes the path; a directory only if it is empty (what it holds is not forjar's).
    pub(crate) fn remove(&self) -> io::Result<()> {
        let Some(found) = self.stat()? else {
            return Ok(());
        };
        match walk::unlink_at(self.dir.as_fd(), &self.name, found.kind == Kind::Dir) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
            other => other,
        }
    }

    fn rename_over(&self, beside: &CStr) -> io::Result<()> {
        nix::fcntl::renameat(
            self.dir.as_fd(),
            beside,
            self.dir.as_fd(),
            self.name.as_c_str(),
        )?;
        Ok(())
    }
}

fn mkdir(dir: &OwnedFd, name: &CStr, mode: u32) -> io::Result<()> {
    nix::sys::stat::mkdirat(
        dir.as_fd(),
        name,
        nix::sys::stat::Mode::from_bits_truncate(mode),
    )?;
    Ok(())
}

/// Sets owner and mode on an open file or directory.
fn own(file: &File, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    std::os::unix::fs::fchown(file, Some(uid), Some(gid))?;
    nix::sys::stat::fchmod(file.as_fd(), nix::sys::stat::Mode::from_bits_truncate(mode))?;
    Ok(())
}
