// Coefficient schedules as the Python side builds them (nodes/sampling.py build_schedule, samplers/schedule.py
// QSchedSchedule), with the same grammar and the same error messages, for plotting only.
// tests/coefficient_text_vectors.json holds cases both sides are checked against.
import { pyFloat, pyFloatRepr, pyStrip, pyStrRepr } from "./pytext.js";

export function linspace(start, end, steps) {
  const n = Math.max(0, Math.floor(steps));
  if (n === 1) return [start];
  return Array.from({ length: n }, (_, i) => start + ((end - start) * i) / (n - 1));
}

export function identity(steps) {
  return { c_x: linspace(1, 1, steps), c_eps: linspace(1, 1, steps) };
}

// parse_coefficients: "1.1, 1.05,1" -> [1.1, 1.05, 1]; comma-separated Python floats, none empty.
export function parseCoefficients(text, name) {
  const source = String(text);
  return source.split(",").map((part, i) => {
    const item = pyStrip(part);
    if (!item) throw new Error(`${name}: entry ${i + 1} is empty in ${pyStrRepr(source)}`);
    const value = pyFloat(item);
    if (value === null) throw new Error(`${name}: entry ${i + 1} (${pyStrRepr(item)}) is not a number`);
    return value;
  });
}

// QSchedSchedule's check of each coefficient: finite, then positive.
export function checkSchedule({ c_x, c_eps }) {
  for (const [name, values] of [["c_x", c_x], ["c_eps", c_eps]]) {
    values.forEach((v, i) => {
      if (!Number.isFinite(v)) throw new Error(`${name}[${i}] = ${pyFloatRepr(v)} is not finite`);
      if (v <= 0) throw new Error(`${name}[${i}] = ${pyFloatRepr(v)} is not positive`);
    });
  }
  return { c_x, c_eps };
}

function checkSteps(steps) {
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps must be a positive integer, got ${steps}`);
  return steps;
}

// build_schedule(mode="list"): one value per step in each list, no repetition of a single value.
export function listSchedule(steps, cXList, cEpsList) {
  const c_x = parseCoefficients(cXList, "c_x_list"), c_eps = parseCoefficients(cEpsList, "c_eps_list");
  for (const [name, values] of [["c_x_list", c_x], ["c_eps_list", c_eps]]) {
    if (values.length !== steps) {
      throw new Error(`${name} has ${values.length} values but steps is ${steps}: give one per step`);
    }
  }
  return checkSchedule({ c_x, c_eps });
}

// build_schedule(mode="linspace"): the paper's form, c = linspace(start, end, steps).
export function linearSchedule(steps, xStart, epsStart, xEnd = 1, epsEnd = 1) {
  checkSteps(steps);
  return checkSchedule({ c_x: linspace(xStart, xEnd, steps), c_eps: linspace(epsStart, epsEnd, steps) });
}
