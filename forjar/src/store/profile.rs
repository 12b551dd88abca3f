//! Profiles and their generations.
//!
//! Each program applies into a *profile* (by default named after the program's binary target).
//! Every apply that changes what the profile's roots point at records a numbered *generation*:
//! the set of roots it produced, in `.profiles/<profile>/<n>.yaml`. `current` names the
//! generation the roots point at now, and `roots/<root>` links to each of its entries. Every
//! generation is a GC root, so rolling back never needs a rebuild; profiles share nothing but
//! the entries themselves.
//!
//! Generation files and `current` are written beside their final name and renamed over, under
//! the profile's lock, so a crash leaves either the old or the new state.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{EntryName, Store, StoreError};
use crate::name::Name;

/// One recorded generation of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// Its number, from 1.
    pub number: u64,
    /// When it was recorded, in seconds since the Unix epoch.
    pub created: u64,
    /// Each root's name and the entry it pointed at.
    pub roots: BTreeMap<String, EntryName>,
}

impl Generation {
    /// When it was recorded.
    pub fn created(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.created)
    }
}

/// Which generations `delete-generations` deletes of `listed` (each number with the time it was
/// recorded, oldest first), `current` being the one in use: the `numbers` named, as given
/// (naming the current one is refused where they are deleted), and, the current one left out,
/// those recorded longer than `older_than` before `now` and all but the newest `keep`. Shared by
/// a program's profile and a host's generations, so that the two select alike.
pub fn generations_to_delete(
    listed: &[(u64, SystemTime)],
    current: Option<u64>,
    numbers: &[u64],
    older_than: Option<Duration>,
    keep: Option<usize>,
    now: SystemTime,
) -> BTreeSet<u64> {
    let mut doomed: BTreeSet<u64> = numbers.iter().copied().collect();
    let not_current = |number: u64| current != Some(number);
    if let Some(age) = older_than {
        let cutoff = now.checked_sub(age).unwrap_or(UNIX_EPOCH);
        doomed.extend(
            listed
                .iter()
                .filter(|&&(number, created)| created < cutoff && not_current(number))
                .map(|&(number, _)| number),
        );
    }
    if let Some(keep) = keep {
        let older = listed.len().saturating_sub(keep);
        doomed.extend(
            listed[..older]
                .iter()
                .map(|&(number, _)| number)
                .filter(|&n| not_current(n)),
        );
    }
    doomed
}

/// How the roots of two generations differ.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RootChanges {
    /// Roots only in the later one.
    pub added: Vec<String>,
    /// Roots only in the earlier one.
    pub removed: Vec<String>,
    /// Roots in both, pointing at different entries.
    pub changed: Vec<String>,
}

impl RootChanges {
    /// Compares the roots of `from` and `to`.
    pub fn between(
        from: &BTreeMap<String, EntryName>,
        to: &BTreeMap<String, EntryName>,
    ) -> RootChanges {
        let mut changes = RootChanges::default();
        for (name, entry) in to {
            match from.get(name) {
                None => changes.added.push(name.clone()),
                Some(old) if old != entry => changes.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        changes.removed = from
            .keys()
            .filter(|n| !to.contains_key(*n))
            .cloned()
            .collect();
        changes
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// A profile of a store: its generations and which one is current.
#[derive(Debug)]
pub struct Profile<'s> {
    store: &'s Store,
    name: String,
    dir: PathBuf,
}

impl Store {
    pub(super) fn profiles_dir(&self) -> PathBuf {
        self.dir().join(".profiles")
    }

    /// The profile `name` (created on first use).
    pub fn profile(&self, name: &str) -> Result<Profile<'_>, StoreError> {
        if Name::new(name).is_err() {
            return Err(StoreError::BadProfileName(name.to_string()));
        }
        let dir = self.profiles_dir().join(name);
        fs::create_dir_all(&dir).map_err(StoreError::io("cannot create", &dir))?;
        Ok(Profile {
            store: self,
            name: name.to_string(),
            dir,
        })
    }

    /// The names of the profiles that have a directory.
    pub(super) fn profile_names(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.profiles_dir();
        let listing = match fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("cannot read", &dir)(e)),
        };
        let mut names = Vec::new();
        for item in listing {
            let item = item.map_err(StoreError::io("cannot read", &dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && item.path().is_dir() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Every entry some generation of some profile points at.
    pub(super) fn generation_roots(&self) -> Result<BTreeSet<EntryName>, StoreError> {
        let mut entries = BTreeSet::new();
        for name in self.profile_names()? {
            let profile = Profile {
                store: self,
                dir: self.profiles_dir().join(&name),
                name,
            };
            for generation in profile.generations()? {
                entries.extend(generation.roots.into_values());
            }
        }
        Ok(entries)
    }
}

impl Profile<'_> {
    /// The profile's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes the profile's lock: one change to a profile at a time, across processes.
    fn lock(&self) -> Result<File, StoreError> {
        let path = self.dir.join(".lock");
        let file = super::open_lock_file(&path)?;
        file.lock().map_err(StoreError::io("cannot lock", &path))?;
        Ok(file)
    }

    /// Every generation, oldest first.
    pub fn generations(&self) -> Result<Vec<Generation>, StoreError> {
        let mut generations = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(StoreError::io("cannot read", &self.dir))? {
            let item = item.map_err(StoreError::io("cannot read", &self.dir))?;
            let file_name = item.file_name().to_string_lossy().into_owned();
            let Some(number) = file_name
                .strip_suffix(".yaml")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            generations.push(self.read(number)?);
        }
        generations.sort_by_key(|g| g.number);
        Ok(generations)
    }

    fn path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{number}.yaml"))
    }

    /// Generation `number`.
    pub fn read(&self, number: u64) -> Result<Generation, StoreError> {
        let path = self.path(number);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchGeneration {
                    profile: self.name.clone(),
                    number,
                });
            }
            Err(e) => return Err(StoreError::io("cannot read", &path)(e)),
        };
        let generation: Generation =
            serde_yaml_ng::from_slice(&text).map_err(|e| StoreError::Damaged {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if generation.number != number {
            return Err(StoreError::Damaged {
                path,
                reason: format!("it says it is generation {}", generation.number),
            });
        }
        Ok(generation)
    }

    /// The number of the current generation, if any was recorded.
    pub fn current(&self) -> Result<Option<u64>, StoreError> {
        let path = self.dir.join("current");
        match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| StoreError::Damaged {
                    path,
                    reason: format!("{:?} is not a generation number", text.trim()),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("cannot read", &path)(e)),
        }
    }

    /// Writes `contents` to `name` in the profile's directory in one rename.
    fn replace(&self, name: &str, contents: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        fs::write(&tmp, contents).map_err(StoreError::io("cannot write", &tmp))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(StoreError::io("cannot write", &tmp))?;
        fs::rename(&tmp, &path).map_err(StoreError::io("cannot write", &path))
    }

    /// Records `roots` as a new current generation, unless the current one has exactly these
    /// roots. Returns the current generation and whether it is new.
    pub fn record(
        &self,
        roots: BTreeMap<String, EntryName>,
    ) -> Result<(Generation, bool), StoreError> {
        // A generation must not outlive, after a crash, the entries it names.
        self.store.sync()?;
        let _lock = self.lock()?;
        let current = self.current()?;
        if let Some(number) = current {
            let generation = self.read(number)?;
            if generation.roots == roots {
                self.point_roots(&roots)?;
                return Ok((generation, false));
            }
        }
        let number = self.generations()?.last().map_or(0, |g| g.number) + 1;
        let generation = Generation {
            number,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            roots,
        };
        let yaml = serde_yaml_ng::to_string(&generation).map_err(|e| StoreError::Damaged {
            path: self.path(number),
            reason: e.to_string(),
        })?;
        self.replace(&format!("{number}.yaml"), yaml.as_bytes())?;
        self.point_roots(&generation.roots)?;
        self.replace("current", format!("{number}\n").as_bytes())?;
        Ok((generation, true))
    }

    /// The directory of the profile's root links: one per root of the current generation, named
    /// as the root, pointing at its entry; the stable path to what the profile has now.
    pub fn roots_dir(&self) -> PathBuf {
        self.dir.join("roots")
    }

    /// Points the profile's root links at `roots`, and removes the links of roots it lacks. The
    /// links are GC roots as the generation is; other profiles' roots are not touched.
    fn point_roots(&self, roots: &BTreeMap<String, EntryName>) -> Result<(), StoreError> {
        let dir = self.roots_dir();
        fs::create_dir_all(&dir).map_err(StoreError::io("cannot create", &dir))?;
        for (name, entry) in roots {
            if Name::new(name.as_str()).is_err() {
                return Err(StoreError::BadRootName(name.clone()));
            }
            super::gc::replace_link(&dir, name, &self.store.entry_path(entry))?;
        }
        for item in fs::read_dir(&dir).map_err(StoreError::io("cannot read", &dir))? {
            let item = item.map_err(StoreError::io("cannot read", &dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !roots.contains_key(&name) {
                let path = item.path();
                fs::remove_file(&path).map_err(StoreError::io("cannot remove", &path))?;
            }
        }
        Ok(())
    }

    /// Makes generation `number` current again: the profile's roots point where they did then,
    /// and those of the current generation that it lacks are removed. Builds nothing; every entry
    /// it names must be in the store (generations are GC roots, so they are).
    pub fn switch(&self, number: u64) -> Result<Generation, StoreError> {
        let _lock = self.lock()?;
        let target = self.read(number)?;
        for entry in target.roots.values() {
            if !self.store.contains(entry) {
                return Err(StoreError::NoSuchEntry(entry.to_string()));
            }
        }
        self.point_roots(&target.roots)?;
        self.replace("current", format!("{number}\n").as_bytes())?;
        Ok(target)
    }

    /// Deletes the generations numbered `numbers`, all or none: every one must exist and none
    /// may be the current one. What only they kept becomes garbage for the next `gc`.
    pub fn delete(&self, numbers: &BTreeSet<u64>) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let current = self.current()?;
        for &number in numbers {
            if current == Some(number) {
                return Err(StoreError::CurrentGeneration {
                    profile: self.name.clone(),
                    number,
                });
            }
            self.read(number)?;
        }
        for &number in numbers {
            let path = self.path(number);
            fs::remove_file(&path).map_err(StoreError::io("cannot delete", &path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, name: &str) -> EntryName {
        EntryName::numbered(n, name)
    }

    #[test]
    fn a_generation_is_recorded_only_when_the_roots_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let profile = store.profile("app").unwrap();
        assert_eq!(profile.current().unwrap(), None);
        let roots = BTreeMap::from([("web".to_string(), entry(1, "web"))]);
        let (first, new) = profile.record(roots.clone()).unwrap();
        assert_eq!((first.number, new), (1, true));
        let (again, new) = profile.record(roots).unwrap();
        assert_eq!((again.number, new), (1, false));
        let (second, new) = profile
            .record(BTreeMap::from([("web".to_string(), entry(2, "web"))]))
            .unwrap();
        assert_eq!((second.number, new), (2, true));
        assert_eq!(profile.current().unwrap(), Some(2));
        assert_eq!(
            profile
                .generations()
                .unwrap()
                .iter()
                .map(|g| g.number)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(
            store.generation_roots().unwrap(),
            BTreeSet::from([entry(1, "web"), entry(2, "web")])
        );
    }

    #[test]
    fn root_changes_name_what_was_added_removed_and_changed() {
        let from = BTreeMap::from([
            ("a".to_string(), entry(1, "a")),
            ("b".to_string(), entry(2, "b")),
        ]);
        let to = BTreeMap::from([
            ("b".to_string(), entry(3, "b")),
            ("c".to_string(), entry(4, "c")),
        ]);
        assert_eq!(
            RootChanges::between(&from, &to),
            RootChanges {
                added: vec!["c".into()],
                removed: vec!["a".into()],
                changed: vec!["b".into()],
            }
        );
    }

    #[test]
    fn deleting_generations_is_all_or_nothing_and_spares_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let profile = store.profile("app").unwrap();
        for n in 1..=3 {
            profile
                .record(BTreeMap::from([("web".to_string(), entry(n, "web"))]))
                .unwrap();
        }
        let numbers = |p: &Profile| -> Vec<u64> {
            p.generations().unwrap().iter().map(|g| g.number).collect()
        };
        let err = profile.delete(&BTreeSet::from([1, 9])).unwrap_err();
        assert!(matches!(
            err,
            StoreError::NoSuchGeneration { number: 9, .. }
        ));
        let err = profile.delete(&BTreeSet::from([1, 3])).unwrap_err();
        assert!(matches!(
            err,
            StoreError::CurrentGeneration { number: 3, .. }
        ));
        assert_eq!(numbers(&profile), [1, 2, 3], "nothing was deleted");
        profile.delete(&BTreeSet::from([1, 2])).unwrap();
        assert_eq!(numbers(&profile), [3]);
        assert_eq!(
            store.generation_roots().unwrap(),
            BTreeSet::from([entry(3, "web")])
        );
    }

    #[test]
    fn a_bad_profile_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        assert!(matches!(
            store.profile("../x"),
            Err(StoreError::BadProfileName(_))
        ));
    }
}
