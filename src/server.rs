//! Start-up and the listener. `start` builds the state every handler shares (`App`) and the
//! services above it that own their stores (the job queue, the batch store), joins the other
//! replicas, then accepts connections (HTTP/1.1 and HTTP/2), runs each request in its own task
//! (so a client that disconnects cannot cancel the caching side effects of its request),
//! sweeps expired entries in the background, and drains connections on shutdown.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::app::{App, StartError};
use crate::batch::{BatchMetrics, Batches};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::edge::connection;
use crate::edge::route::{Proxy, route};
use crate::edge::write_deadline::WriteDeadline;
use crate::error::ApiError;
use crate::jobs::{JobMetrics, Jobs};
use crate::replica::Replica;

/// How long shutdown waits for in-flight requests and streams.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// A started proxy. Dropping it does not stop it; call `shutdown`.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The admin listener's address, when `admin.listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    /// The Batch API's store, when batches are answered here.
    pub batches: Option<Arc<Batches>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    admin_stop: watch::Sender<bool>,
    admin: Option<JoinHandle<()>>,
    /// Tasks that stop with the listener (job workers): awaited on shutdown, so none of them
    /// still holds the app, and its store, once `shutdown` returns.
    background: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting, drains connections (up to a deadline), flushes the store.
    pub async fn shutdown(self) {
        self.app.draining.store(true, Ordering::Relaxed);
        let _ = self.stop.send(true);
        let _ = self.task.await;
        for task in self.background {
            let _ = task.await;
        }
        // The admin listener goes last, so probes see `/readyz` fail during the drain.
        let _ = self.admin_stop.send(true);
        if let Some(admin) = self.admin {
            let _ = admin.await;
        }
    }

    /// Runs until `signal` completes, then shuts down. Returns false when the listener died
    /// first (its task panicked): the caller must then exit non-zero, not serve without it.
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> bool {
        tokio::select! {
            _ = signal => {
                tracing::info!("shutting down");
                self.shutdown().await;
                true
            }
            _ = &mut self.task => {
                let _ = self.admin_stop.send(true);
                false
            }
        }
    }
}

/// Binds `config.server.listen` (port 0 picks a free port) and starts serving.
pub async fn start(config: Config, clock: SharedClock) -> Result<RunningServer, StartError> {
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let admin_listener = match config.admin.listen {
        Some(admin_addr) => {
            Some(
                TcpListener::bind(admin_addr)
                    .await
                    .map_err(|source| StartError::Bind {
                        addr: admin_addr,
                        source,
                    })?,
            )
        }
        None => None,
    };
    let admin_addr = admin_listener
        .as_ref()
        .and_then(|listener| listener.local_addr().ok());
    let proxy = tokio::task::spawn_blocking(move || build(config, clock))
        .await
        .map_err(|e| StartError::Bind {
            addr,
            source: std::io::Error::other(e),
        })??;
    let proxy = Arc::new(proxy);
    let app = proxy.app.clone();
    let batches = proxy.batches.clone();
    // `[redis]`: load what other replicas stored before serving (nothing without it).
    attach_replica(&app).await;
    tracing::info!(
        %addr,
        upstream = %app.config().upstream.base_url,
        cache = app.cache.is_some(),
        entries = app.cache.as_ref().map_or(0, |c| c.entries()),
        indexed = app.cache.as_ref().map_or(0, |c| c.indexed()),
        "deja listening"
    );
    {
        let config = app.config();
        if config.upstream.api_key.is_some() && !config.managed() {
            // Anyone who reaches the listener spends this key: say so once.
            tracing::warn!(
                "upstream.api_key is set without [[keys]]: every caller that can reach {addr} \
                 uses it; list deja keys to require authentication"
            );
        }
    }
    let (stop, stopped) = watch::channel(false);
    let (admin_stop, admin_stopped) = watch::channel(false);
    let admin = admin_listener.map(|listener| {
        tracing::info!(addr = ?admin_addr, "admin listening");
        tokio::spawn(crate::ops::admin::serve(
            listener,
            app.clone(),
            admin_stopped,
        ))
    });
    // Job workers send to this listener, so they start once it is bound; they stop with it.
    let background = match &proxy.jobs {
        Some(jobs) => crate::jobs::start(&app, jobs, addr, stopped.clone()),
        None => Vec::new(),
    };
    let task = tokio::spawn(serve_or_fail(listener, proxy, stopped));
    Ok(RunningServer {
        addr,
        admin_addr,
        app,
        batches,
        stop,
        task,
        admin_stop,
        admin,
        background,
    })
}

/// `serve`, and if it panics, `/readyz` fails from then on: a proxy whose accept loop is
/// gone must not stay in a load balancer.
async fn serve_or_fail(listener: TcpListener, proxy: Arc<Proxy>, stopped: watch::Receiver<bool>) {
    let app = proxy.app.clone();
    let served = AssertUnwindSafe(serve(listener, proxy, stopped))
        .catch_unwind()
        .await;
    if served.is_err() {
        app.draining.store(true, Ordering::Relaxed);
        tracing::error!("the listener stopped after a panic; not ready");
    }
}

async fn serve(listener: TcpListener, proxy: Arc<Proxy>, mut stopped: watch::Receiver<bool>) {
    let app = proxy.app.clone();
    let sweeper = app.cache.clone().map(|cache| {
        let every = Duration::from_secs(app.config().cache.sweep_interval_secs);
        let app = app.clone();
        let batches = proxy.batches.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let cache = cache.clone();
                let app = app.clone();
                let batches = batches.clone();
                let sweep = move || {
                    let swept = cache.sweep_expired();
                    if let Some(batches) = &batches {
                        batches.sweep_expired(&app);
                    }
                    cache.dump_index(false);
                    save_dashboard(&app);
                    swept
                };
                match tokio::task::spawn_blocking(sweep).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::debug!(removed = n, "expired entries swept"),
                    Ok(Err(err)) => tracing::warn!(error = %err, "expiry sweep failed"),
                    Err(err) => tracing::warn!(error = %err, "expiry sweep panicked"),
                }
            }
        })
    });

    let builder = connection::builder(Duration::from_secs(app.config().server.header_timeout_secs));
    // Each connection holds a receiver until it is gone; shutdown waits for all of them.
    let (drain, draining) = watch::channel(false);
    // A permit per open connection: past the limit, new clients wait in the kernel's queue
    // instead of exhausting file descriptors and memory.
    let permits = Arc::new(Semaphore::new(app.config().server.max_connections));
    let write_timeout = Duration::from_secs(app.config().server.write_timeout_secs);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stopped.changed() => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Usually fd exhaustion: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let deadlines = connection::deadlines(&app.config().server);
                let proxy = proxy.clone();
                let handler = move |request| {
                    let proxy = proxy.clone();
                    async move {
                        match tokio::spawn(route(proxy, request)).await {
                            Ok(response) => response,
                            Err(err) => {
                                tracing::error!(error = %err, "handler panicked");
                                ApiError::Internal.into_response()
                            }
                        }
                    }
                };
                let stream = WriteDeadline::new(stream, write_timeout);
                tokio::spawn(connection::serve(&builder, stream, Some(permit), deadlines, draining.clone(), handler));
            }
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    if !connection::drain(drain, draining, DRAIN_DEADLINE).await {
        tracing::warn!("drain deadline passed; closing");
    }
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
    if let Some(cache) = app.cache.clone() {
        let app = app.clone();
        let _ = tokio::task::spawn_blocking(move || {
            cache.dump_index(true);
            save_dashboard(&app);
            cache.flush()
        })
        .await;
    }
}

/// Keeps the dashboard's totals beside the cache (read back at start-up).
fn save_dashboard(app: &App) {
    if let Err(err) = app.dashboard.save(&app.config().cache.dir) {
        tracing::warn!(error = %err, "dashboard totals not saved");
    }
}

/// Joins the cluster when `[redis]` is configured and the cache is open; a replica that
/// cannot even parse its Redis URL logs why and runs alone.
async fn attach_replica(app: &App) {
    let (Some(config), Some(cache)) = (app.config().redis.clone(), app.cache.clone()) else {
        return;
    };
    match Replica::start(cache, config).await {
        Ok(replica) => {
            app.inflight.set_remote(replica.leases());
            let _ = app.replica.set(replica);
        }
        Err(err) => tracing::error!(error = %err, "[redis] unusable; this replica runs alone"),
    }
}

/// The state, then the services above it that own their stores: the job queue and the
/// Batch API. Either failing to open leaves only its own calls off (logged), never the proxy.
/// Blocking (it opens sled databases); run it off the async workers.
fn build(config: Config, clock: SharedClock) -> Result<Proxy, StartError> {
    let job_metrics = JobMetrics::default();
    let batch_metrics = BatchMetrics::default();
    let app = App::build(config, clock, |registry| {
        job_metrics.register(registry);
        batch_metrics.register(registry);
    })?;
    let config = app.config();
    let jobs = config
        .jobs
        .enabled
        .then(|| Jobs::open(&config, job_metrics))
        .and_then(|opened| {
            opened
                .inspect_err(|err| tracing::error!(error = %err, "job queue unavailable"))
                .ok()
        })
        .map(Arc::new);
    // Beside the cache's store: without a cache there is nothing to answer batches from.
    let batches = app
        .cache
        .as_ref()
        .and_then(|_| {
            Batches::open(&config, batch_metrics)
                .inspect_err(|err| tracing::error!(error = %err, "batch store unavailable; batches are relayed"))
                .ok()
        })
        .map(Arc::new);
    drop(config);
    Ok(Proxy {
        app: Arc::new(app),
        jobs,
        batches,
    })
}
