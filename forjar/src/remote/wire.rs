//! The wire form of a build request, for remote execution.
//!
//! A client sends the derivation's [`BuildRequest`], its key, its limits and where it is
//! defined as one JSON document in the action's input root. The request is written in its own
//! serde form, and the worker reads it back through the same validating constructors a local
//! plan uses, recomputes the key, and refuses a request whose key it does not reproduce (a
//! forjar of another key format, or a damaged document), so that it never builds one thing
//! under another's name.

use serde::{Deserialize, Serialize};

use crate::exec::BuildJob;
use crate::hash::{self, Key};
use crate::map::SortedMap;
use crate::name::{Limits, OutputName};
use crate::plan::PlannedOutput;
use crate::request::BuildRequest;
use crate::store::EntryName;

/// The version of the document; a worker refuses any other.
pub const FORMAT: &str = "forjar build request v2";

/// Why a received request cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The document is not a valid request of this format: malformed, or a value breaks a rule
    /// a local request obeys (the message names it).
    #[error("the build request is malformed or invalid: {0}")]
    Malformed(String),
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

/// The document: the format first, so that a worker can name a format it does not read.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document<R> {
    format: String,
    key: Key,
    location: Option<String>,
    limits: Limits,
    request: R,
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
    pub fn outputs(&self) -> SortedMap<OutputName, PlannedOutput> {
        self.request
            .outputs
            .iter()
            .map(|o| {
                let key = hash::output_key(&self.key, o);
                let entry = EntryName::new(&key, &self.request.name, Some(o));
                (o.clone(), PlannedOutput { key, entry })
            })
            .collect()
    }

    /// The job that builds the request.
    pub fn job<'a>(&'a self, outputs: &'a SortedMap<OutputName, PlannedOutput>) -> BuildJob<'a> {
        BuildJob {
            request: &self.request,
            key: &self.key,
            outputs,
            limits: &self.limits,
            location: self.location.as_deref(),
        }
    }
}

/// The document of `job`.
pub fn encode(job: &BuildJob<'_>) -> Vec<u8> {
    let document = Document {
        format: FORMAT.to_string(),
        key: *job.key,
        location: job.location.map(str::to_string),
        limits: job.limits.clone(),
        request: job.request,
    };
    serde_json::to_vec(&document).expect("a request serialises to JSON")
}

fn other_format(format: &str) -> WireError {
    WireError::Malformed(format!(
        "its format is `{format}`; this worker reads `{FORMAT}`"
    ))
}

/// Reads a request back, validates every value, and checks that it hashes to its key.
pub fn decode(document: &[u8]) -> Result<Received, WireError> {
    let document: Document<BuildRequest> = serde_json::from_slice(document).map_err(|e| {
        // A document of another format fails on its fields; say which format it is instead.
        #[derive(Deserialize)]
        struct Format {
            format: String,
        }
        match serde_json::from_slice::<Format>(document) {
            Ok(Format { format }) if format != FORMAT => other_format(&format),
            _ => WireError::Malformed(e.to_string()),
        }
    })?;
    if document.format != FORMAT {
        return Err(other_format(&document.format));
    }
    let got = document.request.key();
    if got != document.key {
        return Err(WireError::KeyMismatch {
            name: document.request.name.to_string(),
            sent: document.key,
            got,
        });
    }
    Ok(Received {
        request: document.request,
        key: got,
        limits: document.limits,
        location: document.location,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::name::{Name, StoreDir};
    use crate::request::{
        AbsPath, Arg, CleanRelPath, Constraints, EnvKey, EnvValue, InputName, RequestParts,
        ResolvedInput, SandboxLevel, System,
    };

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
            outputs: &SortedMap::new(),
            limits,
            location,
        })
    }

    fn request() -> BuildRequest {
        let key = EnvKey::new("BYTES").unwrap();
        let mut env = SortedMap::new();
        env.insert(key.clone(), EnvValue::new(&key, vec![0xff, b'a']).unwrap());
        let mut files = SortedMap::new();
        files.insert(
            CleanRelPath::new("file", "etc/x.json").unwrap(),
            b"{}".to_vec(),
        );
        let src: Key = "22".repeat(32).parse().unwrap();
        let mut inputs = SortedMap::new();
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
            scratch_paths: Default::default(),
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
            store_dir: StoreDir::new("/var/lib/forjar/store").unwrap(),
            host: None,
            toolchain: None,
            input_lists: Default::default(),
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
        let text = encoded(&request, &key, &limits, Some("src/main.rs:3"));
        // Unset, the process limit is not on the wire: a worker of an earlier version, whose
        // limits have no such field, reads the document as before.
        assert!(!String::from_utf8_lossy(&text).contains("max_processes"));
        let received = decode(&text).unwrap();
        assert_eq!(received.key, key);
        assert_eq!(received.request.args, request.args);
        assert_eq!(received.request.env, request.env);
        assert_eq!(received.request.files, request.files);
        assert_eq!(received.limits.timeout, limits.timeout);
        assert_eq!(received.limits.cpus, Some(2));
        assert_eq!(received.location.as_deref(), Some("src/main.rs:3"));
        let limits = Limits {
            max_processes: Some(64),
            ..limits
        };
        let received = decode(&encoded(&request, &key, &limits, None)).unwrap();
        assert_eq!(received.limits, limits);
        let outputs = received.outputs();
        assert_eq!(outputs.len(), 2);
        assert!(
            outputs[&OutputName::new("dev").unwrap()]
                .entry
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

    #[test]
    fn bytes_that_are_not_utf8_cross_the_wire_intact() {
        let request = request();
        let key = request.key();
        let text = String::from_utf8(encoded(&request, &key, &Limits::default(), None)).unwrap();
        assert!(text.contains(r#"{"hex":"2dfe"}"#), "{text}");
        let received = decode(text.as_bytes()).unwrap();
        assert_eq!(received.request.args[1].as_bytes(), [b'-', 0xfe]);
    }

    #[test]
    fn a_nul_in_any_path_or_value_is_refused_with_its_field() {
        let request = request();
        let key = request.key();
        let text = String::from_utf8(encoded(&request, &key, &Limits::default(), None)).unwrap();
        for (field, from, to) in [
            (
                "store directory",
                "/var/lib/forjar/store",
                r"/var/lib/forjar\u0000store",
            ),
            ("path", "/usr/share", r"/usr/\u0000share"),
            ("path", "etc/x.json", r"etc/x\u0000.json"),
            (
                "env value",
                r#""BYTES":{"hex":"ff61"}"#,
                r#""BYTES":{"hex":"ff00"}"#,
            ),
            ("builder argument", "/bin/sh", r"/bin\u0000/sh"),
        ] {
            let bad = text.replace(from, to);
            assert_ne!(bad, text, "{from}");
            let error = decode(bad.as_bytes()).unwrap_err().to_string();
            assert!(
                error.contains(&format!("invalid {field}")),
                "{field}: {error}"
            );
        }
    }
}
