import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  CloseCode,
  ConnectError,
  ConnectTimeout,
  FrameDecoder,
  FrameTooLarge,
  InvalidCertificateHash,
  MalformedMessage,
  NotSupported,
  SessionClosed,
  UsageError,
  connect,
  decodeMessage,
  encodeFrame,
  encodeMessage,
  parseCertificateHash,
  truncateReason,
} from "../src/index.js";
import { Sink, fakeWebTransport } from "./fake.js";

const HEX = "00117c0f032e78fb3dbc6e0b9639a7c13d765c23c2eb49527ac8a3b9b66f2d9e";
const URL = "https://127.0.0.1:4433/echo";

function frames(sink: Sink): unknown[] {
  return new FrameDecoder().push(sink.bytes);
}

describe("certificate hashes", () => {
  test("64 hex digits, any case, with or without colons, or 32 bytes", () => {
    const bytes = parseCertificateHash(HEX);
    assert.equal(bytes.byteLength, 32);
    assert.equal(bytes[1], 0x11);
    assert.deepEqual(parseCertificateHash(HEX.toUpperCase()), bytes);
    assert.deepEqual(parseCertificateHash(HEX.match(/../g)!.join(":")), bytes);
    assert.deepEqual(parseCertificateHash(bytes), bytes);
  });

  test("anything else is InvalidCertificateHash, saying what is wrong", () => {
    const cases: [unknown, RegExp][] = [
      ["abc", /3 hex digits instead of 64/],
      [HEX + "00", /66 hex digits instead of 64/],
      ["zz" + HEX.slice(2), /is not hexadecimal/],
      [new Uint8Array(20), /20 bytes instead of 32/],
      [42, /a number instead of a string or bytes/],
    ];
    for (const [value, problem] of cases) {
      assert.throws(() => parseCertificateHash(value as string), (error: unknown) => {
        assert.ok(error instanceof InvalidCertificateHash);
        assert.ok(error instanceof UsageError);
        assert.match(error.message, problem);
        assert.match(error.message, /64 hex digits \(as `aiowt run` prints it\)/);
        return true;
      });
    }
  });

  test("connect() checks them before making a transport", async () => {
    const fake = fakeWebTransport("ready");
    await assert.rejects(
      connect(URL, { certificateHashes: ["nope"], WebTransport: fake.WebTransport }),
      InvalidCertificateHash,
    );
    assert.equal(fake.instances.length, 0);
  });

  test("connect() passes them to WebTransport as sha-256 hashes", async () => {
    const fake = fakeWebTransport("ready");
    const session = await connect(URL, { certificateHashes: [HEX], WebTransport: fake.WebTransport });
    const [transport] = fake.instances;
    assert.equal(transport!.url, URL);
    assert.deepEqual(transport!.options?.serverCertificateHashes, [
      { algorithm: "sha-256", value: parseCertificateHash(HEX) },
    ]);
    assert.equal(session.url, URL);
  });

  test("no hashes: no serverCertificateHashes option", async () => {
    const fake = fakeWebTransport("ready");
    await connect(URL, { WebTransport: fake.WebTransport });
    assert.equal(fake.instances[0]!.options?.serverCertificateHashes, undefined);
  });
});

describe("connect errors", () => {
  test("a refused session is a ConnectError naming the URL and what to check", async () => {
    const fake = fakeWebTransport("refuse");
    await assert.rejects(connect(URL, { WebTransport: fake.WebTransport }), (error: unknown) => {
      assert.ok(error instanceof ConnectError);
      assert.equal(error.url, URL);
      assert.match(error.message, /could not connect to https:\/\/127\.0\.0\.1:4433\/echo/);
      assert.match(error.message, /Opening handshake failed/);
      assert.match(error.message, /server is running/);
      assert.match(error.message, /UDP port is reachable/);
      assert.match(error.message, /certificate hash matches/);
      assert.match(error.message, /Browsers do not reveal why/);
      assert.equal((error.cause as Error).name, "WebTransportError");
      return true;
    });
  });

  test("no session within timeoutMs is a ConnectTimeout; the transport is closed", async () => {
    const fake = fakeWebTransport("hang");
    await assert.rejects(connect(URL, { WebTransport: fake.WebTransport, timeoutMs: 20 }), (error: unknown) => {
      assert.ok(error instanceof ConnectTimeout);
      assert.ok(error instanceof ConnectError);
      assert.equal(error.timeoutMs, 20);
      assert.match(error.message, /no session within 20 ms/);
      return true;
    });
    assert.equal(fake.instances[0]!.closeCalls.length, 1);
  });

  test("a WebTransport constructor that throws (bad URL) is a ConnectError", async () => {
    const fake = fakeWebTransport("throw");
    await assert.rejects(connect("nonsense", { WebTransport: fake.WebTransport }), (error: unknown) => {
      assert.ok(error instanceof ConnectError);
      assert.match(error.message, /invalid URL: nonsense/);
      return true;
    });
  });

  test("without WebTransport: NotSupported, mentioning the secure context", async () => {
    assert.equal((globalThis as { WebTransport?: unknown }).WebTransport, undefined);
    await assert.rejects(connect(URL), (error: unknown) => {
      assert.ok(error instanceof NotSupported);
      assert.match(error.message, /secure context/);
      return true;
    });
  });

  test("bad options are UsageErrors", async () => {
    const { WebTransport } = fakeWebTransport("ready");
    await assert.rejects(connect(URL, { WebTransport, maxMessageSize: -1 }), UsageError);
    await assert.rejects(connect(URL, { WebTransport, timeoutMs: 0 }), UsageError);
  });
});

describe("Session", () => {
  test("messages on a bidirectional stream, framed", async () => {
    const fake = fakeWebTransport("ready");
    const session = await connect(URL, { WebTransport: fake.WebTransport });
    const stream = await session.openStream();
    await stream.send({ a: 1 });
    await stream.send("two");
    await stream.close();
    const { sink, source } = fake.instances[0]!.opened[0]!;
    assert.deepEqual(frames(sink), [{ a: 1 }, "two"]);
    assert.equal(sink.closed, true);
    const reply = encodeFrame(["back", 1]);
    source!.push(reply.subarray(0, 3));
    source!.push(reply.subarray(3));
    source!.end();
    const got: unknown[] = [];
    for await (const message of stream.messages()) got.push(message);
    assert.deepEqual(got, [["back", 1]]);
  });

  test("an oversize send is refused locally: FrameTooLarge, nothing written", async () => {
    const fake = fakeWebTransport("ready");
    const session = await connect(URL, { WebTransport: fake.WebTransport, maxMessageSize: 64 });
    const stream = await session.openStream();
    await assert.rejects(stream.send(new Uint8Array(100)), FrameTooLarge);
    assert.equal(fake.instances[0]!.opened[0]!.sink.chunks.length, 0);
  });

  test("a malformed frame from the server: good messages first, then MalformedMessage", async () => {
    const fake = fakeWebTransport("ready");
    const session = await connect(URL, { WebTransport: fake.WebTransport });
    const stream = await session.openStream();
    const { source } = fake.instances[0]!.opened[0]!;
    source!.push(new Uint8Array([...encodeFrame("good"), 0, 0, 0, 1, 0xc1]));
    const got: unknown[] = [];
    await assert.rejects(async () => {
      for await (const message of stream.messages()) got.push(message);
    }, MalformedMessage);
    assert.deepEqual(got, ["good"]);
  });

  test("a stream that ends inside a frame is MalformedMessage", async () => {
    const fake = fakeWebTransport("ready");
    const session = await connect(URL, { WebTransport: fake.WebTransport });
    const stream = await session.openStream();
    const { source } = fake.instances[0]!.opened[0]!;
    source!.push(encodeFrame("cut").subarray(0, 5));
    source!.end();
    await assert.rejects(async () => {
      for await (const _ of stream.messages()) void _;
    }, /stream ended inside a frame \(5 bytes left over\)/);
  });

  test("datagrams: sent encoded, received decoded, oversize ones dropped and counted", async () => {
    const fake = fakeWebTransport("ready");
    const session = await connect(URL, { WebTransport: fake.WebTransport });
    const transport = fake.instances[0]!;
    assert.equal(await session.sendDatagram({ ping: 1 }), true);
    assert.equal(await session.sendDatagram(new Uint8Array(2000)), false);
    assert.equal(session.datagramsDropped, 1);
    assert.deepEqual(transport.datagramOut.chunks.map((c) => decodeMessage(c)), [{ ping: 1 }]);
    transport.datagramIn.push(encodeMessage({ pong: 2 }));
    transport.datagramIn.push(new Uint8Array([0xc1]));
    const iterator = session.datagrams()[Symbol.asyncIterator]();
    assert.deepEqual(await iterator.next(), { value: { pong: 2 }, done: false });
    await assert.rejects(iterator.next(), MalformedMessage);
  });

  test("incomingStreams: server-opened streams of both kinds; ends with the session", async () => {
    const fake = fakeWebTransport("ready");
    const session = await connect(URL, { WebTransport: fake.WebTransport });
    const transport = fake.instances[0]!;
    const uni = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(encodeFrame("from the server"));
        controller.close();
      },
    });
    transport.uniIn.push(uni);
    const streams = [];
    for await (const stream of session.incomingStreams()) {
      streams.push(stream);
      const messages: unknown[] = [];
      for await (const message of stream.messages()) messages.push(message);
      assert.deepEqual(messages, ["from the server"]);
      transport.peerClose(CloseCode.GOING_AWAY, "bye");
    }
    assert.deepEqual(streams.map((s) => s.kind), ["unidirectional"]);
    assert.throws(() => session.incomingStreams(), UsageError);
  });

  test("closed: code, reason, name and who closed", async () => {
    const fake = fakeWebTransport("ready");
    const byPeer = await connect(URL, { WebTransport: fake.WebTransport });
    fake.instances[0]!.peerClose(CloseCode.RATE_LIMITED, "slow down");
    assert.deepEqual(await byPeer.closed, { code: 0x1008, reason: "slow down", name: "RATE_LIMITED", byPeer: true });
    await assert.rejects(byPeer.openStream(), (error: unknown) => {
      assert.ok(error instanceof SessionClosed);
      assert.equal(error.info.name, "RATE_LIMITED");
      assert.match(error.message, /closed by the peer: RATE_LIMITED \(4104\): slow down/);
      return true;
    });

    const local = await connect(URL, { WebTransport: fake.WebTransport });
    local.close(4000, "é".repeat(600));
    const sent = fake.instances[1]!.closeCalls[0]!;
    assert.equal(sent.closeCode, 4000);
    assert.equal(new TextEncoder().encode(sent.reason).byteLength, 1024);
    const info = await local.closed;
    assert.equal(info.byPeer, false);
    assert.equal(info.name, undefined);
    local.close(); // again: nothing
    assert.equal(fake.instances[1]!.closeCalls.length, 1);
    assert.throws(() => local.close(-1), UsageError);

    const lost = await connect(URL, { WebTransport: fake.WebTransport });
    fake.instances[2]!.lose();
    assert.deepEqual(await lost.closed, { code: CloseCode.ABORTED, reason: "Connection lost.", name: "ABORTED", byPeer: true });
  });

  test("truncateReason cuts at a UTF-8 character boundary", () => {
    assert.equal(truncateReason("abc", 2), "ab");
    assert.equal(truncateReason("aé", 2), "a"); // é is two bytes
    assert.equal(truncateReason("short"), "short");
    assert.equal(truncateReason("€".repeat(400)).length, 341); // 3 bytes each, 1023 <= 1024
  });
});
