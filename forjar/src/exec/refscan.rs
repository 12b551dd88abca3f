//! The reference scan: which store entries an output mentions.
//!
//! An output refers to an entry when its bytes (file contents or symlink targets) contain the
//! entry's 32-character store hash. The scan looks at every run of base32 characters and checks
//! each 32-character window against the hashes it was given, so it costs one pass over the
//! bytes whatever the number of needles.

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::hash::STORE_HASH_LEN;
use crate::store::EntryName;
use crate::walk::{self, At, Kind, Visitor};

fn is_base32(b: u8) -> bool {
    b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)
}

/// Finds needles in a stream of chunks; a hash split between two chunks is still found.
struct Scanner<'n> {
    needles: &'n HashMap<[u8; STORE_HASH_LEN], EntryName>,
    /// The current run of base32 characters, at most the last 31 kept between chunks.
    window: Vec<u8>,
    found: BTreeSet<EntryName>,
}

impl Scanner<'_> {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if !is_base32(b) {
                self.window.clear();
                continue;
            }
            self.window.push(b);
            if self.window.len() >= STORE_HASH_LEN {
                let start = self.window.len() - STORE_HASH_LEN;
                let candidate: [u8; STORE_HASH_LEN] =
                    self.window[start..].try_into().expect("a 32-byte window");
                if let Some(entry) = self.needles.get(&candidate) {
                    self.found.insert(entry.clone());
                }
                if self.window.len() > 4 * STORE_HASH_LEN {
                    self.window.drain(..self.window.len() - STORE_HASH_LEN);
                }
            }
        }
    }

    fn end_of_item(&mut self) {
        self.window.clear();
    }
}

/// The entries among `candidates` whose hash occurs in the tree at `path`. Gives up with
/// `Interrupted` once `stop` is set.
pub(crate) fn scan(
    path: &Path,
    candidates: &[EntryName],
    stop: &AtomicBool,
) -> io::Result<BTreeSet<EntryName>> {
    let needles: HashMap<[u8; STORE_HASH_LEN], EntryName> = candidates
        .iter()
        .map(|e| {
            (
                e.hash()
                    .as_bytes()
                    .try_into()
                    .expect("store hashes are 32 bytes"),
                e.clone(),
            )
        })
        .collect();
    let mut scanner = Scanner {
        needles: &needles,
        window: Vec::new(),
        found: BTreeSet::new(),
    };
    crate::hash::with_read_buffer(|buf| {
        let mut walk = Walk {
            scanner: &mut scanner,
            buf,
            stop,
            depth: 0,
        };
        walk::walk(path, &mut walk, walk::Options::default())
    })?;
    Ok(scanner.found)
}

/// The scan as a walk: every name below the root, every file's bytes, every symlink's target.
struct Walk<'s, 'n, 'b> {
    scanner: &'s mut Scanner<'n>,
    buf: &'b mut [u8],
    stop: &'b AtomicBool,
    depth: usize,
}

impl Visitor for Walk<'_, '_, '_> {
    type Out = ();
    type Error = io::Error;

    fn leaf(&mut self, at: &At<'_>, kind: Kind) -> io::Result<()> {
        if self.depth > 0 {
            // A file name can hold a hash too.
            self.scanner.feed(at.name.to_bytes());
            self.scanner.end_of_item();
        }
        match kind {
            Kind::Symlink => self.scanner.feed(&at.read_link()?),
            Kind::File => {
                if let Ok((fd, _)) = at.open_file()? {
                    let mut file = File::from(fd);
                    loop {
                        if self.stop.load(Ordering::Relaxed) {
                            return Err(io::Error::new(
                                io::ErrorKind::Interrupted,
                                format!("stopped while scanning `{}`", at.path().display()),
                            ));
                        }
                        match file.read(self.buf) {
                            Ok(0) => break,
                            Ok(n) => self.scanner.feed(&self.buf[..n]),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(walk::WalkError::new(at.path(), e).into()),
                        }
                    }
                }
            }
            _ => {}
        }
        self.scanner.end_of_item();
        Ok(())
    }

    fn enter(&mut self, at: &At<'_>, _: BorrowedFd<'_>) -> io::Result<()> {
        if self.depth > 0 {
            self.scanner.feed(at.name.to_bytes());
            self.scanner.end_of_item();
        }
        self.depth += 1;
        Ok(())
    }

    fn leave(&mut self, _: &At<'_>, _: BorrowedFd<'_>, _: Vec<(CString, ())>) -> io::Result<()> {
        self.depth -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::hash::Key;
    use crate::name::Name;

    static NO_STOP: AtomicBool = AtomicBool::new(false);

    fn entry(n: u8, name: &str) -> EntryName {
        let key: Key = format!("{n:02x}").repeat(32).parse().unwrap();
        EntryName::new(&key, &Name::new(name).unwrap(), None)
    }

    #[test]
    fn hashes_are_found_in_contents_symlinks_and_across_chunk_boundaries() {
        let (a, b, c, d) = (entry(1, "a"), entry(2, "b"), entry(3, "c"), entry(4, "d"));
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("bin"),
            format!("#!/store/{a}/bin/sh\nexec x"),
        )
        .unwrap();
        symlink(format!("/store/{b}/lib"), dir.path().join("lib")).unwrap();
        // A hash that straddles the 1 MiB read boundary.
        let mut big = vec![b' '; (1 << 20) - 10];
        big.extend(c.hash().as_bytes());
        fs::write(dir.path().join("big"), big).unwrap();
        let found = scan(dir.path(), &[a.clone(), b.clone(), c.clone(), d], &NO_STOP).unwrap();
        assert_eq!(found, BTreeSet::from([a, b, c]));
    }

    #[test]
    fn a_hash_inside_a_longer_base32_run_is_found_but_a_partial_one_is_not() {
        let a = entry(1, "a");
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x"), format!("zz{}zz", a.hash())).unwrap();
        assert_eq!(
            scan(dir.path(), std::slice::from_ref(&a), &NO_STOP)
                .unwrap()
                .len(),
            1
        );
        fs::write(dir.path().join("x"), &a.hash()[..31]).unwrap();
        assert!(scan(dir.path(), &[a], &NO_STOP).unwrap().is_empty());
    }
}
