//! Sans-IO parts of the DHT: ids, the wire codec and the routing table.

pub mod id;
pub mod krpc;
pub mod table;
