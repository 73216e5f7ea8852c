"""Q-Sched Calibrate: search c_x / c_eps for a (quantized) MODEL by generating the calibration prompts with
each candidate schedule and scoring them (JAQ by default); writes a preset and returns the best schedule, a plot
and the held-out summary. The calibration itself is comfy_adapter.calibration.calibrate (shared with the command
line); its settings and their bounds come from calibration.run.CalibrationConfig. Progress goes to ComfyUI's bar
(images done / planned) and the web panel; an interrupt stops at the next batch and the run log
(<user dir>/qsched_runs) lets a rerun with the same settings skip what was done."""
import math

import comfy.model_management
import comfy.utils

from ..calibration.plot import plot_result
from ..calibration.run import REFERENCE_MODEL_HELP, SCHEDULERS as HOST_SCHEDULERS, CalibrationConfig
from ..comfy_adapter.calibration import calibrate
from ..comfy_adapter.sampling import SCHEDULERS

EVENT = "qsched.calibration"
WIDGET_TYPES = {int: "INT", float: "FLOAT", str: "STRING"}
LINKS = {
    "model": ("MODEL", {"tooltip": "The (quantized) diffusion model to calibrate for."}),
    "clip": ("CLIP", {"tooltip": "Text encoder for the calibration prompts (encoded once each)."}),
    "vae": ("VAE", {"tooltip": "Decodes each candidate's latents for scoring."}),
}
SCORER = ("QSCHED_SCORER", {"tooltip": "From Load JAQ Scorer (Q-Sched): what 'best' means for jaq/tc/iq (and "
                            "reference_clip, jaq_reference); reference_latent and reference_image need none."})
REFERENCE_MODEL = ("MODEL", {"tooltip": "optional: " + REFERENCE_MODEL_HELP})


def setting_inputs(names=None, overrides=None):
    """Widgets, one per CalibrationConfig setting shown on the node: {"required": ..., "optional": ...}. names:
    only these settings (another node sharing them); overrides: {name: {widget option: value}}."""
    inputs = {"required": {}, "optional": {}}
    for name, default, setting in CalibrationConfig.settings():
        if setting.node is None or (names is not None and name not in names):
            continue
        options = {"default": default, "tooltip": setting.help, **(overrides or {}).get(name, {})}
        choices = SCHEDULERS if setting.choices == HOST_SCHEDULERS else setting.choices
        if choices is not None:
            inputs[setting.node][name] = (list(choices), options)
            continue
        for key, value in (("min", setting.minimum), ("max", setting.maximum), ("step", setting.step)):
            if value is not None:
                options[key] = value
        if setting.multiline:
            options["multiline"] = True
        inputs[setting.node][name] = (WIDGET_TYPES[type(default)], options)
    return inputs


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
                   "specific to the quantized model. With the FP model it can instead calibrate against it (the "
                   "reference objectives) and refine free per-step coefficients and offsets after the search. "
                   "Resumes an interrupted run with the same settings.")

    @classmethod
    def INPUT_TYPES(cls):
        inputs = setting_inputs()
        return {"required": {**LINKS, **inputs["required"]},
                "optional": {"scorer": SCORER, **inputs["optional"], "reference_model": REFERENCE_MODEL},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    def run(self, model, clip, vae, scorer=None, reference_model=None, unique_id=None, **settings):
        config = CalibrationConfig(**settings)
        bar = comfy.utils.ProgressBar(config.planned_images(reference_model is not None), node_id=unique_id)
        send = _sender(unique_id)

        def should_stop():
            comfy.model_management.throw_exception_if_processing_interrupted()
            return False

        def on_candidate(schedule, indices, scores):
            finite = [s for s in scores if math.isfinite(s)]
            send({"point": {"c_x": list(schedule.c_x), "c_eps": list(schedule.c_eps),
                            "score": sum(finite) / len(finite) if len(finite) == len(scores) else None,
                            "prompts": len(indices)}})

        calibration = calibrate(config, model, clip, vae, scorer, reference_model=reference_model,
                                progress=bar.update_absolute, should_stop=should_stop, on_candidate=on_candidate)
        summary = calibration.summary()
        send({**summary, "trace": None, "finished": True})
        return {"ui": {"qsched_calibration": [summary]},
                "result": (calibration.search.best, plot_result(calibration.search), calibration.preset_name,
                           summary["summary"])}


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
