// SPDX-License-Identifier: MIT
// Tidings browser client: an ES module, no build step.
//
//   import { TidingsEventSource } from "/static/tidings.js";
//   const source = new TidingsEventSource("/sse", ["chat", "news"]);
//   source.addEventListener("message", (e) => console.log(e.channel, e.offset, e.data));
//   source.addEventListener("reset", (e) => console.warn("gap in", e.channel, e.reason));
//   source.addEventListener("statechange", () => console.log(source.state));
//
// TidingsEventSource reads the stream with fetch and reconnects by itself
// (exponential backoff, full jitter, never sooner than the server's retry:
// or Retry-After), resuming from the last `id:` (the connection's cursor), so
// the server replays exactly what was missed. A connection on which no byte
// arrives for `idleTimeout` ms (not even the server's `: ping` comments: a
// half-open connection) is given up and reconnected the same way. Each event
// carries the channel and offset read from its cursor, and `data` parsed as
// JSON when it is JSON.
// TidingsSocket speaks the WebSocket protocol (JSON, or MessagePack with a
// codec given), with a heartbeat; streamFetch iterates over an SSE or NDJSON
// response, read only as fast as the loop asks.
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

/** Parse an `application/json` error body ({"error": {code, message, retry_after}}) into a TidingsError. */
async function responseError(response) {
  let detail = {};
  try {
    detail = (await response.json()).error ?? {};
  } catch {
    // not JSON: a proxy's page, say
  }
  const fallback = { 401: "unauthorized", 403: "permission_denied", 404: "not_found" }[response.status];
  const error = new TidingsError(
    typeof detail.code === "string" ? detail.code : fallback ?? `http_${response.status}`,
    typeof detail.message === "string" ? detail.message : `HTTP ${response.status}`,
  );
  error.status = response.status;
  const header = Number(response.headers.get("retry-after"));
  const seconds = Number.isFinite(header) && header > 0 ? header : Number(detail.retry_after);
  error.retryAfter = Number.isFinite(seconds) && seconds > 0 ? seconds : null;
  return error;
}

/**
 * An incremental parser of `text/event-stream` (the WHATWG rules): give it
 * decoded text as it arrives; it returns the blocks completed so far, each
 * `{type, data, id}` (an event; `data` null for a block with no data line,
 * which only moves the cursor) or `{retry}`. A block longer than `maxBytes`
 * characters throws a TidingsError `malformed_event`.
 */
function eventStreamParser(maxBytes) {
  let buffer = "";
  let carriageReturn = false; // the last chunk ended in \r: a \n first in the next is the same line end
  let data = [];
  let size = 0;
  let type = "";
  let id = ""; // the last event ID buffer: it persists from block to block
  let idSeen = false;
  return (text) => {
    if (carriageReturn && text.startsWith("\n")) text = text.slice(1);
    carriageReturn = text.endsWith("\r");
    const lines = (buffer + text).split(/\r\n|\r|\n/);
    buffer = lines.pop();
    if (buffer.length + size > maxBytes) {
      throw new TidingsError("malformed_event", `an event longer than ${maxBytes} characters`);
    }
    const blocks = [];
    for (const line of lines) {
      if (line === "") {
        if (data.length) blocks.push({ type: type || "message", data: data.join("\n"), id });
        else if (idSeen) blocks.push({ type: "", data: null, id });
        data = [];
        size = 0;
        type = "";
        idSeen = false;
        continue;
      }
      if (line.startsWith(":")) continue; // a comment: keepalive
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") {
        data.push(value);
        size += value.length + 1;
        if (size > maxBytes) {
          throw new TidingsError("malformed_event", `an event longer than ${maxBytes} characters`);
        }
      } else if (field === "event") type = value;
      else if (field === "id" && !value.includes("\0")) {
        id = value;
        idSeen = true;
      } else if (field === "retry" && /^\d+$/.test(value)) blocks.push({ retry: Number(value) });
    }
    return blocks;
  };
}

/** The longest delay setTimeout keeps (a longer one fires at once). */
const LONGEST_TIMER = 2 ** 31 - 1;

/**
 * Calls `onIdle` once when `touch()` was not called for `ms` milliseconds;
 * `stop()` cancels it. One timer at a time, re-armed only when it fires (to
 * the last touch plus `ms`): touching costs a clock read, not a timer.
 * `ms` 0 watches nothing.
 */
function idleWatchdog(ms, onIdle) {
  let seen = performance.now();
  let timer = null;
  const check = () => {
    const left = seen + ms - performance.now();
    if (left > 0) timer = setTimeout(check, Math.min(left, LONGEST_TIMER));
    else {
      timer = null;
      onIdle();
    }
  };
  if (ms > 0) timer = setTimeout(check, Math.min(ms, LONGEST_TIMER));
  return {
    touch() {
      seen = performance.now();
    },
    stop() {
      clearTimeout(timer);
      timer = null;
    },
  };
}

/** What is wrong with an event a Tidings server would not send; null when nothing is. */
function malformed(type, id, data) {
  if (id && cursorHead(id).channel === null) return `event id ${JSON.stringify(id.slice(0, 80))} is not a cursor`;
  if (type === "reset") {
    const reset = parseData(data);
    if (!reset || typeof reset !== "object" || typeof reset.channel !== "string") {
      return "a reset event without a channel";
    }
  }
  return null;
}

/**
 * Server-Sent Events from a Tidings server, with channel-aware events.
 *
 * states: "connecting" → "open" → ("reconnecting" → "open")* → "closed".
 * Listen to any event type with addEventListener(type, handler): "message"
 * for the default type, "reset" for gaps the server could not fill,
 * "statechange", "error", or your own event types.
 *
 * It reads the stream with `fetch` and runs its own reconnect loop:
 * exponential backoff with full jitter, never sooner than the server's
 * `retry:` or `Retry-After`, resuming with `?last_event_id=` set to the last
 * cursor (`id:`) received. A network error, a stream that ends, a connection
 * silent for `idleTimeout` ms, 408, 429 and 5xx are retried; 204 closes the source; 401 (unless getToken gives a new
 * token), 403, 404 and every other 4xx close it with a typed error event.
 *
 * @param {string} url The SSE endpoint ("/sse").
 * @param {string[]} channels Channel names.
 * @param {object} [options]
 * @param {string|null} [options.lastEventId] A cursor to resume from.
 * @param {boolean} [options.withCredentials] Send cookies cross-origin.
 * @param {(() => string|Promise<string>)|null} [options.getToken] Returns a fresh
 *   token, sent as `?token=`. Called for the first connection, after the
 *   server's `expired` event (the token reached its exp) and after a 401 once
 *   the stream had opened; the new connection resumes from the last event. A
 *   401 right after a fresh token closes the source for good ("closed"), as
 *   does an error thrown by getToken.
 * @param {number} [options.base] Backoff: seconds of the first delay before jitter (0.5).
 * @param {number} [options.cap] Backoff: the longest delay in seconds (30).
 * @param {number} [options.maxAttempts] Failed connections in a row before giving up (Infinity).
 * @param {boolean|string|null} [options.sessionStorage] Keep the cursor in
 *   sessionStorage (under this key, or one made of the URL for `true`), so
 *   a source made after a page reload resumes where the last one stopped.
 * @param {boolean|string|null} [options.shared] Share one connection among the
 *   tabs of this origin that make the same source (a BroadcastChannel of this
 *   name, or one made of the URL for `true`): one tab holds the connection
 *   and passes every event on; when it goes, another takes over from the last
 *   cursor it saw.
 * @param {number} [options.maxEventBytes] The longest event accepted (1 MiB of text).
 * @param {number} [options.idleTimeout] Milliseconds without a byte (event or
 *   `: ping` comment, while connecting or open) before the connection is taken
 *   for dead (half-open), dropped with an `idle_timeout` error event and
 *   reconnected from the cursor (45000; 0: never). Keep it above twice the
 *   server's `sse_keepalive`.
 */
export class TidingsEventSource extends EventTarget {
  constructor(url, channels = [], {
    lastEventId = null, withCredentials = false, getToken = null, base = 0.5, cap = 30,
    maxAttempts = Infinity, sessionStorage = null, shared = null, maxEventBytes = 1 << 20,
    idleTimeout = 45000,
  } = {}) {
    super();
    if (typeof idleTimeout !== "number" || !Number.isFinite(idleTimeout) || idleTimeout < 0) {
      throw new RangeError(`idleTimeout must be a number of milliseconds >= 0 (0: off), not ${idleTimeout}`);
    }
    const target = new URL(url, window.location.href);
    for (const channel of channels) target.searchParams.append("channel", channel);
    this.url = target.toString();
    this.state = "connecting";
    this.backoff = { base, cap, maxAttempts, attempt: 0 };
    /** Milliseconds without a byte before a connection is taken for dead (0: never). */
    this.idleTimeout = idleTimeout;
    /** The sessionStorage key of the cursor, or null. */
    this.storageKey = sessionStorage === true ? `tidings:${this.url}` : sessionStorage || null;
    /** The BroadcastChannel name shared by the tabs, or null. */
    this.shared = shared === true ? `tidings:${this.url}` : shared || null;
    /** Whether this source holds the connection (false while another tab does). */
    this.leader = this.shared === null;
    this._withCredentials = withCredentials;
    this._getToken = getToken;
    this._maxEventBytes = maxEventBytes;
    this._lastEventId = lastEventId ?? this._load();
    this._retryMs = 0; // the server's retry:, the least delay before reconnecting
    this._closed = false;
    this._controller = null; // aborts the fetch of the connection in use
    this._watchdog = null; // gives up the connection in use when it goes silent
    this._idle = null; // the idle_timeout error of the connection in use, once it went silent
    this._lifetime = new AbortController(); // aborts everything at close()
    this._wake = null;
    queueMicrotask(() => {
      if (this._closed) return;
      // Without BroadcastChannel and Web Locks (an old browser), each tab connects on its own.
      if (this.shared && globalThis.BroadcastChannel && globalThis.navigator?.locks) this._share();
      else {
        this.leader = true;
        this._run();
      }
    });
  }

  /** The cursor of the last event received: pass it as lastEventId to resume later. */
  get lastEventId() {
    return this._lastEventId ?? null;
  }

  /** Stop for good: the connection (or this tab's share of it) is released at once. */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._controller?.abort();
    this._watchdog?.stop(); // no timer outlives the source
    this._lifetime.abort();
    this._wake?.();
    this._setState("closed");
    this._channel?.close();
  }

  // -- the connection loop ------------------------------------------------------------

  async _run() {
    let needsToken = this._getToken !== null;
    let token = null;
    let fresh = false; // the token came from getToken and no stream opened with it yet
    while (!this._closed) {
      if (needsToken) {
        try {
          token = await this._getToken();
        } catch (error) {
          const failure = new TidingsError("unauthorized", `getToken failed: ${error}`);
          failure.cause = error;
          return this._final(failure);
        }
        if (this._closed) return;
        needsToken = false;
        fresh = true;
      }
      const outcome = await this._connect(token);
      if (this._closed || outcome.final) return;
      if (outcome.opened) {
        fresh = false;
        this.backoff.attempt = 0;
      }
      const refused = outcome.error?.status === 401;
      if ((outcome.renew || refused) && this._getToken && !fresh) {
        needsToken = true; // at once, with a new token and the same cursor
        this._setState("reconnecting");
        continue;
      }
      if (outcome.renew || refused) {
        return this._final(outcome.error ?? new TidingsError("token_expired", "the token expired"));
      }
      const { base, cap, maxAttempts } = this.backoff;
      if (this.backoff.attempt >= maxAttempts) {
        return this._final(new TidingsError("connection_closed", `gave up after ${maxAttempts} attempts`));
      }
      this._setState("reconnecting");
      const jitter = Math.random() * Math.min(cap, base * 2 ** this.backoff.attempt++) * 1000;
      const minimum = Math.max(this._retryMs, (outcome.error?.retryAfter ?? 0) * 1000);
      await this._sleep(Math.max(minimum, jitter));
    }
  }

  /**
   * One connection, read to its end: {opened, final, renew, error}. Its
   * watchdog aborts it when no byte arrives for idleTimeout ms, from the
   * request on; the failure is then an `idle_timeout` error.
   */
  async _connect(token) {
    const controller = (this._controller = new AbortController());
    this._idle = null;
    const watchdog = (this._watchdog = idleWatchdog(this.idleTimeout, () => {
      this._idle = new TidingsError("idle_timeout", `no byte in ${this.idleTimeout} ms: the connection is taken for dead`);
      controller.abort();
    }));
    try {
      return await this._stream(token, controller, watchdog);
    } finally {
      watchdog.stop();
    }
  }

  async _stream(token, controller, watchdog) {
    const target = new URL(withToken(this.url, token));
    if (this._lastEventId) target.searchParams.set("last_event_id", this._lastEventId);
    let response;
    try {
      response = await fetch(target.toString(), {
        headers: { accept: "text/event-stream" },
        credentials: this._withCredentials ? "include" : "same-origin",
        cache: "no-store",
        signal: controller.signal,
      });
    } catch (cause) {
      return this._failed(new TidingsError("network", `cannot connect: ${cause}`), false);
    }
    watchdog.touch();
    if (response.status === 204) {
      this._final(null); // the server has nothing more for this cursor
      return { final: true };
    }
    if (!response.ok) {
      const error = await responseError(response);
      const retried = [408, 429].includes(response.status) || response.status >= 500;
      if (retried || (response.status === 401 && this._getToken)) return this._failed(error, false);
      this._final(error);
      return { final: true };
    }
    const type = response.headers.get("content-type") ?? "";
    if (!type.startsWith("text/event-stream") || !response.body) {
      controller.abort();
      return this._failed(new TidingsError("malformed_event", `not an event stream: ${type || "no type"}`), false);
    }
    this._setState("open");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parse = eventStreamParser(this._maxEventBytes);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return this._failed(new TidingsError("network", "the stream ended"), true);
        watchdog.touch(); // any byte: an event, a `: ping` comment, a part of either
        for (const block of parse(decoder.decode(value, { stream: true }))) {
          if (this._closed) return { final: true };
          if (block.retry !== undefined) this._retryMs = block.retry;
          else if (block.type === "expired") {
            controller.abort();
            return { opened: true, renew: true };
          } else this._deliver(block.type, block.id, block.data);
        }
      }
    } catch (cause) {
      controller.abort();
      if (this._closed) return { final: true };
      const error = cause instanceof TidingsError ? cause : new TidingsError("network", `the stream broke: ${cause}`);
      return this._failed(error, true);
    }
  }

  _failed(error, opened) {
    error = this._idle ?? error; // the watchdog's abort, whatever it broke
    if (!this._closed) this._error(error, false);
    return { opened, error };
  }

  _final(error) {
    if (this._closed) return;
    this._closed = true;
    this._lifetime.abort();
    this._setState("closed");
    if (error) this._error(error, true);
    this._channel?.close();
  }

  _deliver(type, id, data) {
    const problem = malformed(type, id, data);
    if (problem) {
      this._error(new TidingsError("malformed_event", problem), false);
      return;
    }
    this._moveTo(id);
    if (data === null) return; // a cursor without an event (the stream's first block)
    this._post({ kind: "event", type, id, data });
    this.dispatchEvent(new TidingsEvent(type, { lastEventId: id ?? "", data }));
  }

  _moveTo(id) {
    if (!id || id === this._lastEventId) return; // a Tidings stream never clears its cursor
    this._lastEventId = id;
    if (this.storageKey) {
      try {
        window.sessionStorage.setItem(this.storageKey, id);
      } catch {
        // storage full or denied: the cursor still lives in memory
      }
    }
  }

  _load() {
    if (!this.storageKey) return null;
    try {
      return window.sessionStorage.getItem(this.storageKey);
    } catch {
      return null;
    }
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this._wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  _error(error, final) {
    this._post({ kind: "error", code: error.code, message: error.message, status: error.status, final });
    this.dispatchEvent(Object.assign(new Event("error"), { error, final }));
  }

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this._post({ kind: "state", state });
    this.dispatchEvent(new Event("statechange"));
  }

  // -- one connection for the tabs of an origin ---------------------------------------

  _share() {
    const channel = (this._channel = new BroadcastChannel(this.shared));
    channel.onmessage = (message) => this._onShared(message.data);
    channel.postMessage({ kind: "hello" });
    // The tab holding the lock holds the connection; the lock goes with the
    // tab (closed, reloaded, crashed) or with close().
    navigator.locks.request(this.shared, { signal: this._lifetime.signal }, async () => {
      if (this._closed) return;
      this.leader = true;
      await this._run();
    }).catch(() => {}); // aborted by close() while waiting
  }

  _post(message) {
    if (!this.leader || !this._channel) return;
    try {
      this._channel.postMessage(message);
    } catch {
      // closed with the source
    }
  }

  _onShared(message) {
    if (this._closed || !message || typeof message !== "object") return;
    if (this.leader) {
      if (message.kind === "hello") this._channel.postMessage({ kind: "state", state: this.state });
      return;
    }
    if (message.kind === "event") {
      this._moveTo(message.id);
      this.dispatchEvent(new TidingsEvent(message.type, { lastEventId: message.id ?? "", data: message.data }));
    } else if (message.kind === "state") {
      // The holder closing is not this source closing: it takes over.
      this._setState(message.state === "closed" ? "reconnecting" : message.state);
    } else if (message.kind === "error") {
      const error = Object.assign(new TidingsError(message.code, message.message), { status: message.status ?? null });
      this.dispatchEvent(Object.assign(new Event("error"), { error, final: false }));
    }
  }
}

// -- streamFetch ------------------------------------------------------------------

/**
 * Stream the response of a request as it arrives: an async iterator over the
 * events of an SSE response (`{event, id, data, raw}`) or the lines of an
 * NDJSON one (`{event: "message", id: null, data, raw}`), `data` parsed as
 * JSON when it is JSON. It reads the next chunk only when the loop asks for
 * the next item, so a slow consumer slows the stream down. With `body` it
 * POSTs it (JSON unless a string), without it GETs. `response` resolves with
 * the Response once its headers arrived; a status other than 2xx rejects
 * (and the loop throws) a TidingsError with the server's code and `status`;
 * a 204 ends the loop at once. Aborting `signal` ends the loop with the
 * AbortError; leaving the loop (`break`) cancels the response.
 *
 * @param {string|URL} url
 * @param {unknown} [body]
 * @param {object} [options]
 * @param {AbortSignal} [options.signal]
 * @param {Record<string,string>} [options.headers]
 * @param {string} [options.method] Default POST with a body, GET without.
 * @param {"sse"|"ndjson"} [options.format] Default: from the response's content type.
 * @param {number} [options.maxEventBytes] The longest event or line accepted (1 MiB of text).
 */
export function streamFetch(url, body = null, { signal, headers = {}, method, format, maxEventBytes = 1 << 20 } = {}) {
  const init = { method: method ?? (body === null || body === undefined ? "GET" : "POST"), headers: { ...headers }, signal };
  if (body !== null && body !== undefined) {
    if (typeof body === "string") init.body = body;
    else {
      init.body = JSON.stringify(body);
      init.headers["content-type"] ??= "application/json";
    }
  }
  const response = fetch(url, init).then(async (answer) => {
    if (!answer.ok) throw await responseError(answer);
    return answer;
  });
  response.catch(() => {}); // the loop throws it; a caller that only iterates has it there
  async function* items() {
    const answer = await response;
    if (answer.status === 204 || !answer.body) return;
    const type = answer.headers.get("content-type") ?? "";
    const sse = format ? format === "sse" : type.startsWith("text/event-stream");
    const reader = answer.body.getReader();
    const decoder = new TextDecoder();
    const parse = sse ? eventStreamParser(maxEventBytes) : null;
    let rest = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        const text = done ? decoder.decode() : decoder.decode(value, { stream: true });
        if (parse) {
          for (const block of parse(text)) {
            if (block.data === null || block.data === undefined) continue;
            yield { event: block.type, id: block.id, data: parseData(block.data), raw: block.data };
          }
        } else {
          const lines = (rest + text).split("\n");
          rest = done ? "" : lines.pop();
          if (rest.length > maxEventBytes) {
            throw new TidingsError("malformed_event", `a line longer than ${maxEventBytes} characters`);
          }
          for (const line of lines) {
            if (!line.trim()) continue;
            let data;
            try {
              data = JSON.parse(line);
            } catch {
              throw new TidingsError("malformed_event", `a line is not JSON: ${line.slice(0, 80)}`);
            }
            yield { event: "message", id: null, data, raw: line };
          }
        }
        if (done) return;
      }
    } finally {
      reader.cancel().catch(() => {}); // a loop left early: close the response
    }
  }
  return Object.assign(items(), { response });
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

/** A command the server answered with an error, a refused request, or a failure of the client's own. */
export class TidingsError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
    /** The HTTP status of a refused request; null otherwise. */
    this.status = null;
    /** Seconds the server asked to wait (Retry-After, retry_after); null if it did not. */
    this.retryAfter = null;
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
 * Heartbeat: every `pingInterval` ms of an open connection it sends the
 * `ping` op; with no answer within `pongTimeout` ms the connection is taken
 * for dead (a half-open TCP connection says nothing), dropped, and the socket
 * reconnects and resumes as after any drop. A handshake that does not
 * complete within `requestTimeout` ms is given up the same way.
 *
 * MessagePack: give `msgpack`, an object with `encode(value) → Uint8Array`
 * and `decode(bytes) → value` (such as the @msgpack/msgpack module), and it
 * speaks `tidings.v1.msgpack` in binary frames instead of JSON.
 *
 * A frame it cannot read is reported as an "error" event (TidingsError
 * `malformed_message`) and skipped; nothing is thrown into the page.
 *
 * @param {string} [url] The WebSocket endpoint ("/ws").
 * @param {object} [options]
 * @param {(() => string|Promise<string>)|null} [options.getToken] Returns a fresh token.
 * @param {number} [options.pingInterval] Milliseconds between pings (20000; 0: none).
 * @param {number} [options.pongTimeout] Milliseconds to wait for a pong (10000).
 * @param {{encode(value: unknown): Uint8Array, decode(bytes: Uint8Array): unknown}|null} [options.msgpack]
 */
export class TidingsSocket extends EventTarget {
  constructor(url = "/ws", { info = null, base = 0.5, cap = 30, maxAttempts = Infinity,
                             requestTimeout = 10000, queueLimit = 1000, getToken = null,
                             pingInterval = 20000, pongTimeout = 10000, msgpack = null } = {}) {
    super();
    const target = new URL(url, window.location.href);
    target.protocol = target.protocol.replace("http", "ws");
    this.url = target.toString();
    this.info = info;
    this.state = "connecting";
    this.backoff = { base, cap, maxAttempts, attempt: 0 };
    this.requestTimeout = requestTimeout;
    this.queueLimit = queueLimit;
    this.pingInterval = pingInterval;
    this.pongTimeout = pongTimeout;
    /** The subprotocol spoken: tidings.v1.msgpack with a msgpack codec, else tidings.v1.json. */
    this.protocol = msgpack ? "tidings.v1.msgpack" : "tidings.v1.json";
    this._msgpack = msgpack;
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
    clearTimeout(this._pingTimer);
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
    const ws = (this._ws = new WebSocket(withToken(this.url, this._token), [this.protocol]));
    ws.binaryType = "arraybuffer";
    // A connection given up for a late pong may still report: only the current one counts.
    ws.onopen = () => ws === this._ws && this._onOpen();
    ws.onmessage = (message) => ws === this._ws && this._onMessage(message.data);
    ws.onclose = (close) => ws === this._ws && this._onClose(close.code, close.reason);
    // A handshake that never completes (a dead path) is given up like a late pong.
    clearTimeout(this._pingTimer);
    this._pingTimer = setTimeout(() => {
      if (ws === this._ws && ws.readyState === WebSocket.CONNECTING) this._drop(ws, "handshake timeout");
    }, this.requestTimeout);
  }

  /** Give up a connection that does not answer, without waiting for a closing handshake. */
  _drop(ws, reason) {
    this._ws = null;
    ws.close(CLOSE_CODES.HEARTBEAT_TIMEOUT, reason);
    this._onClose(CLOSE_CODES.HEARTBEAT_TIMEOUT, reason);
  }

  _heartbeat(ws) {
    clearTimeout(this._pingTimer);
    if (!(this.pingInterval > 0)) return;
    this._pingTimer = setTimeout(async () => {
      if (ws !== this._ws || ws.readyState !== WebSocket.OPEN) return;
      const id = this._nextId++;
      const late = setTimeout(() => {
        this._pending.delete(id);
        if (ws === this._ws) this._drop(ws, "pong timeout"); // the peer or the path is gone
      }, this.pongTimeout);
      this._pending.set(id, {
        resolve: () => ws === this._ws && this._heartbeat(ws),
        reject: () => {},
        timer: late,
        command: { op: "ping" },
        retry: false,
      });
      this._send({ id, op: "ping" });
    }, this.pingInterval);
  }

  _send(command) {
    this._ws.send(this._msgpack ? this._msgpack.encode(command) : JSON.stringify(command));
  }

  _decode(data) {
    if (typeof data === "string") return JSON.parse(data);
    if (!this._msgpack) throw new TypeError("a binary frame on a JSON connection");
    return this._msgpack.decode(new Uint8Array(data));
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
    this._heartbeat(this._ws);
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
    if (this._ws?.readyState !== WebSocket.OPEN) {
      return Promise.reject(new TidingsError("connection_closed", `not connected (${this.state})`));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new TidingsError("timeout", `no reply to ${command.op} in ${this.requestTimeout} ms`));
      }, this.requestTimeout);
      this._pending.set(id, { resolve, reject, timer, command, retry });
      this._send({ id, ...command });
    });
  }

  _onMessage(frame) {
    let parsed;
    try {
      parsed = this._decode(frame);
    } catch (cause) {
      this._malformed(`cannot decode a frame: ${cause}`);
      return;
    }
    for (const message of Array.isArray(parsed) ? parsed : [parsed]) {
      if (!message || typeof message !== "object") {
        this._malformed(`not a message: ${String(message).slice(0, 80)}`);
        continue;
      }
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

  _malformed(message) {
    const error = new TidingsError("malformed_message", message);
    this.dispatchEvent(Object.assign(new Event("error"), { error }));
  }

  _onClose(code, reason) {
    this.closeCode = code;
    this.closeReason = reason;
    clearTimeout(this._refreshTimer);
    clearTimeout(this._pingTimer);
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
