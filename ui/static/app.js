// The votr live view: renders each status pushed on /api/events (the JSON
// of /api/status) as a topology picture, a region table, two time series
// and, when the run ends, the convergence report.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const HISTORY = 1200; // points kept per series (10 min at 2 updates/s)
  const $ = (id) => document.getElementById(id);

  const state = {
    shape: "",        // regions and feeds drawn, to redraw only on change
    updates: 0,
    final: false,
    series: null,     // {key, t: [], ballots: {id: []}, lag: {name: []}}
    charts: {},
  };
  window.votrView = state;

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  function bytes(n) {
    if (n == null || n < 0) return "?";
    if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
    if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
    return n + " B";
  }

  function text(node, s) { if (node.textContent !== s) node.textContent = s; }

  // Node positions: the hub in the middle, spokes evenly on a circle.
  function layout(regions) {
    const pos = {};
    const spokes = regions.filter((r) => !r.hub);
    const cx = 500, cy = 330, radius = spokes.length > 1 ? 280 : 200;
    regions.filter((r) => r.hub).forEach((r) => { pos[r.id] = { x: cx, y: cy }; });
    spokes.forEach((r, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / spokes.length;
      pos[r.id] = { x: cx + radius * Math.cos(a), y: cy + radius * Math.sin(a) };
    });
    return pos;
  }

  function drawTopology(live) {
    const shape = live.regions.map((r) => r.id + (r.hub ? "h" : "")).join(",") + "|" + live.feeds.map((f) => f.name).join(",");
    const nodes = $("nodes"), feeds = $("feeds");
    if (shape !== state.shape) {
      state.shape = shape;
      nodes.textContent = "";
      feeds.textContent = "";
      const pos = layout(live.regions);
      const R = 54;
      for (const f of live.feeds) {
        const a = pos[f.source], b = pos[f.target];
        if (!a || !b) continue;
        const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
        const ux = dx / len, uy = dy / len;
        // The two feeds of a pair run side by side: each is shifted to its
        // own right-hand side.
        const off = 9, nx = -uy * off, ny = ux * off;
        const x1 = a.x + ux * R + nx, y1 = a.y + uy * R + ny;
        const x2 = b.x - ux * (R + 4) + nx, y2 = b.y - uy * (R + 4) + ny;
        el("line", { x1: x1, y1: y1, x2: x2, y2: y2, class: "feed stopped", "data-feed": f.name, "marker-end": "url(#arrow-stopped)" }, feeds);
        // The label runs along its arrow, on the arrow's own side, turned
        // so that it reads left to right.
        let deg = Math.atan2(dy, dx) * 180 / Math.PI;
        if (deg > 90) deg -= 180;
        if (deg < -90) deg += 180;
        const th = deg * Math.PI / 180;
        const below = (-uy) * (-Math.sin(th)) + ux * Math.cos(th) > 0;
        const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
        const g = el("text", { class: "feed-label", "data-feed": f.name, "text-anchor": "middle",
          transform: "translate(" + mx.toFixed(1) + "," + my.toFixed(1) + ") rotate(" + deg.toFixed(1) + ")" }, feeds);
        const ys = below ? [16, 29, 42] : [-34, -21, -8];
        el("tspan", { x: 0, y: ys[0], class: "title" }, g);
        el("tspan", { x: 0, y: ys[1], class: "l1" }, g);
        el("tspan", { x: 0, y: ys[2], class: "l2" }, g);
      }
      // Fit the picture: the nodes plus room for the labels around them.
      const xs = Object.values(pos).map((p) => p.x), ys = Object.values(pos).map((p) => p.y);
      if (xs.length) {
        const pad = 130;
        const x0 = Math.min(...xs) - pad, y0 = Math.min(...ys) - pad + 40;
        $("topology").setAttribute("viewBox", [x0, y0, Math.max(...xs) + pad - x0, Math.max(...ys) + pad - 40 - y0].map((v) => v.toFixed(0)).join(" "));
      }
      for (const r of live.regions) {
        const p = pos[r.id];
        const g = el("g", { class: "node" + (r.hub ? " hub" : ""), "data-region": r.id, transform: "translate(" + p.x + "," + p.y + ")" }, nodes);
        el("circle", { r: R }, g);
        el("text", { class: "name", y: -14 }, g);
        el("text", { class: "ballots", y: 8 }, g);
        el("text", { class: "rate", y: 26 }, g);
      }
    }
    for (const r of live.regions) {
      const g = nodes.querySelector('[data-region="' + r.id + '"]');
      if (!g) continue;
      text(g.querySelector(".name"), r.label);
      text(g.querySelector(".ballots"), String(r.ballots));
      text(g.querySelector(".rate"), r.ballots_per_s.toFixed(0) + " ballots/s");
      g.classList.toggle("violated", r.violations > 0);
    }
    for (const f of live.feeds) {
      const line = feeds.querySelector('line[data-feed="' + f.name + '"]');
      const label = feeds.querySelector('text[data-feed="' + f.name + '"]');
      if (!line || !label) continue;
      line.setAttribute("class", "feed " + f.health);
      line.setAttribute("marker-end", "url(#arrow-" + f.health + ")");
      label.setAttribute("class", "feed-label " + f.health);
      const spans = label.querySelectorAll("tspan");
      text(spans[0], f.name + " " + f.health + " · lag " + f.lag_ms + " ms");
      text(spans[1], bytes(f.lag_bytes) + " WAL behind · " + f.rows_per_s.toFixed(0) + " rows/s");
      text(spans[2], f.conflicts + " conflicts · " + f.dead_lettered + " dead letters");
    }
  }

  function bySrc(m) {
    if (!m) return "-";
    return Object.keys(m).sort((a, b) => a - b).map((k) => k + ":" + m[k]).join(" ");
  }

  function matchText(st, reg) {
    if (reg.id === st.hub) return { t: "(hub)", ok: true };
    if (reg.error) return { t: "unknown", ok: false };
    const m = reg.matches_hub;
    const differ = [];
    if (!m.ballots || !m.ballots_by_src) differ.push("ballots");
    if (!m.totals) differ.push("totals");
    if (!m.candidates) differ.push("candidates");
    return differ.length ? { t: "no: " + differ.join(", "), ok: false } : { t: "yes", ok: true };
  }

  function cell(tr, s, cls) {
    const td = document.createElement("td");
    td.textContent = s;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }

  function drawRegions(st) {
    const body = $("regions").tBodies[0];
    body.textContent = "";
    if (st.regions) {
      text($("report-at"), "read " + new Date(st.at).toLocaleTimeString());
      for (const reg of st.regions) {
        const tr = document.createElement("tr");
        tr.dataset.region = reg.id;
        cell(tr, reg.label);
        if (reg.error) {
          cell(tr, "unreachable: " + reg.error, "bad");
          body.appendChild(tr);
          continue;
        }
        cell(tr, String(reg.ballots));
        cell(tr, String(reg.totals_sum));
        const v = reg.violations || [];
        if (v.length) {
          cell(tr, "violated: " + v.slice(0, 3).map((x) => x.candidate + " (" + x.ballots + " ballots, total " + x.total + ")").join("; ") + (v.length > 3 ? " …" : ""), "bad");
        } else {
          cell(tr, "ok", "ok");
        }
        cell(tr, bySrc(reg.ballots_by_src));
        const m = matchText(st, reg);
        cell(tr, m.t, m.ok ? "ok" : "bad");
        body.appendChild(tr);
      }
      return;
    }
    text($("report-at"), "live (no report read yet)");
    for (const r of (st.live && st.live.regions) || []) {
      const tr = document.createElement("tr");
      tr.dataset.region = r.id;
      cell(tr, r.label);
      cell(tr, String(r.ballots));
      cell(tr, String(r.ballots));
      cell(tr, r.violations ? "violated " + r.violations + "×" : "ok", r.violations ? "bad" : "ok");
      cell(tr, "-");
      cell(tr, "-");
      body.appendChild(tr);
    }
  }

  function chart(id, title, names, data) {
    const box = $(id);
    const width = Math.max(300, box.clientWidth || 400);
    const series = [{}].concat(names.map((n, i) => ({
      label: n, stroke: ["#4a6fa5", "#b07a1a", "#2e9d57", "#8e44ad", "#c9302c", "#16a0a0", "#7f8c8d", "#d35400"][i % 8], width: 2,
    })));
    box.textContent = "";
    return new uPlot({ width: width, height: 200, title: title, series: series, axes: [{}, { size: 60 }], legend: { live: false } }, data, box);
  }

  function drawCharts(st) {
    const live = st.live;
    const key = live.regions.map((r) => r.id).join(",") + "|" + live.feeds.map((f) => f.name).join(",");
    let s = state.series;
    if (!s || s.key !== key) {
      s = state.series = { key: key, t: [], ballots: live.regions.map(() => []), lag: live.feeds.map(() => []) };
      state.charts = {};
    }
    s.t.push(Date.parse(live.at) / 1000);
    live.regions.forEach((r, i) => s.ballots[i].push(r.ballots_per_s));
    live.feeds.forEach((f, i) => s.lag[i].push(f.lag_ms));
    if (s.t.length > HISTORY) {
      s.t.shift();
      s.ballots.forEach((a) => a.shift());
      s.lag.forEach((a) => a.shift());
    }
    const bData = [s.t].concat(s.ballots), lData = [s.t].concat(s.lag);
    if (!state.charts.ballots) {
      state.charts.ballots = chart("chart-ballots", "", live.regions.map((r) => r.label), bData);
      state.charts.lag = chart("chart-lag", "", live.feeds.map((f) => f.name), lData);
    } else {
      state.charts.ballots.setData(bData);
      state.charts.lag.setData(lData);
    }
  }

  function drawVerdict(st) {
    const v = $("verdict");
    const settled = st.phase === "done" || st.phase === "check";
    if (!settled || !st.regions) {
      v.className = "verdict pending";
      text(v, st.phase === "draining" ? "draining: the workers stopped; convergence is checked when the feeds have caught up" :
        "running: convergence is checked when the run ends");
      return;
    }
    if (st.ok) {
      v.className = "verdict converged";
      text(v, "converged: all " + st.regions.length + " regions identical");
    } else {
      v.className = "verdict not-converged";
      text(v, "NOT converged: " + st.problems.length + " problem(s) — " + st.problems[0]);
    }
  }

  function drawReport(st) {
    const settled = st.phase === "done" || st.phase === "check";
    text($("report-note"), settled ? "Read " + new Date(st.at).toLocaleString() + (st.phase === "check" ? " (re-read every few seconds)" : " at the end of the run") + "." :
      "Live reading; the report is final when the run ends (the same data as votr check --json).");
    const probs = $("problems"), warns = $("warnings");
    probs.textContent = "";
    warns.textContent = "";
    if (settled) {
      for (const p of st.problems || []) { const li = document.createElement("li"); li.textContent = p; probs.appendChild(li); }
    }
    for (const w of st.warnings || []) { const li = document.createElement("li"); li.textContent = w; warns.appendChild(li); }
    const body = $("report-feeds").tBodies[0];
    body.textContent = "";
    for (const f of st.feeds || []) {
      const tr = document.createElement("tr");
      const c = f.checkpoint || {};
      cell(tr, f.name);
      cell(tr, f.target_error ? "target unreachable" : (c.source_lsn || "-"));
      cell(tr, String(c.txns || 0));
      cell(tr, String(c.rows || 0));
      cell(tr, String(c.conflicts || 0));
      cell(tr, f.pending_dead_letters + " pending", f.pending_dead_letters ? "bad" : "");
      cell(tr, f.source_error ? "source unreachable" : !f.slot_exists ? "MISSING" : (f.slot_active ? "active" : "inactive") + ", " + f.wal_status + ", retains " + bytes(f.retained_bytes));
      body.appendChild(tr);
    }
    if (settled) text($("json"), JSON.stringify(st, null, 2));
  }

  function render(st) {
    state.updates++;
    document.body.dataset.phase = st.phase;
    text($("phase"), st.phase);
    text($("headline"), st.headline || "");
    if (st.live && st.live.regions) {
      drawTopology(st.live);
      drawCharts(st);
    }
    drawRegions(st);
    drawVerdict(st);
    drawReport(st);
    if (st.final) state.final = true;
  }

  const es = new EventSource("/api/events");
  es.addEventListener("status", (e) => {
    text($("conn"), "live");
    render(JSON.parse(e.data));
  });
  es.addEventListener("end", () => {
    es.close();
    text($("conn"), "votr has exited; this is its last status");
  });
  es.onerror = () => {
    if (state.final) {
      es.close();
      text($("conn"), "votr has exited; this is its last status");
      return;
    }
    text($("conn"), "connection lost; reconnecting…");
  };
})();
