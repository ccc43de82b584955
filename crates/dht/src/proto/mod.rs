//! Sans-IO parts of the DHT: ids, the wire codec, the routing table and the node's core.

pub mod addr;
pub mod bloom;
pub mod core;
pub mod id;
pub mod krpc;
pub mod table;
