//! Sans-IO parts of the DHT: ids and the wire codec.

pub mod id;
pub mod krpc;
