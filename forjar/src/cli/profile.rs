//! The commands on a program's profile: `generations`, `diff`, `delete-generations` and
//! `rollback`. They need the store, not the program's plan.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use clap::Subcommand;

use super::{ExitCode, Failure, emit};
use crate::store::human_bytes;
use crate::store::{EntryName, RootChanges, Store};

/// The commands on the program's profile, which need no plan.
#[derive(Debug, Subcommand)]
pub(super) enum ProfileCommand {
    /// List the profile's generations with their time and what changed.
    Generations {
        /// As JSON: a list of `{number, created, current, roots}` (`roots` maps each root's
        /// name to its entry).
        #[arg(long)]
        json: bool,
    },
    /// Show what changed between two generations: entries added, removed and changed.
    Diff {
        /// The earlier generation.
        a: u64,
        /// The later generation.
        b: u64,
        /// As JSON: `{from, to, added, removed, changed}`, each a list of `{name, entries,
        /// size}` (`changed`: `{name, from: {entries, size}, to: {entries, size}}`).
        #[arg(long)]
        json: bool,
    },
    /// Delete generations, so that `gc` can free what only they kept. The current one stays.
    #[command(group = clap::ArgGroup::new("which").required(true).multiple(true))]
    DeleteGenerations {
        /// Generation numbers.
        #[arg(group = "which")]
        numbers: Vec<u64>,
        /// Every generation recorded longer ago than AGE (e.g. `30d`, `12h`).
        #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration, group = "which")]
        older_than: Option<Duration>,
        /// Every generation but the newest N.
        #[arg(long, value_name = "N", group = "which")]
        keep: Option<usize>,
    },
    /// Make an earlier generation current again, without building.
    Rollback {
        /// The generation [default: the one before the current one].
        #[arg(long, value_name = "N")]
        to: Option<u64>,
    },
}

/// Runs a profile command on `profile` in `store`.
pub(super) fn run(
    store: &Store,
    profile: &str,
    command: ProfileCommand,
) -> Result<ExitCode, Failure> {
    match command {
        ProfileCommand::Generations { json } => generations(store, profile, json),
        ProfileCommand::Diff { a, b, json } => diff(store, profile, a, b, json),
        ProfileCommand::DeleteGenerations {
            numbers,
            older_than,
            keep,
        } => delete_generations(store, profile, &numbers, older_than, keep),
        ProfileCommand::Rollback { to } => rollback(store, profile, to),
    }
}

fn generations(store: &Store, profile: &str, json: bool) -> Result<ExitCode, Failure> {
    let profile = store.profile(profile)?;
    let current = profile.current()?;
    let generations = profile.generations()?;
    if json {
        let listed: Vec<serde_json::Value> = generations
            .iter()
            .map(|g| {
                serde_json::json!({
                    "number": g.number,
                    "created": humantime::format_rfc3339_seconds(g.created()).to_string(),
                    "current": current == Some(g.number),
                    "roots": g.roots,
                })
            })
            .collect();
        emit(&super::store::as_json_or(true, &listed, String::new()))?;
        return Ok(ExitCode::Success);
    }
    if generations.is_empty() {
        emit(&format!(
            "profile `{}` has no generations yet; `apply` records one\n",
            profile.name()
        ))?;
        return Ok(ExitCode::Success);
    }
    let mut text = String::new();
    let mut before = BTreeMap::new();
    for generation in &generations {
        let changes = RootChanges::between(&before, &generation.roots);
        let mut summary: Vec<String> = Vec::new();
        summary.extend(changes.added.iter().map(|r| format!("+{r}")));
        summary.extend(changes.changed.iter().map(|r| format!("~{r}")));
        summary.extend(changes.removed.iter().map(|r| format!("-{r}")));
        if summary.is_empty() {
            summary.push("(same roots)".into());
        }
        let _ = writeln!(
            text,
            "{} {:>4}  {}  {}",
            if current == Some(generation.number) {
                '*'
            } else {
                ' '
            },
            generation.number,
            humantime::format_rfc3339_seconds(generation.created()),
            summary.join(" ")
        );
        before = generation.roots.clone();
    }
    emit(&text)?;
    Ok(ExitCode::Success)
}

fn diff(store: &Store, profile: &str, a: u64, b: u64, json: bool) -> Result<ExitCode, Failure> {
    let profile = store.profile(profile)?;
    let (from, to) = (profile.read(a)?, profile.read(b)?);
    let contents = |roots: &BTreeMap<String, EntryName>| -> Result<BTreeMap<String, (BTreeSet<EntryName>, u64)>, Failure> {
        let mut by_name: BTreeMap<String, (BTreeSet<EntryName>, u64)> = BTreeMap::new();
        for entry in store.closure(roots.values().cloned())? {
            let size = store.meta(&entry)?.size;
            let slot = by_name.entry(entry.name().to_string()).or_default();
            slot.0.insert(entry);
            slot.1 += size;
        }
        Ok(by_name)
    };
    let (left, right) = (contents(&from.roots)?, contents(&to.roots)?);
    let mut text = String::new();
    let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
    let side = |(entries, size): &(BTreeSet<EntryName>, u64)| serde_json::json!({ "entries": entries, "size": size });
    let names: BTreeSet<&String> = left.keys().chain(right.keys()).collect();
    for name in names {
        match (left.get(name), right.get(name)) {
            (None, Some(new)) => {
                let _ = writeln!(text, "+ {name}  {}", human_bytes(new.1));
                let mut item = side(new);
                item["name"] = name.as_str().into();
                added.push(item);
            }
            (Some(old), None) => {
                let _ = writeln!(text, "- {name}  {}", human_bytes(old.1));
                let mut item = side(old);
                item["name"] = name.as_str().into();
                removed.push(item);
            }
            (Some(old), Some(new)) if old.0 != new.0 => {
                let _ = writeln!(
                    text,
                    "~ {name}  {} -> {}",
                    human_bytes(old.1),
                    human_bytes(new.1)
                );
                changed.push(serde_json::json!({
                    "name": name, "from": side(old), "to": side(new),
                }));
            }
            _ => {}
        }
    }
    if json {
        let value = serde_json::json!({
            "from": a, "to": b, "added": added, "removed": removed, "changed": changed,
        });
        emit(&format!("{value:#}\n"))?;
        return Ok(ExitCode::Success);
    }
    if text.is_empty() {
        text = format!("generations {a} and {b} hold the same entries\n");
    }
    super::emit_changes(&text)?;
    Ok(ExitCode::Success)
}

fn delete_generations(
    store: &Store,
    profile: &str,
    numbers: &[u64],
    older_than: Option<Duration>,
    keep: Option<usize>,
) -> Result<ExitCode, Failure> {
    let profile = store.profile(profile)?;
    let current = profile.current()?;
    let generations = profile.generations()?;
    let listed: Vec<(u64, SystemTime)> = generations
        .iter()
        .map(|g| (g.number, g.created()))
        .collect();
    let doomed = crate::store::generations_to_delete(
        &listed,
        current,
        numbers,
        older_than,
        keep,
        SystemTime::now(),
    );
    if doomed.is_empty() {
        emit(&format!(
            "no generation of profile `{}` matches; nothing was deleted\n",
            profile.name()
        ))?;
        return Ok(ExitCode::Success);
    }
    profile.delete(&doomed)?;
    let list: Vec<String> = doomed.iter().map(u64::to_string).collect();
    emit(&format!(
        "Deleted generation{} {} of profile `{}`; `gc` frees what only they kept\n",
        if doomed.len() == 1 { "" } else { "s" },
        list.join(", "),
        profile.name()
    ))?;
    Ok(ExitCode::Success)
}

fn rollback(store: &Store, profile: &str, to: Option<u64>) -> Result<ExitCode, Failure> {
    let profile = store.profile(profile)?;
    let current = profile.current()?;
    let target = match to {
        Some(n) => n,
        None => {
            let Some(current) = current else {
                return Err(Failure::new(
                    ExitCode::Failure,
                    format!(
                        "profile `{}` has no generations to roll back",
                        profile.name()
                    ),
                ));
            };
            profile
                .generations()?
                .iter()
                .map(|g| g.number)
                .filter(|&n| n < current)
                .max()
                .ok_or_else(|| {
                    Failure::new(
                        ExitCode::Failure,
                        format!(
                            "generation {current} is the oldest of profile `{}`; there is nothing to roll back to",
                            profile.name()
                        ),
                    )
                })?
        }
    };
    let generation = profile.switch(target)?;
    let mut text = String::new();
    for (name, entry) in &generation.roots {
        let _ = writeln!(text, "{name} -> {}", store.content_path(entry).display());
    }
    let _ = writeln!(
        text,
        "Generation {} of profile `{}` is current (was {})",
        generation.number,
        profile.name(),
        current.map_or("none".to_string(), |c| c.to_string())
    );
    emit(&text)?;
    Ok(ExitCode::Success)
}
