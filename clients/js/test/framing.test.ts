import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  DEFAULT_MAX_MESSAGE_SIZE,
  FrameDecoder,
  FrameTooLarge,
  MalformedMessage,
  UsageError,
  decodeMessage,
  encodeFrame,
  encodeMessage,
} from "../src/index.js";

const MESSAGES: unknown[] = [
  { type: "say", text: "héllo" },
  [1, 2.5, -3, null, true],
  new Uint8Array([0, 1, 2, 255]),
  "",
  { nested: { list: [{ a: 1 }], bytes: new Uint8Array(300).fill(7) } },
];

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}

function header(length: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, length);
  return out;
}

const STREAM = concat(...MESSAGES.map((m) => encodeFrame(m)));

describe("encodeFrame", () => {
  test("is a 4-byte big-endian length, then the msgpack body", () => {
    const frame = encodeFrame("hello");
    assert.deepEqual([...frame], [0, 0, 0, 6, 0xa5, ...new TextEncoder().encode("hello")]);
  });

  test("matches Python's msgpack.packb(..., use_bin_type=True)", () => {
    // msgpack.packb({"a": [1, b"\x00"]}, use_bin_type=True) == b"\x81\xa1a\x92\x01\xc4\x01\x00"
    assert.deepEqual([...encodeMessage({ a: [1, new Uint8Array([0])] })], [
      0x81, 0xa1, 0x61, 0x92, 0x01, 0xc4, 0x01, 0x00,
    ]);
    assert.deepEqual(decodeMessage(new Uint8Array([0x81, 0xa1, 0x61, 0x92, 0x01, 0xc4, 0x01, 0x00])), {
      a: [1, new Uint8Array([0])],
    });
  });

  test("refuses a message over the limit before anything is made", () => {
    assert.throws(() => encodeFrame(new Uint8Array(100), 50), (error: unknown) => {
      assert.ok(error instanceof FrameTooLarge);
      assert.equal(error.size, 102);
      assert.equal(error.limit, 50);
      assert.match(error.message, /102 bytes exceeds the limit of 50/);
      return true;
    });
    assert.equal(encodeFrame(new Uint8Array(48), 50).byteLength, 4 + 50);
  });

  test("the default limit is the server's 1 MiB", () => {
    assert.equal(DEFAULT_MAX_MESSAGE_SIZE, 1024 * 1024);
    assert.throws(() => encodeFrame(new Uint8Array(1024 * 1024)), FrameTooLarge);
  });

  test("a value msgpack cannot encode is a UsageError", () => {
    assert.throws(() => encodeMessage(Symbol("x")), UsageError);
    assert.throws(() => encodeMessage(() => 1), UsageError);
  });
});

describe("FrameDecoder", () => {
  test("several messages in one chunk", () => {
    const decoder = new FrameDecoder();
    assert.deepEqual(decoder.push(STREAM), MESSAGES);
    decoder.end();
  });

  test("a stream split into two chunks at every byte", () => {
    for (let cut = 0; cut <= STREAM.byteLength; cut++) {
      const decoder = new FrameDecoder();
      const got = [...decoder.push(STREAM.subarray(0, cut)), ...decoder.push(STREAM.subarray(cut))];
      assert.deepEqual(got, MESSAGES, `cut at ${cut}`);
      decoder.end();
    }
  });

  test("one byte at a time", () => {
    const decoder = new FrameDecoder();
    const got: unknown[] = [];
    for (let i = 0; i < STREAM.byteLength; i++) got.push(...decoder.push(STREAM.subarray(i, i + 1)));
    assert.deepEqual(got, MESSAGES);
    assert.equal(decoder.buffered, 0);
    decoder.end();
  });

  test("a large message in many chunks, its bytes intact after the buffer is reused", () => {
    const big = new Uint8Array(200_000).map((_, i) => (i * 31 + 7) & 0xff);
    const stream = concat(encodeFrame({ big }), encodeFrame("after"), encodeFrame({ big }));
    const decoder = new FrameDecoder();
    const got: unknown[] = [];
    for (let i = 0; i < stream.byteLength; i += 1000) got.push(...decoder.push(stream.subarray(i, i + 1000)));
    assert.equal(got.length, 3);
    assert.deepEqual(got[0], { big });
    assert.equal(got[1], "after");
    assert.deepEqual(got[2], { big });
  });

  test("an oversize frame is refused as soon as its header is read", () => {
    const decoder = new FrameDecoder(100);
    assert.throws(() => decoder.push(header(101)), (error: unknown) => {
      assert.ok(error instanceof FrameTooLarge);
      assert.equal(error.size, 101);
      assert.equal(error.limit, 100);
      return true;
    });
    // Broken for good: later bytes are not read as frames.
    assert.throws(() => decoder.push(encodeFrame("x")), FrameTooLarge);
    assert.throws(() => decoder.end(), FrameTooLarge);
  });

  test("a frame of exactly the limit is accepted", () => {
    const frame = encodeFrame(new Uint8Array(98), 100); // bin 8: 2 bytes of header
    assert.equal(frame.byteLength, 104);
    assert.deepEqual(new FrameDecoder(100).push(frame), [new Uint8Array(98)]);
  });

  test("malformed msgpack is MalformedMessage", () => {
    // 0xc1 is never used by msgpack.
    assert.throws(() => new FrameDecoder().push(concat(header(1), new Uint8Array([0xc1]))), MalformedMessage);
    // Two objects in one frame: trailing bytes.
    assert.throws(() => new FrameDecoder().push(concat(header(2), new Uint8Array([1, 2]))), MalformedMessage);
    // A body that ends inside its object.
    assert.throws(() => new FrameDecoder().push(concat(header(1), new Uint8Array([0x92]))), MalformedMessage);
    assert.throws(() => decodeMessage(new Uint8Array([0xc1])), MalformedMessage);
  });

  test("good frames before a bad one are delivered; the error comes next", () => {
    const bad = concat(header(1), new Uint8Array([0xc1]));
    const decoder = new FrameDecoder();
    assert.deepEqual(decoder.push(concat(encodeFrame(1), encodeFrame(2), bad, encodeFrame(3))), [1, 2]);
    assert.throws(() => decoder.push(new Uint8Array(0)), MalformedMessage);
    assert.throws(() => decoder.end(), MalformedMessage);

    const generator = new FrameDecoder().messages(concat(encodeFrame("a"), header(10 ** 9)));
    assert.deepEqual(generator.next(), { value: "a", done: false });
    assert.throws(() => generator.next(), FrameTooLarge);
  });

  test("a partial frame at the end is MalformedMessage", () => {
    for (const partial of [new Uint8Array([0, 0]), concat(header(5), new Uint8Array([0xa4, 0x61]))]) {
      const decoder = new FrameDecoder();
      assert.deepEqual(decoder.push(concat(encodeFrame("ok"), partial)), ["ok"]);
      assert.throws(() => decoder.end(), (error: unknown) => {
        assert.ok(error instanceof MalformedMessage);
        assert.match(error.message, new RegExp(`${partial.byteLength} bytes left over`));
        return true;
      });
    }
  });

  test("an empty stream ends cleanly", () => {
    const decoder = new FrameDecoder();
    assert.deepEqual(decoder.push(new Uint8Array(0)), []);
    decoder.end();
  });

  test("a bad limit is a UsageError", () => {
    assert.throws(() => new FrameDecoder(-1), UsageError);
    assert.throws(() => new FrameDecoder(1.5), UsageError);
  });
});
