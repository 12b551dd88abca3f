//! The store commands, shared by the `forjar` tool and every user program.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{ExitCode, Failure, emit};
use crate::hash::tree_digest;
use crate::store::{EntryName, RootTarget, Store, counted, human_bytes};

/// Commands on the store.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// List the entries with their kind and size.
    Ls {
        /// As JSON: a list of `{entry, kind, size}` (`kind` is `damaged`, with `error`, for an
        /// entry whose metadata cannot be read).
        #[arg(long)]
        json: bool,
    },
    /// List the GC roots and what they keep alive.
    Roots {
        /// As JSON: a list of `{name, entry, link, indirect}` (`entry` null when dangling).
        #[arg(long)]
        json: bool,
    },
    /// Rehash every entry and check that every entry it refers to is there; exit 1 naming
    /// each problem.
    Verify {
        /// Delete each damaged entry and build again what the program can build (a program's
        /// command, not the `forjar` tool's).
        #[arg(long)]
        repair: bool,
    },
    /// Delete every entry not reachable from a root; with `--on`, from each host's store what
    /// none of its generations needs and no deploy under way sent.
    Gc {
        /// Only list what would be deleted and the bytes that would be freed.
        #[arg(long)]
        dry_run: bool,
        /// Keep what live entries were built from, and what that was built from [default: the
        /// store's `keep-build-inputs` setting].
        #[arg(long)]
        keep_build_inputs: bool,
    },
    /// Delete entries; refused when a root, a generation or another entry still needs one.
    Delete {
        /// Entry names, paths in the store, hash prefixes or names.
        #[arg(required = true)]
        entries: Vec<String>,
        /// Delete them although something needs them (which is then broken until rebuilt).
        #[arg(long)]
        force: bool,
    },
    /// Change a setting of the store.
    Set {
        /// The setting.
        #[arg(value_enum)]
        setting: Setting,
        /// Its value.
        #[arg(action = clap::ArgAction::Set)]
        value: bool,
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

/// A setting of the store.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Setting {
    /// `gc` keeps what live entries were built from (as Nix's `keep-outputs`).
    KeepBuildInputs,
}

/// Commands on one entry.
#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Print an entry's meta.yaml.
    Show {
        /// An entry name, a path in the store, a prefix of a hash, or a name.
        entry: String,
        /// As JSON: `{entry, path, meta}`.
        #[arg(long)]
        json: bool,
    },
    /// Print an entry's build log.
    Log {
        /// An entry name, a path in the store, a prefix of a hash, or a name.
        entry: String,
        /// Print the log's metadata as JSON instead: `{name, entry, log, bytes, log_digest,
        /// started, finished, duration_ms}`.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an entry command on the store at `dir`.
pub fn entry(store: &Store, command: EntryCommand) -> Result<ExitCode, Failure> {
    match command {
        EntryCommand::Show { entry, json } => {
            let entry = store.resolve(&entry)?;
            emit(&match json {
                true => format!("{:#}\n", entry_json(store, &entry)?),
                false => show_entry(store, &entry)?,
            })?;
        }
        EntryCommand::Log { entry, json } => {
            let entry = store.resolve(&entry)?;
            return print_log(store, &entry, json);
        }
    }
    Ok(ExitCode::Success)
}

/// An entry as JSON: `{entry, path, meta}`.
pub(super) fn entry_json(store: &Store, entry: &EntryName) -> Result<serde_json::Value, Failure> {
    Ok(serde_json::json!({
        "entry": entry,
        "path": store.entry_path(entry),
        "meta": store.meta(entry)?,
    }))
}

/// Prints the build log of `entry`, or with `json` what is known of it.
pub(super) fn print_log(store: &Store, entry: &EntryName, json: bool) -> Result<ExitCode, Failure> {
    let log = store.log(entry)?;
    if !json {
        emit(&String::from_utf8_lossy(&log))?;
        return Ok(ExitCode::Success);
    }
    let meta = store.meta(entry)?;
    let path = meta
        .derivation
        .as_ref()
        .map(|d| store.log_path(&d.store_hash()));
    let value = serde_json::json!({
        "name": meta.name,
        "entry": entry,
        "log": path,
        "bytes": log.len(),
        "lines": log.iter().filter(|&&b| b == b'\n').count(),
        "log_digest": meta.log_digest,
        "started": meta.started,
        "finished": meta.finished,
        "duration_ms": meta.duration_ms,
    });
    emit(&format!("{value:#}\n"))?;
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

/// `prefetch URL|PATH`: downloads the URL (or reads the path) and prints the digests a
/// fixed-output derivation of it declares, as attributes to paste: the file's SHA-256 (Nix's
/// `fetchurl`), its NAR SHA-256 (`fixed_output_mode = "recursive"`), and forjar's tree digest.
pub fn prefetch(target: &str, json: bool) -> Result<ExitCode, Failure> {
    let failed = |e: String| Failure::new(ExitCode::Failure, e);
    let downloaded = tempfile::tempdir().map_err(|e| failed(e.to_string()))?;
    // A download's flat digest is taken as it is written.
    let (path, flat) = if target.starts_with("http://") || target.starts_with("https://") {
        let path = downloaded.path().join("download");
        let flat = crate::toolchain::download(target, &path).map_err(|e| failed(e.to_string()))?;
        (path, Some(flat))
    } else {
        (PathBuf::from(target), None)
    };
    let sri = |digest: [u8; 32]| {
        forjar_rules::format_digest(
            forjar_rules::Algorithm::Sha256,
            forjar_rules::DigestForm::Sri,
            &digest,
        )
    };
    let mut text = String::new();
    let meta = fs::symlink_metadata(&path)
        .map_err(|e| failed(format!("cannot read `{}`: {e}", path.display())))?;
    let mut flat_sri = None;
    if meta.is_file() {
        let flat = match flat {
            Some(flat) => flat,
            None => crate::hash::file_sha256(&path).map_err(|e| failed(e.to_string()))?,
        };
        let _ = writeln!(text, "fixed_output = \"{}\"", sri(flat));
        flat_sri = Some(sri(flat));
    }
    let nar = crate::hash::nar_sha256(&path).map_err(|e| failed(e.to_string()))?;
    let _ = writeln!(
        text,
        "fixed_output = \"{}\", fixed_output_mode = \"recursive\"",
        sri(nar)
    );
    let tree = tree_digest(&path).map_err(|e| failed(e.to_string()))?;
    let _ = writeln!(text, "fixed_output = \"{tree}\"");
    let value = serde_json::json!({
        "target": target,
        "sha256": flat_sri,
        "sha256_recursive": sri(nar),
        "blake3": tree.to_string(),
    });
    emit(&as_json_or(json, &value, text))?;
    Ok(ExitCode::Success)
}

/// `value` as pretty JSON and a newline when `json`, else `text`.
pub(super) fn as_json_or(json: bool, value: &impl serde::Serialize, text: String) -> String {
    match json {
        true => {
            let mut out = serde_json::to_string_pretty(value).expect("JSON values serialise");
            out.push('\n');
            out
        }
        false => text,
    }
}

/// Says that a command waits for the store to itself.
fn waiting() {
    eprintln!("waiting for the other forjar processes that use the store to finish...");
}

/// What `verify` prints.
pub(super) fn verify_text(report: &crate::store::VerifyReport) -> String {
    let mut text = String::new();
    for problem in &report.problems {
        let _ = writeln!(text, "{problem}");
    }
    let _ = writeln!(
        text,
        "verified {}: {}",
        counted(report.checked, "entry", "entries"),
        if report.is_ok() {
            "all match".to_string()
        } else {
            counted(report.problems.len(), "problem", "problems")
        }
    );
    text
}

/// The first half of `verify --repair`: verifies the store at `dir` and deletes every damaged
/// entry. Returns the report, and the entries to build again: those deleted, and those other
/// entries refer to that are missing.
pub(super) fn delete_damaged(
    dir: &Path,
) -> Result<(crate::store::VerifyReport, Vec<EntryName>), Failure> {
    use crate::store::Problem;
    let store = Store::open_existing(dir)?;
    let report = store.verify()?;
    let mut damaged = Vec::new();
    let mut wanted = std::collections::BTreeSet::new();
    for problem in &report.problems {
        match problem {
            Problem::Mismatch { entry, .. }
            | Problem::Unrecorded { entry, .. }
            | Problem::Meta { entry, .. }
            | Problem::Content { entry, .. }
            | Problem::Misnamed { entry, .. } => {
                damaged.push(entry.clone());
                wanted.insert(entry.clone());
            }
            Problem::MissingReferences { missing, .. } => wanted.extend(missing.iter().cloned()),
            Problem::MissingRoot { entry, .. } => {
                wanted.insert(entry.clone());
            }
            Problem::Stray { .. } => {}
        }
    }
    // What refers to a damaged entry is whole again once it is rebuilt at the same path.
    store.delete(&damaged, true, waiting)?;
    Ok((report, wanted.into_iter().collect()))
}

/// Runs a store command on the store at `dir`.
pub fn run(dir: &Path, command: StoreCommand) -> Result<ExitCode, Failure> {
    let store = Store::open_existing(dir)?;
    match command {
        StoreCommand::Ls { json } => {
            let mut text = String::new();
            let mut listed = Vec::new();
            for entry in store.entries()? {
                match store.meta(&entry) {
                    Ok(meta) => {
                        let kind = format!("{:?}", meta.kind).to_lowercase();
                        let _ = writeln!(text, "{entry}  {kind}  {}", human_bytes(meta.size));
                        listed.push(serde_json::json!({
                            "entry": entry, "kind": kind, "size": meta.size,
                        }));
                    }
                    Err(e) => {
                        let _ = writeln!(text, "{entry}  damaged ({e})");
                        listed.push(serde_json::json!({
                            "entry": entry, "kind": "damaged", "error": e.to_string(),
                        }));
                    }
                }
            }
            emit(&as_json_or(json, &listed, text))?;
        }
        StoreCommand::Roots { json } => {
            let mut text = String::new();
            let mut listed = Vec::new();
            for root in store.roots()? {
                let entry = match &root.target {
                    RootTarget::Entry(entry) => Some(entry.to_string()),
                    RootTarget::Dangling => None,
                };
                let via = if root.indirect {
                    format!("  via {}", root.link.display())
                } else {
                    String::new()
                };
                let target = entry.clone().unwrap_or_else(|| "(dangling)".into());
                let _ = writeln!(text, "{}  {target}{via}", root.name);
                listed.push(serde_json::json!({
                    "name": root.name, "entry": entry, "link": root.link,
                    "indirect": root.indirect,
                }));
            }
            emit(&as_json_or(json, &listed, text))?;
        }
        StoreCommand::Verify { repair: true } => {
            return Err(Failure::new(
                ExitCode::Usage,
                "`verify --repair` builds again what is damaged, which needs the program that \
                 describes it: run `<program> verify --repair`",
            ));
        }
        StoreCommand::Verify { repair: false } => {
            let report = store.verify()?;
            emit(&verify_text(&report))?;
            if !report.is_ok() {
                return Ok(ExitCode::Failure);
            }
        }
        StoreCommand::Delete { entries, force } => {
            let named = entries
                .iter()
                .map(|e| store.resolve(e))
                .collect::<Result<Vec<_>, _>>()?;
            store.delete(&named, force, waiting)?;
            let mut text = String::new();
            for entry in &named {
                let _ = writeln!(text, "deleted {entry}");
            }
            emit(&text)?;
        }
        StoreCommand::Set { setting, value } => {
            let mut settings = store.settings()?;
            match setting {
                Setting::KeepBuildInputs => settings.keep_build_inputs = value,
            }
            store.set_settings(&settings)?;
        }
        StoreCommand::Gc {
            dry_run,
            keep_build_inputs,
        } => {
            let keep = keep_build_inputs || store.settings()?.keep_build_inputs;
            let report = store.gc_keeping(dry_run, keep, waiting)?;
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
            let logs = match report.logs {
                0 => String::new(),
                n => format!(
                    "; {} {}",
                    if dry_run { "would remove" } else { "removed" },
                    counted(n, "build log", "build logs")
                ),
            };
            let _ = writeln!(
                text,
                "{}{logs}",
                collected(verb, report.dead.len(), report.bytes, report.live)
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

/// What a collection deleted (`verb`: or would delete) of how many entries and bytes, and how
/// many it kept: `deleted 3 entries, 5.0 KiB (5142 bytes); 3 live`.
pub(super) fn collected(verb: &str, dead: usize, bytes: u64, live: usize) -> String {
    format!(
        "{verb} {}, {} ({bytes} bytes); {live} live",
        counted(dead, "entry", "entries"),
        human_bytes(bytes),
    )
}
