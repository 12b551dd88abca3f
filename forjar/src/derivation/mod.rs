//! The user-facing model: derivations, their inputs, and the graph of a program (the book's
//! guide, "Writing derivations").
//!
//! The DSL's macros expand to this API; it can also be used directly:
//!
//! ```
//! use forjar::prelude::*;
//!
//! let mut g = Graph::new();
//! let greeting = g.add(
//!     Derivation::builder("greeting")
//!         .script("echo \"$message\" > $out")
//!         .env("message", "hello")
//!         .build()?,
//! );
//! let shout = g.add(
//!     Derivation::builder("shout")
//!         .script("tr a-z A-Z < $greeting > $out")
//!         .input("greeting", &greeting)
//!         .build()?,
//! );
//! g.root("shout", shout);
//! # Ok::<(), forjar::Error>(())
//! ```

pub(crate) mod graph;
pub(crate) mod ignore;
mod input;
mod typed;

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

pub use graph::{Graph, GraphError};
pub use ignore::IgnoreRules;
pub use input::{Drv, DrvId, Input, OutputRef, Source, SourceError};
pub use typed::{
    DefaultOutputs, InputField, IntoDerivation, IntoEnv, IntoInput, IntoToolchain, Param, Part,
    Spec, render_file,
};

use crate::map::{SortedMap, SortedSet};
use crate::name::{InvalidValue, Limits, Name, OutputName};
use crate::request::{
    AbsPath, Arg, CleanRelPath, Constraints, EnvKey, EnvValue, FixedOutput, HashMode, InputName,
    RequestError, SandboxLevel, System, check_names,
};
use crate::toolchain::Toolchain;

/// A derivation that failed validation, with where it was defined.
#[derive(Debug, Clone, thiserror::Error)]
#[error("derivation `{name}` (defined at {location}): {error}")]
pub struct DerivationError {
    /// The derivation's name as given.
    pub name: String,
    /// Where it was defined.
    pub location: String,
    /// What is wrong.
    #[source]
    pub error: RequestError,
}

/// A validated derivation: a hermetic build step with named inputs and outputs.
#[derive(Debug, Clone)]
pub struct Derivation {
    pub(crate) name: Name,
    pub(crate) system: System,
    pub(crate) args: Vec<Arg>,
    pub(crate) env: SortedMap<EnvKey, EnvValue>,
    pub(crate) inputs: SortedMap<InputName, Input>,
    /// Inputs given as one list, by the list's name: its members, in order.
    pub(crate) input_lists: SortedMap<InputName, Vec<InputName>>,
    pub(crate) outputs: SortedSet<OutputName>,
    pub(crate) files: SortedMap<CleanRelPath, Vec<u8>>,
    pub(crate) constraints: Constraints,
    pub(crate) sandbox: SandboxLevel,
    // The rarer parts boxed, the limits left out when none is set: a program may hold
    // thousands of derivations.
    pub(crate) fixed_output: Option<Box<FixedOutput>>,
    pub(crate) toolchain: Option<Box<Toolchain>>,
    pub(crate) limits: Option<Box<Limits>>,
    pub(crate) location: &'static Location<'static>,
}

impl Derivation {
    /// Starts a derivation named `name`; the caller's source location is recorded as its
    /// definition site.
    #[track_caller]
    pub fn builder(name: impl Into<String>) -> DerivationBuilder {
        DerivationBuilder::new(name.into(), Location::caller())
    }

    /// The name.
    pub fn name(&self) -> &Name {
        &self.name
    }
    /// The outputs.
    pub fn outputs(&self) -> &SortedSet<OutputName> {
        &self.outputs
    }
    /// The inputs.
    pub fn inputs(&self) -> &SortedMap<InputName, Input> {
        &self.inputs
    }
    /// The sandbox level.
    pub fn sandbox(&self) -> SandboxLevel {
        self.sandbox
    }
    /// The toolchain, if it has one.
    pub fn toolchain(&self) -> Option<&Toolchain> {
        self.toolchain.as_deref()
    }
    /// The resource limits.
    pub fn limits(&self) -> &Limits {
        self.limits.as_deref().unwrap_or(&Limits::UNSET)
    }
    /// Where the derivation was defined, as `file:line`.
    pub fn location(&self) -> String {
        site(self.location)
    }

    /// [`Derivation::location`], shared: derivations defined at one place (in a loop) one
    /// after the other share one text.
    pub(crate) fn shared_location(&self) -> Arc<str> {
        thread_local! {
            static LAST: std::cell::RefCell<Option<(&'static Location<'static>, Arc<str>)>> =
                const { std::cell::RefCell::new(None) };
        }
        LAST.with_borrow_mut(|last| match last {
            Some((at, text)) if **at == *self.location => text.clone(),
            _ => {
                let text: Arc<str> = site(self.location).into();
                *last = Some((self.location, text.clone()));
                text
            }
        })
    }
}

/// A source location as `file:line`.
pub(crate) fn site(location: &Location<'_>) -> String {
    let file = location.file();
    // Sized once: `format!` would guess short and grow.
    let mut text = String::with_capacity(file.len() + 11);
    let _ = write!(text, "{file}:{}", location.line());
    text
}

/// The script interpreter used for `.script(...)`.
pub const SCRIPT_SHELL: [&str; 2] = ["/bin/sh", "-euc"];

/// Collects a derivation's parts; [`DerivationBuilder::build`] validates them all at once.
#[derive(Debug, Clone)]
pub struct DerivationBuilder {
    name: String,
    location: &'static Location<'static>,
    script: Option<String>,
    env: Vec<(String, Vec<u8>)>,
    inputs: Vec<(String, Input)>,
    outputs: Vec<String>,
    provide_bin_sh: bool,
    sandbox: SandboxLevel,
    allow_impure: bool,
    /// The script was checked when the program was compiled (`#[derive(Derivation)]`).
    script_checked: bool,
    /// The parts fewer derivations set, made when one is: a builder is moved at every call.
    more: Option<Box<More>>,
}

/// The parts of a [`DerivationBuilder`] fewer derivations set.
#[derive(Debug, Clone, Default)]
struct More {
    system: Option<String>,
    argv: Option<Vec<Vec<u8>>>,
    input_lists: Vec<(String, Vec<String>)>,
    files: Vec<(String, Vec<u8>)>,
    network: bool,
    ro_paths: Vec<String>,
    min_memory: Option<u64>,
    fixed_output: Option<String>,
    fixed_output_mode: Option<HashMode>,
    toolchain: Option<Toolchain>,
    limits: Limits,
    /// The first error of a part that is checked as it is given (`render`).
    deferred: Option<RequestError>,
}

impl DerivationBuilder {
    /// Starts a derivation defined at `location`.
    pub(crate) fn new(name: String, location: &'static Location<'static>) -> Self {
        DerivationBuilder {
            name,
            location,
            script: None,
            env: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            provide_bin_sh: false,
            sandbox: SandboxLevel::default(),
            allow_impure: false,
            script_checked: false,
            more: None,
        }
    }

    /// The parts fewer derivations set, made now if none was.
    fn more(&mut self) -> &mut More {
        self.more.get_or_insert_with(Box::default)
    }

    /// A shell script run as `/bin/sh -euc <script>`; implies `provide_bin_sh`. [`build`]
    /// checks it as `#[derive(Derivation)]` does at compile time: every `$name` it expands must
    /// be an input, env var or output (or set by the script, the sandbox or the shell), and it
    /// may not read randomness or the clock unless [`allow_impure`] says so.
    ///
    /// [`build`]: DerivationBuilder::build
    /// [`allow_impure`]: DerivationBuilder::allow_impure
    pub fn script(mut self, script: impl Into<String>) -> Self {
        self.script = Some(script.into());
        self
    }

    /// The builder's argv (the program first), instead of a script.
    pub fn builder<I, A>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<Vec<u8>>,
    {
        self.more().argv = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// The platform to build for (default: this host's).
    pub fn system(mut self, system: impl Into<String>) -> Self {
        self.more().system = Some(system.into());
        self
    }

    /// An environment variable of the build; the value is bytes.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// A named input; its store path is in the build's environment under that name.
    pub fn input(mut self, name: impl Into<String>, input: impl Into<Input>) -> Self {
        self.inputs.push((name.into(), input.into()));
        self
    }

    /// Inputs taken as one list, as Nix's `buildInputs`: `$name` holds their store paths,
    /// space-separated, in the order given, and each is also the input `name_0`, `name_1`, ….
    /// An empty list is an empty `$name`.
    ///
    /// ```no_run
    /// # use forjar::prelude::*;
    /// # fn f(g: &mut Graph, plugins: Vec<Drv>) -> forjar::Result<()> {
    /// let app = Derivation::builder("app")
    ///     .inputs("plugins", &plugins)
    ///     .script("mkdir $out; for p in $plugins; do cp -r $p/. $out/; done")
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn inputs<I, T>(self, name: impl Into<String>, inputs: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<Input>,
    {
        let name = name.into();
        let members = inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| (format!("{name}_{i}"), input.into()))
            .collect();
        self.input_list(name, members)
    }

    /// Named inputs taken as one list (a map's): `$name` holds their store paths in the order
    /// given, and each is also the input `name_<key>`.
    pub fn inputs_named<I, K, T>(self, name: impl Into<String>, inputs: I) -> Self
    where
        I: IntoIterator<Item = (K, T)>,
        K: fmt::Display,
        T: Into<Input>,
    {
        let name = name.into();
        let members = inputs
            .into_iter()
            .map(|(key, input)| (format!("{name}_{key}"), input.into()))
            .collect();
        self.input_list(name, members)
    }

    pub(crate) fn input_list(mut self, name: String, members: Vec<(String, Input)>) -> Self {
        let names = members.iter().map(|(n, _)| n.clone()).collect();
        self.inputs.extend(members);
        self.more().input_lists.push((name, names));
        self
    }

    /// A declared output (default: just `out`).
    pub fn output(mut self, name: impl Into<String>) -> Self {
        self.outputs.push(name.into());
        self
    }

    /// A file written into the build directory before the build, at a clean relative path.
    pub fn file(mut self, path: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        self.more().files.push((path.into(), contents.into()));
        self
    }

    /// A file in the build directory holding `value` rendered in the format its extension
    /// names: JSON (`.json`), TOML (`.toml`) or YAML (`.yaml`, `.yml`).
    ///
    /// ```
    /// # use forjar::prelude::*;
    /// #[derive(serde::Serialize)]
    /// struct Config { port: u16 }
    ///
    /// let drv = Derivation::builder("config")
    ///     .render("config.toml", &Config { port: 8080 })
    ///     .script("cp config.toml $out")
    ///     .build()?;
    /// # Ok::<(), forjar::Error>(())
    /// ```
    pub fn render<T: serde::Serialize + ?Sized>(self, path: impl Into<String>, value: &T) -> Self {
        let path = path.into();
        let contents = render_file(&path, value);
        self.rendered(path, contents)
    }

    /// A file, or the error rendering it; the error is reported by `build`.
    pub(crate) fn rendered(
        mut self,
        path: impl Into<String>,
        contents: Result<Vec<u8>, RequestError>,
    ) -> Self {
        match contents {
            Ok(contents) => self.more().files.push((path.into(), contents)),
            Err(error) => {
                self.more().deferred.get_or_insert(error);
            }
        }
        self
    }

    /// Network access; only for fixed-output derivations.
    pub fn network(mut self, network: bool) -> Self {
        self.more().network = network;
        self
    }

    /// A working `/bin/sh` inside the sandbox.
    pub fn provide_bin_sh(mut self, provide: bool) -> Self {
        self.provide_bin_sh = provide;
        self
    }

    /// A host path bound read-only into the sandbox.
    pub fn ro_path(mut self, path: impl Into<String>) -> Self {
        self.more().ro_paths.push(path.into());
        self
    }

    /// The least memory, in bytes, the build needs.
    pub fn min_memory(mut self, bytes: u64) -> Self {
        self.more().min_memory = Some(bytes);
        self
    }

    /// The sandbox level.
    pub fn sandbox(mut self, level: SandboxLevel) -> Self {
        self.sandbox = level;
        self
    }

    /// The tools the build runs: the toolchain's packages are its `/usr` (and `/bin`, `/lib`,
    /// ...), its `/bin/sh` among them, and `PATH` is `/usr/bin:/bin` unless the derivation sets
    /// it. Only for the `hermetic` level: `host-tools` sees the host's own.
    pub fn toolchain(mut self, toolchain: &Toolchain) -> Self {
        self.more().toolchain = Some(toolchain.clone());
        self
    }

    /// Makes this a fixed-output derivation whose output must have `digest`: forjar's tree
    /// digest `blake3:<hex>` (`forjar hash path` prints it), or SHA-256 as `sha256:<hex>` or
    /// Nix's SRI `sha256-<base64>` (`prefetch` prints both), of the one file the output is
    /// unless [`fixed_output_mode`](Self::fixed_output_mode) says `Recursive`.
    pub fn fixed_output(mut self, digest: impl Into<String>) -> Self {
        self.more().fixed_output = Some(digest.into());
        self
    }

    /// What a SHA-256 fixed-output digest covers: the one file the output is (`Flat`, the
    /// default) or the output's NAR serialisation (`Recursive`), as Nix's `outputHashMode`.
    pub fn fixed_output_mode(mut self, mode: HashMode) -> Self {
        self.more().fixed_output_mode = Some(mode);
        self
    }

    /// Total wall-clock limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.more().limits.timeout = Some(timeout);
        self
    }

    /// Limit on time without log output.
    pub fn max_silent(mut self, max_silent: Duration) -> Self {
        self.more().limits.max_silent = Some(max_silent);
        self
    }

    /// Memory cap in bytes.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.more().limits.memory = Some(bytes);
        self
    }

    /// CPUs the build may use.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.more().limits.cpus = Some(cpus);
        self
    }

    /// Largest total output size in bytes.
    pub fn max_output_size(mut self, bytes: u64) -> Self {
        self.more().limits.max_output_size = Some(bytes);
        self
    }

    /// Largest log kept, in bytes; a build that prints more is stopped.
    pub fn max_log_size(mut self, bytes: u64) -> Self {
        self.more().limits.max_log_size = Some(bytes);
        self
    }

    /// Most processes the builder and everything it starts may have at once (default
    /// [`DEFAULT_MAX_PROCESSES`](crate::name::DEFAULT_MAX_PROCESSES)); a fork past it fails.
    pub fn max_processes(mut self, processes: u64) -> Self {
        self.more().limits.max_processes = Some(processes);
        self
    }

    /// Lets the script do what differs on every run (`$RANDOM`, `date`, `/dev/urandom`):
    /// its output is then not reproducible, and `check` will say so.
    pub fn allow_impure(mut self) -> Self {
        self.allow_impure = true;
        self
    }

    /// Validates everything and makes the derivation. The error names the derivation, where it
    /// was defined, the field and the value.
    pub fn build(mut self) -> Result<Derivation, DerivationError> {
        let name = std::mem::take(&mut self.name);
        let location = self.location;
        self.validate(&name).map_err(|error| DerivationError {
            name,
            location: site(location),
            error,
        })
    }

    fn validate(self, name: &str) -> Result<Derivation, RequestError> {
        let more = self.more.map(|more| *more).unwrap_or_default();
        if let Some(error) = more.deferred {
            return Err(error);
        }
        let name = Name::of_str(name)?;
        let system = match more.system {
            Some(system) => System::new(system)?,
            None => System::host(),
        };
        let mut provide_bin_sh = self.provide_bin_sh;
        let args: Vec<Arg> = match (self.script, more.argv) {
            (Some(_), Some(_)) => {
                return Err(InvalidValue::new(
                    "builder",
                    "",
                    "give a script or a builder argv, not both",
                )
                .into());
            }
            (Some(script), None) => {
                if !self.script_checked {
                    check_script(
                        &script,
                        &self.env,
                        &self.inputs,
                        &more.input_lists,
                        &self.outputs,
                        self.allow_impure,
                    )?;
                }
                provide_bin_sh = true;
                let mut args = Vec::with_capacity(SCRIPT_SHELL.len() + 1);
                args.extend(SCRIPT_SHELL.map(Arg::fixed));
                args.push(Arg::new(SCRIPT_SHELL.len(), script)?);
                args
            }
            (None, Some(argv)) => argv
                .into_iter()
                .enumerate()
                .map(|(i, a)| Arg::new(i, a))
                .collect::<Result<_, _>>()?,
            (None, None) => Vec::new(),
        };

        // Each map is sorted once: inserting one entry at a time in the order given costs the
        // square of their number for a derivation of thousands of inputs.
        let env = self
            .env
            .into_iter()
            .map(|(key, value)| {
                let key = EnvKey::new(key)?;
                let value = EnvValue::new(&key, value)?;
                Ok((key, value))
            })
            .collect::<Result<Vec<_>, RequestError>>()?;
        let env = SortedMap::from_unique(env).map_err(|key| duplicate("env var", key))?;
        let inputs = self
            .inputs
            .into_iter()
            .map(|(name, input)| Ok((InputName::new(name)?, input)))
            .collect::<Result<Vec<_>, RequestError>>()?;
        let inputs = SortedMap::from_unique(inputs).map_err(|name| duplicate("input", name))?;
        let input_lists = more
            .input_lists
            .into_iter()
            .map(|(list, members)| {
                let list = InputName::new(list)?;
                let members = members
                    .into_iter()
                    .map(InputName::new)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((list, members))
            })
            .collect::<Result<Vec<_>, RequestError>>()?;
        let input_lists = SortedMap::from_unique(input_lists)
            .map_err(|list| duplicate("list of inputs", list))?;
        let outputs = match self.outputs.is_empty() {
            true => vec![OutputName::out()],
            false => self
                .outputs
                .into_iter()
                .map(OutputName::new)
                .collect::<Result<Vec<_>, _>>()?,
        };
        let outputs =
            SortedSet::from_unique(outputs).map_err(|output| duplicate("output", output))?;
        let files = more
            .files
            .into_iter()
            .map(|(path, contents)| Ok((CleanRelPath::new("file path", path)?, contents)))
            .collect::<Result<Vec<_>, RequestError>>()?;
        let files =
            SortedMap::from_unique(files).map_err(|path| duplicate("file", path.as_str()))?;
        let mut ro_paths = BTreeSet::new();
        for path in more.ro_paths {
            let path = AbsPath::new("read-only path", path)?;
            if !ro_paths.insert(path.clone()) {
                return Err(RequestError::Duplicate {
                    field: "read-only path",
                    value: path.as_str().to_string(),
                });
            }
        }
        let fixed_output = match (more.fixed_output, more.fixed_output_mode) {
            (Some(digest), mode) => Some(Box::new(FixedOutput::new(&digest, mode)?)),
            (None, Some(_)) => {
                return Err(InvalidValue::new(
                    "fixed-output mode",
                    "given",
                    "a mode says what a fixed-output digest covers; give the digest too \
                     (`fixed_output`)",
                )
                .into());
            }
            (None, None) => None,
        };
        check_names(
            &name,
            args.is_empty(),
            outputs.as_slice(),
            inputs.keys(),
            env.keys(),
            more.network,
            fixed_output.is_some(),
        )?;
        crate::request::check_input_lists(
            &input_lists,
            |n| inputs.contains_key(n),
            |n| env.keys().any(|k: &EnvKey| k.as_str() == n),
            |n| outputs.iter().any(|o: &OutputName| o.as_str() == n),
        )?;
        if more.limits.max_processes == Some(0) {
            return Err(InvalidValue::new(
                "process limit",
                "0",
                "the builder is a process of the build; give `max_processes` 1 or more",
            )
            .into());
        }
        if more.toolchain.is_some() && self.sandbox == SandboxLevel::HostTools {
            return Err(InvalidValue::new(
                "sandbox level",
                SandboxLevel::HostTools.as_str(),
                "a derivation with a toolchain is hermetic (`host-tools` sees the host's own \
                 tools); leave the level at `hermetic`, or drop the toolchain",
            )
            .into());
        }
        Ok(Derivation {
            name,
            system,
            args,
            env,
            inputs,
            input_lists,
            outputs,
            files,
            constraints: Constraints {
                network: more.network,
                provide_bin_sh,
                ro_paths,
                min_memory: more.min_memory,
            },
            sandbox: self.sandbox,
            fixed_output,
            toolchain: more.toolchain.map(Box::new),
            limits: (more.limits != Limits::UNSET).then(|| Box::new(more.limits)),
            location: self.location,
        })
    }
}

/// The error for a name given twice in one of a derivation's maps.
fn duplicate(field: &'static str, value: impl fmt::Display) -> RequestError {
    RequestError::Duplicate {
        field,
        value: value.to_string(),
    }
}

/// The macros' script checks, on a builder's script: its syntax, its undeclared variables and,
/// unless allowed, what differs on every run. Every problem is named, each on a line of its own.
///
/// A program that makes many derivations from one template checks the template once: a script
/// that passed with the same names declared is remembered (all three as one text, in a set), so
/// the check costs a lookup, not a scan, per derivation.
fn check_script(
    script: &str,
    env: &[(String, Vec<u8>)],
    inputs: &[(String, Input)],
    input_lists: &[(String, Vec<String>)],
    outputs: &[String],
    allow_impure: bool,
) -> Result<(), RequestError> {
    use crate::name::rules::script;
    let declared = || {
        inputs
            .iter()
            .map(|(n, _)| (n.as_str(), "input"))
            // A list is an input field to the derive, and named as one.
            .chain(input_lists.iter().map(|(n, _)| (n.as_str(), "input")))
            .chain(env.iter().map(|(n, _)| (n.as_str(), "env")))
            .chain(outputs.iter().map(|n| (n.as_str(), "output")))
            .chain(outputs.is_empty().then_some(("out", "output")))
    };
    thread_local! {
        static PASSED: std::cell::RefCell<Passed> = std::cell::RefCell::default();
    }
    let passed = PASSED.with_borrow_mut(|passed| {
        // The count first: what ends the names is known without looking into the script.
        let text = &mut passed.text;
        text.clear();
        text.push(u8::from(allow_impure));
        text.extend_from_slice(&(declared().count() as u64).to_le_bytes());
        // Each name ends in NUL (no name holds one), then what declares it, a byte.
        for (name, kind) in declared() {
            text.extend_from_slice(name.as_bytes());
            text.extend_from_slice(&[0, kind.as_bytes()[0]]);
        }
        text.extend_from_slice(script.as_bytes());
        passed.texts.contains(passed.text.as_slice())
    });
    if passed {
        return Ok(());
    }
    let declared: Vec<(&str, &str)> = declared().collect();
    let scan = script::scan(script);
    let syntax = script::syntax(&scan);
    if !syntax.is_empty() {
        return Err(RequestError::Script(syntax));
    }
    let mut problems = script::undeclared(&scan, &declared);
    if !allow_impure {
        problems.extend(script::impure(&scan, "call `.allow_impure()`"));
    }
    match problems.is_empty() {
        true => {
            PASSED.with_borrow_mut(Passed::remember);
            Ok(())
        }
        false => Err(RequestError::Script(problems)),
    }
}

/// The texts (script, names declared and whether impure) that passed [`check_script`] on this
/// thread, compared whole: a lookup costs a fast hash and one comparison.
#[derive(Default)]
struct Passed {
    texts: std::collections::HashSet<Box<[u8]>, foldhash::fast::RandomState>,
    bytes: usize,
    /// The text of the script being checked, made in the same buffer each time.
    text: Vec<u8>,
}

impl Passed {
    /// What the set may hold: a program of many distinct scripts does not keep a second copy
    /// of each for the life of its thread.
    const MAX_BYTES: usize = 8 << 20;

    /// Remembers the text of the script just checked.
    fn remember(&mut self) {
        if self.bytes + self.text.len() > Self::MAX_BYTES {
            self.texts.clear();
            self.bytes = 0;
        }
        self.bytes += self.text.len();
        self.texts.insert(self.text.as_slice().into());
    }
}

impl fmt::Display for Derivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.location())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_that_passed_is_checked_again_with_other_names_or_impure_parts() {
        let script = "echo \"$greeting\" > $out";
        let with = |name: &str| Derivation::builder("greet").env(name, "hi").script(script);
        for _ in 0..2 {
            assert!(with("greeting").build().is_ok());
            // The same text with another name declared: the use is undeclared.
            let error = with("greetings").build().unwrap_err().to_string();
            assert!(
                error.contains("uses `$greeting`, which is not an input"),
                "{error}"
            );
        }
        let impure = "echo $RANDOM > $out";
        let allowed = Derivation::builder("r")
            .script(impure)
            .allow_impure()
            .build();
        assert!(allowed.is_ok(), "{allowed:?}");
        let refused = Derivation::builder("r").script(impure).build().unwrap_err();
        assert!(refused.to_string().contains("`$RANDOM`"), "{refused}");
    }

    #[test]
    fn the_scripts_remembered_are_bounded() {
        let mut passed = Passed::default();
        let text = vec![b'x'; Passed::MAX_BYTES / 3 + 1];
        for n in 0..10u8 {
            passed.text.clone_from(&text);
            passed.text.push(n);
            passed.remember();
            assert!(passed.bytes <= Passed::MAX_BYTES, "{} bytes", passed.bytes);
            assert_eq!(
                passed.bytes,
                passed.texts.iter().map(|t| t.len()).sum::<usize>()
            );
        }
    }

    #[test]
    fn a_builders_script_is_checked_as_the_derive_checks_it() {
        let error = Derivation::builder("greet")
            .env("greeting", "hi")
            .script("echo \"$greetng\" > $out\necho $RANDOM >> $out")
            .build()
            .unwrap_err()
            .to_string();
        assert_eq!(
            error.lines().collect::<Vec<_>>(),
            [
                "derivation `greet` (defined at forjar/src/derivation/mod.rs:LINE): script line 1 \
                 uses `$greetng`, which is not an input, env or output (did you mean \
                 `greeting`?); declared: `greeting` (env), `out` (output)"
                    .replace("LINE", &(line!() - 12).to_string())
                    .as_str(),
                "script line 2 uses `$RANDOM`, which differs on every run; make it \
                 deterministic, or call `.allow_impure()`",
            ]
        );
        let allowed = Derivation::builder("greet")
            .env("greeting", "hi")
            .script("echo \"$greeting\" $RANDOM > $out")
            .allow_impure()
            .build();
        assert!(allowed.is_ok(), "{allowed:?}");
        // An argv is the program's own business.
        let argv = Derivation::builder("greet")
            .builder(["/bin/sh", "-euc", "echo $nothing > $out"])
            .build();
        assert!(argv.is_ok(), "{argv:?}");
    }

    #[test]
    fn a_script_runs_under_sh_and_asks_for_it() {
        let drv = Derivation::builder("x")
            .script("echo hi > $out")
            .build()
            .unwrap();
        let args: Vec<&[u8]> = drv.args.iter().map(Arg::as_bytes).collect();
        assert_eq!(args, [b"/bin/sh" as &[u8], b"-euc", b"echo hi > $out"]);
        assert!(drv.constraints.provide_bin_sh);
        assert_eq!(
            drv.outputs
                .iter()
                .map(OutputName::as_str)
                .collect::<Vec<_>>(),
            ["out"]
        );
        assert!(
            drv.location().starts_with("forjar/src/derivation/mod.rs:"),
            "{}",
            drv.location()
        );
    }

    #[test]
    fn errors_name_the_derivation_its_location_the_field_and_the_value() {
        let line = line!() + 1;
        let err = Derivation::builder("hello")
            .script("true")
            .env("A=B", "x")
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "derivation `hello` (defined at forjar/src/derivation/mod.rs:{line}): invalid env key `A=B`: \
                 an environment variable name may not contain `=`"
            )
        );
    }

    #[test]
    fn invalid_parts_are_refused() {
        let err = |b: DerivationBuilder| b.build().unwrap_err().error.to_string();
        let base = || Derivation::builder("x").script("true");
        assert!(
            err(Derivation::builder("bad name").script("true")).contains("invalid name `bad name`")
        );
        assert!(err(Derivation::builder("x")).contains("has no builder"));
        assert!(err(base().builder(["/bin/true"])).contains("not both"));
        assert!(err(base().env("A", "1").env("A", "2")).contains("duplicate env var `A`"));
        assert!(err(base().output("out").output("out")).contains("duplicate output `out`"));
        assert!(err(base().output("dev-x")).contains("invalid output name `dev-x`"));
        assert!(
            err(base().file("../etc/passwd", "")).contains("invalid file path `../etc/passwd`")
        );
        assert!(err(base().ro_path("usr")).contains("invalid read-only path `usr`"));
        assert!(err(base().system("x86_64-darwin")).contains("unknown system"));
        assert!(err(base().network(true)).contains("declares no fixed-output digest"));
        assert!(
            err(base().fixed_output("sha256:abc"))
                .contains("invalid fixed-output digest `sha256:abc`")
        );
        assert!(err(Derivation::builder("x").builder(vec![b"/bin/\0sh".to_vec()])).contains("NUL"));
        assert!(
            err(base()
                .fixed_output(format!("blake3:{}", "0".repeat(64)))
                .output("dev"))
            .contains("exactly one output")
        );
        assert!(
            err(base()
                .env("src", "x")
                .input("src", Source::dir(".").unwrap()))
            .contains("is both")
        );
    }
}
