// The Ledger console: plain JavaScript, no build step, no request to another origin.
// Every call goes to this API with the token kept in the tab's session storage.
"use strict";

const TOKEN_KEY = "ledger-console-token";
const ROLE_KEY = "ledger-console-role";
const LEDGER_KEY = "ledger-console-ledger";
let refreshTimer = null;

// ---------- small helpers ----------
const $ = (sel, root = document) => root.querySelector(sel);
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
const token = () => sessionStorage.getItem(TOKEN_KEY);
const role = () => sessionStorage.getItem(ROLE_KEY);
const isOperator = () => role() === "operator" || role() === "admin";
// Erasing personal data is the admin's alone (API.md v1.2 "Personal data").
const isAdmin = () => role() === "admin";
// The ledger every view reads and writes (API.md "Ledgers"); `default` is the
// unprefixed routes.
const ledger = () => sessionStorage.getItem(LEDGER_KEY) || "default";
const isLedgerName = s => /^[a-z][a-z0-9-]{0,62}$/.test(s || "");

// A contract path for the chosen ledger: `/v1/…` becomes `/v1/ledgers/{ledger}/…`, but
// for the deployment's own routes (the directory of ledgers, tokens).
function addressed(path) {
  const deploymentWide = path.startsWith("/v1/admin/ledgers") || path.startsWith("/v1/admin/tokens");
  if (ledger() === "default" || deploymentWide || !path.startsWith("/v1/")) return path;
  return `/v1/ledgers/${encodeURIComponent(ledger())}/${path.slice("/v1/".length)}`;
}

// Money: minor units shown as an amount in its currency, in the viewer's locale.
function money(minor, currency) {
  if (minor === null || minor === undefined) return "";
  try {
    const format = new Intl.NumberFormat(undefined, { style: "currency", currency });
    const digits = format.resolvedOptions().maximumFractionDigits;
    return format.format(Number(minor) / 10 ** digits);
  } catch (_) {
    return `${minor} ${currency} (minor units)`;
  }
}

// Times: the viewer's zone, the UTC value on hover.
function time(iso) {
  if (!iso) return el("span", { class: "muted", text: "—" });
  const d = new Date(iso);
  return el("time", { datetime: iso, title: `${d.toISOString()} (UTC)`, text: d.toLocaleString() });
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { box.hidden = true; }, 8000);
}

class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? `${problem.detail} (${problem.code || status})` : `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

// `key`: the Idempotency-Key of a POST; a form keeps one until it succeeds, so that a
// retry (or a second click) is the same command, never a second one.
async function api(method, path, body, key) {
  const headers = { Authorization: `Bearer ${token()}` };
  const init = { method, headers };
  if (method === "POST") {
    headers["Idempotency-Key"] = key || crypto.randomUUID();
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  const response = await fetch(addressed(path), init);
  if (response.status === 204) return null;
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map(h => el("th", { class: h.num ? "num" : null, text: h.label || h })))),
    el("tbody", {}, rows.length ? rows : [el("tr", {}, el("td", { colspan: headers.length, class: "muted", text: "None." }))]));
}

function render(title, ...sections) {
  // A section left out (null) draws nothing (not the text "null").
  $("#main").replaceChildren(el("h1", { text: title }), ...sections.filter(s => s !== null && s !== undefined));
}

const isUuid = s => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s || "");

// Runs `action` with `button` disabled, so a second click cannot send it twice.
async function busy(button, action) {
  if (button.disabled) return;
  button.disabled = true;
  try { await action(); } finally { button.disabled = false; }
}

// ---------- sign-in ----------
function signIn() {
  $("#nav").hidden = true;
  const input = el("input", { id: "token", type: "password", autocomplete: "off", placeholder: "API token", required: true });
  render("Sign in",
    el("section", {},
      el("p", { class: "muted", text: "Sign in with an API token. It is kept in this tab only (session storage)." }),
      el("form", { id: "sign-in", onsubmit: async (e) => {
        e.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        try {
          // Operators and admins may read the admin area; clients may not.
          await api("GET", "/v1/admin/projections");
          sessionStorage.setItem(ROLE_KEY, "operator");
          // An admin-only route, sent without the body it needs: 403 for an operator,
          // 422 for an admin, and nothing runs either way.
          await api("POST", "/v1/admin/subjects/-/erase", {}, "console-role-probe").catch(err => {
            if (err.status === 422) sessionStorage.setItem(ROLE_KEY, "admin");
          });
        } catch (err) {
          if (err.status === 403) sessionStorage.setItem(ROLE_KEY, "client");
          else {
            sessionStorage.removeItem(TOKEN_KEY);
            showError(err.status === 401 ? "This token is not accepted." : err.message);
            return;
          }
        }
        location.hash = isOperator() ? "#/overview" : "#/accounts";
        route();
      } }, input, el("button", { type: "submit", id: "sign-in-button", text: "Sign in" }))));
  input.focus();
}

// ---------- overview ----------
async function overview(ctx) {
  if (!isOperator()) { location.hash = "#/accounts"; return; }
  try { await drawOverview(ctx); } finally {
    // A failed refresh (a 503 during an incident) must not end the live view.
    }
}

async function drawOverview(ctx) {
  const [projections, breakers, dead] = await Promise.all([
    api("GET", "/v1/admin/projections"),
    api("GET", "/v1/admin/circuit-breakers"),
    api("GET", "/v1/admin/dead-letters"),
  ]);
  const runs = await api("GET", "/v1/admin/reconciliations?limit=1");
  const last = runs.reconciliations[0] || null;
  ctx.page("Overview",
    el("section", { id: "head" }, el("h2", { text: "Log" }),
      el("dl", { class: "kv" }, el("dt", { text: "Head position" }), el("dd", { id: "log-head", text: projections.head }))),
    el("section", {}, el("h2", { text: "Projections" }),
      table(["Name", { label: "Position", num: true }, { label: "Lag (events)", num: true }, "Status", "Updated"],
        projections.projections.map(p => el("tr", {}, el("td", { text: p.name }), el("td", { class: "num", text: p.position }),
          el("td", { class: "num", text: p.lag_events }), el("td", { text: p.status }), el("td", {}, time(p.updated_at)))))),
    el("section", {}, el("h2", { text: "Circuit breakers" }),
      table(["Name", "State", { label: "Failures", num: true }, "Opened"],
        breakers.breakers.map(b => el("tr", {}, el("td", { text: b.name }),
          el("td", { class: b.state === "closed" ? "ok" : "bad", text: b.state }),
          el("td", { class: "num", text: b.failures }), el("td", {}, time(b.opened_at)))))),
    el("section", {}, el("h2", {}, "Open dead letters: ", el("a", { href: "#/dead-letters", id: "dead-letter-count", text: dead.dead_letters.length }))),
    el("section", { id: "last-reconciliation" }, el("h2", { text: "Last reconciliation" }),
      last ? reconciliationSummary(last) : el("p", { class: "muted", text: "No run yet." })),
    el("p", { class: "muted", text: "Refreshes every 3 seconds." }));
  if (ctx.live()) refreshTimer = setTimeout(() => { if (location.hash === "#/overview") run(overview); }, 3000);
}

// ---------- accounts ----------
function accounts(ctx) {
  const input = el("input", { id: "account-query", placeholder: "Account id or owner", required: true });
  const results = el("div", { id: "account-results" });
  ctx.page("Accounts",
    el("section", {},
      el("form", { id: "account-search", onsubmit: async (e) => {
        e.preventDefault();
        const q = input.value.trim();
        if (isUuid(q)) { location.hash = `#/account/${q}`; return; }
        const list = await api("GET", `/v1/accounts?owner=${encodeURIComponent(q)}`).catch(err => { showError(err.message); return null; });
        if (!list) return;
        results.replaceChildren(table(["Account", "Owner", { label: "Balance", num: true }, "Status"],
          list.accounts.map(a => el("tr", {}, el("td", {}, el("a", { href: `#/account/${a.id}`, class: "account-link", text: a.id })),
            el("td", { text: a.owner || "" }), el("td", { class: "num", text: money(a.balance, a.currency) }), el("td", { text: a.status })))));
      } }, input, el("button", { type: "submit", text: "Find" }))),
    el("section", {}, results));
  input.focus();
}

async function account(ctx, id, cursor, minPosition) {
  // After an action here, the view is read at least as new as its answer.
  const a = await api("GET", `/v1/accounts/${encodeURIComponent(id)}${minPosition ? `?min_position=${minPosition}` : ""}`);
  const statementPath = `/v1/accounts/${encodeURIComponent(id)}/transactions?limit=10${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
  const [statement, events] = await Promise.all([api("GET", statementPath), api("GET", `/v1/accounts/${encodeURIComponent(id)}/events?limit=20`)]);
  const entries = statement.entries.map(e => el("tr", {},
    el("td", {}, time(e.occurred_at)), el("td", { text: e.kind }),
    el("td", { class: "num", text: money(e.amount, a.currency) }), el("td", { class: "num", text: money(e.balance_after, a.currency) }),
    el("td", {}, el("a", { href: `#/transaction/${e.transfer_id}`, text: "details" }))));
  ctx.page(`Account ${a.owner ? `of ${a.owner}` : ""}`,
    el("section", {}, el("dl", { class: "kv", id: "account-summary" },
      el("dt", { text: "Id" }), el("dd", { text: a.id }),
      el("dt", { text: "Owner" }), el("dd", { id: "owner", text: a.owner || "—" }),
      el("dt", { text: "Subject" }), el("dd", { id: "subject", text: a.subject }),
      el("dt", { text: "Personal data" }), el("dd", { id: "erased", class: a.erased ? "bad" : null, text: a.erased ? "erased" : "kept" }),
      el("dt", { text: "Status" }), el("dd", { text: a.status }),
      el("dt", { text: "Balance" }), el("dd", { id: "balance", text: money(a.balance, a.currency) }),
      el("dt", { text: "Available" }), el("dd", { id: "available", text: money(a.available, a.currency) }),
      el("dt", { text: "Holds" }), el("dd", { text: money(a.pending_holds, a.currency) }),
      el("dt", { text: "Overdraft limit" }), el("dd", { text: money(a.overdraft_limit, a.currency) }))),
    isAdmin() && !a.erased && !a.system ? eraseSection(ctx, a) : null,
    el("section", { id: "statement" }, el("h2", { text: "Statement" }),
      table(["When", "Kind", { label: "Amount", num: true }, { label: "Balance after", num: true }, ""], entries),
      el("p", {},
        cursor ? el("a", { href: `#/account/${id}`, text: "Newest" }) : null, " ",
        statement.next_cursor ? el("a", { href: `#/account/${id}/before/${statement.next_cursor}`, id: "older", text: "Older entries →" }) : null)),
    el("section", {}, el("h2", { text: "Event stream" }),
      table([{ label: "Version", num: true }, { label: "Position", num: true }, "Type", "Recorded"],
        events.events.map(e => el("tr", {}, el("td", { class: "num", text: e.version }), el("td", { class: "num", text: e.position }),
          el("td", {}, el("a", { href: `#/stream/${e.stream_id}`, text: e.type })), el("td", {}, time(e.recorded_at)))))));
}

// Erasing the account's subject: the admin types the subject's name to confirm, as it
// erases the personal data of every account of that subject, for good.
function eraseSection(ctx, a) {
  const confirmInput = el("input", { id: "erase-confirm", autocomplete: "off", placeholder: a.subject, required: true });
  const reason = el("input", { id: "erase-reason", placeholder: "Reason (no personal data)", required: true });
  const button = el("button", { id: "erase", class: "danger", type: "submit", disabled: true, text: `Erase subject ${a.subject}` });
  confirmInput.addEventListener("input", () => { button.disabled = confirmInput.value !== a.subject; });
  const key = crypto.randomUUID();
  return el("section", { id: "erase-section" }, el("h2", { text: "Erase personal data" }),
    el("p", { class: "muted", text: `This erases the owner and pii. metadata of every account of subject "${a.subject}", for good. Balances and history stay. Type the subject to confirm.` }),
    el("form", { id: "erase-form", onsubmit: (e) => {
      e.preventDefault();
      if (confirmInput.value !== a.subject) return;
      busy(button, async () => {
        try {
          const erased = await api("POST", `/v1/admin/subjects/${encodeURIComponent(a.subject)}/erase`, { reason: reason.value.trim() }, key);
          if (ctx.live()) run(c => account(c, a.id, null, erased.position));
        } catch (err) { showError(err.message); }
      });
    } }, confirmInput, reason, button));
}

// ---------- a transaction, or any stream's events, with audit metadata ----------
async function transaction(ctx, id) {
  const [t, audit] = await Promise.all([
    api("GET", `/v1/transactions/${encodeURIComponent(id)}`).catch(err => { if (err.status === 404) return null; throw err; }),
    api("GET", `/v1/audit?stream_id=${encodeURIComponent(id)}&limit=50`),
  ]);
  const sections = [];
  if (t) {
    sections.push(el("section", { id: "transaction" }, el("dl", { class: "kv" },
      el("dt", { text: "Id" }), el("dd", { text: t.id }),
      el("dt", { text: "Status" }), el("dd", { text: t.status }),
      el("dt", { text: "Reference" }), el("dd", { text: t.reference || "—" }),
      el("dt", { text: "Effective" }), el("dd", {}, time(t.effective_at)),
      el("dt", { text: "Recorded" }), el("dd", {}, time(t.recorded_at)),
      el("dt", { text: "Position" }), el("dd", { text: t.position })),
      table(["From", "To", { label: "Amount", num: true }],
        t.postings.map(p => el("tr", {}, accountCell(p.from), accountCell(p.to),
          el("td", { class: "num", text: money(p.amount, p.currency) }))))));
  }
  sections.push(auditSection(audit));
  ctx.page(t ? "Transaction" : "Stream", ...sections);
}

// A posting's account (postings carry `from` and `to`), linked to its page.
function accountCell(id) {
  return el("td", { class: "wrap" }, el("a", { href: `#/account/${encodeURIComponent(id)}`, text: id }));
}

function auditSection(audit) {
  return el("section", { id: "audit" }, el("h2", { text: "Events and their audit metadata" }),
    table([{ label: "Position", num: true }, "Type", "Actor", "Request", "Correlation", "Causation", "Idempotency key", "Recorded",
      "In the signed tree"],
      audit.events.map(e => el("tr", {}, el("td", { class: "num", text: e.position }), el("td", { text: e.type || e.event_type }),
        el("td", { text: e.actor || "" }), el("td", { class: "wrap", text: e.request_id || "" }),
        el("td", { class: "wrap", text: e.correlation_id || "" }), el("td", { class: "wrap", text: e.causation_id || "" }),
        el("td", { class: "wrap", text: e.idempotency_key || "" }), el("td", {}, time(e.recorded_at)),
        inclusionCell(e)))));
}

// A button that checks the event's inclusion in the latest signed tree head, and where
// the answer goes.
function inclusionCell(event) {
  const out = el("span", { id: `inclusion-${event.position}`, class: "inclusion" });
  return el("td", { class: "wrap" },
    el("button", { class: "check-inclusion secondary", type: "button", "data-position": event.position, text: "Check inclusion",
      onclick: (e) => busy(e.currentTarget, () => checkInclusion(event, out)) }), " ", out);
}

// ---------- dead letters ----------
async function deadLetters(ctx) {
  const list = await api("GET", "/v1/admin/dead-letters");
  const act = (id, what) => {
    const key = crypto.randomUUID();
    return (e) => busy(e.currentTarget, async () => {
      try {
        await api("POST", `/v1/admin/dead-letters/${encodeURIComponent(id)}/${what}`, {}, key);
        if (ctx.live()) run(deadLetters);
      } catch (err) { showError(err.message); }
    });
  };
  ctx.page("Dead letters", el("section", {},
    table(["Id", "Source", { label: "Event position", num: true }, { label: "Attempts", num: true }, "Last error", "Since", ""],
      list.dead_letters.map(d => el("tr", { "data-id": d.id },
        el("td", { class: "wrap", text: d.id }), el("td", { text: d.source }), el("td", { class: "num", text: d.event_position }),
        el("td", { class: "num", text: d.attempts }), el("td", { class: "wrap", text: d.last_error }), el("td", {}, time(d.dead_lettered_at)),
        el("td", {}, el("button", { class: "redrive", type: "button", onclick: act(d.id, "redrive"), text: "Redrive" }), " ",
          el("button", { class: "discard danger", type: "button", onclick: act(d.id, "discard"), text: "Discard" })))))));
}

// ---------- reconciliations ----------
function reconciliationSummary(r) {
  return el("div", { id: "reconciliation" }, el("dl", { class: "kv" },
    el("dt", { text: "Run" }), el("dd", { text: r.id }),
    el("dt", { text: "Status" }), el("dd", { id: "reconciliation-status", text: r.status }),
    el("dt", { text: "Window" }), el("dd", {}, time(r.from), " – ", time(r.to)),
    el("dt", { text: "Matched" }), el("dd", { id: "reconciliation-matched", text: r.matched }),
    el("dt", { text: "Mismatches" }), el("dd", { id: "reconciliation-mismatches", text: r.mismatches.length }),
    r.error ? el("dt", { text: "Error" }) : null, r.error ? el("dd", { class: "bad", text: r.error }) : null),
    table(["Kind", "Withdrawal", "Reference", "Resolution"],
      r.mismatches.map(m => el("tr", {}, el("td", { text: m.kind }), el("td", { class: "wrap", text: m.withdrawal_id || "" }),
        el("td", { class: "wrap", text: m.reference }), el("td", { text: m.resolution })))));
}

async function reconciliations(ctx, id) {
  const from = el("input", { id: "reconcile-from", type: "datetime-local", title: "From (your time zone; default: 24 hours before To)" });
  const to = el("input", { id: "reconcile-to", type: "datetime-local", title: "To (your time zone; default: now)" });
  const report = id ? await api("GET", `/v1/admin/reconciliations/${encodeURIComponent(id)}`) : null;
  ctx.page("Reconciliations",
    el("section", {}, el("h2", { text: "Start a run" }),
      el("form", { id: "reconcile", onsubmit: (e) => {
        e.preventDefault();
        const body = {};
        if (from.value) body.from = new Date(from.value).toISOString();
        if (to.value) body.to = new Date(to.value).toISOString();
        return busy($("#start-reconciliation"), async () => {
          try {
            const started = await api("POST", "/v1/admin/reconciliations", body);
            if (ctx.live()) location.hash = `#/reconciliations/${started.id}`;
          } catch (err) { showError(err.message); }
        });
      } }, from, to, el("button", { type: "submit", id: "start-reconciliation", text: "Start" }))),
    report ? el("section", {}, el("h2", { text: "Run" }), reconciliationSummary(report)) : null);
  if (report && report.status === "running" && ctx.live()) {
    refreshTimer = setTimeout(() => { if (location.hash === `#/reconciliations/${id}`) run(c => reconciliations(c, id)); }, 1000);
  }
}

// ---------- webhooks ----------
async function webhooks(ctx, created) {
  const list = await api("GET", "/v1/admin/webhooks");
  const url = el("input", { id: "webhook-url", type: "url", placeholder: "URL of your endpoint (http or https)", required: true });
  let key = crypto.randomUUID();
  const types = el("input", { id: "webhook-types", placeholder: "Event types, comma-separated (empty: all)" });
  ctx.page("Webhooks",
    created ? el("section", { id: "webhook-created" }, el("p", {}, "Created. Its signing secret is shown this once:"),
      el("p", { class: "secret", text: created.secret })) : null,
    el("section", {}, el("h2", { text: "Register" }),
      el("form", { id: "webhook-form", onsubmit: (e) => {
        e.preventDefault();
        const body = { url: url.value.trim() };
        const names = types.value.split(",").map(s => s.trim()).filter(Boolean);
        if (names.length) body.event_types = names;
        return busy($("#webhook-form button"), async () => {
          try {
            const made = await api("POST", "/v1/admin/webhooks", body, key);
            key = crypto.randomUUID();
            // The secret is shown once: if the operator has moved on, say it there.
            if (ctx.live()) run(c => webhooks(c, made));
            else window.alert(`Webhook ${made.id} registered. Its signing secret, shown once: ${made.secret}`);
          } catch (err) {
            // Another body needs another key; the same body retried keeps it.
            if (err.problem && err.problem.code === "idempotency_key_reused") key = crypto.randomUUID();
            showError(err.message);
          }
        });
      } }, url, types, el("button", { type: "submit", text: "Register" }))),
    el("section", {}, table(["Id", "URL", "Types", { label: "Delivered up to", num: true }, { label: "Failures", num: true }, "Breaker", ""],
      list.webhooks.map(w => el("tr", { "data-id": w.id }, el("td", { class: "wrap", text: w.id }), el("td", { class: "wrap", text: w.url }),
        el("td", { class: "wrap", text: w.event_types ? w.event_types.join(", ") : "all" }), el("td", { class: "num", text: w.delivered_position }),
        el("td", { class: "num", text: w.failures }), el("td", { class: w.breaker === "closed" ? "ok" : "bad", text: w.breaker }),
        el("td", {}, el("button", { class: "delete-webhook danger", type: "button", onclick: (e) => busy(e.currentTarget, async () => {
          try {
            await api("DELETE", `/v1/admin/webhooks/${encodeURIComponent(w.id)}`);
            if (ctx.live()) run(c => webhooks(c, null));
          } catch (err) { showError(err.message); }
        }), text: "Delete" })))))));
}

// ---------- hash chain ----------
function verify(ctx) {
  const out = el("div", { id: "verify-result" });
  ctx.page("Hash chain",
    el("section", {}, el("p", { class: "muted", text: "Walks the tamper-evident hash chain of the whole log." }),
      el("button", { id: "verify", type: "button", onclick: async () => {
        out.replaceChildren(el("p", { class: "muted", text: "Verifying…" }));
        try {
          const r = await api("GET", "/v1/audit/verify");
          out.replaceChildren(r.ok
            ? el("p", { class: "ok", text: `The chain verifies: ${r.checked} events checked, head ${r.head}.` })
            : el("p", { class: "bad", text: `The chain is broken at position ${r.first_bad_position}.` }));
        } catch (err) { out.replaceChildren(el("p", { class: "bad", text: err.message })); }
      }, text: "Verify" }), out));
}

// ---------- the verifiable log: bytes, hashes, proofs, signatures ----------
// The log is also a Merkle tree (RFC 9162) whose heads the service signs (API.md
// "Verifiable log"). The console checks what it shows here, in the browser: the server
// sends heads and proofs, but the hashing and the signature check are done here.

// Hex as the API writes hashes: lowercase, two characters a byte; `length` in bytes,
// when given, is checked too.
function hexToBytes(hex, length) {
  if (typeof hex !== "string" || !/^(?:[0-9a-f]{2})*$/.test(hex) || (length !== undefined && hex.length !== 2 * length)) {
    throw new Error(`not ${length === undefined ? "" : `${length} bytes of `}lowercase hex: ${String(hex).slice(0, 20)}`);
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}
const bytesToHex = bytes => Array.from(bytes, b => b.toString(16).padStart(2, "0")).join("");
// Standard base64 (keys, signatures); `atob` throws on anything else.
const base64ToBytes = b64 => Uint8Array.from(atob(b64), c => c.charCodeAt(0));

// SHA-256 of the parts, one after the other.
async function sha256(...parts) {
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { all.set(p, at); at += p.length; }
  return new Uint8Array(await crypto.subtle.digest("SHA-256", all));
}
// Leaves and nodes hash under different prefixes, so neither can pass for the other.
const leafHash = data => sha256(Uint8Array.of(0), data);
const nodeHash = (left, right) => sha256(Uint8Array.of(1), left, right);

// Whether `path` proves that `leaf` belongs to the event at `position` (1-based; its
// leaf index is position - 1) in the tree of `treeSize` whose root is `root` (hashes
// as bytes): RFC 9162 §2.1.3.2, `{ok}` or `{ok: false, why}`.
// Positions stay below 2^53 but may pass 2^31, where JavaScript's bitwise operators
// wrap: the bits are read with arithmetic.
async function verifyInclusion(position, treeSize, leaf, path, root) {
  const no = why => ({ ok: false, why });
  if (!Number.isSafeInteger(position) || !Number.isSafeInteger(treeSize) || position < 1 || position > treeSize) {
    return no(`position ${position} is not in a tree of size ${treeSize}`);
  }
  const odd = n => n % 2 === 1;
  const half = n => Math.floor(n / 2);
  let fn = position - 1, sn = treeSize - 1, r = leaf;
  for (const p of path) {
    if (sn === 0) return no("the audit path is longer than the tree is deep");
    if (odd(fn) || fn === sn) {
      r = await nodeHash(p, r);
      // A right-most node with no sibling at these levels: climb past them.
      while (!odd(fn) && fn !== 0) { fn = half(fn); sn = half(sn); }
    } else {
      r = await nodeHash(r, p);
    }
    fn = half(fn);
    sn = half(sn);
  }
  if (sn !== 0) return no("the audit path is shorter than the tree is deep");
  if (bytesToHex(r) !== bytesToHex(root)) return no("the audit path leads to another root than the signed tree head's");
  return { ok: true };
}

// What a tree head's signature covers (API.md "Verifiable log"), `timestamp` exactly
// as it was answered.
const treeHeadMessage = h => new TextEncoder().encode(`ledger-tree-head:v1\n${h.ledger}\n${h.tree_size}\n${h.root_hash}\n${h.timestamp}`);

// The signing keys: a deployment-wide route that needs no token, so a plain fetch of
// the unprefixed path (api() would send it to the chosen ledger's routes).
async function signingKeys() {
  const response = await fetch("/v1/audit/keys");
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  return (await response.json()).keys || [];
}

// The head's signature checked with WebCrypto against the published key it names:
// `{cls, text}` to show, never a throw. It proves that key signed the head; an auditor
// who does not trust this server compares the key with one obtained another way.
async function checkTreeHeadSignature(head) {
  const unchecked = why => ({ cls: "bad", text: `Signature could not be checked: ${why}` });
  let keys;
  try { keys = await signingKeys(); } catch (err) { return unchecked(err.message); }
  const key = keys.find(k => k.key_id === head.key_id);
  if (!key || key.algorithm !== "ed25519") return { cls: "bad", text: `Signature does NOT verify: no published Ed25519 key ${head.key_id}.` };
  let publicKey;
  try {
    publicKey = await crypto.subtle.importKey("raw", base64ToBytes(key.public_key), { name: "Ed25519" }, false, ["verify"]);
  } catch (err) {
    // Ed25519 came late to WebCrypto: a browser without it says so, not "bad".
    if (err.name === "NotSupportedError") return { cls: "muted", text: "This browser cannot check Ed25519 signatures; the head is shown unchecked." };
    return unchecked(`key ${head.key_id} is unusable (${err.message})`);
  }
  let ok = false;
  try {
    ok = await crypto.subtle.verify({ name: "Ed25519" }, publicKey, base64ToBytes(head.signature), treeHeadMessage(head));
  } catch (_) { /* a signature that is not even base64: not verified */ }
  return ok
    ? { cls: "ok", text: `Signature verifies (Ed25519, key ${head.key_id}).` }
    : { cls: "bad", text: `Signature does NOT verify (key ${head.key_id}).` };
}

// The tree follows the log closely but not in step: a size it has not reached yet is
// 503 consistency_timeout for a moment, so the call is made again, a few times.
async function patiently(call) {
  for (let attempt = 1; ; attempt++) {
    try { return await call(); } catch (err) {
      const behind = err.status === 503 && err.problem && err.problem.code === "consistency_timeout";
      if (!behind || attempt >= 4) throw err;
      await new Promise(resolve => setTimeout(resolve, 500 * attempt));
    }
  }
}

const latestTreeHead = () => patiently(() => api("GET", "/v1/audit/tree-head"));

// Whether the proof puts `event` in the tree of `head`: the leaf is hashed here from
// the event's own chain hash (not taken from the proof), then folded up to the root.
async function eventIncluded(event, head, proof) {
  const no = why => ({ ok: false, why });
  if (!event.hash) return no("the event carries no chain hash");
  if (proof.position !== event.position || proof.tree_size !== head.tree_size) return no("the proof is for another position or tree size");
  let data, path, root;
  try {
    data = hexToBytes(event.hash, 32);
    path = proof.audit_path.map(h => hexToBytes(h, 32));
    root = hexToBytes(head.root_hash, 32);
  } catch (err) { return no(`a malformed hash (${err.message})`); }
  const leaf = await leafHash(data);
  if (bytesToHex(leaf) !== proof.leaf_hash) return no("the proof's leaf is not this event's hash");
  return verifyInclusion(event.position, head.tree_size, leaf, path, root);
}

// The inclusion check of one event, written into `out`.
async function checkInclusion(event, out) {
  const say = (cls, text) => { out.className = `inclusion ${cls}`; out.textContent = text; };
  say("muted", "Checking…");
  try {
    const head = await latestTreeHead();
    const [proof, signature] = await Promise.all([
      patiently(() => api("GET", `/v1/audit/proofs/inclusion?position=${event.position}&tree_size=${head.tree_size}`)),
      checkTreeHeadSignature(head),
    ]);
    const result = await eventIncluded(event, head, proof);
    if (!result.ok) { say("bad", `NOT included: ${result.why}.`); return; }
    // Included in a head whose signature fails proves nothing: shown, but as bad.
    say(signature.cls === "bad" ? "bad" : "ok", `Included in the tree of size ${head.tree_size} (root ${head.root_hash.slice(0, 16)}…). ${signature.text}`);
  } catch (err) { say("bad", `NOT checked: ${err.message}`); }
}

// ---------- audit: the signed tree head, the periods ----------
async function auditView(ctx) {
  const [head, periods] = await Promise.all([latestTreeHead(), api("GET", "/v1/admin/periods")]);
  const signature = await checkTreeHeadSignature(head);
  ctx.page("Audit", treeHeadSection(head, signature), periodsSection(ctx, periods.periods));
}

function treeHeadSection(head, signature) {
  return el("section", { id: "tree-head" }, el("h2", { text: "Latest signed tree head" }),
    el("p", { class: "muted", text: "The root of the log's Merkle tree, signed by the service. An event's inclusion is checked from its transaction's page." }),
    el("dl", { class: "kv" },
      el("dt", { text: "Tree size" }), el("dd", { id: "tree-size", text: head.tree_size }),
      el("dt", { text: "Root hash" }), el("dd", { id: "root-hash", class: "hash", text: head.root_hash }),
      el("dt", { text: "Timestamp" }), el("dd", {}, time(head.timestamp)),
      el("dt", { text: "Key id" }), el("dd", { id: "key-id", class: "hash", text: head.key_id })),
    el("p", { id: "tree-head-signature", class: signature.cls, text: signature.text }));
}

// `closes_at` as typed: an RFC 3339 time goes as it is (its precision, its offset); one
// without an offset is read in this browser's zone, like the reconciliation window.
function closesAtValue(text) {
  const s = text.trim();
  if (/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/.test(s)) return s;
  if (/^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?$/.test(s)) {
    const d = new Date(s.replace(" ", "T"));
    if (!Number.isNaN(d.getTime())) return d.toISOString();
  }
  return null;
}

function periodsSection(ctx, periods) {
  const closesAt = el("input", { id: "period-closes-at", autocomplete: "off", spellcheck: "false", required: true,
    placeholder: "Closes at (RFC 3339)", title: "An RFC 3339 time such as 2025-01-31T23:59:59Z; without an offset, your time zone" });
  const button = el("button", { id: "close-period", type: "submit", text: "Close the period" });
  // One key per `closes_at`, kept until the close succeeds (the view is then drawn
  // anew): a retry or a second click is the same close, never a second one.
  let key = null, keyFor = null;
  return el("section", { id: "periods" }, el("h2", { text: "Periods" }),
    el("p", { class: "muted", text: "Closing a period fixes every balance as of its time, for good: a posting effective at or before it is refused afterwards." }),
    el("form", { id: "close-period-form", onsubmit: (e) => {
      e.preventDefault();
      const at = closesAtValue(closesAt.value);
      if (!at) { showError("Closes at: an RFC 3339 time such as 2025-01-31T23:59:59Z (without an offset: your time zone)."); return; }
      if (at !== keyFor) { key = crypto.randomUUID(); keyFor = at; }
      return busy(button, async () => {
        try {
          await api("POST", "/v1/admin/periods", { closes_at: at }, key);
          if (ctx.live()) run(auditView);
        } catch (err) { showError(err.message); }
      });
    } }, closesAt, button),
    table(["Id", "Closes at", "Closed at", { label: "Position", num: true }, { label: "Tree size", num: true }, "Root hash"],
      periods.map(p => {
        const head = p.tree_head || {};
        return el("tr", { "data-id": p.id },
          el("td", { class: "wrap" }, el("a", { href: `#/period/${p.id}`, class: "period-link", text: p.id })),
          el("td", {}, time(p.closes_at)), el("td", {}, time(p.closed_at)), el("td", { class: "num", text: p.position }),
          el("td", { class: "num", text: head.tree_size }), el("td", { class: "wrap hash", text: head.root_hash }));
      })));
}

// ---------- a closed period's balances ----------
async function period(ctx, id) {
  const page = cursor => api("GET", `/v1/admin/periods/${encodeURIComponent(id)}/balances?limit=50${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
  const rows = answer => answer.balances.map(b => el("tr", { "data-account": b.account_id }, accountCell(b.account_id),
    el("td", { text: b.currency }), el("td", { class: "num", text: money(b.balance, b.currency) })));
  const first = await page(null);
  const list = table(["Account", "Currency", { label: "Balance", num: true }], rows(first));
  // "More" adds the next page under this one (a closed period's balances never change).
  let cursor = first.next_cursor;
  const more = el("button", { id: "period-more", class: "secondary", type: "button", hidden: !cursor, text: "More",
    onclick: () => busy(more, async () => {
      try {
        const next = await page(cursor);
        $("tbody", list).append(...rows(next));
        cursor = next.next_cursor;
        more.hidden = !cursor;
      } catch (err) { showError(err.message); }
    }) });
  ctx.page("Period",
    el("section", { id: "period-balances" }, el("h2", { text: "Balances at the close" }),
      el("p", { class: "muted" }, "Every account of the ledger (system accounts included), with its balance effective at the period's close. ",
        el("a", { href: "#/audit", text: "All periods" })),
      list, el("p", {}, more)));
}

// ---------- routing ----------
// A view renders only while its route is still the one shown: an answer that arrives
// after the operator moved on is dropped, never drawn over the new page.
async function run(view) {
  clearTimeout(refreshTimer);
  const hash = location.hash;
  const ctx = {
    live: () => location.hash === hash,
    page: (...args) => { if (location.hash === hash) render(...args); },
  };
  try { await view(ctx); } catch (err) {
    if (err.status === 401) { sessionStorage.clear(); signIn(); showError("The token is no longer accepted; sign in again."); return; }
    showError(err.message);
  }
}

// The ledger picker: the directory's ledgers when this token may list them (operator,
// admin), else a name typed in; choosing one shows the same view in that ledger.
async function fillLedgers() {
  const picker = $("#ledger");
  picker.value = ledger();
  $("#ledger-now").textContent = ledger();
  if (fillLedgers.done) return;
  fillLedgers.done = true;
  try {
    const list = await api("GET", "/v1/admin/ledgers");
    $("#ledger-names").replaceChildren(...list.ledgers.map(l => el("option", { value: l.name, text: `${l.name} (${l.shard})` })));
  } catch (_) { /* a token that may not list them types the name */ }
}

function pickLedger(event) {
  event.preventDefault();
  const name = $("#ledger").value.trim();
  if (!isLedgerName(name)) { showError("A ledger name is 1–63 characters of a–z, 0–9 and -, starting with a letter."); return; }
  sessionStorage.setItem(LEDGER_KEY, name);
  // Ids of one ledger mean nothing in another: back to the ledger's first page.
  const first = isOperator() ? "#/overview" : "#/accounts";
  if (location.hash === first) route(); else location.hash = first;
}

function route() {
  $("#error").hidden = true;
  if (!token()) { signIn(); return; }
  const nav = $("#nav");
  nav.hidden = false;
  fillLedgers();
  for (const a of nav.querySelectorAll("a")) {
    a.hidden = a.dataset.role === "operator" && !isOperator();
    a.classList.toggle("active", location.hash.startsWith(a.getAttribute("href")));
  }
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(p => { try { return decodeURIComponent(p); } catch (_) { return ""; } });
  // Ids and cursors in a link are checked before they go into an API path.
  const idRoutes = ["account", "transaction", "stream", "period"];
  if ((idRoutes.includes(parts[0]) && !isUuid(parts[1])) || (parts[0] === "reconciliations" && parts[1] && !isUuid(parts[1]))
      || (parts[2] === "before" && !/^[0-9]+$/.test(parts[3] || ""))) {
    location.hash = isOperator() ? "#/overview" : "#/accounts";
    return;
  }
  const operatorOnly = ["overview", "dead-letters", "reconciliations", "webhooks", "audit", "period"];
  if (operatorOnly.includes(parts[0]) && !isOperator()) { location.hash = "#/accounts"; return; }
  switch (parts[0]) {
    case "overview": return run(overview);
    case "account": return run(c => account(c, parts[1], parts[2] === "before" ? parts[3] : null));
    case "transaction": case "stream": return run(c => transaction(c, parts[1]));
    case "dead-letters": return run(deadLetters);
    case "reconciliations": return run(c => reconciliations(c, parts[1]));
    case "webhooks": return run(c => webhooks(c, null));
    case "verify": return run(verify);
    case "audit": return run(auditView);
    case "period": return run(c => period(c, parts[1]));
    case "accounts": return run(accounts);
    default: location.hash = isOperator() ? "#/overview" : "#/accounts";
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  $("#sign-out").addEventListener("click", () => { sessionStorage.clear(); fillLedgers.done = false; location.hash = ""; signIn(); });
  $("#ledger-form").addEventListener("submit", pickLedger);
  route();
});
