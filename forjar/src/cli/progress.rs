//! What an apply shows while it runs: progress bars on a terminal (each running build with its
//! last log line, done/total, elapsed), plain lines otherwise, nothing with `-q`. `-v` also
//! prints every build's log, each line prefixed with the derivation's name.

use std::collections::HashMap;
use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::terminal::sanitise;
use crate::exec::{Done, Event};
use crate::plan::{Node, NodeKind};

/// How much to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verbosity {
    /// Errors only.
    Quiet,
    /// Progress.
    Normal,
    /// Progress and every build's log.
    Verbose,
}

/// A progress display; [`Progress::observe`] is the apply's observer.
pub(crate) struct Progress {
    verbosity: Verbosity,
    bars: Option<Bars>,
    /// When each running node started, and whether its `built` line was printed already (when
    /// its builder was done, before its install).
    started: Mutex<HashMap<usize, (Instant, bool)>>,
}

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    running: Mutex<HashMap<usize, ProgressBar>>,
}

/// Tells nodes apart while they run (two derivations may share a name).
fn id(node: &Node) -> usize {
    std::ptr::from_ref(node) as usize
}

fn verb(node: &Node) -> &'static str {
    match node.kind {
        NodeKind::Derivation { .. } => "building",
        NodeKind::Source { .. } | NodeKind::Toolchain { .. } => "importing",
    }
}

fn at(node: &Node) -> String {
    node.location
        .as_deref()
        .map(|l| format!(" ({l})"))
        .unwrap_or_default()
}

impl Progress {
    /// A display for `to_do` builds and imports; bars if standard error is a terminal.
    pub(crate) fn new(verbosity: Verbosity, to_do: usize) -> Progress {
        let bars = (verbosity == Verbosity::Normal && io::stderr().is_terminal()).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let total = multi.add(ProgressBar::new(to_do as u64));
            total.set_style(
                ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} done")
                    .expect("a valid template"),
            );
            total.enable_steady_tick(Duration::from_millis(200));
            Bars {
                multi,
                total,
                running: Mutex::new(HashMap::new()),
            }
        });
        Progress {
            verbosity,
            bars,
            started: Mutex::new(HashMap::new()),
        }
    }

    /// Prints a line above the bars, or on its own.
    fn line(&self, text: &str) {
        let text = &*sanitise(text);
        match &self.bars {
            Some(bars) => {
                let _ = bars.multi.println(text);
            }
            None => {
                let _ = writeln!(io::stderr().lock(), "{text}");
            }
        }
    }

    /// Shows one event.
    pub(crate) fn observe(&self, event: Event<'_>) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        match event {
            Event::Started(node) => {
                if let Ok(mut started) = self.started.lock() {
                    started.insert(id(node), (Instant::now(), false));
                }
                let text = format!("{} {}{}", verb(node), node.name, at(node));
                match &self.bars {
                    Some(bars) => {
                        let bar = bars
                            .multi
                            .insert_before(&bars.total, ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template("{spinner} {prefix} {wide_msg}")
                                .expect("a valid template"),
                        );
                        bar.set_prefix(sanitise(&text).into_owned());
                        bar.enable_steady_tick(Duration::from_millis(120));
                        if let Ok(mut running) = bars.running.lock() {
                            running.insert(id(node), bar);
                        }
                    }
                    None => self.line(&text),
                }
            }
            Event::Log(node, line) => {
                if self.verbosity == Verbosity::Verbose {
                    self.line(&format!("{}> {line}", node.name));
                } else if let Some(bars) = &self.bars
                    && let Ok(running) = bars.running.lock()
                    && let Some(bar) = running.get(&id(node))
                {
                    bar.set_message(sanitise(line).into_owned());
                }
            }
            Event::Finished(node, done, elapsed) => {
                self.end(node);
                let told = self
                    .started
                    .lock()
                    .ok()
                    .and_then(|mut started| started.remove(&id(node)))
                    .is_some_and(|(_, told)| told);
                if done != Done::Cached && !told {
                    let verb = match (done, &node.kind) {
                        (Done::Downloaded, _) => "downloaded",
                        (Done::Executed, _) => "built remotely",
                        (_, NodeKind::Derivation { .. }) => "built",
                        (_, NodeKind::Source { .. } | NodeKind::Toolchain { .. }) => "imported",
                    };
                    self.line(&format!(
                        "{verb} {} in {:.1}s",
                        node.name,
                        elapsed.as_secs_f64()
                    ));
                }
            }
            Event::Failed(node, _) => {
                self.end(node);
                if let Ok(mut started) = self.started.lock() {
                    started.remove(&id(node));
                }
                self.line(&format!("failed {}{}", node.name, at(node)));
            }
            Event::Remote(node, error) => {
                self.line(&format!("warning: remote, for {}: {error}", node.name));
            }
            Event::Waiting(node, holder) => {
                self.line(&format!(
                    "waiting for {holder} to finish, which holds `{}`",
                    node.name
                ));
            }
            // The builder is done: the line says so now, while the outputs are installed beside
            // the next builds, so that the lines show the builds `-j` counts.
            Event::Built(node) => {
                let took = self.started.lock().ok().and_then(|mut started| {
                    let (at, told) = started.get_mut(&id(node))?;
                    *told = true;
                    Some(at.elapsed())
                });
                if let Some(took) = took {
                    self.line(&format!(
                        "built {} in {:.1}s",
                        node.name,
                        took.as_secs_f64()
                    ));
                }
            }
            Event::Skipped(node, failed) => {
                if let Some(bars) = &self.bars {
                    bars.total.inc(1);
                }
                self.line(&format!(
                    "skipped {}: it depends on `{}`, which failed",
                    node.name, failed.name
                ));
            }
        }
    }

    fn end(&self, node: &Node) {
        if let Some(bars) = &self.bars {
            if let Ok(mut running) = bars.running.lock()
                && let Some(bar) = running.remove(&id(node))
            {
                bar.finish_and_clear();
                bars.multi.remove(&bar);
            }
            bars.total.inc(1);
        }
    }

    /// Removes the bars.
    pub(crate) fn finish(&self) {
        if let Some(bars) = &self.bars {
            bars.total.finish_and_clear();
            let _ = bars.multi.clear();
        }
    }
}
