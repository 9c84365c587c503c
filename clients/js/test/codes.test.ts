import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { CloseCode, StreamErrorCode, closeCodeName, streamErrorCodeName } from "../src/index.js";

// build-test/test/codes.test.js -> clients/js -> the repository root.
const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const CODES_PY = resolve(PACKAGE_ROOT, "..", "..", "transport", "codes.py");

/** The `NAME = value` lines of each class in codes.py, by class. */
function parseCodes(source: string): Map<string, Map<string, number>> {
  const classes = new Map<string, Map<string, number>>();
  let current: Map<string, number> | null = null;
  for (const line of source.split("\n")) {
    const header = /^class (\w+)\(/.exec(line);
    if (header) {
      current = new Map();
      classes.set(header[1]!, current);
      continue;
    }
    if (/^\S/.test(line)) current = null; // back at module level
    const member = /^ {4}([A-Z][A-Z0-9_]*) = (0x[0-9a-fA-F]+|\d+)\s*(#.*)?$/.exec(line);
    if (member && current) current.set(member[1]!, Number(member[2]!));
  }
  return classes;
}

const python = parseCodes(readFileSync(CODES_PY, "utf8"));

for (const [name, constants] of [
  ["CloseCode", CloseCode],
  ["StreamErrorCode", StreamErrorCode],
] as const) {
  test(`${name} equals transport/codes.py exactly`, () => {
    const expected = python.get(name);
    assert.ok(expected && expected.size > 0, `no ${name} found in ${CODES_PY}`);
    assert.deepEqual(Object.entries(constants), [...expected.entries()]);
  });
}

test("codes.py has no class this package does not mirror", () => {
  assert.deepEqual([...python.keys()].sort(), ["CloseCode", "StreamErrorCode"]);
});

test("the parser reads hex and decimal values", () => {
  const parsed = parseCodes("class X(enum.IntEnum):\n    A = 0\n    B = 0x100A\n    \"\"\"doc\"\"\"\n\nY = 3\n");
  assert.deepEqual([...parsed.get("X")!], [["A", 0], ["B", 0x100a]]);
});

test("closeCodeName and streamErrorCodeName", () => {
  assert.equal(closeCodeName(0), "NORMAL");
  assert.equal(closeCodeName(0x1001), "GOING_AWAY");
  assert.equal(closeCodeName(0x100a), "ABORTED");
  assert.equal(closeCodeName(4000), undefined);
  assert.equal(streamErrorCodeName(0x2001), "REFUSED");
  assert.equal(streamErrorCodeName(0x1001), undefined);
});
