//! The console's pages: plain HTML, pictures drawn here as SVG.
//!
//! Every function here renders a view model the server gathered, and nothing else: no I/O,
//! no request types (the handlers gather, the pages render). Every dynamic text goes through
//! [`escape`]; every page shares one inline style sheet and works without scripts.

mod dead_letters;
mod escape;
mod graph;
mod layout;
mod saga;
mod sagas;
mod text;
mod timeline;

#[cfg(test)]
pub(crate) mod check;
#[cfg(test)]
pub(crate) mod fixtures;

pub use dead_letters::dead_letters_page;
pub use escape::{escape, short_id, short_type, url_part};
pub use graph::{describe, graph_page, graph_svg};
pub use layout::{duration, message_page};
pub use saga::saga_page;
pub use sagas::saga_list;
pub use text::text_timeline;
pub use timeline::timeline_svg;

pub(crate) use escape::cut;
pub(crate) use graph::{
    is_sink, is_unconsumed, is_unknown, layout as graph_layout, target as graph_target, END,
};
pub(crate) use timeline::failed_compensations;
