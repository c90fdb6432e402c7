//! What deja reads and writes on the wire, shared by every layer: the response body type every
//! handler returns, Server-Sent Events, the `x-deja-*` header names, and what a JSON body may
//! cost before it is parsed.

pub mod body;
pub mod endpoint;
pub mod headers;
pub mod json_budget;
pub mod sse;
