import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  CloseCode,
  ConnectError,
  InvalidCertificateHash,
  Reconnecting,
  SessionClosed,
  UsageError,
  backoffDelay,
  type Session,
} from "../src/index.js";
import { deferred, fakeWebTransport } from "./fake.js";

describe("backoffDelay", () => {
  const options = { initialMs: 100, maxMs: 1000 };

  test("full jitter: random() times a ceiling that doubles up to maxMs", () => {
    const ceilings = [0, 1, 2, 3, 4, 5, 10].map((attempt) => backoffDelay(attempt, options, () => 1));
    assert.deepEqual(ceilings, [100, 200, 400, 800, 1000, 1000, 1000]);
    assert.equal(backoffDelay(3, options, () => 0), 0);
    assert.equal(backoffDelay(2, options, () => 0.25), 100);
  });

  test("stays within [0, ceiling) with Math.random, and varies", () => {
    const delays = Array.from({ length: 200 }, () => backoffDelay(2, options));
    assert.ok(delays.every((d) => d >= 0 && d < 400));
    assert.ok(new Set(delays).size > 100);
  });

  test("a huge attempt number does not overflow", () => {
    assert.equal(backoffDelay(10_000, options, () => 0.5), 500);
    assert.equal(backoffDelay(-1, options, () => 1), 100);
  });
});

/** Sleeps that resolve at once and record their delays. */
function instantSleep(): { sleep: (ms: number) => Promise<void>; delays: number[] } {
  const delays: number[] = [];
  return { delays, sleep: async (ms) => void delays.push(ms) };
}

describe("Reconnecting", () => {
  test("retries refusals with backoff until a session opens", async () => {
    const fake = fakeWebTransport("refuse", "refuse", "ready");
    const { sleep, delays } = instantSleep();
    const sessions: Session[] = [];
    const client = new Reconnecting("https://h/x", {
      WebTransport: fake.WebTransport,
      sleep,
      random: () => 0.5,
      initialDelayMs: 100,
      maxDelayMs: 1000,
      onSession: (s) => void sessions.push(s),
    });
    const session = await client.connected();
    assert.equal(sessions[0], session);
    assert.equal(client.attempts, 3);
    assert.equal(client.sessionsOpened, 1);
    assert.deepEqual(delays, [50, 100]);
    client.close();
    assert.equal(await client.finished, null);
  });

  test("calls onSession for each session; the backoff restarts after a session", async () => {
    const fake = fakeWebTransport("ready", "refuse", "ready");
    const { sleep, delays } = instantSleep();
    const opened: Session[] = [];
    const retries: string[] = [];
    const second = deferred<Session>();
    const client = new Reconnecting("https://h/x", {
      WebTransport: fake.WebTransport,
      sleep,
      random: () => 1,
      initialDelayMs: 10,
      onRetry: ({ retry, error }) => retries.push(`${retry} ${error.name}`),
      onSession: (s) => {
        opened.push(s);
        if (opened.length === 2) second.resolve(s);
      },
    });
    const first = await client.connected();
    fake.instances[0]!.peerClose(CloseCode.GOING_AWAY, "restart");
    assert.equal(await second.promise, await client.connected());
    assert.notEqual(opened[0], opened[1]);
    assert.equal((await first.closed).name, "GOING_AWAY");
    assert.equal(client.sessionsOpened, 2);
    assert.equal(client.attempts, 3);
    assert.deepEqual(delays, [10, 20]);
    assert.deepEqual(retries, ["0 SessionClosed", "1 ConnectError"]);
    client.close(CloseCode.NORMAL, "done");
    assert.deepEqual(fake.instances[2]!.closeCalls, [{ closeCode: 0, reason: "done" }]);
    assert.equal(await client.finished, null);
    assert.equal(client.done, true);
    assert.equal(client.session, null);
  });

  test("gives up when the server closes with a named code", async () => {
    const fake = fakeWebTransport("ready");
    const client = new Reconnecting("https://h/x", {
      WebTransport: fake.WebTransport,
      sleep: instantSleep().sleep,
      giveUpCodes: [CloseCode.RATE_LIMITED],
    });
    await client.connected();
    fake.instances[0]!.peerClose(CloseCode.RATE_LIMITED, "too fast");
    const error = await client.finished;
    assert.ok(error instanceof SessionClosed);
    assert.equal(error.info.name, "RATE_LIMITED");
    assert.equal(error.info.reason, "too fast");
    assert.equal(client.error, error);
    assert.equal(client.attempts, 1);
    await assert.rejects(client.connected(), SessionClosed);
  });

  test("other close codes and lost connections are retried", async () => {
    const fake = fakeWebTransport("ready");
    const client = new Reconnecting("https://h/x", {
      WebTransport: fake.WebTransport,
      sleep: instantSleep().sleep,
      giveUpCodes: [CloseCode.RATE_LIMITED],
    });
    await client.connected();
    fake.instances[0]!.peerClose(CloseCode.GOING_AWAY);
    await fake.next();
    await fake.next();
    fake.instances[1]!.lose();
    await fake.next();
    assert.equal(client.done, false);
    client.stop();
    assert.equal(await client.finished, null);
    assert.equal(fake.instances.length, 3);
  });

  test("gives up after maxAttempts", async () => {
    const fake = fakeWebTransport("refuse");
    const client = new Reconnecting("https://h/x", {
      WebTransport: fake.WebTransport,
      sleep: instantSleep().sleep,
      maxAttempts: 3,
    });
    const error = await client.finished;
    assert.ok(error instanceof ConnectError);
    assert.match(error.message, /no session after 3 attempts/);
    assert.equal(client.attempts, 3);
    await assert.rejects(client.connected(), ConnectError);
  });

  test("close() during the backoff wait stops at once", async () => {
    const fake = fakeWebTransport("refuse");
    const waiting = deferred<void>();
    const client = new Reconnecting("https://h/x", {
      WebTransport: fake.WebTransport,
      sleep: () => {
        waiting.resolve();
        return new Promise(() => {}); // never ends by itself
      },
    });
    await waiting.promise;
    client.close();
    assert.equal(await client.finished, null);
    assert.equal(client.attempts, 1);
    await assert.rejects(client.connected(), /the Reconnecting client was closed/);
  });

  test("a bad option is not retried", async () => {
    const fake = fakeWebTransport("ready");
    const client = new Reconnecting("https://h/x", {
      WebTransport: fake.WebTransport,
      certificateHashes: ["xyz"],
    });
    assert.ok((await client.finished) instanceof InvalidCertificateHash);
    assert.equal(fake.instances.length, 0);
  });

  test("an exception in onSession closes that session and gives up", async () => {
    const fake = fakeWebTransport("ready");
    const client = new Reconnecting("https://h/x", {
      WebTransport: fake.WebTransport,
      onSession: () => {
        throw new TypeError("bug in the hook");
      },
    });
    const error = await client.finished;
    assert.ok(error instanceof TypeError);
    assert.deepEqual(fake.instances[0]!.closeCalls, [
      { closeCode: CloseCode.INTERNAL_ERROR, reason: "onSession failed" },
    ]);
  });

  test("bad backoff settings are UsageErrors", () => {
    assert.throws(() => new Reconnecting("https://h/x", { initialDelayMs: 0 }), UsageError);
    assert.throws(() => new Reconnecting("https://h/x", { initialDelayMs: 10, maxDelayMs: 5 }), UsageError);
    assert.throws(() => new Reconnecting("https://h/x", { maxAttempts: 0 }), UsageError);
  });
});
