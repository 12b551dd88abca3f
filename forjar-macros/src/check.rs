//! The rules that involve more than one attribute or field. One function per rule.

use std::collections::BTreeMap;

use proc_macro2::Span;
use quote::ToTokens;
use syn::spanned::Spanned;

use crate::ast::{Derivation, Role};
use crate::attr::Level;
use crate::ctxt::Ctxt;
use crate::rules;
use crate::rules::script;

pub fn check(cx: &Ctxt, drv: &Derivation) {
    script_or_builder(cx, drv);
    every_field_has_a_role(cx, drv);
    outputs_are_valid_and_unique(cx, drv);
    variables_are_valid_and_unique(cx, drv);
    files_are_valid_and_unique(cx, drv);
    one_name(cx, drv);
    one_hermetic_toolchain(cx, drv);
    network_needs_fixed_output(cx, drv);
    fixed_output_has_one_output(cx, drv);
    if let Some(script) = drv.attrs.script.get() {
        let scan = script::scan(&script.value());
        // A script `/bin/sh` would read otherwise is reported alone: what it expands is then
        // not what it seems.
        if !script_is_well_formed(cx, drv, &scan) {
            return;
        }
        // With an attribute or field refused, what the derivation declares is not known, and
        // a variable the script uses would be reported a second time.
        if !cx.has_errors() {
            script_names_only_declared_variables(cx, drv, &scan);
        }
        script_is_deterministic(cx, drv, &scan);
    }
}

// A derivation runs exactly one of a script or a builder argv.
fn script_or_builder(cx: &Ctxt, drv: &Derivation) {
    if drv.attrs.broken {
        return;
    }
    match (drv.attrs.script.get(), drv.attrs.builder.get()) {
        (Some(_), Some(_)) => cx.error_spanned_by(
            drv.attrs.builder.tokens(),
            "give `script` or `builder`, not both: a script runs as `/bin/sh -euc <script>`",
        ),
        (None, None) => cx.error_at(
            drv.span,
            "a derivation needs something to run: `#[forjar(script = \"...\")]` or `#[forjar(builder = [\"/path/to/program\", ...])]`",
        ),
        _ => {}
    }
}

// Every struct field says what it is, so that no value is silently left out of the key.
fn every_field_has_a_role(cx: &Ctxt, drv: &Derivation) {
    for var in &drv.vars {
        if let Role::Missing = var.role {
            cx.error_spanned_by(
                var.original,
                format!(
                    "field `{}` has no forjar attribute; mark it `#[forjar(input)]`, `#[forjar(env)]`, `#[forjar(file = \"name.json\")]`, `#[forjar(name)]` or `#[forjar(skip)]`",
                    var.rust_name
                ),
            );
        }
    }
}

/// Methods every handle has; an accessor of that name would be hidden behind them.
const HANDLE_METHODS: &[&str] = &[
    "output",
    "default_output",
    "clone",
    "clone_from",
    "deref",
    "eq",
    "ne",
    "fmt",
    "to_owned",
    "into",
    "try_into",
    "borrow",
    "borrow_mut",
    "type_id",
];

// Output names are shell identifiers that can be accessor methods, each declared once.
fn outputs_are_valid_and_unique(cx: &Ctxt, drv: &Derivation) {
    let Some(outputs) = drv.attrs.outputs.get() else {
        return;
    };
    let mut seen = BTreeMap::new();
    for output in outputs {
        let name = output.value();
        if let Err(reason) = rules::identifier(&name) {
            cx.error_spanned_by(output, format!("invalid output name `{name}`: {reason}"));
        } else if crate::ast::accessor_ident(&name, output.span()).is_none() {
            cx.error_spanned_by(
                output,
                format!(
                    "output `{name}` cannot be the name of a method; name the output otherwise"
                ),
            );
        } else if HANDLE_METHODS.contains(&name.as_str()) {
            cx.error_spanned_by(
                output,
                format!(
                    "output `{name}` would have no accessor: `Drv::{name}` is a method of every handle; name the output otherwise"
                ),
            );
        } else if seen.insert(name.clone(), ()).is_some() {
            cx.error_spanned_by(output, format!("duplicate output `{name}`"));
        }
    }
}

// Inputs, env vars and outputs share the build environment: valid names, no two alike.
fn variables_are_valid_and_unique(cx: &Ctxt, drv: &Derivation) {
    let mut seen: BTreeMap<String, &str> = drv
        .outputs()
        .into_iter()
        .map(|(name, _)| (name, "an output"))
        .collect();
    for var in &drv.vars {
        let Some((named, kind)) = var.role.variable() else {
            continue;
        };
        if let Err(reason) = kind.check_name(&named.name) {
            cx.error_at(
                named.span,
                format!("invalid {} name `{}`: {reason}", kind.label(), named.name),
            );
            continue;
        }
        let article = kind.article();
        if let Some(first) = seen.insert(named.name.clone(), article) {
            cx.error_at(
                named.span,
                format!(
                    "`{}` is both {first} and {article}; inputs, outputs and env vars share the build environment, so their names must differ",
                    named.name
                ),
            );
        }
    }
}

// Files are written at clean relative paths, once each, in a format their extension names.
fn files_are_valid_and_unique(cx: &Ctxt, drv: &Derivation) {
    let mut seen = BTreeMap::new();
    for var in &drv.vars {
        let Role::File(path) = &var.role else {
            continue;
        };
        let value = path.value();
        if let Err(reason) = rules::clean_rel_path(&value) {
            cx.error_spanned_by(path, format!("invalid file path `{value}`: {reason}"));
            continue;
        }
        let extension = value.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
        if !rules::FILE_FORMATS.contains(&extension) {
            cx.error_spanned_by(
                path,
                format!(
                    "cannot tell the format of `{value}`: a file is rendered as JSON, TOML or YAML by its extension, one of {}",
                    rules::FILE_FORMATS
                        .iter()
                        .map(|e| format!("`.{e}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if seen.insert(value.clone(), ()).is_some() {
            cx.error_spanned_by(path, format!("duplicate file `{value}`"));
        }
    }
}

// The name comes from one place: the `name` attribute, one `name` field, or the type's name.
fn one_name(cx: &Ctxt, drv: &Derivation) {
    let fields: Vec<_> = drv
        .vars
        .iter()
        .filter(|v| matches!(v.role, Role::Name))
        .collect();
    if let Some(second) = fields.get(1) {
        cx.error_spanned_by(
            second.original,
            "only one field can be the derivation's `name`",
        );
    }
    if let (Some(_), Some(field)) = (drv.attrs.name.get(), fields.first()) {
        cx.error_spanned_by(
            field.original,
            "the name is given twice: by `#[forjar(name = ...)]` and by this field; keep one",
        );
    }
    if drv.attrs.name.get().is_none()
        && fields.is_empty()
        && let Err(reason) = rules::name(&drv.default_name)
    {
        cx.error_at(
            drv.span,
            format!(
                "the derived name `{}` is invalid: {reason}; give one with `#[forjar(name = \"...\")]`",
                drv.default_name
            ),
        );
    }
}

// A build has one toolchain, and only a hermetic build has one: `host-tools` sees the host's.
fn one_hermetic_toolchain(cx: &Ctxt, drv: &Derivation) {
    let fields: Vec<_> = drv
        .vars
        .iter()
        .filter(|v| matches!(v.role, Role::Toolchain))
        .collect();
    if let Some(second) = fields.get(1) {
        cx.error_spanned_by(
            second.original,
            "a build has one toolchain; put every package it needs in one `Toolchain`",
        );
    }
    if let (Some(Level::HostTools), Some(field)) = (drv.attrs.sandbox.get(), fields.first()) {
        cx.error_spanned_by(
            field.original,
            "a derivation with a toolchain is hermetic: `sandbox = \"host-tools\"` sees the host's own tools instead; drop one of them",
        );
    }
}

// Only a fixed-output derivation, whose result is verified by digest, may use the network.
fn network_needs_fixed_output(cx: &Ctxt, drv: &Derivation) {
    if drv.attrs.network.get() == Some(&true) && drv.attrs.fixed_output.get().is_none() {
        cx.error_spanned_by(
            drv.attrs.network.tokens(),
            "`network` needs `fixed_output = \"sha256-...\"` (or `\"blake3:...\"`): only a derivation whose output is known in advance may use the network, so that what it downloads is verified",
        );
    }
}

// A fixed-output derivation has the one output `out`, which its digest describes.
fn fixed_output_has_one_output(cx: &Ctxt, drv: &Derivation) {
    if drv.attrs.fixed_output.get().is_none() && drv.attrs.fixed_output_mode.get().is_some() {
        cx.error_spanned_by(
            drv.attrs.fixed_output_mode.tokens(),
            "`fixed_output_mode` says what a fixed-output digest covers; give the digest too: `fixed_output = \"sha256-...\"`",
        );
    }
    if let (Some(digest), Some(_)) = (
        drv.attrs.fixed_output.get(),
        drv.attrs.fixed_output_mode.get(),
    ) && digest.value().starts_with("blake3:")
    {
        cx.error_spanned_by(
            drv.attrs.fixed_output_mode.tokens(),
            "a BLAKE3 tree digest covers a file or a whole tree alike; `fixed_output_mode` goes with a `sha256` digest only",
        );
    }
    if drv.attrs.fixed_output.get().is_none() {
        return;
    }
    if let Some(outputs) = drv.attrs.outputs.get()
        && (outputs.len() != 1 || outputs[0].value() != "out")
    {
        cx.error_spanned_by(
            drv.attrs.outputs.tokens(),
            "a fixed-output derivation has exactly one output, `out`; its digest describes it",
        );
    }
}

/// The span of the script, for errors about its contents. On stable Rust a span cannot point
/// inside a literal, so messages name the script line.
fn script_span(drv: &Derivation) -> Span {
    drv.attrs
        .script
        .get()
        .map_or(drv.span, |lit| lit.to_token_stream().span())
}

// Every `$name` a script expands is declared, assigned by the script, or set by the sandbox;
// under `sh -u` anything else stops the build.
fn script_names_only_declared_variables(cx: &Ctxt, drv: &Derivation, scan: &script::Scan) {
    // With a field's attribute refused, what it declares is unknown.
    if drv.vars.iter().any(|v| matches!(v.role, Role::Invalid)) {
        return;
    }
    let mut declared: Vec<(String, &str)> = Vec::new();
    for var in &drv.vars {
        if let Some((named, kind)) = var.role.variable() {
            declared.push((named.name.clone(), kind.label()));
        }
    }
    for (name, _) in drv.outputs() {
        declared.push((name, "output"));
    }
    for message in script::undeclared(scan, &declared) {
        cx.error_at(script_span(drv), message);
    }
}

// The script is read by `/bin/sh` as it is written: every here-document closed, no positional
// parameter a build never has.
fn script_is_well_formed(cx: &Ctxt, drv: &Derivation, scan: &script::Scan) -> bool {
    let errors = script::syntax(scan);
    for message in &errors {
        cx.error_at(script_span(drv), message);
    }
    errors.is_empty()
}

// A script's output depends only on its inputs: no randomness, process ids or clock, unless
// the derivation says `allow_impure`.
fn script_is_deterministic(cx: &Ctxt, drv: &Derivation, scan: &script::Scan) {
    if drv.attrs.allow_impure.get() == Some(&true) {
        return;
    }
    for message in script::impure(scan, "add `#[forjar(allow_impure)]`") {
        cx.error_at(script_span(drv), message);
    }
}
