"""Q-Sched Calibrate: search c_x / c_eps for a (quantized) MODEL by generating the calibration prompts with
each candidate schedule and scoring them (JAQ), or, with the full-precision model connected, fit the closed-form
per-step correction to it (the default objective, auto, picks between the two); writes a preset and returns the
best schedule, a plot and the held-out summary. The calibration itself is comfy_adapter.calibration.calibrate
(shared with the command line); its settings and their bounds come from calibration.run.CalibrationConfig. Progress goes to ComfyUI's bar
through the V3 progress API (images done / planned) and to the web panel; an interrupt stops at the next batch
and the run log (<user dir>/qsched_runs) lets a rerun with the same settings skip what was done."""
import math

import comfy.model_management

from ..calibration.plot import plot_result
from ..calibration.run import REFERENCE_MODEL_HELP, SCHEDULERS as HOST_SCHEDULERS, CalibrationConfig
from ..comfy_adapter.calibration import calibrate
from ..comfy_adapter.comfy_compat import report_progress
from ..comfy_adapter.sampling import SCHEDULERS
from ..comfy_adapter.v3_api import io
from . import categories
from .io_types import Schedule, Scorer

EVENT = "qsched.calibration"
NUMBER_WIDGETS = {int: io.Int, float: io.Float}
DEFAULTS = CalibrationConfig()


def link_inputs():
    return [io.Model.Input("model", tooltip="The (quantized) diffusion model to calibrate for."),
            io.Clip.Input("clip", tooltip="Text encoder for the calibration prompts (encoded once each)."),
            io.Vae.Input("vae", tooltip="Decodes each candidate's latents for scoring.")]


def setting_inputs(names=None, overrides=None):
    """Widgets, one per CalibrationConfig setting shown on the node, in the config's order. names: only these
    settings (another node sharing them); overrides: {name: {widget option: value}}."""
    inputs = []
    for name, default, setting in CalibrationConfig.settings():
        if setting.node is None or (names is not None and name not in names):
            continue
        options = {"default": default, "tooltip": setting.help, "optional": setting.node == "optional",
                   **(overrides or {}).get(name, {})}
        choices = SCHEDULERS if setting.choices == HOST_SCHEDULERS else setting.choices
        if choices is not None:
            inputs.append(io.Combo.Input(name, options=list(choices), **options))
        elif isinstance(default, str):
            inputs.append(io.String.Input(name, multiline=setting.multiline, **options))
        else:
            inputs.append(NUMBER_WIDGETS[type(default)].Input(name, min=setting.minimum, max=setting.maximum,
                                                              step=setting.step, **options))
    return inputs


def check_settings(**given):
    """validate_inputs of CalibrationConfig settings: True or the first problem, naming the setting. ComfyUI leaves
    the inputs named there to this check (the config checks their bounds too); with any of them linked (None) the
    run checks them."""
    if None in given.values():
        return True
    try:
        CalibrationConfig(**given).image_budget()   # the prompt count, and a budget too small for the check
    except ValueError as error:  # ConfigError, or the preset name's PresetError
        return str(error)
    return True


class QSchedCalibrate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QSchedCalibrate", display_name="Q-Sched Calibrate", category=categories.CALIBRATION,
            description=("Find Q-Sched coefficients for this model and save them as a preset. Without the "
                         "full-precision model: every candidate schedule generates the calibration prompts (prompt i "
                         "with seed + i) and is scored by the scorer (JAQ); the best is never worse than identity on "
                         "these prompts. With the full-precision model connected (reference_model), the default "
                         "objective (auto) fits the closed-form per-step correction to it instead: no search, no "
                         "scorer, one pass over the prompts, deterministic; the other reference objectives search "
                         "against it and can refine per-step coefficients and offsets, and jaq/tc/iq add the FP "
                         "control (is the gain specific to the quantized model?). A quarter of the prompt/seed pairs "
                         "is kept out: the summary says whether the winner beats identity there (yes / no / not "
                         "significant, with a confidence interval) and which objective ran. Resumes an interrupted "
                         "search with the same settings."),
            inputs=[*link_inputs(),
                    Scorer.Input("scorer", optional=True, tooltip="From Load JAQ Scorer (Q-Sched): what 'best' means "
                                 "for jaq/tc/iq (and reference_clip, jaq_reference); reference_latent, "
                                 "reference_image and reference_closed_form (auto with reference_model) need none."),
                    *setting_inputs(),
                    io.Model.Input("reference_model", optional=True, tooltip="optional: " + REFERENCE_MODEL_HELP)],
            outputs=[Schedule.Output(display_name="schedule", tooltip="The winning per-step coefficients, for the "
                                     "Q-Sched KSampler or Sampler (also saved as the preset)."),
                     io.Image.Output(display_name="plot", tooltip="The searched score surface and the winner."),
                     io.String.Output(display_name="preset_name", tooltip="Name of the preset written, for Load "
                                      "Q-Sched Preset."),
                     io.String.Output(display_name="summary", tooltip="Scores, held-out verdict and images used, "
                                      "as text.")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, prompts, c_min=DEFAULTS.c_min, c_max=DEFAULTS.c_max, n_prompts=DEFAULTS.n_prompts,
                        quant=DEFAULTS.quant, preset_name=DEFAULTS.preset_name, budget_images=DEFAULTS.budget_images,
                        holdout=DEFAULTS.holdout, objective=DEFAULTS.objective):
        # What the widgets cannot check on their own, when the prompt is queued: the range's ends against each
        # other, the quantization and preset names, the prompt count, a budget that cannot cover the held-out check
        # (the FP control's share is checked when it runs, with the links known).
        return check_settings(prompts=prompts, c_min=c_min, c_max=c_max, n_prompts=n_prompts, quant=quant,
                              preset_name=preset_name, budget_images=budget_images, holdout=holdout,
                              objective=objective)

    @classmethod
    def execute(cls, model, clip, vae, scorer=None, reference_model=None, **settings):
        config = CalibrationConfig(**settings).resolved(reference_model is not None)   # auto: closed form or jaq
        unique_id = cls.hidden.unique_id if cls.hidden is not None else None
        send = _sender(unique_id)

        def progress(done, planned):
            report_progress(done, planned, unique_id)

        def should_stop():
            comfy.model_management.throw_exception_if_processing_interrupted()
            return False

        def on_candidate(schedule, indices, scores):
            finite = [s for s in scores if math.isfinite(s)]
            send({"point": {"c_x": list(schedule.c_x), "c_eps": list(schedule.c_eps),
                            "score": sum(finite) / len(finite) if len(finite) == len(scores) else None,
                            "prompts": len(indices)}})

        planned = config.planned_images(reference_model is not None)
        send({"done": 0, "budget": planned})   # the panel shows the total before the first image
        progress(0, planned)
        calibration = calibrate(config, model, clip, vae, scorer, reference_model=reference_model,
                                progress=progress, should_stop=should_stop, on_candidate=on_candidate)
        summary = calibration.summary()
        send({**summary, "trace": None, "finished": True})
        return io.NodeOutput(calibration.search.best, plot_result(calibration.search), calibration.preset_name,
                             summary["summary"], ui={"qsched_calibration": [summary]})


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


NODES = [QSchedCalibrate]
