//! The fake upstream: a fixed chat completion at once, and embedding-like vectors built on a
//! thread of their own whose CPU time is read per window.

use super::*;

/// Chat answers from memory; embedding answers built on the `fake-embed` thread.
pub(crate) struct Fake {
    pub(crate) addr: SocketAddr,
    pub(crate) embed_tid: u32,
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
    pub(crate) embeddings: Arc<AtomicU64>,
}

/// One `/v1/embeddings` request's body (its inputs and encoding are read on the embedding
/// thread, so their cost counts as the fake's), and where its answer goes.
pub(crate) type EmbedJob = (Bytes, oneshot::Sender<Bytes>);

impl Fake {
    pub(crate) async fn start(dim: usize, latent: usize) -> Fake {
        let (jobs, inbox) = mpsc::channel::<EmbedJob>();
        let (tid_tx, tid_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("fake-embed".into())
            .spawn(move || embed_thread(&inbox, dim, latent, &tid_tx))
            .expect("embed thread");
        let embed_tid = tid_rx.recv().expect("embed thread id");
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let embeddings = Arc::new(AtomicU64::new(0));
        let counter = embeddings.clone();
        let chat = Bytes::from(chat_answer());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let (jobs, chat, counter) = (jobs.clone(), chat.clone(), counter.clone());
                        tokio::spawn(async move {
                            let service = service_fn(move |request| {
                                answer(request, jobs.clone(), chat.clone(), counter.clone())
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    _ = stopped.changed() => break,
                }
            }
        });
        Fake {
            addr,
            embed_tid,
            stop,
            embeddings,
        }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
    }

    /// CPU seconds the embedding thread has used.
    pub(crate) fn embed_cpu(&self) -> f64 {
        thread_cpu(self.embed_tid)
    }
}

pub(crate) async fn answer(
    request: Request<Incoming>,
    jobs: mpsc::Sender<EmbedJob>,
    chat: Bytes,
    embeddings: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let post = request.method() == Method::POST;
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = |status: StatusCode, bytes: Bytes| {
        let mut response = Response::new(Full::new(bytes));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(response)
    };
    match (post, path.as_str()) {
        (true, "/v1/chat/completions") => json(StatusCode::OK, chat),
        (true, "/v1/embeddings") => {
            embeddings.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            let _ = jobs.send((body, tx));
            json(StatusCode::OK, rx.await.unwrap_or_default())
        }
        _ => json(StatusCode::NOT_FOUND, Bytes::from_static(b"{}")),
    }
}

/// Builds embedding answers as the API does: one item per input (a string or an array of
/// them, as deja batches prompts), `encoding_format` float or base64 (little-endian f32s).
pub(crate) fn embed_thread(
    inbox: &mpsc::Receiver<EmbedJob>,
    dim: usize,
    latent: usize,
    tid: &mpsc::Sender<u32>,
) {
    let _ = tid.send(own_tid());
    let kind = VectorKind::new(dim, latent);
    while let Ok((request, reply)) = inbox.recv() {
        let request: serde_json::Value = serde_json::from_slice(&request).unwrap_or_default();
        let inputs: Vec<&str> = match &request["input"] {
            serde_json::Value::Array(items) => items.iter().filter_map(|v| v.as_str()).collect(),
            one => vec![one.as_str().unwrap_or_default()],
        };
        let base64 = request["encoding_format"] == "base64";
        let data: Vec<serde_json::Value> = inputs
            .iter()
            .enumerate()
            .map(|(index, input)| {
                let seed = u64::from_le_bytes(
                    blake3::hash(input.as_bytes()).as_bytes()[..8]
                        .try_into()
                        .expect("8 bytes"),
                );
                let vector = kind.next(&mut fastrand::Rng::with_seed(seed));
                let embedding = if base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(vector)
                };
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        let tokens: usize = inputs.iter().map(|i| i.split_whitespace().count()).sum();
        let body = json!({
            "object": "list",
            "data": data,
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        });
        let _ = reply.send(Bytes::from(body.to_string()));
    }
}

pub(crate) fn chat_answer() -> String {
    json!({
        "id": "chatcmpl-missgrowth000000000000000000",
        "object": "chat.completion",
        "created": 1_764_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "An answer of a few words.",
                "refusal": null,
                "annotations": []
            },
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 24,
            "completion_tokens": 7,
            "total_tokens": 31,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0
            }
        },
        "service_tier": "default",
        "system_fingerprint": "fp_bench0000"
    })
    .to_string()
}
