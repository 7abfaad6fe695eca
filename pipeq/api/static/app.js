// pipeq web page: submit a run, follow it, get its results. Plain JS, no build step.
// Routes (the job id is in the URL, so a job page can be shared and reloaded):
//   #/            the run form
//   #/jobs        recent jobs
//   #/jobs/<id>   one job
"use strict";

const FINAL = new Set(["finished", "failed", "canceled", "stopped"]);
const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "pipeq-token";

// ---- API access: one place for the credentials ------------------------------------------
// Signed in through the identity provider, the browser holds an HttpOnly session cookie (the
// page never sees a token) and X-Requested-With marks the page's own requests (the server
// refuses a state-changing request on the cookie without it: another site cannot send it).
// With the admin token only, the token is asked for and kept in sessionStorage.
function authHeaders() {
  const t = sessionStorage.getItem(TOKEN_KEY);
  return t ? { Authorization: `Bearer ${t}`, "X-Requested-With": "pipeq" } : { "X-Requested-With": "pipeq" };
}
const signInConfig = fetch("/auth/config").then((r) => r.json()).catch(() => ({ web_sign_in: false }));
function signIn() {
  location.assign(`/auth/login?next=${encodeURIComponent("/" + (location.hash || "#/"))}`);
  return new Promise(() => {});  // the page is leaving
}
async function needCredentials(message) {
  if ((await signInConfig).web_sign_in && !sessionStorage.getItem(TOKEN_KEY)) return signIn();
  return askToken(message);
}

let tokenAsk = null;
function askToken(message) {
  // one dialog at a time, however many requests got a 401
  if (tokenAsk) return tokenAsk;
  tokenAsk = new Promise((resolve) => {
    const dlg = $("token-dialog");
    $("token-error").textContent = message || "";
    $("token-form").onsubmit = () => {
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      tokenAsk = null;
      resolve();
      loadMe().catch(() => {});  // who the token is
    };
    dlg.showModal();
    $("token").focus();
  });
  return tokenAsk;
}

async function api(path, options = {}) {
  for (let tries = 0; ; tries++) {
    const res = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
    if (res.status !== 401 || tries > 2) return res;
    await needCredentials(sessionStorage.getItem(TOKEN_KEY) ? "That token was not accepted." : "");
  }
}

// The API's reason: {"detail": "text"} or FastAPI's {"detail": [{"loc": [...], "msg": ...}]}
function reasons(body) {
  const d = body && body.detail;
  if (Array.isArray(d)) return d.map((e) => ({ field: fieldOf(e.loc || []), msg: e.msg }));
  return [{ field: null, msg: typeof d === "string" ? d : "The server refused the request." }];
}
function fieldOf(loc) {
  const name = String(loc[1] || "");
  if (name.startsWith("reads")) return "reads";
  if (["reference", "sample"].includes(name)) return name;
  return null;
}

// ---- small DOM helpers: touch the page only where something changed ----------------------
function setText(el, text) { if (el.textContent !== text) el.textContent = text; }
function show(el, visible) { if (el.hidden === visible) el.hidden = !visible; }
function fmtTime(iso) { return iso ? new Date(iso).toLocaleString() : ""; }
function fmtDuration(s) {
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h} h ${m} min` : m ? `${m} min ${sec} s` : `${sec} s`;
}

// ---- who is using the page (GET /me): the name in the header; admins see an owner column ----
let me = null;
const meReady = loadMe().catch(() => {});
async function loadMe() {
  // not api(): with the admin token only, the page asks for it at the first action, not on load
  const res = await fetch("/me", { headers: authHeaders() });
  if (res.status === 401 && (await signInConfig).web_sign_in && !sessionStorage.getItem(TOKEN_KEY)) return signIn();
  if (!res.ok) return;
  me = await res.json();
  setText($("whoami-name"), me.mode === "none" ? "" : `${me.name}${me.admin ? " (admin)" : ""}`);
  show($("whoami"), me.mode !== "none");
  const session = (await signInConfig).web_sign_in && !sessionStorage.getItem(TOKEN_KEY);
  show($("sign-out"), session);
  $("sign-out").onclick = signOut;
  show($("jobs-owner"), showOwners());
}
async function signOut() {
  const res = await fetch("/auth/logout", { method: "POST", headers: { "X-Requested-With": "pipeq" } });
  const body = res.ok ? await res.json() : {};
  location.assign(body.logout_url || "/");  // the identity provider ends its session too, and sends us back
}
// with no identity configured every job is anonymous's: no column to show
function showOwners() { return !!(me && me.admin && me.mode !== "none"); }

// ---- routing ------------------------------------------------------------------------------
let stopPolling = () => {};
function route() {
  stopPolling();
  const hash = location.hash || "#/";
  const job = hash.match(/^#\/jobs\/([0-9a-f]{32})$/);
  const page = job ? "job" : hash === "#/jobs" ? "jobs" : "run";
  for (const p of ["run", "job", "jobs"]) show($(`page-${p}`), p === page);
  document.querySelectorAll("[data-nav]").forEach((a) => {
    if (a.dataset.nav === page) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
  if (page === "job") openJob(job[1]);
  if (page === "jobs") openJobs();
  document.title = page === "job" ? `pipeq · job ${job[1].slice(0, 8)}` : page === "jobs" ? "pipeq · jobs" : "pipeq";
}
window.addEventListener("hashchange", route);

// Poll with a timer that slows down while the tab is hidden and stops at a final state.
function poll(fn, visibleMs, hiddenMs) {
  let timer = null, stopped = false;
  const tick = async () => {
    if (stopped) return;
    let again = true;
    try { again = await fn(); } catch (e) { /* network blip: try again */ }
    if (!stopped && again !== false) timer = setTimeout(tick, document.hidden ? hiddenMs : visibleMs);
  };
  const wake = () => { if (!document.hidden && !stopped) { clearTimeout(timer); tick(); } };
  document.addEventListener("visibilitychange", wake);
  tick();
  return () => { stopped = true; clearTimeout(timer); document.removeEventListener("visibilitychange", wake); };
}

// ---- the run form -------------------------------------------------------------------------
const form = $("run-form");
const FASTA = /\.(fa|fasta|fna)(\.gz)?$/i;

function listChosen() {
  const ul = $("reads-chosen");
  ul.replaceChildren(...[...$("reads").files].map((f, i) => {
    const li = document.createElement("li");
    li.textContent = `${$("reads").files.length === 2 ? (i ? "R2: " : "R1: ") : ""}${f.name} (${(f.size / 1e6).toFixed(1)} MB)`;
    return li;
  }));
}
$("reads").addEventListener("change", () => { clearErrors("reads"); listChosen(); });
$("reference").addEventListener("change", () => clearErrors("reference"));
$("sample").addEventListener("input", () => clearErrors("sample"));

// Drag and drop anywhere on the form: FASTA names go to the reference, the rest to reads.
form.addEventListener("dragover", (e) => { e.preventDefault(); form.classList.add("dragging"); });
form.addEventListener("dragleave", (e) => { if (e.target === form) form.classList.remove("dragging"); });
form.addEventListener("drop", (e) => {
  e.preventDefault();
  form.classList.remove("dragging");
  const reads = new DataTransfer(), ref = new DataTransfer();
  for (const f of e.dataTransfer.files) (FASTA.test(f.name) ? ref : reads).items.add(f);
  if (reads.files.length) { $("reads").files = reads.files; listChosen(); }
  if (ref.files.length) $("reference").files = ref.files;
  clearErrors();
});

function clearErrors(only) {
  for (const f of ["reads", "reference", "sample"]) {
    if (only && f !== only) continue;
    setText($(`${f}-error`), "");
    $(`field-${f}`).classList.remove("invalid");
    $(f).removeAttribute("aria-invalid");
  }
  if (!only) setText($("form-error"), "");
}
function showError(field, msg) {
  if (!field) { setText($("form-error"), msg); return; }
  const el = $(`${field}-error`);
  setText(el, el.textContent ? `${el.textContent} ${msg}` : msg);
  $(`field-${field}`).classList.add("invalid");
  $(field).setAttribute("aria-invalid", "true");
}

function checkLocally() {
  const n = $("reads").files.length;
  if (n < 1 || n > 2) showError("reads", "Choose one reads file (single-end) or two (paired-end).");
  if ($("reference").files.length !== 1) showError("reference", "Choose the reference FASTA.");
  if (!$("sample").checkValidity()) showError("sample", "Use letters, digits, '.', '_' or '-' only.");
  return !form.querySelector(".invalid");
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  clearErrors();
  if (!checkLocally()) { form.querySelector("[aria-invalid]").focus(); return; }
  const info = await presignedInfo();
  const chosen = [...$("reads").files, $("reference").files[0]];
  if (info.enabled && chosen.some((f) => f.size > info.threshold_bytes)) { uploadDirect(); return; }
  const data = new FormData();
  for (const f of $("reads").files) data.append("reads", f);
  data.append("reference", $("reference").files[0]);
  if ($("sample").value) data.append("sample", $("sample").value);
  upload(data);
});

function upload(data) {
  const xhr = new XMLHttpRequest();
  const bar = $("upload-progress");
  $("submit").disabled = true;
  show(bar, true);
  bar.value = 0;
  xhr.upload.onprogress = (e) => {
    if (!e.lengthComputable) return;
    bar.value = Math.round((e.loaded / e.total) * 100);
    setText($("upload-text"), `Uploading… ${bar.value}%`);
  };
  xhr.upload.onload = () => setText($("upload-text"), "Checking the files…");
  xhr.onloadend = async () => {
    $("submit").disabled = false;
    show(bar, false);
    setText($("upload-text"), "");
    if (xhr.status === 202) {
      const { job_id } = JSON.parse(xhr.responseText);
      form.reset();
      listChosen();
      location.hash = `#/jobs/${job_id}`;
      return;
    }
    if (xhr.status === 401) { await needCredentials(""); upload(data); return; }
    if (xhr.status === 0) { showError(null, "The upload did not reach the server. Is it running?"); return; }
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch (err) { /* not JSON */ }
    for (const r of reasons(body)) showError(r.field, r.msg);
    const bad = form.querySelector("[aria-invalid]");
    if (bad) bad.focus();
  };
  xhr.open("POST", "/run_pipeline");
  for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
  xhr.send(data);
}

// ---- large files: straight to the object store ------------------------------------------
// With object storage, files over the server's threshold are PUT part by part to presigned
// URLs (POST /uploads), and the run names the uploaded files (a JSON submission); the bytes
// never pass through the API.
let uploadsInfo = null;
async function presignedInfo() {
  if (!uploadsInfo) {
    try {
      const res = await api("/uploads/info");
      uploadsInfo = res.ok ? await res.json() : { enabled: false };
    } catch (err) { uploadsInfo = { enabled: false }; }
  }
  return uploadsInfo;
}

async function uploadDirect() {
  const bar = $("upload-progress");
  const reads = [...$("reads").files];
  const all = [...reads, $("reference").files[0]];
  const total = all.reduce((n, f) => n + f.size, 0);
  let sent = 0;
  $("submit").disabled = true;
  show(bar, true);
  bar.value = 0;
  try {
    const refs = [];
    for (const f of all) {
      refs.push(await putFile(f, (n) => {
        sent += n;
        bar.value = Math.round((sent / total) * 100);
        setText($("upload-text"), `Uploading to the store… ${bar.value}%`);
      }));
    }
    setText($("upload-text"), "Checking the files…");
    const body = { reads: refs.slice(0, reads.length), reference: refs[refs.length - 1] };
    if ($("sample").value) body.sample = $("sample").value;
    const res = await api("/run_pipeline", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const out = await res.json().catch(() => null);
    if (res.status === 202) {
      form.reset();
      listChosen();
      location.hash = `#/jobs/${out.job_id}`;
      return;
    }
    for (const r of reasons(out)) showError(r.field, r.msg);
  } catch (err) {
    showError(null, err.message);
  } finally {
    $("submit").disabled = false;
    show(bar, false);
    setText($("upload-text"), "");
  }
}

async function putFile(file, progress) {
  const json = { "Content-Type": "application/json" };
  const res = await api("/uploads", { method: "POST", headers: json, body: JSON.stringify({ filename: file.name, size: file.size }) });
  const up = await res.json().catch(() => null);
  if (res.status !== 201) throw new Error(`${file.name}: ${reasons(up)[0].msg}`);
  const parts = [];
  for (const p of up.parts) {
    const piece = file.slice((p.part_number - 1) * up.part_size, p.part_number * up.part_size);
    const put = await fetch(p.url, { method: "PUT", body: piece });
    if (!put.ok) throw new Error(`The object store refused part ${p.part_number} of ${file.name} (${put.status}).`);
    parts.push({ part_number: p.part_number, etag: put.headers.get("ETag") });
    progress(piece.size);
  }
  const done = await api(`/uploads/${up.upload_id}/complete`, { method: "POST", headers: json, body: JSON.stringify({ parts }) });
  const body = await done.json().catch(() => null);
  if (!done.ok) throw new Error(`${file.name}: ${reasons(body)[0].msg}`);
  return body.reference;
}

// ---- one job ------------------------------------------------------------------------------
const SUMMARY = [
  ["reads_before", "Reads in"], ["reads_after", "Reads kept"], ["percent_mapped", "% mapped"],
  ["mean_depth", "Mean depth"], ["variants", "Variants"],
];

function openJob(id) {
  setText($("job-id"), id);
  for (const el of ["job-error", "job-result", "job-running", "job-position", "job-log", "job-cancel"]) show($(el), false);
  setText($("job-status"), "…");
  $("job-files").replaceChildren();
  $("job-plots").replaceChildren();
  let last = null, elapsedTimer = null;
  const tickElapsed = () => {
    if (last && !last.started_at && last.enqueued_at && !FINAL.has(last.status)) {
      return setText($("job-elapsed"), `waiting for ${fmtDuration((new Date() - new Date(last.enqueued_at)) / 1000)}`);
    }
    if (!last || !last.started_at) return setText($("job-elapsed"), "");
    const end = last.ended_at ? new Date(last.ended_at) : new Date();
    setText($("job-elapsed"), `${last.ended_at ? "ran" : "running for"} ${fmtDuration((end - new Date(last.started_at)) / 1000)}`);
  };
  elapsedTimer = setInterval(tickElapsed, 1000);
  const stop = poll(async () => {
    const res = await api(`/job_status/${id}`);
    if (res.status === 404) { setText($("job-status"), "not found"); setText($("job-sample"), "No such job (jobs expire after a while)."); return false; }
    if (!res.ok) return true;
    const s = await res.json();
    renderJob(s, last);
    last = s;
    tickElapsed();
    return !FINAL.has(s.status);
  }, 2000, 15000);
  stopPolling = () => { stop(); clearInterval(elapsedTimer); };
  $("job-cancel").onclick = async () => {
    $("job-cancel").disabled = true;
    await api(`/jobs/${id}`, { method: "DELETE" });
    $("job-cancel").disabled = false;
  };
  $("job-show-log").onclick = async () => {
    const res = await api(`/jobs/${id}/log`);
    setText($("job-log"), res.ok ? await res.text() : "The log is not available.");
    show($("job-log"), true);
  };
}

function renderJob(s, prev) {
  const badge = $("job-status");
  setText(badge, s.status);
  badge.className = `badge ${s.status}`;
  setText($("job-sample"), s.sample ? `sample ${s.sample}` : "");
  const running = s.status === "started";
  show($("job-running"), running);
  if (running) {
    setText($("job-stage"), s.stage ? `Stage: ${s.stage}` : "Starting…");
    setText($("job-percent"), s.progress != null ? `${s.progress}%` : "");
    if (s.progress != null && $("job-progress").value !== s.progress) $("job-progress").value = s.progress;
  }
  show($("job-position"), s.status === "queued");
  if (s.status === "queued") setText($("job-position"), s.position == null ? "Waiting for a worker." : s.position === 0 ? "Next in the queue." : `${s.position} job(s) ahead in the queue.`);
  show($("job-attempt"), s.attempt > 1);
  if (s.attempt > 1) setText($("job-attempt"), `Attempt ${s.attempt}: a worker was lost, the job was retried.`);
  const active = !FINAL.has(s.status);
  show($("job-cancel"), active);
  setText($("job-cancel"), s.status === "queued" ? "Cancel" : "Stop");

  show($("job-error"), !!s.error);
  if (s.error) {
    setText($("job-error-title"), s.status === "stopped" ? "Why it ended" : "Why it failed");
    setText($("job-error-reason"), s.error.reason);
    setText($("job-error-message"), s.error.message + (s.error.exit_code != null && !s.error.message.includes(`code ${s.error.exit_code}`) ? ` (exit code ${s.error.exit_code})` : ""));
    setText($("job-error-tail"), s.error.stderr_tail || "(the pipeline wrote nothing to stderr)");
  }
  show($("job-result"), !!s.result);
  if (s.result && !(prev && prev.result)) renderResult(s.job_id, s.result);
}

function renderResult(id, result) {
  const dl = $("job-summary");
  dl.replaceChildren(...SUMMARY.filter(([k]) => result.summary[k] != null).map(([k, label]) => {
    const div = document.createElement("div");
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = label;
    const v = result.summary[k];
    dd.textContent = typeof v === "number" ? v.toLocaleString(undefined, { maximumFractionDigits: 2 }) : String(v);
    div.append(dt, dd);
    return div;
  }));
  const link = (name) => `/jobs/${id}/files/${encodeURIComponent(name)}`;
  if (result.files.includes("plots.json")) showPlots(link("plots.json"));
  const report = $("job-report");
  show(report.parentElement, result.files.includes("report.html"));
  report.href = link("report.html");
  report.onclick = withToken;
  $("job-files").replaceChildren(...result.files.map((name) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = link(name);
    a.textContent = name;
    if (name.endsWith(".html")) { a.target = "_blank"; a.rel = "noopener"; } else a.setAttribute("download", name);
    a.onclick = withToken;
    li.append(a);
    return li;
  }));
}

// The report's plots (plots.json, written by pipeline.sh) under the summary. Each SVG is shown
// as an image from a blob: an <img> never runs script, whatever the file holds.
async function showPlots(href) {
  const box = $("job-plots");
  let plots = [];
  try {
    const res = await api(href);
    if (res.ok) plots = (await res.json()).plots || [];
  } catch (err) { /* no plots: the summary and files still show */ }
  box.replaceChildren(...plots.filter((p) => typeof p.svg === "string").map((p) => {
    const fig = document.createElement("figure");
    fig.id = `job-${p.id}`;
    const img = document.createElement("img");
    img.src = URL.createObjectURL(new Blob([p.svg], { type: "image/svg+xml" }));
    img.alt = p.title || "plot";
    img.onload = () => URL.revokeObjectURL(img.src);
    const cap = document.createElement("figcaption");
    cap.textContent = p.caption || "";
    fig.append(img, cap);
    return fig;
  }));
}

// A report opened from a blob has no folder around it: the scripts it loads from beside it
// (fastp.html's plotly.min.js) are fetched with the token too and handed to it as blobs.
async function withLocalScripts(html, base) {
  const names = new Set([...html.matchAll(/<script src="([\w.-]+\.js)"/g)].map((m) => m[1]));
  for (const name of names) {
    const res = await api(`${base}/${encodeURIComponent(name)}`);
    if (!res.ok) continue;
    const url = URL.createObjectURL(new Blob([await res.blob()], { type: "text/javascript" }));
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    html = html.split(`<script src="${name}"`).join(`<script src="${url}"`);
  }
  return html;
}

// A plain link sends no Authorization header: with a token, fetch the file with it and hand
// the browser a blob (a download, or the report in a new tab). Without one, the link as is.
async function withToken(e) {
  if (!sessionStorage.getItem(TOKEN_KEY)) return;
  e.preventDefault();
  const a = e.currentTarget;
  const tab = a.hasAttribute("download") ? null : window.open("", "_blank");  // opened now, while the click counts
  const res = await api(a.getAttribute("href"));
  if (!res.ok) { if (tab) tab.close(); setText($("job-files-error"), `Could not fetch ${a.textContent} (HTTP ${res.status}).`); return; }
  const href = a.getAttribute("href");
  const blob = a.hasAttribute("download") ? await res.blob()
    : new Blob([await withLocalScripts(await res.text(), href.slice(0, href.lastIndexOf("/")))], { type: "text/html" });
  const url = URL.createObjectURL(blob);
  if (tab) { tab.location = url; } else {
    const tmp = document.createElement("a");
    tmp.href = url;
    tmp.download = a.getAttribute("download") || a.textContent;
    document.body.append(tmp);
    tmp.click();
    tmp.remove();
  }
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ---- the jobs list ------------------------------------------------------------------------
let jobsLimit = 20;
function openJobs() {
  jobsLimit = 20;
  const stop = poll(loadJobs, 5000, 30000);
  stopPolling = stop;
  $("jobs-more").onclick = () => { jobsLimit += 20; loadJobs(); };
}

async function loadJobs() {
  await meReady;
  const res = await api(`/jobs?limit=${jobsLimit}`);
  if (!res.ok) return true;
  const { jobs, total } = await res.json();
  const body = $("jobs-body");
  const rows = new Map([...body.children].map((tr) => [tr.dataset.id, tr]));
  const ordered = jobs.map((j) => {
    const tr = rows.get(j.job_id) || newRow(j.job_id);
    const cells = tr.children;
    setText(cells[1], j.sample || "—");
    setText(cells[2], j.owner_name || j.owner);
    show(cells[2], showOwners());
    const badge = cells[3].firstChild;
    setText(badge, j.status);
    badge.className = `badge ${j.status}`;
    setText(cells[4], fmtTime(j.enqueued_at));
    setText(cells[5], fmtTime(j.ended_at));
    const btn = cells[6].firstChild;
    show(btn, !FINAL.has(j.status));
    setText(btn, j.status === "queued" ? "Cancel" : "Stop");
    return tr;
  });
  ordered.forEach((tr, i) => { if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null); });
  while (body.children.length > ordered.length) body.lastChild.remove();
  show($("jobs-empty"), jobs.length === 0);
  show($("jobs-more"), total > jobs.length);
  return true;
}

function newRow(id) {
  const tr = document.createElement("tr");
  tr.dataset.id = id;
  const cells = [0, 1, 2, 3, 4, 5, 6].map(() => document.createElement("td"));  // job sample owner status submitted ended actions
  const a = document.createElement("a");
  a.href = `#/jobs/${id}`;
  a.textContent = id.slice(0, 8);
  a.setAttribute("aria-label", `job ${id}`);
  cells[0].append(a);
  const badge = document.createElement("span");
  cells[3].append(badge);
  const btn = document.createElement("button");
  btn.type = "button";
  btn.className = "link";
  btn.onclick = async () => { btn.disabled = true; await api(`/jobs/${id}`, { method: "DELETE" }); btn.disabled = false; loadJobs(); };
  cells[6].append(btn);
  tr.append(...cells);
  return tr;
}

route();
