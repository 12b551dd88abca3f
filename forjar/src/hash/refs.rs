//! The reference scan: which store entries a tree mentions.
//!
//! A tree refers to an entry when its bytes (file contents, symlink targets, or the names below
//! its root) contain the entry's 32-character store hash. A [`Scanner`] looks at every run of
//! base32 characters and checks each 32-character window against the hashes it was given, so it
//! costs one pass over the bytes whatever the number of needles. The scan rides on the tree
//! hash ([`TreeHasher::scanning`](super::TreeHasher::scanning)): an output is read once for
//! both.

use std::collections::{BTreeSet, HashMap};

use super::{EntryName, STORE_HASH_LEN, is_base32_digit};

/// The hashes a scan looks for, each with the entry it names.
#[derive(Debug)]
pub struct Needles {
    entries: HashMap<[u8; STORE_HASH_LEN], EntryName>,
    /// A bit per slot, set for the slots of the needles' first eight bytes
    /// ([`Needles::slot`]): most windows of a long run of base32 digits that is no hash are
    /// ruled out by one bit, without hashing the window for the map.
    filter: Vec<u64>,
    /// Log2 of the number of slots: 64 per needle, at least 4,096.
    bits: u32,
}

impl Needles {
    /// The needles of `candidates`, the entries a tree may refer to.
    pub fn new<'a>(candidates: impl IntoIterator<Item = &'a EntryName>) -> Needles {
        let entries: HashMap<[u8; STORE_HASH_LEN], EntryName> = candidates
            .into_iter()
            .map(|e| {
                let hash: [u8; STORE_HASH_LEN] = e
                    .hash()
                    .as_bytes()
                    .try_into()
                    .expect("store hashes are 32 bytes");
                (hash, e.clone())
            })
            .collect();
        let bits = (entries.len() * 64)
            .next_power_of_two()
            .trailing_zeros()
            .max(12);
        let mut needles = Needles {
            filter: vec![0; 1 << (bits - 6)],
            bits,
            entries,
        };
        for hash in needles.entries.keys() {
            let slot = needles.slot(hash);
            needles.filter[slot / 64] |= 1 << (slot % 64);
        }
        needles
    }

    /// The filter's slot of a window: its first eight bytes, multiplied by a constant whose
    /// top bits mix all of them (Fibonacci hashing).
    fn slot(&self, window: &[u8; STORE_HASH_LEN]) -> usize {
        let prefix = u64::from_le_bytes(window[..8].try_into().expect("eight bytes"));
        (prefix.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - self.bits)) as usize
    }

    /// The entry whose hash `window` is, if any.
    fn get(&self, window: &[u8; STORE_HASH_LEN]) -> Option<&EntryName> {
        let slot = self.slot(window);
        if self.filter[slot / 64] & (1 << (slot % 64)) == 0 {
            return None;
        }
        self.entries.get(window)
    }
}

/// Finds needles in one item's bytes (a file's contents, a symlink's target, a name), fed in
/// chunks: a hash split between two chunks is still found.
///
/// Within a chunk, each window of 32 bytes is checked from its end (as Nix's scanner does): a
/// byte that is no base32 digit rules out every window that holds it, so the scan moves past
/// it, and text or binary data is mostly skipped 32 bytes at a time. A run of digits is checked
/// once, byte by byte, and each window in it looked up.
pub(super) struct Scanner<'n> {
    needles: &'n Needles,
    /// The base32 digits that end what was fed so far, at most 31: the start of a hash that may
    /// end in the next chunk.
    carry: Vec<u8>,
    found: BTreeSet<EntryName>,
}

impl<'n> Scanner<'n> {
    pub(super) fn new(needles: &'n Needles) -> Self {
        Scanner {
            needles,
            carry: Vec::new(),
            found: BTreeSet::new(),
        }
    }

    /// The next bytes of the item.
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        if self.needles.entries.is_empty() {
            return;
        }
        // Windows that start in the carry and end in these bytes.
        if !self.carry.is_empty() {
            let leading = bytes
                .iter()
                .take(STORE_HASH_LEN - 1)
                .take_while(|&&b| is_base32_digit(b))
                .count();
            let held = self.carry.len();
            // The window starting `held - k` bytes before these needs `32 - k` of them.
            for k in (STORE_HASH_LEN - leading).max(1)..=held {
                let mut window = [0u8; STORE_HASH_LEN];
                window[..k].copy_from_slice(&self.carry[held - k..]);
                window[k..].copy_from_slice(&bytes[..STORE_HASH_LEN - k]);
                self.check(&window);
            }
        }
        self.windows_within(bytes);
        // What ends these bytes may start a hash in the next ones.
        let trailing = bytes
            .iter()
            .rev()
            .take(STORE_HASH_LEN - 1)
            .take_while(|&&b| is_base32_digit(b))
            .count();
        if trailing < bytes.len() {
            self.carry.clear();
        }
        self.carry
            .extend_from_slice(&bytes[bytes.len() - trailing..]);
        let excess = self.carry.len().saturating_sub(STORE_HASH_LEN - 1);
        self.carry.drain(..excess);
    }

    /// Checks every window that lies within `bytes`.
    fn windows_within(&mut self, bytes: &[u8]) {
        let mut start = 0;
        // `bytes[start..digits]` are known to be base32 digits.
        let mut digits = 0;
        while start + STORE_HASH_LEN <= bytes.len() {
            let end = start + STORE_HASH_LEN;
            let from = digits.max(start);
            match bytes[from..end].iter().rposition(|&b| !is_base32_digit(b)) {
                Some(at) => {
                    start = from + at + 1;
                    digits = start;
                }
                None => {
                    digits = end;
                    self.check(&bytes[start..end]);
                    start += 1;
                }
            }
        }
    }

    fn check(&mut self, window: &[u8]) {
        let window: &[u8; STORE_HASH_LEN] = window.try_into().expect("a 32-byte window");
        if let Some(entry) = self.needles.get(window) {
            self.found.insert(entry.clone());
        }
    }

    /// A stretch the item has no bytes in (a hole of a sparse file, which reads as zeros):
    /// no hash runs across it.
    pub(super) fn gap(&mut self) {
        self.carry.clear();
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
    use crate::hash::{TreeHasher, tree_digest};

    /// The digest and the references of the tree at `path`, in one pass.
    fn scan(path: &std::path::Path, candidates: &[EntryName]) -> BTreeSet<EntryName> {
        let needles = Needles::new(candidates);
        let hasher = TreeHasher::new().scanning(&needles);
        assert_eq!(hasher.digest(path).unwrap(), tree_digest(path).unwrap());
        hasher.references()
    }

    /// Every window of 32 base32 digits of `bytes` that is a needle, checked one by one.
    fn naive(bytes: &[u8], needles: &[EntryName]) -> BTreeSet<EntryName> {
        needles
            .iter()
            .filter(|e| {
                bytes
                    .windows(STORE_HASH_LEN)
                    .any(|w| w == e.hash().as_bytes() && w.iter().all(|&b| is_base32_digit(b)))
            })
            .cloned()
            .collect()
    }

    #[test]
    fn the_scanner_finds_what_checking_every_window_finds_however_the_bytes_are_fed() {
        let needles: Vec<EntryName> = (1..=4).map(|n| EntryName::numbered(n, "x")).collect();
        let table = Needles::new(&needles);
        // xorshift: the same bytes on every run.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..400 {
            // Runs of digits, needles (whole, or cut short), and other bytes.
            let mut bytes = Vec::new();
            while bytes.len() < 300 {
                match next() % 5 {
                    0 => bytes.extend(needles[next() as usize % 4].hash().as_bytes()),
                    1 => {
                        let hash = needles[next() as usize % 4].hash().as_bytes();
                        bytes.extend(&hash[..next() as usize % STORE_HASH_LEN]);
                    }
                    2 => bytes
                        .extend((0..next() % 40).map(|_| b"abcxyz234567"[next() as usize % 12])),
                    _ => {
                        bytes.extend((0..next() % 6).map(|_| b" /-0189AZ\n"[next() as usize % 10]))
                    }
                }
            }
            let mut scanner = Scanner::new(&table);
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = (next() as usize % 50).min(rest.len());
                scanner.feed(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(scanner.found(), naive(&bytes, &needles), "round {round}");
        }
    }

    #[test]
    fn hashes_are_found_in_contents_symlinks_and_names_and_across_read_boundaries() {
        let [a, b, c, d, e, f] = [1, 2, 3, 4, 5, 6].map(|n| EntryName::numbered(n, "x"));
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
        let a = EntryName::numbered(1, "a");
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
        let a = EntryName::numbered(1, "a");
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
