//! `[routing]`: model aliases and fallbacks, and the `Route` they give a request
//! (`crate::flow::models` applies it). Read per request, so a reload applies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// `alias = "model"`: requests for the alias are sent (and cached) as the model.
    pub aliases: BTreeMap<String, String>,
    /// `"model" = ["next", ...]`: models tried in order after a final 429/5xx or connection
    /// failure of `model`.
    pub fallbacks: BTreeMap<String, Vec<String>>,
}

impl RoutingConfig {
    /// Follows aliases to a model that is not one (validation rules out cycles).
    pub fn resolve<'a>(&'a self, model: &'a str) -> &'a str {
        let mut current = model;
        for _ in 0..=self.aliases.len() {
            match self.aliases.get(current) {
                Some(next) => current = next,
                None => break,
            }
        }
        current
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: String, problem: String| Err(ConfigError::Invalid { key, problem });
        for (alias, target) in &self.aliases {
            let key = format!("routing.aliases.\"{alias}\"");
            if alias.is_empty() || target.is_empty() {
                return fail(key, "needs a non-empty alias and model".into());
            }
            let mut seen = vec![alias.as_str()];
            let mut current = target.as_str();
            while let Some(next) = self.aliases.get(current) {
                if seen.contains(&current) {
                    return fail(
                        key,
                        format!("is part of an alias cycle ({})", seen.join(" → ")),
                    );
                }
                seen.push(current);
                current = next;
            }
        }
        for (model, list) in &self.fallbacks {
            let key = format!("routing.fallbacks.\"{model}\"");
            if let Some(target) = self.aliases.get(model) {
                return fail(
                    key,
                    format!("is an alias of {target:?}; list the fallbacks under that model"),
                );
            }
            if list.is_empty() {
                return fail(key, "must name at least one fallback model".into());
            }
            if let Some(bad) = list
                .iter()
                .find(|next| next.is_empty() || self.resolve(next) == model)
            {
                return fail(key, format!("cannot fall back to {bad:?}"));
            }
        }
        Ok(())
    }
}

/// Where one request goes: the model it asked for and the models to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub requested: String,
    /// The resolved model first, then its fallbacks; never empty.
    pub models: Vec<String>,
}

impl Route {
    /// The model the request is sent and cached as.
    pub fn model(&self) -> &str {
        &self.models[0]
    }

    /// Whether routing changed or may change the model (then responses name it).
    pub fn routed(&self) -> bool {
        self.requested != self.models[0] || self.models.len() > 1
    }
}

impl RoutingConfig {
    /// The route of a request for `requested`; `fallbacks: false` keeps only its own model.
    pub fn route(&self, requested: &str, fallbacks: bool) -> Route {
        let mut models = vec![self.resolve(requested).to_string()];
        if fallbacks && let Some(list) = self.fallbacks.get(&models[0]) {
            for next in list {
                let next = self.resolve(next);
                if !models.iter().any(|m| m == next) {
                    models.push(next.to_string());
                }
            }
        }
        Route {
            requested: requested.to_string(),
            models,
        }
    }
}
