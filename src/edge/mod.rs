//! The HTTP edge: the listener and its connections, which handler a path goes to, which paths
//! are accepted, the body type every handler returns, and the wire formats (SSE, `x-deja-*`
//! headers) the rest of deja reads and writes.

pub mod body;
pub mod connection;
pub mod headers;
pub mod json_budget;
pub mod request_path;
pub mod route;
pub mod server;
pub mod sse;
pub mod write_deadline;
