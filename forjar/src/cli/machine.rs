//! The machine half of a program's command line: the per-host plan after the build plan, the
//! deploy after `apply` builds, `drift`, and `generations`/`rollback --on HOST`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Subcommand;

use super::fleet::{ACTIVATIONS_GO_ON, CONFIRM_TIMEOUT, HostLines, noticing_interrupts};
use super::process::{INTERRUPTED, interrupted_code};
use super::program::Session;
use super::{ExitCode, Failure, emit};
use crate::derivation::OutputRef;
use crate::hash::EntryName;
use crate::machine::agent;
use crate::machine::deploy::{self, DeployOptions, HostPlan, HostResult, System};
use crate::machine::manifest::Changes;
use crate::machine::ssh::SshOptions;
use crate::machine::{Machine, MachineError};
use crate::store::{counted, human_bytes};

/// A machine's name and what a command gave on it, or why it failed there.
type PerHost<T> = (String, Result<T, String>);

/// The machine commands.
#[derive(Debug, Subcommand)]
pub(super) enum MachineCommand {
    /// Compare each selected host's live state with its current generation; `--repair`
    /// restores what differs.
    #[command(display_order = 12)]
    Drift {
        /// Put the live state back.
        #[arg(long)]
        repair: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl From<MachineError> for Failure {
    fn from(e: MachineError) -> Self {
        let code = match e {
            MachineError::Program(_) => ExitCode::InvalidProgram,
            _ => ExitCode::Failure,
        };
        Failure::new(code, e)
    }
}

/// The machines `--on` selects, by their index in `machines`, in the order named: a
/// comma-separated list of names, `@tag`s and globs (`web*`); all of them without `--on`.
/// Called once, when the program starts, so that a mistake is said before anything is built.
pub(super) fn select(machines: &[Machine], on: Option<&str>) -> Result<Vec<usize>, Failure> {
    let Some(on) = on else {
        return Ok((0..machines.len()).collect());
    };
    let usage = |text: String| Err(Failure::new(ExitCode::Usage, text));
    if machines.is_empty() {
        return usage(format!(
            "`--on {on}` selects machines, and the program has none; leave `--on` out"
        ));
    }
    let names = || {
        machines
            .iter()
            .map(Machine::name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let patterns: Vec<&str> = on
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if patterns.is_empty() {
        return usage(format!(
            "`--on` names no machine; give names, `@tag`s or globs, comma-separated (the \
             program's machines are: {})",
            names()
        ));
    }
    let mut selected: Vec<usize> = Vec::new();
    for pattern in patterns {
        let matches: Vec<usize> = (0..machines.len())
            .filter(|&i| match pattern.strip_prefix('@') {
                Some(tag) => machines[i].tags().contains(tag),
                None => glob(pattern, machines[i].name()),
            })
            .collect();
        if matches.is_empty() {
            return usage(format!(
                "`--on {pattern}` matches no machine; the program's machines are: {}",
                names()
            ));
        }
        for i in matches {
            if !selected.contains(&i) {
                selected.push(i);
            }
        }
    }
    Ok(selected)
}

/// Runs `each` on every item, at most `limit` at a time, and returns the results in the items'
/// order: hosts are reached in parallel, with a bound (`--max-hosts`).
pub(super) fn bounded<T: Sync, R: Send>(
    items: &[T],
    limit: usize,
    each: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else { break };
            let result = each(item);
            *results[i].lock().expect("a host's slot is not poisoned") = Some(result);
        }
    };
    std::thread::scope(|scope| {
        // As many as the limit, or as the user's limit on threads (`ulimit -u`) lets start;
        // with none, the hosts are taken here, one after the other.
        let started = (0..limit.clamp(1, items.len().max(1)))
            .take_while(|_| {
                std::thread::Builder::new()
                    .spawn_scoped(scope, work)
                    .is_ok()
            })
            .count();
        if started == 0 {
            work();
        }
    });
    results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .expect("a host's slot is not poisoned")
                .expect("every host ran")
        })
        .collect()
}

/// What a Ctrl-C does while hosts are read.
const READS_END: &str = "interrupted: the hosts being read are read to the end; no other host \
    is contacted (Ctrl-C again stops at once)";

/// What a Ctrl-C does during `drift --repair`.
const REPAIRS_END: &str = "interrupted: a host being repaired goes on to the end of its repair; \
    no other host is contacted (Ctrl-C again stops at once)";

/// What a Ctrl-C does during `delete-generations --on` and `gc --on`.
const CLEANING_ENDS: &str = "interrupted: a host being cleaned up goes on to the end of it; no \
    other host is contacted (Ctrl-C again stops at once)";

/// A host an interrupt left before it was reached.
const NOT_CONTACTED: &str = "interrupted before this host was contacted";

/// Runs `each` on every machine as [`bounded`] does, heeding a Ctrl-C (or SIGTERM): from it on
/// no further host is started, each host left getting an error that says so, while the hosts
/// under way end their `each`; `notice`, what a Ctrl-C does, is shown as it comes. Also says
/// whether an interrupt left a host.
fn each_host_heeding_interrupts<R: Send>(
    machines: &[&Machine],
    limit: usize,
    lines: &HostLines,
    notice: &str,
    each: impl Fn(&Machine) -> Result<R, String> + Sync,
) -> (Vec<PerHost<R>>, bool) {
    super::process::handle_interrupts();
    let left = AtomicUsize::new(0);
    let results = noticing_interrupts(lines, notice, || {
        bounded(machines, limit, |m| {
            let name = m.name().to_string();
            if INTERRUPTED.load(Ordering::SeqCst) {
                left.fetch_add(1, Ordering::SeqCst);
                let not = format!("{name}: {NOT_CONTACTED}");
                return (name, Err(not));
            }
            (name, each(m))
        })
    });
    lines.finish();
    (results, left.into_inner() > 0)
}

/// `code`, or the interrupt's if one left a host.
fn unless_interrupted(code: ExitCode, left: bool) -> ExitCode {
    match left {
        false => code,
        true => interrupted_code(),
    }
}

/// `*` any run of characters, `?` one character.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

impl Session {
    /// The machines `--on` selected when the program started.
    pub(super) fn selected_machines(&self) -> Vec<&Machine> {
        self.selected.iter().map(|&i| &self.machines[i]).collect()
    }

    pub(super) fn ssh(&self) -> SshOptions {
        SshOptions {
            config: self.ssh_config.clone(),
            ..SshOptions::default()
        }
    }

    /// The entry each machine file's derivation output was planned to.
    fn resolver(&self) -> impl Fn(&OutputRef) -> Option<EntryName> + '_ {
        let by_root: HashMap<&str, EntryName> = self
            .plan
            .roots()
            .iter()
            .filter_map(|r| Some((r.name.as_str(), self.plan.root_entry(r)?)))
            .collect();
        move |output: &OutputRef| {
            let root = self.machine_roots.get(output)?;
            by_root.get(root.as_str()).cloned()
        }
    }

    /// The systems of `machines`, made in the store.
    pub(super) fn systems(&self, machines: &[&Machine]) -> Result<Vec<System>, Failure> {
        let agent = deploy::agent_entry(&self.store, true)?;
        let resolve = self.resolver();
        machines
            .iter()
            .map(|m| {
                deploy::assemble(&self.store, m, &agent, &resolve, true).map_err(Failure::from)
            })
            .collect()
    }

    /// After the build plan: each selected host's plan. Hosts whose files need outputs that
    /// are not built yet are planned after `apply` builds them.
    pub(super) fn plan_hosts(&self) -> Result<ExitCode, Failure> {
        let (plans, left) = self.host_plans()?;
        let mut text = String::new();
        for plan in &plans {
            match plan {
                Ok(plan) => render_host_plan(&mut text, plan),
                Err(e) => {
                    let _ = writeln!(text, "\nhost {e}");
                }
            }
        }
        super::emit_changes(&text)?;
        Ok(unless_interrupted(plan_code(&plans), left))
    }

    /// The hosts' plans as JSON, for `plan --json`.
    pub(super) fn host_plans_json(&self) -> Result<(ExitCode, serde_json::Value), Failure> {
        let (plans, left) = self.host_plans()?;
        let value: Vec<serde_json::Value> = plans
            .iter()
            .map(|p| match p {
                Ok(plan) => serde_json::to_value(plan).expect("a plan serialises"),
                Err(e) => serde_json::json!({ "error": e }),
            })
            .collect();
        Ok((
            unless_interrupted(plan_code(&plans), left),
            serde_json::Value::Array(value),
        ))
    }

    /// Each selected host's plan (an error names the host), and whether an interrupt left any.
    fn host_plans(&self) -> Result<(Vec<Result<HostPlan, String>>, bool), Failure> {
        let machines = self.selected_machines();
        let resolve = self.resolver();
        let unbuilt = |m: &Machine| {
            m.file_outputs()
                .any(|o| resolve(o).is_none_or(|e| !self.store.contains(&e)))
        };
        if machines.is_empty() {
            return Ok((Vec::new(), false));
        }
        let agent = deploy::agent_entry(&self.store, false)?;
        let ssh = self.ssh();
        let lines = HostLines::live_only(self.verbosity, &machines);
        let (plans, left) = each_host_heeding_interrupts(
            &machines,
            self.max_hosts,
            &lines,
            READS_END,
            |m| -> Result<HostPlan, String> {
                if unbuilt(m) {
                    return Err(format!("{}: {LATER}", m.name()));
                }
                let system = deploy::assemble(&self.store, m, &agent, &resolve, false)
                    .map_err(|e| e.to_string())?;
                lines.show(m.name(), "connecting");
                let host = deploy::Host::connect(m, &self.store, &agent, &ssh)
                    .map_err(|e| e.to_string())?;
                lines.show(m.name(), "reading its state");
                let plan = deploy::plan_host(&host, &system, true).and_then(|mut plan| {
                    if let Some(keep) = m.kept_generations() {
                        plan.deletes = deploy::would_delete(&host, &plan, keep)?;
                        plan.keeps = Some(keep);
                    }
                    Ok(plan)
                });
                host.close();
                plan.map_err(|e| e.to_string())
            },
        );
        Ok((plans.into_iter().map(|(_, plan)| plan).collect(), left))
    }

    /// Runs a machine command.
    pub(super) fn machine(&self, command: MachineCommand) -> Result<ExitCode, Failure> {
        match command {
            MachineCommand::Drift { repair, json } => self.drift(repair, json),
        }
    }

    /// Connects to each selected host and runs `each` on it, showing `step` (on a terminal)
    /// meanwhile; a Ctrl-C contacts no further host and lets those under way end, with
    /// `notice` said. Also says whether an interrupt left a host.
    fn connect_each<T: Send>(
        &self,
        step: &str,
        notice: &str,
        each: impl Fn(&deploy::Host) -> Result<T, MachineError> + Sync,
    ) -> Result<(Vec<PerHost<T>>, bool), Failure> {
        let machines = self.selected_machines();
        let agent = deploy::agent_entry(&self.store, false)?;
        let ssh = self.ssh();
        let lines = HostLines::live_only(self.verbosity, &machines);
        Ok(each_host_heeding_interrupts(
            &machines,
            self.max_hosts,
            &lines,
            notice,
            |m| {
                lines.show(m.name(), "connecting");
                deploy::Host::connect(m, &self.store, &agent, &ssh)
                    .and_then(|host| {
                        lines.show(m.name(), step);
                        let result = each(&host);
                        host.close();
                        result
                    })
                    .map_err(|e| e.to_string())
            },
        ))
    }

    fn drift(&self, repair: bool, json: bool) -> Result<ExitCode, Failure> {
        let (step, notice) = match repair {
            false => ("reading its state", READS_END),
            true => ("repairing", REPAIRS_END),
        };
        let (results, left) = self.connect_each(step, notice, |host| host.drift(repair))?;
        let mut code = ExitCode::Success;
        let mut text = String::new();
        let mut value = serde_json::Map::new();
        for (name, result) in results {
            match result {
                Ok(drift) => {
                    // What a repair could not put back counts as drift still.
                    if drift.iter().any(|d| !d.repaired) {
                        code = ExitCode::Failure;
                    }
                    if drift.is_empty() {
                        let _ = writeln!(text, "{name}: no drift");
                    }
                    for d in &drift {
                        let repaired = match (d.repaired, repair) {
                            (true, _) => "; repaired",
                            (false, true) => "; still, after the repair",
                            (false, false) => "",
                        };
                        let _ = writeln!(text, "{name}: {}: {}{repaired}", d.subject, d.difference);
                    }
                    value.insert(
                        name,
                        serde_json::to_value(&drift).expect("drift serialises"),
                    );
                }
                Err(e) => {
                    code = ExitCode::Failure;
                    let _ = writeln!(text, "{e}");
                    value.insert(name, serde_json::json!({ "error": e }));
                }
            }
        }
        if json {
            emit(&format!("{:#}\n", serde_json::Value::Object(value)))?;
        } else {
            emit(&text)?;
        }
        Ok(unless_interrupted(code, left))
    }

    /// `generations --on HOST`.
    pub(super) fn host_generations(&self) -> Result<ExitCode, Failure> {
        // Which one the host runs, as its probe says (the profile's list marks its current
        // generation the same way).
        let (results, left) = self.connect_each("reading its generations", READS_END, |host| {
            let current = host.probe(&[])?.0.and_then(|probe| probe.current);
            Ok((host.generations()?, current.map(|g| g.number)))
        })?;
        let (text, code) = render_each(results, |text, name, (generations, current)| {
            let _ = writeln!(text, "{name}:");
            if generations.is_empty() {
                let _ = writeln!(text, "  no generations yet; `apply` makes one");
            }
            for g in &generations {
                let time = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(g.created),
                );
                let _ = writeln!(
                    text,
                    "  {} {:>4}  {time}  {:<11}  {}  by {}{}",
                    if current == Some(g.number) { '*' } else { ' ' },
                    g.number,
                    g.status,
                    g.system,
                    g.operator,
                    g.revision
                        .as_deref()
                        .map(|r| format!(" at {r}"))
                        .unwrap_or_default()
                );
            }
            let _ = deploy::mirror(&self.store, name, &generations);
            true
        });
        emit(&text)?;
        Ok(unless_interrupted(code, left))
    }

    /// `diff A B --on HOST`: what activating generation B over A changes on each host.
    pub(super) fn host_diff(&self, a: u64, b: u64) -> Result<ExitCode, Failure> {
        let (results, left) = self.connect_each("reading both generations", READS_END, |host| {
            Ok(Changes::between(
                Some(&host.manifest(a)?),
                &host.manifest(b)?,
            ))
        })?;
        let (text, code) = render_each(results, |text, name, changes| {
            let _ = writeln!(text, "{name}: generation {a} -> {b}:");
            if changes.is_empty() {
                let _ = writeln!(text, "  no paths, users, groups or units differ");
            }
            render_changes(text, &changes, false);
            true
        });
        super::emit_changes(&text)?;
        Ok(unless_interrupted(code, left))
    }

    /// `delete-generations --on HOST`: deletes the generations `doomed` selects on each host, as
    /// on a program's profile; the current one stays.
    pub(super) fn host_delete_generations(
        &self,
        doomed: &agent::Doomed,
    ) -> Result<ExitCode, Failure> {
        let (results, left) = self.connect_each("deleting generations", CLEANING_ENDS, |host| {
            let deleted = host.delete_generations(doomed)?;
            Ok((deleted, host.generations()?))
        })?;
        let (text, code) = render_each(results, |text, name, (deleted, generations)| {
            let _ = deploy::mirror(&self.store, name, &generations);
            let _ = match deleted.len() {
                0 => writeln!(text, "{name}: no generation matches; nothing was deleted"),
                n => writeln!(
                    text,
                    "{name}: deleted {}; `gc --on {name}` frees what only {} kept",
                    generation_numbers(&deleted),
                    if n == 1 { "it" } else { "they" },
                ),
            };
            true
        });
        emit(&text)?;
        Ok(unless_interrupted(code, left))
    }

    /// `gc --on HOST [--dry-run]`: deletes from each host's store what none of its generations
    /// needs and no deploy under way sent.
    pub(super) fn host_gc(&self, dry_run: bool) -> Result<ExitCode, Failure> {
        let (step, notice) = match dry_run {
            true => ("reading its store", READS_END),
            false => ("collecting its store", CLEANING_ENDS),
        };
        let (results, left) =
            self.connect_each(step, notice, |host| host.gc(&self.store, dry_run, None))?;
        let verb = if dry_run { "would delete" } else { "deleted" };
        let (text, code) = render_each(results, |text, name, collected| {
            for (entry, size) in &collected.dead {
                let _ = writeln!(text, "{name}: {verb} {entry}  {}", human_bytes(*size));
            }
            let pending = match collected.pending {
                0 => String::new(),
                n => format!(
                    "; kept {} a deploy sent and has not activated yet",
                    counted(n, "entry", "entries")
                ),
            };
            let _ = writeln!(
                text,
                "{name}: {}{pending}",
                super::store::collected(
                    verb,
                    collected.dead.len(),
                    collected.bytes,
                    collected.live
                )
            );
            true
        });
        emit(&text)?;
        Ok(unless_interrupted(code, left))
    }

    /// `rollback --on HOST [--to N]`: activates an earlier generation of each selected host,
    /// confirmed over a new connection as a deploy is.
    pub(super) fn host_rollback(&self, to: Option<u64>) -> Result<ExitCode, Failure> {
        let machines = self.selected_machines();
        let agent = deploy::agent_entry(&self.store, false)?;
        let options = DeployOptions::new(self.ssh(), CONFIRM_TIMEOUT);
        let lines = HostLines::new(self.verbosity, &machines);
        let progress = |host: &str, line: &str| lines.show(host, line);
        // As a deploy: a Ctrl-C lets the rollbacks under way end, and starts no other.
        let (results, left) = each_host_heeding_interrupts(
            &machines,
            self.max_hosts,
            &lines,
            ACTIVATIONS_GO_ON,
            |m| {
                let reach = deploy::Reach {
                    machine: m,
                    store: &self.store,
                    agent: &agent,
                    ssh: &options.ssh,
                };
                deploy::rollback_host(&reach, to, &options, &progress).map_err(|e| e.to_string())
            },
        );
        let (text, code) = render_each(results, |text, name, outcome| {
            let ok = matches!(
                HostResult::of_outcome(&outcome.result),
                HostResult::Activated | HostResult::Unchanged
            );
            let _ = match ok {
                true => writeln!(
                    text,
                    "{name}: now on generation {}",
                    outcome.generation.unwrap_or_default()
                ),
                false => writeln!(
                    text,
                    "{name}: {}: {}",
                    outcome.result,
                    outcome.error.unwrap_or_default()
                ),
            };
            ok
        });
        emit(&text)?;
        Ok(unless_interrupted(code, left))
    }
}

/// Renders each host's result with `each`, which says whether it went well; a host the
/// command failed on gets its error. The exit code is a failure if any host did not go well.
fn render_each<T>(
    results: Vec<PerHost<T>>,
    mut each: impl FnMut(&mut String, &str, T) -> bool,
) -> (String, ExitCode) {
    let mut text = String::new();
    let mut code = ExitCode::Success;
    for (name, result) in results {
        let ok = match result {
            Ok(value) => each(&mut text, &name, value),
            Err(e) => {
                let _ = writeln!(text, "{e}");
                false
            }
        };
        if !ok {
            code = ExitCode::Failure;
        }
    }
    (text, code)
}

/// What a host's plan says when its files need outputs that are not built yet: not a failure.
const LATER: &str =
    "its files use derivation outputs not built yet; `apply` builds them, then plans and deploys";

fn plan_code(plans: &[Result<HostPlan, String>]) -> ExitCode {
    if plans
        .iter()
        .any(|p| p.as_ref().is_err_and(|e| !e.ends_with(LATER)))
    {
        ExitCode::Failure
    } else {
        ExitCode::Success
    }
}

/// `generation 3`, or `generations 1, 2`.
pub(super) fn generation_numbers(numbers: &[u64]) -> String {
    let list: Vec<String> = numbers.iter().map(u64::to_string).collect();
    match list.len() {
        1 => format!("generation {}", list[0]),
        _ => format!("generations {}", list.join(", ")),
    }
}

/// What activation changed, counted: `3 paths changed, 1 unit restarted`.
pub(super) fn summary(changes: &Changes) -> String {
    let mut parts = Vec::new();
    let mut count = |n: usize, what: &str, done: &str| {
        if n > 0 {
            parts.push(format!("{} {done}", counted(n, what, &format!("{what}s"))));
        }
    };
    count(
        changes.paths_added.len() + changes.paths_changed.len() + changes.paths_removed.len(),
        "path",
        "changed",
    );
    count(changes.groups_added.len(), "group", "added");
    count(changes.users_added.len(), "user", "added");
    count(changes.units_started.len(), "unit", "started");
    count(changes.units_restarted.len(), "unit", "restarted");
    count(changes.units_reloaded.len(), "unit", "reloaded");
    count(changes.units_stopped.len(), "unit", "stopped");
    parts.join(", ")
}

fn render_changes(text: &mut String, changes: &Changes, hooks: bool) {
    let mut line = |sign: &str, what: &str, items: &[String]| {
        for item in items {
            let _ = writeln!(text, "  {sign} {what} {item}");
        }
    };
    line("+", "path", &changes.paths_added);
    line("~", "path", &changes.paths_changed);
    line("-", "path", &changes.paths_removed);
    line("+", "group", &changes.groups_added);
    line("+", "user", &changes.users_added);
    line("start", "unit", &changes.units_started);
    line("restart", "unit", &changes.units_restarted);
    line("reload", "unit", &changes.units_reloaded);
    line("stop", "unit", &changes.units_stopped);
    if hooks {
        line("run", "hook", &changes.hooks);
    }
}

fn render_host_plan(text: &mut String, plan: &HostPlan) {
    let current = plan
        .current
        .as_ref()
        .map_or("never activated".to_string(), |g| {
            format!("on generation {}", g.number)
        });
    let _ = writeln!(text, "\nhost {} ({current}):", plan.machine);
    if plan.install_agent {
        let _ = writeln!(text, "  install the agent");
    }
    if !plan.send.is_empty() {
        let total: u64 = plan.send.iter().map(|(_, s)| s).sum();
        let _ = writeln!(
            text,
            "  copy {} ({}):",
            counted(plan.send.len(), "entry", "entries"),
            human_bytes(total)
        );
        for (entry, size) in &plan.send {
            let _ = writeln!(text, "    + {entry} ({})", human_bytes(*size));
        }
    }
    match &plan.changes {
        None => {
            let _ = writeln!(text, "  runs this system already");
        }
        Some(changes) => render_changes(text, changes, true),
    }
    for (path, source) in &plan.secrets {
        let _ = writeln!(
            text,
            "  write secret {path} (from {source}, read at apply; on every apply)"
        );
    }
    for check in &plan.checks {
        let _ = writeln!(text, "  check {check}");
    }
    if let (false, Some(keep)) = (plan.deletes.is_empty(), plan.keeps) {
        let _ = writeln!(
            text,
            "  delete {} and collect the host's store (keeps the newest {keep})",
            generation_numbers(&plan.deletes)
        );
    }
    // Activating a generation puts every path and unit as it says, and an apply to a host that
    // runs it already puts back what drifted from it: either way the drift goes.
    if !plan.drift.is_empty() {
        let _ = writeln!(text, "  put back what drifted:");
    }
    for d in &plan.drift {
        let _ = writeln!(text, "    {}: {}", d.subject, d.difference);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names_as_a_shell_does() {
        assert!(glob("web*", "web1"));
        assert!(glob("web?", "web1"));
        assert!(glob("*", ""));
        assert!(glob("w*b*1", "web-b1"));
        assert!(!glob("web?", "web12"));
        assert!(!glob("db*", "web1"));
    }

    #[test]
    fn on_selects_by_name_tag_and_glob_and_names_what_matches_nothing() {
        let machines = vec![
            Machine::ssh("web1", "10.0.0.1").tag("web"),
            Machine::ssh("web2", "10.0.0.2").tag("web"),
            Machine::ssh("db1", "10.0.0.3").tag("db"),
        ];
        let names = |on: &str| -> Vec<String> {
            select(&machines, Some(on))
                .unwrap()
                .into_iter()
                .map(|i| machines[i].name().to_string())
                .collect()
        };
        assert_eq!(names("@db,web1"), ["db1", "web1"]);
        assert_eq!(names("web*,@web"), ["web1", "web2"]);
        let error = select(&machines, Some("cache*")).unwrap_err();
        assert_eq!(error.code, ExitCode::Usage);
        assert!(
            error.message.contains("web1, web2, db1"),
            "{}",
            error.message
        );
        let error = select(&machines, Some(" , ")).unwrap_err();
        assert_eq!(error.code, ExitCode::Usage);
        assert!(
            error.message.contains("`--on` names no machine") && error.message.contains("db1"),
            "{}",
            error.message
        );
        let error = select(&[], Some("web1")).unwrap_err();
        assert_eq!(error.code, ExitCode::Usage);
        assert!(
            error.message.contains("the program has none"),
            "{}",
            error.message
        );
        assert!(select(&[], None).unwrap().is_empty());
    }

    #[test]
    fn bounded_runs_at_most_the_limit_at_once_and_keeps_the_order() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (running, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let items: Vec<usize> = (0..20).collect();
        let results = bounded(&items, 3, |&i| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            running.fetch_sub(1, Ordering::SeqCst);
            i * 2
        });
        assert_eq!(results, (0..20).map(|i| i * 2).collect::<Vec<_>>());
        assert!(most.load(Ordering::SeqCst) <= 3);
    }
}
