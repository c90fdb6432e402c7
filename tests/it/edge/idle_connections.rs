//! Connections that are opened but not used are closed, so they cannot hold every
//! `max_connections` slot and starve new clients.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::admin::with_admin;
use crate::support::fake_upstream::http_client;
use crate::support::proxy::{Harness, ask};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a test waits for what the proxy must do within a second or two.
const PATIENCE: Duration = Duration::from_secs(10);

/// Waits until the server closes `stream` (EOF or reset); false after `PATIENCE`.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buffer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut buffer))
        .await
        .is_ok()
}

async fn healthz(addr: SocketAddr) -> reqwest::StatusCode {
    let request = http_client().get(format!("http://{addr}/healthz")).send();
    tokio::time::timeout(PATIENCE, request)
        .await
        .expect("a fresh client is served")
        .expect("answers")
        .status()
}

#[tokio::test]
async fn silent_and_preface_only_sockets_do_not_starve_new_clients() {
    let h = Harness::with(|c| {
        c.server.max_connections = 2;
        c.server.header_timeout_secs = 1;
    })
    .await;
    let mut silent = TcpStream::connect(h.proxy.addr).await.unwrap();
    let mut preface_only = TcpStream::connect(h.proxy.addr).await.unwrap();
    preface_only.write_all(H2_PREFACE).await.unwrap();
    assert_eq!(healthz(h.proxy.addr).await, 200);
    assert!(
        closed_by_server(&mut silent).await,
        "silent socket still open"
    );
    assert!(
        closed_by_server(&mut preface_only).await,
        "HTTP/2 preface socket still open"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let h = Harness::with(|c| {
        c.server.max_connections = 1;
        c.server.idle_timeout_secs = 1;
    })
    .await;
    let mut kept = TcpStream::connect(h.proxy.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: deja\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 256];
    let read = kept.read(&mut answer).await.unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
    // The keep-alive connection holds the only slot until it has been idle for a second.
    assert_eq!(healthz(h.proxy.addr).await, 200);
    assert!(
        closed_by_server(&mut kept).await,
        "idle connection still open"
    );
}

#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let h = Harness::with(|c| {
        c.server.max_connections = 1;
        c.server.idle_timeout_secs = 1;
    })
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let reply = h2.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(reply.version(), reqwest::Version::HTTP_2);
    assert_eq!(reply.status(), 200);
    // `h2` keeps its connection in its pool: the proxy must close it to serve anyone else.
    assert_eq!(healthz(h.proxy.addr).await, 200);
    drop(h2);
}

#[tokio::test]
async fn a_request_in_flight_is_not_idle() {
    let h = Harness::with(|c| c.server.idle_timeout_secs = 1).await;
    // The upstream takes longer than the idle timeout to answer.
    h.upstream.set_latency(Duration::from_millis(2500));
    let reply = h.chat(&ask("a slow question")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(!reply.content().is_empty());
}

#[tokio::test]
async fn the_admin_listener_closes_unused_sockets_too() {
    let h = Harness::with(|c| {
        with_admin(c);
        c.server.header_timeout_secs = 1;
    })
    .await;
    let admin = h.proxy.admin_addr.unwrap();
    let mut silent = TcpStream::connect(admin).await.unwrap();
    let mut preface_only = TcpStream::connect(admin).await.unwrap();
    preface_only.write_all(H2_PREFACE).await.unwrap();
    assert!(
        closed_by_server(&mut silent).await,
        "silent socket still open"
    );
    assert!(
        closed_by_server(&mut preface_only).await,
        "HTTP/2 preface socket still open"
    );
    assert_eq!(healthz(admin).await, 200);
}
