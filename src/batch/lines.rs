//! Sorting a batch's input lines: each line is planned exactly as the synchronous call to the
//! batch's endpoint would be (`flow::plan_request`: same tenant, namespace, alias routing and
//! validation) and looked up with the flow's own decision (`flow::decide`). A hit is answered
//! from the cache; a line with the exact key of an earlier line is a repeat of it; the rest
//! is written into the JSONL of the upstream batch. An embeddings line is looked up in the
//! synchronous call's per-input cache (`endpoints::embeddings::for_batches`) instead: it is
//! answered when every input is cached, else sent whole.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::HeaderMap;
use http::header;
use serde::Deserialize;
use serde_json::{Value, json};

use super::record::{Fate, Line, ToStore, validation_error};
use crate::app::{App, Snapshot};
use crate::cache::key::KeyBuilder;
use crate::cache::{Cache, Hit, Partition};
use crate::config::KeyConfig;
use crate::endpoints::embeddings::for_batches::{self as embeddings, InputKeys, Looked};
use crate::error::ApiError;
use crate::flow::Routed;
use crate::flow::control::Controls;
use crate::flow::{Ask, Decided, Decision, Endpoint, Planned, Planning, Vectors, decide};

/// Lines looked up at once (each may wait for an embedding).
const LOOKUPS_AT_ONCE: usize = 8;

/// One line of a batch input file, as the API reads it.
#[derive(Deserialize)]
struct InputLine {
    custom_id: Option<String>,
    method: Option<String>,
    url: Option<String>,
    #[serde(default)]
    body: Value,
}

/// What the lines came to.
pub struct Sorted {
    pub lines: Vec<Line>,
    /// The upstream batch's input, one line per request sent (empty: nothing to send).
    pub jsonl: Vec<u8>,
    pub model: Option<String>,
    pub cached: usize,
    pub repeated: usize,
    pub sent: usize,
    /// What each line sent may use, for the caller's managed key (`super::charge`).
    pub spend: Vec<Spend>,
    /// The first line sent with each key (a flow line's exact key, an embeddings line's
    /// body); later lines with it repeat it.
    sent_first: HashMap<[u8; 32], usize>,
}

/// The model and the token estimate of one line sent, as the synchronous call reserves them.
pub struct Spend {
    pub model: Option<String>,
    pub estimate: (u64, u64),
}

impl Spend {
    fn of(routed: &Routed) -> Spend {
        let model = routed.route.as_ref().map(|route| route.model().to_string());
        Spend {
            model: model.or_else(|| routed.model_asked.clone()),
            estimate: routed.estimate,
        }
    }
}

/// Which cache a batch's lines go through: a cached flow endpoint's, or the per-input
/// embeddings cache (`endpoints::embeddings`).
#[derive(Clone, Copy)]
pub enum Target {
    Flow(&'static dyn Endpoint),
    Embeddings,
}

/// Who asks, and how: the create call's partition, controls and credentials.
pub struct Asker<'a> {
    pub app: &'a Arc<App>,
    pub snapshot: &'a Snapshot,
    pub target: Target,
    /// The batch's endpoint, e.g. `/v1/chat/completions`.
    pub url: &'a str,
    pub partition: &'a Partition,
    pub controls: &'a Controls,
    pub headers: &'a HeaderMap,
    /// The caller's managed key (managed mode): the lines sent count against it.
    pub key: Option<&'a Arc<KeyConfig>>,
}

/// A line after planning, before the cache is asked.
enum Step {
    Refused(ApiError),
    /// Not cacheable (the synchronous call would bypass the cache): sent as it is.
    Bypass(Routed),
    Cache(Arc<Planned>),
    /// An embeddings request, with its JSON and the key that makes lines repeats.
    Embed(Routed, Value, [u8; 32]),
}

/// The `response` of a line deja answers itself.
fn answered(status: u16, body: Value) -> Fate {
    Fate::Answered {
        response: json!({"status_code": status, "request_id": request_id(), "body": body}),
    }
}

/// Reads and sorts the input file. `Err` holds OpenAI's validation errors: the batch fails.
pub async fn sort(asker: &Asker<'_>, content: &[u8]) -> Result<Sorted, Vec<Value>> {
    let (ids, steps) = parse(asker, content)?;
    let model = steps.iter().find_map(|step| match step {
        Step::Cache(planned) => Some(planned.lookup.model.clone()),
        Step::Embed(_, json, _) => json["model"].as_str().map(String::from),
        _ => None,
    });
    let decided = decide_distinct(asker, &steps).await;
    let embedded = look_up_embeddings(asker, &steps).await;
    let mut sorted = Sorted {
        lines: Vec::with_capacity(steps.len()),
        jsonl: Vec::new(),
        model,
        cached: 0,
        repeated: 0,
        sent: 0,
        spend: Vec::new(),
        sent_first: HashMap::new(),
    };
    for (index, (custom_id, step)) in ids.into_iter().zip(steps).enumerate() {
        let line = Sending {
            index,
            custom_id: &custom_id,
            url: asker.url,
        };
        let fate = match step {
            Step::Refused(error) => answered(error.status().as_u16(), error.body()),
            Step::Bypass(routed) => sorted.send(&line, &routed, Keep::default()),
            Step::Cache(planned) => {
                let outcome = decided.get(&planned.lookup.exact.0);
                let rendered = match (outcome, asker.target) {
                    (Some(Outcome::Hit(hit)), Target::Flow(endpoint)) => render(endpoint, hit),
                    _ => None,
                };
                match (rendered, outcome) {
                    (Some(body), _) => {
                        sorted.cached += 1;
                        answered(200, body)
                    }
                    // A miss, or an entry that cannot be rendered (sent, as the proxy would).
                    (None, outcome) => {
                        let vector = match outcome {
                            Some(Outcome::Miss(vector)) => vector.clone(),
                            _ => None,
                        };
                        let lookup = &planned.lookup;
                        let keep = Keep {
                            store: (!asker.controls.no_store).then(|| ToStore {
                                scope: lookup.scope.0,
                                exact: lookup.exact.0,
                                model: lookup.model.clone(),
                                prompt: lookup.semantic_text.clone(),
                                vector,
                            }),
                            inputs: None,
                        };
                        sorted.send_once(lookup.exact.0, &line, &planned.routed, keep)
                    }
                }
            }
            Step::Embed(routed, _, key) => match embedded.get(&key) {
                Some(Looked::Answered(body)) => {
                    sorted.cached += 1;
                    answered(200, body.clone())
                }
                Some(Looked::Missing(inputs)) => {
                    let keep = Keep {
                        store: None,
                        inputs: inputs.clone(),
                    };
                    sorted.send_once(key, &line, &routed, keep)
                }
                Some(Looked::Bypass) | None => {
                    sorted.send_once(key, &line, &routed, Keep::default())
                }
            },
        };
        sorted.lines.push(Line { custom_id, fate });
    }
    Ok(sorted)
}

/// A line on its way into the upstream batch.
struct Sending<'a> {
    index: usize,
    custom_id: &'a str,
    url: &'a str,
}

/// What the merge needs to store a sent line's answer.
#[derive(Default)]
struct Keep {
    store: Option<ToStore>,
    inputs: Option<InputKeys>,
}

impl Sorted {
    /// A cacheable line that goes upstream, unless a line with its key already does.
    fn send_once(
        &mut self,
        key: [u8; 32],
        line: &Sending<'_>,
        routed: &Routed,
        keep: Keep,
    ) -> Fate {
        if let Some(&of) = self.sent_first.get(&key) {
            self.repeated += 1;
            return Fate::Repeat { of };
        }
        self.sent_first.insert(key, line.index);
        self.send(line, routed, keep)
    }

    /// Adds a line to the upstream batch's input.
    fn send(&mut self, line: &Sending<'_>, routed: &Routed, keep: Keep) -> Fate {
        let (custom_id, url) = (line.custom_id, line.url);
        self.spend.push(Spend::of(routed));
        // The body as the synchronous call would send it (alias resolved), on one line.
        let body = &routed.body[..];
        let body = match serde_json::from_slice::<Value>(body) {
            Ok(value) if body.contains(&b'\n') => Bytes::from(value.to_string()),
            _ => Bytes::copy_from_slice(body),
        };
        let head = json!({"custom_id": custom_id, "method": "POST", "url": url}).to_string();
        // `{"custom_id":…,"url":…` + `,"body":<raw>}`: the body's bytes are kept as they are.
        self.jsonl
            .extend_from_slice(&head.as_bytes()[..head.len() - 1]);
        self.jsonl.extend_from_slice(b",\"body\":");
        self.jsonl.extend_from_slice(&body);
        self.jsonl.extend_from_slice(b"}\n");
        self.sent += 1;
        Fate::Sent {
            store: keep.store,
            inputs: keep.inputs,
        }
    }
}

/// Parses and plans every line; the file-level problems OpenAI fails a batch for are errors.
fn parse(asker: &Asker<'_>, content: &[u8]) -> Result<(Vec<String>, Vec<Step>), Vec<Value>> {
    let text = String::from_utf8_lossy(content);
    let mut errors = Vec::new();
    let mut ids = Vec::new();
    let mut steps = Vec::new();
    let mut seen = HashMap::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let number = number + 1;
        let Ok(line) = serde_json::from_str::<InputLine>(line) else {
            errors.push(validation_error(
                "invalid_json_line",
                "This line is not parseable as valid JSON.".into(),
                Some(number),
            ));
            continue;
        };
        let Some(custom_id) = line.custom_id else {
            errors.push(validation_error(
                "missing_required_parameter",
                "Missing required parameter: 'custom_id'.".into(),
                Some(number),
            ));
            continue;
        };
        if line.method.as_deref() != Some("POST") {
            errors.push(validation_error(
                "invalid_method",
                "The request method must be POST.".into(),
                Some(number),
            ));
        }
        if line.url.as_deref() != Some(asker.url) {
            errors.push(validation_error(
                "mismatched_endpoint",
                format!(
                    "The URL provided for this request does not match the batch endpoint {}.",
                    asker.url
                ),
                Some(number),
            ));
        }
        if seen.insert(custom_id.clone(), number).is_some() {
            errors.push(validation_error(
                "duplicate_custom_id",
                "The custom_id for this request is a duplicate of another request. The \
                 custom_id parameter must be unique for each request in a batch."
                    .into(),
                Some(number),
            ));
        }
        steps.push(plan(asker, line.body));
        ids.push(custom_id);
    }
    if ids.is_empty() && errors.is_empty() {
        errors.push(validation_error(
            "empty_file",
            "The batch input file is empty.".into(),
            None,
        ));
    }
    if errors.is_empty() {
        Ok((ids, steps))
    } else {
        Err(errors)
    }
}

fn plan(asker: &Asker<'_>, body: Value) -> Step {
    // A body that is not an object gets the synchronous call's own 400.
    let raw = Bytes::from(body.to_string());
    let endpoint = match asker.target {
        Target::Flow(endpoint) => endpoint,
        Target::Embeddings => {
            // Aliases resolved without fallbacks, as the synchronous embeddings call does.
            return match crate::flow::route_fresh(&asker.snapshot.config, &raw, false) {
                Ok((routed, json)) => {
                    let key = KeyBuilder::new("batch-embeddings-line")
                        .bytes(&routed.body)
                        .finish();
                    Step::Embed(routed, json, key.0)
                }
                Err(error) => Step::Refused(error),
            };
        }
    };
    let planning =
        crate::flow::plan_request(asker.app, asker.snapshot, endpoint, asker.partition, raw);
    match planning {
        Ok(Planning::Cache(planned)) => Step::Cache(planned),
        Ok(Planning::Bypass(routed, _)) => Step::Bypass(routed),
        Err(error) => Step::Refused(error),
    }
}

/// Each distinct embeddings line looked up in the synchronous call's per-input cache.
async fn look_up_embeddings(asker: &Asker<'_>, steps: &[Step]) -> HashMap<[u8; 32], Looked> {
    let mut looked = HashMap::new();
    let Some(cache) = asker.app.cache.clone() else {
        return looked;
    };
    for step in steps {
        if let Step::Embed(_, json, key) = step
            && !looked.contains_key(key)
        {
            let found = embeddings::lookup(&cache, json, asker.partition, asker.controls).await;
            looked.insert(*key, found);
        }
    }
    looked
}

enum Outcome {
    Hit(Box<Hit>),
    /// With the prompt's vector, stored with the answer.
    Miss(Option<Vec<f32>>),
}

/// One decision per distinct exact key, a few at a time.
async fn decide_distinct(asker: &Asker<'_>, steps: &[Step]) -> HashMap<[u8; 32], Outcome> {
    let Some(cache) = asker.app.cache.clone() else {
        return HashMap::new();
    };
    let mut distinct: HashMap<[u8; 32], &Arc<Planned>> = HashMap::new();
    for step in steps {
        if let Step::Cache(planned) = step {
            distinct.entry(planned.lookup.exact.0).or_insert(planned);
        }
    }
    let mut waiting = distinct.into_iter();
    let mut running = FuturesUnordered::new();
    let mut decided = HashMap::new();
    loop {
        while running.len() < LOOKUPS_AT_ONCE {
            let Some((exact, planned)) = waiting.next() else {
                break;
            };
            running.push(ask(asker, &cache, exact, planned));
        }
        match running.next().await {
            Some((exact, outcome)) => decided.insert(exact, outcome),
            None => break,
        };
    }
    decided
}

/// The synchronous path's question (`flow::Context::ask`), without joining twins in flight.
async fn ask(
    asker: &Asker<'_>,
    cache: &Arc<Cache>,
    exact: [u8; 32],
    planned: &Planned,
) -> ([u8; 32], Outcome) {
    let (app, controls, lookup) = (asker.app, asker.controls, &planned.lookup);
    let config = &asker.snapshot.config;
    let configured = config.cache.threshold_for(&lookup.model);
    let namespace = &asker.partition.namespace;
    let in_force = app
        .trust
        .threshold(config, configured, &lookup.model, namespace);
    let vectors = match &app.embedder {
        Some(embedder) => Vectors::Embedder(embedder, asker.headers.get(header::AUTHORIZATION)),
        None => Vectors::None,
    };
    let Decided {
        decision, vector, ..
    } = decide(Ask {
        cache,
        lookup,
        needs: lookup.needs(controls.max_age_secs),
        threshold: controls.effective_threshold(in_force),
        no_cache: controls.no_cache,
        embed: config.cache.semantic && !(controls.no_cache && controls.no_store),
        vectors,
        inflight: None,
        inline: false,
    })
    .await;
    let outcome = match decision {
        Decision::Hit { hit, .. } => Outcome::Hit(Box::new(hit)),
        _ => Outcome::Miss(vector),
    };
    (exact, outcome)
}

/// A stored answer as the JSON body a synchronous hit gets (with a fresh id).
fn render(endpoint: &'static dyn Endpoint, hit: &Hit) -> Option<Value> {
    let text = &hit.entry.response;
    let body = match endpoint.render_json_text(text) {
        Some(body) => body,
        None => endpoint.render_json(&*crate::replay::lazy_replay::parse_shared(text)?),
    };
    serde_json::from_slice(&body).ok()
}

/// A `request_id` for a line deja answered itself.
pub fn request_id() -> String {
    format!("req_deja_{:032x}", fastrand::u128(..))
}
