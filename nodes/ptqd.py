"""Q-Sched PTQD Correction: the PTQD-style baseline (He et al. 2023) as a QSCHED_SCHEDULE, so the same Q-Sched
samplers can apply it and users can compare it with a Q-Sched calibration. The fit is comfy_adapter.ptqd; the
settings it shares with Q-Sched Calibrate (sampler, scheduler, steps, cfg, seed, prompts, size, preset record) are
calibration.run.CalibrationConfig's."""
import logging

import comfy.model_management
import comfy.utils

from ..calibration.presets import make_preset, safe_preset_name, save_preset
from ..calibration.prompts import prompts_hash
from ..calibration.run import CalibrationConfig
from ..comfy_adapter.calibration import describe_model, model_hash, user_preset_folder
from ..comfy_adapter.ptqd import describe_fits, fit_ptqd
from .calibrate import setting_inputs

log = logging.getLogger("qsched.ptqd")
SETTINGS = ("sampler_name", "scheduler", "steps", "cfg", "seed", "prompts", "n_prompts", "width", "height",
            "model_name", "quant", "preset_name")
TOOLTIPS = {"sampler_name": "The sampler you will use.", "scheduler": "The sigma schedule you will use.",
            "steps": "The step count you will use.", "cfg": "The guidance scale you will use.",
            "preset_name": "save as this preset; empty = not saved"}


class QSchedPTQDCorrection:
    CATEGORY = "sampling/qsched"
    RETURN_TYPES = ("QSCHED_SCHEDULE", "STRING", "STRING")
    RETURN_NAMES = ("schedule", "summary", "preset_name")
    FUNCTION = "run"
    DESCRIPTION = ("PTQD-style correction of a quantized model, for comparing with Q-Sched: fits eps_Q = (1 + k) "
                   "eps_FP + delta per step on calibration prompts (needs the full-precision model) and returns it "
                   "as a Q-Sched schedule (c_eps = 1/(1+k), offset = mean delta/(1+k)) for any Q-Sched sampler.")

    @classmethod
    def INPUT_TYPES(cls):
        inputs = setting_inputs(SETTINGS, {name: {"tooltip": text} for name, text in TOOLTIPS.items()})
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The quantized model to correct."}),
                "reference_model": ("MODEL", {"tooltip": "The full-precision model it was made from."}),
                "clip": ("CLIP", {"tooltip": "Text encoder for the calibration prompts."}),
                **inputs["required"],
            },
            "optional": {
                **inputs["optional"],
                "per_channel": ("BOOLEAN", {"default": False, "tooltip":
                                "one mean per latent channel instead of one per step (our extension of PTQD)"}),
            },
        }

    def run(self, model, reference_model, clip, per_channel=False, **settings):
        config = CalibrationConfig(**settings)     # checks every setting (and the preset name) before the work
        bar = comfy.utils.ProgressBar(len(config.prompt_list()))
        fits, schedule = fit_ptqd(model, reference_model, clip, config, per_channel=per_channel,
                                  should_stop=comfy.model_management.throw_exception_if_processing_interrupted,
                                  progress=lambda done, total: bar.update_absolute(done, total))
        summary = describe_fits(fits)
        if config.preset_name:
            save_preset(user_preset_folder(), config.preset_name,
                        _preset(config, schedule, fits, model, reference_model, per_channel))
        log.info("%s", summary)
        return (schedule, summary, config.preset_name)


def _preset(config, schedule, fits, model, reference_model, per_channel):
    family, fingerprint = describe_model(model), model_hash(model)
    prompts = config.prompt_list()
    search = {"method": "ptqd", "per_channel": bool(per_channel), "scheduler": config.scheduler,
              "width": config.width, "height": config.height,
              "reference_model_sha256": model_hash(reference_model), "fits": fits}
    return make_preset(schedule, model_name=config.model_name or safe_preset_name(f"{family}-{fingerprint[:8]}"),
                       model_hash=fingerprint, family=family, quant=config.quant or None, sampler=config.sampler_name,
                       prompts_hash=prompts_hash(prompts), n_prompts=len(prompts), seed=config.seed, cfg=config.cfg,
                       search=search)


NODE_CLASS_MAPPINGS = {"QSchedPTQDCorrection": QSchedPTQDCorrection}
NODE_DISPLAY_NAME_MAPPINGS = {"QSchedPTQDCorrection": "Q-Sched PTQD Correction"}
