//! The wire form of a build request, for remote execution.
//!
//! A client sends the derivation's [`BuildRequest`], its key and its limits as one JSON
//! document in the action's input root. The worker reads it back through the same validating
//! constructors a local plan uses, recomputes the key, and refuses a request whose key it does
//! not reproduce (a forjar of another key format, or a damaged document), so that it never
//! builds one thing under another's name.
//!
//! Byte strings (arguments, environment values, files) are written as JSON strings when they
//! are UTF-8 and as `{"hex": ...}` otherwise, so nothing is lost on the way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exec::BuildJob;
use crate::hash::{self, HostFingerprint, Key, TreeDigest};
use crate::name::{InvalidValue, Limits, Name, OutputName};
use crate::request::{
    AbsPath, Arg, BuildRequest, CleanRelPath, Constraints, EnvKey, EnvValue, InputName,
    RequestParts, ResolvedInput, SandboxLevel, System,
};
use crate::store::EntryName;

/// The version of the document; a worker refuses any other.
pub const FORMAT: &str = "forjar build request v1";

/// Why a received request cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The document is not a request of this format.
    #[error("the build request is malformed: {0}")]
    Malformed(String),
    /// A value fails the rules a local request obeys.
    #[error("the build request is invalid: {0}")]
    Invalid(#[from] crate::request::RequestError),
    /// The request does not hash to the key it was sent under.
    #[error(
        "the build request for `{name}` hashes to {got} here, but was sent as {sent}; the client \
         and the worker compute keys differently (are they the same forjar version?)"
    )]
    KeyMismatch {
        /// The derivation.
        name: String,
        /// The key the client sent.
        sent: Key,
        /// The key computed here.
        got: Key,
    },
}

impl From<InvalidValue> for WireError {
    fn from(e: InvalidValue) -> Self {
        WireError::Invalid(e.into())
    }
}

/// Bytes: a string when they are UTF-8, hex otherwise.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Bytes {
    Text(String),
    Raw { hex: String },
}

impl Bytes {
    fn of(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Bytes::Text(text.to_string()),
            Err(_) => Bytes::Raw {
                hex: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            },
        }
    }

    fn into_vec(self) -> Result<Vec<u8>, WireError> {
        match self {
            Bytes::Text(text) => Ok(text.into_bytes()),
            Bytes::Raw { hex } => {
                let digits = hex.as_bytes();
                if digits.len() % 2 != 0 {
                    return Err(WireError::Malformed(format!("`{hex}` is not hex")));
                }
                digits
                    .chunks(2)
                    .map(|pair| {
                        std::str::from_utf8(pair)
                            .ok()
                            .and_then(|p| u8::from_str_radix(p, 16).ok())
                            .ok_or_else(|| WireError::Malformed(format!("`{hex}` is not hex")))
                    })
                    .collect()
            }
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireLimits {
    timeout_ms: Option<u64>,
    max_silent_ms: Option<u64>,
    memory: Option<u64>,
    cpus: Option<u32>,
    max_output_size: Option<u64>,
    max_log_size: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: String,
    key: Key,
    location: Option<String>,
    name: String,
    system: String,
    args: Vec<Bytes>,
    working_dir: String,
    scratch_paths: Vec<String>,
    outputs: Vec<String>,
    env: BTreeMap<String, Bytes>,
    inputs: BTreeMap<String, ResolvedInput>,
    files: BTreeMap<String, Bytes>,
    network: bool,
    provide_bin_sh: bool,
    ro_paths: Vec<String>,
    min_memory: Option<u64>,
    sandbox: String,
    fixed_output: Option<TreeDigest>,
    store_dir: Bytes,
    host: Option<String>,
    limits: WireLimits,
}

/// A request as a worker receives it: validated, and keyed as the client keyed it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request.
    pub request: BuildRequest,
    /// Its key, recomputed here and equal to the one sent.
    pub key: Key,
    /// Its limits.
    pub limits: Limits,
    /// Where the client's program defines the derivation.
    pub location: Option<String>,
}

impl Received {
    /// Each output with its key and store entry, as a plan gives them.
    pub fn outputs(&self) -> BTreeMap<OutputName, (Key, EntryName)> {
        self.request
            .outputs()
            .iter()
            .map(|o| {
                let key = hash::output_key(&self.key, o);
                (
                    o.clone(),
                    (key, EntryName::new(&key, self.request.name(), Some(o))),
                )
            })
            .collect()
    }
}

fn millis(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes a request, its key, limits and location as the JSON document a worker reads.
pub fn encode(job: &BuildJob<'_>) -> Vec<u8> {
    let (request, limits) = (job.request, job.limits);
    let wire = Wire {
        format: FORMAT.to_string(),
        key: *job.key,
        location: job.location.map(str::to_string),
        name: request.name().to_string(),
        system: request.system().to_string(),
        args: request
            .args()
            .iter()
            .map(|a| Bytes::of(a.as_bytes()))
            .collect(),
        working_dir: request.working_dir().as_str().to_string(),
        scratch_paths: request
            .scratch_paths()
            .iter()
            .map(|p| p.as_str().to_string())
            .collect(),
        outputs: request.outputs().iter().map(|o| o.to_string()).collect(),
        env: request
            .env()
            .iter()
            .map(|(k, v)| (k.to_string(), Bytes::of(v.as_bytes())))
            .collect(),
        inputs: request
            .inputs()
            .iter()
            .map(|(n, i)| (n.to_string(), i.clone()))
            .collect(),
        files: request
            .files()
            .iter()
            .map(|(p, c)| (p.as_str().to_string(), Bytes::of(c)))
            .collect(),
        network: request.constraints().network,
        provide_bin_sh: request.constraints().provide_bin_sh,
        ro_paths: request
            .constraints()
            .ro_paths
            .iter()
            .map(|p| p.as_str().to_string())
            .collect(),
        min_memory: request.constraints().min_memory,
        sandbox: request.sandbox().as_str().to_string(),
        fixed_output: request.fixed_output().copied(),
        store_dir: Bytes::of(request.store_dir().as_os_str().as_encoded_bytes()),
        host: request.host().map(ToString::to_string),
        limits: WireLimits {
            timeout_ms: millis(limits.timeout),
            max_silent_ms: millis(limits.max_silent),
            memory: limits.memory,
            cpus: limits.cpus,
            max_output_size: limits.max_output_size,
            max_log_size: limits.max_log_size,
        },
    };
    serde_json::to_vec(&wire).expect("a request serialises to JSON")
}

/// Reads a request back, validates every value, and checks that it hashes to its key.
pub fn decode(document: &[u8]) -> Result<Received, WireError> {
    let wire: Wire =
        serde_json::from_slice(document).map_err(|e| WireError::Malformed(e.to_string()))?;
    if wire.format != FORMAT {
        return Err(WireError::Malformed(format!(
            "its format is `{}`; this worker reads `{FORMAT}`",
            wire.format
        )));
    }
    let mut env = BTreeMap::new();
    for (key, value) in wire.env {
        let key = EnvKey::new(key)?;
        let value = EnvValue::new(&key, value.into_vec()?)?;
        env.insert(key, value);
    }
    let mut inputs = BTreeMap::new();
    for (name, input) in wire.inputs {
        inputs.insert(InputName::new(name)?, input);
    }
    let mut files = BTreeMap::new();
    for (path, content) in wire.files {
        files.insert(CleanRelPath::new("file", path)?, content.into_vec()?);
    }
    let args = wire
        .args
        .into_iter()
        .enumerate()
        .map(|(i, a)| Ok(Arg::new(i, a.into_vec()?)?))
        .collect::<Result<Vec<_>, WireError>>()?;
    let store_dir = {
        use std::os::unix::ffi::OsStringExt;
        PathBuf::from(std::ffi::OsString::from_vec(wire.store_dir.into_vec()?))
    };
    let host = wire
        .host
        .map(|h| h.parse::<HostFingerprint>())
        .transpose()
        .map_err(WireError::Malformed)?;
    let request = BuildRequest::new(RequestParts {
        name: Name::new(wire.name)?,
        system: System::new(wire.system)?,
        args,
        working_dir: CleanRelPath::new("working directory", wire.working_dir)?,
        scratch_paths: wire
            .scratch_paths
            .into_iter()
            .map(|p| CleanRelPath::new("scratch path", p))
            .collect::<Result<_, _>>()?,
        outputs: wire
            .outputs
            .into_iter()
            .map(OutputName::new)
            .collect::<Result<_, _>>()?,
        env,
        inputs,
        files,
        constraints: Constraints {
            network: wire.network,
            provide_bin_sh: wire.provide_bin_sh,
            ro_paths: wire
                .ro_paths
                .into_iter()
                .map(|p| AbsPath::new("ro path", p))
                .collect::<Result<_, _>>()?,
            min_memory: wire.min_memory,
        },
        sandbox: wire.sandbox.parse::<SandboxLevel>()?,
        fixed_output: wire.fixed_output,
        store_dir,
        host,
    })?;
    let got = request.key();
    if got != wire.key {
        return Err(WireError::KeyMismatch {
            name: request.name().to_string(),
            sent: wire.key,
            got,
        });
    }
    let limits = Limits {
        timeout: wire.limits.timeout_ms.map(Duration::from_millis),
        max_silent: wire.limits.max_silent_ms.map(Duration::from_millis),
        memory: wire.limits.memory,
        cpus: wire.limits.cpus,
        max_output_size: wire.limits.max_output_size,
        max_log_size: wire.limits.max_log_size,
    };
    Ok(Received {
        request,
        key: got,
        limits,
        location: wire.location,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The document of a job of `request`; the wire form leaves the planned outputs out.
    fn encoded(
        request: &BuildRequest,
        key: &Key,
        limits: &Limits,
        location: Option<&str>,
    ) -> Vec<u8> {
        encode(&BuildJob {
            request,
            key,
            outputs: &BTreeMap::new(),
            limits,
            location,
        })
    }

    fn request() -> BuildRequest {
        let key = EnvKey::new("BYTES").unwrap();
        let mut env = BTreeMap::new();
        env.insert(key.clone(), EnvValue::new(&key, vec![0xff, b'a']).unwrap());
        let mut files = BTreeMap::new();
        files.insert(
            CleanRelPath::new("file", "etc/x.json").unwrap(),
            b"{}".to_vec(),
        );
        let src: Key = "22".repeat(32).parse().unwrap();
        let mut inputs = BTreeMap::new();
        inputs.insert(
            InputName::new("dep").unwrap(),
            ResolvedInput::Output {
                entry: EntryName::new(&src, &Name::new("dep").unwrap(), None),
                key: src,
            },
        );
        BuildRequest::new(RequestParts {
            name: Name::new("hello").unwrap(),
            system: System::host(),
            args: vec![
                Arg::new(0, "/bin/sh").unwrap(),
                Arg::new(1, vec![b'-', 0xfe]).unwrap(),
            ],
            working_dir: CleanRelPath::new("working directory", "build").unwrap(),
            scratch_paths: BTreeSet::new(),
            outputs: [OutputName::out(), OutputName::new("dev").unwrap()].into(),
            env,
            inputs,
            files,
            constraints: Constraints {
                provide_bin_sh: true,
                ro_paths: [AbsPath::new("ro path", "/usr/share").unwrap()].into(),
                min_memory: Some(1 << 20),
                ..Default::default()
            },
            sandbox: SandboxLevel::Hermetic,
            fixed_output: None,
            store_dir: PathBuf::from("/var/lib/forjar/store"),
            host: None,
        })
        .unwrap()
    }

    #[test]
    fn a_request_survives_the_wire_with_its_key() {
        let request = request();
        let key = request.key();
        let limits = Limits {
            timeout: Some(Duration::from_millis(1500)),
            cpus: Some(2),
            ..Default::default()
        };
        let received = decode(&encoded(&request, &key, &limits, Some("src/main.rs:3"))).unwrap();
        assert_eq!(received.key, key);
        assert_eq!(received.request.args(), request.args());
        assert_eq!(received.request.env(), request.env());
        assert_eq!(received.request.files(), request.files());
        assert_eq!(received.limits.timeout, limits.timeout);
        assert_eq!(received.limits.cpus, Some(2));
        assert_eq!(received.location.as_deref(), Some("src/main.rs:3"));
        let outputs = received.outputs();
        assert_eq!(outputs.len(), 2);
        assert!(
            outputs[&OutputName::new("dev").unwrap()]
                .1
                .as_str()
                .ends_with("-hello-dev")
        );
    }

    #[test]
    fn a_request_that_does_not_hash_to_its_key_is_refused() {
        let request = request();
        let wrong: Key = "33".repeat(32).parse().unwrap();
        let error = decode(&encoded(&request, &wrong, &Limits::default(), None)).unwrap_err();
        assert!(matches!(error, WireError::KeyMismatch { .. }), "{error}");
        assert!(error.to_string().contains("same forjar version"), "{error}");
    }

    #[test]
    fn invalid_values_are_refused_by_the_local_rules() {
        let request = request();
        let key = request.key();
        let text = String::from_utf8(encoded(&request, &key, &Limits::default(), None)).unwrap();
        let bad = text.replace("\"name\":\"hello\"", "\"name\":\"he llo\"");
        assert_ne!(bad, text);
        let error = decode(bad.as_bytes()).unwrap_err();
        assert!(error.to_string().contains("`he llo`"), "{error}");
        let other = text.replace(FORMAT, "forjar build request v0");
        assert!(
            decode(other.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("v0")
        );
        assert!(decode(b"{").is_err());
    }
}
