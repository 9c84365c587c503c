/** A scriptable stand-in for the browser's `WebTransport`, for tests in node. */

import type {
  BidirectionalStreamLike,
  WebTransportConstructor,
  WebTransportLike,
} from "../src/index.js";

export type Behaviour = "ready" | "refuse" | "hang" | "throw";

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (error: unknown) => void;
}

export function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** A readable whose chunks the test pushes. */
export class Source<T> {
  controller!: ReadableStreamDefaultController<T>;
  readonly stream = new ReadableStream<T>({ start: (c) => void (this.controller = c) });
  push(chunk: T): void {
    this.controller.enqueue(chunk);
  }
  end(): void {
    this.controller.close();
  }
  fail(error: unknown): void {
    this.controller.error(error);
  }
}

/** A writable that keeps what was written. */
export class Sink {
  readonly chunks: Uint8Array[] = [];
  closed = false;
  aborted: unknown = undefined;
  readonly stream = new WritableStream<Uint8Array>({
    write: (chunk) => void this.chunks.push(chunk),
    close: () => void (this.closed = true),
    abort: (reason) => void (this.aborted = reason ?? "aborted"),
  });
  get bytes(): Uint8Array {
    const out = new Uint8Array(this.chunks.reduce((n, c) => n + c.byteLength, 0));
    let offset = 0;
    for (const chunk of this.chunks) {
      out.set(chunk, offset);
      offset += chunk.byteLength;
    }
    return out;
  }
}

export class FakeTransport implements WebTransportLike {
  readonly url: string;
  readonly options: WebTransportOptions | undefined;
  private readonly readyD = deferred<void>();
  private readonly closedD = deferred<{ closeCode?: number; reason?: string }>();
  readonly ready = this.readyD.promise;
  readonly closed = this.closedD.promise;
  readonly datagramIn = new Source<Uint8Array>();
  readonly datagramOut = new Sink();
  readonly datagrams: {
    readable: ReadableStream<Uint8Array>;
    writable: WritableStream<Uint8Array>;
    maxDatagramSize: number;
  };
  readonly bidiIn = new Source<BidirectionalStreamLike>();
  readonly uniIn = new Source<ReadableStream<Uint8Array>>();
  readonly incomingBidirectionalStreams = this.bidiIn.stream;
  readonly incomingUnidirectionalStreams = this.uniIn.stream;
  /** Streams this side opened: what it wrote, and a source for the peer's answer. */
  readonly opened: { sink: Sink; source: Source<Uint8Array> | null }[] = [];
  readonly closeCalls: ({ closeCode?: number; reason?: string } | undefined)[] = [];

  constructor(url: string, options?: WebTransportOptions) {
    this.url = url;
    this.options = options;
    this.datagrams = {
      readable: this.datagramIn.stream,
      writable: this.datagramOut.stream,
      maxDatagramSize: 1200,
    };
  }

  open(): void {
    this.readyD.resolve();
  }

  refuse(): void {
    const error = new Error("Opening handshake failed.");
    error.name = "WebTransportError";
    this.readyD.reject(error);
    this.closedD.reject(error);
    this.endStreams(error);
  }

  /** The peer closes the session. */
  peerClose(closeCode: number, reason = ""): void {
    this.closedD.resolve({ closeCode, reason });
    this.endStreams(new Error("session closed"));
  }

  /** The connection is lost without a close capsule. */
  lose(): void {
    const error = new Error("Connection lost.");
    error.name = "WebTransportError";
    this.closedD.reject(error);
    this.endStreams(error);
  }

  private endStreams(error: Error): void {
    for (const source of [this.datagramIn, this.bidiIn, this.uniIn]) {
      try {
        source.fail(error);
      } catch {
        // already closed
      }
    }
  }

  async createBidirectionalStream(): Promise<BidirectionalStreamLike> {
    const sink = new Sink();
    const source = new Source<Uint8Array>();
    this.opened.push({ sink, source });
    return { readable: source.stream, writable: sink.stream };
  }

  async createUnidirectionalStream(): Promise<WritableStream<Uint8Array>> {
    const sink = new Sink();
    this.opened.push({ sink, source: null });
    return sink.stream;
  }

  close(closeInfo?: { closeCode?: number; reason?: string }): void {
    this.closeCalls.push(closeInfo);
    this.readyD.reject(new Error("closed before ready"));
    this.closedD.resolve({ closeCode: closeInfo?.closeCode ?? 0, reason: closeInfo?.reason ?? "" });
    this.endStreams(new Error("session closed"));
  }
}

/**
 * A `WebTransport` class whose instances behave as `script` says, in turn (the last
 * entry repeats). `instances` keeps every transport made.
 */
export function fakeWebTransport(...script: Behaviour[]): {
  WebTransport: WebTransportConstructor;
  instances: FakeTransport[];
  next(): Promise<FakeTransport>;
} {
  const instances: FakeTransport[] = [];
  const waiters: Deferred<FakeTransport>[] = [];
  const waiter = (index: number): Deferred<FakeTransport> => (waiters[index] ??= deferred());
  let taken = 0;
  class Fake extends FakeTransport {
    constructor(url: string, options?: WebTransportOptions) {
      const behaviour = script[Math.min(instances.length, script.length - 1)] ?? "ready";
      if (behaviour === "throw") throw new SyntaxError(`invalid URL: ${url}`);
      super(url, options);
      this.ready.catch(() => {});
      this.closed.catch(() => {});
      const index = instances.length;
      instances.push(this);
      if (behaviour === "ready") this.open();
      if (behaviour === "refuse") queueMicrotask(() => this.refuse());
      waiter(index).resolve(this);
    }
  }
  return {
    WebTransport: Fake,
    instances,
    next: () => waiter(taken++).promise,
  };
}
