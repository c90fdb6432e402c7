//! One request's context, made once after planning: the configuration snapshot, the caller's
//! partition and controls, the tracker, the route and the body to send. Everything below
//! `handle` takes it by reference and never reads `App::config()` again, so a reload
//! mid-request cannot mix two configurations.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header;

use super::Endpoint;
use super::Lookup;
use super::decide::{Ask, Vectors};
use crate::app::App;
use crate::app::plans::Routed;
use crate::cache::{Cache, Partition};
use crate::config::Config;
use crate::config::Route;
use crate::flow::control::Controls;
use crate::flow::models;
use crate::track::Tracker;
use crate::upstream::{Failed, Outgoing, Sent};

pub(crate) struct Context {
    pub app: Arc<App>,
    /// The configuration this request runs under (the tracker's snapshot).
    pub config: Arc<Config>,
    pub endpoint: &'static dyn Endpoint,
    pub parts: http::request::Parts,
    /// The path after `/v1`, with the query.
    pub suffix: String,
    pub started: Instant,
    pub tracker: Tracker,
    /// Whose cache the request reads and writes.
    pub partition: Partition,
    pub controls: Controls,
    /// The body to send upstream: the model's alias resolved, and the usage chunk asked for
    /// when the key is metered (`strip_usage`).
    pub body: Bytes,
    /// Prompt and completion tokens the request may use (for per-key limits).
    pub estimate: (u64, u64),
    /// The model routing of this request (`None`: the body names no model).
    pub route: Option<Route>,
    /// deja asked for the stream's usage chunk on the key's behalf; the client does not get it.
    pub strip_usage: bool,
}

/// What the request's edge produced, before planning.
pub(crate) struct Edge {
    pub app: Arc<App>,
    pub endpoint: &'static dyn Endpoint,
    pub parts: http::request::Parts,
    pub suffix: String,
    pub started: Instant,
    pub tracker: Tracker,
    pub partition: Partition,
    pub controls: Controls,
}

impl Context {
    /// The context of a planned request; notes the model asked and routed in the record.
    pub(crate) fn new(edge: Edge, routed: &Routed) -> Context {
        let Edge {
            app,
            endpoint,
            parts,
            suffix,
            started,
            tracker,
            partition,
            controls,
        } = edge;
        // The model asked for and the model routed to, in the request's record.
        tracker.update(|r| {
            r.model_used = routed.route.as_ref().map(|route| route.model().to_string());
            r.model_asked = routed.model_asked.clone();
        });
        let (body, strip_usage) =
            crate::track::metering::ask_for_usage(endpoint.name(), &tracker, routed.body.clone());
        Context {
            app,
            config: tracker.config().clone(),
            endpoint,
            parts,
            suffix,
            started,
            tracker,
            partition,
            controls,
            body,
            estimate: routed.estimate,
            route: routed.route.clone(),
            strip_usage,
        }
    }

    /// The question `decide` answers for this request.
    pub(crate) fn ask<'a>(&'a self, cache: &'a Arc<Cache>, lookup: &'a Lookup) -> Ask<'a> {
        let controls = &self.controls;
        let vectors = match &self.app.embedder {
            Some(embedder) => {
                Vectors::Embedder(embedder, self.parts.headers.get(header::AUTHORIZATION))
            }
            None => Vectors::None,
        };
        Ask {
            cache,
            lookup,
            needs: lookup.needs(controls.max_age_secs),
            threshold: controls.effective_threshold(self.threshold_in_force(lookup)),
            no_cache: controls.no_cache,
            // The vector serves the lookup and the stored entry; with neither, skip the call.
            embed: self.config.cache.semantic && !(controls.no_cache && controls.no_store),
            vectors,
            inflight: Some(&self.app.inflight),
            inline: false,
        }
    }

    /// The configured threshold of the request's model, as the error budget may have raised
    /// it for its model and namespace (`crate::trust`); a request's header only raises further.
    fn threshold_in_force(&self, lookup: &Lookup) -> f32 {
        let configured = self.config.cache.threshold_for(&lookup.model);
        let namespace = &self.partition.namespace;
        (self.app.trust).threshold(&self.config, configured, &lookup.model, namespace)
    }

    /// Sends the request upstream: with retries, and with fallback models when the route has
    /// them, after reserving the key's tokens.
    pub(crate) async fn send_upstream(&self) -> Result<Sent, Failed> {
        self.tracker
            .reserve(self.estimate)
            .await
            .map_err(|error| Failed {
                error,
                retries: Vec::new(),
            })?;
        let out = Outgoing {
            method: &self.parts.method,
            suffix: &self.suffix,
            headers: &self.parts.headers,
            parse_body: true,
        };
        let sent = Instant::now();
        let result = models::send(
            &self.app,
            &self.config,
            &out,
            self.body.clone(),
            self.route.as_ref(),
        )
        .await;
        self.tracker.upstream_call(sent, &result);
        self.tracker.update(|r| {
            if let Ok(Sent {
                model: Some(model), ..
            }) = &result
            {
                r.model_used = Some(model.clone());
            }
        });
        result
    }
}
