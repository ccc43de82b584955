//! Membership core: see the crate docs.
