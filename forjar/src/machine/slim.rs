//! The agent as it is sent: this program's binary without its debugging information.
//!
//! A host runs the agent and never reads its DWARF sections (`.debug_*`), which are most of a
//! binary built with them: the fleet example's release build with this workspace's line tables
//! is 82 MB, 17 MB without; a debug build more. They are left out, as `objcopy --strip-debug`
//! does (the symbol table stays, so a backtrace still names functions). The slim copy is made
//! once per binary, beside the store's compressed agents, and named by the binary's identity.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Whether the 64-bit ELF file at `path` has `.debug_*` sections, read from its section headers
/// alone (a few small reads, not the file): a binary without them, as Cargo's default release
/// build strips them, goes as it is and costs nothing more.
pub(crate) fn has_debug_info(path: &Path) -> io::Result<bool> {
    use object::read::elf::FileHeader;
    let data = object::ReadCache::new(fs::File::open(path)?);
    let Ok(header) = object::elf::FileHeader64::<object::Endianness>::parse(&data) else {
        return Ok(false);
    };
    let Ok(endian) = header.endian() else {
        return Ok(false);
    };
    let Ok(sections) = header.sections(endian, &data) else {
        return Ok(false);
    };
    Ok(sections.iter().any(|section| {
        sections
            .section_name(endian, section)
            .is_ok_and(|name| name.starts_with(b".debug_"))
    }))
}

/// `elf` without its `.debug_*` sections, or `None` if it is not an ELF file the builder reads
/// or has none.
pub(crate) fn without_debug_info(elf: &[u8]) -> Option<Vec<u8>> {
    let mut builder = object::build::elf::Builder::read(elf).ok()?;
    let mut any = false;
    for section in builder.sections.iter_mut() {
        if section.name.as_slice().starts_with(b".debug_") {
            section.delete = true;
            any = true;
        }
    }
    if !any {
        return None;
    }
    let mut slim = Vec::new();
    builder.write(&mut slim).ok()?;
    Some(slim)
}

/// Where the slim copy of `exe` is kept in `dir`: named by its device, inode, size and
/// modification time, so that a rebuilt program gets a new one.
pub(crate) fn kept_path(dir: &Path, exe: &Path) -> io::Result<PathBuf> {
    let meta = fs::metadata(exe)?;
    Ok(dir.join(format!(
        "{}-{}-{}-{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    )))
}

/// The slim copy of `exe` at `kept` (made if missing, the directory's other copies removed),
/// or `None` if `exe` has no debugging information to leave out.
pub(crate) fn keep(exe: &Path, kept: &Path) -> io::Result<Option<PathBuf>> {
    // Only the running program's copy is kept: the others belong to older builds.
    let made = made(kept, only(kept), |file| {
        let Some(slim) = without_debug_info(&fs::read(exe)?) else {
            return Ok(false);
        };
        file.write_all(&slim)?;
        file.set_permissions(fs::Permissions::from_mode(0o755))?;
        Ok(true)
    })?;
    Ok(made.map(|(path, _)| path))
}

/// The file `path` in a directory of made copies (the slim binaries, the compressed agents,
/// the changes between agents), made by `write` if it is not there: into a temporary file
/// beside it, synced (a cut copy must never stand under the name: it would be sent, or
/// imported as the agent, on every later apply), and renamed; then the directory's files that
/// `kept` does not keep are removed ([`keep_only`]). Returns it with the file open, which
/// another program's removal of the name cannot take away; `None` when `write` says there is
/// nothing to make.
pub(crate) fn made(
    path: &Path,
    kept: impl Fn(&OsStr) -> bool,
    write: impl FnOnce(&mut fs::File) -> io::Result<bool>,
) -> io::Result<Option<(PathBuf, fs::File)>> {
    match fs::File::open(path) {
        Ok(file) => return Ok(Some((path.to_path_buf(), file))),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let dir = path.parent().expect("a made copy is in a directory");
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    if !write(tmp.as_file_mut())? {
        return Ok(None);
    }
    tmp.as_file().sync_all()?;
    let file = tmp.persist(path).map_err(|e| e.error)?;
    keep_only(dir, kept)?;
    Ok(Some((path.to_path_buf(), file)))
}

/// Keeps `path`'s name alone.
pub(crate) fn only(path: &Path) -> impl Fn(&OsStr) -> bool + '_ {
    move |name| Some(name) == path.file_name()
}

/// How long a made copy not of the newest agent is kept: another program applied from the same
/// store at the same time may have just made its slim binary, which it imports by its path
/// next. (The copies a deploy sends are held open from their making: [`made`].) Not longer: a
/// program rebuilt and applied every few minutes would keep a binary of tens of megabytes per
/// rebuild.
const YOUNG: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes every file of `dir` but those whose names `kept` keeps, the temporary files
/// (`.tmp…`) another process may be writing there, and those made within [`YOUNG`]: a
/// directory of made copies of which only those of the newest agent are wanted.
pub(crate) fn keep_only(dir: &Path, kept: impl Fn(&OsStr) -> bool) -> io::Result<()> {
    let young = |entry: &fs::DirEntry| {
        entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|made| made.elapsed().is_ok_and(|age| age < YOUNG))
    };
    for old in fs::read_dir(dir)?.flatten() {
        let name = old.file_name();
        if !kept(&name) && !name.as_encoded_bytes().starts_with(b".tmp") && !young(&old) {
            let _ = fs::remove_file(old.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slim_copy_of_a_binary_runs_as_it_did() {
        // This test's own binary, built with the workspace's line tables.
        let exe = std::env::current_exe().unwrap();
        let fat = fs::read(&exe).unwrap();
        let slim = without_debug_info(&fat).expect("the test binary has debugging information");
        assert!(slim.len() < fat.len(), "{} !< {}", slim.len(), fat.len());
        assert!(
            without_debug_info(&slim).is_none(),
            "a `.debug_*` section is left"
        );
        assert!(has_debug_info(&exe).unwrap());
        // It runs: it lists its own tests.
        let dir = tempfile::tempdir().unwrap();
        let kept = kept_path(dir.path(), &exe).unwrap();
        let path = keep(&exe, &kept).unwrap().unwrap();
        let out = std::process::Command::new(&path)
            .args([
                "--list",
                "--exact",
                "machine::slim::tests::the_slim_copy_of_a_binary_runs_as_it_did",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains("the_slim_copy_of_a_binary_runs_as_it_did")
        );
        // Made once: asked again, the same file.
        assert_eq!(keep(&exe, &kept).unwrap().unwrap(), path);
        assert!(!has_debug_info(&path).unwrap());
        // An older copy goes; one another process is writing stays, and so does one another
        // program made a moment ago.
        let (old, writing, other) = (
            dir.path().join("1-2-3-4.5"),
            dir.path().join(".tmpAbC"),
            dir.path().join("6-7-8-9.10"),
        );
        fs::write(&old, b"old").unwrap();
        let two_hours = std::time::Duration::from_secs(2 * 60 * 60);
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - two_hours)
            .unwrap();
        fs::write(&writing, b"being written").unwrap();
        fs::write(&other, b"another program's").unwrap();
        keep_only(dir.path(), only(&kept)).unwrap();
        assert!(!old.exists() && writing.exists() && other.exists() && kept.exists());
        // Not an ELF file: nothing to leave out.
        assert!(without_debug_info(b"#!/bin/sh\n").is_none());
    }
}
