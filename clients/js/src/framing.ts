/**
 * aiowt's wire format. A stream frame is a 4-byte big-endian length followed by that many
 * bytes of msgpack; a datagram is exactly one msgpack object. Sizes are limited (1 MiB
 * by default, as on the server); anything malformed or oversized raises `MalformedMessage`
 * or `FrameTooLarge`, never something else.
 */

import { decode, encode } from "@msgpack/msgpack";

import { FrameTooLarge, MalformedMessage, UsageError } from "./errors.js";

export const DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024;
export const HEADER_SIZE = 4;

/** msgpack-encode one message; a value msgpack cannot encode is a `UsageError`. */
export function encodeMessage(message: unknown): Uint8Array {
  try {
    return encode(message);
  } catch (error) {
    throw new UsageError(`cannot encode message: ${errorText(error)}`, { cause: error });
  }
}

/** Decode exactly one msgpack object (a datagram or a frame body). */
export function decodeMessage(data: Uint8Array, maxSize = DEFAULT_MAX_MESSAGE_SIZE): unknown {
  if (data.byteLength > maxSize) throw new FrameTooLarge(data.byteLength, maxSize);
  try {
    return decode(data);
  } catch (error) {
    throw new MalformedMessage(`malformed msgpack: ${errorText(error)}`, { cause: error });
  }
}

/** One length-prefixed stream frame carrying `message`; `FrameTooLarge` past `maxSize`. */
export function encodeFrame(message: unknown, maxSize = DEFAULT_MAX_MESSAGE_SIZE): Uint8Array {
  const body = encodeMessage(message);
  if (body.byteLength > maxSize) throw new FrameTooLarge(body.byteLength, maxSize);
  const frame = new Uint8Array(HEADER_SIZE + body.byteLength);
  new DataView(frame.buffer).setUint32(0, body.byteLength);
  frame.set(body, HEADER_SIZE);
  return frame;
}

/**
 * Incremental decoder of the length-prefixed msgpack frames of one stream.
 *
 * A frame whose header announces more than `maxSize` bytes is refused as soon as the
 * header is read (`FrameTooLarge`), before its body arrives. A bad frame raises only
 * after every good frame before it was delivered, so what the caller sees does not
 * depend on how the bytes were cut into chunks. After an error the decoder stays broken.
 */
export class FrameDecoder {
  readonly maxSize: number;
  private buffer = new Uint8Array(0);
  private start = 0;
  private stop = 0;
  private failure: Error | null = null;

  constructor(maxSize = DEFAULT_MAX_MESSAGE_SIZE) {
    if (!Number.isInteger(maxSize) || maxSize < 0 || maxSize > 0xffffffff) {
      throw new UsageError(`maxMessageSize must be an integer from 0 to 2**32-1, not ${maxSize}`);
    }
    this.maxSize = maxSize;
  }

  /** Bytes received but not yet part of a complete frame. */
  get buffered(): number {
    return this.stop - this.start;
  }

  /**
   * Every message completed by `chunk`, in order. A bad frame throws at once when no
   * good message came before it in this chunk; otherwise the good ones are returned and
   * the error is thrown by the next `push()` or `end()`.
   */
  push(chunk: Uint8Array): unknown[] {
    const messages: unknown[] = [];
    try {
      for (const message of this.messages(chunk)) messages.push(message);
    } catch (error) {
      if (messages.length === 0) throw error;
    }
    return messages;
  }

  /** Yield each message completed by `chunk`; throws at the first bad frame. */
  *messages(chunk: Uint8Array): Generator<unknown, void, undefined> {
    if (this.failure !== null) throw this.failure;
    this.append(chunk);
    try {
      while (this.stop - this.start >= HEADER_SIZE) {
        const view = new DataView(this.buffer.buffer, this.buffer.byteOffset + this.start, HEADER_SIZE);
        const length = view.getUint32(0);
        if (length > this.maxSize) {
          throw new FrameTooLarge(length, this.maxSize, "frame");
        }
        const bodyEnd = this.start + HEADER_SIZE + length;
        if (bodyEnd > this.stop) break;
        // A copy: decoded binary values are views of their input, and the buffer is reused.
        const body = this.buffer.slice(this.start + HEADER_SIZE, bodyEnd);
        this.start = bodyEnd;
        yield decodeMessage(body, this.maxSize);
      }
    } catch (error) {
      this.fail(error as Error);
      throw error;
    }
  }

  /** The stream ended: a partial frame left over is `MalformedMessage`. */
  end(): void {
    if (this.failure !== null) throw this.failure;
    const left = this.stop - this.start;
    if (left > 0) {
      this.fail(new MalformedMessage(`stream ended inside a frame (${left} bytes left over)`));
      throw this.failure;
    }
  }

  private fail(error: Error): void {
    this.failure = error;
    this.buffer = new Uint8Array(0);
    this.start = this.stop = 0;
  }

  private append(chunk: Uint8Array): void {
    if (chunk.byteLength === 0) return;
    const live = this.stop - this.start;
    if (this.stop + chunk.byteLength > this.buffer.byteLength) {
      const needed = live + chunk.byteLength;
      if (needed <= this.buffer.byteLength && this.start > 0) {
        this.buffer.copyWithin(0, this.start, this.stop);
      } else {
        const grown = new Uint8Array(Math.max(needed, this.buffer.byteLength * 2, 1024));
        grown.set(this.buffer.subarray(this.start, this.stop));
        this.buffer = grown;
      }
      this.start = 0;
      this.stop = live;
    } else if (live === 0) {
      this.start = this.stop = 0;
    }
    this.buffer.set(chunk, this.stop);
    this.stop += chunk.byteLength;
  }
}

export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
