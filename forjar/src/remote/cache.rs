//! Store entries in a REAPI ActionCache and CAS.
//!
//! An entry is cached under an *entry action*: an `Action` whose `Command` names the entry's
//! full key (and this format's version), with an empty input root. It is a function of the key
//! alone, so a fresh store can look up any entry of its plan before it has the entry's inputs,
//! as Nix asks a binary cache by store path. The `ActionResult` has one output directory,
//! `entry`, holding `content` (file, directory or symlink) and `meta.yaml`.
//!
//! A download is installed only if every blob matches its digest, the `meta.yaml` is for the
//! key asked for, and the content's tree digest is the one `meta.yaml` records; it goes through
//! the store's staging, so a failure at any point leaves nothing behind.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;
use re::action_cache_client::ActionCacheClient;

use super::cas::{self, DirectoryExt, Upload};
use super::execution::{BuildAction, Executed, PackedEntries};
use super::{Address, Remote, RemoteError};
use crate::hash::Key;
use crate::store::{Committed, EntryName, KeyLock, Meta, Staging, Store};

/// The version of the entry action's layout; changing it starts a new cache.
const FORMAT: &str = "forjar entry v1";
/// The output directory that holds an entry.
const OUTPUT: &str = "entry";

/// The command and action under which `entry` (with `key`) is cached.
pub fn entry_action(entry: &EntryName, key: &Key) -> (re::Command, re::Action) {
    let command = re::Command {
        arguments: vec![
            "forjar".to_string(),
            "substitute".to_string(),
            FORMAT.to_string(),
            key.to_string(),
            entry.to_string(),
        ],
        output_paths: vec![OUTPUT.to_string()],
        ..Default::default()
    };
    let action = re::Action {
        command_digest: Some(cas::encode(&command).0),
        input_root_digest: Some(cas::encode(&re::Directory::default()).0),
        ..Default::default()
    };
    (command, action)
}

/// What [`Remote::push_entry`] uploaded.
#[derive(Debug)]
pub struct Pushed {
    /// The digest of the entry's `Tree`.
    pub tree: re::Digest,
    /// The digest of its build log, when one went along.
    pub log: Option<re::Digest>,
    /// The entry as an input root holds it (see `PackedEntries`).
    pub directories: Arc<[re::Directory]>,
}

/// Adds a store entry to `upload`: its `content`, its build log at `log` if given, and its
/// `meta.yaml`. Returns the entry's directory, the directories under `content`, and the log's
/// digest.
pub(crate) fn pack_entry(
    upload: &mut Upload,
    store: &Store,
    entry: &EntryName,
    log: Option<&Path>,
) -> Result<(re::Directory, Vec<re::Directory>, Option<re::Digest>), RemoteError> {
    let mut children = Vec::new();
    let mut root = re::Directory::default();
    let content = upload.add_path(&store.content_path(entry), &mut children)?;
    root.add("content".to_string(), content);
    let mut log_digest = None;
    if let Some(log) = log {
        let log_node = upload.add_path(log, &mut children)?;
        if let cas::Packed::File { digest, .. } = &log_node {
            log_digest = Some(digest.clone());
        }
        root.add("log".to_string(), log_node);
    }
    let meta = upload.add_path(&store.entry_path(entry).join("meta.yaml"), &mut children)?;
    root.add("meta.yaml".to_string(), meta);
    Ok((root, children, log_digest))
}

/// A store entry the remote has, fully: its result, and the tree of its output.
#[derive(Debug)]
struct Found {
    entry: EntryName,
    key: Key,
    tree: re::Tree,
}

impl Remote {
    fn action_cache(&self) -> ActionCacheClient<tonic::transport::Channel> {
        ActionCacheClient::new(self.channel())
    }

    /// Uploads a store entry (its content and `meta.yaml`) and records it under its entry
    /// action. Blobs the CAS has are not sent again.
    pub fn push_entry(&self, store: &Store, entry: &EntryName) -> Result<Pushed, RemoteError> {
        let meta = store.meta(entry)?;
        // The build's log goes along, so that `log` works where the entry is downloaded.
        let log = meta
            .derivation
            .filter(|_| meta.log_digest.is_some())
            .map(|derivation| store.log_path(&derivation.store_hash()))
            .filter(|log| log.is_file());
        let mut upload = Upload::default();
        let (root, children, log_digest) = pack_entry(&mut upload, store, entry, log.as_deref())?;
        let directories = PackedEntries::directories(&root, &children);
        let root_digest = upload.add_message(&root);
        let tree_digest = upload.add_message(&re::Tree {
            root: Some(root),
            children,
        });
        let (command, action) = entry_action(entry, &meta.key);
        upload.add_message(&command);
        let action_digest = upload.add_message(&action);
        self.upload(upload)?;
        let request = re::UpdateActionResultRequest {
            instance_name: self.address.instance().to_string(),
            action_digest: Some(action_digest),
            action_result: Some(re::ActionResult {
                output_directories: vec![re::OutputDirectory {
                    path: OUTPUT.to_string(),
                    tree_digest: Some(tree_digest.clone()),
                    is_topologically_sorted: false,
                    root_directory_digest: Some(root_digest),
                }],
                exit_code: 0,
                ..Default::default()
            }),
            results_cache_policy: None,
            digest_function: 0,
        };
        self.block_on(self.action_cache().update_action_result(request))
            .map_err(self.failed("UpdateActionResult"))?;
        Ok(Pushed {
            tree: tree_digest,
            log: log_digest,
            directories,
        })
    }

    /// Looks `entry` up. `None` when the remote does not have all of it: no result, or a
    /// result whose tree or file blobs are gone (a cache may evict blobs before results).
    fn find_entry(&self, entry: &EntryName, key: &Key) -> Result<Option<Found>, RemoteError> {
        let (_, action) = entry_action(entry, key);
        let request = re::GetActionResultRequest {
            instance_name: self.address.instance().to_string(),
            action_digest: Some(cas::encode(&action).0),
            ..Default::default()
        };
        let result = match self.block_on(self.action_cache().get_action_result(request)) {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
            Err(status) => return Err(self.failed("GetActionResult")(status)),
        };
        let Some(tree_digest) = result
            .output_directories
            .iter()
            .find(|d| d.path == OUTPUT)
            .and_then(|d| d.tree_digest.clone())
        else {
            return Ok(None);
        };
        let tree = match self.read_blob(&tree_digest) {
            Ok(bytes) => {
                re::Tree::decode(bytes.as_slice()).map_err(|e| RemoteError::Malformed {
                    what: format!("tree {} of `{entry}`", cas::show(&tree_digest)),
                    reason: e.to_string(),
                })?
            }
            Err(RemoteError::Call {
                code: tonic::Code::NotFound,
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let files: Vec<re::Digest> = tree
            .root
            .iter()
            .chain(&tree.children)
            .flat_map(|d| d.files.iter().filter_map(|f| f.digest.clone()))
            .collect();
        if !self.find_missing(files)?.is_empty() {
            return Ok(None);
        }
        Ok(Some(Found {
            entry: entry.clone(),
            key: *key,
            tree,
        }))
    }

    /// Downloads a found entry into staging, checks it, and installs it. What it refers to
    /// must be in the store or among `siblings` (the other outputs of its derivation), as for a
    /// local build.
    fn install(
        &self,
        store: &Store,
        lock: &KeyLock,
        found: Found,
        siblings: &[EntryName],
    ) -> Result<(), RemoteError> {
        let Found { entry, key, tree } = found;
        let root = tree.root.unwrap_or_default();
        self.install_tree(store, lock, &entry, &root, &tree.children, &|meta| {
            if meta.key != key {
                return Err(format!("its meta.yaml is for key {}, not {key}", meta.key));
            }
            let present = |r: &EntryName| store.contains(r) || siblings.contains(r);
            match meta.references.iter().find(|r| !present(r)) {
                Some(missing) => Err(format!(
                    "it refers to `{missing}`, which is not in the store"
                )),
                None => Ok(()),
            }
        })
    }

    /// Writes an entry's tree (`content`, `meta.yaml` and optionally `log`) into staging,
    /// checks that `accept` takes its `meta.yaml` and that the content has the tree digest the
    /// `meta.yaml` records, and installs it.
    pub(crate) fn install_tree(
        &self,
        store: &Store,
        lock: &KeyLock,
        entry: &EntryName,
        root: &re::Directory,
        children: &[re::Directory],
        accept: &dyn Fn(&Meta) -> Result<(), String>,
    ) -> Result<(), RemoteError> {
        let malformed = |reason: String| RemoteError::Malformed {
            what: format!("entry `{entry}`"),
            reason,
        };
        let names = root
            .files
            .iter()
            .map(|f| &f.name)
            .chain(root.directories.iter().map(|d| &d.name))
            .chain(root.symlinks.iter().map(|s| &s.name));
        let mut has_content = false;
        for name in names {
            match name.as_str() {
                "content" => has_content = true,
                "log" | "meta.yaml" => {}
                other => {
                    return Err(malformed(format!(
                        "its tree holds `{other}` beside content and meta.yaml"
                    )));
                }
            }
        }
        if !has_content {
            return Err(malformed("its tree has no content".to_string()));
        }
        let staging = Staging::new(store, lock, entry.clone())?;
        self.materialise(root, children, staging.dir())?;
        let meta_path = staging.dir().join("meta.yaml");
        let bytes = std::fs::read(&meta_path)
            .map_err(|e| malformed(format!("its meta.yaml cannot be read: {e}")))?;
        let meta = Meta::parse(&bytes, &meta_path).map_err(crate::store::StoreError::from)?;
        accept(&meta).map_err(malformed)?;
        std::fs::remove_file(&meta_path)
            .map_err(crate::store::StoreError::io("cannot remove", &meta_path))?;
        let log = staging.dir().join("log");
        if log.is_file() {
            keep_log(store, &meta, &log)?;
        }
        match staging.commit_fetched(meta)? {
            Committed::Installed(_) => Ok(()),
            Committed::Mismatch(m) => Err(RemoteError::Corrupt {
                digest: format!("content of `{entry}` (meta.yaml says {})", m.expected),
                got: m.got.to_string(),
            }),
        }
    }
}

/// Moves a downloaded build log to the store's logs, if it is the log `meta` names and the store
/// has none for the derivation yet.
fn keep_log(store: &Store, meta: &Meta, log: &std::path::Path) -> Result<(), RemoteError> {
    let got = crate::hash::TreeHasher::new()
        .digest(log)
        .map_err(crate::store::StoreError::from)?;
    match (meta.derivation, meta.log_digest) {
        (Some(derivation), Some(expected)) if expected == got => {
            let target = store.log_path(&derivation.store_hash());
            if !target.exists() {
                std::fs::rename(log, &target)
                    .map_err(crate::store::StoreError::io("cannot install", &target))?;
                return Ok(());
            }
        }
        (_, Some(expected)) => {
            return Err(RemoteError::Corrupt {
                digest: format!("log of `{}` (meta.yaml says {expected})", meta.name),
                got: got.to_string(),
            });
        }
        _ => {}
    }
    std::fs::remove_file(log).map_err(crate::store::StoreError::io("cannot remove", log))?;
    Ok(())
}

/// A remote cache as an apply uses it: after the remote fails to answer once, it is not asked
/// again during the apply, so that an outage costs one timeout, not one per build.
///
/// With remote execution, the same remote also runs the builds it does not have.
#[derive(Debug)]
pub struct Cache {
    remote: Remote,
    down: AtomicBool,
    /// Whether an outage was told already (builds under way at once may each meet it).
    told: AtomicBool,
    execute: bool,
    packed: PackedEntries,
}

impl Cache {
    fn new(remote: Remote, execute: bool) -> Cache {
        Cache {
            remote,
            down: AtomicBool::new(false),
            told: AtomicBool::new(false),
            execute,
            packed: PackedEntries::default(),
        }
    }

    /// Connects to the remote cache at `address`.
    pub fn connect(address: &Address) -> Result<Cache, RemoteError> {
        Ok(Cache::new(Remote::connect(address)?, false))
    }

    /// Connects to the remote at `address` as a cache and an executor: a derivation it does not
    /// have is built there (see the book's "Remote execution").
    pub fn connect_executor(address: &Address) -> Result<Cache, RemoteError> {
        let remote = Remote::connect(address)?;
        if !remote.executes() {
            return Err(RemoteError::Malformed {
                what: format!("capabilities of {address}"),
                reason: "it does not offer remote execution; use --remote for a cache alone"
                    .to_string(),
            });
        }
        Ok(Cache::new(remote, true))
    }

    /// Whether builds are sent to the remote.
    pub fn executes(&self) -> bool {
        self.execute
    }

    /// Builds `action` remotely; its outputs are then in the cache, for [`Cache::pull`].
    pub fn execute(
        &self,
        store: &Store,
        action: &BuildAction<'_>,
        stop: &AtomicBool,
    ) -> Result<Executed, RemoteError> {
        self.remote
            .execute_build(store, action, &self.packed, stop)
            .map_err(|e| self.note(e))
    }

    /// The connection.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// Whether the remote has stopped answering during this apply.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Whether `error` is to be told: every failure but an outage after the first, which calls
    /// under way at the same time may each meet.
    pub fn tells(&self, error: &RemoteError) -> bool {
        !error.is_outage() || !self.told.swap(true, Ordering::Relaxed)
    }

    /// Records an outage: the remote is not asked again during this apply.
    fn note(&self, error: RemoteError) -> RemoteError {
        if error.is_outage() {
            self.down.store(true, Ordering::Relaxed);
        }
        error
    }

    /// Installs `entries` (a derivation's outputs, with their keys) from the remote if it has
    /// every one of them, and their references are in the store or among them. `Ok(false)` is a
    /// miss: nothing was installed.
    pub fn pull(
        &self,
        store: &Store,
        lock: &KeyLock,
        entries: &[(EntryName, Key)],
    ) -> Result<bool, RemoteError> {
        if self.is_down() {
            return Ok(false);
        }
        let mut found = Vec::new();
        for (entry, key) in entries {
            match self.remote.find_entry(entry, key) {
                Ok(Some(f)) => found.push(f),
                Ok(None) => return Ok(false),
                Err(e) => return Err(self.note(e)),
            }
        }
        let siblings: Vec<EntryName> = entries.iter().map(|(e, _)| e.clone()).collect();
        for f in found {
            // An input root can name this entry by the digests just checked, so a remote build
            // that needs it does not read and hash it again.
            let packed = (f.tree.root.as_ref())
                .map(|root| PackedEntries::directories(root, &f.tree.children));
            let entry = f.entry.clone();
            self.remote
                .install(store, lock, f, &siblings)
                .map_err(|e| self.note(e))?;
            if let Some(directories) = packed {
                self.packed.insert(vec![(entry, directories)]);
            }
        }
        Ok(true)
    }

    /// Uploads `entries` and records them.
    pub fn push(&self, store: &Store, entries: &[EntryName]) -> Result<(), RemoteError> {
        if self.is_down() {
            return Ok(());
        }
        for entry in entries {
            let pushed = self
                .remote
                .push_entry(store, entry)
                .map_err(|e| self.note(e))?;
            // A remote build that needs this entry names it by these digests.
            self.packed
                .insert(vec![(entry.clone(), pushed.directories)]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn the_entry_action_depends_on_the_key_alone() {
        let key = Key::from_str(&"ab".repeat(32)).unwrap();
        let other = Key::from_str(&"cd".repeat(32)).unwrap();
        let entry = EntryName::parse(&format!("{}-hello", key.store_hash())).unwrap();
        let digest = |k: &Key| cas::encode(&entry_action(&entry, k).1).0;
        assert_eq!(digest(&key), digest(&key));
        assert_ne!(digest(&key), digest(&other));
    }
}
