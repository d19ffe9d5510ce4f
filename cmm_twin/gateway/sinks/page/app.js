// cmm-twin live page. Hand-written, no library: an EventSource on /api/v1/events, /api/v1/history for
// the chosen time window, and small canvas charts (docs/page.md). Every chart canvas carries, from its
// last redraw, data-points (points drawn), data-x-min / data-x-max (its time range, epoch ms) and
// data-segments (separate line pieces: a gap in the data breaks a line).
"use strict";

(() => {
  const VERDICTS = ["PASS", "FAIL", "UNCERTAIN", "UNDEFINED"];
  const COLORS = {
    ink: "#1b2430",
    muted: "#5b6675",
    grid: "#e4e8ee",
    axis: "#9aa4b1",
    measured: "#d1495b",
    compensated: "#1f5fbf",
    temp: "#e08a00",
    nominal: "#6b7280",
    PASS: "#1a7f37",
    FAIL: "#c62828",
    UNCERTAIN: "#b26a00",
    UNDEFINED: "#6b7280",
    tolerance: "#c62828",
    acceptance: "rgba(26, 127, 55, 0.13)",
    acceptanceEdge: "rgba(26, 127, 55, 0.55)",
    depth: "#3d4f9f",
    depthFill: "rgba(61, 79, 159, 0.15)",
    connected: "#5cb176",
    buffering: "#f0a830",
    down: "#d9534f",
    unknown: "#c3c9d1",
  };
  const FONT = '12px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif';
  const MAX_LIVE = 3000; // live points kept per machine and feature
  const MAX_HISTORY = 5000; // newest points taken from /api/v1/history for the chosen characteristic
  const MAX_BUFFER_SAMPLES = 90000; // live buffer samples kept (a day at one a second)
  const REDRAW_MS = 500; // at most two redraws a second
  const SLIDE_MS = 5000; // how often the measurement charts follow the clock without new records
  const GAP_FACTOR = 5; // a pause longer than this many typical intervals breaks a line
  const MIN_GAP_MS = 3000; // ... and never one shorter than this (the buffer is sampled each second)
  const HISTORY_FIELDS = [
    "part_id", "measured_mm", "compensated_mm", "part_temp_c", "deviation_um", "uncertainty_um",
    "lower_tol_mm", "upper_tol_mm", "nominal_mm",
  ].join(",");
  const CAPABILITY_MS = 3000; // how often /api/v1/capability is read
  const WINDOWS = { "10m": 600000, "1h": 3600000, "8h": 28800000, "24h": 86400000 };
  const WINDOW_STORE = "cmm-twin.window";
  const SINK_COLORS = ["#3d4f9f", "#c2410c", "#0f766e", "#7c3aed", "#be185d", "#4d7c0f"];

  const $ = (id) => document.getElementById(id);

  function initialWindow() {
    const fromHash = /(?:^#|&)window=(10m|1h|8h|24h)(?:&|$)/.exec(window.location.hash);
    if (fromHash) return fromHash[1];
    try {
      const stored = window.localStorage.getItem(WINDOW_STORE);
      if (stored && WINDOWS[stored]) return stored;
    } catch (e) {
      /* storage refused (private mode): the default */
    }
    return "1h";
  }

  const state = {
    series: new Map(), // "machine\u0001feature" -> {live: [], sorted: true}
    machines: new Map(), // machine -> Set of features (from the stream, the history and capability)
    counts: {},
    tolerances: {},
    health: null,
    rejects: [],
    capability: null, // the /api/v1/capability document
    buffer: [], // {t, depth, mes, sinks: {name: {depth, state}}}, wall time
    bufferSinks: new Set(), // sinks with a buffer (durable ones)
    historyAvailable: false,
    epoch: 0, // +1 at each fresh snapshot (a new or restarted gateway): history is read again
    hist: { key: "", points: [], truncated: false }, // the chosen characteristic over the window
    healthHist: { key: "", points: [] }, // gateway_health (total buffer depth) over the window
    found: { key: "" }, // characteristics looked up in the history for the window
    windowName: initialWindow(),
    newestT: -Infinity, // newest measurement time seen, epoch ms
    clockOffset: 0, // server wall clock minus this browser's, ms
    machine: "",
    feature: "",
    dirty: new Set(["thermal", "deviation", "buffer", "verdicts", "rejects", "header", "selectors", "window"]),
    lastBufferDraw: 0,
    lastSlide: 0,
  };

  const key = (machine, feature) => machine + "\u0001" + feature;
  const windowMs = () => WINDOWS[state.windowName];
  const serverNow = () => Date.now() + state.clockOffset;

  // The measurement charts end at the newest measurement when its clock runs ahead of the wall
  // (a simulator with --speedup), else now; the buffer chart is on the wall clock. Same span.
  function measurementDomain() {
    const end = Math.max(serverNow(), state.newestT);
    return [end - windowMs(), end];
  }

  function wallDomain() {
    const now = serverNow();
    return [now - windowMs(), now];
  }

  // ------------------------------------------------------------------ data

  function seriesOf(machine, feature) {
    const k = key(machine, feature);
    let s = state.series.get(k);
    if (!s) {
      s = { live: [], sorted: true };
      state.series.set(k, s);
    }
    return s;
  }

  function know(machine, feature) {
    let features = state.machines.get(machine);
    if (!features) {
      features = new Set();
      state.machines.set(machine, features);
      state.dirty.add("selectors");
    }
    if (!features.has(feature)) {
      features.add(feature);
      state.dirty.add("selectors");
    }
  }

  function addRecords(records) {
    for (const r of records) {
      know(r.machine_id, r.feature);
      const s = seriesOf(r.machine_id, r.feature);
      const last = s.live[s.live.length - 1];
      if (last && r.t < last.t) s.sorted = false;
      s.live.push(r);
      if (r.t > state.newestT) state.newestT = r.t;
      if (s.live.length > MAX_LIVE * 1.25) s.live.splice(0, s.live.length - MAX_LIVE);
    }
    if (records.length) {
      state.dirty.add("thermal");
      state.dirty.add("deviation");
      state.dirty.add("header");
    }
  }

  function liveOf(machine, feature) {
    const s = state.series.get(key(machine, feature));
    if (!s) return null;
    if (!s.sorted) {
      s.live.sort((a, b) => a.t - b.t || a.id - b.id);
      s.sorted = true;
    }
    return s;
  }

  // The chosen characteristic over the window: its history, then the live records after it.
  function windowPoints() {
    const [lo, hi] = measurementDomain();
    const hist = state.hist.points;
    const histMax = hist.length ? hist[hist.length - 1].t : -Infinity;
    const s = liveOf(state.machine, state.feature);
    const live = s ? s.live.filter((p) => p.t > histMax) : [];
    return hist.concat(live).filter((p) => p.t >= lo && p.t <= hi);
  }

  function addBufferSample(t, depth, mes, sinks) {
    const last = state.buffer[state.buffer.length - 1];
    if (last && t < last.t) return;
    state.buffer.push({ t, depth, mes, sinks: sinks || {} });
    for (const name of Object.keys(sinks || {})) state.bufferSinks.add(name);
    if (state.buffer.length > MAX_BUFFER_SAMPLES * 1.1) state.buffer.splice(0, state.buffer.length - MAX_BUFFER_SAMPLES);
  }

  function sinkState(health, name) {
    const sink = health && health.sinks ? health.sinks[name] : undefined;
    return sink ? sink.state : null;
  }

  function onHealth(health) {
    state.health = health;
    state.clockOffset = health.t - Date.now();
    const sinks = {};
    for (const name of health.buffered_sinks || []) {
      const sink = health.sinks[name];
      if (sink) sinks[name] = { depth: sink.buffer_depth, state: sink.state };
    }
    addBufferSample(health.t, health.buffer_depth, sinkState(health, "mes"), sinks);
    state.dirty.add("header");
    state.dirty.add("buffer");
  }

  function onSnapshot(snap) {
    if (!snap.resumed) {
      state.series.clear();
      state.newestT = -Infinity;
      state.epoch += 1;
      state.buffer = [];
      for (const sample of snap.buffer_history || []) {
        addBufferSample(sample.t, sample.buffer_depth, sample.mes, sample.sinks);
      }
      state.dirty.add("selectors");
      state.dirty.add("window");
    }
    state.historyAvailable = Boolean(snap.history);
    state.counts = snap.counts || {};
    state.tolerances = snap.tolerances || {};
    state.rejects = snap.rejects || [];
    addRecords(snap.records || []);
    onHealth(snap.health);
    ["thermal", "deviation", "verdicts", "rejects"].forEach((d) => state.dirty.add(d));
  }

  function onRecords(body) {
    addRecords(body.records || []);
    state.counts = body.counts || state.counts;
    state.dirty.add("verdicts");
  }

  // ------------------------------------------------------------------ the stream

  function setStream(text) {
    const el = $("stream-state");
    el.textContent = text;
    el.dataset.state = text;
  }

  function connect() {
    setStream("connecting");
    const source = new EventSource("/api/v1/events");
    source.onopen = () => setStream("live");
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // refused (e.g. too many page clients, the gateway is stopping, or the token expired): try again later
        setStream("disconnected");
        source.close();
        window.setTimeout(connect, 10000);
      } else {
        setStream("reconnecting");
      }
    };
    const on = (name, handler) =>
      source.addEventListener(name, (event) => {
        handler(JSON.parse(event.data));
      });
    on("snapshot", onSnapshot);
    on("records", onRecords);
    on("health", onHealth);
    on("rejects", (body) => {
      state.rejects = body.rejects || [];
      state.dirty.add("rejects");
    });
  }

  // ------------------------------------------------------------------ the history over the window

  function parseIsoMs(text) {
    const m = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z$/.exec(text);
    if (!m) return Date.parse(text);
    const ms = m[7] ? Number((m[7] + "00").slice(0, 3)) : 0;
    return Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6], ms);
  }

  function historyUrl(params) {
    return "/api/v1/history?" + new URLSearchParams(params).toString();
  }

  function readHistory(params, accept) {
    fetch(historyUrl(params), { cache: "no-store" })
      .then((response) => (response.ok ? response.json() : null))
      .then((doc) => {
        if (doc && Array.isArray(doc.points)) accept(doc);
      })
      .catch(() => {
        /* the gateway restarts: the next snapshot reads again */
      });
  }

  // Read what the window needs: the chosen characteristic, the characteristics there are, and
  // the total buffer depth (gateway_health). Each is read once per window, selection and gateway.
  function loadHistory() {
    if (!state.historyAvailable || state.newestT === -Infinity) return;
    const [lo, hi] = measurementDomain();
    const since = ((lo - windowMs() * 0.05) / 1000).toFixed(3); // a margin: the window slides on
    const until = ((hi + 60000) / 1000).toFixed(3);
    const base = state.windowName + "|" + state.epoch;
    if (state.found.key !== base) {
      state.found = { key: base };
      readHistory({ since, until, fields: "deviation_um", limit: "2000" }, (doc) => {
        for (const p of doc.points) know(p.machine_id, p.feature);
      });
    }
    const [wlo, whi] = wallDomain();
    if (state.healthHist.key !== base) {
      state.healthHist = { key: base, points: [] };
      const params = {
        measurement: "gateway_health",
        fields: "buffer_depth,mes_connected",
        since: ((wlo - windowMs() * 0.05) / 1000).toFixed(3),
        until: ((whi + 60000) / 1000).toFixed(3),
        limit: "20000",
      };
      readHistory(params, (doc) => {
        if (state.healthHist.key !== base) return;
        state.healthHist.points = doc.points.map((p) => ({ t: parseIsoMs(p.time), depth: p.buffer_depth }));
        state.dirty.add("buffer");
      });
    }
    if (!state.machine || !state.feature) return;
    const k = base + "|" + key(state.machine, state.feature);
    if (state.hist.key === k) return;
    state.hist = { key: k, points: [], truncated: false };
    const params = {
      machine_id: state.machine,
      feature: state.feature,
      fields: HISTORY_FIELDS,
      since,
      until,
      limit: String(MAX_HISTORY),
    };
    readHistory(params, (doc) => {
      if (state.hist.key !== k) return;
      const points = [];
      for (const p of doc.points) {
        if (p.deviation_um == null) continue;
        const t = parseIsoMs(p.time);
        points.push({ ...p, t });
        if (t > state.newestT) state.newestT = t;
      }
      state.hist.points = points;
      state.hist.truncated = Boolean(doc.truncated);
      ["thermal", "deviation", "header"].forEach((d) => state.dirty.add(d));
    });
  }

  function setWindow(name) {
    if (!WINDOWS[name]) return;
    state.windowName = name;
    try {
      window.localStorage.setItem(WINDOW_STORE, name);
    } catch (e) {
      /* the URL keeps it */
    }
    window.history.replaceState(null, "", "#window=" + name);
    ["window", "thermal", "deviation", "buffer", "header"].forEach((d) => state.dirty.add(d));
    redraw();
  }

  function drawWindow() {
    for (const button of document.querySelectorAll("#window-control button")) {
      button.setAttribute("aria-pressed", String(button.dataset.window === state.windowName));
    }
    document.body.dataset.window = state.windowName;
    loadHistory();
  }

  // Consecutive points split where the pause is longer than GAP_FACTOR typical intervals.
  function runsOf(points, minGapMs) {
    if (points.length < 3) return points.length ? [points] : [];
    const steps = [];
    for (let i = 1; i < points.length; i++) steps.push(points[i].t - points[i - 1].t);
    steps.sort((a, b) => a - b);
    const limit = Math.max(minGapMs, GAP_FACTOR * steps[steps.length >> 1]);
    const runs = [[points[0]]];
    for (let i = 1; i < points.length; i++) {
      if (points[i].t - points[i - 1].t > limit) runs.push([]);
      runs[runs.length - 1].push(points[i]);
    }
    return runs;
  }

  // ------------------------------------------------------------------ chart helpers

  function prepare(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(50, canvas.clientWidth);
    const h = Math.max(50, canvas.clientHeight);
    const pw = Math.round(w * dpr);
    const ph = Math.round(h * dpr);
    if (canvas.width !== pw || canvas.height !== ph) {
      canvas.width = pw;
      canvas.height = ph;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = FONT;
    return { ctx, w, h };
  }

  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / mag;
    return (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  }

  function linearTicks(min, max, count) {
    const step = niceStep(max - min, count);
    const ticks = [];
    for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-6; v += step) ticks.push(v);
    const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    return { ticks, label: (v) => (Math.abs(v) < step / 1e6 ? 0 : v).toFixed(decimals) };
  }

  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]
    .map((s) => s * 1000);
  const pad2 = (n) => String(n).padStart(2, "0");

  function timeTicks(min, max, count) {
    const span = max - min;
    let step = TIME_STEPS.find((s) => span / s <= count);
    if (!step) step = Math.ceil(span / count / 86400000) * 86400000;
    const ticks = [];
    for (let v = Math.ceil(min / step) * step; v <= max; v += step) ticks.push(v);
    const label = (v) => {
      const d = new Date(v);
      const hm = pad2(d.getUTCHours()) + ":" + pad2(d.getUTCMinutes());
      const day = pad2(d.getUTCMonth() + 1) + "-" + pad2(d.getUTCDate());
      if (step >= 86400000) return day;
      if (span > 86400000) return day + " " + hm;
      return step < 60000 ? hm + ":" + pad2(d.getUTCSeconds()) : hm;
    };
    return { ticks, label };
  }

  function formatUtc(ms) {
    const d = new Date(ms);
    return (
      d.getUTCFullYear() + "-" + pad2(d.getUTCMonth() + 1) + "-" + pad2(d.getUTCDate()) + " " +
      pad2(d.getUTCHours()) + ":" + pad2(d.getUTCMinutes()) + ":" + pad2(d.getUTCSeconds())
    );
  }

  function paddedRange(values, minSpan, padFraction) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of values) {
      if (v == null || !Number.isFinite(v)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (!Number.isFinite(lo)) return [0, 1];
    if (hi - lo < minSpan) {
      const mid = (hi + lo) / 2;
      lo = mid - minSpan / 2;
      hi = mid + minSpan / 2;
    }
    const pad = (hi - lo) * padFraction;
    return [lo - pad, hi + pad];
  }

  // A plot area with scales; `margin` leaves room for the axis labels.
  function plotArea(w, h, margin, xDomain, yDomain) {
    const area = { left: margin.left, top: margin.top, right: w - margin.right, bottom: h - margin.bottom };
    area.width = area.right - area.left;
    area.height = area.bottom - area.top;
    const [x0, x1] = xDomain;
    const [y0, y1] = yDomain;
    area.x = (v) => area.left + ((v - x0) / (x1 - x0 || 1)) * area.width;
    area.y = (v) => area.bottom - ((v - y0) / (y1 - y0 || 1)) * area.height;
    return area;
  }

  function drawFrame(ctx, area, xTicks, yTicks, xTitle, yTitle) {
    ctx.save();
    ctx.strokeStyle = COLORS.grid;
    ctx.lineWidth = 1;
    ctx.fillStyle = COLORS.muted;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of yTicks.ticks) {
      const y = Math.round(area.y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(area.left, y);
      ctx.lineTo(area.right, y);
      ctx.stroke();
      ctx.fillText(yTicks.label(v), area.left - 5, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    let lastRight = area.left - 14; // keep clear of the y axis' lowest label
    for (const v of xTicks.ticks) {
      const x = Math.round(area.x(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, area.top);
      ctx.lineTo(x, area.bottom);
      ctx.stroke();
      const text = xTicks.label(v);
      const half = ctx.measureText(text).width / 2;
      if (x - half > lastRight + 6 && x + half <= area.right + 20) {
        ctx.fillText(text, x, area.bottom + 4);
        lastRight = x + half;
      }
    }
    ctx.strokeStyle = COLORS.axis;
    ctx.strokeRect(area.left + 0.5, area.top + 0.5, area.width, area.height);
    ctx.fillStyle = COLORS.ink;
    ctx.fillText(xTitle, area.left + area.width / 2, area.bottom + 19);
    verticalText(ctx, yTitle, 11, area.top + area.height / 2);
    ctx.restore();
  }

  function verticalText(ctx, text, x, y) {
    ctx.save();
    ctx.translate(x, y);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillStyle = COLORS.ink;
    ctx.fillText(text, 0, 0);
    ctx.restore();
  }

  function drawMessage(ctx, w, h, text) {
    ctx.save();
    ctx.fillStyle = COLORS.muted;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(text, w / 2, h / 2);
    ctx.restore();
  }

  function marker(ctx, verdict, x, y) {
    ctx.fillStyle = COLORS[verdict] || COLORS.ink;
    ctx.beginPath();
    if (verdict === "FAIL") {
      ctx.rect(x - 3, y - 3, 6, 6);
    } else if (verdict === "UNCERTAIN") {
      ctx.moveTo(x, y - 4);
      ctx.lineTo(x + 4, y + 3);
      ctx.lineTo(x - 4, y + 3);
      ctx.closePath();
    } else if (verdict === "UNDEFINED") {
      // no limit at all: a ring, nothing was decided
      ctx.strokeStyle = COLORS.UNDEFINED;
      ctx.lineWidth = 1.2;
      ctx.arc(x, y, 3, 0, 2 * Math.PI);
      ctx.stroke();
      return;
    } else {
      ctx.arc(x, y, 2.6, 0, 2 * Math.PI);
    }
    ctx.fill();
  }

  function setPoints(canvas, n) {
    canvas.dataset.points = String(n);
  }

  // The time range a chart shows (epoch ms) and how many line pieces it drew, for tests and tools.
  function setRange(canvas, domain, segments) {
    canvas.dataset.xMin = String(Math.round(domain[0]));
    canvas.dataset.xMax = String(Math.round(domain[1]));
    canvas.dataset.segments = String(segments);
  }

  // ------------------------------------------------------------------ chart 1: thermal correlation

  function regressionSlope(points, field) {
    let n = 0;
    let sx = 0;
    let sy = 0;
    let sxx = 0;
    let sxy = 0;
    let syy = 0;
    for (const p of points) {
      const x = p.part_temp_c;
      const y = p[field] * 1000; // µm
      if (x == null || !Number.isFinite(y)) continue;
      n++;
      sx += x;
      sy += y;
      sxx += x * x;
      sxy += x * y;
      syy += y * y;
    }
    const vx = sxx - (sx * sx) / n;
    const vy = syy - (sy * sy) / n;
    if (n < 5 || vx <= 0) return null;
    const cov = sxy - (sx * sy) / n;
    return { slope: cov / vx, r: vy > 0 ? cov / Math.sqrt(vx * vy) : 0, n };
  }

  // The part's expansion coefficient as the gateway applied it: measured / compensated − 1 =
  // α (T − 20) for the exact ISO 1 form without a scale term; the median over the records.
  function estimateAlpha(records) {
    const values = [];
    for (const p of records) {
      const dt = p.part_temp_c - 20;
      if (Math.abs(dt) < 0.5 || !p.compensated_mm) continue;
      values.push((p.measured_mm / p.compensated_mm - 1) / dt);
    }
    if (values.length < 3) return null;
    values.sort((a, b) => a - b);
    const median = values[values.length >> 1];
    return median > 1e-8 && median < 1e-4 ? median : null;
  }

  function drawThermal() {
    const canvas = $("chart-thermal");
    const { ctx, w, h } = prepare(canvas);
    const points = windowPoints();
    const xDomain = measurementDomain();
    const note = $("thermal-slope");
    if (!points.length) {
      drawMessage(ctx, w, h, state.machine ? "No measurements of this feature in the window." : "Waiting for measurements…");
      setPoints(canvas, 0);
      setRange(canvas, xDomain, 0);
      note.textContent = "Sensitivity to part temperature: waiting for data.";
      return;
    }
    const lengths = [];
    const temps = [];
    for (const p of points) {
      lengths.push(p.measured_mm, p.compensated_mm);
      temps.push(p.part_temp_c);
    }
    const tol = state.tolerances[state.feature];
    const latestNominal = points[points.length - 1].nominal_mm;
    const nominal = latestNominal != null ? latestNominal : tol ? tol.nominal_mm : null;
    if (nominal != null) lengths.push(nominal);
    // When the expansion coefficient can be read from the records, the right axis is scaled so
    // that 1 K spans the expansion of the nominal length (L·α): the measured points then ride on
    // the temperature curve while the compensated ones stay on the nominal line.
    const alpha = nominal != null ? estimateAlpha(points) : null;
    const mmPerK = alpha != null ? nominal * alpha : null;
    if (mmPerK != null) for (const t of temps) lengths.push(nominal + mmPerK * (t - 20));
    const yDomain = paddedRange(lengths, 0.002, 0.08);
    const tDomain =
      mmPerK != null
        ? [20 + (yDomain[0] - nominal) / mmPerK, 20 + (yDomain[1] - nominal) / mmPerK]
        : paddedRange(temps, 1, 0.08);
    const area = plotArea(w, h, { left: 78, right: 58, top: 8, bottom: 36 }, xDomain, yDomain);
    const yT = (v) => area.bottom - ((v - tDomain[0]) / (tDomain[1] - tDomain[0])) * area.height;
    const yTicks = linearTicks(yDomain[0], yDomain[1], Math.max(3, Math.floor(area.height / 40)));
    const xTicks = timeTicks(xDomain[0], xDomain[1], Math.max(3, Math.floor(area.width / 90)));
    drawFrame(ctx, area, xTicks, yTicks, "measurement time (UTC)", "length (mm)");

    // right axis: part temperature
    const tTicks = linearTicks(tDomain[0], tDomain[1], Math.max(3, Math.floor(area.height / 40)));
    ctx.save();
    ctx.fillStyle = COLORS.temp;
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    for (const v of tTicks.ticks) ctx.fillText(tTicks.label(v), area.right + 5, yT(v));
    ctx.restore();
    ctx.save();
    ctx.translate(w - 10, area.top + area.height / 2);
    ctx.rotate(Math.PI / 2);
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillStyle = COLORS.temp;
    ctx.fillText("part temperature (°C)", 0, 0);
    ctx.restore();

    ctx.save();
    ctx.beginPath();
    ctx.rect(area.left, area.top, area.width, area.height);
    ctx.clip();
    if (nominal != null) {
      ctx.strokeStyle = COLORS.nominal;
      ctx.setLineDash([5, 4]);
      ctx.beginPath();
      ctx.moveTo(area.left, area.y(nominal));
      ctx.lineTo(area.right, area.y(nominal));
      ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.strokeStyle = COLORS.temp;
    ctx.globalAlpha = 0.85;
    ctx.lineWidth = 1.3;
    const runs = runsOf(points, MIN_GAP_MS);
    for (const run of runs) {
      ctx.beginPath(); // one path per run: no line across a gap
      run.forEach((p, i) => {
        const x = area.x(p.t);
        const y = yT(p.part_temp_c);
        if (i === 0) ctx.moveTo(x, y);
        else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    for (const [field, color] of [
      ["measured_mm", COLORS.measured],
      ["compensated_mm", COLORS.compensated],
    ]) {
      ctx.fillStyle = color;
      for (const p of points) {
        ctx.beginPath();
        ctx.arc(area.x(p.t), area.y(p[field]), 2.3, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
    ctx.restore();
    setPoints(canvas, points.length);
    setRange(canvas, xDomain, runs.length);

    const measured = regressionSlope(points, "measured_mm");
    const compensated = regressionSlope(points, "compensated_mm");
    if (measured && compensated) {
      note.textContent = "";
      const signed = (v) => {
        const text = Math.abs(v).toFixed(2);
        return (Number(text) === 0 ? "" : v > 0 ? "+" : "−") + text;
      };
      note.append("Per kelvin of part temperature (" + measured.n + " parts): measured ");
      const m = document.createElement("strong");
      m.id = "slope-measured";
      m.textContent = signed(measured.slope) + " µm/K";
      note.append(m, " (r = " + signed(measured.r) + "), compensated ");
      const c = document.createElement("strong");
      c.id = "slope-compensated";
      c.textContent = signed(compensated.slope) + " µm/K";
      note.append(c, " (r = " + signed(compensated.r) + "): warm parts measure long, compensated stays flat.");
      if (mmPerK != null) {
        note.append(
          " Right axis: 1 K = " + (mmPerK * 1000).toFixed(2) + " µm of expansion (L·α, α ≈ " +
            (alpha * 1e6).toFixed(1) + "e-6/K)."
        );
      }
    } else {
      note.textContent = "Sensitivity to part temperature: needs at least 5 parts at different temperatures.";
    }
  }

  // ------------------------------------------------------------------ chart 2: deviation

  function drawDeviation() {
    const canvas = $("chart-deviation");
    const { ctx, w, h } = prepare(canvas);
    const points = windowPoints();
    const xDomain = measurementDomain();
    if (!points.length) {
      drawMessage(ctx, w, h, state.machine ? "No measurements of this feature in the window." : "Waiting for measurements…");
      setPoints(canvas, 0);
      setRange(canvas, xDomain, 0);
      return;
    }
    // limits relative to the nominal in µm (millidegrees for an angle); null: no limit on that side
    const lowerOf = (p) => (p.lower_tol_mm == null ? null : p.lower_tol_mm * 1000);
    const upperOf = (p) => (p.upper_tol_mm == null ? null : p.upper_tol_mm * 1000);
    let limit = 0;
    for (const p of points) {
      const sides = [lowerOf(p), upperOf(p)].filter((v) => v != null).map((v) => Math.abs(v) * 1.25);
      limit = Math.max(limit, ...sides, Math.abs(p.deviation_um) * 1.08);
    }
    limit = Math.max(limit, 1);
    const runs = runsOf(points, MIN_GAP_MS);
    const area = plotArea(w, h, { left: 78, right: 66, top: 8, bottom: 36 }, xDomain, [-limit, limit]);
    const yTicks = linearTicks(-limit, limit, Math.max(4, Math.floor(area.height / 36)));
    const xTicks = timeTicks(xDomain[0], xDomain[1], Math.max(3, Math.floor(area.width / 90)));
    const angle = points[points.length - 1].unit === "deg";
    drawFrame(ctx, area, xTicks, yTicks, "measurement time (UTC)", angle ? "deviation (m°)" : "deviation at 20 °C (µm)");

    ctx.save();
    ctx.beginPath();
    ctx.rect(area.left, area.top, area.width, area.height);
    ctx.clip();
    // acceptance zone [lower + U, upper − U]: a step band following each part's own limits and
    // uncertainty (a side without a limit is open: the band runs off the chart; none at all: no band)
    // each part's step reaches the next part of its run; the last of a run (before a gap) a few px
    const span = (run, i) => {
      const x0 = area.x(run[i].t);
      return [x0, i + 1 < run.length ? area.x(run[i + 1].t) : x0 + 4];
    };
    const edges = (level) => {
      const pieces = [];
      for (const part of runs) {
        let piece = [];
        part.forEach((p, i) => {
          const y = level(p);
          if (y == null) {
            if (piece.length) pieces.push(piece);
            piece = [];
            return;
          }
          const [x0, x1] = span(part, i);
          piece.push([x0, area.y(y)], [x1, area.y(y)]);
        });
        if (piece.length) pieces.push(piece);
      }
      return pieces;
    };
    const open = limit * 2; // beyond the chart
    // [low, high] of a part's acceptance zone, null without any limit; a zone emptied by a large
    // U collapses to the middle of the limits
    const acceptance = (p) => {
      const down = lowerOf(p);
      const up = upperOf(p);
      if (down == null && up == null) return null;
      const low = down == null ? -open : down + p.uncertainty_um;
      const high = up == null ? open : up - p.uncertainty_um;
      return low <= high ? [low, high] : [(down + up) / 2, (down + up) / 2];
    };
    ctx.fillStyle = COLORS.acceptance;
    for (const part of runs) {
      part.forEach((p, i) => {
        const zone = acceptance(p);
        if (zone == null) return;
        const [x0, x1] = span(part, i);
        ctx.fillRect(x0, area.y(zone[1]), x1 - x0, area.y(zone[0]) - area.y(zone[1]));
      });
    }
    const polyline = (pts, color, dash) => {
      ctx.strokeStyle = color;
      ctx.setLineDash(dash);
      ctx.lineWidth = 1.2;
      ctx.beginPath();
      pts.forEach(([x, y], i) => (i === 0 ? ctx.moveTo(x, y) : ctx.lineTo(x, y)));
      ctx.stroke();
      ctx.setLineDash([]);
    };
    for (const run of edges((p) => (upperOf(p) == null ? null : acceptance(p)[1])))
      polyline(run, COLORS.acceptanceEdge, []);
    for (const run of edges((p) => (lowerOf(p) == null ? null : acceptance(p)[0])))
      polyline(run, COLORS.acceptanceEdge, []);
    for (const run of edges(upperOf)) polyline(run, COLORS.tolerance, [6, 4]);
    for (const run of edges(lowerOf)) polyline(run, COLORS.tolerance, [6, 4]);
    ctx.strokeStyle = COLORS.axis;
    ctx.beginPath();
    ctx.moveTo(area.left, area.y(0));
    ctx.lineTo(area.right, area.y(0));
    ctx.stroke();
    for (const verdict of VERDICTS) {
      for (const p of points) if (p.verdict === verdict) marker(ctx, verdict, area.x(p.t), area.y(p.deviation_um));
    }
    ctx.restore();

    // labels of the latest limits on the right
    const last = points[points.length - 1];
    ctx.save();
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillStyle = COLORS.tolerance;
    const up = upperOf(last);
    const down = lowerOf(last);
    if (up != null) ctx.fillText("UL " + signed(up), area.right + 5, area.y(up));
    if (down != null) ctx.fillText("LL " + signed(down), area.right + 5, area.y(down));
    ctx.fillStyle = COLORS.PASS;
    if (up != null && Math.abs(area.y(acceptance(last)[1]) - area.y(up)) > 12) {
      ctx.fillText("UL−U", area.right + 5, area.y(acceptance(last)[1]));
    }
    ctx.restore();
    setPoints(canvas, points.length);
    setRange(canvas, xDomain, runs.length);
  }

  // ------------------------------------------------------------------ chart 3: buffer depth

  function stateColor(value) {
    if (value === "connected") return COLORS.connected;
    if (value === "buffering" || value === "starting") return COLORS.buffering;
    if (value === "disconnected" || value === "refused" || value === "failed" || value === "closed") return COLORS.down;
    return COLORS.unknown;
  }

  function sinkColor(name) {
    const names = Array.from(state.bufferSinks).sort();
    return SINK_COLORS[Math.max(0, names.indexOf(name)) % SINK_COLORS.length];
  }

  function drawBufferLegend(names, total) {
    const legend = $("buffer-legend");
    const signature = names.join(",") + "|" + total;
    if (legend.dataset.signature === signature) return;
    legend.dataset.signature = signature;
    legend.textContent = "";
    const item = (className, color, text) => {
      const li = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch " + className;
      swatch.style.background = color;
      li.append(swatch, text);
      legend.append(li);
    };
    for (const name of names) item("line", sinkColor(name), name);
    if (total) item("line total", COLORS.nominal, "all sinks (history)");
    item("band", COLORS.connected, "up");
    item("band", COLORS.buffering, "buffering");
    item("band", COLORS.down, "down");
  }

  // A step line through (t, value) samples, one path per run (no line across a gap).
  function stepLine(ctx, area, runs, value, color, dash) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.6;
    ctx.setLineDash(dash);
    for (const run of runs) {
      ctx.beginPath();
      run.forEach((p, i) => {
        const x = Math.max(area.left, area.x(p.t));
        const x1 = i + 1 < run.length ? area.x(run[i + 1].t) : Math.min(area.right, x + 4);
        if (i === 0) ctx.moveTo(x, area.y(value(p)));
        else ctx.lineTo(x, area.y(value(p)));
        ctx.lineTo(Math.max(x, x1), area.y(value(p)));
      });
      ctx.stroke();
    }
    ctx.setLineDash([]);
  }

  // The stream reports health only when it changes: while it is live, the last sample still holds
  // (a second at a time, so that a real pause, the stream down, stays a gap).
  function carryBufferForward() {
    const last = state.buffer[state.buffer.length - 1];
    const now = serverNow();
    if (last && $("stream-state").dataset.state === "live" && now - last.t >= 1000) {
      addBufferSample(now, last.depth, last.mes, last.sinks);
    }
  }

  function drawBuffer() {
    carryBufferForward();
    const canvas = $("chart-buffer");
    const { ctx, w, h } = prepare(canvas);
    const domain = wallDomain();
    const [start, now] = domain;
    const samples = state.buffer;
    let first = samples.findIndex((p) => p.t >= start);
    if (first === -1) first = samples.length;
    if (first > 0) first -= 1; // the sample in force at the window's start
    const shown = samples.slice(first);
    if (shown.length) shown.push({ ...shown[shown.length - 1], t: now }); // in force until now
    const liveFrom = shown.length ? shown[0].t : Infinity;
    const total = state.healthHist.points.filter((p) => p.t >= start && p.t < liveFrom);
    const names = Array.from(state.bufferSinks).sort();
    let maxDepth = 10;
    for (const p of shown) for (const name of names) maxDepth = Math.max(maxDepth, (p.sinks[name] || {}).depth || 0);
    for (const p of total) maxDepth = Math.max(maxDepth, p.depth);
    maxDepth *= 1.15;
    // one state strip per sink above the plot, so nothing covers the axis labels below it
    const stripTop = 2;
    const stripH = 8;
    const stripGap = 5;
    const top = stripTop + names.length * (stripH + stripGap) + 4;
    const area = plotArea(w, h, { left: 62, right: 12, top, bottom: 36 }, domain, [0, maxDepth]);
    const yTicks = linearTicks(0, maxDepth, 3);
    yTicks.label = (v) => String(Math.round(v));
    const xTicks = timeTicks(start, now, Math.max(3, Math.floor(area.width / 90)));
    drawFrame(ctx, area, xTicks, yTicks, "wall time (UTC)", "records");
    ctx.save();
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    names.forEach((name, row) => {
      const y = stripTop + row * (stripH + stripGap);
      ctx.fillStyle = COLORS.muted;
      ctx.fillText(name, area.left - 5, y + stripH / 2);
      shown.forEach((p, i) => {
        if (i + 1 >= shown.length) return;
        const sink = p.sinks[name];
        const x0 = Math.max(area.left, area.x(p.t));
        const x1 = area.x(shown[i + 1].t);
        if (x1 <= x0) return;
        ctx.fillStyle = stateColor(sink ? sink.state : null);
        ctx.fillRect(x0, y, Math.max(1, x1 - x0), stripH);
      });
    });
    ctx.beginPath();
    ctx.rect(area.left, area.top, area.width, area.height);
    ctx.clip();
    let segments = 0;
    if (total.length) {
      const runs = runsOf(total, MIN_GAP_MS);
      stepLine(ctx, area, runs, (p) => p.depth, COLORS.nominal, [4, 3]);
      segments += runs.length;
    }
    const liveRuns = runsOf(shown, MIN_GAP_MS);
    for (const name of names) {
      for (const run of liveRuns) {
        const pieces = [];
        let piece = [];
        for (const p of run) {
          if (p.sinks[name]) piece.push(p);
          else if (piece.length) {
            pieces.push(piece);
            piece = [];
          }
        }
        if (piece.length) pieces.push(piece);
        stepLine(ctx, area, pieces, (p) => p.sinks[name].depth, sinkColor(name), []);
        segments += pieces.length;
      }
    }
    ctx.restore();
    if (!names.length && !total.length) drawMessage(ctx, w, h, "No sink with a buffer (MES, historian) configured.");
    drawBufferLegend(names, total.length > 0);
    canvas.dataset.series = names.join(",");
    setPoints(canvas, Math.max(0, shown.length - 1) + total.length);
    setRange(canvas, domain, segments);
  }

  // ------------------------------------------------------------------ header, selectors, tables

  function setBadge(id, value) {
    const el = $(id);
    const text = value == null ? "off" : value;
    if (el.textContent !== text) el.textContent = text;
    el.dataset.state = text;
  }

  function setNumber(id, value) {
    const el = $(id);
    const text = value == null ? "–" : String(value);
    if (el.textContent !== text) el.textContent = text;
  }

  function signed(value) {
    return (value > 0 ? "+" : value < 0 ? "−" : "") + Math.abs(value).toFixed(1);
  }

  // "limits −10.0 / +10.0 µm" of a record (m° for an angle; "none" for a side without a limit)
  function limitsText(p) {
    const side = (v) => (v == null ? "none" : signed(v * 1000));
    return "limits " + side(p.lower_tol_mm) + " / " + side(p.upper_tol_mm) + (p.unit === "deg" ? " m°" : " µm");
  }

  function drawHeader() {
    const health = state.health;
    if (!health) return;
    setBadge("mes-state", sinkState(health, "mes"));
    setBadge("historian-state", sinkState(health, "historian"));
    setNumber("buffer-depth", health.buffer_depth);
    setNumber("files-processed", health.files_processed);
    setNumber("rows-rejected", health.rows_rejected);
    const points = windowPoints();
    const latest = $("latest-measurement");
    if (points.length) {
      const last = points[points.length - 1];
      const unit = last.unit === "deg" ? " (angle, °)" : "";
      const cut = state.hist.truncated ? " (the newest " + MAX_HISTORY + " from the history)" : "";
      latest.textContent =
        "latest " + last.part_id + unit + " at " + formatUtc(last.t) + " UTC · " + limitsText(last) + " · " +
        last.verdict + " · " + points.length + " parts shown" + cut;
    } else {
      latest.textContent = "";
    }
  }

  function fillSelect(select, values, current) {
    const have = Array.from(select.options).map((o) => o.value);
    if (have.length !== values.length || have.some((v, i) => v !== values[i])) {
      select.textContent = "";
      for (const v of values) {
        const option = document.createElement("option");
        option.value = v;
        option.textContent = v;
        select.append(option);
      }
    }
    select.disabled = values.length === 0;
    if (!values.length) {
      const option = document.createElement("option");
      option.value = "";
      option.textContent = "no data yet";
      select.append(option);
      return "";
    }
    const chosen = values.includes(current) ? current : values[0];
    select.value = chosen;
    return chosen;
  }

  function drawSelectors() {
    const machines = Array.from(state.machines.keys()).sort();
    const machine = fillSelect($("machine-select"), machines, state.machine);
    const features = machine ? Array.from(state.machines.get(machine)).sort() : [];
    const feature = fillSelect($("feature-select"), features, state.feature);
    if (machine !== state.machine || feature !== state.feature) {
      state.machine = machine;
      state.feature = feature;
      state.dirty.add("thermal");
      state.dirty.add("deviation");
      state.dirty.add("header");
    }
    loadHistory();
  }

  function drawVerdicts() {
    const totals = { PASS: 0, FAIL: 0, UNCERTAIN: 0, UNDEFINED: 0 };
    const body = $("verdict-body");
    body.textContent = "";
    const machines = Object.keys(state.counts).sort();
    for (const machine of machines) {
      const counts = state.counts[machine];
      let sum = 0;
      for (const v of VERDICTS) {
        totals[v] += counts[v] || 0;
        sum += counts[v] || 0;
      }
      const row = document.createElement("tr");
      row.dataset.machine = machine;
      const name = document.createElement("td");
      name.textContent = machine;
      const barCell = document.createElement("td");
      const bar = document.createElement("div");
      bar.className = "stack";
      bar.title = VERDICTS.map((v) => v + " " + (counts[v] || 0)).join(", ");
      for (const v of VERDICTS) {
        const part = document.createElement("span");
        part.className = v.toLowerCase();
        part.style.width = sum ? ((100 * (counts[v] || 0)) / sum).toFixed(2) + "%" : "0";
        bar.append(part);
      }
      barCell.append(bar);
      const total = document.createElement("td");
      total.className = "num";
      total.textContent = VERDICTS.map((v) => counts[v] || 0).join(" / ");
      row.append(name, barCell, total);
      body.append(row);
    }
    setNumber("count-pass", totals.PASS);
    setNumber("count-fail", totals.FAIL);
    setNumber("count-uncertain", totals.UNCERTAIN);
    setNumber("count-undefined", totals.UNDEFINED);
  }

  function drawRejects() {
    const body = $("rejects-body");
    body.textContent = "";
    if (!state.rejects.length) {
      const row = document.createElement("tr");
      row.className = "empty";
      const cell = document.createElement("td");
      cell.colSpan = 3;
      cell.textContent = "No rejected files.";
      row.append(cell);
      body.append(row);
      return;
    }
    for (const r of state.rejects) {
      const row = document.createElement("tr");
      row.dataset.file = r.file;
      const file = document.createElement("td");
      file.className = "file";
      const name = document.createElement("div");
      name.className = "name";
      name.textContent = r.file;
      const when = document.createElement("div");
      when.className = "when";
      when.textContent = formatUtc(r.t) + " UTC";
      file.append(name, when);
      const rows = document.createElement("td");
      rows.className = "num";
      rows.textContent = r.file_error ? "file" : String(r.rows_rejected);
      const reasons = document.createElement("td");
      const list = document.createElement("ul");
      if (r.file_error) {
        const li = document.createElement("li");
        li.className = "file-error";
        li.textContent = r.file_error;
        list.append(li);
      }
      for (const e of r.errors || []) {
        const li = document.createElement("li");
        li.textContent = "line " + e.line + (e.column ? ", " + e.column : "") + ": " + e.reason;
        list.append(li);
      }
      if (r.errors_more > 0) {
        const li = document.createElement("li");
        li.className = "more";
        li.textContent = "+" + r.errors_more + " more in " + r.file + ".errors.json";
        list.append(li);
      }
      reasons.append(list);
      row.append(file, rows, reasons);
      body.append(row);
    }
  }

  // ------------------------------------------------------------------ capability

  function fetchCapability() {
    fetch("/api/v1/capability", { cache: "no-store" })
      .then((response) => (response.ok ? response.json() : null))
      .then((doc) => {
        if (doc) {
          state.capability = doc;
          for (const machine of Object.keys(doc.machines || {})) {
            for (const feature of Object.keys(doc.machines[machine])) know(machine, feature);
          }
          state.dirty.add("capability");
        }
      })
      .catch(() => {}); // the gateway is stopping or restarting: read again at the next tick
  }

  function fixed(value, digits) {
    return value === null || value === undefined ? "–" : value.toFixed(digits);
  }

  function slopeText(slope) {
    if (!slope) return "no thermal slope (angle)";
    if (slope.um_per_k === null) return "slope: n " + slope.n + ", not estimable";
    const sign = (v) => (v >= 0 ? "+" : "−") + Math.abs(v).toFixed(2);
    return "slope " + sign(slope.um_per_k) + " µm/K [" + sign(slope.ci_low) + ", " + sign(slope.ci_high) + "]";
  }

  function drawCapability() {
    const doc = state.capability;
    if (!doc) return;
    $("capability-window").textContent = "Cpk raw → compensated · last " + doc.window + " values";
    const tiles = $("capability-tiles");
    tiles.textContent = "";
    const machines = Object.keys(doc.machines).sort();
    for (const machine of machines) {
      for (const feature of Object.keys(doc.machines[machine]).sort()) {
        const c = doc.machines[machine][feature];
        const tile = document.createElement("div");
        tile.className = "cap-tile" + (c.alarm ? " alarm" : "");
        tile.dataset.machine = machine;
        tile.dataset.feature = feature;
        tile.dataset.alarm = String(c.alarm);
        tile.title = "show " + machine + " " + feature + " in the charts";
        tile.addEventListener("click", () => choose(machine, feature));
        const name = document.createElement("div");
        name.className = "name";
        const machineName = document.createElement("span");
        machineName.className = "machine";
        machineName.textContent = machine + " ";
        name.append(machineName, document.createTextNode(feature));
        name.title = machine + " " + feature;
        const cpk = document.createElement("div");
        cpk.className = "cpk";
        const raw = document.createElement("span");
        raw.className = "raw";
        raw.textContent = fixed(c.raw.cpk, 2);
        raw.title = "Cpk of the raw deviations (measured − nominal)";
        const comp = document.createElement("span");
        comp.className = "compensated";
        comp.textContent = fixed(c.compensated.cpk, 2);
        comp.title = "Cpk of the deviations compensated to 20 °C";
        const n = document.createElement("span");
        n.className = "n muted";
        n.textContent = " n " + c.n;
        cpk.append("Cpk ", raw, " → ", comp, n);
        const slope = document.createElement("div");
        slope.className = "slope";
        slope.textContent = slopeText(c.thermal_slope);
        tile.append(name, cpk, slope);
        tiles.append(tile);
      }
    }
    if (!tiles.childElementCount) {
      const empty = document.createElement("p");
      empty.className = "muted empty";
      empty.textContent = "No characteristic yet.";
      tiles.append(empty);
    }
    const banner = $("quality-alarm");
    banner.textContent = "";
    banner.hidden = !doc.alarms.length;
    if (doc.alarms.length) {
      const head = document.createElement("strong");
      head.textContent = "Compensation health: the compensated deviation still trends with the part temperature";
      const list = document.createElement("ul");
      for (const a of doc.alarms) {
        const li = document.createElement("li");
        li.dataset.machine = a.machine_id;
        li.dataset.feature = a.feature;
        const slope = { um_per_k: a.slope_um_per_k, ci_low: a.ci_low, ci_high: a.ci_high, n: a.n };
        li.textContent =
          a.machine_id + " " + a.feature + ": " + slopeText(slope) +
          " (" + Math.round(100 * a.confidence) + " % CI, n " + a.n + ")" +
          " — check the material's CTE, the temperature sensor, the part catalogue";
        list.append(li);
      }
      banner.append(head, list);
    }
  }

  // ------------------------------------------------------------------ redraw loop

  function choose(machine, feature) {
    state.machine = machine;
    state.feature = feature;
    ["selectors", "thermal", "deviation", "header"].forEach((d) => state.dirty.add(d));
    redraw();
  }

  const DRAW = {
    window: drawWindow,
    selectors: drawSelectors,
    header: drawHeader,
    verdicts: drawVerdicts,
    rejects: drawRejects,
    capability: drawCapability,
    thermal: drawThermal,
    deviation: drawDeviation,
    buffer: drawBuffer,
  };

  function redraw() {
    if (Date.now() - state.lastBufferDraw >= 1000) state.dirty.add("buffer");
    if (Date.now() - state.lastSlide >= SLIDE_MS) {
      state.lastSlide = Date.now();
      ["thermal", "deviation", "window"].forEach((d) => state.dirty.add(d));
    }
    for (const name of Object.keys(DRAW)) {
      if (!state.dirty.has(name)) continue;
      state.dirty.delete(name);
      if (name === "buffer") state.lastBufferDraw = Date.now();
      DRAW[name]();
    }
  }

  function init() {
    $("machine-select").addEventListener("change", (event) => {
      state.machine = event.target.value;
      ["selectors", "thermal", "deviation", "header"].forEach((d) => state.dirty.add(d));
      redraw();
    });
    $("feature-select").addEventListener("change", (event) => {
      state.feature = event.target.value;
      ["selectors", "thermal", "deviation", "header"].forEach((d) => state.dirty.add(d));
      redraw();
    });
    for (const button of document.querySelectorAll("#window-control button")) {
      button.addEventListener("click", () => setWindow(button.dataset.window));
    }
    window.addEventListener("hashchange", () => setWindow(initialWindow()));
    window.addEventListener("resize", () => ["thermal", "deviation", "buffer"].forEach((d) => state.dirty.add(d)));
    connect();
    fetchCapability();
    redraw();
    window.setInterval(redraw, REDRAW_MS);
    window.setInterval(fetchCapability, CAPABILITY_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
