//! The HTTP edge, where a request enters: the listener and its connections (with their
//! deadlines), and which handler a path goes to.

pub mod connection;
pub mod route;
pub mod server;
mod write_deadline;
