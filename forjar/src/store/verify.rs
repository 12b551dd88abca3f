//! `verify`: every entry's content rehashed and compared with its recorded digest, and every
//! entry it refers to present.

use std::fmt;
use std::fs;

use super::{EntryName, Store, StoreError};
use crate::hash::{TreeDigest, TreeHasher};

/// Something wrong with one store entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The content no longer hashes to the recorded digest.
    Mismatch {
        /// The entry.
        entry: EntryName,
        /// The digest the store recorded.
        recorded: TreeDigest,
        /// The digest of the content now.
        actual: TreeDigest,
    },
    /// The store has no record of the entry's digest apart from the entry itself, or the record
    /// and `meta.yaml` disagree: the content cannot be vouched for.
    Unrecorded {
        /// The entry.
        entry: EntryName,
        /// What is wrong.
        reason: String,
    },
    /// The `meta.yaml` is missing, damaged or of an unknown schema.
    Meta {
        /// The entry.
        entry: EntryName,
        /// The error.
        error: String,
    },
    /// The content could not be hashed (missing, unreadable, holds a special file).
    Content {
        /// The entry.
        entry: EntryName,
        /// The error.
        error: String,
    },
    /// The entry's directory name does not match the key and name in its `meta.yaml`.
    Misnamed {
        /// The entry.
        entry: EntryName,
        /// The name its `meta.yaml` implies.
        expected: String,
    },
    /// The entry refers to entries that are not in the store: its closure is broken, and what
    /// uses it may fail at run time.
    MissingReferences {
        /// The entry.
        entry: EntryName,
        /// The entries it refers to that are gone.
        missing: Vec<EntryName>,
    },
    /// A root or a generation needs an entry the store no longer has (deleted with
    /// `delete --force`, say): rolling back to it, or keeping it, fails.
    MissingRoot {
        /// Who needs it: `root NAME`, or `a generation of a profile`.
        by: String,
        /// The entry.
        entry: EntryName,
    },
    /// Something in the store directory that is not an entry.
    Stray {
        /// Its name.
        name: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Mismatch {
                entry,
                recorded,
                actual,
            } => write!(
                f,
                "{entry}: content does not match its digest: the store records {recorded}, the content hashes to {actual}"
            ),
            Problem::Unrecorded { entry, reason } => write!(f, "{entry}: {reason}"),
            Problem::Meta { entry, error } => write!(f, "{entry}: {error}"),
            Problem::Content { entry, error } => write!(f, "{entry}: {error}"),
            Problem::Misnamed { entry, expected } => {
                write!(
                    f,
                    "{entry}: its meta.yaml describes an entry named {expected}"
                )
            }
            Problem::MissingReferences { entry, missing } => write!(
                f,
                "{entry}: refers to {}, which the store no longer has; build what made it again \
                 (or restore it from a remote cache with `apply --remote`)",
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Problem::MissingRoot { by, entry } => write!(
                f,
                "{entry}: {by} needs it, and the store no longer has it; build it again \
                 (`verify --repair` in the program that makes it)"
            ),
            Problem::Stray { name } => write!(
                f,
                "{name}: not a store entry (a name is `<32-character hash>-<name>`)"
            ),
        }
    }
}

/// The outcome of [`Store::verify`].
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// How many entries were checked.
    pub checked: usize,
    /// What was found wrong, sorted by entry.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether every entry is as recorded.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Store {
    /// Rehashes every entry's content (no cache) and compares it with its `meta.yaml`, and checks
    /// that every entry an entry refers to is in the store.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut problems: Vec<Problem> = Vec::new();
        let mut entries = Vec::new();
        for name in self.listing()? {
            match EntryName::parse(&name) {
                Ok(entry) if self.entry_path(&entry).is_dir() => entries.push(entry),
                _ => problems.push(Problem::Stray { name }),
            }
        }
        let checked: Vec<Vec<Problem>> =
            crate::threads::collect(&entries, true, |entry| self.check(entry));
        problems.extend(checked.into_iter().flatten());
        problems.extend(self.missing_roots()?);
        problems.sort_by_key(ToString::to_string);
        Ok(VerifyReport {
            checked: entries.len(),
            problems,
        })
    }

    /// The entries direct roots and generations need that are gone. An indirect root whose
    /// outside link is gone is not a problem: `gc` removes it.
    fn missing_roots(&self) -> Result<Vec<Problem>, StoreError> {
        let mut problems = Vec::new();
        for root in self.roots()? {
            if root.indirect || root.target != super::RootTarget::Dangling {
                continue;
            }
            let entry = root
                .link
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| EntryName::parse(n).ok());
            if let Some(entry) = entry {
                problems.push(Problem::MissingRoot {
                    by: format!("root `{}`", root.name),
                    entry,
                });
            }
        }
        for entry in self.generation_roots()? {
            if !self.contains(&entry) {
                problems.push(Problem::MissingRoot {
                    by: "a generation of a profile".to_string(),
                    entry,
                });
            }
        }
        Ok(problems)
    }

    /// What is wrong with `entry`: its content, and its references.
    pub(super) fn check(&self, entry: &EntryName) -> Vec<Problem> {
        let meta = match self.meta(entry) {
            Ok(meta) => meta,
            Err(e) => {
                return vec![Problem::Meta {
                    entry: entry.clone(),
                    error: e.to_string(),
                }];
            }
        };
        let missing: Vec<EntryName> = meta
            .references
            .iter()
            .filter(|r| !self.contains(r))
            .cloned()
            .collect();
        let mut problems: Vec<Problem> = self.check_content(entry, &meta).into_iter().collect();
        if !missing.is_empty() {
            problems.push(Problem::MissingReferences {
                entry: entry.clone(),
                missing,
            });
        }
        problems
    }

    /// What is wrong with `entry`'s content against its `meta.yaml` and the store's record.
    fn check_content(&self, entry: &EntryName, meta: &super::Meta) -> Option<Problem> {
        let suffix = if meta.output == "out" {
            String::new()
        } else {
            format!("-{}", meta.output)
        };
        let expected = format!("{}-{}{suffix}", meta.key.store_hash(), meta.name);
        if expected != entry.as_str() {
            return Some(Problem::Misnamed {
                entry: entry.clone(),
                expected,
            });
        }
        // The record outside the entry is what counts: an entry's directory was once its
        // builder's, and content and meta.yaml could have been rewritten together.
        let recorded = match self.recorded_digest(entry) {
            Ok(Some(recorded)) if recorded == meta.digest => recorded,
            Ok(Some(recorded)) => {
                return Some(Problem::Unrecorded {
                    entry: entry.clone(),
                    reason: format!(
                        "meta.yaml records {}, but the store recorded {recorded} when it installed the entry",
                        meta.digest
                    ),
                });
            }
            Ok(None) => {
                return Some(Problem::Unrecorded {
                    entry: entry.clone(),
                    reason: "the store has no record of its digest (.digests/); remove the entry \
                             (`gc` once nothing refers to it) and build it again"
                        .into(),
                });
            }
            Err(e) => {
                return Some(Problem::Unrecorded {
                    entry: entry.clone(),
                    reason: e.to_string(),
                });
            }
        };
        let content = self.content_path(entry);
        if let Err(e) = fs::symlink_metadata(&content) {
            return Some(Problem::Content {
                entry: entry.clone(),
                error: format!("no content: {e}"),
            });
        }
        match TreeHasher::new().digest(&content) {
            Ok(actual) if actual == recorded => None,
            Ok(actual) => Some(Problem::Mismatch {
                entry: entry.clone(),
                recorded,
                actual,
            }),
            Err(e) => Some(Problem::Content {
                entry: entry.clone(),
                error: e.to_string(),
            }),
        }
    }
}
