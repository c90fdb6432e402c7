//! The HTTP edge, where a request enters: its connections (with their
//! deadlines), which path spellings are accepted (`request_path`), which handler a path goes
//! to, and WebSocket upgrades tunnelled to the upstream (`tunnel`).

pub mod connection;
pub mod request_path;
pub mod route;
pub mod tunnel;
pub(crate) mod write_deadline;
