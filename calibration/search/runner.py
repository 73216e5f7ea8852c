"""The coefficient search (paper Algorithm 1 and faster strategies) over an objective: `run_search` and the score
cache (`Evaluations`) every strategy scores through.

The objective is an Evaluator (evaluator.py; a plain function `evaluate(schedule, prompt_indices)` is taken as one):
one image per prompt index, higher is better, NaN = failed. Common random numbers: prompt index i always means the
same prompt *and* the same seed, so every candidate is compared on identical noise. A candidate's score is the mean
over prompts; a NaN on any prompt makes it the worst. Only candidates scored on every prompt can win, and the
identity schedule always is.
"""
import math
import time
from dataclasses import dataclass, field

from ...samplers.schedule import QSchedSchedule
from ..runlog import RunLog, schedule_key
from .evaluator import as_evaluator
from .registry import STRATEGIES
from .space import SearchSpace, stratified_order


class SearchInterrupted(Exception):
    """`should_stop` asked to stop; everything evaluated so far is in the run log."""


class BudgetSpent(Exception):
    """The image budget cannot pay for the next request; the search ends with what it has scored."""


@dataclass
class SearchResult:
    best: QSchedSchedule
    best_score: float
    identity_score: float
    trace: list            # per score request: schedule, prompts, score (on those prompts), full_score, best_full
    images_generated: int  # images generated in this run (run-log reuse not counted)
    images_reused: int = 0
    strategy: str = ""
    failures: list = field(default_factory=list)  # candidates that produced NaN / worst scores
    ranking: list = field(default_factory=list)   # (score, schedule) of fully scored candidates, best first
    per_prompt: dict = field(default_factory=dict)  # schedule key -> scores on every prompt (fully scored only)
    settings_hash: str = ""
    seconds: float = 0.0
    refinement: dict = field(default_factory=dict)  # continuous per-step fit after the strategy (optimise.py)

    @property
    def improvement(self):
        return self.best_score - self.identity_score


class Evaluations:
    """Cache of per-prompt scores, budget, run log, progress and stop checks: what strategies score through
    (`ev.score(schedule, prompts, params)`, `ev.score_many(requests)`, `ev.best()`, `ev.params`, `ev.order`)."""

    def __init__(self, evaluator, n_prompts, budget, run_log, progress, should_stop, planned, batch_images=1):
        self._evaluator, self.n_prompts, self.budget = as_evaluator(evaluator), n_prompts, budget
        self.batch_images = batch_images
        self._fresh = {}        # key -> {prompt: score} generated ahead by score_many, not yet counted
        self.run_log, self._progress, self._should_stop = run_log, progress, should_stop
        self.planned = planned
        self.order = list(range(n_prompts))   # prompt order for partial rungs (stratified when strata given)
        self.scores = {}        # key -> {prompt: score}
        self.schedules = {}     # key -> schedule
        self.params = {}        # key -> parameter vector (when known)
        self.trace, self.failures = [], []
        self.generated = self.reused = 0
        self.phase = "search"   # "refine" while the continuous optimiser runs (shown in the trace and plot)

    @property
    def remaining(self):
        return math.inf if self.budget is None else self.budget - self.generated

    def score(self, schedule, prompt_indices, params=None):
        """Mean score of `schedule` over `prompt_indices` (evaluating only what is missing); -inf if any NaN."""
        key = schedule_key(schedule.c_x, schedule.c_eps, schedule.offset)
        self.schedules.setdefault(key, schedule)
        if params is not None:
            self.params.setdefault(key, tuple(params))
        known = self.scores.setdefault(key, {})
        logged = self.run_log.done.get(key, {}) if self.run_log else {}
        for index in prompt_indices:
            if index not in known and index in logged:
                known[index] = logged[index]
                self.reused += 1
        missing = [i for i in prompt_indices if i not in known]
        if missing:
            if len(missing) > self.remaining:
                raise BudgetSpent()
            values = self._take_fresh(key, missing)
            if values is None:
                self._check_stop()
                values = [float(v) for v in self._evaluator.score(schedule, list(missing))]
            if len(values) != len(missing):
                raise ValueError(f"evaluate returned {len(values)} scores for {len(missing)} prompts")
            known.update(zip(missing, values))
            self.generated += len(missing)
            if self.run_log is not None:
                self.run_log.record(key, schedule.to_dict(), missing, values)
            bad = [i for i, v in zip(missing, values) if not math.isfinite(v)]
            if bad:
                self.failures.append({"schedule": schedule.label or key, "prompts": bad})
            if self._progress is not None:
                self._progress(self.generated, max(self.planned, self.generated))
        mean = self.mean(key, prompt_indices)
        full = len(known) == self.n_prompts
        self.trace.append({"schedule": schedule.to_dict(), "params": self.params.get(key),
                           "prompts": len(prompt_indices), "new_images": len(missing),
                           "images_generated": self.generated, "score": mean, "full": full,
                           "full_score": self.mean(key, range(self.n_prompts)) if full else None,
                           "best_full": self.best()[0], "phase": self.phase})
        return mean

    def score_many(self, requests):
        """[score(schedule, prompt_indices, params) for each request], with the same trace, run log, budget and
        results, but the missing images of consecutive requests are generated together (up to batch_images per
        score_many call of the objective) when the objective is batched."""
        if self.batch_images <= 1 or not self._evaluator.batched:
            return [self.score(*request) for request in requests]
        means = []
        for chunk in self._chunks(iter(requests)):
            self._generate_ahead(chunk)
            means += [self.score(*request) for request in chunk]
        return means

    def _missing(self, schedule, prompt_indices):
        key = schedule_key(schedule.c_x, schedule.c_eps, schedule.offset)
        known, fresh = self.scores.get(key, {}), self._fresh.get(key, {})
        logged = self.run_log.done.get(key, {}) if self.run_log else {}
        return [(key, i) for i in prompt_indices if i not in known and i not in logged and i not in fresh]

    def _chunks(self, requests):
        """Consecutive requests whose new images fit batch_images (a larger request alone) and the budget."""
        chunk, pairs = [], set()
        for request in requests:
            new = set(self._missing(request[0], request[1])) - pairs
            if chunk and (len(pairs) + len(new) > self.batch_images or len(pairs) + len(new) > self.remaining):
                yield chunk
                chunk, pairs = [], set()
                new = set(self._missing(request[0], request[1]))
            chunk.append(request)
            pairs |= new
        if chunk:
            yield chunk

    def _generate_ahead(self, chunk):
        """Score the chunk's missing images in one score_many call of the objective; score() then takes them in
        order."""
        wanted = {}   # key -> (schedule, [prompt indices]) in request order
        for schedule, prompt_indices, *_ in chunk:
            for key, index in self._missing(schedule, prompt_indices):
                entry = wanted.setdefault(key, (schedule, []))
                if index not in entry[1]:
                    entry[1].append(index)
        total = sum(len(indices) for _, indices in wanted.values())
        if not total or total > self.remaining:
            return    # nothing to do, or score() stops at the request that does not fit
        self._check_stop()
        requests = list(wanted.values())
        results = self._evaluator.score_many(requests)
        if len(results) != len(requests):
            raise ValueError(f"score_many returned {len(results)} results for {len(requests)} requests")
        for key, (_, indices), values in zip(wanted, requests, results):
            if len(values) != len(indices):
                raise ValueError(f"score_many returned {len(values)} scores for {len(indices)} prompts")
            self._fresh.setdefault(key, {}).update(zip(indices, (float(v) for v in values)))

    def _take_fresh(self, key, missing):
        fresh = self._fresh.get(key, {})
        if not all(index in fresh for index in missing):
            return None
        return [fresh.pop(index) for index in missing]

    def _check_stop(self):
        if self._should_stop is not None and self._should_stop():
            raise SearchInterrupted("calibration interrupted; rerun with the same settings to resume")

    def mean(self, key, prompt_indices):
        values = [self.scores[key][i] for i in prompt_indices]
        if not all(math.isfinite(v) for v in values):
            return -math.inf
        return sum(values) / len(values)

    def full(self):
        """(score, key) of every candidate scored on all prompts, best first."""
        everything = range(self.n_prompts)
        done = [(self.mean(k, everything), k) for k, s in self.scores.items() if len(s) == self.n_prompts]
        return sorted(done, key=lambda item: item[0], reverse=True)

    def best(self):
        done = self.full()
        return done[0] if done else (-math.inf, None)


def plan_images(strategy, space, n_prompts, budget_images=None, **options):
    """Images the strategy expects to generate (an upper bound when candidates coincide), for progress bars."""
    return STRATEGIES[strategy].plan(space, n_prompts, budget_images, **options)


def run_search(evaluate, steps, n_prompts, strategy, budget_images=None, c_range=(0.8, 1.2), sampler=None,
               space=None, settings=None, run_log=None, progress=None, should_stop=None, strata=None, batch_images=1,
               refine=None, **options):
    """Search per-step coefficients maximising the mean of `evaluate` over `n_prompts` prompts.

    evaluate: the objective, an Evaluator or a function (schedule, prompt_indices) -> scores (evaluator.py).
    strategy: a name registered in calibration.search.STRATEGIES (racing, the default; halving_floor,
    coarse_to_fine_racing, paper_grid, grid_general, successive_halving, coarse_to_fine, bayes; and any
    registered later). budget_images caps newly generated images (the identity's n_prompts included).
    space: 'paper' (end fixed at 1) or 'general'; strategy default if None. settings: JSON-able dict of whatever
    decides a score's meaning (model, prompts hash, seeds, sampler, cfg, scorer); with `run_log` (a path) it keys
    the log, so a rerun with equal settings skips done evaluations and a log of other settings is not mixed in.
    progress(done_images, planned_images) is called after each evaluation; should_stop() -> True stops the
    search with SearchInterrupted (what was evaluated stays in the log). strata: one label per prompt (its
    prompt text or class); strategies that judge on part of the prompts take them round-robin over strata.
    batch_images: up to this many images of consecutive candidates are generated in one `score_many` call (if
    the objective is batched); results, trace and run log are those of batch_images=1.
    refine: None, or a dict for optimise.refine_best: {"form": one of optimise.FORMS, "evaluations": candidates,
    "channels": latent channels, "c_range": bounds of the free coefficients, "offset_bound": |b| bound}. It fits
    per-step free parameters from the strategy's winner, with its own budget (evaluations x n_prompts images).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise ValueError(f"n_prompts must be a positive integer, got {n_prompts!r}")
    if budget_images is not None and budget_images < n_prompts:
        raise ValueError(f"budget_images={budget_images} cannot even score the identity schedule on "
                         f"{n_prompts} prompts; give at least {n_prompts}")
    if strata is not None and len(strata) != n_prompts:
        raise ValueError(f"strata must give one label per prompt ({n_prompts}), got {len(strata)}")
    spec = STRATEGIES[strategy]
    search_space = SearchSpace(space or spec.space, steps, c_range, sampler)
    log_settings = {"settings": settings or {}, "steps": steps, "n_prompts": n_prompts, "sampler": sampler}
    log_file = RunLog(run_log, log_settings) if run_log is not None else None
    planned = plan_images(strategy, search_space, n_prompts, budget_images, **options)
    if refine:
        from ..optimise import planned_evaluations
        planned += planned_evaluations(refine) * n_prompts
    if isinstance(batch_images, bool) or not isinstance(batch_images, int) or batch_images < 1:
        raise ValueError(f"batch_images must be a positive integer, got {batch_images!r}")
    evaluations = Evaluations(evaluate, n_prompts, budget_images, log_file, progress, should_stop, planned,
                               batch_images)
    if strata is not None:
        evaluations.order = stratified_order(strata)
    started = time.monotonic()
    all_prompts = list(range(n_prompts))
    try:
        identity_score = evaluations.score(search_space.schedule(search_space.identity), all_prompts,
                                           search_space.identity)
        try:
            spec.run(evaluations, search_space, **options)
        except BudgetSpent:
            pass
        refinement = {}
        if refine:
            from ..optimise import refine_best
            refinement = refine_best(evaluations, steps, sampler, refine, BudgetSpent)
    finally:
        if log_file is not None:
            log_file.close()
    ranking = evaluations.full()
    best_score, best_key = ranking[0]
    return SearchResult(
        best=evaluations.schedules[best_key], best_score=best_score, identity_score=identity_score,
        trace=evaluations.trace, images_generated=evaluations.generated, images_reused=evaluations.reused,
        strategy=strategy, failures=evaluations.failures,
        ranking=[(score, evaluations.schedules[key]) for score, key in ranking],
        per_prompt={key: [evaluations.scores[key][i] for i in all_prompts] for _, key in ranking},
        settings_hash=log_file.hash if log_file else "", seconds=time.monotonic() - started, refinement=refinement)
