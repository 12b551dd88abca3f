//! Beyond one machine: the Bazel Remote Execution API v2 (REAPI), served by an existing engine
//! such as BuildGrid, as a remote cache of store entries and a remote executor of builds.
//!
//! forjar is synchronous; [`Remote`] owns a small tokio runtime and blocks on each call, so the
//! scheduler's build threads use it like any other blocking resource.
//!
//! - `cas`: blobs, directories and trees in the ContentAddressableStorage, every downloaded
//!   blob checked against its SHA-256 digest.
//! - [`cache`]: store entries in the ActionCache, keyed by an action derived from the entry's
//!   key alone, so that a fresh store can look an entry up before it has any of its inputs.
//! - `execution`: a derivation's build sent as an `Action` to the remote executor, in the
//!   wire form of `wire`.
//! - [`executor`]: the remote cache and remote execution as executors of
//!   [`crate::exec::Executor`], composed around the local one.
//! - `worker`: `forjar worker`, a bot of BuildGrid's Bots API that runs actions in forjar's
//!   sandbox; `bots` is that API's client, generated from `proto/`.

mod bots;
pub mod cache;
mod cas;
mod execution;
pub mod executor;
mod wire;
pub(crate) mod worker;

pub use cas::digest_file;

use std::fmt;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use tonic::transport::{Channel, Endpoint};

use crate::store::StoreError;

/// Where the remote is: `grpc://HOST:PORT`, optionally followed by `/INSTANCE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    host_port: String,
    instance: String,
}

impl Address {
    /// Parses `grpc://HOST:PORT[/INSTANCE]`.
    pub fn parse(text: &str) -> Result<Self, RemoteError> {
        let bad = |why: &str| RemoteError::Address {
            address: text.to_string(),
            reason: why.to_string(),
        };
        let rest = text
            .strip_prefix("grpc://")
            .ok_or_else(|| bad("it does not start with grpc://"))?;
        let (host_port, instance) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = host_port
            .rsplit_once(':')
            .ok_or_else(|| bad("it has no port"))?;
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        port.parse::<u16>()
            .map_err(|_| bad(&format!("`{port}` is not a port number")))?;
        Ok(Address {
            host_port: host_port.to_string(),
            instance: instance.trim_end_matches('/').to_string(),
        })
    }

    /// The REAPI instance name (empty for the default instance).
    pub fn instance(&self) -> &str {
        &self.instance
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grpc://{}", self.host_port)?;
        if !self.instance.is_empty() {
            write!(f, "/{}", self.instance)?;
        }
        Ok(())
    }
}

/// Why a remote operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The address is malformed.
    #[error(
        "`{address}` is not a remote address: {reason}; expected grpc://HOST:PORT, optionally followed by /INSTANCE"
    )]
    Address {
        /// The text given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing answers at the address.
    #[error(
        "cannot reach the remote at {address}: {reason}; is it running? (remote/stack start runs one on 127.0.0.1)"
    )]
    Unreachable {
        /// The remote.
        address: String,
        /// What the connection said.
        reason: String,
    },
    /// A call failed.
    #[error("{call} to the remote at {address} failed: {code:?}: {message}")]
    Call {
        /// The remote.
        address: String,
        /// The RPC.
        call: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// A blob's content does not have its digest.
    #[error("blob {digest} from the remote is damaged: its content hashes to {got}")]
    Corrupt {
        /// The digest asked for.
        digest: String,
        /// The SHA-256 of what came.
        got: String,
    },
    /// The remote holds something forjar cannot use.
    #[error("the remote's {what} is unusable: {reason}")]
    Malformed {
        /// What was read.
        what: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The remote ran an action and reports that it failed for a reason other than its exit
    /// status (a worker refused it, or could not run it).
    #[error("the remote at {address} could not run the action: {code:?}: {message}")]
    Action {
        /// The remote.
        address: String,
        /// The status code the remote gave.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The local side failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RemoteError {
    /// Whether the remote itself stopped answering (as opposed to refusing one request), so
    /// that asking it again during this apply is pointless. `Cancelled` is one: forjar never
    /// cancels a call it made, so a call comes back cancelled when its connection went away
    /// under it (a server killed with calls in flight fails one `Unknown: transport error`
    /// and another `Cancelled: operation was canceled`).
    pub fn is_outage(&self) -> bool {
        match self {
            RemoteError::Unreachable { .. } => true,
            RemoteError::Call { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
            ),
            _ => false,
        }
    }
}

/// A connection to a REAPI server.
pub struct Remote {
    address: Address,
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    /// What the server said it offers when connected to.
    capabilities: re::ServerCapabilities,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// How long a connection attempt may take before the remote counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take. Blob transfers are chunked, so this bounds a stalled server, not
/// a large transfer's total.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

impl Remote {
    /// Connects to `address` and asks for its capabilities, so that a server that is down is
    /// reported here, once, rather than by the first build that needs it.
    pub fn connect(address: &Address) -> Result<Remote, RemoteError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("forjar-remote")
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Unreachable {
                address: address.to_string(),
                reason: format!("cannot start the network runtime: {e}"),
            })?;
        let endpoint = Endpoint::from_shared(format!("http://{}", address.host_port))
            .map_err(|e| RemoteError::Address {
                address: address.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true);
        let channel =
            runtime
                .block_on(endpoint.connect())
                .map_err(|e| RemoteError::Unreachable {
                    address: address.to_string(),
                    reason: error_chain(&e),
                })?;
        let mut remote = Remote {
            address: address.clone(),
            runtime,
            channel,
            capabilities: re::ServerCapabilities::default(),
        };
        remote.capabilities = remote.ask_capabilities()?;
        Ok(remote)
    }

    /// The address connected to.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Runs a future on the runtime, from a thread outside it.
    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Turns a failed call's status into an error naming the call.
    pub(crate) fn failed(&self, call: &'static str) -> impl Fn(tonic::Status) -> RemoteError + '_ {
        move |status| RemoteError::Call {
            address: self.address.to_string(),
            call,
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    /// Whether the remote runs actions (not only caches them).
    pub fn executes(&self) -> bool {
        self.capabilities
            .execution_capabilities
            .as_ref()
            .is_some_and(|e| e.exec_enabled)
    }

    fn ask_capabilities(&self) -> Result<re::ServerCapabilities, RemoteError> {
        let mut client = re::capabilities_client::CapabilitiesClient::new(self.channel());
        let request = re::GetCapabilitiesRequest {
            instance_name: self.address.instance.clone(),
        };
        self.block_on(client.get_capabilities(request))
            .map(tonic::Response::into_inner)
            .map_err(|status| match status.code() {
                tonic::Code::Unavailable => RemoteError::Unreachable {
                    address: self.address.to_string(),
                    reason: status.message().to_string(),
                },
                _ => self.failed("GetCapabilities")(status),
            })
    }
}

/// An error and its causes, on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_and_without_an_instance() {
        let plain = Address::parse("grpc://127.0.0.1:50051").unwrap();
        assert_eq!(plain.instance(), "");
        assert_eq!(plain.to_string(), "grpc://127.0.0.1:50051");
        let named = Address::parse("grpc://cache.example:8980/main/").unwrap();
        assert_eq!(named.instance(), "main");
        assert_eq!(named.to_string(), "grpc://cache.example:8980/main");
    }

    #[test]
    fn a_call_the_connection_failed_is_an_outage_and_a_refusal_is_not() {
        let call = |code| RemoteError::Call {
            call: "FindMissingBlobs",
            address: "grpc://127.0.0.1:1".into(),
            code,
            message: String::new(),
        };
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Unknown,
            tonic::Code::Cancelled,
        ] {
            assert!(call(code).is_outage(), "{code:?}");
        }
        for code in [
            tonic::Code::NotFound,
            tonic::Code::InvalidArgument,
            tonic::Code::PermissionDenied,
            tonic::Code::ResourceExhausted,
            tonic::Code::FailedPrecondition,
            tonic::Code::Internal,
        ] {
            assert!(!call(code).is_outage(), "{code:?}");
        }
    }

    #[test]
    fn a_malformed_address_is_refused_naming_it() {
        for (text, why) in [
            ("http://h:1", "does not start with grpc://"),
            ("grpc://h", "has no port"),
            ("grpc://:1", "has no host"),
            ("grpc://h:port", "`port` is not a port number"),
        ] {
            let error = Address::parse(text).unwrap_err().to_string();
            assert!(error.contains(text) && error.contains(why), "{error}");
        }
    }
}
