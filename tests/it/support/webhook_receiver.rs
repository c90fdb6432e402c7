//! A loopback webhook receiver that checks Standard Webhooks signatures on its own (its
//! own HMAC, not deja's code), records every delivery, and can refuse the first few.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;

/// The secret tests configure: `whsec_` + base64 of 32 bytes.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwZGVqYS10ZXN0";

#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub timestamp: u64,
    /// Whether `webhook-signature` matched the body under `SECRET`.
    pub signed: bool,
    pub body: Value,
}

pub struct WebhookReceiver {
    pub addr: SocketAddr,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    refuse_first: Arc<AtomicUsize>,
}

impl WebhookReceiver {
    /// Answers 500 to the first `refuse` deliveries, then 204.
    pub async fn start(refuse: usize) -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let refuse_first = Arc::new(AtomicUsize::new(refuse));
        let (seen, refusing) = (deliveries.clone(), refuse_first.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, refusing) = (seen.clone(), refusing.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |request: Request<Incoming>| {
                        let (seen, refusing) = (seen.clone(), refusing.clone());
                        async move {
                            let delivery = read(request).await;
                            seen.lock().push(delivery);
                            let refuse = refusing
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok();
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = if refuse {
                                StatusCode::INTERNAL_SERVER_ERROR
                            } else {
                                StatusCode::NO_CONTENT
                            };
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        WebhookReceiver {
            addr,
            deliveries,
            refuse_first,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().clone()
    }

    /// Waits until `n` deliveries arrived (or panics after 20 s).
    pub async fn wait_for(&self, n: usize) -> Vec<Delivery> {
        for _ in 0..400 {
            if self.deliveries.lock().len() >= n {
                return self.deliveries();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{n} webhook deliveries expected, got {:?}",
            self.deliveries()
        );
    }

    pub fn refusals_left(&self) -> usize {
        self.refuse_first.load(Ordering::SeqCst)
    }
}

async fn read(request: Request<Incoming>) -> Delivery {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let key = STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .expect("secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    // The header may list several space-separated signatures; one must match.
    let signed = signature.split(' ').any(|s| s == expected);
    Delivery {
        id,
        timestamp: timestamp.parse().unwrap_or(0),
        signed,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    }
}
