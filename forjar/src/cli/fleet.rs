//! The deploy after `apply` builds: hosts in parallel up to `--max-hosts`, in rolling waves
//! (`--serial`, `--canary`) under a failure budget (`--max-fail`, `--rollback-all`), one live
//! line per host on a terminal, and a summary table (or `--json`) at the end.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::ops::Range;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::machine::{bounded, generation_numbers, summary};
use super::process::{INTERRUPTED, interrupted_code};
use super::program::Session;
use super::progress::Verbosity;
use super::terminal::sanitise;
use super::{ExitCode, Failure, emit};
use crate::machine::Machine;
use crate::machine::agent::Drift;
use crate::machine::deploy::{self, DeployOptions, HostReport, HostResult, Reach, System};
use crate::machine::secret;
use crate::store::{counted, human_bytes};

/// How long an activated host waits for the controller's confirmation, unless told otherwise
/// (deploy-rs's default).
pub(super) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// A number of hosts, or a share of the selected ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Amount {
    /// This many.
    Hosts(usize),
    /// This percentage of the selected hosts, rounded down.
    Percent(u8),
}

impl Amount {
    /// The number of hosts this is, of `total`.
    fn of(self, total: usize) -> usize {
        match self {
            Amount::Hosts(n) => n,
            Amount::Percent(p) => total * usize::from(p) / 100,
        }
    }
}

impl FromStr for Amount {
    type Err = String;
    fn from_str(text: &str) -> Result<Amount, String> {
        let bad =
            || format!("`{text}` is neither a number of hosts (`3`) nor a percentage (`25%`)");
        match text.strip_suffix('%') {
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= 100 => Ok(Amount::Percent(p)),
                Ok(_) => Err(format!("`{text}` is more than 100%")),
                Err(_) => Err(bad()),
            },
            None => text.parse().map(Amount::Hosts).map_err(|_| bad()),
        }
    }
}

/// A wave's size: an [`Amount`] other than none (a share too small for one host is one host).
fn wave_size(text: &str) -> Result<Amount, String> {
    match text.parse()? {
        Amount::Hosts(0) | Amount::Percent(0) => Err(format!(
            "`{text}`: a wave has at least one host; leave `--serial` out to deploy every host \
             at once"
        )),
        size => Ok(size),
    }
}

/// How `apply` deploys the machines it built for.
#[derive(Debug, clap::Args)]
pub(super) struct DeployArgs {
    /// Deploy in waves of N hosts, or P% of the selected hosts; a wave starts when the one
    /// before it has ended [default: all hosts in one wave].
    #[arg(long, value_name = "N|P%", value_parser = wave_size)]
    serial: Option<Amount>,
    /// Deploy one host alone first, as a canary.
    #[arg(long)]
    canary: bool,
    /// How many hosts may fail or go back (N, or P% of the selected) before no new wave
    /// starts.
    #[arg(long, value_name = "N|P%", default_value = "0")]
    max_fail: Amount,
    /// When more hosts failed than `--max-fail` allows, also take the hosts this apply
    /// changed back to the generation they were on.
    #[arg(long)]
    rollback_all: bool,
    /// Seconds an activated host waits for the confirmation that the controller reaches it
    /// over a new connection, before it goes back to its previous generation by itself.
    #[arg(long, value_name = "SECONDS", default_value_t = CONFIRM_TIMEOUT.as_secs() as u16,
          value_parser = clap::value_parser!(u16).range(5..))]
    confirm_timeout: u16,
    /// Print the hosts' results as JSON on standard output.
    #[arg(long)]
    pub(super) json: bool,
}

/// The waves of a rollout of `total` hosts: a canary of one first if asked, then waves of
/// `serial` hosts (all at once without it).
fn waves(total: usize, serial: Option<Amount>, canary: bool) -> Vec<Range<usize>> {
    let size = serial.map_or(total, |s| s.of(total)).max(1);
    let mut waves = Vec::new();
    let mut start = 0;
    if canary && total > 1 {
        waves.push(0..1);
        start = 1;
    }
    while start < total {
        let end = (start + size).min(total);
        waves.push(start..end);
        start = end;
    }
    waves
}

/// What a Ctrl-C during a deploy or a rollback does.
pub(super) const ACTIVATIONS_GO_ON: &str = "interrupted: a host activating goes on to its \
    outcome; no other host is activated (Ctrl-C again stops at once, and a host not yet \
    confirmed then goes back by itself)";

/// Runs `work` (hosts' commands, each of which sees an interrupt between its steps), and shows
/// `notice`, what a Ctrl-C does, as soon as one comes.
pub(super) fn noticing_interrupts<T>(
    lines: &HostLines,
    notice: &str,
    work: impl FnOnce() -> T,
) -> T {
    let ended = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let _ = std::thread::Builder::new().spawn_scoped(scope, || {
            while !ended.load(Ordering::SeqCst) {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    lines.line(notice);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let done = work();
        ended.store(true, Ordering::SeqCst);
        done
    })
}

/// One line per host: a live spinner line each on a terminal, plain `host: text` lines
/// otherwise (unless made [`HostLines::live_only`]), nothing with `-q`.
pub(super) struct HostLines {
    verbosity: Verbosity,
    bars: Option<(MultiProgress, HashMap<String, ProgressBar>)>,
    /// Whether a host's steps are written as plain lines when there is no terminal.
    plain_steps: bool,
}

/// A host's line before its first step.
const WAITING: &str = "waiting";

impl HostLines {
    pub(super) fn new(verbosity: Verbosity, machines: &[&Machine]) -> HostLines {
        let live = verbosity == Verbosity::Normal && io::stderr().is_terminal();
        let bars = live.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let width = machines.iter().map(|m| m.name().len()).max().unwrap_or(0);
            let style = ProgressStyle::with_template(&format!(
                "{{spinner}} {{prefix:<{width}}} {{elapsed:>4}} {{wide_msg}}"
            ))
            .expect("a valid template");
            let bars = machines
                .iter()
                .map(|m| {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(style.clone());
                    bar.set_prefix(m.name().to_string());
                    bar.set_message(WAITING);
                    (m.name().to_string(), bar)
                })
                .collect();
            (multi, bars)
        });
        HostLines {
            verbosity,
            bars,
            plain_steps: true,
        }
    }

    /// Host lines for a command that reads: its steps only on a terminal, where they are
    /// replaced by its output; a notice ([`HostLines::line`]) everywhere but with `-q`.
    pub(super) fn live_only(verbosity: Verbosity, machines: &[&Machine]) -> HostLines {
        HostLines {
            plain_steps: false,
            ..HostLines::new(verbosity, machines)
        }
    }

    pub(super) fn show(&self, host: &str, text: &str) {
        let text = sanitise(text);
        match &self.bars {
            Some((_, bars)) => {
                if let Some(bar) = bars.get(host) {
                    // The clock and the spinner start with the host's first step (a host of a
                    // later wave waits), and again for a host taken back after it finished.
                    if bar.message() == WAITING || bar.is_finished() {
                        bar.reset_elapsed();
                        bar.enable_steady_tick(Duration::from_millis(120));
                    }
                    bar.set_message(text.into_owned());
                }
            }
            None if self.verbosity != Verbosity::Quiet && self.plain_steps => {
                let _ = writeln!(io::stderr().lock(), "{host}: {text}");
            }
            None => {}
        }
    }

    /// An update only a live line shows (bytes sent so far).
    fn live(&self, host: &str, text: &str) {
        if self.bars.is_some() {
            self.show(host, text);
        }
    }

    fn done(&self, report: &HostReport) {
        match &self.bars {
            Some((_, bars)) => {
                if let Some(bar) = bars.get(&report.machine) {
                    bar.finish_with_message(result_text(report));
                }
            }
            None => self.show(&report.machine, &result_text(report)),
        }
    }

    pub(super) fn line(&self, text: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(sanitise(text));
            }
            None if self.verbosity != Verbosity::Quiet => {
                let _ = writeln!(io::stderr().lock(), "{}", sanitise(text));
            }
            None => {}
        }
    }

    pub(super) fn finish(&self) {
        if let Some((multi, _)) = &self.bars {
            let _ = multi.clear();
        }
    }
}

/// Every selected machine's secret values, each source read once, and before any host is
/// touched: a value that cannot be read stops the apply, not a wave halfway.
fn read_secrets(machines: &[&Machine]) -> Result<Vec<secret::Values>, Failure> {
    let mut read: HashMap<String, Vec<u8>> = HashMap::new();
    machines
        .iter()
        .map(|m| {
            let mut values = secret::Values::default();
            for (path, secret) in m.secrets() {
                let value = match read.entry(secret.source()) {
                    Entry::Occupied(known) => known.get().clone(),
                    Entry::Vacant(new) => new
                        .insert(secret.read().map_err(|why| {
                            Failure::new(
                                ExitCode::Failure,
                                format!(
                                    "machine `{}`: secret {}: {why}; no host was changed",
                                    m.name(),
                                    path.as_str()
                                ),
                            )
                        })?)
                        .clone(),
                };
                values.0.insert(path.as_str().to_string(), value);
            }
            Ok(values)
        })
        .collect()
}

/// A host's result in a few words: what it is on now.
fn result_text(report: &HostReport) -> String {
    let on = |n: Option<u64>| n.map_or("no generation".to_string(), |n| format!("generation {n}"));
    match report.result {
        HostResult::Activated => format!("activated {}", on(report.generation)),
        HostResult::Unchanged => format!("unchanged, {}", on(report.generation)),
        HostResult::RolledBack => format!("rolled back to {}", on(report.generation)),
        HostResult::Skipped => "skipped, not contacted".to_string(),
        HostResult::Interrupted => match report.generation {
            Some(n) => format!("interrupted, on generation {n}"),
            None => "interrupted, never activated".to_string(),
        },
        HostResult::Failed => match report.generation {
            Some(n) => format!("failed, on generation {n}"),
            None => "failed".to_string(),
        },
    }
}

impl Session {
    /// After `apply` built everything: deploys the selected machines in waves, hosts of a
    /// wave in parallel, and prints the summary.
    pub(super) fn deploy(&self, args: &DeployArgs) -> Result<ExitCode, Failure> {
        let machines = self.selected_machines();
        if machines.is_empty() {
            if args.json {
                emit("{\n  \"hosts\": []\n}\n")?;
            }
            return Ok(ExitCode::Success);
        }
        let systems = self.systems(&machines)?;
        let secrets = read_secrets(&machines)?;
        super::process::handle_interrupts();
        let mut options =
            DeployOptions::new(self.ssh(), Duration::from_secs(args.confirm_timeout.into()));
        options.interrupt = Some(&INTERRUPTED);
        let total = machines.len();
        let budget = args.max_fail.of(total);
        let waves = waves(total, args.serial, args.canary);
        let lines = HostLines::new(self.verbosity, &machines);
        let progress = |host: &str, line: &str| lines.show(host, line);
        let mut reports: Vec<HostReport> = machines
            .iter()
            .map(|m| HostReport::new(m.name(), HostResult::Skipped))
            .collect();
        let mut stopped = None;
        noticing_interrupts(&lines, ACTIVATIONS_GO_ON, || {
            for (number, wave) in waves.iter().enumerate() {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    for (slot, machine) in reports[wave.start..]
                        .iter_mut()
                        .zip(&machines[wave.start..])
                    {
                        *slot = HostReport::not_contacted(machine.name());
                    }
                    break;
                }
                let failures = reports.iter().filter(|r| r.failed()).count();
                if failures > budget {
                    stopped = Some((number, failures));
                    break;
                }
                if waves.len() > 1 {
                    lines.line(&format!(
                        "wave {} of {}: {}",
                        number + 1,
                        waves.len(),
                        machines[wave.clone()]
                            .iter()
                            .map(|m| m.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                let hosts: Vec<usize> = wave.clone().collect();
                let done = bounded(&hosts, self.max_hosts, |&i| {
                    let report = deploy::deploy_host(
                        &self.store,
                        machines[i],
                        &systems[i],
                        &secrets[i],
                        &options,
                        &progress,
                        &|host, line| lines.live(host, line),
                    );
                    lines.done(&report);
                    report
                });
                for (slot, report) in reports[wave.clone()].iter_mut().zip(done) {
                    *slot = report;
                }
            }
        });
        // What an interrupt left as it was; none if it came too late to stop anything.
        let interrupted = reports.iter().filter(|r| r.interrupted()).count();
        let failures = reports.iter().filter(|r| r.failed()).count();
        let spent = failures > budget;
        if spent && args.rollback_all {
            self.roll_back_changed(&machines, &systems, &mut reports, &options, &lines);
        }
        lines.finish();
        let mut text = String::new();
        if args.json {
            let value = serde_json::json!({
                "hosts": reports,
                "waves": waves.iter().map(|w| {
                    machines[w.clone()].iter().map(|m| m.name()).collect::<Vec<_>>()
                }).collect::<Vec<_>>(),
                "max_fail": budget,
                "failed": failures,
                "stopped_before_wave": stopped.map(|(n, _)| n + 1),
                "interrupted": interrupted,
            });
            let _ = writeln!(text, "{value:#}");
        } else {
            render_summary(&mut text, &reports);
            if let Some((number, failures)) = stopped {
                let _ = writeln!(
                    text,
                    "stopped before wave {} of {}: {} failed or went back, more than \
                     --max-fail allows ({budget}); the skipped hosts were not touched",
                    number + 1,
                    waves.len(),
                    counted(failures, "host", "hosts")
                );
            }
            if interrupted > 0 {
                let _ = writeln!(
                    text,
                    "interrupted: {} left as {}",
                    counted(interrupted, "host", "hosts"),
                    if interrupted == 1 {
                        "it was"
                    } else {
                        "they were"
                    }
                );
            }
        }
        emit(&text)?;
        Ok(if interrupted > 0 {
            interrupted_code()
        } else if reports.iter().any(|r| r.result == HostResult::Failed) || stopped.is_some() {
            ExitCode::Failure
        } else if reports.iter().any(|r| r.result == HostResult::RolledBack) {
            ExitCode::RolledBack
        } else {
            ExitCode::Success
        })
    }

    /// `--rollback-all`: the hosts this apply activated go back to the generation they were on.
    fn roll_back_changed(
        &self,
        machines: &[&Machine],
        systems: &[System],
        reports: &mut [HostReport],
        options: &DeployOptions,
        lines: &HostLines,
    ) {
        let changed: Vec<usize> = (0..reports.len())
            .filter(|&i| reports[i].result == HostResult::Activated)
            .collect();
        if changed.is_empty() {
            return;
        }
        lines.line(&format!(
            "more hosts failed than --max-fail allows: taking the {} this apply changed back",
            counted(changed.len(), "host", "hosts")
        ));
        let progress = |host: &str, line: &str| lines.show(host, line);
        let outcomes = bounded(&changed, self.max_hosts, |&i| {
            let reach = Reach {
                machine: machines[i],
                store: &self.store,
                agent: &systems[i].manifest.agent,
                ssh: &options.ssh,
            };
            match reports[i].previous {
                None => Err(
                    "it had no generation before this apply, so there is nothing to go \
                             back to; it stays on the new one"
                        .to_string(),
                ),
                previous => deploy::rollback_host(&reach, previous, options, &progress)
                    .map_err(|e| e.message()),
            }
        });
        for (&i, outcome) in changed.iter().zip(outcomes) {
            let report = &mut reports[i];
            match outcome {
                Ok(outcome) if HostResult::of_outcome(&outcome.result) == HostResult::Activated => {
                    report.result = HostResult::RolledBack;
                    report.generation = outcome.generation;
                    report.error = Some(format!(
                        "taken back by --rollback-all to the system of generation {}",
                        report.previous.unwrap_or_default()
                    ));
                }
                Ok(outcome) => {
                    report.result = HostResult::Failed;
                    report.generation = outcome.generation;
                    report.error = Some(format!(
                        "--rollback-all could not take it back ({}): {}",
                        outcome.result,
                        outcome.error.unwrap_or_default()
                    ));
                }
                Err(e) => {
                    report.result = HostResult::Failed;
                    report.error = Some(format!("--rollback-all could not take it back: {e}"));
                }
            }
            lines.done(report);
        }
    }
}

/// What an apply put back on a host that runs its system already: `put back what drifted:
/// /etc/app.conf, unit app.service`, each subject once.
fn put_back(repaired: &[Drift]) -> String {
    let mut subjects: Vec<&str> = Vec::new();
    for d in repaired {
        if !subjects.contains(&d.subject.as_str()) {
            subjects.push(&d.subject);
        }
    }
    format!("put back what drifted: {}", subjects.join(", "))
}

/// What a machine that keeps only its newest generations let go after the apply.
fn kept_newest(r: &HostReport) -> Option<String> {
    if r.deleted_generations.is_empty() {
        return None;
    }
    let numbers = generation_numbers(&r.deleted_generations);
    Some(match r.collected {
        Some(c) => format!(
            "deleted {numbers}, freeing {} ({})",
            counted(c.entries, "entry", "entries"),
            human_bytes(c.bytes)
        ),
        None => format!("deleted {numbers}"),
    })
}

/// The per-host table printed at the end of a deploy.
fn render_summary(text: &mut String, reports: &[HostReport]) {
    let rows: Vec<[String; 4]> = reports
        .iter()
        .map(|r| {
            let sent = match r.sent_bytes {
                0 => "-".to_string(),
                bytes => {
                    let entries = counted(r.sent_entries, "entry", "entries");
                    let what = match (r.sent_agent, r.sent_entries) {
                        (true, 0) => "the agent".to_string(),
                        (true, _) => format!("the agent and {entries}"),
                        (false, _) => entries,
                    };
                    format!("{what}, {} ({bytes} bytes)", human_bytes(bytes))
                }
            };
            let detail = match (&r.error, &r.changes) {
                (Some(error), _) => error.clone(),
                (None, Some(changes)) if r.result == HostResult::Activated => {
                    match summary(changes) {
                        // A new generation whose difference is elsewhere: the agent, a hook.
                        none if none.is_empty() => "no path, user or unit changed".to_string(),
                        some => some,
                    }
                }
                _ if !r.repaired.is_empty() => put_back(&r.repaired),
                _ => String::new(),
            };
            let detail = match kept_newest(r) {
                Some(kept) if detail.is_empty() => kept,
                Some(kept) => format!("{detail}; {kept}"),
                None => detail,
            };
            let was = match (r.result, r.previous) {
                (HostResult::Activated, Some(p)) => format!(" (was {p})"),
                _ => String::new(),
            };
            [
                r.machine.clone(),
                format!("{}{was}", result_text(r)),
                sent,
                detail,
            ]
        })
        .collect();
    let header = ["HOST", "RESULT", "SENT", "DETAIL"];
    let width = |c: usize| {
        rows.iter()
            .map(|r| r[c].chars().count())
            .chain([header[c].len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let _ = writeln!(
        text,
        "{:<w0$}  {:<w1$}  {:<w2$}  {}",
        header[0], header[1], header[2], header[3]
    );
    for row in &rows {
        let _ = writeln!(
            text,
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            row[0],
            row[1],
            row[2],
            sanitise(&row[3]).replace('\n', " | ")
        );
    }
    let count = |result: HostResult| reports.iter().filter(|r| r.result == result).count();
    let _ = write!(
        text,
        "{}: {} activated, {} unchanged, {} rolled back, {} failed, {} skipped",
        counted(reports.len(), "host", "hosts"),
        count(HostResult::Activated),
        count(HostResult::Unchanged),
        count(HostResult::RolledBack),
        count(HostResult::Failed),
        count(HostResult::Skipped)
    );
    // Every host is counted once; an interrupt's are named only when there are any.
    match count(HostResult::Interrupted) {
        0 => text.push('\n'),
        n => {
            let _ = writeln!(text, ", {n} interrupted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_host_counts_or_percentages_and_bad_ones_are_named() {
        assert_eq!("3".parse(), Ok(Amount::Hosts(3)));
        assert_eq!("25%".parse(), Ok(Amount::Percent(25)));
        assert_eq!(Amount::Percent(25).of(10), 2);
        assert!("101%".parse::<Amount>().unwrap_err().contains("`101%`"));
        assert!("x".parse::<Amount>().unwrap_err().contains("`x`"));
        // A wave of no host is refused; no failure allowed is the default.
        assert_eq!(wave_size("2"), Ok(Amount::Hosts(2)));
        for none in ["0", "0%"] {
            let error = wave_size(none).unwrap_err();
            assert!(
                error.contains(&format!("`{none}`")) && error.contains("at least one host"),
                "{error}"
            );
        }
        assert_eq!("0".parse(), Ok(Amount::Hosts(0)));
    }

    #[test]
    fn waves_start_with_the_canary_and_cover_every_host_once() {
        assert_eq!(waves(5, None, false), vec![0..5]);
        assert_eq!(waves(5, None, true), vec![0..1, 1..5]);
        assert_eq!(
            waves(5, Some(Amount::Hosts(2)), true),
            vec![0..1, 1..3, 3..5]
        );
        assert_eq!(
            waves(10, Some(Amount::Percent(30)), false),
            vec![0..3, 3..6, 6..9, 9..10]
        );
        // A share smaller than one host is one host.
        assert_eq!(
            waves(3, Some(Amount::Percent(10)), false),
            vec![0..1, 1..2, 2..3]
        );
        assert!(waves(0, Some(Amount::Hosts(2)), true).is_empty());
    }
}
