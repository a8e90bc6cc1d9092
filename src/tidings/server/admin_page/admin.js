// The Tidings admin page: asks for the admin key, then follows the server's
// snapshots (GET /admin/api/events, Server-Sent Events read through fetch so
// that the key travels in a header, never in a URL).

const KEY = "tidings.admin.key";
const POINTS = 120; // two minutes of one-second snapshots
const $ = (id) => document.getElementById(id);

let key = sessionStorage.getItem(KEY);
let stream = null; // AbortController of the snapshot stream
let listed = -1; // connection total when the list was last loaded
const history = { publish: [], deliver: [] };

// -- requests -------------------------------------------------------------------------------

class Refused extends Error {}

async function call(path, options = {}) {
  const headers = { Authorization: `Admin ${key}`, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    throw new Refused("wrong admin key");
  }
  const body = await response.json();
  if (!response.ok) {
    throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
  }
  return body;
}

function status(text) {
  $("status").textContent = text;
}

function signOut(message) {
  if (stream) stream.abort();
  stream = null;
  key = null;
  listed = -1;
  sessionStorage.removeItem(KEY);
  $("dashboard").hidden = true;
  $("forget").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  status("Enter the admin key to start.");
}

async function signIn() {
  try {
    show(await call("admin/api/snapshot"));
  } catch (error) {
    signOut(error instanceof Refused ? "That is not the admin key." : String(error.message));
    return;
  }
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("forget").hidden = false;
  follow();
}

// -- the snapshot stream ----------------------------------------------------------------------

async function follow() {
  let delay = 1000;
  while (key) {
    const controller = new AbortController();
    stream = controller;
    try {
      const response = await fetch("admin/api/events", {
        headers: { Authorization: `Admin ${key}` },
        signal: controller.signal,
      });
      if (response.status === 401) {
        signOut("The admin key was refused.");
        return;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      status("Live.");
      delay = 1000;
      await readEvents(response.body, (event, data) => {
        if (event === "snapshot") show(JSON.parse(data));
      });
      status("The server ended the stream; reconnecting…");
    } catch (error) {
      if (controller.signal.aborted) return;
      status(`Disconnected (${error.message}); reconnecting…`);
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, data.join("\n"));
    }
  }
}

// -- showing a snapshot --------------------------------------------------------------------------

const number = new Intl.NumberFormat();

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function fill(tbody, rows, empty, columns) {
  tbody.replaceChildren();
  if (!rows.length) {
    const row = tbody.insertRow();
    const td = cell(row, empty, "muted");
    td.colSpan = columns;
    return;
  }
  for (const values of rows) {
    const row = tbody.insertRow();
    values.forEach(([text, className]) => cell(row, text, className));
  }
}

function show(snapshot) {
  const connections = snapshot.connections;
  $("connections-total").textContent = number.format(connections.total);
  $("connections-sse").textContent = number.format(connections.sse || 0);
  $("connections-ws").textContent = number.format(connections.ws || 0);
  $("subscriptions").textContent = number.format(snapshot.subscriptions);
  $("channels").textContent = number.format(snapshot.channels);
  $("publish-rate").textContent = number.format(snapshot.publish_rate);
  $("delivery-rate").textContent = number.format(snapshot.delivery_rate);
  $("outbox-bytes").textContent = number.format(snapshot.outbox_bytes);
  $("slow-disconnects").textContent = number.format(snapshot.slow_consumer_disconnects);
  $("dropped").textContent = number.format(snapshot.dropped);
  fill(
    $("top-subscribers"),
    snapshot.top_subscribers.map((c) => [[c.channel], [number.format(c.subscribers), "num"]]),
    "No channel has subscribers.",
    2,
  );
  fill(
    $("top-rates"),
    snapshot.top_rates.map((c) => [[c.channel], [number.format(c.rate), "num"]]),
    "No publishes on subscribed channels.",
    2,
  );
  fill(
    $("slow"),
    snapshot.slow.map((c) => [
      [c.id],
      [c.peer],
      [number.format(c.pending_bytes), "num"],
      [number.format(c.max_bytes), "num"],
    ]),
    "No connection is behind.",
    4,
  );
  showErrors(snapshot.errors);
  plot(snapshot.publish_rate, snapshot.delivery_rate);
  if (connections.total !== listed) {
    listed = connections.total; // one listing per change, even while it loads
    loadConnections();
  }
}

function showErrors(errors) {
  $("errors-total").textContent = number.format(errors.total);
  const list = $("errors");
  list.replaceChildren();
  for (const entry of errors.recent) {
    const item = document.createElement("li");
    const when = new Date(entry.time * 1000).toLocaleTimeString();
    const level = document.createElement("span");
    level.className = "level";
    level.textContent = entry.level;
    const text = document.createElement("code");
    text.textContent = entry.exception ? `${entry.message} (${entry.exception})` : entry.message;
    item.append(`${when} `, level, ` ${entry.logger}: `, text);
    list.append(item);
  }
}

// -- the chart: drawn on the canvas, no library ----------------------------------------------------

function plot(publishRate, deliveryRate) {
  history.publish.push(publishRate);
  history.deliver.push(deliveryRate);
  for (const series of Object.values(history)) {
    if (series.length > POINTS) series.shift();
  }
  draw();
}

function draw() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = Math.round(width / 4);
  if (canvas.width !== Math.round(width * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  const style = getComputedStyle(document.documentElement);
  const colour = (name) => style.getPropertyValue(name).trim();
  context.clearRect(0, 0, width, height);
  const peak = Math.max(1, ...history.publish, ...history.deliver);
  const top = 8;
  const bottom = height - 4;
  context.strokeStyle = colour("--grid");
  context.lineWidth = 1;
  for (const fraction of [0, 0.5, 1]) {
    const y = bottom - (bottom - top) * fraction;
    context.beginPath();
    context.moveTo(0, y);
    context.lineTo(width, y);
    context.stroke();
  }
  const step = width / (POINTS - 1);
  const line = (series, name, lineWidth) => {
    if (!series.length) return;
    context.strokeStyle = colour(name);
    context.lineWidth = lineWidth;
    context.beginPath();
    const offset = POINTS - series.length;
    series.forEach((value, index) => {
      const x = (offset + index) * step;
      const y = bottom - ((bottom - top) * value) / peak;
      if (index) context.lineTo(x, y);
      else context.moveTo(x, y);
    });
    context.stroke();
  };
  // Deliveries wider and underneath: with one subscriber per event the lines coincide.
  line(history.deliver, "--deliver", 5);
  line(history.publish, "--publish", 2);
  const publishNow = history.publish[history.publish.length - 1] || 0;
  const deliverNow = history.deliver[history.deliver.length - 1] || 0;
  $("chart-peak").textContent = number.format(peak);
  canvas.dataset.publishRate = String(publishNow);
  canvas.dataset.deliveryRate = String(deliverNow);
  canvas.setAttribute(
    "aria-label",
    `Chart of the last ${history.publish.length} seconds: now ${number.format(publishNow)} ` +
      `publishes and ${number.format(deliverNow)} deliveries per second, peak ${number.format(peak)}.`,
  );
}

// -- connections -----------------------------------------------------------------------------------

let nextPage = null;

async function loadConnections(more = false) {
  const query = more && nextPage ? `?cursor=${encodeURIComponent(nextPage)}` : "";
  let page;
  try {
    page = await call(`admin/api/connections${query}`);
  } catch (error) {
    if (error instanceof Refused) signOut("The admin key was refused.");
    else $("list-summary").textContent = `Could not list connections: ${error.message}`;
    return;
  }
  const tbody = $("connections");
  if (!more) tbody.replaceChildren();
  for (const connection of page.connections) {
    const row = tbody.insertRow();
    row.dataset.id = connection.id;
    cell(row, connection.id);
    cell(row, connection.transport);
    cell(row, connection.peer);
    const shown = connection.channels.join(", ");
    const hidden = connection.channel_count - connection.channels.length;
    cell(row, hidden > 0 ? `${shown} (+${hidden})` : shown);
    cell(row, `${number.format(connection.age)} s`, "num");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Disconnect";
    button.setAttribute("aria-label", `Disconnect ${connection.id}`);
    button.addEventListener("click", () => disconnect(connection.id, button));
    row.insertCell().append(button);
  }
  if (!tbody.rows.length) {
    const row = tbody.insertRow();
    cell(row, "No open connection.", "muted").colSpan = 6;
  }
  nextPage = page.next;
  $("more").hidden = !page.next;
  listed = page.total;
  $("list-summary").textContent = `${number.format(page.total)} open`;
}

async function disconnect(id, button) {
  button.disabled = true;
  try {
    await call(`admin/api/connections/${encodeURIComponent(id)}`, { method: "DELETE" });
    status(`Disconnected ${id}.`);
  } catch (error) {
    if (error instanceof Refused) return signOut("The admin key was refused.");
    status(`Could not disconnect ${id}: ${error.message}`);
  }
  loadConnections();
}

// -- publishing a test event -------------------------------------------------------------------

async function publishTest(event) {
  event.preventDefault();
  const channel = $("publish-channel").value.trim();
  const text = $("publish-data").value;
  const type = $("publish-event").value.trim() || "message";
  let body;
  try {
    body = { channel, data: JSON.parse(text), event: type };
  } catch {
    body = { channel, text, event: type };
  }
  try {
    const position = await call("admin/api/publish", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    $("publish-result").textContent = `Published ${channel} #${position.offset}.`;
  } catch (error) {
    if (error instanceof Refused) return signOut("The admin key was refused.");
    $("publish-result").textContent = `Not published: ${error.message}`;
  }
}

// -- wiring ---------------------------------------------------------------------------------------

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  key = $("key").value.trim();
  $("key").value = "";
  if (!key) return;
  sessionStorage.setItem(KEY, key);
  $("login-error").textContent = "";
  signIn();
});
$("forget").addEventListener("click", () => signOut());
$("refresh").addEventListener("click", () => loadConnections());
$("more").addEventListener("click", () => loadConnections(true));
$("publish").addEventListener("submit", publishTest);
window.addEventListener("resize", draw);
if (key) signIn();
