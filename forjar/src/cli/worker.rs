//! `forjar worker`: runs actions for a REAPI server's scheduler (BuildGrid's Bots API).

use std::path::Path;

use super::process::{INTERRUPTED, handle_interrupts, raise_open_file_limit};
use super::{ExitCode, Failure};
use crate::remote::Address;
use crate::remote::worker::{self, WorkerOptions};
use crate::store::Store;

/// `forjar worker`'s arguments.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The server whose scheduler leases the actions.
    #[arg(
        long,
        value_name = "grpc://HOST:PORT[/INSTANCE]",
        env = "FORJAR_WORKER_SERVER"
    )]
    server: String,
    /// The worker's name, unique among the server's workers [default: HOSTNAME-PID].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// How many actions run at once.
    #[arg(short, long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    jobs: u16,
}

/// Serves until SIGINT or SIGTERM, then finishes its session (running builds are stopped, and
/// the server gives their actions to another worker).
pub fn run(store_dir: &Path, args: WorkerArgs) -> Result<ExitCode, Failure> {
    let address = Address::parse(&args.server)?;
    let store = Store::open(store_dir)?;
    let cores = crate::exec::cores() as u32;
    let jobs = u32::from(args.jobs);
    let name = args.name.unwrap_or_else(|| {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "worker".to_string());
        format!("{host}-{}", std::process::id())
    });
    handle_interrupts();
    raise_open_file_limit();
    worker::serve(
        &address,
        &store,
        &WorkerOptions {
            name,
            jobs: usize::from(args.jobs),
            cores: (cores / jobs).max(1),
        },
        &INTERRUPTED,
    )?;
    // Asked to stop, a worker has stopped cleanly.
    Ok(ExitCode::Success)
}
