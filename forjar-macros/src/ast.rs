//! The macros' view of a derivation: the container attributes and what each field or parameter
//! is, each keeping the user's tokens so errors can point at them.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Type};

use crate::attr::{self, Container, Kind};
use crate::ctxt::Ctxt;
use crate::symbol;

/// A derivation as the macros see it.
pub struct Derivation<'a> {
    /// The struct, or the handle type of a derivation fn.
    pub ident: Ident,
    pub generics: syn::Generics,
    /// The name when no `name` attribute or field gives one: the type or fn name, kebab-cased.
    pub default_name: String,
    pub attrs: Container,
    pub vars: Vec<Var<'a>>,
    /// Where to point errors about the derivation as a whole.
    pub span: Span,
}

/// A field of the struct, or a parameter of the fn.
pub struct Var<'a> {
    /// How the expansion reads the value: `self.src`, or the parameter `src`.
    pub access: TokenStream,
    /// The Rust name, for messages.
    pub rust_name: String,
    pub ty: &'a Type,
    pub role: Role,
    /// The field or parameter as written.
    pub original: &'a dyn ToTokens,
}

/// What a value is to the derivation, with the name it has in the build environment.
pub enum Role {
    Input(Named),
    Env(Named),
    /// A parameter of a derivation fn: an input or an env var, as its type decides.
    Param(Named),
    File(LitStr),
    Toolchain,
    Name,
    Skip,
    /// No attribute on a struct field; an error, reported by `check`.
    Missing,
    /// An attribute that was refused; its error is reported already.
    Invalid,
}

/// A name in the build environment, and the tokens that gave it.
pub struct Named {
    pub name: String,
    pub span: Span,
}

/// The kinds of variable a derivation's values become in the build environment.
#[derive(Clone, Copy, PartialEq)]
pub enum VarKind {
    Input,
    Env,
    Param,
}

impl VarKind {
    /// As listed in messages: "`src` (input)".
    pub fn label(self) -> &'static str {
        match self {
            VarKind::Input => "input",
            VarKind::Env => "env",
            VarKind::Param => "parameter",
        }
    }

    /// As named in a sentence: "`x` is both an input and an env var".
    pub fn article(self) -> &'static str {
        match self {
            VarKind::Input => "an input",
            VarKind::Env => "an env var",
            VarKind::Param => "a parameter",
        }
    }

    /// The rule its name follows: any env key for env vars; inputs (and parameters, which may
    /// be inputs) are shell identifiers.
    pub fn check_name(self, name: &str) -> Result<(), String> {
        match self {
            VarKind::Env => crate::rules::env_key(name),
            VarKind::Input | VarKind::Param => crate::rules::identifier(name),
        }
    }
}

impl Role {
    /// The build environment name and kind of variable, if the value is one.
    pub fn variable(&self) -> Option<(&Named, VarKind)> {
        match self {
            Role::Input(n) => Some((n, VarKind::Input)),
            Role::Env(n) => Some((n, VarKind::Env)),
            Role::Param(n) => Some((n, VarKind::Param)),
            _ => None,
        }
    }
}

/// `HelloBundle` -> `hello-bundle`, `NotATable` -> `not-a-table`, `hello_bundle` ->
/// `hello-bundle`.
pub fn kebab(name: &str) -> String {
    let chars: Vec<char> = name.strip_prefix("r#").unwrap_or(name).chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' {
            out.push('-');
            continue;
        }
        if c.is_ascii_uppercase() && i > 0 {
            let previous = chars[i - 1];
            let next_is_lower = chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
            let word_starts = previous.is_ascii_lowercase()
                || previous.is_ascii_digit()
                || (previous.is_ascii_uppercase() && next_is_lower);
            if word_starts && !out.ends_with('-') {
                out.push('-');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
#[test]
fn names_are_kebab_cased_by_words() {
    assert_eq!(kebab("HelloBundle"), "hello-bundle");
    assert_eq!(kebab("NotATable"), "not-a-table");
    assert_eq!(kebab("HTTPServer"), "http-server");
    assert_eq!(kebab("Gcc12"), "gcc12");
    assert_eq!(kebab("hello_bundle"), "hello-bundle");
    assert_eq!(kebab("r#type"), "type");
}

impl<'a> Derivation<'a> {
    /// Reads a `#[derive(Derivation)]` input; `None` if it is not a struct.
    pub fn from_derive(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let fields = match &input.data {
            Data::Struct(data) => &data.fields,
            Data::Enum(data) => {
                cx.error_spanned_by(
                    data.enum_token,
                    "`#[derive(Derivation)]` works on structs; an enum cannot be a derivation",
                );
                return None;
            }
            Data::Union(data) => {
                cx.error_spanned_by(
                    data.union_token,
                    "`#[derive(Derivation)]` works on structs; a union cannot be a derivation",
                );
                return None;
            }
        };
        let attrs = Container::from_attrs(cx, &input.attrs);
        let vars = match fields {
            Fields::Named(named) => named
                .named
                .iter()
                .map(|field| {
                    let ident = field.ident.as_ref().expect("named fields have names");
                    let kind = attr::field_kind(cx, &field.attrs, symbol::FIELD, "field");
                    Var {
                        access: quote!(self.#ident),
                        rust_name: ident.to_string(),
                        ty: &field.ty,
                        role: role(cx, kind, Some(ident)),
                        original: field,
                    }
                })
                .collect(),
            Fields::Unnamed(unnamed) => unnamed
                .unnamed
                .iter()
                .enumerate()
                .map(|(i, field)| {
                    let index = syn::Index::from(i);
                    let kind = attr::field_kind(cx, &field.attrs, symbol::FIELD, "field");
                    Var {
                        access: quote!(self.#index),
                        rust_name: i.to_string(),
                        ty: &field.ty,
                        role: role(cx, kind, None),
                        original: field,
                    }
                })
                .collect(),
            Fields::Unit => Vec::new(),
        };
        Some(Derivation {
            ident: input.ident.clone(),
            generics: input.generics.clone(),
            default_name: kebab(&input.ident.to_string()),
            attrs,
            vars,
            span: input.ident.span(),
        })
    }

    /// The declared outputs, `out` if none are.
    pub fn outputs(&self) -> Vec<(String, Span)> {
        match self.attrs.outputs.get() {
            Some(list) => list.iter().map(|o| (o.value(), o.span())).collect(),
            None => vec![("out".to_string(), Span::call_site())],
        }
    }
}

/// The role of a field from its attribute; an input or env field without a given name uses
/// the field's own.
pub fn role(cx: &Ctxt, kind: attr::FieldKind, ident: Option<&Ident>) -> Role {
    let own = |rename: Option<LitStr>, span: Span| -> Option<Named> {
        match (rename, ident) {
            (Some(lit), _) => Some(Named {
                name: lit.value(),
                span: lit.span(),
            }),
            (None, Some(ident)) => Some(Named {
                name: ident.to_string().trim_start_matches("r#").to_string(),
                span: ident.span(),
            }),
            (None, None) => {
                cx.error_at(
                    span,
                    "a tuple field has no name to give the build; name it: `input = \"src\"` or `env = \"NAME\"`",
                );
                None
            }
        }
    };
    match kind {
        Err(()) => Role::Invalid,
        Ok(None) => Role::Missing,
        Ok(Some((Kind::Input(rename), span))) => {
            own(rename, span).map_or(Role::Invalid, Role::Input)
        }
        Ok(Some((Kind::Env(rename), span))) => own(rename, span).map_or(Role::Invalid, Role::Env),
        Ok(Some((Kind::File(path), _))) => Role::File(path),
        Ok(Some((Kind::Toolchain, _))) => Role::Toolchain,
        Ok(Some((Kind::Name, _))) => Role::Name,
        Ok(Some((Kind::Skip, _))) => Role::Skip,
    }
}

/// The accessor method of an output: the name itself, raw if it is a keyword; `None` for the
/// names that cannot be methods even raw.
pub fn accessor_ident(output: &str, span: Span) -> Option<Ident> {
    if matches!(output, "self" | "Self" | "super" | "crate" | "_") {
        return None;
    }
    match syn::parse_str::<Ident>(output) {
        Ok(ident) => Some(Ident::new(&ident.to_string(), span)),
        Err(_) => Some(Ident::new_raw(output, span)),
    }
}
