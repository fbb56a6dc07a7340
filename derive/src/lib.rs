//! `#[derive(Event)]` for choreo, re-exported as `choreo::Event` next to the trait.
//!
//! ```
//! use choreo::Event;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Event)]
//! #[event(name = "payments.CreditReserved.v1")]
//! struct CreditReserved {
//!     order_id: u64,
//! }
//!
//! assert_eq!(CreditReserved::TYPE, "payments.CreditReserved.v1");
//! ```
//!
//! The name is the CloudEvents `type` on the wire, so it must stay the same across releases:
//! `service.Name.vN` by convention. Without it, or with a name that cannot be one, the
//! derive does not compile:
//!
//! ```compile_fail
//! #[derive(serde::Serialize, serde::Deserialize, choreo::Event)]
//! struct Unnamed;
//! ```
//!
//! ```compile_fail
//! #[derive(serde::Serialize, serde::Deserialize, choreo::Event)]
//! #[event(name = "credit reserved")]
//! struct Spaced;
//! ```

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, DeriveInput, LitStr};

/// Implements `choreo::Event` with the name given by `#[event(name = "service.Name.v1")]`.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match event_name(&input) {
        Ok(name) => {
            let ident = &input.ident;
            let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
            quote! {
                impl #impl_generics ::choreo::Event for #ident #type_generics #where_clause {
                    const TYPE: &'static str = #name;
                }
            }
            .into()
        }
        Err(error) => error.to_compile_error().into(),
    }
}

/// The `name` of the one `#[event(..)]` attribute, checked.
fn event_name(input: &DeriveInput) -> syn::Result<LitStr> {
    let mut name: Option<LitStr> = None;
    for attribute in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        attribute.parse_nested_meta(|meta| {
            if !meta.path.is_ident("name") {
                return Err(meta.error("expected `name = \"service.Name.v1\"`"));
            }
            if name.is_some() {
                return Err(meta.error("the event's name is given twice"));
            }
            name = Some(meta.value()?.parse()?);
            Ok(())
        })?;
    }
    let name = name.ok_or_else(|| {
        syn::Error::new(
            input.ident.span(),
            "a choreo event needs its stable name: add #[event(name = \"service.Name.v1\")]",
        )
    })?;
    let value = name.value();
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(syn::Error::new(
            name.span(),
            "an event name is a CloudEvents type with no spaces, e.g. \"payments.CreditReserved.v1\"",
        ));
    }
    Ok(name)
}
