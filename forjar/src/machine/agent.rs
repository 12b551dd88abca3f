//! The agent: the forjar program itself, run on a host (as `PROGRAM __agent ...`) from an entry
//! of the system closure it activates. It receives and verifies entries, activates a system,
//! keeps the host's generations, reports drift and rolls back. It never takes the controller's
//! word for content: entries are installed only when their tree digest matches.
//!
//! Host state lives in the state directory (default `/var/lib/forjar/machine`):
//!
//! ```text
//! generations/<n>.json   one record per activation: system entry, time, operator, revision
//! current                symlink to generations/<n>.json, moved with one rename
//! lock                   held by the one activation running
//! journal.json           the activation in progress; a later run finishes it
//! activations/<id>.log   an activation's log, and <id>.json its outcome
//! ```

use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use std::collections::BTreeSet;

use super::archive;
use super::hostpath::{self, Parent};
use super::manifest::{self, Changes, Manifest, PathKind, PathSpec, UNIT_DIR};
use super::secret;
use super::unit_state;
use crate::hash::{EntryName, TreeDigest};
use crate::store::{Committed, KeyLock, Meta, Staging, Store};
use crate::walk::Kind;

/// The default state directory on a host.
pub const STATE_DIR: &str = "/var/lib/forjar/machine";

/// The most the secrets of one activation may be, encoded.
const SECRETS_LIMIT: u64 = 64 << 20;

/// How long a started unit must stay active before activation counts it as started.
const SETTLE: Duration = Duration::from_millis(1500);

/// A host's record of one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationRecord {
    /// Its number, from 1.
    pub number: u64,
    /// The system entry.
    pub system: EntryName,
    /// The store it is in (a host may be deployed from stores at several paths).
    #[serde(default)]
    pub store: PathBuf,
    /// When it was activated, in seconds since the Unix epoch.
    pub created: u64,
    /// Who ran the apply (the controller's user and host).
    pub operator: String,
    /// The program's source revision, when it was run from a git checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The digest of the host's plan that made it.
    pub plan: String,
    /// `active` once activated, `rolled-back` if its activation failed.
    pub status: String,
}

/// What `probe` tells the controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    /// The entries asked about that the host's store lacks.
    pub missing: Vec<EntryName>,
    /// The current generation.
    pub current: Option<GenerationRecord>,
    /// Its manifest.
    pub manifest: Option<Manifest>,
}

/// The outcome of an activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The activation's id.
    pub id: String,
    /// `activated`, `unchanged`, `rolled-back` or `failed`.
    pub result: String,
    /// The generation the host is on now.
    pub generation: Option<u64>,
    /// The generation the host was on when this activation took the host's lock (none: it had
    /// none, or the activation did not get that far) — not necessarily the one a plan saw
    /// earlier, since another activation may have run in between.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// What went wrong, for `rolled-back` and `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What activation changed.
    #[serde(default)]
    pub changes: Option<Changes>,
    /// What had drifted from the generation the host runs already, put back (`unchanged`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<Drift>,
}

/// One difference between a host's live state and its current generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// The path, unit, user or group.
    pub subject: String,
    /// What differs.
    pub difference: String,
    /// Whether `drift --repair` put it back (what differed before the repair and does not
    /// after it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repaired: bool,
}

impl Drift {
    fn new(subject: String, difference: String) -> Drift {
        Drift {
            subject,
            difference,
            repaired: false,
        }
    }
}

/// A failure on the host; printed by the agent to its standard error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AgentError(pub String);

impl AgentError {
    fn io(what: impl std::fmt::Display, path: &Path) -> impl FnOnce(io::Error) -> AgentError {
        let message = format!("{what} `{}`", path.display());
        move |e| AgentError(format!("{message}: {e}"))
    }
}

impl From<crate::store::StoreError> for AgentError {
    fn from(e: crate::store::StoreError) -> Self {
        AgentError(e.to_string())
    }
}

impl From<archive::ArchiveError> for AgentError {
    fn from(e: archive::ArchiveError) -> Self {
        AgentError(e.to_string())
    }
}

/// The host's state directory.
#[derive(Debug, Clone)]
pub struct State {
    dir: PathBuf,
}

impl State {
    /// Opens (making) the state directory `dir`.
    pub fn open(dir: &Path) -> Result<State, AgentError> {
        for sub in ["generations", "activations"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(AgentError::io("cannot create", &path))?;
        }
        Ok(State::at(dir))
    }

    /// The state directory `dir` as it is, for a command that only reads it: one that does not
    /// exist holds no generation, and nothing is made.
    pub fn at(dir: &Path) -> State {
        State {
            dir: dir.to_path_buf(),
        }
    }

    fn generation_path(&self, number: u64) -> PathBuf {
        self.dir.join("generations").join(format!("{number}.json"))
    }

    /// Every generation, oldest first.
    pub fn generations(&self) -> Result<Vec<GenerationRecord>, AgentError> {
        let dir = self.dir.join("generations");
        let listing = match fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(AgentError::io("cannot read", &dir)(e)),
        };
        let mut numbers: Vec<u64> = listing
            .filter_map(|i| i.ok())
            .filter_map(|i| i.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
            .collect();
        numbers.sort_unstable();
        numbers.into_iter().map(|n| self.generation(n)).collect()
    }

    /// Generation `number`.
    pub fn generation(&self, number: u64) -> Result<GenerationRecord, AgentError> {
        let path = self.generation_path(number);
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => AgentError(format!("the host has no generation {number}")),
            _ => AgentError::io("cannot read", &path)(e),
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| AgentError(format!("`{}` is damaged: {e}", path.display())))
    }

    fn write_generation(&self, record: &GenerationRecord) -> Result<(), AgentError> {
        write_atomic(
            &self.generation_path(record.number),
            serde_json::to_string_pretty(record)
                .expect("a record serialises")
                .as_bytes(),
        )
    }

    /// The number of the current generation.
    pub fn current(&self) -> Result<Option<u64>, AgentError> {
        let link = self.dir.join("current");
        match fs::read_link(&link) {
            Ok(target) => target
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse().ok())
                .map(Some)
                .ok_or_else(|| AgentError(format!("`{}` points at no generation", link.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::io("cannot read", &link)(e)),
        }
    }

    /// Points `current` at generation `number` (or nowhere), with one rename.
    fn switch(&self, number: Option<u64>) -> Result<(), AgentError> {
        let link = self.dir.join("current");
        match number {
            Some(number) => {
                let tmp = self.dir.join(".current.tmp");
                let _ = fs::remove_file(&tmp);
                symlink(format!("generations/{number}.json"), &tmp)
                    .map_err(AgentError::io("cannot create", &tmp))?;
                fs::rename(&tmp, &link).map_err(AgentError::io("cannot replace", &link))?;
            }
            None => match fs::remove_file(&link) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(AgentError::io("cannot remove", &link)(e));
                }
                _ => {}
            },
        }
        sync_dir(&self.dir)
    }

    fn lock(&self) -> Result<fs::File, AgentError> {
        let path = self.dir.join("lock");
        let file = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(AgentError::io("cannot open", &path))?;
        file.lock().map_err(AgentError::io("cannot lock", &path))?;
        Ok(file)
    }
}

/// Writes `bytes` beside `path` under a name of this process's own, syncs, and renames it over.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    let mut file = fs::File::create(&tmp).map_err(AgentError::io("cannot create", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(AgentError::io("cannot write", &tmp))?;
    fs::rename(&tmp, path).map_err(AgentError::io("cannot replace", path))?;
    sync_dir(path.parent().unwrap_or(Path::new("/")))
}

fn sync_dir(dir: &Path) -> Result<(), AgentError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(AgentError::io("cannot sync", dir))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A system entry and the store directory it is in.
#[derive(Debug, Clone)]
pub struct Sys {
    /// The store directory.
    pub dir: PathBuf,
    /// The system entry.
    pub entry: EntryName,
}

impl Sys {
    /// The system of `record`, in the store it names (`store` for records that name none).
    pub fn of(record: &GenerationRecord, store: &Store) -> Sys {
        Sys {
            dir: match record.store.as_os_str().is_empty() {
                true => store.dir().to_path_buf(),
                false => record.store.clone(),
            },
            entry: record.system.clone(),
        }
    }

    fn content(&self) -> PathBuf {
        self.dir.join(self.entry.as_str()).join("content")
    }
}

/// The manifest of `system`.
pub fn read_manifest(system: &Sys) -> Result<Manifest, AgentError> {
    let path = system.content().join(manifest::FILE);
    let bytes = fs::read(&path).map_err(AgentError::io("cannot read", &path))?;
    Manifest::parse(&bytes).map_err(|e| {
        AgentError(format!(
            "the manifest of `{}` is not valid: {e}",
            system.entry
        ))
    })
}

/// `probe`: which of `wanted` the store lacks, and the current generation with its manifest.
pub fn probe(store: &Store, state: &State, wanted: &[EntryName]) -> Result<Probe, AgentError> {
    let missing = wanted
        .iter()
        .filter(|e| !store.contains(e))
        .cloned()
        .collect();
    let current = match state.current()? {
        Some(n) => Some(state.generation(n)?),
        None => None,
    };
    let manifest = match &current {
        Some(record) => {
            let system = Sys::of(record, store);
            system
                .content()
                .exists()
                .then(|| read_manifest(&system))
                .transpose()?
        }
        None => None,
    };
    Ok(Probe {
        missing,
        current,
        manifest,
    })
}

/// `adopt`: installs the agent binary uploaded to `file` as entry `entry`, if its digest is the
/// one `meta` records.
pub fn adopt(store: &Store, entry: &EntryName, meta: &str, file: &Path) -> Result<(), AgentError> {
    let meta = Meta::parse(meta.as_bytes(), &store.entry_path(entry).join("meta.yaml"))
        .map_err(|e| AgentError(e.to_string()))?;
    let lock = KeyLock::acquire(store, entry.hash())?;
    if store.contains(entry) {
        return keep_pending(store, std::slice::from_ref(entry));
    }
    let staging = Staging::new(store, &lock, entry.clone())?;
    // Moved, not copied: the upload is this agent's own file, and a second copy of a binary of
    // tens of megabytes is what fills a small host's disk. A state directory on another file
    // system than the store's gets a copy.
    match fs::rename(file, staging.content_path()) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            fs::copy(file, staging.content_path()).map_err(AgentError::io("cannot copy", file))?;
        }
        moved => moved.map_err(AgentError::io("cannot move", file))?,
    }
    match staging.commit_fetched(meta)? {
        // Durable before a generation names it (`add_root` syncs first).
        Committed::Installed(_) => keep_pending(store, std::slice::from_ref(entry)),
        Committed::Mismatch(m) => Err(AgentError(format!(
            "the uploaded agent hashes to {}, not {}; nothing was installed",
            m.got, m.expected
        ))),
    }
}

/// `from-delta`: writes to `file` the agent binary that the change on standard input
/// ([`super::delta`]) makes of entry `base`, an agent in this host's store; `adopt` then
/// installs it, verified by its digest. `file` is the upload's file, made by the upload's script
/// in the state directory; it is opened without following a link.
pub fn from_delta(store: &Store, base: &EntryName, file: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::OpenOptionsExt;
    if !store.contains(base) {
        return Err(AgentError(format!(
            "the host's store has no entry {base} to make the agent from"
        )));
    }
    let base_path = store.content_path(base);
    let old = fs::read(&base_path).map_err(AgentError::io("cannot read", &base_path))?;
    let mut out = io::BufWriter::new(
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(file)
            .map_err(AgentError::io("cannot open", file))?,
    );
    super::delta::apply(&old, standard_input()?, &mut out)
        .and_then(|_| out.flush())
        .map_err(|e| AgentError(format!("cannot make the agent from {base}: {e}")))
}

/// Standard input, failing once nothing arrives for [`IDLE`].
fn standard_input() -> Result<IdleLimited, AgentError> {
    use std::os::fd::AsFd;
    let stdin = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| AgentError(format!("cannot read standard input: {e}")))?;
    Ok(IdleLimited(fs::File::from(stdin)))
}

/// How long `receive` waits for the next bytes before it takes the connection for gone.
const IDLE: Duration = Duration::from_secs(20);

/// Standard input that fails once nothing arrives for [`IDLE`]: sshd may not notice for hours
/// that a controller's connection died, and a receiver waiting on it would keep its staging
/// and its entry's lock, and so stop the next deploy.
struct IdleLimited(fs::File);

impl Read for IdleLimited {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(IDLE.as_millis() as i32)
            .expect("the idle limit fits a poll timeout");
        loop {
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "nothing arrived for {} s; the controller's connection is gone",
                            IDLE.as_secs()
                        ),
                    ));
                }
                Ok(_) => return self.0.read(buf),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// `receive`: installs the entries of the stream on standard input, printing each, and keeps
/// them from `gc` until an activation names them ([`keep_pending`]), those of a cut stream too.
pub fn receive(store: &Store) -> Result<(), AgentError> {
    let mut input = io::BufReader::with_capacity(1 << 20, standard_input()?);
    let mut out = io::stdout().lock();
    let mut installed = Vec::new();
    let received = archive::receive(store, &mut input, |entry| {
        let _ = writeln!(out, "installed {entry}");
        let _ = out.flush();
        installed.push(entry.clone());
    });
    // What a cut stream installed is kept too, for the rerun; its error is the one said.
    let kept = keep_pending(store, &installed);
    received?;
    kept
}

/// The roots that keep what a deploy sent from `gc` until its activation names it:
/// `machine-pending-<hash>`, one per entry. A host's `gc` needs the store to itself, so it
/// cannot run while `receive` or `adopt` has it open; these roots carry that over to the
/// activation, a later process.
const PENDING: &str = "machine-pending-";

/// How long `gc` keeps what a deploy sent and no activation named: a deploy cut off between
/// its copy and its activation leaves such entries, and a deploy takes minutes, not a day.
const PENDING_KEPT: Duration = Duration::from_secs(24 * 60 * 60);

fn pending_root(entry: &EntryName) -> String {
    format!("{PENDING}{}", entry.hash())
}

/// Keeps `entries`, installed by a deploy, from `gc` until an activation names them or
/// [`PENDING_KEPT`] passes.
fn keep_pending(store: &Store, entries: &[EntryName]) -> Result<(), AgentError> {
    for entry in entries {
        store.add_root(&pending_root(entry), entry)?;
    }
    Ok(())
}

/// What `gc` on a host deleted (or, in a dry run, would delete).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Collected {
    /// The entries with their sizes in bytes.
    pub dead: Vec<(EntryName, u64)>,
    /// Their bytes.
    pub bytes: u64,
    /// The entries kept.
    pub live: usize,
    /// Entries a deploy sent and has not activated yet, kept.
    pub pending: usize,
    /// Entries a deploy sent longer than [`PENDING_KEPT`] ago and no activation named, let go.
    pub expired: usize,
    /// Whether nothing was deleted.
    pub dry_run: bool,
}

/// `gc`: deletes the entries of the host's store that no generation needs and no deploy under
/// way sent ([`keep_pending`]); waits while another process (a deploy's copy, an activation)
/// has the store open.
pub fn gc(store: &Store, dry_run: bool, wait: Option<Duration>) -> Result<Collected, AgentError> {
    let now = SystemTime::now();
    let pending = std::cell::Cell::new(0);
    let expired = |root: &crate::store::Root| {
        if !root.name.starts_with(PENDING) {
            return false;
        }
        let old = root
            .made
            .and_then(|made| now.duration_since(made).ok())
            .is_some_and(|age| age > PENDING_KEPT);
        if !old {
            pending.set(pending.get() + 1);
        }
        old
    };
    // A local machine's store is the controller's own, whose setting says whether to keep
    // build inputs; a host's store has the default (none) and no builds.
    let keep_build_inputs = store.settings()?.keep_build_inputs;
    let report = store.gc_expiring(
        dry_run,
        keep_build_inputs,
        &expired,
        || log("waiting for the store: a deploy or an activation has it open"),
        wait,
    )?;
    Ok(Collected {
        dead: report.dead,
        bytes: report.bytes,
        live: report.live,
        pending: pending.get(),
        expired: report.expired_roots.len(),
        dry_run,
    })
}

/// Which generations `delete-generations` deletes: those named, those older than `older_than`
/// and all but the newest `keep`, as a program's profile selects them.
#[derive(Debug, Clone, Default)]
pub struct Doomed {
    /// Generation numbers.
    pub numbers: Vec<u64>,
    /// An age in seconds, by the host's clock.
    pub older_than: Option<u64>,
    /// How many of the newest to keep.
    pub keep: Option<usize>,
}

impl Doomed {
    /// The agent's arguments that select them.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = self.numbers.iter().map(u64::to_string).collect();
        if let Some(seconds) = self.older_than {
            args.extend(["--older-than".into(), seconds.to_string()]);
        }
        if let Some(keep) = self.keep {
            args.extend(["--keep".into(), keep.to_string()]);
        }
        args
    }
}

/// Each generation's number and time, as [`crate::store::generations_to_delete`] selects from.
pub(crate) fn dated(generations: &[GenerationRecord]) -> Vec<(u64, SystemTime)> {
    generations
        .iter()
        .map(|g| (g.number, UNIX_EPOCH + Duration::from_secs(g.created)))
        .collect()
}

/// The number the next generation gets, after `generations` (in their order).
pub(crate) fn next_number(generations: &[GenerationRecord]) -> u64 {
    generations.last().map_or(0, |g| g.number) + 1
}

/// `delete-generations`: deletes the generations `doomed` selects and their roots, so that `gc`
/// can free what only they kept; none if one named cannot be deleted. The current generation
/// and the one an activation cut off goes back to are refused when named, and left out of what
/// the age and count select. Returns the numbers deleted.
pub fn delete_generations(
    store: &Store,
    state: &State,
    doomed: &Doomed,
) -> Result<Vec<u64>, AgentError> {
    let _lock = state.lock()?;
    let current = state.current()?;
    let generations = state.generations()?;
    // An activation cut off left its journal; the next one goes back to the journal's `from`
    // first, and needs it.
    let going_back_to = Journal::read(state)?.and_then(|journal| journal.from);
    for &number in &doomed.numbers {
        if current == Some(number) {
            return Err(AgentError(format!(
                "generation {number} is the one the host runs and cannot be deleted; \
                 `rollback --to` another generation, or `apply`, first"
            )));
        }
        if going_back_to == Some(number) {
            return Err(AgentError(format!(
                "generation {number} is the one an activation that was cut off goes back to; \
                 the next `apply` or `rollback` goes back first"
            )));
        }
        state.generation(number)?;
    }
    let numbers = crate::store::generations_to_delete(
        &dated(&generations),
        current,
        &doomed.numbers,
        doomed.older_than.map(Duration::from_secs),
        doomed.keep,
        SystemTime::now(),
    );
    let mut deleted = Vec::new();
    for record in generations.iter().filter(|g| numbers.contains(&g.number)) {
        if going_back_to == Some(record.number) {
            continue;
        }
        // The record goes first: a crash between the two leaves a root without a record,
        // which keeps its system for nothing, not a record whose system `gc` took.
        let path = state.generation_path(record.number);
        fs::remove_file(&path).map_err(AgentError::io("cannot delete", &path))?;
        sync_dir(&state.dir.join("generations"))?;
        let system = Sys::of(record, store);
        let root = format!("machine-generation-{}", record.number);
        match system.dir == store.dir() {
            true => store.remove_root(&root)?,
            // A store at another path, deployed to from another controller's store.
            false if system.dir.is_dir() => Store::open(&system.dir)?.remove_root(&root)?,
            false => {}
        }
        deleted.push(record.number);
    }
    Ok(deleted)
}

/// What the controller asks an activation to record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The system entry to activate; none to roll back to `to`.
    pub system: Option<EntryName>,
    /// The generation to go back to (`rollback`).
    pub to: Option<u64>,
    /// Who asks.
    pub operator: String,
    /// The program's source revision.
    pub revision: Option<String>,
    /// The plan's digest.
    pub plan: String,
    /// How many seconds the activated generation waits for the controller's confirmation,
    /// sent over a new connection, before the host goes back to the previous one by itself;
    /// none to keep it unconfirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<u64>,
}

/// What `follow` prints when the activation waits for the controller's confirmation.
pub const AWAITING_CONFIRMATION: &str = "awaiting-confirmation";

/// An activation's id is made by `activate`: digits and `-`.
pub fn check_id(id: &str) -> Result<(), AgentError> {
    match !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        true => Ok(()),
        false => Err(AgentError(format!("`{id}` is not an activation id"))),
    }
}

fn activation_file(state: &State, id: &str, suffix: &str) -> PathBuf {
    state.dir.join("activations").join(format!("{id}.{suffix}"))
}

/// `confirm`: the controller reached the host over a new connection after activation `id`
/// and its health checks; the generation stays. Fails if the activation no longer waits (its
/// time ran out and it went back, or it never asked).
pub fn confirm(state: &State, id: &str) -> Result<(), AgentError> {
    check_id(id)?;
    let pending = activation_file(state, id, "pending");
    // One rename decides between this confirmation and the activator's deadline.
    match fs::rename(&pending, activation_file(state, id, "confirmed")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(AgentError(
            match activation_file(state, id, "expired").exists() {
                true => format!(
                    "activation {id} was not confirmed in time and went back to the previous \
                     generation"
                ),
                false => format!("activation {id} does not wait for a confirmation"),
            },
        )),
        Err(e) => Err(AgentError(format!("cannot confirm activation {id}: {e}"))),
    }
}

/// Waits up to `seconds` for [`confirm`]; an error when none came.
fn await_confirmation(state: &State, id: &str, seconds: u64) -> Result<(), AgentError> {
    let pending = activation_file(state, id, "pending");
    let confirmed = activation_file(state, id, "confirmed");
    write_atomic(&pending, seconds.to_string().as_bytes())?;
    log(&format!(
        "waiting {seconds} s for the controller to confirm over a new connection"
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        if confirmed.exists() {
            log("confirmed by the controller");
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            match fs::rename(&pending, activation_file(state, id, "expired")) {
                Ok(()) => {
                    return Err(AgentError(format!(
                        "the controller did not confirm within {seconds} s over a new \
                         connection (the change may have cut it off: SSH, the network or a \
                         firewall)"
                    )));
                }
                // The confirmation won the race.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(AgentError(format!(
                        "cannot end the wait for confirmation: {e}"
                    )));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the manifest's health checks, logging each.
fn run_checks(manifest: &Manifest) -> Result<(), AgentError> {
    for check in &manifest.checks {
        log(&format!("health check: {}", check.describe()));
        check.run(log).map_err(|e| {
            AgentError(match &check.unit {
                Some(unit) => match inactive(unit) {
                    Some(state) => format!("{unit}: {e}; the unit is not active: {state}"),
                    None => format!("{unit}: {e}"),
                },
                None => e,
            })
        })?;
    }
    Ok(())
}

/// `activate`: starts the activation detached from this session (it survives a dropped
/// connection), then follows its log to standard output until its outcome is known, which is
/// printed last as `outcome <json>`.
pub fn activate(store: &Store, state: &State, request: &Request) -> Result<(), AgentError> {
    let id = format!(
        "{}-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        std::process::id()
    );
    let log_path = state.dir.join("activations").join(format!("{id}.log"));
    let log = fs::File::create(&log_path).map_err(AgentError::io("cannot create", &log_path))?;
    let exe =
        std::env::current_exe().map_err(|e| AgentError(format!("cannot find myself: {e}")))?;
    // Secret values come on standard input; they go on to the activator through a pipe and
    // are never written to disk here.
    let mut secrets = Vec::new();
    io::stdin()
        .lock()
        .take(SECRETS_LIMIT + 1)
        .read_to_end(&mut secrets)
        .map_err(|e| AgentError(format!("cannot read the secrets: {e}")))?;
    if secrets.len() as u64 > SECRETS_LIMIT {
        return Err(AgentError(format!(
            "the secrets are more than {SECRETS_LIMIT} bytes"
        )));
    }
    let mut command = Command::new(exe);
    command
        .args(["__agent", "--store"])
        .arg(store.dir())
        .arg("--state")
        .arg(&state.dir)
        .args(["run-activation", "--id", &id, "--request"])
        .arg(serde_json::to_string(request).expect("a request serialises"))
        .stdin(Stdio::piped())
        .stdout(
            log.try_clone()
                .map_err(AgentError::io("cannot open", &log_path))?,
        )
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it makes the activator a session of its own, so
    // the end of the SSH session (SIGHUP to its process group) does not reach it.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
    }
    let mut child = command
        .spawn()
        .map_err(|e| AgentError(format!("cannot start the activator: {e}")))?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(&secrets)
            .map_err(|e| AgentError(format!("cannot hand the activator its secrets: {e}")))?;
    }
    let pid_path = state.dir.join("activations").join(format!("{id}.pid"));
    write_atomic(&pid_path, child.id().to_string().as_bytes())?;
    {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "activation {id}");
        let _ = out.flush();
    }
    follow(state, &id)
}

/// `wait`: follows activation `id` to its outcome, as `activate` does.
pub fn follow(state: &State, id: &str) -> Result<(), AgentError> {
    check_id(id)?;
    let log_path = state.dir.join("activations").join(format!("{id}.log"));
    let outcome_path = state.dir.join("activations").join(format!("{id}.json"));
    let mut log = fs::File::open(&log_path).map_err(AgentError::io("cannot open", &log_path))?;
    let mut out = io::stdout().lock();
    let mut buffer = Vec::new();
    loop {
        let done = outcome_path.exists();
        buffer.clear();
        log.read_to_end(&mut buffer)
            .map_err(AgentError::io("cannot read", &log_path))?;
        if !buffer.is_empty() {
            out.write_all(&buffer)
                .and_then(|()| out.flush())
                .map_err(|e| AgentError(format!("cannot write: {e}")))?;
        }
        if !done && activation_file(state, id, "pending").exists() {
            writeln!(out, "{AWAITING_CONFIRMATION}")
                .and_then(|()| out.flush())
                .map_err(|e| AgentError(format!("cannot write: {e}")))?;
            return Ok(());
        }
        if done {
            let outcome = fs::read_to_string(&outcome_path)
                .map_err(AgentError::io("cannot read", &outcome_path))?;
            writeln!(out, "outcome {}", outcome.trim())
                .map_err(|e| AgentError(format!("cannot write: {e}")))?;
            return Ok(());
        }
        if !activator_alive(state, id) && !outcome_path.exists() {
            let outcome = Outcome {
                id: id.to_string(),
                result: "failed".into(),
                generation: state.current()?,
                from: None,
                error: Some(format!(
                    "the activator of {id} ended without an outcome (it was killed, or the host \
                     restarted); the next activation takes the host back to the generation it \
                     was on before"
                )),
                changes: None,
                repaired: Vec::new(),
            };
            writeln!(
                out,
                "outcome {}",
                serde_json::to_string(&outcome).expect("an outcome serialises")
            )
            .map_err(|e| AgentError(format!("cannot write: {e}")))?;
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the activator of `id` still runs: its pid's command line names the id (a pid reused
/// after a reboot, or a zombie, does not).
fn activator_alive(state: &State, id: &str) -> bool {
    let pid_path = state.dir.join("activations").join(format!("{id}.pid"));
    let Ok(pid) = fs::read_to_string(&pid_path) else {
        // Written right after the activator starts; until then it is starting, unless its log
        // is older than a start can take.
        let log_path = state.dir.join("activations").join(format!("{id}.log"));
        return fs::metadata(&log_path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(30));
    };
    fs::read(format!("/proc/{}/cmdline", pid.trim()))
        .is_ok_and(|cmdline| cmdline.windows(id.len()).any(|w| w == id.as_bytes()))
}

/// The detached activator: takes the host's lock, finishes an activation a killed activator
/// left, activates, and writes the outcome.
pub fn run_activation(store: &Store, state: &State, id: &str, request: &Request) -> i32 {
    // The session that started it may end at any moment.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGHUP,
            nix::sys::signal::SigHandler::SigIgn,
        );
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        );
    }
    let mut bundle = Vec::new();
    let secrets = io::stdin()
        .lock()
        .take(SECRETS_LIMIT + 1)
        .read_to_end(&mut bundle)
        .map_err(|e| AgentError(format!("cannot read the secrets: {e}")))
        .and_then(|_| secret::Values::decode(&bundle).map_err(AgentError));
    let outcome = match state.lock() {
        Ok(_lock) => {
            let outcome = secrets.and_then(|secrets| {
                resume(store, state)?;
                activate_locked(store, state, id, request, &secrets)
            });
            match outcome {
                Ok(outcome) => outcome,
                Err(e) => Outcome {
                    id: id.to_string(),
                    result: "failed".into(),
                    generation: state.current().ok().flatten(),
                    from: None,
                    error: Some(e.0),
                    changes: None,
                    repaired: Vec::new(),
                },
            }
        }
        Err(e) => Outcome {
            id: id.to_string(),
            result: "failed".into(),
            generation: None,
            from: None,
            error: Some(e.0),
            changes: None,
            repaired: Vec::new(),
        },
    };
    log(&format!("outcome: {}", outcome.result));
    let path = state.dir.join("activations").join(format!("{id}.json"));
    let written = write_atomic(
        &path,
        serde_json::to_string(&outcome)
            .expect("an outcome serialises")
            .as_bytes(),
    );
    if let Err(e) = prune_activations(state, KEPT_ACTIVATIONS) {
        log(&format!(
            "cannot remove the files of old activations: {}",
            e.0
        ));
    }
    match written {
        Ok(()) => 0,
        Err(e) => {
            log(&e.0);
            1
        }
    }
}

/// How many finished activations' files (log, outcome, pid, confirmation) a host keeps: every
/// apply activates, an unchanged host too, so without a bound a host applied every few minutes
/// gathers files without end.
const KEPT_ACTIVATIONS: usize = 100;

/// Removes the files of every finished activation (one with an outcome) but the newest `keep`;
/// an activation without an outcome (running, or its activator killed) keeps its files.
fn prune_activations(state: &State, keep: usize) -> Result<(), AgentError> {
    let dir = state.dir.join("activations");
    let mut ids: BTreeSet<(u128, u32, String)> = BTreeSet::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for item in fs::read_dir(&dir).map_err(AgentError::io("cannot read", &dir))? {
        let item = item.map_err(AgentError::io("cannot read", &dir))?;
        let name = item.file_name().to_string_lossy().into_owned();
        let Some((id, suffix)) = name.split_once('.') else {
            continue;
        };
        // `<nanoseconds>-<pid>`, as `activate` names them; anything else is not ours.
        let Some((nanos, pid)) = id
            .split_once('-')
            .and_then(|(n, p)| Some((n.parse::<u128>().ok()?, p.parse::<u32>().ok()?)))
        else {
            continue;
        };
        if suffix == "json" {
            finished.insert(id.to_string());
        }
        ids.insert((nanos, pid, id.to_string()));
        files.push((id.to_string(), item.path()));
    }
    let doomed: BTreeSet<&String> = ids
        .iter()
        .map(|(_, _, id)| id)
        .filter(|id| finished.contains(*id))
        .rev()
        .skip(keep)
        .collect();
    for (id, path) in &files {
        if doomed.contains(id) {
            fs::remove_file(path).map_err(AgentError::io("cannot remove", path))?;
        }
    }
    Ok(())
}

/// A line of the activation's log: standard error, which is the log file for the detached
/// activator and never the JSON a command prints on standard output.
fn log(line: &str) {
    let mut out = io::stderr().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The activation in progress, written before the first change and removed after the last.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    /// The generation being activated.
    to: u64,
    /// The generation before it.
    from: Option<u64>,
}

impl Journal {
    fn path(state: &State) -> PathBuf {
        state.dir.join("journal.json")
    }

    /// The journal an activation cut off left, if any.
    fn read(state: &State) -> Result<Option<Journal>, AgentError> {
        let path = Journal::path(state);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| AgentError(format!("`{}` is damaged: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::io("cannot read", &path)(e)),
        }
    }
}

/// Finishes what a killed activator left: the host goes back to the generation it was on
/// before, so it is never left between two.
fn resume(store: &Store, state: &State) -> Result<(), AgentError> {
    let Some(journal) = Journal::read(state)? else {
        return Ok(());
    };
    let path = Journal::path(state);
    log(&format!(
        "an activation of generation {} was interrupted; returning to {}",
        journal.to,
        journal.from.map_or("none".to_string(), |n| n.to_string())
    ));
    let new_system = Sys::of(&state.generation(journal.to)?, store);
    let new = read_manifest(&new_system)?;
    let (old_system, old) = match journal.from {
        Some(n) => {
            let system = Sys::of(&state.generation(n)?, store);
            let manifest = read_manifest(&system)?;
            (system, Some(manifest))
        }
        None => (new_system, None),
    };
    converge(
        &old_system,
        &empty_or(old.as_ref(), &new),
        Some(&new),
        true,
        None,
    )?;
    state.switch(journal.from)?;
    mark(state, journal.to, "rolled-back")?;
    fs::remove_file(&path).map_err(AgentError::io("cannot remove", &path))?;
    Ok(())
}

fn mark(state: &State, number: u64, status: &str) -> Result<(), AgentError> {
    let mut record = state.generation(number)?;
    record.status = status.to_string();
    state.write_generation(&record)
}

/// `old`, or a manifest with nothing in it (what a host had before its first activation).
fn empty_or(old: Option<&Manifest>, like: &Manifest) -> Manifest {
    old.cloned().unwrap_or_else(|| Manifest::empty_like(like))
}

fn activate_locked(
    store: &Store,
    state: &State,
    id: &str,
    request: &Request,
    secrets: &secret::Values,
) -> Result<Outcome, AgentError> {
    let previous = state.current()?;
    let (old_system, old) = match previous {
        Some(n) => {
            let system = Sys::of(&state.generation(n)?, store);
            let manifest = read_manifest(&system)?;
            (Some(system), Some(manifest))
        }
        None => (None, None),
    };
    let system = match (&request.system, request.to) {
        (Some(entry), _) => Sys {
            dir: store.dir().to_path_buf(),
            entry: entry.clone(),
        },
        (None, Some(to)) => Sys::of(&state.generation(to)?, store),
        (None, None) => {
            let current = previous.unwrap_or(0);
            match state
                .generations()?
                .into_iter()
                .rfind(|g| g.number < current && g.status == "active")
            {
                Some(g) => Sys::of(&g, store),
                None => {
                    return Err(AgentError(
                        "there is no earlier generation to roll back to".into(),
                    ));
                }
            }
        }
    };
    // Every entry of the closure must be here before anything changes.
    let system_store = match system.dir == store.dir() {
        true => None,
        false => Some(Store::open(&system.dir)?),
    };
    let system_store = system_store.as_ref().unwrap_or(store);
    let closure = system_store.closure([system.entry.clone()])?;
    if let Some(missing) = closure.iter().find(|e| !system_store.contains(e)) {
        return Err(AgentError(format!(
            "entry `{missing}` of the system's closure is not in the host's store"
        )));
    }
    let new = read_manifest(&system)?;
    let changes = Changes::between(old.as_ref(), &new);
    if let Some(old_system) = &old_system
        && old_system.entry == system.entry
        && old_system.dir == system.dir
    {
        let n = previous.expect("a current system has a generation");
        log(&format!("generation {n} is the system already"));
        let mut repaired = Vec::new();
        if request.system.is_some() {
            // Secrets are written on every apply: tmpfs is empty after a restart, and a value
            // may have changed.
            let changed = place_secrets(&new, secrets)?;
            restart_for_secrets(&new, &changed, &BTreeSet::new())?;
            // And what drifted from the system is put back, as its activation would: an apply
            // makes the host match its program, whatever was changed on it by hand since.
            repaired = repair_locked(store, state)?;
            if let Some(left) = repaired.iter().find(|d| !d.repaired) {
                return Err(AgentError(format!(
                    "after putting back what drifted from generation {n}, {} still differs: {}",
                    left.subject, left.difference
                )));
            }
        }
        return Ok(Outcome {
            id: id.to_string(),
            result: "unchanged".into(),
            generation: Some(n),
            from: previous,
            error: None,
            changes: Some(changes),
            repaired,
        });
    }
    let number = next_number(&state.generations()?);
    state.write_generation(&GenerationRecord {
        number,
        system: system.entry.clone(),
        store: system.dir.clone(),
        created: now(),
        operator: request.operator.clone(),
        revision: request.revision.clone(),
        plan: request.plan.clone(),
        status: "active".into(),
    })?;
    system_store.add_root(&format!("machine-generation-{number}"), &system.entry)?;
    // What the deploy sent is the generation's now.
    for entry in &closure {
        system_store.remove_root(&pending_root(entry))?;
    }
    let journal = Journal::path(state);
    write_atomic(
        &journal,
        serde_json::to_string(&Journal {
            to: number,
            from: previous,
        })
        .expect("a journal serialises")
        .as_bytes(),
    )?;
    state.switch(Some(number))?;
    log(&format!(
        "generation {number}: activating `{}`",
        system.entry
    ));
    // Going back to a generation by number brings no values: its secrets stay as they are.
    let values = request.system.is_some().then_some(secrets);
    let result = converge(&system, &new, old.as_ref(), false, values)
        .and_then(|()| run_checks(&new))
        .and_then(|()| match request.confirm {
            Some(seconds) => await_confirmation(state, id, seconds),
            None => Ok(()),
        });
    let outcome = match result {
        Ok(()) => {
            // Secrets the new generation no longer has go once it is confirmed: until then a
            // rollback may need them.
            if let Some(old) = &old {
                for path in old.secrets.keys().filter(|p| !new.secrets.contains_key(*p)) {
                    remove(Path::new(path))?;
                }
            }
            Outcome {
                id: id.to_string(),
                result: "activated".into(),
                generation: Some(number),
                from: previous,
                error: None,
                changes: Some(changes),
                repaired: Vec::new(),
            }
        }
        Err(e) => {
            log(&format!("activation failed: {}; rolling back", e.0));
            let back = old_system.as_ref().unwrap_or(&system);
            converge(back, &empty_or(old.as_ref(), &new), Some(&new), true, None).map_err(|r| {
                AgentError(format!("{}; and the rollback failed too: {}", e.0, r.0))
            })?;
            state.switch(previous)?;
            mark(state, number, "rolled-back")?;
            Outcome {
                id: id.to_string(),
                result: "rolled-back".into(),
                generation: previous,
                from: previous,
                error: Some(e.0),
                changes: None,
                repaired: Vec::new(),
            }
        }
    };
    fs::remove_file(&journal).map_err(AgentError::io("cannot remove", &journal))?;
    Ok(outcome)
}

/// Makes the host match `new`, coming from `old`: groups and users, units that go away
/// stopped, paths put in place (write beside, rename), paths no longer managed removed, units
/// reloaded by systemd, then enabled, started, restarted or reloaded as they changed, and
/// hooks run. With `force`, every unit that should run is started even if nothing changed
/// (a rollback or a repair).
pub fn converge(
    system: &Sys,
    new: &Manifest,
    old: Option<&Manifest>,
    force: bool,
    secrets: Option<&secret::Values>,
) -> Result<(), AgentError> {
    let changes = Changes::between(old, new);
    for (name, spec) in &new.groups {
        if !exists("group", name) {
            let mut args = vec!["groupadd".to_string()];
            if spec.system {
                args.push("--system".into());
            }
            if let Some(gid) = spec.gid {
                args.extend(["--gid".into(), gid.to_string()]);
            }
            args.push(name.clone());
            run(&args)?;
        }
    }
    for (name, spec) in &new.users {
        if !exists("passwd", name) {
            let mut args = vec!["useradd".to_string()];
            if spec.system {
                args.push("--system".into());
            }
            if let Some(uid) = spec.uid {
                args.extend(["--uid".into(), uid.to_string()]);
            }
            if spec.group == *name && !exists("group", name) {
                args.push("--user-group".into());
            } else {
                args.extend(["--gid".into(), spec.group.clone()]);
            }
            if !spec.groups.is_empty() {
                let groups: Vec<&str> = spec.groups.iter().map(String::as_str).collect();
                args.extend(["--groups".into(), groups.join(",")]);
            }
            match &spec.home {
                Some(home) => {
                    args.extend(["--home-dir".into(), home.clone(), "--create-home".into()])
                }
                None => args.push("--no-create-home".into()),
            }
            if let Some(shell) = &spec.shell {
                args.extend(["--shell".into(), shell.clone()]);
            }
            args.push(name.clone());
            run(&args)?;
        }
    }
    let old_units = old.map(|m| &m.units);
    for name in &changes.units_stopped {
        systemctl(&["stop", name])?;
    }
    if let Some(old_units) = old_units {
        for (name, unit) in old_units {
            if !unit.provided && unit.enable && new.units.get(name).is_none_or(|u| !u.enable) {
                systemctl(&["disable", name])?;
            }
        }
    }
    let mut units_changed = false;
    for (path, spec) in &new.paths {
        if place(system, path, spec)? && path.starts_with(UNIT_DIR) {
            units_changed = true;
        }
    }
    if let Some(old) = old {
        for path in old.paths.keys().rev() {
            if !new.paths.contains_key(path) {
                remove(Path::new(path))?;
                units_changed |= path.starts_with(UNIT_DIR);
            }
        }
    }
    if units_changed {
        systemctl(&["daemon-reload"])?;
    }
    // Before any unit starts: the units that read them need them.
    let secrets_changed = match secrets {
        Some(values) => place_secrets(new, values)?,
        None => BTreeSet::new(),
    };
    let mut started = Vec::new();
    // Provided units: restarted or reloaded when their triggers changed, nothing else.
    for name in changes
        .units_restarted
        .iter()
        .chain(&changes.units_reloaded)
    {
        if new.units.get(name).is_some_and(|u| !u.provided) {
            continue;
        }
        bounce(name, changes.units_reloaded.contains(name), "")?;
        started.push(name.clone());
    }
    for (name, unit) in &new.units {
        if unit.provided {
            continue;
        }
        if unit.enable && !check("systemctl", &["is-enabled", "--quiet", name]) {
            systemctl(&["enable", name])?;
        }
        if !unit.start {
            continue;
        }
        let active = check("systemctl", &["is-active", "--quiet", name]);
        if changes.units_restarted.contains(name)
            || (force
                && active
                && changes
                    .paths_changed
                    .iter()
                    .any(|p| p.starts_with(UNIT_DIR)))
        {
            log(&format!("restarting {name}"));
            unit_action("restart", name)?;
        } else if changes.units_reloaded.contains(name) {
            log(&format!("reloading {name}"));
            unit_action("reload-or-restart", name)?;
        } else if !active || changes.units_started.contains(name) {
            log(&format!("starting {name}"));
            unit_action("start", name)?;
        } else {
            continue;
        }
        started.push(name.clone());
    }
    let done: BTreeSet<String> = started.iter().cloned().collect();
    started.extend(restart_for_secrets(new, &secrets_changed, &done)?);
    // A unit with health checks is judged by them, which run next (not on the way back or in
    // a repair, which run none).
    started.retain(|name| force || !new.checks.iter().any(|c| c.unit.as_ref() == Some(name)));
    settle(&started)?;
    for hook in &new.hooks {
        log(&format!("running hook {}", hook.name));
        let status = Command::new("/bin/sh")
            .args(["-euc", &hook.script])
            .stdin(Stdio::null())
            .status()
            .map_err(|e| AgentError(format!("cannot run hook {}: {e}", hook.name)))?;
        if !status.success() {
            return Err(AgentError(format!("hook {} failed ({status})", hook.name)));
        }
    }
    Ok(())
}

/// Waits [`SETTLE`], then fails if a unit of `started` did not stay active.
fn settle(started: &[String]) -> Result<(), AgentError> {
    if !started.is_empty() {
        std::thread::sleep(SETTLE);
        for name in started {
            if let Some(state) = inactive(name) {
                return Err(AgentError(format!(
                    "unit {name} did not stay active after it was started: {state}"
                )));
            }
        }
    }
    Ok(())
}

/// `None` if unit `name` is active, else how it stands ([`unit_state::report`]).
fn inactive(name: &str) -> Option<String> {
    match check("systemctl", &["is-active", "--quiet", name]) {
        true => None,
        false => Some(unit_state::report(name)),
    }
}

/// `systemctl ACTION NAME` (start, restart, reload-or-restart); when it fails, the error says
/// how the unit stands, where systemd says why.
///
/// The unit's failed state is reset first, as NixOS's switch does: systemd refuses a sixth start
/// within 10 s (`StartLimitBurst=`, meant for a crashing service's automatic restarts), and a
/// few applies in a row, each restarting the unit, and a rollback's restart would otherwise
/// be refused — the rollback too, leaving the unit down.
fn unit_action(action: &str, name: &str) -> Result<(), AgentError> {
    // A unit that is not failed, or not loaded yet, has nothing to reset.
    check("systemctl", &["reset-failed", name]);
    systemctl(&[action, name]).map_err(|e| match unit_state::report(name) {
        state if state.is_empty() => e,
        state => AgentError(format!("{}; {state}", e.0)),
    })
}

/// Writes the manifest's secrets from `values` (root-only-writable directories are made on
/// the way), each only where it is on tmpfs; returns the paths whose value, owner or mode
/// changed.
fn place_secrets(
    manifest: &Manifest,
    values: &secret::Values,
) -> Result<BTreeSet<String>, AgentError> {
    let mut changed = BTreeSet::new();
    for (path, spec) in &manifest.secrets {
        let value = values.0.get(path).ok_or_else(|| {
            AgentError(format!(
                "the controller sent no value for secret {path}; `apply` reads and sends it"
            ))
        })?;
        let target = Path::new(path);
        let io = |e| AgentError::io("cannot write secret", target)(e);
        let parent = Parent::open(target, true)
            .map_err(io)?
            .expect("missing directories are made");
        if !parent.in_memory().map_err(io)? {
            return Err(AgentError(format!(
                "secret {path} would be written to disk: its directory is not on tmpfs; put \
                 it under /run"
            )));
        }
        let (uid, gid) = (user_id(&spec.owner)?, group_id(&spec.group)?);
        let same = parent.holds(value).map_err(io)?
            && parent
                .stat()
                .map_err(io)?
                .is_some_and(|f| f.uid == uid && f.gid == gid && f.mode == spec.mode);
        if !same {
            parent
                .put_file(&mut value.as_slice(), uid, gid, spec.mode)
                .map_err(io)?;
            log(&format!("secret {path} written"));
            changed.insert(path.clone());
        }
    }
    Ok(changed)
}

/// Restarts (or reloads) the started units that name a secret of `changed`, except those in
/// `done`; returns them.
fn restart_for_secrets(
    manifest: &Manifest,
    changed: &BTreeSet<String>,
    done: &BTreeSet<String>,
) -> Result<Vec<String>, AgentError> {
    let mut restarted = Vec::new();
    for (name, unit) in &manifest.units {
        if done.contains(name)
            || !(unit.start || unit.provided)
            || !unit.secrets.iter().any(|p| changed.contains(p))
        {
            continue;
        }
        bounce(name, unit.reload, ": a secret it reads changed")?;
        restarted.push(name.clone());
    }
    Ok(restarted)
}

/// Reloads unit `name` (if it can be, else restarts it) or restarts it, logging why.
fn bounce(name: &str, reload: bool, why: &str) -> Result<(), AgentError> {
    match reload {
        true => {
            log(&format!("reloading {name}{why}"));
            unit_action("reload-or-restart", name)
        }
        false => {
            log(&format!("restarting {name}{why}"));
            unit_action("restart", name)
        }
    }
}

fn exists(database: &str, name: &str) -> bool {
    check("getent", &[database, name])
}

fn check(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(args: &[String]) -> Result<(), AgentError> {
    let output = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| AgentError(format!("cannot run {}: {e}", args[0])))?;
    if !output.status.success() {
        // Not systemctl's pointers to commands to run on the host ("See \"systemctl status
        // ...\""): the error goes to a controller, and the host may be rolled back by then.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("See \""))
            .collect();
        return Err(AgentError(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            output.status,
            said.join("\n")
        )));
    }
    Ok(())
}

fn systemctl(args: &[&str]) -> Result<(), AgentError> {
    let mut all = vec!["systemctl".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    run(&all)
}

fn user_id(name: &str) -> Result<u32, AgentError> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
        .ok_or_else(|| AgentError(format!("the host has no user `{name}`")))
}

fn group_id(name: &str) -> Result<u32, AgentError> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| AgentError(format!("the host has no group `{name}`")))
}

/// Where the content of a file of `system` is in its store.
fn source_path(system: &Sys, source: &str) -> PathBuf {
    match source.strip_prefix("system:") {
        Some(rel) => system.content().join(rel),
        None => system.dir.join(source),
    }
}

/// What differs between the live `path` and `spec`; empty when it matches. Nothing on the
/// way is followed ([`Parent`]).
fn differences(path: &Path, spec: &PathSpec) -> Result<Vec<String>, AgentError> {
    let io = |e| AgentError::io("cannot inspect", path)(e);
    let Some(parent) = Parent::open(path, false).map_err(io)? else {
        return Ok(vec!["missing".into()]);
    };
    let Some(found) = parent.stat().map_err(io)? else {
        return Ok(vec!["missing".into()]);
    };
    let mut differences = Vec::new();
    match &spec.kind {
        PathKind::File { digest, size, .. } => {
            if found.kind != Kind::File {
                return Ok(vec!["not a regular file".into()]);
            }
            // The content alone: a mode that differs is said once, below.
            let got = parent.file_digest(spec.mode & 0o100 != 0).map_err(io)?;
            if got != *digest {
                differences.push(format!(
                    "content is {got} ({}), expected {digest} ({})",
                    crate::store::counted(found.size as usize, "byte", "bytes"),
                    crate::store::counted(*size as usize, "byte", "bytes")
                ));
            }
        }
        PathKind::Directory => {
            if found.kind != Kind::Dir {
                return Ok(vec!["not a directory".into()]);
            }
        }
        PathKind::Symlink { target } => {
            if found.kind != Kind::Symlink {
                return Ok(vec!["not a symlink".into()]);
            }
            let got = parent.link_target().map_err(io)?;
            if got != target.as_bytes() {
                differences.push(format!(
                    "points at `{}`, expected `{target}`",
                    String::from_utf8_lossy(&got)
                ));
            }
            return Ok(differences);
        }
    }
    let (uid, gid) = (user_id(&spec.owner)?, group_id(&spec.group)?);
    if found.uid != uid || found.gid != gid {
        differences.push(format!(
            "owner is {}:{}, expected {}:{}",
            found.uid, found.gid, spec.owner, spec.group
        ));
    }
    if found.mode != spec.mode {
        differences.push(format!(
            "mode is {:04o}, expected {:04o}",
            found.mode, spec.mode
        ));
    }
    Ok(differences)
}

/// Puts one managed path in place unless it matches already; returns whether it changed.
fn place(system: &Sys, path: &str, spec: &PathSpec) -> Result<bool, AgentError> {
    let target = Path::new(path);
    if differences(target, spec)?.is_empty() {
        return Ok(false);
    }
    let io = |e| AgentError::io("cannot put in place", target)(e);
    let parent = Parent::open(target, true)
        .map_err(io)?
        .expect("missing directories are made");
    match &spec.kind {
        PathKind::Directory => {
            let (uid, gid) = (user_id(&spec.owner)?, group_id(&spec.group)?);
            parent.put_directory(uid, gid, spec.mode).map_err(io)?;
        }
        PathKind::File { source, .. } => {
            let (uid, gid) = (user_id(&spec.owner)?, group_id(&spec.group)?);
            let from = source_path(system, source);
            let mut input = fs::File::open(&from).map_err(AgentError::io("cannot open", &from))?;
            parent
                .put_file(&mut input, uid, gid, spec.mode)
                .map_err(io)?;
        }
        PathKind::Symlink { target: to } => parent.put_symlink(to).map_err(io)?,
    }
    Ok(true)
}

/// Removes a path no longer managed; a directory only if it is empty.
fn remove(path: &Path) -> Result<(), AgentError> {
    let io = |e| AgentError::io("cannot remove", path)(e);
    match Parent::open(path, false) {
        Ok(Some(parent)) => parent.remove().map_err(io),
        // Behind a link the agent does not follow, nothing can be forjar's.
        Err(e) if hostpath::is_refusal(&e) => Ok(()),
        Ok(None) => Ok(()),
        Err(e) => Err(io(e)),
    }
}

/// `drift`: every difference between the live host and its current generation.
///
/// A host with no current generation (never activated, or its state removed) is an error: there
/// is nothing to compare it with, and "no drift" would say it is what forjar deployed.
pub fn drift(store: &Store, state: &State) -> Result<Vec<Drift>, AgentError> {
    let current = current_or_none_deployed(state)?;
    let system = Sys::of(&state.generation(current)?, store);
    let manifest = read_manifest(&system)?;
    let mut found = Vec::new();
    for name in manifest.groups.keys() {
        if !exists("group", name) {
            found.push(Drift::new(format!("group {name}"), "missing".into()));
        }
    }
    for name in manifest.users.keys() {
        if !exists("passwd", name) {
            found.push(Drift::new(format!("user {name}"), "missing".into()));
        }
    }
    for (path, spec) in &manifest.paths {
        for difference in differences(Path::new(path), spec)? {
            found.push(Drift::new(path.clone(), difference));
        }
    }
    for (path, spec) in &manifest.secrets {
        let parent = Parent::open(Path::new(path), false)
            .map_err(AgentError::io("cannot read", Path::new(path)))?;
        let live = match &parent {
            Some(parent) => parent
                .stat()
                .map_err(AgentError::io("cannot read", Path::new(path)))?,
            None => None,
        };
        let (uid, gid) = (user_id(&spec.owner)?, group_id(&spec.group)?);
        let difference = match live {
            None => "secret missing (tmpfs is empty after a restart); `apply` writes it again"
                .to_string(),
            Some(f) if f.kind != Kind::File => "secret is not a regular file".to_string(),
            Some(f) if (f.uid, f.gid) != (uid, gid) => format!(
                "secret owned by {}:{}, expected {}:{}",
                f.uid, f.gid, spec.owner, spec.group
            ),
            Some(f) if f.mode != spec.mode => {
                format!("secret mode is {:04o}, expected {:04o}", f.mode, spec.mode)
            }
            Some(_) => continue,
        };
        found.push(Drift::new(path.clone(), difference));
    }
    for (name, unit) in &manifest.units {
        if unit.enable && !check("systemctl", &["is-enabled", "--quiet", name]) {
            found.push(Drift::new(format!("unit {name}"), "not enabled".into()));
        }
        if unit.start && !check("systemctl", &["is-active", "--quiet", name]) {
            found.push(Drift::new(format!("unit {name}"), NOT_ACTIVE.into()));
        }
    }
    Ok(found)
}

/// The drift of a unit that should run and does not.
const NOT_ACTIVE: &str = "not active";

/// `drift --repair`: puts the live host back to its current generation; returns what differed,
/// each marked repaired unless it still differs (see [`repair_locked`]).
pub fn repair(store: &Store, state: &State) -> Result<Vec<Drift>, AgentError> {
    let _lock = state.lock()?;
    resume(store, state)?;
    repair_locked(store, state)
}

/// Puts back what drifted from the current generation, under the host's lock: paths, users,
/// groups and units as the generation's activation left them, and each unit whose file or a
/// file it restarts on was put back is restarted (or reloaded), as an activation that changed
/// the file would, since it may run what was there; then the health checks run. Returns the
/// drift found, each marked repaired unless it differs still; nothing is touched, and no
/// check run, where nothing drifted.
fn repair_locked(store: &Store, state: &State) -> Result<Vec<Drift>, AgentError> {
    let before = drift(store, state)?;
    if before.is_empty() {
        return Ok(before);
    }
    let current = current_or_none_deployed(state)?;
    let system = Sys::of(&state.generation(current)?, store);
    let manifest = read_manifest(&system)?;
    for d in &before {
        log(&format!("putting back {}: {}", d.subject, d.difference));
    }
    let put_back = |path: &str| before.iter().any(|d| d.subject == path);
    // A unit that was not running is started by the converge, with what is there now.
    let was_down = |name: &str| {
        before
            .iter()
            .any(|d| d.subject == format!("unit {name}") && d.difference == NOT_ACTIVE)
    };
    let bounce_after: Vec<(&String, bool)> = manifest
        .units
        .iter()
        .filter(|(name, unit)| {
            (unit.start || unit.provided)
                && !was_down(name)
                && (put_back(&Manifest::unit_path(name)) || unit.files.iter().any(|p| put_back(p)))
        })
        .map(|(name, unit)| (name, unit.reload))
        .collect();
    converge(&system, &manifest, Some(&manifest), true, None)?;
    let mut bounced = Vec::new();
    for (name, reload) in bounce_after {
        bounce(name, reload, ": a file it reads was put back")?;
        bounced.push(name.clone());
    }
    settle(&bounced)?;
    // As after an activation: what was put back must work.
    run_checks(&manifest)?;
    let after = drift(store, state)?;
    let mut found: Vec<Drift> = before
        .into_iter()
        .filter(|d| !after.contains(d))
        .map(|d| Drift {
            repaired: true,
            ..d
        })
        .collect();
    found.extend(after);
    Ok(found)
}

/// The current generation, or the error of a host on which none is.
fn current_or_none_deployed(state: &State) -> Result<u64, AgentError> {
    state.current()?.ok_or_else(|| {
        AgentError(format!(
            "no generation is current on this host (`{}` names none), so there is nothing to \
             compare it with or to restore; `apply` deploys one",
            state.dir.join("current").display()
        ))
    })
}

/// Reads entry names, one a line, from `input`.
pub fn read_names(input: impl BufRead) -> Result<Vec<EntryName>, AgentError> {
    let mut names = Vec::new();
    for line in input.lines() {
        let line = line.map_err(|e| AgentError(format!("cannot read the entry list: {e}")))?;
        if line.is_empty() {
            continue;
        }
        names.push(
            EntryName::parse(&line).map_err(|e| AgentError(format!("the entry list holds {e}")))?,
        );
    }
    Ok(names)
}

/// A digest, for records.
pub fn digest_text(text: &str) -> String {
    TreeDigest::from_bytes(*blake3::hash(text.as_bytes()).as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_and_repair_on_a_host_without_a_current_generation_say_so() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let state = State::open(&tmp.path().join("state")).unwrap();
        let error = drift(&store, &state).unwrap_err().to_string();
        assert!(
            error.contains("no generation is current on this host")
                && error.contains("`apply` deploys one"),
            "{error}"
        );
        let error = repair(&store, &state).unwrap_err().to_string();
        assert!(error.contains("no generation is current"), "{error}");
    }

    #[test]
    fn a_file_whose_mode_alone_changed_differs_in_its_mode_alone() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("server.py");
        fs::write(&path, b"print(1)\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap();
        let group = nix::unistd::Group::from_gid(nix::unistd::getgid())
            .unwrap()
            .unwrap();
        let spec = |bytes: &[u8]| PathSpec {
            kind: PathKind::File {
                source: String::new(),
                digest: crate::hash::file_digest(bytes, true),
                size: bytes.len() as u64,
            },
            owner: user.name.clone(),
            group: group.name.clone(),
            mode: 0o755,
        };
        // An executable whose `x` bits were taken: its content is what it was.
        assert_eq!(
            differences(&path, &spec(b"print(1)\n")).unwrap(),
            ["mode is 0644, expected 0755"]
        );
        let both = differences(&path, &spec(b"print(2)\n")).unwrap();
        assert!(
            both.len() == 2
                && both[0].starts_with("content is blake3:")
                && both[0].ends_with("(9 bytes)")
                && both[1] == "mode is 0644, expected 0755",
            "{both:?}"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(differences(&path, &spec(b"print(1)\n")).unwrap().is_empty());
    }

    /// An entry named `name` holding `text`, imported into `store`.
    fn entry(store: &Store, dir: &Path, name: &str, text: &str) -> EntryName {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        let name = crate::name::Name::new(name).unwrap();
        store.import_source(&path, &name).unwrap().entry
    }

    fn dead(collected: &Collected) -> Vec<&EntryName> {
        collected.dead.iter().map(|(entry, _)| entry).collect()
    }

    #[test]
    fn what_a_deploy_sent_is_kept_from_gc_until_a_day_has_passed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let sent = entry(&store, tmp.path(), "sent", "a system a deploy sent");
        let loose = entry(&store, tmp.path(), "loose", "nothing keeps this");
        keep_pending(&store, std::slice::from_ref(&sent)).unwrap();

        let dry = gc(&store, true, None).unwrap();
        assert_eq!((dead(&dry), dry.pending, dry.expired), (vec![&loose], 1, 0));
        assert!(store.contains(&loose), "a dry run deleted");
        let collected = gc(&store, false, None).unwrap();
        assert_eq!(dead(&collected), [&loose]);
        assert!(store.contains(&sent) && !store.contains(&loose));

        // A deploy cut off between its copy and its activation a day ago: let go.
        let root = store.dir().join(".roots").join(pending_root(&sent));
        let old = nix::sys::time::TimeSpec::new(
            (now() - PENDING_KEPT.as_secs() - 60).try_into().unwrap(),
            0,
        );
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &root,
            &old,
            &old,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        let dry = gc(&store, true, None).unwrap();
        assert_eq!((dead(&dry), dry.pending, dry.expired), (vec![&sent], 0, 1));
        assert!(root.symlink_metadata().is_ok() && store.contains(&sent));
        let collected = gc(&store, false, None).unwrap();
        assert_eq!(dead(&collected), [&sent]);
        assert!(root.symlink_metadata().is_err() && !store.contains(&sent));
    }

    #[test]
    fn deleting_generations_spares_the_current_one_and_the_one_a_cut_activation_goes_back_to() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let state = State::open(&tmp.path().join("state")).unwrap();
        let mut systems = Vec::new();
        for number in 1..=3 {
            let system = entry(&store, tmp.path(), "system", &format!("system {number}"));
            state
                .write_generation(&GenerationRecord {
                    number,
                    system: system.clone(),
                    store: PathBuf::new(),
                    created: now() - 3600 * (4 - number),
                    operator: "test".into(),
                    revision: None,
                    plan: String::new(),
                    status: "active".into(),
                })
                .unwrap();
            store
                .add_root(&format!("machine-generation-{number}"), &system)
                .unwrap();
            systems.push(system);
        }
        state.switch(Some(3)).unwrap();
        let named = |numbers: &[u64]| Doomed {
            numbers: numbers.to_vec(),
            ..Doomed::default()
        };
        let error = delete_generations(&store, &state, &named(&[1, 3]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("generation 3 is the one the host runs"),
            "{error}"
        );
        let error = delete_generations(&store, &state, &named(&[7]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("the host has no generation 7"), "{error}");
        assert_eq!(state.generations().unwrap().len(), 3, "a refusal deleted");

        // An activation of 3 cut off goes back to 2: it stays until that is done.
        let journal = state.dir.join("journal.json");
        fs::write(&journal, r#"{"to":3,"from":2}"#).unwrap();
        let error = delete_generations(&store, &state, &named(&[2]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("an activation that was cut off"), "{error}");
        let keep_one = Doomed {
            keep: Some(1),
            ..Doomed::default()
        };
        assert_eq!(delete_generations(&store, &state, &keep_one).unwrap(), [1]);
        fs::remove_file(&journal).unwrap();
        let older = Doomed {
            older_than: Some(1800),
            ..Doomed::default()
        };
        assert_eq!(delete_generations(&store, &state, &older).unwrap(), [2]);
        let left: Vec<u64> = state
            .generations()
            .unwrap()
            .iter()
            .map(|g| g.number)
            .collect();
        assert_eq!(left, [3]);
        assert!(
            delete_generations(&store, &state, &older)
                .unwrap()
                .is_empty()
        );

        // Their systems are garbage now; the current one's is not.
        let collected = gc(&store, false, None).unwrap();
        let mut garbage = vec![&systems[0], &systems[1]];
        garbage.sort();
        assert_eq!(dead(&collected), garbage);
        assert!(store.contains(&systems[2]));
    }

    #[test]
    fn a_host_keeps_the_files_of_its_newest_finished_activations_and_of_running_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let state = State::open(&tmp.path().join("state")).unwrap();
        let file = |id: &str, suffix: &str| activation_file(&state, id, suffix);
        // Ten finished ones, a second apart; the oldest has no outcome (its activator killed).
        let ids: Vec<String> = (0..11u128)
            .map(|i| {
                format!(
                    "{}-{}",
                    1_700_000_000_000_000_000 + i * 1_000_000_000,
                    40 + i
                )
            })
            .collect();
        for (i, id) in ids.iter().enumerate() {
            fs::write(file(id, "log"), "log").unwrap();
            fs::write(file(id, "pid"), "1").unwrap();
            if i > 0 {
                fs::write(file(id, "json"), "{}").unwrap();
            }
        }
        fs::write(state.dir.join("activations").join("notes.txt"), "mine").unwrap();
        prune_activations(&state, 3).unwrap();
        assert!(file(&ids[0], "log").exists(), "an unfinished one went");
        for id in &ids[1..8] {
            assert!(
                !file(id, "log").exists() && !file(id, "json").exists(),
                "{id} kept"
            );
        }
        for id in &ids[8..] {
            assert!(
                file(id, "log").exists() && file(id, "json").exists() && file(id, "pid").exists()
            );
        }
        assert!(state.dir.join("activations/notes.txt").exists());
    }

    #[test]
    fn a_state_directory_only_read_is_not_made() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let dir = tmp.path().join("state");
        let state = State::at(&dir);
        assert!(state.generations().unwrap().is_empty());
        assert_eq!(state.current().unwrap(), None);
        assert!(probe(&store, &state, &[]).unwrap().current.is_none());
        assert!(drift(&store, &state).is_err());
        assert!(!dir.exists(), "reading made the state directory");
    }
}
