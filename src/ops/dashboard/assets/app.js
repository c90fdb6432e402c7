// The dashboard: polls the admin JSON API every few seconds and draws it. The session cookie
// authenticates the calls; state-changing ones echo the CSRF token from the page's <meta>.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 3000;
  const charts = {};
  let state = { by: "model", histGroup: null, replayGroup: null, showPrompts: false, replay: null };

  async function call(method, path, body) {
    const init = { method, headers: {}, credentials: "same-origin" };
    if (method !== "GET") init.headers["x-deja-csrf"] = csrf;
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401) { location.href = "/dashboard"; throw new Error("signed out"); }
    const json = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((json.error && json.error.message) || response.statusText);
    return json;
  }

  const pct = (x) => (100 * x).toFixed(1) + "%";
  const usd = (x) => "$" + x.toFixed(x !== 0 && Math.abs(x) < 0.01 ? 5 : 2);
  // Thresholds are f32 on the server: 0.85 arrives as 0.8500000238418579.
  const th = (x) => String(+Number(x).toPrecision(4));
  const fixed = (x, n) => (x === null || x === undefined ? "—" : Number(x).toFixed(n));

  function fill(dl, pairs) {
    dl.replaceChildren();
    for (const [name, value] of pairs) {
      const dt = document.createElement("dt"); dt.textContent = name;
      const dd = document.createElement("dd"); dd.textContent = value;
      dl.append(dt, dd);
    }
  }

  function windowPairs(w) {
    return [
      ["requests", w.requests],
      ["hit rate", pct(w.hit_rate)],
      ["exact · semantic · coalesced", pct(w.hit_rate_exact) + " · " + pct(w.hit_rate_semantic) + " · " + pct(w.hit_rate_coalesced)],
      ["tokens saved", w.tokens_saved],
      ["saved", usd(w.usd_saved)],
      ["embeddings cost", usd(w.usd_embedding)],
      ["saved, net", usd(w.usd_saved_net)],
      ["spent upstream", usd(w.usd_spent)],
      ["upstream errors · retries", w.upstream_errors + " · " + w.retries],
    ];
  }

  function row(tbody, cells, classes) {
    const tr = document.createElement("tr");
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text === null || text === undefined ? "—" : String(text);
      if (classes && classes[i]) td.className = classes[i];
      tr.append(td);
    });
    tbody.append(tr);
  }

  function width(el) { return Math.max(240, el.clientWidth || 300); }

  // Draws (or updates) a uPlot chart in `el`; `marker` is an x value drawn as a vertical line.
  function plot(name, el, opts, data, marker) {
    const markerHook = (u) => {
      const x = charts[name + ":marker"];
      if (x === undefined || x === null) return;
      const cx = u.valToPos(x, "x", true);
      const ctx = u.ctx;
      ctx.save();
      ctx.strokeStyle = "#c23b3b"; ctx.lineWidth = 2 * devicePixelRatio; ctx.setLineDash([6, 4]);
      ctx.beginPath(); ctx.moveTo(cx, u.bbox.top); ctx.lineTo(cx, u.bbox.top + u.bbox.height); ctx.stroke();
      ctx.restore();
    };
    charts[name + ":marker"] = marker;
    const key = name + ":" + opts.series.length;
    if (charts[name] && charts[name].key === key) {
      charts[name].plot.setData(data);
      charts[name].plot.redraw();
      return;
    }
    if (charts[name]) charts[name].plot.destroy();
    const full = Object.assign({ width: width(el), height: 220, hooks: { draw: [markerHook] } }, opts);
    charts[name] = { key, plot: new uPlot(full, data, el) };
  }

  function options(el, select, groups, current) {
    const before = el.value;
    el.replaceChildren();
    for (const g of groups) {
      const o = document.createElement("option");
      o.value = g; o.textContent = g === "" ? "(none)" : g;
      el.append(o);
    }
    const pick = groups.includes(current) ? current : groups.includes(before) ? before : groups[0];
    if (pick !== undefined) el.value = pick;
    return pick;
  }

  async function refresh() {
    const [overview, stats, lookups, hist, replay] = await Promise.all([
      call("GET", "/admin/dashboard"),
      call("GET", "/admin/stats"),
      call("GET", "/admin/lookups?limit=30"),
      call("GET", "/admin/histograms?by=" + state.by),
      call("GET", "/admin/replay?by=" + state.by),
    ]);
    state.showPrompts = overview.show_prompts;
    fill($("hour"), windowPairs(overview.hour));
    fill($("day"), windowPairs(overview.day));
    $("updated").textContent = "updated " + new Date(overview.now_ms).toLocaleTimeString();
    const series = overview.last_hour;
    plot("traffic", $("chart-traffic"), {
      height: 180,
      series: [{}, { label: "requests", stroke: "#2f6fdf" }, { label: "hits", stroke: "#1f7a3d" }],
      axes: [{}, {}],
    }, [series.map((p) => p.minute_ms / 1000), series.map((p) => p.requests), series.map((p) => p.hits)]);

    const w = overview.wrong_hits;
    $("wrong-hits").textContent = w.measured
      ? "estimated wrong-hit rate " + pct(w.wrong_hit_rate) + " over " + w.checked + " checked hits" +
        (w.budget !== null ? "; error budget " + pct(w.budget) + ", " + pct(w.budget_remaining) + " left" : "")
      : "Not measured: " + w.note + ".";

    // Keys and thresholds.
    const keys = $("keys").tBodies[0];
    keys.replaceChildren();
    for (const k of stats.keys) {
      row(keys, [k.id, k.tenant,
        k.rpm ? k.remaining_requests + " / " + k.rpm : "unlimited",
        k.tpm ? k.remaining_tokens + " / " + k.tpm : "unlimited",
        k.budget_usd !== null ? usd(k.spent_usd) + " / " + usd(k.budget_usd) : "no budget"]);
    }
    if (!stats.keys.length) row(keys, ["no managed keys", "", "", "", ""]);
    const per = Object.entries(stats.model_thresholds || {}).map(([m, t]) => m + " " + th(t)).join(", ");
    $("thresholds").textContent = "threshold " + th(stats.similarity_threshold) + (per ? "; per model: " + per : "");

    // Recent lookups.
    document.querySelectorAll(".prompt-col").forEach((th) => { th.hidden = !state.showPrompts; });
    const tbody = $("lookups").tBodies[0];
    tbody.replaceChildren();
    for (const l of lookups.lookups) {
      const cells = [new Date(l.ts_ms).toLocaleTimeString(), l.endpoint, l.model, l.key_id, l.outcome,
        fixed(l.best_similarity, 3), l.verdict, l.latency_ms.toFixed(1) + " ms"];
      if (state.showPrompts) cells.push(l.prompt);
      row(tbody, cells, [null, null, null, null, "outcome-" + l.outcome, null, null, null, "prompt"]);
    }

    // Histograms.
    state.histGroup = options($("hist-group"), null, hist.groups.map((g) => g.group), state.histGroup);
    const h = hist.groups.find((g) => g.group === state.histGroup);
    if (h) {
      const bars = uPlot.paths.bars({ size: [0.9, 40] });
      plot("hist", $("chart-hist"), {
        scales: { x: { time: false, range: [0.5, 1.0] } },
        series: [{}, { label: "hits", stroke: "#1f7a3d", fill: "#1f7a3d88", paths: bars },
          { label: "near misses", stroke: "#e0892f", fill: "#e0892f88", paths: bars }],
      }, [h.bins.map((b) => b + 0.005), h.hits, h.near_misses], h.threshold);
      $("hist-note").textContent = "dashed line: threshold " + th(h.threshold);
    } else {
      $("hist-note").textContent = "no semantic lookups recorded yet";
    }

    // Replay.
    state.replay = replay;
    state.replayGroup = options($("replay-group"), null, replay.curves.map((c) => c.group), state.replayGroup);
    drawReplay();
  }

  function drawReplay() {
    const c = state.replay && state.replay.curves.find((x) => x.group === state.replayGroup);
    if (!c) { $("replay-note").textContent = "no semantic lookups recorded yet"; return; }
    plot("replay", $("chart-replay"), {
      scales: { x: { time: false }, y: { range: [0, 1] } },
      series: [{ label: "threshold" }, { label: "hit rate", stroke: "#1f7a3d", width: 2 },
        { label: "est. wrong-hit rate", stroke: "#c23b3b", width: 2 }],
    }, [c.points.map((p) => p.threshold), c.points.map((p) => p.hit_rate), c.points.map((p) => p.wrong_hit_rate)],
    c.threshold);
    $("replay-note").textContent = c.lookups + " semantic lookups; dashed line: threshold in force (" +
      th(c.threshold) + "). Wrong hits are estimated from verification's rejections.";
    const input = $("threshold-input");
    if (document.activeElement !== input && !input.dataset.touched) input.value = c.threshold.toFixed(2);
  }

  $("group-by").addEventListener("change", (e) => { state.by = e.target.value; tick(); });
  $("hist-group").addEventListener("change", (e) => { state.histGroup = e.target.value; tick(); });
  $("replay-group").addEventListener("change", (e) => { state.replayGroup = e.target.value; drawReplay(); });
  $("threshold-input").addEventListener("input", (e) => { e.target.dataset.touched = "1"; });

  $("replay-apply").addEventListener("click", async () => {
    const threshold = Number($("threshold-input").value);
    const body = { threshold };
    if (state.by === "model" && state.replayGroup) body.model = state.replayGroup;
    try {
      const r = await call("POST", "/admin/threshold", body);
      $("replay-result").textContent = "applied " + th(r.threshold) + (r.model ? " to " + r.model : " to every model") +
        " (was " + th(r.previous) + "; proxy.toml unchanged)";
      delete $("threshold-input").dataset.touched;
      tick();
    } catch (err) { $("replay-result").textContent = "refused: " + err.message; }
  });

  let entryId = null;
  $("entry-read").addEventListener("click", async () => {
    const id = $("entry-id").value;
    try {
      const e = await call("GET", "/admin/entries/" + encodeURIComponent(id));
      entryId = e.id;
      const pairs = [["id", e.id], ["model", e.model], ["tenant", e.tenant], ["namespace", e.namespace || "(none)"],
        ["hits since start", e.hits], ["age", e.age_secs + " s"], ["expires in", e.expires_in_secs + " s"], ["has usage", e.has_usage]];
      if (state.showPrompts) pairs.push(["prompt", e.prompt || "—"]);
      fill($("entry"), pairs);
      $("entry-delete").disabled = false;
      $("entry-delete").textContent = "Delete";
    } catch (err) { fill($("entry"), [["error", err.message]]); $("entry-delete").disabled = true; }
  });

  // Destructive buttons ask a second click before acting.
  function confirmTwice(button, label, action) {
    button.addEventListener("click", async () => {
      if (button.dataset.armed !== "1") {
        button.dataset.armed = "1"; button.textContent = "Confirm: " + label;
        setTimeout(() => { if (button.dataset.armed === "1") { button.dataset.armed = ""; button.textContent = label; } }, 5000);
        return;
      }
      button.dataset.armed = "";
      button.textContent = label;
      await action();
    });
  }

  confirmTwice($("entry-delete"), "Delete", async () => {
    try {
      await call("DELETE", "/admin/entries/" + entryId);
      fill($("entry"), [["deleted", entryId]]);
      $("entry-delete").disabled = true;
    } catch (err) { fill($("entry"), [["error", err.message]]); }
  });

  confirmTwice($("purge"), "Purge…", async () => {
    const body = {};
    if ($("purge-namespace").value) body.namespace = $("purge-namespace").value;
    if ($("purge-model").value) body.model = $("purge-model").value;
    try {
      const r = await call("POST", "/admin/purge", body);
      $("purge-result").textContent = "deleted " + r.deleted + " entries";
    } catch (err) { $("purge-result").textContent = "refused: " + err.message; }
  });

  $("logout").addEventListener("click", async () => {
    await fetch("/dashboard/logout", { method: "POST", headers: { "x-deja-csrf": csrf } });
    location.href = "/dashboard";
  });

  window.addEventListener("resize", () => {
    for (const name of ["traffic", "hist", "replay"]) {
      const c = charts[name];
      if (c) c.plot.setSize({ width: width(c.plot.root.parentElement), height: c.plot.height });
    }
  });

  async function tick() {
    try { await refresh(); } catch (err) { $("updated").textContent = "update failed: " + err.message; }
  }
  tick();
  setInterval(tick, POLL_MS);
})();
