//! The reference scan: which store entries a tree mentions.
//!
//! A tree refers to an entry when its bytes (file contents, symlink targets, or the names below
//! its root) contain the entry's 32-character store hash. A [`Scanner`] looks at every run of
//! base32 characters and checks each 32-character window against the hashes it was given, so it
//! costs one pass over the bytes whatever the number of needles. The scan rides on the tree
//! hash ([`TreeHasher::scanning`](super::TreeHasher::scanning)): an output is read once for
//! both.

use std::collections::{BTreeSet, HashMap};

use super::{EntryName, STORE_HASH_LEN};

/// The hashes a scan looks for, each with the entry it names.
#[derive(Debug, Default)]
pub struct Needles(HashMap<[u8; STORE_HASH_LEN], EntryName>);

impl Needles {
    /// The needles of `candidates`, the entries a tree may refer to.
    pub fn new<'a>(candidates: impl IntoIterator<Item = &'a EntryName>) -> Needles {
        Needles(
            candidates
                .into_iter()
                .map(|e| {
                    let hash: [u8; STORE_HASH_LEN] = e
                        .hash()
                        .as_bytes()
                        .try_into()
                        .expect("store hashes are 32 bytes");
                    (hash, e.clone())
                })
                .collect(),
        )
    }
}

fn is_base32(b: u8) -> bool {
    b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)
}

/// Finds needles in one item's bytes (a file's contents, a symlink's target, a name), fed in
/// chunks: a hash split between two chunks is still found.
pub(super) struct Scanner<'n> {
    needles: &'n Needles,
    /// The current run of base32 characters, at most the last 31 kept between chunks.
    window: Vec<u8>,
    found: BTreeSet<EntryName>,
}

impl<'n> Scanner<'n> {
    pub(super) fn new(needles: &'n Needles) -> Self {
        Scanner {
            needles,
            window: Vec::new(),
            found: BTreeSet::new(),
        }
    }

    /// The next bytes of the item.
    pub(super) fn feed(&mut self, bytes: &[u8]) {
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
                if let Some(entry) = self.needles.0.get(&candidate) {
                    self.found.insert(entry.clone());
                }
                if self.window.len() > 4 * STORE_HASH_LEN {
                    self.window.drain(..self.window.len() - STORE_HASH_LEN);
                }
            }
        }
    }

    /// A stretch the item has no bytes in (a hole of a sparse file, which reads as zeros):
    /// no hash runs across it.
    pub(super) fn gap(&mut self) {
        self.window.clear();
    }

    /// What the item refers to.
    pub(super) fn found(self) -> BTreeSet<EntryName> {
        self.found
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::hash::{Key, TreeHasher, tree_digest};
    use crate::name::Name;

    fn entry(n: u8, name: &str) -> EntryName {
        let key: Key = format!("{n:02x}").repeat(32).parse().unwrap();
        EntryName::new(&key, &Name::new(name).unwrap(), None)
    }

    /// The digest and the references of the tree at `path`, in one pass.
    fn scan(path: &std::path::Path, candidates: &[EntryName]) -> BTreeSet<EntryName> {
        let needles = Needles::new(candidates);
        let hasher = TreeHasher::new().scanning(&needles);
        assert_eq!(hasher.digest(path).unwrap(), tree_digest(path).unwrap());
        hasher.references()
    }

    #[test]
    fn hashes_are_found_in_contents_symlinks_and_names_and_across_read_boundaries() {
        let [a, b, c, d, e, f] = [1, 2, 3, 4, 5, 6].map(|n| entry(n, "x"));
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        fs::create_dir_all(root.join(format!("share/{e}"))).unwrap();
        fs::write(root.join("bin"), format!("#!/store/{a}/bin/sh\nexec x")).unwrap();
        symlink(format!("/store/{b}/lib"), root.join("lib")).unwrap();
        // A hash that straddles the 1 MiB read boundary, in a file the hasher reads in chunks.
        let mut big = vec![b' '; (1 << 20) - 10];
        big.extend(c.hash().as_bytes());
        big.extend(vec![b' '; 1 << 20]);
        fs::write(root.join("big"), big).unwrap();
        // Deeper than the hasher's parallel depth: a name and a file found by its iterative walk.
        let deep: std::path::PathBuf = (0..20).map(|i| format!("d{i}")).collect();
        fs::create_dir_all(root.join(&deep).join(f.as_str())).unwrap();
        fs::write(root.join(&deep).join("note"), format!("{d}\n")).unwrap();
        let all = [
            a.clone(),
            b.clone(),
            c.clone(),
            d.clone(),
            e.clone(),
            f.clone(),
        ];
        assert_eq!(scan(&root, &all), BTreeSet::from(all.clone()));
        // The root's own name is not the tree's.
        let named = dir.path().join(a.as_str());
        fs::write(&named, "nothing\n").unwrap();
        assert!(scan(&named, &all).is_empty());
    }

    #[test]
    fn a_hash_inside_a_longer_base32_run_is_found_but_a_partial_or_split_one_is_not() {
        let a = entry(1, "a");
        let dir = tempfile::tempdir().unwrap();
        let x = dir.path().join("x");
        fs::write(&x, format!("zz{}zz", a.hash())).unwrap();
        assert_eq!(scan(&x, std::slice::from_ref(&a)).len(), 1);
        fs::write(&x, &a.hash()[..31]).unwrap();
        assert!(scan(&x, std::slice::from_ref(&a)).is_empty());
        // Half in one file's contents, half in the next: two items, no reference.
        fs::remove_file(&x).unwrap();
        fs::write(dir.path().join("a"), &a.hash()[..16]).unwrap();
        fs::write(dir.path().join("b"), &a.hash()[16..]).unwrap();
        assert!(scan(dir.path(), &[a]).is_empty());
    }

    #[test]
    fn a_hash_across_a_hole_of_a_sparse_file_is_not_one() {
        use std::os::unix::fs::FileExt;
        let a = entry(1, "a");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let file = fs::File::create(&path).unwrap();
        // The first half ends a block, the second starts one after a hole.
        file.write_all_at(&a.hash().as_bytes()[..16], (8 << 20) - 16)
            .unwrap();
        file.write_all_at(&a.hash().as_bytes()[16..], 16 << 20)
            .unwrap();
        assert!(scan(&path, std::slice::from_ref(&a)).is_empty());
        file.write_all_at(a.hash().as_bytes(), 24 << 20).unwrap();
        assert_eq!(scan(&path, std::slice::from_ref(&a)), BTreeSet::from([a]));
    }
}
