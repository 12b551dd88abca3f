//! What each build produced: realisations (for early cutoff) and the last build of each
//! derivation name (for `plan --explain`).
//!
//! ```text
//! <store>/.realisations/<h>      the outputs of the build whose key has store hash <h>, when
//!                                they are not the entries its key names
//! <store>/.builds/<name>.json    the last build of each derivation name: its request, the
//!                                host's parts, its outputs
//! ```
//!
//! A rebuild whose outputs are bit-identical to those of the last build of the same derivation
//! is realised to that build's entries, and the entries its own key names are left for `gc`:
//! what depends on it sees the same store paths as before, so its key does not change and it is
//! not rebuilt (early cutoff).

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::libc;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::hash::{EntryName, Key, STORE_HASH_LEN, TreeDigest};
use crate::name::{Name, OutputName};
use crate::request::RequestParts;

/// One output as realised: the entry that holds it, that entry's key, its content's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealisedOutput {
    /// The store entry.
    pub entry: EntryName,
    /// The key that names the entry.
    pub key: Key,
    /// The tree digest of its content.
    pub digest: TreeDigest,
}

/// A build's outputs, by output name.
pub type Realised = BTreeMap<OutputName, RealisedOutput>;

/// The last build of a derivation name in a store: what `plan --explain` compares with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildRecord {
    /// The build's key.
    pub key: Key,
    /// Its normalised request.
    pub request: RequestParts,
    /// The parts of the host fingerprint it was built with (`host-tools` builds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<BTreeMap<String, String>>,
    /// Its outputs as realised.
    pub outputs: Realised,
}

/// The realisations' directory and a separator, after the store's directory.
const REALISATIONS: &[u8] = b"/.realisations/";

impl Store {
    pub(crate) fn realisation_path(&self, key: &Key) -> PathBuf {
        // Written out, not joined: a plan reads a realisation for each build that was cut off.
        let mut hash = [0; STORE_HASH_LEN];
        key.store_hash_into(&mut hash);
        let dir = self.dir().as_os_str().as_bytes();
        let mut path = Vec::with_capacity(dir.len() + REALISATIONS.len() + STORE_HASH_LEN);
        path.extend_from_slice(dir);
        path.extend_from_slice(REALISATIONS);
        path.extend_from_slice(&hash);
        PathBuf::from(OsString::from_vec(path))
    }

    fn build_record_path(&self, name: &Name) -> PathBuf {
        self.dir().join(".builds").join(format!("{name}.json"))
    }

    /// The outputs recorded for `key` when they are not the entries it names, if any.
    pub fn realisation(&self, key: &Key) -> Result<Option<Realised>, StoreError> {
        read_json(&self.realisation_path(key))
    }

    /// Removes every last-build record that cannot be read or names an entry that is gone
    /// (after a crash's check removed entries); returns how many.
    pub(crate) fn sweep_build_records(&self) -> Result<usize, StoreError> {
        #[derive(Deserialize)]
        struct Last {
            outputs: Realised,
        }
        let dir = self.dir().join(".builds");
        let Ok(listing) = fs::read_dir(&dir) else {
            return Ok(0);
        };
        let mut removed = 0;
        for item in listing.flatten() {
            let path = item.path();
            let outputs = read_json::<Last>(&path).map(|last| last.map(|l| l.outputs));
            removed += usize::from(self.remove_if_stale(&path, outputs)?);
        }
        Ok(removed)
    }

    /// Removes the record at `path` if it could not be read (`outputs` is an error) or names
    /// an entry that is gone; returns whether it did.
    fn remove_if_stale(
        &self,
        path: &Path,
        outputs: Result<Option<Realised>, StoreError>,
    ) -> Result<bool, StoreError> {
        let stale = match outputs {
            Ok(Some(outputs)) => outputs.values().any(|o| !self.contains(&o.entry)),
            Ok(None) => false,
            Err(_) => true,
        };
        if stale {
            fs::remove_file(path).map_err(StoreError::io("cannot remove", path))?;
        }
        Ok(stale)
    }

    /// The store hashes of every key with a realisation, read in one pass over the directory.
    pub fn realised_hashes(&self) -> Result<HashSet<String>, StoreError> {
        let dir = self.dir().join(".realisations");
        if !self.exists() {
            return Ok(HashSet::new());
        }
        let listing = fs::read_dir(&dir).map_err(StoreError::io("cannot read", &dir))?;
        Ok(listing
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect())
    }

    /// Records that the build of `key` is realised to `outputs`.
    pub(crate) fn record_realisation(
        &self,
        key: &Key,
        outputs: &Realised,
    ) -> Result<(), StoreError> {
        write_json(&self.realisation_path(key), outputs)
    }

    /// Forgets the realisation of `key`.
    pub(crate) fn forget_realisation(&self, key: &Key) -> Result<(), StoreError> {
        super::remove_if_there(&self.realisation_path(key))
    }

    /// Removes every realisation some of whose entries are gone (after `gc` or `store
    /// delete`); returns how many.
    pub(crate) fn sweep_realisations(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        for hash in self.realised_hashes()? {
            let path = self.dir().join(".realisations").join(&hash);
            removed += usize::from(self.remove_if_stale(&path, read_json::<Realised>(&path))?);
        }
        Ok(removed)
    }

    /// `entry`, which `key` names, with its content's digest as the store recorded it.
    pub(crate) fn realised_output(
        &self,
        entry: &EntryName,
        key: Key,
    ) -> Result<RealisedOutput, StoreError> {
        let digest = match self.recorded_digest(entry)? {
            Some(digest) => digest,
            None => self.meta(entry)?.digest,
        };
        Ok(RealisedOutput {
            entry: entry.clone(),
            key,
            digest,
        })
    }

    /// The last build of the derivation `name` in this store.
    pub fn last_build(&self, name: &Name) -> Result<Option<BuildRecord>, StoreError> {
        read_json(&self.build_record_path(name))
    }

    /// The key and outputs of the last build of `name`, read past its request: what the cutoff
    /// compares with, on every build and for every node to build at planning.
    pub fn last_outputs(&self, name: &Name) -> Result<Option<(Key, Realised)>, StoreError> {
        #[derive(Deserialize)]
        struct Last {
            key: Key,
            outputs: Realised,
        }
        Ok(read_json::<Last>(&self.build_record_path(name))?.map(|l| (l.key, l.outputs)))
    }

    /// Records `record` as the last build of its derivation's name.
    pub(crate) fn record_build(&self, record: &BuildRecord) -> Result<(), StoreError> {
        write_json(&self.build_record_path(&record.request.name), record)
    }
}

/// Reads the record at `path`, which is not followed if it is a symlink: a record is a file
/// forjar wrote.
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StoreError> {
    match fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => read_record(file, || path.to_path_buf()).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("cannot read", path)(e)),
    }
}

/// Reads and parses the open record `file`, found at `path` (made only for an error). A record
/// is a few hundred bytes: it is read to its end without asking its size or position first, as
/// `read_to_end` does (two system calls more per record).
pub(super) fn read_record<T: for<'de> Deserialize<'de>>(
    mut file: fs::File,
    path: impl Fn() -> PathBuf,
) -> Result<T, StoreError> {
    let mut text = vec![0; 1024];
    let mut len = 0;
    loop {
        if len == text.len() {
            text.resize(len * 2, 0);
        }
        match file.read(&mut text[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StoreError::io("cannot read", &path())(e)),
        }
    }
    serde_json::from_slice(&text[..len]).map_err(|e| StoreError::Damaged {
        path: path(),
        reason: e.to_string(),
    })
}

/// Writes `value` to `path` in one rename, so that a reader sees the old record or the new.
fn write_json(path: &Path, value: &impl Serialize) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(value).expect("records serialise");
    super::write_atomically(path, &bytes)
}
