import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  MAX_MUX_FRAME,
  MuxFrameType,
  MuxProtocolError,
  decodeCode,
  decodeMuxFrame,
  decodeReason,
  encodeCloseFrame,
  encodeCodedFrame,
  encodeMuxFrame,
} from "../src/index.js";

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

function bytes(text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text, "hex"));
}

// Produced by the server's codec (.venv/bin/python, aiowt.transport.mux.encode_frame).
const PYTHON = {
  close: "070000100162796520e29c93", // CLOSE 0x1001 "bye ✓"
  stream: "010000000400000001c0", // STREAM id 4, a frame of msgpack nil
  fin: "0200000005", // STREAM_FIN id 5, no bytes
  reset: "030000000300002001", // RESET id 3, REFUSED
  stop: "040000000800000000", // STOP id 8, code 0
  credit: "050000000000020005", // CREDIT id 0, 131077
  datagram: "06000000009101", // DATAGRAM [1]
  drain: "0800000000",
  closeMax: "07ffffffff", // CLOSE 2**32-1, no reason
};

describe("the WebSocket framing codec", () => {
  test("encodes byte for byte as the server does", () => {
    assert.equal(hex(encodeCloseFrame(0x1001, "bye ✓")), PYTHON.close);
    assert.equal(hex(encodeMuxFrame(MuxFrameType.STREAM, 4, bytes("00000001c0"))), PYTHON.stream);
    assert.equal(hex(encodeMuxFrame(MuxFrameType.STREAM_FIN, 5)), PYTHON.fin);
    assert.equal(hex(encodeCodedFrame(MuxFrameType.RESET, 3, 0x2001)), PYTHON.reset);
    assert.equal(hex(encodeCodedFrame(MuxFrameType.STOP, 8, 0)), PYTHON.stop);
    assert.equal(hex(encodeCodedFrame(MuxFrameType.CREDIT, 0, 131077)), PYTHON.credit);
    assert.equal(hex(encodeMuxFrame(MuxFrameType.DATAGRAM, 0, bytes("9101"))), PYTHON.datagram);
    assert.equal(hex(encodeMuxFrame(MuxFrameType.DRAIN)), PYTHON.drain);
    assert.equal(hex(encodeCloseFrame(0xffffffff, "")), PYTHON.closeMax);
  });

  test("decodes the server's frames", () => {
    const close = decodeMuxFrame(bytes(PYTHON.close));
    assert.equal(close.type, MuxFrameType.CLOSE);
    assert.equal(close.id, 0x1001);
    assert.equal(decodeReason(close.payload), "bye ✓");
    const credit = decodeMuxFrame(bytes(PYTHON.credit));
    assert.deepEqual([credit.type, credit.id, decodeCode(credit.payload)], [MuxFrameType.CREDIT, 0, 131077]);
    const reset = decodeMuxFrame(bytes(PYTHON.reset));
    assert.deepEqual([reset.type, reset.id, decodeCode(reset.payload)], [MuxFrameType.RESET, 3, 0x2001]);
    assert.equal(decodeMuxFrame(bytes(PYTHON.closeMax)).id, 0xffffffff);
    const stream = decodeMuxFrame(bytes(PYTHON.stream));
    assert.deepEqual([stream.type, stream.id, hex(stream.payload)], [MuxFrameType.STREAM, 4, "00000001c0"]);
    // A view into a larger buffer decodes the same.
    const padded = new Uint8Array(20);
    padded.set(bytes(PYTHON.stream), 7);
    assert.equal(decodeMuxFrame(padded.subarray(7, 7 + 10)).id, 4);
  });

  test("anything else is a MuxProtocolError saying what is wrong", () => {
    const cases: [Uint8Array, RegExp][] = [
      [bytes("01000000"), /4 bytes is shorter than its header/],
      [new Uint8Array(MAX_MUX_FRAME + 1).fill(1), /exceeds 16389/],
      [bytes("0900000000"), /unknown frame type 0x09/],
      [bytes("0000000000"), /unknown frame type 0x00/],
    ];
    for (const [frame, problem] of cases) {
      assert.throws(() => decodeMuxFrame(frame), (error: unknown) => {
        assert.ok(error instanceof MuxProtocolError);
        assert.match((error as Error).message, problem);
        return true;
      });
    }
    assert.throws(() => decodeCode(bytes("000001")), /expected a 4-byte code, got 3 bytes/);
    assert.throws(() => decodeCode(bytes("0000000001")), /got 5 bytes/);
  });

  test("a close reason is cut to 1024 bytes of UTF-8 at a character boundary", () => {
    const frame = encodeCloseFrame(4000, "é".repeat(600)); // 1200 bytes
    assert.equal(frame.byteLength, 5 + 1024);
    assert.equal(decodeReason(decodeMuxFrame(frame).payload), "é".repeat(512));
    const odd = encodeCloseFrame(4000, "x" + "é".repeat(600)); // a cut inside "é" backs off
    assert.equal(odd.byteLength, 5 + 1023);
    // A longer reason from the peer is read up to 1024 bytes; bad UTF-8 is replaced.
    assert.equal(decodeReason(new Uint8Array([0x61, 0xff, 0x62])), "a\ufffdb");
  });
});
