/** `connect()` and the `Session` it opens: msgpack messages on streams and datagrams. */

import { CloseCode, closeCodeName } from "./codes.js";
import {
  ConnectError,
  ConnectTimeout,
  attemptTimedOut,
  WEBSOCKET_HINT,
  WEBTRANSPORT_HINT,
  type ConnectAttempt,
  InvalidCertificateHash,
  NotSupported,
  SessionClosed,
  StreamReset,
  UsageError,
  type CloseInfo,
} from "./errors.js";
import {
  DEFAULT_MAX_MESSAGE_SIZE,
  FrameDecoder,
  decodeMessage,
  encodeFrame,
  encodeMessage,
  errorText,
} from "./framing.js";
import {
  WebSocketTransport,
  type Schedule,
  type WebSocketConstructor,
  type WebSocketTransportOptions,
} from "./websocket.js";

/** The close reason is cut to this many bytes of UTF-8 (the WebTransport limit). */
export const MAX_REASON_BYTES = 1024;
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/** The parts of the browser's `WebTransport` this client uses (so tests can inject a fake). */
export interface WebTransportLike {
  readonly ready: Promise<void>;
  /** `byPeer` (this package's WebSocket transport only) overrides who is said to have closed. */
  readonly closed: Promise<{ closeCode?: number; reason?: string; byPeer?: boolean }>;
  readonly datagrams: {
    readonly readable: ReadableStream<Uint8Array>;
    readonly writable: WritableStream<Uint8Array>;
    readonly maxDatagramSize?: number;
  };
  readonly incomingBidirectionalStreams: ReadableStream<BidirectionalStreamLike>;
  readonly incomingUnidirectionalStreams: ReadableStream<ReadableStream<Uint8Array>>;
  createBidirectionalStream(): Promise<BidirectionalStreamLike>;
  createUnidirectionalStream(): Promise<WritableStream<Uint8Array>>;
  close(closeInfo?: { closeCode?: number; reason?: string }): void;
  /**
   * Send one datagram now or drop it (false). Only `WebSocketTransport` has it: the
   * browser's WebTransport queues and drops datagrams itself.
   */
  trySendDatagram?(data: Uint8Array): boolean;
}

export interface BidirectionalStreamLike {
  readonly readable: ReadableStream<Uint8Array>;
  readonly writable: WritableStream<Uint8Array>;
}

export type WebTransportConstructor = new (
  url: string,
  options?: WebTransportOptions,
) => WebTransportLike;

/** Which transport `connect()` uses: WebTransport, WebSocket, or WebTransport then WebSocket. */
export type TransportChoice = "auto" | "webtransport" | "websocket";
/** The transport a session runs on. */
export type TransportKind = "webtransport" | "websocket";

export const DEFAULT_FALLBACK_AFTER_MS = 3000;

export interface ConnectOptions {
  /**
   * SHA-256 hashes of the server's certificate, each 64 hex digits (as `aiowt run`
   * prints them; `:` separators allowed) or 32 bytes. Needed for a self-signed
   * certificate (ECDSA, valid for at most 14 days); leave out for a CA-signed one.
   * WebTransport only: a browser cannot pin a certificate for a WebSocket.
   */
  certificateHashes?: readonly (string | Uint8Array)[];
  /** Largest message accepted or sent on a stream, in bytes: the server's limit (1 MiB). */
  maxMessageSize?: number;
  /** How long to wait for the session on one transport, in ms (default 10 s). */
  timeoutMs?: number;
  /**
   * `"auto"` (default): WebTransport, and WebSocket when WebTransport is missing here,
   * fails, or is not ready within `fallbackAfterMs`. `"webtransport"` or `"websocket"`:
   * only that one. A `ws://` or `wss://` URL means WebSocket.
   */
  transport?: TransportChoice;
  /**
   * The WebSocket URL. By default the https URL with `wss://` (`http://` gives `ws://`):
   * the same host, port, path and query, as an aiowt server with `websocket=True` serves.
   */
  websocketUrl?: string;
  /** In `"auto"`: how long WebTransport may take before WebSocket is tried, in ms (default 3000). */
  fallbackAfterMs?: number;
  /** The `WebTransport` class; the browser's by default (tests inject a fake). */
  WebTransport?: WebTransportConstructor;
  /** The `WebSocket` class; the browser's by default (tests inject a fake). */
  WebSocket?: WebSocketConstructor;
  /**
   * Runs the timers of `timeoutMs` and `fallbackAfterMs`: `setTimeout` by default (tests
   * inject their own clock).
   */
  schedule?: Schedule;
  /** Options of the WebSocket transport (buffer bounds; tests inject a scheduler). */
  websocketOptions?: WebSocketTransportOptions;
  /** Passed to the browser as is (`congestionControl`, `requireUnreliable`, ...). */
  transportOptions?: Omit<WebTransportOptions, "serverCertificateHashes">;
}

/** 32 bytes from a certificate hash given as hex or bytes; `InvalidCertificateHash` if it is neither. */
export function parseCertificateHash(hash: string | Uint8Array): Uint8Array {
  if (hash instanceof Uint8Array) {
    if (hash.byteLength !== 32) {
      throw new InvalidCertificateHash(hash, `${hash.byteLength} bytes instead of 32`);
    }
    return new Uint8Array(hash);
  }
  if (typeof hash !== "string") {
    throw new InvalidCertificateHash(hash, `a ${typeof hash} instead of a string or bytes`);
  }
  const hex = hash.trim().replaceAll(":", "");
  if (!/^[0-9a-fA-F]*$/.test(hex)) {
    throw new InvalidCertificateHash(hash, `"${hash}" is not hexadecimal`);
  }
  if (hex.length !== 64) {
    throw new InvalidCertificateHash(hash, `${hex.length} hex digits instead of 64`);
  }
  const bytes = new Uint8Array(32);
  for (let i = 0; i < 32; i++) bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return bytes;
}

function checkSize(name: string, value: number, max: number): number {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new UsageError(`${name} must be an integer from 0 to ${max}, not ${value}`);
  }
  return value;
}

/**
 * The WebSocket URL an aiowt server serves beside an https URL: `wss://` (or `ws://` for
 * `http://`), the same host, port, path and query. A `ws(s)://` URL is returned as is.
 */
export function websocketUrlFor(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (error) {
    throw new UsageError(`cannot derive a WebSocket URL from "${url}": ${errorText(error)}`, { cause: error });
  }
  const scheme = { "https:": "wss:", "http:": "ws:", "wss:": "wss:", "ws:": "ws:" }[parsed.protocol];
  if (scheme === undefined) {
    throw new UsageError(`cannot derive a WebSocket URL from a ${parsed.protocol} URL; give websocketUrl`);
  }
  parsed.protocol = scheme;
  parsed.hash = "";
  return parsed.href;
}

function isWebSocketUrl(url: string): boolean {
  return /^wss?:/i.test(url.trim());
}

/**
 * Open a session to an aiowt server, over WebTransport or WebSocket (`options.transport`;
 * `"auto"` by default: WebTransport first, WebSocket when it is missing, fails or takes
 * longer than `fallbackAfterMs`). `session.transport` says which one it got.
 *
 * Throws `InvalidCertificateHash` or `UsageError` for bad options, `NotSupported`
 * when the transport(s) asked for are not available here, `ConnectTimeout` when every
 * attempt timed out (WebTransport not ready within `fallbackAfterMs`, then WebSocket not
 * open within `timeoutMs`; or the one transport tried not within `timeoutMs`), and
 * `ConnectError` when the browser refuses or fails an attempt (it never tells why; the
 * message says what was tried and what to check). Both have `error.attempts`: each
 * transport tried, with its error (a `TimeoutError` for an attempt that timed out).
 */
export async function connect(url: string, options: ConnectOptions = {}): Promise<Session> {
  const hashes = (options.certificateHashes ?? []).map(parseCertificateHash);
  const maxMessageSize = checkSize(
    "maxMessageSize",
    options.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE,
    0xffffffff,
  );
  const timeoutMs = options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  if (!(timeoutMs > 0)) throw new UsageError(`timeoutMs must be positive, not ${timeoutMs}`);
  const fallbackAfterMs = options.fallbackAfterMs ?? DEFAULT_FALLBACK_AFTER_MS;
  if (!(fallbackAfterMs > 0)) {
    throw new UsageError(`fallbackAfterMs must be positive, not ${fallbackAfterMs}`);
  }
  const choice = options.transport ?? "auto";
  if (!["auto", "webtransport", "websocket"].includes(choice)) {
    throw new UsageError(`transport must be "auto", "webtransport" or "websocket", not ${JSON.stringify(choice)}`);
  }
  const WT =
    options.WebTransport ?? (globalThis as { WebTransport?: WebTransportConstructor }).WebTransport;
  const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  const wsUrlGiven = isWebSocketUrl(url);
  if (choice === "webtransport" || (choice === "auto" && !wsUrlGiven && WS === undefined)) {
    if (wsUrlGiven) throw new UsageError(`WebTransport needs an https:// URL, not ${url}`);
    if (WT === undefined) {
      throw new NotSupported(
        "WebTransport is not available here: it needs a recent browser and a secure " +
          "context (an https:// page, or http://localhost)" +
          (choice === "auto" ? ", and there is no WebSocket to fall back to" : ""),
      );
    }
    return openWebTransport(WT, url, hashes, options, maxMessageSize, timeoutMs);
  }
  if (WS === undefined) throw new NotSupported("WebSocket is not available here");
  let wsUrl: string;
  try {
    wsUrl = wsUrlGiven ? url : (options.websocketUrl ?? websocketUrlFor(url));
  } catch (error) {
    // "auto" with a URL WebSocket cannot use: WebTransport alone says what is wrong.
    if (choice === "websocket" || WT === undefined) throw error;
    return openWebTransport(WT, url, hashes, options, maxMessageSize, timeoutMs);
  }
  const viaWebSocket = (before: Before | null) =>
    openWebSocket(WS, url, wsUrl, options, maxMessageSize, timeoutMs, before);
  if (choice === "websocket" || wsUrlGiven) return viaWebSocket(null);
  if (WT === undefined) {
    return viaWebSocket({ attempts: [], text: "WebTransport is not available here; WebSocket: ", timedOut: true });
  }
  // "auto": WebTransport for at most fallbackAfterMs, then WebSocket.
  const firstTimeout = Math.min(fallbackAfterMs, timeoutMs);
  try {
    return await openWebTransport(WT, url, hashes, options, maxMessageSize, firstTimeout);
  } catch (error) {
    if (!(error instanceof ConnectError)) throw error;
    return viaWebSocket({
      attempts: error.attempts,
      text: `WebTransport: ${error.detail}; then WebSocket (${wsUrl}): `,
      timedOut: error instanceof ConnectTimeout,
    });
  }
}

/** What happened before the WebSocket attempt of a `connect()`. */
interface Before {
  /** The attempts that failed (the WebTransport one), in order. */
  readonly attempts: readonly ConnectAttempt[];
  /** The start of the error's detail. */
  readonly text: string;
  /** True when no earlier attempt was refused or failed (only timeouts, or none made). */
  readonly timedOut: boolean;
}

async function openWebTransport(
  Transport: WebTransportConstructor,
  url: string,
  hashes: Uint8Array[],
  options: ConnectOptions,
  maxMessageSize: number,
  timeoutMs: number,
): Promise<Session> {
  const init: WebTransportOptions = { ...options.transportOptions };
  if (hashes.length > 0) {
    init.serverCertificateHashes = hashes.map((value) => ({
      algorithm: "sha-256",
      value: value as unknown as BufferSource,
    }));
  }
  const attempt = (error: unknown): ConnectAttempt[] => [
    { transport: "webtransport", url, error: error instanceof Error ? error : new Error(String(error)) },
  ];
  let transport: WebTransportLike;
  try {
    transport = new Transport(url, init);
  } catch (error) {
    // A bad URL (SyntaxError), or options the browser refuses (NotSupportedError).
    throw new ConnectError(url, errorText(error), { cause: error, attempts: attempt(error) });
  }
  await whenReady(transport, timeoutMs, options.schedule, {
    timeout: () =>
      new ConnectTimeout(url, timeoutMs, { attempts: attempt(attemptTimedOut("WebTransport session", timeoutMs)) }),
    failed: (error) =>
      new ConnectError(url, `the session was refused or failed (${errorText(error)})`, {
        cause: error,
        attempts: attempt(error),
      }),
  });
  return new Session(transport, url, maxMessageSize, "webtransport");
}

async function openWebSocket(
  Socket: WebSocketConstructor,
  url: string,
  wsUrl: string,
  options: ConnectOptions,
  maxMessageSize: number,
  timeoutMs: number,
  before: Before | null,
): Promise<Session> {
  const attempts = before?.attempts ?? [];
  const hint = attempts.length > 0 ? `${WEBTRANSPORT_HINT}. ${WEBSOCKET_HINT}` : WEBSOCKET_HINT;
  const failure = (error: Error, detail: string, timeout = false) => {
    const all = [...attempts, { transport: "websocket" as const, url: wsUrl, error }];
    const text = `${before?.text ?? ""}${detail}`;
    // Every attempt timed out: a ConnectTimeout (still a ConnectError).
    return timeout && (before?.timedOut ?? true)
      ? new ConnectTimeout(url, timeoutMs, { detail: text, cause: error, hint, attempts: all })
      : new ConnectError(url, text, { cause: error, hint, attempts: all });
  };
  let transport: WebSocketTransport;
  try {
    transport = new WebSocketTransport(new Socket(wsUrl), options.websocketOptions);
  } catch (error) {
    // A bad URL (SyntaxError).
    throw failure(error as Error, errorText(error));
  }
  await whenReady(transport, timeoutMs, options.schedule, {
    timeout: () => failure(attemptTimedOut("open WebSocket", timeoutMs), `no session within ${timeoutMs} ms`, true),
    failed: (error) => failure(error as Error, `the WebSocket was refused or failed (${errorText(error)})`),
  });
  return new Session(transport, wsUrl, maxMessageSize, "websocket", attempts);
}

/** Wait for `transport.ready`, at most `timeoutMs`; close it and throw what `errors` make if not. */
async function whenReady(
  transport: WebTransportLike,
  timeoutMs: number,
  schedule: Schedule | undefined,
  errors: { timeout: () => Error; failed: (error: unknown) => Error },
): Promise<void> {
  // Both reject when the handshake fails; nobody may be listening then.
  transport.closed.catch(() => {});
  transport.ready.catch(() => {});
  let cancel: () => void = () => {};
  const timeout = new Promise<"timeout">((resolve) => {
    if (schedule !== undefined) {
      cancel = schedule(() => resolve("timeout"), timeoutMs);
    } else {
      const timer = setTimeout(() => resolve("timeout"), timeoutMs);
      cancel = () => clearTimeout(timer);
    }
  });
  let outcome: "ready" | "timeout";
  try {
    outcome = await Promise.race([transport.ready.then(() => "ready" as const), timeout]);
  } catch (error) {
    closeQuietly(transport);
    throw errors.failed(error);
  } finally {
    cancel();
  }
  if (outcome === "timeout") {
    closeQuietly(transport);
    throw errors.timeout();
  }
}

function closeQuietly(transport: WebTransportLike, info?: { closeCode: number; reason: string }): void {
  try {
    transport.close(info);
  } catch {
    // already closed
  }
}

/** Cut `reason` to at most `MAX_REASON_BYTES` of UTF-8, at a character boundary. */
export function truncateReason(reason: string, maxBytes = MAX_REASON_BYTES): string {
  const bytes = new TextEncoder().encode(reason);
  if (bytes.byteLength <= maxBytes) return reason;
  let end = maxBytes;
  while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end--; // a continuation byte
  return new TextDecoder().decode(bytes.subarray(0, end));
}

/** One open session, over WebTransport or WebSocket (`transport` says which). */
export class Session {
  /** Which transport carries the session. */
  readonly transport: TransportKind;
  /**
   * What carries it: the browser's `WebTransport`, or a `WebSocketTransport` (which has
   * the same interface, over the browser's `WebSocket`: `connection.socket`).
   */
  readonly connection: WebTransportLike;
  /** The URL connected to (the WebSocket URL for a session over WebSocket). */
  readonly url: string;
  readonly maxMessageSize: number;
  /** Resolves (never rejects) once the session ended, however it ended. */
  readonly closed: Promise<CloseInfo>;
  /**
   * Datagrams not sent: larger than `maxDatagramSize`, or (over WebSocket) dropped
   * because the socket's send buffer was over its bound.
   */
  datagramsDropped = 0;
  /**
   * The attempts of `connect()` that failed before this session opened (in `"auto"`: the
   * WebTransport attempt, when the session fell back to WebSocket); empty otherwise.
   */
  readonly fallbackFrom: readonly ConnectAttempt[];
  private info: CloseInfo | null = null;
  private closedLocally = false;
  private datagramWriter: WritableStreamDefaultWriter<Uint8Array> | null = null;
  private incomingTaken = false;

  constructor(
    connection: WebTransportLike,
    url: string,
    maxMessageSize = DEFAULT_MAX_MESSAGE_SIZE,
    transport: TransportKind = connection instanceof WebSocketTransport ? "websocket" : "webtransport",
    fallbackFrom: readonly ConnectAttempt[] = [],
  ) {
    this.connection = connection;
    this.fallbackFrom = fallbackFrom;
    this.transport = transport;
    this.url = url;
    this.maxMessageSize = maxMessageSize;
    this.closed = connection.closed.then(
      (info) => this.ended(info.closeCode ?? CloseCode.NORMAL, info.reason ?? "", info.byPeer),
      (error: unknown) => this.ended(CloseCode.ABORTED, errorText(error)),
    );
  }

  private ended(code: number, reason: string, byPeer?: boolean): CloseInfo {
    this.info ??= { code, reason, name: closeCodeName(code), byPeer: byPeer ?? !this.closedLocally };
    return this.info;
  }

  /**
   * Datagrams from the server dropped on arrival because the ones before them were not
   * read yet (over WebSocket: more than 256 waiting, `INCOMING_DATAGRAM_QUEUE`). Always
   * 0 over WebTransport, where the browser drops them without a count.
   */
  get datagramsDroppedIn(): number {
    return (this.connection as { datagramsDroppedIn?: number }).datagramsDroppedIn ?? 0;
  }

  /** How the session ended, once it has; null while it is open. */
  get closeInfo(): CloseInfo | null {
    return this.info;
  }

  get isClosed(): boolean {
    return this.info !== null || this.closedLocally;
  }

  /** Largest datagram payload that can be sent now (undefined if the browser does not say). */
  get maxDatagramSize(): number | undefined {
    return this.connection.datagrams.maxDatagramSize;
  }

  /** Open a bidirectional stream for messages both ways. */
  async openStream(): Promise<MessageStream> {
    this.checkOpen();
    const stream = await this.guard(() => this.connection.createBidirectionalStream());
    return new MessageStream(this, stream.readable, stream.writable);
  }

  /** Open a stream for messages to the server only. */
  async openUnidirectionalStream(): Promise<MessageWriter> {
    this.checkOpen();
    const writable = await this.guard(() => this.connection.createUnidirectionalStream());
    return new MessageWriter(this, writable);
  }

  /**
   * The streams the server opens, bidirectional (`MessageStream`) and unidirectional
   * (`MessageReader`), as they arrive; the iteration ends when the session does. Can be
   * iterated once per session (the browser's stream queues can only be read once).
   */
  incomingStreams(): AsyncIterable<MessageStream | MessageReader> {
    if (this.incomingTaken) throw new UsageError("incomingStreams() can be iterated once per session");
    this.incomingTaken = true;
    const queue = new AsyncQueue<MessageStream | MessageReader>();
    let open = 2;
    const pump = async <T>(source: ReadableStream<T>, wrap: (value: T) => MessageStream | MessageReader) => {
      const reader = source.getReader();
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          queue.push(wrap(value));
        }
      } catch {
        // the session ended
      } finally {
        reader.releaseLock();
        if (--open === 0) queue.end();
      }
    };
    void pump(this.connection.incomingBidirectionalStreams, (s) => new MessageStream(this, s.readable, s.writable));
    void pump(this.connection.incomingUnidirectionalStreams, (r) => new MessageReader(this, r));
    return queue;
  }

  /**
   * Send one message as one datagram (unreliable, unordered). Returns false, and counts
   * it in `datagramsDropped`, when it is larger than `maxDatagramSize`, or (over
   * WebSocket) when the socket's send buffer is over its bound (256 KiB).
   */
  async sendDatagram(message: unknown): Promise<boolean> {
    this.checkOpen();
    const data = encodeMessage(message);
    const limit = this.connection.datagrams.maxDatagramSize;
    if (limit !== undefined && data.byteLength > limit) {
      this.datagramsDropped++;
      return false;
    }
    const trySend = this.connection.trySendDatagram;
    if (trySend !== undefined) {
      const sent = await this.guard(async () => trySend.call(this.connection, data));
      if (!sent) this.datagramsDropped++;
      return sent;
    }
    this.datagramWriter ??= this.connection.datagrams.writable.getWriter();
    const writer = this.datagramWriter;
    await this.guard(() => writer.write(data));
    return true;
  }

  /**
   * The datagrams from the server, decoded; the iteration ends when the session does.
   * A datagram that is not one msgpack object throws `MalformedMessage` (iterate again
   * to go on).
   */
  datagrams(): AsyncIterable<unknown> {
    const session = this;
    return {
      async *[Symbol.asyncIterator]() {
        const reader = session.connection.datagrams.readable.getReader();
        try {
          for (;;) {
            let result: ReadableStreamReadResult<Uint8Array>;
            try {
              result = await reader.read();
            } catch {
              return; // the session ended
            }
            if (result.done) return;
            yield decodeMessage(result.value, session.maxMessageSize);
          }
        } finally {
          reader.releaseLock();
        }
      },
    };
  }

  /**
   * Close the session with an application code (`CloseCode.NORMAL` by default) and a
   * reason, cut to 1024 bytes of UTF-8. Closing a closed session does nothing.
   */
  close(code: number = CloseCode.NORMAL, reason = ""): void {
    checkSize("close code", code, 0xffffffff);
    if (this.isClosed) return;
    this.closedLocally = true;
    closeQuietly(this.connection, { closeCode: code, reason: truncateReason(reason) });
  }

  /** `SessionClosed` once closed (with how, when known). */
  checkOpen(): void {
    if (!this.isClosed) return;
    throw new SessionClosed(
      this.info ?? { code: CloseCode.NORMAL, reason: "", name: "NORMAL", byPeer: false },
    );
  }

  /** Run `operation`; if it fails because the session ended, throw `SessionClosed` instead. */
  async guard<T>(operation: () => Promise<T>): Promise<T> {
    try {
      return await operation();
    } catch (error) {
      if (this.isClosed) this.checkOpen();
      // A failure from a closing transport: `closed` settles right after.
      const settled = await Promise.race([this.closed, Promise.resolve(null)]);
      if (settled !== null) throw new SessionClosed(settled);
      throw error;
    }
  }
}

/** Sends messages on a stream: `send()` them, then `close()` to finish the stream. */
export class MessageWriter {
  readonly kind: "bidirectional" | "unidirectional" = "unidirectional";
  readonly session: Session;
  readonly writable: WritableStream<Uint8Array>;
  private writer: WritableStreamDefaultWriter<Uint8Array> | null = null;

  constructor(session: Session, writable: WritableStream<Uint8Array>) {
    this.session = session;
    this.writable = writable;
  }

  /**
   * Send one message as one frame. `FrameTooLarge` (nothing sent) past the session's
   * `maxMessageSize`; resolves when the browser accepted the bytes.
   */
  async send(message: unknown): Promise<void> {
    const frame = encodeFrame(message, this.session.maxMessageSize);
    this.session.checkOpen();
    const writer = (this.writer ??= this.writable.getWriter());
    await this.session.guard(() => writer.write(frame));
  }

  /** Finish the stream (the server sees its end) after what was sent. */
  async close(): Promise<void> {
    const writer = (this.writer ??= this.writable.getWriter());
    await this.session.guard(() => writer.close());
  }

  /** Reset the stream: what was not delivered yet is dropped. */
  async abort(reason?: unknown): Promise<void> {
    const writer = (this.writer ??= this.writable.getWriter());
    await writer.abort(reason).catch(() => {});
  }
}

/** Receives the messages of a stream: `for await (const message of reader.messages())`. */
export class MessageReader {
  readonly kind: "bidirectional" | "unidirectional" = "unidirectional";
  readonly session: Session;
  readonly readable: ReadableStream<Uint8Array>;
  private taken = false;

  constructor(session: Session, readable: ReadableStream<Uint8Array>) {
    this.session = session;
    this.readable = readable;
  }

  /**
   * The stream's messages until it ends. Throws `FrameTooLarge` or `MalformedMessage`
   * on a bad frame (after the good ones before it; the stream is cancelled),
   * `StreamReset` if the server reset it, `SessionClosed` if the session ended first.
   */
  async *messages(): AsyncGenerator<unknown, void, undefined> {
    if (this.taken) throw new UsageError("messages() can be iterated once per stream");
    this.taken = true;
    const reader = this.readable.getReader();
    const decoder = new FrameDecoder(this.session.maxMessageSize);
    let finished = false;
    try {
      for (;;) {
        let result: ReadableStreamReadResult<Uint8Array>;
        try {
          result = await reader.read();
        } catch (error) {
          finished = true;
          await this.session.guard(() => Promise.reject(error)).catch((failure: unknown) => {
            if (failure === error) {
              const code = (error as { streamErrorCode?: number | null }).streamErrorCode ?? null;
              throw new StreamReset(code, { cause: error });
            }
            throw failure;
          });
          return;
        }
        if (result.done) {
          finished = true;
          decoder.end();
          return;
        }
        yield* decoder.messages(result.value);
      }
    } finally {
      if (!finished) await reader.cancel().catch(() => {});
      reader.releaseLock();
    }
  }
}

/** A bidirectional stream: `send()` and `close()` like a `MessageWriter`, `messages()` like a `MessageReader`. */
export class MessageStream {
  readonly kind = "bidirectional" as const;
  readonly session: Session;
  private readonly reader: MessageReader;
  private readonly writer: MessageWriter;

  constructor(session: Session, readable: ReadableStream<Uint8Array>, writable: WritableStream<Uint8Array>) {
    this.session = session;
    this.reader = new MessageReader(session, readable);
    this.writer = new MessageWriter(session, writable);
  }

  send(message: unknown): Promise<void> {
    return this.writer.send(message);
  }

  close(): Promise<void> {
    return this.writer.close();
  }

  abort(reason?: unknown): Promise<void> {
    return this.writer.abort(reason);
  }

  messages(): AsyncGenerator<unknown, void, undefined> {
    return this.reader.messages();
  }
}

/** An unbounded async queue, iterable once. */
class AsyncQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiting: ((result: IteratorResult<T>) => void) | null = null;
  private ended = false;

  push(item: T): void {
    if (this.waiting !== null) {
      const resolve = this.waiting;
      this.waiting = null;
      resolve({ value: item, done: false });
    } else {
      this.items.push(item);
    }
  }

  end(): void {
    this.ended = true;
    if (this.waiting !== null) {
      const resolve = this.waiting;
      this.waiting = null;
      resolve({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        if (this.items.length > 0) return Promise.resolve({ value: this.items.shift() as T, done: false });
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => (this.waiting = resolve));
      },
      return: () => {
        this.end();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
