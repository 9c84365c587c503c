/** A scriptable stand-in for the browser's `WebSocket`, and a manual scheduler, for tests in node. */

import { decodeMuxFrame, type MuxFrame, type Schedule, type WebSocketConstructor, type WebSocketLike } from "../src/index.js";
import { deferred } from "./fake.js";

export type SocketBehaviour = "open" | "refuse" | "hang" | "throw";

export class FakeSocket implements WebSocketLike {
  readonly url: string;
  binaryType = "blob";
  readyState = 0;
  bufferedAmount = 0;
  /** Every message sent, as copies. */
  readonly sent: Uint8Array[] = [];
  readonly closeCalls: (number | undefined)[] = [];
  private readonly listeners = new Map<string, ((event: any) => void)[]>();

  constructor(url: string) {
    this.url = url;
  }

  addEventListener(type: string, listener: (event: any) => void): void {
    const list = this.listeners.get(type) ?? [];
    list.push(listener);
    this.listeners.set(type, list);
  }

  private emit(type: string, event: unknown): void {
    for (const listener of this.listeners.get(type) ?? []) listener(event);
  }

  send(data: Uint8Array): void {
    if (this.readyState !== 1) throw new Error("InvalidStateError: not open");
    this.sent.push(data.slice());
  }

  close(code?: number): void {
    this.closeCalls.push(code);
    if (this.readyState < 2) this.readyState = 2;
  }

  open(): void {
    this.readyState = 1;
    this.emit("open", {});
  }

  /** The browser's view of a refused upgrade: `error`, then `close` with 1006. */
  refuse(): void {
    this.readyState = 3;
    this.emit("error", {});
    this.emit("close", { code: 1006, reason: "" });
  }

  /** A message from the server: bytes arrive as an ArrayBuffer (binaryType "arraybuffer"). */
  receive(message: Uint8Array | string): void {
    const data = typeof message === "string" ? message : message.slice().buffer;
    this.emit("message", { data });
  }

  /** The TCP connection ends (no CLOSE frame). */
  end(code = 1006, reason = ""): void {
    this.readyState = 3;
    this.emit("close", { code, reason });
  }

  /** The frames sent so far, decoded; `take()` also forgets them. */
  frames(): MuxFrame[] {
    return this.sent.map((bytes) => decodeMuxFrame(bytes));
  }

  take(): MuxFrame[] {
    const frames = this.frames();
    this.sent.length = 0;
    return frames;
  }
}

/**
 * A `WebSocket` class whose instances behave as `script` says, in turn (the last entry
 * repeats). `instances` keeps every socket made.
 */
export function fakeWebSocket(...script: SocketBehaviour[]): {
  WebSocket: WebSocketConstructor;
  instances: FakeSocket[];
} {
  const instances: FakeSocket[] = [];
  class Fake extends FakeSocket {
    constructor(url: string) {
      const behaviour = script[Math.min(instances.length, script.length - 1)] ?? "open";
      if (behaviour === "throw") throw new SyntaxError(`invalid URL: ${url}`);
      super(url);
      instances.push(this);
      if (behaviour === "open") queueMicrotask(() => this.open());
      if (behaviour === "refuse") queueMicrotask(() => this.refuse());
    }
  }
  return { WebSocket: Fake, instances };
}

/** A `Schedule` whose callbacks run when the test says. */
export class ManualScheduler {
  private pending: { callback: () => void; ms: number }[] = [];
  /** The delay of every callback scheduled so far, in order. */
  readonly delays: number[] = [];
  readonly schedule: Schedule = (callback, ms) => {
    const entry = { callback, ms };
    this.pending.push(entry);
    this.delays.push(ms);
    return () => {
      this.pending = this.pending.filter((e) => e !== entry);
    };
  };
  get size(): number {
    return this.pending.length;
  }
  runAll(): void {
    const due = this.pending;
    this.pending = [];
    for (const entry of due) entry.callback();
  }
}

/** Let every queued microtask and promise reaction run (one turn of the event loop). */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export { deferred };
