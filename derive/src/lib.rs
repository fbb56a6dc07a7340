//! Derives for choreo, re-exported next to their traits: `choreo::Event` and `choreo::Emit`.
//!
//! `#[derive(Event)]` names a saga event:
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
use syn::{parse_macro_input, Data, DeriveInput, Fields, LitStr};

/// Implements `choreo::Emit` for an enum whose variants each hold one event: a step that
/// returns it emits the event of the variant it returns. Each variant's event has its own
/// consumers and compensation, and may be terminal.
///
/// ```
/// use choreo::{Emit, Event, Step, StepResult};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Event)]
/// #[event(name = "hotels.HotelBooked.v1")]
/// struct HotelBooked { room: u32 }
///
/// #[derive(Serialize, Deserialize, Event)]
/// #[event(name = "hotels.HotelWaitlisted.v1")]
/// struct HotelWaitlisted { position: u32 }
///
/// #[derive(Emit)]
/// enum HotelOutcome {
///     Booked(HotelBooked),
///     Waitlisted(HotelWaitlisted),
/// }
///
/// async fn book_hotel(free_rooms: u32) -> StepResult<HotelOutcome> {
///     Ok(Step::done(if free_rooms > 0 {
///         HotelOutcome::Booked(HotelBooked { room: 12 })
///     } else {
///         HotelOutcome::Waitlisted(HotelWaitlisted { position: 3 })
///     }))
/// }
///
/// assert_eq!(
///     HotelOutcome::EMITTED_TYPES,
///     ["hotels.HotelBooked.v1", "hotels.HotelWaitlisted.v1"]
/// );
/// ```
///
/// A variant that does not hold exactly one event does not compile:
///
/// ```compile_fail
/// #[derive(choreo::Emit)]
/// enum Outcome {
///     Nothing,
/// }
/// ```
#[proc_macro_derive(Emit)]
pub fn derive_emit(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    let Data::Enum(data) = &input.data else {
        return syn::Error::new(
            input.ident.span(),
            "#[derive(Emit)] is for an enum whose variants each hold one event; a struct that is one event implements `choreo::Event`",
        )
        .to_compile_error()
        .into();
    };
    let mut types = Vec::new();
    let mut arms = Vec::new();
    for variant in &data.variants {
        let field = match &variant.fields {
            Fields::Unnamed(fields) if fields.unnamed.len() == 1 => &fields.unnamed[0],
            _ => {
                return syn::Error::new(
                    variant.ident.span(),
                    "each variant holds one event: `Variant(SomeEvent)`",
                )
                .to_compile_error()
                .into()
            }
        };
        let ty = &field.ty;
        let name = &variant.ident;
        types.push(quote! { <#ty as ::choreo::Event>::TYPE });
        arms.push(quote! {
            Self::#name(event) => ::choreo::Emit::into_event(event),
        });
    }
    let ident = &input.ident;
    let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        impl #impl_generics ::choreo::Emit for #ident #type_generics #where_clause {
            const EMITTED_TYPES: &'static [&'static str] = &[#(#types),*];

            fn into_event(
                self,
            ) -> ::core::result::Result<
                ::core::option::Option<(&'static str, ::std::boxed::Box<::choreo::__derive::RawValue>)>,
                ::choreo::__derive::JsonError,
            > {
                match self {
                    #(#arms)*
                }
            }
        }
    }
    .into()
}

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
