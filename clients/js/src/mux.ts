/**
 * The frames of aiowt's WebSocket transport (docs/websocket.md; the server's side is
 * `aiowt.transport.mux`). One binary WebSocket message is one frame:
 *
 *     type (1 byte) | id (4 bytes, big-endian) | payload
 *
 * Pure functions and constants, no I/O: `WebSocketTransport` (websocket.ts) keeps the
 * state (streams, credit) and talks to the socket.
 */

/** The frame types (the first byte of each WebSocket message). */
export const MuxFrameType = {
  /** Stream bytes (at most `MAX_CHUNK`). */
  STREAM: 0x01,
  /** The last bytes of a stream (maybe none) and its end. */
  STREAM_FIN: 0x02,
  /** 4-byte code: the sender abandons its side of the stream. */
  RESET: 0x03,
  /** 4-byte code: the sender reads no more of the stream (answered by RESET). */
  STOP: 0x04,
  /** 4-byte increment of what the peer may send on the stream. */
  CREDIT: 0x05,
  /** One datagram (id 0), at most `MAX_DATAGRAM` bytes. */
  DATAGRAM: 0x06,
  /** id: the 32-bit close code; payload: the reason, UTF-8, at most `MAX_REASON` bytes. */
  CLOSE: 0x07,
  /** id 0, no payload: the sender will close soon. */
  DRAIN: 0x08,
} as const;

export type MuxFrameTypeValue = (typeof MuxFrameType)[keyof typeof MuxFrameType];

export const MUX_HEADER_SIZE = 5;
/** The most stream bytes one frame carries. */
export const MAX_CHUNK = 16 * 1024;
/** The largest datagram payload. */
export const MAX_DATAGRAM = 16 * 1024;
/** Bytes of a close reason. */
export const MAX_REASON = 1024;
/** The largest WebSocket message either side may send. */
export const MAX_MUX_FRAME = MUX_HEADER_SIZE + Math.max(MAX_CHUNK, MAX_DATAGRAM, MAX_REASON);
/** Each stream's initial credit, each way. */
export const STREAM_WINDOW = 256 * 1024;

/** A frame that breaks the framing rules (the session then closes with PROTOCOL_ERROR). */
export class MuxProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MuxProtocolError";
  }
}

export interface MuxFrame {
  readonly type: MuxFrameTypeValue;
  readonly id: number;
  readonly payload: Uint8Array;
}

/** The bytes of one frame (one binary WebSocket message). */
export function encodeMuxFrame(type: number, id = 0, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const frame = new Uint8Array(MUX_HEADER_SIZE + payload.byteLength);
  const view = new DataView(frame.buffer);
  view.setUint8(0, type);
  view.setUint32(1, id >>> 0);
  frame.set(payload, MUX_HEADER_SIZE);
  return frame;
}

/** A frame whose payload is a 4-byte code (RESET, STOP, CREDIT). */
export function encodeCodedFrame(type: number, id: number, code: number): Uint8Array {
  const payload = new Uint8Array(4);
  new DataView(payload.buffer).setUint32(0, code >>> 0);
  return encodeMuxFrame(type, id, payload);
}

/** A CLOSE frame; the reason is cut to `MAX_REASON` bytes of UTF-8 at a character boundary. */
export function encodeCloseFrame(code: number, reason: string): Uint8Array {
  return encodeMuxFrame(MuxFrameType.CLOSE, code, utf8Prefix(reason, MAX_REASON));
}

/** Type, id and payload of one message; `MuxProtocolError` if it is not a frame. */
export function decodeMuxFrame(message: Uint8Array): MuxFrame {
  if (message.byteLength < MUX_HEADER_SIZE) {
    throw new MuxProtocolError(`frame of ${message.byteLength} bytes is shorter than its header`);
  }
  if (message.byteLength > MAX_MUX_FRAME) {
    throw new MuxProtocolError(`frame of ${message.byteLength} bytes exceeds ${MAX_MUX_FRAME}`);
  }
  const view = new DataView(message.buffer, message.byteOffset, message.byteLength);
  const type = view.getUint8(0);
  if (type < MuxFrameType.STREAM || type > MuxFrameType.DRAIN) {
    throw new MuxProtocolError(`unknown frame type 0x${type.toString(16).padStart(2, "0")}`);
  }
  return { type: type as MuxFrameTypeValue, id: view.getUint32(1), payload: message.subarray(MUX_HEADER_SIZE) };
}

/** The 4-byte code of a RESET, STOP or CREDIT payload; `MuxProtocolError` if it is not 4 bytes. */
export function decodeCode(payload: Uint8Array): number {
  if (payload.byteLength !== 4) {
    throw new MuxProtocolError(`expected a 4-byte code, got ${payload.byteLength} bytes`);
  }
  return new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0);
}

/** The reason of a CLOSE payload (its first `MAX_REASON` bytes, invalid UTF-8 replaced). */
export function decodeReason(payload: Uint8Array): string {
  return new TextDecoder().decode(payload.subarray(0, MAX_REASON));
}

/** Stream ids: bit 0 is who opened it (0 the client, 1 the server), bit 1 makes it unidirectional. */
export function isServerInitiated(id: number): boolean {
  return (id & 1) === 1;
}

export function isUnidirectional(id: number): boolean {
  return (id & 2) === 2;
}

/** The UTF-8 bytes of `text`, cut to at most `maxBytes` at a character boundary. */
export function utf8Prefix(text: string, maxBytes: number): Uint8Array {
  const bytes = new TextEncoder().encode(text);
  if (bytes.byteLength <= maxBytes) return bytes;
  let end = maxBytes;
  while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end--; // a continuation byte
  return bytes.subarray(0, end);
}
