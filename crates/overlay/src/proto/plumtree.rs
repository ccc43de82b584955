//! Broadcast core: see the crate docs.
