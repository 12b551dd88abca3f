//! What a dynamically linked host program needs to run: its ELF interpreter and the shared
//! libraries it (transitively) names. Used to give a hermetic build a working `/bin/sh` made of
//! the host's shell, with nothing else of the host visible.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::hash::FileId;

/// The directories the dynamic loader searches when there is no `ld.so.cache` (as in a hermetic
/// sandbox), in its order.
fn search_dirs() -> Vec<PathBuf> {
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    ["/lib", "/usr/lib"]
        .iter()
        .map(|d| Path::new(d).join(&triplet))
        .chain(
            ["/lib64", "/usr/lib64", "/lib", "/usr/lib"]
                .iter()
                .map(PathBuf::from),
        )
        .collect()
}

/// The parts of an ELF file the loader needs.
struct Elf {
    interpreter: Option<PathBuf>,
    needed: Vec<String>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn c_string(b: &[u8], at: usize) -> Option<String> {
    let rest = b.get(at..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// Parses a 64-bit little-endian ELF file's program headers and dynamic section.
fn parse(bytes: &[u8]) -> Option<Elf> {
    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NEEDED: u64 = 1;
    const DT_STRTAB: u64 = 5;
    if bytes.get(..4)? != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    let phoff = u64_at(bytes, 0x20)? as usize;
    let phentsize = u16_at(bytes, 0x36)? as usize;
    let phnum = u16_at(bytes, 0x38)? as usize;
    let mut interpreter = None;
    let mut dynamic = None;
    let mut loads = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let (kind, offset, vaddr, size) = (
            u32_at(bytes, ph)?,
            u64_at(bytes, ph + 8)?,
            u64_at(bytes, ph + 16)?,
            u64_at(bytes, ph + 32)?,
        );
        match kind {
            PT_INTERP => interpreter = c_string(bytes, offset as usize).map(PathBuf::from),
            PT_DYNAMIC => dynamic = Some((offset as usize, size as usize)),
            PT_LOAD => loads.push((vaddr, offset, size)),
            _ => {}
        }
    }
    let mut needed_offsets = Vec::new();
    let mut strtab_vaddr = None;
    if let Some((offset, size)) = dynamic {
        for entry in (offset..offset + size).step_by(16) {
            match u64_at(bytes, entry)? {
                0 => break,
                DT_NEEDED => needed_offsets.push(u64_at(bytes, entry + 8)?),
                DT_STRTAB => strtab_vaddr = Some(u64_at(bytes, entry + 8)?),
                _ => {}
            }
        }
    }
    let mut needed = Vec::new();
    if let Some(vaddr) = strtab_vaddr {
        let (load_vaddr, load_offset, _) = loads
            .iter()
            .copied()
            .find(|&(v, _, s)| vaddr >= v && vaddr < v + s.max(1))?;
        let strtab = (vaddr - load_vaddr + load_offset) as usize;
        for off in needed_offsets {
            needed.push(c_string(bytes, strtab + off as usize)?);
        }
    }
    Some(Elf {
        interpreter,
        needed,
    })
}

/// A computed closure, each of its files with the stamp the real file had when it was read.
struct Cached {
    files: Vec<(PathBuf, PathBuf, FileId)>,
}

/// Closures already computed by this process. Every build that asks for `/bin/sh` needs the
/// same few files; reading and parsing them (libc is megabytes) once per build showed in
/// profiles of large applies. An entry is used only while each real file still has the stamp
/// it had (device, inode, size, times) and each path still leads to that same file: a `stat`
/// of each, where resolving each path again cost a `readlink` per component (some twenty per
/// build for `/bin/sh`).
static CACHE: Mutex<BTreeMap<PathBuf, Arc<Cached>>> = Mutex::new(BTreeMap::new());

/// The host files `program` needs to run: the program itself (symlinks resolved), its ELF
/// interpreter and every shared library it needs, transitively; each as the path the loader
/// will look for and the real file behind it.
pub(crate) fn closure(program: &Path) -> Result<Vec<(PathBuf, PathBuf)>, String> {
    let cached = CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(program)
        .cloned();
    if let Some(cached) = cached {
        // A path that is its real file is stamped once.
        let fresh = cached.files.iter().all(|(path, real, stamp)| {
            stamp_of(real) == Some(*stamp) && (path == real || stamp_of(path) == Some(*stamp))
        });
        if fresh {
            return Ok(cached
                .files
                .iter()
                .map(|(path, real, _)| (path.clone(), real.clone()))
                .collect());
        }
    }
    let files = compute(program)?;
    // A file that cannot be stamped is not cached: the next build reads it again.
    let stamped: Option<Vec<_>> = files
        .iter()
        .map(|(path, real)| Some((path.clone(), real.clone(), stamp_of(real)?)))
        .collect();
    let Some(stamped) = stamped else {
        return Ok(files);
    };
    let cached = Arc::new(Cached { files: stamped });
    CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(program.to_path_buf(), cached);
    Ok(files)
}

/// What marks a host file as unchanged: its inode, size and times.
fn stamp_of(path: &Path) -> Option<FileId> {
    nix::sys::stat::stat(path).ok().map(|st| FileId::of(&st))
}

/// [`closure`], read from the files.
fn compute(program: &Path) -> Result<Vec<(PathBuf, PathBuf)>, String> {
    let real = fs::canonicalize(program)
        .map_err(|e| format!("cannot resolve `{}`: {e}", program.display()))?;
    let mut files = vec![(program.to_path_buf(), real.clone())];
    let mut seen = BTreeSet::new();
    let mut queue = vec![real];
    let dirs = search_dirs();
    while let Some(path) = queue.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let bytes =
            fs::read(&path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let Some(elf) = parse(&bytes) else {
            return Err(format!(
                "`{}` is not a 64-bit little-endian ELF file",
                path.display()
            ));
        };
        if let Some(interp) = elf.interpreter {
            let real = fs::canonicalize(&interp)
                .map_err(|e| format!("cannot resolve `{}`: {e}", interp.display()))?;
            files.push((interp, real.clone()));
            queue.push(real);
        }
        for lib in elf.needed {
            let found = dirs.iter().map(|d| d.join(&lib)).find(|p| p.exists());
            let Some(found) = found else {
                return Err(format!(
                    "`{}` needs `{lib}`, which is in none of the loader's directories",
                    path.display()
                ));
            };
            let real = fs::canonicalize(&found)
                .map_err(|e| format!("cannot resolve `{}`: {e}", found.display()))?;
            files.push((found, real.clone()));
            queue.push(real);
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_shell_needs_an_interpreter_and_a_libc() {
        let files = closure(Path::new("/bin/sh")).unwrap();
        assert!(files.iter().any(|(p, _)| p == Path::new("/bin/sh")));
        let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        if names.iter().any(|n| n.contains("ld-linux")) {
            assert!(names.iter().any(|n| n.contains("libc.so")), "{names:?}");
        }
        for (_, real) in &files {
            assert!(real.is_file(), "{}", real.display());
        }
    }

    #[test]
    fn a_remembered_closure_is_read_again_when_its_program_changes() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("sh");
        fs::copy(fs::canonicalize("/bin/sh").unwrap(), &program).unwrap();
        let first = closure(&program).unwrap();
        assert_eq!(closure(&program).unwrap(), first);
        // Replaced by a file that is not ELF (a new inode, as an upgrade's rename makes).
        fs::remove_file(&program).unwrap();
        fs::write(&program, "#!/bin/sh\n").unwrap();
        assert!(closure(&program).unwrap_err().contains("is not a 64-bit"));
    }

    #[test]
    fn a_remembered_closure_follows_a_link_to_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two, link) = (
            dir.path().join("one"),
            dir.path().join("two"),
            dir.path().join("sh"),
        );
        for copy in [&one, &two] {
            fs::copy(fs::canonicalize("/bin/sh").unwrap(), copy).unwrap();
        }
        std::os::unix::fs::symlink(&one, &link).unwrap();
        let real = |files: Vec<(PathBuf, PathBuf)>| {
            files
                .into_iter()
                .find(|(path, _)| *path == link)
                .map(|(_, real)| real)
        };
        assert_eq!(real(closure(&link).unwrap()), Some(one.clone()));
        // The same content behind the same name, another file: the closure names that one.
        fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&two, &link).unwrap();
        assert_eq!(real(closure(&link).unwrap()), Some(two.clone()));
    }

    #[test]
    fn a_file_that_is_not_elf_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(
            closure(&script)
                .unwrap_err()
                .contains("is not a 64-bit little-endian ELF file")
        );
    }
}
