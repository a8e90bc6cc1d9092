// Chat with Tidings' AI SDK endpoint from Node, with the `ai` package's own client.
//
//   npm install ai@6
//   tidings serve &
//   node ai_sdk_chat.mjs http://127.0.0.1:8000/v1/ai-sdk/chat "Hello"
//
// useChat (React, Vue, Svelte) takes the same transport: new DefaultChatTransport({ api, body }).
import { DefaultChatTransport, readUIMessageStream } from "ai";

const [api = "http://127.0.0.1:8000/v1/ai-sdk/chat", prompt = "Hello", model = "demo"] =
  process.argv.slice(2);

// The chat's id: a resume (GET {api}/{id}/stream) asks for this chat's running answer.
const chatId = crypto.randomUUID();
const transport = new DefaultChatTransport({ api, body: { model } });
const stream = await transport.sendMessages({
  chatId,
  trigger: "submit-message",
  messageId: undefined,
  abortSignal: undefined,
  messages: [{ id: crypto.randomUUID(), role: "user", parts: [{ type: "text", text: prompt }] }],
});

// Each state is the whole assistant message so far; print what is new of its text.
let printed = 0;
let finishReason = "none";
const [forText, forFinish] = stream.tee();
const finished = (async () => {
  for await (const chunk of forFinish) {
    if (chunk.type === "finish") finishReason = chunk.finishReason;
    if (chunk.type === "error") console.error(`error: ${chunk.errorText}`);
  }
})();
for await (const message of readUIMessageStream({ stream: forText })) {
  const text = message.parts.filter((part) => part.type === "text").map((part) => part.text).join("");
  process.stdout.write(text.slice(printed));
  printed = text.length;
}
await finished;
console.log(`\n[finish: ${finishReason}]`);
