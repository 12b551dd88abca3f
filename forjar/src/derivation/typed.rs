//! What the DSL's macros implement and call: derivations made from Rust types, their typed
//! outputs, and the conversions of field and parameter values into inputs and env.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::panic::Location;
use std::path::{Path, PathBuf};

use super::{Derivation, DerivationBuilder, DerivationError, Drv, DrvId, Input, OutputRef, Source};
use crate::name::rules::FILE_FORMATS;
use crate::request::RequestError;
use crate::toolchain::Toolchain;

/// A value that becomes a derivation when it is added to a [`Graph`](super::Graph), with the
/// outputs it declares, known when the program is compiled.
///
/// `#[derive(Derivation)]` implements it; so does [`Derivation`] itself, so that the builder
/// API and the DSL meet in [`Graph::add`](super::Graph::add); and so does the handle type a
/// `#[forjar::derivation]` fn names, which is never a value. [`Drv<T>`] dereferences to
/// `T::Accessors`, so a handle has one method per declared output.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a derivation",
    label = "not a derivation",
    note = "derive one: `#[derive(Derivation)]` on the struct, with `#[forjar(script = \"...\")]`; or build one with `Derivation::builder(\"name\").script(\"...\").build()?`"
)]
pub trait IntoDerivation {
    /// One method per declared output, each returning an [`OutputRef`].
    type Accessors: Copy + From<DrvId>;
    /// The output a handle stands for when used as an input: the first declared.
    const DEFAULT: &'static str;

    /// Makes the derivation. `location` is where it was added to the graph; it is recorded in
    /// `meta.yaml` and named in errors.
    fn into_derivation(
        self,
        location: &'static Location<'static>,
    ) -> Result<Derivation, DerivationError>;
}

/// The accessor of a derivation whose only declared output is `out`: every derived type that
/// declares no other, and the builder API's derivations, whose outputs are only known at run
/// time (their others are named with [`Drv::output`] and checked when planning).
#[derive(Debug, Clone, Copy)]
pub struct DefaultOutputs(DrvId);

impl DefaultOutputs {
    /// The default output, `out`.
    pub fn out(&self) -> OutputRef {
        OutputRef::new(self.0, "out")
    }
}

impl From<DrvId> for DefaultOutputs {
    fn from(drv: DrvId) -> Self {
        DefaultOutputs(drv)
    }
}

impl IntoDerivation for Derivation {
    type Accessors = DefaultOutputs;
    const DEFAULT: &'static str = "out";

    /// A built derivation keeps the location of its `Derivation::builder` call.
    fn into_derivation(self, _: &'static Location<'static>) -> Result<Derivation, DerivationError> {
        Ok(self)
    }
}

/// A value that can be an input of a derivation: the type of a `#[forjar(input)]` field.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an input of a derivation",
    label = "not an input",
    note = "an input is a `Source`, a `Drv<T>`, an `OutputRef`, or an `Option` of one; a value the script reads is `#[forjar(env)]`"
)]
pub trait IntoInput {
    /// The input, or `None` to leave it out.
    fn into_input(self) -> Option<Input>;
}

/// The type of a `#[forjar(input)]` field: one input (or an `Option` of one), or a list of them
/// (a `Vec`, an array, or a map by name), which the script sees as one variable.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an input of a derivation",
    label = "not an input",
    note = "an input is a `Source`, a `Drv<T>`, an `OutputRef`, an `Option` of one, or a `Vec`, array or map of them; a value the script reads is `#[forjar(env)]`"
)]
pub trait InputField {
    /// The field as a part of the derivation, under `name`.
    fn into_input_part(self, name: &'static str) -> Part;
}

/// `IntoInput` (through `Input`'s `From`), `InputField` and `Param` for each input type.
macro_rules! input_types {
    ($(impl$(<$g:ident>)? for $ty:ty;)+) => {$(
        impl$(<$g: IntoDerivation>)? IntoInput for $ty {
            fn into_input(self) -> Option<Input> {
                Some(Input::from(self))
            }
        }

        impl$(<$g: IntoDerivation>)? InputField for $ty {
            fn into_input_part(self, name: &'static str) -> Part {
                Part::Input(name, self.into_input())
            }
        }

        impl$(<$g: IntoDerivation>)? Param for $ty {
            fn into_part(self, name: &'static str) -> Part {
                Part::Input(name, self.into_input())
            }
        }
    )+};
}

/// A list of inputs, each `name_<i>` (`name_<key>` in a map), their paths in `$name`.
fn listed<T: IntoInput>(
    name: &'static str,
    members: impl IntoIterator<Item = (String, T)>,
) -> Part {
    Part::Inputs(
        name,
        members
            .into_iter()
            .filter_map(|(suffix, member)| Some((suffix, member.into_input()?)))
            .collect(),
    )
}

/// `InputField` and `Param` for the list types.
macro_rules! input_lists {
    ($(impl<$($g:ident $(: $bound:path)?),*> for $ty:ty => |$value:ident| $members:expr;)+) => {$(
        impl<$($g $(: $bound)?),*> InputField for $ty {
            fn into_input_part(self, name: &'static str) -> Part {
                let $value = self;
                listed(name, $members)
            }
        }

        impl<$($g $(: $bound)?),*> Param for $ty {
            fn into_part(self, name: &'static str) -> Part {
                let $value = self;
                listed(name, $members)
            }
        }
    )+};
}

input_lists! {
    impl<T: IntoInput> for Vec<T> =>
        |value| value.into_iter().enumerate().map(|(i, m)| (i.to_string(), m));
    impl<K: std::fmt::Display, T: IntoInput> for std::collections::BTreeMap<K, T> =>
        |value| value.into_iter().map(|(k, m)| (k.to_string(), m));
}

impl<T: IntoInput, const N: usize> InputField for [T; N] {
    fn into_input_part(self, name: &'static str) -> Part {
        listed(
            name,
            self.into_iter()
                .enumerate()
                .map(|(i, m)| (i.to_string(), m)),
        )
    }
}

/// A `HashMap`'s members in the order of their keys, so that the key does not depend on the
/// map's iteration order.
impl<K: std::fmt::Display, T: IntoInput, S> InputField for std::collections::HashMap<K, T, S> {
    fn into_input_part(self, name: &'static str) -> Part {
        let mut members: Vec<(String, T)> =
            self.into_iter().map(|(k, m)| (k.to_string(), m)).collect();
        members.sort_by(|a, b| a.0.cmp(&b.0));
        listed(name, members)
    }
}

input_types! {
    impl for Input;
    impl for Source;
    impl for &Source;
    impl for OutputRef;
    impl for &OutputRef;
    impl<T> for Drv<T>;
    impl<T> for &Drv<T>;
}

impl<T: IntoInput> IntoInput for Option<T> {
    fn into_input(self) -> Option<Input> {
        self.and_then(IntoInput::into_input)
    }
}

impl<T: IntoInput> InputField for Option<T> {
    fn into_input_part(self, name: &'static str) -> Part {
        Part::Input(name, self.into_input())
    }
}

/// A value that can be an environment variable of a build: the type of a `#[forjar(env)]`
/// field. Values are bytes; `true` is `1` and `false` the empty string, as in Nix.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an environment variable of a build",
    label = "not an env value",
    note = "env values are strings, paths, bytes, numbers, `bool` and `char`, or an `Option` of one (left out when `None`); structured data goes in a file: `#[forjar(file = \"name.json\")]`"
)]
pub trait IntoEnv {
    /// The value's bytes, or `None` to leave the variable out.
    fn into_env(self) -> Option<Vec<u8>>;
}

/// `IntoEnv` and `Param` for each env value type, with the value's bytes.
macro_rules! env_types {
    ($($ty:ty => |$value:ident| $bytes:expr;)+) => {$(
        impl IntoEnv for $ty {
            fn into_env(self) -> Option<Vec<u8>> {
                let $value = self;
                Some($bytes)
            }
        }

        impl Param for $ty {
            fn into_part(self, name: &'static str) -> Part {
                Part::Env(name, self.into_env())
            }
        }
    )+};
}

/// `env_types!` for types whose bytes are their `Display` text.
macro_rules! env_types_by_display {
    ($($ty:ty),+) => {
        env_types! { $($ty => |value| value.to_string().into_bytes();)+ }
    };
}

env_types_by_display!(
    String,
    &str,
    &String,
    Box<str>,
    Cow<'_, str>,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize
);

env_types! {
    bool => |value| if value { b"1".to_vec() } else { Vec::new() };
    Vec<u8> => |value| value;
    &[u8] => |value| value.to_vec();
    PathBuf => |value| value.into_os_string().into_vec();
    &Path => |value| value.as_os_str().as_bytes().to_vec();
    OsString => |value| value.into_vec();
    &OsStr => |value| value.as_bytes().to_vec();
}

impl<T: IntoEnv> IntoEnv for Option<T> {
    fn into_env(self) -> Option<Vec<u8>> {
        self.and_then(IntoEnv::into_env)
    }
}

/// A parameter of a `#[forjar::derivation]` fn: an input or an env var, decided by its type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a parameter of a derivation fn",
    label = "neither an input nor an env value",
    note = "inputs are `Source`, `Drv<T>` and `OutputRef`; env values are strings, paths, bytes, numbers, `bool` and `char`; either may be in an `Option`; a `Toolchain` gives the build its tools; structured data goes in a file: `#[forjar(file = \"name.json\")]`"
)]
pub trait Param {
    /// The parameter as a part of the derivation, under `name`.
    fn into_part(self, name: &'static str) -> Part;
}

/// One value-given part of a derived derivation, as the macros' expansions hand it over.
#[derive(Debug)]
pub enum Part {
    /// An input (left out when `None`).
    Input(&'static str, Option<Input>),
    /// A list of inputs, each with the suffix of its input's name (`0`, or a map's key).
    Inputs(&'static str, Vec<(String, Input)>),
    /// An env var (left out when `None`).
    Env(&'static str, Option<Vec<u8>>),
    /// A file rendered into the build directory.
    File(&'static str, Result<Vec<u8>, RequestError>),
    /// The toolchain (left out when `None`).
    Toolchain(Option<Toolchain>),
}

/// What a `#[forjar(toolchain)]` field holds: a [`Toolchain`], or an `Option` of one.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the toolchain of a build",
    label = "not a `Toolchain`",
    note = "a toolchain field holds a `forjar::Toolchain` (or a reference to one, or an `Option` of one): `Toolchain::from_host(\"cc\", [\"gcc\"])?`"
)]
pub trait IntoToolchain {
    /// The toolchain, or `None` for none.
    fn into_toolchain(self) -> Option<Toolchain>;
}

impl IntoToolchain for Toolchain {
    fn into_toolchain(self) -> Option<Toolchain> {
        Some(self)
    }
}

impl IntoToolchain for &Toolchain {
    fn into_toolchain(self) -> Option<Toolchain> {
        Some(self.clone())
    }
}

impl<T: IntoToolchain> IntoToolchain for Option<T> {
    fn into_toolchain(self) -> Option<Toolchain> {
        self.and_then(IntoToolchain::into_toolchain)
    }
}

impl Param for Toolchain {
    fn into_part(self, _name: &'static str) -> Part {
        Part::Toolchain(Some(self))
    }
}

impl Param for &Toolchain {
    fn into_part(self, _name: &'static str) -> Part {
        Part::Toolchain(Some(self.clone()))
    }
}

impl<T: Param> Param for Option<T> {
    fn into_part(self, name: &'static str) -> Part {
        match self {
            Some(value) => value.into_part(name),
            // Either kind, left out: the name alone is not part of the derivation.
            None => Part::Env(name, None),
        }
    }
}

/// What a derived type says about its derivation at compile time, as data: the macros expand
/// to one of these and one call of [`Spec::derive`], so that the code each derivation adds to
/// a program is small to compile. It is a value in the body, not a `const` item, which the
/// compiler would evaluate once per derivation (`bench/dsl-check`).
#[derive(Debug)]
pub struct Spec {
    /// The name, unless a `name` field gives one.
    pub name: &'static str,
    /// The script, if any.
    pub script: Option<&'static str>,
    /// The builder argv, if any.
    pub builder: Option<&'static [&'static str]>,
    /// The outputs; empty for just `out`.
    pub outputs: &'static [&'static str],
    /// The system, unless this host's.
    pub system: Option<&'static str>,
    /// The sandbox level.
    pub sandbox: crate::request::SandboxLevel,
    /// The fixed-output digest.
    pub fixed_output: Option<&'static str>,
    /// What a SHA-256 fixed-output digest covers.
    pub fixed_output_mode: Option<crate::request::HashMode>,
    /// Network access.
    pub network: bool,
    /// A `/bin/sh` in the sandbox.
    pub provide_bin_sh: bool,
    /// Host paths bound read-only.
    pub ro_paths: &'static [&'static str],
    /// Wall-clock limit in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Silence limit in milliseconds.
    pub max_silent_ms: Option<u64>,
    /// Memory cap in bytes.
    pub memory: Option<u64>,
    /// CPUs.
    pub cpus: Option<u32>,
}

impl Spec {
    /// A spec with everything at its default; expansions set what their attributes give.
    pub const DEFAULT: Spec = Spec {
        name: "",
        script: None,
        builder: None,
        outputs: &[],
        system: None,
        sandbox: crate::request::SandboxLevel::Hermetic,
        fixed_output: None,
        fixed_output_mode: None,
        network: false,
        provide_bin_sh: false,
        ro_paths: &[],
        timeout_ms: None,
        max_silent_ms: None,
        memory: None,
        cpus: None,
    };

    /// The derivation made of this spec and the parts given at run time.
    pub fn derive<const N: usize>(
        &self,
        name: Option<String>,
        location: &'static Location<'static>,
        parts: [Part; N],
    ) -> Result<Derivation, DerivationError> {
        // The work is in a non-generic fn, compiled once here rather than per `N` in each
        // program.
        self.derive_parts(name, location, Vec::from(parts))
    }

    fn derive_parts(
        &self,
        name: Option<String>,
        location: &'static Location<'static>,
        parts: Vec<Part>,
    ) -> Result<Derivation, DerivationError> {
        let mut b = DerivationBuilder::new(name.unwrap_or_else(|| self.name.to_string()), location)
            .sandbox(self.sandbox)
            .network(self.network)
            .provide_bin_sh(self.provide_bin_sh);
        if let Some(script) = self.script {
            b = b.script(script);
            // The macro checked it against the declaration, on the user's tokens.
            b.script_checked = true;
        }
        if let Some(argv) = self.builder {
            b = b.builder(argv.iter().copied());
        }
        for output in self.outputs {
            b = b.output(*output);
        }
        if let Some(system) = self.system {
            b = b.system(system);
        }
        if let Some(digest) = self.fixed_output {
            b = b.fixed_output(digest);
        }
        if let Some(mode) = self.fixed_output_mode {
            b = b.fixed_output_mode(mode);
        }
        for path in self.ro_paths {
            b = b.ro_path(*path);
        }
        if let Some(ms) = self.timeout_ms {
            b = b.timeout(std::time::Duration::from_millis(ms));
        }
        if let Some(ms) = self.max_silent_ms {
            b = b.max_silent(std::time::Duration::from_millis(ms));
        }
        if let Some(bytes) = self.memory {
            b = b.memory_limit(bytes);
        }
        if let Some(cpus) = self.cpus {
            b = b.cpus(cpus);
        }
        for part in parts {
            b = match part {
                Part::Input(name, Some(input)) => b.input(name, input),
                Part::Env(name, Some(value)) => b.env(name, value),
                Part::Input(_, None) | Part::Env(_, None) => b,
                Part::Inputs(name, members) => b.input_list(
                    name.to_string(),
                    members
                        .into_iter()
                        .map(|(suffix, input)| (format!("{name}_{suffix}"), input))
                        .collect(),
                ),
                Part::File(path, contents) => b.rendered(path, contents),
                Part::Toolchain(Some(toolchain)) => b.toolchain(&toolchain),
                Part::Toolchain(None) => b,
            };
        }
        b.build()
    }
}

/// Renders `value` in the format its path's extension names (see [`FILE_FORMATS`]). The output
/// is deterministic: fields in declaration order, maps as the value iterates them (use a
/// `BTreeMap` for sorted keys), and a final newline.
pub fn render_file<T: serde::Serialize + ?Sized>(
    path: &str,
    value: &T,
) -> Result<Vec<u8>, RequestError> {
    let extension = Path::new(path)
        .extension()
        .and_then(OsStr::to_str)
        .unwrap_or("");
    let error = |format: &'static str, reason: String| RequestError::Render {
        path: path.to_string(),
        format,
        reason,
    };
    let mut text = match extension {
        "json" => serde_json::to_string_pretty(value).map_err(|e| error("JSON", e.to_string()))?,
        "toml" => toml::to_string_pretty(value).map_err(|e| error("TOML", e.to_string()))?,
        "yaml" | "yml" => {
            serde_yaml_ng::to_string(value).map_err(|e| error("YAML", e.to_string()))?
        }
        _ => {
            return Err(error(
                "a known format",
                format!(
                    "the format is chosen by the extension, one of {}",
                    FILE_FORMATS.join(", ")
                ),
            ));
        }
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text.into_bytes())
}
