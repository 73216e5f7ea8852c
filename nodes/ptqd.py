"""Q-Sched PTQD Correction: the PTQD-style baseline (He et al. 2023) as a QSCHED_SCHEDULE, so the same Q-Sched
samplers can apply it and users can compare it with a Q-Sched calibration. The fit is comfy_adapter.ptqd; the
settings it shares with Q-Sched Calibrate (sampler, scheduler, steps, cfg, seed, prompts, size, preset record) are
calibration.run.CalibrationConfig's."""
import logging

import comfy.model_management
from comfy_api.v0_0_2 import io

from ..calibration.presets import make_preset, safe_preset_name, save_preset
from ..calibration.prompts import prompts_hash
from ..calibration.run import CalibrationConfig
from ..comfy_adapter.calibration import describe_model, model_hash, user_preset_folder
from ..comfy_adapter.comfy_compat import report_progress
from ..comfy_adapter.loading import quantizer_of
from ..comfy_adapter.ptqd import describe_fits, fit_ptqd
from .calibrate import DEFAULTS, check_settings, setting_inputs
from .io_types import Schedule

log = logging.getLogger("qsched.ptqd")
SETTINGS = ("sampler_name", "scheduler", "steps", "cfg", "seed", "prompts", "n_prompts", "width", "height",
            "model_name", "quant", "preset_name")
TOOLTIPS = {"sampler_name": "The sampler you will use.", "scheduler": "The sigma schedule you will use.",
            "steps": "The step count you will use.", "cfg": "The guidance scale you will use.",
            "preset_name": "save as this preset; empty = not saved"}


class QSchedPTQDCorrection(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QSchedPTQDCorrection", display_name="Q-Sched PTQD Correction", category="sampling/qsched",
            description=("PTQD-style correction of a quantized model, for comparing with Q-Sched: fits eps_Q = (1 + k) "
                         "eps_FP + delta per step on calibration prompts (needs the full-precision model) and returns "
                         "it as a Q-Sched schedule (c_eps = 1/(1+k), offset = mean delta/(1+k)) for any Q-Sched "
                         "sampler."),
            inputs=[
                io.Model.Input("model", tooltip="The quantized model to correct."),
                io.Model.Input("reference_model", tooltip="The full-precision model it was made from."),
                io.Clip.Input("clip", tooltip="Text encoder for the calibration prompts."),
                *setting_inputs(SETTINGS, {name: {"tooltip": text} for name, text in TOOLTIPS.items()}),
                io.Boolean.Input("per_channel", default=False, optional=True, tooltip="one mean per latent channel "
                                 "instead of one per step (our extension of PTQD)"),
            ],
            outputs=[Schedule.Output(display_name="schedule"), io.String.Output(display_name="summary"),
                     io.String.Output(display_name="preset_name")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, prompts, n_prompts=DEFAULTS.n_prompts, quant=DEFAULTS.quant,
                        preset_name=DEFAULTS.preset_name):
        # the quantization and preset names and the prompt count, when the prompt is queued
        return check_settings(prompts=prompts, n_prompts=n_prompts, quant=quant, preset_name=preset_name)

    @classmethod
    def execute(cls, model, reference_model, clip, per_channel=False, **settings):
        config = CalibrationConfig(**settings)     # checks every setting (and the preset name) before the work
        unique_id = cls.hidden.unique_id if cls.hidden is not None else None
        fits, schedule = fit_ptqd(model, reference_model, clip, config, per_channel=per_channel,
                                  should_stop=comfy.model_management.throw_exception_if_processing_interrupted,
                                  progress=lambda done, total: report_progress(done, total, unique_id))
        summary = describe_fits(fits)
        if config.preset_name:
            save_preset(user_preset_folder(), config.preset_name,
                        _preset(config, schedule, fits, model, reference_model, per_channel))
        log.info("%s", summary)
        return io.NodeOutput(schedule, summary, config.preset_name)


def _preset(config, schedule, fits, model, reference_model, per_channel):
    family, fingerprint = describe_model(model), model_hash(model)
    prompts = config.prompt_list()
    search = {"method": "ptqd", "per_channel": bool(per_channel), "scheduler": config.scheduler,
              "width": config.width, "height": config.height,
              "reference_model_sha256": model_hash(reference_model), "fits": fits}
    return make_preset(schedule, model_name=config.model_name or safe_preset_name(f"{family}-{fingerprint[:8]}"),
                       model_hash=fingerprint, family=family, quant=config.quant or None, sampler=config.sampler_name,
                       prompts_hash=prompts_hash(prompts), n_prompts=len(prompts), seed=config.seed, cfg=config.cfg,
                       search=search, quantizer=quantizer_of(model))


NODES = [QSchedPTQDCorrection]
