//! The host fingerprint that keys `host-tools` builds.
//!
//! A `host-tools` build sees the host's `/usr`, `/bin` and `/lib*`, so its output depends on
//! what is installed there. The fingerprint covers what changes when that does: the OS release,
//! the architecture, the dynamic linker's cache (which `ldconfig` rewrites when libraries come
//! or go) and the package database (dpkg's status file, rpm's database), so that upgrading the
//! host's compiler rebuilds what was built with it. The kernel version is left out: it changes on
//! every reboot into a new kernel and does not change what the host's tools produce.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde::Serialize;

use super::Encoder;

/// BLAKE3 derive-key context of host fingerprints.
const HOST_CONTEXT: &str = "forjar host v1";

/// The files whose content identifies the host's installed software. Missing ones count as empty.
const HOST_FILES: &[&str] = &[
    "/etc/os-release",
    "/usr/lib/os-release",
    "/etc/ld.so.cache",
    "/var/lib/dpkg/status",
    "/var/lib/rpm/rpmdb.sqlite",
];

/// A digest of the host's installed software.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostFingerprint([u8; 32]);

impl HostFingerprint {
    /// The fingerprint of this host, computed once per process.
    pub fn current() -> Self {
        static CURRENT: OnceLock<HostFingerprint> = OnceLock::new();
        *CURRENT.get_or_init(|| Self::of_parts(&Self::current_parts()))
    }

    /// What this host's fingerprint is made of: the architecture, and the BLAKE3 of each file
    /// it reads (hex; an absent file reads as empty), by file. `plan --explain` names the parts
    /// that changed since a build.
    pub fn current_parts() -> BTreeMap<String, String> {
        static PARTS: OnceLock<BTreeMap<String, String>> = OnceLock::new();
        PARTS.get_or_init(|| Self::parts_of(HOST_FILES)).clone()
    }

    fn parts_of(files: &[&str]) -> BTreeMap<String, String> {
        let mut parts = BTreeMap::from([("arch".to_string(), std::env::consts::ARCH.to_string())]);
        for file in files {
            let contents = std::fs::read(file).unwrap_or_default();
            parts.insert(
                file.to_string(),
                blake3::hash(&contents).to_hex().to_string(),
            );
        }
        parts
    }

    fn of_parts(parts: &BTreeMap<String, String>) -> Self {
        Self::encode(parts, HOST_FILES)
    }

    #[cfg(test)]
    fn of_files(files: &[&str]) -> Self {
        Self::encode(&Self::parts_of(files), files)
    }

    /// The fingerprint of `parts`, which hold the architecture and each of `files`.
    fn encode(parts: &BTreeMap<String, String>, files: &[&str]) -> Self {
        let mut e = Encoder::new(HOST_CONTEXT);
        e.field("arch").bytes(parts["arch"].as_bytes());
        for file in files {
            let hash = blake3::Hash::from_hex(&parts[*file]).expect("parts hold BLAKE3 hex");
            e.field(file).bytes(hash.as_bytes());
        }
        HostFingerprint(e.finish())
    }

    /// Wraps raw fingerprint bytes (for tests and for fingerprints read back from a plan).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        HostFingerprint(bytes)
    }

    /// The fingerprint's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for HostFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::hex(&self.0))
    }
}

impl fmt::Debug for HostFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostFingerprint({self})")
    }
}

impl std::str::FromStr for HostFingerprint {
    type Err = super::BadHex;
    fn from_str(s: &str) -> Result<Self, super::BadHex> {
        super::parse_hex32_as("host fingerprint", s).map(HostFingerprint)
    }
}

impl Serialize for HostFingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HostFingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_follows_the_host_files() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        std::fs::write(&status, "Package: gcc\nVersion: 12\n").unwrap();
        let path = status.to_str().unwrap();
        let before = HostFingerprint::of_files(&[path]);
        assert_eq!(HostFingerprint::of_files(&[path]), before);
        std::fs::write(&status, "Package: gcc\nVersion: 13\n").unwrap();
        assert_ne!(HostFingerprint::of_files(&[path]), before);
        assert_eq!(HostFingerprint::current(), HostFingerprint::current());
    }
}
