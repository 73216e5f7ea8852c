// Unit tests of web/lib/curves.js (the schedule the curve widgets plot), run by `node --test`.
import assert from "node:assert/strict";
import { test } from "node:test";
import { readFileSync } from "node:fs";
import {
  checkSchedule, identity, linearSchedule, linspace, listSchedule, parseCoefficients,
} from "../../web/lib/curves.js";
import { pyFloatRepr, pyStrRepr } from "../../web/lib/pytext.js";

// The cases the node's grammar is checked against too (tests/test_coefficient_text.py).
const VECTORS = JSON.parse(readFileSync(new URL("../coefficient_text_vectors.json", import.meta.url), "utf8")).cases;

const close = (a, b) => a.forEach((v, i) => assert.ok(Math.abs(v - b[i]) < 1e-12, `${a} != ${b}`));

test("linspace matches numpy's: ends included, one step is the start", () => {
  close(linspace(1.2, 1.0, 5), [1.2, 1.15, 1.1, 1.05, 1.0]);
  close(linspace(0.8, 1.0, 2), [0.8, 1.0]);
  assert.deepEqual(linspace(0.9, 1.0, 1), [0.9]);
  assert.deepEqual(linspace(1, 1, 0), []);
});

test("identity is all ones", () => {
  assert.deepEqual(identity(3), { c_x: [1, 1, 1], c_eps: [1, 1, 1] });
});

for (const c of VECTORS) {
  test(`coefficient text as the node reads it: ${c.why}`, () => {
    if ("error" in c) {
      assert.throws(() => listSchedule(c.steps, c.c_x_list, c.c_eps_list), (e) => {
        assert.equal(e.message, c.error);
        return true;
      });
    } else {
      assert.deepEqual(listSchedule(c.steps, c.c_x_list, c.c_eps_list), { c_x: c.c_x, c_eps: c.c_eps });
    }
  });
}

test("parseCoefficients names the list and the entry", () => {
  assert.deepEqual(parseCoefficients("2, 3", "c_x_list"), [2, 3]);
  assert.throws(() => parseCoefficients("1.1, abc", "c_eps_list"),
    /^Error: c_eps_list: entry 2 \('abc'\) is not a number$/);
});

test("linearSchedule is linspace from start to end and refuses what the node refuses", () => {
  const s = linearSchedule(3, 1.2, 0.8);
  close(s.c_x, [1.2, 1.1, 1.0]); close(s.c_eps, [0.8, 0.9, 1.0]);
  assert.throws(() => linearSchedule(0, 1, 1), /steps must be a positive integer, got 0/);
  assert.throws(() => linearSchedule(2, -1, 1), /c_x\[0\] = -1\.0 is not positive/);
});

test("checkSchedule refuses non-positive and non-finite coefficients in the node's words", () => {
  assert.throws(() => checkSchedule({ c_x: [1, 0], c_eps: [1, 1] }), /c_x\[1\] = 0\.0 is not positive/);
  assert.throws(() => checkSchedule({ c_x: [1, 1], c_eps: [NaN, 1] }), /c_eps\[0\] = nan is not finite/);
});

test("pyFloatRepr writes floats as Python's repr does", () => {
  // Expected strings from CPython 3.11: repr(float(x)).
  const cases = [[1, "1.0"], [0.1, "0.1"], [1e16, "1e+16"], [1e15, "1000000000000000.0"],
    [123456789.125, "123456789.125"], [1e-5, "1e-05"], [0.0001, "0.0001"], [1.5e-7, "1.5e-07"], [2 ** 70, "1.1805916207174113e+21"], [-0, "-0.0"],
    [1 / 3, "0.3333333333333333"], [5e-324, "5e-324"], [1.7976931348623157e308, "1.7976931348623157e+308"]];
  for (const [value, text] of cases) assert.equal(pyFloatRepr(value), text, String(value));
});

test("pyStrRepr quotes and escapes as Python's repr does", () => {
  // Expected strings from CPython 3.11: repr(s).
  const cases = [["abc", "'abc'"], ["it's", `"it's"`], [`it's "x"`, `'it\\'s "x"'`], ["a\\b", "'a\\\\b'"],
    ["\t\n\r", "'\\t\\n\\r'"], ["\x00\x7f", "'\\x00\\x7f'"], ["\u00a0é", "'\\xa0é'"], ["\u200b", "'\\u200b'"],
    ["\u{1F600}", "'\u{1F600}'"], ["\u{E0001}", "'\\U000e0001'"]];
  for (const [text, repr] of cases) assert.equal(pyStrRepr(text), repr, JSON.stringify(text));
});

test("surfacePoints keeps the best score per start cell, full-prompt scores first, both trace forms", async () => {
  const { surfacePoints } = await import("../../web/lib/plot.js");
  const points = surfacePoints([
    { x_start: 0.9, eps_start: 1.1, score: 0.2 },
    { x_start: 0.9, eps_start: 1.1, score: 0.3 },
    { c_x: [1.1, 1.0], c_eps: [0.8, 1.0], score: null },
    { c_x: [1.1, 1.0], c_eps: [0.8, 1.0], score: 0.1 },
    { score: 0.5 },
    { c_x: [1.2, 1.0], c_eps: [1.2, 1.0], score: 0.9, full: false },
    { c_x: [1.2, 1.0], c_eps: [1.2, 1.0], score: 0.4, full: true },
    { c_x: [1.2, 1.0], c_eps: [1.2, 1.0], score: 0.95, full: false },
  ]);
  assert.deepEqual(points, [{ x: 0.9, y: 1.1, score: 0.3 }, { x: 1.1, y: 0.8, score: 0.1 },
    { x: 1.2, y: 1.2, score: 0.4 }]);
});
