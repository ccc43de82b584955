//! Tracker clients and server.
