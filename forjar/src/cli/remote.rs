//! The remote cache and remote executor of `apply` and `build` (the `remote` feature).

use std::sync::Arc;

use super::progress::Verbosity;
use super::{ExitCode, Failure, terminal};
use crate::exec::{Executor, Local};
use crate::remote::Address;
use crate::remote::cache::Cache;
use crate::remote::executor::{Cached, Hybrid};

/// Where builds are looked up and run besides here.
#[derive(Debug, clap::Args)]
pub(super) struct RemoteArgs {
    /// A REAPI remote cache (e.g. BuildGrid): each derivation is looked up there before it is
    /// built, and what is built here is uploaded.
    #[arg(
        long,
        value_name = "grpc://HOST:PORT[/INSTANCE]",
        env = "FORJAR_REMOTE"
    )]
    remote: Option<String>,
    /// A REAPI remote executor (e.g. BuildGrid with `forjar worker`s): a cache as with
    /// --remote, and what it does not have is built there (a `host-tools` build only by a
    /// worker on a host with the same software). Raise -j to keep more workers busy.
    #[arg(
        long,
        value_name = "grpc://HOST:PORT[/INSTANCE]",
        env = "FORJAR_REMOTE_EXEC",
        conflicts_with = "remote"
    )]
    remote_exec: Option<String>,
    /// When the remote cannot be reached at the start, warn and build everything here.
    #[arg(long)]
    remote_fallback: bool,
}

/// `local`, with the remote cache or executor `args` ask for composed around it.
pub(super) fn around(
    local: Local,
    args: &RemoteArgs,
    verbosity: Verbosity,
) -> Result<Box<dyn Executor>, Failure> {
    Ok(match args.connect(verbosity)? {
        None => Box::new(local),
        Some(cache) if cache.executes() => Box::new(Cached {
            cache: cache.clone(),
            inner: Hybrid { cache, local },
        }),
        Some(cache) => Box::new(Cached {
            cache,
            inner: local,
        }),
    })
}

impl RemoteArgs {
    /// Connects to the remote cache or executor, if one is asked for.
    fn connect(&self, verbosity: Verbosity) -> Result<Option<Arc<Cache>>, Failure> {
        let nonempty = |t: &Option<String>| t.clone().filter(|t| !t.is_empty());
        let (text, execute) = match (nonempty(&self.remote), nonempty(&self.remote_exec)) {
            (_, Some(text)) => (text, true),
            (Some(text), None) => (text, false),
            (None, None) if self.remote_fallback => {
                return Err(Failure::new(
                    ExitCode::Usage,
                    "--remote-fallback needs --remote or --remote-exec",
                ));
            }
            (None, None) => return Ok(None),
        };
        let address = Address::parse(&text)?;
        let connected = if execute {
            Cache::connect_executor(&address)
        } else {
            Cache::connect(&address)
        };
        match connected {
            Ok(cache) => Ok(Some(Arc::new(cache))),
            Err(error) if self.remote_fallback && error.is_outage() => {
                if verbosity != Verbosity::Quiet {
                    eprintln!(
                        "warning: {}; building here (--remote-fallback)",
                        terminal::sanitise(&error.to_string())
                    );
                }
                Ok(None)
            }
            Err(error) if error.is_outage() => Err(Failure::new(
                ExitCode::Failure,
                format!("{error}; or pass --remote-fallback to build here when it is down"),
            )),
            Err(error) => Err(error.into()),
        }
    }
}
