//! The normalised, validated build request.
//!
//! After tvix-build's `BuildRequest`: everything a sandbox needs to run one build, with every
//! "sorted / unique / clean relative path" rule made a constructor invariant of a newtype, so
//! that an invalid request cannot exist. Each constructor's error names the field, the value
//! and what is wrong with it.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::LazyLock;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::hash::{DERIVATION_CONTEXT, Encoder, EntryName, HostFingerprint, Key, TreeDigest};
use crate::map::{SortedMap, SortedSet};
use crate::name::{InvalidValue, Name, OutputName, StoreDir, identifier, rules, string_newtype};

/// Errors of the cross-field rules of a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// One field's value is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
    /// Two things were given the same name.
    #[error("duplicate {field} `{value}`: each {field} may be given once")]
    Duplicate {
        /// What was duplicated.
        field: &'static str,
        /// The duplicated name.
        value: String,
    },
    /// Two different kinds of variable would get the same name in the build environment.
    #[error(
        "`{name}` is both {first} and {second}; inputs, outputs and env vars share the build \
         environment, so their names must differ"
    )]
    NameClash {
        /// The clashing name.
        name: String,
        /// The first kind ("an input", "an output", "an env var").
        first: &'static str,
        /// The second kind.
        second: &'static str,
    },
    /// The script expands a variable nothing sets, or does what differs on every run.
    #[error("{}", .0.join("\n"))]
    Script(Vec<String>),
    /// Network access was asked for on a derivation whose output is not fixed in advance.
    #[error(
        "derivation `{0}` asks for network access but declares no fixed-output digest; only a \
         fixed-output derivation may use the network, so that what it downloads is verified"
    )]
    NetworkWithoutFixedOutput(String),
    /// A fixed-output derivation declared more than the one output `out`.
    #[error("fixed-output derivation `{0}` must have exactly one output, `out`")]
    FixedOutputOutputs(String),
    /// A value for `#[forjar(file = ...)]` or `render` could not be written in its format.
    #[error("cannot render file `{path}` as {format}: {reason}")]
    Render {
        /// The file's path in the build directory.
        path: String,
        /// The format its extension names.
        format: &'static str,
        /// What the serializer said.
        reason: String,
    },
    /// A derivation has no builder.
    #[error("derivation `{0}` has no builder: give it a script or a builder argv")]
    NoBuilder(String),
}

string_newtype!(InputName, EnvKey, System);

/// The name under which an input is visible to the build (an environment variable holding its
/// store path).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InputName(CompactString);

impl InputName {
    /// Validates an input name: a shell identifier of at most 64 bytes, not a reserved variable.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidValue> {
        let name = name.into();
        identifier("input name", &name)?;
        Ok(InputName(name.into()))
    }
}

/// An environment variable name: non-empty, without `=` or NUL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvKey(CompactString);

impl EnvKey {
    /// Validates an environment variable name.
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidValue> {
        let key = key.into();
        rules::env_key(&key).map_err(|reason| InvalidValue::new("env key", &key, reason))?;
        Ok(EnvKey(key.into()))
    }
}

/// An environment variable value: arbitrary bytes without NUL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvValue(Vec<u8>);

impl EnvValue {
    /// Validates a value; `key` names the variable in the error.
    pub fn new(key: &EnvKey, value: impl Into<Vec<u8>>) -> Result<Self, InvalidValue> {
        Self::checked(Some(key), value.into())
    }

    fn checked(key: Option<&EnvKey>, value: Vec<u8>) -> Result<Self, InvalidValue> {
        if let Some(at) = value.iter().position(|&b| b == 0) {
            let of = key.map_or_else(
                || "an env value".to_string(),
                |k| format!("the value of `{k}`"),
            );
            return Err(InvalidValue::new(
                "env value",
                &value,
                format!("{of} contains a NUL byte at byte {at}, which no environment can hold"),
            ));
        }
        Ok(EnvValue(value))
    }

    /// The value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for EnvValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        bytes::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EnvValue::checked(None, bytes::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A relative path with no empty, `.` or `..` components, no leading or trailing `/`, and no NUL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CleanRelPath(String);

impl<'de> Deserialize<'de> for CleanRelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        CleanRelPath::new("path", String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl CleanRelPath {
    /// Validates a clean relative path; `field` names it in the error.
    pub fn new(field: &'static str, path: impl Into<String>) -> Result<Self, InvalidValue> {
        let path = path.into();
        rules::clean_rel_path(&path).map_err(|reason| InvalidValue::new(field, &path, reason))?;
        Ok(CleanRelPath(path))
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path as a `Path`.
    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }
}

/// An absolute, clean host path (for read-only host paths): starts with `/`, no empty, `.` or
/// `..` components, no NUL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct AbsPath(String);

impl<'de> Deserialize<'de> for AbsPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        AbsPath::new("path", String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl AbsPath {
    /// Validates an absolute clean path; `field` names it in the error.
    pub fn new(field: &'static str, path: impl Into<String>) -> Result<Self, InvalidValue> {
        let path = path.into();
        rules::abs_path(&path).map_err(|reason| InvalidValue::new(field, &path, reason))?;
        Ok(AbsPath(path))
    }

    /// The path as a `Path`.
    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A build platform, `<arch>-<os>`, one of [`crate::name::KNOWN_SYSTEMS`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct System(CompactString);

impl System {
    /// Validates a system name against [`crate::name::KNOWN_SYSTEMS`].
    pub fn new(system: impl Into<String>) -> Result<Self, InvalidValue> {
        let system = system.into();
        rules::system(&system).map_err(|reason| InvalidValue::new("system", &system, reason))?;
        Ok(System(system.into()))
    }

    /// The system this program runs on, e.g. `x86_64-linux`.
    pub fn host() -> Self {
        static HOST: LazyLock<System> = LazyLock::new(|| {
            let arch = match std::env::consts::ARCH {
                "x86" => "i686",
                "arm" => "armv7l",
                "powerpc64" => "powerpc64le",
                other => other,
            };
            System(compact_str::format_compact!("{arch}-linux"))
        });
        HOST.clone()
    }
}

/// One argument of the builder's argv: bytes without NUL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Arg(Cow<'static, [u8]>);

impl Arg {
    /// An argument of forjar's own (the script shell's), which holds no NUL byte; borrowed, not
    /// copied into each derivation.
    pub(crate) const fn fixed(arg: &'static str) -> Self {
        Arg(Cow::Borrowed(arg.as_bytes()))
    }

    /// Validates one argument; `index` names its position in the error.
    pub fn new(index: usize, arg: impl Into<Vec<u8>>) -> Result<Self, InvalidValue> {
        let arg = arg.into();
        if arg.contains(&0) {
            return Err(InvalidValue::new(
                "builder argument",
                &arg,
                format!("argument {index} contains a NUL byte, which no argv can hold"),
            ));
        }
        Ok(Arg(Cow::Owned(arg)))
    }

    /// The argument's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Arg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        bytes::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Arg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let arg = bytes::deserialize(d)?;
        if arg.contains(&0) {
            let error = InvalidValue::new(
                "builder argument",
                &arg,
                "an argument contains a NUL byte, which no argv can hold",
            );
            return Err(serde::de::Error::custom(error));
        }
        Ok(Arg(Cow::Owned(arg)))
    }
}

/// How much of the host a build sees.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxLevel {
    /// Only the declared inputs, and `/bin/sh` when asked for.
    #[default]
    Hermetic,
    /// Also the host's `/usr`, `/bin`, `/lib*`, `/sbin` read-only; impure, and keyed by a host
    /// fingerprint.
    HostTools,
}

impl SandboxLevel {
    /// The level's name as written in attributes and `meta.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxLevel::Hermetic => "hermetic",
            SandboxLevel::HostTools => "host-tools",
        }
    }
}

impl std::str::FromStr for SandboxLevel {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hermetic" => Ok(SandboxLevel::Hermetic),
            "host-tools" => Ok(SandboxLevel::HostTools),
            _ => Err(InvalidValue::new(
                "sandbox level",
                s,
                format!("the levels are {}", rules::SANDBOX_LEVELS.join(", ")),
            )),
        }
    }
}

impl fmt::Display for SandboxLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a build needs from its environment; all of it is part of the closure key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Network access (fixed-output derivations only).
    pub network: bool,
    /// Provide a working `/bin/sh` in the sandbox.
    pub provide_bin_sh: bool,
    /// Host paths bound read-only into the sandbox.
    pub ro_paths: BTreeSet<AbsPath>,
    /// The least memory, in bytes, a machine must have to run the build.
    pub min_memory: Option<u64>,
}

/// How a SHA-256 fixed-output digest covers the output, as Nix's `outputHashMode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum HashMode {
    /// The bytes of the one regular file the output is (`fetchurl`).
    #[default]
    Flat,
    /// The output's NAR serialisation: a file, a symlink or a whole tree (`fetchzip`).
    Recursive,
}

impl std::str::FromStr for HashMode {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "flat" => Ok(HashMode::Flat),
            "recursive" => Ok(HashMode::Recursive),
            _ => Err(InvalidValue::new(
                "fixed-output mode",
                s,
                "the modes are `flat` (the output is one file) and `recursive` (its NAR \
                 serialisation, as Nix's `outputHashMode`)",
            )),
        }
    }
}

/// What a fixed-output derivation's output must hash to: forjar's tree digest, or SHA-256 flat
/// or recursive as in Nix; shown in the form it was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FixedOutput {
    algorithm: rules::Algorithm,
    mode: HashMode,
    form: rules::DigestForm,
    digest: [u8; 32],
}

impl FixedOutput {
    /// The digest `text` (`blake3:<hex>`, `sha256:<hex>` or `sha256-<base64>`) under `mode`,
    /// which only a SHA-256 digest takes: a BLAKE3 tree digest covers any output.
    pub fn new(text: &str, mode: Option<HashMode>) -> Result<FixedOutput, InvalidValue> {
        let (algorithm, form, digest) = rules::fixed_digest(text)
            .map_err(|reason| InvalidValue::new("fixed-output digest", text, reason))?;
        if algorithm == rules::Algorithm::Blake3Tree && mode.is_some() {
            return Err(InvalidValue::new(
                "fixed-output digest",
                text,
                "a BLAKE3 tree digest covers a file or a whole tree alike; a mode goes with a \
                 `sha256` digest only",
            ));
        }
        Ok(FixedOutput {
            algorithm,
            mode: mode.unwrap_or_default(),
            form,
            digest,
        })
    }

    /// A BLAKE3 tree digest.
    pub fn tree(digest: TreeDigest) -> FixedOutput {
        FixedOutput {
            algorithm: rules::Algorithm::Blake3Tree,
            mode: HashMode::Recursive,
            form: rules::DigestForm::Hex,
            digest: *digest.as_bytes(),
        }
    }

    /// The tree digest, if that is what it is.
    pub fn as_tree(&self) -> Option<TreeDigest> {
        (self.algorithm == rules::Algorithm::Blake3Tree)
            .then(|| TreeDigest::from_bytes(self.digest))
    }

    /// The SHA-256 digest and its mode, if that is what it is.
    pub fn as_sha256(&self) -> Option<(HashMode, [u8; 32])> {
        (self.algorithm == rules::Algorithm::Sha256).then_some((self.mode, self.digest))
    }

    /// `digest`, of the same algorithm, written as this one is.
    pub fn show(&self, digest: &[u8; 32]) -> String {
        rules::format_digest(self.algorithm, self.form, digest)
    }

    /// The bytes the key is made of: the digest alone for a tree digest (as keys have always
    /// been), else the algorithm and mode too.
    fn key_bytes(&self) -> Vec<u8> {
        match self.as_sha256() {
            None => self.digest.to_vec(),
            Some((mode, digest)) => {
                let mut bytes = match mode {
                    HashMode::Flat => b"sha256:flat:".to_vec(),
                    HashMode::Recursive => b"sha256:recursive:".to_vec(),
                };
                bytes.extend_from_slice(&digest);
                bytes
            }
        }
    }
}

impl fmt::Display for FixedOutput {
    /// As written, with `r:` before a recursive SHA-256 digest (Nix's notation).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self
            .as_sha256()
            .is_some_and(|(mode, _)| mode == HashMode::Recursive)
        {
            f.write_str("r:")?;
        }
        f.write_str(&self.show(&self.digest))
    }
}

impl std::str::FromStr for FixedOutput {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s.strip_prefix("r:") {
            Some(rest) => FixedOutput::new(rest, Some(HashMode::Recursive)),
            None if s.starts_with("sha256") => FixedOutput::new(s, Some(HashMode::Flat)),
            None => FixedOutput::new(s, None),
        }
    }
}

impl Serialize for FixedOutput {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FixedOutput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One resolved input of a request: what sits at its store path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ResolvedInput {
    /// An output of another derivation, addressed by its key.
    Output {
        /// The store entry.
        entry: EntryName,
        /// The output's full key.
        key: Key,
    },
    /// A source imported by content.
    Source {
        /// The store entry.
        entry: EntryName,
        /// The tree digest of the source's content.
        digest: TreeDigest,
    },
}

/// The toolchain of a request: a store entry whose `usr` is the build's `/usr`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolchainInput {
    /// The store entry.
    pub entry: EntryName,
    /// The tree digest of its content.
    pub digest: TreeDigest,
}

impl ResolvedInput {
    /// The store entry this input is bound from.
    pub fn entry(&self) -> &EntryName {
        match self {
            ResolvedInput::Output { entry, .. } | ResolvedInput::Source { entry, .. } => entry,
        }
    }
}

/// The fields of a request, each valid on its own; [`BuildRequest::new`] checks the rules
/// between them. Its serde form is the request's on the wire and in `show`: every field is read
/// back through its type's validating constructor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestParts {
    /// The derivation's name.
    pub name: Name,
    /// The platform to build on.
    pub system: System,
    /// The builder's argv; the first element is the program.
    pub args: Vec<Arg>,
    /// The working directory, relative to the build top.
    pub working_dir: CleanRelPath,
    /// Extra scratch directories, relative to the build top.
    pub scratch_paths: SortedSet<CleanRelPath>,
    /// The outputs the builder must produce.
    pub outputs: SortedSet<OutputName>,
    /// The build environment, besides what the sandbox sets.
    pub env: SortedMap<EnvKey, EnvValue>,
    /// The inputs, resolved to store entries.
    pub inputs: SortedMap<InputName, ResolvedInput>,
    /// Additional files written into the build directory before the build.
    #[serde(with = "bytes::map")]
    pub files: SortedMap<CleanRelPath, Vec<u8>>,
    /// What the build needs of the machine.
    pub constraints: Constraints,
    /// How much of the host the build sees.
    pub sandbox: SandboxLevel,
    /// The declared digest of a fixed-output derivation's output.
    pub fixed_output: Option<FixedOutput>,
    /// The store directory the outputs are built for (it appears in their paths).
    pub store_dir: StoreDir,
    /// The host fingerprint (set exactly for the `host-tools` level).
    pub host: Option<HostFingerprint>,
    /// The toolchain the build sees as its `/usr` (hermetic builds only).
    /// Boxed: most requests have none, and a plan holds a request per derivation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toolchain: Option<Box<ToolchainInput>>,
    /// Inputs given as one list (a `Vec` or a map of them): the variable that holds their
    /// paths, space-separated, in this order.
    #[serde(default, skip_serializing_if = "SortedMap::is_empty")]
    pub input_lists: SortedMap<InputName, Vec<InputName>>,
}

impl RequestParts {
    /// The store entries the build is given: its inputs' and its toolchain's.
    pub fn input_entries(&self) -> impl Iterator<Item = &EntryName> {
        self.inputs
            .values()
            .map(ResolvedInput::entry)
            .chain(self.toolchain.as_ref().map(|t| &t.entry))
    }

    /// Its fields by reference.
    pub(crate) fn by_ref(&self) -> PartsRef<'_> {
        PartsRef {
            name: &self.name,
            system: &self.system,
            args: &self.args,
            working_dir: &self.working_dir,
            scratch_paths: &self.scratch_paths,
            outputs: &self.outputs,
            env: &self.env,
            inputs: &self.inputs,
            files: &self.files,
            constraints: &self.constraints,
            sandbox: self.sandbox,
            fixed_output: self.fixed_output.as_ref(),
            store_dir: &self.store_dir,
            host: self.host.as_ref(),
            toolchain: self.toolchain.as_deref(),
            input_lists: &self.input_lists,
        }
    }
}

/// The fields of a request by reference: what its rules are checked on and its key computed
/// from, whether a [`RequestParts`] holds them or a plan borrows them from the derivation it
/// keys (which then makes no request of a derivation it finds built).
#[derive(Clone, Copy)]
pub(crate) struct PartsRef<'a> {
    pub(crate) name: &'a Name,
    pub(crate) system: &'a System,
    pub(crate) args: &'a [Arg],
    pub(crate) working_dir: &'a CleanRelPath,
    pub(crate) scratch_paths: &'a SortedSet<CleanRelPath>,
    pub(crate) outputs: &'a SortedSet<OutputName>,
    pub(crate) env: &'a SortedMap<EnvKey, EnvValue>,
    pub(crate) inputs: &'a SortedMap<InputName, ResolvedInput>,
    pub(crate) files: &'a SortedMap<CleanRelPath, Vec<u8>>,
    pub(crate) constraints: &'a Constraints,
    pub(crate) sandbox: SandboxLevel,
    pub(crate) fixed_output: Option<&'a FixedOutput>,
    pub(crate) store_dir: &'a StoreDir,
    pub(crate) host: Option<&'a HostFingerprint>,
    pub(crate) toolchain: Option<&'a ToolchainInput>,
    pub(crate) input_lists: &'a SortedMap<InputName, Vec<InputName>>,
}

/// A validated build request: the single input of key computation and of the sandbox. Its
/// fields are those of [`RequestParts`], read through `Deref`.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct BuildRequest(RequestParts);

impl std::ops::Deref for BuildRequest {
    type Target = RequestParts;

    fn deref(&self) -> &RequestParts {
        &self.0
    }
}

impl<'de> Deserialize<'de> for BuildRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BuildRequest::new(RequestParts::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The cross-field rules shared by a derivation and the request made of it.
/// Each list of inputs has a name of its own (no input, env var or output has it) and lists
/// only inputs of the request.
pub(crate) fn check_input_lists(
    lists: &SortedMap<InputName, Vec<InputName>>,
    is_input: impl Fn(&InputName) -> bool,
    is_env: impl Fn(&str) -> bool,
    is_output: impl Fn(&str) -> bool,
) -> Result<(), RequestError> {
    for (list, members) in lists {
        let other = match () {
            _ if is_input(list) => Some("an input"),
            _ if is_env(list.as_str()) => Some("an env var"),
            _ if is_output(list.as_str()) => Some("an output"),
            _ => None,
        };
        if let Some(other) = other {
            return Err(RequestError::NameClash {
                name: list.to_string(),
                first: "a list of inputs",
                second: other,
            });
        }
        if let Some(missing) = members.iter().find(|m| !is_input(m)) {
            return Err(InvalidValue::new(
                "list of inputs",
                list.as_str(),
                format!("it lists `{missing}`, which is not an input"),
            )
            .into());
        }
    }
    Ok(())
}

/// The first name claimed twice among `claims` (each a name and what claims it), with what
/// claimed it first and what claimed it again: the clash reported is the one a claim at a time
/// would find.
fn first_clash<'a>(
    claims: impl Iterator<Item = (&'a str, &'static str)>,
) -> Option<(&'a str, &'static str, &'static str)> {
    // A derivation's few names, each against those before it, held on the stack.
    const FEW: usize = 16;
    let mut few = [("", ""); FEW];
    let mut claims = claims.enumerate();
    for (at, (name, kind)) in claims.by_ref() {
        if at == FEW {
            // Many, none claimed twice among the first: sorted by name (stably), a name
            // claimed twice is next to its first claim.
            let mut all: Vec<(&str, &'static str, usize)> = few
                .into_iter()
                .chain([(name, kind)])
                .chain(claims.map(|(_, claim)| claim))
                .enumerate()
                .map(|(place, (name, kind))| (name, kind, place))
                .collect();
            all.sort_by_key(|claim| claim.0);
            return all
                .windows(2)
                .filter(|pair| pair[0].0 == pair[1].0)
                .min_by_key(|pair| pair[1].2)
                .map(|pair| (pair[1].0, pair[0].1, pair[1].1));
        }
        if let Some(&(_, first)) = few[..at].iter().find(|(n, _)| *n == name) {
            return Some((name, first, kind));
        }
        few[at] = (name, kind);
    }
    None
}

/// The rules a derivation's names follow: it has a builder and an output, no name is claimed
/// twice among its outputs, inputs and env vars, and each output's store entry name fits a file
/// name; with the rules of the network and fixed outputs.
pub(crate) fn check_names<'a>(
    name: &Name,
    args_empty: bool,
    outputs: &[OutputName],
    inputs: impl IntoIterator<Item = &'a InputName>,
    env: impl IntoIterator<Item = &'a EnvKey>,
    network: bool,
    fixed_output: bool,
) -> Result<(), RequestError> {
    if args_empty {
        return Err(RequestError::NoBuilder(name.to_string()));
    }
    let claims = outputs
        .iter()
        .map(|o| (o.as_str(), "an output"))
        .chain(inputs.into_iter().map(|i| (i.as_str(), "an input")))
        .chain(env.into_iter().map(|k| (k.as_str(), "an env var")));
    if let Some((name, first, second)) = first_clash(claims) {
        return Err(RequestError::NameClash {
            name: name.to_string(),
            first,
            second,
        });
    }
    if outputs.is_empty() {
        return Err(InvalidValue::new(
            "outputs",
            "",
            "a derivation must declare at least one output",
        )
        .into());
    }
    if network && !fixed_output {
        return Err(RequestError::NetworkWithoutFixedOutput(name.to_string()));
    }
    if fixed_output && (outputs.len() != 1 || outputs[0].as_str() != "out") {
        return Err(RequestError::FixedOutputOutputs(name.to_string()));
    }
    // Each output is a store entry, a directory, whose name a file system holds only so long.
    if let Some((output, len)) = outputs
        .iter()
        .map(|o| (o, EntryName::len_of(name, Some(o))))
        .find(|&(_, len)| len > EntryName::MAX_LEN)
    {
        return Err(InvalidValue::new(
            "output name",
            output.as_str(),
            format!(
                "with the derivation's name of {} bytes, its store entry's name would be {len} \
                 bytes, more than the {} a file name may have; shorten the name or the \
                 output's name",
                name.as_str().len(),
                EntryName::MAX_LEN,
            ),
        )
        .into());
    }
    Ok(())
}

/// The rules of the working directory and the scratch paths, which are relative to the
/// sandbox's root: each scratch path is an empty writable directory of its own, clear of what
/// the sandbox puts there; the build starts in `build` (the build directory), a directory in
/// it, or in a scratch path.
fn check_build_paths(parts: &PartsRef<'_>) -> Result<(), InvalidValue> {
    // Every path here is clean (no empty, `.` or `..` component), so a path is in a directory
    // when it is so as text, component by component.
    for scratch in parts.scratch_paths {
        let path = format!("/{}", scratch.as_str());
        let refusal = if let Some(dir) = rules::sandbox_dir(&path) {
            Some(format!(
                "the sandbox makes `{dir}` itself; choose a path outside it"
            ))
        } else if rules::within(&path, parts.store_dir.as_str()) {
            Some(format!(
                "it is in the store directory `{}`, which the build sees read-only",
                parts.store_dir
            ))
        } else {
            parts
                .constraints
                .ro_paths
                .iter()
                .find(|ro| rules::within(&path, ro.as_str()))
                .map(|ro| format!("it is in the read-only host path `{}`", ro.as_str()))
        };
        if let Some(reason) = refusal {
            return Err(InvalidValue::new("scratch path", scratch.as_str(), reason));
        }
    }
    let working = parts.working_dir.as_str();
    if !rules::within(working, "build")
        && !parts
            .scratch_paths
            .iter()
            .any(|scratch| rules::within(working, scratch.as_str()))
    {
        return Err(InvalidValue::new(
            "working directory",
            parts.working_dir.as_str(),
            "must be `build` (the build directory), a directory in it, or in a scratch path",
        ));
    }
    Ok(())
}

impl BuildRequest {
    /// Checks the cross-field rules (no name shared between inputs, outputs and env; at least one
    /// output; network only with a fixed output; a host fingerprint exactly for `host-tools`) and
    /// builds the request.
    pub fn new(parts: RequestParts) -> Result<Self, RequestError> {
        parts.by_ref().check()?;
        Ok(BuildRequest(parts))
    }

    /// The request of parts whose rules [`PartsRef::check`] has passed.
    pub(crate) fn checked(parts: RequestParts) -> Self {
        BuildRequest(parts)
    }

    /// A request for a plain REAPI action run by `forjar worker`: like [`BuildRequest::new`],
    /// but with no store outputs (the action's outputs are paths in `/build`, its input root).
    #[cfg(feature = "remote")]
    pub(crate) fn action(parts: RequestParts) -> Result<Self, RequestError> {
        if parts.args.is_empty() {
            return Err(RequestError::NoBuilder(parts.name.to_string()));
        }
        if !parts.outputs.is_empty() || !parts.inputs.is_empty() || parts.constraints.network {
            return Err(InvalidValue::new(
                "action",
                parts.name.as_str(),
                "a plain action has no store inputs, no store outputs and no network",
            )
            .into());
        }
        parts.by_ref().check_rest()?;
        Ok(BuildRequest(parts))
    }

    /// The closure key of a derivation: everything that can change its output, and nothing else.
    ///
    /// A fixed-output derivation is keyed by its name, declared digest and store only (as in Nix):
    /// its output is known in advance, so a change to how it is fetched changes nothing downstream.
    pub fn key(&self) -> Key {
        self.by_ref().key()
    }
}

impl PartsRef<'_> {
    /// The cross-field rules [`BuildRequest::new`] checks.
    pub(crate) fn check(&self) -> Result<(), RequestError> {
        check_names(
            self.name,
            self.args.is_empty(),
            self.outputs.as_slice(),
            self.inputs.keys(),
            self.env.keys(),
            self.constraints.network,
            self.fixed_output.is_some(),
        )?;
        check_input_lists(
            self.input_lists,
            |n| self.inputs.contains_key(n),
            |n| self.env.keys().any(|k| k.as_str() == n),
            |n| self.outputs.iter().any(|o| o.as_str() == n),
        )?;
        self.check_rest()
    }

    /// The rules that do not concern names.
    pub(crate) fn check_rest(&self) -> Result<(), RequestError> {
        check_build_paths(self)?;
        if self.toolchain.is_some() && self.sandbox == SandboxLevel::HostTools {
            return Err(InvalidValue::new(
                "toolchain",
                self.name.as_str(),
                "a toolchain is for hermetic builds; `host-tools` sees the host's own tools",
            )
            .into());
        }
        if (self.sandbox == SandboxLevel::HostTools) != self.host.is_some() {
            return Err(InvalidValue::new(
                "host fingerprint",
                self.sandbox.as_str(),
                "a host fingerprint is given exactly for the `host-tools` level",
            )
            .into());
        }
        Ok(())
    }

    /// The fields, owned.
    pub(crate) fn to_parts(self) -> RequestParts {
        RequestParts {
            name: self.name.clone(),
            system: self.system.clone(),
            args: self.args.to_vec(),
            working_dir: self.working_dir.clone(),
            scratch_paths: self.scratch_paths.clone(),
            outputs: self.outputs.clone(),
            env: self.env.clone(),
            inputs: self.inputs.clone(),
            files: self.files.clone(),
            constraints: self.constraints.clone(),
            sandbox: self.sandbox,
            fixed_output: self.fixed_output.cloned(),
            store_dir: self.store_dir.clone(),
            host: self.host.copied(),
            toolchain: self.toolchain.map(|t| Box::new(t.clone())),
            input_lists: self.input_lists.clone(),
        }
    }

    /// See [`BuildRequest::key`].
    pub(crate) fn key(&self) -> Key {
        let mut e = Encoder::new(DERIVATION_CONTEXT);
        if let Some(fixed) = self.fixed_output {
            e.field("fixed")
                .bytes(self.name.as_str().as_bytes())
                .bytes(&fixed.key_bytes());
            e.field("store").bytes(self.store_dir.as_str().as_bytes());
            return Key::from_bytes(e.finish());
        }
        e.field("name").bytes(self.name.as_str().as_bytes());
        e.field("system").bytes(self.system.as_str().as_bytes());
        e.field("args").count(self.args.len());
        for arg in self.args {
            e.bytes(arg.as_bytes());
        }
        e.field("workdir")
            .bytes(self.working_dir.as_str().as_bytes());
        e.field("scratch").count(self.scratch_paths.len());
        for path in self.scratch_paths {
            e.bytes(path.as_str().as_bytes());
        }
        e.field("env").count(self.env.len());
        for (key, value) in self.env {
            e.bytes(key.as_str().as_bytes()).bytes(value.as_bytes());
        }
        e.field("outputs").count(self.outputs.len());
        for output in self.outputs {
            e.bytes(output.as_str().as_bytes());
        }
        e.field("inputs").count(self.inputs.len());
        for (name, input) in self.inputs {
            e.bytes(name.as_str().as_bytes());
            match input {
                ResolvedInput::Output { key, .. } => e.bytes(b"output").bytes(key.as_bytes()),
                ResolvedInput::Source { entry, digest } => e
                    .bytes(b"source")
                    .bytes(digest.as_bytes())
                    .bytes(entry.as_str().as_bytes()),
            };
        }
        e.field("files").count(self.files.len());
        for (path, contents) in self.files {
            e.bytes(path.as_str().as_bytes()).bytes(contents);
        }
        let constraints = self.constraints;
        e.field("constraints")
            .u8(constraints.network.into())
            .u8(constraints.provide_bin_sh.into());
        e.count(constraints.ro_paths.len());
        for path in &constraints.ro_paths {
            e.bytes(path.as_str().as_bytes());
        }
        e.option(
            constraints
                .min_memory
                .map(u64::to_le_bytes)
                .as_ref()
                .map(|b| &b[..]),
        );
        e.field("sandbox").bytes(self.sandbox.as_str().as_bytes());
        e.field("host").option(self.host.map(|h| &h.as_bytes()[..]));
        // Only when there is one, so that the keys of builds without a toolchain are as they were.
        if let Some(toolchain) = self.toolchain {
            e.field("toolchain")
                .bytes(toolchain.digest.as_bytes())
                .bytes(toolchain.entry.as_str().as_bytes());
        }
        // Likewise only when there are any.
        if !self.input_lists.is_empty() {
            e.field("input_lists").count(self.input_lists.len());
            for (list, members) in self.input_lists {
                e.bytes(list.as_str().as_bytes()).count(members.len());
                for member in members {
                    e.bytes(member.as_str().as_bytes());
                }
            }
        }
        e.field("store").bytes(self.store_dir.as_str().as_bytes());
        Key::from_bytes(e.finish())
    }
}

/// The serde form of byte strings (arguments, env values, files): a string when they are UTF-8,
/// `{"hex": ...}` otherwise, so that nothing is lost on the way.
mod bytes {

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::CleanRelPath;
    use crate::hash::{hex, unhex};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Form<'a> {
        Text(std::borrow::Cow<'a, str>),
        Raw { hex: String },
    }

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Form::Text(text.into()),
            Err(_) => Form::Raw { hex: hex(bytes) },
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Form::deserialize(d)? {
            Form::Text(text) => Ok(text.into_owned().into_bytes()),
            Form::Raw { hex } => unhex(&hex)
                .ok_or_else(|| serde::de::Error::custom(format!("`{hex}` is not lowercase hex"))),
        }
    }

    /// A map of byte strings.
    pub(super) mod map {
        use super::*;
        use crate::map::SortedMap;

        pub(crate) fn serialize<S: Serializer>(
            files: &SortedMap<CleanRelPath, Vec<u8>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            struct Bytes<'a>(&'a [u8]);
            impl Serialize for Bytes<'_> {
                fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    super::serialize(self.0, s)
                }
            }
            s.collect_map(files.iter().map(|(path, bytes)| (path, Bytes(bytes))))
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<SortedMap<CleanRelPath, Vec<u8>>, D::Error> {
            struct Bytes(Vec<u8>);
            impl<'de> Deserialize<'de> for Bytes {
                fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    super::deserialize(d).map(Bytes)
                }
            }
            let map = SortedMap::<CleanRelPath, Bytes>::deserialize(d)?;
            Ok(map
                .into_iter()
                .map(|(path, bytes)| (path, bytes.0))
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::slice;

    /// The parts of a request with `working_dir` and `scratch_paths`, otherwise minimal.
    fn parts(working_dir: &str, scratch: &[&str]) -> RequestParts {
        RequestParts {
            name: Name::new("x").unwrap(),
            system: System::host(),
            args: vec![Arg::new(0, "/bin/true").unwrap()],
            working_dir: CleanRelPath::new("working directory", working_dir).unwrap(),
            scratch_paths: scratch
                .iter()
                .map(|p| CleanRelPath::new("scratch path", *p).unwrap())
                .collect(),
            outputs: [OutputName::new("out").unwrap()].into(),
            env: SortedMap::new(),
            inputs: SortedMap::new(),
            files: SortedMap::new(),
            constraints: Constraints {
                ro_paths: [AbsPath::new("ro path", "/opt/tools").unwrap()].into(),
                ..Default::default()
            },
            sandbox: SandboxLevel::Hermetic,
            fixed_output: None,
            store_dir: StoreDir::new("/var/forjar/store").unwrap(),
            host: None,
            toolchain: None,
            input_lists: Default::default(),
        }
    }

    #[test]
    fn the_working_directory_is_in_the_build_directory_or_a_scratch_path() {
        for (working_dir, scratch) in [
            ("build", &[][..]),
            ("build/src/sub", &[]),
            ("work", &["work"]),
            ("work/a", &["work", "cache"]),
        ] {
            BuildRequest::new(parts(working_dir, scratch)).unwrap();
        }
        let err = BuildRequest::new(parts("src", &["work"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid working directory `src`: must be `build` (the build directory), a \
             directory in it, or in a scratch path"
        );
        // `buildx` is not in `build`, nor `workx/a` in `work`.
        assert!(BuildRequest::new(parts("buildx", &[])).is_err());
        assert!(BuildRequest::new(parts("workx/a", &["work"])).is_err());
    }

    #[test]
    fn scratch_paths_keep_clear_of_what_the_sandbox_makes() {
        for bad in ["tmp", "build/x", "proc", "etc/app", "usr/local"] {
            let err = BuildRequest::new(parts("build", &[bad])).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid scratch path `{bad}`: the sandbox makes")),
                "{err}"
            );
        }
        let err = BuildRequest::new(parts("build", &["var/forjar/store/x"])).unwrap_err();
        assert!(
            err.to_string()
                .contains("in the store directory `/var/forjar/store`"),
            "{err}"
        );
        let err = BuildRequest::new(parts("build", &["opt/tools/cache"])).unwrap_err();
        assert!(
            err.to_string()
                .contains("in the read-only host path `/opt/tools`"),
            "{err}"
        );
        // Above the store directory is allowed: the store is bound on top, as under /tmp.
        BuildRequest::new(parts("build", &["var", "opt/other", "tmpfiles"])).unwrap();
    }

    #[test]
    fn env_keys_reject_equals_nul_and_reserved_names() {
        assert!(EnvKey::new("CFLAGS").is_ok());
        let err = EnvKey::new("A=B").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid env key `A=B`: an environment variable name may not contain `=`"
        );
        assert!(EnvKey::new("A\0B").unwrap_err().to_string().contains("NUL"));
        assert!(EnvKey::new("").is_err());
        assert!(
            EnvKey::new("HOME")
                .unwrap_err()
                .to_string()
                .contains("set by the sandbox")
        );
    }

    #[test]
    fn env_values_are_bytes_without_nul() {
        let key = EnvKey::new("K").unwrap();
        assert!(EnvValue::new(&key, vec![0xff, 0xfe]).is_ok());
        let err = EnvValue::new(&key, "a\0b").unwrap_err();
        assert!(
            err.to_string()
                .contains("`K` contains a NUL byte at byte 1"),
            "{err}"
        );
    }

    #[test]
    fn clean_relative_paths() {
        assert!(CleanRelPath::new("file", "etc/app/config.json").is_ok());
        for bad in ["", "/etc", "a//b", "a/", "./a", "a/../b", "a\0b"] {
            let err = CleanRelPath::new("file", bad).unwrap_err();
            assert_eq!(err.field, "file", "{bad:?}");
        }
        assert!(AbsPath::new("ro path", "/usr/share").is_ok());
        assert!(
            AbsPath::new("ro path", "usr")
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
        assert!(AbsPath::new("ro path", "/usr/../etc").is_err());
        assert!(AbsPath::new("ro path", "/").is_err());
    }

    #[test]
    fn output_and_input_names_are_identifiers() {
        assert!(OutputName::new("dev").is_ok());
        assert!(OutputName::new("2x").is_err());
        assert!(
            OutputName::new("a-b")
                .unwrap_err()
                .to_string()
                .contains("shell identifier")
        );
        assert!(InputName::new("src").is_ok());
        assert!(InputName::new("TMPDIR").is_err());
    }

    #[test]
    fn systems_are_known() {
        assert!(System::new("x86_64-linux").is_ok());
        let err = System::new("x86-linux").unwrap_err();
        assert!(
            err.to_string().contains("known systems are x86_64-linux"),
            "{err}"
        );
        assert!(crate::name::KNOWN_SYSTEMS.contains(&System::host().as_str()));
    }

    #[test]
    fn the_clash_reported_is_the_first_repeated_claim_however_many_names() {
        type Claims<'a> = &'a [(&'a str, &'static str)];
        type Clash<'a> = Option<(&'a str, &'static str, &'static str)>;
        let (o, i, e) = ("an output", "an input", "an env var");
        let cases: [(Claims, Clash); 4] = [
            (&[("a", o), ("b", i), ("c", e)], None),
            (&[("a", o), ("b", i), ("a", e)], Some(("a", o, e))),
            // `y` is claimed again before `x` is.
            (&[("x", o), ("y", i), ("y", e), ("x", e)], Some(("y", i, e))),
            (&[("x", o), ("x", i), ("x", e)], Some(("x", o, i))),
        ];
        // The same claims, and the same followed by more names than a derivation has (the
        // other path); what follows a clash does not change which is first.
        let more: Vec<String> = (0..20).map(|n| format!("p{n}")).collect();
        for (claims, clash) in cases {
            assert_eq!(first_clash(claims.iter().copied()), clash, "{claims:?}");
            let padded = claims
                .iter()
                .copied()
                .chain(more.iter().map(|name| (name.as_str(), e)));
            assert_eq!(first_clash(padded), clash, "{claims:?} and 20 more");
        }
        let many: Vec<(&str, &str)> = more.iter().map(|name| (name.as_str(), i)).collect();
        assert_eq!(first_clash(many.iter().copied()), None);
        let again = many.iter().copied().chain([("p3", e)]);
        assert_eq!(first_clash(again), Some(("p3", i, e)));
    }

    #[test]
    fn clashing_names_are_refused() {
        let name = Name::new("x").unwrap();
        let out = OutputName::out();
        let src = InputName::new("out").unwrap();
        let err = check_names(
            &name,
            false,
            slice::from_ref(&out),
            [&src],
            [],
            false,
            false,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`out` is both an output and an input; inputs, outputs and env vars share the build \
             environment, so their names must differ"
        );
        let err =
            check_names(&name, false, slice::from_ref(&out), [], [], true, false).unwrap_err();
        assert!(matches!(err, RequestError::NetworkWithoutFixedOutput(_)));
        let err =
            check_names(&name, true, slice::from_ref(&out), [], [], false, false).unwrap_err();
        assert!(matches!(err, RequestError::NoBuilder(_)));

        // The longest name with a short output makes an entry a file system holds; with a long
        // output, not.
        let longest = Name::new("n".repeat(crate::name::MAX_NAME_LEN)).unwrap();
        let dev = OutputName::new("dev").unwrap();
        assert!(check_names(&longest, false, slice::from_ref(&dev), [], [], false, false).is_ok());
        let long = OutputName::new("o".repeat(30)).unwrap();
        let err = check_names(&longest, false, &[out.clone(), long], [], [], false, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("`{}`", "o".repeat(30))) && err.contains("264 bytes"),
            "{err}"
        );

        // Of two clashes, the one met first in claiming outputs, inputs, then env vars: `z`
        // (claimed third), not `a` (claimed fourth, though first by name).
        let z = OutputName::new("z").unwrap();
        let (a, z_input) = (InputName::new("a").unwrap(), InputName::new("z").unwrap());
        let a_env = EnvKey::new("a").unwrap();
        let err = check_names(
            &name,
            false,
            slice::from_ref(&z),
            [&a, &z_input],
            [&a_env],
            false,
            false,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`z` is both an output and an input;"),
            "{err}"
        );
    }
}
