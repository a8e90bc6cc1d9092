// SPDX-License-Identifier: MIT
// Types of tidings.js, the Tidings browser client. Every export of tidings.js
// is declared here and nothing else is (tests/unit/test_js_client.py).

/** A position in a channel's stream: its epoch and the offset of an event in it. */
export interface Position {
  epoch: string;
  offset: number;
}

/** What a publish resolves with: where the event landed. */
export interface Published extends Position {
  channel: string;
}

/** The connection states of both classes. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** Returns a fresh token (or a Promise of one), sent as `?token=`. */
export type GetToken = () => string | Promise<string>;

/**
 * An `error` event. On a TidingsEventSource `error` is always a TidingsError
 * (`network`, `idle_timeout`, `unavailable`, `malformed_event`, `unauthorized`, … with the
 * HTTP `status` of a refusal) and `final` says whether the source closed for
 * good. On a TidingsSocket `error` is the getToken or `connect` failure, or a
 * TidingsError `malformed_message`.
 */
export interface TidingsErrorEvent extends Event {
  error?: unknown;
  final?: boolean;
}

/** The error event of a TidingsEventSource. */
export interface TidingsSourceErrorEvent extends Event {
  error: TidingsError;
  /** true when the source closed for good (a refusal, getToken failed, maxAttempts reached). */
  final: boolean;
}

/** The first entry of a cursor ("channel:epoch:offset,…"); all null for no cursor. */
export interface CursorHead {
  channel: string | null;
  epoch: string | null;
  offset: number | null;
}

/** Parse the first entry of a cursor ("channel:epoch:offset,…"). */
export function cursorHead(id: string | null | undefined): CursorHead;

/** The `exp` claim of a JWT in seconds, read without verifying it; null if none. */
export function tokenExpiry(token: string): number | null;

/**
 * Not a class of tidings.js (both classes extend EventTarget): the listener
 * types they share, written once. Events named in `Events` have that type;
 * every other type is a `Default` (a channel's event, of any event type).
 */
declare class Listeners<Events, Default extends Event> extends EventTarget {
  addEventListener<K extends keyof Events>(
    type: K,
    listener: (this: this, event: Events[K]) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: (this: this, event: Default) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof Events>(
    type: K,
    listener: (this: this, event: Events[K]) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: (this: this, event: Default) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

// -- SSE ----------------------------------------------------------------------------

/** An event of a Tidings SSE stream. */
export class TidingsEvent extends Event {
  constructor(type: string, message: { lastEventId: string; data: string });
  /** The event type, as published ("message" unless the publisher chose one). */
  event: string;
  /** The connection's cursor after this event (its SSE `id:`). */
  id: string;
  /** The data as sent. */
  raw: string;
  /** The data parsed as JSON, or the text when it is not JSON. */
  data: any;
  channel: string | null;
  epoch: string | null;
  offset: number | null;
  /** Why history could not fill the gap (`reset` events only). */
  reason?: string;
}

export interface TidingsEventSourceOptions {
  /** A cursor to resume from (a `lastEventId` of an earlier source). */
  lastEventId?: string | null;
  /** Send cookies cross-origin. */
  withCredentials?: boolean;
  getToken?: GetToken | null;
  /** Backoff: seconds of the first delay before full jitter (default 0.5). */
  base?: number;
  /** Backoff: the longest delay in seconds (default 30). */
  cap?: number;
  /** Failed connections in a row before giving up (default Infinity). */
  maxAttempts?: number;
  /** Keep the cursor in sessionStorage under this key (`true`: a key made of the URL). */
  sessionStorage?: boolean | string | null;
  /** Share one connection among the tabs of the origin (a BroadcastChannel of this name; `true`: made of the URL). */
  shared?: boolean | string | null;
  /** The longest event accepted, in characters (default 1 MiB). */
  maxEventBytes?: number;
  /**
   * Milliseconds without a byte (an event or the server's `: ping` comment)
   * before the connection is taken for dead, dropped with an `idle_timeout`
   * error and reconnected from the cursor (default 45000; 0: never). Keep it
   * above twice the server's `sse_keepalive` (15 s by default). A negative or
   * non-finite value throws a RangeError.
   */
  idleTimeout?: number;
}

export interface TidingsEventSourceEventMap {
  statechange: Event;
  error: TidingsSourceErrorEvent;
}

/**
 * Server-Sent Events from a Tidings server, with channel-aware events:
 * "message", "reset" (a gap history could not fill), "statechange", "error",
 * and any event type of your own.
 */
export class TidingsEventSource extends Listeners<TidingsEventSourceEventMap, TidingsEvent> {
  constructor(url: string | URL, channels?: Iterable<string>, options?: TidingsEventSourceOptions);
  /** The stream's URL, with its channels. */
  readonly url: string;
  readonly state: ConnectionState;
  /** The backoff settings and the failed attempts since the last open stream. */
  readonly backoff: { base: number; cap: number; maxAttempts: number; attempt: number };
  /** Milliseconds without a byte before the connection is taken for dead (0: never). */
  readonly idleTimeout: number;
  /** The sessionStorage key of the cursor, or null. */
  readonly storageKey: string | null;
  /** The BroadcastChannel name shared by the tabs, or null. */
  readonly shared: string | null;
  /** Whether this source holds the connection (false while another tab holds it for it). */
  readonly leader: boolean;
  /** The cursor of the last event received: pass it as lastEventId to resume later. */
  get lastEventId(): string | null;
  /** Stop for good and release the connection (or this tab's share of it). */
  close(): void;
}

// -- streamFetch ----------------------------------------------------------------------

/** One item of a streamFetch: an SSE event, or a line of NDJSON (event "message", id null). */
export interface StreamItem {
  event: string;
  /** The SSE `id:` in force (the cursor; "" before any), null for NDJSON. */
  id: string | null;
  /** Parsed as JSON when it is JSON, else the text. */
  data: any;
  raw: string;
}

export interface StreamFetchOptions {
  signal?: AbortSignal;
  headers?: Record<string, string>;
  /** Default: POST with a body, GET without. */
  method?: string;
  /** Default: from the response's content type (text/event-stream or not). */
  format?: "sse" | "ndjson";
  /** The longest event or line accepted, in characters (default 1 MiB). */
  maxEventBytes?: number;
}

/** What streamFetch returns: iterate it with `for await`; `response` has the headers. */
export interface StreamFetch extends AsyncGenerator<StreamItem, void, undefined> {
  /** The Response once its headers arrived; rejects with a TidingsError for a status other than 2xx. */
  response: Promise<Response>;
}

/**
 * Stream an SSE or NDJSON response as it arrives, one item per `next()`,
 * reading the next chunk only when asked. With `body` (JSON unless a string)
 * it POSTs, without it GETs. Aborting `signal` ends the loop with the AbortError.
 */
export function streamFetch(url: string | URL, body?: unknown, options?: StreamFetchOptions): StreamFetch;

// -- HTTP publish ---------------------------------------------------------------------

export interface PublishOptions {
  /** The event type (default "message"). */
  event?: string;
  /** The server's origin ("" for the page's own). */
  baseUrl?: string;
}

/** Publish JSON through `POST /api/publish`; rejects with a TidingsError. */
export function publish(
  channel: string,
  data: unknown,
  options?: PublishOptions & { text?: false },
): Promise<Published>;
/** Publish plain text (with `text: true`) through `POST /api/publish`; rejects with a TidingsError. */
export function publish(
  channel: string,
  data: string,
  options: PublishOptions & { text: boolean },
): Promise<Published>;

// -- WebSocket ------------------------------------------------------------------------

/**
 * WebSocket close codes Tidings uses (the table of tidings.wire.codes.CloseCode).
 * 4000-4499: reconnect and resume; 4500-4999: terminal.
 */
export const CLOSE_CODES: Readonly<{
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
}>;

/** Whether a client should reconnect after a close with `code`. */
export function shouldReconnect(code: number): boolean;

/** A push as the server sends it: an event of a channel's stream, or a join/leave notice. */
export interface Push {
  channel: string;
  epoch?: string | null;
  offset?: number | null;
  event?: string;
  data?: unknown;
  text?: boolean;
}

/** A push of a channel's stream (or a join, leave or reset notice). */
export class TidingsSocketEvent extends Event {
  constructor(type: string, push: Push);
  /** The event type as published, also on the "message" copy of an event of another type. */
  event: string;
  channel: string;
  /** null for join and leave, which are not part of the stream. */
  epoch: string | null;
  offset: number | null;
  /** The published JSON value, or the text when `text` is true. */
  data: any;
  text: boolean;
}

/** A command the server answered with an error, a refused request, or a failure of the client's own. */
export class TidingsError extends Error {
  constructor(code: string, message: string);
  /**
   * The server's error code, or the client's: connection_closed, queue_full,
   * timeout, unauthorized, network, idle_timeout, malformed_event, malformed_message, http_NNN.
   */
  code: string;
  /** The HTTP status of a refused request; null otherwise. */
  status: number | null;
  /** Seconds the server asked to wait (Retry-After, retry_after); null if it did not. */
  retryAfter: number | null;
}

/** A MessagePack codec, such as the @msgpack/msgpack module. */
export interface MsgpackCodec {
  encode(value: unknown): Uint8Array;
  decode(bytes: Uint8Array): unknown;
}

export interface TidingsSocketOptions {
  /** Sent with `connect`; what others see in presence. */
  info?: unknown;
  /** Backoff: seconds of the first delay before full jitter (default 0.5). */
  base?: number;
  /** Backoff: the longest delay in seconds (default 30). */
  cap?: number;
  /** Reconnection attempts before giving up (default Infinity). */
  maxAttempts?: number;
  /** Milliseconds to wait for a reply (default 10000). */
  requestTimeout?: number;
  /** Publishes kept while offline (default 1000). */
  queueLimit?: number;
  getToken?: GetToken | null;
  /** Milliseconds between heartbeat pings on an open connection (default 20000; 0: none). */
  pingInterval?: number;
  /** Milliseconds to wait for the pong before the connection is taken for dead (default 10000). */
  pongTimeout?: number;
  /** Speak tidings.v1.msgpack (binary frames) with this codec instead of JSON. */
  msgpack?: MsgpackCodec | null;
}

export interface Subscribed extends Position {
  channel: string;
  /** false when history could not fill the gap since `since` (a "reset" event follows). */
  recovered: boolean;
  replayed: number;
  /** Why it was not recovered. */
  reset?: string;
}

export interface HistoryEvent extends Position {
  event: string;
  /** Seconds since the Unix epoch. */
  time: number;
  data: any;
  text?: true;
}

export interface History extends Position {
  channel: string;
  events: HistoryEvent[];
  reset: (Position & { reason: string }) | null;
  /** Pass as `since` to read on. */
  next: Position;
  more: boolean;
}

export interface PresenceClient {
  client: string;
  user: string | null;
  info: unknown;
}

export interface Presence {
  channel: string;
  clients: PresenceClient[];
  /** Pass as `cursor` for the next page; null after the last. */
  next: string | null;
}

export interface SocketPublishOptions {
  /** The event type (default "message"). */
  event?: string;
  /** The idempotency key (default: a random one). */
  key?: string;
}

export interface TidingsSocketEventMap {
  statechange: Event;
  error: TidingsErrorEvent;
}

/**
 * The Tidings WebSocket protocol (tidings.v1.json) with reconnect, exact
 * recovery and an offline publish queue. Events: "message", "reset", "join",
 * "leave", "statechange", "error", and any event type of your own.
 */
export class TidingsSocket extends Listeners<TidingsSocketEventMap, TidingsSocketEvent> {
  constructor(url?: string | URL, options?: TidingsSocketOptions);
  readonly url: string;
  info: unknown;
  readonly state: ConnectionState;
  /** The backoff settings and the attempts made since the last open connection. */
  readonly backoff: { base: number; cap: number; maxAttempts: number; attempt: number };
  requestTimeout: number;
  queueLimit: number;
  pingInterval: number;
  pongTimeout: number;
  /** The subprotocol spoken: "tidings.v1.msgpack" with a codec, else "tidings.v1.json". */
  readonly protocol: "tidings.v1.json" | "tidings.v1.msgpack";
  /** The code and reason of the last close; null until a connection closed. */
  readonly closeCode: number | null;
  readonly closeReason: string | null;
  /** Resolves with the reply's result; null while not connected (it is sent on connect). */
  subscribe(channel: string, options?: { since?: Position | null }): Promise<Subscribed | null>;
  /** Resolves with `{channel}`; null while not connected. */
  unsubscribe(channel: string): Promise<{ channel: string } | null>;
  publish(
    channel: string,
    data: unknown,
    options?: SocketPublishOptions & { text?: false },
  ): Promise<Published>;
  publish(
    channel: string,
    data: string,
    options: SocketPublishOptions & { text: boolean },
  ): Promise<Published>;
  history(channel: string, options?: { since?: Position; limit?: number }): Promise<History>;
  /** One page of a channel's presence; pass the answer's `next` as `cursor` for the next. */
  presence(channel: string, options?: { cursor?: string; limit?: number }): Promise<Presence>;
  ping(): Promise<Record<string, never>>;
  close(): void;
}

// Only what is marked `export` above is exported (Listeners is not).
export {};
