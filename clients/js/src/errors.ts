/** Every error this package throws on purpose is an `AiowtError`. */

import { closeCodeName, type CloseCodeName } from "./codes.js";

/** How a session ended. */
export interface CloseInfo {
  /** The application close code (0 is `CloseCode.NORMAL`). */
  readonly code: number;
  /** The reason sent with it ("" when none). */
  readonly reason: string;
  /** The aiowt name of `code` (`"GOING_AWAY"`), or undefined for a code aiowt does not define. */
  readonly name: CloseCodeName | undefined;
  /** False when this side closed the session (`Session.close()`), true otherwise. */
  readonly byPeer: boolean;
}

export function describeClose(info: Pick<CloseInfo, "code" | "reason">): string {
  const name = closeCodeName(info.code);
  const code = name === undefined ? `code ${info.code}` : `${name} (${info.code})`;
  return info.reason ? `${code}: ${info.reason}` : code;
}

export class AiowtError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The caller passed something this client cannot use (an option, a message it cannot encode). */
export class UsageError extends AiowtError {}

/** A certificate hash is neither 64 hex digits nor 32 bytes. */
export class InvalidCertificateHash extends UsageError {
  readonly value: unknown;
  constructor(value: unknown, problem: string) {
    super(
      `invalid certificate hash: ${problem}; give the SHA-256 of the server's certificate ` +
        `as 64 hex digits (as \`aiowt run\` prints it) or as 32 bytes`,
    );
    this.value = value;
  }
}

/** No environment support: `WebTransport` is missing (old browser, or not a secure context). */
export class NotSupported extends AiowtError {}

/** What `ConnectError` says to check after a failed WebTransport attempt. */
export const WEBTRANSPORT_HINT =
  "check that the server is running, that its UDP port is reachable from here, that the " +
  "certificate hash matches the one the server printed, and that the path is routed. " +
  "Browsers do not reveal why a WebTransport session was refused (no HTTP status: a 401, " +
  "403, 404 or 429 all look the same as an unreachable server)";

/** What `ConnectError` says to check after a failed WebSocket attempt. */
export const WEBSOCKET_HINT =
  "check that the server serves WebSocket on that TCP port (Server(websocket=True), " +
  "`aiowt run --websocket`), that the browser trusts its certificate for wss:// (a " +
  "certificate hash cannot be pinned for a WebSocket: use a trusted certificate, or ws:// " +
  "on localhost or behind a proxy that terminates TLS), and that the path is routed. " +
  "Browsers do not reveal why a WebSocket upgrade was refused either (a 401, 403, 404 or " +
  "429 all end as a close with code 1006, like an unreachable server)";

/** One transport `connect()` tried, and how it failed. */
export interface ConnectAttempt {
  readonly transport: "webtransport" | "websocket";
  readonly url: string;
  readonly error: Error;
}

export interface ConnectErrorOptions {
  cause?: unknown;
  /** What to check (the WebTransport hint by default). */
  hint?: string;
  /** Every transport tried, in order (empty when none got as far as a try). */
  attempts?: readonly ConnectAttempt[];
}

/** The session could not be opened; `attempts` lists each transport tried and its error. */
export class ConnectError extends AiowtError {
  readonly url: string;
  /** What went wrong, without the hint. */
  readonly detail: string;
  readonly attempts: readonly ConnectAttempt[];
  constructor(url: string, detail: string, options?: ConnectErrorOptions) {
    super(
      `could not connect to ${url}: ${detail}; ${options?.hint ?? WEBTRANSPORT_HINT}`,
      options?.cause === undefined ? undefined : { cause: options.cause },
    );
    this.url = url;
    this.detail = detail;
    this.attempts = options?.attempts ?? [];
  }
}

export interface ConnectTimeoutOptions extends ConnectErrorOptions {
  /** What went wrong, without the hint (`no session within <timeoutMs> ms` by default). */
  detail?: string;
}

/**
 * Every transport tried timed out: none refused or failed, none was ready in its time.
 * A `ConnectError` (catching that catches this), with the same `attempts`; `timeoutMs`
 * is the wait of the last attempt (`connect()`'s `timeoutMs`).
 */
export class ConnectTimeout extends ConnectError {
  readonly timeoutMs: number;
  constructor(url: string, timeoutMs: number, options?: ConnectTimeoutOptions) {
    super(url, options?.detail ?? `no session within ${timeoutMs} ms`, options);
    this.timeoutMs = timeoutMs;
  }
}

/** The error an attempt in `ConnectError.attempts` timed out with (`name` is "TimeoutError"). */
export function attemptTimedOut(what: string, timeoutMs: number): Error {
  const error = new Error(`no ${what} within ${timeoutMs} ms`);
  error.name = "TimeoutError";
  return error;
}

/** A frame or message is larger than the size limit (raised before anything is sent). */
export class FrameTooLarge extends AiowtError {
  readonly size: number;
  readonly limit: number;
  constructor(size: number, limit: number, what = "message") {
    super(`${what} of ${size} bytes exceeds the limit of ${limit} bytes`);
    this.size = size;
    this.limit = limit;
  }
}

/** Bytes from the peer are not valid aiowt framing or msgpack. */
export class MalformedMessage extends AiowtError {}

/** The session is closed; `info` says how. */
export class SessionClosed extends AiowtError {
  readonly info: CloseInfo;
  constructor(info: CloseInfo) {
    super(`session closed ${info.byPeer ? "by the peer" : "by this side"}: ${describeClose(info)}`);
    this.info = info;
  }
}

/** The peer reset (or stopped) a stream; `code` is its stream error code when the browser gave one. */
export class StreamReset extends AiowtError {
  readonly code: number | null;
  constructor(code: number | null, options?: { cause?: unknown }) {
    super(code === null ? "the stream was reset" : `the stream was reset with code ${code}`, options);
    this.code = code;
  }
}
