// The aiowt chat page: WebTransport to /chat/{room}?name=..., msgpack on the wire.
//
// msgpack comes from the @msgpack/msgpack package (its UMD build, the global
// `MessagePack`), copied to vendor/ by `npm ci --prefix examples/chat`. The frames
// around it are aiowt's stream framing: a 4-byte big-endian length, then the body.
//
// Open with ?room=lobby&name=ada to join at once. The page's state is on
// <body data-state="idle|connecting|joined|closed|refused|error">: `refused` when
// the page or the server refused the room or name, `error` when the server could not
// be reached or refused for a reason the page cannot know (browsers do not expose a
// refused handshake's status or reason).

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

// === wire: framing, connect, datagrams ======================================================
// Everything that touches WebTransport or the byte format is in this section, behind
// one function, `connectChat`; the rest of the page sees decoded maps only. (To be
// replaced by the aiowt JS client package, clients/js, with the same shape.)
//
// connectChat(config, room, name, {onMessage, onSignal}) returns a wire:
//   url               the session's URL
//   ready             resolves once the session is open and our stream is ready;
//                     rejects if not (then `closed` says how it ended)
//   closed            always resolves, with {closeCode, reason, error}: closeCode and
//                     reason from the session's close (ours or the server's), or
//                     closeCode null and `error` the text of the failure
//   send(message)     a map on our bidirectional stream (length-prefixed msgpack)
//   signal(message)   a map as one datagram (unreliable)
//   close(code, reason)
// onMessage(map) gets each map of the server's streams, onSignal(map) each datagram.

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

function connectChat(config, room, name, { onMessage, onSignal }) {
  const url = new URL(
    `https://${location.hostname}:${config.port}${config.path}${encodeURIComponent(room)}`,
  );
  if (name) url.searchParams.set("name", name);
  const options = {};
  if (config.certificateHashes.length) {
    options.serverCertificateHashes = config.certificateHashes.map((hex) => ({
      algorithm: "sha-256",
      value: hexToBytes(hex),
    }));
  }
  const transport = new WebTransport(url.href, options);
  const closed = transport.closed.then(
    (info) => ({ closeCode: info?.closeCode ?? 0, reason: info?.reason ?? "", error: null }),
    (error) => ({ closeCode: null, reason: "", error: String(error?.message || error) }),
  );
  const datagrams = transport.datagrams.writable.getWriter();
  let writer = null;
  const ready = (async () => {
    await transport.ready;
    readStreams(transport, onMessage).catch(() => {});
    readDatagrams(transport, onSignal).catch(() => {});
    // Our messages go on one stream we open, so the server gets them in order.
    writer = (await transport.createBidirectionalStream()).writable.getWriter();
  })();
  ready.catch(() => {
    try {
      transport.close({ closeCode: 0, reason: "could not open a stream" });
    } catch {
      // closed already
    }
  });
  return {
    url,
    ready,
    closed,
    send: (message) => writer.write(frame(message)),
    signal: (message) => datagrams.write(encode(message)),
    close: (closeCode, reason) => transport.close({ closeCode, reason }),
  };
}

async function readStreams(transport, onMessage) {
  const streams = transport.incomingUnidirectionalStreams.getReader();
  for (;;) {
    const { value, done } = await streams.read();
    if (done) return;
    readFrames(value, onMessage).catch(() => {});
  }
}

async function readFrames(readable, onMessage) {
  const reader = readable.getReader();
  const frames = new FrameReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    for (const message of frames.push(value)) onMessage(message);
  }
}

async function readDatagrams(transport, onSignal) {
  const reader = transport.datagrams.readable.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onSignal(decode(value));
  }
}

// === end of wire ============================================================================

// --- the session -----------------------------------------------------------------------------

let current = null; // {wire, room, you, members: Map, lastTyping}

// The server's own rules (from /config.json) and reasons: a room or name it would
// refuse is refused here, with its words, without connecting.
function refusal(rules, room, name) {
  for (const [field, value] of [["room", room], ["name", name]]) {
    const rule = rules?.[field];
    if (rule && !new RegExp(`^(?:${rule.pattern})$`, "u").test(value)) return rule.reason;
  }
  return null;
}

function codeText(code) {
  return code >= 0x100 ? `0x${code.toString(16)}` : String(code);
}

async function join(room, name) {
  $("join").disabled = true; // one join at a time
  const config = await (await fetch("/config.json")).json();
  const refused = refusal(config.rules, room, name);
  if (refused !== null) {
    $("join").disabled = false;
    setState("refused", `cannot join: ${refused}`);
    return;
  }
  setState("connecting", `connecting to ${location.hostname}:${config.port}…`);
  const session = { wire: null, room, you: null, members: new Map(), lastTyping: 0 };
  current = session;
  session.wire = connectChat(config, room, name, {
    onMessage: (message) => handle(session, message),
    onSignal: (message) => signalled(session, message),
  });
  session.wire.closed.then((info) => ended(session, info));
  // The view changes with the `history` message: a session the server closes at once
  // (a taken name) leaves the last one's view as it was.
  await session.wire.ready.catch(() => {}); // if it fails, `ended` says why
}

function handle(session, message) {
  if (session !== current) return;
  switch (message.type) {
    case "history":
      $("room-name").textContent = `In ${session.room}`;
      $("log").replaceChildren();
      clearTyping();
      $("join-form").hidden = true;
      $("chat").hidden = false;
      setControls(true);
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

function signalled(session, message) {
  if (session !== current) return;
  if (message.type === "typing" && message.id !== session.you?.id) showTyping(message.from);
}

// However the session ended (Leave, the server's close, a lost connection, a refusal):
// nothing of it stays on screen as if it were live.
function ended(session, info) {
  if (session !== current) return;
  current = null;
  session.members.clear();
  $("members").replaceChildren();
  if (session.you) $("room-name").textContent = `Left ${session.room}`;
  clearTyping();
  setControls(false);
  $("join").disabled = false;
  $("join-form").hidden = false;
  if (info.closeCode === null) {
    // A refused handshake or an unreachable server look the same to a page.
    const where = `room '${session.room}'`;
    setState(
      "error",
      session.you
        ? `connection lost: ${info.error}`
        : `could not join ${where}: the server refused the session or could not be ` +
            `reached (${info.error}); the server's log says why`,
    );
    return;
  }
  const why = `${info.reason || "connection ended"} (code ${codeText(info.closeCode)})`;
  // Closed before the history came: the server would not have us (e.g. a taken name).
  if (session.you) setState("closed", `closed: ${why}`);
  else setState("refused", `could not join: ${why}`);
}

function say(text) {
  return current.wire.send({ type: "say", text });
}

function typing() {
  const now = Date.now();
  if (!current?.you || now - current.lastTyping < TYPING_EVERY_MS) return;
  current.lastTyping = now;
  current.wire.signal({ type: "typing" }).catch(() => {});
}

// --- view ------------------------------------------------------------------------------------
// Text from the network only ever goes into textContent.

function setControls(live) {
  for (const id of ["text", "send", "leave"]) $(id).disabled = !live;
}

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
  typingTimer = setTimeout(clearTyping, TYPING_SHOWN_MS);
}

function clearTyping() {
  clearTimeout(typingTimer);
  typingTimer = null;
  $("typing").textContent = "";
}

// --- wiring ----------------------------------------------------------------------------------

function start(room, name) {
  join(room, name).catch((error) => {
    current = null;
    $("join").disabled = false;
    setState("error", `could not join: ${error.message || error}`);
    $("join-form").hidden = false;
  });
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (current || $("join").disabled) return; // joining already
  start($("room").value.trim(), $("name").value.trim());
});

$("say-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!current?.you || !text.trim()) return;
  $("text").value = "";
  say(text).catch((error) => addLine("error", `not sent: ${error.message || error}`));
});

$("text").addEventListener("input", typing);

$("leave").addEventListener("click", () => {
  if (!current) return;
  setControls(false);
  current.wire.close(0, "left");
});

const params = new URLSearchParams(location.search);
if (params.get("name")) $("name").value = params.get("name");
if (params.get("room")) {
  $("room").value = params.get("room");
  start(params.get("room").trim(), (params.get("name") || "").trim());
}
