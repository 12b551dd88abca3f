//! A machine's whole desired state as data: the `manifest.json` of its system entry, which the
//! controller writes and the agent on the host reads. It lists every managed path (with the
//! digest, owner and mode it must have), user, group, unit and hook.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::check::Check;
use super::secret::SecretSpec;
use crate::hash::{EntryName, TreeDigest};

/// The `format` a manifest of this forjar has.
pub const FORMAT: &str = "forjar system v1";

/// The file name of the manifest in a system entry's content.
pub const FILE: &str = "manifest.json";

/// Where systemd units go on a host.
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// A machine's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// The machine's name.
    pub machine: String,
    /// The store entry of the agent binary that activates this system.
    pub agent: EntryName,
    /// Groups to create, by name.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupSpec>,
    /// Users to create, by name.
    #[serde(default)]
    pub users: BTreeMap<String, UserSpec>,
    /// Every managed path (files, directories, symlinks, unit files), by absolute path.
    #[serde(default)]
    pub paths: BTreeMap<String, PathSpec>,
    /// systemd units, by unit name.
    #[serde(default)]
    pub units: BTreeMap<String, UnitSpec>,
    /// Commands run at the end of every activation, in order.
    #[serde(default)]
    pub hooks: Vec<HookSpec>,
    /// Health checks run after activation, the machine's and its units'.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
    /// Secret files, by absolute path: where and whose, never their values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretSpec>,
}

/// A group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// A system group (`groupadd --system`).
    pub system: bool,
    /// A fixed group id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    /// A system user (`useradd --system`).
    pub system: bool,
    /// A fixed user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The primary group (declared, or one that exists on every host such as `root`).
    pub group: String,
    /// Supplementary groups.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub groups: BTreeSet<String>,
    /// The home directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// The login shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
}

/// One managed path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSpec {
    /// What the path is.
    pub kind: PathKind,
    /// Its owner's user name.
    pub owner: String,
    /// Its group's name.
    pub group: String,
    /// Its permission bits (ignored for symlinks).
    pub mode: u32,
}

/// What a managed path is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum PathKind {
    /// A regular file whose content is a file in the store.
    File {
        /// Where the content is, relative to the store directory:
        /// `<entry>/content[/<path>]`, or `system:<path>` for a file of the system entry itself.
        source: String,
        /// The tree digest of the content (a file node: its bytes and executable bit).
        digest: TreeDigest,
        /// Its size in bytes.
        size: u64,
    },
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink {
        /// What it points at.
        target: String,
    },
}

/// A systemd unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    /// Enabled (`systemctl enable`): started at boot by its `[Install]` section.
    pub enable: bool,
    /// Started now, and kept running.
    pub start: bool,
    /// Reloaded instead of restarted when it changes.
    pub reload: bool,
    /// The digest of what restarts it: its unit file and the files it names as triggers.
    pub stamp: TreeDigest,
    /// Provided by the host's packages ([`crate::machine::Unit::existing`]): no unit file,
    /// never enabled, started or stopped; restarted when its stamp (its triggers' digests)
    /// changes, the absent unit counting as [`UnitSpec::provided_stamp`] of no triggers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provided: bool,
    /// Secret files whose new values restart (or reload) it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// The managed files it restarts (or reloads) on (their digests are in `stamp`): one a
    /// repair puts back restarts it too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

impl UnitSpec {
    /// The stamp of a provided unit whose triggers have `digests`.
    pub fn provided_stamp<'a>(digests: impl IntoIterator<Item = &'a TreeDigest>) -> TreeDigest {
        let mut stamp = blake3::Hasher::new();
        stamp.update(b"forjar provided unit\0");
        for digest in digests {
            stamp.update(digest.as_bytes());
        }
        TreeDigest::from_bytes(*stamp.finalize().as_bytes())
    }
}

/// A command run at the end of every activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSpec {
    /// Its name, for the log.
    pub name: String,
    /// The script, run with `/bin/sh -euc`.
    pub script: String,
}

impl Manifest {
    /// Reads a manifest, checking its format and every path in it.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if manifest.format != FORMAT {
            return Err(format!(
                "its format is {:?}; this forjar reads {FORMAT:?}",
                manifest.format
            ));
        }
        for path in manifest.paths.keys() {
            check_path(path)?;
        }
        Ok(manifest)
    }

    /// A manifest with nothing in it for `like`'s machine: what a host had before its first
    /// activation.
    pub fn empty_like(like: &Manifest) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            machine: like.machine.clone(),
            agent: like.agent.clone(),
            groups: BTreeMap::new(),
            users: BTreeMap::new(),
            paths: BTreeMap::new(),
            units: BTreeMap::new(),
            hooks: Vec::new(),
            checks: Vec::new(),
            secrets: BTreeMap::new(),
        }
    }

    /// The manifest's JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest serialises")
    }

    /// The unit file path of unit `name`.
    pub fn unit_path(name: &str) -> String {
        format!("{UNIT_DIR}/{name}")
    }

    /// The store entries the manifest names (file sources and the agent).
    pub fn references(&self) -> BTreeSet<EntryName> {
        let mut entries = BTreeSet::from([self.agent.clone()]);
        for spec in self.paths.values() {
            if let PathKind::File { source, .. } = &spec.kind
                && let Some((entry, _)) = source.split_once('/')
                && let Ok(entry) = EntryName::parse(entry)
            {
                entries.insert(entry);
            }
        }
        entries
    }
}

/// A managed path must be absolute, normal (no `.`, `..` or empty components, no trailing `/`),
/// free of NUL, and not `/` itself.
pub fn check_path(path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("path `{path}` {why}"));
    if !path.starts_with('/') {
        return bad("is relative; managed paths are absolute, such as `/etc/app.conf`");
    }
    if path == "/" {
        return bad("is the root directory, which cannot be managed");
    }
    if path.contains('\0') {
        return bad("contains a NUL byte");
    }
    if path[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("is not normal: it has an empty, `.` or `..` component, or ends in `/`");
    }
    if !Path::new(path).is_absolute() {
        return bad("is not absolute");
    }
    Ok(())
}

/// What activating `new` over `old` changes, as the plan shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// Paths that appear.
    pub paths_added: Vec<String>,
    /// Paths whose content, kind, owner or mode change.
    pub paths_changed: Vec<String>,
    /// Paths no longer managed (removed from the host).
    pub paths_removed: Vec<String>,
    /// Users created.
    pub users_added: Vec<String>,
    /// Groups created.
    pub groups_added: Vec<String>,
    /// Units started (new).
    pub units_started: Vec<String>,
    /// Units restarted (changed).
    pub units_restarted: Vec<String>,
    /// Units reloaded (changed, and reloadable).
    pub units_reloaded: Vec<String>,
    /// Units stopped (removed, or no longer started).
    pub units_stopped: Vec<String>,
    /// Hooks run.
    pub hooks: Vec<String>,
}

impl Changes {
    /// The changes from `old` (none: a host never activated) to `new`.
    pub fn between(old: Option<&Manifest>, new: &Manifest) -> Changes {
        let blank;
        let old = match old {
            Some(old) => old,
            None => {
                blank = Manifest::empty_like(new);
                &blank
            }
        };
        let (old_paths, old_units, old_users, old_groups) =
            (&old.paths, &old.units, &old.users, &old.groups);
        let mut changes = Changes::default();
        for (path, spec) in &new.paths {
            match old_paths.get(path) {
                None => changes.paths_added.push(path.clone()),
                Some(old) if old != spec => changes.paths_changed.push(path.clone()),
                Some(_) => {}
            }
        }
        changes.paths_removed = old_paths
            .keys()
            .filter(|p| !new.paths.contains_key(*p))
            .cloned()
            .collect();
        changes.users_added = new
            .users
            .keys()
            .filter(|u| !old_users.contains_key(*u))
            .cloned()
            .collect();
        changes.groups_added = new
            .groups
            .keys()
            .filter(|g| !old_groups.contains_key(*g))
            .cloned()
            .collect();
        let unchanged = UnitSpec::provided_stamp([]);
        for (name, unit) in &new.units {
            if unit.provided {
                let before = old_units
                    .get(name)
                    .filter(|o| o.provided)
                    .map_or(&unchanged, |o| &o.stamp);
                if *before != unit.stamp {
                    match unit.reload {
                        true => changes.units_reloaded.push(name.clone()),
                        false => changes.units_restarted.push(name.clone()),
                    }
                }
                continue;
            }
            match old_units.get(name) {
                _ if !unit.start => {}
                Some(old) if old.start && old.stamp == unit.stamp => {}
                Some(old) if old.start && unit.reload => changes.units_reloaded.push(name.clone()),
                Some(old) if old.start => changes.units_restarted.push(name.clone()),
                _ => changes.units_started.push(name.clone()),
            }
        }
        // A provided unit that leaves the program loses its triggers: restarted, not stopped.
        for (name, unit) in old_units {
            if unit.provided && unit.stamp != unchanged && !new.units.contains_key(name) {
                changes.units_restarted.push(name.clone());
            }
        }
        changes.units_stopped = old_units
            .iter()
            .filter(|(name, unit)| {
                !unit.provided && unit.start && new.units.get(*name).is_none_or(|u| !u.start)
            })
            .map(|(name, _)| name.clone())
            .collect();
        changes.hooks = new.hooks.iter().map(|h| h.name.clone()).collect();
        changes
    }

    /// Whether activation would change nothing but run the hooks.
    pub fn is_empty(&self) -> bool {
        self.paths_added.is_empty()
            && self.paths_changed.is_empty()
            && self.paths_removed.is_empty()
            && self.users_added.is_empty()
            && self.groups_added.is_empty()
            && self.units_started.is_empty()
            && self.units_restarted.is_empty()
            && self.units_reloaded.is_empty()
            && self.units_stopped.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_paths_must_be_absolute_and_normal() {
        assert!(check_path("/etc/app.conf").is_ok());
        for bad in [
            "etc/app.conf",
            "/",
            "/etc//x",
            "/etc/../x",
            "/etc/./x",
            "/etc/",
            "",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check_path("etc/x").unwrap_err().contains("relative"));
    }
}
