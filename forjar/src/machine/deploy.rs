//! The controller's side of a deploy: a machine's system entry made from its model, its
//! closure copied to the host (only what the host lacks, asked in one round trip), activated by
//! the agent, and the outcome reported. Also the per-host plan, drift, generations and
//! rollback, each a command of the agent on the host.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::MachineError;
use super::agent::{self, Drift, GenerationRecord, Outcome, Probe, Request};
use super::archive;
use super::check::Check;
use super::manifest::{self, Changes, Manifest, PathKind, PathSpec, UnitSpec};
use super::model::{Content, Entry, Machine};
use super::secret;
use super::ssh::{Input, Reply, SshOptions, Transport};
use crate::derivation::OutputRef;
use crate::hash::{EntryName, TreeHasher, file_digest, file_digest_from};
use crate::name::Name;
use crate::store::{Store, human_bytes};

/// A machine's system: its entry, manifest and closure.
#[derive(Debug, Clone)]
pub struct System {
    /// The machine's name.
    pub machine: String,
    /// The system entry.
    pub entry: EntryName,
    /// What it holds.
    pub manifest: Manifest,
    /// The closure, references before what refers to them, with each entry's size.
    pub closure: Vec<(EntryName, u64)>,
    /// Each secret's path and where its value is read (never the value).
    pub secrets: Vec<(String, String)>,
}

/// The entry of the running program, which is the agent on every host: imported into the store
/// with `import`, else only named (for commands that write nothing).
///
/// The agent is the binary without its debugging information ([`super::slim`]), kept in
/// `.machines/agent-binaries/`; a command that writes nothing makes it in memory when it is not
/// there yet.
pub fn agent_entry(store: &Store, import: bool) -> Result<EntryName, MachineError> {
    let exe = std::env::current_exe()
        .map_err(|e| MachineError::Program(format!("cannot find this program's binary: {e}")))?;
    let name = Name::new("forjar-agent").expect("the agent's name is valid");
    let cannot = |e: io::Error| {
        MachineError::Program(format!(
            "cannot make the agent from `{}`: {e}",
            exe.display()
        ))
    };
    let hash = |path: &Path| {
        TreeHasher::with_cache(store.digest_cache())
            .digest(path)
            .map_err(|e| MachineError::Program(e.to_string()))
    };
    // A binary with nothing to leave out is the agent as it is, as before.
    if !super::slim::has_debug_info(&exe).map_err(cannot)? {
        return match import {
            true => Ok(store.import_source(&exe, &name)?.entry),
            false => Ok(EntryName::of_source(&name, &hash(&exe)?)),
        };
    }
    let kept = super::slim::kept_path(&store.dir().join(".machines/agent-binaries"), &exe)
        .map_err(cannot)?;
    if import {
        let binary = super::slim::keep(&exe, &kept).map_err(cannot)?;
        return Ok(store
            .import_source(binary.as_deref().unwrap_or(&exe), &name)?
            .entry);
    }
    let digest = match kept.exists() {
        true => hash(&kept)?,
        false => match super::slim::without_debug_info(&fs::read(&exe).map_err(cannot)?) {
            Some(slim) => file_digest(&slim, true),
            None => hash(&exe)?,
        },
    };
    Ok(EntryName::of_source(&name, &digest))
}

/// Makes the system entry of `machine`: in `store` with `import`, else only named, with its
/// closure as it will be (for `plan`, which writes nothing). `output` gives the entry of each
/// derivation output the machine's files use (all built by now).
pub fn assemble(
    store: &Store,
    machine: &Machine,
    agent: &EntryName,
    output: &dyn Fn(&OutputRef) -> Option<EntryName>,
    import: bool,
) -> Result<System, MachineError> {
    let bad = |why: String| MachineError::Program(format!("machine `{}`: {why}", machine.name));
    let dir = tempfile::TempDir::new()
        .map_err(|e| MachineError::Program(format!("cannot make a temporary directory: {e}")))?;
    let files = dir.path().join("files");
    fs::create_dir(&files).map_err(|e| bad(format!("cannot write: {e}")))?;
    let mut paths: BTreeMap<String, PathSpec> = BTreeMap::new();
    let mut inline = 0usize;
    let mut write_inline = |bytes: &[u8], executable: bool| -> Result<String, MachineError> {
        inline += 1;
        let path = files.join(inline.to_string());
        fs::write(&path, bytes).map_err(|e| bad(format!("cannot write: {e}")))?;
        if executable {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .map_err(|e| bad(format!("cannot write: {e}")))?;
        }
        Ok(format!("system:files/{inline}"))
    };
    for (path, entry) in &machine.paths {
        let spec = match entry {
            Entry::File(file) => {
                let executable = file.mode.bits() & 0o100 != 0;
                let (source, digest, size) = match &file.content {
                    Content::Bytes(bytes) => (
                        write_inline(bytes, executable)?,
                        file_digest(bytes, executable),
                        bytes.len() as u64,
                    ),
                    Content::Output {
                        output: out,
                        path: inner,
                    } => {
                        let entry = output(out).ok_or_else(|| {
                            bad(format!(
                                "file `{}`: its derivation output is not built",
                                path.as_str()
                            ))
                        })?;
                        let mut source = format!("{entry}/content");
                        if let Some(inner) = inner {
                            source = format!("{source}/{inner}");
                        }
                        // Streamed: an output file may be larger than memory should hold.
                        let cannot = |e: std::io::Error| {
                            bad(format!(
                                "file `{}` takes `{source}` from the store, which cannot be read \
                                 as a file: {e}",
                                path.as_str()
                            ))
                        };
                        let opened = fs::File::open(store.dir().join(&source)).map_err(cannot)?;
                        let size = opened.metadata().map_err(cannot)?.len();
                        let digest = file_digest_from(opened, executable).map_err(cannot)?;
                        (source, digest, size)
                    }
                    Content::Invalid(why) => {
                        return Err(bad(format!("file `{}`: {why}", path.as_str())));
                    }
                };
                PathSpec {
                    kind: PathKind::File {
                        source,
                        digest,
                        size,
                    },
                    owner: file.owner.clone(),
                    group: file.group.clone(),
                    mode: file.mode.bits(),
                }
            }
            Entry::Directory { owner, group, mode } => PathSpec {
                kind: PathKind::Directory,
                owner: owner.clone(),
                group: group.clone(),
                mode: mode.bits(),
            },
            Entry::Symlink(target) => PathSpec {
                kind: PathKind::Symlink {
                    target: target.clone(),
                },
                owner: "root".into(),
                group: "root".into(),
                mode: 0o777,
            },
        };
        paths.insert(path.as_str().to_string(), spec);
    }
    let mut units = BTreeMap::new();
    let mut checks = machine.checks.clone();
    for (name, unit) in &machine.units {
        let mut triggers = Vec::new();
        let mut secret_triggers = Vec::new();
        let mut trigger_files = Vec::new();
        for trigger in &unit.triggers {
            match paths.get(trigger.as_str()) {
                Some(PathSpec {
                    kind: PathKind::File { digest, .. },
                    ..
                }) => {
                    triggers.push(*digest);
                    trigger_files.push(trigger.as_str().to_string());
                }
                _ if machine.secrets.contains_key(trigger) => {
                    secret_triggers.push(trigger.as_str().to_string());
                }
                _ => {
                    return Err(bad(format!(
                        "unit `{name}` restarts on `{}`, which is not a file or secret this \
                         machine manages",
                        trigger.as_str()
                    )));
                }
            }
        }
        if unit.start || unit.provided {
            checks.extend(unit.checks.iter().map(|check| Check {
                unit: Some(name.clone()),
                ..check.clone()
            }));
        }
        if unit.provided {
            units.insert(
                name.clone(),
                UnitSpec {
                    enable: false,
                    start: false,
                    reload: unit.reload,
                    stamp: UnitSpec::provided_stamp(&triggers),
                    provided: true,
                    secrets: secret_triggers,
                    files: trigger_files,
                },
            );
            continue;
        }
        let unit_path = Manifest::unit_path(name);
        if paths.contains_key(&unit_path) {
            return Err(bad(format!(
                "path `{unit_path}` is both a file and unit `{name}`"
            )));
        }
        let text = unit.render();
        let digest = file_digest(text.as_bytes(), false);
        let mut stamp = blake3::Hasher::new();
        stamp.update(digest.as_bytes());
        for trigger in &triggers {
            stamp.update(trigger.as_bytes());
        }
        paths.insert(
            unit_path,
            PathSpec {
                kind: PathKind::File {
                    source: write_inline(text.as_bytes(), false)?,
                    digest,
                    size: text.len() as u64,
                },
                owner: "root".into(),
                group: "root".into(),
                mode: 0o644,
            },
        );
        units.insert(
            name.clone(),
            UnitSpec {
                enable: unit.enable,
                start: unit.start,
                reload: unit.reload,
                stamp: crate::hash::TreeDigest::from_bytes(*stamp.finalize().as_bytes()),
                provided: false,
                secrets: secret_triggers,
                files: trigger_files,
            },
        );
    }
    let manifest = Manifest {
        format: manifest::FORMAT.into(),
        machine: machine.name.clone(),
        agent: agent.clone(),
        groups: machine.groups.clone(),
        users: machine.users.clone(),
        paths,
        units,
        hooks: machine.hooks.clone(),
        checks,
        secrets: machine
            .secrets
            .iter()
            .map(|(path, (_, spec))| (path.as_str().to_string(), spec.clone()))
            .collect(),
    };
    fs::write(dir.path().join(manifest::FILE), manifest.to_json())
        .map_err(|e| bad(format!("cannot write: {e}")))?;
    let name = Name::new(format!("system-{}", machine.name))
        .map_err(|e| bad(format!("cannot name its system entry: {}", e.reason)))?;
    let references: Vec<EntryName> = manifest.references().into_iter().collect();
    let (entry, closure) = if import {
        let entry = store.import_made(dir.path(), &name, references)?.entry;
        let closure = ordered_closure(store, &entry)?;
        (entry, closure)
    } else {
        let digest = TreeHasher::new()
            .digest(dir.path())
            .map_err(|e| bad(e.to_string()))?;
        let entry = EntryName::of_source(&name, &digest);
        let mut closure: Vec<(EntryName, u64)> = Vec::new();
        for reference in &references {
            let part = match store.contains(reference) {
                true => ordered_closure(store, reference)?,
                // Only the agent can be missing here: everything else was built.
                false => vec![(reference.clone(), agent_size())],
            };
            for item in part {
                if !closure.iter().any(|(e, _)| *e == item.0) {
                    closure.push(item);
                }
            }
        }
        let size = crate::store::tree_size(dir.path()).map_err(|e| bad(e.to_string()))?;
        closure.push((entry.clone(), size));
        (entry, closure)
    };
    Ok(System {
        machine: machine.name.clone(),
        entry,
        manifest,
        closure,
        secrets: machine
            .secrets()
            .map(|(path, secret)| (path.as_str().to_string(), secret.source()))
            .collect(),
    })
}

fn agent_size() -> u64 {
    std::env::current_exe()
        .and_then(fs::metadata)
        .map_or(0, |m| m.len())
}

/// The closure of `root`, each entry after the entries it refers to.
fn ordered_closure(store: &Store, root: &EntryName) -> Result<Vec<(EntryName, u64)>, MachineError> {
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    // (entry, whether its references were pushed already)
    let mut stack = vec![(root.clone(), false)];
    while let Some((entry, expanded)) = stack.pop() {
        if expanded {
            let size = store.meta(&entry)?.size;
            order.push((entry, size));
            continue;
        }
        if !seen.insert(entry.clone()) {
            continue;
        }
        let references = store.meta(&entry)?.references;
        stack.push((entry, true));
        for reference in references.into_iter().rev() {
            if !seen.contains(&reference) {
                stack.push((reference, false));
            }
        }
    }
    Ok(order)
}

/// Who deploys, and from which revision: recorded in every generation.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// `user@host` of the controller.
    pub operator: String,
    /// The program's git revision, if it runs from a checkout (`-dirty` with local changes).
    pub revision: Option<String>,
}

/// The user `uid` as the environment (`var`) names it, else as the user database does (a
/// service or a cron job has no `USER`), else by number.
fn user_name(var: impl Fn(&str) -> Option<String>, uid: nix::unistd::Uid) -> String {
    ["USER", "LOGNAME"]
        .into_iter()
        .filter_map(var)
        .find(|user| !user.is_empty())
        .or_else(|| Some(nix::unistd::User::from_uid(uid).ok()??.name))
        .unwrap_or_else(|| uid.to_string())
}

impl Provenance {
    /// The running controller's.
    pub fn current() -> Provenance {
        let user = user_name(|name| std::env::var(name).ok(), nix::unistd::getuid());
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .stderr(std::process::Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let revision = git(&["rev-parse", "HEAD"]).map(|rev| {
            match git(&["status", "--porcelain", "--untracked-files=no"]) {
                Some(changes) if !changes.is_empty() => format!("{rev}-dirty"),
                _ => rev,
            }
        });
        Provenance {
            operator: format!("{user}@{host}"),
            revision,
        }
    }
}

/// The agent's command line on the host, for entry `agent` of a store at `store_dir`.
fn agent_argv(store_dir: &Path, agent: &EntryName, command: &[&str]) -> Vec<String> {
    let mut argv = vec![
        store_dir
            .join(agent.as_str())
            .join("content")
            .display()
            .to_string(),
        "__agent".into(),
        "--store".into(),
        store_dir.display().to_string(),
        "--state".into(),
        agent::STATE_DIR.into(),
    ];
    argv.extend(command.iter().map(|s| s.to_string()));
    argv
}

const AGENT_MISSING: &str = "forjar-agent-missing";

/// What the fallback says on standard error when it runs the host's own agent.
const AGENT_OTHER: &str = "forjar-agent-of-the-current-generation";

/// `text` quoted for `sh`.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The controller's root that keeps the system a host runs, and so its agent, which the next
/// rebuilt program's agent is sent as a change to: `machine-<host>` (a digest of the name for
/// one too long for a root's name).
fn host_root(machine: &str) -> String {
    let root = format!("machine-{machine}");
    match Name::new(root.as_str()) {
        Ok(_) => root,
        Err(_) => format!(
            "machine-{}",
            &crate::hash::base32(blake3::hash(machine.as_bytes()).as_bytes())[..32]
        ),
    }
}

/// How long a deploy tries to reconnect to a host whose connection dropped during activation.
const RECONNECT_FOR: Duration = Duration::from_secs(20);

/// A host's connection and what it says about itself.
pub struct Host {
    transport: Transport,
    store_dir: std::path::PathBuf,
    agent: EntryName,
}

impl Host {
    /// Connects to `machine`, whose agent is entry `agent` of `store`.
    pub fn connect(
        machine: &Machine,
        store: &Store,
        agent: &EntryName,
        ssh: &SshOptions,
    ) -> Result<Host, MachineError> {
        Ok(Host {
            transport: Transport::connect(machine, ssh)?,
            store_dir: store.dir().to_path_buf(),
            agent: agent.clone(),
        })
    }

    fn name(&self) -> &str {
        self.transport.host()
    }

    /// Runs an agent command, failing with its standard error if it fails.
    /// Runs an agent command: this program's agent, else the agent of the host's current
    /// generation (commands that read or go back, such as `drift`, `generations` and
    /// `rollback`, need no new agent; a deploy installs its own before it sends anything).
    fn agent(
        &self,
        command: &[&str],
        input: Input<'_>,
        line: impl FnMut(&str),
    ) -> Result<Reply, MachineError> {
        let reply = self
            .transport
            .run(&self.fallback_argv(command), input, line)?;
        if String::from_utf8_lossy(&reply.stdout).trim() == AGENT_MISSING {
            return Err(MachineError::host(
                self.name(),
                "the host has no forjar agent yet; `apply` installs it".to_string(),
            ));
        }
        let name = command.first().copied().unwrap_or_default();
        if reply.status.code() == Some(2) && reply.stderr.contains("unrecognized subcommand") {
            return Err(MachineError::host(
                self.name(),
                format!(
                    "the host's agent, from an older program, has no `{name}`; an `apply` of \
                     this program installs its own agent, which has"
                ),
            ));
        }
        if !reply.status.success() {
            return Err(self.failed(&format!("the agent's `{name}`"), &reply));
        }
        Ok(reply)
    }

    /// `what` failed on the host, as `reply` tells.
    fn failed(&self, what: &str, reply: &Reply) -> MachineError {
        MachineError::host(
            self.name(),
            format!("{what} failed ({}): {}", reply.status, reply.stderr.trim()),
        )
    }

    /// `sh -c` running this program's agent, else the agent of the host's current generation
    /// (named by its manifest; it says so on standard error), else printing
    /// [`AGENT_MISSING`].
    fn fallback_argv(&self, command: &[&str]) -> Vec<String> {
        let store = sh_quote(&self.store_dir.display().to_string());
        let script = format!(
            "a=$0; if [ ! -x \"$a\" ]; then \
               g=$(readlink -f {state}/current 2>/dev/null) || g=; \
               if [ -n \"$g\" ] && [ -f \"$g\" ]; then \
                 s=$(sed -n 's/^ *\"system\": *\"\\(.*\\)\",\\{{0,1\\}}$/\\1/p' \"$g\"); \
                 b=$(sed -n 's/^ *\"agent\": *\"\\(.*\\)\",\\{{0,1\\}}$/\\1/p' {store}/\"$s\"/content/manifest.json); \
                 a={store}/\"$b\"/content; echo {AGENT_OTHER} >&2; \
               fi; \
             fi; \
             if [ -x \"$a\" ]; then exec \"$a\" \"$@\"; fi; echo {AGENT_MISSING}",
            state = sh_quote(agent::STATE_DIR),
        );
        let mut argv = vec!["sh".to_string(), "-c".into(), script];
        argv.extend(agent_argv(&self.store_dir, &self.agent, command));
        argv
    }

    /// Asks which of `closure` the host lacks, and what it runs now, in one round trip, and
    /// whether this program's agent is there; `None` when the host has no agent at all.
    pub fn probe(&self, closure: &[EntryName]) -> Result<(Option<Probe>, bool), MachineError> {
        let names: String = closure.iter().map(|e| format!("{e}\n")).collect();
        let argv = self.fallback_argv(&["probe"]);
        let reply = self
            .transport
            .run(&argv, Input::Bytes(names.as_bytes()), |_| {})?;
        if String::from_utf8_lossy(&reply.stdout).trim() == AGENT_MISSING {
            return Ok((None, false));
        }
        if !reply.status.success() {
            return Err(self.failed("the agent's probe", &reply));
        }
        let own = !reply.stderr.contains(AGENT_OTHER);
        let probe = serde_json::from_slice(&reply.stdout).map_err(|e| {
            MachineError::host(
                self.name(),
                format!("the agent's probe answered nonsense: {e}"),
            )
        })?;
        Ok((Some(probe), own))
    }

    /// Uploads the agent binary and installs it in the host's store, verified by its digest:
    /// as a change to `base` (the agent the host runs, if this store has it too), which that
    /// agent makes the new binary of; else gzip-compressed (`upload`); on a host without `gzip`,
    /// as it is. Tells `on_way` how, before each way is tried. Returns the bytes sent.
    pub fn install_agent(
        &self,
        store: &Store,
        upload: &AgentUpload,
        base: Option<&EntryName>,
        stop: Option<&AtomicBool>,
        on_way: &dyn Fn(&str),
        on_sent: &(dyn Fn(u64) + Sync),
    ) -> Result<u64, MachineError> {
        let meta =
            fs::read_to_string(store.entry_path(&self.agent).join("meta.yaml")).map_err(|e| {
                MachineError::host(
                    self.name(),
                    format!("cannot read the agent's meta.yaml: {e}"),
                )
            })?;
        let mut sent = 0;
        for way in base
            .map(Way::Delta)
            .into_iter()
            .chain([Way::Compressed, Way::Whole])
        {
            // Each way's file is made only when it is tried; the script makes the binary `$f`.
            let (made, make, how) = match way {
                // A change that cannot be made (the store lacks the agent the host has, the pair
                // is too large, the store's directory cannot be written) is no reason to fail:
                // the agent goes whole.
                Way::Delta(base) => match upload.delta(store, base, &self.agent) {
                    Ok(Some(delta)) => (
                        delta,
                        format!(
                            "b=\"$2/$5/content\"; [ -x \"$b\" ] || {{ cat >/dev/null; exit {NOT_THIS_WAY}; }}; \
                             \"$b\" __agent --store \"$2\" --state \"$1\" from-delta --base \"$5\" --file \"$f\" \
                               || {{ cat >/dev/null; exit {NOT_THIS_WAY}; }}"
                        ),
                        "sent as a change to the agent it has",
                    ),
                    _ => continue,
                },
                Way::Compressed => (
                    upload
                        .compressed(store, &self.agent)
                        .map_err(|e| MachineError::host(self.name(), e))?,
                    format!(
                        "command -v gzip >/dev/null || {{ cat >/dev/null; exit {NOT_THIS_WAY}; }}; \
                         gzip -dc > \"$f\""
                    ),
                    "sent compressed",
                ),
                Way::Whole => {
                    let binary = store.content_path(&self.agent);
                    let open = fs::File::open(&binary).map_err(|e| {
                        MachineError::host(
                            self.name(),
                            format!("cannot read the agent `{}`: {e}", binary.display()),
                        )
                    })?;
                    (Made::new(open), "cat > \"$f\"".to_string(), "sent as it is")
                }
            };
            on_way(how);
            let script = format!(
                "set -e; umask 077; mkdir -p \"$1\"; f=$(mktemp \"$1/agent.XXXXXX\"); \
                 trap 'rm -f \"$f\"' EXIT; \
                 {make}; chmod 700 \"$f\"; \
                 \"$f\" __agent --store \"$2\" --state \"$1\" adopt --entry \"$3\" --meta \"$4\" --file \"$f\""
            );
            let argv = vec![
                "sh".to_string(),
                "-c".into(),
                script,
                "sh".into(),
                agent::STATE_DIR.into(),
                self.store_dir.display().to_string(),
                self.agent.to_string(),
                meta.clone(),
                base.map(EntryName::to_string).unwrap_or_default(),
            ];
            let reply = self.transport.run(
                &argv,
                Input::Stream(
                    Box::new(move |out| {
                        io::copy(&mut made.reader(), &mut Stoppable { out, stop }).map(drop)
                    }),
                    on_sent,
                ),
                |_| {},
            )?;
            sent += reply.sent;
            if reply.status.code() == Some(NOT_THIS_WAY) && !matches!(way, Way::Whole) {
                continue;
            }
            if !reply.status.success() {
                return Err(self.failed("installing the agent", &reply));
            }
            break;
        }
        Ok(sent)
    }

    /// Sends `entries` (references first), telling `on_sent` the bytes sent so far now and
    /// then; returns the bytes sent.
    pub fn send(
        &self,
        store: &Store,
        entries: &[EntryName],
        stop: Option<&AtomicBool>,
        on_sent: &(dyn Fn(u64) + Sync),
    ) -> Result<u64, MachineError> {
        let reply = self.agent(
            &["receive"],
            Input::Stream(
                Box::new(move |out| {
                    archive::write_entries(store, entries, &mut Stoppable { out, stop })
                }),
                on_sent,
            ),
            |_| {},
        )?;
        Ok(reply.sent)
    }

    /// Starts activation `request` with the values of the system's `secrets`, following the
    /// activator's log through `log` until its outcome, or until it waits for confirmation; `id` gets the activation's id as soon as
    /// it is known (a dropped connection is survived by the activator: [`Host::wait`] follows
    /// it again over a new one).
    pub fn activate(
        &self,
        request: &Request,
        secrets: &secret::Values,
        id: &mut Option<String>,
        mut log: impl FnMut(&str),
    ) -> Result<Step, MachineError> {
        let json = serde_json::to_string(request).expect("a request serialises");
        let mut step = None;
        let bundle = secrets.encode();
        let input = Input::Bytes(&bundle);
        let result = self.agent(&["activate", "--request", &json], input, |line| {
            if let Some(rest) = line.strip_prefix("activation ") {
                *id = Some(rest.to_string());
            } else {
                step = step.take().or_else(|| Step::read(line));
                if step.is_none() {
                    log(line);
                }
            }
        });
        self.step(step, result, "the activation")
    }

    /// Follows activation `id`, begun over an earlier connection, as [`Host::activate`] does.
    pub fn wait(&self, id: &str, mut log: impl FnMut(&str)) -> Result<Step, MachineError> {
        let mut step = None;
        let result = self.agent(&["wait", "--id", id], Input::Nothing, |line| {
            step = step.take().or_else(|| Step::read(line));
            if step.is_none() {
                log(line);
            }
        });
        self.step(step, result, &format!("activation {id}"))
    }

    fn step(
        &self,
        step: Option<Step>,
        result: Result<Reply, MachineError>,
        what: &str,
    ) -> Result<Step, MachineError> {
        match (step, result) {
            (Some(step), _) => Ok(step),
            (None, Err(e)) => Err(e),
            (None, Ok(_)) => Err(MachineError::host(
                self.name(),
                format!("{what} ended without an outcome"),
            )),
        }
    }

    /// Confirms activation `id`, which waits for it.
    pub fn confirm(&self, id: &str) -> Result<(), MachineError> {
        self.agent(&["confirm", "--id", id], Input::Nothing, |_| {})
            .map(drop)
    }

    /// Runs an agent command that answers in JSON, `what` it answers.
    fn answer<T: serde::de::DeserializeOwned>(
        &self,
        command: &[&str],
        what: &str,
    ) -> Result<T, MachineError> {
        let reply = self.agent(command, Input::Nothing, |_| {})?;
        serde_json::from_slice(&reply.stdout).map_err(|e| {
            MachineError::host(self.name(), format!("the agent's {what} is nonsense: {e}"))
        })
    }

    /// The host's generations.
    pub fn generations(&self) -> Result<Vec<GenerationRecord>, MachineError> {
        self.answer(&["generations"], "list of generations")
    }

    /// Deletes the host's generations `doomed` selects, and their roots; returns the numbers
    /// deleted.
    pub fn delete_generations(&self, doomed: &agent::Doomed) -> Result<Vec<u64>, MachineError> {
        let args = doomed.args();
        let command: Vec<&str> = std::iter::once("delete-generations")
            .chain(args.iter().map(String::as_str))
            .collect();
        self.answer(&command, "list of deleted generations")
    }

    /// Deletes what the host's store holds for no generation and no deploy under way (with
    /// `dry_run`, only says what). The local machine's store is the program's own, `store`,
    /// which this process has open: collected here, as an agent it runs would wait for the
    /// store to itself, and so for this process, for ever.
    /// With `wait` given, a store kept open by other processes longer than that is not
    /// collected, and the error says so.
    pub fn gc(
        &self,
        store: &Store,
        dry_run: bool,
        wait: Option<Duration>,
    ) -> Result<agent::Collected, MachineError> {
        if self.transport.is_local() {
            return agent::gc(store, dry_run, wait)
                .map_err(|e| MachineError::host(self.name(), e.0));
        }
        let seconds = wait.map(|wait| wait.as_secs().to_string());
        let mut command = vec!["gc"];
        if dry_run {
            command.push("--dry-run");
        }
        if let Some(seconds) = &seconds {
            command.extend(["--wait", seconds]);
        }
        self.answer(&command, "collection report")
    }

    /// The manifest of the host's generation `number`.
    pub fn manifest(&self, number: u64) -> Result<Manifest, MachineError> {
        let number = number.to_string();
        let reply = self.agent(
            &["manifest", "--generation", &number],
            Input::Nothing,
            |_| {},
        )?;
        Manifest::parse(&reply.stdout).map_err(|e| {
            MachineError::host(
                self.name(),
                format!("the agent's manifest is not valid: {e}"),
            )
        })
    }

    /// The host's drift from its current generation; with `repair`, repaired first.
    pub fn drift(&self, repair: bool) -> Result<Vec<Drift>, MachineError> {
        let command: &[&str] = if repair {
            &["drift", "--repair"]
        } else {
            &["drift"]
        };
        self.answer(command, "drift report")
    }

    /// Closes the connection.
    pub fn close(self) {
        self.transport.close();
    }
}

/// An upload's stream, which fails once `stop` is set (Ctrl-C): the host takes a cut stream as
/// it takes a dropped connection, and installs nothing of it.
struct Stoppable<'a, 's> {
    out: &'a mut dyn io::Write,
    stop: Option<&'s AtomicBool>,
}

impl io::Write for Stoppable<'_, '_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.stop.is_some_and(|stop| stop.load(Ordering::SeqCst)) {
            return Err(io::Error::other("interrupted"));
        }
        self.out.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// How the agent binary is sent.
#[derive(Clone, Copy)]
enum Way<'a> {
    /// As a change to this agent, which the host has.
    Delta(&'a EntryName),
    /// gzip-compressed.
    Compressed,
    /// As it is.
    Whole,
}

/// What the agent upload's script exits with when it cannot make the agent the way it was sent
/// (a host without `gzip`, or without the agent a change was made against, or whose agent does
/// not make agents from changes): the next way is tried.
const NOT_THIS_WAY: i32 = 97;

/// The agent binary as it is uploaded: gzip-compressed once per agent (a program's binary
/// compresses to about a third), kept in `<store>/.machines/agents/` for later applies; and as a
/// change to each agent hosts have ([`super::delta`]), made once per pair and kept in
/// `<store>/.machines/agent-deltas/`.
#[derive(Debug, Default)]
pub struct AgentUpload {
    made: std::sync::OnceLock<Result<Made, String>>,
    /// By the agent changed from: hosts on the same agent wait for one change to be made.
    deltas: std::sync::Mutex<BTreeMap<EntryName, std::sync::Arc<OnceDelta>>>,
}

type OnceDelta = std::sync::OnceLock<Result<Option<Made>, String>>;

/// What is sent of the agent (a made copy, compressed or a change, or the entry's binary), open:
/// each host reads it from the start through this one descriptor, so another program's apply
/// from the same store, which keeps only its own agent's copies, cannot take a copy away in the
/// middle of a deploy.
#[derive(Debug, Clone)]
struct Made(std::sync::Arc<fs::File>);

impl Made {
    fn new(file: fs::File) -> Made {
        Made(std::sync::Arc::new(file))
    }

    /// A reader from the start, of its own position.
    fn reader(&self) -> impl io::Read + use<> {
        struct At(std::sync::Arc<fs::File>, u64);
        impl io::Read for At {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = std::os::unix::fs::FileExt::read_at(&*self.0, buf, self.1)?;
                self.1 += n as u64;
                Ok(n)
            }
        }
        At(self.0.clone(), 0)
    }
}

impl AgentUpload {
    /// The compressed agent `agent` of `store`, made the first time it is asked for.
    fn compressed(&self, store: &Store, agent: &EntryName) -> Result<Made, String> {
        self.made
            .get_or_init(|| {
                let path = store.dir().join(format!(".machines/agents/{agent}.gz"));
                // Only the newest agent is kept: the others belong to older programs.
                super::slim::made(&path, super::slim::only(&path), |file| {
                    let mut encoder = flate2::write::GzEncoder::new(
                        io::BufWriter::new(file),
                        flate2::Compression::fast(),
                    );
                    io::copy(
                        &mut fs::File::open(store.content_path(agent))?,
                        &mut encoder,
                    )?;
                    io::Write::flush(&mut encoder.finish()?)?;
                    Ok(true)
                })
                .map(|made| Made::new(made.expect("the compressed agent is always made").1))
                .map_err(|e| format!("cannot compress the agent into `{}`: {e}", path.display()))
            })
            .clone()
    }

    /// Agent `agent` of `store` as a change to agent `base`, made the first time it is asked
    /// for; `None` when `store` lacks `base` (collected since), or the pair is too large.
    fn delta(
        &self,
        store: &Store,
        base: &EntryName,
        agent: &EntryName,
    ) -> Result<Option<Made>, String> {
        if base == agent || !store.contains(base) {
            return Ok(None);
        }
        let once = self
            .deltas
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(base.clone())
            .or_default()
            .clone();
        once.get_or_init(|| {
            let path = store
                .dir()
                .join(format!(".machines/agent-deltas/{base}-{agent}.zst"));
            // Only changes to the newest agent are kept: the others belong to older programs.
            let to = format!("-{agent}.zst");
            let kept = |name: &std::ffi::OsStr| name.as_encoded_bytes().ends_with(to.as_bytes());
            super::slim::made(&path, kept, |file| {
                let old = fs::read(store.content_path(base))?;
                let mut new = fs::File::open(store.content_path(agent))?;
                let len = new.metadata()?.len();
                super::delta::make(&old, &mut new, len, io::BufWriter::new(file))
            })
            .map(|made| made.map(|(_, file)| Made::new(file)))
            .map_err(|e| {
                format!(
                    "cannot make the agent as a change into `{}`: {e}",
                    path.display()
                )
            })
        })
        .clone()
    }
}

/// Where an activation is.
#[derive(Debug)]
pub enum Step {
    /// It ended.
    Done(Box<Outcome>),
    /// It activated, passed its health checks, and waits for the controller to confirm over a
    /// new connection.
    AwaitingConfirmation,
}

impl Step {
    fn read(line: &str) -> Option<Step> {
        if line == agent::AWAITING_CONFIRMATION {
            return Some(Step::AwaitingConfirmation);
        }
        let outcome = serde_json::from_str(line.strip_prefix("outcome ")?).ok()?;
        Some(Step::Done(Box::new(outcome)))
    }
}

/// How to reach a machine again: a new connection for each try.
pub struct Reach<'a> {
    /// The machine.
    pub machine: &'a Machine,
    /// The controller's store.
    pub store: &'a Store,
    /// The agent this program runs on hosts.
    pub agent: &'a EntryName,
    /// SSH options.
    pub ssh: &'a SshOptions,
}

impl Reach<'_> {
    /// A new connection.
    pub fn connect(&self) -> Result<Host, MachineError> {
        Host::connect(self.machine, self.store, self.agent, self.ssh)
    }

    /// Tries `each` over new connections, a second apart, until it succeeds or `within` has
    /// passed; the last error if it never did.
    fn retry<T>(
        &self,
        within: Duration,
        mut each: impl FnMut(&Host) -> Result<T, MachineError>,
    ) -> Result<(Host, T), MachineError> {
        let deadline = Instant::now() + within;
        loop {
            let tried = self.connect().and_then(|host| match each(&host) {
                Ok(value) => Ok((host, value)),
                Err(e) => {
                    host.close();
                    Err(e)
                }
            });
            match tried {
                Ok(done) => return Ok(done),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }
}

/// Passes an activation's log lines on once each: following it again over a new connection
/// starts from the log's beginning.
struct Relay<'a> {
    seen: usize,
    log: &'a mut dyn FnMut(&str),
}

impl Relay<'_> {
    /// A sink for one follow of the log, which skips the lines already passed on.
    fn again(&mut self) -> impl FnMut(&str) + '_ {
        let mut skip = self.seen;
        move |line| {
            if skip > 0 {
                skip -= 1;
            } else {
                self.seen += 1;
                (self.log)(line);
            }
        }
    }
}

/// Runs activation `request` on `host` to its end: follows its log, follows it again over a
/// new connection if this one drops, and, when it waits for confirmation, confirms over a new
/// connection — which proves the host can still be reached after the change. If no new
/// connection can be made in time, the host goes back to its previous generation by itself,
/// and this waits to hear so. Returns the outcome and the connection last used.
pub fn activate_to_the_end(
    host: Host,
    reach: &Reach<'_>,
    request: &Request,
    secrets: &secret::Values,
    log: &mut dyn FnMut(&str),
) -> Result<(Host, Outcome), MachineError> {
    let name = reach.machine.name();
    let mut id = None;
    let mut relay = Relay { seen: 0, log };
    let (mut host, mut step) = match host.activate(request, secrets, &mut id, relay.again()) {
        Ok(step) => (host, step),
        Err(e) => {
            let Some(id) = id.clone() else { return Err(e) };
            host.close();
            follow_again(
                reach,
                &id,
                &mut relay,
                e,
                "the host finishes the activation by itself (old or new generation), and the \
                 next apply shows which",
            )?
        }
    };
    let id = id.unwrap_or_default();
    let mut unconfirmed = None;
    while let Step::AwaitingConfirmation = step {
        let seconds = request.confirm.unwrap_or_default();
        (relay.log)(&format!(
            "activated; confirming over a new connection (the host goes back by itself after {seconds} s)"
        ));
        // Leave a margin for the host to see the confirmation before its deadline.
        let within = Duration::from_secs(seconds).saturating_sub(Duration::from_secs(2));
        match reach.retry(within, |h| h.confirm(&id)) {
            Ok((new_host, ())) => {
                host.close();
                host = new_host;
                (host, step) = match host.wait(&id, relay.again()) {
                    Ok(step) => (host, step),
                    Err(e) => {
                        host.close();
                        follow_again(
                            reach,
                            &id,
                            &mut relay,
                            e,
                            "the host confirmed it and stays on the new generation",
                        )?
                    }
                };
            }
            Err(e) => {
                let why = e.message();
                (relay.log)(&format!(
                    "cannot confirm over a new connection ({why}); waiting for the host to go back"
                ));
                unconfirmed = Some(why.clone());
                host.close();
                let (new_host, next) = reach
                    .retry(Duration::from_secs(seconds) + RECONNECT_FOR, |h| {
                        h.wait(&id, relay.again())
                    })
                    .map_err(|again| {
                        MachineError::host(
                            name,
                            format!(
                                "activation {id} could not be confirmed over a new connection \
                                 ({why}), and the host has not been reachable since ({}); it goes \
                                 back to its previous generation by itself {seconds} s after it \
                                 asked",
                                again.message()
                            ),
                        )
                    })?;
                host = new_host;
                step = next;
            }
        }
    }
    let Step::Done(mut outcome) = step else {
        unreachable!("the loop ends only on an outcome")
    };
    if let (Some(why), Some(error)) = (unconfirmed, outcome.error.as_mut()) {
        *error = format!("{error}; the controller's new connection failed: {why}");
    }
    Ok((host, *outcome))
}

/// Follows activation `id` again over a new connection, after the one following it failed with
/// `lost`; retried for [`RECONNECT_FOR`]. `meanwhile` says what the host does if no connection
/// can be made.
fn follow_again(
    reach: &Reach<'_>,
    id: &str,
    relay: &mut Relay<'_>,
    lost: MachineError,
    meanwhile: &str,
) -> Result<(Host, Step), MachineError> {
    (relay.log)(&format!(
        "lost the connection ({}); reconnecting",
        lost.message()
    ));
    reach
        .retry(RECONNECT_FOR, |h| h.wait(id, relay.again()))
        .map_err(|again| {
            MachineError::host(
                reach.machine.name(),
                format!(
                    "lost the connection during activation {id} and could not reconnect: {}; \
                     {meanwhile}",
                    again.message()
                ),
            )
        })
}

/// How hosts are deployed: what every host of one deploy shares.
#[derive(Debug)]
pub struct DeployOptions {
    /// How hosts are reached.
    pub ssh: SshOptions,
    /// How long an activated host waits for the controller's confirmation over a new
    /// connection before it goes back by itself.
    pub confirm: Duration,
    /// Who deploys, recorded in each generation.
    pub provenance: Provenance,
    /// The agent's upload.
    pub agent: AgentUpload,
    /// Set when the deploy is to stop (Ctrl-C): a host not yet activating is left as it is;
    /// one activating goes on to its outcome.
    pub interrupt: Option<&'static AtomicBool>,
}

impl DeployOptions {
    /// Options for reaching hosts with `ssh`, confirming within `confirm`.
    pub fn new(ssh: SshOptions, confirm: Duration) -> DeployOptions {
        DeployOptions {
            ssh,
            confirm,
            provenance: Provenance::current(),
            agent: AgentUpload::default(),
            interrupt: None,
        }
    }

    fn interrupted(&self) -> bool {
        self.interrupt
            .is_some_and(|flag| flag.load(Ordering::SeqCst))
    }

    /// The request to activate `system` (none: go back to generation `to`) after `plan`.
    fn request(&self, system: Option<EntryName>, to: Option<u64>, plan: String) -> Request {
        Request {
            system,
            to,
            operator: self.provenance.operator.clone(),
            revision: self.provenance.revision.clone(),
            plan,
            confirm: Some(self.confirm.as_secs().max(1)),
        }
    }
}

/// Why a host was skipped after an interrupt.
const NOT_CONTACTED: &str = "interrupted before this host was contacted";

/// How a deploy ended on one host (in JSON: `activated`, `unchanged`, `rolled-back`, `failed`,
/// `skipped`, `interrupted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostResult {
    /// A new generation is active.
    Activated,
    /// The host ran this system already.
    Unchanged,
    /// The activation failed and the host went back to the generation before.
    RolledBack,
    /// Something went wrong; the report's error says what.
    Failed,
    /// Not contacted: a wave not started, after a spent failure budget or an interrupt.
    Skipped,
    /// Stopped by an interrupt before its activation.
    Interrupted,
}

impl HostResult {
    /// The result of an activation whose outcome the agent reported as `result`.
    pub fn of_outcome(result: &str) -> HostResult {
        match result {
            "activated" => HostResult::Activated,
            "unchanged" => HostResult::Unchanged,
            "rolled-back" => HostResult::RolledBack,
            _ => HostResult::Failed,
        }
    }
}

/// What a deploy did on one host.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// The machine.
    pub machine: String,
    /// How it ended.
    pub result: HostResult,
    /// The generation the host is on afterwards, as far as known.
    pub generation: Option<u64>,
    /// The generation it was on before, as far as known.
    pub previous: Option<u64>,
    /// Whether the agent was installed (its upload is in `sent_bytes`).
    pub sent_agent: bool,
    /// Entries sent.
    pub sent_entries: usize,
    /// Bytes sent, the agent's upload included.
    pub sent_bytes: u64,
    /// What activation changed.
    pub changes: Option<Changes>,
    /// What had drifted on a host that runs its system already, put back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<Drift>,
    /// What went wrong.
    pub error: Option<String>,
    /// Generations deleted after the activation, as the machine keeps only its newest
    /// ([`Machine::keep_generations`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deleted_generations: Vec<u64>,
    /// What the host's store let go after them: entries and bytes (none for the local machine,
    /// whose store is the program's, collected by `gc`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collected: Option<Collection>,
}

/// What a host's store let go.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Collection {
    /// Entries deleted.
    pub entries: usize,
    /// Their bytes.
    pub bytes: u64,
}

impl HostReport {
    /// A report of `machine` with nothing done yet.
    pub fn new(machine: &str, result: HostResult) -> HostReport {
        HostReport {
            machine: machine.to_string(),
            result,
            generation: None,
            previous: None,
            sent_agent: false,
            sent_entries: 0,
            sent_bytes: 0,
            changes: None,
            repaired: Vec::new(),
            error: None,
            deleted_generations: Vec::new(),
            collected: None,
        }
    }

    /// Says `problem` on the host's line, after what is said there already; its result stays.
    fn add_error(&mut self, problem: String) {
        self.error = Some(match self.error.take() {
            Some(earlier) => format!("{earlier}; {problem}"),
            None => problem,
        });
    }

    /// A report of `machine`, not contacted as the deploy was interrupted.
    pub fn not_contacted(machine: &str) -> HostReport {
        let mut report = HostReport::new(machine, HostResult::Skipped);
        report.error = Some(NOT_CONTACTED.into());
        report
    }

    /// Whether an interrupt left the host as it was: not contacted, or stopped before its
    /// activation.
    pub fn interrupted(&self) -> bool {
        self.result == HostResult::Interrupted
            || (self.result == HostResult::Skipped && self.error.as_deref() == Some(NOT_CONTACTED))
    }

    /// Whether the host counts against a failure budget: it failed or went back.
    pub fn failed(&self) -> bool {
        matches!(self.result, HostResult::Failed | HostResult::RolledBack)
    }
}

/// What a host would change: the closure entries it lacks, the activation's changes, and its
/// drift.
#[derive(Debug, Clone, Serialize)]
pub struct HostPlan {
    /// The machine.
    pub machine: String,
    /// The system entry it would run.
    pub system: EntryName,
    /// Its current generation.
    pub current: Option<GenerationRecord>,
    /// Entries to send, with sizes.
    pub send: Vec<(EntryName, u64)>,
    /// Whether the agent must be installed first.
    pub install_agent: bool,
    /// The agent the host runs now (its current generation's), which a new one is sent as a
    /// change to.
    #[serde(skip)]
    pub host_agent: Option<EntryName>,
    /// What activation would change; none when the host runs this system already.
    pub changes: Option<Changes>,
    /// How the host differs from its current generation now.
    pub drift: Vec<Drift>,
    /// The health checks activation runs.
    pub checks: Vec<String>,
    /// The secrets written at activation: each path and where its value is read.
    pub secrets: Vec<(String, String)>,
    /// The generations deleted after it, for a machine that keeps only its newest
    /// ([`would_delete`]); a deploy's own plan leaves this empty.
    #[serde(rename = "delete_generations", skip_serializing_if = "Vec::is_empty")]
    pub deletes: Vec<u64>,
    /// How many of its newest generations the machine keeps, if it says.
    #[serde(rename = "keep_generations", skip_serializing_if = "Option::is_none")]
    pub keeps: Option<usize>,
}

impl HostPlan {
    /// The digest recorded in the generation this plan makes.
    pub fn digest(&self) -> String {
        agent::digest_text(&serde_json::to_string(self).expect("a plan serialises"))
    }
}

/// Plans `system` on the connected `host`, with the host's drift if `drift` (a deploy reads none:
/// its activation puts back what drifted whatever the plan said).
pub fn plan_host(host: &Host, system: &System, drift: bool) -> Result<HostPlan, MachineError> {
    let names: Vec<EntryName> = system.closure.iter().map(|(e, _)| e.clone()).collect();
    let (probe, own_agent) = host.probe(&names)?;
    let (missing, current, manifest, drift) = match probe {
        None => (names.clone(), None, None, Vec::new()),
        Some(probe) => {
            let drift = if drift && probe.current.is_some() {
                host.drift(false)?
            } else {
                Vec::new()
            };
            (probe.missing, probe.current, probe.manifest, drift)
        }
    };
    let install_agent = !own_agent;
    let missing: BTreeSet<EntryName> = missing.into_iter().collect();
    let send = system
        .closure
        .iter()
        .filter(|(e, _)| missing.contains(e))
        .cloned()
        .collect();
    let changes = match &current {
        Some(record)
            if record.system == system.entry
                && (record.store.as_os_str().is_empty() || record.store == host.store_dir) =>
        {
            None
        }
        _ => Some(Changes::between(manifest.as_ref(), &system.manifest)),
    };
    Ok(HostPlan {
        machine: system.machine.clone(),
        system: system.entry.clone(),
        current,
        send,
        install_agent,
        host_agent: manifest.as_ref().map(|m| m.agent.clone()),
        changes,
        drift,
        checks: system.manifest.checks.iter().map(Check::describe).collect(),
        secrets: system.secrets.clone(),
        deletes: Vec::new(),
        keeps: None,
    })
}

/// The generations an apply of `plan` would delete on the host, for a machine that keeps its
/// newest `keep` ([`Machine::keep_generations`]): those `delete-generations --keep` selects
/// after the activation, which makes a generation when the system changes. (One an activation
/// that was cut off goes back to would be spared; the plan does not read the journal.)
pub fn would_delete(host: &Host, plan: &HostPlan, keep: usize) -> Result<Vec<u64>, MachineError> {
    let now = std::time::SystemTime::now();
    let generations = host.generations()?;
    let mut listed = agent::dated(&generations);
    let current = match (&plan.changes, &plan.current) {
        (None, Some(current)) => current.number,
        _ => {
            let next = agent::next_number(&generations);
            listed.push((next, now));
            next
        }
    };
    let doomed =
        crate::store::generations_to_delete(&listed, Some(current), &[], None, Some(keep), now);
    Ok(doomed.into_iter().collect())
}

/// Deploys `system` to `machine`: connect, plan, send what is missing, activate, report.
/// `progress` gets each step, `live` the bytes sent so far (for a display that updates).
pub fn deploy_host(
    store: &Store,
    machine: &Machine,
    system: &System,
    secrets: &secret::Values,
    options: &DeployOptions,
    progress: &(dyn Fn(&str, &str) + Sync),
    live: &(dyn Fn(&str, &str) + Sync),
) -> HostReport {
    if options.interrupted() {
        return HostReport::not_contacted(machine.name());
    }
    let mut report = HostReport::new(machine.name(), HostResult::Failed);
    let name = machine.name.as_str();
    let mut activating = false;
    let result = (|| -> Result<(), MachineError> {
        progress(name, "connecting");
        let reach = Reach {
            machine,
            store,
            agent: &system.manifest.agent,
            ssh: &options.ssh,
        };
        let host = reach.connect()?;
        let mut plan = plan_host(&host, system, false)?;
        report.previous = plan.current.as_ref().map(|g| g.number);
        report.generation = report.previous;
        if plan.install_agent {
            let size =
                fs::metadata(store.content_path(&system.manifest.agent)).map_or(0, |m| m.len());
            // Said as each way is tried: a host may not take the first.
            let what = std::sync::Mutex::new(String::new());
            let on_way = |how: &str| {
                let now = format!("installing the agent ({}, {how})", human_bytes(size));
                progress(name, &now);
                *what
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
            };
            let shown = |sent: u64| {
                let what = what
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                live(name, &format!("{what}: {} sent", human_bytes(sent)));
            };
            report.sent_bytes += host.install_agent(
                store,
                &options.agent,
                plan.host_agent.as_ref(),
                options.interrupt,
                &on_way,
                &shown,
            )?;
            report.sent_agent = true;
            plan = plan_host(&host, system, false)?;
        }
        if !plan.send.is_empty() {
            let bytes: u64 = plan.send.iter().map(|(_, s)| s).sum();
            let count = plan.send.len();
            let what = format!(
                "copying {} ({})",
                crate::store::counted(count, "entry", "entries"),
                human_bytes(bytes)
            );
            progress(name, &what);
            let shown = |sent: u64| live(name, &format!("{what}: {} sent", human_bytes(sent)));
            let entries: Vec<EntryName> = plan.send.iter().map(|(e, _)| e.clone()).collect();
            report.sent_bytes += host.send(store, &entries, options.interrupt, &shown)?;
            report.sent_entries = entries.len();
        }
        if options.interrupted() {
            host.close();
            return Err(MachineError::host(name, "interrupted".into()));
        }
        let request = options.request(Some(system.entry.clone()), None, plan.digest());
        activating = true;
        progress(name, "activating");
        // From here on, which generation the host ends on is known only from its outcome.
        report.generation = None;
        let (host, outcome) = activate_to_the_end(host, &reach, &request, secrets, &mut |line| {
            progress(name, line)
        })?;
        report.result = HostResult::of_outcome(&outcome.result);
        report.generation = outcome.generation;
        // Another apply may have moved the host between the plan and this activation.
        report.previous = outcome.from.or(report.previous);
        report.changes = outcome.changes.clone();
        report.repaired = outcome.repaired.clone();
        report.error = outcome.error.clone();
        // Not the host's failure: said on its line, which keeps its result. Unsynced: the
        // root only saves sending an agent whole, not worth a `syncfs` of the store's file
        // system in the middle of a deploy.
        let on_one = matches!(report.result, HostResult::Activated | HostResult::Unchanged);
        if on_one && let Err(e) = store.add_root_unsynced(&host_root(name), &system.entry) {
            report.add_error(format!(
                "the controller's store cannot keep the system the host runs: {e}"
            ));
        }
        let mut generations = host.generations().ok();
        // Not started after a Ctrl-C: the deploy stops as soon as the host has its outcome.
        if let (true, Some(keep), Some(known)) = (on_one, machine.keep_generations, &generations)
            && known.len() > keep
            && !options.interrupted()
        {
            let kept = keep_newest(&host, store, keep, &mut report, progress);
            // The mirror without what was deleted (it may have been before a failure).
            if let Some(generations) = &mut generations {
                generations.retain(|g| !report.deleted_generations.contains(&g.number));
            }
            if let Err(e) = kept {
                report.add_error(format!(
                    "its generations older than the newest {keep} were not all deleted and \
                     collected: {}; `delete-generations --keep {keep} --on {name}` and `gc \
                     --on {name}` do it",
                    e.message()
                ));
            }
        }
        if let Some(generations) = generations {
            let _ = mirror(store, name, &generations);
        }
        host.close();
        Ok(())
    })();
    match result {
        // Stopped before its activation, an upload cut short or not: nothing of its system
        // changed, and what was copied whole waits in its store.
        Err(_) if !activating && options.interrupted() => {
            report.result = HostResult::Interrupted;
            report.error = Some("interrupted before its activation: it runs what it ran".into());
        }
        Err(e) => {
            report.result = HostResult::Failed;
            report.error = Some(e.message());
        }
        Ok(()) => {}
    }
    report
}

/// How long an apply's collection of a host's store waits at most for other processes that
/// have it open (another deploy's copy or activation): past it the apply goes on, and says so.
const COLLECTION_WAIT: Duration = Duration::from_secs(120);

/// Deletes the host's generations but its newest `keep` (never the one it runs, nor the one an
/// activation cut off goes back to) and collects its store, for a machine that keeps only
/// its newest generations; says what into `report`. A local machine's store is the
/// program's own, still in use by this apply, and is left to `gc`.
fn keep_newest(
    host: &Host,
    store: &Store,
    keep: usize,
    report: &mut HostReport,
    progress: &(dyn Fn(&str, &str) + Sync),
) -> Result<(), MachineError> {
    progress(
        host.name(),
        &format!("deleting generations older than the newest {keep}"),
    );
    report.deleted_generations = host.delete_generations(&agent::Doomed {
        numbers: Vec::new(),
        older_than: None,
        keep: Some(keep),
    })?;
    if report.deleted_generations.is_empty() || host.transport.is_local() {
        return Ok(());
    }
    progress(host.name(), "collecting its store");
    let collected = host.gc(store, false, Some(COLLECTION_WAIT))?;
    report.collected = Some(Collection {
        entries: collected.dead.len(),
        bytes: collected.bytes,
    });
    Ok(())
}

/// Activates generation `to` of `reach`'s host again (its previous one when `to` is none),
/// confirmed over a new connection as a deploy is.
pub fn rollback_host(
    reach: &Reach<'_>,
    to: Option<u64>,
    options: &DeployOptions,
    progress: &(dyn Fn(&str, &str) + Sync),
) -> Result<Outcome, MachineError> {
    let name = reach.machine.name();
    let request = options.request(None, to, "rollback".into());
    progress(name, "rolling back");
    let host = reach.connect()?;
    // A generation that is not the current one gets no secrets: the files on tmpfs stay.
    let none = secret::Values::default();
    let (host, outcome) = activate_to_the_end(host, reach, &request, &none, &mut |line| {
        progress(name, line)
    })?;
    if let Ok(generations) = host.generations() {
        let _ = mirror(reach.store, name, &generations);
    }
    host.close();
    Ok(outcome)
}

/// Keeps a copy of a host's generations on the controller, in `<store>/.machines/<name>/`.
pub fn mirror(store: &Store, machine: &str, generations: &[GenerationRecord]) -> io::Result<()> {
    let dir = store.dir().join(".machines").join(machine);
    fs::create_dir_all(&dir)?;
    let tmp = dir.join("generations.json.tmp");
    fs::write(&tmp, serde_json::to_string_pretty(generations)?)?;
    fs::rename(&tmp, dir.join("generations.json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::Uid;

    #[test]
    fn a_made_copy_of_the_agent_is_sent_whole_after_another_program_removed_its_name() {
        use std::io::Read;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let binary = tmp.path().join("agent");
        let bytes: Vec<u8> = (0..1u32 << 20)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        fs::write(&binary, &bytes).unwrap();
        let agent = store
            .import_source(&binary, &Name::new("forjar-agent").unwrap())
            .unwrap()
            .entry;
        let upload = AgentUpload::default();
        upload.compressed(&store, &agent).unwrap();
        // Another program's apply from this store keeps only its own agent's copies.
        fs::remove_file(store.dir().join(format!(".machines/agents/{agent}.gz"))).unwrap();
        for _host in 0..2 {
            let mut sent = Vec::new();
            flate2::read::GzDecoder::new(upload.compressed(&store, &agent).unwrap().reader())
                .read_to_end(&mut sent)
                .unwrap();
            assert!(sent == bytes, "a host got {} bytes", sent.len());
        }
    }

    #[test]
    fn the_operator_is_named_without_a_user_variable() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(user_name(env(&[("USER", "ada")]), Uid::from_raw(0)), "ada");
        assert_eq!(
            user_name(env(&[("USER", ""), ("LOGNAME", "ops")]), Uid::from_raw(0)),
            "ops"
        );
        // As a service runs it: no variable, the name from the user database.
        assert_eq!(user_name(env(&[]), Uid::from_raw(0)), "root");
        assert_eq!(user_name(env(&[]), Uid::from_raw(3_999_999)), "3999999");
    }
}
