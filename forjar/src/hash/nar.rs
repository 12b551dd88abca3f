//! SHA-256 as Nix computes fixed-output digests: of one file's bytes (flat), or of a tree's NAR
//! serialisation (recursive).
//!
//! A tree is first listed by a [`walk`](crate::walk) (iterative, descriptor-relative, following
//! no symlink); the NAR stream is then written from that listing with an explicit stack, each
//! file opened from the tree's root descriptor with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` and checked to be the file listed, so a tree changed meanwhile fails
//! the digest rather than leading it outside the tree.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::libc;
use sha2::{Digest, Sha256};

use super::HashError;
use crate::walk::{self, At, Kind, Visitor, WalkError};

/// The SHA-256 of the regular file at `path` (not through a symlink).
pub fn file_sha256(path: &Path) -> Result<[u8; 32], HashError> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| HashError::io(path, e))?;
    let meta = file.metadata().map_err(|e| HashError::io(path, e))?;
    if !meta.is_file() {
        return Err(HashError::io(
            path,
            io::Error::other(
                "a flat SHA-256 digest is of one regular file; this is a directory or special file (a tree takes the `recursive` mode)",
            ),
        ));
    }
    let mut hasher = Sha256::new();
    copy_into(&mut file, &mut hasher, path)?;
    Ok(hasher.finalize().into())
}

fn copy_into(file: &mut File, hasher: &mut Sha256, path: &Path) -> Result<u64, HashError> {
    let mut total = 0u64;
    super::with_read_buffer(|buf| {
        loop {
            match file.read(buf) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(HashError::io(path, e)),
            }
        }
    })
}

/// One entry of a listed tree.
enum Node {
    File {
        /// From the tree's root; empty for a tree that is one file.
        relative: PathBuf,
        executable: bool,
        size: u64,
        id: (u64, u64),
    },
    Symlink(Vec<u8>),
    Dir(Vec<(CString, Node)>),
}

struct Listing<'a> {
    root: &'a Path,
}

impl Visitor for Listing<'_> {
    type Out = Node;
    type Error = HashError;

    fn leaf(&mut self, at: &At<'_>, kind: Kind) -> Result<Node, HashError> {
        match kind {
            Kind::File => {
                let st = at.stat()?;
                let path = at.path();
                Ok(Node::File {
                    relative: path.strip_prefix(self.root).unwrap_or(&path).to_path_buf(),
                    executable: st.st_mode & 0o100 != 0,
                    size: st.st_size as u64,
                    id: (st.st_dev, st.st_ino),
                })
            }
            Kind::Symlink => Ok(Node::Symlink(at.read_link()?)),
            other => Err(HashError::SpecialFile {
                path: at.path(),
                kind: other.special_name(),
            }),
        }
    }

    fn leave(
        &mut self,
        _: &At<'_>,
        _: std::os::fd::BorrowedFd<'_>,
        children: Vec<(CString, Node)>,
    ) -> Result<Node, HashError> {
        Ok(Node::Dir(children))
    }
}

/// Writes NAR's strings: a little-endian length, the bytes, zeros to a multiple of 8.
struct Nar(Sha256);

impl Nar {
    fn str(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self.pad(bytes.len() as u64);
    }

    fn pad(&mut self, len: u64) {
        let pad = (8 - len % 8) % 8;
        self.0.update(&[0u8; 8][..pad as usize]);
    }
}

enum Step<'a> {
    Node(&'a Node),
    EntryOpen(&'a CString),
    Close,
}

/// The SHA-256 of the NAR serialisation of the file, symlink or tree at `path`: Nix's
/// recursive fixed-output digest (`nix hash path`).
pub fn nar_sha256(path: &Path) -> Result<[u8; 32], HashError> {
    let tree = walk::walk(path, &mut Listing { root: path }, walk::Options::default())?;
    // Files below the root are opened from its descriptor.
    let root_dir = match tree {
        Node::Dir(_) => Some(
            walk::open_dir_path(path)
                .map_err(|e| HashError::from(WalkError::new(path.into(), e)))?,
        ),
        _ => None,
    };
    let mut nar = Nar(Sha256::new());
    nar.str(b"nix-archive-1");
    let mut stack = vec![Step::Node(&tree)];
    while let Some(step) = stack.pop() {
        match step {
            Step::EntryOpen(name) => {
                nar.str(b"entry");
                nar.str(b"(");
                nar.str(b"name");
                nar.str(name.as_bytes());
                nar.str(b"node");
            }
            Step::Close => nar.str(b")"),
            Step::Node(node) => {
                nar.str(b"(");
                nar.str(b"type");
                match node {
                    Node::File {
                        relative,
                        executable,
                        size,
                        id,
                    } => {
                        nar.str(b"regular");
                        if *executable {
                            nar.str(b"executable");
                            nar.str(b"");
                        }
                        nar.str(b"contents");
                        let full = joined(path, relative);
                        let mut file = open_listed(root_dir.as_ref(), path, relative, *id)?;
                        nar.0.update(size.to_le_bytes());
                        let read = copy_into(&mut file, &mut nar.0, &full)?;
                        if read != *size {
                            return Err(changed(&full));
                        }
                        nar.pad(*size);
                        nar.str(b")");
                    }
                    Node::Symlink(target) => {
                        nar.str(b"symlink");
                        nar.str(b"target");
                        nar.str(target);
                        nar.str(b")");
                    }
                    Node::Dir(children) => {
                        nar.str(b"directory");
                        stack.push(Step::Close);
                        for (name, child) in children.iter().rev() {
                            stack.push(Step::Close);
                            stack.push(Step::Node(child));
                            stack.push(Step::EntryOpen(name));
                        }
                    }
                }
            }
        }
    }
    Ok(nar.0.finalize().into())
}

/// `relative` below `root`; `root` itself for the empty path (a tree that is one file).
fn joined(root: &Path, relative: &Path) -> PathBuf {
    if relative.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(relative)
    }
}

fn changed(path: &Path) -> HashError {
    HashError::io(
        path,
        io::Error::other("it changed while it was being hashed; nothing may write to it"),
    )
}

/// Opens the listed file `relative` below `root_dir` (or the tree's root itself when it is the
/// file), resolving no symlink and nothing outside the tree, and checks it is the one listed.
fn open_listed(
    root_dir: Option<&OwnedFd>,
    root: &Path,
    relative: &Path,
    id: (u64, u64),
) -> Result<File, HashError> {
    let full = joined(root, relative);
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let file = match root_dir {
        Some(dir) => {
            let how = OpenHow::new().flags(flags).resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
            let fd = openat2(
                dir.as_fd(),
                OsStr::from_bytes(relative.as_os_str().as_bytes()),
                how,
            )
            .map_err(|e| HashError::io(&full, io::Error::from(e)))?;
            File::from(fd)
        }
        None => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&full)
            .map_err(|e| HashError::io(&full, e))?,
    };
    let meta = file.metadata().map_err(|e| HashError::io(&full, e))?;
    if !meta.is_file() || (meta.dev(), meta.ino()) != id {
        return Err(changed(&full));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn hex(bytes: &[u8; 32]) -> String {
        crate::hash::hex(bytes)
    }

    /// Digests `nix-hash --type sha256` (Nix 2.8) printed for the same file and tree.
    #[test]
    fn nar_digests_are_nix_s() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hello");
        fs::write(&file, "hello\n").unwrap();
        assert_eq!(
            hex(&nar_sha256(&file).unwrap()),
            "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13"
        );
        assert_eq!(
            hex(&file_sha256(&file).unwrap()),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::write(tree.join("sub/run"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(tree.join("sub/run"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("sub/run", tree.join("a-link")).unwrap();
        fs::write(tree.join("b"), "data").unwrap();
        assert_eq!(
            hex(&nar_sha256(&tree).unwrap()),
            "3dcca6999ceeaa842cfe209072093f40213ff18ceaad78df413dfa3b37e72664"
        );
    }

    #[test]
    fn a_flat_digest_is_of_one_file_and_a_tree_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("empty");
        fs::write(&file, "").unwrap();
        assert_eq!(
            hex(&file_sha256(&file).unwrap()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let err = file_sha256(dir.path()).unwrap_err().to_string();
        assert!(err.contains("takes the `recursive` mode"), "{err}");
        let link = dir.path().join("link");
        symlink("empty", &link).unwrap();
        assert!(file_sha256(&link).is_err(), "a symlink is not followed");
    }
}
