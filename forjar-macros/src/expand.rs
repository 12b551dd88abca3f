//! Turns the checked IR into code: one `IntoDerivation` impl, with an accessors type when the
//! outputs are more than `out`. The impl is mostly data (a `Spec` value), because that is
//! what compiles fastest: see `forjar/benches/dsl_check.rs`.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident};

use crate::ast::{Derivation, Role, accessor_ident};
use crate::attr::Level;
use crate::check;
use crate::ctxt::Ctxt;

/// `#[derive(Derivation)]`.
pub fn derive(input: &DeriveInput) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    let Some(drv) = Derivation::from_derive(&cx, input) else {
        let errors = cx.check().expect_err("a refused input has an error");
        let errors = errors.into_compile_error();
        let fallback = fallback(&input.ident, &input.generics, &[]);
        return Ok(quote!(#errors #fallback));
    };
    check::check(&cx, &drv);
    if cx.has_errors() {
        let errors = cx.check().expect_err("has_errors").into_compile_error();
        let outputs = valid_outputs(&drv);
        let fallback = fallback(&drv.ident, &drv.generics, &outputs);
        return Ok(quote!(#errors #fallback));
    }
    cx.check()?;

    let mut generics = drv.generics.clone();
    if !generics.params.is_empty() {
        let where_clause = generics.make_where_clause();
        for var in &drv.vars {
            let ty = var.ty;
            let bound = match var.role {
                Role::Input(_) => quote!(::forjar::__private::InputField),
                Role::Env(_) => quote!(::forjar::__private::IntoEnv),
                Role::File(_) => quote!(::forjar::__private::Serialize),
                Role::Name => quote!(::forjar::__private::IntoName),
                Role::Toolchain => quote!(::forjar::__private::IntoToolchain),
                _ => continue,
            };
            where_clause.predicates.push(syn::parse_quote!(#ty: #bound));
        }
    }
    let location = Ident::new("__forjar_location", Span::mixed_site());
    let body = builder(&drv, &location);
    Ok(into_derivation(
        &drv.ident,
        &generics,
        &drv.outputs(),
        &location,
        body,
    ))
}

/// The impl of `IntoDerivation` for `ident`, with `body` making the derivation, inside a
/// `const _` block with the accessors type it names.
pub fn into_derivation(
    ident: &Ident,
    generics: &syn::Generics,
    outputs: &[(String, Span)],
    location: &Ident,
    body: TokenStream,
) -> TokenStream {
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let accessors = accessors(ident, outputs);
    let accessors_type = if default_outputs(outputs) {
        quote!(__forjar::DefaultOutputs)
    } else {
        accessors_ident(ident).to_token_stream()
    };
    let default = outputs.first().map_or("out", |(name, _)| name.as_str());
    quote! {
        // A deprecated struct's own derive does not warn about it.
        #[allow(deprecated)]
        const _: () = {
            use ::forjar::__private as __forjar;
            #accessors

            #[automatically_derived]
            impl #impl_generics __forjar::IntoDerivation for #ident #ty_generics #where_clause {
                type Accessors = #accessors_type;
                const DEFAULT: &'static str = #default;
                fn into_derivation(
                    self,
                    #location: &'static __forjar::Location<'static>,
                ) -> __forjar::Result<__forjar::Derivation, __forjar::DerivationError> {
                    #body
                }
            }
        };
    }
}

/// The outputs that passed their checks; the fallback gives them accessors so that uses of
/// them add no second error.
pub fn valid_outputs(drv: &Derivation) -> Vec<(String, Span)> {
    let mut seen = Vec::new();
    drv.outputs()
        .into_iter()
        .filter(|(name, span)| {
            let fresh = !seen.contains(name);
            seen.push(name.clone());
            fresh && crate::rules::identifier(name).is_ok() && accessor_ident(name, *span).is_some()
        })
        .collect()
}

/// What the derive emits when the input has errors: the impl with a body that is never run,
/// so that the type can still be added to a graph and its outputs named, and the IDE shows the
/// one error rather than a cascade (thiserror's `fallback.rs`).
pub fn fallback(
    ident: &Ident,
    generics: &syn::Generics,
    outputs: &[(String, Span)],
) -> TokenStream {
    let location = Ident::new("_", Span::call_site());
    into_derivation(
        ident,
        generics,
        outputs,
        &location,
        quote!(::core::unreachable!(
            "forjar: this derivation had compile errors"
        )),
    )
}

fn accessors_ident(ident: &Ident) -> Ident {
    Ident::new(&format!("__{ident}Outputs"), Span::call_site())
}

/// Whether the outputs are just `out`, whose accessor is forjar's `DefaultOutputs`.
fn default_outputs(outputs: &[(String, Span)]) -> bool {
    matches!(outputs, [(name, _)] if name == "out")
}

/// The accessors type of `ident`, one method per output; nothing when the outputs are just
/// `out` (most derivations), which share forjar's `DefaultOutputs`.
pub fn accessors(ident: &Ident, outputs: &[(String, Span)]) -> TokenStream {
    if default_outputs(outputs) {
        return TokenStream::new();
    }
    let accessors = accessors_ident(ident);
    let doc = format!("The outputs of [`{ident}`]; a `Drv<{ident}>` dereferences to this.");
    let methods = outputs.iter().filter_map(|(name, span)| {
        let method = accessor_ident(name, *span)?;
        let doc = format!("The output `{name}`.");
        Some(quote! {
            #[doc = #doc]
            pub fn #method(&self) -> ::forjar::OutputRef {
                __forjar::output(self.0, #name)
            }
        })
    });
    quote! {
        #[doc = #doc]
        #[derive(Clone, Copy)]
        pub struct #accessors(__forjar::DrvId);

        impl #accessors {
            #(#methods)*
        }

        impl ::core::convert::From<__forjar::DrvId> for #accessors {
            fn from(drv: __forjar::DrvId) -> Self {
                #accessors(drv)
            }
        }
    }
}

/// The expression that makes the derivation: the constant parts as a `Spec`, and one call
/// given the values. Data rather than a chain of builder calls, so that each derivation adds
/// little for the compiler to type-check.
pub fn builder(drv: &Derivation, location: &Ident) -> TokenStream {
    let attrs = &drv.attrs;
    let default_name = attrs
        .name
        .get()
        .map_or_else(|| drv.default_name.clone(), |lit| lit.value());
    let name = match drv.vars.iter().find(|v| matches!(v.role, Role::Name)) {
        Some(field) => {
            let access = &field.access;
            let ty = field.ty;
            quote_spanned!(ty.span()=>
                __forjar::Some(<#ty as __forjar::IntoName>::into_name(#access)))
        }
        None => quote!(__forjar::None),
    };
    // Only the fields an attribute gives; the rest are `Spec::DEFAULT`'s.
    let mut fields = vec![quote!(name: #default_name,)];
    let mut field = |name: &str, value: Option<TokenStream>| {
        if let Some(value) = value {
            let name = Ident::new(name, Span::call_site());
            fields.push(quote!(#name: #value,));
        }
    };
    let some = |value: TokenStream| quote!(__forjar::Some(#value));
    field("script", attrs.script.get().map(|lit| some(quote!(#lit))));
    field(
        "builder",
        attrs.builder.get().map(|argv| some(quote!(&[#(#argv),*]))),
    );
    field("outputs", attrs.outputs.get().map(|o| quote!(&[#(#o),*])));
    field("system", attrs.system.get().map(|lit| some(quote!(#lit))));
    field(
        "sandbox",
        attrs.sandbox.get().map(|level| match level {
            Level::HostTools => quote!(__forjar::SandboxLevel::HostTools),
            Level::Hermetic => quote!(__forjar::SandboxLevel::Hermetic),
        }),
    );
    field(
        "fixed_output",
        attrs.fixed_output.get().map(|lit| some(quote!(#lit))),
    );
    field(
        "fixed_output_mode",
        attrs
            .fixed_output_mode
            .get()
            .map(|recursive| match recursive {
                true => some(quote!(__forjar::HashMode::Recursive)),
                false => some(quote!(__forjar::HashMode::Flat)),
            }),
    );
    field("network", attrs.network.get().map(|on| quote!(#on)));
    field(
        "provide_bin_sh",
        attrs.provide_bin_sh.get().map(|on| quote!(#on)),
    );
    field("ro_paths", attrs.ro_paths.get().map(|p| quote!(&[#(#p),*])));
    field(
        "timeout_ms",
        attrs.timeout.get().map(|ms| some(quote!(#ms))),
    );
    field(
        "max_silent_ms",
        attrs.max_silent.get().map(|ms| some(quote!(#ms))),
    );
    field(
        "memory",
        attrs.memory.get().map(|bytes| some(quote!(#bytes))),
    );
    field("cpus", attrs.cpus.get().map(|cpus| some(quote!(#cpus))));

    let parts = drv.vars.iter().filter_map(|var| {
        let access = &var.access;
        let ty = var.ty;
        // Through the field's type and spanned on it, so that "`T` cannot be an input" lands
        // on the type.
        Some(match &var.role {
            Role::Input(named) => {
                let n = &named.name;
                quote_spanned!(ty.span()=>
                    <#ty as __forjar::InputField>::into_input_part(#access, #n))
            }
            Role::Env(named) => {
                let n = &named.name;
                quote_spanned!(ty.span()=> __forjar::Part::Env(
                    #n, <#ty as __forjar::IntoEnv>::into_env(#access)))
            }
            Role::Param(named) => {
                let n = &named.name;
                quote_spanned!(ty.span()=> <#ty as __forjar::Param>::into_part(#access, #n))
            }
            Role::File(path) => quote_spanned!(ty.span()=> __forjar::Part::File(
                #path, __forjar::render::<#ty>(#path, &#access))),
            Role::Toolchain => quote_spanned!(ty.span()=> __forjar::Part::Toolchain(
                <#ty as __forjar::IntoToolchain>::into_toolchain(#access))),
            Role::Name | Role::Skip | Role::Missing | Role::Invalid => return None,
        })
    });
    quote! {{
        __forjar::Spec { #(#fields)* ..__forjar::Spec::DEFAULT }
            .derive(#name, #location, [#(#parts),*])
    }}
}
