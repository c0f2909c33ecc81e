// modelyard dashboard: polls v2/dashboard/data and renders it with plain DOM and inline SVG.
// Every text from the server goes in through textContent (never parsed as HTML); nothing is fetched
// from another origin.
"use strict";

(function () {
  const DATA_URL = "v2/dashboard/data";
  const POLL_MS = 2000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"];

  // ------------------------------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fill(id, ...children) {
    const node = document.getElementById(id);
    node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
    return node;
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);

  function num(v, digits = 3) {
    if (!isNum(v)) return "–";
    if (v !== 0 && (Math.abs(v) >= 1e5 || Math.abs(v) < 1e-3)) return v.toExponential(2);
    return String(Number(v.toPrecision(digits)));
  }
  const int = (v) => (isNum(v) ? Math.round(v).toLocaleString("en-US") : "–");
  const pct = (v, d = 1) => (isNum(v) ? (100 * v).toFixed(d) + "%" : "–");
  const ms = (v) => (isNum(v) ? num(v, 3) + " ms" : "–");

  function bytes(v) {
    if (!isNum(v)) return "–";
    if (v < 1024 * 1024) return (v / 1024).toFixed(0) + " KB";
    return (v / (1024 * 1024)).toFixed(1) + " MB";
  }

  // a measurement's value (and interval) in its unit
  function measured(m) {
    const iv = Array.isArray(m.interval) ? m.interval : null;
    const withIv = (f) =>
      f(m.value) + (iv && isNum(iv[0]) && isNum(iv[1]) ? " [" + f(iv[0]) + ", " + f(iv[1]) + "]" : "");
    switch (m.unit) {
      case "fraction":
        return withIv((v) => pct(v, 1));
      case "bytes":
        return bytes(m.value);
      case "ms":
        return ms(m.value);
      case "USD":
        return isNum(m.value) ? "$" + m.value.toFixed(4) : "–";
      case "points":
        return withIv((v) => num(v, 3)) + " pts";
      default:
        return withIv((v) => num(v, 4)) + (m.unit && m.unit !== "1" && m.unit !== "" ? " " + m.unit : "");
    }
  }

  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function clock(unixS) {
    return isNum(unixS) ? new Date(unixS * 1000).toISOString().slice(11, 19) : "";
  }

  function badge(text, kind) {
    return el("span", { class: "badge" + (kind ? " " + kind : "") }, text);
  }

  function table(id, head, rows) {
    const t = id ? document.getElementById(id) : el("table");
    const thead = el("thead", {}, el("tr", {}, head.map((h) => el("th", { class: h.num ? "num" : null, title: h.title || null }, h.label))));
    const tbody = el("tbody", {}, rows);
    t.replaceChildren(thead, tbody);
    return t;
  }

  function td(content, cls) {
    return el("td", { class: cls || null }, content);
  }

  // ------------------------------------------------------------------------------------ charts

  // A line chart: series [{name, points: [[x, y]], colour, dash, band: [[x, lo, hi]]}], hlines [{y, label, colour}].
  function lineChart(title, series, hlines, opts) {
    const o = Object.assign({ width: 420, height: 170, xLabel: (x) => String(x), yFmt: (y) => num(y, 3) }, opts);
    const pad = { l: 48, r: 10, t: 8, b: 20 };
    const xs = [];
    const ys = [];
    for (const s of series) {
      for (const [x, y] of s.points) {
        if (isNum(x)) xs.push(x); // the time axis spans every point, with a value or not
        if (isNum(x) && isNum(y)) ys.push(y);
      }
      for (const [x, lo, hi] of s.band || []) {
        if (isNum(lo)) ys.push(lo);
        if (isNum(hi)) ys.push(hi);
        if (isNum(x)) xs.push(x);
      }
    }
    for (const h of hlines || []) if (isNum(h.y)) ys.push(h.y);
    const box = el("div", { class: "chart" }, el("div", { class: "title" }, title));
    if (!xs.length || !ys.length) {
      box.append(el("div", { class: "muted" }, "no data yet"));
      return box;
    }
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (o.yMin !== undefined) y0 = Math.min(y0, o.yMin);
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
    const yPad = (y1 - y0) * 0.08;
    y0 -= yPad; y1 += yPad;
    if (o.yMin !== undefined && y0 < o.yMin) y0 = o.yMin;
    if (o.yMax !== undefined && y1 > o.yMax) y1 = Math.max(o.yMax, Math.max(...ys));
    const W = o.width, H = o.height;
    const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (W - pad.l - pad.r);
    const Y = (y) => H - pad.b - ((y - y0) / (y1 - y0)) * (H - pad.t - pad.b);
    const g = svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" });
    for (let i = 0; i <= 3; i++) {
      const yv = y0 + ((y1 - y0) * i) / 3;
      g.append(svg("line", { class: "grid", x1: pad.l, x2: W - pad.r, y1: Y(yv), y2: Y(yv) }));
      g.append(svg("text", { x: pad.l - 4, y: Y(yv) + 4, "text-anchor": "end" }, o.yFmt(yv)));
    }
    g.append(svg("line", { class: "axis", x1: pad.l, x2: W - pad.r, y1: H - pad.b, y2: H - pad.b }));
    g.append(svg("line", { class: "axis", x1: pad.l, x2: pad.l, y1: pad.t, y2: H - pad.b }));
    g.append(svg("text", { x: pad.l, y: H - pad.b + 14, "text-anchor": "start" }, o.xLabel(x0)));
    g.append(svg("text", { x: W - pad.r, y: H - pad.b + 14, "text-anchor": "end" }, o.xLabel(x1)));
    for (const h of hlines || []) {
      if (!isNum(h.y)) continue;
      g.append(svg("line", { x1: pad.l, x2: W - pad.r, y1: Y(h.y), y2: Y(h.y), stroke: h.colour || "#c62828", "stroke-dasharray": "5 3" }));
      g.append(svg("text", { x: W - pad.r - 2, y: Y(h.y) - 3, "text-anchor": "end" }, h.label));
    }
    const legend = el("div", { class: "legend" });
    series.forEach((s, i) => {
      const colour = s.colour || COLOURS[i % COLOURS.length];
      const group = svg("g", { "data-series": s.name });
      g.append(group);
      const band = (s.band || []).filter((b) => isNum(b[0]) && isNum(b[1]) && isNum(b[2]));
      if (band.length) {
        const top = band.map((b) => X(b[0]) + "," + Y(b[2]));
        const bottom = band.slice().reverse().map((b) => X(b[0]) + "," + Y(b[1]));
        group.append(svg("polygon", { points: top.concat(bottom).join(" "), fill: colour, "fill-opacity": 0.12, stroke: "none" }));
      }
      const pts = s.points.filter((p) => isNum(p[0]) && isNum(p[1]));
      if (pts.length > 1) {
        group.append(svg("polyline", { points: pts.map((p) => X(p[0]) + "," + Y(p[1])).join(" "), fill: "none", stroke: colour, "stroke-width": 1.8, "stroke-dasharray": s.dash || null }));
      }
      for (const p of pts) group.append(svg("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: colour }));
      const swatch = svg("svg", { width: 10, height: 6 }, svg("rect", { width: 10, height: 6, fill: colour }));
      legend.append(el("span", {}, swatch, " " + s.name));
    });
    box.append(g, legend);
    return box;
  }

  // Horizontal bars (e.g. each feature's drift effect) against one threshold line.
  function barChart(title, bars, threshold, thresholdLabel) {
    const box = el("div", { class: "chart" }, el("div", { class: "title" }, title));
    const items = bars.filter((b) => isNum(b.value));
    if (!items.length) {
      box.append(el("div", { class: "muted" }, "no data yet"));
      return box;
    }
    const W = 420, rowH = 18, pad = { l: 120, r: 50, t: 6, b: 20 };
    const H = pad.t + pad.b + rowH * items.length;
    const max = Math.max(...items.map((b) => b.value), isNum(threshold) ? threshold : 0) * 1.1 || 1;
    const X = (v) => pad.l + (Math.max(0, v) / max) * (W - pad.l - pad.r);
    const g = svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" });
    items.forEach((b, i) => {
      const y = pad.t + i * rowH;
      const over = isNum(threshold) && b.value > threshold;
      g.append(svg("text", { x: pad.l - 6, y: y + 12, "text-anchor": "end" }, String(b.label).slice(0, 18)));
      g.append(svg("rect", { x: pad.l, y: y + 3, width: Math.max(1, X(b.value) - pad.l), height: rowH - 6, fill: over ? "#d62728" : "#1f77b4", "fill-opacity": 0.75 }));
      g.append(svg("text", { x: X(b.value) + 4, y: y + 12 }, num(b.value, 3)));
    });
    if (isNum(threshold)) {
      g.append(svg("line", { x1: X(threshold), x2: X(threshold), y1: pad.t, y2: H - pad.b, stroke: "#c62828", "stroke-dasharray": "5 3" }));
      g.append(svg("text", { x: X(threshold), y: H - 6, "text-anchor": "middle" }, thresholdLabel + " " + num(threshold, 3)));
    }
    box.append(g);
    return box;
  }

  // One rollout signal on its axis: the observed value (and its interval) against the decision boundary.
  function boundaryChart(stat) {
    const bound = isNum(stat.limit) ? stat.limit : stat.margin;
    const observed = isNum(stat.rate) ? stat.rate : stat.mean;
    const lo = isNum(stat.lower) ? stat.lower : stat.low;
    const hi = isNum(stat.upper) ? stat.upper : stat.high;
    const values = [bound, observed, lo, hi, 0].filter(isNum);
    const W = 300, H = 46, pad = { l: 10, r: 10 };
    const g = svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img", class: "boundary" });
    if (!isNum(bound)) return g;
    let x0 = Math.min(...values), x1 = Math.max(...values, 2 * Math.abs(bound));
    if (x0 === x1) x1 = x0 + 1;
    const span = x1 - x0;
    x0 -= span * 0.05; x1 += span * 0.05;
    const X = (v) => pad.l + ((v - x0) / (x1 - x0)) * (W - pad.l - pad.r);
    g.append(svg("rect", { x: X(x0), y: 8, width: X(bound) - X(x0), height: 18, fill: "#2ca02c", "fill-opacity": 0.10 }));
    g.append(svg("rect", { x: X(bound), y: 8, width: X(x1) - X(bound), height: 18, fill: "#d62728", "fill-opacity": 0.10 }));
    g.append(svg("line", { x1: X(bound), x2: X(bound), y1: 4, y2: 30, stroke: "#c62828", "stroke-width": 2 }));
    if (isNum(lo) && isNum(hi)) {
      g.append(svg("line", { x1: X(lo), x2: X(hi), y1: 17, y2: 17, stroke: "#1f2d3d", "stroke-width": 2 }));
      g.append(svg("line", { x1: X(lo), x2: X(lo), y1: 12, y2: 22, stroke: "#1f2d3d" }));
      g.append(svg("line", { x1: X(hi), x2: X(hi), y1: 12, y2: 22, stroke: "#1f2d3d" }));
    }
    if (isNum(observed)) g.append(svg("circle", { cx: X(observed), cy: 17, r: 4, fill: "#1f77b4" }));
    g.append(svg("text", { x: X(bound), y: 42, "text-anchor": "middle" }, (isNum(stat.limit) ? "limit " : "margin ") + num(bound, 3)));
    return g;
  }

  // ------------------------------------------------------------------------------------ sections

  function renderServer(doc) {
    const s = doc.server;
    fill("server-status", s.ready ? "ready" : s.status).className = "badge " + (s.ready ? "ok" : "warn");
    fill("served", "serving " + (s.served.map((v) => v.model + " v" + v.version).join(", ") || "nothing yet"));
    fill("updated", "updated " + when(doc.generated_at) + " · modelyard " + s.version);
  }

  function card(id, label, value, sub) {
    return el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value", id: id }, value), el("div", { class: "sub" }, sub || ""));
  }

  function renderLive(live) {
    const t = live.totals;
    const r = t.recent;
    const windowText = isNum(live.window_s) ? "last " + live.window_s.toFixed(0) + " s" : "since start";
    const latencyRecent = r.requests > 0;
    const errors = t.errors_4xx + t.errors_5xx;
    fill(
      "live-cards",
      card("live-requests", "Inference requests (since start)", int(t.requests), int(r.requests) + " in the " + windowText),
      card("live-rate", "Request rate (" + windowText + ")", isNum(r.rate_per_s) ? num(r.rate_per_s, 3) + "/s" : "–", isNum(live.inflight) ? int(Math.max(0, live.inflight - 1)) + " in flight besides this poll" : ""),
      card("live-latency", "Latency p50 / p99 (" + (latencyRecent ? windowText : "since start") + ")", ms((latencyRecent ? r : t).latency_p50_ms) + " / " + ms((latencyRecent ? r : t).latency_p99_ms), "mean " + ms((latencyRecent ? r : t).latency_mean_ms) + "; percentiles from histogram buckets"),
      card("live-errors", "Errors (since start)", int(errors), int(t.errors_4xx) + " 4xx, " + int(t.errors_5xx) + " 5xx; " + (isNum(r.error_rate) ? pct(r.error_rate, 2) + " in the " + windowText : "none recent"))
    );
    const series = live.series || [];
    fill(
      "live-charts",
      lineChart("Requests per second", [{ name: "rate /s", points: series.map((p) => [p.t_unix_s, p.rate_per_s]) }], [], { xLabel: clock, yMin: 0 }),
      lineChart("Latency (ms)", [
        { name: "p50", points: series.map((p) => [p.t_unix_s, p.latency_p50_ms]) },
        { name: "p99", points: series.map((p) => [p.t_unix_s, p.latency_p99_ms]) },
      ], [], { xLabel: clock, yMin: 0 }),
      lineChart("Error rate", [{ name: "errors", points: series.map((p) => [p.t_unix_s, p.error_rate]), colour: "#d62728" }], [], { xLabel: clock, yMin: 0, yFmt: (v) => pct(v, 1) })
    );
    table(
      "live-table",
      [{ label: "model" }, { label: "version" }, { label: "requests", num: 1 }, { label: "rate /s", num: 1 }, { label: "p50", num: 1 }, { label: "p99", num: 1 }, { label: "mean", num: 1 }, { label: "4xx", num: 1 }, { label: "5xx", num: 1 }],
      live.by_version.map((v) =>
        el("tr", {},
          td(v.model === null ? "(no model named)" : v.model), td(v.version === null ? "–" : "v" + v.version),
          td(int(v.requests), "num"), td(num(v.recent.rate_per_s, 3), "num"),
          td(ms(v.latency_p50_ms), "num"), td(ms(v.latency_p99_ms), "num"), td(ms(v.latency_mean_ms), "num"),
          td(int(v.errors_4xx), "num"), td(int(v.errors_5xx), "num"))
      )
    );
  }

  const STATE_KIND = { running: "info", promoted: "ok", rolled_back: "bad", inconclusive: "warn", stopped: "warn" };
  const DECISION_KIND = { worse: "bad", "non-inferior": "ok", open: "info" };
  const SHOWN = new Set(["name", "signal", "n", "k", "events", "decision", "rate", "mean", "lower", "upper", "low", "high", "limit", "margin", "method"]);

  function statRow(stat) {
    const name = stat.name || stat.signal || "?";
    const observed = isNum(stat.rate)
      ? pct(stat.rate, 2) + (isNum(stat.k) ? " (" + int(stat.k) + " of " + int(stat.n) + ")" : isNum(stat.events) ? " (" + int(stat.events) + " of " + int(stat.n) + ")" : "")
      : isNum(stat.mean) ? num(stat.mean, 3) : "–";
    const lo = isNum(stat.lower) ? stat.lower : stat.low;
    const hi = isNum(stat.upper) ? stat.upper : stat.high;
    const extra = Object.entries(stat)
      .filter(([k, v]) => !SHOWN.has(k) && (isNum(v) || typeof v === "string"))
      .map(([k, v]) => k + " " + (isNum(v) ? num(v, 3) : v))
      .join(" · ");
    return el("tr", { "data-signal": name },
      td(name), td(int(stat.n), "num"), td(badge(stat.decision || "open", DECISION_KIND[stat.decision] || "info")),
      td(observed, "num"), td(isNum(lo) && isNum(hi) ? "[" + num(lo, 3) + ", " + num(hi, 3) + "]" : "–", "num"),
      td(isNum(stat.limit) ? "rate ≤ " + num(stat.limit, 3) : isNum(stat.margin) ? "worse by ≤ " + num(stat.margin, 3) : "–"),
      td(boundaryChart(stat)), td(el("span", { class: "kv" }, extra)));
  }

  function renderRollout(part) {
    const body = [];
    if (part.error) body.push(el("p", { class: "banner" }, "rollouts: " + part.error));
    const all = part.rollouts || [];
    const running = all.filter((r) => r.state === "running");
    if (!running.length) body.push(el("p", { id: "no-rollout", class: "muted" }, "no rollout in progress"));
    for (const r of running) {
      body.push(el("div", { class: "rollout running", "data-model": r.model },
        el("h3", {}, r.model + ": v" + r.challenger + " (challenger) against v" + r.champion + " (champion) ", badge(r.state, STATE_KIND[r.state]), " ", badge(r.mode + (isNum(r.percent) ? " " + num(r.percent, 3) + "%" : ""), "info")),
        el("p", { class: "kv" }, "started " + when(r.started_at) + " · " + int(r.requests) + " requests compared" + (r.reason ? " · " + r.reason : "")),
        (r.statistics || []).length ? null : el("p", { class: "kv" }, "no statistics yet: they appear once the challenger has answered requests"),
        table(null,
          [{ label: "signal" }, { label: "n", num: 1 }, { label: "decision" }, { label: "observed", num: 1 }, { label: "interval", num: 1 }, { label: "boundary" }, { label: "against the boundary" }, { label: "statistics" }],
          (r.statistics || []).map(statRow))));
    }
    const ended = all.filter((r) => r.state !== "running");
    if (ended.length) {
      body.push(el("h3", {}, "Recent rollouts"));
      body.push(table(null,
        [{ label: "model" }, { label: "challenger" }, { label: "champion" }, { label: "mode" }, { label: "state" }, { label: "requests", num: 1 }, { label: "ended" }, { label: "reason" }],
        ended.slice(0, 10).map((r) => el("tr", {}, td(r.model), td("v" + r.challenger), td("v" + r.champion), td(r.mode), td(badge(r.state, STATE_KIND[r.state])), td(int(r.requests), "num"), td(when(r.ended_at)), td(r.reason || "", "reason")))));
    }
    fill("rollout-body", body);
  }

  function renderWatch(watched) {
    const body = [];
    if (!(watched || []).length) body.push(el("p", { id: "no-watch", class: "muted" }, "no champion watched (the prediction log is off, or no model is served by its champion alias)"));
    for (const w of watched || []) {
      const alarm = w.alarm;
      body.push(el("div", { class: "watch", "data-model": w.model },
        el("p", { class: "kv" }, w.model + " v" + w.version + " ", alarm ? badge("alarm", "bad") : badge("watching", "ok"),
          " · on alarm: " + w.on_champion_alarm + " · false-alarm rate " + num(w.watch_alpha, 3) + " over its time as champion"),
        alarm ? el("p", { class: "banner" }, alarm.reason + " → " + alarm.outcome) : null,
        table(null,
          [{ label: "signal" }, { label: "n", num: 1 }, { label: "decision" }, { label: "observed", num: 1 }, { label: "interval", num: 1 }, { label: "boundary" }, { label: "against the boundary" }, { label: "statistics" }],
          (w.statistics || []).map(statRow))));
    }
    fill("watch-body", body);
  }

  const EVIDENCE_LABELS = {
    "quality.accuracy": "accuracy",
    "compare.accuracy_drop": "drop vs baseline",
    "compare.flip_rate": "flips",
    "calibration.ece": "ECE",
    "quality.cosine_mean": "cosine",
    "quality.top10_agreement": "top-10 agree",
    "ood.auroc": "OOD AUROC",
    "efficiency.latency_p50_ms": "p50 latency",
    "efficiency.throughput_best": "throughput",
    "efficiency.size_bytes": "size",
    "efficiency.cost_usd_per_1m": "$ per 1M",
  };

  function lineage(v) {
    const passes = (v.passes || []).map((p) => p.pass).filter(Boolean);
    const parent = v.parent_version ? "v" + v.parent_version + (v.parent_candidate ? " (" + v.parent_candidate + ")" : "") : "none (baseline)";
    return [el("div", {}, "from " + parent), passes.length ? el("div", { class: "kv" }, passes.join(" › ")) : null];
  }

  function renderModels(part) {
    const body = [];
    if (part.error) body.push(el("p", { class: "banner" }, "registry: " + part.error));
    if (!part.models.length) body.push(el("p", { class: "muted" }, "no model registered"));
    for (const m of part.models) {
      const names = [];
      for (const v of m.versions) for (const e of v.evidence) if (!names.includes(e.name)) names.push(e.name);
      const shown = names.slice(0, 8);
      const aliases = Object.entries(m.aliases).map(([a, v]) => badge(a + " → v" + v, a === "champion" ? "ok" : null));
      body.push(el("h3", {}, m.name + " ", ...aliases, m.served_version ? [" ", badge("serving v" + m.served_version, "info")] : []));
      body.push(table(null,
        [{ label: "version" }, { label: "candidate" }, { label: "lineage" }, { label: "aliases" }, { label: "verdict" }, ...shown.map((n) => ({ label: EVIDENCE_LABELS[n] || n, title: n, num: 1 })), { label: "created" }],
        m.versions.slice().reverse().map((v) => {
          const byName = Object.fromEntries(v.evidence.map((e) => [e.name, e]));
          const failed = v.gates.filter((g) => g.passed === false).map((g) => g.gate + ": " + g.reason);
          const verdict = v.verdict === null ? badge("no evidence") : badge(v.verdict, v.verdict === "pass" ? "ok" : "bad");
          return el("tr", { class: v.served ? "served" : null, "data-version": v.version },
            td("v" + v.version), td(v.candidate), td(lineage(v)), td(v.aliases.map((a) => badge(a, a === "champion" ? "ok" : null))),
            td([verdict, failed.length ? el("div", { class: "kv" }, failed.join("; ")) : el("div", { class: "kv" }, v.gates.length + " gates")]),
            ...shown.map((n) => td(byName[n] ? measured(byName[n]) : "–", "num")),
            td(when(v.created)));
        })));
    }
    fill("models-body", body);
    table(
      "audit-log",
      [{ label: "when" }, { label: "model" }, { label: "alias" }, { label: "action" }, { label: "move" }, { label: "reason" }, { label: "actor" }],
      part.audit_log.map((e) =>
        el("tr", {},
          td(when(e.when)), td(e.model), td(e.alias), td(badge(e.action, e.action.includes("rollback") || e.action.includes("rolled") ? "bad" : e.action === "promote" ? "ok" : "info")),
          td((e.from_version ? "v" + e.from_version : "–") + " → v" + e.to_version), td(e.reason, "reason"), td(e.actor || "")))
    );
  }

  function renderMonitorVersion(v, part) {
    const block = el("div", { class: "version-block", "data-version": v.model + ":" + v.version }, el("h3", {}, v.model + " v" + v.version));
    if (v.error) {
      block.append(el("p", { class: "muted" }, v.error));
      return block;
    }
    const latest = v.latest;
    block.append(el("p", {}, latest.alarm ? badge("ALARM", "bad") : badge("no alarm", "ok"), " ", latest.summary));
    for (const note of latest.notes) block.append(el("p", { class: "kv" }, note));
    block.append(table(null,
      [{ label: "check" }, { label: "value", num: 1 }, { label: "compared with" }, { label: "alarm" }, { label: "what it says" }],
      latest.signals.map((s) => el("tr", {}, td(s.name), td(measured(s), "num"), td(s.compared_with), td(s.alarm === null ? "shown only" : s.alarm ? badge("alarm", "bad") : badge("ok", "ok")), td(s.summary, "reason")))));
    const hist = v.history || [];
    const x = (w, i) => (isNum(w.last_unix_s) ? w.last_unix_s : i);
    const charts = el("div", { class: "charts" });
    charts.append(barChart("Drift per feature, last " + part.window + " requests (effect, sd)",
      (latest.features || []).map((f) => ({ label: f.name, value: f.effect })), latest.drift_threshold, "threshold"));
    const features = [];
    for (const w of hist) for (const k of Object.keys(w.features || {})) if (!features.includes(k)) features.push(k);
    const thresholds = hist.map((w) => (w.drift["drift.inputs"] || {}).threshold).filter(isNum);
    charts.append(lineChart("Drift per feature over windows of " + part.window + " (effect, sd)",
      features.slice(0, 6).map((f) => ({ name: f, points: hist.map((w, i) => [x(w, i), (w.features || {})[f]]) })),
      thresholds.length ? [{ y: thresholds[thresholds.length - 1], label: "threshold" }] : [], { xLabel: clock, yMin: 0 }));
    const accuracy = (key) => hist.map((w, i) => [x(w, i), w[key] ? w[key].value : null]);
    const band = (key) => hist.map((w, i) => [x(w, i), w[key] && w[key].interval ? w[key].interval[0] : null, w[key] && w[key].interval ? w[key].interval[1] : null]);
    const offline = hist.map((w) => (w.estimated || {}).offline).filter(isNum);
    charts.append(lineChart("Accuracy per window: estimated vs realised",
      [
        { name: "estimated", points: accuracy("estimated"), band: band("estimated"), colour: "#1f77b4" },
        { name: "realised (labels)", points: accuracy("realised"), band: band("realised"), colour: "#2ca02c", dash: "4 2" },
      ],
      offline.length ? [{ y: offline[offline.length - 1], label: "offline", colour: "#66707a" }] : [],
      { xLabel: clock, yFmt: (v2) => pct(v2, 0), yMax: 1 }));
    block.append(charts);
    if (!hist.length) block.append(el("p", { class: "kv" }, "fewer than one full window of " + part.window + " requests logged: the charts over time start after it"));
    return block;
  }

  function renderMonitor(part) {
    if (!part.enabled) return fill("monitor-body", el("p", { class: "muted" }, part.note || "monitoring off"));
    const body = [];
    if (part.error) body.push(el("p", { class: "banner" }, "monitor: " + part.error));
    body.push(el("p", { class: "kv" }, "windows of " + part.window + " requests; false-alarm rate " + part.alpha + " per window"));
    for (const v of part.versions || []) body.push(renderMonitorVersion(v, part));
    return fill("monitor-body", body);
  }

  function render(doc) {
    const parts = [
      ["server", () => renderServer(doc)],
      ["live", () => renderLive(doc.live)],
      ["rollout", () => renderRollout(doc.rollouts)],
      ["watch", () => renderWatch(doc.watch)],
      ["models", () => renderModels(doc.registry)],
      ["monitor", () => renderMonitor(doc.monitor)],
    ];
    for (const [name, draw] of parts) {
      try {
        draw();
      } catch (err) {
        console.error("dashboard: drawing " + name + " failed", err);
      }
    }
  }

  // ------------------------------------------------------------------------------------ polling

  async function poll() {
    const banner = document.getElementById("fetch-error");
    try {
      const resp = await fetch(DATA_URL, { cache: "no-store", credentials: "same-origin" });
      if (!resp.ok) {
        let message = resp.status + " " + resp.statusText;
        try { message = (await resp.json()).error || message; } catch (e) { /* not JSON */ }
        throw new Error(message);
      }
      render(await resp.json());
      banner.hidden = true;
      document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
    } catch (err) {
      banner.textContent = "cannot read the dashboard data: " + err.message;
      banner.hidden = false;
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
