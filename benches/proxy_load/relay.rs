//! A bare relay: the floor under any proxy's streaming cost. It forwards each request to the
//! fake upstream with hyper's client and hands the upstream's body back frame by frame,
//! reading nothing: no parsing, no cache, no store. What a streamed request costs through it
//! is what relaying alone costs on this machine (two more sockets, a read and a write per
//! chunk), so deja's figures can be set against it rather than only against the bare upstream.

use futures_util::StreamExt;

use super::*;

type RelayClient = Client<HttpConnector, Incoming>;

/// Starts the relay on 127.0.0.1:0 in front of `upstream`.
pub(crate) async fn start(upstream: SocketAddr) -> Server {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: RelayClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    Server::start(move |request| forward(client.clone(), upstream, request)).await
}

async fn forward(
    client: RelayClient,
    upstream: SocketAddr,
    request: Request<Incoming>,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("http://{upstream}{path}")
        .parse()
        .expect("upstream uri");
    parts.headers.remove(header::HOST);
    let Ok(response) = client.request(Request::from_parts(parts, body)).await else {
        return respond(
            StatusCode::BAD_GATEWAY,
            "application/json",
            Full::new(Bytes::from_static(b"{}")).boxed_unsync(),
        );
    };
    let (parts, body) = response.into_parts();
    // The bench's body type cannot fail: an upstream error ends the relayed body there.
    let frames = http_body_util::BodyStream::new(body).scan((), |(), frame| {
        std::future::ready(frame.ok().map(Ok::<_, Infallible>))
    });
    Response::from_parts(parts, StreamBody::new(frames).boxed_unsync())
}
