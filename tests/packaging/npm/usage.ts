// The browser client as a TypeScript user writes it, against the packed npm
// package: tsc --noEmit must accept every line, and each @ts-expect-error line
// must be an error (so a type that went `any` fails too).
import {
  CLOSE_CODES,
  cursorHead,
  publish,
  shouldReconnect,
  tokenExpiry,
  TidingsError,
  TidingsEvent,
  TidingsEventSource,
  TidingsSocket,
  TidingsSocketEvent,
  streamFetch,
  type ConnectionState,
  type StreamItem,
  type Position,
  type Published,
} from "tidings-client";

export async function main(): Promise<void> {
  const source = new TidingsEventSource("/sse", ["chat", "news"], { lastEventId: null });
  source.addEventListener("message", (event) => {
    const channel: string | null = event.channel;
    const offset: number | null = event.offset;
    const type: string = event.event;
    console.log(channel, offset, type, event.data, event.raw, event.id);
  });
  source.addEventListener("reset", (event) => console.warn(event.reason));
  source.addEventListener("statechange", () => {
    const state: ConnectionState = source.state;
    console.log(state);
  });
  source.addEventListener("error", (event) => console.error(event.error));
  const resumeFrom: string | null = source.lastEventId;
  const withToken = new TidingsEventSource(new URL("https://example.test/sse"), new Set(["a"]), {
    withCredentials: true,
    getToken: async () => "token",
    lastEventId: resumeFrom,
  });
  withToken.close();
  // @ts-expect-error channels are names
  new TidingsEventSource("/sse", [1]);
  // @ts-expect-error the state is read only
  source.state = "open";

  const socket = new TidingsSocket("/ws", { info: { name: "ada" }, maxAttempts: 5, getToken: () => "t" });
  socket.addEventListener("join", (event: TidingsSocketEvent) => console.log(event.data));
  socket.addEventListener("message", (event) => {
    const epoch: string | null = event.epoch;
    console.log(epoch, event.event, event.text);
  });
  const subscribed = await socket.subscribe("chat:lobby", { since: { epoch: "e", offset: 3 } });
  if (subscribed !== null && !subscribed.recovered) console.warn(subscribed.reset);
  const published: Published = await socket.publish("chat:lobby", { text: "hi" }, { key: "k1" });
  await socket.publish("chat:lobby", "plain", { text: true, event: "note" });
  const history = await socket.history("chat:lobby", { since: published, limit: 10 });
  const next: Position = history.next;
  for (const item of history.events) console.log(item.offset, item.time, item.data);
  const presence = await socket.presence("chat:lobby", { cursor: "c", limit: 50 });
  console.log(next, presence.clients.map((client) => client.user), presence.next);
  await socket.ping();
  await socket.unsubscribe("chat:lobby");
  const code: number | null = socket.closeCode;
  socket.close();
  // @ts-expect-error text: true publishes a string
  await socket.publish("chat:lobby", { not: "text" }, { text: true });
  // @ts-expect-error since is a position
  await socket.subscribe("chat:lobby", { since: 3 });

  const { offset } = await publish("news", { n: 1 }, { event: "update", baseUrl: "" });
  await publish("logs", "plain text", { text: true });
  // @ts-expect-error the channel is a string
  await publish(1, "x");

  try {
    await socket.ping();
  } catch (error) {
    if (error instanceof TidingsError) console.log(error.code, error.message);
  }
  const head = cursorHead("chat:e:1");
  const expires: number | null = tokenExpiry("a.b.c");
  const terminal: 4500 = CLOSE_CODES.BAD_REQUEST;
  const again: boolean = shouldReconnect(CLOSE_CODES.SHUTDOWN);
  console.log(offset, code, head.channel, expires, terminal, again);
  // @ts-expect-error the table is frozen
  CLOSE_CODES.NORMAL = 1001;

  const made = new TidingsEvent("message", { lastEventId: "c:e:1", data: "1" });
  const pushed = new TidingsSocketEvent("message", { channel: "c", epoch: "e", offset: 1, data: 1 });
  console.log(made.offset, pushed.offset, new TidingsError("timeout", "no reply").code);

  const shared = new TidingsEventSource("/sse", ["chat"], {
    sessionStorage: "chat-cursor", shared: true, base: 0.2, cap: 10, maxAttempts: 20,
  });
  shared.addEventListener("error", (event) => {
    const status: number | null = event.error.status;
    const final: boolean = event.final;
    console.log(event.error.code, status, final, event.error.retryAfter, shared.leader);
  });
  // @ts-expect-error sessionStorage is a key or a boolean
  new TidingsEventSource("/sse", ["chat"], { sessionStorage: 1 });
  const watched = new TidingsEventSource("/sse", ["chat"], { idleTimeout: 40000 });
  const idleTimeout: number = watched.idleTimeout;
  console.log(idleTimeout);
  // @ts-expect-error idleTimeout is in milliseconds, a number
  new TidingsEventSource("/sse", ["chat"], { idleTimeout: "40s" });

  const codec = { encode: (value: unknown) => new Uint8Array([value ? 1 : 0]), decode: (bytes: Uint8Array) => bytes[0] };
  const packed = new TidingsSocket("/ws", { msgpack: codec, pingInterval: 5000, pongTimeout: 2000 });
  const protocol: "tidings.v1.json" | "tidings.v1.msgpack" = packed.protocol;
  // @ts-expect-error a codec has encode and decode
  new TidingsSocket("/ws", { msgpack: { encode: () => new Uint8Array() } });

  const controller = new AbortController();
  const stream = streamFetch("/v1/chat/completions", { model: "demo" }, { signal: controller.signal });
  const id: string | null = (await stream.response).headers.get("x-tidings-stream-id");
  for await (const item of stream) {
    const current: StreamItem = item;
    console.log(current.event, current.id, current.data, current.raw, id, protocol);
  }
  // @ts-expect-error the format is sse or ndjson
  streamFetch("/api/stream/a", null, { format: "xml" });
}
