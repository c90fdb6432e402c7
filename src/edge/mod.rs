//! The HTTP edge, where a request enters: the listener and its connections (with their
//! deadlines), which path spellings are accepted, and which handler a path goes to.

pub mod connection;
pub mod request_path;
pub mod route;
pub mod server;
pub mod write_deadline;
