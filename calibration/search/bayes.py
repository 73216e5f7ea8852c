"""bayes: Gaussian-process expected improvement on the mean score (scikit-learn), every candidate scored on all
prompts, from a Latin hypercube start."""
import math
import warnings

import numpy as np

from .registry import register
from .space import capped


def bayes(ev, space, n_init=5, iterations=10, seed=0, pool=4096):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    rng = np.random.default_rng(seed)
    width = space.high - space.low
    to_unit = lambda p: (np.asarray(p) - space.low) / width
    from_unit = lambda u: tuple((space.low + np.asarray(u) * width).tolist())
    prompts = list(range(ev.n_prompts))
    # Latin hypercube start: every dimension's range covered once per point.
    strata = np.stack([rng.permutation(n_init) for _ in range(space.dims)], axis=1)
    starts = [from_unit(row) for row in (strata + rng.random((n_init, space.dims))) / n_init]
    ev.score_many((space.schedule(start), prompts, start) for start in starts)
    kernel = ConstantKernel(1.0) * Matern(length_scale=[0.3] * space.dims, nu=2.5) + WhiteKernel(1e-4)
    for _ in range(iterations):
        done = [(ev.params[k], s) for s, k in ev.full() if ev.params.get(k) is not None]
        inputs = np.array([to_unit(p) for p, _ in done])
        scores = np.array([s for _, s in done])
        finite = np.isfinite(scores)
        floor = scores[finite].min() - (np.ptp(scores[finite]) + 1e-6) if finite.any() else 0.0
        scores = np.where(finite, scores, floor)   # failed candidates: worse than anything that worked
        scale = scores.std() or 1.0
        targets = (scores - scores.mean()) / scale
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = GaussianProcessRegressor(kernel, normalize_y=False, random_state=seed).fit(inputs, targets)
        best_unit = inputs[np.argmax(targets)]
        local = np.clip(best_unit + rng.normal(0, 0.05, (pool // 4, space.dims)), 0, 1)
        options = np.concatenate([rng.random((pool, space.dims)), local])
        mean, std = model.predict(options, return_std=True)
        improvement = mean - targets.max()
        z = improvement / np.maximum(std, 1e-9)
        expected = improvement * _normal_cdf(z) + std * np.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
        choice = from_unit(options[int(np.argmax(expected))])
        ev.score(space.schedule(choice), prompts, choice)


def _normal_cdf(z):
    from scipy.special import ndtr
    return ndtr(z)


def plan(space, n_prompts, budget, n_init=5, iterations=10, **_):
    return capped((1 + n_init + iterations) * n_prompts, budget)


register("bayes", bayes, plan)
