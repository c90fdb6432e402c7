//! `GET /v1/files`: the upstream's list with the caller's deja files (merged outputs) in it,
//! in OpenAI's list shape. deja asks the upstream for its whole list (`limit=10000`, the
//! API's largest page, with the caller's `order` and `purpose`), merges its own files in by
//! `created_at`, and pages the result with the caller's `after` and `limit`. An upstream list
//! longer than one page is relayed as the caller asked for it, without deja's files (a cursor
//! could not name a place in both lists).

use std::sync::Arc;

use http::{HeaderMap, Method, Response};
use serde_json::{Value, json};

use super::upstream::{self, CallError};
use super::{Batches, Kept};
use crate::app::App;
use crate::wire::body::ProxyBody;

/// The API's largest page.
const MAX_LIMIT: usize = 10_000;

/// The caller's paging and filter, as the API reads them.
struct Query<'a> {
    after: Option<&'a str>,
    limit: usize,
    ascending: bool,
    purpose: Option<&'a str>,
}

impl<'a> Query<'a> {
    /// `None` for values the API would refuse: the upstream then says so itself.
    fn parse(query: &'a str) -> Option<Query<'a>> {
        let mut parsed = Query {
            after: None,
            limit: MAX_LIMIT,
            ascending: false,
            purpose: None,
        };
        for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
            match name {
                "after" => parsed.after = Some(value),
                "limit" => {
                    parsed.limit = value.parse().ok().filter(|l| (1..=MAX_LIMIT).contains(l))?
                }
                "order" => match value {
                    "asc" => parsed.ascending = true,
                    "desc" => parsed.ascending = false,
                    _ => return None,
                },
                "purpose" => parsed.purpose = Some(value),
                _ => {}
            }
        }
        Some(parsed)
    }
}

/// Answers `GET /v1/files?{query}` (`suffix` is the path with the query, for relaying).
pub async fn list(
    app: &Arc<App>,
    store: &Arc<Batches>,
    caller: &HeaderMap,
    headers: &HeaderMap,
    tenant: &str,
    suffix: &str,
    kept: Kept,
) -> Response<ProxyBody> {
    let raw_query = suffix.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let relay = || upstream::forward(app, caller, &Method::GET, suffix, Default::default());
    let Some(query) = Query::parse(raw_query) else {
        return relay().await;
    };
    let order = if query.ascending { "asc" } else { "desc" };
    let mut whole = format!("/files?limit={MAX_LIMIT}&order={order}");
    if let Some(purpose) = query.purpose {
        whole.push_str(&format!("&purpose={purpose}"));
    }
    let listed = match upstream::get_json(app, headers, &whole).await {
        Ok(listed) => listed,
        Err(err @ CallError::Refused { .. }) => return err.into_response(),
        Err(CallError::Failed(err)) => return err.into_response(),
    };
    let Some(theirs) = listed["data"]
        .as_array()
        .filter(|_| listed["has_more"] != true)
    else {
        return relay().await;
    };
    let owned = tenant.to_string();
    let ours = match store.blocking(move |s| s.files_of(&owned, kept)).await {
        Ok(ours) => ours,
        Err(err) => {
            tracing::warn!(error = %err, "batch store; files listed without deja's");
            Vec::new()
        }
    };
    let ours: Vec<Value> = ours
        .into_iter()
        .filter(|file| query.purpose.is_none_or(|p| file["purpose"] == p))
        .collect();
    let merged = merge(theirs, ours, query.ascending);
    super::api::json_response(http::StatusCode::OK, &page(&merged, &query))
}

/// Both lists in one, by `created_at` (each already in that order; the upstream's first on
/// ties).
fn merge(theirs: &[Value], mut ours: Vec<Value>, ascending: bool) -> Vec<Value> {
    let created = |file: &Value| file["created_at"].as_u64().unwrap_or(0);
    ours.sort_by_key(|file| created(file));
    if !ascending {
        ours.reverse();
    }
    let mut merged = Vec::with_capacity(theirs.len() + ours.len());
    let mut ours = ours.into_iter().peekable();
    for file in theirs {
        while let Some(next) = ours.peek() {
            let first = if ascending {
                created(next) < created(file)
            } else {
                created(next) > created(file)
            };
            if !first {
                break;
            }
            merged.extend(ours.next());
        }
        merged.push(file.clone());
    }
    merged.extend(ours);
    merged
}

fn page(all: &[Value], query: &Query<'_>) -> Value {
    let start = match query.after {
        Some(after) => all
            .iter()
            .position(|file| file["id"] == after)
            .map_or(all.len(), |i| i + 1),
        None => 0,
    };
    let data: Vec<&Value> = all.iter().skip(start).take(query.limit).collect();
    json!({
        "object": "list",
        "data": data,
        "first_id": data.first().map(|f| f["id"].clone()),
        "last_id": data.last().map(|f| f["id"].clone()),
        "has_more": all.len() > start + data.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: &str, created_at: u64) -> Value {
        json!({"id": id, "created_at": created_at})
    }

    fn ids(files: &[Value]) -> Vec<&str> {
        files.iter().map(|f| f["id"].as_str().unwrap()).collect()
    }

    #[test]
    fn merges_by_created_at_in_either_order_and_pages() {
        let theirs = [file("u3", 30), file("u2", 20), file("u1", 10)];
        let ours = vec![file("d1", 15), file("d2", 30), file("d0", 5)];
        let desc = merge(&theirs, ours.clone(), false);
        assert_eq!(ids(&desc), ["u3", "d2", "u2", "d1", "u1", "d0"]);
        let mut asc_theirs = theirs.clone();
        asc_theirs.reverse();
        let asc = merge(&asc_theirs, ours, true);
        assert_eq!(ids(&asc), ["d0", "u1", "d1", "u2", "u3", "d2"]);

        let query = Query::parse("limit=2&after=d2").unwrap();
        let page = page(&desc, &query);
        assert_eq!(page["first_id"], "u2");
        assert_eq!(page["last_id"], "d1");
        assert_eq!(page["has_more"], true);
        assert!(Query::parse("limit=0").is_none());
        assert!(Query::parse("order=sideways").is_none());
    }
}
