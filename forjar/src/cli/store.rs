//! The store commands, shared by the `forjar` tool and every user program.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{ExitCode, Failure, emit};
use crate::hash::tree_digest;
use crate::store::{EntryName, RootTarget, Store, human_bytes};

/// Commands on the store.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// List the entries with their kind and size.
    Ls,
    /// List the GC roots and what they keep alive.
    Roots,
    /// Rehash every entry; exit 1 naming each entry whose content no longer matches.
    Verify,
    /// Delete every entry not reachable from a root.
    Gc {
        /// Only list what would be deleted and the bytes that would be freed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Upload entries and everything they refer to into a remote cache, as `apply --remote`
    /// uploads what it builds [default: every entry of the store].
    #[cfg(feature = "remote")]
    Push {
        /// Entry names, paths in the store, hash prefixes or names.
        entries: Vec<String>,
        /// The REAPI remote cache.
        #[arg(
            long,
            value_name = "grpc://HOST:PORT[/INSTANCE]",
            env = "FORJAR_REMOTE"
        )]
        remote: String,
    },
}

/// Commands on one entry.
#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Print an entry's meta.yaml.
    Show {
        /// An entry name, a path in the store, a prefix of a hash, or a name.
        entry: String,
    },
    /// Print an entry's build log.
    Log {
        /// An entry name, a path in the store, a prefix of a hash, or a name.
        entry: String,
    },
}

/// Runs an entry command on the store at `dir`.
pub fn entry(store: &Store, command: EntryCommand) -> Result<ExitCode, Failure> {
    match command {
        EntryCommand::Show { entry } => {
            let entry = store.resolve(&entry)?;
            emit(&show_entry(store, &entry)?)?;
        }
        EntryCommand::Log { entry } => {
            let entry = store.resolve(&entry)?;
            emit(&String::from_utf8_lossy(&store.log(&entry)?))?;
        }
    }
    Ok(ExitCode::Success)
}

/// An entry's path and `meta.yaml`.
pub fn show_entry(store: &Store, entry: &EntryName) -> Result<String, Failure> {
    Ok(format!(
        "path: {}\n{}",
        store.entry_path(entry).display(),
        store.meta(entry)?.to_yaml()
    ))
}

/// Hashing commands.
#[derive(Debug, Subcommand)]
pub enum HashCommand {
    /// Print the tree digest of a file, directory or symlink (`blake3:<hex>`).
    Path {
        /// The path to hash.
        path: PathBuf,
    },
}

/// Prints the tree digest of a path.
pub fn hash(command: HashCommand) -> Result<ExitCode, Failure> {
    let HashCommand::Path { path } = command;
    let digest = tree_digest(&path).map_err(|e| Failure::new(ExitCode::Failure, e))?;
    emit(&format!("{digest}\n"))?;
    Ok(ExitCode::Success)
}

/// Runs a store command on the store at `dir`.
pub fn run(dir: &Path, command: StoreCommand) -> Result<ExitCode, Failure> {
    let store = Store::open(dir)?;
    match command {
        StoreCommand::Ls => {
            let mut text = String::new();
            for entry in store.entries()? {
                match store.meta(&entry) {
                    Ok(meta) => {
                        let kind = format!("{:?}", meta.kind).to_lowercase();
                        let _ = writeln!(text, "{entry}  {kind}  {}", human_bytes(meta.size));
                    }
                    Err(e) => {
                        let _ = writeln!(text, "{entry}  damaged ({e})");
                    }
                }
            }
            emit(&text)?;
        }
        StoreCommand::Roots => {
            let mut text = String::new();
            for root in store.roots()? {
                let target = match &root.target {
                    RootTarget::Entry(entry) => entry.to_string(),
                    RootTarget::Dangling => "(dangling)".to_string(),
                };
                let via = if root.indirect {
                    format!("  via {}", root.link.display())
                } else {
                    String::new()
                };
                let _ = writeln!(text, "{}  {target}{via}", root.name);
            }
            emit(&text)?;
        }
        StoreCommand::Verify => {
            let report = store.verify()?;
            let mut text = String::new();
            for problem in &report.problems {
                let _ = writeln!(text, "{problem}");
            }
            let _ = writeln!(
                text,
                "verified {} entries: {}",
                report.checked,
                if report.is_ok() {
                    "all match".to_string()
                } else {
                    format!("{} problems", report.problems.len())
                }
            );
            emit(&text)?;
            if !report.is_ok() {
                return Ok(ExitCode::Failure);
            }
        }
        StoreCommand::Gc { dry_run } => {
            let report = store.gc(dry_run, || {
                eprintln!("waiting for the other forjar processes that use the store to finish...")
            })?;
            let mut text = String::new();
            let verb = if dry_run { "would delete" } else { "deleted" };
            for (entry, size) in &report.dead {
                let _ = writeln!(text, "{verb} {entry}  {}", human_bytes(*size));
            }
            for root in &report.dangling_roots {
                let _ = writeln!(
                    text,
                    "dangling root {root}{}",
                    if dry_run {
                        ""
                    } else {
                        " (removed if indirect)"
                    }
                );
            }
            let _ = writeln!(
                text,
                "{verb} {} entries, {} ({} bytes); {} live",
                report.dead.len(),
                human_bytes(report.bytes),
                report.bytes,
                report.live
            );
            emit(&text)?;
        }
        #[cfg(feature = "remote")]
        StoreCommand::Push { entries, remote } => {
            let address = crate::remote::Address::parse(&remote)?;
            let named = if entries.is_empty() {
                store.entries()?
            } else {
                entries
                    .iter()
                    .map(|e| store.resolve(e))
                    .collect::<Result<Vec<_>, _>>()?
            };
            let closure = store.closure(named)?;
            let remote = crate::remote::Remote::connect(&address)?;
            for entry in &closure {
                remote.push_entry(&store, entry).map_err(|e| {
                    Failure::new(ExitCode::Failure, format!("pushing {entry}: {e}"))
                })?;
            }
            let noun = if closure.len() == 1 {
                "entry"
            } else {
                "entries"
            };
            emit(&format!("pushed {} {noun} to {address}\n", closure.len()))?;
        }
    }
    Ok(ExitCode::Success)
}
