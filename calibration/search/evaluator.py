"""The objective a search maximises, as an object: `score(schedule, prompt_indices) -> list[float]` (one score per
prompt index, higher is better, NaN = failed image) and `score_many([(schedule, prompt_indices), ...])` for several
requests at once. Prompt index i always means the same prompt and the same seed (common random numbers).

An evaluator that can generate the images of several requests in one batch overrides `score_many` and sets
`batched = True`; the search then hands it up to `batch_images` images of consecutive candidates per call, with the
same results as one request at a time. A plain function `evaluate(schedule, prompt_indices)` is taken as an
unbatched evaluator (`as_evaluator`).
"""


class Evaluator:
    """Base class: override `score` (one request at a time) or `score_many` (batched; set `batched = True`)."""
    batched = False

    def score(self, schedule, prompt_indices):
        return self.score_many([(schedule, list(prompt_indices))])[0]

    def score_many(self, requests):
        return [self.score(schedule, prompt_indices) for schedule, prompt_indices in requests]


class FunctionEvaluator(Evaluator):
    """An evaluator around a function `evaluate(schedule, prompt_indices) -> list[float]`."""

    def __init__(self, evaluate):
        self.evaluate = evaluate

    def score(self, schedule, prompt_indices):
        return self.evaluate(schedule, prompt_indices)


class BatchEvaluator(Evaluator):
    """An evaluator around `many(requests) -> [scores per request]`, which generates all its images together."""
    batched = True

    def __init__(self, many):
        self.many = many

    def score_many(self, requests):
        return self.many([(schedule, list(prompt_indices)) for schedule, prompt_indices in requests])


class Remapped(Evaluator):
    """`evaluator` on other prompt indices: the request's index i is `indices[i]` (the search's pairs among all)."""

    def __init__(self, evaluator, indices):
        self.evaluator, self.indices = as_evaluator(evaluator), list(indices)
        self.batched = self.evaluator.batched

    def score_many(self, requests):
        return self.evaluator.score_many([(s, [self.indices[i] for i in prompt_indices])
                                          for s, prompt_indices in requests])


class Reporting(Evaluator):
    """`evaluator`, calling `on_candidate(schedule, prompt_indices, scores)` after each request is scored."""

    def __init__(self, evaluator, on_candidate):
        self.evaluator, self.on_candidate = as_evaluator(evaluator), on_candidate
        self.batched = self.evaluator.batched

    def score_many(self, requests):
        requests = [(schedule, list(prompt_indices)) for schedule, prompt_indices in requests]
        results = self.evaluator.score_many(requests)
        for (schedule, prompt_indices), scores in zip(requests, results):
            self.on_candidate(schedule, prompt_indices, scores)
        return results


def as_evaluator(evaluate):
    """An Evaluator as it is, a function `evaluate(schedule, prompt_indices)` as a FunctionEvaluator."""
    if isinstance(evaluate, Evaluator):
        return evaluate
    if not callable(evaluate):
        raise TypeError(f"the objective must be an Evaluator or a function (schedule, prompt_indices) -> scores, "
                        f"got {type(evaluate).__name__}")
    return FunctionEvaluator(evaluate)


class Stoppable(Evaluator):
    """`evaluator`, raising `interrupted()` before a request when `should_stop()` says so."""

    def __init__(self, evaluator, should_stop, interrupted):
        self.evaluator, self.should_stop, self.interrupted = as_evaluator(evaluator), should_stop, interrupted
        self.batched = self.evaluator.batched

    def score_many(self, requests):
        if self.should_stop():
            raise self.interrupted()
        return self.evaluator.score_many(requests)
