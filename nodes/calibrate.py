"""Q-Sched Calibrate: search c_x / c_eps for a (quantized) MODEL by generating the calibration prompts with
each candidate schedule and scoring them (JAQ by default); writes a preset and returns the best schedule and a
plot. Each prompt's text conditioning is encoded once; every candidate uses prompt i with seed + i (common
random numbers). Progress goes to ComfyUI's bar (images done / planned); an interrupt stops at the next
candidate and the run log (<user dir>/qsched_runs) lets a rerun with the same settings skip what was done."""
import logging
import math
import os

import comfy.model_management
import comfy.utils
import folder_paths

from ..comfy_adapter.calibration import make_generator
from ..calibration.heldout import HOLDOUT_FRACTION, check_winner, format_report, split_pairs
from ..calibration.optimise import DEFAULT_EVALUATIONS, FORMS as REFINE_FORMS
from ..calibration.pipeline import OBJECTIVES, calibration_settings, make_evaluate
from ..calibration.plot import plot_result
from ..calibration.presets import check_name, make_preset, safe_preset_name, save_preset
from ..calibration.prompts import parse_prompts, prompts_hash
from ..calibration.reference import (DEFAULT_REFERENCE_WEIGHT, REFERENCE_OBJECTIVES, ReferenceError,
                                     is_reference_objective)
from ..calibration.runlog import settings_hash
from ..calibration.search import plan_images, run_search, SearchInterrupted, SearchSpace
from ..calibration.strategies import DEFAULT_STRATEGY, STRATEGIES
from ..samplers.schedule import SAMPLER_NAMES
from .presets import model_hash, user_preset_folder

log = logging.getLogger("qsched.calibration")
EVENT = "qsched.calibration"


def _scheduler_names():
    from .sampling import SCHEDULERS
    return list(SCHEDULERS)


def run_folder():
    return os.path.join(folder_paths.get_user_directory(), "qsched_runs")


def describe_model(model):
    config = getattr(model.model, "model_config", None)
    return type(config).__name__ if config is not None else type(model.model).__name__


def calibrate(model, clip, vae, scorer, *, sampler_name, scheduler, steps, cfg, strategy, budget_images, seed,
              prompts, width, height, objective="jaq", c_range=(0.8, 1.2), model_name="", quant=None,
              preset_name="", preset_folder=None, runs_folder=None, progress=None, should_stop=None,
              on_candidate=None, scorer_name=None, scorer_k=None, holdout=HOLDOUT_FRACTION, reference_model=None,
              batch_size=1, reference_weight=DEFAULT_REFERENCE_WEIGHT, refine="off", refine_evaluations=0):
    """The calibration behind the node and `python -m qsched calibrate`; returns (result, preset, path, report).
    Prompt i with seed + i is pair i; `holdout` of the pairs are kept out of the search and decide the held-out
    verdict (report: calibration.heldout.TrustReport); with `reference_model` (the full-precision model) the
    same coefficients are checked on it too (FP control).

    objective: "jaq" (the paper's reference-free score; default), "tc", "iq", or a reference objective that
    compares with `reference_model`'s outputs from the same noise and prompt (calibration.reference). refine:
    "off" or a form of calibration.optimise.FORMS: per-step free parameters fitted from the search's winner
    (scipy Powell) with `refine_evaluations` candidates (0 = the default)."""
    prompts = list(prompts)
    refinement = refine_options(model, refine, refine_evaluations, c_range)
    if scorer is None and not is_reference_objective(objective):
        raise ReferenceError(f"objective {objective!r} needs a scorer: connect Load JAQ Scorer (Q-Sched), or "
                             "connect the full-precision model and use a reference objective")
    search_pairs, held_out = split_pairs(len(prompts), holdout, strata=prompts)
    fingerprint = model_hash(model)
    family = describe_model(model)
    model_name = model_name or f"{family}-{fingerprint[:8]}"
    # A bad name must fail before the search, not after an hour of it.
    name = check_name(preset_name) if preset_name else safe_preset_name(
        f"{model_name}-{quant or 'fp'}-{sampler_name}-{steps}steps")
    scorer_name = scorer_name or ("none" if scorer is None else scorer.describe() if hasattr(scorer, "describe")
                                  else type(scorer).__name__)
    scorer_k = scorer_k if scorer_k is not None else getattr(getattr(scorer, "options", None), "k", None)
    settings = calibration_settings(model_hash=fingerprint, sampler=sampler_name, scheduler=scheduler, steps=steps,
                                    cfg=cfg, width=width, height=height, seed=seed, prompts_hash=prompts_hash(prompts),
                                    scorer=scorer_identity(scorer, scorer_name, scorer_k),
                                    objective=objective_key(objective, reference_model, reference_weight), quant=quant)
    settings["holdout"] = holdout    # decides which pairs the search's prompt indices are
    runs_folder = runs_folder or run_folder()
    log_path = os.path.join(runs_folder, f"{settings_hash(settings)}.jsonl")
    failures = []
    generation = dict(sampler_name=sampler_name, scheduler=scheduler, steps=steps, cfg=cfg, seed=seed, width=width,
                      height=height, prompts=prompts, max_batch=batch_size)
    if is_reference_objective(objective):
        from .reference import make_objective_evaluate
        evaluate = make_objective_evaluate(model, reference_model, clip, vae, scorer, objective=objective,
                                           weight=reference_weight, failures=failures, **generation)
    else:
        evaluate = make_evaluate(make_generator(model, clip, vae, **generation), scorer, prompts, objective, failures)
    search_evaluate = _on_pairs(evaluate, search_pairs)
    check_images = len(held_out) * (4 if fp_control(reference_model, objective) else 2)   # winner, identity (x2 FP)
    search_progress = None if progress is None else lambda done, total: progress(done, total + check_images)
    if on_candidate is not None:
        search_evaluate = _reporting(search_evaluate, on_candidate)
    result = run_search(search_evaluate, steps, len(search_pairs), strategy, budget_images=budget_images or None,
                        c_range=c_range, sampler=sampler_name, settings=settings, run_log=log_path,
                        progress=search_progress, should_stop=should_stop,
                        strata=[prompts[i] for i in search_pairs], batch_images=batch_size, refine=refinement)
    evaluate_fp = None
    if fp_control(reference_model, objective):
        evaluate_fp = make_evaluate(make_generator(reference_model, clip, vae, **generation), scorer, prompts,
                                    objective, failures)
    report = check_winner(_stoppable(evaluate, should_stop), result, held_out,
                          _stoppable(evaluate_fp, should_stop), holdout)
    if progress is not None:
        done = result.images_generated + report.images
        progress(done, done)
    for failure in failures:
        log.warning("calibration candidate %s failed on prompt %d: %s (scored worst)", failure["schedule"],
                    failure["prompt"], failure["reason"])
    preset = make_preset(result.best, model_name=model_name, model_hash=fingerprint, family=family, quant=quant,
                         sampler=sampler_name, scorer=scorer_name, scorer_k=scorer_k,
                         prompts_hash=prompts_hash(prompts), n_prompts=len(prompts), seed=seed, cfg=cfg,
                         identity_score=_finite(result.identity_score), best_score=_finite(result.best_score),
                         search={"strategy": strategy, "objective": objective, "c_range": list(c_range),
                                 "scheduler": scheduler, "width": width, "height": height,
                                 "images_generated": result.images_generated, "images_reused": result.images_reused,
                                 "failed_images": len(failures), "run_log": os.path.basename(log_path),
                                 "holdout": holdout, "search_pairs": len(search_pairs),
                                 "heldout_pairs": len(held_out), "fp_control": evaluate_fp is not None,
                                 **reference_record(objective, reference_model, reference_weight, result)},
                         checks=report.to_dict())
    path = save_preset(preset_folder or user_preset_folder(), name, preset)
    log.info("Q-Sched calibration: best %.4f vs identity %.4f (%s), better than identity on held-out pairs: %s, "
             "preset %s", result.best_score, result.identity_score, result.best.label, report.heldout.verdict, path)
    for warning in report.warnings:
        log.warning("Q-Sched calibration: %s", warning)
    return result, preset, path, report


def fp_control(reference_model, objective):
    """The FP control (the winner applied to the FP model) runs for the reference-free objectives only: with a
    reference objective the FP model scores itself."""
    return reference_model is not None and not is_reference_objective(objective)


def refine_options(model, refine, evaluations, c_range):
    """run_search's `refine` dict for the node's choice ("off" -> None); free coefficients may leave the grid's
    start range (at least 0.5-1.5), offsets get one value per latent channel in the channel form."""
    if refine in (None, "", "off"):
        return None
    if refine not in REFINE_FORMS:
        raise ValueError(f"unknown refine form {refine!r}; choose off or one of {', '.join(REFINE_FORMS)}")
    channels = model.get_model_object("latent_format").latent_channels
    return {"form": refine, "evaluations": int(evaluations) or DEFAULT_EVALUATIONS, "channels": channels,
            "c_range": (min(0.5, c_range[0]), max(1.5, c_range[1]))}


def objective_key(objective, reference_model, weight):
    """What decides a score's meaning besides the model: the objective, and for reference objectives the FP
    model's content hash (and the penalty weight of the combined one)."""
    if not is_reference_objective(objective):
        return objective
    key = f"{objective}:ref={model_hash(reference_model)[:16] if reference_model is not None else None}"
    return key + (f":w={float(weight):g}" if objective == "jaq_reference" else "")


def reference_record(objective, reference_model, weight, result):
    """The preset's record of how the schedule was found beyond the paper's search."""
    record = {}
    if is_reference_objective(objective) and reference_model is not None:
        record["reference_model_sha256"] = model_hash(reference_model)
        if objective == "jaq_reference":
            record["reference_weight"] = float(weight)
    if result.refinement:
        keep = ("form", "dims", "start_score", "best_score", "images", "c_range", "offset_bound")
        record["refinement"] = {key: _finite(value) if isinstance(value, float) else value
                                for key, value in result.refinement.items() if key in keep}
    return record


def scorer_identity(scorer, scorer_name, scorer_k):
    """What the run log knows the scorer by: its options and the content of its weights (JAQScorer.identity), not
    its file's name; a scorer object without identity() by its description."""
    identity = getattr(scorer, "identity", None)
    return identity() if callable(identity) else f"{scorer_name}:{scorer_k}"


def _finite(value):
    return float(value) if math.isfinite(value) else None


def _stoppable(evaluate, should_stop):
    """The held-out and FP-control evaluations stop on an interrupt like the search does."""
    if evaluate is None or should_stop is None:
        return evaluate

    def checked(schedule, indices):
        if should_stop():
            raise SearchInterrupted("calibration interrupted during the held-out check")
        return evaluate(schedule, indices)
    return checked


def _on_pairs(evaluate, pairs):
    """The search's prompt index i is pair pairs[i] (the held-out pairs are not searched on)."""
    def remapped(schedule, indices):
        return evaluate(schedule, [pairs[i] for i in indices])

    remapped.many = lambda requests: evaluate.many([(s, [pairs[i] for i in indices]) for s, indices in requests])
    return remapped


def _reporting(evaluate, on_candidate):
    def wrapped(schedule, prompt_indices):
        scores = evaluate(schedule, prompt_indices)
        on_candidate(schedule, prompt_indices, scores)
        return scores

    def many(requests):
        results = evaluate.many(requests)
        for (schedule, prompt_indices), scores in zip(requests, results):
            on_candidate(schedule, prompt_indices, scores)
        return results

    wrapped.many = many
    return wrapped


def trace_points(result):
    """JSON-safe trace for the web panel: c_x, c_eps, score (null if failed), prompts, full."""
    return [{"c_x": t["schedule"]["c_x"], "c_eps": t["schedule"]["c_eps"],
             "score": _finite(t["full_score"] if t["full"] else t["score"]), "prompts": t["prompts"],
             "full": t["full"], "images": t["images_generated"]} for t in result.trace]


class QSchedCalibrate:
    CATEGORY = "sampling/qsched"
    RETURN_TYPES = ("QSCHED_SCHEDULE", "IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("schedule", "plot", "preset_name", "summary")
    FUNCTION = "run"
    OUTPUT_NODE = True
    DESCRIPTION = ("Find Q-Sched coefficients for this model: every candidate schedule generates the calibration "
                   "prompts (prompt i with seed + i) and is scored by the scorer; the best (never worse than "
                   "identity on these prompts) is saved as a preset. A quarter of the prompt/seed pairs is kept "
                   "out of the search: the summary says whether the winner beats identity there (yes / no / not "
                   "significant, with a confidence interval) and, with the FP model connected, whether the gain is "
                   "specific to the quantized model. Resumes an interrupted run with the same settings.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The (quantized) diffusion model to calibrate for."}),
                "clip": ("CLIP", {"tooltip": "Text encoder for the calibration prompts (encoded once each)."}),
                "vae": ("VAE", {"tooltip": "Decodes each candidate's latents for scoring."}),
                "sampler_name": (list(SAMPLER_NAMES), {"default": "lcm",
                                                       "tooltip": "The Q-Sched sampler the preset is for."}),
                "scheduler": (_scheduler_names(), {"default": "lcm_original",
                                                   "tooltip": "Sigma schedule, as you will sample with it."}),
                "steps": ("INT", {"default": 4, "min": 1, "max": 50,
                                  "tooltip": "Sampling steps; the preset fits only this count."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                  "tooltip": "Classifier-free guidance scale used while calibrating."}),
                "strategy": (list(STRATEGIES), {"default": DEFAULT_STRATEGY, "tooltip":
                             "racing = the official grid (10 x 10 starts, ends fixed at 1) raced with confidence "
                             "intervals, never judging on fewer than 10 prompts; paper_grid = the official search, "
                             "every candidate on every prompt; successive_halving and coarse_to_fine judge on 1-2 "
                             "prompts first: fast, but noise can decide"}),
                "budget_images": ("INT", {"default": 0, "min": 0, "max": 1_000_000, "tooltip":
                                  "most images to generate; 0 = the strategy's default"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF,
                                 "tooltip": "Prompt i uses seed + i: the same noise for every candidate."}),
                "prompts": ("STRING", {"multiline": True, "default": "", "tooltip":
                            "one prompt per line; empty = the pack's 20 calibration prompts"}),
            },
            "optional": {
                "scorer": ("QSCHED_SCORER", {"tooltip": "From Load JAQ Scorer (Q-Sched): what 'best' means for the "
                                             "jaq/tc/iq objectives (and reference_clip, jaq_reference); the "
                                             "reference_latent and reference_image objectives need none."}),
                "n_prompts": ("INT", {"default": 0, "min": 0, "max": 10_000, "tooltip": "use the first N; 0 = all"}),
                "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                                  "tooltip": "Calibration image width."}),
                "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                                   "tooltip": "Calibration image height."}),
                "objective": (list(OBJECTIVES) + list(REFERENCE_OBJECTIVES), {"default": "jaq", "tooltip":
                              "What the winner is chosen by. jaq (the paper's reference-free score) or one of its "
                              "terms; with reference_model connected: reference_latent / reference_image / "
                              "reference_clip = closest to the FP model's latent / decoded image / CLIP image "
                              "features from the same noise and prompt; jaq_reference = JAQ - reference_weight x "
                              "the relative latent error."}),
                "c_min": ("FLOAT", {"default": 0.8, "min": 0.05, "max": 1.0, "step": 0.01,
                                    "tooltip": "Lowest start coefficient searched."}),
                "c_max": ("FLOAT", {"default": 1.2, "min": 1.0, "max": 3.0, "step": 0.01,
                                    "tooltip": "Highest start coefficient searched."}),
                "model_name": ("STRING", {"default": "", "tooltip": "recorded in the preset"}),
                "quant": ("STRING", {"default": "", "tooltip": "quantization recorded in the preset, e.g. W4A8"}),
                "preset_name": ("STRING", {"default": "", "tooltip": "empty = <model>-<quant>-<sampler>-<steps>steps"}),
                "holdout": ("FLOAT", {"default": HOLDOUT_FRACTION, "min": 0.05, "max": 0.75, "step": 0.05, "tooltip":
                            "share of the prompt/seed pairs kept out of the search to check the winner on"}),
                "reference_model": ("MODEL", {"tooltip": "optional full-precision model the quantized one was made "
                                    "from: the reference objectives compare with its outputs; with jaq/tc/iq the "
                                    "winner is also applied to it (FP control: is the gain specific to the "
                                    "quantized model?)"}),
                "batch_size": ("INT", {"default": 16, "min": 1, "max": 1024, "tooltip":
                               "most images per model call (prompts and candidates share a batch, each with its "
                               "own noise); fewer when ComfyUI's free memory is short. 1 = one image at a time"}),
                "reference_weight": ("FLOAT", {"default": DEFAULT_REFERENCE_WEIGHT, "min": 0.0, "max": 1000.0,
                                     "step": 0.05, "tooltip": "jaq_reference: weight of the relative latent "
                                     "error subtracted from JAQ."}),
                "refine": (["off"] + list(REFINE_FORMS), {"default": "off", "tooltip":
                           "After the grid: fit free per-step coefficients (and offsets on the noise prediction, "
                           "one per step or per latent channel) with a continuous optimiser (scipy Powell) from "
                           "the grid's winner. " + "; ".join(f"{k}: {v}" for k, v in REFINE_FORMS.items())}),
                "refine_evaluations": ("INT", {"default": 0, "min": 0, "max": 100_000, "tooltip":
                                       f"candidates the refinement may score, each on every prompt; 0 = "
                                       f"{DEFAULT_EVALUATIONS}"}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def run(self, model, clip, vae, scorer=None, sampler_name="lcm", scheduler="lcm_original", steps=4, cfg=1.0,
            strategy=DEFAULT_STRATEGY, budget_images=0, seed=0, prompts="", n_prompts=0, width=512, height=512,
            objective="jaq", c_min=0.8, c_max=1.2, model_name="", quant="", preset_name="", holdout=HOLDOUT_FRACTION,
            reference_model=None, batch_size=16, reference_weight=DEFAULT_REFERENCE_WEIGHT, refine="off",
            refine_evaluations=0, unique_id=None):
        # scorer is optional (reference objectives need none) but stays 4th, as callers pass it positionally
        prompt_list = parse_prompts(prompts)
        if n_prompts:
            prompt_list = prompt_list[:n_prompts]
        c_range = (c_min, c_max)
        search_pairs, held_out = split_pairs(len(prompt_list), holdout, strata=prompt_list)
        planned = plan_images(strategy, SearchSpace(STRATEGIES[strategy].space, steps, c_range), len(search_pairs),
                              budget_images or None) + len(held_out) * (4 if fp_control(reference_model, objective) else 2)
        if refine != "off":
            planned += (refine_evaluations or DEFAULT_EVALUATIONS) * len(search_pairs)
        bar = comfy.utils.ProgressBar(planned, node_id=unique_id)
        send = _sender(unique_id)

        def progress(done, total):
            bar.update_absolute(done, total)

        def should_stop():
            comfy.model_management.throw_exception_if_processing_interrupted()
            return False

        def on_candidate(schedule, indices, scores):
            finite = [s for s in scores if math.isfinite(s)]
            send({"point": {"c_x": list(schedule.c_x), "c_eps": list(schedule.c_eps),
                            "score": sum(finite) / len(finite) if len(finite) == len(scores) else None,
                            "prompts": len(indices)}})

        result, preset, path, report = calibrate(
            model, clip, vae, scorer, sampler_name=sampler_name, scheduler=scheduler, steps=steps, cfg=cfg,
            strategy=strategy, budget_images=budget_images, seed=seed, prompts=prompt_list, width=width,
            height=height, objective=objective, c_range=c_range, model_name=model_name, quant=quant or None,
            preset_name=preset_name, progress=progress, should_stop=should_stop, on_candidate=on_candidate,
            holdout=holdout, reference_model=reference_model, batch_size=batch_size,
            reference_weight=reference_weight, refine=refine, refine_evaluations=refine_evaluations)
        name = os.path.splitext(os.path.basename(path))[0]
        summary = {"best": {"c_x": list(result.best.c_x), "c_eps": list(result.best.c_eps),
                            "offset": None if result.best.offset is None else [list(r) for r in result.best.offset]},
                   "best_score": _finite(result.best_score), "identity_score": _finite(result.identity_score),
                   "images_generated": result.images_generated, "images_reused": result.images_reused,
                   "failures": len(result.failures), "preset": name, "strategy": strategy, "objective": objective,
                   "refinement": reference_record(objective, None, reference_weight, result).get("refinement"),
                   **report.to_dict(), "summary": format_report(report, result), "trace": trace_points(result)}
        send({**summary, "trace": None, "finished": True})
        return {"ui": {"qsched_calibration": [summary]},
                "result": (result.best, plot_result(result), name, summary["summary"])}


def _sender(unique_id):
    """PromptServer.send_sync for the web panel (a no-op outside a server)."""
    try:
        from server import PromptServer
        server = PromptServer.instance
    except (ImportError, AttributeError):
        return lambda data: None

    def send(data):
        server.send_sync(EVENT, {"node": unique_id, **{k: v for k, v in data.items() if v is not None}},
                         server.client_id)
    return send


NODE_CLASS_MAPPINGS = {"QSchedCalibrate": QSchedCalibrate}
NODE_DISPLAY_NAME_MAPPINGS = {"QSchedCalibrate": "Q-Sched Calibrate"}
