//! The local executor: a build in forjar's sandbox on this machine, in four phases.
//!
//! [`Local::prepare`]: the inputs' closure is in the store -> a staging directory for each
//! output and a build directory. [`Prepared::run`]: the sandbox runs the builder, which writes
//! its outputs -> every declared output exists, nothing else, within the output cap. Then
//! [`Prepared::install`]: fixed-output digest check -> canonicalise, hash and reference scan in
//! one read, `meta.yaml`, and one rename per output into the store. `check` runs the first two
//! phases and compares instead of installing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::{BuildFailure, BuildJob, Context, Done, ExecError, Executor, JobEvent};
use crate::hash::{self, HashError, Needles};
use crate::request::{FixedOutput, HashMode, InputName};
use crate::sandbox::{self, BuildSpec, Outcome};
use crate::store::{
    BuildDir, Committed, Draft, EntryKind, EntryName, Scanned, Staging, StoreError,
};

/// Builds in the sandbox on this machine.
#[derive(Debug, Clone)]
pub struct Local {
    /// `FORJAR_BUILD_CORES` of a build whose derivation sets no CPU count.
    pub cores: u32,
    /// Keep a failed build's directory, and say where it is.
    pub keep_failed: bool,
}

impl Default for Local {
    fn default() -> Self {
        Local {
            cores: super::cores() as u32,
            keep_failed: false,
        }
    }
}

impl Executor for Local {
    fn execute(&self, job: &BuildJob<'_>, cx: &Context<'_>) -> Result<Done, ExecError> {
        let started = SystemTime::now();
        let log_path = cx.store.log_path(&job.key.store_hash());
        let mut prepared = self.prepare(job, cx, log_path)?;
        let built = prepared.run(Then::Install)?;
        prepared.install(built, started)?;
        Ok(Done::Made)
    }
}

/// A build set up in the store: its inputs found, its staging and build directories made.
pub(super) struct Prepared<'a> {
    local: &'a Local,
    job: &'a BuildJob<'a>,
    cx: &'a Context<'a>,
    /// The inputs and every entry they refer to: what the outputs may refer to.
    input_closure: BTreeSet<EntryName>,
    /// Each input's name, its content here, and its path in the sandbox; taken by `run`.
    inputs: Vec<(InputName, PathBuf, PathBuf)>,
    /// The rest of the closure: content here, path in the sandbox; taken by `run`.
    referenced: Vec<(PathBuf, PathBuf)>,
    /// The toolchain's content here; taken by `run`.
    toolchain: Option<PathBuf>,
    /// One per output, in the order of `job.outputs`; taken by `run`.
    stagings: Vec<Staging<'a>>,
    build_dir: BuildDir<'a>,
    log_path: PathBuf,
}

/// What is done with a build's outputs once it has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Then {
    /// They are installed in the store.
    Install,
    /// They are compared with the entries in the store (`check`), and not installed.
    Compare,
}

/// What a successful run left: each output, checked and owned by the store's owner again.
pub(super) struct Built<'a> {
    pub(super) stagings: Vec<Staging<'a>>,
    log_tail: Vec<String>,
    /// The tree digest of the build's log, taken as it was written.
    log_digest: hash::TreeDigest,
    /// The sandbox's supervisor, exiting meanwhile; dropped once the outputs are installed.
    pub(super) remains: sandbox::Remains,
}

impl Local {
    /// Sets `job` up: checks its inputs are in the store, and makes its staging directories, its
    /// build directory and its log at `log_path`.
    pub(super) fn prepare<'a>(
        &'a self,
        job: &'a BuildJob<'a>,
        cx: &'a Context<'a>,
        log_path: PathBuf,
    ) -> Result<Prepared<'a>, ExecError> {
        let store = cx.store;
        let request = job.request;
        let planned_content = |entry: &EntryName| {
            // Bound at the path the request was planned for, which is this store's own except on
            // a remote worker.
            request
                .store_dir
                .as_path()
                .join(entry.as_str())
                .join("content")
        };
        let mut inputs = Vec::new();
        for (input, resolved) in &request.inputs {
            let entry = resolved.entry();
            if !store.contains(entry) {
                return Err(ExecError::MissingInput {
                    name: job.name().to_string(),
                    input: input.to_string(),
                    entry: entry.clone(),
                });
            }
            inputs.push((
                input.clone(),
                store.content_path(entry),
                planned_content(entry),
            ));
        }
        let toolchain = match &request.toolchain {
            Some(toolchain) if !store.contains(&toolchain.entry) => {
                return Err(ExecError::MissingInput {
                    name: job.name().to_string(),
                    input: "toolchain".to_string(),
                    entry: toolchain.entry.clone(),
                });
            }
            Some(toolchain) => Some(store.content_path(&toolchain.entry)),
            None => None,
        };
        // What the inputs refer to is bound too (without a variable), so that what they need at
        // run time is there; it is also what the outputs may refer to.
        let direct: BTreeSet<EntryName> = request.input_entries().cloned().collect();
        let input_closure = store.closure(direct.iter().cloned())?;
        let referenced = input_closure
            .difference(&direct)
            .map(|e| (store.content_path(e), planned_content(e)))
            .collect();
        let stagings = job
            .outputs
            .values()
            .map(|o| Staging::new(store, cx.lock, o.entry.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let build_dir = store.build_dir(&job.key.store_hash())?;
        Ok(Prepared {
            local: self,
            job,
            cx,
            input_closure,
            inputs,
            referenced,
            toolchain,
            stagings,
            build_dir,
            log_path,
        })
    }
}

impl<'a> Prepared<'a> {
    /// The error of a build that ran and failed, with its log; its build directory is kept if
    /// asked for.
    fn fail(&self, reason: String, log_tail: Vec<String>) -> ExecError {
        let name = self.job.name().as_str();
        ExecError::Failed(Box::new(BuildFailure {
            name: name.to_string(),
            location: self.job.location().to_string(),
            reason,
            log_tail,
            log_path: self.log_path.clone(),
            kept: self
                .local
                .keep_failed
                .then(|| keep_build_dir(self.cx, self.build_dir.path(), name))
                .flatten(),
        }))
    }

    /// A store error, or a cancelled build when the apply was stopped meanwhile: hashing and
    /// scanning give up then.
    pub(super) fn stopped_or(&self, error: StoreError) -> ExecError {
        if self.cx.stop.load(Ordering::Relaxed) {
            self.job.cancelled()
        } else {
            ExecError::Store(error)
        }
    }

    /// Runs the builder in the sandbox and checks what it left: every declared output, nothing
    /// beside them, within the output cap. A fixed output is copied into fresh files first.
    /// For [`Then::Install`], the outputs' entries are marked as about to be installed while the
    /// build runs.
    pub(super) fn run(&mut self, then: Then) -> Result<Built<'a>, ExecError> {
        let (job, cx) = (self.job, self.cx);
        let limits = job.limits;
        let mut log = LogTap {
            file: fs::File::create(&self.log_path)
                .map_err(StoreError::io("cannot create", &self.log_path))?,
            partial: Vec::new(),
            events: cx.events,
            digest: hash::FileDigester::default(),
        };
        let stagings = std::mem::take(&mut self.stagings);
        let build_dir = self.build_dir.path().to_path_buf();
        // The outputs' markers are made and synced while the build runs, not after it.
        let mark_ahead = || stagings.iter().for_each(Staging::mark_ahead);
        let mut spec = self.spec(
            job.request,
            &stagings,
            build_dir,
            limits.clone(),
            Some(cx.stop),
        );
        if then == Then::Install {
            spec.under_way = Some(&mark_ahead);
        }
        let content_paths: Vec<PathBuf> = stagings.iter().map(Staging::content_path).collect();
        let output_size = || content_paths.iter().map(|p| staged_size(p)).sum();
        let finished = sandbox::run(&spec, &mut log, &output_size);
        // What is left of a build that ran well is its output's check and install, which run
        // beside the next build; a failure holds its place until it is reported, so that none
        // starts after it.
        if then == Then::Install
            && finished
                .as_ref()
                .is_ok_and(|finished| finished.outcome.success())
        {
            (cx.events)(JobEvent::Built);
        }
        let finished = finished.map_err(|error| ExecError::Sandbox {
            name: job.name().to_string(),
            location: job.location().to_string(),
            error,
        })?;
        let log_digest = log.digest.finish(false);
        drop(log);
        if finished.outcome == Outcome::Cancelled {
            return Err(job.cancelled());
        }
        if !finished.outcome.success() {
            // RLIMIT_FSIZE stops a write at the cap with SIGXFSZ, which the builder reports as a
            // plain failure; the staged size says what happened.
            let cap = limits.output_cap();
            let outcome = match finished.outcome {
                Outcome::Exited(_) | Outcome::Signaled(_) if output_size() >= cap => {
                    Outcome::OutputLimit(cap)
                }
                _ => finished.outcome.clone(),
            };
            let mut reason = outcome.to_string();
            if limits.memory.is_some()
                && !matches!(outcome, Outcome::MemoryLimit(_))
                && !nix::unistd::geteuid().is_root()
            {
                reason.push_str(
                    " (its memory limit is enforced by RLIMIT_AS here, and may have been hit)",
                );
            }
            if finished.process_limit_hit {
                reason.push_str(&format!(
                    " (it reached its limit of {} processes at once, and the kernel refused \
                     it more; raise the limit with `max_processes` if the build needs them)",
                    limits.process_cap()
                ));
            }
            if !finished.lowered.is_empty() {
                reason.push_str(&format!(
                    " (it ran under lower hard limits than it asks, which forjar was given and \
                     cannot raise: {}; raise them, or run forjar as root)",
                    finished.lowered.join("; ")
                ));
            }
            return Err(self.fail(reason, finished.log_tail));
        }

        // Every process of the build is gone (`sandbox::run` returns once its pid namespace is
        // empty). What it left is taken back from the build user before anything reads it.
        for staging in &stagings {
            staging.reclaim()?;
        }
        for (output, staging) in job.outputs.keys().zip(&stagings) {
            if fs::symlink_metadata(staging.content_path()).is_err() {
                return Err(self.fail(
                    format!(
                        "output `{output}` was not produced: the builder exited 0 without creating ${output}"
                    ),
                    finished.log_tail,
                ));
            }
            let stray: Vec<String> = fs::read_dir(staging.dir())
                .map_err(StoreError::io("cannot read", staging.dir()))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "content")
                .collect();
            if !stray.is_empty() {
                return Err(self.fail(
                    format!(
                        "the builder wrote `{}` beside output `{output}`; a build may only create ${output} itself",
                        stray.join("`, `")
                    ),
                    finished.log_tail,
                ));
            }
        }
        if output_size() > limits.output_cap() {
            return Err(self.fail(
                Outcome::OutputLimit(limits.output_cap()).to_string(),
                finished.log_tail,
            ));
        }
        // A fixed-output build shares the host's network, and with it a way to hand descriptors
        // of its outputs to a process outside the sandbox, which could still write through them
        // after the build: its outputs are copied into fresh files of the store's own first, and
        // only the copies are checked and installed.
        let stagings = if job.request.fixed_output.as_ref().is_some() {
            stagings
                .into_iter()
                .map(|staging| staging.fresh_copy(cx.lock))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            stagings
        };
        Ok(Built {
            stagings,
            log_tail: finished.log_tail,
            log_digest,
            remains: finished.remains,
        })
    }

    /// The sandbox's view of this build, running `request` with its outputs in `stagings`; takes
    /// the inputs, which one run uses.
    fn spec<'s>(
        &mut self,
        request: &'s crate::request::BuildRequest,
        stagings: &[Staging<'_>],
        build_dir: PathBuf,
        limits: crate::name::Limits,
        cancel: Option<&'s std::sync::atomic::AtomicBool>,
    ) -> BuildSpec<'s>
    where
        'a: 's,
    {
        BuildSpec {
            request,
            inputs: std::mem::take(&mut self.inputs),
            referenced: std::mem::take(&mut self.referenced),
            toolchain: self.toolchain.take(),
            outputs: self
                .job
                .outputs
                .iter()
                .zip(stagings)
                .map(|((output, planned), staging)| {
                    (
                        output.clone(),
                        staging.dir().to_path_buf(),
                        request.store_dir.as_path().join(planned.entry.as_str()),
                    )
                })
                .collect(),
            build_dir,
            cores: limits.cpus.unwrap_or(self.local.cores),
            limits,
            cancel,
            hold: Some(self.cx.lock.as_fd()),
            under_way: None,
        }
    }

    /// Runs `request` (the job's, with a shell for its builder) in the job's sandbox on the
    /// user's terminal, in `build_dir` if given (a kept failed build's) or a fresh one; nothing
    /// it leaves is installed. Returns how the shell ended.
    pub(super) fn enter(
        &mut self,
        request: &crate::request::BuildRequest,
        build_dir: Option<PathBuf>,
    ) -> Result<Outcome, ExecError> {
        let job = self.job;
        let build_dir = build_dir.unwrap_or_else(|| self.build_dir.path().to_path_buf());
        // No time limits: the shell waits on its user.
        let limits = crate::name::Limits {
            timeout: None,
            max_silent: None,
            ..job.limits.clone()
        };
        let stagings = std::mem::take(&mut self.stagings);
        let spec = self.spec(request, &stagings, build_dir, limits, None);
        sandbox::enter(&spec).map_err(|error| ExecError::Sandbox {
            name: job.name().to_string(),
            location: job.location().to_string(),
            error,
        })
    }

    /// Scans what `built` refers to, and installs each output into the store.
    fn install(self, built: Built<'a>, started: SystemTime) -> Result<(), ExecError> {
        let (job, cx) = (self.job, self.cx);
        let request = job.request;
        let fixed = request.fixed_output.as_ref();
        // The toolchain under a name no input can have.
        let input_entries: BTreeMap<String, EntryName> = request
            .inputs
            .iter()
            .map(|(n, i)| (n.to_string(), i.entry().clone()))
            .chain(
                request
                    .toolchain
                    .as_ref()
                    .map(|t| (".toolchain".to_string(), t.entry.clone())),
            )
            .collect();
        let mut drafts = Vec::new();
        for ((output, planned), staging) in job.outputs.iter().zip(built.stagings) {
            // A SHA-256 digest is checked here; a tree digest as the entry is committed.
            if let Some((mode, specified)) = fixed.and_then(|f| f.as_sha256()) {
                let content = staging.content_path();
                let got = match mode {
                    HashMode::Flat => hash::file_sha256(&content),
                    HashMode::Recursive => hash::nar_sha256(&content),
                }
                .map_err(|e| match e {
                    HashError::Io { source, .. } if mode == HashMode::Flat => self.fail(
                        format!("its output is not what a flat SHA-256 digest covers: {source}"),
                        built.log_tail.clone(),
                    ),
                    other => self.stopped_or(StoreError::Hash(other)),
                })?;
                if got != specified {
                    let fixed = fixed.expect("a SHA-256 digest is a fixed output");
                    return Err(ExecError::HashMismatch {
                        name: job.name().to_string(),
                        location: job.location().to_string(),
                        specified: fixed.show(&specified),
                        got: fixed.show(&got),
                    });
                }
            }
            drafts.push((
                staging,
                Draft {
                    name: job.name().clone(),
                    output: output.to_string(),
                    kind: if fixed.is_some() {
                        EntryKind::Fixed
                    } else {
                        EntryKind::Build
                    },
                    key: planned.key,
                    derivation: Some(*job.key),
                    // What the content mentions, found as it is hashed (`commit_scanning`).
                    references: Vec::new(),
                    inputs: input_entries.clone(),
                    system: Some(request.system.to_string()),
                    sandbox: Some(request.sandbox.as_str().to_string()),
                    started,
                    log_digest: Some(built.log_digest),
                    location: job.location.map(str::to_string),
                    source_path: None,
                    expected: fixed.and_then(FixedOutput::as_tree),
                },
            ));
        }
        // Each output is read once, for its digest and what it refers to together: any entry
        // of the inputs' closure, or any of the build's own outputs.
        let own = job.outputs.values().map(|o| &o.entry);
        let needles = Needles::new(self.input_closure.iter().chain(own));
        for (staging, draft) in drafts {
            match staging
                .commit_scanning(draft, &needles, cx.stop)
                .map_err(|e| self.stopped_or(e))?
            {
                Scanned::FixedRefers(references) => {
                    return Err(self.fail(
                        format!(
                            "a fixed-output derivation may not refer to store entries, and its output refers to {}",
                            references
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        built.log_tail,
                    ));
                }
                Scanned::Committed(Committed::Installed(_)) => {}
                Scanned::Committed(Committed::Mismatch(m)) => {
                    return Err(ExecError::HashMismatch {
                        name: job.name().to_string(),
                        location: job.location().to_string(),
                        specified: m.expected.to_string(),
                        got: m.got.to_string(),
                    });
                }
            }
        }
        // The supervisor ended while the outputs were installed: reaped, its cgroup removed.
        drop(built.remains);
        // The build directory goes (when `self` drops) while the lock is held: staging of this
        // key is only ever touched under it.
        Ok(())
    }
}

/// The build log on disk, with each complete line also told as a [`JobEvent::Log`], and
/// hashed as it is written (only this writes the file).
struct LogTap<'a> {
    file: fs::File,
    partial: Vec<u8>,
    events: &'a (dyn Fn(JobEvent<'_>) + Sync),
    digest: hash::FileDigester,
}

impl Write for LogTap<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.digest.write_all(&buf[..n])?;
        self.partial.extend_from_slice(&buf[..n]);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]);
            (self.events)(JobEvent::Log(text.trim_end_matches('\r')));
        }
        if self.partial.len() > 4096 {
            self.partial.clear();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The bytes a staged output holds so far; a builder may be changing it, so an entry that
/// vanishes mid-walk counts as nothing until the next look.
fn staged_size(path: &Path) -> u64 {
    crate::store::tree_size(path).unwrap_or(0)
}

/// Moves a failed build's directory to `.failed/<hash>-<name>` in the store, out of the way of
/// the staging sweep, and returns where it went. Best effort: `None` if it cannot be moved.
fn keep_build_dir(cx: &Context<'_>, dir: &Path, name: &str) -> Option<PathBuf> {
    let kept = cx.store.kept_path(cx.lock.hash(), name);
    fs::create_dir_all(kept.parent()?).ok()?;
    crate::store::remove_tree(&kept).ok()?;
    fs::rename(dir, &kept).ok()?;
    Some(kept)
}
