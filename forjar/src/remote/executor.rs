//! The remote cache and remote execution as executors, composed around the local one as buck2's
//! caching and hybrid executors are around its local executor.
//!
//! [`Cached`] looks a job up in the remote cache before its inner executor runs it, and uploads
//! what the inner one built here. [`Hybrid`] sends a job to the remote executor, and runs it
//! with its local executor when the remote is down. A remote failure never fails an apply that
//! can go on without the remote: it is told as a [`JobEvent::Remote`], and the build is made
//! here.

use std::collections::BTreeSet;
use std::fs;
use std::sync::Arc;

use super::RemoteError;
use super::cache::Cache;
use super::execution::{BuildAction, Executed};
use crate::exec::{BuildFailure, BuildJob, Context, Done, ExecError, Executor, JobEvent};
use crate::sandbox;
use crate::store::{EntryName, StoreError};

/// Looks each job up in the remote cache first; uploads what `inner` builds here.
#[derive(Debug)]
pub struct Cached<E> {
    /// The remote cache.
    pub cache: Arc<Cache>,
    /// What runs a job the cache does not have.
    pub inner: E,
}

impl<E: Executor> Executor for Cached<E> {
    fn execute(&self, job: &BuildJob<'_>, cx: &Context<'_>) -> Result<Done, ExecError> {
        match self.cache.pull(cx.store, cx.lock, &job.entries()) {
            Ok(true) => return Ok(Done::Downloaded),
            Ok(false) => {}
            Err(error) => tell(&self.cache, cx, &error),
        }
        let done = self.inner.execute(job, cx)?;
        if done == Done::Made {
            let own: Vec<EntryName> = job.outputs.values().map(|o| o.entry.clone()).collect();
            if let Err(error) = self.cache.push(cx.store, &own) {
                tell(&self.cache, cx, &error);
            }
        }
        Ok(done)
    }
}

/// Runs each job on the remote executor; runs it with `local` while the remote is down.
#[derive(Debug)]
pub struct Hybrid<E> {
    /// The remote, as a cache and an executor ([`Cache::connect_executor`]).
    pub cache: Arc<Cache>,
    /// What runs a job when the remote cannot.
    pub local: E,
}

impl<E: Executor> Executor for Hybrid<E> {
    fn execute(&self, job: &BuildJob<'_>, cx: &Context<'_>) -> Result<Done, ExecError> {
        if self.cache.is_down() {
            return self.local.execute(job, cx);
        }
        let direct = job.request.input_entries().cloned();
        let closure = cx.store.closure(direct)?;
        match build_remotely(job, cx, &self.cache, &closure) {
            Ok(done) => done,
            Err(error) if error.is_outage() => {
                tell(&self.cache, cx, &error);
                self.local.execute(job, cx)
            }
            Err(error) => Err(ExecError::Remote {
                name: job.name().to_string(),
                location: job.location().to_string(),
                error: Box::new(error),
            }),
        }
    }
}

/// Tells the apply that the remote failed; an outage once, however many builds met it.
fn tell(cache: &Cache, cx: &Context<'_>, error: &RemoteError) {
    if cache.tells(error) {
        (cx.events)(JobEvent::Remote(error));
    }
}

/// Runs `job` on the remote executor and installs its outputs from the remote cache, where the
/// worker records them. The outer error is the remote's own failure; the inner result is the
/// build's.
fn build_remotely(
    job: &BuildJob<'_>,
    cx: &Context<'_>,
    cache: &Cache,
    closure: &BTreeSet<EntryName>,
) -> Result<Result<Done, ExecError>, RemoteError> {
    let action = BuildAction { job, closure };
    match cache.execute(cx.store, &action, cx.stop)? {
        Executed::Built { worker } => {
            if cache.pull(cx.store, cx.lock, &job.entries())? {
                Ok(Ok(Done::Executed))
            } else {
                Err(RemoteError::Malformed {
                    what: format!("build of `{}` on worker {worker}", job.name()),
                    reason: "the worker reported success, but the cache does not hold the outputs"
                        .to_string(),
                })
            }
        }
        Executed::Failed {
            worker,
            reason,
            log,
        } => {
            let log_path = cx.store.log_path(&job.key.store_hash());
            if let Err(error) = fs::write(&log_path, &log) {
                return Ok(Err(StoreError::io("cannot write", &log_path)(error).into()));
            }
            Ok(Err(ExecError::Failed(Box::new(BuildFailure {
                name: job.name().to_string(),
                location: job.location().to_string(),
                reason: format!("{reason} (on worker {worker})"),
                log_tail: sandbox::log_tail(&log),
                log_path,
                kept: None,
            }))))
        }
        Executed::Cancelled => Ok(Err(job.cancelled())),
    }
}
