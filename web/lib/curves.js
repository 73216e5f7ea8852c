// Coefficient schedules as the Python side builds them (samplers/schedule.py), for plotting only.

export function linspace(start, end, steps) {
  const n = Math.max(0, Math.floor(steps));
  if (n === 1) return [start];
  return Array.from({ length: n }, (_, i) => start + ((end - start) * i) / (n - 1));
}

export function identity(steps) {
  return { c_x: linspace(1, 1, steps), c_eps: linspace(1, 1, steps) };
}

// "1.1, 1.05 ,1" -> [1.1, 1.05, 1]; throws naming the bad entry.
export function parseList(text) {
  const parts = String(text ?? "").split(/[,\s]+/).filter((p) => p.length > 0);
  return parts.map((p, i) => {
    const v = Number(p);
    if (!Number.isFinite(v)) throw new Error(`entry ${i + 1} (${JSON.stringify(p)}) is not a number`);
    return v;
  });
}

// A list of one value means that value at every step; otherwise its length must match the steps.
export function expandList(values, steps, what) {
  if (values.length === 1) return linspace(values[0], values[0], steps);
  if (values.length !== steps) throw new Error(`${what} has ${values.length} values for ${steps} steps`);
  return values;
}

export function checkSchedule({ c_x, c_eps }) {
  for (const [name, values] of [["c_x", c_x], ["c_eps", c_eps]]) {
    values.forEach((v, i) => {
      if (!Number.isFinite(v) || v <= 0) throw new Error(`${name}[${i}] = ${v} must be a positive finite number`);
    });
  }
  return { c_x, c_eps };
}
