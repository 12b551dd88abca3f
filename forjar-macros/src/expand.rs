//! Turns the checked IR into code: the `Outputs` impl with its accessors, and the code that
//! gives the runtime's `DerivationBuilder` every part.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
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

    let ident = &drv.ident;
    let mut generics = drv.generics.clone();
    if !generics.params.is_empty() {
        let where_clause = generics.make_where_clause();
        for var in &drv.vars {
            let ty = var.ty;
            let bound = match var.role {
                Role::Input(_) => quote!(::forjar::__private::IntoInput),
                Role::Env(_) => quote!(::forjar::__private::IntoEnv),
                Role::File(_) => quote!(::forjar::__private::Serialize),
                Role::Name => quote!(::core::convert::Into<::std::string::String>),
                _ => continue,
            };
            where_clause.predicates.push(syn::parse_quote!(#ty: #bound));
        }
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let outputs = drv.outputs();
    let accessors = accessors(ident, &outputs);
    let outputs_impl = outputs_impl(ident, &drv.generics, &outputs);
    let location = Ident::new("__forjar_location", Span::mixed_site());
    let body = builder(&drv, &location);
    Ok(quote! {
        const _: () = {
            #accessors
            #outputs_impl

            #[automatically_derived]
            impl #impl_generics ::forjar::__private::IntoDerivation for #ident #ty_generics #where_clause {
                fn into_derivation(
                    self,
                    #location: &'static ::forjar::__private::Location<'static>,
                ) -> ::forjar::__private::Result<
                    ::forjar::__private::Derivation,
                    ::forjar::__private::DerivationError,
                > {
                    #body
                }
            }
        };
    })
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

/// What the derive emits when the input has errors: the trait impls with bodies that are never
/// run, so that the type can still be added to a graph and its outputs named, and the IDE
/// shows the one error rather than a cascade (thiserror's `fallback.rs`).
pub fn fallback(
    ident: &Ident,
    generics: &syn::Generics,
    outputs: &[(String, Span)],
) -> TokenStream {
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let accessors = accessors(ident, outputs);
    let outputs_impl = outputs_impl(ident, generics, outputs);
    quote! {
        const _: () = {
            #accessors
            #outputs_impl

            #[automatically_derived]
            impl #impl_generics ::forjar::__private::IntoDerivation for #ident #ty_generics #where_clause {
                fn into_derivation(
                    self,
                    _: &'static ::forjar::__private::Location<'static>,
                ) -> ::forjar::__private::Result<
                    ::forjar::__private::Derivation,
                    ::forjar::__private::DerivationError,
                > {
                    ::core::unreachable!("forjar: this derivation had compile errors")
                }
            }
        };
    }
}

fn accessors_ident(ident: &Ident) -> Ident {
    Ident::new(&format!("__{ident}Outputs"), Span::call_site())
}

/// The accessors type of `ident`: one method per output.
pub fn accessors(ident: &Ident, outputs: &[(String, Span)]) -> TokenStream {
    let accessors = accessors_ident(ident);
    let doc = format!("The outputs of [`{ident}`]; a `Drv<{ident}>` dereferences to this.");
    let methods = outputs.iter().filter_map(|(name, span)| {
        let method = accessor_ident(name, *span)?;
        let doc = format!("The output `{name}`.");
        Some(quote! {
            #[doc = #doc]
            pub fn #method(&self) -> ::forjar::__private::OutputRef {
                ::forjar::__private::output(self.0, #name)
            }
        })
    });
    quote! {
        #[doc = #doc]
        #[derive(Clone, Copy, Debug)]
        pub struct #accessors(::forjar::__private::DrvId);

        impl #accessors {
            #(#methods)*
        }
    }
}

/// `impl Outputs for ident`; the first output is the default.
pub fn outputs_impl(
    ident: &Ident,
    generics: &syn::Generics,
    outputs: &[(String, Span)],
) -> TokenStream {
    let accessors = accessors_ident(ident);
    let default = outputs.first().map_or("out", |(name, _)| name.as_str());
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics ::forjar::__private::Outputs for #ident #ty_generics #where_clause {
            type Accessors = #accessors;
            const DEFAULT: &'static str = #default;
            fn accessors(drv: ::forjar::__private::DrvId) -> #accessors {
                #accessors(drv)
            }
        }
    }
}

/// The statements that make the derivation: a `DerivationBuilder` given every part, then
/// `build()`, whose `Result` is the block's value.
pub fn builder(drv: &Derivation, location: &Ident) -> TokenStream {
    let attrs = &drv.attrs;
    let b = Ident::new("__forjar_builder", Span::mixed_site());

    let name = match (
        attrs.name.get(),
        drv.vars.iter().find(|v| matches!(v.role, Role::Name)),
    ) {
        (Some(lit), _) => quote!(#lit),
        (None, Some(field)) => {
            let access = &field.access;
            quote_spanned!(field.ty.span()=> &::forjar::__private::name(#access))
        }
        (None, None) => {
            let name = &drv.default_name;
            quote!(#name)
        }
    };
    let mut parts = Vec::new();
    if let Some(script) = attrs.script.get() {
        parts.push(quote!(.script(#script)));
    }
    if let Some(argv) = attrs.builder.get() {
        parts.push(quote!(.builder([#(#argv),*])));
    }
    if let Some(outputs) = attrs.outputs.get() {
        parts.extend(outputs.iter().map(|o| quote!(.output(#o))));
    }
    if let Some(system) = attrs.system.get() {
        parts.push(quote!(.system(#system)));
    }
    if let Some(level) = attrs.sandbox.get() {
        let variant = match level {
            Level::Hermetic => quote!(Hermetic),
            Level::HostTools => quote!(HostTools),
        };
        parts.push(quote!(.sandbox(::forjar::__private::SandboxLevel::#variant)));
    }
    if let Some(digest) = attrs.fixed_output.get() {
        parts.push(quote!(.fixed_output(#digest)));
    }
    if let Some(&network) = attrs.network.get() {
        parts.push(quote!(.network(#network)));
    }
    if let Some(&provide) = attrs.provide_bin_sh.get() {
        parts.push(quote!(.provide_bin_sh(#provide)));
    }
    if let Some(paths) = attrs.ro_paths.get() {
        parts.extend(paths.iter().map(|p| quote!(.ro_path(#p))));
    }
    if let Some(&millis) = attrs.timeout.get() {
        parts.push(quote!(.timeout(::core::time::Duration::from_millis(#millis))));
    }
    if let Some(&millis) = attrs.max_silent.get() {
        parts.push(quote!(.max_silent(::core::time::Duration::from_millis(#millis))));
    }
    if let Some(&bytes) = attrs.memory.get() {
        parts.push(quote!(.memory_limit(#bytes)));
    }
    if let Some(&cpus) = attrs.cpus.get() {
        parts.push(quote!(.cpus(#cpus)));
    }

    let vars = drv.vars.iter().filter_map(|var| {
        let access = &var.access;
        let ty = var.ty;
        // Through the field's type and spanned on it, so that "`T` cannot be an input" lands
        // on the type.
        let span = ty.span();
        Some(match &var.role {
            Role::Input(named) => {
                let n = &named.name;
                quote_spanned!(span=> let #b = ::forjar::__private::input(
                    #b, #n, <#ty as ::forjar::__private::IntoInput>::into_input(#access));)
            }
            Role::Env(named) => {
                let n = &named.name;
                quote_spanned!(span=> let #b = ::forjar::__private::env(
                    #b, #n, <#ty as ::forjar::__private::IntoEnv>::into_env(#access));)
            }
            Role::Param(named) => {
                let n = &named.name;
                quote_spanned!(span=> let #b = <#ty as ::forjar::__private::Param>::add_to(
                    #access, #n, #b);)
            }
            Role::File(path) => {
                quote_spanned!(span=> let #b = ::forjar::__private::file::<#ty>(#b, #path, &#access);)
            }
            Role::Name | Role::Skip | Role::Missing | Role::Invalid => return None,
        })
    });
    quote! {
        let #b = ::forjar::__private::builder(#name, #location) #(#parts)*;
        #(#vars)*
        #b.build()
    }
}
