// What the client pages (client.html, fallback.html) share: bounded steps whose results
// (or errors) collect in `result`, posted to /result as one JSON object at the end.

export const result = {};

export function bounded(promise, what, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function describe(error) {
  return {error: `${error?.name}: ${error?.message}`};
}

export function stepper(ms) {
  return async function step(name, run) {
    try {
      result[name] = await bounded(run(), name, ms);
    } catch (error) {
      result[name] = describe(error);
    }
  };
}

export async function collect(iterable, count = Infinity) {
  const items = [];
  for await (const item of iterable) {
    items.push(item);
    if (items.length >= count) break;
  }
  return items;
}

export function pattern(size) {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + 7) & 0xff;
  return bytes;
}

export function sameBytes(a, b) {
  return a instanceof Uint8Array && a.length === b.length && a.every((x, i) => x === b[i]);
}

export async function report() {
  await fetch("/result", {method: "POST", body: JSON.stringify(result, (key, value) =>
    value instanceof Uint8Array ? Array.from(value) : value)});
}

// Steps both pages run the same way, over whichever transport their session has.

export async function incomingRoundTrip(session) {
  const writer = await session.openUnidirectionalStream();
  await writer.send({uni: 1});
  await writer.send("two");
  await writer.close();
  const [reader] = await collect(session.incomingStreams(), 1);
  return {kind: reader.kind, messages: await collect(reader.messages())};
}

export async function closeFromClient(session, SessionClosed) {
  session.close(4000, "client done ✓");
  const info = await session.closed;
  let after = null;
  try {
    await session.openStream();
  } catch (error) {
    after = {name: error.name, isSessionClosed: error instanceof SessionClosed};
  }
  return {...info, after};
}
