"""The coefficient search: run_search over an objective (an Evaluator), with strategies registered by name.

Where a new search strategy goes: one module here that defines `run(ev, space, **options)` and
`plan(space, n_prompts, budget, **options)` and calls `register(name, run, plan)`, plus its name in the import
line below (the order is the node's choice order). Grids, rungs and the prompt order are in space.py, the loops
the strategies share (racing, successive halving, coarse to fine) in races.py.
"""
from . import (racing, halving_floor, coarse_to_fine_racing, grid, successive_halving, coarse_to_fine,  # noqa: F401
               bayes)
from .evaluator import BatchEvaluator, Evaluator, FunctionEvaluator, Remapped, Reporting, Stoppable, as_evaluator
from .registry import DEFAULT_STRATEGY, STRATEGIES, Strategy, register
from .runner import BudgetSpent, Evaluations, SearchInterrupted, SearchResult, plan_images, run_search
from .space import MAX_GRID_CANDIDATES, SearchSpace, stratified_order

__all__ = ["run_search", "plan_images", "SearchResult", "SearchInterrupted", "SearchSpace", "Evaluations",
           "BudgetSpent", "Evaluator", "FunctionEvaluator", "BatchEvaluator", "Remapped", "Reporting", "Stoppable",
           "as_evaluator", "STRATEGIES", "DEFAULT_STRATEGY", "Strategy", "register", "MAX_GRID_CANDIDATES",
           "stratified_order"]
