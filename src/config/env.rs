//! The `DEJA_*` environment layer. Only variables that name a config key are read: Kubernetes
//! injects `DEJA_SERVICE_HOST`, `DEJA_PORT` and the like for a Service named `deja`, and those
//! must not stop start-up. The others are left out and named, so deja can warn about them.

use figment::Figment;
use figment::error::Kind;
use figment::providers::{Env, Serialized};

use super::Config;

/// The environment provider, and the names of the `DEJA_*` variables it leaves out.
pub(super) fn config_env() -> (Env, Vec<String>) {
    let all = || Env::prefixed("DEJA_").split("__");
    // serde knows the keys: a variable is unknown when it alone makes extraction fail with
    // "unknown field". Other errors (a bad value) are kept, so loading reports them.
    let unknown: Vec<String> = all()
        .iter()
        .map(|(key, _)| key.as_str().to_string())
        .filter(|key| {
            let alone = Figment::from(Serialized::defaults(Config::default()))
                .merge(all().only(&[key.as_str()]));
            alone.extract::<Config>().is_err_and(|err| {
                err.into_iter()
                    .any(|e| matches!(e.kind, Kind::UnknownField(..)))
            })
        })
        .collect();
    let skip: Vec<&str> = unknown.iter().map(String::as_str).collect();
    let env = all().ignore(&skip);
    let names = unknown
        .iter()
        .map(|key| format!("DEJA_{}", key.replace('.', "__").to_ascii_uppercase()))
        .collect();
    (env, names)
}
