// Tidings browser client: an ES module, no build step.
//
//   import { TidingsEventSource } from "/static/tidings.js";
//   const source = new TidingsEventSource("/sse", ["chat", "news"]);
//   source.addEventListener("message", (e) => console.log(e.channel, e.offset, e.data));
//   source.addEventListener("reset", (e) => console.warn("gap in", e.channel, e.reason));
//   source.addEventListener("statechange", () => console.log(source.state));
//
// It wraps the browser's EventSource, which reconnects by itself and sends the
// last `id:` (the connection's cursor) as Last-Event-ID, so the server replays
// exactly what was missed. Each event carries the channel and offset read from
// its cursor, and `data` parsed as JSON when it is JSON.

/** Parse the first entry of a cursor ("channel:epoch:offset,…"). */
export function cursorHead(id) {
  if (!id) return { channel: null, epoch: null, offset: null };
  const entry = id.split(",", 1)[0];
  const last = entry.lastIndexOf(":");
  const middle = entry.lastIndexOf(":", last - 1);
  if (last < 0 || middle < 0) return { channel: null, epoch: null, offset: null };
  return {
    channel: entry.slice(0, middle),
    epoch: entry.slice(middle + 1, last),
    offset: Number(entry.slice(last + 1)),
  };
}

function parseData(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** An event of a Tidings stream. */
export class TidingsEvent extends Event {
  constructor(type, message) {
    super(type);
    const head = cursorHead(message.lastEventId);
    this.id = message.lastEventId;
    this.raw = message.data;
    this.data = parseData(message.data);
    this.channel = head.channel;
    this.epoch = head.epoch;
    this.offset = head.offset;
    if (type === "reset" && this.data && typeof this.data === "object") {
      this.channel = this.data.channel;
      this.epoch = this.data.epoch;
      this.offset = this.data.offset;
      this.reason = this.data.reason;
    }
  }
}

/**
 * Server-Sent Events from a Tidings server, with channel-aware events.
 *
 * states: "connecting" → "open" → ("reconnecting" → "open")* → "closed".
 * Listen to any event type with addEventListener(type, handler): "message"
 * for the default type, "reset" for gaps the server could not fill,
 * "statechange", "error", or your own event types.
 */
export class TidingsEventSource extends EventTarget {
  constructor(url, channels = [], { lastEventId = null, withCredentials = false } = {}) {
    super();
    const target = new URL(url, window.location.href);
    for (const channel of channels) target.searchParams.append("channel", channel);
    if (lastEventId) target.searchParams.set("last_event_id", lastEventId);
    this.url = target.toString();
    this.state = "connecting";
    this._forwarded = new Set();
    this._source = new EventSource(this.url, { withCredentials });
    this._source.addEventListener("open", () => this._setState("open"));
    this._source.addEventListener("error", () => {
      const closed = this._source.readyState === EventSource.CLOSED;
      this._setState(closed ? "closed" : "reconnecting");
      this.dispatchEvent(new Event("error"));
    });
    for (const type of ["message", "reset"]) this._forward(type);
  }

  /** The cursor of the last event received: pass it as lastEventId to resume later. */
  get lastEventId() {
    return this._lastEventId ?? null;
  }

  addEventListener(type, listener, options) {
    if (!["statechange", "error", "open"].includes(type)) this._forward(type);
    super.addEventListener(type, listener, options);
  }

  close() {
    this._source.close();
    this._setState("closed");
  }

  _forward(type) {
    if (this._forwarded.has(type)) return;
    this._forwarded.add(type);
    this._source.addEventListener(type, (message) => {
      this._lastEventId = message.lastEventId;
      this.dispatchEvent(new TidingsEvent(type, message));
    });
  }

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.dispatchEvent(new Event("statechange"));
  }
}

/** Publish through the HTTP API; resolves to {channel, epoch, offset}. */
export async function publish(channel, data, { event, text = false, baseUrl = "" } = {}) {
  const body = { channel, event: event ?? "message" };
  body[text ? "text" : "data"] = data;
  const response = await fetch(`${baseUrl}/api/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const result = await response.json();
  if (!response.ok) throw new Error(`${result.error.code}: ${result.error.message}`);
  return result;
}
