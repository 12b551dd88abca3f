//! What a Debian system says it has installed: dpkg's status database, each package's file
//! list, and the alternatives it chose.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::ToolchainError;

/// dpkg's administrative directory, under a system's root.
pub(crate) const ADMIN_DIR: &str = "var/lib/dpkg";

/// One installed package, as dpkg's status file describes it.
#[derive(Debug, Clone)]
pub(crate) struct Installed {
    pub(crate) name: String,
    pub(crate) architecture: String,
    pub(crate) version: String,
    /// `Pre-Depends` and `Depends`: each a list of alternatives, by package name.
    depends: Vec<Vec<String>>,
}

/// The installed packages of the system at `root`.
#[derive(Debug)]
pub(crate) struct Database {
    root: PathBuf,
    /// By name; a package installed for several architectures has one entry per architecture.
    packages: HashMap<String, Vec<Installed>>,
    /// Virtual package name -> the installed packages that provide it.
    provides: HashMap<String, Vec<String>>,
}

/// A package name of a dependency field: `libc6 (>= 2.34)` and `python3:any` name `libc6` and
/// `python3`.
fn dependency_name(text: &str) -> &str {
    let name = text.trim().split([' ', '(', '[', '<']).next().unwrap_or("");
    name.split(':').next().unwrap_or(name)
}

fn alternatives(field: &str) -> impl Iterator<Item = Vec<String>> + '_ {
    field.split(',').filter(|d| !d.trim().is_empty()).map(|d| {
        d.split('|')
            .map(|alt| dependency_name(alt).to_string())
            .collect()
    })
}

/// The stanzas of a deb822 file: each a map of field name to value, continuation lines joined.
fn stanzas(text: &str) -> impl Iterator<Item = BTreeMap<&str, String>> + '_ {
    text.split("\n\n").filter_map(|block| {
        let mut fields: BTreeMap<&str, String> = BTreeMap::new();
        let mut last: Option<&str> = None;
        for line in block.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some(field) = last.and_then(|l| fields.get_mut(l)) {
                    field.push('\n');
                    field.push_str(line.trim());
                }
            } else if let Some((key, value)) = line.split_once(':') {
                fields.insert(key, value.trim().to_string());
                last = Some(key);
            }
        }
        (!fields.is_empty()).then_some(fields)
    })
}

/// The Debian architecture this program was built for, which is the one its builds run on.
pub(crate) fn native_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "arm" => "armhf",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64el",
        "s390x" => "s390x",
        other => other,
    }
}

/// Whether a deb822 record is of a package this machine can install: its architecture, or `all`.
fn for_this_machine(fields: &BTreeMap<&str, String>) -> bool {
    fields
        .get("Architecture")
        .is_some_and(|a| a == native_architecture() || a == "all")
}

/// The packages of this architecture (or `all`) whose record in `records` names no file to
/// download: a version that is installed but no longer in apt's lists (lists older than the
/// system, or a version the archive has dropped).
pub(crate) fn without_download(records: &str) -> Vec<String> {
    stanzas(records)
        .filter(|f| !f.contains_key("Filename") && for_this_machine(f))
        .filter_map(|f| f.get("Package").cloned())
        .collect()
}

/// Of `records` (`apt-cache show`, which gives a package's versions newest first), the first
/// record of each package of this architecture (or `all`) that names a file to download.
pub(crate) fn first_downloadable(records: &str) -> String {
    let mut seen = BTreeSet::new();
    let mut out = String::new();
    for block in records.split("\n\n") {
        let Some(fields) = stanzas(block).next() else {
            continue;
        };
        if let Some(name) = fields.get("Package")
            && fields.contains_key("Filename")
            && for_this_machine(&fields)
            && seen.insert(name.clone())
        {
            out.push_str("\n\n");
            out.push_str(block.trim_matches('\n'));
        }
    }
    out
}

impl Database {
    /// Reads `<root>/var/lib/dpkg/status`.
    pub(crate) fn read(root: &Path) -> Result<Database, ToolchainError> {
        let path = root.join(ADMIN_DIR).join("status");
        let text = fs::read_to_string(&path).map_err(|source| ToolchainError::Io {
            what: "cannot read dpkg's status file",
            path: path.clone(),
            source,
        })?;
        Ok(Self::parse(root, &text, true))
    }

    /// What apt offers, from its records (`apt-cache dumpavail`, then `apt-cache show` of the
    /// pinned versions, which replace the candidates): this architecture's packages and `all`.
    pub(crate) fn available(records: &str) -> Database {
        Self::parse(Path::new("/"), records, false)
    }

    fn parse(root: &Path, text: &str, installed_only: bool) -> Database {
        let mut packages: HashMap<String, Vec<Installed>> = HashMap::new();
        let mut provides: HashMap<String, Vec<String>> = HashMap::new();
        for fields in stanzas(text) {
            let keep = match installed_only {
                true => fields
                    .get("Status")
                    .is_some_and(|s| s.split_whitespace().nth(2) == Some("installed")),
                false => for_this_machine(&fields),
            };
            let (Some(name), Some(version), true) =
                (fields.get("Package"), fields.get("Version"), keep)
            else {
                continue;
            };
            let mut depends = Vec::new();
            for field in ["Pre-Depends", "Depends"] {
                if let Some(value) = fields.get(field) {
                    depends.extend(alternatives(value));
                }
            }
            if let Some(value) = fields.get("Provides") {
                for provided in value.split(',') {
                    let provided = dependency_name(provided);
                    if !provided.is_empty() {
                        provides
                            .entry(provided.to_string())
                            .or_default()
                            .push(name.clone());
                    }
                }
            }
            let package = Installed {
                name: name.clone(),
                architecture: fields.get("Architecture").cloned().unwrap_or_default(),
                version: version.clone(),
                depends,
            };
            let instances = packages.entry(name.clone()).or_default();
            if !installed_only {
                // One version per package: the later record (a pinned one) wins.
                instances.clear();
            }
            instances.push(package);
        }
        Database {
            root: root.to_path_buf(),
            packages,
            provides,
        }
    }

    /// The installed package `name`: its native-architecture (or `all`) instance if there are
    /// several.
    pub(crate) fn get(&self, name: &str) -> Option<&Installed> {
        let instances = self.packages.get(name)?;
        instances
            .iter()
            .find(|p| p.architecture == native_architecture() || p.architecture == "all")
            .or_else(|| instances.first())
    }

    /// `names` and everything they depend on, as installed: for each dependency the first
    /// alternative that is installed, or provided by an installed package.
    pub(crate) fn closure(
        &self,
        names: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, Installed>, ToolchainError> {
        let mut found: BTreeMap<String, Installed> = BTreeMap::new();
        let mut queue: Vec<(String, Option<String>)> =
            names.iter().map(|n| (n.clone(), None)).collect();
        while let Some((name, wanted_by)) = queue.pop() {
            if found.contains_key(&name) {
                continue;
            }
            let Some(package) = self.get(&name) else {
                return Err(ToolchainError::NotInstalled {
                    package: name,
                    wanted_by,
                    root: self.root.clone(),
                });
            };
            for group in &package.depends {
                let chosen = group.iter().find_map(|alt| {
                    if self.get(alt).is_some() {
                        Some(alt.clone())
                    } else {
                        self.provides.get(alt).and_then(|p| p.first().cloned())
                    }
                });
                match chosen {
                    Some(dep) => queue.push((dep, Some(name.clone()))),
                    None => {
                        return Err(ToolchainError::NotInstalled {
                            package: group.join(" | "),
                            wanted_by: Some(name.clone()),
                            root: self.root.clone(),
                        });
                    }
                }
            }
            found.insert(name, package.clone());
        }
        Ok(found)
    }

    /// The paths dpkg lists for `package`, as absolute paths on the system.
    pub(crate) fn files(&self, package: &Installed) -> Result<Vec<String>, ToolchainError> {
        let info = self.root.join(ADMIN_DIR).join("info");
        let qualified = info.join(format!("{}:{}.list", package.name, package.architecture));
        let plain = info.join(format!("{}.list", package.name));
        let path = if qualified.exists() { qualified } else { plain };
        let text = fs::read_to_string(&path).map_err(|source| ToolchainError::Io {
            what: "cannot read dpkg's file list",
            path,
            source,
        })?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with('/'))
            .map(str::to_string)
            .collect())
    }

    /// The alternatives in use: each link (`/usr/bin/cc`) and what it points to now
    /// (`/usr/bin/gcc`), masters and their followers alike.
    pub(crate) fn alternatives(&self) -> Result<Vec<(String, String)>, ToolchainError> {
        let dir = self.root.join(ADMIN_DIR).join("alternatives");
        let listing = match fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ToolchainError::Io {
                    what: "cannot read",
                    path: dir,
                    source,
                });
            }
        };
        let mut links = Vec::new();
        for item in listing.flatten() {
            let Ok(text) = fs::read_to_string(item.path()) else {
                continue;
            };
            // The mode, the master link, then pairs of (follower name, follower link) up to an
            // empty line.
            let mut lines = text.lines();
            let (Some(_mode), Some(master)) = (lines.next(), lines.next()) else {
                continue;
            };
            let mut named = vec![(item.file_name().to_string_lossy().into_owned(), master)];
            while let (Some(name), Some(link)) = (lines.next(), lines.next()) {
                if name.is_empty() {
                    break;
                }
                named.push((name.to_string(), link));
            }
            for (name, link) in named {
                let chosen = self.root.join("etc/alternatives").join(&name);
                if let Ok(target) = fs::read_link(&chosen) {
                    links.push((link.to_string(), target.to_string_lossy().into_owned()));
                }
            }
        }
        links.sort();
        Ok(links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_fields_name_packages_without_versions_or_architectures() {
        let deps: Vec<Vec<String>> =
            alternatives("libc6 (>= 2.34), libgmp10 (>= 2:6.2.1+dfsg1) | libgmp3, python3:any")
                .collect();
        assert_eq!(
            deps,
            vec![
                vec!["libc6".to_string()],
                vec!["libgmp10".to_string(), "libgmp3".to_string()],
                vec!["python3".to_string()],
            ]
        );
    }

    #[test]
    fn an_installed_version_apt_cannot_download_gives_way_to_the_newest_it_can() {
        let arch = native_architecture();
        let dumpavail = format!(
            "Package: a\nVersion: 2\nArchitecture: {arch}\n\n\
             Package: b\nVersion: 1\nArchitecture: {arch}\nFilename: pool/b_1.deb\n"
        );
        assert_eq!(without_download(&dumpavail), ["a"]);
        let show = format!(
            "Package: a\nVersion: 2\nArchitecture: {arch}\n\n\
             Package: a\nVersion: 1.5\nArchitecture: {arch}\nFilename: pool/a_1.5.deb\n\n\
             Package: a\nVersion: 1\nArchitecture: {arch}\nFilename: pool/a_1.deb\n"
        );
        let db = Database::available(&format!("{dumpavail}{}", first_downloadable(&show)));
        assert_eq!(db.get("a").unwrap().version, "1.5");
        assert_eq!(db.get("b").unwrap().version, "1");
    }

    #[test]
    fn stanzas_join_continuation_lines_and_skip_empty_blocks() {
        let text = "Package: a\nDescription: one\n two\n\n\nPackage: b\nVersion: 1\n";
        let all: Vec<_> = stanzas(text).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0]["Description"], "one\ntwo");
        assert_eq!(all[1]["Version"], "1");
    }
}
