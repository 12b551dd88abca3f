//! `check`: rebuild a derivation that is in the store and compare what comes out, file by file,
//! with what the store holds. The rebuild is never installed.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use petgraph::graph::NodeIndex;

use super::local::Then;
use super::{BuildJob, Context, Event, ExecError, Local};
use crate::hash::{TreeDigest, TreeHasher};
use crate::name::OutputName;
use crate::plan::Plan;
use crate::store::{EntryName, KeyLock, Store, StoreError};
use crate::walk::{self, At, Kind, Visitor};

/// One output of a rebuild, against the store.
#[derive(Debug, Clone)]
pub struct CheckedOutput {
    /// The output.
    pub output: OutputName,
    /// Its store entry.
    pub entry: EntryName,
    /// The tree digest the store recorded when it installed the entry.
    pub expected: TreeDigest,
    /// The tree digest of the store's copy as it is now, hashed again.
    pub stored: TreeDigest,
    /// The tree digest of the rebuild.
    pub got: TreeDigest,
    /// What differs between the store's copy and the rebuild, one line per path (empty when
    /// their digests match).
    pub differences: Vec<String>,
    /// Where the rebuild is kept, when it differs and keeping was asked for.
    pub kept: Option<std::path::PathBuf>,
}

impl CheckedOutput {
    /// Whether the rebuild is identical to the store's copy, and that copy to its record.
    pub fn matches(&self) -> bool {
        self.expected == self.got && self.stored == self.expected
    }

    /// Whether the store's copy no longer matches what the store recorded: then the rebuild
    /// says nothing of the derivation, only of the damage.
    pub fn damaged(&self) -> bool {
        self.stored != self.expected
    }
}

/// Rebuilds the derivation at `index`, whose outputs and inputs must be in the store, in the
/// sandbox, and compares each output with the store's. The rebuild's log goes beside the
/// original's (`<hash>.check.log`), which `meta.yaml` hashes. With `keep`, an output that
/// differs is kept in `<store>/.failed/<hash>-check-<round>/<output>`.
pub fn check(
    plan: &Plan,
    store: &Store,
    index: NodeIndex,
    local: &Local,
    (keep, round): (bool, u16),
    stop: &AtomicBool,
    observer: &(dyn Fn(Event<'_>) + Sync),
) -> Result<Vec<CheckedOutput>, ExecError> {
    let node = plan.node(index);
    let not_realised = || ExecError::NotRealised {
        name: node.name.to_string(),
    };
    // A derivation found under its own key was planned without its resolved request.
    plan.resolve(index)
        .map_err(|e| ExecError::Plan(Box::new(e)))?;
    let job = BuildJob::of(node).ok_or_else(not_realised)?;
    // The store's copy is where the outputs are realised: an earlier build's entries when the
    // last build of this key changed nothing.
    let realised = job.realised(store).ok_or_else(not_realised)?;
    let hash = job.key.store_hash();
    let lock = KeyLock::acquire(store, &hash)?;
    let events = super::node_events(node, observer);
    let cx = Context {
        store,
        lock: &lock,
        stop,
        events: &events,
    };
    let log_path = store.dir().join(".logs").join(format!("{hash}.check.log"));
    let mut prepared = local.prepare(&job, &cx, log_path)?;
    let built = prepared.run(Then::Compare)?;
    let mut checked = Vec::new();
    for ((output, planned), staging) in realised.iter().zip(&built.stagings) {
        let content = staging.content_path();
        let expected = store.meta(&planned.entry)?.digest;
        let digest = |path: &std::path::Path| {
            TreeHasher::new()
                .stopped_by(stop)
                .digest(path)
                .map_err(|e| prepared.stopped_or(StoreError::from(e)))
        };
        // The store's copy is hashed again, not taken on its record's word: a copy edited in
        // place must not pass for a reproduction.
        let stored_path = store.content_path(&planned.entry);
        let stored = digest(&stored_path)?;
        let got = digest(&content)?;
        let differences = if got == stored {
            Vec::new()
        } else {
            differences(&stored_path, &content)
                .map_err(StoreError::io("cannot compare", &content))?
        };
        let kept = if keep && got != stored {
            let dir = store.kept_path(&hash, &format!("check-{round}"));
            fs::create_dir_all(&dir).map_err(StoreError::io("cannot create", &dir))?;
            let to = dir.join(output.as_str());
            fs::rename(&content, &to).map_err(StoreError::io("cannot keep the rebuild in", &to))?;
            Some(to)
        } else {
            None
        };
        checked.push(CheckedOutput {
            output: output.clone(),
            entry: planned.entry.clone(),
            expected,
            stored,
            got,
            differences,
            kept,
        });
    }
    Ok(checked)
}

/// What a path is, as the tree digest sees it.
#[derive(PartialEq, Eq)]
enum What {
    File {
        executable: bool,
        digest: blake3::Hash,
    },
    /// A directory's entries, by ascending name: indices into the tree.
    Directory(Vec<usize>),
    Symlink(Vec<u8>),
}

/// One path of a tree read for comparison.
struct Entry {
    name: Vec<u8>,
    parent: Option<usize>,
    what: What,
}

/// A whole tree, flat: entries refer to each other by index, so that neither reading,
/// comparing nor dropping it recurses, at any depth.
#[derive(Default)]
struct Tree(Vec<Entry>);

impl Tree {
    fn read(path: &Path) -> io::Result<(Tree, usize)> {
        let mut tree = Tree::default();
        let root = walk::walk(path, &mut tree, walk::Options::default())?;
        Ok((tree, root))
    }

    fn push(&mut self, name: &[u8], what: What) -> usize {
        self.0.push(Entry {
            name: name.to_vec(),
            parent: None,
            what,
        });
        self.0.len() - 1
    }

    /// The path of entry `i`, relative to the root (`.`).
    fn path(&self, mut i: usize) -> String {
        let mut names = Vec::new();
        while let Some(parent) = self.0[i].parent {
            names.push(String::from_utf8_lossy(&self.0[i].name).into_owned());
            i = parent;
        }
        names.push(".".into());
        names.reverse();
        names.join("/")
    }
}

impl Visitor for Tree {
    type Out = usize;
    type Error = io::Error;

    fn leaf(&mut self, at: &At<'_>, kind: Kind) -> io::Result<usize> {
        let what = match kind {
            Kind::Symlink => What::Symlink(at.read_link()?),
            Kind::File => match at.open_file()? {
                Ok((fd, st)) => {
                    let mut hasher = blake3::Hasher::new();
                    hasher.update_reader(fs::File::from(fd))?;
                    What::File {
                        executable: st.st_mode & 0o100 != 0,
                        digest: hasher.finalize(),
                    }
                }
                Err(_) => {
                    return Err(io::Error::other(format!(
                        "`{}` changed while it was compared",
                        at.path().display()
                    )));
                }
            },
            _ => {
                return Err(io::Error::other(format!(
                    "`{}` is a {}",
                    at.path().display(),
                    kind.special_name()
                )));
            }
        };
        Ok(self.push(at.name.to_bytes(), what))
    }

    fn leave(
        &mut self,
        at: &At<'_>,
        _: BorrowedFd<'_>,
        children: Vec<(CString, usize)>,
    ) -> io::Result<usize> {
        let ids: Vec<usize> = children.into_iter().map(|(_, i)| i).collect();
        let me = self.0.len();
        for &child in &ids {
            self.0[child].parent = Some(me);
        }
        Ok(self.push(at.name.to_bytes(), What::Directory(ids)))
    }
}

fn describe(what: &What) -> &'static str {
    match what {
        What::File { .. } => "a file",
        What::Directory(_) => "a directory",
        What::Symlink(_) => "a symlink",
    }
}

/// The paths under which `expected` (the store's copy) and `got` (the rebuild) differ, each
/// with how. Paths are relative, `.` being the output itself.
pub(crate) fn differences(expected: &Path, got: &Path) -> io::Result<Vec<String>> {
    let (left, left_root) = Tree::read(expected)?;
    let (right, right_root) = Tree::read(got)?;
    let mut found = Vec::new();
    let mut pairs = vec![(left_root, right_root)];
    while let Some((l, r)) = pairs.pop() {
        let name = left.path(l);
        match (&left.0[l].what, &right.0[r].what) {
            (What::Directory(a), What::Directory(b)) => {
                let by_name = |tree: &Tree, ids: &[usize]| -> BTreeMap<Vec<u8>, usize> {
                    ids.iter().map(|&i| (tree.0[i].name.clone(), i)).collect()
                };
                let (a, b) = (by_name(&left, a), by_name(&right, b));
                let names: BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
                // Pushed in reverse, so that they are compared in name order.
                for child in names.into_iter().rev() {
                    match (a.get(child), b.get(child)) {
                        (Some(&x), Some(&y)) => pairs.push((x, y)),
                        (Some(&x), None) => {
                            found.push(format!("{}: only in the store", left.path(x)))
                        }
                        (None, Some(&y)) => {
                            found.push(format!("{}: only in the rebuild", right.path(y)))
                        }
                        (None, None) => unreachable!("the name came from one of the two"),
                    }
                }
            }
            (
                What::File {
                    executable: x1,
                    digest: d1,
                },
                What::File {
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
            (What::Symlink(t1), What::Symlink(t2)) => {
                if t1 != t2 {
                    found.push(format!(
                        "{name}: symlink target differs ({} in the store, {} in the rebuild)",
                        String::from_utf8_lossy(t1),
                        String::from_utf8_lossy(t2)
                    ))
                }
            }
            (a, b) => found.push(format!(
                "{name}: {} in the store, {} in the rebuild",
                describe(a),
                describe(b)
            )),
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

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
