"""Held-out check and FP control: paired intervals against scipy, the verdicts, the split of prompt/seed pairs, the
too-small warning, and the check run on a search result."""
import math

import numpy as np
import pytest
from scipy import stats

from comfyui_qsched.calibration import heldout as H
from comfyui_qsched.calibration.paired import paired_difference, pairs_needed, resolvable_difference
from comfyui_qsched.calibration.search import run_search
from test_search import Bowl


def test_paired_interval_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.3, 12), rng.normal(0.9, 0.3, 12)
    d = paired_difference(a, b)
    low, high = stats.t.interval(0.95, 11, loc=np.mean(a - b), scale=stats.sem(a - b))
    assert (d.n, d.mean, d.low, d.high) == (12, pytest.approx(np.mean(a - b)), pytest.approx(low), pytest.approx(high))
    assert d.sd == pytest.approx(np.std(a - b, ddof=1))
    # the interval excludes zero exactly when scipy's paired t-test rejects at 5%
    assert (d.low > 0 or d.high < 0) == (stats.ttest_rel(a, b).pvalue < 0.05)
    one = paired_difference([1.0], [0.5])
    assert one.mean == 0.5 and one.low == -math.inf and one.high == math.inf
    with pytest.raises(ValueError, match="finite"):
        paired_difference([1.0, float("nan")], [0.0, 0.0])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [0.0, 0.0])


def test_resolvable_difference_has_the_stated_power():
    """At the resolvable difference, the exact power of the two-sided paired t-test (noncentral t) is about 80%."""
    for n in (8, 20, 60):
        delta = resolvable_difference(1.0, n)
        critical = stats.t.ppf(0.975, n - 1)
        noncentrality = delta * math.sqrt(n)
        power = stats.nct.sf(critical, n - 1, noncentrality) + stats.nct.cdf(-critical, n - 1, noncentrality)
        assert power == pytest.approx(0.8, abs=0.02), n
    assert pairs_needed(1.0, resolvable_difference(1.0, 60)) == pytest.approx(60, rel=0.1)
    assert resolvable_difference(1.0, 1) == math.inf


def test_split_pairs_keeps_a_quarter_out_balanced_over_strata():
    search, held_out = H.split_pairs(20)
    assert held_out == [15, 16, 17, 18, 19] and search == list(range(15))
    assert H.split_pairs(2) == ([0], [1])
    classes = [i % 10 for i in range(40)]                     # 10 classes, 4 pairs each
    search, held_out = H.split_pairs(40, strata=classes)
    assert sorted(classes[i] for i in held_out) == list(range(10)) and len(search) == 30
    grouped = [i // 4 for i in range(40)]                     # the same, listed class by class
    assert sorted(grouped[i] for i in H.split_pairs(40, strata=grouped)[1]) == list(range(10))
    assert len(H.split_pairs(100, 0.1)[1]) == 10
    with pytest.raises(ValueError, match="at least 2 prompt/seed pairs"):
        H.split_pairs(1)
    with pytest.raises(ValueError, match="holdout fraction"):
        H.split_pairs(10, 1.0)


def test_heldout_verdicts():
    base = np.linspace(2.0, 2.5, 10)
    wiggle = 0.01 * np.sin(np.arange(10))
    assert H.compare_heldout(base + 0.1 + wiggle, base).verdict == H.YES
    assert H.compare_heldout(base - 0.1 + wiggle, base).verdict == H.NO
    assert H.compare_heldout(base + 0.3 * np.sin(np.arange(10)), base).verdict == H.NOT_SIGNIFICANT
    kept = H.compare_heldout(base, base, winner_is_identity=True)
    assert kept.verdict == H.NO and "identity" in kept.reason
    failed = H.compare_heldout(np.r_[base[:9] + 1, np.nan], base)
    assert failed.verdict == H.NO and "failed" in failed.reason
    identity_failed = H.compare_heldout(base + 0.1 + wiggle, np.r_[base[:9], np.nan])
    assert identity_failed.verdict == H.YES and identity_failed.failed_pairs == 1
    assert identity_failed.difference.n == 9


def test_fp_control_tells_a_quantization_fix_from_a_generic_retuning():
    rng = np.random.default_rng(1)
    q_identity, fp_identity = rng.normal(2.0, 0.2, 30), rng.normal(2.5, 0.2, 30)
    noise = lambda: rng.normal(0, 0.02, 30)
    specific = H.compare_fp(q_identity + 0.2 + noise(), q_identity, fp_identity + noise(), fp_identity)
    assert specific.verdict == H.YES and specific.gap.low > 0
    generic = H.compare_fp(q_identity + 0.2 + noise(), q_identity, fp_identity + 0.2 + noise(), fp_identity)
    assert generic.verdict == H.NO and "generic" in generic.reason
    fp_more = H.compare_fp(q_identity + 0.1 + noise(), q_identity, fp_identity + 0.3 + noise(), fp_identity)
    assert fp_more.verdict == H.NO and fp_more.gap.high < 0
    unclear = H.compare_fp(q_identity + 0.05 * rng.normal(size=30), q_identity,
                           fp_identity + 0.05 * rng.normal(size=30), fp_identity)
    assert unclear.verdict == H.NOT_SIGNIFICANT


def _held_out_bowl(shift, sd, seed=0):
    """evaluate(schedule, pairs) on a bowl whose pairs 100+ are the held-out ones, with per-pair noise `sd` on the
    difference to identity and a true gain `shift` of any non-identity schedule."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, sd, 200)
    calls = []

    def evaluate(schedule, pairs):
        calls.append(list(pairs))
        return [1.0 + (0 if schedule.is_identity else shift + noise[p]) for p in pairs]
    return evaluate, calls


def test_check_winner_scores_only_held_out_pairs_and_warns_when_too_few():
    search = run_search(Bowl(), 4, 20, "racing")
    evaluate, calls = _held_out_bowl(shift=0.02, sd=0.1)
    report = H.check_winner(evaluate, search, held_out=[100, 101, 102, 103, 104])
    assert calls == [[100, 101, 102, 103, 104]] * 2 and report.images == 10
    assert report.heldout.difference.n == 5 and report.heldout.verdict == H.NOT_SIGNIFICANT
    assert report.warnings and "too small" in report.warnings[0] and "held-out pairs" in report.warnings[0]
    assert report.fp_control is None and report.within_noise >= 1

    big, _ = _held_out_bowl(shift=0.2, sd=0.05)
    confident = H.check_winner(big, search, held_out=list(range(100, 140)), evaluate_fp=_held_out_bowl(0.0, 0.05, 1)[0])
    assert confident.heldout.verdict == H.YES and not confident.warnings
    assert confident.fp_control.verdict == H.YES and confident.images == 4 * 40
    text = H.format_report(confident, search)
    assert "better than identity: yes" in text and "gain specific to the quantized model: yes" in text
    fields = confident.to_dict()
    assert fields["heldout"]["verdict"] == "yes" and fields["fp_control"]["verdict"] == "yes"
    assert fields["heldout"]["difference"]["ci"][0] > 0


def test_identity_winner_is_not_better_and_costs_one_set_of_images():
    flat = lambda schedule, prompts: [1.0 if schedule.is_identity else 0.5 for _ in prompts]
    search = run_search(flat, 4, 12, "racing")
    evaluate, calls = _held_out_bowl(0.0, 0.1)
    report = H.check_winner(evaluate, search, held_out=[100, 101, 102], evaluate_fp=evaluate)
    assert search.best.is_identity and report.heldout.verdict == H.NO and report.images == 3
    assert report.fp_control is None and not report.warnings
    one_pair = H.check_winner(evaluate, search, held_out=[100])
    assert one_pair.heldout.difference.n == 1 and one_pair.images == 1
    assert len(one_pair.warnings) == 1 and "only 1 usable held-out pair" in one_pair.warnings[0]
