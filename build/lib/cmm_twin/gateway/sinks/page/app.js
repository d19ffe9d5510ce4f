// cmm-twin live page. Hand-written, no library: an EventSource on /api/v1/events and small
// canvas charts. Every chart canvas carries data-points="N" (points drawn in its last redraw).
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
  const MAX_HISTORY = 3000; // points taken from /api/v1/history per machine and feature
  const BUFFER_WINDOW_MS = 10 * 60 * 1000;
  const REDRAW_MS = 500; // at most two redraws a second
  const HISTORY_FIELDS = "measured_mm,compensated_mm,part_temp_c";
  const CAPABILITY_MS = 3000; // how often /api/v1/capability is read

  const $ = (id) => document.getElementById(id);

  const state = {
    series: new Map(), // "machine\u0001feature" -> {live: [], hist: [], sorted: true}
    machines: new Map(), // machine -> Set of features
    counts: {},
    tolerances: {},
    health: null,
    rejects: [],
    capability: null, // the /api/v1/capability document
    buffer: [], // {t, depth, mes}
    historyAvailable: false,
    historyRequested: new Set(),
    clockOffset: 0, // server wall clock minus this browser's, ms
    machine: "",
    feature: "",
    dirty: new Set(["thermal", "deviation", "buffer", "verdicts", "rejects", "header", "selectors"]),
    lastBufferDraw: 0,
  };

  const key = (machine, feature) => machine + "\u0001" + feature;

  // ------------------------------------------------------------------ data

  function seriesOf(machine, feature) {
    const k = key(machine, feature);
    let s = state.series.get(k);
    if (!s) {
      s = { live: [], hist: [], sorted: true };
      state.series.set(k, s);
    }
    return s;
  }

  function addRecords(records) {
    for (const r of records) {
      let features = state.machines.get(r.machine_id);
      if (!features) {
        features = new Set();
        state.machines.set(r.machine_id, features);
        state.dirty.add("selectors");
      }
      if (!features.has(r.feature)) {
        features.add(r.feature);
        state.dirty.add("selectors");
      }
      const s = seriesOf(r.machine_id, r.feature);
      const last = s.live[s.live.length - 1];
      if (last && r.t < last.t) s.sorted = false;
      s.live.push(r);
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

  function addBufferSample(t, depth, mes) {
    state.buffer.push({ t, depth, mes });
    const cutoff = t - BUFFER_WINDOW_MS - 60000;
    let drop = 0;
    while (drop < state.buffer.length - 1 && state.buffer[drop + 1].t < cutoff) drop++;
    if (drop) state.buffer.splice(0, drop);
  }

  function sinkState(health, name) {
    const sink = health && health.sinks ? health.sinks[name] : undefined;
    return sink ? sink.state : null;
  }

  function onHealth(health) {
    state.health = health;
    state.clockOffset = health.t - Date.now();
    addBufferSample(health.t, health.buffer_depth, sinkState(health, "mes"));
    state.dirty.add("header");
    state.dirty.add("buffer");
  }

  function onSnapshot(snap) {
    if (!snap.resumed) {
      state.series.clear();
      state.machines.clear();
      state.historyRequested.clear();
      state.buffer = [];
      for (const sample of snap.buffer_history || []) addBufferSample(sample.t, sample.buffer_depth, sample.mes);
      state.dirty.add("selectors");
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
        // refused (e.g. too many page clients, or the gateway is stopping): try again later
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

  // ------------------------------------------------------------------ longer thermal history

  function parseIsoMs(text) {
    const m = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z$/.exec(text);
    if (!m) return Date.parse(text);
    const ms = m[7] ? Number((m[7] + "00").slice(0, 3)) : 0;
    return Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6], ms);
  }

  function maybeFetchHistory(machine) {
    if (!state.historyAvailable || !machine || state.historyRequested.has(machine)) return;
    const features = state.machines.get(machine);
    if (!features) return;
    let oldest = Infinity;
    let newest = -Infinity;
    for (const feature of features) {
      const s = liveOf(machine, feature);
      if (s && s.live.length) {
        oldest = Math.min(oldest, s.live[0].t);
        newest = Math.max(newest, s.live[s.live.length - 1].t);
      }
    }
    if (!Number.isFinite(oldest)) return;
    state.historyRequested.add(machine);
    // Measurement time, not wall time: the simulator's clock may run ahead of the wall.
    const spanS = Math.max(3600, (2 * (newest - oldest)) / 1000);
    const until = oldest / 1000;
    const params = new URLSearchParams({
      machine_id: machine,
      fields: HISTORY_FIELDS,
      since: (until - spanS).toFixed(3),
      until: until.toFixed(3),
      limit: String(MAX_HISTORY * Math.max(1, features.size)),
    });
    fetch("/api/v1/history?" + params.toString())
      .then((response) => (response.ok ? response.json() : null))
      .then((doc) => {
        if (!doc || !Array.isArray(doc.points)) return;
        const byFeature = new Map();
        for (const p of doc.points) {
          if (p.measured_mm == null || p.compensated_mm == null || p.part_temp_c == null) continue;
          const list = byFeature.get(p.feature) || [];
          list.push({
            t: parseIsoMs(p.time),
            measured_mm: p.measured_mm,
            compensated_mm: p.compensated_mm,
            part_temp_c: p.part_temp_c,
          });
          byFeature.set(p.feature, list);
        }
        for (const [feature, list] of byFeature) {
          const s = seriesOf(machine, feature);
          s.hist = list.slice(-MAX_HISTORY);
        }
        state.dirty.add("thermal");
      })
      .catch(() => {
        /* the live ring is enough */
      });
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

  function timeDomain(points) {
    let lo = points[0].t;
    let hi = points[points.length - 1].t;
    if (hi - lo < 2000) {
      lo -= 30000;
      hi += 30000;
    }
    const pad = (hi - lo) * 0.02;
    return [lo - pad, hi + pad];
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
    const s = liveOf(state.machine, state.feature);
    const points = s ? s.hist.concat(s.live) : [];
    const note = $("thermal-slope");
    if (!points.length) {
      drawMessage(ctx, w, h, state.machine ? "No measurements of this feature yet." : "Waiting for measurements…");
      setPoints(canvas, 0);
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
    const nominal = s.live.length ? s.live[s.live.length - 1].nominal_mm : tol ? tol.nominal_mm : null;
    if (nominal != null) lengths.push(nominal);
    // When the expansion coefficient can be read from the records, the right axis is scaled so
    // that 1 K spans the expansion of the nominal length (L·α): the measured points then ride on
    // the temperature curve while the compensated ones stay on the nominal line.
    const alpha = nominal != null ? estimateAlpha(s.live) : null;
    const mmPerK = alpha != null ? nominal * alpha : null;
    if (mmPerK != null) for (const t of temps) lengths.push(nominal + mmPerK * (t - 20));
    const yDomain = paddedRange(lengths, 0.002, 0.08);
    const tDomain =
      mmPerK != null
        ? [20 + (yDomain[0] - nominal) / mmPerK, 20 + (yDomain[1] - nominal) / mmPerK]
        : paddedRange(temps, 1, 0.08);
    const xDomain = timeDomain(points);
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
    ctx.beginPath();
    points.forEach((p, i) => {
      const x = area.x(p.t);
      const y = yT(p.part_temp_c);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
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
    const s = liveOf(state.machine, state.feature);
    const points = s ? s.live : [];
    if (!points.length) {
      drawMessage(ctx, w, h, state.machine ? "No measurements of this feature yet." : "Waiting for measurements…");
      setPoints(canvas, 0);
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
    const xDomain = timeDomain(points);
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
    const edges = (level) => {
      const runs = [];
      let run = [];
      points.forEach((p, i) => {
        const y = level(p);
        if (y == null) {
          if (run.length) runs.push(run);
          run = [];
          return;
        }
        const x0 = i === 0 ? area.left : area.x(p.t);
        const x1 = i === points.length - 1 ? area.right : area.x(points[i + 1].t);
        run.push([x0, area.y(y)], [x1, area.y(y)]);
      });
      if (run.length) runs.push(run);
      return runs;
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
    points.forEach((p, i) => {
      const zone = acceptance(p);
      if (zone == null) return;
      const x0 = i === 0 ? area.left : area.x(p.t);
      const x1 = i === points.length - 1 ? area.right : area.x(points[i + 1].t);
      ctx.fillRect(x0, area.y(zone[1]), x1 - x0, area.y(zone[0]) - area.y(zone[1]));
    });
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
  }

  // ------------------------------------------------------------------ chart 3: buffer depth

  function mesColor(mes) {
    if (mes === "connected") return COLORS.connected;
    if (mes === "buffering" || mes === "starting") return COLORS.buffering;
    if (mes === "disconnected" || mes === "refused" || mes === "failed" || mes === "closed") return COLORS.down;
    return COLORS.unknown;
  }

  function drawBuffer() {
    const canvas = $("chart-buffer");
    const { ctx, w, h } = prepare(canvas);
    const now = Date.now() + state.clockOffset;
    const start = now - BUFFER_WINDOW_MS;
    const samples = state.buffer;
    let first = samples.findIndex((p) => p.t >= start);
    if (first === -1) first = samples.length;
    if (first > 0) first -= 1; // the sample in force at the window's start
    const shown = samples.slice(first);
    let maxDepth = 10;
    for (const p of shown) maxDepth = Math.max(maxDepth, p.depth);
    maxDepth *= 1.15;
    const area = plotArea(w, h, { left: 62, right: 12, top: 6, bottom: 44 }, [start, now], [0, maxDepth]);
    const yTicks = linearTicks(0, maxDepth, 3);
    yTicks.label = (v) => String(Math.round(v));
    drawFrame(ctx, area, timeTicks(start, now, 5), yTicks, "wall time (UTC), last 10 minutes", "records");
    ctx.save();
    ctx.beginPath();
    ctx.rect(area.left, area.top, area.width, area.height + 9);
    ctx.clip();
    if (shown.length) {
      const xs = shown.map((p) => Math.max(area.left, area.x(p.t)));
      // MES connectivity strip under the plot
      const mesNames = shown.some((p) => p.mes != null);
      shown.forEach((p, i) => {
        const x1 = i + 1 < shown.length ? xs[i + 1] : area.right;
        ctx.fillStyle = mesNames ? mesColor(p.mes) : COLORS.unknown;
        ctx.fillRect(xs[i], area.bottom + 2, Math.max(1, x1 - xs[i]), 6);
      });
      // depth as a step line
      ctx.beginPath();
      ctx.moveTo(xs[0], area.bottom);
      shown.forEach((p, i) => {
        const x1 = i + 1 < shown.length ? xs[i + 1] : area.right;
        ctx.lineTo(xs[i], area.y(p.depth));
        ctx.lineTo(x1, area.y(p.depth));
      });
      ctx.lineTo(area.right, area.bottom);
      ctx.closePath();
      ctx.fillStyle = COLORS.depthFill;
      ctx.fill();
      ctx.strokeStyle = COLORS.depth;
      ctx.lineWidth = 1.6;
      ctx.beginPath();
      shown.forEach((p, i) => {
        const x1 = i + 1 < shown.length ? xs[i + 1] : area.right;
        if (i === 0) ctx.moveTo(xs[i], area.y(p.depth));
        else ctx.lineTo(xs[i], area.y(p.depth));
        ctx.lineTo(x1, area.y(p.depth));
      });
      ctx.stroke();
    }
    ctx.restore();
    if (!shown.some((p) => p.mes != null)) {
      ctx.save();
      ctx.fillStyle = COLORS.muted;
      ctx.textAlign = "right";
      ctx.textBaseline = "top";
      ctx.fillText("no MES configured", area.right - 4, area.top + 4);
      ctx.restore();
    }
    setPoints(canvas, shown.length);
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
    const s = liveOf(state.machine, state.feature);
    const latest = $("latest-measurement");
    if (s && s.live.length) {
      const last = s.live[s.live.length - 1];
      const unit = last.unit === "deg" ? " (angle, °)" : "";
      latest.textContent =
        "latest " + last.part_id + unit + " at " + formatUtc(last.t) + " UTC · " + limitsText(last) + " · " +
        last.verdict + " · " + s.live.length + " parts shown";
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
    maybeFetchHistory(machine);
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

  const DRAW = {
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
      ["thermal", "deviation", "header"].forEach((d) => state.dirty.add(d));
      redraw();
    });
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
