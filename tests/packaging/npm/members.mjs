// Prints, as JSON, every public name of tidings.js: its exports and, for each
// exported class or object, the members a user sees (not those of Event,
// EventTarget or Error, not the _private ones). Run: node members.mjs FILE_URL
globalThis.window = { location: { href: "http://127.0.0.1/" } };
class Connection extends EventTarget {
  close() {}
  send() {}
}
globalThis.EventSource = Connection;
globalThis.WebSocket = Connection;
globalThis.fetch = () => new Promise(() => {}); // never answers: the samples are closed at once

const api = await import(process.argv[2]);
const samples = {
  TidingsEvent: () => new api.TidingsEvent("reset", {
    lastEventId: "c:e:1",
    data: '{"channel": "c", "epoch": "e", "offset": 1, "reason": "r"}',
  }),
  TidingsEventSource: () => new api.TidingsEventSource("/sse", ["c"]),
  TidingsSocketEvent: () => new api.TidingsSocketEvent("message", { channel: "c" }),
  TidingsError: () => new api.TidingsError("code", "message"),
  TidingsSocket: () => new api.TidingsSocket("/ws"),
};
const inherited = [new Event("x"), new EventTarget(), new Error("x")];
const isPublic = (name) => !name.startsWith("_") && name !== "constructor"
  && !inherited.some((base) => name in base);

const names = {};
for (const [name, value] of Object.entries(api)) {
  const found = new Set();
  let kind = typeof value;
  if (kind === "function" && /^[A-Z]/.test(name)) {
    kind = "class";
    if (!(name in samples)) throw new Error(`${name}: a class with no sample instance here`);
    Object.getOwnPropertyNames(value.prototype).forEach((key) => found.add(key));
    const instance = samples[name]();
    Object.keys(instance).forEach((key) => found.add(key));
    instance.close?.();
  } else if (kind === "object") {
    Object.keys(value).forEach((key) => found.add(key));
  }
  names[name] = { kind, members: [...found].filter(isPublic).sort() };
}
console.log(JSON.stringify(names));
