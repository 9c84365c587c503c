import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  CloseCode,
  ConnectError,
  DEFAULT_RETRY_WEBTRANSPORT_EVERY,
  ConnectTimeout,
  NotSupported,
  Reconnecting,
  SessionClosed,
  UsageError,
  connect,
  encodeCloseFrame,
  websocketUrlFor,
  type ConnectOptions,
  type Session,
} from "../src/index.js";
import { fakeWebTransport } from "./fake.js";
import { ManualScheduler, fakeWebSocket, settle } from "./fakesocket.js";

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

describe("timeouts say so", () => {
  const WS_URL = "wss://127.0.0.1:4433/echo?token=t";

  /** Start `connect()`, then fire its timers one attempt at a time (an injected clock). */
  async function connectFiring(options: ConnectOptions, attempts: number): Promise<unknown> {
    const timers = new ManualScheduler();
    const outcome = connect(URL, { ...options, schedule: timers.schedule }).then(
      () => assert.fail("connected"),
      (error: unknown) => error,
    );
    for (let i = 0; i < attempts; i++) {
      await settle();
      assert.equal(timers.size, 1, `attempt ${i + 1} waits on its timer`);
      timers.runAll();
    }
    const error = await outcome;
    assert.equal(timers.size, 0, "no timer left behind");
    return { error, delays: timers.delays };
  }

  test('"auto": WebTransport and then WebSocket both timed out is a ConnectTimeout with both attempts', async () => {
    const wt = fakeWebTransport("hang");
    const ws = fakeWebSocket("hang");
    const { error, delays } = (await connectFiring(
      { WebTransport: wt.WebTransport, WebSocket: ws.WebSocket, fallbackAfterMs: 30, timeoutMs: 1000 },
      2,
    )) as { error: ConnectTimeout; delays: number[] };
    assert.deepEqual(delays, [30, 1000]);
    assert.ok(error instanceof ConnectTimeout);
    assert.ok(error instanceof ConnectError, "still a ConnectError");
    assert.equal(error.name, "ConnectTimeout");
    assert.equal(error.timeoutMs, 1000);
    assert.deepEqual(
      error.attempts.map((a) => [a.transport, a.url, a.error.name]),
      [
        ["webtransport", URL, "TimeoutError"],
        ["websocket", WS_URL, "TimeoutError"],
      ],
    );
    assert.match(error.message, /WebTransport: no session within 30 ms; then WebSocket \(wss:\/\/127\.0\.0\.1:4433\/echo\?token=t\): no session within 1000 ms/);
    assert.match(error.message, /UDP port is reachable/);
    assert.match(error.message, /cannot be pinned for a WebSocket/);
    assert.equal(wt.instances[0]!.closeCalls.length, 1);
    assert.deepEqual(ws.instances[0]!.closeCalls, [1000]);
  });

  test('"auto": a refusal in either attempt keeps it a plain ConnectError', async () => {
    const timedOutThenRefused = await connectFiring(
      { WebTransport: fakeWebTransport("hang").WebTransport, WebSocket: fakeWebSocket("refuse").WebSocket, fallbackAfterMs: 30 },
      1,
    );
    const refusedThenTimedOut = await connectFiring(
      { WebTransport: fakeWebTransport("refuse").WebTransport, WebSocket: fakeWebSocket("hang").WebSocket, timeoutMs: 50 },
      1,
    );
    for (const { error } of [timedOutThenRefused, refusedThenTimedOut] as { error: ConnectError }[]) {
      assert.ok(error instanceof ConnectError);
      assert.ok(!(error instanceof ConnectTimeout), error.message);
      assert.deepEqual(error.attempts.map((a) => a.transport), ["webtransport", "websocket"]);
    }
    const [first, second] = [timedOutThenRefused, refusedThenTimedOut] as { error: ConnectError }[];
    assert.deepEqual(first!.error.attempts.map((a) => a.error.name), ["TimeoutError", "Error"]);
    assert.deepEqual(second!.error.attempts.map((a) => a.error.name), ["WebTransportError", "TimeoutError"]);
  });

  test('"auto" without WebTransport here, WebSocket timed out: a ConnectTimeout', async () => {
    const { error } = (await connectFiring({ WebSocket: fakeWebSocket("hang").WebSocket, timeoutMs: 40 }, 1)) as {
      error: ConnectTimeout;
    };
    assert.ok(error instanceof ConnectTimeout);
    assert.deepEqual(error.attempts.map((a) => [a.transport, a.error.name]), [["websocket", "TimeoutError"]]);
    assert.match(error.message, /WebTransport is not available here; WebSocket: no session within 40 ms/);
  });

  test('"webtransport" alone: a timeout is a ConnectTimeout, a refusal a ConnectError, both with the attempt', async () => {
    const { error: timedOut } = (await connectFiring(
      { transport: "webtransport", WebTransport: fakeWebTransport("hang").WebTransport, timeoutMs: 25 },
      1,
    )) as { error: ConnectTimeout };
    assert.ok(timedOut instanceof ConnectTimeout);
    assert.equal(timedOut.timeoutMs, 25);
    assert.deepEqual(timedOut.attempts.map((a) => [a.transport, a.url, a.error.name]), [["webtransport", URL, "TimeoutError"]]);
    const refused = await connect(URL, { transport: "webtransport", WebTransport: fakeWebTransport("refuse").WebTransport }).then(
      () => assert.fail("connected"),
      (error: unknown) => error as ConnectError,
    );
    assert.ok(refused instanceof ConnectError && !(refused instanceof ConnectTimeout));
    assert.deepEqual(refused.attempts.map((a) => [a.transport, a.error.name]), [["webtransport", "WebTransportError"]]);
    assert.equal(refused.attempts[0]!.error, refused.cause);
  });

  test('"websocket" alone: a timeout is a ConnectTimeout with the attempt, on the injected clock', async () => {
    const ws = fakeWebSocket("hang");
    const { error, delays } = (await connectFiring({ transport: "websocket", WebSocket: ws.WebSocket, timeoutMs: 70 }, 1)) as {
      error: ConnectTimeout;
      delays: number[];
    };
    assert.deepEqual(delays, [70]);
    assert.ok(error instanceof ConnectTimeout);
    assert.deepEqual(error.attempts.map((a) => [a.transport, a.url, a.error.name]), [["websocket", WS_URL, "TimeoutError"]]);
    assert.match(error.message, /no session within 70 ms/);
  });
});

describe("Reconnecting remembers a blocked WebTransport", () => {
  /** The next session after `previous`. */
  async function nextSession(client: Reconnecting, previous: Session | null): Promise<Session> {
    for (;;) {
      const session = await client.connected();
      if (session !== previous) return session;
      await session.closed;
    }
  }

  test("after WebTransport timed out and WebSocket worked: straight to WebSocket, WebTransport every 3rd attempt", async () => {
    const wt = fakeWebTransport("hang", "refuse", "ready");
    const ws = fakeWebSocket("open");
    const timers = new ManualScheduler();
    const client = new Reconnecting(URL, {
      WebTransport: wt.WebTransport,
      WebSocket: ws.WebSocket,
      fallbackAfterMs: 3000,
      schedule: timers.schedule,
      sleep: async () => {},
      retryWebTransportEvery: 3,
    });
    // Attempt 1: WebTransport hangs for fallbackAfterMs, then WebSocket.
    await settle();
    assert.deepEqual(timers.delays, [3000]);
    timers.runAll();
    let session = await nextSession(client, null);
    assert.equal(session.transport, "websocket");
    assert.deepEqual(session.fallbackFrom.map((a) => [a.transport, a.error.name]), [["webtransport", "TimeoutError"]]);
    assert.equal(client.skippingWebTransport, true);
    const serverCloses = () => ws.instances.at(-1)!.receive(encodeCloseFrame(CloseCode.GOING_AWAY, "restart"));
    // Attempts 2 and 3: WebSocket at once, no WebTransport, no fallback wait.
    for (const attempt of [2, 3]) {
      serverCloses();
      session = await nextSession(client, session);
      assert.equal(client.attempts, attempt);
      assert.equal(session.transport, "websocket");
      assert.deepEqual(session.fallbackFrom, []);
      assert.equal(wt.instances.length, 1, "WebTransport not tried");
    }
    // Attempt 4: WebTransport again; refused, WebSocket again: still remembered.
    serverCloses();
    session = await nextSession(client, session);
    assert.equal(wt.instances.length, 2);
    assert.equal(session.transport, "websocket");
    assert.equal(client.skippingWebTransport, true);
    // Attempts 5 and 6 skip it; attempt 7 tries it, it answers, and it is kept.
    for (const attempt of [5, 6]) {
      serverCloses();
      session = await nextSession(client, session);
      assert.equal(client.attempts, attempt);
      assert.equal(wt.instances.length, 2);
    }
    serverCloses();
    session = await nextSession(client, session);
    assert.equal(client.attempts, 7);
    assert.equal(session.transport, "webtransport");
    assert.equal(client.session?.transport, "webtransport");
    assert.equal(client.skippingWebTransport, false);
    wt.instances.at(-1)!.peerClose(CloseCode.GOING_AWAY);
    session = await nextSession(client, session);
    assert.equal(session.transport, "webtransport", "WebTransport first again");
    assert.equal(wt.instances.length, 4);
    // Each attempt's timers: fallbackAfterMs (3000) for a WebTransport try, timeoutMs
    // (10 000) for a WebSocket one; the skipping attempts start no fallbackAfterMs wait.
    const [F, T] = [3000, 10_000];
    assert.deepEqual(timers.delays, [F, T, T, T, F, T, T, T, F, F]);
    client.close();
    assert.equal(await client.finished, null);
    assert.equal(ws.instances.length, 6);
  });

  test("failed attempts count too; the default is every 10th", async () => {
    const wt = fakeWebTransport("refuse");
    const ws = fakeWebSocket("open", "refuse", "refuse", "refuse", "refuse", "refuse", "refuse", "refuse", "refuse", "refuse", "open");
    const client = new Reconnecting(URL, { WebTransport: wt.WebTransport, WebSocket: ws.WebSocket, sleep: async () => {} });
    assert.equal(client.retryWebTransportEvery, DEFAULT_RETRY_WEBTRANSPORT_EVERY);
    assert.equal(DEFAULT_RETRY_WEBTRANSPORT_EVERY, 10);
    const first = await nextSession(client, null);
    assert.equal(client.skippingWebTransport, true);
    ws.instances[0]!.receive(encodeCloseFrame(CloseCode.GOING_AWAY, ""));
    // Attempts 2-10 go to WebSocket only (refused); attempt 11 tries WebTransport first.
    const second = await nextSession(client, first);
    assert.equal(client.attempts, 11);
    assert.equal(wt.instances.length, 2);
    assert.equal(ws.instances.length, 11);
    assert.equal(second.transport, "websocket");
    client.close();
    await client.finished;
  });

  test('only in "auto"; a bad retryWebTransportEvery is a UsageError', () => {
    assert.throws(() => new Reconnecting(URL, { retryWebTransportEvery: 0 }), UsageError);
    assert.throws(() => new Reconnecting(URL, { retryWebTransportEvery: 2.5 }), UsageError);
  });
});
