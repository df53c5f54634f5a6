// tfgate dashboard: vanilla JS, no build step, no third-party code.
// Reads the admin API (/v1/admin/...) and the dashboard's stats endpoint with the admin
// bearer token the operator typed (kept in sessionStorage only); every change is an admin API
// call made after a confirmation dialog, and its answer is shown verbatim. Data is inserted as
// text only (never as HTML), so a model name or an error message cannot inject markup.
"use strict";

(function () {
  const TOKEN_KEY = "tfgate.adminToken";
  const STATS_EVERY_MS = 2000;
  const MODELS_EVERY_MS = 4000;
  const TRAFFIC_EVERY_MS = 10000;
  const SERIES = ["requests_per_second", "latency_p50_ms", "latency_p99_ms",
    "mean_batch_size", "errors_per_second"];
  // Okabe-Ito's hues (told apart with the common colour-vision deficiencies), the light ones
  // (orange, sky blue) swapped for darker ones: every line is at least 3:1 on white.
  const PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#7B3294", "#8C6D1F",
    "#000000", "#A6611A"];

  const state = {
    token: null,
    timers: [],
    modelsText: "",
    models: [],
    traffic: {},        // model -> {status, body, at}
    stats: null,
    colors: {},
    busy: false,
  };

  const $ = (id) => document.getElementById(id);

  // --- small DOM helpers (text only) ---

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function facts(pairs) {
    const dl = el("dl", { class: "facts" });
    for (const [name, value] of pairs) {
      if (value === undefined) continue;
      dl.append(el("dt", { text: name }), el("dd", {}, value === null ? "—" : value));
    }
    return dl;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "—";
    if (typeof value !== "number") return String(value);
    return Number.isInteger(value) ? String(value) : value.toFixed(digits === undefined ? 2 : digits);
  }

  function table(caption, headers, rows, numeric) {
    const head = el("tr", {}, headers.map((h, i) =>
      el("th", { scope: "col", class: numeric && numeric[i] ? "num" : null, text: h })));
    const body = rows.map((cells) => el("tr", {}, cells.map((c, i) =>
      el("td", { class: numeric && numeric[i] ? "num" : null }, c))));
    return el("table", {}, el("caption", { class: "muted", text: caption }),
      el("thead", {}, head), el("tbody", {}, body));
  }

  // --- API ---

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + state.token, Accept: "application/json" };
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const text = await response.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
    if (response.status === 401 || response.status === 403 ||
        (response.status === 503 && json && /admin API is disabled/.test(json.error || ""))) {
      signOut((json && json.error) || ("HTTP " + response.status));
      throw new AuthError(text);
    }
    return { status: response.status, statusText: response.statusText, text, json };
  }

  class AuthError extends Error {}

  const modelPath = (name) => "/v1/admin/models/" + encodeURIComponent(name);

  // --- sign in / out ---

  function showLogin(message) {
    $("app").hidden = true;
    $("top-actions").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("server-state").textContent = "";
    $("token").value = "";
    $("token").focus();
  }

  function signOut(message) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    for (const timer of state.timers) clearInterval(timer);
    state.timers = [];
    state.modelsText = "";
    showLogin(message);
  }

  async function signIn(token) {
    state.token = token;
    try {
      const answer = await api("GET", "/v1/admin/dashboard/stats");
      if (answer.status !== 200) {
        signOut((answer.json && answer.json.error) || "HTTP " + answer.status);
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, token);
      $("login").hidden = true;
      $("app").hidden = false;
      $("top-actions").hidden = false;
      applyStats(answer.json);
      await refreshModels();
      state.timers.push(setInterval(refreshStats, STATS_EVERY_MS));
      state.timers.push(setInterval(refreshModels, MODELS_EVERY_MS));
      state.timers.push(setInterval(refreshTraffic, TRAFFIC_EVERY_MS));
      refreshTraffic();
    } catch (error) {
      if (!(error instanceof AuthError)) signOut("Cannot reach the server: " + error.message);
    }
  }

  // --- polling ---

  function status(text) { $("status-line").textContent = text; }

  async function refreshStats() {
    try {
      const answer = await api("GET", "/v1/admin/dashboard/stats");
      if (answer.status === 200) applyStats(answer.json);
      else status("Stats: HTTP " + answer.status + " " + answer.text);
    } catch (error) {
      if (!(error instanceof AuthError)) status("Stats unavailable: " + error.message);
    }
  }

  async function refreshModels() {
    try {
      const answer = await api("GET", "/v1/admin/models");
      if (answer.status !== 200) {
        status("Models: HTTP " + answer.status + " " + answer.text);
        return;
      }
      status("Updated " + new Date().toLocaleTimeString());
      if (answer.text !== state.modelsText) {
        state.modelsText = answer.text;
        state.models = answer.json.models || [];
        renderModels();
      }
    } catch (error) {
      if (!(error instanceof AuthError)) status("Models unavailable: " + error.message);
    }
  }

  async function refreshTraffic() {
    for (const model of state.models) {
      // The model listing carries "traffic": null when the model has no rule, and no such
      // key on a server without traffic rules: only a model with a rule costs a request.
      if (model.traffic === null || model.traffic === undefined) {
        state.traffic[model.name] = { status: 404, body: null };
      } else {
        try {
          const answer = await api("GET", modelPath(model.name) + "/traffic");
          state.traffic[model.name] = { status: answer.status, body: answer.json };
        } catch (error) {
          if (error instanceof AuthError) return;
          state.traffic[model.name] = { status: 0, body: null };
        }
      }
      const slot = document.querySelector('[data-traffic-for="' + CSS.escape(model.name) + '"]');
      if (slot) slot.replaceChildren(renderTraffic(state.traffic[model.name]));
    }
  }

  // --- stats: server line, workers, cache, charts ---

  function applyStats(stats) {
    state.stats = stats;
    const uptime = Math.round(stats.uptime_seconds);
    $("server-state").textContent = (stats.draining ? "Draining for shutdown · " : "Serving · ") +
      "up " + formatDuration(uptime) + " · server time " +
      new Date(stats.server_time * 1000).toLocaleTimeString();
    $("workers").replaceChildren(renderWorkers(stats.workers || []));
    $("cache").replaceChildren(renderCache(stats.cache));
    drawCharts(stats.load);
  }

  function formatDuration(seconds) {
    if (seconds < 90) return seconds + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  function renderWorkers(workers) {
    if (!workers.length) return el("p", { class: "muted", text: "No worker processes." });
    const rows = workers.map((w) => [
      String(w.index),
      w.pid === null ? "—" : String(w.pid),
      el("span", { class: w.alive ? "ok" : "bad", text: w.alive ? "alive" : "down" }),
      String(w.restarts),
      w.batches_in_flight ? w.batches_in_flight + " (" + w.rows_in_flight + " rows, " +
        fmt(w.oldest_batch_seconds, 2) + " s)" : "idle",
      String(w.servables) + (w.restoring ? " (+" + w.restoring + " reloading)" : ""),
      w.rss_bytes ? (w.rss_bytes / 1048576).toFixed(0) + " MiB" : "—",
    ]);
    return table("One row per worker process", ["Worker", "PID", "State", "Restarts",
      "Current batch", "Servables", "Memory"], rows,
      [true, true, false, true, false, true, true]);
  }

  function renderCache(cache) {
    if (!cache) return el("p", { class: "muted", text: "No result cache configured." });
    const breakerClass = cache.breaker === "closed" ? "ok" : (cache.breaker === "open" ? "bad" : "warn");
    return facts([
      ["Redis", cache.address],
      ["Breaker", el("span", { class: breakerClass, text: cache.breaker })],
      ["Hit rate", cache.hit_ratio === null ? "no lookups yet" :
        (cache.hit_ratio * 100).toFixed(1) + " %"],
      ["Rows hit / missed", cache.hits + " / " + cache.misses],
      ["Cached models", cache.models.length ? cache.models.join(", ") : "none"],
    ]);
  }

  function colorOf(model) {
    if (!(model in state.colors)) {
      state.colors[model] = PALETTE[Object.keys(state.colors).length % PALETTE.length];
    }
    return state.colors[model];
  }

  function drawCharts(load) {
    const models = Object.keys(load.models).sort();
    $("load-window").textContent = "(last " + formatDuration(Math.round(load.window_seconds)) +
      ", one point every " + load.interval_seconds + " s)";
    const legend = $("legend");
    legend.replaceChildren(...models.map((m) => {
      const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.background = colorOf(m);
      return el("span", {}, swatch, m);
    }));
    for (const series of SERIES) {
      const canvas = $("chart-" + series);
      if (canvas) drawChart(canvas, load, models, series);
    }
  }

  function drawChart(canvas, load, models, series) {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(200, canvas.clientWidth || 420);
    const height = canvas.clientHeight || 150;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const left = 46, right = 8, top = 8, bottom = 20;
    const times = load.t;
    const end = times.length ? times[times.length - 1] : Date.now() / 1000;
    // Until the window is full the axis spans the data there is, so the first minutes of
    // a fresh server are not squeezed into its right edge.
    const span = times.length
      ? Math.min(load.window_seconds, Math.max(10 * load.interval_seconds, end - times[0]))
      : load.window_seconds;
    const start = end - span;
    let max = 0;
    for (const m of models) {
      for (const v of load.models[m][series]) if (v !== null && v > max) max = v;
    }
    max = niceCeiling(max);
    const x = (t) => left + (width - left - right) * (t - start) / span;
    const y = (v) => top + (height - top - bottom) * (1 - v / max);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#454c57";
    ctx.strokeStyle = "#d5dae1";
    ctx.lineWidth = 1;
    for (const frac of [0, 0.5, 1]) {
      const yy = Math.round(y(max * frac)) + 0.5;
      ctx.beginPath(); ctx.moveTo(left, yy); ctx.lineTo(width - right, yy); ctx.stroke();
      ctx.fillText(fmt(max * frac, max < 10 ? 1 : 0), 4, yy + 4);
    }
    ctx.fillText("-" + formatDuration(Math.round(span)), left, height - 5);
    ctx.fillText("now", width - right - 22, height - 5);
    const latest = [];
    for (const m of models) {
      const values = load.models[m][series];
      ctx.strokeStyle = colorOf(m);
      ctx.lineWidth = 2;
      ctx.beginPath();
      let drawing = false;
      for (let i = 0; i < times.length; i++) {
        const v = values[i];
        if (v === null || times[i] < start) { drawing = false; continue; }
        if (drawing) ctx.lineTo(x(times[i]), y(v)); else ctx.moveTo(x(times[i]), y(v));
        drawing = true;
      }
      ctx.stroke();
      // A point with no neighbour (one sample, or between gaps) still shows, as a dot.
      ctx.fillStyle = colorOf(m);
      for (let i = 0; i < times.length; i++) {
        const v = values[i];
        const alone = v !== null && (i === 0 || values[i - 1] === null) &&
          (i === times.length - 1 || values[i + 1] === null);
        if (alone && times[i] >= start) ctx.fillRect(x(times[i]) - 2, y(v) - 2, 4, 4);
      }
      const last = values.length ? values[values.length - 1] : null;
      latest.push(m + " " + fmt(last));
    }
    const caption = canvas.closest("figure").querySelector("figcaption").textContent;
    canvas.setAttribute("aria-label", caption + ", latest: " +
      (latest.length ? latest.join("; ") : "no data yet"));
    canvas.dataset.points = String(times.length);
    canvas.dataset.last = times.length ? String(end) : "";
  }

  function niceCeiling(value) {
    if (!(value > 0)) return 1;
    const magnitude = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (value <= step * magnitude) return step * magnitude;
    }
    return 10 * magnitude;
  }

  // --- models ---

  function renderModels() {
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.key : null;
    const container = $("models");
    if (!state.models.length) {
      container.replaceChildren(el("p", { class: "muted", text: "No models configured." }));
      return;
    }
    container.replaceChildren(...state.models.map(renderModel));
    if (focused) {
      const again = container.querySelector('[data-key="' + CSS.escape(focused) + '"]');
      if (again) again.focus();
    }
  }

  function button(label, key, onclick, opts) {
    const o = opts || {};
    return el("button", {
      type: "button", class: o.class, "data-key": key, "aria-label": o.aria || null,
      disabled: o.disabled || null, onclick,
    }, label);
  }

  function renderModel(model) {
    const name = model.name;
    const labels = Object.entries(model.labels || {});
    const sync = model.sync;
    const cache = model.cache;
    const head = el("div", { class: "model-head" },
      el("h3", { text: name }),
      el("span", { class: "muted" }, "serving version ",
        el("strong", { "data-serving": name, text: fmt(model.serving_version) })),
      model.pinned_version !== null
        ? el("span", { class: "warn", text: "pinned to " + model.pinned_version }) : null,
      model.removed_from_config ? el("span", { class: "bad", text: "removed from config" }) : null,
      el("div", { class: "actions" },
        model.pinned_version !== null ? button("Unpin", "unpin:" + name,
          () => act("Unpin model " + name + "? The version policy decides again.",
            "DELETE", modelPath(name) + "/pin"), { class: "secondary" }) : null,
        sync ? button("Sync now", "sync:" + name,
          () => act("Run the sync pass of model " + name + " now?", "POST",
            modelPath(name) + "/sync"), { class: "secondary" }) : null));
    const info = facts([
      ["Base path", model.base_path],
      ["Version policy", typeof model.policy === "string" ? model.policy : JSON.stringify(model.policy)],
      ["Labels", labels.length ? labels.map(([l, v]) => l + " → " + v).join(", ") : "none"],
      ["Sync", sync ? syncText(sync) : "no sync source"],
      ["Cache", cache && cache.enabled ? "hit rate " + (cache.hit_ratio === null ? "—" :
        (cache.hit_ratio * 100).toFixed(1) + " %") + " (" + cache.hits + " hits, " +
        cache.misses + " misses), breaker " + cache.breaker : "off"],
    ]);
    const rows = (model.versions || []).map((v) => versionRow(model, v));
    const known = new Set((model.versions || []).map((v) => v.version));
    for (const onDisk of model.versions_on_disk || []) {
      if (!known.has(onDisk)) {
        rows.push(versionRow(model, { version: onDisk, state: "on disk", error: null,
          on_disk: true, in_flight_requests: 0 }));
      }
    }
    const versions = rows.length
      ? table("Versions of " + name, ["Version", "State", "Error", "On disk", "In flight",
        "Actions"], rows, [true, false, false, false, true, false])
      : el("p", { class: "muted", text: "No versions yet." });
    const traffic = el("div", { class: "traffic", "data-traffic-for": name },
      renderTraffic(state.traffic[name]));
    return el("article", { class: "model", "data-model": name, "aria-label": "Model " + name },
      head, info, versions, el("h4", { text: "Traffic rule" }), traffic);
  }

  function syncText(sync) {
    let outcome;
    if (sync.last_error) outcome = "failed: " + (sync.last_error.message || JSON.stringify(sync.last_error));
    else if (sync.last_success) outcome = "ok at " + sync.last_success;
    else outcome = "no pass yet";
    return sync.source + " — " + outcome +
      (sync.consecutive_failures ? " (" + sync.consecutive_failures + " failures in a row)" : "") +
      (sync.remote_missing ? " — remote missing" : "");
  }

  function versionRow(model, v) {
    const name = model.name;
    const num = v.version;
    const isPinned = model.pinned_version === num;
    const loaded = v.state === "AVAILABLE" || v.state === "LOADING";
    return [
      String(num),
      el("span", { class: "state state-" + v.state + (v.error ? " bad" : ""), text: v.state }),
      v.error ? v.error.code + ": " + v.error.message : "",
      v.on_disk ? "yes" : "no",
      String(v.in_flight_requests || 0),
      el("div", { class: "actions" },
        isPinned ? null : button("Pin", "pin:" + name + ":" + num,
          () => act("Pin model " + name + " to version " + num + "? Requests that name no " +
            "version or label will be answered by it.", "POST", modelPath(name) + "/pin",
          { version: num }), { aria: "Pin " + name + " version " + num, disabled: !v.on_disk }),
        loaded ? null : button("Load", "load:" + name + ":" + num,
          () => act("Load version " + num + " of model " + name + "?", "POST",
            modelPath(name) + "/versions/" + num + "/load"),
          { class: "secondary", aria: "Load " + name + " version " + num, disabled: !v.on_disk }),
        loaded && !isPinned ? button("Unload", "unload:" + name + ":" + num,
          () => act("Unload version " + num + " of model " + name + "? Requests for it will " +
            "be refused until it is loaded again.", "POST",
          modelPath(name) + "/versions/" + num + "/unload"),
          { class: "danger", aria: "Unload " + name + " version " + num }) : null),
    ];
  }

  // --- traffic rules (data-driven: renders whatever arms and state the API returns) ---

  function renderTraffic(entry) {
    if (!entry) return el("p", { class: "muted", text: "Loading…" });
    if (entry.status === 404) return el("p", { class: "muted", text: "no traffic rule" });
    if (entry.status !== 200 || !entry.body) {
      return el("p", { class: "muted", text: "traffic rule unavailable (HTTP " + entry.status + ")" });
    }
    const body = entry.body;
    const parts = [];
    const rule = body.rule || {};
    const ruleState = body.state || {};
    parts.push(facts([
      ...Object.entries(rule).filter(([k]) => k !== "arms").map(([k, v]) => ["Rule " + k, scalar(v)]),
      ["Ramp step", ruleState.ramp_step === undefined ? undefined : scalar(ruleState.ramp_step)],
      ["Rolled back", ruleState.rolled_back === undefined ? undefined :
        el("span", { class: ruleState.rolled_back ? "bad" : "ok",
          text: ruleState.rolled_back ? "yes" + (ruleState.rollback_reason ? ": " +
            ruleState.rollback_reason : "") : "no" })],
      ...Object.entries(ruleState).filter(([k]) =>
        !["ramp_step", "rolled_back", "rollback_reason"].includes(k)).map(([k, v]) => [k, scalar(v)]),
    ]));
    const arms = body.arms || [];
    if (arms.length) {
      const rows = arms.map((arm) => {
        const s = arm.stats || {};
        return [
          arm.name,
          arm.version !== null && arm.version !== undefined ? "version " + arm.version
            : (arm.label ? "label " + arm.label : "—"),
          fmt(arm.weight, 3), fmt(s.requests), fmt(s.errors), fmt(s.latency_p50_ms),
          fmt(s.latency_p99_ms), fmt(s.outcomes),
          s.conversion_rate !== null && s.conversion_rate !== undefined
            ? (s.conversion_rate * 100).toFixed(2) + " %" : "—",
          fmt(s.mean_reward, 3),
          s.ci_low !== null && s.ci_low !== undefined ? "[" + fmt(s.ci_low, 3) + ", " + fmt(s.ci_high, 3) + "]" : "—",
          fmt(s.p_value, 4),
        ];
      });
      parts.push(table("Arms of the traffic rule of " + body.model, ["Arm", "Serves", "Weight",
        "Requests", "Errors", "p50 ms", "p99 ms", "Outcomes", "Conversion", "Mean reward",
        "95% CI", "p-value"], rows,
      [false, false, true, true, true, true, true, true, true, true, false, true]));
    }
    if (body.shadow) {
      parts.push(facts(Object.entries(body.shadow).map(([k, v]) => ["Shadow " + k, scalar(v)])));
    }
    return el("div", {}, parts);
  }

  function scalar(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "object") return JSON.stringify(value);
    return fmt(value, 3);
  }

  // --- actions: confirmation dialog, then the admin API call ---

  function confirmDialog(text) {
    const dialog = $("confirm");
    const opener = document.activeElement;
    $("confirm-text").textContent = text;
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        // Back to the button that opened it (or its replacement after a re-render).
        const key = opener && opener.dataset ? opener.dataset.key : null;
        const target = (key && document.querySelector('[data-key="' + CSS.escape(key) + '"]')) || opener;
        if (target && target.focus) target.focus();
        resolve(dialog.returnValue === "ok");
      }, { once: true });
      dialog.showModal();
      $("confirm-cancel").focus();  // the safe choice has the focus first
    });
  }

  async function act(question, method, path, body) {
    if (state.busy) return;
    if (!(await confirmDialog(question))) return;
    state.busy = true;
    const result = $("action-result");
    result.className = "result";
    result.textContent = method + " " + path + " …";
    try {
      const answer = await api(method, path, body);
      result.textContent = method + " " + path + "\nHTTP " + answer.status + " " +
        answer.statusText + "\n" + answer.text;
      if (answer.status >= 400) result.className = "result bad";
    } catch (error) {
      if (!(error instanceof AuthError)) {
        result.className = "result bad";
        result.textContent = method + " " + path + "\nfailed: " + error.message;
      }
    } finally {
      state.busy = false;
    }
    state.modelsText = "";
    await refreshModels();
    refreshTraffic();
  }

  // --- start ---

  function start() {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (token) signIn(token);
    });
    $("logout").addEventListener("click", () => signOut("Signed out."));
    $("reload-config").addEventListener("click", () => act(
      "Re-read the model config file and apply it? Models it no longer lists are unloaded.",
      "POST", "/v1/admin/reload-config"));
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved); else showLogin("");
  }

  // For tests and the curious: the renderers are pure functions of the API's JSON.
  window.tfgateDashboard = { state, renderTraffic, renderModel };

  document.addEventListener("DOMContentLoaded", start);
})();
