//! The commands that read the plan and the store and change nothing: `plan`, `graph`,
//! `why-depends`, `show` and `log`.

use std::borrow::Cow;
use std::fmt::Write as _;

use clap::Subcommand;

use super::program::Session;
use super::{ExitCode, Failure, emit, store};
use std::collections::BTreeMap;

use petgraph::graph::NodeIndex;

use crate::explain::Reason;
use crate::map::SortedMap;
use crate::name::OutputName;
use crate::plan::{NodeKind, Plan, Planned, PlannedOutput};
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
        /// Say why each node is built: what changed since the last build of its name in the
        /// store (a field of its request, an input, the host), or that it never was built.
        #[arg(long)]
        explain: bool,
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
        /// As JSON: `{name, location, status, kind, key, request, outputs: {NAME: {path,
        /// meta}}}` (`meta` null for an output not in the store).
        #[arg(long)]
        json: bool,
    },
    /// Print a derivation's build log.
    #[command(display_order = 7)]
    Log {
        /// A derivation name, or a store entry.
        name: String,
        /// Print the log's metadata as JSON instead: `{name, entry, log, bytes, log_digest,
        /// started, finished, duration_ms}`.
        #[arg(long)]
        json: bool,
    },
}

impl Session {
    /// Runs an inspecting command.
    pub(super) fn inspect(&self, command: InspectCommand) -> Result<ExitCode, Failure> {
        let plan = &self.plan;
        if matches!(command, InspectCommand::Plan { .. }) {
            self.note_absent_store();
        }
        match command {
            InspectCommand::Plan {
                json: true,
                explain,
            } if !self.machines.is_empty() => {
                let mut value = self.plan_json(explain);
                let (code, hosts) = self.host_plans_json()?;
                value["hosts"] = hosts;
                emit(&format!("{value:#}\n"))?;
                return Ok(code);
            }
            InspectCommand::Plan {
                json: true,
                explain,
            } => {
                emit(&format!("{:#}\n", self.plan_json(explain)))?;
            }
            InspectCommand::Graph { json: true, .. } => {
                emit(&format!("{:#}\n", plan.to_json()))?;
            }
            InspectCommand::Plan {
                json: false,
                explain,
            } => {
                let reasons = explain.then(|| crate::explain::explain(plan, &self.store));
                super::emit_changes(&render_plan(plan, reasons.as_ref()))?;
                return self.plan_hosts();
            }
            InspectCommand::Graph { .. } => emit(&plan.to_dot())?,
            InspectCommand::WhyDepends { a, b } => return self.why_depends(&a, &b),
            InspectCommand::Show { name, json } => return self.show(&name, json),
            InspectCommand::Log { name, json } => return self.log(&name, json),
        }
        Ok(ExitCode::Success)
    }

    /// The plan as JSON; with `explain`, each node built or imported says why (`why`).
    fn plan_json(&self, explain: bool) -> serde_json::Value {
        let mut value = self.plan.to_json();
        if explain {
            let reasons = crate::explain::explain(&self.plan, &self.store);
            if let Some(nodes) = value["nodes"].as_array_mut() {
                for node in nodes {
                    let index = node["id"].as_u64().map(|i| NodeIndex::new(i as usize));
                    if let Some(why) = index.and_then(|i| reasons.get(&i)) {
                        node["why"] = serde_json::json!(why);
                    }
                }
            }
        }
        value
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

    fn show(&self, name: &str, json: bool) -> Result<ExitCode, Failure> {
        let Some(index) = self.find(name)? else {
            let entry = self.store.resolve(name)?;
            emit(&match json {
                true => format!("{:#}\n", store::entry_json(&self.store, &entry)?),
                false => store::show_entry(&self.store, &entry)?,
            })?;
            return Ok(ExitCode::Success);
        };
        let node = self.plan.node(index);
        let mut value = serde_json::json!({
            "name": node.name.as_str(),
            "location": node.location.as_deref(),
            "status": node.status.as_str(),
        });
        let mut text = format!("name: {}\n", node.name);
        if let Some(location) = &node.location {
            let _ = writeln!(text, "location: {location}");
        }
        let _ = writeln!(text, "status: {}", node.status.as_str());
        let indent = |yaml: String| -> String {
            yaml.lines().map(|l| format!("  {l}\n")).collect::<String>()
        };
        let entries: Vec<(String, EntryName)> = match &node.kind {
            NodeKind::Derivation(planned) => {
                let _ = writeln!(text, "key: {}", planned.key());
                value["kind"] = "derivation".into();
                value["key"] = planned.key().to_string().into();
                // Made here for a derivation planned without it (found under its own key).
                let resolved = self
                    .plan
                    .resolve(index)
                    .map_err(|e| Failure::new(ExitCode::InvalidProgram, e))?;
                match resolved {
                    Some(resolved) => {
                        if resolved.key != planned.key() {
                            // Its inputs are realised to an earlier build's entries.
                            let _ = writeln!(text, "resolved key: {}", resolved.key);
                            value["resolved_key"] = resolved.key.to_string().into();
                        }
                        value["request"] = serde_json::to_value(resolved.request())
                            .unwrap_or(serde_json::Value::Null);
                        let _ = writeln!(text, "request:");
                        text.push_str(&indent(
                            serde_yaml_ng::to_string(resolved.request())
                                .unwrap_or_else(|e| format!("({e})")),
                        ));
                    }
                    None => {
                        let _ = writeln!(
                            text,
                            "request (the inputs from {} once built):",
                            waits_on(&self.plan, planned)
                        );
                        value["request"] = serde_json::to_value(planned.request())
                            .unwrap_or(serde_json::Value::Null);
                        value["waits_on"] = self
                            .plan
                            .waits_on(planned)
                            .iter()
                            .map(|n| n.as_str())
                            .collect::<Vec<_>>()
                            .into();
                        text.push_str(&indent(
                            serde_yaml_ng::to_string(planned.request())
                                .unwrap_or_else(|e| format!("({e})")),
                        ));
                    }
                }
                planned
                    .find(&self.store, false, None)?
                    .or(planned.outputs())
                    .unwrap_or(planned.named())
                    .iter()
                    .map(|(o, p)| (o.to_string(), p.entry.clone()))
                    .collect()
            }
            NodeKind::Source { planned, entry } => {
                let (path, digest, ignore) = (&planned.path, planned.digest, &planned.ignore);
                let _ = writeln!(text, "path: {}", path.display());
                if !ignore.patterns.is_empty() {
                    let _ = writeln!(text, "ignore: {}", ignore.patterns.join(" "));
                }
                if ignore.gitignore {
                    let _ = writeln!(text, "gitignore: true");
                }
                let _ = writeln!(text, "digest: {digest}");
                value["ignore"] = serde_json::json!(ignore.patterns);
                value["gitignore"] = ignore.gitignore.into();
                value["kind"] = "source".into();
                value["path"] = serde_json::json!(path);
                value["digest"] = digest.to_string().into();
                vec![("out".to_string(), entry.clone())]
            }
            NodeKind::Toolchain { planned, entry } => {
                let _ = writeln!(text, "lock: {}", planned.lock.display());
                let _ = writeln!(text, "digest: {}", planned.digest());
                let _ = writeln!(text, "packages:");
                value["kind"] = "toolchain".into();
                value["lock"] = serde_json::json!(planned.lock);
                value["digest"] = planned.digest().to_string().into();
                value["packages"] = serde_json::to_value(&planned.locked.packages)
                    .unwrap_or(serde_json::Value::Null);
                for package in &planned.locked.packages {
                    let _ = writeln!(
                        text,
                        "  {} {} {}",
                        package.name, package.version, package.architecture
                    );
                }
                vec![("out".to_string(), entry.clone())]
            }
        };
        let mut outputs = serde_json::Map::new();
        for (output, entry) in entries {
            let path = self.store.entry_path(&entry);
            let _ = writeln!(text, "output {output}: {}", path.display());
            let meta = match self.store.contains(&entry) {
                true => Some(self.store.meta(&entry)?),
                false => None,
            };
            match &meta {
                Some(meta) => text.push_str(&indent(meta.to_yaml())),
                None => text.push_str("  (not in the store)\n"),
            }
            outputs.insert(
                output,
                serde_json::json!({ "entry": entry, "path": path, "meta": meta }),
            );
        }
        value["outputs"] = outputs.into();
        match json {
            true => emit(&format!("{value:#}\n"))?,
            false => emit(&text)?,
        }
        Ok(ExitCode::Success)
    }

    fn log(&self, name: &str, json: bool) -> Result<ExitCode, Failure> {
        let Some(index) = self.find(name)? else {
            let entry = self.store.resolve(name)?;
            return store::print_log(&self.store, &entry, json);
        };
        let node = self.plan.node(index);
        let Some(planned) = node.derivation() else {
            return Err(Failure::new(
                ExitCode::Failure,
                format!("`{name}` is a source; sources are imported, not built, and have no log"),
            ));
        };
        let Some(entry) = planned
            .find(&self.store, false, None)?
            .and_then(|outputs| outputs.values().next())
        else {
            return Err(Failure::new(
                ExitCode::Failure,
                format!(
                    "`{name}` has no build log in this store: it has not been built here (status: {}); `build {name}` builds it",
                    node.status.as_str()
                ),
            ));
        };
        store::print_log(&self.store, &entry.entry, json)
    }
}

/// The derivations a planned one takes whose builds it waits on: "`a`, `b`".
fn waits_on(plan: &Plan, planned: &Planned) -> String {
    let mut text = String::new();
    write_waits_on(&mut text, plan, planned);
    text
}

/// [`waits_on`] written at the end of `text`: a plan of thousands to build writes one per line.
fn write_waits_on(text: &mut String, plan: &Plan, planned: &Planned) {
    for (at, name) in plan.waits_on(planned).into_iter().enumerate() {
        if at > 0 {
            text.push_str(", ");
        }
        text.push('`');
        text.push_str(name.as_str());
        text.push('`');
    }
}

/// The columns `text` takes: its characters, which for ASCII (every name and origin of a plan
/// but a source's path) are its bytes.
fn columns(text: &str) -> usize {
    match text.is_ascii() {
        true => text.len(),
        false => text.chars().count(),
    }
}

/// The plan as people read it: one line per node, dependencies first, then a summary; with
/// `reasons`, each node built or imported is followed by why.
pub fn render_plan(plan: &Plan, reasons: Option<&BTreeMap<NodeIndex, Vec<Reason>>>) -> String {
    // Each cell is borrowed from the plan where it can be: a plan of 10,000 cached derivations
    // is printed in one pass over its nodes, not through 40,000 strings.
    let rows: Vec<Row<'_>> = plan
        .nodes()
        .map(|(index, node)| {
            let (entry, origin) = match &node.kind {
                NodeKind::Derivation(planned) => (
                    match planned.outputs() {
                        Some(outputs) => Cell::Entries(outputs),
                        None => {
                            let mut text = String::from("(after ");
                            write_waits_on(&mut text, plan, planned);
                            text.push(')');
                            Cell::Text(text.into())
                        }
                    },
                    Cow::Borrowed(node.location.as_deref().unwrap_or_default()),
                ),
                NodeKind::Source { planned, entry } => (
                    Cell::Text(entry.as_str().into()),
                    planned.path.display().to_string().into(),
                ),
                NodeKind::Toolchain { planned, entry } => (
                    Cell::Text(entry.as_str().into()),
                    match planned.toolchain.root() {
                        _ if planned.toolchain.origin() == crate::toolchain::Origin::Archive => {
                            format!("{} archive packages", planned.locked.packages.len())
                        }
                        root if root == std::path::Path::new("/") => {
                            format!("{} host packages", planned.locked.packages.len())
                        }
                        root => format!(
                            "{} packages of {}",
                            planned.locked.packages.len(),
                            root.display()
                        ),
                    }
                    .into(),
                ),
            };
            Row {
                index,
                status: node.status.as_str(),
                impure: node.impure,
                name: node.name.as_str(),
                origin,
                entry,
            }
        })
        .collect();
    let width = |cell: fn(&Row<'_>) -> usize| rows.iter().map(cell).max().unwrap_or(0);
    let w0 = width(|r| r.status.len() + usize::from(r.impure));
    let w1 = width(|r| columns(r.name));
    let w2 = width(|r| columns(&r.origin));
    let mut text = String::with_capacity(rows.len() * (w0 + w1 + w2 + 48));
    for row in &rows {
        text.push_str(row.status);
        if row.impure {
            text.push('*');
        }
        pad(
            &mut text,
            w0 + 2 - row.status.len() - usize::from(row.impure),
        );
        text.push_str(row.name);
        pad(&mut text, w1 + 2 - columns(row.name));
        text.push_str(&row.origin);
        pad(&mut text, w2 + 2 - columns(&row.origin));
        match &row.entry {
            Cell::Entries(outputs) => {
                for (i, output) in outputs.values().enumerate() {
                    if i > 0 {
                        text.push(' ');
                    }
                    text.push_str(output.entry.as_str());
                }
            }
            Cell::Text(entry) => text.push_str(entry),
        }
        text.push('\n');
        for reason in reasons
            .and_then(|r| r.get(&row.index))
            .into_iter()
            .flatten()
        {
            let _ = writeln!(text, "{:w0$}    because {reason}", "");
        }
    }
    if plan.nodes().any(|(_, n)| n.impure) {
        text.push_str(
            "* impure: sees the host's tools (host-tools); keyed by a host fingerprint\n",
        );
    }
    let s = plan.summary();
    text.push_str(&format!("Plan: {} to build", s.build));
    if s.waiting > 0 {
        // Early cutoff: their keys name what the builds before them make.
        text.push_str(&format!(
            " ({} only if what is built before {} changes)",
            s.waiting,
            if s.waiting == 1 { "it" } else { "them" },
        ));
    }
    let mut import = crate::store::counted(s.import, "source", "sources");
    if s.toolchains > 0 {
        import.push_str(" and ");
        import.push_str(&crate::store::counted(
            s.toolchains,
            "toolchain",
            "toolchains",
        ));
    }
    text.push_str(&format!(", {} cached, {import} to import", s.cached));
    if s.unneeded > 0 {
        // Build-time inputs of what is in the store, after a `gc`: nothing will make them.
        text.push_str(&format!(", {} not needed", s.unneeded));
    }
    text.push('\n');
    text
}

/// A line of the plan as [`render_plan`] prints it.
struct Row<'p> {
    index: NodeIndex,
    status: &'static str,
    impure: bool,
    name: &'p str,
    origin: Cow<'p, str>,
    entry: Cell<'p>,
}

/// The last column of a plan's line.
enum Cell<'p> {
    /// The entries of a derivation's outputs, with a space between.
    Entries(&'p SortedMap<OutputName, PlannedOutput>),
    Text(Cow<'p, str>),
}

/// Appends `n` spaces.
fn pad(text: &mut String, n: usize) {
    text.extend(std::iter::repeat_n(' ', n));
}
