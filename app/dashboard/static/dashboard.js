// tfgate dashboard: vanilla JS, no build step, no third-party code (renderers: render.js).
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
  const state = {
    token: null,
    timers: [],
    modelsText: "",
    models: [],
    traffic: {},        // model -> {status, body, at}
    stats: null,
    load: null,         // the load window held here, grown by each stats poll
    busy: false,
  };

  const $ = (id) => document.getElementById(id);
  const { el, facts, fmt, table, formatDuration, renderWorkers, renderCache, renderTraffic,
    drawCharts } = window.tfgateRender;

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
    state.load = null;
    state.stats = null;
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
    } catch (error) {
      if (!(error instanceof AuthError)) signOut("Cannot reach the server: " + error.message);
    }
  }

  // --- polling ---

  function status(text) { $("status-line").textContent = text; }

  async function refreshStats() {
    try {
      // Only the points after the last one held here: the page keeps the window itself.
      const held = state.load ? state.load.t : [];
      const since = held.length ? "?since=" + held[held.length - 1] : "";
      const answer = await api("GET", "/v1/admin/dashboard/stats" + since);
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
        // A model new to the page (a config reload added it) gets its traffic panel now.
        if (state.models.some((m) => !(m.name in state.traffic))) refreshTraffic();
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
    // A server that restarted (its uptime went back) starts a new window.
    if (state.stats && stats.uptime_seconds < state.stats.uptime_seconds) state.load = null;
    state.stats = stats;
    state.load = mergeLoad(state.load, stats.load);
    const uptime = Math.round(stats.uptime_seconds);
    $("server-state").textContent = (stats.draining ? "Draining for shutdown · " : "Serving · ") +
      "up " + formatDuration(uptime) + " · server time " +
      new Date(stats.server_time * 1000).toLocaleTimeString();
    $("workers").replaceChildren(renderWorkers(stats.workers || []));
    $("cache").replaceChildren(renderCache(stats.cache));
    drawCharts(state.load);
  }

  // The held window plus the points of `delta` (the stats' load, newer points only), with
  // every model's columns the length of `t` (null where a model had no point), trimmed to
  // the last window_seconds.
  function mergeLoad(held, delta) {
    if (!held) return delta;
    const before = held.t.length;
    const t = held.t.concat(delta.t);
    const models = {};
    for (const name of new Set([...Object.keys(held.models), ...Object.keys(delta.models)])) {
      models[name] = {};
      const old = held.models[name];
      const added = delta.models[name];
      for (const series of Object.keys((old || added))) {
        const head = old ? old[series] : new Array(before).fill(null);
        const tail = added ? added[series] : new Array(delta.t.length).fill(null);
        models[name][series] = head.concat(tail);
      }
    }
    const end = t.length ? t[t.length - 1] : 0;
    let drop = 0;
    while (drop < t.length && t[drop] <= end - delta.window_seconds) drop++;
    const load = { interval_seconds: delta.interval_seconds,
      window_seconds: delta.window_seconds, t: t.slice(drop), models: {} };
    for (const [name, columns] of Object.entries(models)) {
      const kept = {};
      for (const [series, values] of Object.entries(columns)) kept[series] = values.slice(drop);
      // A model with no value left in the window (removed from the config) leaves the charts.
      if (Object.values(kept).some((values) => values.some((v) => v !== null))) {
        load.models[name] = kept;
      }
    }
    return load;
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
  window.tfgateDashboard = { state, renderTraffic, renderModel, mergeLoad };

  document.addEventListener("DOMContentLoaded", start);
})();
