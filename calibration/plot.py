"""The calibration plot (PIL, no matplotlib): left, the score surface over the start coefficients (candidates
scored on all prompts coloured by mean score, raced-out ones as small rings, best ringed red, identity crossed,
failed candidates grey; a refined per-step winner as a red diamond at its first step's coefficients);
right, the best score so far against images generated, the per-step refinement's part in cyan after a dotted
line, with the refined winner's per-step c_x, c_eps (and mean offset) written under it."""
import math

import numpy as np
import torch
from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 768, 384, 36
BACKGROUND, AXES, TEXT = (24, 24, 28), (150, 150, 160), (230, 230, 235)


def _colour(t):
    """Dark blue -> teal -> yellow, t in [0, 1]."""
    stops = ((0.0, (40, 30, 110)), (0.5, (30, 150, 140)), (1.0, (250, 230, 60)))
    for (t0, c0), (t1, c1) in zip(stops, stops[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return tuple(int(a + (b - a) * f) for a, b in zip(c0, c1))
    return stops[-1][1]


def _scale(values, low_pixel, high_pixel):
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return lambda v: low_pixel + (v - low) / span * (high_pixel - low_pixel)


REFINE = (80, 220, 240)


def _surface(draw, box, points, best, identity_score, refined=False):
    left, top, right, bottom = box
    draw.rectangle(box, outline=AXES)
    if not points:
        draw.text((left, bottom + 4), "c_x start", fill=TEXT)
        draw.text((left, top - 14), "c_eps start", fill=TEXT)
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    px, py = _scale(xs + [1.0], left + 10, right - 10), _scale(ys + [1.0], bottom - 10, top + 10)
    finite = [p[2] for p in points if p[3] and math.isfinite(p[2])]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    for x, y, score, full in points:
        cx, cy = px(x), py(y)
        if not full:   # raced out on a few prompts: its partial mean is not comparable, so no colour
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), outline=AXES)
        elif math.isfinite(score):
            colour = _colour((score - low) / ((high - low) or 1.0))
            draw.rectangle((cx - 6, cy - 6, cx + 6, cy + 6), fill=colour)
        else:
            draw.line((cx - 5, cy - 5, cx + 5, cy + 5), fill=(128, 128, 128), width=2)
            draw.line((cx - 5, cy + 5, cx + 5, cy - 5), fill=(128, 128, 128), width=2)
    ix, iy = px(1.0), py(1.0)
    draw.line((ix - 9, iy, ix + 9, iy), fill=(255, 255, 255), width=2)
    draw.line((ix, iy - 9, ix, iy + 9), fill=(255, 255, 255), width=2)
    if best is not None:
        bx, by = px(best[0]), py(best[1])
        if refined:   # not on the linspace grid: a diamond at its first step's coefficients
            draw.polygon([(bx, by - 12), (bx + 12, by), (bx, by + 12), (bx - 12, by)], outline=(255, 80, 80), width=3)
        else:
            draw.ellipse((bx - 11, by - 11, bx + 11, by + 11), outline=(255, 80, 80), width=3)
    draw.text((left, bottom + 4), f"c_x start {min(xs):.3f} .. {max(xs):.3f}", fill=TEXT)
    draw.text((left, top - 14), f"c_eps start {min(ys):.3f} .. {max(ys):.3f}; colour: mean score "
              f"{low:.4g} .. {high:.4g}", fill=TEXT)


def _trace(draw, box, curve, identity_score, refine_from=None):
    left, top, right, bottom = box
    draw.rectangle(box, outline=AXES)
    draw.text((left, top - 14), "best score so far (dashed: identity)", fill=TEXT)
    curve = [(n, s) for n, s in curve if math.isfinite(s)]
    if not curve:
        draw.text((left, bottom + 4), "images generated", fill=TEXT)
        return
    draw.text((left, bottom + 4), f"images generated: {curve[-1][0]}, best {curve[-1][1]:.4g}", fill=TEXT)
    values = [s for _, s in curve] + ([identity_score] if math.isfinite(identity_score) else [])
    px = _scale([0] + [n for n, _ in curve], left + 6, right - 6)
    py = _scale(values, bottom - 8, top + 8)
    if math.isfinite(identity_score):
        y = py(identity_score)
        for x in range(int(left), int(right), 8):
            draw.line((x, y, x + 4, y), fill=AXES)
    draw.line([(px(n), py(s)) for n, s in curve] if len(curve) > 1 else [(px(0), py(curve[0][1])),
              (px(curve[0][0]), py(curve[0][1]))], fill=(250, 200, 60), width=2)
    if refine_from is not None:
        x = px(refine_from)
        for y in range(int(top), int(bottom), 6):
            draw.line((x, y, x, y + 2), fill=REFINE)
        refined = [(n, s) for n, s in curve if n >= refine_from]
        if len(refined) > 1:
            draw.line([(px(n), py(s)) for n, s in refined], fill=REFINE, width=2)
        draw.text((x + 4, top + 4), "per-step refinement", fill=REFINE)


def _per_step_text(schedule):
    """The refined winner's per-step values (first 4 steps), for the trace panel's foot."""
    shown = min(4, schedule.steps)
    text = "c_x " + " ".join(f"{v:.3f}" for v in schedule.c_x[:shown]) + "  c_eps " + " ".join(
        f"{v:.3f}" for v in schedule.c_eps[:shown])
    if schedule.offset is not None:
        text += "  b " + " ".join(f"{sum(row) / len(row):.3f}" for row in schedule.offset[:shown])
    return text + (" ..." if schedule.steps > shown else "")


def plot_result(result):
    """IMAGE tensor [1, H, W, 3] in [0, 1] for a SearchResult."""
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    latest = {}
    for entry in result.trace:
        schedule = entry["schedule"]
        latest[(tuple(schedule["c_x"]), tuple(schedule["c_eps"]))] = entry
    refinement = getattr(result, "refinement", None) or {}
    on_grid = {key: e for key, e in latest.items() if e.get("phase", "search") == "search"}
    points = [(c_x[0], c_eps[0], e["full_score"] if e["full"] else e["score"], e["full"]) for (c_x, c_eps), e in on_grid.items()]
    best = (result.best.c_x[0], result.best.c_eps[0])
    refined = bool(refinement) and (tuple(result.best.c_x), tuple(result.best.c_eps)) not in on_grid
    half = WIDTH // 2
    _surface(draw, (MARGIN, MARGIN, half - MARGIN // 2, HEIGHT - MARGIN), points, best, result.identity_score, refined)
    curve = [(t["images_generated"], t["best_full"]) for t in result.trace]
    _trace(draw, (half + MARGIN // 2, MARGIN, WIDTH - MARGIN // 2, HEIGHT - MARGIN), curve, result.identity_score,
           refinement.get("images_at_start") if refinement else None)
    draw.text((MARGIN, 4), f"Q-Sched calibration ({result.strategy}): best {result.best_score:.4g} vs identity "
              f"{result.identity_score:.4g}; {len(result.failures)} failed candidates", fill=TEXT)
    if refined:
        draw.text((MARGIN, HEIGHT - 14), "refined: " + _per_step_text(result.best), fill=REFINE)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
