//! A user program's command line: the session its planned commands work on, and the dispatch
//! of every command.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::path::Path;

use petgraph::graph::NodeIndex;

use super::progress::Verbosity;
use super::{
    ExitCode, Failure, Program, ProgramCli, ProgramCommand, build, inspect, profile, store,
};
use crate::machine::Machine;
use crate::plan::Plan;
use crate::store::Store;
use crate::toolchain::Lock;

/// The state every program command works on.
pub(super) struct Session {
    pub(super) store: Store,
    pub(super) plan: Plan,
    pub(super) verbosity: Verbosity,
    pub(super) profile: String,
    pub(super) machines: Vec<Machine>,
    pub(super) machine_roots: std::collections::HashMap<crate::derivation::OutputRef, String>,
    /// The machines `--on` selects, by index in `machines`.
    pub(super) selected: Vec<usize>,
    pub(super) ssh_config: Option<std::path::PathBuf>,
    pub(super) max_hosts: usize,
}

impl Session {
    /// Runs `define`, and plans its graph against the store at `store_dir`; with `to_read`, a
    /// store that does not exist is planned against as an empty one and not created.
    fn open(
        define: impl FnOnce(&mut Program) -> crate::Result<()>,
        settings: Settings,
        to_read: bool,
    ) -> Result<ManuallyDrop<Session>, Failure> {
        let Settings {
            store_dir,
            lock,
            profile,
            verbosity,
            hosts,
        } = settings;
        let (store_dir, lock) = (store_dir.as_path(), lock.as_path());
        // The graph and the session are left to the process's exit, not freed one allocation at a
        // time: in a no-op plan of 10,000 derivations the frees took a quarter of the CPU time.
        let mut program = ManuallyDrop::new(Program::new());
        define(&mut program).map_err(|e| Failure::new(ExitCode::InvalidProgram, e))?;
        if let Some(errors) = program.machine_errors() {
            return Err(Failure::new(ExitCode::InvalidProgram, errors));
        }
        // An `--on` that selects no machine is said before anything is planned or built.
        let selected = super::machine::select(&program.machines, hosts.on.as_deref())?;
        // A config file that is not there is said once, not as every host's connection error.
        if let Some(config) = hosts.ssh_config.as_deref().filter(|_| !selected.is_empty())
            && let Err(e) = std::fs::File::open(config).and_then(|f| match f.metadata()?.is_dir() {
                true => Err(io::Error::from(io::ErrorKind::IsADirectory)),
                false => Ok(()),
            })
        {
            return Err(Failure::new(
                ExitCode::Usage,
                format!(
                    "--ssh-config `{}` (or FORJAR_SSH_CONFIG) cannot be read: {e}; give an ssh \
                     config file, or leave it out to use ~/.ssh/config",
                    config.display()
                ),
            ));
        }
        let store = match to_read {
            true => Store::open_to_read(store_dir)?,
            false => Store::open(store_dir)?,
        };
        let recovered = store.recovered();
        if recovered.checked > 0 {
            let removed = match recovered.removed.as_slice() {
                [] => "none had lost anything".to_string(),
                removed => format!(
                    "removed {} that had lost data ({}); they are built again when needed",
                    removed.len(),
                    removed
                        .iter()
                        .map(|e| format!("`{e}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let _ = writeln!(
                io::stderr().lock(),
                "{}",
                super::terminal::message(
                    "warning",
                    &format!(
                        "the machine stopped before entries installed in the store were synced; \
                         checked them: {removed}"
                    )
                )
            );
        }
        // Read only by a program that has toolchains to pin.
        let lock = match program.toolchains().is_empty() {
            true => Lock::empty(lock.to_path_buf()),
            false => Lock::read(lock).map_err(|e| Failure::new(ExitCode::InvalidProgram, e))?,
        };
        let plan = Plan::with_lock(&program, &store, &lock)
            .map_err(|e| Failure::new(ExitCode::InvalidProgram, e))?;
        for warning in &plan.warnings {
            let _ = writeln!(
                io::stderr().lock(),
                "{}",
                super::terminal::message("warning", warning)
            );
        }
        Ok(ManuallyDrop::new(Session {
            store,
            plan,
            verbosity,
            profile,
            machines: std::mem::take(&mut program.machines),
            machine_roots: std::mem::take(&mut program.machine_roots),
            selected,
            ssh_config: hosts.ssh_config,
            max_hosts: hosts.max_hosts,
        }))
    }

    /// Says, before a plan is shown, that the store it was made against does not exist yet.
    pub(super) fn note_absent_store(&self) {
        if !self.store.exists() && self.verbosity != Verbosity::Quiet {
            let _ = writeln!(
                io::stderr().lock(),
                "{}",
                super::terminal::message(
                    "note",
                    &format!(
                        "there is no store at `{}` yet; planned against an empty one (`apply` \
                         makes it)",
                        self.store.dir().display()
                    )
                )
            );
        }
    }

    /// Exactly one node named `name`.
    pub(super) fn find(&self, name: &str) -> Result<Option<NodeIndex>, Failure> {
        match self.plan.find(name).as_slice() {
            [one] => Ok(Some(*one)),
            [] => Ok(None),
            many => Err(Failure::new(
                ExitCode::Usage,
                format!(
                    "`{name}` names {} nodes; name one by its store entry: {}",
                    many.len(),
                    many.iter()
                        .map(|&i| self.plan.entry_names(i).join(" "))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    pub(super) fn find_node(&self, name: &str) -> Result<NodeIndex, Failure> {
        self.find(name)?.ok_or_else(|| {
            Failure::new(
                ExitCode::Usage,
                format!("no derivation or source is named `{name}`; `plan` lists them"),
            )
        })
    }
}

/// What the command line says of where and how a command works, besides the command.
struct Settings {
    store_dir: std::path::PathBuf,
    lock: std::path::PathBuf,
    profile: String,
    verbosity: Verbosity,
    hosts: Hosts,
}

/// Which machines the command is for, and how they are reached.
pub(super) struct Hosts {
    on: Option<String>,
    ssh_config: Option<std::path::PathBuf>,
    max_hosts: usize,
}

/// Runs the command `cli` names on the program `define` describes; `command_line` is what it
/// was parsed with, the program's own options included (for `completions`).
pub(super) fn run(
    cli: ProgramCli,
    target: &str,
    command_line: clap::Command,
    define: impl FnOnce(&mut Program) -> crate::Result<()>,
) -> Result<ExitCode, Failure> {
    super::terminal::set_colour_choice(cli.color);
    let store_dir = cli.store.unwrap_or_else(Store::default_dir);
    let lock = cli.lock.unwrap_or_else(Lock::default_path);
    let profile = match cli.profile {
        Some(profile) => profile,
        None => default_profile(target)?,
    };
    let verbosity = match (cli.quiet, cli.verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Verbose,
        _ => Verbosity::Normal,
    };
    let settings = Settings {
        store_dir,
        lock,
        profile,
        verbosity,
        hosts: Hosts {
            on: cli.on,
            ssh_config: cli.ssh_config,
            max_hosts: usize::from(cli.max_hosts),
        },
    };
    if settings.hosts.on.is_some() && !reaches_hosts(&cli.command) {
        return Err(Failure::new(
            ExitCode::Usage,
            "`--on` selects the hosts of `plan`, `apply`, `drift`, `generations`, `diff`, \
             `rollback`, `delete-generations` and `gc`; this command works on this machine \
             alone: leave `--on` out",
        ));
    }
    match cli.command {
        ProgramCommand::Store(store::StoreCommand::Gc {
            dry_run,
            keep_build_inputs,
        }) if settings.hosts.on.is_some() => {
            if keep_build_inputs {
                return Err(Failure::new(
                    ExitCode::Usage,
                    "`--keep-build-inputs` keeps what this store's entries were built from; a \
                     host's store (`--on`) holds no builds: leave it out",
                ));
            }
            Session::open(define, settings, false)?.host_gc(dry_run)
        }
        ProgramCommand::Store(store::StoreCommand::Verify { repair: true }) => {
            let (report, wanted) = store::delete_damaged(&settings.store_dir)?;
            Session::open(define, settings, false)?.repair(&report, &wanted)
        }
        ProgramCommand::Store(command) => store::run(&settings.store_dir, command),
        ProgramCommand::Lock { json } => {
            lock_toolchains(define, &settings.lock, &settings.store_dir, json)
        }
        ProgramCommand::Prefetch { target, json } => store::prefetch(&target, json),
        ProgramCommand::Completions { shell } => {
            super::completions(command_line, &super::program_name(), shell)
        }
        ProgramCommand::Hash(command) => store::hash(command),
        ProgramCommand::Profile(command) if settings.hosts.on.is_some() => {
            let session = Session::open(define, settings, false)?;
            match command {
                profile::ProfileCommand::Generations { json: true } => Err(Failure::new(
                    ExitCode::Usage,
                    "`generations --json` lists the program's local profile; a host's \
                     generations (`--on`) are listed as text",
                )),
                profile::ProfileCommand::Generations { json: false } => session.host_generations(),
                profile::ProfileCommand::Rollback { to } => session.host_rollback(to),
                profile::ProfileCommand::Diff { a, b, json: false } => session.host_diff(a, b),
                profile::ProfileCommand::Diff { json: true, .. } => Err(Failure::new(
                    ExitCode::Usage,
                    "`diff --json` compares the program's local generations; a host's (`--on`) \
                     are compared as text",
                )),
                profile::ProfileCommand::DeleteGenerations {
                    numbers,
                    older_than,
                    keep,
                } => session.host_delete_generations(&crate::machine::agent::Doomed {
                    numbers,
                    older_than: older_than.map(|age| age.as_secs()),
                    keep,
                }),
            }
        }
        ProgramCommand::Profile(command) => profile::run(
            &Store::open_existing(&settings.store_dir)?,
            &settings.profile,
            command,
        ),
        ProgramCommand::Build(command) => {
            let to_read = command.only_plans();
            Session::open(define, settings, to_read)?.run_build(command)
        }
        ProgramCommand::Inspect(command) => Session::open(define, settings, true)?.inspect(command),
        ProgramCommand::Machine(command) => {
            Session::open(define, settings, false)?.machine(command)
        }
    }
}

/// Whether `command` works on hosts, which `--on` selects.
fn reaches_hosts(command: &ProgramCommand) -> bool {
    matches!(
        command,
        ProgramCommand::Build(build::BuildCommand::Apply { .. })
            | ProgramCommand::Inspect(inspect::InspectCommand::Plan { .. })
            | ProgramCommand::Machine(_)
            | ProgramCommand::Profile(_)
            | ProgramCommand::Store(store::StoreCommand::Gc { .. })
    )
}

/// `lock`: imports each toolchain the program uses as the host has it now, and records what it
/// resolved to in the lock file, saying what changed.
fn lock_toolchains(
    define: impl FnOnce(&mut Program) -> crate::Result<()>,
    path: &Path,
    store_dir: &Path,
    json: bool,
) -> Result<ExitCode, Failure> {
    let mut program = Program::new();
    define(&mut program).map_err(|e| Failure::new(ExitCode::InvalidProgram, e))?;
    let toolchains = program.toolchains();
    let store = Store::open(store_dir)?;
    let mut lock = Lock::read(path).map_err(|e| Failure::new(ExitCode::InvalidProgram, e))?;
    let mut out = String::new();
    let mut listed = Vec::new();
    for toolchain in &toolchains {
        let (locked, outcome) = crate::toolchain::import(&store, toolchain, None)
            .map_err(|e| Failure::new(ExitCode::Failure, e))?;
        let size = crate::store::tree_size(&store.content_path(&outcome.entry)).unwrap_or(0);
        let old = lock.toolchains().get(&locked.name);
        let changes = crate::toolchain::changes(old, &locked);
        let verb = match (old, changes.is_empty()) {
            (None, _) => "locked",
            (Some(_), true) => "unchanged",
            (Some(_), false) => "updated",
        };
        let _ = writeln!(
            out,
            "{verb} {}: {} packages, {:.1} MiB, {}",
            locked.name,
            locked.packages.len(),
            size as f64 / f64::from(1 << 20),
            outcome.entry
        );
        if old.is_some() {
            for change in &changes {
                let _ = writeln!(out, "  {change}");
            }
        }
        listed.push(serde_json::json!({
            "name": locked.name,
            "result": verb,
            "packages": locked.packages.len(),
            "bytes": size,
            "entry": outcome.entry,
            "changes": changes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }));
        lock.insert(locked);
    }
    // The imported toolchains are durable before the lock file names them.
    store.sync()?;
    lock.write()
        .map_err(|e| Failure::new(ExitCode::Failure, e))?;
    let count = lock.toolchains().len();
    let _ = writeln!(
        out,
        "Wrote {} ({})",
        lock.path().display(),
        crate::store::counted(count, "toolchain", "toolchains")
    );
    if json {
        let value = serde_json::json!({ "path": lock.path(), "toolchains": listed });
        super::emit(&format!("{value:#}\n"))?;
    } else {
        super::emit_changes(&out)?;
    }
    Ok(ExitCode::Success)
}

/// The profile a program applies into when none is named: its binary target's name, which
/// stays the same however the binary is named or wherever it is copied.
fn default_profile(target: &str) -> Result<String, Failure> {
    match crate::name::Name::new(target) {
        Ok(_) => Ok(target.to_string()),
        Err(e) => Err(Failure::new(
            ExitCode::Usage,
            format!("the program's name cannot name its profile ({e}); name one with `--profile`"),
        )),
    }
}
