// Small hand-written SVG charts for the dashboard: line, stacked bars, histogram, share bar.
// No dependency and no network: everything is drawn from the data given, text set with textContent.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2", "#dc2626", "#65a30d", "#db2777",
                   "#475569", "#ca8a04", "#7c3aed", "#059669"];

  function svg(tag, attrs, parent) {
    const node = document.createElementNS(NS, tag);
    for (const k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }

  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
    if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
    if (a >= 10 || Number.isInteger(v)) return String(Math.round(v));
    return v.toFixed(a >= 1 ? 1 : 2);
  }

  // A round tick step (1, 2, 2.5, 5 x 10^k) giving at most 4 intervals up to v.
  function niceStep(v) {
    if (!(v > 0)) return 0.25;
    const raw = v / 4, p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
    return 10 * p;
  }

  function timeLabel(t, span) {
    const d = new Date(t * 1000);
    const hm = String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
    if (span <= 86400) return hm;
    return (d.getMonth() + 1) + "/" + d.getDate() + " " + hm;
  }

  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }

  function empty(el, text) {
    clear(el);
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = text || "no data in this window";
    el.appendChild(p);
  }

  function legend(el, items) {
    const box = document.createElement("div");
    box.className = "legend";
    for (const it of items) {
      const span = document.createElement("span");
      const sw = document.createElement("i");
      sw.style.background = it.color;
      span.appendChild(sw);
      span.appendChild(document.createTextNode(it.name + (it.total !== undefined ? " " + fmt(it.total) : "")));
      box.appendChild(span);
    }
    el.appendChild(box);
  }

  // Frame: axes, horizontal grid, y labels; returns the scales.
  function frame(el, opts) {
    const width = Math.max(240, el.clientWidth || 480);
    const height = opts.height || 170;
    const m = {l: 44, r: 10, t: 8, b: 22};
    const root = svg("svg", {width: width, height: height, viewBox: `0 0 ${width} ${height}`, role: "img"});
    const W = width - m.l - m.r, H = height - m.t - m.b;
    const step = opts.ymax !== undefined ? opts.ymax / 4 : niceStep(opts.max);
    const n = opts.ymax !== undefined ? 4 : Math.max(1, Math.ceil(opts.max / step - 1e-9));
    const ymax = step * n;
    const g = svg("g", {transform: `translate(${m.l},${m.t})`}, root);
    for (let i = 0; i <= n; i++) {
      const y = H - (H * i) / n;
      svg("line", {x1: 0, x2: W, y1: y, y2: y, class: "gridline"}, g);
      const lab = svg("text", {x: -6, y: y + 4, "text-anchor": "end", class: "axis"}, g);
      lab.textContent = (opts.yfmt || fmt)(step * i);
    }
    return {root, g, W, H, ymax, m};
  }

  function xLabels(f, t, step, xOf) {
    if (!t.length) return;
    const span = t[t.length - 1] - t[0] + step;
    const n = Math.min(5, t.length);
    for (let i = 0; i < n; i++) {
      const idx = Math.round((i * (t.length - 1)) / Math.max(1, n - 1));
      const lab = svg("text", {x: xOf(idx), y: f.H + 16, "text-anchor": i === 0 ? "start" : i === n - 1 ? "end" : "middle",
                               class: "axis"}, f.g);
      lab.textContent = timeLabel(t[idx], span);
    }
  }

  // series: [{name, values (null = no data), color?, dash?}]
  function line(el, {t, step, series, yfmt, ymax, emptyText}) {
    const has = series.some((s) => s.values.some((v) => v !== null && v !== undefined));
    if (!has) return empty(el, emptyText);
    clear(el);
    const max = Math.max(...series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined)));
    const f = frame(el, {max, ymax, yfmt});
    const xOf = (i) => (t.length <= 1 ? f.W / 2 : (i * f.W) / (t.length - 1));
    const yOf = (v) => f.H - (Math.min(v, f.ymax) / f.ymax) * f.H;
    series.forEach((s, k) => {
      s.color = s.color || PALETTE[k % PALETTE.length];
      let d = "", pen = false;
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) { pen = false; return; }
        d += (pen ? "L" : "M") + xOf(i).toFixed(1) + " " + yOf(v).toFixed(1);
        pen = true;
      });
      const path = svg("path", {d, fill: "none", stroke: s.color, "stroke-width": 2, class: "series"}, f.g);
      if (s.dash) path.setAttribute("stroke-dasharray", "5 3");
      const points = s.values.filter((v) => v !== null && v !== undefined).length;
      // A lone point is a dot at the edge: draw sparse series with big dots so they are seen.
      const r = points <= 3 ? 4 : t.length > 60 ? 1.5 : 2.5;
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) return;
        const dot = svg("circle", {cx: xOf(i), cy: yOf(v), r, fill: s.color}, f.g);
        svg("title", {}, dot).textContent = `${s.name} ${timeLabel(t[i], 0)}: ${(yfmt || fmt)(v)}`;
      });
    });
    xLabels(f, t, step, xOf);
    el.appendChild(f.root);
    // The legend carries each series' latest value: the number an operator looks for first.
    legend(el, series.map((s) => {
      const last = [...s.values].reverse().find((v) => v !== null && v !== undefined);
      return {name: s.name + (last === undefined ? "" : " (latest " + (yfmt || fmt)(last) + ")"), color: s.color};
    }));
  }

  // Stacked bars over time. series: [{name, values, color?}]
  function bars(el, {t, step, series, yfmt, emptyText}) {
    const totals = t.map((_, i) => series.reduce((a, s) => a + (s.values[i] || 0), 0));
    if (!totals.some((v) => v > 0)) return empty(el, emptyText);
    clear(el);
    const f = frame(el, {max: Math.max(...totals), yfmt});
    const bw = f.W / t.length;
    const xOf = (i) => i * bw + bw / 2;
    const base = t.map(() => 0);
    series.forEach((s, k) => {
      s.color = s.color || PALETTE[k % PALETTE.length];
      s.values.forEach((v, i) => {
        if (!v) return;
        const h = (v / f.ymax) * f.H;
        const y = f.H - ((base[i] + v) / f.ymax) * f.H;
        const r = svg("rect", {x: i * bw + bw * 0.1, y, width: Math.max(1, bw * 0.8), height: Math.max(0.5, h), fill: s.color}, f.g);
        svg("title", {}, r).textContent = `${s.name} ${timeLabel(t[i], 0)}: ${(yfmt || fmt)(v)}`;
        base[i] += v;
      });
    });
    xLabels(f, t, step, xOf);
    el.appendChild(f.root);
    legend(el, series.map((s) => ({name: s.name, color: s.color, total: s.total})));
  }

  // Histogram over categories. labels: [...], values: [...]
  function hist(el, {labels, values, color, emptyText, height}) {
    if (!values.some((v) => v > 0)) return empty(el, emptyText);
    clear(el);
    const f = frame(el, {max: Math.max(...values), height: height || 140});
    const bw = f.W / values.length;
    const every = Math.ceil(values.length / 12);
    values.forEach((v, i) => {
      const h = (v / f.ymax) * f.H;
      const r = svg("rect", {x: i * bw + bw * 0.1, y: f.H - h, width: Math.max(1, bw * 0.8), height: Math.max(0, h),
                             fill: color || PALETTE[0]}, f.g);
      svg("title", {}, r).textContent = `${labels[i]}: ${fmt(v)}`;
      if (i % every === 0) {
        const lab = svg("text", {x: i * bw + bw / 2, y: f.H + 16, "text-anchor": "middle", class: "axis"}, f.g);
        lab.textContent = labels[i];
      }
    });
    el.appendChild(f.root);
  }

  // One horizontal 100% bar with a labelled segment per item.
  function share(el, {items, colors, emptyText}) {
    const total = items.reduce((a, it) => a + it.value, 0);
    if (!(total > 0)) return empty(el, emptyText);
    clear(el);
    const bar = document.createElement("div");
    bar.className = "bar";
    items.forEach((it, k) => {
      const color = (colors && colors[it.name]) || PALETTE[k % PALETTE.length];
      it.color = color;
      if (!it.value) return;
      const seg = document.createElement("span");
      seg.style.width = ((100 * it.value) / total).toFixed(2) + "%";
      seg.style.background = color;
      seg.title = `${it.name}: ${fmt(it.value)} (${((100 * it.value) / total).toFixed(1)}%)`;
      if (it.value / total > 0.08) seg.textContent = `${((100 * it.value) / total).toFixed(0)}%`;
      bar.appendChild(seg);
    });
    el.appendChild(bar);
    legend(el, items.map((it) => ({name: it.name, color: it.color, total: it.value})));
  }

  window.Charts = {line, bars, hist, share, fmt, empty, PALETTE};
})();
