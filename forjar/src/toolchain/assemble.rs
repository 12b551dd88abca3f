//! Assembling a toolchain's tree from the host's installed packages, and importing it.
//!
//! The tree is written from host files dpkg names into a directory forjar creates under a store
//! lock (so that no sweep of `.tmp/` removes it meanwhile): the staging directory of the entry
//! the lock file names, or, when locking, `<store>/.tmp/<h>.toolchain`, imported once hashed.
//! Either way the store then canonicalises and hashes it with its walk (iterative,
//! descriptor-relative, following no symlink) and checks it against the locked digest.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::libc;

use super::dpkg::{Database, Installed};
use super::lock::{LockedPackage, LockedToolchain};
use super::{Origin, Toolchain, ToolchainError, archive, lock_command};
use crate::hash::{EntryName, Key, TreeDigest, TreeHasher};
use crate::store::{Committed, Draft, ImportOutcome, KeyLock, Staging, Store, remove_tree};

/// The top-level directories of a Debian system that are links into `/usr` on a merged-`/usr`
/// system (every Debian since 12); what a package lists under them is put under `usr/`.
const MERGED: [&str; 6] = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// What of `/usr` a build has no use for: documentation.
const LEFT_OUT: [&str; 4] = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
];

/// Where a path dpkg lists goes in the toolchain's tree: under `usr/`, or nowhere (`/etc`,
/// `/var`, documentation, and the top-level directories themselves).
fn placed(listed: &str) -> Option<PathBuf> {
    let relative = listed.trim_start_matches('/');
    let (top, rest) = relative.split_once('/')?;
    let path = match top {
        "usr" => relative.to_string(),
        top if MERGED.contains(&top) => format!("usr/{top}/{rest}"),
        _ => return None,
    };
    let path = PathBuf::from(path);
    if LEFT_OUT.iter().any(|l| path.starts_with(l)) || path.components().count() < 2 {
        return None;
    }
    Some(path)
}

/// Assembles `toolchain` from the host and imports it. With `expected` (the lock's entry, and
/// the lock file's path), the tree is written straight into the staging directory of the entry
/// the lock names, and a tree of another digest is refused, naming the packages whose files
/// differ; without, it is assembled, hashed, then imported as the entry its digest names.
pub(crate) fn import(
    store: &Store,
    toolchain: &Toolchain,
    expected: Option<(&LockedToolchain, &Path)>,
) -> Result<(LockedToolchain, ImportOutcome), ToolchainError> {
    let locked = |digest: TreeDigest, packages: Vec<LockedPackage>| LockedToolchain {
        name: toolchain.name().to_string(),
        source: toolchain.origin().as_str().into(),
        root: toolchain.root().to_path_buf(),
        asked: toolchain.packages().iter().cloned().collect(),
        digest,
        packages,
    };
    if let Some((expected, lock)) = expected {
        let digest = expected.digest;
        let entry = EntryName::of_source(toolchain.name(), &digest);
        let outcome = |imported| ImportOutcome {
            entry: entry.clone(),
            digest,
            imported,
        };
        if store.contains(&entry) {
            return Ok((expected.clone(), outcome(false)));
        }
        let key_lock = KeyLock::acquire(store, entry.hash())?;
        if store.contains(&entry) {
            return Ok((expected.clone(), outcome(false)));
        }
        let started = SystemTime::now();
        let staging = Staging::new(store, &key_lock, entry.clone())?;
        let listed = fill(&staging.content_path(), toolchain, Some(&expected.packages))?;
        return match staging.commit(Draft::imported(toolchain.name(), digest, started))? {
            Committed::Installed(_) => Ok((locked(digest, listed), outcome(true))),
            Committed::Mismatch(m) => {
                Err(changed(toolchain, expected, &locked(m.got, listed), lock))
            }
        };
    }
    let id = Key::from_bytes(
        *blake3::Hasher::new_derive_key("forjar toolchain assembly v1")
            .update(toolchain.name().as_str().as_bytes())
            .finalize()
            .as_bytes(),
    )
    .store_hash();
    let _lock = KeyLock::acquire(store, &id)?;
    let dir = store.dir().join(".tmp").join(format!("{id}.toolchain"));
    if fs::symlink_metadata(&dir).is_ok() {
        remove_tree(&dir)?;
    }
    let result = fill(&dir, toolchain, None);
    let outcome = result.and_then(|listed| {
        let digest = TreeHasher::new().digest(&dir)?;
        let outcome = store.import_toolchain(&dir, toolchain.name(), digest)?;
        Ok((locked(digest, listed), outcome))
    });
    let _ = remove_tree(&dir);
    outcome
}

/// Writes the toolchain's tree into `dir`: the packages installed now, or those of the archive,
/// as the lock has them (`locked`) or as apt resolves them now. Returns the packages.
fn fill(
    dir: &Path,
    toolchain: &Toolchain,
    locked: Option<&[LockedPackage]>,
) -> Result<Vec<LockedPackage>, ToolchainError> {
    match toolchain.origin() {
        Origin::Installed => {
            let db = Database::read(toolchain.root())?;
            let names = toolchain.package_names().map(str::to_string).collect();
            let packages = db.closure(&names)?;
            assemble_in(dir, &db, toolchain, packages.values())
        }
        Origin::Archive => {
            let packages = match locked {
                Some(locked) => locked.to_vec(),
                None => archive::resolve(toolchain)?,
            };
            assemble_archive(dir, &packages)?;
            Ok(packages)
        }
    }
}

/// What the maintainer scripts of a package from the archive would have set up, which an
/// unpacked package lacks: the alternatives every Debian system has, each to the first
/// candidate the toolchain holds.
const ALTERNATIVES: [(&str, &[&str]); 3] = [
    ("usr/bin/cc", &["gcc", "clang"]),
    ("usr/bin/c++", &["g++", "clang++"]),
    ("usr/bin/awk", &["mawk", "gawk", "original-awk"]),
];

/// Fetches and unpacks each package into `dir` (in `<dir>.unpack`, a directory beside it under
/// the same store lock, removed after), placed as a host package's files are.
fn assemble_archive(dir: &Path, packages: &[LockedPackage]) -> Result<(), ToolchainError> {
    fs::create_dir(dir).map_err(io_error("cannot create", dir))?;
    let mut work = dir.as_os_str().to_os_string();
    work.push(".unpack");
    let work = PathBuf::from(work);
    fs::create_dir(&work).map_err(io_error("cannot create", &work))?;
    let result = packages.iter().try_for_each(|package| {
        let root = archive::unpack(package, &work)?;
        for path in archive::listing(&root)? {
            if let Some(relative) = placed(&path) {
                place(
                    &root.join(path.trim_start_matches('/')),
                    dir,
                    &relative,
                    &root,
                )?;
            }
        }
        remove_tree(&root).map_err(ToolchainError::from)
    });
    let _ = remove_tree(&work);
    result?;
    for (link, candidates) in ALTERNATIVES {
        let link = dir.join(link);
        let chosen = candidates
            .iter()
            .find(|c| fs::symlink_metadata(dir.join("usr/bin").join(c)).is_ok());
        if let (Some(chosen), Err(_)) = (chosen, fs::symlink_metadata(&link)) {
            symlink(chosen, &link).map_err(io_error("cannot create", &link))?;
        }
    }
    merged_links(dir)
}

/// `bin -> usr/bin` and the like, for each merged directory the tree has.
fn merged_links(dir: &Path) -> Result<(), ToolchainError> {
    for top in MERGED {
        if fs::symlink_metadata(dir.join("usr").join(top)).is_ok_and(|m| m.is_dir()) {
            let link = dir.join(top);
            symlink(format!("usr/{top}"), &link).map_err(io_error("cannot create", &link))?;
        }
    }
    Ok(())
}

fn changed(
    toolchain: &Toolchain,
    expected: &LockedToolchain,
    got: &LockedToolchain,
    lock: &Path,
) -> ToolchainError {
    let mut differing: Vec<String> = super::lock::changes(Some(expected), got);
    if differing.is_empty() {
        differing.push(format!(
            "the tree is {}, not {}",
            got.digest, expected.digest
        ));
    }
    ToolchainError::Changed {
        toolchain: toolchain.name().to_string(),
        lock: lock.to_path_buf(),
        detail: differing.join(", "),
        command: lock_command(),
    }
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ToolchainError {
    let path = path.to_path_buf();
    move |source| ToolchainError::Io { what, path, source }
}

/// Writes every package's files, the alternatives that point into them, and the merged-`/usr`
/// links into `dir`; returns each package with the digest of its files.
fn assemble_in<'a>(
    dir: &Path,
    db: &Database,
    toolchain: &Toolchain,
    packages: impl Iterator<Item = &'a Installed>,
) -> Result<Vec<LockedPackage>, ToolchainError> {
    fs::create_dir(dir).map_err(io_error("cannot create", dir))?;
    let root = toolchain.root();
    let mut locked = Vec::new();
    for package in packages {
        let mut hasher = blake3::Hasher::new_derive_key("forjar toolchain package v1");
        let mut listed = db.files(package)?;
        listed.sort();
        for path in listed {
            let Some(relative) = placed(&path) else {
                continue;
            };
            let host = root.join(path.trim_start_matches('/'));
            if let Some(entry) = place(&host, dir, &relative, root)? {
                hasher.update(relative.as_os_str().as_encoded_bytes());
                hasher.update(&[0]);
                hasher.update(&entry);
            }
        }
        locked.push(LockedPackage {
            name: package.name.clone(),
            version: package.version.clone(),
            architecture: package.architecture.clone(),
            digest: TreeDigest::from_bytes(*hasher.finalize().as_bytes()).to_string(),
            url: None,
        });
    }
    for (link, target) in db.alternatives()? {
        let (Some(link), Some(to)) = (placed(&link), placed(&target)) else {
            continue;
        };
        let dest = dir.join(&link);
        if fs::symlink_metadata(dir.join(&to)).is_ok()
            && fs::symlink_metadata(&dest).is_err()
            && make_parent(dir, &link)?
        {
            symlink(&target, &dest).map_err(io_error("cannot create", &dest))?;
        }
    }
    merged_links(dir)?;
    Ok(locked)
}

/// Makes `relative` a directory in the tree at `dir`, one component at a time and following no
/// symlink: `false` (and nothing made) when a component is a symlink or a file, as when a
/// package reaches a directory through a link another package made (`default-java ->
/// java-17`): what is behind the link is placed by its own path, and nothing is written where
/// the link points, which may be outside the tree.
fn make_dirs(dir: &Path, relative: &Path) -> Result<bool, ToolchainError> {
    let mut at = dir.to_path_buf();
    for component in relative.components() {
        at.push(component);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&at).map_err(io_error("cannot create", &at))?;
            }
            Err(source) => return Err(io_error("cannot read", &at)(source)),
        }
    }
    Ok(true)
}

/// Makes the parent of `relative` in the tree at `dir` ([`make_dirs`]).
fn make_parent(dir: &Path, relative: &Path) -> Result<bool, ToolchainError> {
    make_dirs(dir, relative.parent().unwrap_or(Path::new("")))
}

/// Puts the host's file `host` at `dest`, unless something is there already (another
/// package's copy of the same path) or the host has no such file (dpkg was told to leave it
/// out). Returns what the package digest covers of it: its kind, mode and content digest, or
/// its link target.
fn place(
    host: &Path,
    dir: &Path,
    relative: &Path,
    root: &Path,
) -> Result<Option<Vec<u8>>, ToolchainError> {
    let meta = match fs::symlink_metadata(host) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_error("cannot read", host)(source)),
    };
    if meta.is_dir() {
        return Ok(make_dirs(dir, relative)?.then(|| b"d".to_vec()));
    }
    let dest = &dir.join(relative);
    if fs::symlink_metadata(dest).is_ok() || !make_parent(dir, relative)? {
        return Ok(None);
    }
    if meta.file_type().is_symlink() {
        let mut target = fs::read_link(host).map_err(io_error("cannot read", host))?;
        // A link to an alternative is to what the system chose for it.
        if let Ok(rest) = target.strip_prefix("/etc/alternatives") {
            let chosen = root.join("etc/alternatives").join(rest);
            target = fs::read_link(&chosen).map_err(io_error("cannot read", &chosen))?;
        }
        symlink(&target, dest).map_err(io_error("cannot create", dest))?;
        let mut entry = b"l".to_vec();
        entry.extend_from_slice(target.as_os_str().as_encoded_bytes());
        return Ok(Some(entry));
    }
    if !meta.is_file() {
        return Ok(None);
    }
    let executable = meta.permissions().mode() & 0o100 != 0;
    let mut from = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(host)
        .map_err(io_error("cannot read", host))?;
    let mut to = File::create_new(dest).map_err(io_error("cannot create", dest))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = from.read(&mut buf).map_err(io_error("cannot read", host))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])
            .map_err(io_error("cannot write", dest))?;
    }
    let mode = if executable { 0o755 } else { 0o644 };
    fs::set_permissions(dest, fs::Permissions::from_mode(mode))
        .map_err(io_error("cannot set the mode of", dest))?;
    let mut entry = if executable { b"x" } else { b"f" }.to_vec();
    entry.extend_from_slice(hasher.finalize().as_bytes());
    Ok(Some(entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_written_through_a_link_in_the_tree() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        symlink(outside.path(), dir.path().join("link")).unwrap();
        assert!(!make_dirs(dir.path(), Path::new("link/sub")).unwrap());
        assert!(!make_parent(dir.path(), Path::new("link/file")).unwrap());
        assert!(make_dirs(dir.path(), Path::new("usr/bin")).unwrap());
        assert!(dir.path().join("usr/bin").is_dir());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn listed_paths_are_placed_under_usr_and_documentation_is_left_out() {
        assert_eq!(placed("/bin/ls"), Some(PathBuf::from("usr/bin/ls")));
        assert_eq!(
            placed("/lib64/ld-linux-x86-64.so.2"),
            Some(PathBuf::from("usr/lib64/ld-linux-x86-64.so.2"))
        );
        assert_eq!(placed("/usr/bin/make"), Some(PathBuf::from("usr/bin/make")));
        assert_eq!(placed("/usr/share/doc/make/copyright"), None);
        assert_eq!(placed("/etc/python3.11/sitecustomize.py"), None);
        assert_eq!(placed("/bin"), None);
        assert_eq!(placed("/usr"), None);
        assert_eq!(placed("/."), None);
    }
}
