/**
 * `WebSocketTransport`: one aiowt session over one browser `WebSocket`, shaped like the
 * browser's `WebTransport` (the parts `Session` uses), so a `Session` works the same over
 * either. The framing is docs/websocket.md (codec in mux.ts); this is its state:
 *
 * - streams: ids as QUIC's (client bidirectional 0, 4, 8...; unidirectional 2, 6...),
 *   256 KiB of credit each way; this side sends stream bytes only within the server's
 *   credit, in STREAM frames of at most 16 KiB, round robin across the streams with
 *   bytes to send, and only while `socket.bufferedAmount` is under 64 KiB (polled: the
 *   WebSocket API has no "drained" event). It grants the server CREDIT as bytes arrive,
 *   with the server's rule (when less than half the window is left, top it up to a
 *   full window past what was received). STOP is answered with RESET; a finished
 *   writable sends STREAM_FIN, an aborted one RESET; a cancelled readable sends STOP.
 *   At most `maxIncomingStreams` (256) server-opened streams of each kind are open at
 *   once (until both its directions are finished, reset or stopped); the server's next
 *   one is refused with STOP (and RESET, if bidirectional) `REFUSED`, as the server does
 *   (`MuxLimits.max_streams`), and the session goes on.
 * - datagrams: at most 16 KiB; dropped (`trySendDatagram` returns false) when the
 *   socket's `bufferedAmount` is over `sendBufferBound` (256 KiB), never queued here.
 * - close: CLOSE (32-bit code, reason of at most 1024 bytes of UTF-8), then
 *   `socket.close(1000)`. A socket that ends without a CLOSE rejects `closed` (the
 *   session reports `ABORTED`); a frame that breaks the rules (or a text message)
 *   closes the session with `PROTOCOL_ERROR`.
 */

import { CloseCode, StreamErrorCode } from "./codes.js";
import { UsageError } from "./errors.js";
import {
  MAX_CHUNK,
  MAX_DATAGRAM,
  MuxFrameType,
  MuxProtocolError,
  STREAM_WINDOW,
  decodeCode,
  decodeMuxFrame,
  decodeReason,
  encodeCloseFrame,
  encodeCodedFrame,
  encodeMuxFrame,
  isServerInitiated,
  isUnidirectional,
  utf8Prefix,
  MAX_REASON,
} from "./mux.js";
import type { BidirectionalStreamLike, WebTransportLike } from "./session.js";

/** Stream bytes wait while the socket holds this many unsent bytes. */
export const WRITE_HIGH = 64 * 1024;
/** Past this many unsent bytes in the socket, datagrams are dropped. */
export const DEFAULT_SEND_BUFFER_BOUND = 256 * 1024;
/** How often a send blocked on `bufferedAmount` looks again, in ms. */
export const DEFAULT_POLL_MS = 5;
/** Datagrams from the server kept until read; more are dropped (as WebTransport does). */
export const INCOMING_DATAGRAM_QUEUE = 256;
/** Server-opened streams of each kind open at once; more are refused (the server's `MuxLimits.max_streams`). */
export const DEFAULT_MAX_INCOMING_STREAMS = 256;

const OPEN = 1;

/** The parts of the browser's `WebSocket` this client uses (tests inject a fake). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: "open" | "message" | "error" | "close", listener: (event: any) => void): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Calls `callback` after `ms`; returns a function that cancels it (tests inject their own). */
export type Schedule = (callback: () => void, ms: number) => () => void;

export interface WebSocketTransportOptions {
  /** Past this many bytes in `socket.bufferedAmount`, datagrams are dropped (default 256 KiB). */
  sendBufferBound?: number;
  /** Interval of the `bufferedAmount` poll while stream bytes wait (default 5 ms). */
  pollMs?: number;
  /** `setTimeout` by default. */
  schedule?: Schedule;
  /**
   * Streams the server may have open at once, per kind (bidirectional, unidirectional);
   * its next one is refused with STOP (and RESET) `REFUSED` (default 256).
   */
  maxIncomingStreams?: number;
}

/** What a stream's readable or writable fails with: like a `WebTransportError`. */
export class StreamError extends Error {
  readonly streamErrorCode: number | null;
  readonly source = "stream";
  constructor(message: string, code: number | null) {
    super(message);
    this.name = "WebTransportError";
    this.streamErrorCode = code;
  }
}

interface Waiter {
  until: number;
  resolve: () => void;
  reject: (error: unknown) => void;
}

interface Sending {
  credit: number;
  chunks: Uint8Array[];
  queued: number;
  /** Bytes taken by `write()` so far, and bytes sent so far (for the write promises). */
  written: number;
  sent: number;
  fin: boolean;
  waiters: Waiter[];
  controller: WritableStreamDefaultController | null;
}

interface Receiving {
  limit: number;
  received: number;
  controller: ReadableStreamDefaultController<Uint8Array> | null;
}

interface StreamState {
  readonly id: number;
  sending: Sending | null;
  receiving: Receiving | null;
}

const defaultSchedule: Schedule = (callback, ms) => {
  const handle = setTimeout(callback, ms);
  return () => clearTimeout(handle);
};

function deferred<T>(): { promise: Promise<T>; resolve: (value: T) => void; reject: (error: unknown) => void } {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

function abortCode(reason: unknown): number {
  const code = (reason as { streamErrorCode?: unknown } | null | undefined)?.streamErrorCode;
  return typeof code === "number" ? code : 0;
}

/** One session over one WebSocket, with the interface `Session` expects of a `WebTransport`. */
export class WebSocketTransport implements WebTransportLike {
  readonly socket: WebSocketLike;
  readonly ready: Promise<void>;
  readonly closed: Promise<{ closeCode?: number; reason?: string; byPeer?: boolean }>;
  readonly datagrams: {
    readonly readable: ReadableStream<Uint8Array>;
    readonly writable: WritableStream<Uint8Array>;
    readonly maxDatagramSize: number;
  };
  readonly incomingBidirectionalStreams: ReadableStream<BidirectionalStreamLike>;
  readonly incomingUnidirectionalStreams: ReadableStream<ReadableStream<Uint8Array>>;
  readonly sendBufferBound: number;
  /** Datagrams from the server dropped because nobody read the earlier ones. */
  datagramsDroppedIn = 0;
  /** Streams the server may have open at once, per kind. */
  readonly maxIncomingStreams: number;
  /** Server-opened streams refused so far, past `maxIncomingStreams`. */
  incomingStreamsRefused = 0;
  /** True once the server sent DRAIN (it will close soon). */
  draining = false;
  /** True once the session ended (CLOSE either way, a protocol error, or the socket ended). */
  isFinished = false;

  private readonly readyD = deferred<void>();
  private readonly closedD = deferred<{ closeCode?: number; reason?: string; byPeer?: boolean }>();
  private readonly pollMs: number;
  private readonly schedule: Schedule;
  private cancelPoll: (() => void) | null = null;
  private opened = false;
  private readonly streams = new Map<number, StreamState>();
  private readonly ready_: number[] = [];
  private readonly nextLocal = { bidi: 0, uni: 2 };
  private readonly peerNext = { bidi: 1, uni: 3 };
  /** Server-opened streams open now (not forgotten yet), per kind. */
  private readonly peerOpen = { bidi: 0, uni: 0 };
  private datagramController!: ReadableStreamDefaultController<Uint8Array>;
  private bidiController!: ReadableStreamDefaultController<BidirectionalStreamLike>;
  private uniController!: ReadableStreamDefaultController<ReadableStream<Uint8Array>>;

  constructor(socket: WebSocketLike, options: WebSocketTransportOptions = {}) {
    this.socket = socket;
    this.sendBufferBound = options.sendBufferBound ?? DEFAULT_SEND_BUFFER_BOUND;
    this.pollMs = options.pollMs ?? DEFAULT_POLL_MS;
    this.schedule = options.schedule ?? defaultSchedule;
    const maxIncoming = options.maxIncomingStreams ?? DEFAULT_MAX_INCOMING_STREAMS;
    if (!Number.isInteger(maxIncoming) || maxIncoming < 0) {
      throw new UsageError(`maxIncomingStreams must be a whole number of at least 0, not ${maxIncoming}`);
    }
    this.maxIncomingStreams = maxIncoming;
    this.ready = this.readyD.promise;
    this.closed = this.closedD.promise;
    this.ready.catch(() => {});
    this.closed.catch(() => {});
    this.datagrams = {
      readable: new ReadableStream<Uint8Array>(
        { start: (c) => void (this.datagramController = c) },
        new CountQueuingStrategy({ highWaterMark: INCOMING_DATAGRAM_QUEUE }),
      ),
      writable: new WritableStream<Uint8Array>({
        write: (chunk) => void this.trySendDatagram(chunk),
      }),
      maxDatagramSize: MAX_DATAGRAM,
    };
    this.incomingBidirectionalStreams = new ReadableStream({ start: (c) => void (this.bidiController = c) });
    this.incomingUnidirectionalStreams = new ReadableStream({ start: (c) => void (this.uniController = c) });
    socket.binaryType = "arraybuffer";
    socket.addEventListener("open", () => this.onOpen());
    socket.addEventListener("message", (event: { data: unknown }) => this.onMessage(event.data));
    socket.addEventListener("close", (event: { code?: number; reason?: string }) => this.onClose(event));
    socket.addEventListener("error", () => {}); // a `close` event follows
    if (socket.readyState === OPEN) this.onOpen();
  }

  // --- opening and closing ---------------------------------------------------------------
  private onOpen(): void {
    if (this.opened || this.isFinished) return;
    this.opened = true;
    this.readyD.resolve();
  }

  private onClose(event: { code?: number; reason?: string }): void {
    this.cancelPoll?.();
    this.cancelPoll = null;
    const code = event.code ?? 1006;
    if (!this.opened) {
      const error = new Error(
        `the WebSocket closed before it opened (code ${code}${event.reason ? `: ${event.reason}` : ""})`,
      );
      this.readyD.reject(error);
      this.end(null, error);
      return;
    }
    this.end(
      null,
      new Error(`the WebSocket closed (code ${code}${event.reason ? `: ${event.reason}` : ""}) without a session close`),
    );
  }

  /**
   * Close the session: CLOSE with the code and reason (cut to 1024 bytes of UTF-8), then
   * the socket with 1000. Stream bytes not sent yet are dropped.
   */
  close(closeInfo: { closeCode?: number; reason?: string } = {}): void {
    if (this.isFinished) return;
    const code = (closeInfo.closeCode ?? 0) >>> 0;
    const reason = new TextDecoder().decode(utf8Prefix(closeInfo.reason ?? "", MAX_REASON));
    if (!this.opened) {
      this.readyD.reject(new Error("closed before the WebSocket opened"));
    } else {
      this.send(encodeCloseFrame(code, reason));
    }
    this.end({ closeCode: code, reason, byPeer: false }, null);
    this.closeSocket();
  }

  private closeSocket(): void {
    try {
      this.socket.close(1000);
    } catch {
      // already closing
    }
  }

  /** A frame broke the rules: CLOSE with PROTOCOL_ERROR, as the server does. */
  private fail(message: string): void {
    if (this.isFinished) return;
    this.send(encodeCloseFrame(CloseCode.PROTOCOL_ERROR, message));
    this.end({ closeCode: CloseCode.PROTOCOL_ERROR, reason: message, byPeer: false }, null);
    this.closeSocket();
  }

  /** The session ended: settle `closed` first, then fail every stream and queue. */
  private end(info: { closeCode: number; reason: string; byPeer: boolean } | null, error: Error | null): void {
    if (this.isFinished) return;
    this.isFinished = true;
    this.cancelPoll?.();
    this.cancelPoll = null;
    if (info !== null) this.closedD.resolve(info);
    else this.closedD.reject(error);
    const failure = new StreamError(
      info !== null ? `the session closed (code ${info.closeCode})` : (error?.message ?? "the session ended"),
      null,
    );
    for (const state of this.streams.values()) {
      this.failReceiving(state, failure);
      this.failSending(state, failure);
    }
    this.streams.clear();
    this.ready_.length = 0;
    for (const controller of [this.datagramController, this.bidiController, this.uniController]) {
      try {
        controller.error(failure);
      } catch {
        // already closed
      }
    }
  }

  // --- sending ---------------------------------------------------------------------------
  private send(frame: Uint8Array): void {
    if (this.socket.readyState !== OPEN) return;
    this.socket.send(frame);
  }

  private checkUsable(): void {
    if (this.isFinished) throw new StreamError("the session is closed", null);
    if (!this.opened) throw new StreamError("the WebSocket is not open yet", null);
  }

  /**
   * Send one datagram now, or drop it: false when the socket holds more than
   * `sendBufferBound` unsent bytes. Larger than 16 KiB is a `RangeError`.
   */
  trySendDatagram(data: Uint8Array): boolean {
    this.checkUsable();
    if (data.byteLength > MAX_DATAGRAM) {
      throw new RangeError(`datagram of ${data.byteLength} bytes exceeds ${MAX_DATAGRAM}`);
    }
    if (this.socket.readyState !== OPEN || this.socket.bufferedAmount > this.sendBufferBound) return false;
    this.socket.send(encodeMuxFrame(MuxFrameType.DATAGRAM, 0, data));
    return true;
  }

  async createBidirectionalStream(): Promise<BidirectionalStreamLike> {
    this.checkUsable();
    const id = this.nextLocal.bidi;
    this.nextLocal.bidi += 4;
    const state = this.newStream(id, true, true);
    return { readable: this.readableOf(state), writable: this.writableOf(state) };
  }

  async createUnidirectionalStream(): Promise<WritableStream<Uint8Array>> {
    this.checkUsable();
    const id = this.nextLocal.uni;
    this.nextLocal.uni += 4;
    return this.writableOf(this.newStream(id, true, false));
  }

  private newStream(id: number, sends: boolean, receives: boolean): StreamState {
    const state: StreamState = {
      id,
      sending: sends
        ? { credit: STREAM_WINDOW, chunks: [], queued: 0, written: 0, sent: 0, fin: false, waiters: [], controller: null }
        : null,
      receiving: receives ? { limit: STREAM_WINDOW, received: 0, controller: null } : null,
    };
    this.streams.set(id, state);
    return state;
  }

  private writableOf(state: StreamState): WritableStream<Uint8Array> {
    const sending = state.sending!;
    return new WritableStream<Uint8Array>({
      start: (controller) => void (sending.controller = controller),
      write: (chunk) => this.queue(state, chunk),
      close: () => this.finishSending(state),
      abort: (reason) => this.resetSending(state, abortCode(reason)),
    });
  }

  private readableOf(state: StreamState): ReadableStream<Uint8Array> {
    const receiving = state.receiving!;
    return new ReadableStream<Uint8Array>({
      start: (controller) => void (receiving.controller = controller),
      cancel: (reason) => this.stopReceiving(state, abortCode(reason)),
    });
  }

  /** Queue `chunk` on the stream; resolves once all of it went to the socket. */
  private queue(state: StreamState, chunk: Uint8Array): Promise<void> {
    const sending = state.sending;
    if (this.isFinished || sending === null || sending.fin) {
      return Promise.reject(new StreamError("the stream cannot be written to", null));
    }
    if (chunk.byteLength === 0) return Promise.resolve();
    sending.chunks.push(chunk.slice());
    sending.queued += chunk.byteLength;
    sending.written += chunk.byteLength;
    const waiter = deferred<void>();
    sending.waiters.push({ until: sending.written, resolve: waiter.resolve, reject: waiter.reject });
    this.markReady(state.id);
    this.flush();
    return waiter.promise;
  }

  /** The writable was closed: STREAM_FIN after what is queued; resolves once sent. */
  private finishSending(state: StreamState): Promise<void> {
    const sending = state.sending;
    if (this.isFinished || sending === null) {
      return Promise.reject(new StreamError("the stream cannot be written to", null));
    }
    sending.fin = true;
    const waiter = deferred<void>();
    sending.waiters.push({ until: Infinity, resolve: waiter.resolve, reject: waiter.reject });
    this.markReady(state.id);
    this.flush();
    return waiter.promise;
  }

  private resetSending(state: StreamState, code: number): void {
    if (this.isFinished || state.sending === null) return;
    this.failSending(state, new StreamError(`the stream was aborted with code ${code}`, code));
    this.send(encodeCodedFrame(MuxFrameType.RESET, state.id, code));
    this.forgetIfDone(state);
  }

  private stopReceiving(state: StreamState, code: number): void {
    if (this.isFinished || state.receiving === null) return;
    state.receiving = null;
    this.send(encodeCodedFrame(MuxFrameType.STOP, state.id, code));
    this.forgetIfDone(state);
  }

  private markReady(id: number): void {
    if (!this.ready_.includes(id)) this.ready_.push(id);
  }

  /** Send queued stream bytes, a chunk per stream in turn, while the socket takes them. */
  flush(): void {
    const ready = this.ready_;
    while (ready.length > 0 && !this.isFinished && this.socket.bufferedAmount < WRITE_HIGH) {
      const id = ready.shift()!;
      const state = this.streams.get(id);
      const sending = state?.sending;
      if (state === undefined || sending == null) continue;
      const size = Math.min(MAX_CHUNK, sending.credit, sending.queued);
      const chunk = take(sending, size);
      sending.credit -= size;
      sending.sent += size;
      const last = sending.fin && sending.queued === 0;
      if (size > 0 || last) {
        this.send(encodeMuxFrame(last ? MuxFrameType.STREAM_FIN : MuxFrameType.STREAM, id, chunk));
      }
      while (sending.waiters.length > 0 && sending.waiters[0]!.until <= sending.sent) {
        sending.waiters.shift()!.resolve();
      }
      if (last) {
        for (const waiter of sending.waiters.splice(0)) waiter.resolve();
        state.sending = null;
        this.forgetIfDone(state);
      } else if ((sending.queued > 0 && sending.credit > 0) || (sending.fin && sending.queued === 0)) {
        ready.push(id);
      }
    }
    if (ready.length > 0 && !this.isFinished && this.cancelPoll === null) {
      // Blocked on the socket's buffer (credit-blocked streams are not in `ready`).
      this.cancelPoll = this.schedule(() => {
        this.cancelPoll = null;
        this.flush();
      }, this.pollMs);
    }
  }

  private failSending(state: StreamState, error: StreamError): void {
    const sending = state.sending;
    if (sending === null) return;
    state.sending = null;
    for (const waiter of sending.waiters.splice(0)) waiter.reject(error);
    try {
      sending.controller?.error(error);
    } catch {
      // already errored
    }
  }

  private failReceiving(state: StreamState, error: StreamError): void {
    const receiving = state.receiving;
    if (receiving === null) return;
    state.receiving = null;
    try {
      receiving.controller?.error(error);
    } catch {
      // already closed
    }
  }

  private forgetIfDone(state: StreamState): void {
    if (state.sending !== null || state.receiving !== null) return;
    // A server-opened stream done both ways frees its place (once: delete says if it was there).
    if (this.streams.delete(state.id) && isServerInitiated(state.id)) {
      this.peerOpen[isUnidirectional(state.id) ? "uni" : "bidi"]--;
    }
  }

  // --- receiving -------------------------------------------------------------------------
  private onMessage(data: unknown): void {
    if (this.isFinished) return;
    if (typeof data === "string") {
      this.fail("text messages are not part of the session framing");
      return;
    }
    let bytes: Uint8Array;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else {
      this.fail("a WebSocket message that is not binary");
      return;
    }
    try {
      this.receiveFrame(bytes);
    } catch (error) {
      if (error instanceof MuxProtocolError) this.fail(error.message);
      else throw error;
    }
  }

  private receiveFrame(bytes: Uint8Array): void {
    const { type, id, payload } = decodeMuxFrame(bytes);
    switch (type) {
      case MuxFrameType.STREAM:
      case MuxFrameType.STREAM_FIN:
        this.streamFrame(id, payload, type === MuxFrameType.STREAM_FIN);
        break;
      case MuxFrameType.CREDIT:
        this.credit(id, decodeCode(payload));
        break;
      case MuxFrameType.RESET:
        this.peerReset(id, decodeCode(payload));
        break;
      case MuxFrameType.STOP:
        this.peerStop(id, decodeCode(payload));
        break;
      case MuxFrameType.DATAGRAM:
        if (payload.byteLength > MAX_DATAGRAM) {
          throw new MuxProtocolError(`datagram of ${payload.byteLength} bytes exceeds ${MAX_DATAGRAM}`);
        }
        if ((this.datagramController.desiredSize ?? 0) > 0) this.datagramController.enqueue(payload);
        else this.datagramsDroppedIn++;
        break;
      case MuxFrameType.CLOSE:
        this.end({ closeCode: id, reason: decodeReason(payload), byPeer: true }, null);
        this.closeSocket();
        break;
      case MuxFrameType.DRAIN:
        this.draining = true;
        break;
    }
  }

  private streamFrame(id: number, data: Uint8Array, fin: boolean): void {
    if (data.byteLength > MAX_CHUNK) {
      throw new MuxProtocolError(`stream frame of ${data.byteLength} bytes exceeds ${MAX_CHUNK}`);
    }
    let state = this.streams.get(id);
    if (state === undefined) {
      state = this.peerOpened(id) ?? undefined;
      if (state === undefined) return;
    }
    const receiving = state.receiving;
    if (receiving === null) {
      if (!isServerInitiated(id) && isUnidirectional(id)) {
        throw new MuxProtocolError(`data on stream ${id}, which only this side sends on`);
      }
      return; // stopped by this side: late bytes are dropped
    }
    receiving.received += data.byteLength;
    if (receiving.received > receiving.limit) {
      throw new MuxProtocolError(`stream ${id} sent past its credit of ${receiving.limit}`);
    }
    if (data.byteLength > 0) receiving.controller?.enqueue(data);
    if (fin) {
      state.receiving = null;
      receiving.controller?.close();
      this.forgetIfDone(state);
      return;
    }
    if (receiving.limit - receiving.received < STREAM_WINDOW / 2) {
      const increment = receiving.received + STREAM_WINDOW - receiving.limit;
      receiving.limit += increment;
      this.send(encodeCodedFrame(MuxFrameType.CREDIT, id, increment));
    }
  }

  /** A frame on an id this side does not know: the server's next stream, or a late frame. */
  private peerOpened(id: number): StreamState | null {
    if (!isServerInitiated(id)) return null; // ours, already forgotten
    const uni = isUnidirectional(id);
    const kind = uni ? "uni" : "bidi";
    if (id < this.peerNext[kind]) return null; // already forgotten, or refused
    this.peerNext[kind] = id + 4;
    if (this.peerOpen[kind] >= this.maxIncomingStreams) {
      // Too many open at once: refused, as the server refuses ours; the session goes on.
      this.incomingStreamsRefused++;
      this.send(encodeCodedFrame(MuxFrameType.STOP, id, StreamErrorCode.REFUSED));
      if (!uni) this.send(encodeCodedFrame(MuxFrameType.RESET, id, StreamErrorCode.REFUSED));
      return null;
    }
    this.peerOpen[kind]++;
    const state = this.newStream(id, !uni, true);
    const readable = this.readableOf(state);
    if (uni) this.uniController.enqueue(readable);
    else this.bidiController.enqueue({ readable, writable: this.writableOf(state) });
    return state;
  }

  private credit(id: number, increment: number): void {
    const sending = this.streams.get(id)?.sending;
    if (sending == null) return;
    sending.credit += increment;
    if (sending.queued > 0) this.markReady(id);
    this.flush();
  }

  private peerReset(id: number, code: number): void {
    const state = this.streams.get(id);
    if (state === undefined) return;
    this.failReceiving(state, new StreamError(`the stream was reset with code ${code}`, code));
    this.forgetIfDone(state);
  }

  private peerStop(id: number, code: number): void {
    const state = this.streams.get(id);
    if (state === undefined || state.sending === null) return;
    // As QUIC does: STOP_SENDING is answered with a reset of the sending side.
    this.failSending(state, new StreamError(`the server stopped the stream with code ${code}`, code));
    this.send(encodeCodedFrame(MuxFrameType.RESET, id, code));
    this.forgetIfDone(state);
  }
}

/** The first `size` queued bytes of a stream (joining or splitting its chunks). */
function take(sending: Sending, size: number): Uint8Array {
  if (size === 0) return new Uint8Array(0);
  sending.queued -= size;
  const chunks = sending.chunks;
  const first = chunks[0]!;
  if (first.byteLength === size) return chunks.shift()!;
  if (first.byteLength > size) {
    chunks[0] = first.subarray(size);
    return first.subarray(0, size);
  }
  const out = new Uint8Array(size);
  let offset = 0;
  while (offset < size) {
    const head = chunks.shift()!;
    const part = Math.min(head.byteLength, size - offset);
    out.set(head.subarray(0, part), offset);
    if (part < head.byteLength) chunks.unshift(head.subarray(part));
    offset += part;
  }
  return out;
}
