//! Parses `#[forjar(...)]` attributes. Each value is checked on its own here, against the
//! shared rules; the rules that involve several attributes are in `check.rs`. Parsers record
//! errors in the `Ctxt` and carry on, so one compile shows every mistake.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Lit, LitStr, Token};

use crate::ctxt::Ctxt;
use crate::rules;
use crate::rules::suggest::did_you_mean;
use crate::symbol::{self, *};

/// One attribute's value, with the tokens it came from, so that errors about it point there.
pub struct Attr<T> {
    name: Symbol,
    tokens: TokenStream,
    value: Option<T>,
}

impl<T> Attr<T> {
    fn none(name: Symbol) -> Self {
        Attr {
            name,
            tokens: TokenStream::new(),
            value: None,
        }
    }

    fn set(&mut self, cx: &Ctxt, at: &syn::Path, tokens: TokenStream, value: T) {
        if self.value.is_some() {
            cx.error_spanned_by(at, format!("duplicate forjar attribute `{}`", self.name));
        } else {
            self.tokens = tokens;
            self.value = Some(value);
        }
    }

    pub fn get(&self) -> Option<&T> {
        self.value.as_ref()
    }

    /// The tokens of the value, for error spans; empty when unset.
    pub fn tokens(&self) -> &TokenStream {
        &self.tokens
    }
}

/// A sandbox level, as the runtime's `SandboxLevel` variant name.
pub enum Level {
    Hermetic,
    HostTools,
}

/// The container attributes: on the struct of `#[derive(Derivation)]`, or the arguments of
/// `#[forjar::derivation(...)]`.
pub struct Container {
    pub script: Attr<LitStr>,
    pub builder: Attr<Vec<LitStr>>,
    pub outputs: Attr<Vec<LitStr>>,
    pub system: Attr<LitStr>,
    pub sandbox: Attr<Level>,
    pub fixed_output: Attr<LitStr>,
    /// `true` for `recursive`.
    pub fixed_output_mode: Attr<bool>,
    pub network: Attr<bool>,
    pub provide_bin_sh: Attr<bool>,
    pub ro_paths: Attr<Vec<LitStr>>,
    pub timeout: Attr<u64>,
    pub max_silent: Attr<u64>,
    pub memory: Attr<u64>,
    pub cpus: Attr<u32>,
    pub name: Attr<LitStr>,
    pub allow_impure: Attr<bool>,
    /// Some attribute was refused; the rules that would only repeat that error are skipped.
    pub broken: bool,
}

impl Container {
    pub fn new() -> Self {
        Container {
            script: Attr::none(SCRIPT),
            builder: Attr::none(BUILDER),
            outputs: Attr::none(OUTPUTS),
            system: Attr::none(SYSTEM),
            sandbox: Attr::none(SANDBOX),
            fixed_output: Attr::none(FIXED_OUTPUT),
            fixed_output_mode: Attr::none(FIXED_OUTPUT_MODE),
            network: Attr::none(NETWORK),
            provide_bin_sh: Attr::none(PROVIDE_BIN_SH),
            ro_paths: Attr::none(RO_PATHS),
            timeout: Attr::none(TIMEOUT),
            max_silent: Attr::none(MAX_SILENT),
            memory: Attr::none(MEMORY),
            cpus: Attr::none(CPUS),
            name: Attr::none(NAME),
            allow_impure: Attr::none(ALLOW_IMPURE),
            broken: false,
        }
    }

    /// The script of a derivation fn, which is its body.
    pub fn set_script(&mut self, script: LitStr) {
        self.script.tokens = script.to_token_stream();
        self.script.value = Some(script);
    }

    /// Reads every `#[forjar(...)]` among `attrs`.
    pub fn from_attrs(cx: &Ctxt, attrs: &[syn::Attribute]) -> Self {
        let errors_before = cx.error_count();
        let mut container = Container::new();
        for attr in attrs.iter().filter(|a| a.path() == FORJAR) {
            if let Err(error) = attr.parse_nested_meta(|meta| container.parse_one(cx, meta)) {
                cx.syn_error(error);
            }
        }
        container.broken = cx.error_count() > errors_before;
        container
    }

    /// Parses one `key = value` or flag; records its errors and returns `Err` only when the
    /// tokens cannot be read at all.
    pub fn parse_one(&mut self, cx: &Ctxt, meta: ParseNestedMeta) -> syn::Result<()> {
        let path = meta.path.clone();
        let key = path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        let Some(&symbol) = symbol::CONTAINER.iter().find(|s| s.0 == key) else {
            let field_attr = symbol::FIELD.iter().any(|s| s.0 == key);
            let hint = if field_attr {
                format!("; `{key}` is an attribute of a field, not of the derivation")
            } else {
                did_you_mean(&key, symbol::CONTAINER.iter().map(|s| s.0))
            };
            cx.error_spanned_by(
                &path,
                format!(
                    "unknown forjar attribute `{}`{hint}; a derivation takes {}",
                    path.to_token_stream(),
                    symbol::list(symbol::CONTAINER)
                ),
            );
            return skip_value(&meta);
        };
        match symbol {
            SCRIPT => {
                if let Some(lit) = lit_str(cx, &meta, SCRIPT, "script = \"...\"")? {
                    self.script.set(cx, &path, lit.to_token_stream(), lit);
                }
            }
            BUILDER => {
                if let Some((tokens, argv)) = str_list(
                    cx,
                    &meta,
                    BUILDER,
                    "builder = [\"/path/to/program\", \"arg\"]",
                )? {
                    if argv.is_empty() {
                        cx.error_spanned_by(&tokens, "`builder` needs at least the program");
                    }
                    self.builder.set(cx, &path, tokens, argv);
                }
            }
            OUTPUTS => {
                if let Some((tokens, outputs)) =
                    str_list(cx, &meta, OUTPUTS, "outputs = [\"out\", \"dev\"]")?
                {
                    if outputs.is_empty() {
                        cx.error_spanned_by(
                            &tokens,
                            "`outputs` may not be empty; leave it out for just `out`",
                        );
                    }
                    self.outputs.set(cx, &path, tokens, outputs);
                }
            }
            SYSTEM => {
                if let Some(lit) = lit_str(cx, &meta, SYSTEM, "system = \"x86_64-linux\"")? {
                    if let Err(reason) = rules::system(&lit.value()) {
                        cx.error_spanned_by(&lit, invalid("system", &lit, &reason));
                    }
                    self.system.set(cx, &path, lit.to_token_stream(), lit);
                }
            }
            SANDBOX => {
                if let Some(lit) = lit_str(cx, &meta, SANDBOX, "sandbox = \"host-tools\"")? {
                    let level = match lit.value().as_str() {
                        "hermetic" => Some(Level::Hermetic),
                        "host-tools" => Some(Level::HostTools),
                        other => {
                            cx.error_spanned_by(
                                &lit,
                                format!(
                                    "unknown sandbox level `{other}`; the levels are {}{}",
                                    symbol_list(rules::SANDBOX_LEVELS),
                                    did_you_mean(other, rules::SANDBOX_LEVELS.iter().copied())
                                ),
                            );
                            None
                        }
                    };
                    if let Some(level) = level {
                        self.sandbox.set(cx, &path, lit.to_token_stream(), level);
                    }
                }
            }
            FIXED_OUTPUT => {
                if let Some(lit) = lit_str(
                    cx,
                    &meta,
                    FIXED_OUTPUT,
                    "fixed_output = \"sha256-<base64>\"",
                )? {
                    if let Err(reason) = rules::fixed_digest(&lit.value()) {
                        cx.error_spanned_by(&lit, invalid("fixed-output digest", &lit, &reason));
                    }
                    self.fixed_output.set(cx, &path, lit.to_token_stream(), lit);
                }
            }
            FIXED_OUTPUT_MODE => {
                if let Some(lit) = lit_str(
                    cx,
                    &meta,
                    FIXED_OUTPUT_MODE,
                    "fixed_output_mode = \"recursive\"",
                )? {
                    let recursive = match lit.value().as_str() {
                        "flat" => Some(false),
                        "recursive" => Some(true),
                        other => {
                            cx.error_spanned_by(
                                &lit,
                                format!(
                                    "unknown fixed-output mode `{}`: the modes are `flat` (the output is one file) and `recursive` (its NAR serialisation, as Nix's `outputHashMode`){}",
                                    other.escape_debug(),
                                    did_you_mean(other, ["flat", "recursive"].into_iter())
                                ),
                            );
                            None
                        }
                    };
                    if let Some(recursive) = recursive {
                        self.fixed_output_mode
                            .set(cx, &path, lit.to_token_stream(), recursive);
                    }
                }
            }
            NETWORK => {
                if let Some((tokens, on)) = flag(cx, &meta)? {
                    self.network.set(cx, &path, tokens, on);
                }
            }
            PROVIDE_BIN_SH => {
                if let Some((tokens, on)) = flag(cx, &meta)? {
                    self.provide_bin_sh.set(cx, &path, tokens, on);
                }
            }
            ALLOW_IMPURE => {
                if let Some((tokens, on)) = flag(cx, &meta)? {
                    self.allow_impure.set(cx, &path, tokens, on);
                }
            }
            RO_PATHS => {
                if let Some((tokens, paths)) =
                    str_list(cx, &meta, RO_PATHS, "ro_paths = [\"/etc/ssl/certs\"]")?
                {
                    for lit in &paths {
                        if let Err(reason) = rules::abs_path(&lit.value()) {
                            cx.error_spanned_by(lit, invalid("read-only path", lit, &reason));
                        }
                    }
                    self.ro_paths.set(cx, &path, tokens, paths);
                }
            }
            TIMEOUT | MAX_SILENT => {
                if let Some(lit) = lit_str(cx, &meta, symbol, &format!("{symbol} = \"10m\""))? {
                    match rules::duration(&lit.value()) {
                        Ok(d) => {
                            let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                            let attr = if symbol == TIMEOUT {
                                &mut self.timeout
                            } else {
                                &mut self.max_silent
                            };
                            attr.set(cx, &path, lit.to_token_stream(), millis);
                        }
                        Err(reason) => {
                            cx.error_spanned_by(&lit, invalid("duration", &lit, &reason));
                        }
                    }
                }
            }
            MEMORY => {
                if let Some(lit) = lit_str(cx, &meta, MEMORY, "memory = \"2GiB\"")? {
                    match rules::size(&lit.value()) {
                        Ok(bytes) => self.memory.set(cx, &path, lit.to_token_stream(), bytes),
                        Err(reason) => cx.error_spanned_by(&lit, invalid("size", &lit, &reason)),
                    }
                }
            }
            CPUS => {
                let value: Expr = meta.value()?.parse()?;
                match &value {
                    Expr::Lit(ExprLit {
                        lit: Lit::Int(int), ..
                    }) => match int.base10_parse::<u32>() {
                        Ok(0) | Err(_) => {
                            cx.error_spanned_by(int, "`cpus` is a whole number of CPUs, at least 1")
                        }
                        Ok(n) => self.cpus.set(cx, &path, int.to_token_stream(), n),
                    },
                    _ => cx.error_spanned_by(&value, "`cpus` takes a number: cpus = 2"),
                }
            }
            NAME => {
                if let Some(lit) = lit_str(cx, &meta, NAME, "name = \"hello\"")? {
                    if let Err(reason) = rules::name(&lit.value()) {
                        cx.error_spanned_by(&lit, invalid("name", &lit, &reason));
                    }
                    self.name.set(cx, &path, lit.to_token_stream(), lit);
                }
            }
            _ => unreachable!("every container symbol has an arm"),
        }
        Ok(())
    }
}

/// What a field (or a fn parameter) is to the derivation.
pub enum Kind {
    /// An input, under its own name or the one given.
    Input(Option<LitStr>),
    /// An env var, under its own name or the one given.
    Env(Option<LitStr>),
    /// A file in the build directory rendered from the value.
    File(LitStr),
    /// The tools the build runs.
    Toolchain,
    /// The derivation's name.
    Name,
    /// Not part of the derivation.
    Skip,
}

impl Kind {
    fn symbol(&self) -> Symbol {
        match self {
            Kind::Input(_) => INPUT,
            Kind::Env(_) => ENV,
            Kind::File(_) => FILE,
            Kind::Toolchain => TOOLCHAIN,
            Kind::Name => NAME,
            Kind::Skip => SKIP,
        }
    }
}

/// Reads the `#[forjar(...)]` of one field or parameter; `allowed` is what may appear there.
pub fn field_kind(
    cx: &Ctxt,
    attrs: &[syn::Attribute],
    allowed: &[Symbol],
    what: &str,
) -> FieldKind {
    let errors_before = cx.error_count();
    let mut kind: Option<(Kind, Span)> = None;
    for attr in attrs.iter().filter(|a| a.path() == FORJAR) {
        let parsed = attr.parse_nested_meta(|meta| {
            let path = meta.path.clone();
            let key = path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            let Some(&symbol) = allowed.iter().find(|s| s.0 == key) else {
                let hint = if symbol::CONTAINER.iter().any(|s| s.0 == key) {
                    format!("; `{key}` is an attribute of the derivation, not of a {what}")
                } else if ["rename", "alias", "as"].contains(&key.as_str()) {
                    // `name` would be a near miss that means something else.
                    "; a variable is named after its field, or after what `input = \"name\"` \
                     or `env = \"NAME\"` gives"
                        .to_string()
                } else {
                    did_you_mean(&key, allowed.iter().map(|s| s.0))
                };
                cx.error_spanned_by(
                    &path,
                    format!(
                        "unknown forjar attribute `{}` on a {what}{hint}; a {what} takes {}",
                        path.to_token_stream(),
                        symbol::list(allowed)
                    ),
                );
                return skip_value(&meta);
            };
            let new = match symbol {
                INPUT | ENV => {
                    let rename = if meta.input.peek(Token![=]) {
                        lit_str(cx, &meta, symbol, &format!("{symbol} = \"name\""))?
                    } else {
                        None
                    };
                    if symbol == INPUT {
                        Kind::Input(rename)
                    } else {
                        Kind::Env(rename)
                    }
                }
                FILE => match lit_str(cx, &meta, FILE, "file = \"config.json\"")? {
                    Some(lit) => Kind::File(lit),
                    None => return Ok(()),
                },
                TOOLCHAIN => Kind::Toolchain,
                NAME => Kind::Name,
                SKIP => Kind::Skip,
                _ => unreachable!("every field symbol has an arm"),
            };
            match &kind {
                Some((old, _)) if old.symbol() == symbol => {
                    cx.error_spanned_by(&path, format!("duplicate forjar attribute `{symbol}`"));
                }
                Some((old, _)) => cx.error_spanned_by(
                    &path,
                    format!(
                        "a {what} is one thing: `{}` and `{symbol}` cannot both be given",
                        old.symbol()
                    ),
                ),
                None => kind = Some((new, path.span())),
            }
            Ok(())
        });
        if let Err(error) = parsed {
            cx.syn_error(error);
        }
    }
    if cx.error_count() > errors_before {
        Err(())
    } else {
        Ok(kind)
    }
}

/// What the attributes of a field say it is: nothing given (`Ok(None)`), or `Err` when they
/// were refused (the error is recorded).
pub type FieldKind = Result<Option<(Kind, Span)>, ()>;

fn invalid(what: &str, lit: &LitStr, reason: &str) -> String {
    format!("invalid {what} `{}`: {reason}", lit.value().escape_debug())
}

fn symbol_list(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("`{v}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `key = "string"`; records an error naming the expected form otherwise.
fn lit_str(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    key: Symbol,
    example: &str,
) -> syn::Result<Option<LitStr>> {
    if !meta.input.peek(Token![=]) {
        cx.error_spanned_by(&meta.path, format!("`{key}` takes a string: {example}"));
        skip_value(meta)?;
        return Ok(None);
    }
    let value: Expr = meta.value()?.parse()?;
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(Some(lit)),
        other => {
            cx.error_spanned_by(&other, format!("`{key}` takes a string literal: {example}"));
            Ok(None)
        }
    }
}

/// `key = ["a", "b"]`.
fn str_list(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    key: Symbol,
    example: &str,
) -> syn::Result<Option<(TokenStream, Vec<LitStr>)>> {
    if !meta.input.peek(Token![=]) {
        cx.error_spanned_by(&meta.path, format!("`{key}` takes a list: {example}"));
        skip_value(meta)?;
        return Ok(None);
    }
    let value: Expr = meta.value()?.parse()?;
    let Expr::Array(array) = &value else {
        cx.error_spanned_by(
            &value,
            format!("`{key}` takes a list of string literals: {example}"),
        );
        return Ok(None);
    };
    let mut items = Vec::new();
    for element in &array.elems {
        match element {
            Expr::Lit(ExprLit {
                lit: Lit::Str(lit), ..
            }) => items.push(lit.clone()),
            other => cx.error_spanned_by(
                other,
                format!("`{key}` takes a list of string literals: {example}"),
            ),
        }
    }
    Ok(Some((value.to_token_stream(), items)))
}

/// A flag: `network` alone, or `network = true|false`. Anything else after `=` is an error
/// saying so, and the value is skipped, so the rest of the attribute is still read.
fn flag(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Option<(TokenStream, bool)>> {
    if !meta.input.peek(Token![=]) {
        return Ok(Some((meta.path.to_token_stream(), true)));
    }
    let value: Expr = meta.value()?.parse()?;
    match &value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(Some((value.to_token_stream(), b.value))),
        other => {
            let key = meta.path.to_token_stream();
            cx.error_spanned_by(
                other,
                format!("`{key}` is a flag: write `{key}` alone, or `{key} = true` or `false`"),
            );
            Ok(None)
        }
    }
}

/// Skips the value of an attribute that was refused, so parsing goes on with the next one.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        let _: Expr = meta.value()?.parse()?;
    } else if meta.input.peek(syn::token::Paren) {
        let _: proc_macro2::Group = meta.input.parse()?;
    }
    Ok(())
}
