//! The production sections of the configuration: managed keys (`[[keys]]`), prices
//! (`[pricing]`), the admin listener (`[admin]`) and the usage log (`[usage]`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{ConfigError, Secret, invalid};

/// One caller's deja key. Only its SHA-256 is configured, so `proxy.toml` and the logs never
/// hold a usable key (`printf %s "$KEY" | sha256sum`, or `deja hash-key`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Names the key in logs, metrics and the usage log.
    pub id: String,
    /// `sha256:` and 64 hex digits.
    pub hash: String,
    /// Keys with the same tenant share cache entries; defaults to the key's id.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Every request of this key is confined to this namespace (`x-deja-namespace` narrows it
    /// further).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Requests per minute; 0 = unlimited.
    #[serde(default)]
    pub rpm: u64,
    /// Tokens per minute (estimated before the call, settled from the real usage); 0 = unlimited.
    #[serde(default)]
    pub tpm: u64,
    /// Dollars this key may spend upstream per `budget_period`; absent = no cap.
    #[serde(default)]
    pub budget_usd: Option<f64>,
    #[serde(default)]
    pub budget_period: BudgetPeriod,
}

impl KeyConfig {
    /// A key named `id` whose secret is `secret`, without limits, tenant or namespace.
    pub fn unlimited(id: &str, secret: &str) -> KeyConfig {
        KeyConfig {
            id: id.into(),
            hash: hash_key(secret),
            tenant: None,
            namespace: None,
            rpm: 0,
            tpm: 0,
            budget_usd: None,
            budget_period: BudgetPeriod::default(),
        }
    }

    pub fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or(&self.id)
    }
}

/// Spend windows start at UTC boundaries (a calendar month for `month`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Hour,
    #[default]
    Day,
    Week,
    Month,
}

/// Dollars per million tokens of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_per_mtok
            + completion_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener (health, metrics, cache administration); absent = off.
    /// Keep it on loopback or a private network.
    pub listen: Option<SocketAddr>,
    /// Bearer token every admin call but `/healthz` and `/readyz` needs. Set it through
    /// `DEJA_ADMIN__TOKEN` or `token_file`, not in this file.
    pub token: Option<Secret>,
    /// A file holding the token (trailing whitespace ignored).
    pub token_file: Option<PathBuf>,
    /// Show prompt text (the last user message) in the dashboard's recent lookups and entry
    /// view. Off: the page shows who, what and how, never what was asked.
    pub show_prompts: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Where the usage log goes: empty = nowhere, `stdout`, or a file path (JSON lines,
    /// appended).
    pub log: String,
}

/// Checks the production sections.
pub(super) fn validate(
    keys: &[KeyConfig],
    pricing: &BTreeMap<String, Price>,
    managed_upstream_key: bool,
    admin: &AdminConfig,
) -> Result<(), ConfigError> {
    if !keys.is_empty() && !managed_upstream_key {
        return invalid(
            "keys",
            "managed keys need upstream.api_key (or upstream.api_key_file): deja calls upstream \
             with its own key",
        );
    }
    let mut ids = std::collections::HashSet::new();
    let mut hashes = std::collections::HashSet::new();
    for key in keys {
        let name = format!("keys.{}", key.id);
        if key.id.is_empty() || !key.id.chars().all(|c| c.is_ascii_graphic()) {
            return invalid(
                "keys.id",
                "must be non-empty printable ASCII without spaces",
            );
        }
        if !ids.insert(&key.id) {
            return invalid(&name, "is listed twice");
        }
        let digest = key.hash.strip_prefix("sha256:").unwrap_or("");
        if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
            return invalid(
                &format!("{name}.hash"),
                "must be \"sha256:\" and 64 hex digits (printf %s \"$KEY\" | sha256sum)",
            );
        }
        if !hashes.insert(digest.to_ascii_lowercase()) {
            return invalid(&format!("{name}.hash"), "is the hash of another key too");
        }
        if let Some(namespace) = &key.namespace {
            let valid = !namespace.is_empty()
                && namespace.len() <= 128
                && namespace
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
            if !valid {
                return invalid(
                    &format!("{name}.namespace"),
                    "must be 1 to 128 letters, digits and -_.:/",
                );
            }
        }
        if let Some(budget) = key.budget_usd
            && !(budget.is_finite() && budget >= 0.0)
        {
            return invalid(
                &format!("{name}.budget_usd"),
                "must be a non-negative number",
            );
        }
        if key.budget_usd.is_some() && pricing.is_empty() {
            return invalid(
                &format!("{name}.budget_usd"),
                "needs a [pricing] table to know what requests cost",
            );
        }
    }
    for (model, price) in pricing {
        for value in [price.input_per_mtok, price.output_per_mtok] {
            if !(value.is_finite() && value >= 0.0) {
                return invalid(
                    &format!("pricing.\"{model}\""),
                    "prices must be non-negative numbers (dollars per million tokens)",
                );
            }
        }
    }
    if let Some(token) = &admin.token
        && token.expose().len() < 16
    {
        return invalid("admin.token", "must be at least 16 characters");
    }
    Ok(())
}

/// Reads a secret from a file, trimming the trailing newline editors add.
pub(super) fn read_secret_file(key: &str, path: &PathBuf) -> Result<Secret, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(Secret::new(text.trim_end().to_string())),
        Ok(_) => invalid(key, &format!("{} is empty", path.display())),
        Err(err) => invalid(key, &format!("cannot read {}: {err}", path.display())),
    }
}

/// `sha256:<hex>` of a key, as `[[keys]].hash` expects it.
pub fn hash_key(key: &str) -> String {
    let digest: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

impl AdminConfig {
    /// The admin listener is bound at start-up; the token applies on reload.
    pub(super) fn keep_start_up(&self, next: &mut Self, changed: &mut Vec<&'static str>) {
        keep!(self, next, changed, "admin.listen", listen);
    }
}

impl UsageConfig {
    /// The usage log's writer thread and file are opened at start-up.
    pub(super) fn keep_start_up(&self, next: &mut Self, changed: &mut Vec<&'static str>) {
        keep!(self, next, changed, "usage");
    }
}
