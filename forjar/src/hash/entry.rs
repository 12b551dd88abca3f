//! Store entry names: `<h>-<name>`, `<h>` the 32-character base32 store hash of the entry's key.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Key, STORE_HASH_LEN, base32_into, is_store_hash};
use crate::name::{InvalidValue, Name, OutputName, identifier};

/// The name of a store entry's directory, `<h>-<name>`; for an output other than `out`,
/// `<h>-<name>-<output>`. Shared, not copied, by a clone: a plan names each entry from the
/// derivation that makes it and from every one that takes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryName(Arc<str>);

impl EntryName {
    /// A test's entry `name`, of the key whose 32 bytes are all `n`.
    #[cfg(test)]
    pub(crate) fn numbered(n: u8, name: &str) -> EntryName {
        let key: Key = format!("{n:02x}").repeat(32).parse().unwrap();
        EntryName::new(&key, &Name::new(name).unwrap(), None)
    }

    /// The longest an entry name may be: the longest file name the store's file systems hold
    /// (`NAME_MAX`).
    pub(crate) const MAX_LEN: usize = 255;

    /// The entry name of a key and a name.
    pub fn new(key: &Key, name: &Name, output: Option<&OutputName>) -> Self {
        let mut hash = [0; STORE_HASH_LEN];
        base32_into(key.store_hash_bytes(), &mut hash);
        let hash = std::str::from_utf8(&hash).expect("the base32 alphabet is ASCII");
        let name = name.as_str();
        EntryName(match named_output(output) {
            Some(output) => joined(&[hash, "-", name, "-", output]),
            None => joined(&[hash, "-", name]),
        })
    }

    /// The length of the entry name [`EntryName::new`] makes of `name` and `output`.
    pub(crate) fn len_of(name: &Name, output: Option<&OutputName>) -> usize {
        STORE_HASH_LEN + 1 + name.as_str().len() + named_output(output).map_or(0, |o| 1 + o.len())
    }

    /// The entry of a source (or any tree keyed as one) named `name` with content `digest`.
    pub fn of_source(name: &Name, digest: &super::TreeDigest) -> Self {
        EntryName::new(&super::source_key(name, digest), name, None)
    }

    /// Parses an entry name: a store hash, `-`, and a valid name, or a valid name, `-` and an
    /// output name.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let bad = || {
            InvalidValue::new(
                "store entry name",
                s,
                format!(
                    "an entry name is a {STORE_HASH_LEN}-character base32 hash, `-` and a name"
                ),
            )
        };
        let (hash, name) = s.split_at_checked(STORE_HASH_LEN).ok_or_else(bad)?;
        let name = name.strip_prefix('-').ok_or_else(bad)?;
        // The name, or the name, `-` and an output other than `out`: longer than any name
        // when the name is as long as a name may be.
        let named = Name::of_str(name).is_ok()
            || name.rsplit_once('-').is_some_and(|(name, output)| {
                Name::of_str(name).is_ok() && identifier("output name", output).is_ok()
            });
        if !is_store_hash(hash) || !named {
            return Err(bad());
        }
        Ok(EntryName(s.into()))
    }

    /// The 32-character store hash.
    pub fn hash(&self) -> &str {
        &self.0[..STORE_HASH_LEN]
    }

    /// The part after the hash and its dash.
    pub fn name(&self) -> &str {
        &self.0[STORE_HASH_LEN + 1..]
    }

    /// The whole entry name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The output an entry name ends with: none for `out`.
fn named_output(output: Option<&OutputName>) -> Option<&str> {
    output
        .map(OutputName::as_str)
        .filter(|output| *output != "out")
}

/// `parts` joined, in one allocation when they are as short as entry names mostly are.
fn joined(parts: &[&str]) -> Arc<str> {
    let mut buffer = [0; 128];
    let len = parts.iter().map(|part| part.len()).sum();
    let Some(text) = buffer.get_mut(..len) else {
        return parts.concat().into();
    };
    let mut at = 0;
    for part in parts {
        text[at..at + part.len()].copy_from_slice(part.as_bytes());
        at += part.len();
    }
    std::str::from_utf8(text)
        .expect("whole strings joined are UTF-8")
        .into()
}

impl Serialize for EntryName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EntryName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::deserialize_parsed(d, "a store entry name", EntryName::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::MAX_NAME_LEN;

    #[test]
    fn entry_names_round_trip() {
        let key = Key::from_str_unchecked();
        let name = Name::new("hello").unwrap();
        let out = EntryName::new(&key, &name, Some(&OutputName::out()));
        assert_eq!(out.as_str(), format!("{}-hello", key.store_hash()));
        let dev = EntryName::new(&key, &name, Some(&OutputName::new("dev").unwrap()));
        assert_eq!(dev.name(), "hello-dev");
        assert_eq!(EntryName::parse(dev.as_str()), Ok(dev.clone()));
        assert_eq!(dev.hash(), key.store_hash());
        // Longer than the buffer a short name is joined in; with the longest name, longer
        // than a name may be.
        let doc = OutputName::new("doc").unwrap();
        for len in [150, MAX_NAME_LEN] {
            let long = Name::new("n".repeat(len)).unwrap();
            let entry = EntryName::new(&key, &long, Some(&doc));
            assert_eq!(entry.as_str(), format!("{}-{long}-doc", key.store_hash()));
            assert_eq!(entry.as_str().len(), EntryName::len_of(&long, Some(&doc)));
            assert_eq!(EntryName::parse(entry.as_str()), Ok(entry));
        }
    }

    #[test]
    fn malformed_entry_names_are_refused() {
        let longest = "n".repeat(MAX_NAME_LEN);
        for bad in [
            "",
            "hello",
            "short-hello",
            &format!("{}hello", "a".repeat(32)),
            &format!("{}-", "a".repeat(32)),
            // A name too long, with no output, or with one that is no identifier.
            &format!("{}-{longest}n", "a".repeat(32)),
            &format!("{}-{longest}-1x", "a".repeat(32)),
            &format!("{}-{longest}-", "a".repeat(32)),
        ] {
            assert!(EntryName::parse(bad).is_err(), "{bad:?}");
        }
        let upper = format!("{}-x", "A".repeat(32));
        assert!(EntryName::parse(&upper).is_err());
    }

    impl Key {
        fn from_str_unchecked() -> Key {
            "11".repeat(32).parse().unwrap()
        }
    }
}
