//! Procedural macros for `mailgate-plugin-sdk`. Use them through that crate
//! (`mailgate_plugin_sdk::plugin`), not directly.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;
use syn::{ImplItem, ItemImpl, parse_macro_input};

/// The hook methods of `mailgate_plugin_sdk::Plugin` and the `HookSet` flag of each.
const HOOKS: &[(&str, &str)] = &[
    ("on_connect", "CONNECT"),
    ("on_helo", "HELO"),
    ("on_mail_from", "MAIL_FROM"),
    ("on_rcpt_to", "RCPT_TO"),
    ("on_data", "DATA"),
    ("on_deliver", "DELIVER"),
];

/// Put on `impl Plugin for MyPlugin { ... }`: adds `const HOOKS` listing exactly the hook
/// methods (`on_connect`, `on_helo`, `on_mail_from`, `on_rcpt_to`, `on_data`,
/// `on_deliver`) defined in the block, which the plugin's `manifest` reports to the host.
///
/// `#[plugin(crate = path::to::sdk)]` names the SDK crate when it is not reachable as
/// `::mailgate_plugin_sdk` (a renamed dependency).
#[proc_macro_attribute]
pub fn plugin(attr: TokenStream, item: TokenStream) -> TokenStream {
    let krate = match parse_crate_path(attr) {
        Ok(path) => path,
        Err(e) => return e.to_compile_error().into(),
    };
    let mut imp = parse_macro_input!(item as ItemImpl);
    match expand(&mut imp, &krate) {
        Ok(()) => quote!(#imp).into(),
        Err(e) => {
            let err = e.to_compile_error();
            quote!(#imp #err).into()
        }
    }
}

fn parse_crate_path(attr: TokenStream) -> syn::Result<syn::Path> {
    if attr.is_empty() {
        return Ok(syn::parse_quote!(::mailgate_plugin_sdk));
    }
    let mut path = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            let value = meta.value()?;
            // Accept both `crate = path` and `crate = "path"`.
            if value.peek(syn::LitStr) {
                let lit: syn::LitStr = value.parse()?;
                path = Some(lit.parse::<syn::Path>()?);
            } else {
                path = Some(value.parse::<syn::Path>()?);
            }
            Ok(())
        } else {
            Err(meta.error("unknown argument; expected `crate = path`"))
        }
    });
    syn::parse::Parser::parse(parser, attr)?;
    path.ok_or_else(|| syn::Error::new(Span::call_site(), "expected `crate = path`"))
}

fn expand(imp: &mut ItemImpl, krate: &syn::Path) -> syn::Result<()> {
    if imp.trait_.is_none() {
        return Err(syn::Error::new_spanned(
            &imp.self_ty,
            "#[plugin] goes on `impl Plugin for YourType { ... }`",
        ));
    }
    let mut flags = Vec::new();
    for item in &imp.items {
        match item {
            ImplItem::Fn(f) => {
                let name = f.sig.ident.to_string();
                if let Some((_, flag)) = HOOKS.iter().find(|(hook, _)| *hook == name) {
                    flags.push(syn::Ident::new(flag, Span::call_site()));
                }
            }
            ImplItem::Const(c) if c.ident == "HOOKS" => {
                return Err(syn::Error::new_spanned(
                    &c.ident,
                    "#[plugin] computes `HOOKS` from the `on_*` methods; remove this const \
                     (or remove #[plugin] to set it by hand)",
                ));
            }
            _ => {}
        }
    }
    let item: ImplItem = syn::parse_quote! {
        const HOOKS: #krate::HookSet = #krate::HookSet::empty() #(.union(#krate::HookSet::#flags))*;
    };
    imp.items.push(item);
    Ok(())
}
