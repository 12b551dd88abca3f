//! `#[forjar::derivation]` on a fn: the parameters after the graph are the inputs and env, the
//! body is the script, and the return type `Drv<Handle>` names the handle type the macro
//! defines.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::parse::Parser;
use syn::{
    Expr, ExprLit, FnArg, GenericArgument, Ident, ItemFn, Lit, Pat, PathArguments, ReturnType,
    Stmt, Type,
};

use crate::ast::{Derivation, Named, Role, Var, kebab, role};
use crate::attr::{self, Container};
use crate::check;
use crate::ctxt::Ctxt;
use crate::expand;
use crate::symbol::{self, SCRIPT};

pub fn derivation(args: TokenStream, mut item: ItemFn) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    let mut attrs = Container::new();
    let mut script_in_attribute = false;
    let parsed = syn::meta::parser(|meta| {
        if meta.path == SCRIPT {
            script_in_attribute = true;
            cx.error_spanned_by(
                &meta.path,
                "the body of a derivation fn is its script; remove `script = ...` and write the script as the body",
            );
        }
        attrs.parse_one(&cx, meta)
    })
    .parse2(args);
    if let Err(error) = parsed {
        cx.syn_error(error);
    }
    attrs.broken = cx.has_errors();

    signature_is_plain(&cx, &item);
    let handle = handle_type(&cx, &item.sig);
    let graph = graph_param(&cx, &item);
    // An empty body with the script in the attribute is the one mistake reported above.
    let has_builder = attrs.builder.get().is_some();
    let body = match script_in_attribute && item.block.stmts.is_empty() {
        true => Err(()),
        false => body_script(&cx, &item, has_builder),
    };
    match body {
        Ok(Some(script)) => attrs.set_script(script),
        Ok(None) => {}
        Err(()) => attrs.broken = true,
    }
    // Without the graph first, every parameter is taken for an input or env var.
    let skip = usize::from(graph.is_some());

    // Read the parameters' attributes, then strip them: they are the macro's, not Rust's.
    let kinds: Vec<attr::FieldKind> = item
        .sig
        .inputs
        .iter_mut()
        .skip(skip)
        .map(|arg| match arg {
            FnArg::Typed(param) => {
                let kind = attr::field_kind(&cx, &param.attrs, symbol::PARAM, "parameter");
                param.attrs.retain(|a| a.path() != symbol::FORJAR);
                kind
            }
            FnArg::Receiver(_) => Ok(None),
        })
        .collect();
    let mut vars = Vec::new();
    for (arg, kind) in item.sig.inputs.iter().skip(skip).zip(kinds) {
        let FnArg::Typed(param) = arg else {
            cx.error_spanned_by(arg, "a derivation fn is a free fn; it takes no `self`");
            continue;
        };
        let Pat::Ident(pat) = &*param.pat else {
            cx.error_spanned_by(
                &param.pat,
                "a parameter of a derivation fn is a plain name: it names the input or env var",
            );
            continue;
        };
        let ident = &pat.ident;
        let role = match kind {
            Ok(None) => Role::Param(Named {
                name: ident.to_string().trim_start_matches("r#").to_string(),
                span: ident.span(),
            }),
            kind => role(&cx, kind, Some(ident)),
        };
        vars.push(Var {
            access: ident.to_token_stream(),
            rust_name: ident.to_string(),
            ty: &param.ty,
            role,
            original: param,
        });
    }

    let name = &item.sig.ident;
    let drv = Derivation {
        ident: handle
            .clone()
            .unwrap_or_else(|| Ident::new("__ForjarUnnamedHandle", name.span())),
        generics: syn::Generics::default(),
        default_name: kebab(&name.to_string()),
        attrs,
        vars,
        span: name.span(),
    };
    check::check(&cx, &drv);

    let vis = &item.vis;
    let handle_doc = format!(
        "The handle type of the derivation fn [`{name}`]: a `Drv<{}>` has one method per declared output.",
        drv.ident
    );
    let ident = &drv.ident;
    // The handle type and its impls live in a module of the fn's own, re-exported under the
    // name the return type gives: two fns that name the same handle then meet in one error on
    // the second one's `use`, at the user's token, and their impls never conflict.
    let module = quote::format_ident!("__forjar_handle_of_{}", name);
    let wrap = |inner: TokenStream| {
        let reexport = quote_spanned!(ident.span()=> #vis use #module::#ident;);
        quote! {
            #[doc(hidden)]
            #[allow(non_snake_case)]
            mod #module {
                #inner
            }
            #reexport
        }
    };
    let handle_type = quote! {
        #[doc = #handle_doc]
        pub enum #ident {}
    };
    if cx.has_errors() || handle.is_none() || graph.is_none() {
        let errors = cx
            .check()
            .err()
            .map(syn::Error::into_compile_error)
            .unwrap_or_default();
        // The handle type and the fn keep their signatures, with bodies that are never run,
        // so that callers see no second error.
        let fallback = handle.is_some().then(|| {
            let outputs = expand::valid_outputs(&drv);
            expand::fallback(ident, &drv.generics, &outputs)
        });
        item.block = syn::parse_quote!({
            ::core::unreachable!("forjar: this derivation had compile errors")
        });
        item.attrs
            .push(syn::parse_quote!(#[allow(unused_variables)]));
        let handle = handle
            .is_some()
            .then(|| wrap(quote!(#handle_type #fallback)));
        return Ok(quote!(#errors #handle #item));
    }
    cx.check()?;

    let graph = graph.expect("checked above");
    let location = Ident::new("__forjar_location", Span::mixed_site());
    let body = expand::builder(&drv, &location);
    // The handle type is never a value: its `into_derivation` cannot be called.
    let handle_impl = expand::into_derivation(
        ident,
        &drv.generics,
        &drv.outputs(),
        &Ident::new("_", Span::call_site()),
        quote!(match self {}),
    );
    item.block = syn::parse_quote!({
        use ::forjar::__private as __forjar;
        let #location = __forjar::Location::caller();
        let __forjar_derivation = #body;
        __forjar::add::<#ident>(#graph, __forjar_derivation)
    });
    item.attrs.push(syn::parse_quote!(#[track_caller]));
    let handle = wrap(quote!(#handle_type #handle_impl));
    Ok(quote! {
        #handle
        #item
    })
}

// A derivation fn is a plain, synchronous, non-generic fn: it runs when the program builds its
// graph.
fn signature_is_plain(cx: &Ctxt, item: &ItemFn) {
    let sig = &item.sig;
    if let Some(token) = &sig.asyncness {
        cx.error_spanned_by(
            token,
            "a derivation fn cannot be `async`: it only describes a build",
        );
    }
    if let Some(token) = &sig.constness {
        cx.error_spanned_by(token, "a derivation fn cannot be `const`");
    }
    if let Some(token) = &sig.unsafety {
        cx.error_spanned_by(token, "a derivation fn cannot be `unsafe`");
    }
    if !sig.generics.params.is_empty() {
        cx.error_spanned_by(
            &sig.generics,
            "a derivation fn cannot be generic: its parameters' types decide what is an input and what is env",
        );
    }
}

/// `Handle` of `-> Drv<Handle>`.
fn handle_type(cx: &Ctxt, sig: &syn::Signature) -> Option<Ident> {
    let message =
        "a derivation fn returns its handle, `-> Drv<Name>`, and the macro defines the type `Name`";
    let ReturnType::Type(_, ty) = &sig.output else {
        // Where the return type belongs: after the parameters.
        cx.error_at(sig.paren_token.span.close(), message);
        return None;
    };
    let handle = match &**ty {
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last()?;
            match (&last.arguments, last.ident == "Drv") {
                (PathArguments::AngleBracketed(args), true) if args.args.len() == 1 => {
                    match &args.args[0] {
                        GenericArgument::Type(Type::Path(inner))
                            if inner.qself.is_none() && inner.path.get_ident().is_some() =>
                        {
                            inner.path.get_ident().cloned()
                        }
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        _ => None,
    };
    if handle.is_none() {
        cx.error_spanned_by(ty, message);
    }
    handle
}

/// The first parameter, `g: &mut Graph`; returns its name.
fn graph_param(cx: &Ctxt, item: &ItemFn) -> Option<Ident> {
    let message = "the first parameter of a derivation fn is the graph it adds to: `g: &mut Graph`";
    let Some(FnArg::Typed(first)) = item.sig.inputs.first() else {
        match item.sig.inputs.first() {
            Some(receiver) => cx.error_spanned_by(receiver, message),
            None => cx.error_spanned_by(&item.sig.ident, message),
        }
        return None;
    };
    // By its form, not its spelling (`use forjar::Graph as G` is fine): inputs and env values
    // are never `&mut`, and the type checker holds the rest to `&mut Graph` (or what derefs to
    // it, such as `&mut Program`).
    let is_graph = matches!(
        &*first.ty,
        Type::Reference(r) if r.mutability.is_some() && matches!(&*r.elem, Type::Path(_))
    );
    match (&*first.pat, is_graph) {
        (Pat::Ident(pat), true) => Some(pat.ident.clone()),
        _ => {
            cx.error_spanned_by(first, message);
            None
        }
    }
}

/// The script: the body's one string literal. With a `builder`, the body is empty.
fn body_script(cx: &Ctxt, item: &ItemFn, has_builder: bool) -> Result<Option<syn::LitStr>, ()> {
    let stmts = &item.block.stmts;
    if has_builder {
        if !stmts.is_empty() {
            cx.error_spanned_by(
                &item.block,
                "a derivation fn with a `builder` has an empty body `{}`: the builder runs instead of a script",
            );
            return Err(());
        }
        return Ok(None);
    }
    match stmts.as_slice() {
        [
            Stmt::Expr(
                Expr::Lit(ExprLit {
                    lit: Lit::Str(script),
                    ..
                }),
                None,
            ),
        ] => Ok(Some(script.clone())),
        [
            Stmt::Expr(
                Expr::Lit(ExprLit {
                    lit: Lit::Str(_), ..
                }),
                Some(semi),
            ),
        ] => {
            cx.error_spanned_by(
                semi,
                "remove this `;`: the body of a derivation fn is its script, one string literal \
                 with nothing after it",
            );
            Err(())
        }
        _ => {
            cx.error_spanned_by(
                &item.block,
                "the body of a derivation fn is its script: one string literal, such as r#\"make install PREFIX=$out\"#",
            );
            Err(())
        }
    }
}
