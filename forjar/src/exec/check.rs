//! `check`: rebuild a derivation that is in the store and compare what comes out, file by file,
//! with what the store holds. The rebuild is never installed.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use petgraph::graph::NodeIndex;

use super::{Event, ExecError, Options, build};
use crate::hash::TreeDigest;
use crate::plan::{NodeKind, Plan};
use crate::request::OutputName;
use crate::store::{EntryName, Store};

/// One output of a rebuild, against the store.
#[derive(Debug, Clone)]
pub struct CheckedOutput {
    /// The output.
    pub output: OutputName,
    /// Its store entry.
    pub entry: EntryName,
    /// The tree digest in the store.
    pub expected: TreeDigest,
    /// The tree digest of the rebuild.
    pub got: TreeDigest,
    /// What differs, one line per path (empty when the digests match).
    pub differences: Vec<String>,
}

impl CheckedOutput {
    /// Whether the rebuild is identical to the store's copy.
    pub fn matches(&self) -> bool {
        self.expected == self.got
    }
}

/// Rebuilds the derivation at `index`, whose outputs and inputs must be in the store, in the
/// sandbox, and compares each output with the store's.
pub fn check(
    plan: &Plan,
    store: &Store,
    index: NodeIndex,
    options: &Options,
    stop: &AtomicBool,
    observer: &(dyn Fn(Event<'_>) + Sync),
) -> Result<Vec<CheckedOutput>, ExecError> {
    let node = plan.node(index);
    assert!(
        matches!(node.kind, NodeKind::Derivation { .. }),
        "only derivations are rebuilt"
    );
    let mut checked = Vec::new();
    build(node, store, options, stop, observer, Some(&mut checked))?;
    Ok(checked)
}

/// What a path is, as the tree digest sees it.
#[derive(PartialEq, Eq)]
enum Kind {
    File {
        executable: bool,
        digest: blake3::Hash,
    },
    Directory,
    Symlink(std::path::PathBuf),
    Other,
}

fn kind(path: &Path) -> io::Result<Kind> {
    let meta = fs::symlink_metadata(path)?;
    Ok(if meta.is_dir() {
        Kind::Directory
    } else if meta.is_symlink() {
        Kind::Symlink(fs::read_link(path)?)
    } else if meta.is_file() {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(fs::File::open(path)?)?;
        Kind::File {
            executable: meta.permissions().mode() & 0o111 != 0,
            digest: hasher.finalize(),
        }
    } else {
        Kind::Other
    })
}

fn describe(kind: &Kind) -> &'static str {
    match kind {
        Kind::File { .. } => "a file",
        Kind::Directory => "a directory",
        Kind::Symlink(_) => "a symlink",
        Kind::Other => "a special file",
    }
}

/// The paths under which `expected` (the store's copy) and `got` (the rebuild) differ, each
/// with how. Paths are relative, `.` being the output itself.
pub(crate) fn differences(expected: &Path, got: &Path) -> io::Result<Vec<String>> {
    let mut found = Vec::new();
    walk(expected, got, Path::new("."), &mut found)?;
    Ok(found)
}

fn walk(expected: &Path, got: &Path, rel: &Path, found: &mut Vec<String>) -> io::Result<()> {
    let (a, b) = (kind(expected)?, kind(got)?);
    let name = rel.display();
    match (&a, &b) {
        (Kind::Directory, Kind::Directory) => {
            let names = |dir: &Path| -> io::Result<BTreeSet<std::ffi::OsString>> {
                fs::read_dir(dir)?
                    .map(|e| e.map(|e| e.file_name()))
                    .collect()
            };
            let (left, right) = (names(expected)?, names(got)?);
            for child in left.union(&right) {
                let rel = rel.join(child);
                match (left.contains(child), right.contains(child)) {
                    (true, true) => walk(&expected.join(child), &got.join(child), &rel, found)?,
                    (true, false) => found.push(format!("{}: only in the store", rel.display())),
                    _ => found.push(format!("{}: only in the rebuild", rel.display())),
                }
            }
        }
        (
            Kind::File {
                executable: x1,
                digest: d1,
            },
            Kind::File {
                executable: x2,
                digest: d2,
            },
        ) => {
            if d1 != d2 {
                found.push(format!("{name}: contents differ"));
            } else if x1 != x2 {
                found.push(format!("{name}: executable bit differs"));
            }
        }
        (Kind::Symlink(t1), Kind::Symlink(t2)) if t1 != t2 => found.push(format!(
            "{name}: symlink target differs ({} in the store, {} in the rebuild)",
            t1.display(),
            t2.display()
        )),
        _ if a != b => found.push(format!(
            "{name}: {} in the store, {} in the rebuild",
            describe(&a),
            describe(&b)
        )),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_path_and_how() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for root in [&a, &b] {
            fs::create_dir_all(root.join("sub")).unwrap();
            fs::write(root.join("same"), "x").unwrap();
        }
        fs::write(a.join("sub/stamp"), "1").unwrap();
        fs::write(b.join("sub/stamp"), "2").unwrap();
        fs::write(a.join("gone"), "").unwrap();
        fs::write(b.join("new"), "").unwrap();
        fs::write(a.join("tool"), "t").unwrap();
        fs::write(b.join("tool"), "t").unwrap();
        fs::set_permissions(b.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            differences(&a, &b).unwrap(),
            [
                "./gone: only in the store",
                "./new: only in the rebuild",
                "./sub/stamp: contents differ",
                "./tool: executable bit differs",
            ]
        );
        assert!(differences(&a, &a).unwrap().is_empty());
    }
}
