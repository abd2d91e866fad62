// The operator's page: polls the HTTP API (with the key the page was opened with) and renders items, charts, a live failover, alerts and jobs.
"use strict";
(() => {
  const params = new URLSearchParams(location.search);
  const key = params.get("code");
  const refreshMs = Math.max(1000, Number(params.get("refresh")) || 5000);
  // The page is served at <prefix>/dashboard; the API is <prefix>/<route>.
  const apiBase = location.pathname.replace(/\/dashboard\/?$/, "");

  const state = { items: [], jobs: [], alerts: [], selected: params.get("item"), lastOk: null, charts: {}, followed: null, seenSteps: {} };

  async function api(path) {
    let res;
    try {
      res = await fetch(`${apiBase}/${path}`, { headers: key ? { "x-functions-key": key } : {}, cache: "no-store" });
    } catch (e) {
      throw new Error(`cannot reach the service (${e.message})`);
    }
    const text = await res.text();
    let body;
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch {
      throw new Error(`HTTP ${res.status} from ${path}: not JSON`);
    }
    if (!res.ok) {
      const e = body && body.error;
      throw new Error(`HTTP ${res.status} from ${path}: ${e ? `${e.code}: ${e.message}` : res.statusText}`);
    }
    return body;
  }

  // ---- small DOM helpers (text only: nothing from the API is ever parsed as HTML)
  const $ = (id) => document.getElementById(id);
  function el(tag, attrs, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") n.className = v;
      else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
      else n.setAttribute(k, v);
    }
    for (const c of children.flat()) if (c !== undefined && c !== null) n.append(c instanceof Node ? c : String(c));
    return n;
  }
  const badge = (text) => el("span", { class: `badge ${text}` }, text);
  const show = (id, visible) => $(id).classList.toggle("hidden", !visible);
  function fill(tableId, rows) {
    const body = $(tableId).querySelector("tbody");
    body.replaceChildren(...rows);
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    const h = Math.floor(seconds / 3600);
    return `${h} h ${Math.round((seconds - h * 3600) / 60)} min`;
  }
  const time = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }) : "-");
  const when = (iso) => {
    if (!iso) return "-";
    const d = new Date(iso);
    return d.toDateString() === new Date().toDateString() ? time(iso) : `${d.toLocaleDateString()} ${time(iso)}`;
  };
  const vmName = (itemId) => state.items.find((i) => i.id === itemId)?.vm.name ?? itemId.slice(0, 8);

  // ---- sections
  function renderItems() {
    $("items-count").textContent = `(${state.items.length})`;
    show("items-empty", state.items.length === 0);
    fill(
      "items",
      state.items.map((i) =>
        el(
          "tr",
          { class: `item${i.id === state.selected ? " selected" : ""}`, "data-item": i.id, onclick: () => select(i.id) },
          el("td", {}, el("strong", {}, i.vm.name)),
          el("td", {}, i.direction === "reverse" ? `${i.targetRegion} → ${i.vm.region}` : `${i.vm.region} → ${i.targetRegion}`),
          el("td", {}, i.direction ?? "forward"),
          el("td", {}, i.state),
          el("td", {}, badge(i.health.status)),
          el("td", { "data-rpo": i.rpoSeconds ?? "" }, duration(i.rpoSeconds)),
          el("td", {}, i.replicationGroup ?? "-"),
          el("td", {}, i.disks.length),
        ),
      ),
    );
  }

  function renderAlerts() {
    const open = state.alerts.filter((a) => !a.clearedAt).length;
    $("alerts-count").textContent = `(${open} open, ${state.alerts.length} in all)`;
    show("alerts-empty", state.alerts.length === 0);
    fill(
      "alerts",
      state.alerts
        .slice(0, 25)
        .map((a) =>
          el(
            "tr",
            { "data-alert": a.code, "data-open": a.clearedAt ? "false" : "true" },
            el("td", {}, badge(a.clearedAt ? "Cleared" : a.severity)),
            el("td", {}, a.vm ?? vmName(a.itemId)),
            el("td", {}, a.code),
            el("td", {}, a.message),
            el("td", {}, when(a.raisedAt)),
            el("td", {}, when(a.clearedAt)),
          ),
        ),
    );
  }

  function renderJobs() {
    show("jobs-empty", state.jobs.length === 0);
    fill(
      "jobs",
      state.jobs
        .slice(0, 20)
        .map((j) =>
          el(
            "tr",
            { "data-job": j.type, "data-state": j.state },
            el("td", {}, j.type + (j.details?.failoverType ? ` (${j.details.failoverType})` : "")),
            el("td", {}, j.itemIds.map(vmName).join(", ")),
            el("td", {}, badge(j.state)),
            el("td", {}, when(j.startedAt)),
            el("td", {}, duration(j.durationSeconds)),
            el("td", {}, j.error ? `${j.error.code}: ${j.error.message}` : ""),
          ),
        ),
    );
  }

  function select(itemId) {
    state.selected = itemId;
    const url = new URL(location.href);
    url.searchParams.set("item", itemId);
    history.replaceState(null, "", url);
    for (const c of Object.values(state.charts)) c.destroy();
    state.charts = {};
    renderItems();
    void renderDetail();
  }

  function chart(name, target, opts, data) {
    const width = Math.max(320, $(target).clientWidth || 480);
    if (state.charts[name]) {
      state.charts[name].setData(data);
      return;
    }
    state.charts[name] = new uPlot({ width, height: 220, ...opts }, data, $(target));
  }

  async function renderDetail() {
    const item = state.items.find((i) => i.id === state.selected);
    show("detail", Boolean(item));
    if (!item) return;
    $("detail-name").textContent = item.vm.name;
    $("detail-state").textContent = `${item.state} · ${item.health.status} · RPO ${duration(item.rpoSeconds)}`;
    $("detail-issues").replaceChildren(...item.health.issues.map((x) => el("div", { class: "issue" }, badge(x.severity), " ", x.code, ": ", x.message)));
    const [history, points] = await Promise.all([
      api(`replicated-items/${encodeURIComponent(item.id)}/history?hours=24`),
      api(`replicated-items/${encodeURIComponent(item.id)}/recovery-points`),
    ]);
    const samples = history.samples;
    show("rpo-empty", samples.length === 0);
    show("rpo-chart", samples.length > 0);
    if (samples.length > 0) {
      chart(
        "rpo",
        "rpo-chart",
        {
          series: [
            {},
            { label: "RPO s", stroke: "#0969da", width: 2 },
            { label: "lag s", stroke: "#9a6700", width: 1 },
            { label: "backlog MiB", stroke: "#8250df", width: 1, scale: "mib" },
          ],
          axes: [{}, { label: "seconds" }, { side: 1, scale: "mib", label: "MiB", grid: { show: false } }],
        },
        [
          samples.map((s) => Date.parse(s.time) / 1000),
          samples.map((s) => s.rpoSeconds),
          samples.map((s) => s.lagSeconds),
          samples.map((s) => s.backlogBytes / 1048576),
        ],
      );
    }
    $("points-count").textContent = `(${points.length})`;
    show("points-empty", points.length === 0);
    show("points-chart", points.length > 0);
    if (points.length > 0) {
      // One lane per kind: crash and app VM points, and group points.
      const lanes = { crash: 1, app: 2, group: 3 };
      const sorted = [...points].sort((a, b) => Date.parse(a.time) - Date.parse(b.time));
      const xs = sorted.map((p) => Date.parse(p.time) / 1000);
      const lane = (want) => sorted.map((p) => (p.scope === "group" ? (want === "group" ? 3 : null) : p.kind === want ? lanes[want] : null));
      const dot = (color) => ({ stroke: color, fill: color, paths: () => null, points: { show: true, size: 9, fill: color } });
      chart(
        "points",
        "points-chart",
        {
          scales: { y: { range: [0.5, 3.5] } },
          series: [{}, { label: "crash", ...dot("#0969da") }, { label: "app", ...dot("#1a7f37") }, { label: "group", ...dot("#8250df") }],
          axes: [{}, { values: (_u, ticks) => ticks.map((t) => ({ 1: "crash", 2: "app", 3: "group" })[t] ?? ""), splits: () => [1, 2, 3] }],
        },
        [xs, lane("crash"), lane("app"), lane("group")],
      );
    }
  }

  /** The operation to follow: a failover or re-protect running, else the newest of the last 15 minutes. */
  function operationToFollow() {
    const ops = state.jobs.filter((j) => j.type === "failover" || j.type === "reprotect");
    return ops.find((j) => j.state === "InProgress") ?? ops.find((j) => Date.now() - Date.parse(j.endedAt ?? j.startedAt) < 15 * 60_000) ?? null;
  }

  const mib = (n) => `${(n / 1048576).toFixed(1)} MiB`;

  function renderSteps(id, job, current, running) {
    const seen = (state.seenSteps[id] ??= []);
    if (current && seen[seen.length - 1] !== current) seen.push(current);
    // The job's own steps once it has ended (timed where they ran); the steps seen so far while it runs.
    const steps =
      job && job.state !== "InProgress" && job.steps.length
        ? job.steps.map((s) => ({ name: s.name, state: s.state, took: s.endedAt ? (Date.parse(s.endedAt) - Date.parse(s.startedAt)) / 1000 : null }))
        : seen.map((name, k) => ({ name, state: k === seen.length - 1 && running ? "InProgress" : "Succeeded", took: null }));
    $("failover-steps").replaceChildren(
      ...steps.map((s) => el("li", { class: s.state, "data-step": s.name }, `${s.name} `, badge(s.state), s.took !== null ? ` ${s.took.toFixed(1)} s` : "")),
    );
  }

  function setHead(cells) {
    $("failover-vms")
      .querySelector("thead")
      .replaceChildren(el("tr", {}, ...cells.map((c) => el("th", {}, c))));
  }

  async function renderFailover() {
    const job = operationToFollow();
    show("failover-section", Boolean(job));
    if (!job) return;
    const status = $("failover-status");
    if (job.type === "reprotect") {
      const r = await api(`replicated-items/${encodeURIComponent(job.itemIds[0])}/reprotect`);
      const c = r.customStatus || { step: r.runtimeStatus };
      const p = c.progress;
      $("failover-heading").textContent = "Re-protect";
      $("failover-title").textContent = `${vmName(job.itemIds[0])} ${r.from} → ${r.to} ${r.id.slice(0, 8)}`;
      status.textContent = r.runtimeStatus;
      status.className = `badge ${r.runtimeStatus}`;
      $("failover-step").textContent =
        `${c.step}${p ? ` — compared ${mib(p.doneBytes)} of ${mib(p.totalBytes)}, shipped ${mib(p.transferredBytes)}${p.etaSeconds !== null && p.etaSeconds !== undefined ? `, ETA ${duration(p.etaSeconds)}` : ""}` : ""}${r.error ? ` — ${r.error.code}: ${r.error.message}` : ""}`;
      setHead(["Disk", "Seeded from", "Compared", "Shipped", "ETA"]);
      fill(
        "failover-vms",
        (
          p?.disks ??
          Object.entries(r.seeds || {}).map(([diskId, sd]) => ({
            diskId,
            seed: sd.source ?? sd,
            doneBytes: 0,
            totalBytes: 0,
            transferredBytes: 0,
            etaSeconds: null,
          }))
        ).map((d) =>
          el(
            "tr",
            { "data-disk": d.diskId },
            el("td", {}, d.diskId),
            el("td", {}, typeof d.seed === "string" ? d.seed : JSON.stringify(d.seed)),
            el("td", {}, `${mib(d.doneBytes)} of ${mib(d.totalBytes)}`),
            el("td", {}, mib(d.transferredBytes)),
            el("td", {}, duration(d.etaSeconds)),
          ),
        ),
      );
      renderSteps(r.id, job, c.step, r.state === "InProgress");
      return;
    }
    const id = job.id;
    const st = await api(`failovers/${encodeURIComponent(id)}`);
    const c = st.customStatus || { step: st.runtimeStatus, vms: {} };
    $("failover-heading").textContent = "Failover";
    $("failover-title").textContent =
      `${st.input?.type ?? job.details?.failoverType ?? ""} ${id.slice(0, 8)} → ${st.input?.recoveryPoint ?? job.details?.recoveryPoint ?? ""}`;
    status.textContent = st.runtimeStatus;
    status.className = `badge ${st.runtimeStatus}`;
    $("failover-step").textContent =
      `${c.stage ? `group ${c.stage.index}/${c.stage.count}: ` : ""}${c.step}${c.error ? ` — ${c.error}` : ""}${st.output?.rtoSeconds !== undefined ? ` — RTO ${st.output.rtoSeconds.toFixed(1)} s` : ""}`;
    setHead(["VM", "Step", "Disks", "Recovery point", "IP", "Power"]);
    fill(
      "failover-vms",
      Object.entries(c.vms || {}).map(([itemId, v]) =>
        el(
          "tr",
          { "data-item": itemId },
          el("td", {}, v.vm),
          el("td", {}, v.step),
          el("td", {}, v.disks ?? "-"),
          el(
            "td",
            {},
            v.recoveryPoint ? `${v.recoveryPoint.id.slice(0, 8)} ${v.recoveryPoint.kind}/${v.recoveryPoint.scope} ${time(v.recoveryPoint.time)}` : "-",
          ),
          el("td", {}, v.privateIp ?? "-"),
          el("td", {}, v.powerState ?? "-"),
        ),
      ),
    );
    renderSteps(id, job, c.step, st.runtimeStatus === "Running" || st.runtimeStatus === "Pending");
  }

  // ---- the refresh loop: each part shown as soon as it answers; what fails is named, what was loaded stays
  async function refresh() {
    const problems = [];
    const [items, jobs, alerts] = await Promise.allSettled([api("replicated-items"), api("jobs?limit=50"), api("alerts?limit=50")]);
    if (items.status === "fulfilled") {
      state.items = items.value;
      if (!state.selected && state.items.length) state.selected = state.items[0].id;
      renderItems();
    } else problems.push(items.reason.message);
    if (jobs.status === "fulfilled") {
      state.jobs = jobs.value;
      renderJobs();
    } else problems.push(jobs.reason.message);
    if (alerts.status === "fulfilled") {
      state.alerts = alerts.value;
      renderAlerts();
    } else problems.push(alerts.reason.message);
    for (const part of [renderDetail, renderFailover]) {
      try {
        await part();
      } catch (e) {
        problems.push(e.message);
      }
    }
    if (problems.length === 0) state.lastOk = new Date();
    const banner = $("banner");
    banner.classList.toggle("hidden", problems.length === 0);
    banner.textContent = problems.length
      ? `The service did not answer: ${[...new Set(problems)].join("; ")}. ${state.lastOk ? `Showing what was loaded at ${time(state.lastOk.toISOString())}` : "Nothing loaded yet"}; retrying every ${refreshMs / 1000} s.`
      : "";
    $("refreshed").textContent =
      `${problems.length ? "last good refresh" : "refreshed"} ${state.lastOk ? time(state.lastOk.toISOString()) : "never"} · every ${refreshMs / 1000} s`;
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  }

  async function loop() {
    try {
      await refresh();
    } finally {
      setTimeout(loop, refreshMs);
    }
  }
  void loop();
})();
