//! The commands that build: `apply`, `build` and `check`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use clap::Subcommand;
use petgraph::graph::NodeIndex;

use super::inspect::render_plan;
use super::process::{INTERRUPTED, handle_interrupts, interrupted_code};
use super::program::Session;
use super::progress::{Progress, Verbosity};
use super::{ExitCode, Failure, emit};
use crate::exec::{self, ExecError, Executor, Local};
use crate::plan::{NodeKind, Status};
use crate::store::EntryName;

/// How to run builds.
#[derive(Debug, clap::Args)]
pub(super) struct RunArgs {
    /// How many builds run at once [default: the number of cores].
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// After a failure, go on with everything that does not depend on it.
    #[arg(long)]
    keep_going: bool,
    /// Keep a failed build's directory and print where it is.
    #[arg(long)]
    keep_failed: bool,
    #[cfg(feature = "remote")]
    #[command(flatten)]
    remote: super::remote::RemoteArgs,
}

/// The commands that build: each plans the program, then realises part of it.
#[derive(Debug, Subcommand)]
pub(super) enum BuildCommand {
    /// Build and import what the roots need, in the sandbox, register the roots, and record a
    /// generation.
    #[command(display_order = 2)]
    Apply {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        deploy: super::fleet::DeployArgs,
        /// Show the plan and do nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also link PATH to the first root's output (`PATH-<root>` to each other's), each link
        /// a GC root for as long as it exists.
        #[arg(short = 'o', long, value_name = "PATH")]
        out_link: Option<PathBuf>,
    },
    /// Build the named derivations and what they need, print their outputs, and link `result`
    /// to them (a GC root while the link exists).
    #[command(display_order = 3)]
    Build {
        /// Derivation names (or store entry names).
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        #[command(flatten)]
        run: RunArgs,
        /// Link PATH to the first output instead of `result` (`PATH-<name>` to each other).
        #[arg(short = 'o', long, value_name = "PATH", default_value = "result")]
        out_link: PathBuf,
        /// Make no link: the outputs may be collected by the next `gc`.
        #[arg(long)]
        no_out_link: bool,
    },
    /// Open a shell in a derivation's sandbox, as its build sees it: inputs (built first if
    /// missing), toolchain, environment, files and working directory; in the build directory
    /// `--keep-failed` kept, if there is one. Nothing is installed.
    #[command(display_order = 8)]
    Enter {
        /// A derivation name.
        name: String,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Rebuild a derivation and compare the result with the store's, naming differing files.
    #[command(display_order = 8)]
    Check {
        /// A derivation name.
        name: String,
        /// How many times to rebuild.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        rounds: u16,
        /// Keep a rebuild that differs from the store's copy, in `<store>/.failed/`.
        #[arg(long)]
        keep_failed: bool,
    },
}

impl BuildCommand {
    /// Whether the command may run builds (`apply --dry-run` only shows the plan).
    pub(super) fn builds(&self) -> bool {
        !matches!(self, BuildCommand::Apply { dry_run: true, .. })
    }
}

impl BuildCommand {
    /// Whether the command only shows the plan (`apply --dry-run`), and so never makes a store.
    pub(super) fn only_plans(&self) -> bool {
        matches!(self, BuildCommand::Apply { dry_run: true, .. })
    }
}

/// What an interrupted or failed run exits with.
fn exec_failure(error: ExecError) -> Failure {
    match error {
        ExecError::Interrupted(_) => Failure::new(
            interrupted_code(),
            format!("{error}; their staging was removed"),
        ),
        error => Failure::new(ExitCode::Failure, error),
    }
}

impl Session {
    /// Runs a build command.
    pub(super) fn run_build(&self, command: BuildCommand) -> Result<ExitCode, Failure> {
        match command {
            BuildCommand::Apply { dry_run: true, .. } => {
                self.note_absent_store();
                super::emit_changes(&render_plan(&self.plan, None))?;
                emit("dry run: nothing was built, imported or registered\n")?;
                Ok(ExitCode::Success)
            }
            BuildCommand::Apply {
                dry_run: false,
                run,
                deploy,
                out_link,
            } => self.apply(&run, &deploy, out_link.as_deref()),
            BuildCommand::Build {
                names,
                run,
                out_link,
                no_out_link,
            } => self.build(&names, &run, (!no_out_link).then_some(&*out_link)),
            BuildCommand::Check {
                name,
                rounds,
                keep_failed,
            } => self.check(&name, rounds, keep_failed),
            BuildCommand::Enter { name, run } => self.enter(&name, &run),
        }
    }

    fn options(&self, run: &RunArgs) -> exec::Options {
        exec::Options {
            jobs: run.jobs.map_or(exec::Options::default().jobs, usize::from),
            keep_going: run.keep_going,
            interrupt: Some(&INTERRUPTED),
        }
    }

    /// The local sandbox, with the remote cache or executor composed around it if one is asked
    /// for.
    fn executor(&self, run: &RunArgs) -> Result<Box<dyn Executor>, Failure> {
        let local = Local {
            keep_failed: run.keep_failed,
            ..Local::default()
        };
        #[cfg(feature = "remote")]
        return super::remote::around(local, &run.remote, self.verbosity);
        #[cfg(not(feature = "remote"))]
        Ok(Box::new(local))
    }

    /// Realises `nodes` with a progress display.
    fn realise(
        &self,
        nodes: &[NodeIndex],
        executor: &dyn Executor,
        options: &exec::Options,
    ) -> Result<exec::Report, Failure> {
        handle_interrupts();
        let to_do = nodes
            .iter()
            .filter(|&&n| self.plan.node(n).status != Status::Cached)
            .count();
        if self.verbosity == Verbosity::Verbose {
            // Why each build runs, as `plan --explain` says it.
            let reasons = crate::explain::explain(&self.plan, &self.store);
            let mut text = String::new();
            for node in nodes {
                for reason in reasons.get(node).into_iter().flatten() {
                    let _ = writeln!(text, "why {}: {reason}", self.plan.node(*node).name);
                }
            }
            eprint!("{text}");
        }
        let progress = Progress::new(self.verbosity, to_do);
        let result = exec::realise_all(
            &self.plan,
            &self.store,
            nodes,
            executor,
            options,
            &|event| progress.observe(event),
        );
        progress.finish();
        // What was installed, before a failure too, is made durable with one sync.
        let synced = self.store.sync();
        let report = result.map_err(exec_failure)?;
        synced?;
        Ok(report)
    }

    fn apply(
        &self,
        run: &RunArgs,
        deploy: &super::fleet::DeployArgs,
        out_link: Option<&Path>,
    ) -> Result<ExitCode, Failure> {
        let report = self.realise(
            &exec::needed(&self.plan),
            &*self.executor(run)?,
            &self.options(run),
        )?;
        let roots: BTreeMap<String, EntryName> = exec::root_entries(&self.plan)
            .map_err(exec_failure)?
            .into_iter()
            .collect();
        let mut text = String::new();
        for (name, entry) in &roots {
            let _ = writeln!(
                text,
                "{name} -> {}",
                self.store.content_path(entry).display()
            );
        }
        let _ = writeln!(text, "{report}");
        if !roots.is_empty() {
            let (generation, new) = self.store.profile(&self.profile)?.record(roots.clone())?;
            let _ = writeln!(
                text,
                "{} {} of profile `{}`",
                if new {
                    "Recorded generation"
                } else {
                    "Still generation"
                },
                generation.number,
                self.profile
            );
        }
        if let Some(path) = out_link {
            let links: Vec<(String, EntryName)> = roots.into_iter().collect();
            text.push_str(&self.out_links(path, &links)?);
        }
        if deploy.json {
            // Standard output is the hosts' JSON.
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), text.as_bytes());
        } else {
            emit(&text)?;
        }
        self.deploy(deploy)
    }

    fn build(
        &self,
        names: &[String],
        run: &RunArgs,
        out_link: Option<&Path>,
    ) -> Result<ExitCode, Failure> {
        let targets = names
            .iter()
            .map(|n| self.find_node(n))
            .collect::<Result<Vec<_>, _>>()?;
        let report = self.realise(
            &exec::needed_for(&self.plan, targets.iter().copied()),
            &*self.executor(run)?,
            &self.options(run),
        )?;
        let mut text = String::new();
        let mut links = Vec::new();
        for &target in &targets {
            for entry in self.plan.entry_names(target) {
                let _ = writeln!(
                    text,
                    "{} -> {}",
                    self.plan.node(target).name,
                    self.store.dir().join(&entry).join("content").display()
                );
                if let Ok(entry) = EntryName::parse(&entry) {
                    links.push((entry.name().to_string(), entry));
                }
            }
        }
        let _ = writeln!(text, "{report}");
        if let Some(path) = out_link {
            text.push_str(&self.out_links(path, &links)?);
        }
        emit(&text)?;
        Ok(ExitCode::Success)
    }

    /// `enter NAME`: builds what the derivation takes, then runs a shell in its sandbox.
    fn enter(&self, name: &str, run: &RunArgs) -> Result<ExitCode, Failure> {
        let index = self.find_node(name)?;
        let node = self.plan.node(index);
        if node.derivation().is_none() {
            return Err(Failure::new(
                ExitCode::Usage,
                format!(
                    "`{name}` is imported, not built: only a derivation has a sandbox to enter"
                ),
            ));
        }
        let needs = exec::enter_needs(&self.plan, index);
        self.realise(&needs, &*self.executor(run)?, &self.options(run))?;
        let local = Local {
            keep_failed: run.keep_failed,
            ..Local::default()
        };
        let resolved = self
            .plan
            .resolve(index)
            .map_err(|e| Failure::new(ExitCode::InvalidProgram, e))?;
        let builder: Vec<String> = resolved
            .map(|r| {
                r.request()
                    .args
                    .iter()
                    .map(|a| String::from_utf8_lossy(a.as_bytes()).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        // As `exec::enter` finds it: by the node's name, whatever `name` the user gave.
        let kept = resolved.map(|r| {
            self.store
                .kept_path(&r.key.store_hash(), node.name.as_str())
        });
        let mut intro = format!(
            "entering the sandbox of `{name}` ({}): its build runs",
            node.location.as_deref().unwrap_or("")
        );
        for arg in &builder {
            match arg.contains(char::is_whitespace) || arg.is_empty() {
                true => intro.push_str(&format!("\n  {}", arg.replace('\n', "\n  "))),
                false => intro.push_str(&format!(" {arg}")),
            }
        }
        if let Some(kept) = kept.filter(|k| k.is_dir()) {
            intro.push_str(&format!(
                "\nits /build is the build directory kept at {}",
                kept.display()
            ));
        }
        intro.push_str("\n`exit` leaves; nothing is installed\n");
        eprint!("{}", super::terminal::sanitise(&intro));
        let outcome = exec::enter(&self.plan, &self.store, index, &local).map_err(exec_failure)?;
        Ok(match outcome.success() {
            true => ExitCode::Success,
            false => ExitCode::Failure,
        })
    }

    /// Links `path` to the first of `entries` and `path-<name>` to each other one, as Nix's
    /// `result`, `result-2`, …: each made beside its final name and renamed over, and registered
    /// as an indirect GC root. Only a symlink is ever replaced. Returns a line per link.
    fn out_links(&self, path: &Path, entries: &[(String, EntryName)]) -> Result<String, Failure> {
        let mut text = String::new();
        for (i, (name, entry)) in entries.iter().enumerate() {
            let link = match i {
                0 => path.to_path_buf(),
                _ => {
                    let mut with_name = path.as_os_str().to_owned();
                    with_name.push(format!("-{name}"));
                    PathBuf::from(with_name)
                }
            };
            match std::fs::symlink_metadata(&link) {
                Ok(meta) if !meta.file_type().is_symlink() => {
                    return Err(Failure::new(
                        ExitCode::Failure,
                        format!(
                            "`{}` exists and is not a symlink; remove it, or name another path \
                             with `--out-link`",
                            link.display()
                        ),
                    ));
                }
                _ => {}
            }
            let content = self.store.content_path(entry);
            let file_name = link.file_name().unwrap_or(link.as_os_str());
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(file_name);
            tmp_name.push(format!(".{}.tmp", std::process::id()));
            let tmp = link.with_file_name(tmp_name);
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&content, &tmp)
                .and_then(|()| std::fs::rename(&tmp, &link))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    Failure::new(
                        ExitCode::Failure,
                        format!("cannot link `{}`: {e}", link.display()),
                    )
                })?;
            self.store.add_indirect_root(&link)?;
            let _ = writeln!(text, "{} -> {}", link.display(), content.display());
        }
        Ok(text)
    }

    /// The second half of `verify --repair`: builds again each of `wanted` (entries deleted as
    /// damaged, or missing) that a derivation or source of the program makes, then verifies.
    pub(super) fn repair(
        &self,
        before: &crate::store::VerifyReport,
        wanted: &[EntryName],
    ) -> Result<ExitCode, Failure> {
        let mut text = super::store::verify_text(before);
        let mut targets = Vec::new();
        for entry in wanted {
            // By entry where the plan names it; else by the derivation's name, whose key may
            // have changed since.
            let mut found = self.plan.find(entry.as_str());
            if found.is_empty() {
                let name = entry.name();
                found = self.plan.find(name);
                if found.is_empty()
                    && let Some((base, _output)) = name.rsplit_once('-')
                {
                    found = self.plan.find(base);
                }
            }
            match found.first() {
                Some(&node) => targets.push(node),
                None => {
                    let _ = writeln!(
                        text,
                        "cannot rebuild {entry}: no derivation or source of this program makes it"
                    );
                }
            }
        }
        if !targets.is_empty() {
            let options = exec::Options {
                interrupt: Some(&INTERRUPTED),
                ..exec::Options::default()
            };
            let report = self.realise(
                &exec::needed_for(&self.plan, targets.iter().copied()),
                &Local::default(),
                &options,
            )?;
            let _ = writeln!(text, "repair: {report}");
        }
        let after = self.store.verify()?;
        text.push_str(&super::store::verify_text(&after));
        emit(&text)?;
        Ok(if after.is_ok() {
            ExitCode::Success
        } else {
            ExitCode::Failure
        })
    }

    fn check(&self, name: &str, rounds: u16, keep_failed: bool) -> Result<ExitCode, Failure> {
        let index = self.find_node(name)?;
        if !matches!(self.plan.node(index).kind, NodeKind::Derivation { .. }) {
            return Err(Failure::new(
                ExitCode::Usage,
                format!("`{name}` is a source; only derivations are rebuilt"),
            ));
        }
        let options = exec::Options {
            interrupt: Some(&INTERRUPTED),
            ..exec::Options::default()
        };
        let local = Local::default();
        self.realise(&exec::needed_for(&self.plan, [index]), &local, &options)?;
        let progress = Progress::new(self.verbosity, 0);
        let mut text = String::new();
        let (mut mismatch, mut damaged) = (false, false);
        for round in 1..=rounds {
            if INTERRUPTED.load(Ordering::SeqCst) {
                return Err(exec_failure(ExecError::Interrupted(vec![name.to_string()])));
            }
            let started = std::time::Instant::now();
            let keep = (keep_failed, round);
            let checked = exec::check(
                &self.plan,
                &self.store,
                index,
                &local,
                keep,
                &INTERRUPTED,
                &|e| progress.observe(e),
            )
            .map_err(|e| match e {
                ExecError::Cancelled(name) => exec_failure(ExecError::Interrupted(vec![name])),
                e => exec_failure(e),
            })?;
            for output in &checked {
                if output.damaged() {
                    damaged = true;
                    let _ = writeln!(
                        text,
                        "round {round}: {name} output `{}`: the store's copy no longer matches \
                         its record ({} recorded, {} now); `verify` names every entry so damaged",
                        output.output, output.expected, output.stored
                    );
                    for difference in &output.differences {
                        let _ = writeln!(text, "  {difference}");
                    }
                } else if output.matches() {
                    let _ = writeln!(
                        text,
                        "round {round}: {} output `{}` matches the store ({}, rebuilt in {:.1}s)",
                        name,
                        output.output,
                        output.got,
                        started.elapsed().as_secs_f64()
                    );
                } else {
                    mismatch = true;
                    let _ = writeln!(
                        text,
                        "round {round}: {name} output `{}` differs from the store: {} in the store, {} rebuilt",
                        output.output, output.expected, output.got
                    );
                    for difference in &output.differences {
                        let _ = writeln!(text, "  {difference}");
                    }
                    if let Some(kept) = &output.kept {
                        let _ = writeln!(text, "  the rebuild is kept at {}", kept.display());
                    }
                }
            }
            if mismatch || damaged {
                break;
            }
        }
        progress.finish();
        emit(&text)?;
        if damaged {
            return Err(Failure::new(
                ExitCode::Failure,
                format!(
                    "the store's copy of `{name}` was changed after it was installed; \
                     the rebuild cannot be compared with what was built"
                ),
            ));
        }
        if mismatch {
            return Err(Failure::new(
                ExitCode::Failure,
                format!("`{name}` is not reproducible: a rebuild differs from the store"),
            ));
        }
        Ok(ExitCode::Success)
    }
}
