//! Managed keys and the admin listener in tests: key configs, admin calls, metric values.

use deja::config::{KeyConfig, Secret};
use serde_json::Value;

use super::proxy::{Harness, Reply};

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123";
pub const UPSTREAM_KEY: &str = "sk-upstream-real-key";

/// A managed key whose secret is `secret`.
pub fn key(id: &str, secret: &str) -> KeyConfig {
    KeyConfig::unlimited(id, secret)
}

/// A harness in managed mode with these keys and the admin listener on port 0.
pub async fn managed(
    keys: Vec<KeyConfig>,
    adjust: impl FnOnce(&mut deja::config::Config),
) -> Harness {
    Harness::with(|c| {
        c.upstream.api_key = Some(Secret::new(UPSTREAM_KEY));
        c.keys = keys;
        with_admin(c);
        adjust(c);
    })
    .await
}

pub fn with_admin(c: &mut deja::config::Config) {
    c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    c.admin.token = Some(Secret::new(ADMIN_TOKEN));
}

impl Harness {
    pub fn admin_url(&self, path: &str) -> String {
        let addr = self.proxy.admin_addr.expect("admin listener");
        format!("http://{addr}{path}")
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method, self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(body);
        }
        Reply::read(request.send().await.expect("admin answers")).await
    }

    pub async fn metrics(&self) -> String {
        let reply = self.admin("GET", "/metrics", None).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.text
    }
}

/// The value of one series in an exposition text (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.starts_with(' ').then(|| rest.trim().parse().ok())?
        })
        .unwrap_or(0.0)
}
