//! The JSON calls behind the page, under `/admin/` with the rest of the admin API (a bearer
//! token or a dashboard session; see `crate::ops::admin`):
//! - `GET /admin/dashboard`: hour and day totals, the last hour per minute, the wrong-hit panel
//! - `GET /admin/lookups?limit=N`: recent requests, newest first
//! - `GET /admin/histograms?by=model|namespace`: similarity of semantic hits and near misses
//! - `GET /admin/replay?by=model|namespace`: hit and estimated wrong-hit rate per threshold
//! - `POST /admin/threshold {"threshold", "model"?}`: puts a new threshold in force

#![allow(clippy::result_large_err)]

use std::sync::Arc;

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::replay::{self, GroupBy};
use crate::app::App;
use crate::ops::admin::{error, json_response};
use crate::wire::body::ProxyBody;

const DEFAULT_LOOKUPS: usize = 50;
const MAX_LOOKUPS: usize = 1000;

pub fn overview(app: &App) -> Response<ProxyBody> {
    let now = app.now_ms();
    let config = app.config();
    let board = &app.dashboard;
    json_response(
        StatusCode::OK,
        json!({
            "now_ms": now,
            "hour": board.minutes.window(now, 60),
            "day": board.minutes.window(now, 24 * 60),
            "last_hour": board.minutes.series(now, 60),
            "wrong_hits": super::WrongHitReport::from_trust(&app.trust.stats(&config)),
            "similarity_threshold": config.cache.similarity_threshold,
            "model_thresholds": config.cache.model_thresholds,
            "show_prompts": config.admin.show_prompts,
        }),
    )
}

pub fn lookups(app: &App, query: Option<&str>) -> Response<ProxyBody> {
    let limit = param(query, "limit")
        .and_then(|n| n.parse::<usize>().ok())
        .map_or(DEFAULT_LOOKUPS, |n| n.clamp(1, MAX_LOOKUPS));
    let show = app.config().admin.show_prompts;
    let mut recent = app.dashboard.lookups.recent(limit);
    if !show {
        // Recorded while prompts were shown, listed after they were turned off.
        recent.iter_mut().for_each(|l| l.prompt = None);
    }
    json_response(StatusCode::OK, json!({ "lookups": recent }))
}

pub fn histograms(app: &App, query: Option<&str>) -> Response<ProxyBody> {
    let by = match group_by(query) {
        Ok(by) => by,
        Err(response) => return response,
    };
    let config = app.config();
    let all = app.dashboard.lookups.all();
    let groups: Vec<Value> = replay::histograms(&all, by)
        .into_iter()
        .map(|h| {
            let threshold = threshold_of(&config, by, &h.group);
            json!({"group": h.group, "threshold": threshold, "bins": h.bins,
                   "hits": h.hits, "near_misses": h.near_misses})
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({ "by": by_name(by), "groups": groups }),
    )
}

pub fn replay(app: &App, query: Option<&str>) -> Response<ProxyBody> {
    let by = match group_by(query) {
        Ok(by) => by,
        Err(response) => return response,
    };
    let config = app.config();
    let all = app.dashboard.lookups.all();
    let curves: Vec<Value> = replay::replay(&all, by)
        .into_iter()
        .map(|c| {
            let threshold = threshold_of(&config, by, &c.group);
            json!({"group": c.group, "lookups": c.lookups, "threshold": threshold,
                   "points": c.points})
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "by": by_name(by),
            "window": crate::observe::board::lookups::CAPACITY,
            "estimate": "wrong hits = lookups whose most similar candidate clears the threshold \
                         but fails verification (what cosine alone would serve wrongly)",
            "curves": curves,
        }),
    )
}

/// `{"threshold": 0.9}` sets `cache.similarity_threshold`; with `"model"` it sets that
/// model's `cache.model_thresholds` entry. Validated and logged as a reload is.
pub async fn set_threshold(app: &Arc<App>, call: Value) -> Response<ProxyBody> {
    let Some(value) = call["threshold"].as_f64() else {
        return error(
            StatusCode::BAD_REQUEST,
            "threshold must be a number in (0, 1]",
        );
    };
    let model = match &call["model"] {
        Value::Null => None,
        Value::String(model) if !model.is_empty() => Some(model.clone()),
        _ => return error(StatusCode::BAD_REQUEST, "model must be a model name"),
    };
    let app = app.clone();
    let set = model.clone();
    let result = tokio::task::spawn_blocking(move || {
        crate::ops::admin::reload::set_threshold(&app, set.as_deref(), value as f32)
    })
    .await;
    match result {
        Ok(Ok(previous)) => json_response(
            StatusCode::OK,
            json!({"applied": true, "model": model, "threshold": value as f32,
                   "previous": previous}),
        ),
        Ok(Err(err)) => error(StatusCode::BAD_REQUEST, &err.to_string()),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}

/// The threshold in force for a group (a namespace follows the global one).
fn threshold_of(config: &crate::config::Config, by: GroupBy, group: &str) -> f32 {
    match by {
        GroupBy::Model => config.cache.threshold_for(group),
        GroupBy::Namespace => config.cache.similarity_threshold,
    }
}

fn group_by(query: Option<&str>) -> Result<GroupBy, Response<ProxyBody>> {
    let by = param(query, "by").unwrap_or("model");
    GroupBy::parse(by)
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "by must be model or namespace"))
}

fn by_name(by: GroupBy) -> &'static str {
    match by {
        GroupBy::Model => "model",
        GroupBy::Namespace => "namespace",
    }
}

/// A query parameter's raw value (the page sends plain names and numbers).
fn param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}
