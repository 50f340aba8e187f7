// The operations page. Every call carries the token as a bearer header (no
// cookie, no CSRF surface); the token lives only in this tab's
// sessionStorage. Tenant data is only ever put into the page as text.
"use strict";

const TOKEN_KEY = "sluice-token";
const REFRESH_MS = 2000;
const CHANNELS_PER_PAGE = 25;
const LETTERS_PER_PAGE = 50;

const state = {
  channelPage: 0,
  letterPages: [],      // the `before` id of each page opened, newest first
  letterBefore: null,
  openLetter: null,
  isTenant: true,
  session: 0,
  confirming: null,     // "kind:name" of the entry whose delete asks to be confirmed
  timer: null,
  generation: 0,
  firstPaint: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${token()}`, ...(options.headers || {}) },
    cache: "no-store",
  });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (response.status === 401) {
    signOut("That token is not valid here.");
    throw new Error("unauthorized");
  }
  if (!response.ok) {
    let message = body && body.message ? body.message : `${response.status}`;
    if (body && body.path) message += ` (at ${body.path})`;
    const error = new Error(message);
    error.code = body && body.code;
    throw error;
  }
  return body;
}

function say(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.className = isError ? "error" : "";
}

// ---- sign in -------------------------------------------------------------

function takeTokenFromFragment() {
  const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function signOut(reason = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(state.timer);
  $("board").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("who").textContent = "";
  $("sign-in-error").textContent = reason;
  // Nothing of the last tenant's stays on the page, nor arrives after.
  state.session += 1;
  $("story").hidden = true;
  $("timeline").replaceChildren();
  $("find-results").hidden = true;
  $("find-results").tBodies[0].replaceChildren();
  $("find-error").textContent = "";
}

async function start() {
  if (!token()) {
    signOut();
    return;
  }
  $("sign-in").hidden = true;
  $("board").hidden = false;
  $("sign-out").hidden = false;
  state.firstPaint = performance.now();
  await refresh();
}

// ---- channels ------------------------------------------------------------

function sparkline(minutes) {
  const width = 180, height = 36;
  const series = [
    ["in", minutes.map((m) => m.in)],
    ["delivered", minutes.map((m) => m.delivered)],
    ["failed", minutes.map((m) => m.rejected + m.faulted)],
  ];
  const top = Math.max(1, ...series.flatMap(([, values]) => values));
  const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "spark", role: "img" });
  for (const [name, values] of series) {
    const step = width / Math.max(1, values.length - 1);
    const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / top) * (height - 4)).toFixed(1)}`);
    chart.append(svg("polyline", { points: points.join(" "), class: `line-${name}` }));
  }
  const total = (pick) => minutes.reduce((sum, m) => sum + pick(m), 0);
  const title = svg("title");
  title.textContent = `last hour: ${total((m) => m.in)} in, ${total((m) => m.emitted)} emitted, ` +
    `${total((m) => m.delivered)} delivered, ${total((m) => m.rejected)} rejected, ` +
    `${total((m) => m.faulted)} faulted, ${total((m) => m["dead-lettered"])} dead-lettered, ` +
    `${total((m) => m.superseded ?? 0)} superseded, ${total((m) => m.unchanged ?? 0)} unchanged`;
  chart.append(title);
  return chart;
}

// What `coalesce` and `skip-unchanged` spared the destination in the last hour.
function notSent(minutes) {
  const sum = (field) => minutes.reduce((total, m) => total + (m[field] ?? 0), 0);
  return `${sum("superseded")} / ${sum("unchanged")}`;
}

function latency(minutes) {
  const recent = [...minutes].reverse().find((m) => m["latency-p50-ms"] != null);
  return recent ? `≤${recent["latency-p50-ms"]} / ≤${recent["latency-p99-ms"]} ms` : "–";
}

async function switchChannel(channel, on) {
  try {
    await api(`/v1/channels/${encodeURIComponent(channel.name)}/${on ? "enable" : "disable"}`, { method: "POST" });
    say(`${channel.name} switched ${on ? "on" : "off"}`);
  } catch (err) {
    say(`cannot switch ${channel.name}: ${err.message}`, true);
  }
  await refresh();
}

async function renderChannels(channels) {
  $("channel-count").textContent = `(${channels.length})`;
  const pages = Math.max(1, Math.ceil(channels.length / CHANNELS_PER_PAGE));
  state.channelPage = Math.min(state.channelPage, pages - 1);
  const shown = channels.slice(state.channelPage * CHANNELS_PER_PAGE, (state.channelPage + 1) * CHANNELS_PER_PAGE);
  const histories = await Promise.all(shown.map((c) =>
    api(`/v1/channels/${encodeURIComponent(c.name)}/history?minutes=60`).catch(() => ({ minutes: [] }))));
  const rows = shown.map((channel, i) => {
    const on = channel.enabled;
    const toggle = el("button", {
      type: "button",
      class: on ? "switch on" : "switch off",
      "data-channel": channel.name,
      "data-action": "switch",
      onclick: () => switchChannel(channel, !on),
    }, on ? "ON" : "OFF");
    const minutes = histories[i].minutes || [];
    return el("tr", { "data-channel": channel.name },
      el("td", {}, channel.name),
      el("td", {}, channel.tenant),
      el("td", {}, toggle),
      el("td", { class: "modules" }, (channel.modules || []).join(" → ")),
      el("td", { class: "num", "data-field": "transform" }, channel.queued.transform),
      el("td", { class: "num", "data-field": "delivery" }, channel.queued.delivery),
      el("td", { class: "num" }, channel["dead-letters"] ?? ""),
      el("td", { class: channel["circuit-breaker"] ? "tripped" : "" }, channel["circuit-breaker"] || "closed"),
      el("td", {}, sparkline(minutes)),
      el("td", {}, latency(minutes)));
  });
  $("channels").tBodies[0].replaceChildren(...rows);
  const pager = $("channel-pager");
  pager.replaceChildren();
  if (pages > 1) {
    pager.append(
      el("button", { type: "button", disabled: state.channelPage === 0, onclick: () => { state.channelPage--; refresh(); } }, "Previous"),
      el("span", {}, ` page ${state.channelPage + 1} of ${pages} `),
      el("button", { type: "button", disabled: state.channelPage >= pages - 1, onclick: () => { state.channelPage++; refresh(); } }, "Next"));
  }
  const select = $("dl-channel");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "all"),
    ...channels.map((c) => el("option", { value: c.name, selected: c.name === chosen }, c.name)));
}

function renderDestinations(destinations) {
  const when = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "–");
  $("destinations").tBodies[0].replaceChildren(...destinations.map((d) => {
    const error = d["last-error"];
    return el("tr", {},
      el("td", {}, d.name),
      el("td", {}, d.channels.join(", ")),
      el("td", {}, d["rate-limit"] ? `${d["rate-limit"]} (burst ${d.burst})` : "none"),
      el("td", { class: "num" }, d["in-flight"]),
      el("td", { class: "num" }, d["retry-backlog"]),
      el("td", {}, when(d["paused-until"])),
      el("td", { class: "snippet" }, error ? `${when(error.at_ms)} ${error.status ?? "no answer"}: ${error.detail}` : "–"),
      el("td", {}, sparkline(d.history || [])),
      el("td", { class: "num", "data-field": "not-sent" }, notSent(d.history || [])),
      el("td", {}, latency(d.history || [])));
  }));
}

// ---- dead letters --------------------------------------------------------

async function loadLetters() {
  const query = new URLSearchParams({ limit: String(LETTERS_PER_PAGE) });
  if ($("dl-channel").value) query.set("channel", $("dl-channel").value);
  if (state.letterBefore != null) query.set("before", String(state.letterBefore));
  const letters = await api(`/v1/dead-letters?${query}`);
  const search = $("dl-search").value.trim();
  const shown = search ? letters.filter((l) => l.event_id.includes(search)) : letters;
  $("dead-letters").tBodies[0].replaceChildren(...shown.map((letter) => el("tr", {
    class: "clickable",
    "data-letter": String(letter.id),
    "data-event": letter.event_id,
    onclick: () => openLetter(letter.id),
  },
  el("td", { class: "num" }, letter.id),
  el("td", {}, new Date(letter.created_ms).toLocaleString()),
  el("td", {}, letter.channel),
  el("td", {}, letter.event_id),
  el("td", {}, letter.stage),
  el("td", {}, letter.reason))));
  $("dl-older").disabled = letters.length < LETTERS_PER_PAGE;
  $("dl-older").onclick = () => {
    state.letterPages.push(state.letterBefore);
    state.letterBefore = letters[letters.length - 1].id;
    loadLetters();
  };
  $("dl-newer").disabled = state.letterPages.length === 0;
  $("dl-newer").onclick = () => {
    state.letterBefore = state.letterPages.pop() ?? null;
    loadLetters();
  };
}

// A member name escaped as RFC 9535 normalized paths write it (and as the
// server names violations).
function escapeName(name) {
  const named = { "'": "\\'", "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t" };
  return [...name].map((c) => named[c] ?? (c.charCodeAt(0) < 0x20 ? `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}` : c)).join("");
}

// Bounds of drawing a tenant's value: past this depth, this many drawn
// nodes, or a path this long, the rest shows as compact text of at most
// TEXT_BYTES. A hostile letter (a payload 10,000 levels deep, a member
// name of megabytes, a violation path of megabytes) must neither overflow
// the stack nor freeze the page.
const TREE_DEPTH = 100;
const TREE_NODES = 20000;
const TREE_PATH_BYTES = 8192;
const TREE_PATHS_TOTAL = 4 << 20;
const TEXT_BYTES = 65536;

// A piece of JSON syntax in compactJson's work list.
class Syntax {
  constructor(text) { this.text = text; }
}

// A value as compact JSON text, cut after `limit` characters, without
// recursion (JSON.stringify overflows on deep values).
function compactJson(value, limit = TEXT_BYTES) {
  const out = [];
  let size = 0;
  const work = [value];
  while (work.length) {
    if (size > limit) {
      out.push("…");
      break;
    }
    const item = work.pop();
    let text;
    if (item instanceof Syntax) {
      text = item.text;
    } else if (Array.isArray(item)) {
      work.push(new Syntax("]"));
      for (let i = item.length - 1; i >= 0; i--) {
        work.push(item[i]);
        if (i > 0) work.push(new Syntax(","));
      }
      text = "[";
    } else if (item && typeof item === "object") {
      const keys = Object.keys(item);
      work.push(new Syntax("}"));
      for (let i = keys.length - 1; i >= 0; i--) {
        work.push(item[keys[i]], new Syntax(`${JSON.stringify(keys[i])}:`));
        if (i > 0) work.push(new Syntax(","));
      }
      text = "{";
    } else {
      text = JSON.stringify(item) ?? "null";
    }
    const room = limit - size + 1;
    out.push(text.length > room ? text.slice(0, room) : text);
    size += text.length;
  }
  return out.join("");
}

// A path or message cut for showing (the full text stays in the letter).
function shortText(text, limit = 512) {
  return text.length > limit ? `${text.slice(0, limit)}… (${text.length} characters)` : text;
}

// A JSON value as nested spans, each carrying its JSON path
// (`$['a'][0]`, as violations name them) and listed in `drawn.index`;
// tenant data only as text.
function jsonTree(value, path, marks, drawn, depth = 0) {
  const node = el("span", { class: "node", "data-path": path });
  drawn.index.set(path, node);
  drawn.nodes += 1;
  drawn.pathBytes += path.length;
  if (marks.has(path)) {
    node.classList.add("violation");
    node.title = shortText(marks.get(path));
  }
  const container = value && typeof value === "object";
  if (container && (depth >= TREE_DEPTH || path.length > TREE_PATH_BYTES)) {
    node.classList.add("cut");
    node.append(compactJson(value));
    return node;
  }
  const pad = (d) => "\n" + "  ".repeat(d);
  const more = (left) => el("span", { class: "cut" }, `… ${left} more`);
  if (Array.isArray(value)) {
    node.append("[");
    for (let i = 0; i < value.length; i++) {
      if (drawn.nodes >= TREE_NODES || drawn.pathBytes >= TREE_PATHS_TOTAL) {
        node.append(pad(depth + 1), more(value.length - i));
        break;
      }
      node.append(pad(depth + 1), jsonTree(value[i], `${path}[${i}]`, marks, drawn, depth + 1), i < value.length - 1 ? "," : "");
    }
    node.append(value.length ? pad(depth) + "]" : "]");
  } else if (container) {
    const keys = Object.keys(value);
    node.append("{");
    for (let i = 0; i < keys.length; i++) {
      if (drawn.nodes >= TREE_NODES || drawn.pathBytes >= TREE_PATHS_TOTAL) {
        node.append(pad(depth + 1), more(keys.length - i));
        break;
      }
      const key = keys[i];
      const childPath = `${path}['${escapeName(key)}']`;
      node.append(pad(depth + 1), el("span", { class: "key" }, shortText(JSON.stringify(key), TEXT_BYTES)), ": ",
        jsonTree(value[key], childPath, marks, drawn, depth + 1), i < keys.length - 1 ? "," : "");
    }
    node.append(keys.length ? pad(depth) + "}" : "}");
  } else {
    node.append(shortText(JSON.stringify(value) ?? "null", TEXT_BYTES));
  }
  return node;
}

// The nearest drawn parent of a normalized path, found from one pass over
// the path's steps and one lookup per parent; a path longer than any drawn
// one, or not in normalized form, has none.
function nearestDrawn(path, index) {
  if (!path.startsWith("$") || path.length > TREE_PATH_BYTES * 2) return null;
  const step = /\['(?:[^'\\]|\\.)*'\]|\[\d+\]/y;
  step.lastIndex = 1;
  // Shortest first: what is drawn is closed under parents, so the first
  // prefix not drawn ends the search (at most TREE_DEPTH lookups).
  let found = null;
  while (step.lastIndex < path.length) {
    if (!step.exec(path)) return found;
    const node = index.get(path.slice(0, step.lastIndex));
    if (!node) return found;
    found = node;
  }
  return found;
}

function showJson(target, value, marks) {
  const drawn = { nodes: 0, pathBytes: 0, index: new Map() };
  target.replaceChildren(jsonTree(value, "$", marks, drawn));
  // Paths a violation names but the payload lacks mark their nearest
  // parent; a path not in normalized form (`$.items[*].w`, or any text a
  // module sent) marks the whole payload.
  for (const [path, message] of marks) {
    if (drawn.index.has(path)) continue;
    const found = nearestDrawn(path, drawn.index) || drawn.index.get("$");
    if (found) {
      found.classList.add("violation-missing");
      found.title = `${shortText(path)}: ${shortText(message)}`;
    }
  }
}

async function openLetter(id) {
  let letter;
  try {
    letter = await api(`/v1/dead-letters/${id}`);
  } catch (err) {
    say(`cannot open dead letter ${id}: ${err.message}`, true);
    return;
  }
  state.openLetter = letter;
  $("dl-detail").hidden = false;
  $("dl-title").textContent = `Dead letter ${letter.id}: ${letter.event_id} on ${letter.channel} (${letter.stage}, ${letter.reason})`;
  const violations = Array.isArray(letter.detail) ? letter.detail : [];
  // A violation's path points into the payload its step received: the
  // original's only for a one-step pipeline and the event itself (not a
  // fan-out child).
  const onOriginal = (v) => (letter.versions || []).length <= 1 && (!v.event || v.event === letter.event_id);
  const marks = new Map(violations.slice(0, 200).filter((v) => v && typeof v.path === "string" && onOriginal(v))
    .map((v) => [v.path, v.message || v.code || ""]));
  $("dl-violations").replaceChildren(...(violations.length
    ? violations.slice(0, 200).map((v) => el("li", {}, el("code", {}, shortText(String(v.path || ""))), ` ${shortText(String(v.message || ""))} `, el("span", { class: "code" }, shortText(String(v.code || "")))))
    : [el("li", {}, letter.detail == null ? "–" : typeof letter.detail === "string" ? shortText(letter.detail, TEXT_BYTES) : compactJson(letter.detail))]));
  const original = letter.original && typeof letter.original === "object" ? letter.original.payload ?? letter.original : letter.original;
  showJson($("dl-original"), original, marks);
  showJson($("dl-output"), letter.output ?? null, new Map());
  $("dl-attempts").tBodies[0].replaceChildren(...(letter.attempts || []).map((a) => el("tr", {},
    el("td", {}, new Date(a.at_ms).toLocaleString()),
    el("td", {}, a.status ?? "no answer"),
    el("td", { class: "snippet" }, a.detail))));
  $("dl-replay").disabled = letter.output == null;
}

async function letterAction(what) {
  const letter = state.openLetter;
  if (!letter) return;
  const path = what === "purge" ? `/v1/dead-letters/${letter.id}` :
    `/v1/dead-letters/${letter.id}/replay${what === "retransform" ? "?retransform=true" : ""}`;
  try {
    await api(path, { method: what === "purge" ? "DELETE" : "POST" });
    say(`dead letter ${letter.id}: ${what === "purge" ? "purged" : what === "retransform" ? "replayed with re-transform" : "replayed"}`);
    $("dl-detail").hidden = true;
    state.openLetter = null;
  } catch (err) {
    say(`dead letter ${letter.id}: ${err.message}`, true);
  }
  await refresh();
}

// ---- modules -------------------------------------------------------------

async function renderModules(channels, isTenant) {
  const target = $("modules");
  if (!isTenant) {
    target.replaceChildren(el("p", { class: "hint" }, "Modules belong to tenants: sign in with a tenant's token to see and activate them."));
    return;
  }
  const modules = await api("/v1/modules");
  const byName = new Map();
  for (const m of modules) byName.set(m.name, [...(byName.get(m.name) || []), m]);
  const list = el("ul", {}, ...[...byName].map(([name, versions]) => el("li", {}, el("strong", {}, name), " ",
    ...versions.map((v) => el("code", { title: `${v.size} bytes, ${new Date(v.created_ms).toLocaleString()}` }, v.version.slice(0, 12), " ")))));
  const forms = channels.map((channel) => {
    const spec = el("textarea", { rows: 3, cols: 70, "data-channel": channel.name });
    const latest = modules[modules.length - 1];
    spec.value = latest ? JSON.stringify({ steps: [{ module: latest.name, version: latest.version.slice(0, 12), config: {} }] }) : "";
    return el("div", { class: "activate" },
      el("h4", {}, channel.name, " ", el("span", { class: "modules" }, (channel.modules || []).join(" → "))),
      spec,
      el("button", { type: "button", onclick: () => activate(channel.name, spec.value) }, "Activate"),
      el("button", { type: "button", onclick: () => rollback(channel.name) }, "Roll back"));
  });
  target.replaceChildren(list, ...forms);
}

async function activate(channel, text) {
  try {
    await api(`/v1/channels/${encodeURIComponent(channel)}/activate`, { method: "POST", body: text });
    say(`${channel}: activated`);
  } catch (err) {
    say(`${channel}: ${err.message}`, true);
  }
  await refresh();
}

async function rollback(channel) {
  try {
    await api(`/v1/channels/${encodeURIComponent(channel)}/rollback`, { method: "POST" });
    say(`${channel}: rolled back`);
  } catch (err) {
    say(`${channel}: ${err.message}`, true);
  }
  await refresh();
}

// ---- the tenant's own destinations and channels ---------------------------

const TEMPLATES = {
  destination: {
    url: "the destination's URL, with {$.sku} where the SKU goes",
    method: "PUT",
    "rate-limit": "10/s",
    auth: { kind: "bearer", bearer: "paste the token here" },
  },
  channel: { destination: "", steps: [] },
};

function entryPath(kind, name) {
  return `/v1/${kind}s/${encodeURIComponent(name)}`;
}

function editEntry(kind, name, fields) {
  $("entry-kind").value = kind;
  $("entry-name").value = name;
  $("entry-name").readOnly = name !== "";
  $("entry-kind").disabled = name !== "";
  $("entry-title").textContent = name ? `Edit ${kind} ${name}` : `New ${kind}`;
  $("entry-body").value = JSON.stringify(fields, null, 2);
  $("entry-error").textContent = "";
}

async function openEntry(kind, name, channel) {
  try {
    let fields;
    if (kind === "destination") {
      fields = await api(entryPath(kind, name));
      delete fields.name;
      delete fields.origin;
    } else {
      fields = channel.entry;
    }
    editEntry(kind, name, fields);
    $("entry-body").focus();
  } catch (err) {
    say(`cannot open ${kind} ${name}: ${err.message}`, true);
  }
}

async function saveEntry() {
  const kind = $("entry-kind").value;
  const name = $("entry-name").value.trim();
  let text = $("entry-body").value;
  try {
    JSON.parse(text);
  } catch (err) {
    $("entry-error").textContent = `not JSON: ${err.message}`;
    return;
  }
  try {
    await api(entryPath(kind, name), { method: "PUT", body: text, headers: { "Content-Type": "application/json" } });
    $("entry-error").textContent = "";
    say(`${kind} ${name} saved`);
    // Read back as stored: a secret just typed in is not shown again.
    const channel = kind === "channel" ? { entry: JSON.parse(text) } : null;
    await openEntry(kind, name, channel);
  } catch (err) {
    $("entry-error").textContent = `${kind} ${name}: ${err.message}`;
  }
  await refresh();
}

async function deleteEntry(kind, name) {
  const discard = kind === "channel" && $("entry-discard").checked ? "?discard=true" : "";
  try {
    await api(entryPath(kind, name) + discard, { method: "DELETE" });
    say(`${kind} ${name} deleted`);
  } catch (err) {
    say(`cannot delete ${kind} ${name}: ${err.message}`, true);
  }
  state.confirming = null;
  await refresh();
}

function renderSetup(channels, destinations, isTenant) {
  $("entry-form").hidden = !isTenant;
  $("setup-hint").textContent = isTenant
    ? "Entries from sluice.toml are the operator's and read-only; yours take effect at once."
    : "Destinations and channels belong to tenants: sign in with a tenant's token to make and edit them.";
  const rows = [];
  const add = (kind, name, origin, where, channel) => {
    const key = `${kind}:${name}`;
    const actions = el("td", {});
    if (origin === "api" && isTenant) {
      actions.append(
        el("button", { type: "button", "data-action": "edit", onclick: () => openEntry(kind, name, channel) }, "Edit"),
        " ",
        state.confirming === key
          ? el("button", { type: "button", class: "danger", "data-action": "confirm-delete", onclick: () => deleteEntry(kind, name) }, "Confirm delete")
          : el("button", { type: "button", class: "danger", "data-action": "delete", onclick: () => { state.confirming = key; refresh(); } }, "Delete"));
    }
    rows.push(el("tr", { "data-entry": key },
      el("td", {}, kind), el("td", {}, name), el("td", {}, origin), el("td", { class: "where" }, where), actions));
  };
  for (const d of destinations) add("destination", d.name, d.origin, `${d.method || "POST"} · ${d.channels.length} channels`, null);
  for (const c of channels) add("channel", c.name, c.origin, `→ ${c.destination ?? "–"}`, c);
  $("own-entries").tBodies[0].replaceChildren(...rows);
}

// ---- the loop ------------------------------------------------------------

// ---- find an event ------------------------------------------------------

// Most timeline entries drawn, and most characters of one body shown.
const STORY_ENTRIES = 500;

function tenantQuery(prefix) {
  const tenant = state.isTenant ? "" : $("find-tenant").value.trim();
  return tenant ? `${prefix}tenant=${encodeURIComponent(tenant)}` : "";
}

async function findEvent() {
  const query = $("find-query").value.trim();
  $("find-error").textContent = "";
  $("find-results").hidden = true;
  if (!query) return;
  // An event id first; else the newest events of that entity key.
  try {
    await openStory(query);
    return;
  } catch (err) {
    if (err.code !== "unknown-event") {
      $("find-error").textContent = err.message;
      return;
    }
  }
  let found;
  const session = state.session;
  try {
    found = await api(`/v1/events?entity=${encodeURIComponent(query)}${tenantQuery("&")}`);
  } catch (err) {
    $("find-error").textContent = err.message;
    return;
  }
  if (session !== state.session) return;
  const events = (found && found.events) || [];
  $("story").hidden = true;
  if (!events.length) {
    $("find-error").textContent = `no event ${query}, and no event of entity key ${query}`;
    return;
  }
  $("find-results").hidden = false;
  $("find-results").tBodies[0].replaceChildren(...events.map((e) => {
    const row = el("tr", { class: "clickable", "data-event": String(e.event_id) },
      el("td", {}, shortText(String(e.event_id))),
      el("td", {}, shortText(String(e.channel ?? ""))),
      el("td", {}, new Date(e.at_ms).toLocaleString()),
      el("td", {}, String(e.latest)));
    row.addEventListener("click", () => openStory(e.event_id).catch((err) => { $("find-error").textContent = err.message; }));
    return row;
  }));
}

function headerLines(headers) {
  return (Array.isArray(headers) ? headers : []).map((h) => `${h[0]}: ${h[1]}`).join("\n");
}

function bodyText(body) {
  if (!body || typeof body.text !== "string") return "";
  let text = body.text;
  try { text = JSON.stringify(JSON.parse(text), null, 2); } catch { /* shown as sent */ }
  if (body.truncated) text += `\n… cut (${body.bytes_seen} bytes seen)`;
  return shortText(text, TEXT_BYTES);
}

function exchangePane(title, lines) {
  return el("div", {}, el("h5", {}, title), el("pre", {}, lines.filter((l) => l !== "").join("\n\n")));
}

function timelineEntry(entry) {
  const d = entry.detail || {};
  let summary = "";
  let kindClass = "";
  switch (entry.kind) {
    case "accepted": summary = d.duplicate ? "a duplicate of one already stored" : ""; break;
    case "transformed":
      summary = `${d.outcome} by ${(d.versions || []).join(" → ")}`;
      kindClass = d.outcome === "reject" || d.outcome === "error" ? "failed" : "ok";
      break;
    case "queued": summary = `for ${d.destination}, entity ${entry.entity_key ?? ""}`; break;
    case "attempt":
      summary = `#${d.attempt} to ${d.destination}: ${d.status ?? "no answer"} (${d.result}) in ${d.elapsed_ms} ms`;
      kindClass = d.result === "delivered" ? "ok" : "failed";
      break;
    case "dead-lettered": summary = `${d.reason}`; kindClass = "failed"; break;
    default: summary = d.destination ? `at ${d.destination}` : "";
  }
  const item = el("li", { "data-kind": entry.kind },
    el("span", { class: "when" }, new Date(entry.at_ms).toLocaleString()),
    el("span", { class: `kind ${kindClass}` }, entry.kind),
    entry.channel ? el("span", { class: "modules" }, `${entry.channel} `) : "",
    shortText(summary));
  if (entry.kind === "transformed") {
    const shown = d.violations ?? d.fault ?? d.deliveries ?? d.events;
    if (shown != null) item.append(el("pre", { class: "json" }, compactJson(shown)));
  }
  if (entry.kind === "attempt") {
    const request = d.request || {};
    const response = d.response || {};
    item.append(el("div", { class: "exchange" },
      exchangePane("Request", [`${request.method ?? ""} ${request.url ?? ""}`, headerLines(request.headers), bodyText(request.body)]),
      exchangePane("Response", [d.response ? `${response.status}` : String(d.error ?? "no answer"), headerLines(response.headers), bodyText(response.body)])));
  }
  return item;
}

async function openStory(id) {
  const session = state.session;
  const story = await api(`/v1/events/${encodeURIComponent(id)}${tenantQuery("?")}`);
  // Signed out (or in as another) while it was asked: not drawn.
  if (session !== state.session) return;
  $("story").hidden = false;
  $("story-title").textContent = `Event ${story.event_id} of ${story.tenant}`;
  const now = Object.entries(story.now || {}).map(([channel, where]) => `${channel}: ${where}`).join(", ");
  $("story-now").textContent = now ? `Now: ${now}` : "Now: waiting for its transform";
  $("story").dataset.event = String(story.event_id);
  $("timeline").replaceChildren(...(story.entries || []).slice(-STORY_ENTRIES).map(timelineEntry));
}

let modulesShownFor = null;

async function refresh() {
  clearTimeout(state.timer);
  if (!token()) return;
  // Only the newest refresh schedules the next one: a click that refreshes
  // at once never leaves two loops running.
  const generation = ++state.generation;
  try {
    const [who, channels, destinations] = await Promise.all([api("/v1/whoami"), api("/v1/channels"), api("/v1/destinations")]);
    const isTenant = who.tenant != null;
    state.isTenant = isTenant;
    $("find-tenant-label").hidden = isTenant;
    $("who").textContent = `signed in: ${isTenant ? `tenant ${who.tenant}` : "admin"}`;
    await renderChannels(channels);
    renderDestinations(destinations);
    renderSetup(channels, destinations, isTenant);
    await loadLetters();
    const key = JSON.stringify(channels.map((c) => [c.name, c.modules]));
    if (modulesShownFor !== key) {
      modulesShownFor = key;
      await renderModules(channels, isTenant);
    }
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    if (state.firstPaint != null) {
      document.body.dataset.firstPaintMs = String(Math.round(performance.now() - state.firstPaint));
      state.firstPaint = null;
    }
    document.body.dataset.ready = "true";
  } catch (err) {
    if (err.message !== "unauthorized") say(`cannot refresh: ${err.message}`, true);
  }
  if (token() && generation === state.generation) state.timer = setTimeout(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromFragment();
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    start();
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("dl-filter").addEventListener("submit", (event) => event.preventDefault());
  $("find-form").addEventListener("submit", (event) => { event.preventDefault(); findEvent(); });
  $("dl-channel").addEventListener("change", () => { state.letterPages = []; state.letterBefore = null; loadLetters(); });
  $("dl-search").addEventListener("input", () => loadLetters());
  $("dl-replay").addEventListener("click", () => letterAction("replay"));
  $("dl-retransform").addEventListener("click", () => letterAction("retransform"));
  $("dl-purge").addEventListener("click", () => letterAction("purge"));
  $("dl-close").addEventListener("click", () => { $("dl-detail").hidden = true; state.openLetter = null; });
  $("entry-form").addEventListener("submit", (event) => { event.preventDefault(); saveEntry(); });
  $("entry-new").addEventListener("click", () => editEntry($("entry-kind").value, "", TEMPLATES[$("entry-kind").value]));
  $("entry-kind").addEventListener("change", () => {
    if (!$("entry-name").readOnly) editEntry($("entry-kind").value, "", TEMPLATES[$("entry-kind").value]);
  });
  editEntry("destination", "", TEMPLATES.destination);
  start();
});
