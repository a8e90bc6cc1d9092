// SPDX-License-Identifier: MIT
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
//
// Tokens: give `getToken` (a function returning a token or a Promise of one)
// and the token travels as `?token=` (EventSource and browser WebSockets
// cannot set headers). When the token expires the server ends the stream
// (an `expired` event) or closes the socket (4401); the client asks getToken
// for a new token, reconnects and resumes exactly.

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

/** The `exp` claim of a JWT in seconds, read without verifying it; null if none. */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "="))).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

function withToken(url, token) {
  const target = new URL(url);
  if (token) target.searchParams.set("token", token);
  return target.toString();
}

function parseData(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** An event of a Tidings stream; `event` is its event type (the name Python and HTTP use). */
export class TidingsEvent extends Event {
  constructor(type, message) {
    super(type);
    const head = cursorHead(message.lastEventId);
    this.event = type;
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
 *
 * @param {string} url The SSE endpoint ("/sse").
 * @param {string[]} channels Channel names.
 * @param {object} [options]
 * @param {string|null} [options.lastEventId] A cursor to resume from.
 * @param {boolean} [options.withCredentials] Send cookies cross-origin.
 * @param {(() => string|Promise<string>)|null} [options.getToken] Returns a fresh
 *   token, sent as `?token=`. Called for the first connection, after the
 *   server's `expired` event (the token reached its exp) and after a refused
 *   connection once the stream had opened; the new connection resumes from
 *   the last event. A connection refused right after a fresh token closes the
 *   source for good ("closed"), as does an error thrown by getToken.
 */
export class TidingsEventSource extends EventTarget {
  constructor(url, channels = [], { lastEventId = null, withCredentials = false, getToken = null } = {}) {
    super();
    const target = new URL(url, window.location.href);
    for (const channel of channels) target.searchParams.append("channel", channel);
    this.url = target.toString();
    this.state = "connecting";
    this._resumeFrom = lastEventId;
    this._withCredentials = withCredentials;
    this._getToken = getToken;
    this._fresh = false; // the token came from getToken and no stream opened with it yet
    this._closed = false;
    this._forwarded = new Set(["message", "reset"]);
    this._source = null;
    if (getToken) this._renew();
    else this._connect(null);
  }

  /** The cursor of the last event received: pass it as lastEventId to resume later. */
  get lastEventId() {
    return this._lastEventId ?? null;
  }

  addEventListener(type, listener, options) {
    if (!["statechange", "error", "open", "expired"].includes(type) && !this._forwarded.has(type)) {
      this._forwarded.add(type);
      if (this._source) this._forward(this._source, type);
    }
    super.addEventListener(type, listener, options);
  }

  close() {
    this._closed = true;
    this._source?.close();
    this._setState("closed");
  }

  _connect(token) {
    const target = new URL(withToken(this.url, token));
    const cursor = this._lastEventId ?? this._resumeFrom;
    if (cursor) target.searchParams.set("last_event_id", cursor);
    const source = (this._source = new EventSource(target.toString(), {
      withCredentials: this._withCredentials,
    }));
    source.addEventListener("open", () => {
      this._fresh = false;
      this._setState("open");
    });
    source.addEventListener("error", () => {
      if (source !== this._source || this._closed) return;
      if (source.readyState !== EventSource.CLOSED) {
        this._setState("reconnecting"); // the browser retries by itself
      } else if (this._getToken && !this._fresh) {
        this._renew(); // refused (most likely the token): once more with a new one
      } else {
        this._setState("closed");
      }
      this.dispatchEvent(new Event("error"));
    });
    // The server ends the stream at the token's exp; the event has no id, so
    // the cursor stays at the last event delivered.
    source.addEventListener("expired", () => {
      if (source !== this._source || this._closed) return;
      source.close();
      if (this._getToken) this._renew();
      else this._setState("closed");
    });
    for (const type of this._forwarded) this._forward(source, type);
  }

  async _renew() {
    this._source?.close();
    if (this.state !== "connecting") this._setState("reconnecting");
    let token;
    try {
      token = await this._getToken();
    } catch (error) {
      if (!this._closed) {
        this._setState("closed");
        this.dispatchEvent(Object.assign(new Event("error"), { error }));
      }
      return;
    }
    if (this._closed) return;
    this._fresh = true;
    this._connect(token);
  }

  _forward(source, type) {
    source.addEventListener(type, (message) => {
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

/** Publish through the HTTP API; resolves to {channel, epoch, offset}, rejects with a TidingsError. */
export async function publish(channel, data, { event, text = false, baseUrl = "" } = {}) {
  const body = { channel, event: event ?? "message" };
  body[text ? "text" : "data"] = data;
  const response = await fetch(`${baseUrl}/api/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const result = await response.json();
  if (!response.ok) throw new TidingsError(result.error.code, result.error.message);
  return result;
}

// -- WebSocket -------------------------------------------------------------------

/**
 * WebSocket close codes Tidings uses (the same table as tidings.wire.codes.CloseCode;
 * tests/unit/test_js_client.py keeps them equal). 4000-4499: reconnect and resume;
 * 4500-4999: terminal.
 */
export const CLOSE_CODES = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  ABNORMAL_CLOSURE: 1006,
  INVALID_DATA: 1007,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  SHUTDOWN: 4001,
  HEARTBEAT_TIMEOUT: 4002,
  SLOW_CONSUMER: 4008,
  RATE_LIMITED: 4029,
  TOKEN_EXPIRED: 4401,
  BAD_REQUEST: 4500,
  UNAUTHORIZED: 4501,
  FORBIDDEN: 4503,
});

/** Whether a client should reconnect after a close with `code`. */
export function shouldReconnect(code) {
  if (code >= 4500 && code <= 4999) return false;
  return ![CLOSE_CODES.PROTOCOL_ERROR, CLOSE_CODES.INVALID_DATA, CLOSE_CODES.MESSAGE_TOO_BIG].includes(code);
}

/** A push of a channel's stream (or a join/leave/reset notice). */
export class TidingsSocketEvent extends Event {
  constructor(type, push) {
    super(type);
    // The event type as published, also on the "message" copy of an event of another type.
    this.event = push.event ?? type;
    this.channel = push.channel;
    this.epoch = push.epoch ?? null;
    this.offset = push.offset ?? null;
    this.data = push.data;
    this.text = push.text === true;
  }
}

/** A command the server answered with an error. */
export class TidingsError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
  }
}

function randomKey() {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

/**
 * The Tidings WebSocket protocol (tidings.v1.json) with reconnect and exact recovery.
 *
 *   const socket = new TidingsSocket("/ws", { info: { name: "ada" } });
 *   socket.addEventListener("message", (e) => console.log(e.channel, e.offset, e.data));
 *   await socket.subscribe("chat:lobby");
 *   await socket.publish("chat:lobby", { text: "hi" });
 *
 * After a drop it reconnects with exponential backoff and full jitter,
 * re-sends `connect` and re-subscribes every channel from the last event it
 * delivered, so recovery is exact or announced with a "reset" event.
 * Publishes made while disconnected wait in a bounded queue and are sent
 * once on reconnect; each carries an idempotency key, so a publish retried
 * after a drop lands once. Terminal close codes (4500-4999) stop it.
 *
 * With `getToken` (a function returning a token or a Promise of one), each
 * connection sends a token as `?token=`. getToken is called for the first
 * connection, after a 4401 close (the token expired; the socket reconnects at
 * once and resubscribes from its positions) and after a connection that
 * failed before opening with a token that was not fresh (browsers do not
 * show the handshake's status, so such failures are retried with backoff; use
 * maxAttempts to bound them). A little before a JWT's exp (30 s, or a third
 * of its remaining life) the socket sends the `refresh` op with a new token,
 * so the connection does not have to close. An error thrown by getToken
 * stops the socket.
 *
 * @param {string} [url] The WebSocket endpoint ("/ws").
 * @param {object} [options]
 * @param {(() => string|Promise<string>)|null} [options.getToken] Returns a fresh token.
 */
export class TidingsSocket extends EventTarget {
  constructor(url = "/ws", { info = null, base = 0.5, cap = 30, maxAttempts = Infinity,
                             requestTimeout = 10000, queueLimit = 1000, getToken = null } = {}) {
    super();
    const target = new URL(url, window.location.href);
    target.protocol = target.protocol.replace("http", "ws");
    this.url = target.toString();
    this.info = info;
    this.state = "connecting";
    this.backoff = { base, cap, maxAttempts, attempt: 0 };
    this.requestTimeout = requestTimeout;
    this.queueLimit = queueLimit;
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject, timer, command}
    this._queue = []; // publishes waiting for a connection
    this._channels = new Map(); // channel -> {epoch, offset} of the last event delivered (or null)
    this._closedByUser = false;
    this._getToken = getToken;
    this._token = null;
    this._needsToken = getToken !== null;
    this._fresh = false; // the token came from getToken and no connection opened with it yet
    this.closeCode = null; // the code and reason of the last close
    this.closeReason = null;
    this._open();
  }

  /** Subscribe; resolves with the reply's result ({channel, epoch, offset, recovered, ...}). */
  async subscribe(channel, { since = null } = {}) {
    this._channels.set(channel, since);
    if (this.state !== "open") return null; // sent on (re)connect
    return this._subscribeNow(channel, since);
  }

  async unsubscribe(channel) {
    this._channels.delete(channel);
    if (this.state === "open") return this._request({ op: "unsubscribe", channel });
    return null;
  }

  /** Publish; resolves with {channel, epoch, offset} once the server has it. */
  publish(channel, data, { event, key, text = false } = {}) {
    const command = { op: "publish", channel, key: key ?? randomKey() };
    command[text ? "text" : "data"] = data;
    if (event) command.event = event;
    if (this.state === "open") return this._request(command, { retry: true });
    if (this._queue.length >= this.queueLimit) {
      return Promise.reject(new TidingsError("queue_full", `${this.queueLimit} publishes are waiting`));
    }
    return new Promise((resolve, reject) => this._queue.push({ command, resolve, reject }));
  }

  history(channel, { since, limit } = {}) {
    const command = { op: "history", channel };
    if (since) command.since = since;
    if (limit !== undefined) command.limit = limit;
    return this._request(command);
  }

  /** One page of a channel's presence; pass the answer's `next` as `cursor` for the next. */
  presence(channel, { cursor, limit } = {}) {
    const command = { op: "presence", channel };
    if (cursor) command.cursor = cursor;
    if (limit !== undefined) command.limit = limit;
    return this._request(command);
  }

  ping() {
    return this._request({ op: "ping" });
  }

  close() {
    this._closedByUser = true;
    clearTimeout(this._timer);
    clearTimeout(this._refreshTimer);
    this._ws?.close(1000);
    this._fail(new TidingsError("connection_closed", "closed by the client"));
    this._setState("closed");
  }

  // -- internals ---------------------------------------------------------------

  async _open() {
    if (this._needsToken) {
      try {
        this._token = await this._getToken();
      } catch (error) {
        this._fail(new TidingsError("unauthorized", `getToken failed: ${error}`));
        this._setState("closed");
        this.dispatchEvent(Object.assign(new Event("error"), { error }));
        return;
      }
      if (this._closedByUser) return;
      this._needsToken = false;
      this._fresh = true;
    }
    const ws = (this._ws = new WebSocket(withToken(this.url, this._token), ["tidings.v1.json"]));
    ws.onopen = () => this._onOpen();
    ws.onmessage = (message) => this._onMessage(message.data);
    ws.onclose = (close) => this._onClose(close.code, close.reason);
  }

  _scheduleRefresh(ws) {
    clearTimeout(this._refreshTimer);
    const expires = this._getToken && this._token ? tokenExpiry(this._token) : null;
    if (expires === null) return;
    const remaining = expires - Date.now() / 1000;
    const delay = Math.max(0, remaining - Math.min(30, remaining / 3));
    this._refreshTimer = setTimeout(async () => {
      try {
        const token = await this._getToken();
        const newer = tokenExpiry(token);
        if (newer !== null && newer <= expires) return; // no later token: the 4401 path follows
        await this._request({ op: "refresh", token });
        if (ws !== this._ws) return;
        this._token = token;
        this._scheduleRefresh(ws);
      } catch (error) {
        // The connection keeps its old token; at exp the server closes it
        // with 4401 and the next connection asks getToken again.
        console.warn("tidings: cannot refresh the token:", error);
      }
    }, delay * 1000);
  }

  async _onOpen() {
    this.backoff.attempt = 0;
    this._fresh = false;
    this._opened = true;
    this._scheduleRefresh(this._ws);
    try {
      if (this.info !== null) await this._request({ op: "connect", info: this.info });
      this._setState("open");
      for (const [channel, since] of this._channels) this._subscribeNow(channel, since).catch(() => {});
      const queued = this._queue.splice(0);
      for (const { command, resolve, reject } of queued) {
        this._request(command, { retry: true }).then(resolve, reject);
      }
    } catch (error) {
      this.dispatchEvent(Object.assign(new Event("error"), { error }));
    }
  }

  async _subscribeNow(channel, since) {
    const command = { op: "subscribe", channel };
    if (since) command.since = since;
    const result = await this._request(command);
    if (result.recovered === false) {
      this.dispatchEvent(new TidingsSocketEvent("reset", {
        channel, epoch: result.epoch, offset: result.offset, data: { reason: result.reset },
      }));
    }
    if (!this._channels.get(channel)) {
      this._channels.set(channel, { epoch: result.epoch, offset: result.offset });
    }
    return result;
  }

  _request(command, { retry = false } = {}) {
    if (this._ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new TidingsError("connection_closed", `not connected (${this.state})`));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new TidingsError("timeout", `no reply to ${command.op} in ${this.requestTimeout} ms`));
      }, this.requestTimeout);
      this._pending.set(id, { resolve, reject, timer, command, retry });
      this._ws.send(JSON.stringify({ id, ...command }));
    });
  }

  _onMessage(text) {
    const parsed = JSON.parse(text);
    for (const message of Array.isArray(parsed) ? parsed : [parsed]) {
      if ("ok" in message || "error" in message) {
        const waiter = this._pending.get(message.id);
        if (!waiter) continue;
        this._pending.delete(message.id);
        clearTimeout(waiter.timer);
        if (message.error) waiter.reject(new TidingsError(message.error.code, message.error.message));
        else waiter.resolve(message.result);
      } else if (message.offset && this._channels.has(message.channel)) {
        this._channels.set(message.channel, { epoch: message.epoch, offset: message.offset });
        const type = message.event === "reset" ? "reset" : message.event;
        this.dispatchEvent(new TidingsSocketEvent(type, message));
        if (type !== "message" && type !== "reset") {
          this.dispatchEvent(new TidingsSocketEvent("message", message));
        }
      } else if (message.channel) {
        this.dispatchEvent(new TidingsSocketEvent(message.event, message)); // join, leave
      }
    }
  }

  _onClose(code, reason) {
    this.closeCode = code;
    this.closeReason = reason;
    clearTimeout(this._refreshTimer);
    const opened = this._opened;
    this._opened = false;
    // Publishes in flight are kept and re-sent with the same key: they land once.
    for (const [id, waiter] of this._pending) {
      clearTimeout(waiter.timer);
      this._pending.delete(id);
      if (waiter.retry) this._queue.push({ command: waiter.command, resolve: waiter.resolve, reject: waiter.reject });
      else waiter.reject(new TidingsError("connection_closed", `closed (${code})`));
    }
    if (this._closedByUser) return;
    const { base, cap, maxAttempts } = this.backoff;
    if (!shouldReconnect(code) || this.backoff.attempt >= maxAttempts) {
      this._fail(new TidingsError("connection_closed", `closed (${code} ${reason})`));
      this._setState("closed");
      return;
    }
    this._setState("reconnecting");
    if (this._getToken && code === CLOSE_CODES.TOKEN_EXPIRED) {
      this._needsToken = true;
      this._timer = setTimeout(() => this._open(), 0); // a new token, at once
      return;
    }
    if (this._getToken && !opened && !this._fresh) this._needsToken = true;
    this._fresh = false;
    const delay = Math.random() * Math.min(cap, base * 2 ** this.backoff.attempt++);
    this._timer = setTimeout(() => this._open(), delay * 1000);
  }

  _fail(error) {
    for (const { reject } of this._queue.splice(0)) reject(error);
  }

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.dispatchEvent(new Event("statechange"));
  }
}
