"""Load Quantized Diffusion Model, calibrated: the quantized diffusion-model loader with calibrated rounding (GPTQ)
in place of round-to-nearest. The FP model first samples a few calibration prompts through ComfyUI (encoded by the
CLIP given), in passes that each record the input moments of as many layers as fit the memory budget; each layer's
codes are then rounded against them (quant/gptq.py), same format and speed as the plain loader. Running the passes
is comfy_adapter/calibrated_loading.py; with the cache on, a reload with the same settings skips them."""
import folder_paths

from ..comfy_adapter.calibrated_loading import (BATCH_SETTING, DEFAULT_BUDGET_GIB, DEFAULT_PROMPT_COUNT,
                                                SAMPLING_SETTINGS, CalibrationSampling)
from ..comfy_adapter.loading import load_diffusion_model
from ..comfy_adapter.v3_api import io
from ..quant import gptq
from ..quant.smoothing import DEFAULT_MODE as SMOOTHING_DEFAULT, MODE_HELP as SMOOTHING_HELP, MODES as SMOOTHING_MODES
from . import categories
from .calibrate import setting_inputs
from .loaders import MODEL_TOOLTIP, SUMMARY_TOOLTIP, check_layer_policy, log, quant_inputs

BUDGET_HELP = ("GiB of input moments held at once (one [in, in] matrix per layer: float32 on a GPU, float64 on the "
               "CPU). The layers are split into calibration passes that fit it; each pass samples the prompts again. "
               "FLUX.1's DiT needs about 63 GiB in all (at least 16 passes at 4 GiB, by arithmetic).")


class QSchedCalibratedDiffusionModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QSchedCalibratedDiffusionModelLoader",
            display_name="Load Quantized Diffusion Model, calibrated (Q-Sched)", category=categories.MODELS,
            description="Quantized diffusion-model loader whose 4/8-bit codes are rounded by GPTQ against what the FP "
                        "model's layers see on a few calibration prompts, instead of to nearest: same file, format "
                        "and speed, closer to the FP model's output. Costs some sampling passes at load; cache on "
                        "makes reloads as fast as the plain loader.",
            inputs=[io.Combo.Input("unet_name", options=folder_paths.get_filename_list("diffusion_models"),
                                   tooltip="Your FP16/BF16 diffusion model file (models/diffusion_models); it stays "
                                           "unchanged on disk."),
                    io.Clip.Input("clip", tooltip="The text encoder for this model: encodes the calibration prompts."),
                    *quant_inputs(),
                    *setting_inputs(names=(*SAMPLING_SETTINGS, BATCH_SETTING), overrides={
                        "n_prompts": {"default": DEFAULT_PROMPT_COUNT},
                        "prompts": {"tooltip": "Calibration prompts, one per line; empty = the pack's calibration "
                                               "prompts (the first n_prompts are used)."}}),
                    io.Float.Input("moments_budget_gib", default=DEFAULT_BUDGET_GIB, min=0.001, max=1024.0, step=0.5,
                                   tooltip=BUDGET_HELP),
                    io.Combo.Input("smoothing", options=list(SMOOTHING_MODES), default=SMOOTHING_DEFAULT,
                                   tooltip=SMOOTHING_HELP, optional=True)],
            outputs=[io.Model.Output(display_name="model", tooltip=MODEL_TOOLTIP),
                     io.String.Output(display_name="summary", tooltip=SUMMARY_TOOLTIP + " Calibration settings and "
                                      "passes.")],
        )

    @classmethod
    def validate_inputs(cls, layer_policy):
        return check_layer_policy(layer_policy)

    @classmethod
    def execute(cls, unet_name, clip, quantization, backend, layer_policy, cache, moments_budget_gib,
                attention="sdpa", cuda_graphs="off", smoothing=SMOOTHING_DEFAULT, **settings):
        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        sampling = CalibrationSampling(clip, moments_budget_gib, smoothing, **settings)
        patcher, summary = load_diffusion_model(path, quantization, backend=backend, layer_policy=layer_policy,
                                                cache=cache, attention=attention, cuda_graphs=cuda_graphs,
                                                calibration=sampling)
        summary += f"; calibration: {sampling.describe()}, {sampling.passes} passes"
        if sampling.undersampled:
            summary += (f"; {len(sampling.undersampled)} layers rounded to nearest (under {gptq.MIN_ROWS_PER_COLUMN:g} "
                        "calibration rows per input column)")
        log.info(summary)
        return io.NodeOutput(patcher, summary)


NODES = [QSchedCalibratedDiffusionModelLoader]
