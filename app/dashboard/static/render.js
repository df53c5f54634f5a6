// tfgate dashboard: renderers. Pure functions of the API's JSON that build DOM nodes (as
// text only, never HTML, so a model name or an error message cannot inject markup) and draw
// the load charts on <canvas>. Loaded before dashboard.js, which owns state, polling and
// actions; exported as window.tfgateRender.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const colors = {};  // model -> its colour, the same in every chart for the page's life
  const SERIES = ["requests_per_second", "latency_p50_ms", "latency_p99_ms",
    "mean_batch_size", "errors_per_second"];
  // Okabe-Ito's hues (told apart with the common colour-vision deficiencies), the light ones
  // (orange, sky blue) swapped for darker ones: every line is at least 3:1 on white.
  const PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#7B3294", "#8C6D1F",
    "#000000", "#A6611A"];

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
    if (!(model in colors)) {
      colors[model] = PALETTE[Object.keys(colors).length % PALETTE.length];
    }
    return colors[model];
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
        !["ramp_step", "rolled_back", "rollback_reason"].includes(k) &&
        !(k in rule && JSON.stringify(rule[k]) === JSON.stringify(ruleState[k])) &&
        !(k === "rule_id" && rule.id === ruleState.rule_id))
        .map(([k, v]) => [STATE_LABELS[k] || k, k === "started_at" ? epochText(v) : scalar(v)]),
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

  // The traffic API's state keys, as an operator reads them (others show as sent).
  const STATE_LABELS = {
    rule_id: "Rule id", started_at: "Started", ramp_steps: "Ramp steps",
    candidate: "Candidate", bandit: "Bandit",
  };

  function epochText(seconds) {
    return typeof seconds === "number" ? new Date(seconds * 1000).toLocaleString() : scalar(seconds);
  }

  function scalar(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "object") return JSON.stringify(value);
    return fmt(value, 3);
  }

  window.tfgateRender = {
    el, facts, fmt, table, formatDuration, renderWorkers, renderCache, renderTraffic,
    drawCharts,
  };
})();
