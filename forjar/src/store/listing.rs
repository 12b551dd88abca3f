//! What a plan reads of the store in one pass over a directory instead of one look per
//! derivation: the keys with a realisation and the names of the entries.
//!
//! A look for an entry or a realisation is a system call; one read of a directory answers for
//! every name it holds, a few hundred names per call. Each read is made only when the directory
//! is not much larger than the plan, so that a small plan against a large store, or against
//! many realisations of earlier keys, still looks at its own entries only: the store's
//! directory is read when its link count (two more than its subdirectories, on the file systems
//! that count them) says so; the realisations are read until more names have come than the
//! plan would look up, and given up there.

use std::ffi::CStr;
use std::hash::BuildHasher;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, OwnedFd};

use nix::libc;

use super::{EntryName, Realised, Store, StoreError};
use crate::hash::{Key, STORE_HASH_LEN};
use crate::walk;

/// How many entries, per look the plan would make, the store may hold for one read of its
/// directory to be made instead: a name read costs a small part of a look.
const ENTRIES_PER_LOOK: u64 = 4;

/// Below this many looks, the store's directory is not read.
const MIN_LOOKS: usize = 64;

/// The store as a plan read it.
#[derive(Debug, Default)]
pub struct Listing {
    /// The store hashes of the keys with a realisation, when they were read; `None` looks for
    /// each key's.
    realised: Option<Names>,
    /// The realisations' directory, where they are read by name.
    records: Option<OwnedFd>,
    /// The names of the store's entries, when they were read.
    entries: Option<Names>,
}

/// The names of a store's entries: their text in one buffer, and a table of where each one is,
/// by its hash (a string of its own per name was an allocation per entry, and a pointer to
/// follow per look).
#[derive(Debug, Default)]
struct Names {
    text: String,
    /// Where each name starts and ends in `text`.
    table: hashbrown::HashTable<(usize, usize)>,
    state: foldhash::fast::RandomState,
}

impl Names {
    fn with_capacity(names: usize) -> Self {
        Names {
            // Most names are a hash, `-` and a short name.
            text: String::with_capacity(names * 48),
            table: hashbrown::HashTable::with_capacity(names),
            state: foldhash::fast::RandomState::default(),
        }
    }

    /// Adds `name`, which is not among those added (a directory's names are distinct).
    fn insert(&mut self, name: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        let Names { text, table, state } = self;
        table.insert_unique(
            state.hash_one(name),
            (start, text.len()),
            |&(start, end)| state.hash_one(&text[start..end]),
        );
    }

    fn contains(&self, name: &str) -> bool {
        self.table
            .find(self.state.hash_one(name), |&(start, end)| {
                &self.text[start..end] == name
            })
            .is_some()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }
}

impl Listing {
    /// Whether the build keyed `key` may have a realisation: it has none when the realisations
    /// were read and its store hash is not among them.
    pub fn may_have_realisation(&self, key: &Key) -> bool {
        match &self.realised {
            Some(names) if names.table.is_empty() => false,
            Some(names) => {
                let mut hash = [0; STORE_HASH_LEN];
                key.store_hash_into(&mut hash);
                std::str::from_utf8(&hash).is_ok_and(|hash| names.contains(hash))
            }
            None => true,
        }
    }

    /// The realisation recorded for `key`, read by name in the directory the listing opened
    /// (one name to resolve, not the store's whole path), else as [`Store::realisation`] reads
    /// it.
    pub fn realisation(&self, store: &Store, key: &Key) -> Result<Option<Realised>, StoreError> {
        let Some(records) = &self.records else {
            return store.realisation(key);
        };
        let mut hash = [0; STORE_HASH_LEN];
        key.store_hash_into(&mut hash);
        let mut name = [0; STORE_HASH_LEN + 1];
        name[..STORE_HASH_LEN].copy_from_slice(&hash);
        let name = CStr::from_bytes_with_nul(&name).expect("a store hash holds no NUL");
        // Not followed: a record is a file forjar wrote, never a symlink.
        match walk::openat(records.as_fd(), name, libc::O_RDONLY | libc::O_NOFOLLOW) {
            Ok(file) => {
                super::realisation::read_record(file.into(), || store.realisation_path(key))
                    .map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("cannot read", &store.realisation_path(key))(
                e,
            )),
        }
    }

    /// Whether `entry` is in `store`: among the names read, else as [`Store::contains`] finds.
    pub fn contains(&self, store: &Store, entry: &EntryName) -> bool {
        match &self.entries {
            Some(entries) => entries.contains(entry.as_str()),
            None => store.contains(entry),
        }
    }
}

impl Store {
    /// Reads what a plan of `looks` lookups needs of the store (see [`Listing`]).
    pub fn read_listing(&self, looks: usize) -> Result<Listing, StoreError> {
        if !self.exists() {
            return Ok(Listing {
                realised: Some(Names::default()),
                records: None,
                entries: None,
            });
        }
        let (realised, records) = self.realised_names(looks)?;
        Ok(Listing {
            realised,
            records,
            entries: match looks >= MIN_LOOKS {
                true => self.entry_names(looks)?,
                false => None,
            },
        })
    }

    /// The store hashes of the keys with a realisation (the names in `.realisations` but the
    /// dot ones, which are records being written), or `None` when there are more than
    /// [`ENTRIES_PER_LOOK`] per look of a plan of `looks` (at least [`MIN_LOOKS`]): the read
    /// stops there, and each key is looked for.
    fn realised_names(&self, looks: usize) -> Result<(Option<Names>, Option<OwnedFd>), StoreError> {
        let dir = self.dir().join(".realisations");
        let cannot_read = || StoreError::io("cannot read", &dir);
        let records = match walk::open_dir_path(&dir) {
            Ok(records) => records,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Some(Names::default()), None));
            }
            Err(e) => return Err(cannot_read()(e)),
        };
        let most = ENTRIES_PER_LOOK as usize * looks.max(MIN_LOOKS);
        let mut names = Names::default();
        let whole = walk::each_entry(records.as_fd(), |name, _| {
            if let Ok(name) = name.to_str()
                && !name.starts_with('.')
            {
                if names.table.len() == most {
                    return ControlFlow::Break(());
                }
                names.insert(name);
            }
            ControlFlow::Continue(())
        })
        .map_err(cannot_read())?;
        Ok((whole.then_some(names), Some(records)))
    }

    /// The names of the store's entries (its directories but the dot ones), or `None` when the
    /// store may hold many more than `looks`, or its file system does not say how many.
    fn entry_names(&self, looks: usize) -> Result<Option<Names>, StoreError> {
        let dir = self.dir();
        let cannot_read = || StoreError::io("cannot read", dir);
        // A descriptor of its own: a listing moves the descriptor's offset.
        let root = walk::open_dir_path(dir).map_err(cannot_read())?;
        let subdirectories = walk::fstat(root.as_fd())
            .map_err(cannot_read())?
            .st_nlink
            .saturating_sub(2);
        if subdirectories == 0 || subdirectories > ENTRIES_PER_LOOK * looks as u64 {
            return Ok(None);
        }
        // Sized once. The names are the store's own (no build writes its directory), so a
        // hasher faster than the standard library's, not made to stand chosen keys, will do.
        let mut names = Names::with_capacity(subdirectories as usize);
        // Each name's kind as the directory gives it, else by `fstatat` without following: a
        // symlink is no entry.
        walk::each_entry(root.as_fd(), |name, kind| {
            if matches!(kind, walk::Kind::Dir)
                && !name.to_bytes().starts_with(b".")
                && let Ok(name) = name.to_str()
            {
                names.insert(name);
            }
            ControlFlow::Continue(())
        })
        .map_err(cannot_read())?;
        Ok(Some(names))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::name::{Name, OutputName};

    fn entry(i: usize) -> EntryName {
        let key: Key = format!("{i:064x}").parse().unwrap();
        EntryName::new(&key, &Name::new(format!("d{i}")).unwrap(), None)
    }

    #[test]
    fn names_are_found_whole_past_the_room_first_made() {
        let mut names = Names::with_capacity(2);
        let made: Vec<String> = (0..500).map(|i| format!("n{i}")).collect();
        for name in &made {
            names.insert(name);
        }
        assert_eq!(names.len(), 500);
        for name in &made {
            assert!(names.contains(name), "{name}");
        }
        // A name's beginning, a name with more after it, and names never added.
        for not in ["n", "n5000", "n1 ", "", "m1"] {
            assert!(!names.contains(not), "{not:?}");
        }
    }

    #[test]
    fn realisations_are_read_whole_only_up_to_four_per_look() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        // Distinct in the bytes the store hash is made of.
        let key = |i: usize| -> Key { format!("{i:08x}{:056x}", 0).parse().unwrap() };
        // None yet: no key has one.
        let listing = store.read_listing(100).unwrap();
        assert!(!listing.may_have_realisation(&key(0)));
        let records = store.dir().join(".realisations");
        for i in 0..300 {
            fs::write(records.join(key(i).store_hash()), b"{}").unwrap();
        }
        // A record being written is not one.
        fs::write(records.join(format!(".{}", key(300).store_hash())), b"{}").unwrap();
        // A plan of 100 lookups may read 400 names: all of them, and only those have one.
        let listing = store.read_listing(100).unwrap();
        assert_eq!(listing.realised.as_ref().map(Names::len), Some(300));
        for i in 0..300 {
            assert!(listing.may_have_realisation(&key(i)), "{i}");
        }
        for i in 300..310 {
            assert!(!listing.may_have_realisation(&key(i)), "{i}");
        }
        // A plan of 10 may read 256 (four for each of at least 64): more are there, so none is
        // kept, and each key is looked for.
        let listing = store.read_listing(10).unwrap();
        assert!(listing.realised.is_none());
        for i in [0, 299, 300, 1000] {
            assert!(listing.may_have_realisation(&key(i)), "{i}");
        }
    }

    #[test]
    fn a_realisation_is_read_by_name_in_the_listings_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let key = |i: u8| -> Key { format!("{i:02x}{:062x}", 0).parse().unwrap() };
        let out = OutputName::out();
        let recorded = Realised::from([(
            out.clone(),
            super::super::RealisedOutput {
                entry: entry(1),
                key: key(9),
                digest: format!("blake3:{}", "ab".repeat(32)).parse().unwrap(),
            },
        )]);
        store.record_realisation(&key(1), &recorded).unwrap();
        let records = store.dir().join(".realisations");
        // A record as long as many outputs make, past the first read's room.
        let long: Realised = (0..40)
            .map(|i| {
                let name = OutputName::new(format!("o{i}")).unwrap();
                (name, recorded[&out].clone())
            })
            .collect();
        store.record_realisation(&key(2), &long).unwrap();
        fs::write(records.join(key(3).store_hash()), b"{ not json").unwrap();
        std::os::unix::fs::symlink(
            records.join(key(1).store_hash()),
            records.join(key(4).store_hash()),
        )
        .unwrap();
        // Through the listing's directory, and by path (a listing without it): the same
        // answers.
        let listing = store.read_listing(100).unwrap();
        let by_path = Listing::default();
        for listing in [&listing, &by_path] {
            assert_eq!(
                listing.realisation(&store, &key(1)).unwrap(),
                Some(recorded.clone())
            );
            assert_eq!(
                listing.realisation(&store, &key(2)).unwrap(),
                Some(long.clone())
            );
            let damaged = listing
                .realisation(&store, &key(3))
                .unwrap_err()
                .to_string();
            assert!(damaged.contains(&key(3).store_hash()), "{damaged}");
            // A symlink is not followed: no record is read through it.
            assert!(listing.realisation(&store, &key(4)).is_err());
            assert_eq!(listing.realisation(&store, &key(5)).unwrap(), None);
        }
    }

    #[test]
    fn a_listing_finds_the_entries_the_store_holds_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        for i in 0..300 {
            fs::create_dir(store.entry_path(&entry(i))).unwrap();
        }
        // Not entries: a symlink to one, a file, and a name never made.
        std::os::unix::fs::symlink(store.entry_path(&entry(0)), store.entry_path(&entry(300)))
            .unwrap();
        fs::write(store.entry_path(&entry(301)), b"").unwrap();
        let not_entries = [entry(300), entry(301), entry(302)];
        // The file systems that count a directory's subdirectories in its link count.
        let counted = fs::metadata(store.dir()).unwrap().nlink() > 2;

        // 300 entries and the store's own 10 directories: read for a plan of 100 lookups; not
        // for one of 64 (the store is more than four times larger) or of fewer than 64.
        for (looks, read) in [(100, counted), (64, false), (10, false)] {
            let listing = store.read_listing(looks).unwrap();
            assert_eq!(listing.entries.is_some(), read, "{looks} lookups");
            if let Some(entries) = &listing.entries {
                assert_eq!(entries.len(), 300);
            }
            for i in 0..300 {
                assert!(listing.contains(&store, &entry(i)), "{looks}: entry {i}");
            }
            for not in &not_entries {
                assert!(!listing.contains(&store, not), "{looks}: {not}");
                assert!(!store.contains(not), "{not}");
            }
        }
    }
}
