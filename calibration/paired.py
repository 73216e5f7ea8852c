"""Paired differences between two schedules scored on the same prompt/seed pairs (common random numbers): the mean
difference with a Student-t confidence interval, the smallest difference a set of that size can resolve, and the
pairs a given difference would need. The statistics every noise-aware decision of the calibration rests on.

scipy comes with scikit-learn, a requirement of the pack.
"""
import math
from dataclasses import dataclass

CONFIDENCE = 0.95   # two-sided, for every interval the calibration reports
POWER = 0.8         # for "the smallest difference this set resolves"


@dataclass(frozen=True)
class PairedDifference:
    """mean(a - b) over n pairs with its two-sided confidence interval [low, high] (infinite when n < 2)."""
    n: int
    mean: float
    sd: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    @property
    def significant(self):
        return self.low > 0 or self.high < 0

    def to_dict(self):
        return {"n": self.n, "mean": _json_number(self.mean), "sd": _json_number(self.sd),
                "ci": [_json_number(self.low), _json_number(self.high)], "confidence": self.confidence}


def _json_number(value):
    return float(value) if math.isfinite(value) else None


def t_quantile(probability, df):
    from scipy.stats import t
    return float(t.ppf(probability, df))


def normal_quantile(probability):
    from scipy.stats import norm
    return float(norm.ppf(probability))


def paired_difference(a, b, confidence=CONFIDENCE):
    """Mean of a[i] - b[i] with a t-interval; pairs where either value is not finite are refused (the caller
    decides what a failed image means before comparing)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    differences = [float(x) - float(y) for x, y in zip(a, b)]
    if not all(math.isfinite(d) for d in differences):
        raise ValueError("paired scores must be finite; handle failed images before comparing")
    n = len(differences)
    if n == 0:
        return PairedDifference(0, math.nan, math.nan, -math.inf, math.inf, confidence)
    mean = sum(differences) / n
    if n < 2:
        return PairedDifference(n, mean, math.nan, -math.inf, math.inf, confidence)
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return PairedDifference(n, mean, sd, mean - half, mean + half, confidence)


def resolvable_difference(sd, n, confidence=CONFIDENCE, power=POWER):
    """Smallest true mean difference that n pairs with this spread detect with the given power (t approximation);
    inf when it cannot be said (n < 2 or unknown spread)."""
    if n < 2 or not math.isfinite(sd):
        return math.inf
    return (t_quantile(0.5 + confidence / 2, n - 1) + normal_quantile(power)) * sd / math.sqrt(n)


def pairs_needed(sd, difference, confidence=CONFIDENCE, power=POWER):
    """Pairs needed to resolve `difference` at this spread (normal approximation, at least 2); None if unknowable."""
    if not math.isfinite(sd) or not math.isfinite(difference) or difference == 0:
        return None
    z = normal_quantile(0.5 + confidence / 2) + normal_quantile(power)
    return max(2, math.ceil((z * sd / abs(difference)) ** 2))
