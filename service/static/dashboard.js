// The operators' dashboard: fetches /v1/admin/stats for the chosen app and window and draws every panel.
"use strict";
(function () {
  const boot = JSON.parse(document.getElementById("boot").textContent);
  const $ = (id) => document.getElementById(id);
  const C = window.Charts;
  const REFRESH_MS = {"15m": 5000, "1h": 10000, "6h": 30000, "24h": 60000, "7d": 120000};
  const PACING_COLORS = {slow_burn: "#9333ea", balanced: "#2563eb", fast: "#d97706"};
  const STATUS_WORD = {ok: "Loop healthy", warn: "Needs a look", bad: "Loop broken"};
  const params = new URLSearchParams(location.search);
  const state = {app: boot.app, window: params.get("window") || "1h", timer: null, last: null, inflight: null};

  function el(tag, cls, text) {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined && text !== null) n.textContent = text;
    return n;
  }
  function clear(n) { while (n.firstChild) n.removeChild(n.firstChild); }
  function pct(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%"; }
  function ago(ms) {
    if (!ms) return "–";
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return (s / 3600).toFixed(1) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  function tiles(id, items) {
    const box = $(id);
    clear(box);
    for (const [label, value, status, hint] of items) {
      const t = el("div", "tile" + (status ? " " + status : ""));
      t.appendChild(el("div", "value", value));
      t.appendChild(el("div", "label", label));
      if (hint) t.title = hint;
      box.appendChild(t);
    }
  }
  function perMinute(values, step) { return values.map((v) => (v === null ? null : (v * 60) / step)); }
  function named(group, step, opts) {
    return Object.keys(group).sort().map((k) => ({
      name: k, values: perMinute(group[k], step), total: group[k].reduce((a, b) => a + b, 0), ...(opts || {}),
    }));
  }
  function table(id, head, rows, rowClass) {
    const t = $(id);
    clear(t);
    const tr = el("tr");
    head.forEach((h) => tr.appendChild(el("th", null, h)));
    t.appendChild(tr);
    rows.forEach((r, i) => {
      const row = el("tr", rowClass ? rowClass(i) : null);
      r.forEach((c) => row.appendChild(c instanceof Node ? wrapTd(c) : el("td", null, c)));
      t.appendChild(row);
    });
  }
  function wrapTd(node) { const td = el("td"); td.appendChild(node); return td; }

  // --- headline ---------------------------------------------------------------------------------
  function headline(h, s) {
    const v = $("verdict");
    v.className = "verdict " + h.status;
    clear(v);
    v.appendChild(el("div", "word", STATUS_WORD[h.status] || h.status));
    v.appendChild(el("div", "why", h.reasons.length ? h.reasons.join(" · ") : "every check passes"));
    v.appendChild(el("div", "ctx", `${s.app} · last ${s.window}`));
    const box = $("checks");
    clear(box);
    for (const c of h.checks) {
      const d = el("div", "check " + c.status);
      d.appendChild(el("span", "dot"));
      d.appendChild(el("span", "name", c.name));
      d.appendChild(el("span", "value", c.value));
      d.appendChild(el("span", "detail", c.detail));
      box.appendChild(d);
    }
  }

  // A tile repeating a headline figure takes the headline's colour, so the two never disagree.
  function checkStatus(s, name) {
    const c = s.health.checks.find((x) => x.name === name);
    return c && c.status !== "ok" ? c.status : "";
  }

  // --- panels -----------------------------------------------------------------------------------
  function traffic(s) {
    const tr = s.traffic, step = s.step_seconds;
    $("traffic-sub").textContent = `${s.window} · ${s.resolution} buckets`;
    tiles("traffic-tiles", [
      ["accepted / min", C.fmt(tr.accepted_per_minute)],
      ["accepted", C.fmt(tr.totals.accepted)],
      ["duplicates", C.fmt(tr.totals.duplicate)],
      ["rejected", C.fmt(tr.totals.rejected), tr.rejected_share > 0.05 ? "warn" : ""],
    ]);
    C.bars($("traffic-types"), {t: s.t, step, series: named(tr.accepted, step), emptyText: "no event accepted in this window"});
    const bad = [{name: "duplicate", values: perMinute(tr.duplicate, step), total: tr.totals.duplicate, color: "#94a3b8"}]
      .concat(named(tr.rejected, step).map((x, k) => ({...x, name: "rejected: " + x.name,
                                                     color: ["#dc2626", "#f97316", "#b91c1c", "#fb7185", "#9f1239"][k % 5]})));
    C.bars($("traffic-bad"), {t: s.t, step, series: bad, emptyText: "no duplicate and no rejection in this window"});
  }

  function workers(s) {
    const w = s.workers;
    const age = w.oldest_unprocessed_age_s || 0;
    tiles("worker-tiles", [
      ["workers alive", `${w.alive} / ${w.known}`, w.alive ? "ok" : "bad"],
      ["applied / s (all apps)", C.fmt(w.throughput_eps)],
      ["waiting (lag)", C.fmt(w.lag) + (w.lag_capped ? "+" : ""), "", "entries not yet delivered to a worker"],
      ["in flight (pending)", C.fmt(w.pending), "", "delivered, not yet acknowledged"],
      ["oldest unprocessed", age < 90 ? age.toFixed(0) + " s" : (age / 60).toFixed(0) + " min", age < 30 ? "ok" : age < 300 ? "warn" : "bad"],
      ["dead letters", C.fmt(w.dead_letters), w.dead_letters ? "warn" : "ok"],
    ]);
    C.line($("worker-applied"), {t: s.t, step: s.step_seconds,
      series: [{name: "applied / min", values: perMinute(w.applied, s.step_seconds), color: "#16a34a"}],
      emptyText: "no event applied in this window"});
    table("worker-table", ["worker", "state", "last beat", "partitions", "applied", "events/s", "pending"],
      w.workers.map((x) => [x.id, x.alive ? "alive" : "no heartbeat", x.last_seen_s_ago + " s ago", x.partitions || "–",
                            C.fmt(x.applied_total), C.fmt(x.events_per_second), C.fmt(x.pending)]),
      (i) => (w.workers[i].alive ? "" : "dead"));
    if (!w.workers.length) table("worker-table", ["worker"], [["no worker has ever sent a heartbeat"]]);
    table("partition-table", ["partition", "length", "waiting", "pending", "oldest pending", "dead letters"],
      w.partitions.map((p) => [String(p.partition), C.fmt(p.length), C.fmt(p.lag), C.fmt(p.pending),
                               p.oldest_pending_age_s === null ? "–" : p.oldest_pending_age_s + " s", C.fmt(p.dead_letters)]));
  }

  function denoising(s) {
    const d = s.denoising;
    const total = Object.values(d.totals).reduce((a, b) => a + b, 0);
    const seen = total + s.workers.applied.reduce((a, b) => a + b, 0);
    tiles("denoise-tiles", [["discounted", C.fmt(total)],
                            ["of events workers saw", seen ? pct(total / seen) : "–", "", "discounted / (applied + discounted)"]]
      .concat(Object.entries(d.totals).sort((a, b) => b[1] - a[1]).slice(0, 4).map(([k, v]) => [k, C.fmt(v)])));
    C.bars($("denoise-chart"), {t: s.t, step: s.step_seconds, series: named(d.steps, s.step_seconds),
      emptyText: "nothing discounted in this window"});
  }

  function profiles(s) {
    const p = s.profiles;
    tiles("profile-tiles", [
      ["users", C.fmt(p.users)], ["active in window", C.fmt(p.active_users)],
      ["bots", C.fmt(p.bots) + (p.bot_share !== null ? " (" + pct(p.bot_share) + ")" : ""), p.bot_share > 0.1 ? "warn" : ""],
    ]);
    C.hist($("profile-length"), {labels: p.length.map((b) => b.bucket), values: p.length.map((b) => b.count),
      emptyText: "no profile yet"});
    const order = ["slow_burn", "balanced", "fast"];
    const pacing = Object.keys(p.pacing).sort((a, b) => (order.indexOf(a) + 99) % 99 - (order.indexOf(b) + 99) % 99)
      .map((k) => ({name: k, value: p.pacing[k]}));
    C.share($("profile-pacing"), {items: pacing, colors: PACING_COLORS, emptyText: "no pacing label yet"});
    C.hist($("profile-conf"), {labels: p.confidence.map((_, i) => (i / 10).toFixed(1)), values: p.confidence,
      color: "#0891b2", emptyText: "no profile yet"});
    const trust = Object.entries(p.trust).sort((a, b) => (a[0] === "normal" ? -1 : b[0] === "normal" ? 1 : a[0] < b[0] ? -1 : 1));
    const trustColors = {};
    trust.forEach(([k], i) => { trustColors[k] = k === "normal" ? "#16a34a" : k.includes("bot") ? "#dc2626" : ["#f97316", "#ca8a04"][i % 2]; });
    C.share($("profile-trust"), {items: trust.map(([k, v]) => ({name: k, value: v})), colors: trustColors,
      emptyText: "no trust label yet"});
  }

  function loop(s) {
    const l = s.loop, step = s.step_seconds, up = l.upstream, t = l.totals;
    tiles("loop-tiles", [
      ["repeat rate, conditioned", pct(t.rate_cond), "", `${t.repeats_cond} repeats of ${t.replies_cond} replies`],
      ["repeat rate, unconditioned", pct(t.rate_uncond), "", `${t.repeats_uncond} repeats of ${t.replies_uncond} replies`],
      ["difference", t.delta === null ? "–" : (t.delta * 100).toFixed(1) + " pts", t.delta === null ? "" : t.delta <= 0 ? "ok" : "warn"],
      ["IPS estimate", l.ips.estimate === null ? "–" : l.ips.estimate.toFixed(3)],
      ["M2-her p50 / p99", `${C.fmt(up.p50_ms)} / ${C.fmt(up.p99_ms)} ms`],
      ["M2-her errors", pct(up.error_rate), checkStatus(s, "M2-her errors")],
    ]);
    C.line($("loop-repeat"), {t: s.t, step, yfmt: (v) => (100 * v).toFixed(0) + "%", series: [
      {name: "conditioned", values: l.repeat_rate.cond, color: "#16a34a"},
      {name: "unconditioned", values: l.repeat_rate.uncond, color: "#64748b", dash: true}],
      emptyText: "no closed reply in this window"});
    C.line($("loop-latency"), {t: s.t, step, series: [
      {name: "p50", values: up.p50_series, color: "#2563eb"}, {name: "p99", values: up.p99_series, color: "#dc2626"}],
      emptyText: "no M2-her call in this window"});
    C.line($("loop-ips"), {t: s.t, step, series: [{name: "IPS estimate", values: l.ips.series, color: "#9333ea"}],
      emptyText: "no logged propensity in this window"});
    const errs = [{name: "calls", values: perMinute(up.requests.map((v, i) =>
      v - Object.values(up.errors).reduce((a, e) => a + e[i], 0)), step), color: "#93c5fd", total: up.totals.requests}]
      .concat(named(up.errors, step).map((x, k) => ({...x, name: "error " + x.name, color: ["#dc2626", "#f97316", "#b91c1c"][k % 3]})));
    C.bars($("loop-errors"), {t: s.t, step, series: errs, emptyText: "no M2-her call in this window"});
  }

  // --- data -------------------------------------------------------------------------------------
  async function api(url, opts) {
    const r = await fetch(url, {credentials: "same-origin", ...(opts || {})});
    if (r.status === 401) { location.href = "/dashboard"; throw new Error("session expired"); }
    const body = (r.headers.get("content-type") || "").includes("json") ? await r.json() : null;
    if (!r.ok) throw new Error((body && body.error && body.error.message) || `HTTP ${r.status}`);
    return body;
  }

  async function refresh() {
    if (!state.app) { $("verdict").textContent = "No app yet: create a key with POST /v1/admin/apps/{app}/keys"; return; }
    if (state.inflight) state.inflight.abort();
    const ctl = new AbortController();
    state.inflight = ctl;
    try {
      const s = await api(`/v1/admin/stats?app=${encodeURIComponent(state.app)}&window=${state.window}`, {signal: ctl.signal});
      if (s.app !== state.app) return; // a late answer for an app no longer shown
      state.last = s;
      draw(s);
      $("error").classList.add("hidden");
    } catch (e) {
      if (e.name === "AbortError") return;
      $("error").textContent = "Could not load the figures: " + e.message;
      $("error").classList.remove("hidden");
    } finally {
      if (state.inflight === ctl) state.inflight = null;
      schedule();
    }
  }

  function draw(s) {
    headline(s.health, s);
    traffic(s);
    workers(s);
    denoising(s);
    profiles(s);
    loop(s);
    document.body.dataset.loadedApp = s.app;
    document.body.dataset.loadedWindow = s.window;
    tick();
  }

  function tick() {
    if (state.last) $("updated").textContent = "updated " + ago(state.last.generated_at);
  }

  function schedule() {
    clearTimeout(state.timer);
    if ($("auto").checked) state.timer = setTimeout(refresh, REFRESH_MS[state.window] || 10000);
  }

  // --- users ------------------------------------------------------------------------------------
  async function search(ev) {
    if (ev) ev.preventDefault();
    const prefix = $("search").value.trim();
    const res = await api(`/dashboard/api/users?app=${encodeURIComponent(state.app)}&prefix=${encodeURIComponent(prefix)}`);
    const list = $("search-results");
    clear(list);
    $("search-note").textContent = res.users.length
      ? `${res.users.length} user${res.users.length > 1 ? "s" : ""}${res.mode === "recent" ? " (most recently active)" : ""}` +
        (res.complete ? "" : ` (stopped after examining ${res.examined} users: type a longer prefix)`)
      : "no user with this prefix";
    for (const u of res.users) {
      const li = el("li");
      const b = el("button", "link", u.user_id);
      b.type = "button";
      b.addEventListener("click", () => openUser(u.user_id));
      li.appendChild(b);
      li.appendChild(el("span", "muted", " updated " + ago(u.last_update_ms)));
      list.appendChild(li);
    }
  }

  // What the gateway applied to a reply, as an operator reads it: "fast, 400 chars, explored, p=0.33".
function appliedText(a) {
  const length = a.target_chars ? `${a.target_chars} chars` : "no length target";
  const p = a.propensity == null ? "?" : +Number(a.propensity).toPrecision(2);
  return `${a.pacing || "no pacing"}, ${length}${a.explored ? ", explored" : ""}, p=${p}`;
}

function outcomeText(o) {
    if (typeof o === "string") return o;
    if (!o || typeof o !== "object") return String(o);
    const parts = [o.type || o.kind || "event"];
    for (const [k, v] of Object.entries(o)) if (k !== "type" && k !== "kind" && k !== "t") parts.push(`${k}=${v}`);
    return parts.join(" ");
  }

  async function openUser(userId) {
    const u = await api(`/dashboard/api/users/${encodeURIComponent(userId)}?app=${encodeURIComponent(state.app)}`);
    $("user").classList.remove("hidden");
    $("user").dataset.userId = userId;
    $("user-title").textContent = `${u.user_id} · ${u.app}`;
    $("user-note").textContent = "";
    const p = u.profile || {};
    const rl = p.reply_length || {}, pc = p.pacing || {}, ev = p.evidence || {}, en = p.engagement || {};
    tiles("user-tiles", [
      ["target length", rl.target_chars ? `${rl.target_chars} chars` : "–", "",
       rl.interval ? `interval ${rl.interval[0]}–${rl.interval[1]}` : ""],
      ["length confidence", rl.confidence !== undefined ? rl.confidence.toFixed(2) : "–"],
      ["pacing", pc.label ? `${pc.label} (${(pc.confidence || 0).toFixed(2)})` : "–"],
      ["repeat rate", pct(en.repeat_rate)],
      ["trust", p.trust || "–", p.trust && p.trust !== "normal" ? "warn" : ""],
      ["replies / events used", `${C.fmt(ev.replies)} / ${C.fmt(ev.events_used)}`],
      ["profile version", p.version !== undefined ? String(p.version) : "no profile yet"],
      ["last update", ago(u.last_update_ms)],
    ]);
    table("user-recent", ["when", "reply", "chars", "applied", "what followed"],
      u.recent.map((r) => {
        const a = r.applied;
        const applied = a ? appliedText(a) : "not conditioned";
        const outs = (r.outcomes || []).map(outcomeText).join(", ") || "no signal";
        return [ago(r.t), r.reply_id || "–", C.fmt(r.chars), applied, outs];
      }));
    if (!u.recent.length) table("user-recent", ["when"], [["no reply recorded yet"]]);
  }

  async function exportUser() {
    const id = $("user").dataset.userId;
    const r = await fetch(`/dashboard/api/users/${encodeURIComponent(id)}/export?app=${encodeURIComponent(state.app)}`,
                          {credentials: "same-origin"});
    if (!r.ok) { $("user-note").textContent = "export failed: " + (await r.text()).slice(0, 200); return; }
    const blob = await r.blob();
    const a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = `${state.app}-${id}-export.json`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    $("user-note").textContent = "export downloaded";
  }

  async function deleteUser() {
    const id = $("user").dataset.userId;
    if (!confirm(`Delete everything Attune keeps about ${id} in ${state.app}? This cannot be undone.`)) return;
    const r = await fetch(`/dashboard/api/users/${encodeURIComponent(id)}/delete?app=${encodeURIComponent(state.app)}`,
                          {method: "POST", credentials: "same-origin", headers: {"X-CSRF-Token": boot.csrf}});
    const text = await r.text();
    $("user-note").textContent = r.ok ? "deleted" : "delete failed: " + text.slice(0, 200);
    if (r.ok) { $("user-tiles").textContent = ""; clear($("user-recent")); search(); }
  }

  // --- controls ---------------------------------------------------------------------------------
  function setup() {
    const sel = $("app");
    for (const a of boot.apps) {
      const o = el("option", null, a);
      o.value = a;
      if (a === state.app) o.selected = true;
      sel.appendChild(o);
    }
    // One page per app: choosing another app loads its own page, so nothing of the last one stays.
    sel.addEventListener("change", () => { location.href = `/dashboard?app=${encodeURIComponent(sel.value)}&window=${state.window}`; });
    if (!REFRESH_MS[state.window]) state.window = "1h";
    for (const b of document.querySelectorAll("#windows button")) {
      b.classList.toggle("on", b.dataset.w === state.window);
      b.addEventListener("click", () => {
        state.window = b.dataset.w;
        for (const x of document.querySelectorAll("#windows button")) x.classList.toggle("on", x === b);
        history.replaceState(null, "", `/dashboard?app=${encodeURIComponent(state.app)}&window=${state.window}`);
        refresh();
      });
    }
    $("auto").addEventListener("change", schedule);
    $("search-form").addEventListener("submit", (e) => search(e).catch((err) => { $("search-note").textContent = err.message; }));
    $("user-export").addEventListener("click", () => exportUser().catch((err) => { $("user-note").textContent = err.message; }));
    $("user-delete").addEventListener("click", () => deleteUser().catch((err) => { $("user-note").textContent = err.message; }));
    setInterval(tick, 1000);
    let resize = null;
    window.addEventListener("resize", () => { clearTimeout(resize); resize = setTimeout(() => state.last && draw(state.last), 200); });
    refresh();
  }

  setup();
})();
