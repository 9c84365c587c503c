import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  CloseCode,
  ConnectError,
  ConnectTimeout,
  NotSupported,
  Reconnecting,
  SessionClosed,
  UsageError,
  connect,
  encodeCloseFrame,
  websocketUrlFor,
} from "../src/index.js";
import { fakeWebTransport } from "./fake.js";
import { fakeWebSocket } from "./fakesocket.js";

const URL = "https://127.0.0.1:4433/echo?token=t";

describe("the WebSocket URL", () => {
  test("is the https URL with wss://, the same host, port, path and query", () => {
    assert.equal(websocketUrlFor(URL), "wss://127.0.0.1:4433/echo?token=t");
    assert.equal(websocketUrlFor("http://localhost:8080/a/b"), "ws://localhost:8080/a/b");
    assert.equal(websocketUrlFor("https://chat.example/room#x"), "wss://chat.example/room");
    assert.equal(websocketUrlFor("ws://h:1/p"), "ws://h:1/p");
    assert.throws(() => websocketUrlFor("ftp://h/p"), UsageError);
    assert.throws(() => websocketUrlFor("not a url"), UsageError);
  });
});

describe("choosing the transport", () => {
  test('"auto" without WebTransport here: WebSocket at once', async () => {
    assert.equal((globalThis as { WebTransport?: unknown }).WebTransport, undefined);
    const ws = fakeWebSocket("open");
    const session = await connect(URL, { WebSocket: ws.WebSocket });
    assert.equal(session.transport, "websocket");
    assert.equal(session.url, "wss://127.0.0.1:4433/echo?token=t");
    assert.equal(ws.instances.length, 1);
  });

  test('"auto" with WebTransport that answers: WebTransport, no WebSocket', async () => {
    const wt = fakeWebTransport("ready");
    const ws = fakeWebSocket("open");
    const session = await connect(URL, { WebTransport: wt.WebTransport, WebSocket: ws.WebSocket });
    assert.equal(session.transport, "webtransport");
    assert.equal(session.connection, wt.instances[0]);
    assert.equal(ws.instances.length, 0);
  });

  test('"auto" with WebTransport refused: WebSocket right after, at websocketUrl', async () => {
    const wt = fakeWebTransport("refuse");
    const ws = fakeWebSocket("open");
    const session = await connect(URL, {
      WebTransport: wt.WebTransport,
      WebSocket: ws.WebSocket,
      websocketUrl: "ws://127.0.0.1:8080/echo?token=t",
      fallbackAfterMs: 60_000,
    });
    assert.equal(session.transport, "websocket");
    assert.equal(ws.instances[0]!.url, "ws://127.0.0.1:8080/echo?token=t");
  });

  test('"auto" with WebTransport not ready within fallbackAfterMs: it is closed, WebSocket is used', async () => {
    const wt = fakeWebTransport("hang");
    const ws = fakeWebSocket("open");
    const started = performance.now();
    const session = await connect(URL, {
      WebTransport: wt.WebTransport,
      WebSocket: ws.WebSocket,
      fallbackAfterMs: 30,
      timeoutMs: 10_000,
    });
    assert.ok(performance.now() - started >= 25);
    assert.equal(session.transport, "websocket");
    assert.equal(wt.instances[0]!.closeCalls.length, 1, "the abandoned WebTransport is closed");
  });

  test("both failing: a ConnectError that says what was tried, with each attempt's error", async () => {
    const wt = fakeWebTransport("refuse");
    const ws = fakeWebSocket("refuse");
    const error = await connect(URL, { WebTransport: wt.WebTransport, WebSocket: ws.WebSocket }).then(
      () => assert.fail("connected"),
      (e: unknown) => e as ConnectError,
    );
    assert.ok(error instanceof ConnectError);
    assert.equal(error.url, URL);
    assert.deepEqual(error.attempts.map((a) => [a.transport, a.url]), [
      ["webtransport", URL],
      ["websocket", "wss://127.0.0.1:4433/echo?token=t"],
    ]);
    assert.match(error.message, /WebTransport: the session was refused or failed \(Opening handshake failed\.\)/);
    assert.match(error.message, /then WebSocket \(wss:\/\/127\.0\.0\.1:4433\/echo\?token=t\): the WebSocket was refused or failed \(.*code 1006/);
    assert.match(error.message, /UDP port is reachable/);
    assert.match(error.message, /cannot be pinned for a WebSocket/);
  });

  test('"websocket": only WebSocket; a timeout is a ConnectTimeout', async () => {
    const wt = fakeWebTransport("ready");
    const ws = fakeWebSocket("hang");
    await assert.rejects(
      connect(URL, { transport: "websocket", WebTransport: wt.WebTransport, WebSocket: ws.WebSocket, timeoutMs: 20 }),
      (error: unknown) => {
        assert.ok(error instanceof ConnectTimeout);
        assert.equal(error.attempts.length, 1);
        assert.match(error.message, /no session within 20 ms/);
        return true;
      },
    );
    assert.equal(wt.instances.length, 0);
    assert.deepEqual(ws.instances[0]!.closeCalls, [1000], "the socket is closed");
  });

  test('"webtransport": never WebSocket', async () => {
    const wt = fakeWebTransport("refuse");
    const ws = fakeWebSocket("open");
    await assert.rejects(
      connect(URL, { transport: "webtransport", WebTransport: wt.WebTransport, WebSocket: ws.WebSocket }),
      (error: unknown) => error instanceof ConnectError && /do not reveal why/.test(error.message),
    );
    assert.equal(ws.instances.length, 0);
    await assert.rejects(connect(URL, { transport: "webtransport", WebSocket: ws.WebSocket }), NotSupported);
  });

  test("a ws:// or wss:// URL means WebSocket", async () => {
    const wt = fakeWebTransport("ready");
    const ws = fakeWebSocket("open");
    const session = await connect("ws://127.0.0.1:9/echo", { WebTransport: wt.WebTransport, WebSocket: ws.WebSocket });
    assert.equal(session.transport, "websocket");
    assert.equal(wt.instances.length, 0);
    await assert.rejects(connect("wss://h/p", { transport: "webtransport", WebTransport: wt.WebTransport }), UsageError);
  });

  test("bad choices are UsageErrors; no WebSocket for \"websocket\" is NotSupported", async () => {
    await assert.rejects(connect(URL, { transport: "carrier-pigeon" as "auto" }), UsageError);
    await assert.rejects(connect(URL, { fallbackAfterMs: 0 }), UsageError);
    await assert.rejects(connect(URL, { transport: "websocket" }), NotSupported);
    await assert.rejects(connect(URL), NotSupported); // node 20: neither
  });

  test("a WebSocket that opens is the session, whatever happened before", async () => {
    const ws = fakeWebSocket("refuse", "open");
    await assert.rejects(connect(URL, { transport: "websocket", WebSocket: ws.WebSocket }), ConnectError);
    const session = await connect(URL, { transport: "websocket", WebSocket: ws.WebSocket });
    assert.equal(session.isClosed, false);
  });
});

describe("Reconnecting over WebSocket", () => {
  test("comes back after the server's close, and gives up on a named code", async () => {
    const ws = fakeWebSocket("open");
    const sessions: string[] = [];
    const client = new Reconnecting(URL, {
      WebSocket: ws.WebSocket,
      giveUpCodes: [CloseCode.RATE_LIMITED],
      sleep: async () => {},
      onSession: (session) => void sessions.push(session.transport),
    });
    const first = await client.connected();
    ws.instances[0]!.receive(encodeCloseFrame(CloseCode.GOING_AWAY, "restarting"));
    await first.closed;
    let second = await client.connected();
    while (second === first) second = await client.connected();
    ws.instances[1]!.receive(encodeCloseFrame(CloseCode.RATE_LIMITED, "go away"));
    const error = await client.finished;
    assert.ok(error instanceof SessionClosed);
    assert.equal(error.info.name, "RATE_LIMITED");
    assert.deepEqual(sessions, ["websocket", "websocket"]);
    assert.equal(client.sessionsOpened, 2);
  });
});
