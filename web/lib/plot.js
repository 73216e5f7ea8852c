// Small canvas plots for the Q-Sched widgets: coefficient curves and the calibration score surface.

const COLORS = { c_x: "#4fc3f7", c_eps: "#ffb74d", grid: "#555", text: "#bbb", best: "#fff" };

function prepare(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = Math.max(1, canvas.clientWidth), h = Math.max(1, canvas.clientHeight);
  if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "10px sans-serif";
  return { ctx, w, h };
}

function range(values, pad) {
  let lo = Math.min(...values), hi = Math.max(...values);
  if (!(hi - lo > 1e-9)) { lo -= pad; hi += pad; }
  return [lo, hi];
}

// c_x and c_eps over the steps, with the identity line (1.0) dashed.
export function drawCurves(canvas, schedule) {
  const { ctx, w, h } = prepare(canvas);
  const { c_x, c_eps } = schedule;
  const steps = c_x.length;
  if (!steps) return;
  const [lo, hi] = range([...c_x, ...c_eps, 1], 0.05);
  const left = 30, right = w - 6, top = 6, bottom = h - 14;
  const px = (i) => (steps === 1 ? (left + right) / 2 : left + ((right - left) * i) / (steps - 1));
  const py = (v) => bottom - ((bottom - top) * (v - lo)) / (hi - lo);

  ctx.strokeStyle = COLORS.grid;
  ctx.setLineDash([3, 3]);
  ctx.beginPath(); ctx.moveTo(left, py(1)); ctx.lineTo(right, py(1)); ctx.stroke();
  ctx.setLineDash([]);
  ctx.fillStyle = COLORS.text;
  ctx.textAlign = "right";
  ctx.fillText(hi.toFixed(2), left - 3, top + 8);
  ctx.fillText(lo.toFixed(2), left - 3, bottom);
  ctx.textAlign = "left";
  ctx.fillText(`step 1..${steps}`, left, h - 3);

  for (const key of ["c_x", "c_eps"]) {
    ctx.strokeStyle = ctx.fillStyle = COLORS[key];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    schedule[key].forEach((v, i) => (i ? ctx.lineTo(px(i), py(v)) : ctx.moveTo(px(i), py(v))));
    ctx.stroke();
    schedule[key].forEach((v, i) => { ctx.beginPath(); ctx.arc(px(i), py(v), 2.5, 0, 2 * Math.PI); ctx.fill(); });
  }
  ctx.textAlign = "right";
  ctx.fillStyle = COLORS.c_eps; ctx.fillText("c_eps", right, h - 3);
  ctx.fillStyle = COLORS.c_x; ctx.fillText("c_x", right - 32, h - 3);
}

function heat(t) {
  // dark blue -> yellow; t in [0, 1]
  const r = Math.round(40 + 215 * t), g = Math.round(40 + 190 * t), b = Math.round(120 - 90 * t);
  return `rgb(${r},${g},${b})`;
}

// Calibration trace entries -> one point per (c_x start, c_eps start) cell: a score on all prompts
// ("full") beats one on a subset (successive halving); otherwise the best score there wins.
export function surfacePoints(trace) {
  const cells = new Map();
  for (const t of trace ?? []) {
    const x = Number(t.x_start ?? t.c_x?.[0]), y = Number(t.eps_start ?? t.c_eps?.[0]);
    if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
    const point = { x, y, score: t.score == null ? NaN : Number(t.score), full: t.full !== false };
    const key = `${x},${y}`, old = cells.get(key);
    const better = !old || (point.full && !old.full)
      || (point.full === old.full && (!Number.isFinite(old.score) || point.score > old.score));
    if (better) cells.set(key, point);
  }
  return [...cells.values()].map(({ x, y, score }) => ({ x, y, score }));
}

// Candidates as points {x, y, score}: colour = score; the best ringed; NaN scores drawn as grey crosses.
export function drawSurface(canvas, points, labels = { x: "c_x[0]", y: "c_eps[0]" }) {
  const { ctx, w, h } = prepare(canvas);
  if (!points.length) return;
  const finite = points.filter((p) => Number.isFinite(p.score));
  // Pad each axis by half a grid cell so the edge cells are drawn whole.
  const padded = (values) => {
    const distinct = [...new Set(values)].sort((a, b) => a - b);
    const [lo, hi] = range(distinct, 0.05), half = distinct.length > 1 ? (hi - lo) / (distinct.length - 1) / 2 : 0;
    return [lo - half, hi + half, Math.min(...distinct), Math.max(...distinct)];
  };
  const [xlo, xhi, xmin, xmax] = padded(points.map((p) => p.x));
  const [ylo, yhi, ymin, ymax] = padded(points.map((p) => p.y));
  const [slo, shi] = finite.length ? range(finite.map((p) => p.score), 1e-6) : [0, 1];
  const left = 30, right = w - 8, top = 8, bottom = h - 16;
  const px = (v) => left + ((right - left) * (v - xlo)) / (xhi - xlo);
  const py = (v) => bottom - ((bottom - top) * (v - ylo)) / (yhi - ylo);
  const xs = [...new Set(points.map((p) => p.x))].length, ys = [...new Set(points.map((p) => p.y))].length;
  const cw = Math.max(4, (right - left) / Math.max(1, xs)), ch = Math.max(4, (bottom - top) / Math.max(1, ys));

  for (const p of points) {
    if (Number.isFinite(p.score)) {
      ctx.fillStyle = heat((p.score - slo) / (shi - slo));
      ctx.fillRect(px(p.x) - cw / 2, py(p.y) - ch / 2, cw, ch);
    } else {
      ctx.strokeStyle = "#888";
      ctx.beginPath();
      ctx.moveTo(px(p.x) - 3, py(p.y) - 3); ctx.lineTo(px(p.x) + 3, py(p.y) + 3);
      ctx.moveTo(px(p.x) + 3, py(p.y) - 3); ctx.lineTo(px(p.x) - 3, py(p.y) + 3);
      ctx.stroke();
    }
  }
  if (finite.length) {
    const best = finite.reduce((a, b) => (b.score > a.score ? b : a));
    ctx.strokeStyle = COLORS.best; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(px(best.x), py(best.y), Math.min(cw, ch) / 2 + 2, 0, 2 * Math.PI); ctx.stroke();
  }
  ctx.fillStyle = COLORS.text;
  ctx.textAlign = "center";
  ctx.fillText(`${labels.x} ${xmin.toFixed(2)}..${xmax.toFixed(2)}`, (left + right) / 2, h - 4);
  ctx.save(); ctx.translate(10, (top + bottom) / 2); ctx.rotate(-Math.PI / 2);
  ctx.fillText(`${labels.y} ${ymin.toFixed(2)}..${ymax.toFixed(2)}`, 0, 0); ctx.restore();
}
