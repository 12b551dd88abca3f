//! Store entries as one byte stream, for copying a closure to a host: each entry's name, its
//! `meta.yaml`, and its content in the order the tree digest hashes it.
//!
//! ```text
//! stream := MAGIC entry* u64(0)
//! entry  := u64(len(name)) name  u64(len(meta)) meta  node
//! node   := "F" u8(executable) u64(size) bytes
//!         | "L" u64(len(target)) target
//!         | "D" u64(count) (u64(len(name)) name node)*     names ascending by raw bytes
//! ```
//!
//! The receiver writes each entry into a staging directory of its store and installs it with
//! one rename only if the content's tree digest is the one `meta.yaml` records; anything else
//! (a flipped byte, a truncated stream) leaves nothing installed. Both directions walk trees
//! with an explicit stack, so depth costs no call stack.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use crate::hash::EntryName;
use crate::name::{Name, OutputName};
use crate::store::{Committed, KeyLock, Meta, Staging, Store, StoreError};

/// The first bytes of a stream.
pub const MAGIC: &[u8] = b"forjar entries v1\n";

const MAX_NAME: u64 = 4096;
const MAX_META: u64 = 1 << 24;
const MAX_TARGET: u64 = 1 << 16;
const MAX_COUNT: u64 = 1 << 24;

/// Why a stream could not be written or received.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stream is not well formed.
    #[error("the entry stream is malformed: {0}")]
    Malformed(String),
    /// An entry's content did not have the digest its meta records; nothing of it was installed.
    #[error(
        "entry `{entry}` arrived damaged: its content hashes to {got}, but {expected} was sent; \
         nothing of it was installed"
    )]
    Damaged {
        /// The entry.
        entry: String,
        /// The digest its meta records.
        expected: String,
        /// The digest of what arrived.
        got: String,
    },
}

fn malformed<T>(why: impl Into<String>) -> Result<T, ArchiveError> {
    Err(ArchiveError::Malformed(why.into()))
}

fn put_u64(out: &mut impl Write, n: u64) -> io::Result<()> {
    out.write_all(&n.to_le_bytes())
}

fn put_bytes(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    put_u64(out, bytes.len() as u64)?;
    out.write_all(bytes)
}

/// Writes the stream of `entries` (in the order given, which should put references first) from
/// `store` to `out`.
pub fn write_entries(store: &Store, entries: &[EntryName], out: &mut impl Write) -> io::Result<()> {
    out.write_all(MAGIC)?;
    for entry in entries {
        put_bytes(out, entry.as_str().as_bytes())?;
        put_bytes(out, &fs::read(store.entry_path(entry).join("meta.yaml"))?)?;
        write_tree(&store.content_path(entry), out)?;
    }
    put_u64(out, 0)?;
    out.flush()
}

/// Writes the node of `root` and everything under it, depth first, names ascending.
fn write_tree(root: &Path, out: &mut impl Write) -> io::Result<()> {
    let mut stack: Vec<(PathBuf, Option<Vec<u8>>)> = vec![(root.to_path_buf(), None)];
    while let Some((path, name)) = stack.pop() {
        if let Some(name) = name {
            put_bytes(out, &name)?;
        }
        let meta = fs::symlink_metadata(&path)?;
        let kind = meta.file_type();
        if kind.is_file() {
            out.write_all(b"F")?;
            out.write_all(&[u8::from(meta.permissions().mode() & 0o100 != 0)])?;
            put_u64(out, meta.len())?;
            let copied = io::copy(&mut File::open(&path)?.take(meta.len()), out)?;
            if copied != meta.len() {
                return Err(io::Error::other(format!(
                    "`{}` shrank while it was sent",
                    path.display()
                )));
            }
        } else if kind.is_symlink() {
            out.write_all(b"L")?;
            put_bytes(out, fs::read_link(&path)?.as_os_str().as_bytes())?;
        } else if kind.is_dir() {
            let mut names: Vec<Vec<u8>> = fs::read_dir(&path)?
                .map(|item| item.map(|i| i.file_name().as_bytes().to_vec()))
                .collect::<Result<_, _>>()?;
            names.sort();
            out.write_all(b"D")?;
            put_u64(out, names.len() as u64)?;
            for name in names.into_iter().rev() {
                stack.push((path.join(OsStr::from_bytes(&name)), Some(name)));
            }
        } else {
            return Err(io::Error::other(format!(
                "`{}` is neither a file, a directory nor a symlink",
                path.display()
            )));
        }
    }
    Ok(())
}

fn get_u64(input: &mut impl Read) -> Result<u64, ArchiveError> {
    let mut buf = [0u8; 8];
    match input.read_exact(&mut buf) {
        Ok(()) => Ok(u64::from_le_bytes(buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => malformed("it ended early"),
        Err(e) => Err(e.into()),
    }
}

fn get_bytes(input: &mut impl Read, max: u64, what: &str) -> Result<Vec<u8>, ArchiveError> {
    let len = get_u64(input)?;
    if len > max {
        return malformed(format!("a {what} of {len} bytes is longer than {max}"));
    }
    let mut bytes = vec![0u8; len as usize];
    match input.read_exact(&mut bytes) {
        Ok(()) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => malformed("it ended early"),
        Err(e) => Err(e.into()),
    }
}

fn get_byte(input: &mut impl Read) -> Result<u8, ArchiveError> {
    let mut byte = [0u8];
    match input.read_exact(&mut byte) {
        Ok(()) => Ok(byte[0]),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => malformed("it ended early"),
        Err(e) => Err(e.into()),
    }
}

/// Receives a stream into `store`, calling `installed` after each entry is in place. Entries
/// the store has already are read and skipped.
pub fn receive(
    store: &Store,
    input: &mut impl BufRead,
    mut installed: impl FnMut(&EntryName),
) -> Result<(), ArchiveError> {
    let mut magic = vec![0u8; MAGIC.len()];
    input
        .read_exact(&mut magic)
        .or_else(|_| malformed("it does not start with the forjar entries header"))?;
    if magic != MAGIC {
        return malformed("it does not start with the forjar entries header");
    }
    loop {
        let name = get_bytes(input, MAX_NAME, "entry name")?;
        if name.is_empty() {
            // What arrived is durable before anything (a generation, an activation) names it.
            store.sync()?;
            return Ok(());
        }
        let name = String::from_utf8(name)
            .ok()
            .and_then(|n| EntryName::parse(&n).ok())
            .map_or_else(|| malformed("an entry name is not valid"), Ok)?;
        let meta_bytes = get_bytes(input, MAX_META, "meta.yaml")?;
        let meta_path = store.entry_path(&name).join("meta.yaml");
        let meta = Meta::parse(&meta_bytes, &meta_path)
            .map_err(|e| ArchiveError::Malformed(format!("entry `{name}`: {e}")))?;
        check_name(&name, &meta)?;
        let lock = KeyLock::acquire(store, name.hash())?;
        if store.contains(&name) {
            read_tree(input, None)?;
            installed(&name);
            continue;
        }
        let staging = Staging::new(store, &lock, name.clone())?;
        read_tree(input, Some(&staging.content_path()))?;
        match staging.commit_fetched(meta)? {
            Committed::Installed(_) => installed(&name),
            Committed::Mismatch(m) => {
                return Err(ArchiveError::Damaged {
                    entry: name.to_string(),
                    expected: m.expected.to_string(),
                    got: m.got.to_string(),
                });
            }
        }
    }
}

/// The entry's name must be the one its meta's key, name and output make.
fn check_name(name: &EntryName, meta: &Meta) -> Result<(), ArchiveError> {
    let made = Name::new(meta.name.as_str())
        .ok()
        .zip(OutputName::new(meta.output.as_str()).ok())
        .map(|(n, o)| EntryName::new(&meta.key, &n, Some(&o)));
    if made.as_ref() != Some(name) {
        return malformed(format!(
            "entry `{name}` does not have the name its meta.yaml's key, name and output make"
        ));
    }
    Ok(())
}

/// Reads one node and everything under it, writing it at `root` (or nowhere, to skip it).
fn read_tree(input: &mut impl BufRead, root: Option<&Path>) -> Result<(), ArchiveError> {
    // Each open directory: where it is and how many of its children are still to come.
    let mut open: Vec<(Option<PathBuf>, u64)> = Vec::new();
    let mut next: Option<PathBuf> = root.map(Path::to_path_buf);
    loop {
        match get_byte(input)? {
            b'F' => {
                let executable = match get_byte(input)? {
                    0 => false,
                    1 => true,
                    other => return malformed(format!("executable flag {other}")),
                };
                let size = get_u64(input)?;
                let mut body = input.take(size);
                match &next {
                    Some(path) => {
                        let mut file = File::options()
                            .write(true)
                            .create_new(true)
                            .mode(if executable { 0o700 } else { 0o600 })
                            .custom_flags(nix::libc::O_NOFOLLOW)
                            .open(path)?;
                        let copied = io::copy(&mut body, &mut file)?;
                        if copied != size {
                            return malformed("it ended early, inside a file");
                        }
                    }
                    None => {
                        if io::copy(&mut body, &mut io::sink())? != size {
                            return malformed("it ended early, inside a file");
                        }
                    }
                }
            }
            b'L' => {
                let target = get_bytes(input, MAX_TARGET, "symlink target")?;
                if target.is_empty() || target.contains(&0) {
                    return malformed("a symlink target is empty or holds a NUL byte");
                }
                if let Some(path) = &next {
                    symlink(OsStr::from_bytes(&target), path)?;
                }
            }
            b'D' => {
                let count = get_u64(input)?;
                if count > MAX_COUNT {
                    return malformed(format!("a directory of {count} entries"));
                }
                if let Some(path) = &next {
                    fs::create_dir(path)?;
                    fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
                }
                open.push((next.take(), count));
            }
            other => return malformed(format!("unknown node type {other:#04x}")),
        }
        // Find the next child to read, closing the directories that are complete.
        loop {
            let Some((dir, left)) = open.last_mut() else {
                return Ok(());
            };
            if *left == 0 {
                open.pop();
                continue;
            }
            *left -= 1;
            let name = get_bytes(input, 255, "file name")?;
            if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
                return malformed(format!(
                    "file name {:?} is not a plain name",
                    String::from_utf8_lossy(&name)
                ));
            }
            next = dir.as_ref().map(|d| d.join(OsStr::from_bytes(&name)));
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::Name;

    fn store_with_entry() -> (tempfile::TempDir, Store, EntryName) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("deep/er")).unwrap();
        fs::write(src.join("deep/er/file"), vec![7u8; 100_000]).unwrap();
        fs::write(src.join("run"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("run"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("deep/er/file", src.join("link")).unwrap();
        let entry = store
            .import_source(&src, &Name::new("tree").unwrap())
            .unwrap()
            .entry;
        (dir, store, entry)
    }

    #[test]
    fn a_stream_round_trips_with_the_same_digest() {
        let (_dir, store, entry) = store_with_entry();
        let mut stream = Vec::new();
        write_entries(&store, std::slice::from_ref(&entry), &mut stream).unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = Store::open(other_dir.path()).unwrap();
        let mut got = Vec::new();
        receive(&other, &mut &stream[..], |e| got.push(e.clone())).unwrap();
        assert_eq!(got, vec![entry.clone()]);
        // Synced on arrival: no window of unsynced entries is left.
        assert_eq!(
            fs::read_dir(other_dir.path().join(".pending"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(
            other.meta(&entry).unwrap().digest,
            store.meta(&entry).unwrap().digest
        );
        assert_eq!(
            crate::hash::tree_digest(&other.content_path(&entry)).unwrap(),
            store.meta(&entry).unwrap().digest
        );
    }

    #[test]
    fn a_flipped_byte_or_a_cut_stream_installs_nothing() {
        let (_dir, store, entry) = store_with_entry();
        let mut stream = Vec::new();
        write_entries(&store, std::slice::from_ref(&entry), &mut stream).unwrap();
        // A byte of the large file's content, well inside the stream.
        let mut flipped = stream.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x01;
        let other_dir = tempfile::tempdir().unwrap();
        let other = Store::open(other_dir.path()).unwrap();
        let error = receive(&other, &mut &flipped[..], |_| {}).unwrap_err();
        assert!(matches!(error, ArchiveError::Damaged { .. }), "{error}");
        assert!(!other.contains(&entry));
        let cut = &stream[..stream.len() - 5_000];
        let error = receive(&other, &mut &cut[..], |_| {}).unwrap_err();
        assert!(error.to_string().contains("ended early"), "{error}");
        assert!(!other.contains(&entry));
        assert_eq!(
            fs::read_dir(other_dir.path().join(".tmp")).unwrap().count(),
            0
        );
        // The whole stream afterwards installs it.
        receive(&other, &mut &stream[..], |_| {}).unwrap();
        assert!(other.contains(&entry));
    }
}
