//! Sans-IO cores of the overlay: no sockets, no clock, no tokio.

pub mod hyparview;
pub mod node;
pub mod plumtree;
pub mod search;
