//! `forjar worker`: a bot of the Remote Workers API (BuildGrid's Bots service) that runs each
//! action it is leased in forjar's sandbox.
//!
//! The bot keeps one session with the server: every update reports the leases it runs as
//! `ACTIVE` and those it finished as `COMPLETED` with their `ActionResult`, and takes new
//! `PENDING` ones, up to `--jobs` at once. While a build runs the session is refreshed every
//! [`REFRESH`], well inside the server's keepalive, so that a worker that dies is noticed and
//! its leases given to another.
//!
//! Two kinds of action:
//! - a forjar build ([`super::execution::BUILD_ARGS`]): the request is read back through the local
//!   validation and must hash to the key it was sent under; the input closure is installed in
//!   the worker's store (each entry checked against its `meta.yaml`'s tree digest); the build
//!   runs exactly as a local one, bound at the client's store paths; and each output is
//!   recorded in the remote cache under its entry action, where the client installs it from;
//! - any other command (as Bazel sends): the input root is written to `/build`, the command
//!   runs there in a `host-tools` sandbox (the host's `/usr` read-only, no network), and the
//!   output paths are uploaded.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::protobuf::Any;
use bazel_remote_apis::google::rpc::Status;
use prost::Message;

use super::bots::bots_client::BotsClient;
use super::bots::{
    BotSession, BotStatus, CreateBotSessionRequest, Device, Lease, LeaseState,
    UpdateBotSessionRequest, Worker as BotWorker, device, worker,
};
use super::cas::{self, Upload};
use super::execution::{ACTION_RESULT_TYPE, HOST_PROPERTY, REQUEST_FILE, is_build_command};
use super::wire;
use super::{Address, Remote, RemoteError};
use crate::exec::{self, ExecError, Local};
use crate::hash::HostFingerprint;
use crate::name::Limits;
use crate::name::{Name, RESERVED_ENV};
use crate::request::{
    Arg, BuildRequest, CleanRelPath, EnvKey, EnvValue, RequestParts, SandboxLevel, System,
};
use crate::sandbox::{self, BuildSpec, Outcome};
use crate::store::{EntryName, KeyLock, Store, StoreError};

/// How often a worker with running leases refreshes its session. BuildGrid's
/// `bot-session-keepalive-timeout` must be longer.
pub const REFRESH: Duration = Duration::from_secs(2);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The bot id: unique among the server's workers.
    pub name: String,
    /// How many actions run at once.
    pub jobs: usize,
    /// `FORJAR_BUILD_CORES` of a build that sets no CPU limit.
    pub cores: u32,
}

/// An action refused or failed for a reason other than its command's exit status.
#[derive(Debug)]
struct Refusal {
    code: tonic::Code,
    message: String,
}

impl Refusal {
    fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl From<RemoteError> for Refusal {
    fn from(e: RemoteError) -> Self {
        match e {
            // REAPI's answer to a missing input: the client uploads again and resends.
            RemoteError::Call {
                code: tonic::Code::NotFound,
                ..
            } => Refusal::new(tonic::Code::FailedPrecondition, e.to_string()),
            // Unavailable is retried elsewhere by the server; a damaged input is not the
            // action's fault either.
            _ => Refusal::new(tonic::Code::Unavailable, e.to_string()),
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::new(tonic::Code::Internal, e.to_string())
    }
}

/// Serves `address` until `stop` is set; then ends its session and returns.
pub fn serve(
    address: &Address,
    store: &Store,
    options: &WorkerOptions,
    stop: &AtomicBool,
) -> Result<(), RemoteError> {
    let remote = Remote::connect(address)?;
    let remote = &remote;
    let mut bots = BotsClient::new(remote.channel());
    let mut session = create_session(remote, &mut bots, options)?;
    eprintln!(
        "worker {} serving {address} with store {} ({} at once)",
        options.name,
        store.dir().display(),
        crate::store::counted(options.jobs, "job", "jobs")
    );
    let (done_tx, done_rx) = mpsc::channel::<(String, Lease)>();
    // The leases running here, each with its cancel flag.
    let mut running: HashMap<String, Arc<AtomicBool>> = HashMap::new();
    std::thread::scope(|scope| {
        loop {
            // Take up what the server sent: start new leases, stop cancelled ones.
            for lease in &mut session.leases {
                let state = LeaseState::try_from(lease.state).unwrap_or_default();
                match state {
                    // The server may already count a lease it sent as accepted.
                    LeaseState::Pending | LeaseState::Active
                        if !running.contains_key(&lease.id) && lease.payload.is_some() =>
                    {
                        lease.state = LeaseState::Active as i32;
                        let cancel = Arc::new(AtomicBool::new(false));
                        running.insert(lease.id.clone(), cancel.clone());
                        let (id, payload, tx) =
                            (lease.id.clone(), lease.payload.clone(), done_tx.clone());
                        let run = move || {
                            let finished = run_lease(remote, store, options, &id, payload, &cancel);
                            let _ = tx.send((id, finished));
                        };
                        if let Err(e) = std::thread::Builder::new().spawn_scoped(scope, run) {
                            // No thread for it (the user's limit on threads): given back, to
                            // be run elsewhere or here later (the server retries UNAVAILABLE).
                            let id = &lease.id;
                            let message = format!(
                                "the worker cannot start a thread for it: {}",
                                crate::threads::Said(&e)
                            );
                            eprintln!("worker {}: lease {id}: {message}", options.name);
                            let refusal = Refusal::new(tonic::Code::Unavailable, message);
                            let _ = done_tx.send((id.clone(), completed(id.clone(), Err(refusal))));
                        }
                    }
                    LeaseState::Cancelled => {
                        if let Some(run) = running.get(&lease.id) {
                            run.store(true, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
            }
            session
                .leases
                .retain(|l| l.state != LeaseState::Cancelled as i32);
            // Wait while builds run: until one finishes, or it is time to refresh the session.
            // An idle worker asks again at once; the server holds the request until there is
            // work.
            let mut finished: Vec<(String, Lease)> = done_rx.try_iter().collect();
            if finished.is_empty()
                && !running.is_empty()
                && let Ok(one) = done_rx.recv_timeout(REFRESH)
            {
                finished.push(one);
            }
            for (id, mut lease) in finished {
                running.remove(&id);
                // A build stopped because this worker is stopping is given back to be run
                // elsewhere (the server retries UNAVAILABLE), not reported as cancelled.
                if stop.load(Ordering::Relaxed)
                    && let Some(status) = lease.status.as_mut()
                    && status.code == tonic::Code::Cancelled as i32
                {
                    status.code = tonic::Code::Unavailable as i32;
                    status.message = "the worker stopped".to_string();
                }
                if let Some(slot) = session.leases.iter_mut().find(|l| l.id == id) {
                    *slot = lease;
                }
            }
            if stop.load(Ordering::Relaxed) {
                for run in running.values() {
                    run.store(true, Ordering::Relaxed);
                }
                if running.is_empty() {
                    session.status = BotStatus::BotTerminating as i32;
                    let _ = update(remote, &mut bots, &session, None);
                    return Ok(());
                }
            }
            let idle = running.is_empty().then_some(stop);
            let Some(updated) = update(remote, &mut bots, &session, idle) else {
                continue;
            };
            match updated {
                Ok(next) => session = next,
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    eprintln!(
                        "worker {}: the server is unavailable; retrying",
                        options.name
                    );
                    std::thread::sleep(REFRESH);
                }
                Err(status) => {
                    // The server no longer knows the session (it restarted, or thought this
                    // worker dead): its leases were given to others, so stop them here.
                    eprintln!(
                        "worker {}: the session ended ({:?}: {}); starting a new one",
                        options.name,
                        status.code(),
                        status.message()
                    );
                    for run in running.values() {
                        run.store(true, Ordering::Relaxed);
                    }
                    std::thread::sleep(REFRESH);
                    session = create_session(remote, &mut bots, options)?;
                }
            }
        }
    })
}

fn create_session(
    remote: &Remote,
    bots: &mut BotsClient<tonic::transport::Channel>,
    options: &WorkerOptions,
) -> Result<BotSession, RemoteError> {
    let request = CreateBotSessionRequest {
        parent: remote.address().instance().to_string(),
        bot_session: Some(BotSession {
            bot_id: options.name.clone(),
            status: BotStatus::Ok as i32,
            worker: Some(BotWorker {
                devices: vec![Device {
                    handle: options.name.clone(),
                    properties: vec![device::Property {
                        key: HOST_PROPERTY.to_string(),
                        value: HostFingerprint::current().to_string(),
                    }],
                }],
                properties: Vec::new(),
                configs: vec![worker::Config {
                    key: "capacity".to_string(),
                    value: options.jobs.to_string(),
                }],
            }),
            ..Default::default()
        }),
    };
    remote
        .block_on(bots.create_bot_session(request))
        .map(tonic::Response::into_inner)
        .map_err(remote.failed("CreateBotSession"))
}

/// Sends the session and returns the server's version of it. An idle worker's update waits on
/// the server until there is work; `stop` ends that wait (`None`).
fn update(
    remote: &Remote,
    bots: &mut BotsClient<tonic::transport::Channel>,
    session: &BotSession,
    stop: Option<&AtomicBool>,
) -> Option<Result<BotSession, tonic::Status>> {
    let request = UpdateBotSessionRequest {
        name: session.name.clone(),
        bot_session: Some(session.clone()),
    };
    remote.block_on(async {
        let mut call = std::pin::pin!(bots.update_bot_session(request));
        loop {
            match tokio::time::timeout(Duration::from_millis(100), call.as_mut()).await {
                Ok(result) => return Some(result.map(tonic::Response::into_inner)),
                Err(_) if stop.is_some_and(|s| s.load(Ordering::Relaxed)) => return None,
                Err(_) => {}
            }
        }
    })
}

/// A lease reported done: with its result, or with why there is none.
fn completed(id: String, result: Result<re::ActionResult, Refusal>) -> Lease {
    let (result, status) = match result {
        Ok(result) => (
            Some(Any {
                type_url: ACTION_RESULT_TYPE.to_string(),
                value: result.encode_to_vec(),
            }),
            Status::default(),
        ),
        Err(refusal) => (
            None,
            Status {
                code: refusal.code as i32,
                message: refusal.message,
                details: Vec::new(),
            },
        ),
    };
    Lease {
        id,
        payload: None,
        result,
        state: LeaseState::Completed as i32,
        status: Some(status),
        expire_time: None,
    }
}

fn run_lease(
    remote: &Remote,
    store: &Store,
    options: &WorkerOptions,
    id: &str,
    payload: Option<Any>,
    cancel: &AtomicBool,
) -> Lease {
    let started = Instant::now();
    // A lease always gets its answer: a panic is a bug of this worker, and reported as one
    // rather than leaving the action to time out.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        perform(remote, store, options, payload.unwrap_or_default(), cancel)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Refusal::new(
            tonic::Code::Internal,
            format!("the worker failed unexpectedly: {what}"),
        ))
    });
    match &result {
        Ok(r) => eprintln!(
            "worker {}: lease {id} done in {:.1}s, exit status {}",
            options.name,
            started.elapsed().as_secs_f64(),
            r.exit_code
        ),
        Err(refusal) => eprintln!(
            "worker {}: lease {id} failed: {:?}: {}",
            options.name, refusal.code, refusal.message
        ),
    }
    completed(id.to_string(), result)
}

fn perform(
    remote: &Remote,
    store: &Store,
    options: &WorkerOptions,
    payload: Any,
    cancel: &AtomicBool,
) -> Result<re::ActionResult, Refusal> {
    let invalid = |what: &str, e: prost::DecodeError| {
        Refusal::new(tonic::Code::InvalidArgument, format!("{what}: {e}"))
    };
    let action = if payload
        .type_url
        .ends_with("build.bazel.remote.execution.v2.Action")
    {
        re::Action::decode(&payload.value[..]).map_err(|e| invalid("the lease's action", e))?
    } else if payload
        .type_url
        .ends_with("build.bazel.remote.execution.v2.Digest")
    {
        let digest =
            re::Digest::decode(&payload.value[..]).map_err(|e| invalid("the lease's digest", e))?;
        re::Action::decode(&remote.read_blob(&digest)?[..]).map_err(|e| invalid("the action", e))?
    } else {
        return Err(Refusal::new(
            tonic::Code::InvalidArgument,
            format!("a lease of `{}` is not an action", payload.type_url),
        ));
    };
    let command_digest = action.command_digest.clone().unwrap_or_default();
    let command = re::Command::decode(&remote.read_blob(&command_digest)?[..])
        .map_err(|e| invalid("the command", e))?;
    let root = action.input_root_digest.clone().unwrap_or_default();
    let mut result = if is_build_command(&command) {
        build(remote, store, options, &root, cancel)?
    } else {
        run_command(remote, store, options, &action, &command, cancel)?
    };
    result.execution_metadata = Some(re::ExecutedActionMetadata {
        worker: options.name.clone(),
        ..Default::default()
    });
    Ok(result)
}

/// Runs a forjar build action.
fn build(
    remote: &Remote,
    store: &Store,
    options: &WorkerOptions,
    root_digest: &re::Digest,
    cancel: &AtomicBool,
) -> Result<re::ActionResult, Refusal> {
    let root = re::Directory::decode(&remote.read_blob(root_digest)?[..])
        .map_err(|e| Refusal::new(tonic::Code::InvalidArgument, format!("the input root: {e}")))?;
    let request_file = root
        .files
        .iter()
        .find(|f| f.name == REQUEST_FILE)
        .and_then(|f| f.digest.clone())
        .ok_or_else(|| {
            Refusal::new(
                tonic::Code::InvalidArgument,
                format!("the input root has no {REQUEST_FILE}"),
            )
        })?;
    let received = wire::decode(&remote.read_blob(&request_file)?)
        .map_err(|e| Refusal::new(tonic::Code::InvalidArgument, e.to_string()))?;
    let request = &received.request;
    if request.system != System::host() {
        return Err(Refusal::new(
            tonic::Code::FailedPrecondition,
            format!(
                "`{}` is for {}, and this worker builds for {}",
                request.name,
                request.system,
                System::host()
            ),
        ));
    }
    if let Some(host) = request.host.as_ref()
        && *host != HostFingerprint::current()
    {
        return Err(Refusal::new(
            tonic::Code::FailedPrecondition,
            format!(
                "`{}` is a host-tools build keyed by another host's software ({host}); this \
                 worker's host is {}",
                request.name,
                HostFingerprint::current()
            ),
        ));
    }
    for directory in &root.directories {
        let entry = EntryName::parse(&directory.name)
            .map_err(|e| Refusal::new(tonic::Code::InvalidArgument, e.to_string()))?;
        if !store.contains(&entry) {
            install_input(remote, store, &entry, directory.digest.as_ref())?;
        }
    }
    let direct: Vec<EntryName> = request.input_entries().cloned().collect();
    // Every entry the inputs refer to must have come too.
    store.closure(direct).map_err(|e| {
        Refusal::new(
            tonic::Code::InvalidArgument,
            format!("the input root lacks part of the input closure: {e}"),
        )
    })?;
    let outputs = received.outputs();
    let entries: Vec<EntryName> = outputs.values().map(|o| o.entry.clone()).collect();
    eprintln!("worker {}: building {}", options.name, request.name);
    let job = received.job(&outputs);
    let local = Local {
        cores: options.cores,
        keep_failed: false,
    };
    let log_path = store.log_path(&received.key.store_hash());
    match exec::run_job(&local, &job, store, cancel, &|_| {}) {
        Ok(_) => {
            // A worker runs for long: each job's entries are made durable when it ends, so
            // that what a crash leaves to check stays one job's.
            store
                .sync()
                .map_err(|e| Refusal::new(tonic::Code::Internal, e.to_string()))?;
            let mut result = re::ActionResult::default();
            for entry in &entries {
                // Each output's tree holds the build's log, which is also the action's stdout.
                let pushed = remote.push_entry(store, entry)?;
                result.output_directories.push(re::OutputDirectory {
                    path: entry.to_string(),
                    tree_digest: Some(pushed.tree),
                    ..Default::default()
                });
                result.stdout_digest = result.stdout_digest.or(pushed.log);
            }
            Ok(result)
        }
        Err(ExecError::Cancelled(_)) => Err(Refusal::new(
            tonic::Code::Cancelled,
            "the build was cancelled",
        )),
        Err(error @ (ExecError::Failed(_) | ExecError::HashMismatch { .. })) => {
            let reason = match &error {
                ExecError::Failed(failure) => failure.reason.clone(),
                other => other.to_string(),
            };
            let mut result = re::ActionResult {
                exit_code: 1,
                stderr_raw: reason.into_bytes(),
                ..Default::default()
            };
            if log_path.is_file() {
                result.stdout_digest = Some(upload_file(remote, &log_path)?);
            }
            Ok(result)
        }
        Err(other) => Err(Refusal::new(tonic::Code::Internal, other.to_string())),
    }
}

/// Uploads one file; returns its digest.
fn upload_file(remote: &Remote, path: &Path) -> Result<re::Digest, RemoteError> {
    let mut upload = Upload::default();
    let packed = upload.add_path(path, &mut Vec::new())?;
    let cas::Packed::File { digest, .. } = packed else {
        unreachable!("{} is a file", path.display())
    };
    remote.upload(upload)?;
    Ok(digest)
}

/// Installs one entry of an action's input closure into the worker's store, checked.
fn install_input(
    remote: &Remote,
    store: &Store,
    entry: &EntryName,
    digest: Option<&re::Digest>,
) -> Result<(), Refusal> {
    let lock = KeyLock::acquire(store, entry.hash())?;
    if store.contains(entry) {
        return Ok(());
    }
    let (root, children) = remote.read_directories(&digest.cloned().unwrap_or_default())?;
    remote
        .install_tree(store, &lock, entry, &root, &children, &|meta| {
            if meta.key.store_hash() == entry.hash() {
                Ok(())
            } else {
                Err(format!("its meta.yaml is for key {}", meta.key))
            }
        })
        .map_err(|e| match e {
            RemoteError::Malformed { .. } => {
                Refusal::new(tonic::Code::InvalidArgument, e.to_string())
            }
            other => other.into(),
        })
}

static ACTION_SEQ: AtomicU64 = AtomicU64::new(0);

/// Runs a plain command: the input root at `/build`, the host's tools, no network.
fn run_command(
    remote: &Remote,
    store: &Store,
    options: &WorkerOptions,
    action: &re::Action,
    command: &re::Command,
    cancel: &AtomicBool,
) -> Result<re::ActionResult, Refusal> {
    let invalid = |message: String| Refusal::new(tonic::Code::InvalidArgument, message);
    eprintln!(
        "worker {}: running {}",
        options.name,
        abbreviated(&command.arguments.join(" "), 160)
    );
    let seq = ACTION_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = store.dir().join(".tmp");
    let top = crate::store::ScratchDir(tmp.join(format!("action-{}-{seq}", std::process::id())));
    fs::create_dir(&top.0).map_err(StoreError::io("cannot create", &top.0))?;
    let exec_root = top.0.join("root");
    fs::create_dir(&exec_root).map_err(StoreError::io("cannot create", &exec_root))?;
    let (root, children) =
        remote.read_directories(&action.input_root_digest.clone().unwrap_or_default())?;
    remote.materialise(&root, &children, &exec_root)?;
    // The input root is the sandbox's `/build`; the command starts there or in a directory of it.
    let working_dir = if command.working_directory.is_empty() {
        CleanRelPath::new("working directory", "build")
    } else {
        CleanRelPath::new(
            "working directory",
            format!("build/{}", command.working_directory),
        )
    }
    .map_err(|e| invalid(e.to_string()))?;
    // Output paths are relative to the working directory.
    let work_root = exec_root.join(&command.working_directory);
    if !fs::symlink_metadata(&work_root).is_ok_and(|m| m.is_dir()) {
        return Err(invalid(format!(
            "working directory `{}`: not a directory of the input root",
            command.working_directory
        )));
    }

    // Clients of REAPI before v2.1 (older Bazel) name outputs by kind.
    #[allow(deprecated)]
    let outputs: Vec<String> = if command.output_paths.is_empty() {
        command
            .output_files
            .iter()
            .chain(&command.output_directories)
            .cloned()
            .collect()
    } else {
        command.output_paths.clone()
    };
    for output in &outputs {
        let path = CleanRelPath::new("output path", output.as_str())
            .map_err(|e| invalid(e.to_string()))?;
        if let Some(parent) = work_root.join(path.as_path()).parent() {
            fs::create_dir_all(parent).map_err(StoreError::io("cannot create", parent))?;
        }
    }

    let args = command
        .arguments
        .iter()
        .enumerate()
        .map(|(i, a)| Arg::new(i, a.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    let mut env = crate::map::SortedMap::new();
    for variable in &command.environment_variables {
        // The sandbox sets these itself (to /build and the like).
        if RESERVED_ENV.contains(&variable.name.as_str()) {
            continue;
        }
        let key = EnvKey::new(variable.name.as_str()).map_err(|e| invalid(e.to_string()))?;
        let value =
            EnvValue::new(&key, variable.value.as_str()).map_err(|e| invalid(e.to_string()))?;
        env.insert(key, value);
    }
    let request = BuildRequest::action(RequestParts {
        name: Name::new("action").expect("a valid name"),
        system: System::host(),
        args,
        working_dir,
        scratch_paths: Default::default(),
        outputs: Default::default(),
        env,
        inputs: Default::default(),
        files: Default::default(),
        constraints: Default::default(),
        sandbox: SandboxLevel::HostTools,
        fixed_output: None,
        store_dir: store.store_dir().clone(),
        host: Some(HostFingerprint::current()),
        toolchain: None,
        input_lists: Default::default(),
    })
    .map_err(|e| invalid(e.to_string()))?;
    let limits = Limits {
        timeout: action
            .timeout
            .as_ref()
            .filter(|t| t.seconds > 0 || t.nanos > 0)
            .map(|t| Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)),
        ..Default::default()
    };
    let spec = BuildSpec {
        request: &request,
        inputs: Vec::new(),
        referenced: Vec::new(),
        toolchain: None,
        outputs: Vec::new(),
        build_dir: exec_root.clone(),
        limits,
        cores: options.cores,
        cancel: Some(cancel),
        hold: None,
        under_way: None,
    };
    let stdout_path = top.0.join("stdout");
    let stderr_path = top.0.join("stderr");
    let create =
        |path: &Path| fs::File::create(path).map_err(StoreError::io("cannot create", path));
    let (mut stdout, mut stderr) = (create(&stdout_path)?, create(&stderr_path)?);
    let finished = sandbox::run_split(&spec, &mut stdout, &mut stderr, &|| 0)
        .map_err(|e| Refusal::new(tonic::Code::Internal, e.to_string()))?;
    let exit_code = match &finished.outcome {
        Outcome::Exited(code) => *code,
        Outcome::Cancelled => {
            return Err(Refusal::new(
                tonic::Code::Cancelled,
                "the action was cancelled",
            ));
        }
        Outcome::TimedOut(_) => {
            return Err(Refusal::new(
                tonic::Code::DeadlineExceeded,
                finished.outcome.to_string(),
            ));
        }
        other => {
            // How the command ended, after what it wrote.
            writeln!(stderr, "forjar worker: {other}")
                .map_err(StoreError::io("cannot write", &stderr_path))?;
            1
        }
    };
    drop((stdout, stderr));

    let mut upload = Upload::default();
    let mut result = re::ActionResult {
        exit_code,
        ..Default::default()
    };
    for output in &outputs {
        let path = work_root.join(output);
        if fs::symlink_metadata(&path).is_err() {
            // An output the command did not make is left out of the result.
            continue;
        }
        let mut children = Vec::new();
        match upload.add_path(&path, &mut children)? {
            cas::Packed::File { digest, executable } => result.output_files.push(re::OutputFile {
                path: output.clone(),
                digest: Some(digest),
                is_executable: executable,
                ..Default::default()
            }),
            cas::Packed::Directory(root_digest) => {
                let root = children
                    .pop()
                    .expect("a packed directory is in its children");
                let tree = upload.add_message(&re::Tree {
                    root: Some(root),
                    children,
                });
                result.output_directories.push(re::OutputDirectory {
                    path: output.clone(),
                    tree_digest: Some(tree),
                    is_topologically_sorted: false,
                    root_directory_digest: Some(root_digest),
                });
            }
            cas::Packed::Symlink(target) => {
                let link = re::OutputSymlink {
                    path: output.clone(),
                    target,
                    ..Default::default()
                };
                #[allow(deprecated)]
                if command.output_paths.is_empty() {
                    if command.output_files.contains(output) {
                        result.output_file_symlinks.push(link.clone());
                    } else {
                        result.output_directory_symlinks.push(link.clone());
                    }
                }
                result.output_symlinks.push(link);
            }
        }
    }
    for (path, digest) in [
        (&stdout_path, &mut result.stdout_digest),
        (&stderr_path, &mut result.stderr_digest),
    ] {
        if let cas::Packed::File { digest: packed, .. } = upload.add_path(path, &mut Vec::new())? {
            *digest = Some(packed);
        }
    }
    remote.upload(upload)?;
    Ok(result)
}

/// `text` on one line for a log: control characters escaped, cut to at most `limit` characters
/// with an ellipsis where it was cut.
fn abbreviated(text: &str, limit: usize) -> String {
    let mut line = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == limit {
            line.push('…');
            break;
        }
        if c.is_control() {
            line.extend(c.escape_debug());
        } else {
            line.push(c);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::abbreviated;

    #[test]
    fn a_logged_command_is_one_line_and_cut_at_the_limit() {
        assert_eq!(abbreviated("echo hi", 7), "echo hi");
        assert_eq!(abbreviated("echo hi!", 7), "echo hi…");
        assert_eq!(abbreviated("a\nb\tc", 10), "a\\nb\\tc");
        assert_eq!(abbreviated("é€x", 2), "é€…");
    }
}
