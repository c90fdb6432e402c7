//! `[server]`: the listener applications talk to. Every key here is bound at start-up.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on; loopback by default so nothing is exposed by accident.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most JSON items (elements, members, containers) in a body deja parses; more get 400.
    pub max_json_values: usize,
    /// Connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Seconds a client may take to send its request headers (slow-loris defence).
    pub header_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in flight; then it is closed.
    pub idle_timeout_secs: u64,
    /// Seconds a client may take to send a body deja reads whole (cached endpoints), and the
    /// longest pause within a body streamed upstream (other paths); then 408.
    pub body_timeout_secs: u64,
    /// Seconds a response may wait for the client to read before the connection is cut.
    pub write_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 32 * 1024 * 1024,
            max_json_values: 1_000_000,
            max_connections: 4096,
            header_timeout_secs: 30,
            idle_timeout_secs: 60,
            body_timeout_secs: 60,
            write_timeout_secs: 60,
        }
    }
}

impl ServerConfig {
    /// A reload cannot change the listener: the whole section needs a restart.
    pub(super) fn keep_start_up(&self, next: &mut Self, changed: &mut Vec<&'static str>) {
        keep!(self, next, changed, "server");
    }
}
