//! The command lines: the one every user program gets from [`main`], and the standalone
//! `forjar` store tool (`src/bin/forjar.rs`). Both share the store commands of [`store`].
//!
//! Exit codes (see [`ExitCode`]): 0 success, 1 the operation failed (a damaged store, an I/O
//! error), 2 a bad command line, 3 an invalid program or derivation.

pub mod store;

use std::io::{self, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::derivation::Graph;
use crate::plan::{NodeKind, Plan};
use crate::store::Store;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Everything worked.
    Success = 0,
    /// The operation failed: a build, a damaged store entry, an I/O error.
    Failure = 1,
    /// The command line was wrong.
    Usage = 2,
    /// The program or one of its derivations is invalid.
    InvalidProgram = 3,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}

/// A command's failure: its message and exit code.
#[derive(Debug)]
pub struct Failure {
    /// What to print after `error: `.
    pub message: String,
    /// How to exit.
    pub code: ExitCode,
}

impl Failure {
    pub(crate) fn new(code: ExitCode, message: impl ToString) -> Self {
        Failure {
            message: message.to_string(),
            code,
        }
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Self {
        Failure::new(ExitCode::Failure, e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::new(ExitCode::Failure, e)
    }
}

/// Writes to standard output; a reader that went away (`| head`) ends output quietly.
pub(crate) fn emit(text: &str) -> Result<(), Failure> {
    match io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Prints a failure to standard error and returns the exit code to end with.
pub fn report(result: Result<ExitCode, Failure>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(failure) => {
            let _ = writeln!(io::stderr().lock(), "error: {}", failure.message);
            failure.code
        }
    }
}

/// The command line of a user program.
#[derive(Debug, Parser)]
#[command(about = "Plan and inspect this program's derivations")]
struct ProgramCli {
    /// The store directory [default: $FORJAR_STORE, /var/lib/forjar/store for root, else
    /// ~/.local/share/forjar/store].
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: ProgramCommand,
}

#[derive(Debug, Subcommand)]
enum ProgramCommand {
    /// Show every derivation and source with its key and status; builds and writes nothing.
    Plan {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build and import what the roots need, in the sandbox, and register the roots.
    Apply {
        /// Show the plan and do nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the dependency graph.
    Graph {
        /// Graphviz DOT (the default).
        #[arg(long, conflicts_with = "json")]
        dot: bool,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show why A depends on B: a shortest chain of inputs from A to B.
    WhyDepends {
        /// The dependent (a derivation or source name, or a store entry name).
        a: String,
        /// The dependency.
        b: String,
    },
    #[command(flatten)]
    Store(store::StoreCommand),
    /// Hash content.
    #[command(subcommand)]
    Hash(store::HashCommand),
}

/// Runs a user program: `define` adds its derivations to the graph, and the command line says
/// what to do with them. Exits the process with the command's [`ExitCode`]; returns only on
/// success.
///
/// ```no_run
/// fn main() -> forjar::Result<()> {
///     forjar::main(|g| {
///         let greeting = g.add(forjar::Derivation::builder("greeting").script("echo hi > $out").build()?);
///         g.root("greeting", greeting);
///         Ok(())
///     })
/// }
/// ```
pub fn main(define: impl FnOnce(&mut Graph) -> crate::Result<()>) -> crate::Result<()> {
    let cli = match ProgramCli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                ExitCode::Usage as i32
            } else {
                0
            });
        }
    };
    let code = report(run_program(cli, define));
    if code != ExitCode::Success {
        std::process::exit(code as i32);
    }
    Ok(())
}

fn run_program(
    cli: ProgramCli,
    define: impl FnOnce(&mut Graph) -> crate::Result<()>,
) -> Result<ExitCode, Failure> {
    let store_dir = cli.store.unwrap_or_else(Store::default_dir);
    let command = match cli.command {
        ProgramCommand::Store(command) => return store::run(&store_dir, command),
        ProgramCommand::Hash(command) => return store::hash(command),
        command => command,
    };
    let mut graph = Graph::new();
    define(&mut graph).map_err(|e| Failure::new(ExitCode::InvalidProgram, e))?;
    let store = Store::open(&store_dir)?;
    let plan = Plan::new(&graph, &store).map_err(|e| Failure::new(ExitCode::InvalidProgram, e))?;
    for warning in &plan.warnings {
        let _ = writeln!(io::stderr().lock(), "warning: {warning}");
    }
    match command {
        ProgramCommand::Plan { json: true } | ProgramCommand::Graph { json: true, .. } => {
            emit(&format!("{:#}\n", plan.to_json()))?;
        }
        ProgramCommand::Plan { json: false } => emit(&render_plan(&plan))?,
        ProgramCommand::Apply { dry_run: true } => {
            emit(&render_plan(&plan))?;
            emit("dry run: nothing was built, imported or registered\n")?;
        }
        ProgramCommand::Apply { dry_run: false } => {
            let mut progress = |node: &crate::plan::Node| {
                let verb = match node.kind {
                    NodeKind::Derivation { .. } => "building",
                    NodeKind::Source { .. } => "importing",
                };
                let at = node
                    .location
                    .as_deref()
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default();
                let _ = writeln!(io::stderr().lock(), "{verb} {}{at}", node.name);
            };
            let report = crate::exec::apply(
                &plan,
                &store,
                &crate::exec::Options::default(),
                &mut progress,
            )
            .map_err(|e| Failure::new(ExitCode::Failure, e))?;
            let mut text = String::new();
            for (name, entry) in &report.roots {
                text.push_str(&format!(
                    "{name} -> {}\n",
                    store.content_path(entry).display()
                ));
            }
            text.push_str(&format!("{report}\n"));
            emit(&text)?;
        }
        ProgramCommand::Graph { .. } => emit(&plan.to_dot())?,
        ProgramCommand::WhyDepends { a, b } => {
            let find = |name: &str| match plan.find(name).as_slice() {
                [one] => Ok(*one),
                [] => Err(Failure::new(
                    ExitCode::Usage,
                    format!("no derivation or source is named `{name}`"),
                )),
                many => Err(Failure::new(
                    ExitCode::Usage,
                    format!(
                        "`{name}` names {} nodes; name one by its store entry: {}",
                        many.len(),
                        many.iter()
                            .map(|&i| plan.entry_names(i).join(" "))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            };
            let (from, to) = (find(&a)?, find(&b)?);
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
        }
        ProgramCommand::Store(_) | ProgramCommand::Hash(_) => {
            unreachable!("handled before planning")
        }
    }
    Ok(ExitCode::Success)
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
    let mut text = String::new();
    for [status, name, origin, entry] in &rows {
        text.push_str(&format!(
            "{status:<w0$}  {name:<w1$}  {origin:<w2$}  {entry}\n"
        ));
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
        "Plan: {} to build, {} cached, {} to import\n",
        s.build,
        s.cached,
        plural(s.import, "source", "sources")
    ));
    text
}
