//! Store entry names: `<h>-<name>`, `<h>` the 32-character base32 store hash of the entry's key.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Key, STORE_HASH_LEN, is_store_hash};
use crate::name::{InvalidValue, Name, OutputName};

/// The name of a store entry's directory, `<h>-<name>`; for an output other than `out`,
/// `<h>-<name>-<output>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EntryName(String);

impl EntryName {
    /// The entry name of a key and a name.
    pub fn new(key: &Key, name: &Name, output: Option<&OutputName>) -> Self {
        match output {
            Some(output) if output.as_str() != "out" => {
                EntryName(format!("{}-{}-{}", key.store_hash(), name, output))
            }
            _ => EntryName(format!("{}-{}", key.store_hash(), name)),
        }
    }

    /// The entry of a source (or any tree keyed as one) named `name` with content `digest`.
    pub fn of_source(name: &Name, digest: &super::TreeDigest) -> Self {
        EntryName::new(&super::source_key(name, digest), name, None)
    }

    /// Parses an entry name: a store hash, `-`, and a valid name.
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
        if !is_store_hash(hash) || Name::new(name).is_err() {
            return Err(bad());
        }
        Ok(EntryName(s.to_string()))
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

impl<'de> Deserialize<'de> for EntryName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EntryName::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn malformed_entry_names_are_refused() {
        for bad in [
            "",
            "hello",
            "short-hello",
            &format!("{}hello", "a".repeat(32)),
            &format!("{}-", "a".repeat(32)),
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
