//! Sorting a batch's input lines: each line is planned exactly as the synchronous call to the
//! batch's endpoint would be (`flow::plan_request`: same tenant, namespace, alias routing and
//! validation) and looked up with the flow's own decision (`flow::decide`). A hit is answered
//! from the cache; a line with the exact key of an earlier line is a repeat of it; the rest
//! is written into the JSONL of the upstream batch.

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
use crate::cache::{Cache, Hit, Partition};
use crate::config::KeyConfig;
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

/// Who asks, and how: the create call's partition, controls and credentials.
pub struct Asker<'a> {
    pub app: &'a Arc<App>,
    pub snapshot: &'a Snapshot,
    pub endpoint: &'static dyn Endpoint,
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
}

/// Reads and sorts the input file. `Err` holds OpenAI's validation errors: the batch fails.
pub async fn sort(asker: &Asker<'_>, content: &[u8]) -> Result<Sorted, Vec<Value>> {
    let (ids, steps) = parse(asker, content)?;
    let model = steps.iter().find_map(|step| match step {
        Step::Cache(planned) => Some(planned.lookup.model.clone()),
        _ => None,
    });
    let decided = decide_distinct(asker, &steps).await;
    let mut sorted = Sorted {
        lines: Vec::with_capacity(steps.len()),
        jsonl: Vec::new(),
        model,
        cached: 0,
        repeated: 0,
        sent: 0,
        spend: Vec::new(),
    };
    // The first line sent with each exact key; later ones repeat it.
    let mut sent_first: HashMap<[u8; 32], usize> = HashMap::new();
    for (index, (custom_id, step)) in ids.into_iter().zip(steps).enumerate() {
        let fate = match step {
            Step::Refused(error) => Fate::Answered {
                response: json!({
                    "status_code": error.status().as_u16(),
                    "request_id": request_id(),
                    "body": error.body(),
                }),
            },
            Step::Bypass(routed) => sorted.send(&custom_id, asker.url, &routed, None),
            Step::Cache(planned) => {
                let exact = planned.lookup.exact.0;
                match decided.get(&exact) {
                    Some(Outcome::Hit(hit)) => match render(asker.endpoint, hit) {
                        Some(body) => {
                            sorted.cached += 1;
                            Fate::Answered {
                                response: json!({
                                    "status_code": 200,
                                    "request_id": request_id(),
                                    "body": body,
                                }),
                            }
                        }
                        // An entry that cannot be rendered is sent, as the proxy would.
                        None => sorted.send_once(
                            &mut sent_first,
                            index,
                            &custom_id,
                            asker,
                            &planned,
                            None,
                        ),
                    },
                    Some(Outcome::Miss(vector)) => {
                        let vector = vector.clone();
                        sorted.send_once(
                            &mut sent_first,
                            index,
                            &custom_id,
                            asker,
                            &planned,
                            vector,
                        )
                    }
                    None => {
                        sorted.send_once(&mut sent_first, index, &custom_id, asker, &planned, None)
                    }
                }
            }
        };
        sorted.lines.push(Line { custom_id, fate });
    }
    Ok(sorted)
}

impl Sorted {
    /// A cacheable line that goes upstream, unless a line with its exact key already does.
    fn send_once(
        &mut self,
        sent_first: &mut HashMap<[u8; 32], usize>,
        index: usize,
        custom_id: &str,
        asker: &Asker<'_>,
        planned: &Planned,
        vector: Option<Vec<f32>>,
    ) -> Fate {
        let lookup = &planned.lookup;
        if let Some(&of) = sent_first.get(&lookup.exact.0) {
            self.repeated += 1;
            return Fate::Repeat { of };
        }
        sent_first.insert(lookup.exact.0, index);
        let store = (!asker.controls.no_store).then(|| ToStore {
            scope: lookup.scope.0,
            exact: lookup.exact.0,
            model: lookup.model.clone(),
            prompt: lookup.semantic_text.clone(),
            vector,
        });
        self.send(custom_id, asker.url, &planned.routed, store)
    }

    /// Adds a line to the upstream batch's input.
    fn send(
        &mut self,
        custom_id: &str,
        url: &str,
        routed: &Routed,
        store: Option<ToStore>,
    ) -> Fate {
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
        Fate::Sent { store }
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
    let planning = crate::flow::plan_request(
        asker.app,
        asker.snapshot,
        asker.endpoint,
        asker.partition,
        raw,
    );
    match planning {
        Ok(Planning::Cache(planned)) => Step::Cache(planned),
        Ok(Planning::Bypass(routed, _)) => Step::Bypass(routed),
        Err(error) => Step::Refused(error),
    }
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
        .threshold(app, configured, &lookup.model, namespace);
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
