//! Derive and attribute macros that turn Rust types and fns into forjar derivations.
//!
//! Use them through the `forjar` crate: `use forjar::prelude::*` brings `#[derive(Derivation)]`,
//! and `#[forjar::derivation]` is the fn form. The attributes are documented on each macro.
//! Parse -> check -> expand: `ast.rs` reads the input into a small IR that keeps the user's
//! tokens, `check.rs` applies the rules (one function each), `expand.rs` writes the code.

mod ast;
mod attr;
mod check;
mod ctxt;
mod expand;
mod function;
mod symbol;

use forjar_rules as rules;

use proc_macro::TokenStream;
use syn::{DeriveInput, ItemFn, parse_macro_input};

#[doc = include_str!("../doc/derive.md")]
#[proc_macro_derive(Derivation, attributes(forjar))]
pub fn derive_derivation(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

#[doc = include_str!("../doc/function.md")]
#[proc_macro_attribute]
pub fn derivation(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = parse_macro_input!(item as ItemFn);
    function::derivation(args.into(), item)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
