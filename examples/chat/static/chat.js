// The aiowt chat page: WebTransport to /chat/{room}?name=..., msgpack on the wire.
//
// msgpack comes from the @msgpack/msgpack package (its UMD build, the global
// `MessagePack`), copied to vendor/ by `npm ci --prefix examples/chat`. The frames
// around it are aiowt's stream framing: a 4-byte big-endian length, then the body.
//
// Open with ?room=lobby&name=ada to join at once. The page's state is on
// <body data-state="idle|connecting|joined|closed|error">.

const $ = (id) => document.getElementById(id);

function setState(state, text) {
  document.body.dataset.state = state;
  $("status").textContent = text;
}

if (typeof MessagePack === "undefined") {
  setState("error", "msgpack library missing: run `npm ci --prefix examples/chat`");
  throw new Error("vendor/msgpack.min.js did not load");
}
const { encode, decode } = MessagePack;
const TYPING_EVERY_MS = 1500;
const TYPING_SHOWN_MS = 3000;

// --- wire ------------------------------------------------------------------------------------

function frame(message) {
  const body = encode(message);
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, 4);
  return out;
}

class FrameReader {
  constructor() {
    this.buffer = new Uint8Array(0);
  }

  // Appends a chunk; returns every complete message it finished.
  push(chunk) {
    const joined = new Uint8Array(this.buffer.length + chunk.length);
    joined.set(this.buffer);
    joined.set(chunk, this.buffer.length);
    this.buffer = joined;
    const messages = [];
    while (this.buffer.length >= 4) {
      const length = new DataView(this.buffer.buffer, this.buffer.byteOffset).getUint32(0);
      if (this.buffer.length < 4 + length) break;
      messages.push(decode(this.buffer.subarray(4, 4 + length)));
      this.buffer = this.buffer.slice(4 + length);
    }
    return messages;
  }
}

function hexToBytes(hex) {
  return new Uint8Array(hex.match(/../g).map((h) => parseInt(h, 16)));
}

// --- the session -----------------------------------------------------------------------------

let current = null; // {transport, writer, datagrams, room, you, members: Map, lastTyping}

async function join(room, name) {
  const config = await (await fetch("/config.json")).json();
  const url = new URL(`https://${location.hostname}:${config.port}${config.path}${encodeURIComponent(room)}`);
  if (name) url.searchParams.set("name", name);
  const options = {};
  if (config.certificateHashes.length) {
    options.serverCertificateHashes = config.certificateHashes.map((hex) => ({
      algorithm: "sha-256",
      value: hexToBytes(hex),
    }));
  }
  setState("connecting", `connecting to ${url.host}…`);
  const transport = new WebTransport(url.href, options);
  await transport.ready;
  // Our messages go on one stream we open, so the server gets them in order.
  const stream = await transport.createBidirectionalStream();
  const session = {
    transport,
    writer: stream.writable.getWriter(),
    datagrams: transport.datagrams.writable.getWriter(),
    room,
    you: null,
    members: new Map(),
    lastTyping: 0,
  };
  current = session;
  transport.closed.then(
    (info) => closed(session, info),
    (error) => closed(session, { closeCode: null, reason: String(error) }),
  );
  readStreams(session).catch(() => {});
  readDatagrams(session).catch(() => {});
  $("room-name").textContent = room;
  $("log").replaceChildren();
  $("members").replaceChildren();
  $("join-form").hidden = true;
  $("chat").hidden = false;
}

async function readStreams(session) {
  const streams = session.transport.incomingUnidirectionalStreams.getReader();
  for (;;) {
    const { value, done } = await streams.read();
    if (done) return;
    readFrames(session, value).catch(() => {});
  }
}

async function readFrames(session, readable) {
  const reader = readable.getReader();
  const frames = new FrameReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    for (const message of frames.push(value)) handle(session, message);
  }
}

async function readDatagrams(session) {
  const reader = session.transport.datagrams.readable.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const message = decode(value);
    if (message.type === "typing" && message.id !== session.you?.id) showTyping(message.from);
  }
}

function handle(session, message) {
  if (session !== current) return;
  switch (message.type) {
    case "history":
      session.you = message.you;
      for (const member of message.members) session.members.set(member.id, member.name);
      for (const posted of message.messages) addMessage(posted);
      renderMembers(session);
      setState("joined", `in ${session.room} as ${session.you.name}`);
      break;
    case "join":
      session.members.set(message.id, message.name);
      addEvent(message.id === session.you?.id ? "you joined" : `${message.name} joined`);
      renderMembers(session);
      break;
    case "leave":
      session.members.delete(message.id);
      addEvent(`${message.name} left (${message.reason})`);
      renderMembers(session);
      break;
    case "message":
      addMessage(message);
      break;
    case "error":
      addLine("error", `server: ${message.error}`);
      break;
  }
}

function closed(session, info) {
  if (session !== current) return;
  current = null;
  const code = info.closeCode ? ` (code ${info.closeCode})` : "";
  setState("closed", `closed: ${info.reason || "connection ended"}${code}`);
  $("join-form").hidden = false;
}

async function say(text) {
  await current.writer.write(frame({ type: "say", text }));
}

function typing() {
  const now = Date.now();
  if (!current || now - current.lastTyping < TYPING_EVERY_MS) return;
  current.lastTyping = now;
  current.datagrams.write(encode({ type: "typing" })).catch(() => {});
}

// --- view ------------------------------------------------------------------------------------
// Text from the network only ever goes into textContent.

function addLine(className, text) {
  const item = document.createElement("li");
  item.className = className;
  item.textContent = text;
  append(item);
  return item;
}

function addEvent(text) {
  addLine("event", text);
}

function addMessage(message) {
  const item = document.createElement("li");
  item.className = "message";
  item.dataset.seq = message.seq;
  item.dataset.id = message.id;
  item.dataset.from = message.from;
  const time = document.createElement("time");
  time.textContent = new Date(message.time * 1000).toLocaleTimeString();
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = message.from;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message.text;
  item.append(time, from, ": ", text);
  append(item);
}

function append(item) {
  const log = $("log");
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(item);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function renderMembers(session) {
  const items = [...session.members].map(([id, name]) => {
    const item = document.createElement("li");
    item.textContent = name;
    if (id === session.you?.id) item.className = "you";
    return item;
  });
  $("members").replaceChildren(...items);
}

let typingTimer = null;
function showTyping(name) {
  $("typing").textContent = `${name} is typing…`;
  clearTimeout(typingTimer);
  typingTimer = setTimeout(() => ($("typing").textContent = ""), TYPING_SHOWN_MS);
}

// --- wiring ----------------------------------------------------------------------------------

function start(room, name) {
  join(room, name).catch((error) => {
    current = null;
    setState("error", `could not join: ${error.message || error}`);
    $("join-form").hidden = false;
  });
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  start($("room").value.trim(), $("name").value.trim());
});

$("say-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!current || !text.trim()) return;
  $("text").value = "";
  say(text).catch((error) => addLine("error", `not sent: ${error.message || error}`));
});

$("text").addEventListener("input", typing);

$("leave").addEventListener("click", () => {
  current?.transport.close({ closeCode: 0, reason: "left" });
});

const params = new URLSearchParams(location.search);
if (params.get("name")) $("name").value = params.get("name");
if (params.get("room")) {
  $("room").value = params.get("room");
  start(params.get("room"), params.get("name") || "");
}
