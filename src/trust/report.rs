//! What the trust machinery shows: a `trust` section of `/admin/stats`, its series in
//! `/metrics`, and `POST /admin/entries/{id}/wrong`.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use http::StatusCode;
use serde_json::{Value, json};

use super::Trust;
use super::feedback::Kind;
use crate::config::Config;

impl Trust {
    /// The `trust` section of `/admin/stats`: per model and namespace, the estimate at the
    /// threshold in force, the threshold, and the last change with its evidence.
    pub fn stats(&self, config: &Config) -> Value {
        let cache = &config.cache;
        let groups = self.groups.lock();
        let mut rows: Vec<Value> = groups
            .iter()
            .map(|((model, namespace), group)| {
                let configured = cache.threshold_for(model);
                let effective = group.learned.effective(configured);
                let in_force = if cache.max_wrong_rate > 0.0 {
                    effective
                } else {
                    configured
                };
                json!({
                    "model": model,
                    "namespace": namespace,
                    "configured_threshold": rounded(configured),
                    "effective_threshold": rounded(in_force),
                    // The hits the threshold in force would still serve, and every judged one.
                    "estimate": group.window.at(in_force),
                    "window_estimate": group.window.at(0.0),
                    "agreed": group.agreed,
                    "disagreed": group.disagreed,
                    "feedback": group.feedback,
                    "threshold_changes": group.learned.changes,
                    "last_change": group.learned.last,
                })
            })
            .collect();
        rows.sort_by(|a, b| a["model"].as_str().cmp(&b["model"].as_str()));
        let c = &self.counters;
        let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        json!({
            "max_wrong_rate": cache.max_wrong_rate,
            "shadow_sample_rate": cache.trust.shadow_sample_rate,
            "judge": cache.trust.judge_model.as_deref().map_or("embedding", |_| "model"),
            "groups": rows,
            "shadow": {
                "calls": load(&c.shadow_calls),
                "judge_calls": load(&c.judge_calls),
                "agree": load(&c.agree),
                "disagree": load(&c.disagree),
                "unsure": load(&c.unsure),
                "failed": load(&c.failed),
                "dropped": load(&c.dropped),
                "queued": self.queued.load(Ordering::Relaxed),
                "prompt_tokens": load(&c.prompt_tokens),
                "completion_tokens": load(&c.completion_tokens),
                "cost_usd": *c.cost_usd.lock(),
            },
            "feedback": Kind::ALL
                .map(|k| (k.label().to_string(), json!(load(&c.feedback[k as usize]))))
                .into_iter()
                .collect::<serde_json::Map<_, _>>(),
        })
    }

    /// Appends the trust series to an OpenMetrics exposition (before its `# EOF`).
    pub fn metrics(&self, config: &Config, exposition: String) -> String {
        let mut out = exposition
            .strip_suffix("# EOF\n")
            .map(str::to_string)
            .unwrap_or(exposition);
        let c = &self.counters;
        let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        let mut family = |name: &str, kind: &str, help: &str, series: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let suffix = if kind == "counter" { "_total" } else { "" };
            for (labels, value) in series {
                let _ = writeln!(out, "{name}{suffix}{labels} {value}");
            }
        };
        let calls = [
            ("shadow", load(&c.shadow_calls)),
            ("judge", load(&c.judge_calls)),
        ];
        family(
            "deja_shadow_calls",
            "counter",
            "Upstream calls made for shadow verification (kind = shadow, judge).",
            &calls.map(|(k, v)| (format!("{{kind=\"{k}\"}}"), v as f64)),
        );
        let results = [
            ("agree", load(&c.agree)),
            ("disagree", load(&c.disagree)),
            ("unsure", load(&c.unsure)),
            ("failed", load(&c.failed)),
            ("dropped", load(&c.dropped)),
        ];
        family(
            "deja_shadow_results",
            "counter",
            "Sampled semantic hits by verdict; dropped = the queue was full.",
            &results.map(|(k, v)| (format!("{{result=\"{k}\"}}"), v as f64)),
        );
        let tokens = [
            ("prompt", load(&c.prompt_tokens)),
            ("completion", load(&c.completion_tokens)),
        ];
        family(
            "deja_shadow_tokens",
            "counter",
            "Tokens spent on shadow verification.",
            &tokens.map(|(k, v)| (format!("{{kind=\"{k}\"}}"), v as f64)),
        );
        family(
            "deja_shadow_cost_usd",
            "counter",
            "Dollars spent on shadow verification, by [pricing].",
            &[(String::new(), *c.cost_usd.lock())],
        );
        let feedback = Kind::ALL.map(|k| {
            (
                format!("{{kind=\"{}\"}}", k.label()),
                load(&c.feedback[k as usize]) as f64,
            )
        });
        family(
            "deja_trust_feedback",
            "counter",
            "Hits reported wrong (no_cache re-ask, reask, admin mark); each evicts its entry.",
            &feedback,
        );
        let cache = &config.cache;
        let (mut rates, mut thresholds, mut samples) = (Vec::new(), Vec::new(), Vec::new());
        for ((model, namespace), group) in self.groups.lock().iter() {
            let configured = cache.threshold_for(model);
            let effective = if cache.max_wrong_rate > 0.0 {
                group.learned.effective(configured)
            } else {
                configured
            };
            let estimate = group.window.at(effective);
            let base = format!(
                "model=\"{}\",namespace=\"{}\"",
                escape(model),
                escape(namespace)
            );
            for (bound, value) in [
                ("estimate", estimate.rate),
                ("lower", estimate.lower),
                ("upper", estimate.upper),
            ] {
                rates.push((format!("{{{base},bound=\"{bound}\"}}"), value));
            }
            thresholds.push((format!("{{{base}}}"), rounded(effective)));
            samples.push((format!("{{{base}}}"), estimate.samples as f64));
        }
        family(
            "deja_wrong_hit_rate",
            "gauge",
            "Estimated wrong-hit rate at the threshold in force, with its 95% Wilson interval.",
            &rates,
        );
        family(
            "deja_wrong_hit_samples",
            "gauge",
            "Judged hits behind deja_wrong_hit_rate (those the threshold in force still serves).",
            &samples,
        );
        family(
            "deja_effective_threshold",
            "gauge",
            "Similarity threshold in force, after the error budget.",
            &thresholds,
        );
        out.push_str("# EOF\n");
        out
    }
}

/// A threshold as people write it (0.95, not 0.949999988079071).
fn rounded(threshold: f32) -> f64 {
    (f64::from(threshold) * 1e4).round() / 1e4
}

/// A label value as the exposition format needs it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `POST /admin/entries/{id}/wrong`: the entry answered wrongly. It is evicted, counted and
/// fed to its model's and namespace's estimate. The answer's JSON body, or the status and
/// message of the error (the admin listener, `crate::ops::admin`, makes the response).
pub async fn mark_wrong(
    trust: &Trust,
    config: &Config,
    id: u64,
) -> Result<Value, (StatusCode, String)> {
    let Some(cache) = trust.reach.cache.clone() else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "caching is off".to_string(),
        ));
    };
    let found = tokio::task::spawn_blocking(move || cache.get(id)).await;
    let entry = match found {
        Ok(Ok(Some(entry))) => entry,
        Ok(Ok(None)) => {
            return Err((StatusCode::NOT_FOUND, format!("no entry {id}")));
        }
        _ => {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "cache read failed".to_string(),
            ));
        }
    };
    let served = trust.recent.lock().of_entry(id);
    let (similarity, group) = match served {
        Some(served) => (served.similarity, (served.model, served.namespace)),
        None => {
            let group = trust.group_key(&entry.model, &entry.owner.namespace);
            let configured = config.cache.threshold_for(&entry.model);
            (
                trust.threshold(config, configured, &group.0, &group.1),
                group,
            )
        }
    };
    trust.wrong(config, Kind::Admin, id, similarity, group.clone());
    Ok(json!({"marked_wrong": id, "evicted": true, "model": group.0, "namespace": group.1}))
}
