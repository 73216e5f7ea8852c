"""The search strategies by name. A strategy module defines what it does (`run(ev, space, **options)`, spending
images through the score cache until done or out of budget) and what that costs (`plan(space, n_prompts, budget,
**options)` -> images, an upper bound for progress bars) and registers both together with `register(...)`; the
package's `__init__` imports each strategy module once (the registration line), in the order the node lists them.
The names are what saved workflows, presets and run logs carry: a registered name is never renamed.
"""
from dataclasses import dataclass

DEFAULT_STRATEGY = "racing"   # registered by racing.py
STRATEGIES = {}


@dataclass(frozen=True)
class Strategy:
    name: str
    run: object            # run(ev, space, **options)
    plan: object           # plan(space, n_prompts, budget, **options) -> images
    space: str = "paper"   # the SearchSpace kind it searches by default: 'paper' or 'general'


def register(name, run, plan, space="paper"):
    """Make `name` a search strategy (run_search's `strategy`, the calibration node's choices); returns it."""
    if name in STRATEGIES:
        raise ValueError(f"search strategy {name!r} is registered twice")
    STRATEGIES[name] = Strategy(name, run, plan, space)
    return STRATEGIES[name]
