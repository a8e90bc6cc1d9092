// The `ai` npm package's own chat client against a Tidings server, for tests/integration/test_ai_sdk.py.
//
// node ai_sdk_client.mjs '{"mode": …, "api": "http://…/v1/ai-sdk/chat", "chatId": …, "model": …}'
// prints JSON lines on stdout: progress lines ({"event": …}) and, last, the result.
// The `ai` package is resolved from $TIDINGS_NPM_PREFIX (default /tmp/tidings-npm).
//
// modes:
//   send    DefaultChatTransport.sendMessages: every chunk the transport parsed, and the
//           message readUIMessageStream built from them (and the error it reported).
//   cut     a Chat (AbstractChat with a plain state) sends a message, stop()s after `cutAfter`
//           text deltas, prints {"event": "cut"}, then resumeStream(); once the transport's
//           reconnectToStream answered it prints {"event": "resumed"}; last, the chunks of
//           both streams and the chat's messages.
//   tools   a Chat's answer calls a tool; the script adds the tool's output and sends the
//           chat again with `nextModel`: the chat's messages.
//   resume  DefaultChatTransport.reconnectToStream alone: null (204) or its chunks.
import { pathToFileURL } from "node:url";

const prefix = process.env.TIDINGS_NPM_PREFIX || "/tmp/tidings-npm";
const ai = await import(pathToFileURL(`${prefix}/node_modules/ai/dist/index.mjs`).href);
const { AbstractChat, DefaultChatTransport, readUIMessageStream } = ai;

const plan = JSON.parse(process.argv[2]);
const say = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const userMessage = { id: "m-user", role: "user", parts: [{ type: "text", text: plan.text ?? "Say something." }] };

function transport(extra = {}) {
  return new DefaultChatTransport({ api: plan.api, body: { model: plan.model }, ...extra });
}

async function collect(stream) {
  const chunks = [];
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return chunks;
    chunks.push(value);
  }
}

async function send() {
  const stream = await transport().sendMessages({
    chatId: plan.chatId,
    messages: [userMessage],
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: undefined,
  });
  const [raw, parsed] = stream.tee();
  const chunksPromise = collect(raw);
  let message = null;
  let error = null;
  for await (const state of readUIMessageStream({ stream: parsed, onError: (e) => (error = String(e.message ?? e)) })) {
    message = state;
  }
  return { chunks: await chunksPromise, message, error };
}

class PlainState {
  constructor() {
    this.status = "ready";
    this.error = undefined;
    this.messages = [];
  }
  pushMessage = (message) => { this.messages = [...this.messages, message]; };
  popMessage = () => { this.messages = this.messages.slice(0, -1); };
  replaceMessage = (index, message) => { this.messages = this.messages.map((m, i) => (i === index ? message : m)); };
  snapshot = (thing) => structuredClone(thing);
}

class Chat extends AbstractChat {
  constructor(init) {
    super({ ...init, state: new PlainState() });
  }
}

async function cut() {
  const first = [];
  const resumed = [];
  let chat;
  const base = transport();
  const counting = {
    async sendMessages(options) {
      const stream = await base.sendMessages(options);
      let deltas = 0;
      return stream.pipeThrough(new TransformStream({
        transform(chunk, controller) {
          first.push(chunk);
          controller.enqueue(chunk);
          if (chunk.type === "text-delta" && ++deltas === plan.cutAfter) chat.stop();
        },
      }));
    },
    async reconnectToStream(options) {
      const stream = await base.reconnectToStream(options);
      say({ event: "resumed", found: stream !== null });
      if (stream === null) return null;
      return stream.pipeThrough(new TransformStream({
        transform(chunk, controller) { resumed.push(chunk); controller.enqueue(chunk); },
      }));
    },
  };
  Object.defineProperty(counting, "resumeStreamIsReplay", { value: base.resumeStreamIsReplay });
  let errors = [];
  chat = new Chat({ id: plan.chatId, transport: counting, onError: (e) => errors.push(String(e.message)) });
  await chat.sendMessage({ text: plan.text ?? "Say something." });
  say({ event: "cut", status: chat.status });
  await chat.resumeStream();
  return { first, resumed, messages: chat.messages, status: chat.status, errors };
}

async function tools() {
  // The page runs the tool the answer calls, adds its output, and sends the chat again
  // (with another model, so that the answer is text this time).
  const chat = new Chat({ id: plan.chatId, transport: transport() });
  await chat.sendMessage({ text: plan.text ?? "Weather?" });
  const call = chat.messages.at(-1).parts.find((part) => part.type.startsWith("tool-"));
  await chat.addToolOutput({ tool: call.type.slice(5), toolCallId: call.toolCallId, output: plan.output });
  await chat.sendMessage(undefined, { body: { model: plan.nextModel } });
  return { messages: chat.messages, status: chat.status, error: chat.error?.message ?? null };
}

async function resume() {
  const stream = await transport().reconnectToStream({ chatId: plan.chatId });
  return { resumed: stream === null ? null : await collect(stream) };
}

const modes = { send, cut, tools, resume };
try {
  say({ result: await modes[plan.mode]() });
} catch (error) {
  say({ failure: String(error?.message ?? error) });
}
