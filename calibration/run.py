"""One calibration, in plain torch, behind both the Q-Sched Calibrate node and `python -m qsched calibrate`.

`CalibrationConfig` holds every calibration setting once: its default, bounds, choices and help. The node's inputs,
the command line's arguments, the run-log key and the preset's record are all derived from its fields, so they
cannot disagree. `run(config, generate, scorer, ...)` is the calibration itself: names and settings checked before
the first image, the search (resuming from the run log), the held-out check and the FP control, the preset; its
`CalibrationRun.summary()` is what the node's panel and the command line report.

The host supplies `generate([(schedule, prompt_index), ...]) -> IMAGE [N, H, W, C]` (prompt i with seed + i, the
host's model, text encoder and VAE; comfy_adapter/calibration.py in ComfyUI) and the scorer; for a reference
objective also the full-precision model's sampling (calibration.reference.ReferenceSampling).
"""
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field

from ..samplers.schedule import SAMPLER_NAMES, QSchedSchedule, map_lists
from .heldout import HOLDOUT_FRACTION, check_winner, format_report, split_pairs
from .optimise import DEFAULT_EVALUATIONS, FORMS as REFINE_FORMS, REFINE_C_RANGE
from .pipeline import OBJECTIVES, make_evaluate
from .presets import check_name, make_preset, safe_preset_name, save_preset
from .prompts import parse_prompts, prompts_hash
from .closed_form import (DEFAULT_FORM as CLOSED_FORM_DEFAULT, DEFAULT_MAP_SIZE as CLOSED_FORM_MAP_SIZE,
                          FORMS as CLOSED_FORM_FORMS, fit_schedule, record_fits)
from .reference import (CLOSED_FORM, DEFAULT_REFERENCE_WEIGHT, REFERENCE_OBJECTIVES, is_reference_objective,
                        make_objective_evaluate, needs_scorer)
from .runlog import record_run, schedule_key, settings_hash
from .search import (DEFAULT_STRATEGY, STRATEGIES, Remapped, Reporting, SearchInterrupted, SearchResult, SearchSpace,
                     Stoppable, plan_images, run_search)

log = logging.getLogger("qsched.calibration")
SCHEDULERS = "schedulers"   # choices only the host knows (ComfyUI's sigma schedules plus the pack's few-step ones)
REFINE_OFF = "off"
# The default objective: the closed form with the full-precision model (one pass, no scorer, deterministic; issue 22),
# the paper's reference-free JAQ without it. Saved workflows store their objective, so they keep it.
AUTO = "auto"
AUTO_OBJECTIVE = {True: CLOSED_FORM, False: "jaq"}
OBJECTIVE_CHOICES = (AUTO, *OBJECTIVES, *REFERENCE_OBJECTIVES)
SEARCHED_OBJECTIVES = tuple(o for o in OBJECTIVE_CHOICES if o != CLOSED_FORM)
# The full-precision model is a model input (the node's link, the command line's checkpoint), not a setting: its
# help is written once here.
REFERENCE_MODEL_HELP = ("the full-precision model the quantized one was made from: the reference objectives compare "
                        "with its outputs from the same noise and prompt; with jaq/tc/iq the winner is also applied "
                        "to it (FP control: is the gain specific to the quantized model?)")


class ConfigError(ValueError):
    """A calibration setting out of its bounds or choices; the message names the setting."""


@dataclass(frozen=True)
class Setting:
    """How a CalibrationConfig field is shown and checked. node: 'required', 'optional' or None (not a node
    input); cli: the flag ('' = --the-field-name, None = not on the command line); log_key: its name in the run-log
    key (None = it does not decide what a score means); record: kept in the preset's `search` record; only_if:
    (other field, its values) for which the setting means anything (elsewhere it neither keys the log nor is
    recorded)."""
    help: str
    minimum: float = None
    maximum: float = None
    step: float = None
    choices: object = None      # a tuple, or SCHEDULERS (filled in by the host)
    node: str = "optional"
    cli: str = ""
    log_key: str = None
    record: bool = False
    multiline: bool = False
    only_if: tuple = None

    def flag(self, name):
        return ("--" + name.replace("_", "-")) if self.cli == "" else self.cli


def _setting(default, help, **meta):
    return field(default=default, metadata={"setting": Setting(help, **meta)})


@dataclass(frozen=True)
class CalibrationConfig:
    """Every setting of a calibration, in the order of the node's widgets (saved workflows depend on it)."""
    sampler_name: str = _setting("lcm", "The Q-Sched sampler the preset is for.", choices=SAMPLER_NAMES,
                                 node="required", cli="--sampler", log_key="sampler")
    scheduler: str = _setting("lcm_original", "Sigma schedule, as you will sample with it.", choices=SCHEDULERS,
                              node="required", log_key="scheduler", record=True)
    steps: int = _setting(4, "Sampling steps; the preset fits only this count.", minimum=1, maximum=1000,
                          node="required", log_key="steps")
    cfg: float = _setting(1.0, "Classifier-free guidance scale used while calibrating.", minimum=0.0, maximum=100.0,
                          step=0.1, node="required", log_key="cfg")
    strategy: str = _setting(DEFAULT_STRATEGY, "racing (default) = the paper grid raced with confidence intervals, "
                             "never judging on fewer than 10 prompts; paper_grid = the official search, every "
                             "candidate on every prompt; successive_halving and coarse_to_fine judge on 1-2 prompts "
                             "first: fast, but noise can decide (the closed form searches nothing)",
                             choices=tuple(STRATEGIES), node="required", record=True,
                             only_if=("objective", SEARCHED_OBJECTIVES))
    budget_images: int = _setting(0, "most images the calibration generates, all counted: the search, the held-out "
                                  "check (winner and identity), the FP control and the full-precision reference "
                                  "samples; 0 = the strategy's default search plus those", minimum=0,
                                  maximum=1_000_000, node="required", cli="--budget")
    seed: int = _setting(0, "Prompt i uses seed + i: the same noise for every candidate.", minimum=0,
                         maximum=0xFFFFFFFF, node="required", log_key="seed")
    prompts: str = _setting("", "one prompt per line; empty = the pack's 20 calibration prompts", node="required",
                            cli=None, multiline=True)
    n_prompts: int = _setting(0, "use the first N prompts; 0 = all", minimum=0, maximum=10_000)
    width: int = _setting(512, "Calibration image width.", minimum=64, maximum=4096, step=8, log_key="width",
                          record=True)
    height: int = _setting(512, "Calibration image height.", minimum=64, maximum=4096, step=8, log_key="height",
                           record=True)
    objective: str = _setting(AUTO, "What the winner is chosen by. auto (default) = reference_closed_form when the "
                              "full-precision model is given (reference_model), else jaq; the summary and the preset "
                              "name the one that ran. jaq (the paper's reference-free score) or one of "
                              "its terms; with the full-precision model (reference_model): reference_latent / "
                              "reference_image / reference_clip = closest to its latent / decoded image / CLIP image "
                              "features from the same noise and prompt; jaq_reference = JAQ - reference_weight x the "
                              "relative latent error; reference_closed_form = no search: a least-squares fit per "
                              "step of the FP model's prediction (coefficients and an offset, see closed_form), "
                              "fast and deterministic. reference_latent, reference_image and reference_closed_form "
                              "need no scorer.",
                              choices=OBJECTIVE_CHOICES, log_key="objective", record=True)
    c_min: float = _setting(0.8, "Lowest start coefficient searched.", minimum=0.05, maximum=1.0, step=0.01)
    c_max: float = _setting(1.2, "Highest start coefficient searched.", minimum=1.0, maximum=3.0, step=0.01)
    model_name: str = _setting("", "recorded in the preset (empty: the model's family and hash)")
    quant: str = _setting("", "quantization recorded in the preset, e.g. W4A8 (the command line also quantizes "
                          "the model with it)", log_key="quant")
    preset_name: str = _setting("", "empty = <model>-<quant>-<sampler>-<steps>steps")
    holdout: float = _setting(HOLDOUT_FRACTION, "share of the prompt/seed pairs kept out of the search to check the "
                              "winner on", minimum=0.05, maximum=0.75, step=0.05, log_key="holdout", record=True)
    batch_size: int = _setting(16, "most images per model call (prompts and candidates share a batch, each with its "
                               "own noise); fewer when free memory is short. 1 = one image at a time", minimum=1,
                               maximum=1024)
    reference_weight: float = _setting(DEFAULT_REFERENCE_WEIGHT, "jaq_reference: weight of the relative latent error "
                                       "subtracted from JAQ", minimum=0.0, maximum=1000.0, step=0.05,
                                       log_key="reference_weight", record=True,
                                       only_if=("objective", ("jaq_reference",)))
    refine: str = _setting(REFINE_OFF, "After the search: fit free per-step coefficients (and offsets on the noise "
                           "prediction, one per step or per latent channel) with a continuous optimiser (scipy "
                           "Powell) from the search's winner. "
                           + "; ".join(f"{k}: {v}" for k, v in REFINE_FORMS.items()),
                           choices=(REFINE_OFF, *REFINE_FORMS), record=True)
    refine_evaluations: int = _setting(0, f"candidates the refinement may score, each on every search prompt; 0 = "
                                       f"{DEFAULT_EVALUATIONS}", minimum=0, maximum=100_000, record=True,
                                       only_if=("refine", tuple(REFINE_FORMS)))
    closed_form: str = _setting(CLOSED_FORM_DEFAULT, "reference_closed_form: the offset's form. map = a low-resolution "
                                "grid per latent channel (map_size), resized bilinearly to any latent size; channel = "
                                "one value per latent channel", choices=CLOSED_FORM_FORMS, log_key="closed_form",
                                record=True, only_if=("objective", (CLOSED_FORM,)))
    map_size: int = _setting(CLOSED_FORM_MAP_SIZE, "reference_closed_form with map: the grid's rows and columns (cut "
                             "to the latent's size)", minimum=1, maximum=64, log_key="map_size", record=True,
                             only_if=("closed_form", ("map",)))

    def __post_init__(self):
        for item in dataclasses.fields(self):
            object.__setattr__(self, item.name, _checked(item, getattr(self, item.name)))
        if not self.c_min < self.c_max:
            raise ConfigError(f"c_min ({self.c_min}) must be below c_max ({self.c_max})")
        if self.quant:
            from ..quant.spec import QuantSpec, QuantSpecError
            try:
                object.__setattr__(self, "quant", QuantSpec.parse(self.quant).name)
            except QuantSpecError as error:
                raise ConfigError(f"quant: {error}") from None
        if self.preset_name:
            object.__setattr__(self, "preset_name", check_name(self.preset_name))

    @classmethod
    def settings(cls):
        """(field name, default, Setting) of every setting, in order."""
        return [(item.name, item.default, item.metadata["setting"]) for item in dataclasses.fields(cls)]

    @property
    def c_range(self):
        return (self.c_min, self.c_max)

    def resolved(self, reference):
        """This config with objective auto replaced by the one it stands for (reference: the FP model is given);
        every calibration runs, keys its run log and records its preset with that one."""
        if self.objective != AUTO:
            return self
        return dataclasses.replace(self, objective=AUTO_OBJECTIVE[bool(reference)])

    @property
    def needs_reference(self):
        """The objective compares with the full-precision model."""
        return is_reference_objective(self.objective)

    def applies(self, name):
        """Whether setting `name` means anything with the others as they are (see Setting.only_if)."""
        only_if = dict((n, s) for n, _, s in self.settings())[name].only_if
        return only_if is None or (self.applies(only_if[0]) and getattr(self, only_if[0]) in only_if[1])

    def check_inputs(self, reference, scorer):
        """Refuse, before any image, an objective whose model or scorer is missing (reference, scorer: given?), and
        a refinement with the closed form, which has no search winner to refine."""
        if self.objective == AUTO:
            if not reference and not scorer:
                raise ConfigError("objective 'auto' without the full-precision model is jaq, which needs a scorer: "
                                  "connect Load JAQ Scorer (Q-Sched) (command line: --scorer), or connect the "
                                  "full-precision model as 'reference_model' (command line: --reference-model) for "
                                  "the closed-form correction, which needs none")
            return self.resolved(reference).check_inputs(reference, scorer)
        if self.objective == CLOSED_FORM and self.refine != REFINE_OFF:
            raise ConfigError(f"refine is {self.refine!r}, but objective {CLOSED_FORM!r} (also auto's choice with "
                              "the full-precision model) is a closed-form fit, with no search winner to refine: set "
                              "refine 'off', or choose a searched objective such as reference_latent")
        if self.needs_reference and not reference:
            raise ConfigError(f"objective {self.objective!r} compares with the full-precision model: connect it as "
                              "'reference_model' (command line: give --reference-model), or choose 'jaq', which "
                              "needs no reference")
        if needs_scorer(self.objective) and not scorer:
            raise ConfigError(f"objective {self.objective!r} needs a scorer: connect Load JAQ Scorer (Q-Sched) "
                              "(command line: --scorer), or use reference_closed_form / reference_latent / "
                              "reference_image with the full-precision model")

    def fp_control(self, reference):
        """The FP control (the winner applied to the FP model) runs with a reference-free objective and the FP
        model given; with a reference objective the FP model is what the score compares with."""
        return bool(reference) and not self.resolved(reference).needs_reference

    def refine_options(self, channels):
        """run_search's `refine` (None when off): the free coefficients may leave the start range (at least
        REFINE_C_RANGE), the channel form gets one offset per latent channel."""
        if self.refine == REFINE_OFF:
            return None
        c_range = (min(REFINE_C_RANGE[0], self.c_min), max(REFINE_C_RANGE[1], self.c_max))
        return {"form": self.refine, "evaluations": self.refine_evaluations or DEFAULT_EVALUATIONS,
                "channels": channels, "c_range": c_range}

    def prompt_list(self):
        prompts = parse_prompts(self.prompts)
        if self.n_prompts > len(prompts):
            raise ConfigError(f"n_prompts is {self.n_prompts} but there are only {len(prompts)} prompts")
        return prompts[:self.n_prompts] if self.n_prompts else prompts

    def run_log_settings(self, *, model_hash, prompts_hash, scorer, reference_hash=None):
        """Everything that decides what a score means; keys the run log (strategy, budget, batch size and the
        refinement do not, so a rerun with another strategy, a larger budget, another batch size or a refinement
        reuses every image scored). A reference objective's scores depend on the FP model: `reference_hash`."""
        keyed = {setting.log_key: getattr(self, name) for name, _, setting in self.settings()
                 if setting.log_key and self.applies(name)}
        keyed["quant"] = keyed["quant"] or None
        if self.needs_reference:
            keyed["reference_model"] = reference_hash
        return {"model_hash": model_hash, "prompts_hash": prompts_hash, "scorer": scorer, **keyed}

    def search_record(self):
        """The settings a preset records under `search` (with what the run adds)."""
        record = {name: getattr(self, name) for name, _, setting in self.settings()
                  if setting.record and self.applies(name)}
        return {**record, "c_range": list(self.c_range)}

    def image_budget(self, reference=False):
        """(images the search may generate, None = the strategy's default; images kept for the rest) of
        budget_images, which counts every image: the held-out check takes winner and identity on each held-out pair
        (twice with the FP control), a reference objective one full-precision sample per prompt, the refinement
        its evaluations on every search pair. ConfigError when the budget cannot even score the identity on the
        search pairs, or cannot cover the closed form's fixed count. reference: the FP model is given."""
        if self.objective == AUTO:
            return self.resolved(reference).image_budget(reference)
        prompts = self.prompt_list()
        search_pairs, held_out = split_pairs(len(prompts), self.holdout)
        refine = self.refine_options(1)
        refined = refine["evaluations"] * len(search_pairs) if refine else 0
        kept = (len(held_out) * (4 if self.fp_control(reference) else 2) + (len(prompts) if self.needs_reference else 0)
                + refined)
        if self.objective == CLOSED_FORM:   # no search: a fixed count, which the budget can only refuse
            fit = (self.steps + 2) * len(search_pairs)
            if self.budget_images and self.budget_images < fit + kept:
                raise ConfigError(f"budget_images is {self.budget_images}, but the closed form generates {fit + kept}: "
                                  f"{fit} on the {len(search_pairs)} search pairs (a partial trajectory per step, then "
                                  f"winner and identity), the held-out check {len(held_out) * 2} and the "
                                  f"full-precision reference samples {len(prompts)}: give at least {fit + kept}, or 0")
            return None, kept
        if not self.budget_images:
            return None, kept
        search = self.budget_images - kept
        if search < len(search_pairs):
            parts = [f"the held-out check {len(held_out) * 2}"]
            if self.fp_control(reference):
                parts.append(f"the FP control {len(held_out) * 2}")
            if self.needs_reference:
                parts.append(f"the full-precision reference samples {len(prompts)}")
            if refined:
                parts.append(f"the refinement {refined}")
            raise ConfigError(f"budget_images is {self.budget_images}, but {', '.join(parts)} and the search at least "
                              f"{len(search_pairs)} (the identity on each search pair) need {kept + len(search_pairs)}"
                              f": give at least {kept + len(search_pairs)}, or 0 for the strategy's default")
        return search, kept

    def check_before_run(self, reference=False, scorer=True):
        """Everything a calibration refuses before its first image, the node's run and the command line alike:
        the objective's inputs, the prompt count, the budget. Returns the prompts."""
        self.check_inputs(reference=reference, scorer=scorer)
        self.image_budget(reference)
        return self.prompt_list()

    def planned_images(self, reference=False):
        """Images the calibration expects to generate (an upper bound, never past budget_images), for progress
        bars and the total shown before it starts; reference: the FP model is given."""
        if self.objective == AUTO:
            return self.resolved(reference).planned_images(reference)
        search_budget, kept = self.image_budget(reference)
        search_pairs, held_out = split_pairs(len(self.prompt_list()), self.holdout)
        if self.objective == CLOSED_FORM:   # a partial trajectory per step and pair, then winner and identity
            return (self.steps + 2) * len(search_pairs) + 2 * len(held_out)
        space = SearchSpace(STRATEGIES[self.strategy].space, self.steps, self.c_range)
        search = plan_images(self.strategy, space, len(search_pairs), search_budget)
        return (min(search, search_budget) if search_budget else search) + kept


def check_folder(path, what):
    """ConfigError unless `path` is a folder this process can write in, or can be made as one (its nearest
    existing ancestor is such a folder): checked before the first image, not after the search."""
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        kind = "a file" if os.path.isfile(existing) else "not a folder"
        raise ConfigError(f"{what} {path}: {existing} is {kind}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {existing} is not writable")
    return path


def _checked(item, value):
    """The field's value, converted where it is lossless (an int for a float), or ConfigError naming it."""
    setting, kind, name = item.metadata["setting"], type(item.default), item.name
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{name} must be {'an integer' if kind is int else 'a number' if kind is float else 'text'}"
                          f", got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    below = setting.minimum is not None and value < setting.minimum
    if below or setting.maximum is not None and value > setting.maximum:
        raise ConfigError(f"{name} is {value}: give a value from {setting.minimum} to {setting.maximum}")
    if kind is int and setting.step and (value - setting.minimum) % setting.step:
        raise ConfigError(f"{name} is {value}: give a multiple of {setting.step}")
    if isinstance(setting.choices, tuple) and value not in setting.choices:
        raise ConfigError(f"{name} is {value!r}: choose one of {', '.join(setting.choices)}")
    return value


# --- the calibration ------------------------------------------------------------------------------------------

@dataclass
class CalibrationRun:
    """What one calibration produced: the search, the held-out report, the preset written and every image that
    failed (schedule, prompt, reason; scored worst)."""
    config: CalibrationConfig
    search: object          # search.SearchResult
    report: object          # heldout.TrustReport
    preset: dict
    path: str
    failures: list = field(default_factory=list)
    seconds: float = 0.0
    images: dict = field(default_factory=dict)   # generated, by part: search, heldout_check, fp_control, reference, total

    @property
    def preset_name(self):
        return os.path.splitext(os.path.basename(self.path))[0]

    def summary(self):
        """The one JSON-safe summary the node's panel and the command line show."""
        result = self.search
        best = result.best
        return {"best": {"c_x": list(best.c_x), "c_eps": list(best.c_eps),
                         "offset": None if best.offset is None else [list(row) for row in best.offset],
                         **({"offset_map": map_lists(best.offset_map)} if best.offset_map is not None else {})},
                "best_score": _finite(result.best_score), "identity_score": _finite(result.identity_score),
                "better_than_identity": self.report.heldout.verdict,
                "images_generated": result.images_generated, "images_reused": result.images_reused,
                "images": self.images,
                "failures": len(self.failures), "preset": self.preset_name, "preset_path": self.path,
                "strategy": result.strategy, "objective": self.config.objective,
                "refinement": refinement_record(result), **self.report.to_dict(),
                "summary": f"objective: {self.config.objective}\n" + format_report(self.report, result),
                "trace": trace_points(result)}


def run(config, generate, scorer, *, model_hash, family, preset_folder, runs_folder, generate_reference=None,
        reference=None, reference_hash=None, latent_channels=1, model_name="", scorer_name=None, scorer_k=None,
        progress=None, should_stop=None, on_candidate=None, quantizer=None):
    """Calibrate: search the pairs not held out, check the winner on the held-out ones (and on the full-precision
    model through `generate_reference`, the FP control, with a reference-free objective), write the preset; returns
    a CalibrationRun.

    A reference objective scores through `reference` (calibration.reference.ReferenceSampling; `generate` is then
    unused) and keys the run log with the FP model's `reference_hash`; scorer may be None for the objectives that
    need none. latent_channels: offsets per step of the per-channel refinement. model_hash / family describe the
    model (the preset and the run-log key); progress(done, planned), should_stop() -> True interrupts
    (SearchInterrupted; what was scored stays in the run log), on_candidate(schedule, prompt_indices, scores) after
    each scored request. quantizer: {"spec", "backend"} the model was quantized with, recorded in the preset.
    Objective auto is the closed form with `reference`, else jaq."""
    config = config.resolved(reference is not None)
    fp_control = config.fp_control(generate_reference is not None)
    prompts = config.check_before_run(reference=reference is not None or fp_control, scorer=scorer is not None)
    search_budget, kept = config.image_budget(fp_control)
    check_folder(preset_folder, "preset folder")
    check_folder(runs_folder, "run-log folder")
    search_pairs, held_out = split_pairs(len(prompts), config.holdout, strata=prompts)
    model_name = config.model_name or model_name or f"{family}-{model_hash[:8]}"
    # A bad name must fail before the search, not after an hour of it.
    name = config.preset_name or safe_preset_name(
        f"{model_name}-{config.quant or 'fp'}-{config.sampler_name}-{config.steps}steps")
    scorer_name = scorer_name or ("none" if scorer is None else scorer.describe() if hasattr(scorer, "describe")
                                  else type(scorer).__name__)
    scorer_k = scorer_k if scorer_k is not None else getattr(getattr(scorer, "options", None), "k", None)
    settings = config.run_log_settings(model_hash=model_hash, prompts_hash=prompts_hash(prompts),
                                       scorer=scorer_identity(scorer, scorer_name, scorer_k),
                                       reference_hash=reference_hash)
    log_path = os.path.join(runs_folder, f"{settings_hash(settings)}.jsonl")
    failures = []
    reference_images = [0]
    if config.needs_reference:
        reference = dataclasses.replace(reference, sample_reference=_counting(reference.sample_reference,
                                                                              reference_images))
        evaluate = make_objective_evaluate(reference, config.objective, config.steps, scorer, prompts,
                                           config.reference_weight, failures)
    else:
        evaluate = make_evaluate(generate, scorer, prompts, config.objective, failures)
    search_evaluate = Remapped(evaluate, search_pairs)   # the held-out pairs are not searched on
    log.info("Q-Sched calibration: at most %s images: the search %s, the rest (check, FP control, reference, "
             "refinement) %d",
             config.budget_images or "(no budget)", search_budget or "(the strategy's default)", kept)
    refine = config.refine_options(latent_channels)
    after_search = kept - (refine["evaluations"] * len(search_pairs) if refine else 0)   # the search plans its refinement
    search_progress = None if progress is None else lambda done, total: progress(done, total + after_search)
    if on_candidate is not None:
        search_evaluate = Reporting(search_evaluate, on_candidate)
    closed_form = None
    if config.objective == CLOSED_FORM:
        result, closed_form = fit_closed_form(config, reference, search_evaluate, search_pairs, search_progress,
                                              should_stop)
    else:
        result = run_search(search_evaluate, config.steps, len(search_pairs), config.strategy,
                            budget_images=search_budget, c_range=config.c_range,
                            sampler=config.sampler_name, settings=settings, run_log=log_path,
                            progress=search_progress, should_stop=should_stop,
                            strata=[prompts[i] for i in search_pairs], batch_images=config.batch_size,
                            refine=refine)
    evaluate_fp = None
    if fp_control:
        evaluate_fp = make_evaluate(generate_reference, scorer, prompts, config.objective, failures)
    report = check_winner(_stoppable(evaluate, should_stop), result, held_out, _stoppable(evaluate_fp, should_stop),
                          config.holdout)
    if progress is not None:
        done = result.images_generated + report.images
        progress(done, done)
    fp_images = 2 * len(held_out) if report.fp_control is not None else 0
    images = {"search": result.images_generated, "heldout_check": report.images - fp_images, "fp_control": fp_images,
              "reference": reference_images[0]}
    images["total"] = sum(images.values())
    if closed_form is None:   # the closed form keeps no run log
        record_run(log_path, images)
    for failure in failures:
        log.warning("calibration candidate %s failed on prompt %d: %s (scored worst)", failure["schedule"],
                    failure["prompt"], failure["reason"])
    preset = make_preset(result.best, model_name=model_name, model_hash=model_hash, family=family,
                         quant=config.quant or None, sampler=config.sampler_name, scorer=scorer_name,
                         scorer_k=scorer_k, prompts_hash=prompts_hash(prompts), n_prompts=len(prompts),
                         seed=config.seed, cfg=config.cfg, identity_score=_finite(result.identity_score),
                         best_score=_finite(result.best_score),
                         search={**config.search_record(), "images_generated": result.images_generated,
                                 "images_reused": result.images_reused, "images": images,
                                 "failed_images": len(failures),
                                 "run_log": None if closed_form else os.path.basename(log_path),
                                 **({"closed_form_fits": closed_form} if closed_form else {}),
                                 "search_pairs": len(search_pairs),
                                 "heldout_pairs": len(held_out), "fp_control": fp_control,
                                 **({"reference_model_sha256": reference_hash} if config.needs_reference else {}),
                                 **({"refinement": refinement_record(result)} if result.refinement else {})},
                         checks=report.to_dict(), quantizer=quantizer)
    path = save_preset(preset_folder, name, preset)
    log.info("Q-Sched calibration: best %.4f vs identity %.4f (%s), better than identity on held-out pairs: %s, "
             "preset %s", result.best_score, result.identity_score, result.best.label, report.heldout.verdict, path)
    for warning in report.warnings:
        log.warning("Q-Sched calibration: %s", warning)
    return CalibrationRun(config, result, report, preset, path, failures, result.seconds, images)


def fit_closed_form(config, reference, evaluate, search_pairs, progress=None, should_stop=None):
    """The closed-form correction on the search pairs (no search, no run log), then its winner and the identity
    scored on those pairs like a search's; returns (SearchResult, the fits' record for the preset)."""
    if reference is None or reference.trajectory is None:
        raise ConfigError(f"objective {CLOSED_FORM!r} needs the host's trajectories of both models "
                          "(ReferenceSampling.trajectory); this host offers none: choose reference_latent")
    started = time.time()
    steps, pairs = config.steps, list(search_pairs)

    def stop():
        if should_stop is not None and should_stop():
            raise SearchInterrupted("calibration interrupted during the closed-form fit")

    def trajectory(schedule, step):
        data = reference.trajectory(schedule, step, pairs)
        if progress is not None:
            progress((step + 1) * len(pairs), (steps + 2) * len(pairs))
        return data

    schedule, fits = fit_schedule(trajectory, steps, config.sampler_name, form=config.closed_form,
                                  map_size=config.map_size, should_stop=stop)
    stop()
    identity = QSchedSchedule.constant(steps, 1.0, 1.0, sampler=config.sampler_name, label="identity")
    indices = list(range(len(pairs)))
    winner_scores, identity_scores = evaluate.score_many([(schedule, indices), (identity, indices)])
    mean = lambda scores: math.fsum(scores) / len(scores) if scores else math.nan   # noqa: E731
    per_prompt = {schedule_key(identity.c_x, identity.c_eps): list(identity_scores)}
    per_prompt[schedule_key(schedule.c_x, schedule.c_eps, schedule.offset)] = list(winner_scores)
    result = SearchResult(best=schedule, best_score=mean(winner_scores), identity_score=mean(identity_scores),
                          trace=[], images_generated=(steps + 2) * len(pairs), strategy="closed_form",
                          per_prompt=per_prompt, seconds=time.time() - started)
    return result, {"form": config.closed_form, "map_size": config.map_size if config.closed_form == "map" else None,
                    "steps": record_fits(fits)}


def refinement_record(result):
    """The preset's and summary's record of the per-step refinement (None without one)."""
    if not result.refinement:
        return None
    keep = ("form", "dims", "start_score", "best_score", "images", "c_range", "offset_bound")
    return {key: _finite(value) if isinstance(value, float) else value
            for key, value in result.refinement.items() if key in keep}


def scorer_identity(scorer, scorer_name, scorer_k):
    """What the run log knows the scorer by: its options and the content of its weights (JAQScorer.identity), not
    its file's name; a scorer object without identity() by its description."""
    identity = getattr(scorer, "identity", None)
    return identity() if callable(identity) else f"{scorer_name}:{scorer_k}"


def trace_points(result):
    """JSON-safe trace for the web panel: c_x, c_eps, score (null if failed), prompts, full."""
    return [{"c_x": t["schedule"]["c_x"], "c_eps": t["schedule"]["c_eps"],
             "score": _finite(t["full_score"] if t["full"] else t["score"]), "prompts": t["prompts"],
             "full": t["full"], "images": t["images_generated"]} for t in result.trace]


def _finite(value):
    return float(value) if math.isfinite(value) else None


def _counting(sample, count):
    def counted(items):
        latents = sample(items)
        count[0] += len(items)
        return latents
    return counted


def _stoppable(evaluate, should_stop):
    """The held-out and FP-control evaluations stop on an interrupt like the search does."""
    if evaluate is None or should_stop is None:
        return evaluate
    return Stoppable(evaluate, should_stop,
                     lambda: SearchInterrupted("calibration interrupted during the held-out check"))
