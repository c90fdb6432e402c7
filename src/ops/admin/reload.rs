//! Re-reading proxy.toml (and the `DEJA_*` environment) into the running proxy, on
//! `POST /admin/reload` or SIGHUP. Thresholds, TTLs, verification, keys, limits, prices,
//! routes, retries and the upstream address, key and response timeout apply to the next
//! request (embedding calls that use the upstream's address or key follow too); settings bound
//! at start-up (listeners, the client's connect/idle timeouts, store, embedding model,
//! logging) keep their running values and are reported as needing a restart. An invalid file
//! changes nothing.

use crate::app::App;
use crate::config::{Config, ConfigError};

#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Keys that changed in the file but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

pub fn reload(app: &App) -> Result<ReloadReport, ConfigError> {
    let running = app.config();
    let Some(path) = running.source.clone() else {
        return Err(ConfigError::Invalid {
            key: "reload".into(),
            problem: "this proxy was not started from a configuration file".into(),
        });
    };
    let mut next = Config::load(&path)?;
    let report = keep_start_up_settings(&running, &mut next);
    put_in_force(app, next);
    tracing::info!(
        path = %path.display(),
        needs_restart = ?report.needs_restart,
        "configuration reloaded"
    );
    Ok(report)
}

/// The dashboard's "apply this threshold": the running configuration with one threshold
/// changed, validated like a file and put in force like a reload. Returns the threshold it
/// replaces. The file is not rewritten, so a later reload or restart goes back to its value.
pub fn set_threshold(app: &App, model: Option<&str>, value: f32) -> Result<f32, ConfigError> {
    let mut next = Config::clone(&app.config());
    let previous = match model {
        Some(model) => {
            let previous = next.cache.threshold_for(model);
            next.cache.model_thresholds.insert(model.to_string(), value);
            previous
        }
        None => std::mem::replace(&mut next.cache.similarity_threshold, value),
    };
    next.validate()?;
    put_in_force(app, next);
    tracing::info!(
        model = model.unwrap_or("*"),
        previous,
        threshold = value,
        "similarity threshold set from the dashboard (proxy.toml unchanged)"
    );
    Ok(previous)
}

/// What every configuration change does: retune the cache, retarget the embedder, swap.
fn put_in_force(app: &App, next: Config) {
    if let Some(cache) = &app.cache {
        cache.retune(&next.cache);
    }
    if let Some(embedder) = &app.embedder {
        embedder.retarget(&next);
    }
    app.replace_config(next);
}

/// Copies the settings that cannot change while running from `running` into `next` (each
/// config section declares its own), naming those the new file changed.
fn keep_start_up_settings(running: &Config, next: &mut Config) -> ReloadReport {
    ReloadReport {
        needs_restart: running.keep_start_up_settings(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_settings_stay_and_are_reported() {
        let running = Config::default();
        let mut next = Config::default();
        next.cache.similarity_threshold = 0.99;
        next.cache.dir = "elsewhere".into();
        next.server.max_connections = 7;
        let report = keep_start_up_settings(&running, &mut next);
        assert_eq!(report.needs_restart, vec!["server", "cache.dir"]);
        assert_eq!(next.cache.dir, running.cache.dir);
        assert_eq!(next.server.max_connections, running.server.max_connections);
        assert_eq!(next.cache.similarity_threshold, 0.99);
    }
}
