//! The commands that read the plan and the store and change nothing: `plan`, `graph`,
//! `why-depends`, `show` and `log`.

use std::fmt::Write as _;
use std::io;

use clap::Subcommand;

use super::program::Session;
use super::{ExitCode, Failure, emit, store};
use crate::plan::{NodeKind, Plan};
use crate::store::EntryName;

/// The commands that read the plan and the store, and change nothing.
#[derive(Debug, Subcommand)]
pub(super) enum InspectCommand {
    /// Show every derivation and source with its key and status; builds and writes nothing.
    #[command(display_order = 1)]
    Plan {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the dependency graph.
    #[command(display_order = 4)]
    Graph {
        /// Graphviz DOT (the default).
        #[arg(long, conflicts_with = "json")]
        dot: bool,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show why A depends on B: a shortest chain of inputs from A to B.
    #[command(display_order = 5)]
    WhyDepends {
        /// The dependent (a derivation or source name, or a store entry name).
        a: String,
        /// The dependency.
        b: String,
    },
    /// Show a derivation: its request, key, outputs, and the meta.yaml of those built.
    #[command(display_order = 6)]
    Show {
        /// A derivation or source name, or a store entry.
        name: String,
    },
    /// Print a derivation's build log.
    #[command(display_order = 7)]
    Log {
        /// A derivation name, or a store entry.
        name: String,
    },
}

impl Session {
    /// Runs an inspecting command.
    pub(super) fn inspect(&self, command: InspectCommand) -> Result<ExitCode, Failure> {
        let plan = &self.plan;
        match command {
            InspectCommand::Plan { json: true } if !self.machines.is_empty() => {
                let mut value = plan.to_json();
                let (code, hosts) = self.host_plans_json()?;
                value["hosts"] = hosts;
                emit(&format!("{value:#}\n"))?;
                return Ok(code);
            }
            InspectCommand::Plan { json: true } | InspectCommand::Graph { json: true, .. } => {
                emit(&format!("{:#}\n", plan.to_json()))?;
            }
            InspectCommand::Plan { json: false } => {
                emit(&render_plan(plan))?;
                return self.plan_hosts();
            }
            InspectCommand::Graph { .. } => emit(&plan.to_dot())?,
            InspectCommand::WhyDepends { a, b } => return self.why_depends(&a, &b),
            InspectCommand::Show { name } => return self.show(&name),
            InspectCommand::Log { name } => return self.log(&name),
        }
        Ok(ExitCode::Success)
    }

    /// Prints a shortest chain of inputs from `a` to `b`.
    fn why_depends(&self, a: &str, b: &str) -> Result<ExitCode, Failure> {
        let plan = &self.plan;
        let (from, to) = (self.find_node(a)?, self.find_node(b)?);
        let Some(chain) = plan.why_depends(from, to) else {
            emit(&format!("`{a}` does not depend on `{b}`\n"))?;
            return Ok(ExitCode::Failure);
        };
        let mut text = String::new();
        for (depth, (node, input)) in chain.iter().enumerate() {
            let indent = if depth == 0 {
                String::new()
            } else {
                format!("{}└── ", "    ".repeat(depth - 1))
            };
            let via = input
                .as_ref()
                .map(|i| format!("  (input `{i}`)"))
                .unwrap_or_default();
            text.push_str(&format!("{indent}{}{via}\n", plan.node(*node).name));
        }
        emit(&text)?;
        Ok(ExitCode::Success)
    }

    fn show(&self, name: &str) -> Result<ExitCode, Failure> {
        let Some(index) = self.find(name)? else {
            let entry = self.store.resolve(name)?;
            emit(&store::show_entry(&self.store, &entry)?)?;
            return Ok(ExitCode::Success);
        };
        let node = self.plan.node(index);
        let mut text = format!("name: {}\n", node.name);
        if let Some(location) = &node.location {
            let _ = writeln!(text, "location: {location}");
        }
        let _ = writeln!(text, "status: {}", node.status.as_str());
        let indent = |yaml: String| -> String {
            yaml.lines().map(|l| format!("  {l}\n")).collect::<String>()
        };
        let entries: Vec<(String, EntryName)> = match &node.kind {
            NodeKind::Derivation {
                request,
                key,
                outputs,
                ..
            } => {
                let _ = writeln!(text, "key: {key}");
                let _ = writeln!(text, "request:");
                text.push_str(&indent(
                    serde_yaml_ng::to_string(request).unwrap_or_else(|e| format!("({e})")),
                ));
                outputs
                    .iter()
                    .map(|(o, p)| (o.to_string(), p.entry.clone()))
                    .collect()
            }
            NodeKind::Source {
                path,
                digest,
                entry,
            } => {
                let _ = writeln!(text, "path: {}", path.display());
                let _ = writeln!(text, "digest: {digest}");
                vec![("out".to_string(), entry.clone())]
            }
        };
        for (output, entry) in entries {
            let _ = writeln!(
                text,
                "output {output}: {}",
                self.store.entry_path(&entry).display()
            );
            if self.store.contains(&entry) {
                text.push_str(&indent(self.store.meta(&entry)?.to_yaml()));
            } else {
                text.push_str("  (not in the store)\n");
            }
        }
        emit(&text)?;
        Ok(ExitCode::Success)
    }

    fn log(&self, name: &str) -> Result<ExitCode, Failure> {
        let Some(index) = self.find(name)? else {
            let entry = self.store.resolve(name)?;
            emit(&String::from_utf8_lossy(&self.store.log(&entry)?))?;
            return Ok(ExitCode::Success);
        };
        let node = self.plan.node(index);
        let NodeKind::Derivation { key, .. } = &node.kind else {
            return Err(Failure::new(
                ExitCode::Failure,
                format!("`{name}` is a source; sources are imported, not built, and have no log"),
            ));
        };
        let path = self.store.log_path(&key.store_hash());
        match std::fs::read(&path) {
            Ok(log) => emit(&String::from_utf8_lossy(&log))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Failure::new(
                    ExitCode::Failure,
                    format!(
                        "`{name}` has no build log in this store: it has not been built here (status: {}); `build {name}` builds it",
                        node.status.as_str()
                    ),
                ));
            }
            Err(e) => {
                return Err(Failure::new(
                    ExitCode::Failure,
                    format!("cannot read `{}`: {e}", path.display()),
                ));
            }
        }
        Ok(ExitCode::Success)
    }
}

/// The plan as people read it: one line per node, dependencies first, then a summary.
pub fn render_plan(plan: &Plan) -> String {
    let rows: Vec<[String; 4]> = plan
        .nodes()
        .map(|(_, node)| {
            let (entry, origin) = match &node.kind {
                NodeKind::Derivation { outputs, .. } => (
                    outputs
                        .values()
                        .map(|o| o.entry.to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                    node.location.clone().unwrap_or_default(),
                ),
                NodeKind::Source { entry, path, .. } => {
                    (entry.to_string(), path.display().to_string())
                }
            };
            let status = if node.impure {
                format!("{}*", node.status.as_str())
            } else {
                node.status.as_str().to_string()
            };
            [status, node.name.to_string(), origin, entry]
        })
        .collect();
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut text = String::with_capacity(rows.len() * (w0 + w1 + w2 + 48));
    for [status, name, origin, entry] in &rows {
        let _ = writeln!(text, "{status:<w0$}  {name:<w1$}  {origin:<w2$}  {entry}");
    }
    if plan.nodes().any(|(_, n)| n.impure) {
        text.push_str(
            "* impure: sees the host's tools (host-tools); keyed by a host fingerprint\n",
        );
    }
    let s = plan.summary();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    text.push_str(&format!(
        "Plan: {} to build, {} cached, {} to import",
        s.build,
        s.cached,
        plural(s.import, "source", "sources")
    ));
    if s.unneeded > 0 {
        // Build-time inputs of what is in the store, after a `gc`: nothing will make them.
        text.push_str(&format!(", {} not needed", s.unneeded));
    }
    text.push('\n');
    text
}
