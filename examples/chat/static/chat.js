// The aiowt chat page: a session to /chat/{room}?name=..., msgpack on the wire, through
// aiowt's browser client (clients/js; `make demo` builds it into vendor/).
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

import { CloseCode, MalformedMessage, connect } from "./vendor/aiowt-client.js";

const TYPING_EVERY_MS = 1500;
const TYPING_SHOWN_MS = 3000;

// === wire: the aiowt client package ===========================================================
// The session is the aiowt browser client's (clients/js, built into vendor/ by `make`):
// WebTransport, or WebSocket when the browser has no WebTransport or cannot reach the
// server over HTTP/3 (`config.websocketPort`), msgpack messages on streams and datagrams.
// The rest of the page sees decoded maps only.
//
// connectChat(config, room, name, {onMessage, onSignal}) returns a wire:
//   url               the session's URL
//   ready             resolves once the session is open and our stream is ready;
//                     rejects if not (then `closed` says how it ended)
//   closed            always resolves, with {closeCode, reason, error, transport}:
//                     closeCode and reason from the session's close (ours or the
//                     server's), or closeCode null and `error` the text of the failure
//   send(message)     a map on our bidirectional stream
//   signal(message)   a map as one datagram (unreliable)
//   close(code, reason)
//   transport         "webtransport" or "websocket" once open, else null
// onMessage(map) gets each map of the server's streams, onSignal(map) each datagram.

function connectChat(config, room, name, { onMessage, onSignal }) {
  const url = new URL(
    `https://${location.hostname}:${config.port}${config.path}${encodeURIComponent(room)}`,
  );
  if (name) url.searchParams.set("name", name);
  const options = { certificateHashes: config.certificateHashes };
  if (config.websocketPort) {
    // Plain ws:// on the page's own host: a browser cannot pin a certificate for wss.
    options.websocketUrl = `ws://${location.host.split(":")[0]}:${config.websocketPort}${url.pathname}${url.search}`;
  } else {
    options.transport = "webtransport";
  }
  let settle;
  const closed = new Promise((resolve) => (settle = resolve));
  let session = null;
  let stream = null;
  const ready = (async () => {
    session = await connect(url.href, options);
    session.closed.then((info) =>
      settle(
        info.code === CloseCode.ABORTED
          ? { closeCode: null, reason: "", error: info.reason || "connection lost", transport: session.transport }
          : { closeCode: info.code, reason: info.reason, error: null, transport: session.transport },
      ),
    );
    readStreams(session, onMessage).catch(() => {});
    readDatagrams(session, onSignal).catch(() => {});
    // Our messages go on one stream we open, so the server gets them in order.
    stream = await session.openStream();
    return session.transport;
  })();
  ready.catch((error) => {
    settle({ closeCode: null, reason: "", error: String(error?.message || error), transport: null });
    session?.close(0, "could not open a stream");
  });
  return {
    url,
    ready,
    closed,
    get transport() {
      return session?.transport ?? null; // "webtransport" or "websocket", once open
    },
    send: (message) => stream.send(message),
    signal: (message) => session.sendDatagram(message),
    close: (closeCode, reason) => session?.close(closeCode, reason),
  };
}

async function readStreams(session, onMessage) {
  for await (const incoming of session.incomingStreams()) {
    (async () => {
      for await (const message of incoming.messages()) onMessage(message);
    })().catch(() => {});
  }
}

async function readDatagrams(session, onSignal) {
  // A datagram that is not msgpack ends one pass of the iterator; the next goes on.
  while (!session.isClosed) {
    try {
      for await (const message of session.datagrams()) onSignal(message);
      return;
    } catch (error) {
      if (!(error instanceof MalformedMessage)) return;
    }
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
  const session = {
    wire: null,
    room,
    you: null,
    members: new Map(),
    lastTyping: 0,
  };
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

// The transport, where it is not the usual one (the page's state carries it always).
function over(session) {
  const transport = session.wire.transport;
  document.body.dataset.transport = transport ?? "";
  return transport === "websocket" ? " (over WebSocket)" : "";
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
      setState("joined", `in ${session.room} as ${session.you.name}${over(session)}`);
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
