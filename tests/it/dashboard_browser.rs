//! The dashboard in a real browser: Debian's headless Chromium, driven through the DevTools
//! protocol (tests/it/support/cdp.rs), against the proxy and the fake upstream. It signs in, sees
//! the hit rate move and lookups appear, applies a threshold from the replay panel, deletes an
//! entry, and is refused without the token. Screenshots at laptop and phone widths go to
//! `$DASHBOARD_SCREENSHOTS` when set (benches/results/ keeps the committed ones).
//!
//! Without chromium (scripts/setup-chromium.sh installs it) the test says so loudly and passes.

use crate::support::admin::{ADMIN_TOKEN, with_admin};
use crate::support::cdp::{Browser, Page};
use crate::support::proxy::{Harness, at_cosine, axis};
use serde_json::{Value, json};

fn ask_model(model: &str, question: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": question}]})
}

/// The value the page shows for `name` in the last-hour totals.
const HOUR_HIT_RATE: &str = "(() => { const dt = [...document.querySelectorAll('#hour dt')]; \
    const i = dt.findIndex(d => d.textContent === 'hit rate'); \
    return i < 0 ? null : document.querySelectorAll('#hour dd')[i].textContent; })()";

async fn sign_in_with(page: &mut Page, token: &str) {
    let script = format!(
        "document.getElementById('token').value = {}; document.getElementById('login').submit(); true",
        json!(token)
    );
    page.eval(&script).await.expect("the sign-in form");
}

async fn click(page: &mut Page, id: &str) {
    page.eval(&format!("document.getElementById('{id}').click(); true"))
        .await
        .expect("a button");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser() {
    let Some(browser) = Browser::launch().await else {
        eprintln!(
            "\n\n*** SKIPPED tests/it/dashboard_browser.rs: no chromium on this machine. \
             scripts/setup-chromium.sh installs Debian's package (needs root and apt). ***\n\n"
        );
        return;
    };
    let h = Harness::with(with_admin).await;
    h.upstream.set_embedding("stored question", axis());
    h.upstream.set_embedding("nearby question", at_cosine(0.95));
    h.upstream.set_embedding("far question", at_cosine(0.80));
    let mini = "gpt-4o-mini";
    h.chat(&ask_model(mini, "stored question")).await;
    let hit = h.chat(&ask_model(mini, "nearby question")).await;
    let entry: u64 = hit.header("x-deja-entry").expect("a hit").parse().unwrap();
    h.chat(&ask_model(mini, "far question")).await;

    let mut page = browser.page().await;
    page.navigate(&h.admin_url("/dashboard")).await;
    page.wait_for(
        "document.getElementById('login') !== null",
        "the sign-in form",
    )
    .await;
    // Without the token: the form, and the API refuses the page's calls.
    let status = page
        .wait_for("fetch('/admin/dashboard').then(r => r.status)", "a status")
        .await;
    assert_eq!(status, 401);
    sign_in_with(&mut page, "not-the-admin-token-at-all").await;
    page.wait_for(
        "document.body.innerText.includes('Wrong admin token')",
        "the refusal",
    )
    .await;
    sign_in_with(&mut page, ADMIN_TOKEN).await;
    let before = page.wait_for(HOUR_HIT_RATE, "the hit rate").await;
    assert_eq!(before, "33.3%");

    // Three exact repeats: the page's hit rate follows (it polls every 3 s).
    for _ in 0..3 {
        let again = h.chat(&ask_model(mini, "stored question")).await;
        assert_eq!(again.header("x-deja-match"), Some("exact"));
    }
    page.wait_for(&format!("{HOUR_HIT_RATE} === '66.7%'"), "the new hit rate")
        .await;
    page.wait_for(
        "[...document.querySelectorAll('#lookups tbody tr')].some(r => r.innerText.includes('hit_exact'))",
        "an exact hit among the lookups",
    )
    .await;
    let text = page.eval("document.body.innerText").await.unwrap();
    let text = text.as_str().unwrap();
    assert!(text.contains("hit_semantic"), "{text}");
    assert!(!text.contains("stored question") && !text.contains("nearby question"));
    assert!(
        text.contains("Not measured:"),
        "the wrong-hit panel: {text}"
    );

    // The replay panel: pick the model, apply 0.85.
    page.wait_for(
        "[...document.getElementById('replay-group').options].some(o => o.value === 'gpt-4o-mini')",
        "the model in the replay panel",
    )
    .await;
    page.eval(
        "const s = document.getElementById('replay-group'); s.value = 'gpt-4o-mini'; \
         s.dispatchEvent(new Event('change')); \
         const t = document.getElementById('threshold-input'); t.value = '0.85'; \
         t.dispatchEvent(new Event('input')); true",
    )
    .await
    .unwrap();
    click(&mut page, "replay-apply").await;
    let result = page
        .wait_for(
            "document.getElementById('replay-result').textContent.startsWith('applied') && \
             document.getElementById('replay-result').textContent",
            "the threshold applied",
        )
        .await;
    assert!(result.as_str().unwrap().contains("gpt-4o-mini"), "{result}");
    let stats = h.admin("GET", "/admin/stats", None).await.json();
    assert_eq!(
        stats["model_thresholds"][mini].as_f64().unwrap() as f32,
        0.85
    );
    assert_eq!(stats["similarity_threshold"].as_f64().unwrap() as f32, 0.9);
    page.wait_for(
        "document.getElementById('thresholds').textContent.includes('gpt-4o-mini 0.85')",
        "the new threshold on the page",
    )
    .await;

    // Screenshots with traffic, at laptop and phone widths.
    let out = std::env::var_os("DASHBOARD_SCREENSHOTS").map(std::path::PathBuf::from);
    for (name, width, mobile) in [("laptop", 1280, false), ("phone", 390, true)] {
        let png = page.screenshot(width, mobile).await;
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name}: {} bytes",
            png.len()
        );
        if let Some(dir) = &out {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("dashboard-{name}.png")), &png).unwrap();
        }
    }
    // Nothing overflows a phone's width.
    let overflow = page
        .eval("document.documentElement.scrollWidth <= window.innerWidth")
        .await
        .unwrap();
    assert_eq!(overflow, true, "the page is wider than the phone");

    // The entry view: read the entry the semantic hit served, then delete it (two clicks).
    page.eval(&format!(
        "document.getElementById('entry-id').value = '{entry}'; true"
    ))
    .await
    .unwrap();
    click(&mut page, "entry-read").await;
    page.wait_for(
        "document.getElementById('entry').innerText.includes('gpt-4o-mini')",
        "the entry",
    )
    .await;
    click(&mut page, "entry-delete").await;
    assert_eq!(
        h.admin("GET", &format!("/admin/entries/{entry}"), None)
            .await
            .status,
        200
    );
    click(&mut page, "entry-delete").await;
    page.wait_for(
        "document.getElementById('entry').innerText.includes('deleted')",
        "the deletion",
    )
    .await;
    assert_eq!(
        h.admin("GET", &format!("/admin/entries/{entry}"), None)
            .await
            .status,
        404
    );
}
