// Unit tests of web/lib/curves.js (the schedule the curve widgets plot), run by `node --test`.
import assert from "node:assert/strict";
import { test } from "node:test";
import { checkSchedule, expandList, identity, linspace, parseList } from "../../web/lib/curves.js";

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

test("parseList reads commas and spaces and names a bad entry", () => {
  assert.deepEqual(parseList("1.1, 1.05 ,1  0.9"), [1.1, 1.05, 1, 0.9]);
  assert.throws(() => parseList("1.1, abc"), /entry 2 \("abc"\)/);
});

test("expandList repeats one value and checks the length", () => {
  assert.deepEqual(expandList([1.1], 3, "c_x"), [1.1, 1.1, 1.1]);
  assert.throws(() => expandList([1, 2], 3, "c_x list"), /c_x list has 2 values for 3 steps/);
});

test("checkSchedule refuses non-positive and non-finite coefficients", () => {
  assert.throws(() => checkSchedule({ c_x: [1, 0], c_eps: [1, 1] }), /c_x\[1\] = 0/);
  assert.throws(() => checkSchedule({ c_x: [1, 1], c_eps: [NaN, 1] }), /c_eps\[0\] = NaN/);
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
