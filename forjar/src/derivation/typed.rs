//! What the DSL's macros implement and call: derivations made from Rust types, their typed
//! outputs, and the conversions of field and parameter values into inputs and env.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::panic::Location;
use std::path::{Path, PathBuf};

use super::{Derivation, DerivationBuilder, DerivationError, Drv, DrvId, Input, OutputRef, Source};
use crate::request::RequestError;
use crate::request::rules::FILE_FORMATS;

/// The outputs a kind of derivation declares, known when the program is compiled.
///
/// Implemented by `#[derive(Derivation)]` and `#[forjar::derivation]`; [`Drv<T>`] dereferences
/// to `T::Accessors`, so a handle has one method per declared output.
pub trait Outputs {
    /// One method per declared output, each returning an [`OutputRef`].
    type Accessors: Copy;
    /// The output a handle stands for when used as an input: the first declared.
    const DEFAULT: &'static str;
    /// The accessors of the handle `drv`.
    fn accessors(drv: DrvId) -> Self::Accessors;
}

/// A value that becomes a derivation when it is added to a [`Graph`](super::Graph).
///
/// `#[derive(Derivation)]` implements it; [`Derivation`] itself implements it too, so the builder
/// API and the DSL meet in [`Graph::add`](super::Graph::add).
pub trait IntoDerivation: Outputs {
    /// Makes the derivation. `location` is where it was added to the graph; it is recorded in
    /// `meta.yaml` and named in errors.
    fn into_derivation(
        self,
        location: &'static Location<'static>,
    ) -> Result<Derivation, DerivationError>;
}

/// The outputs of a derivation made with the builder API: only known at run time, so besides
/// [`out`](AnyOutputs::out) they are named with [`Drv::output`] and checked when planning.
#[derive(Debug, Clone, Copy)]
pub struct AnyOutputs(DrvId);

impl AnyOutputs {
    /// The default output, `out`.
    pub fn out(&self) -> OutputRef {
        OutputRef::new(self.0, "out")
    }
}

impl Outputs for Derivation {
    type Accessors = AnyOutputs;
    const DEFAULT: &'static str = "out";
    fn accessors(drv: DrvId) -> AnyOutputs {
        AnyOutputs(drv)
    }
}

impl IntoDerivation for Derivation {
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

impl IntoInput for Input {
    fn into_input(self) -> Option<Input> {
        Some(self)
    }
}

impl IntoInput for Source {
    fn into_input(self) -> Option<Input> {
        Some(Input::Source(self))
    }
}

impl IntoInput for &Source {
    fn into_input(self) -> Option<Input> {
        Some(Input::Source(self.clone()))
    }
}

impl IntoInput for OutputRef {
    fn into_input(self) -> Option<Input> {
        Some(Input::Output(self))
    }
}

impl IntoInput for &OutputRef {
    fn into_input(self) -> Option<Input> {
        Some(Input::Output(self.clone()))
    }
}

impl<T: Outputs> IntoInput for Drv<T> {
    fn into_input(self) -> Option<Input> {
        Some(Input::Output(self.default_output()))
    }
}

impl<T: Outputs> IntoInput for &Drv<T> {
    fn into_input(self) -> Option<Input> {
        Some(Input::Output(self.default_output()))
    }
}

impl<T: IntoInput> IntoInput for Option<T> {
    fn into_input(self) -> Option<Input> {
        self.and_then(IntoInput::into_input)
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

macro_rules! env_by_display {
    ($($ty:ty),+) => {$(
        impl IntoEnv for $ty {
            fn into_env(self) -> Option<Vec<u8>> {
                Some(self.to_string().into_bytes())
            }
        }
    )+};
}

env_by_display!(
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

impl IntoEnv for bool {
    fn into_env(self) -> Option<Vec<u8>> {
        Some(if self { b"1".to_vec() } else { Vec::new() })
    }
}

impl IntoEnv for Vec<u8> {
    fn into_env(self) -> Option<Vec<u8>> {
        Some(self)
    }
}

impl IntoEnv for &[u8] {
    fn into_env(self) -> Option<Vec<u8>> {
        Some(self.to_vec())
    }
}

impl IntoEnv for PathBuf {
    fn into_env(self) -> Option<Vec<u8>> {
        Some(self.into_os_string().into_vec())
    }
}

impl IntoEnv for &Path {
    fn into_env(self) -> Option<Vec<u8>> {
        Some(self.as_os_str().as_bytes().to_vec())
    }
}

impl IntoEnv for OsString {
    fn into_env(self) -> Option<Vec<u8>> {
        Some(self.into_vec())
    }
}

impl IntoEnv for &OsStr {
    fn into_env(self) -> Option<Vec<u8>> {
        Some(self.as_bytes().to_vec())
    }
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
    note = "inputs are `Source`, `Drv<T>` and `OutputRef`; env values are strings, paths, bytes, numbers, `bool` and `char`; either may be in an `Option`; structured data goes in a file: `#[forjar(file = \"name.json\")]`"
)]
pub trait Param {
    /// Adds the parameter to the derivation under `name`.
    fn add_to(self, name: &str, builder: DerivationBuilder) -> DerivationBuilder;
}

macro_rules! param_as {
    ($method:ident, $convert:path: $($ty:ty),+) => {$(
        impl Param for $ty {
            fn add_to(self, name: &str, builder: DerivationBuilder) -> DerivationBuilder {
                match $convert(self) {
                    Some(value) => builder.$method(name, value),
                    None => builder,
                }
            }
        }
    )+};
}

param_as!(input, IntoInput::into_input: Input, Source, &Source, OutputRef, &OutputRef);
param_as!(
    env, IntoEnv::into_env: String, &str, &String, Box<str>, Cow<'_, str>, char, bool, u8, u16,
    u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, Vec<u8>, &[u8], PathBuf, &Path,
    OsString, &OsStr
);

impl<T: Outputs> Param for Drv<T> {
    fn add_to(self, name: &str, builder: DerivationBuilder) -> DerivationBuilder {
        builder.input(name, self)
    }
}

impl<T: Outputs> Param for &Drv<T> {
    fn add_to(self, name: &str, builder: DerivationBuilder) -> DerivationBuilder {
        builder.input(name, self)
    }
}

impl<T: Param> Param for Option<T> {
    fn add_to(self, name: &str, builder: DerivationBuilder) -> DerivationBuilder {
        match self {
            Some(value) => value.add_to(name, builder),
            None => builder,
        }
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
