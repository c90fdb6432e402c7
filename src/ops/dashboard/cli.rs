//! `deja replay`: the dashboard's threshold replay from the command line, against a running
//! deja's admin listener (address and token from the same `--config` the proxy uses, so the
//! token never appears on a command line). `--apply T` sets the threshold as the page does.

use std::fmt::Write;

use serde_json::{Value, json};

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The admin listener's URL; default: `http://` + `admin.listen` of `--config`.
    #[arg(long)]
    pub admin: Option<String>,
    /// Group the lookups by `model` or `namespace`.
    #[arg(long, default_value = "model")]
    pub by: String,
    /// Put this threshold in force (with `--model`, for that model only).
    #[arg(long)]
    pub apply: Option<f64>,
    #[arg(long)]
    pub model: Option<String>,
}

pub async fn run(args: ReplayArgs, config: &Config) -> Result<String, String> {
    let token = config
        .admin
        .token
        .as_ref()
        .ok_or("admin.token is not set in --config (or DEJA_ADMIN__TOKEN)")?
        .expose()
        .to_string();
    let base = match (&args.admin, config.admin.listen) {
        (Some(url), _) => url.trim_end_matches('/').to_string(),
        (None, Some(addr)) => format!("http://{addr}"),
        (None, None) => return Err("give --admin URL or set admin.listen".into()),
    };
    // Err means a provider is already installed, which is all we need (an https admin URL).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|err| err.to_string())?;
    let mut out = String::new();
    if let Some(threshold) = args.apply {
        let mut body = json!({"threshold": threshold});
        if let Some(model) = &args.model {
            body["model"] = json!(model);
        }
        let reply = call(
            client.post(format!("{base}/admin/threshold")).json(&body),
            &token,
        )
        .await?;
        let _ = writeln!(
            out,
            "applied {threshold} to {} (was {:.4})",
            args.model.as_deref().unwrap_or("every model"),
            reply["previous"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let url = format!("{base}/admin/replay?by={}", args.by);
    let replay = call(client.get(url), &token).await?;
    out.push_str(&render(&replay));
    Ok(out)
}

async fn call(request: reqwest::RequestBuilder, token: &str) -> Result<Value, String> {
    let response = request
        .bearer_auth(token)
        .send()
        .await
        .map_err(|err| format!("admin listener: {err}"))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|err| err.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            body["error"]["message"].as_str().unwrap_or("")
        ));
    }
    Ok(body)
}

/// One table per group; the threshold in force is marked `*`.
pub fn render(replay: &Value) -> String {
    let mut out = String::new();
    let curves = replay["curves"].as_array().cloned().unwrap_or_default();
    if curves.is_empty() {
        out.push_str("no semantic lookups recorded yet\n");
    }
    for curve in curves {
        let current = curve["threshold"].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "\n{} = {:?}: {} semantic lookups, threshold {:.2}\n",
            replay["by"].as_str().unwrap_or("group"),
            curve["group"].as_str().unwrap_or(""),
            curve["lookups"],
            current
        );
        out.push_str("| threshold | hits | hit rate | est. wrong | wrong-hit rate |\n");
        out.push_str("|---|---|---|---|---|\n");
        for point in curve["points"].as_array().cloned().unwrap_or_default() {
            let t = point["threshold"].as_f64().unwrap_or(0.0);
            let mark = if (t - current).abs() < 0.005 {
                " *"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "| {t:.2}{mark} | {} | {:.1}% | {} | {:.1}% |",
                point["hits"],
                100.0 * point["hit_rate"].as_f64().unwrap_or(0.0),
                point["wrong"],
                100.0 * point["wrong_hit_rate"].as_f64().unwrap_or(0.0),
            );
        }
    }
    out
}
