"""The held-out check of a calibration: part of the prompt/seed pairs is kept out of the search; the winner and the
identity schedule are scored on them (same prompts, same noise) and the paired difference, with a confidence
interval, gives the verdict "better than identity: yes / no / not significant". With the full-precision model
connected, the same coefficients applied to it say whether the gain is specific to the quantized model (FP
control). Warnings say when the calibration set is too small for the differences it is asked to resolve.

No ComfyUI import: the objective, an Evaluator (calibration.search.evaluator: `score(schedule, pair_indices) ->
list[float]`, NaN = failed image; or such a function), is supplied by the node, the headless command or the
testbed.
"""
import math
from dataclasses import dataclass, field

from .search.evaluator import as_evaluator
from .search.space import stratified_order
from .paired import CONFIDENCE, POWER, paired_difference, pairs_needed, resolvable_difference
from .runlog import schedule_key

HOLDOUT_FRACTION = 0.25
YES, NO, NOT_SIGNIFICANT = "yes", "no", "not significant"
VERDICTS = (YES, NO, NOT_SIGNIFICANT)


def split_pairs(n_pairs, fraction=HOLDOUT_FRACTION, strata=None):
    """(search, held_out) pair indices: round(fraction * n) pairs (at least 1, at most n - 1) are kept out of the
    search, the last ones in an order round-robin over strata (prompts or classes), so every stratum loses its
    share: 20 distinct prompts -> pairs 15-19 held out; 40 pairs of 10 classes listed 0-9, 0-9, ... -> the last
    copy of every class."""
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 2:
        raise ValueError(f"a held-out check needs at least 2 prompt/seed pairs (one to search on, one to check "
                         f"on), got {n_pairs!r}; give more prompts")
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    if strata is not None and len(strata) != n_pairs:
        raise ValueError(f"strata must give one label per pair ({n_pairs}), got {len(strata)}")
    count = min(n_pairs - 1, max(1, round(n_pairs * fraction)))
    order = stratified_order(range(n_pairs) if strata is None else strata)
    held_out = sorted(order[n_pairs - count:])
    return sorted(order[:n_pairs - count]), held_out


def verdict_of(difference):
    if difference.low > 0:
        return YES
    if difference.high < 0:
        return NO
    return NOT_SIGNIFICANT


@dataclass
class HeldoutCheck:
    """winner - identity on the held-out pairs; verdict answers "better than identity?"."""
    difference: object          # PairedDifference
    winner_score: float         # means on the pairs compared
    identity_score: float
    verdict: str
    reason: str = ""
    failed_pairs: int = 0       # pairs left out because an image failed (see reason)

    def to_dict(self):
        return {"verdict": self.verdict, "reason": self.reason, "difference": self.difference.to_dict(),
                "winner": _number(self.winner_score), "identity": _number(self.identity_score),
                "failed_pairs": self.failed_pairs}


@dataclass
class FPControl:
    """The same coefficients on the full-precision model: its gain (winner - identity) and the gap between the
    quantized model's gain and the FP model's, pair by pair; verdict answers "specific to the quantized model?"."""
    fp_gain: object             # PairedDifference
    gap: object                 # PairedDifference of (quantized gain - FP gain)
    verdict: str
    reason: str = ""

    def to_dict(self):
        return {"verdict": self.verdict, "reason": self.reason, "fp_gain": self.fp_gain.to_dict(),
                "gap": self.gap.to_dict()}


@dataclass
class TrustReport:
    heldout: HeldoutCheck
    fp_control: FPControl | None = None
    warnings: list = field(default_factory=list)
    within_noise: int = 1       # fully scored candidates not significantly worse than the winner (search pairs)
    scored: int = 1             # fully scored candidates
    search_gain: float = math.nan
    images: int = 0             # images generated for the check (held-out and FP control)

    def to_dict(self):
        """JSON-able; the preset keeps it under `scores` (keys `heldout` and, with the FP model, `fp_control`),
        where readers of schema version 1 ignore keys they do not know."""
        fields = {"heldout": {**self.heldout.to_dict(), "warnings": list(self.warnings),
                              "within_noise": self.within_noise, "scored": self.scored,
                              "search_gain": _number(self.search_gain), "images": self.images}}
        if self.fp_control is not None:
            fields["fp_control"] = self.fp_control.to_dict()
        return fields


def _number(value):
    return float(value) if value is not None and math.isfinite(value) else None


def compare_heldout(winner_scores, identity_scores, winner_is_identity=False, confidence=CONFIDENCE):
    """The held-out verdict from per-pair scores (NaN = failed image). A winner that fails where the identity does
    not is not better ("no"); pairs where the identity failed are left out of the comparison."""
    pairs = list(zip(winner_scores, identity_scores))
    usable = [(w, i) for w, i in pairs if math.isfinite(i)]
    winner_failed = sum(1 for w, _ in usable if not math.isfinite(w))
    compared = [(w, i) for w, i in usable if math.isfinite(w)]
    difference = paired_difference([w for w, _ in compared], [i for _, i in compared], confidence)
    means = [sum(v) / len(v) if v else math.nan for v in zip(*compared)] if compared else [math.nan, math.nan]
    failed = len(pairs) - len(compared)
    if winner_is_identity:
        return HeldoutCheck(difference, means[0], means[1], NO, "the search kept the identity schedule", failed)
    if winner_failed:
        return HeldoutCheck(difference, means[0], means[1], NO,
                            f"the winner failed (NaN or black image) on {winner_failed} held-out pair(s) where the "
                            "identity did not", failed)
    reason = "" if difference.n >= 2 else f"{difference.n} usable held-out pair(s): no confidence interval"
    if failed:
        reason = f"{failed} pair(s) left out: the identity failed there" + (f"; {reason}" if reason else "")
    return HeldoutCheck(difference, means[0], means[1], verdict_of(difference), reason, failed)


def compare_fp(quantized_winner, quantized_identity, fp_winner, fp_identity, confidence=CONFIDENCE):
    """FP control from per-pair scores on the same held-out pairs (pairs with any failed image are left out)."""
    rows = [r for r in zip(quantized_winner, quantized_identity, fp_winner, fp_identity)
            if all(math.isfinite(v) for v in r)]
    fp_gain = paired_difference([r[2] for r in rows], [r[3] for r in rows], confidence)
    gap = paired_difference([r[0] - r[1] for r in rows], [r[2] - r[3] for r in rows], confidence)
    if gap.low > 0:
        verdict, reason = YES, "the quantized model gains more than the FP model"
    elif gap.high < 0:
        verdict, reason = NO, "the FP model gains more than the quantized model"
    elif fp_gain.low > 0:
        verdict, reason = NO, "the FP model gains as much: a generic few-step re-tuning, not a quantization fix"
    else:
        verdict, reason = NOT_SIGNIFICANT, "the gains on the two models cannot be told apart"
    return FPControl(fp_gain, gap, verdict, reason)


def candidates_within_noise(result, confidence=CONFIDENCE):
    """How many fully scored candidates are not significantly worse than the winner on the search pairs."""
    winner = result.per_prompt.get(schedule_key(result.best.c_x, result.best.c_eps, result.best.offset))
    if winner is None or not all(math.isfinite(v) for v in winner):
        return 1
    count = 0
    for scores in result.per_prompt.values():
        if all(math.isfinite(v) for v in scores) and paired_difference(scores, winner, confidence).high >= 0:
            count += 1
    return count


def too_few_pairs_warnings(heldout, fraction=HOLDOUT_FRACTION):
    """A warning when no confidence interval is possible at all, whichever schedule won."""
    n = heldout.difference.n
    if n >= 2:
        return []
    return [f"only {n} usable held-out pair(s): no confidence interval is possible; give at least "
            f"{math.ceil(2 / fraction)} prompts"]


def size_warnings(search_gain, heldout, search_sd, fraction=HOLDOUT_FRACTION, confidence=CONFIDENCE,
                  power=POWER):
    """Warnings when the held-out pairs are too few for the gain the search claims on its own pairs."""
    difference = heldout.difference
    if difference.n < 2:
        return too_few_pairs_warnings(heldout, fraction)
    sd = difference.sd if math.isfinite(difference.sd) and difference.sd > 0 else search_sd
    if not math.isfinite(search_gain) or search_gain <= 0 or not math.isfinite(sd) or sd == 0:
        return []
    resolvable = resolvable_difference(sd, difference.n, confidence, power)
    if search_gain >= resolvable:
        return []
    needed = pairs_needed(sd, search_gain, confidence, power)
    return [f"calibration set too small: {difference.n} held-out pairs resolve differences of about {resolvable:.3g} "
            f"({100 * confidence:.0f}% interval, {100 * power:.0f}% power), but the search's gain on its own pairs "
            f"is {search_gain:.3g} (and optimistic: it is the best of many noisy candidates); about {needed} "
            f"held-out pairs (about {math.ceil(needed / fraction)} prompts) would be needed"]


def check_winner(evaluate, result, held_out, evaluate_fp=None, fraction=HOLDOUT_FRACTION, confidence=CONFIDENCE):
    """Score the search's winner and the identity on the held-out pairs (and on the FP model when evaluate_fp is
    given); returns a TrustReport. `result` is run_search's SearchResult (search pairs)."""
    from ..samplers.schedule import QSchedSchedule
    evaluate = as_evaluator(evaluate).score
    evaluate_fp = None if evaluate_fp is None else as_evaluator(evaluate_fp).score
    winner = result.best
    identity = QSchedSchedule.constant(winner.steps, 1.0, 1.0, sampler=winner.sampler, label="identity")
    identity_scores = list(evaluate(identity, list(held_out)))
    images = len(held_out)
    if winner.is_identity:
        winner_scores = identity_scores
    else:
        winner_scores = list(evaluate(winner, list(held_out)))
        images += len(held_out)
    heldout = compare_heldout(winner_scores, identity_scores, winner.is_identity, confidence)
    fp = None
    if evaluate_fp is not None and not winner.is_identity:
        fp_identity = list(evaluate_fp(identity, list(held_out)))
        fp_winner = list(evaluate_fp(winner, list(held_out)))
        images += 2 * len(held_out)
        fp = compare_fp(winner_scores, identity_scores, fp_winner, fp_identity, confidence)
    search_winner = result.per_prompt.get(schedule_key(winner.c_x, winner.c_eps, winner.offset), [])
    search_identity = result.per_prompt.get(schedule_key(identity.c_x, identity.c_eps), [])
    search_sd = math.nan
    if len(search_winner) == len(search_identity) >= 2 and all(map(math.isfinite, search_winner + search_identity)):
        search_sd = paired_difference(search_winner, search_identity, confidence).sd
    gain = result.best_score - result.identity_score
    # An identity winner claims no gain, so only the too-few-pairs warning applies to it.
    warnings = (too_few_pairs_warnings(heldout, fraction) if winner.is_identity
                else size_warnings(gain, heldout, search_sd, fraction, confidence))
    return TrustReport(heldout, fp, warnings, candidates_within_noise(result, confidence), len(result.per_prompt),
                       gain, images)


def _signed(value):
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.4g}"


def _interval(difference):
    return f"{_signed(difference.mean)} [{_signed(difference.low)}, {_signed(difference.high)}]"


def format_report(report, result=None):
    """Plain-text summary: the verdict first, then the numbers behind it and the warnings."""
    heldout = report.heldout
    lines = []
    if result is not None:
        lines.append(f"winner: {result.best.label or 'identity'} ({result.strategy}, {result.images_generated} images "
                     f"on {len(next(iter(result.per_prompt.values()), []))} search pairs)")
        lines.append(f"search pairs: winner {result.best_score:.4g} vs identity {result.identity_score:.4g} "
                     f"(gain {_signed(report.search_gain)}); {report.within_noise} of {report.scored} scored "
                     "candidates within noise of the winner")
    confidence = f"{100 * heldout.difference.confidence:.0f}%"
    lines.append(f"better than identity: {heldout.verdict}")
    lines.append(f"held-out ({heldout.difference.n} pairs, {confidence} interval): winner - identity = "
                 f"{_interval(heldout.difference)}" + (f"; {heldout.reason}" if heldout.reason else ""))
    if report.fp_control is not None:
        fp = report.fp_control
        lines.append(f"gain specific to the quantized model: {fp.verdict} ({fp.reason})")
        lines.append(f"FP control: gain on the FP model {_interval(fp.fp_gain)}; quantized gain - FP gain "
                     f"{_interval(fp.gap)}")
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)
