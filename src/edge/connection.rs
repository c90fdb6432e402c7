//! One client connection (HTTP/1.1 or HTTP/2), with deadlines so that a connection that is
//! not used cannot hold a `server.max_connections` slot for ever:
//! - its first request must arrive within `server.header_timeout_secs` of the accept. hyper's
//!   HTTP/1 header timeout starts only once the protocol is known, so a socket that sends
//!   nothing, or only the HTTP/2 preface, was never closed;
//! - with no request in flight for `server.idle_timeout_secs` it is closed (HTTP/2 has no
//!   idle timeout of its own, and an idle keep-alive connection is a slot nobody uses).
//!
//! A request is in flight from the moment hyper hands it to the handler until its response
//! body has been sent or dropped, so a long upstream wait or a long stream is never cut.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit, watch};
use tokio::time::Instant;

use crate::config::ServerConfig;
use crate::wire::body::{BoxError, ProxyBody};

/// How long a connection may go unused.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// From the accept to the first complete request head.
    pub first_request: Duration,
    /// With no request in flight, after the first one.
    pub idle: Duration,
}

/// The deadlines `server` sets.
pub fn deadlines(server: &ServerConfig) -> Deadlines {
    Deadlines {
        first_request: Duration::from_secs(server.header_timeout_secs),
        idle: Duration::from_secs(server.idle_timeout_secs),
    }
}

/// The `max_connections` slot a connection holds. Requests carry a clone in their extensions,
/// so a tunnel (a WebSocket) that outlives hyper's connection keeps the slot until it closes.
#[derive(Clone)]
pub struct Slot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// A server builder: HTTP/1.1 and HTTP/2, with hyper's HTTP/1 header timeout.
pub fn builder(header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
}

/// Tells every connection served with `draining` (see `serve`) to finish, then waits until
/// they are all gone or `deadline` passes: false if some were still open then.
pub async fn drain(
    drain: watch::Sender<bool>,
    draining: watch::Receiver<bool>,
    deadline: Duration,
) -> bool {
    drop(draining);
    let _ = drain.send(true);
    tokio::select! {
        _ = drain.closed() => true,
        _ = tokio::time::sleep(deadline) => false,
    }
}

/// Serves `stream` with `handler` until the client closes, a deadline passes, or `drain`
/// turns true (then in-flight requests finish first). The returned future holds a clone of
/// `drain` until the connection is gone, so the server can wait for all of them.
pub fn serve<S, H, F>(
    builder: &auto::Builder<TokioExecutor>,
    stream: S,
    slot: Option<OwnedSemaphorePermit>,
    deadlines: Deadlines,
    mut drain: watch::Receiver<bool>,
    handler: H,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let activity = Activity::new();
    let slot = slot.map(|permit| Slot(Arc::new(permit)));
    let requests = activity.clone();
    let service = service_fn(move |mut request: Request<Incoming>| {
        let in_flight = requests.begin();
        if let Some(slot) = &slot {
            request.extensions_mut().insert(slot.clone());
        }
        let response = handler(request);
        async move {
            let response = response.await;
            Ok::<_, Infallible>(response.map(|body| {
                InFlightBody {
                    body,
                    failed: None,
                    in_flight,
                }
                .boxed_unsync()
            }))
        }
    });
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .into_owned();
    async move {
        tokio::pin!(connection);
        let mut shutting_down = false;
        // Set when an unused connection was asked to close: past it, it is dropped (an HTTP/2
        // peer may never acknowledge the GOAWAY).
        let mut drop_at = None;
        loop {
            let wake = activity.deadline(deadlines);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    return;
                }
                // A request started or ended: the deadline moved.
                _ = activity.0.changed.notified(), if !shutting_down => {}
                _ = tokio::time::sleep_until(wake), if !shutting_down => {
                    if activity.expired(deadlines) {
                        tracing::debug!("closing an unused connection");
                        connection.as_mut().graceful_shutdown();
                        shutting_down = true;
                        drop_at = Some(Instant::now() + deadlines.first_request);
                    }
                }
                // Changed, or the server is gone: either way, finish what is in flight.
                _ = drain.changed(), if !shutting_down => {
                    connection.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
                _ = tokio::time::sleep_until(drop_at.unwrap_or(wake)), if drop_at.is_some() => {
                    return;
                }
            }
        }
    }
}

/// Requests in flight on one connection, and since when none has been.
#[derive(Clone)]
struct Activity(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    /// Wakes the connection's watchdog when a request starts or ends (its deadline moved).
    changed: Notify,
}

struct State {
    in_flight: usize,
    served: bool,
    idle_since: Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity(Arc::new(Shared {
            state: Mutex::new(State {
                in_flight: 0,
                served: false,
                idle_since: Instant::now(),
            }),
            changed: Notify::new(),
        }))
    }

    fn begin(&self) -> InFlight {
        let mut state = self.0.state.lock();
        state.in_flight += 1;
        state.served = true;
        self.0.changed.notify_one();
        InFlight(self.clone())
    }

    /// When the connection's current deadline passes (busy: look again an idle period later).
    fn deadline(&self, deadlines: Deadlines) -> Instant {
        let state = self.0.state.lock();
        match (state.in_flight, state.served) {
            (0, false) => state.idle_since + deadlines.first_request,
            (0, true) => state.idle_since + deadlines.idle,
            _ => Instant::now() + deadlines.idle,
        }
    }

    fn expired(&self, deadlines: Deadlines) -> bool {
        let idle = self.0.state.lock().in_flight == 0;
        idle && self.deadline(deadlines) <= Instant::now()
    }
}

/// One request in flight; dropped with its response body.
struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.0.state.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            self.0.0.changed.notify_one();
        }
    }
}

/// A response body that keeps its request counted as in flight until it is sent or dropped.
///
/// Its error is handed on one poll late. hyper drops a connection whose body fails without
/// writing out what it had buffered, so a relayed stream cut right after its first events
/// (all read in one go on a busy machine) reached the client as nothing at all, not even the
/// status line: an `IncompleteMessage` on a reused connection. Returning `Pending` once lets
/// hyper flush the head and the events first; the client then sees them, then the cut.
struct InFlightBody {
    body: ProxyBody,
    failed: Option<BoxError>,
    #[allow(dead_code)]
    in_flight: InFlight,
}

impl Body for InFlightBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(err) = self.failed.take() {
            return Poll::Ready(Some(Err(err)));
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Err(err))) => {
                self.failed = Some(err);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A body whose events and failure are all ready at once (a relayed stream cut right
    /// after its first events, read in one go): the client still gets the status line and
    /// the events before the connection closes.
    #[tokio::test]
    async fn what_a_failing_body_yielded_reaches_the_client_before_the_cut() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_drain, draining) = watch::channel(false);
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let deadlines = Deadlines {
                first_request: Duration::from_secs(5),
                idle: Duration::from_secs(5),
            };
            let handler = |_request: Request<Incoming>| async {
                let chunks: Vec<Result<Bytes, BoxError>> = vec![
                    Ok(Bytes::from_static(b"data: first event\n\n")),
                    Err("the upstream cut the stream".into()),
                ];
                Response::new(crate::wire::body::streaming(futures_util::stream::iter(
                    chunks,
                )))
            };
            serve(
                &builder(Duration::from_secs(5)),
                stream,
                None,
                deadlines,
                draining,
                handler,
            )
            .await;
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /v1/x HTTP/1.1\r\nhost: deja\r\n\r\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut seen));
        let _ = read.await.expect("the connection closes");
        let seen = String::from_utf8_lossy(&seen);
        assert!(seen.starts_with("HTTP/1.1 200 OK\r\n"), "{seen:?}");
        assert!(seen.contains("data: first event"), "{seen:?}");
        assert!(
            !seen.ends_with("0\r\n\r\n"),
            "must not look complete: {seen:?}"
        );
    }
}
