//! The shared state every request handler sees (start-up is `crate::server`), and the
//! memo of recent plans it holds (`plans`).

pub mod plans;

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::cache::Cache;
use crate::cache::inflight::Coalescer;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::embed::Embedder;
use crate::managed::keys::KeyRing;
use crate::managed::limits::Limits;
use crate::observe::metrics::Metrics;
use crate::observe::usage::UsageLog;
use crate::upstream::Upstream;
use plans::PlanMemo;

pub struct App {
    /// Swapped whole on reload; read it per request with `config()`.
    config: ArcSwap<Config>,
    pub upstream: Upstream,
    /// `None` when caching is off or the store could not be opened (then deja only relays).
    pub cache: Option<Arc<Cache>>,
    /// `None` when the semantic tier is off.
    pub embedder: Option<Arc<Embedder>>,
    /// Requests currently upstream, by exact key, for coalescing.
    pub inflight: Arc<Coalescer>,
    /// Plans of recently seen bodies; cleared when the configuration changes.
    pub plans: PlanMemo,
    /// Managed keys by hash; swapped with the configuration on reload.
    keys: ArcSwap<KeyRing>,
    pub limits: Limits,
    /// Prometheus series served at `/metrics`; the three below are registered in it.
    pub metrics: Metrics,
    /// `[redis]` replication series (`crate::replica::metrics`).
    pub replica_metrics: crate::replica::metrics::ReplicaMetrics,
    pub usage: UsageLog,
    /// Shadow verification, wrong-hit estimates, error budget, feedback (`crate::trust`).
    pub trust: Arc<crate::trust::Trust>,
    /// The dashboard's bounded records (recent lookups, per-minute totals) and sessions.
    pub dashboard: crate::observe::board::Board,
    pub clock: SharedClock,
    /// Set once shutdown begins: readiness fails so load balancers stop sending.
    pub draining: std::sync::atomic::AtomicBool,
    /// `[redis]` replication, set by `replica::attach` at start-up.
    pub replica: std::sync::OnceLock<Arc<crate::replica::Replica>>,
}

/// One request's configuration (see `App::snapshot`).
pub struct Snapshot {
    pub config: Arc<Config>,
    pub plans_epoch: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("embedding: {0}")]
    Embedder(#[from] crate::embed::BuildError),
    #[error("opening the usage log {path:?}: {source}")]
    UsageLog {
        path: String,
        source: std::io::Error,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl App {
    /// The configuration in force now (a reload swaps it between requests).
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }

    /// The configuration one request runs under, taken once at its start, and the plan
    /// memo's epoch read just before it: a plan made under this configuration is remembered
    /// only if no reload came between (`PlanMemo::remember`).
    pub fn snapshot(&self) -> Snapshot {
        let plans_epoch = self.plans.epoch();
        Snapshot {
            config: Guard::into_inner(self.config.load()),
            plans_epoch,
        }
    }

    /// Puts a new configuration in force for the requests that start after this.
    pub fn replace_config(&self, config: Config) {
        self.keys.store(Arc::new(KeyRing::from_config(&config)));
        self.config.store(Arc::new(config));
        // After the swap, so a plan made under the old configuration is not kept (`epoch`).
        self.plans.clear();
    }

    pub fn keys(&self) -> Guard<Arc<KeyRing>> {
        self.keys.load()
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Builds the state; opening the cache may take a while (it rebuilds the vector index),
    /// so call this off the async workers. A cache that cannot be opened is logged and left
    /// out: deja then relays without caching rather than refusing to serve.
    ///
    /// `more_series` registers the series of the layers above (the job queue's, the Batch
    /// API's) in the same `/metrics`.
    pub fn build(
        config: Config,
        clock: SharedClock,
        more_series: impl FnOnce(&mut prometheus_client::registry::Registry),
    ) -> Result<App, StartError> {
        let upstream = Upstream::new(&config.upstream)?;
        let embedder = if config.cache.semantic {
            Some(Arc::new(Embedder::from_config(&config)?))
        } else {
            None
        };
        let embedder_id = embedder
            .as_ref()
            .map_or_else(|| "none".into(), |embedder| embedder.id());
        let cache = if config.cache.enabled {
            match Cache::open(&config.cache, &embedder_id, clock.clone()) {
                Ok(cache) => Some(Arc::new(cache)),
                Err(err) => {
                    tracing::error!(error = %err, dir = %config.cache.dir.display(), "cache unavailable; relaying without caching");
                    None
                }
            }
        } else {
            None
        };
        let usage = UsageLog::open(&config.usage.log).map_err(|source| StartError::UsageLog {
            path: config.usage.log.clone(),
            source,
        })?;
        // The dashboard's hour and day totals, kept by the previous run (beside the cache).
        let dashboard = crate::observe::board::Board::default();
        if cache.is_some() {
            dashboard.load(&config.cache.dir);
        }
        let replica_metrics = crate::replica::metrics::ReplicaMetrics::default();
        let metrics = Metrics::with_series(|r| {
            replica_metrics.register(r);
            more_series(r);
        });
        let trust = crate::trust::Trust::new(
            &config.cache.trust,
            crate::trust::Reach {
                clock: clock.clone(),
                cache: cache.clone(),
                upstream: upstream.clone(),
                embedder: embedder.clone(),
            },
        );
        Ok(App {
            trust: Arc::new(trust),
            keys: ArcSwap::from_pointee(KeyRing::from_config(&config)),
            limits: Limits::default(),
            metrics,
            replica_metrics,
            usage,
            dashboard,
            clock,
            draining: Default::default(),
            replica: Default::default(),
            config: ArcSwap::from_pointee(config),
            upstream,
            cache,
            embedder,
            inflight: Arc::new(Coalescer::default()),
            plans: PlanMemo::default(),
        })
    }
}
