//! The bare server (the baseline), the fake upstream deja forwards misses to, and deja itself.

use super::*;

/// A hyper HTTP/1.1 server on 127.0.0.1:0; `stop` ends the accept loop and drops every
/// connection task.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) task: JoinHandle<()>,
}

impl Server {
    pub(crate) async fn start<H, F>(handler: H) -> Server
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let handler = handler.clone();
                        connections.spawn(async move {
                            let service = service_fn(move |request| {
                                let response = handler(request);
                                async move { Ok::<_, Infallible>(response.await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                    _ = stopped.changed() => break,
                }
            }
            connections.shutdown().await;
        });
        Server { addr, stop, task }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Body,
) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A fake OpenAI upstream: `POST /v1/chat/completions` answers a fixed completion after a
/// settable latency, or (for `"stream":true`) a fixed SSE stream.
pub(crate) struct FakeUpstream {
    pub(crate) latency_ms: AtomicU64,
    pub(crate) completion: Bytes,
    pub(crate) chunks: Vec<Bytes>,
}

impl FakeUpstream {
    pub(crate) fn new() -> FakeUpstream {
        let content = "Caching repeated questions saves both time and money, because an answer \
                       that was already paid for can be served again in microseconds. "
            .repeat(5);
        let completion = json!({
            "id": "chatcmpl-fakeupstream0000000000000000",
            "object": "chat.completion",
            "created": 1_764_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content.trim_end(), "refusal": null},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 24, "completion_tokens": 150, "total_tokens": 174},
            "service_tier": "default",
            "system_fingerprint": "fp_bench0000"
        });
        let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
            let chunk = json!({
                "id": "chatcmpl-fakeupstream0000000000000000",
                "object": "chat.completion.chunk",
                "created": 1_764_000_000,
                "model": "gpt-4o-mini-2024-07-18",
                "system_fingerprint": "fp_bench0000",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
            });
            Bytes::from(format!("data: {chunk}\n\n"))
        };
        let mut chunks = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            json!(null),
        )];
        for word in content.split_whitespace().take(STREAM_CHUNKS - 2) {
            chunks.push(chunk(json!({"content": format!("{word} ")}), json!(null)));
        }
        chunks.push(chunk(json!({}), json!("stop")));
        chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
        FakeUpstream {
            latency_ms: AtomicU64::new(0),
            completion: Bytes::from(completion.to_string()),
            chunks,
        }
    }

    pub(crate) async fn answer(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        if request.method() != Method::POST || request.uri().path() != CHAT_PATH {
            return respond(
                StatusCode::NOT_FOUND,
                "application/json",
                Full::new(Bytes::from_static(b"{}")).boxed_unsync(),
            );
        }
        let body = match request.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let latency = self.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if !contains(&body, b"\"stream\":true") {
            return respond(
                StatusCode::OK,
                "application/json",
                Full::new(self.completion.clone()).boxed_unsync(),
            );
        }
        let frames = futures_util::stream::unfold(0usize, move |i| {
            let upstream = self.clone();
            async move {
                let chunk = upstream.chunks.get(i)?.clone();
                if i > 0 {
                    tokio::time::sleep(STREAM_GAP).await;
                }
                Some((Ok::<_, Infallible>(Frame::data(chunk)), i + 1))
            }
        });
        respond(
            StatusCode::OK,
            "text/event-stream",
            StreamBody::new(frames).boxed_unsync(),
        )
    }
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Everything the runs talk to.
pub(crate) struct Servers {
    pub(crate) upstream: Server,
    pub(crate) upstream_state: Arc<FakeUpstream>,
    pub(crate) deja: RunningServer,
    pub(crate) bare: Server,
    /// A bare relay in front of the fake upstream (`relay.rs`): the floor of relaying.
    pub(crate) relay: Server,
    pub(crate) hit_body: Bytes,
    /// Holds the sled store; removed after deja has shut down.
    pub(crate) dir: tempfile::TempDir,
}

impl Servers {
    /// Starts the servers on the current runtime; the fake upstream on `upstream_on` instead
    /// when given (a remote upstream's work does not queue on deja's workers).
    pub(crate) async fn start(upstream_on: Option<tokio::runtime::Handle>) -> Servers {
        let upstream_state = Arc::new(FakeUpstream::new());
        let state = upstream_state.clone();
        let start_upstream = Server::start(move |request| state.clone().answer(request));
        let upstream = match upstream_on {
            Some(runtime) => runtime
                .spawn(start_upstream)
                .await
                .expect("upstream starts"),
            None => start_upstream.await,
        };

        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        config.upstream.base_url = format!("http://{}/v1", upstream.addr);
        config.cache.dir = dir.path().join("cache");
        config.cache.semantic = false;
        config.validate().expect("valid config");
        let deja = deja::server::start(config, Arc::new(SystemClock))
            .await
            .expect("deja starts");
        assert!(deja.app.cache.is_some(), "deja opened its cache");

        // Warm one entry, then capture the bytes of a real exact hit.
        let client = http_client(1);
        let uri = uri(deja.addr, CHAT_PATH);
        let body = chat_body(HIT_PROMPT, false);
        let (status, headers, _) = send_whole(&client, &uri, body.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(cache_header(&headers), "miss", "first request is a miss");
        let (status, headers, hit_body) = send_whole(&client, &uri, body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(cache_header(&headers), "hit", "second request is a hit");
        assert_eq!(
            headers.get("x-deja-match").map(HeaderValue::as_bytes),
            Some(&b"exact"[..])
        );
        drop(client);

        let bare_body = hit_body.clone();
        let bare = Server::start(move |request: Request<Incoming>| {
            let body = bare_body.clone();
            async move {
                // Read the request like any real server would.
                let _ = request.into_body().collect().await;
                respond(
                    StatusCode::OK,
                    "application/json",
                    Full::new(body).boxed_unsync(),
                )
            }
        })
        .await;
        let relay = relay::start(upstream.addr).await;
        Servers {
            upstream,
            upstream_state,
            deja,
            bare,
            relay,
            hit_body,
            dir,
        }
    }

    pub(crate) async fn stop(self) {
        self.deja.shutdown().await;
        self.bare.stop().await;
        self.relay.stop().await;
        self.upstream.stop().await;
        drop(self.dir);
    }
}
