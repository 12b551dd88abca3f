//! Remote execution: a derivation's build sent as a REAPI `Action`, for `forjar worker` to run.
//!
//! The action's input root holds the build request ([`REQUEST_FILE`], the wire form of
//! [`super::wire`]) and, for every store entry of the input closure, a directory named
//! after the entry with its `content` and `meta.yaml`. Its command is [`BUILD_ARGS`], which
//! `forjar worker` recognises (any other command it runs as a plain action, as Bazel sends). The
//! worker builds in its own sandbox, checks what it built as a local build is checked, and
//! records each output in the remote cache under its entry action, so the client installs the
//! outputs as it installs any cache hit: every blob and the tree digest checked before the
//! rename into place.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::longrunning::{self, operation};
use prost::Message;

use super::cache::pack_entry;
use super::cas::{self, DirectoryExt, Upload};
use super::{Remote, RemoteError};
use crate::exec::BuildJob;
use crate::store::{EntryName, Store};

/// The file of the input root that holds the build request.
pub const REQUEST_FILE: &str = "request.json";
/// The command of a forjar build action.
pub const BUILD_ARGS: [&str; 3] = ["forjar", "build-request", REQUEST_FILE];

/// Whether `command` is a forjar build action (rather than a plain command).
pub fn is_build_command(command: &re::Command) -> bool {
    command.arguments == BUILD_ARGS
}

/// The platform property that sends a `host-tools` build to a worker on a host with the same
/// fingerprint (the build's key depends on it). Workers advertise theirs; the scheduler must
/// match on it (BuildGrid: `match-property-keys: [forjar-host]`).
pub const HOST_PROPERTY: &str = "forjar-host";

/// The type URL of an `ActionResult` in a `google.protobuf.Any`.
pub const ACTION_RESULT_TYPE: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult";

/// How a remote build ended.
#[derive(Debug)]
pub enum Executed {
    /// The outputs were built and recorded in the remote cache.
    Built {
        /// The worker that built them.
        worker: String,
    },
    /// The build ran and failed.
    Failed {
        /// The worker it ran on.
        worker: String,
        /// Why, as the worker says.
        reason: String,
        /// The build log.
        log: Vec<u8>,
    },
    /// `stop` was set; the operation was cancelled.
    Cancelled,
}

/// One build to send: the job and its input closure, every entry the build may see.
pub struct BuildAction<'a> {
    /// The build.
    pub job: &'a BuildJob<'a>,
    /// Its input closure.
    pub closure: &'a BTreeSet<EntryName>,
}

/// Entries packed for input roots during this run, so that an entry needed by many builds is
/// read and hashed once: each one's directories, its own first. Their messages go along with
/// every action (the server has them after the first, and they cost one small hash each); the
/// file blobs they name are not read again.
#[derive(Debug, Default)]
pub struct PackedEntries(Mutex<HashMap<EntryName, Arc<[re::Directory]>>>);

impl PackedEntries {
    fn get(&self, entry: &EntryName) -> Option<Arc<[re::Directory]>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(entry)
            .cloned()
    }

    /// An entry as the memo holds it, from its cached tree's root (which may also hold its
    /// `log`) and the directories under it.
    pub(crate) fn directories(
        cached: &re::Directory,
        children: &[re::Directory],
    ) -> Arc<[re::Directory]> {
        std::iter::once(Self::entry_directory(cached))
            .chain(children.iter().cloned())
            .collect()
    }

    /// An entry as an input root holds it, `content` and `meta.yaml`, made from the root of its
    /// cached tree.
    fn entry_directory(cached: &re::Directory) -> re::Directory {
        let kept = |name: &String| name == "content" || name == "meta.yaml";
        re::Directory {
            files: cached
                .files
                .iter()
                .filter(|f| kept(&f.name))
                .cloned()
                .collect(),
            directories: cached
                .directories
                .iter()
                .filter(|d| kept(&d.name))
                .cloned()
                .collect(),
            symlinks: cached
                .symlinks
                .iter()
                .filter(|s| kept(&s.name))
                .cloned()
                .collect(),
            node_properties: None,
        }
    }

    pub(crate) fn insert(&self, entries: Vec<(EntryName, Arc<[re::Directory]>)>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(entries);
    }

    fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Remote {
    /// Sends `build` to the remote executor and waits for it. The inputs are uploaded first
    /// (what the CAS holds is not sent again).
    pub fn execute_build(
        &self,
        store: &Store,
        build: &BuildAction<'_>,
        packed: &PackedEntries,
        stop: &AtomicBool,
    ) -> Result<Executed, RemoteError> {
        let action_digest = self.upload_action(store, build, packed)?;
        let response = match self.execute(&action_digest, stop) {
            // The CAS dropped an input uploaded earlier in this run: upload everything again.
            Err(
                RemoteError::Call {
                    code: tonic::Code::FailedPrecondition,
                    ..
                }
                | RemoteError::Action {
                    code: tonic::Code::FailedPrecondition,
                    ..
                },
            ) => {
                packed.clear();
                let action_digest = self.upload_action(store, build, packed)?;
                self.execute(&action_digest, stop)?
            }
            other => other?,
        };
        let Some(response) = response else {
            return Ok(Executed::Cancelled);
        };
        if let Some(status) = response.status.as_ref().filter(|s| s.code != 0) {
            return Err(RemoteError::Action {
                address: self.address.to_string(),
                code: tonic::Code::from(status.code),
                message: status.message.clone(),
            });
        }
        let result = response.result.unwrap_or_default();
        let worker = result
            .execution_metadata
            .as_ref()
            .map(|m| m.worker.clone())
            .unwrap_or_default();
        if result.exit_code == 0 {
            return Ok(Executed::Built { worker });
        }
        let log = self.output_text(&result.stdout_raw, result.stdout_digest.as_ref())?;
        let reason = String::from_utf8_lossy(
            &self.output_text(&result.stderr_raw, result.stderr_digest.as_ref())?,
        )
        .trim()
        .to_string();
        Ok(Executed::Failed {
            worker,
            reason: if reason.is_empty() {
                format!("the action exited with status {}", result.exit_code)
            } else {
                reason
            },
            log,
        })
    }

    /// An action result's stdout or stderr, inline or from the CAS.
    fn output_text(&self, raw: &[u8], digest: Option<&re::Digest>) -> Result<Vec<u8>, RemoteError> {
        match digest {
            Some(digest) if raw.is_empty() && digest.size_bytes > 0 => self.read_blob(digest),
            _ => Ok(raw.to_vec()),
        }
    }

    /// Uploads the request, the input closure, the command and the action; returns the
    /// action's digest.
    fn upload_action(
        &self,
        store: &Store,
        build: &BuildAction<'_>,
        packed: &PackedEntries,
    ) -> Result<re::Digest, RemoteError> {
        let mut upload = Upload::default();
        let mut root = re::Directory::default();
        let mut entries = Vec::new();
        for entry in build.closure {
            let directories = match packed.get(entry) {
                Some(directories) => directories,
                None => {
                    let (directory, children, _) = pack_entry(&mut upload, store, entry, None)?;
                    let directories = PackedEntries::directories(&directory, &children);
                    entries.push((entry.clone(), directories.clone()));
                    directories
                }
            };
            let mut digest = None;
            for directory in directories.iter() {
                let added = upload.add_message(directory);
                digest.get_or_insert(added);
            }
            let digest = digest.expect("an entry has its own directory");
            root.add(entry.to_string(), cas::Packed::Directory(digest));
        }
        // The request is the root's only file.
        let request = super::wire::encode(build.job);
        root.files.push(re::FileNode {
            name: REQUEST_FILE.to_string(),
            digest: Some(upload.add_blob(request)),
            is_executable: false,
            node_properties: None,
        });
        let command = re::Command {
            arguments: BUILD_ARGS.iter().map(ToString::to_string).collect(),
            output_paths: (build.job.outputs.values())
                .map(|o| o.entry.to_string())
                .collect(),
            ..Default::default()
        };
        let action = re::Action {
            command_digest: Some(upload.add_message(&command)),
            input_root_digest: Some(upload.add_message(&root)),
            timeout: build.job.limits.timeout.map(|t| {
                bazel_remote_apis::google::protobuf::Duration {
                    seconds: t.as_secs() as i64,
                    nanos: t.subsec_nanos() as i32,
                }
            }),
            platform: build.job.request.host.as_ref().map(|host| re::Platform {
                properties: vec![re::platform::Property {
                    name: HOST_PROPERTY.to_string(),
                    value: host.to_string(),
                }],
            }),
            ..Default::default()
        };
        let action_digest = upload.add_message(&action);
        self.upload(upload)?;
        packed.insert(entries);
        Ok(action_digest)
    }

    /// Runs an action and waits for its response; `None` if `stop` was set first (the
    /// operation is then cancelled).
    fn execute(
        &self,
        action_digest: &re::Digest,
        stop: &AtomicBool,
    ) -> Result<Option<re::ExecuteResponse>, RemoteError> {
        let mut client = re::execution_client::ExecutionClient::new(self.channel())
            .max_decoding_message_size(64 << 20);
        let request = re::ExecuteRequest {
            instance_name: self.address.instance().to_string(),
            skip_cache_lookup: false,
            action_digest: Some(action_digest.clone()),
            ..Default::default()
        };
        let done = self.block_on(async {
            let mut stream = client.execute(request).await?.into_inner();
            let mut name = String::new();
            loop {
                match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                    Err(_) if stop.load(Ordering::Relaxed) => {
                        if !name.is_empty() {
                            let mut operations =
                                longrunning::operations_client::OperationsClient::new(
                                    self.channel(),
                                );
                            let cancel = longrunning::CancelOperationRequest { name };
                            let _ = operations.cancel_operation(cancel).await;
                        }
                        return Ok(None);
                    }
                    Err(_) => {}
                    Ok(Ok(Some(operation))) if operation.done => return Ok(Some(operation)),
                    Ok(Ok(Some(operation))) => name = operation.name,
                    // The server may close the stream before the end; ask to wait again.
                    Ok(Ok(None)) => {
                        let again = re::WaitExecutionRequest { name: name.clone() };
                        stream = client.wait_execution(again).await?.into_inner();
                    }
                    Ok(Err(status)) => return Err(status),
                }
            }
        });
        let operation = match done.map_err(self.failed("Execute"))? {
            Some(operation) => operation,
            None => return Ok(None),
        };
        match operation.result {
            Some(operation::Result::Response(any)) => re::ExecuteResponse::decode(&any.value[..])
                .map(Some)
                .map_err(|e| RemoteError::Malformed {
                    what: format!("execute response of {}", operation.name),
                    reason: e.to_string(),
                }),
            Some(operation::Result::Error(status)) => Err(RemoteError::Action {
                address: self.address.to_string(),
                code: tonic::Code::from(status.code),
                message: status.message,
            }),
            None => Err(RemoteError::Malformed {
                what: format!("operation {}", operation.name),
                reason: "it is done but has no result".to_string(),
            }),
        }
    }
}
