//! The dashboard's page and JSON calls against the real proxy and the fake upstream: sign-in
//! and its cookie, CSRF on changes, no prompt text by default, recent lookups, histograms and
//! threshold replay from real traffic, and a threshold applied from the page.

use crate::support::admin::{ADMIN_TOKEN, with_admin};
use crate::support::proxy::{Harness, KEY_A, Reply, at_cosine, axis};
use serde_json::{Value, json};

fn ask_model(model: &str, question: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": question}]})
}

/// A client that shows redirects instead of following them, and keeps no cookies.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in; returns the `Cookie` header value and the page's CSRF token.
async fn sign_in(h: &Harness) -> (String, String) {
    let reply = browser()
        .post(h.admin_url("/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 303);
    let set = reply.headers()["set-cookie"].to_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let page = browser()
        .get(h.admin_url("/dashboard"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries its CSRF token")
        .to_string();
    (cookie, csrf)
}

async fn with_cookie(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut request = browser()
        .request(method, h.admin_url(path))
        .header("cookie", cookie);
    if let Some(csrf) = csrf {
        request = request.header("x-deja-csrf", csrf);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    Reply::read(request.send().await.unwrap()).await
}

#[tokio::test]
async fn the_page_needs_the_token_and_keeps_it_in_a_strict_http_only_cookie() {
    let h = Harness::with(with_admin).await;
    // Without a session: the sign-in form, and the JSON calls refuse.
    let form = browser()
        .get(h.admin_url("/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    let csp = form.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = form.text().await.unwrap();
    assert!(html.contains("name=\"token\"") && !html.contains("name=\"csrf\""));
    let refused = browser()
        .get(h.admin_url("/admin/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // A wrong token: no cookie.
    let wrong = browser()
        .post(h.admin_url("/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", "not-the-admin-token-at-all"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    // The right one: a session cookie, HttpOnly and SameSite=Strict; the token is nowhere.
    let signed = browser()
        .post(h.admin_url("/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 303);
    assert_eq!(signed.headers()["location"], "/dashboard");
    let set = signed.headers()["set-cookie"].to_str().unwrap();
    assert!(set.starts_with("deja_session="), "{set}");
    assert!(
        set.contains("; HttpOnly") && set.contains("; SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    assert!(!set.contains(ADMIN_TOKEN));
    // Behind a TLS proxy the cookie is Secure.
    let behind_tls = browser()
        .post(h.admin_url("/dashboard/login"))
        .header("x-forwarded-proto", "https")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert!(
        behind_tls.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .ends_with("; Secure")
    );
    // With the cookie: the page and the JSON calls.
    let (cookie, csrf) = sign_in(&h).await;
    assert_eq!(csrf.len(), 64);
    let reply = with_cookie(
        &h,
        reqwest::Method::GET,
        "/admin/dashboard",
        &cookie,
        None,
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["wrong_hits"]["measured"], false);
    // A forged cookie is nothing.
    let forged = with_cookie(
        &h,
        reqwest::Method::GET,
        "/admin/dashboard",
        "deja_session=0000",
        None,
        None,
    )
    .await;
    assert_eq!(forged.status, 401);
    // Signing out ends the session (with the CSRF token: a cross-site page cannot).
    let out = with_cookie(
        &h,
        reqwest::Method::POST,
        "/dashboard/logout",
        &cookie,
        None,
        None,
    )
    .await;
    assert_eq!(out.status, 403);
    let out = with_cookie(
        &h,
        reqwest::Method::POST,
        "/dashboard/logout",
        &cookie,
        Some(&csrf),
        None,
    )
    .await;
    assert_eq!(out.status, 303);
    let after = with_cookie(
        &h,
        reqwest::Method::GET,
        "/admin/dashboard",
        &cookie,
        None,
        None,
    )
    .await;
    assert_eq!(after.status, 401);
}

#[tokio::test]
async fn changes_made_with_a_session_need_its_csrf_token() {
    let h = Harness::with(with_admin).await;
    let (cookie, csrf) = sign_in(&h).await;
    let set = json!({"threshold": 0.93});
    let post = reqwest::Method::POST;
    for token in [None, Some("0".repeat(64))] {
        let reply = with_cookie(
            &h,
            post.clone(),
            "/admin/threshold",
            &cookie,
            token.as_deref(),
            Some(set.clone()),
        )
        .await;
        assert_eq!(reply.status, 403, "{}", reply.text);
        assert!(reply.text.contains("CSRF"));
        let purge = with_cookie(
            &h,
            post.clone(),
            "/admin/purge",
            &cookie,
            token.as_deref(),
            Some(json!({"all": true})),
        )
        .await;
        assert_eq!(purge.status, 403);
    }
    let stats = h.admin("GET", "/admin/stats", None).await.json();
    assert_eq!(stats["similarity_threshold"].as_f64().unwrap() as f32, 0.9);
    let reply = with_cookie(
        &h,
        post.clone(),
        "/admin/threshold",
        &cookie,
        Some(&csrf),
        Some(set),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["previous"].as_f64().unwrap() as f32, 0.9);
    let stats = h.admin("GET", "/admin/stats", None).await.json();
    assert_eq!(stats["similarity_threshold"].as_f64().unwrap() as f32, 0.93);
    // Scripts with the bearer token need no CSRF token; a bad value is refused and changes
    // nothing.
    for bad in [
        json!({"threshold": 1.5}),
        json!({"threshold": 0}),
        json!({"threshold": "high"}),
        json!({"threshold": 0.9, "model": 7}),
    ] {
        let reply = h.admin("POST", "/admin/threshold", Some(&bad)).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
        assert!(reply.json()["error"]["message"].is_string());
    }
    let stats = h.admin("GET", "/admin/stats", None).await.json();
    assert_eq!(stats["similarity_threshold"].as_f64().unwrap() as f32, 0.93);
}

/// gpt-4o-mini: "stored question" on the axis, then a paraphrase at 0.95 (a hit at 0.9) and a
/// far one at 0.80 (a miss). gpt-4o: "what is 2+2", then "what is 2+3" at 0.96, which
/// verification turns down.
async fn traffic(h: &Harness) {
    h.upstream.set_embedding("stored question", axis());
    h.upstream.set_embedding("nearby question", at_cosine(0.95));
    h.upstream.set_embedding("far question", at_cosine(0.80));
    h.upstream.set_embedding("what is 2+2", axis());
    h.upstream.set_embedding("what is 2+3", at_cosine(0.96));
    let mini = "gpt-4o-mini";
    assert_eq!(
        h.chat(&ask_model(mini, "stored question"))
            .await
            .cache_status(),
        "miss"
    );
    let hit = h.chat(&ask_model(mini, "nearby question")).await;
    assert_eq!(hit.header("x-deja-match"), Some("semantic"));
    assert_eq!(
        h.chat(&ask_model(mini, "far question"))
            .await
            .cache_status(),
        "miss"
    );
    assert_eq!(
        h.chat(&ask_model("gpt-4o", "what is 2+2"))
            .await
            .cache_status(),
        "miss"
    );
    let rejected = h.chat(&ask_model("gpt-4o", "what is 2+3")).await;
    assert_eq!(rejected.header("x-deja-verify-rejected"), Some("1"));
}

/// Like `at_cosine`, mirrored: far from the vectors `at_cosine` makes.
fn below_axis(cosine: f32) -> Vec<f32> {
    let mut v = at_cosine(cosine);
    v[1] = -v[1];
    v
}

fn point(curve: &Value, threshold: u32) -> &Value {
    &curve["points"][(threshold - 70) as usize]
}

fn curve<'v>(replay: &'v Value, group: &str) -> &'v Value {
    replay["curves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["group"] == group)
        .unwrap_or_else(|| panic!("no curve {group}: {replay}"))
}

#[tokio::test]
async fn lookups_histograms_and_replay_come_from_real_traffic_without_prompt_text() {
    let h = Harness::with(with_admin).await;
    traffic(&h).await;
    // Totals: five requests, one semantic hit.
    let overview = h.admin("GET", "/admin/dashboard", None).await.json();
    assert_eq!(overview["hour"]["requests"], 5);
    assert_eq!(overview["hour"]["hit_semantic"], 1);
    assert!((overview["hour"]["hit_rate"].as_f64().unwrap() - 0.2).abs() < 1e-9);
    assert_eq!(overview["day"]["requests"], 5);
    // Recent lookups, newest first, with outcome, similarity and verdict, and no prompt.
    let reply = h.admin("GET", "/admin/lookups?limit=10", None).await;
    assert!(
        !reply.text.contains("question") && !reply.text.contains("2+"),
        "{}",
        reply.text
    );
    let lookups = reply.json()["lookups"].as_array().unwrap().clone();
    assert_eq!(lookups.len(), 5);
    assert_eq!(lookups[0]["model"], "gpt-4o");
    assert_eq!(lookups[0]["outcome"], "miss");
    assert_eq!(lookups[0]["verdict"], "rejected");
    assert_eq!(lookups[3]["outcome"], "hit_semantic");
    assert_eq!(lookups[3]["verdict"], "accepted");
    assert!((lookups[3]["similarity"].as_f64().unwrap() - 0.95).abs() < 1e-3);
    // Histograms: the hit at 0.95, the near miss at 0.80, and the threshold in force.
    let hist = h
        .admin("GET", "/admin/histograms?by=model", None)
        .await
        .json();
    let mini = hist["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "gpt-4o-mini")
        .unwrap();
    assert_eq!(mini["hits"][95 - 50], 1);
    assert_eq!(mini["near_misses"][80 - 50], 1);
    assert_eq!(mini["threshold"].as_f64().unwrap() as f32, 0.9);
    // Replay: what each threshold would have done.
    let replay = h.admin("GET", "/admin/replay?by=model", None).await.json();
    let mini = curve(&replay, "gpt-4o-mini");
    assert_eq!(mini["lookups"], 3);
    assert_eq!(point(mini, 80)["hits"], 2);
    assert_eq!(point(mini, 81)["hits"], 1);
    assert_eq!(point(mini, 95)["hits"], 1);
    assert_eq!(point(mini, 96)["hits"], 0);
    assert_eq!(point(mini, 70)["wrong"], 0);
    let numbers = curve(&replay, "gpt-4o");
    assert_eq!(numbers["lookups"], 2);
    assert_eq!(point(numbers, 70)["hits"], 0);
    assert_eq!(point(numbers, 96)["wrong"], 1);
    assert!((point(numbers, 96)["wrong_hit_rate"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    assert_eq!(point(numbers, 97)["wrong"], 0);
    // Per namespace: all in the default one.
    let by_ns = h
        .admin("GET", "/admin/replay?by=namespace", None)
        .await
        .json();
    assert_eq!(curve(&by_ns, "")["lookups"], 5);
    assert_eq!(
        h.admin("GET", "/admin/replay?by=colour", None).await.status,
        400
    );
}

#[tokio::test]
async fn prompts_show_only_when_allowed() {
    let h = Harness::with(|c| {
        with_admin(c);
        c.admin.show_prompts = true;
    })
    .await;
    traffic(&h).await;
    let reply = h.admin("GET", "/admin/lookups", None).await;
    assert_eq!(reply.json()["lookups"][3]["prompt"], "nearby question");
}

#[tokio::test]
async fn a_threshold_applied_from_the_replay_changes_what_hits() {
    let h = Harness::with(with_admin).await;
    traffic(&h).await;
    // Cosine 0.86 to the stored question on the axis, far from the others: no hit at 0.9.
    h.upstream
        .set_embedding("middling question", below_axis(0.86));
    let explain = json!({
        "authorization": format!("Bearer {KEY_A}"),
        "body": ask_model("gpt-4o-mini", "middling question"),
    });
    let before = h
        .admin("POST", "/admin/lookup", Some(&explain))
        .await
        .json();
    assert_eq!(before["semantic"]["would_hit"], Value::Null, "{before}");
    let (cookie, csrf) = sign_in(&h).await;
    let set = json!({"threshold": 0.85, "model": "gpt-4o-mini"});
    let reply = with_cookie(
        &h,
        reqwest::Method::POST,
        "/admin/threshold",
        &cookie,
        Some(&csrf),
        Some(set),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let stats = h.admin("GET", "/admin/stats", None).await.json();
    assert_eq!(
        stats["model_thresholds"]["gpt-4o-mini"].as_f64().unwrap() as f32,
        0.85
    );
    assert_eq!(stats["similarity_threshold"].as_f64().unwrap() as f32, 0.9);
    let after = h.chat(&ask_model("gpt-4o-mini", "middling question")).await;
    assert_eq!(
        after.header("x-deja-match"),
        Some("semantic"),
        "{}",
        after.text
    );
    // Other models keep the global threshold.
    h.upstream
        .set_embedding("what is 2+2 exactly", below_axis(0.86));
    let other = h.chat(&ask_model("gpt-4o", "what is 2+2 exactly")).await;
    assert_eq!(other.cache_status(), "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deja_replay_prints_the_replay_and_applies_a_threshold() {
    let h = Harness::with(with_admin).await;
    traffic(&h).await;
    // The token comes from the config file, never the command line.
    let token = h.dir.path().join("admin-token");
    std::fs::write(&token, ADMIN_TOKEN).unwrap();
    let config = h.dir.path().join("replay.toml");
    std::fs::write(
        &config,
        format!("[admin]\ntoken_file = {:?}\n", token.display().to_string()),
    )
    .unwrap();
    let admin = h.admin_url("");
    let run = |extra: &'static [&'static str]| {
        let (config, admin) = (config.clone(), admin.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_deja"))
                .arg("--config")
                .arg(&config)
                .args(["replay", "--admin", &admin])
                .args(extra)
                .env_remove("DEJA_ADMIN__TOKEN")
                .output()
                .unwrap()
        })
    };
    let out = run(&[]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("model = \"gpt-4o-mini\": 3 semantic lookups, threshold 0.90"),
        "{text}"
    );
    assert!(text.contains("| 0.80 | 2 | 66.7% | 0 | 0.0% |"), "{text}");
    assert!(text.contains("| 0.90 * | 1 | 33.3% | 0 | 0.0% |"), "{text}");
    assert!(text.contains("| 0.96 | 0 | 0.0% | 1 | 50.0% |"), "{text}");
    let out = run(&["--apply", "0.85", "--model", "gpt-4o-mini"])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("applied 0.85 to gpt-4o-mini (was 0.9000)"),
        "{text}"
    );
    let stats = h.admin("GET", "/admin/stats", None).await.json();
    assert_eq!(
        stats["model_thresholds"]["gpt-4o-mini"].as_f64().unwrap() as f32,
        0.85
    );
    let refused = run(&["--apply", "1.5"]).await.unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("400"));
}

#[tokio::test]
async fn the_hour_and_day_totals_survive_a_restart() {
    let first = Harness::with(with_admin).await;
    traffic(&first).await;
    let Harness {
        proxy,
        upstream,
        dir,
        ..
    } = first;
    proxy.shutdown().await;
    let cache_dir = dir.path().join("cache");
    assert!(
        cache_dir.join("dashboard-totals.json").exists(),
        "saved at shutdown"
    );
    let second = Harness::with(|c| {
        with_admin(c);
        c.cache.dir = cache_dir.clone();
    })
    .await;
    let overview = second.admin("GET", "/admin/dashboard", None).await.json();
    assert_eq!(overview["hour"]["requests"], 5, "{overview}");
    assert_eq!(overview["day"]["hit_semantic"], 1, "{overview}");
    drop((upstream, dir));
}
