import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  CloseCode,
  DEFAULT_MAX_INCOMING_STREAMS,
  FrameDecoder,
  INCOMING_DATAGRAM_QUEUE,
  MAX_CHUNK,
  MessageReader,
  MessageStream,
  MuxFrameType,
  STREAM_WINDOW,
  SessionClosed,
  StreamErrorCode,
  StreamReset,
  UsageError,
  WebSocketTransport,
  connect,
  decodeCode,
  decodeReason,
  encodeCloseFrame,
  encodeCodedFrame,
  encodeFrame,
  encodeMessage,
  encodeMuxFrame,
  type MuxFrame,
  type Session,
} from "../src/index.js";
import { FakeSocket, ManualScheduler, fakeWebSocket, settle } from "./fakesocket.js";

const URL = "https://127.0.0.1:4433/echo";

async function open(): Promise<{ session: Session; socket: FakeSocket; timers: ManualScheduler }> {
  const fake = fakeWebSocket("open");
  const timers = new ManualScheduler();
  const session = await connect(URL, {
    transport: "websocket",
    WebSocket: fake.WebSocket,
    websocketOptions: { schedule: timers.schedule },
  });
  return { session, socket: fake.instances[0]!, timers };
}

function streamBytes(frames: MuxFrame[], id: number): Uint8Array {
  const parts = frames.filter((f) => f.id === id && (f.type === MuxFrameType.STREAM || f.type === MuxFrameType.STREAM_FIN));
  return Buffer.concat(parts.map((f) => f.payload));
}

function pattern(size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + 7) & 0xff;
  return bytes;
}

/** The server sends `data` on stream `id`, in chunks of at most 16 KiB. */
function serverSends(socket: FakeSocket, id: number, data: Uint8Array, fin = false): void {
  for (let offset = 0; offset < data.byteLength || (fin && offset === 0); offset += MAX_CHUNK) {
    const chunk = data.subarray(offset, offset + MAX_CHUNK);
    const last = fin && offset + MAX_CHUNK >= data.byteLength;
    socket.receive(encodeMuxFrame(last ? MuxFrameType.STREAM_FIN : MuxFrameType.STREAM, id, chunk));
  }
}

describe("a session over WebSocket", () => {
  test("opens on the socket's open, in arraybuffer mode, at the derived URL", async () => {
    const { session, socket } = await open();
    assert.equal(session.transport, "websocket");
    assert.equal(socket.url, "wss://127.0.0.1:4433/echo");
    assert.equal(session.url, "wss://127.0.0.1:4433/echo");
    assert.equal(socket.binaryType, "arraybuffer");
    assert.equal(session.maxDatagramSize, 16 * 1024);
  });

  test("stream messages leave in STREAM frames of at most 16 KiB, then STREAM_FIN", async () => {
    const { session, socket } = await open();
    const stream = await session.openStream();
    const big = { blob: pattern(200_000) };
    await stream.send({ n: 1 });
    await stream.send(big);
    await stream.close();
    const frames = socket.take();
    assert.ok(frames.every((f) => f.id === 0 && f.payload.byteLength <= MAX_CHUNK));
    assert.ok(frames.slice(0, -1).every((f) => f.type === MuxFrameType.STREAM));
    assert.equal(frames.at(-1)!.type, MuxFrameType.STREAM_FIN);
    assert.equal(frames.at(-1)!.payload.byteLength, 0);
    assert.deepEqual(new FrameDecoder().push(streamBytes(frames, 0)), [{ n: 1 }, big]);
    // Stream ids are QUIC's: client bidirectional 0, 4...; unidirectional 2, 6...
    const second = await session.openStream();
    const uni = await session.openUnidirectionalStream();
    await second.send(1);
    await uni.send(2);
    assert.deepEqual(socket.take().map((f) => f.id), [4, 2]);
  });

  test("a stream sends only within the server's credit, and goes on with CREDIT", async () => {
    const { session, socket } = await open();
    const stream = await session.openStream();
    const message = pattern(600_000);
    let done = false;
    const sending = stream.send(message).then(() => (done = true));
    await settle();
    assert.equal(streamBytes(socket.frames(), 0).byteLength, STREAM_WINDOW);
    assert.equal(done, false, "the write waits for credit");
    socket.receive(encodeCodedFrame(MuxFrameType.CREDIT, 0, 100_000));
    await settle();
    assert.equal(streamBytes(socket.frames(), 0).byteLength, STREAM_WINDOW + 100_000);
    assert.equal(done, false);
    socket.receive(encodeCodedFrame(MuxFrameType.CREDIT, 0, 1_000_000));
    await sending;
    assert.deepEqual(new FrameDecoder().push(streamBytes(socket.frames(), 0)), [message]);
  });

  test("stream bytes wait while the socket's buffer is over 64 KiB (polled), datagrams do not", async () => {
    const { session, socket, timers } = await open();
    socket.bufferedAmount = 70_000;
    const stream = await session.openStream();
    const sending = stream.send("waits");
    await settle();
    assert.equal(socket.sent.length, 0);
    assert.equal(timers.size, 1, "a poll is scheduled");
    assert.equal(await session.sendDatagram("goes"), true);
    assert.equal(socket.take()[0]!.type, MuxFrameType.DATAGRAM);
    timers.runAll(); // still full: polls again
    assert.equal(socket.sent.length, 0);
    assert.equal(timers.size, 1);
    socket.bufferedAmount = 0;
    timers.runAll();
    await sending;
    assert.deepEqual(new FrameDecoder().push(streamBytes(socket.take(), 0)), ["waits"]);
    assert.equal(timers.size, 0, "no poll once nothing waits");
  });

  test("streams take turns, a chunk each: a small message is not stuck behind a large one", async () => {
    const { session, socket, timers } = await open();
    socket.bufferedAmount = 1_000_000;
    const bulk = await session.openStream();
    const chat = await session.openStream();
    const bulkSending = bulk.send(pattern(100_000));
    const chatSending = chat.send("hi");
    await settle();
    socket.bufferedAmount = 0;
    timers.runAll();
    await Promise.all([bulkSending, chatSending]);
    const ids = socket.take().map((f) => f.id);
    assert.deepEqual(ids.slice(0, 3), [0, 4, 0]);
    assert.equal(ids.length, 8); // 7 chunks of the bulk message, 1 of the chat
  });

  test("receives stream bytes, granting CREDIT as the server's rule does", async () => {
    const { session, socket } = await open();
    const stream = await session.openStream();
    await stream.send("ask");
    socket.take();
    const reply = encodeFrame({ blob: pattern(300_000) });
    serverSends(socket, 0, reply.subarray(0, 8 * MAX_CHUNK));
    assert.equal(socket.frames().length, 0, "half the window left: no CREDIT yet");
    serverSends(socket, 0, reply.subarray(8 * MAX_CHUNK, 9 * MAX_CHUNK));
    const [credit] = socket.take();
    assert.equal(credit!.type, MuxFrameType.CREDIT);
    assert.equal(credit!.id, 0);
    assert.equal(decodeCode(credit!.payload), 9 * MAX_CHUNK); // limit = received + window
    serverSends(socket, 0, reply.subarray(9 * MAX_CHUNK), true);
    const messages: unknown[] = [];
    for await (const message of stream.messages()) messages.push(message);
    assert.deepEqual(messages, [{ blob: pattern(300_000) }]);
  });

  test("streams the server opens arrive from incomingStreams(), bidirectional ones writable", async () => {
    const { session, socket } = await open();
    const incoming = session.incomingStreams()[Symbol.asyncIterator]();
    serverSends(socket, 3, encodeFrame({ pushed: 1 }), true);
    serverSends(socket, 1, encodeFrame("question"));
    const reader = (await incoming.next()).value as MessageReader;
    assert.equal(reader.kind, "unidirectional");
    const pushed: unknown[] = [];
    for await (const message of reader.messages()) pushed.push(message);
    assert.deepEqual(pushed, [{ pushed: 1 }]);
    const stream = (await incoming.next()).value as MessageStream;
    assert.equal(stream.kind, "bidirectional");
    await stream.send("answer");
    await stream.close();
    const frames = socket.take();
    assert.deepEqual(new FrameDecoder().push(streamBytes(frames, 1)), ["answer"]);
    assert.equal(frames.at(-1)!.type, MuxFrameType.STREAM_FIN);
    // A late frame on an old id opens nothing; the session goes on.
    serverSends(socket, 3, encodeFrame("late"));
    assert.equal(session.isClosed, false);
  });

  test("STOP is answered with RESET and fails the writer; RESET fails the reader", async () => {
    const { session, socket } = await open();
    const stream = await session.openStream();
    await stream.send(1);
    socket.take();
    socket.receive(encodeCodedFrame(MuxFrameType.STOP, 0, 0x2001));
    const [reset] = socket.take();
    assert.deepEqual([reset!.type, reset!.id, decodeCode(reset!.payload)], [MuxFrameType.RESET, 0, 0x2001]);
    await assert.rejects(stream.send(2), (error: { streamErrorCode?: number }) => error.streamErrorCode === 0x2001);
    socket.receive(encodeCodedFrame(MuxFrameType.RESET, 0, 0x2002));
    await assert.rejects(
      (async () => {
        for await (const _ of stream.messages());
      })(),
      (error: unknown) => error instanceof StreamReset && error.code === 0x2002,
    );
    assert.equal(session.isClosed, false);
  });

  test("abort() sends RESET; leaving messages() early sends STOP", async () => {
    const { session, socket } = await open();
    const stream = await session.openStream();
    await stream.send(1);
    await stream.abort();
    serverSends(socket, 0, Buffer.concat([encodeFrame("a"), encodeFrame("b")]));
    for await (const _ of stream.messages()) break;
    const frames = socket.take().filter((f) => f.type !== MuxFrameType.STREAM);
    assert.deepEqual(
      frames.map((f) => [f.type, f.id, decodeCode(f.payload)]),
      [[MuxFrameType.RESET, 0, 0], [MuxFrameType.STOP, 0, 0]],
    );
  });

  test("datagrams: at most 16 KiB, dropped and counted while the socket's buffer is over 256 KiB", async () => {
    const { session, socket } = await open();
    assert.equal(await session.sendDatagram({ ping: 1 }), true);
    const [frame] = socket.take();
    assert.equal(frame!.type, MuxFrameType.DATAGRAM);
    assert.deepEqual(Buffer.from(frame!.payload), Buffer.from(encodeMessage({ ping: 1 })));
    assert.equal(await session.sendDatagram(pattern(17 * 1024)), false);
    socket.bufferedAmount = 256 * 1024 + 1;
    assert.equal(await session.sendDatagram("dropped"), false);
    assert.equal(session.datagramsDropped, 2);
    assert.equal(socket.sent.length, 0, "nothing queued");
    socket.bufferedAmount = 256 * 1024;
    assert.equal(await session.sendDatagram("sent"), true);
    socket.receive(encodeMuxFrame(MuxFrameType.DATAGRAM, 0, encodeMessage({ pong: 2 })));
    for await (const datagram of session.datagrams()) {
      assert.deepEqual(datagram, { pong: 2 });
      break;
    }
  });
});

describe("how a session over WebSocket ends", () => {
  test("close(): CLOSE with the code and reason, then socket.close(1000)", async () => {
    const { session, socket } = await open();
    session.close(4000, "bye ✓");
    assert.deepEqual(Buffer.from(socket.sent.at(-1)!), Buffer.from(encodeCloseFrame(4000, "bye ✓")));
    assert.deepEqual(socket.closeCalls, [1000]);
    const info = await session.closed;
    assert.deepEqual(info, { code: 4000, reason: "bye ✓", name: undefined, byPeer: false });
    await assert.rejects(session.openStream(), SessionClosed);
    session.close(); // twice: nothing more
    assert.equal(socket.sent.filter((b) => b[0] === MuxFrameType.CLOSE).length, 1);
  });

  test("a long reason is cut to 1024 bytes", async () => {
    const { session, socket } = await open();
    session.close(4001, "r".repeat(2000));
    const frame = socket.frames().at(-1)!;
    assert.equal(decodeReason(frame.payload), "r".repeat(1024));
    assert.equal((await session.closed).reason, "r".repeat(1024));
  });

  test("the server's CLOSE ends the session with its code, named", async () => {
    const { session, socket } = await open();
    const stream = await session.openStream();
    const reading = (async () => {
      for await (const _ of stream.messages());
    })();
    socket.receive(encodeCloseFrame(CloseCode.GOING_AWAY, "restarting"));
    const info = await session.closed;
    assert.deepEqual(info, { code: CloseCode.GOING_AWAY, reason: "restarting", name: "GOING_AWAY", byPeer: true });
    assert.deepEqual(socket.closeCalls, [1000]);
    await assert.rejects(reading, SessionClosed);
  });

  test("a socket that ends without CLOSE ends the session ABORTED", async () => {
    const { session, socket, timers } = await open();
    socket.bufferedAmount = 1_000_000;
    const stream = await session.openStream();
    const sending = stream.send("never");
    socket.end(1006);
    const info = await session.closed;
    assert.equal(info.code, CloseCode.ABORTED);
    assert.equal(info.name, "ABORTED");
    assert.equal(info.byPeer, true);
    assert.match(info.reason, /closed \(code 1006\) without a session close/);
    await assert.rejects(sending, SessionClosed);
    assert.equal(timers.size, 0, "no poll left behind");
  });

  test("a frame that breaks the rules closes the session with PROTOCOL_ERROR", async () => {
    const cases: [Uint8Array | string, RegExp][] = [
      ["text", /text messages are not part of the session framing/],
      [new Uint8Array([1, 0, 0]), /shorter than its header/],
      [encodeMuxFrame(0x42, 0), /unknown frame type 0x42/],
      [encodeMuxFrame(MuxFrameType.CREDIT, 0, new Uint8Array(2)), /4-byte code/],
      [encodeMuxFrame(MuxFrameType.STREAM, 2, new Uint8Array(1)), /data on stream 2, which only this side sends on/],
    ];
    for (const [message, problem] of cases) {
      const { session, socket } = await open();
      await (await session.openUnidirectionalStream()).send(0);
      socket.take();
      socket.receive(message);
      const info = await session.closed;
      assert.equal(info.name, "PROTOCOL_ERROR");
      assert.equal(info.byPeer, false);
      assert.match(info.reason, problem);
      const [close] = socket.take();
      assert.equal(close!.type, MuxFrameType.CLOSE);
      assert.equal(close!.id, CloseCode.PROTOCOL_ERROR);
      assert.match(decodeReason(close!.payload), problem);
      assert.deepEqual(socket.closeCalls, [1000]);
    }
  });

  test("credit is granted as bytes arrive: a server sending on and on never runs out", async () => {
    const { session, socket } = await open();
    const stream = await session.openStream();
    await stream.send(0);
    for (let sent = 0; sent <= 2 * STREAM_WINDOW && !session.isClosed; sent += MAX_CHUNK) {
      socket.receive(encodeMuxFrame(MuxFrameType.STREAM, 0, new Uint8Array(MAX_CHUNK)));
      await settle();
    }
    const credits = socket.frames().filter((f) => f.type === MuxFrameType.CREDIT);
    assert.ok(credits.length > 0);
    const granted = credits.reduce((n, f) => n + decodeCode(f.payload), STREAM_WINDOW);
    assert.ok(granted >= 2 * STREAM_WINDOW + MAX_CHUNK + STREAM_WINDOW / 2);
    assert.equal(session.isClosed, false);
  });

  test("DRAIN is noted; the session goes on", async () => {
    const { session, socket } = await open();
    socket.receive(encodeMuxFrame(MuxFrameType.DRAIN));
    assert.equal((session.connection as { draining?: boolean }).draining, true);
    assert.equal(session.isClosed, false);
  });
});

describe("streams the server opens past maxIncomingStreams", () => {
  async function openWith(maxIncomingStreams?: number) {
    const fake = fakeWebSocket("open");
    const timers = new ManualScheduler();
    const session = await connect(URL, {
      transport: "websocket",
      WebSocket: fake.WebSocket,
      websocketOptions: { schedule: timers.schedule, maxIncomingStreams },
    });
    const socket = fake.instances[0]!;
    const connection = session.connection as WebSocketTransport;
    const uni = connection.incomingUnidirectionalStreams.getReader();
    const bidi = connection.incomingBidirectionalStreams.getReader();
    return { session, socket, connection, uni, bidi };
  }

  /** The STOP and RESET frames sent since the last look: [type, id, code] each. */
  function refusals(socket: FakeSocket): [number, number, number][] {
    return socket
      .take()
      .filter((f) => f.type === MuxFrameType.STOP || f.type === MuxFrameType.RESET)
      .map((f) => [f.type, f.id, decodeCode(f.payload)]);
  }

  const REFUSED = StreamErrorCode.REFUSED;

  test("the default is 256 of each kind open at once: the 257th is refused, the session goes on", async () => {
    const { session, socket, connection } = await openWith();
    assert.equal(connection.maxIncomingStreams, DEFAULT_MAX_INCOMING_STREAMS);
    assert.equal(DEFAULT_MAX_INCOMING_STREAMS, 256);
    for (let i = 0; i < 256; i++) serverSends(socket, 3 + 4 * i, encodeFrame(i));
    for (let i = 0; i < 256; i++) serverSends(socket, 1 + 4 * i, encodeFrame(i));
    assert.deepEqual(refusals(socket), []);
    serverSends(socket, 3 + 4 * 256, encodeFrame("one too many"));
    serverSends(socket, 1 + 4 * 256, encodeFrame("one too many"));
    assert.deepEqual(refusals(socket), [
      [MuxFrameType.STOP, 3 + 4 * 256, REFUSED],
      [MuxFrameType.STOP, 1 + 4 * 256, REFUSED],
      [MuxFrameType.RESET, 1 + 4 * 256, REFUSED],
    ]);
    assert.equal(connection.incomingStreamsRefused, 2);
    assert.equal(session.isClosed, false);
  });

  test("unidirectional: STOP REFUSED only; late frames on a refused id are dropped", async () => {
    const { session, socket, connection, uni } = await openWith(2);
    serverSends(socket, 3, encodeFrame("a"));
    serverSends(socket, 7, encodeFrame("b"));
    serverSends(socket, 11, encodeFrame("refused"));
    assert.deepEqual(refusals(socket), [[MuxFrameType.STOP, 11, REFUSED]]);
    serverSends(socket, 11, encodeFrame("late"), true);
    socket.receive(encodeCodedFrame(MuxFrameType.RESET, 11, REFUSED));
    assert.deepEqual(socket.take(), [], "nothing more said about stream 11");
    assert.equal(session.isClosed, false);
    // Only the two accepted streams arrived, and they still work.
    const first = new MessageReader(session, (await uni.read()).value!);
    const second = new MessageReader(session, (await uni.read()).value!);
    serverSends(socket, 3, encodeFrame("a2"), true);
    const got: unknown[] = [];
    for await (const message of first.messages()) got.push(message);
    assert.deepEqual(got, ["a", "a2"]);
    assert.equal(connection.incomingStreamsRefused, 1);
    void second;
  });

  test("a finished, reset or stopped stream frees its place", async () => {
    const { session, socket, uni } = await openWith(2);
    serverSends(socket, 3, encodeFrame("a"));
    serverSends(socket, 7, encodeFrame("b"));
    const r3 = (await uni.read()).value!;
    const r7 = (await uni.read()).value!;
    // Finished (STREAM_FIN): stream 11 takes its place.
    serverSends(socket, 3, new Uint8Array(0), true);
    serverSends(socket, 11, encodeFrame("c"));
    assert.deepEqual(refusals(socket), []);
    const r11 = (await uni.read()).value!;
    serverSends(socket, 15, encodeFrame("full again"));
    assert.deepEqual(refusals(socket), [[MuxFrameType.STOP, 15, REFUSED]]);
    // Reset by the server: stream 19 takes its place.
    socket.receive(encodeCodedFrame(MuxFrameType.RESET, 7, 0));
    serverSends(socket, 19, encodeFrame("d"));
    assert.deepEqual(refusals(socket), []);
    await (await uni.read()).value!.cancel().catch(() => {}); // 19: stopped by this side
    assert.deepEqual(refusals(socket), [[MuxFrameType.STOP, 19, 0]]);
    serverSends(socket, 23, encodeFrame("e"));
    assert.deepEqual(refusals(socket), []);
    // Stopped by this side: stream 11 too.
    await r11.cancel();
    socket.take();
    serverSends(socket, 27, encodeFrame("f"));
    assert.deepEqual(refusals(socket), []);
    serverSends(socket, 31, encodeFrame("full"));
    assert.deepEqual(refusals(socket), [[MuxFrameType.STOP, 31, REFUSED]]);
    // A stream done twice over frees one place, not two.
    socket.receive(encodeCodedFrame(MuxFrameType.RESET, 23, 0));
    socket.receive(encodeCodedFrame(MuxFrameType.RESET, 23, 0));
    serverSends(socket, 35, encodeFrame("g"));
    serverSends(socket, 39, encodeFrame("h"));
    assert.deepEqual(refusals(socket), [[MuxFrameType.STOP, 39, REFUSED]]);
    assert.equal(session.isClosed, false);
    void r3;
    void r7;
  });

  test("bidirectional: STOP and RESET REFUSED; a place is freed once both directions are done", async () => {
    const { session, socket, bidi } = await openWith(1);
    serverSends(socket, 1, encodeFrame("question"));
    const first = new MessageStream(session, ...pair((await bidi.read()).value!));
    serverSends(socket, 5, encodeFrame("refused"));
    assert.deepEqual(refusals(socket), [
      [MuxFrameType.STOP, 5, REFUSED],
      [MuxFrameType.RESET, 5, REFUSED],
    ]);
    // The server finished its side; ours is still open: the place is still taken.
    serverSends(socket, 1, new Uint8Array(0), true);
    serverSends(socket, 9, encodeFrame("still refused"));
    assert.deepEqual(refusals(socket), [
      [MuxFrameType.STOP, 9, REFUSED],
      [MuxFrameType.RESET, 9, REFUSED],
    ]);
    await first.send("answer");
    await first.close();
    socket.take();
    serverSends(socket, 13, encodeFrame("accepted"));
    assert.deepEqual(refusals(socket), []);
    const second = (await bidi.read()).value!;
    assert.ok(second.writable instanceof WritableStream);
    assert.equal(session.isClosed, false);
  });

  test("maxIncomingStreams 0 refuses every stream; a bad value is a UsageError", async () => {
    const { socket } = await openWith(0);
    serverSends(socket, 3, encodeFrame("no"));
    assert.deepEqual(refusals(socket), [[MuxFrameType.STOP, 3, REFUSED]]);
    for (const bad of [-1, 1.5, Number.NaN]) {
      assert.throws(() => new WebSocketTransport(new FakeSocket("ws://h/"), { maxIncomingStreams: bad }), UsageError);
    }
  });
});

function pair(stream: { readable: ReadableStream<Uint8Array>; writable: WritableStream<Uint8Array> }) {
  return [stream.readable, stream.writable] as const;
}

describe("incoming datagrams over WebSocket", () => {
  test("at most 256 wait unread; the rest are dropped and counted in session.datagramsDroppedIn", async () => {
    const { session, socket } = await open();
    assert.equal(session.datagramsDroppedIn, 0);
    for (let i = 0; i < 300; i++) socket.receive(encodeMuxFrame(MuxFrameType.DATAGRAM, 0, encodeMessage(i)));
    assert.equal(session.datagramsDroppedIn, 300 - INCOMING_DATAGRAM_QUEUE);
    assert.equal(session.datagramsDroppedIn, (session.connection as WebSocketTransport).datagramsDroppedIn);
    const got: unknown[] = [];
    for await (const datagram of session.datagrams()) {
      got.push(datagram);
      if (got.length === INCOMING_DATAGRAM_QUEUE) break;
    }
    assert.deepEqual(got, Array.from({ length: INCOMING_DATAGRAM_QUEUE }, (_, i) => i));
    // Read: there is room again.
    socket.receive(encodeMuxFrame(MuxFrameType.DATAGRAM, 0, encodeMessage("after")));
    assert.equal(session.datagramsDroppedIn, 300 - INCOMING_DATAGRAM_QUEUE);
    for await (const datagram of session.datagrams()) {
      assert.equal(datagram, "after");
      break;
    }
  });
});
