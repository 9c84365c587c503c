/**
 * `Reconnecting`: a session that comes back when its connection drops, like the Python
 * client's `aiowt.transport.Reconnecting`.
 *
 * After a drop it connects again with exponential backoff and full jitter (so that a
 * thousand clients of a restarted server do not return in one burst), and calls
 * `onSession` with each new session (to subscribe again). It gives up, and says why,
 * when the server closed the session with a code the caller named (`giveUpCodes`),
 * after `maxAttempts`, or on an error retrying cannot fix (bad options, no WebTransport,
 * an exception in `onSession`).
 *
 * Unlike the Python client it cannot give up on a refusal status (401, 403, 404, ...):
 * browsers never reveal the HTTP status of a refused WebTransport session, so every
 * refusal looks like a network failure and is retried. Close codes are seen (the
 * session's `closed` gives the code and reason).
 *
 * In `"auto"` mode it remembers a blocked WebTransport: once an attempt saw WebTransport
 * fail or time out and WebSocket succeed, the next attempts go straight to WebSocket
 * (no `fallbackAfterMs` wait each time), and every `retryWebTransportEvery`-th attempt
 * (10 by default) tries WebTransport first again; when that one gets WebTransport, it is
 * used from then on.
 */

import { AiowtError, ConnectError, SessionClosed, UsageError, type CloseInfo } from "./errors.js";
import { CloseCode } from "./codes.js";
import { connect, type ConnectOptions, type Session } from "./session.js";

export interface BackoffOptions {
  /** Ceiling of the first delay, in ms. */
  initialMs: number;
  /** Largest ceiling, in ms. */
  maxMs: number;
}

/**
 * Milliseconds to wait before retry number `attempt` (0-based): "full jitter", a uniform
 * draw below `initialMs * 2**attempt`, capped at `maxMs`. `random` returns [0, 1).
 */
export function backoffDelay(
  attempt: number,
  { initialMs, maxMs }: BackoffOptions,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(Math.max(attempt, 0), 62));
  return random() * ceiling;
}

export interface RetryInfo {
  /** Retries since the last session opened (0 for the first). */
  readonly retry: number;
  /** The wait before the next attempt, in ms. */
  readonly delayMs: number;
  /** Why: a `ConnectError` or a `SessionClosed`. */
  readonly error: Error;
}

export interface ReconnectingOptions extends ConnectOptions {
  /** Called (and awaited) with each new session, before `connected()` returns it. */
  onSession?: (session: Session) => void | Promise<void>;
  /** Called before each wait, for logging. */
  onRetry?: (info: RetryInfo) => void;
  /** Ceiling of the first backoff delay in ms (default 500). */
  initialDelayMs?: number;
  /** Largest backoff delay in ms (default 30 000). */
  maxDelayMs?: number;
  /** Give up after this many connection attempts in all (default: never). */
  maxAttempts?: number | null;
  /** Give up when the server closes the session with one of these codes. */
  giveUpCodes?: Iterable<number>;
  /**
   * In `"auto"`, after WebTransport failed and WebSocket worked, attempts go straight to
   * WebSocket; every this-many-th attempt since tries WebTransport first again (default
   * 10; 1 tries it every time, as `connect()` does).
   */
  retryWebTransportEvery?: number;
  /** Returns [0, 1): `Math.random` by default (tests inject their own). */
  random?: () => number;
  /** Waits `ms` milliseconds: `setTimeout` by default (tests inject their own). */
  sleep?: (ms: number) => Promise<void>;
}

/** While WebTransport is skipped, every this-many-th attempt tries it again. */
export const DEFAULT_RETRY_WEBTRANSPORT_EVERY = 10;

function defaultSleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Keeps a session to `url` open; starts connecting at once.
 *
 * `client.session` is the current session (null between two); `await client.connected()`
 * waits for one. `client.close()` closes the current session and stops for good.
 */
export class Reconnecting {
  readonly url: string;
  readonly giveUpCodes: ReadonlySet<number>;
  readonly maxAttempts: number | null;
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
  /** The current session, or null between two. */
  session: Session | null = null;
  /** Sessions opened so far. */
  sessionsOpened = 0;
  /** Connection attempts so far, successful or not. */
  attempts = 0;
  /**
   * True while attempts skip WebTransport (`"auto"` only): the last attempt that tried
   * it saw it fail or time out, and WebSocket work.
   */
  skippingWebTransport = false;
  /** Attempts every which one tries WebTransport again while `skippingWebTransport`. */
  readonly retryWebTransportEvery: number;
  /** Why it gave up, once it has (null after `close()`). */
  error: Error | null = null;
  /** Resolves when it is done: with why it gave up, or null after `close()`. Never rejects. */
  readonly finished: Promise<Error | null>;
  private readonly options: ReconnectingOptions;
  private closing = false;
  private isDone = false;
  private wake: () => void = () => {};
  private readonly stopped: Promise<void>;
  private changed: Promise<void>;
  private notify: () => void = () => {};

  constructor(url: string, options: ReconnectingOptions = {}) {
    const initialDelayMs = options.initialDelayMs ?? 500;
    const maxDelayMs = options.maxDelayMs ?? 30_000;
    if (!(0 < initialDelayMs && initialDelayMs <= maxDelayMs)) {
      throw new UsageError("backoff needs 0 < initialDelayMs <= maxDelayMs");
    }
    if (options.maxAttempts != null && !(options.maxAttempts >= 1)) {
      throw new UsageError(`maxAttempts must be at least 1, not ${options.maxAttempts}`);
    }
    this.url = url;
    this.options = options;
    this.initialDelayMs = initialDelayMs;
    this.maxDelayMs = maxDelayMs;
    this.maxAttempts = options.maxAttempts ?? null;
    const every = options.retryWebTransportEvery ?? DEFAULT_RETRY_WEBTRANSPORT_EVERY;
    if (!(Number.isInteger(every) && every >= 1)) {
      throw new UsageError(`retryWebTransportEvery must be a whole number of at least 1, not ${every}`);
    }
    this.retryWebTransportEvery = every;
    this.giveUpCodes = new Set(options.giveUpCodes ?? []);
    this.stopped = new Promise((resolve) => (this.wake = resolve));
    this.changed = this.nextChange();
    this.finished = this.run().then((error) => {
      this.error = error;
      this.isDone = true;
      this.session = null;
      this.signal();
      return error;
    });
  }

  /** True once it gave up or was closed. */
  get done(): boolean {
    return this.isDone;
  }

  /** The current session, once there is one; rejects with what made it give up. */
  async connected(): Promise<Session> {
    for (;;) {
      const changed = this.changed;
      if (this.session !== null && !this.session.isClosed) return this.session;
      if (this.isDone) throw this.error ?? new AiowtError("the Reconnecting client was closed");
      await changed;
    }
  }

  /** Close the current session (with `code` and `reason`) and stop reconnecting. */
  close(code: number = CloseCode.NORMAL, reason = ""): void {
    if (this.closing) return;
    this.closing = true;
    this.session?.close(code, reason);
    this.wake();
    this.signal();
  }

  /** `close()` with `CloseCode.NORMAL`. */
  stop(): void {
    this.close();
  }

  private nextChange(): Promise<void> {
    return new Promise((resolve) => (this.notify = resolve));
  }

  private signal(): void {
    const notify = this.notify;
    this.changed = this.nextChange();
    notify();
  }

  private async run(): Promise<Error | null> {
    const random = this.options.random ?? Math.random;
    const sleep = this.options.sleep ?? defaultSleep;
    let failures = 0;
    const auto = (this.options.transport ?? "auto") === "auto";
    // Attempts straight to WebSocket since WebTransport was last tried.
    let skipped = 0;
    try {
      while (!this.closing) {
        if (this.maxAttempts !== null && this.attempts >= this.maxAttempts) {
          return new ConnectError(this.url, `no session after ${this.attempts} attempts`);
        }
        this.attempts++;
        let failure: Error;
        let session: Session;
        const skip = auto && this.skippingWebTransport && skipped + 1 < this.retryWebTransportEvery;
        if (skip) skipped++;
        else skipped = 0;
        try {
          session = await connect(this.url, skip ? { ...this.options, transport: "websocket" } : this.options);
          if (auto && !skip) {
            // Remember (or forget) a WebTransport that failed while WebSocket worked.
            this.skippingWebTransport =
              session.transport === "websocket" && session.fallbackFrom.some((a) => a.transport === "webtransport");
          }
        } catch (error) {
          // Bad options or no WebTransport: no retry can help.
          if (!(error instanceof ConnectError)) return asError(error);
          failure = error;
          session = null as never;
        }
        if (session !== null) {
          failures = 0;
          const info = await this.live(session);
          if (this.closing || !info.byPeer) return null;
          failure = new SessionClosed(info);
          if (this.giveUpCodes.has(info.code)) return failure;
        }
        const delayMs = backoffDelay(
          failures,
          { initialMs: this.initialDelayMs, maxMs: this.maxDelayMs },
          random,
        );
        this.options.onRetry?.({ retry: failures, delayMs, error: failure! });
        failures++;
        await Promise.race([sleep(delayMs), this.stopped]);
      }
      return null;
    } catch (error) {
      return asError(error);
    }
  }

  /** Run one session until it ends; an exception in `onSession` closes it and gives up. */
  private async live(session: Session): Promise<CloseInfo> {
    if (this.closing) {
      session.close();
      return session.closed;
    }
    this.session = session;
    this.sessionsOpened++;
    try {
      await this.options.onSession?.(session);
    } catch (error) {
      session.close(CloseCode.INTERNAL_ERROR, "onSession failed");
      this.session = null;
      throw error;
    }
    this.signal();
    const info = await session.closed;
    this.session = null;
    this.signal();
    return info;
  }
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new AiowtError(String(error));
}
