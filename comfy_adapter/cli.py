"""`python -m qsched calibrate ...`: the Q-Sched Calibrate node's calibration, headless, for long jobs.

Needs a ComfyUI checkout to load the checkpoint and sample (--comfyui or env COMFYUI_DIR); ComfyUI is imported
only when the command runs, and then only its library (never its server or the pack's nodes), so this module stays
importable without it. The calibration settings are the node's (calibration.run.CalibrationConfig), the loading
and quantizing the loader node's (loading.py). Resumes from the run log like the node.
"""
import argparse
import json
import os
import sys
import time

from ..calibration.heldout import split_pairs
from ..calibration.reference import ReferenceError
from ..calibration.run import REFERENCE_MODEL_HELP, SCHEDULERS, CalibrationConfig, ConfigError
from ..cli_args import Parser, existing_file, integer, number, output_file
from ..folders import PRESETS, RUNS
from ..quant.options import QUANT_OPTIONS
from ..safe_files import UnsafeFileError, read_regular_file
from ..scoring.options import OPTION as SCORER_OPTION

MAX_PROMPTS_FILE_BYTES = 16 << 20


def _quant_spec(text):
    """An argparse type: a quantization spec (W8A8, W4A8-g128, ...), written the way the pack names it; '' = none."""
    from ..quant.spec import QuantSpec, QuantSpecError
    if text == "":
        return ""
    try:
        return QuantSpec.parse(text).name
    except QuantSpecError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _argument_type(name, default, setting):
    if name == "quant":
        return _quant_spec
    if isinstance(default, int):
        return integer(setting.minimum, setting.maximum, setting.step or 1)
    if isinstance(default, float):
        return number(setting.minimum, setting.maximum)
    return str


def config_flags():
    """{CalibrationConfig field: (flag, argparse dest)} for the settings on the command line."""
    flags = {}
    for name, _, setting in CalibrationConfig.settings():
        if setting.cli is not None:
            flag = setting.flag(name)
            flags[name] = (flag, flag[2:].replace("-", "_"))
    return flags


def reference_model(text):
    """An argparse type: 'same' or an existing checkpoint file."""
    return text if text == "same" else existing_file(text)


DESCRIPTION = ("Calibrate Q-Sched coefficients for a checkpoint headless, as the Q-Sched Calibrate node does, and "
               "write the preset; needs a ComfyUI checkout (--comfyui or COMFYUI_DIR).")


def parser():
    p = Parser(prog="python -m qsched calibrate", description=DESCRIPTION)
    p.add_argument("--checkpoint", required=True, type=existing_file,
                   help="checkpoint .safetensors (model, CLIP and VAE)")
    p.add_argument("--scorer", default=None, type=existing_file, help="CLIP checkpoint for the JAQ scorer "
                   "(open_clip/HF/OpenAI file); needed unless the objective is reference_latent, reference_image or "
                   "reference_closed_form (auto with --reference-model)")
    k = SCORER_OPTION["k"]
    p.add_argument("--scorer-k", type=number(k.minimum, k.maximum), default=k.default,
                   help=f"JAQ = TC + k * IQ; {k.help} (default {k.default:g})")
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI checkout (or COMFYUI_DIR)")
    flags = config_flags()
    for name, default, setting in CalibrationConfig.settings():
        if name not in flags:
            continue
        choices = setting.choices if isinstance(setting.choices, tuple) else None
        help_text = setting.help + (" (ComfyUI's schedulers and the pack's few-step ones)"
                                    if setting.choices == SCHEDULERS else "")
        p.add_argument(flags[name][0], dest=flags[name][1], type=_argument_type(name, default, setting),
                       default=default, choices=choices, help=f"{help_text} (default {default!r})")
    for option in QUANT_OPTIONS[1:]:   # the quantization itself is --quant
        flag = "--quant-cache" if option.name == "cache" else "--" + option.name.replace("_", "-")
        p.add_argument(flag, default=option.default, choices=option.choices, help=f"with --quant: {option.help}")
    p.add_argument("--prompts-file", default=None, type=existing_file,
                   help="one prompt per line, at least 2 (default: the pack's 20 prompts)")
    p.add_argument("--preset-folder", default=None,
                   help=f"where the preset is written; default: <ComfyUI user dir>/{PRESETS}")
    p.add_argument("--runs-folder", default=None,
                   help=f"where the run log is kept for resuming; default: <ComfyUI user dir>/{RUNS}")
    p.add_argument("--plot", default=None, type=output_file, help="also save the plot as this PNG (its folder must "
                   "exist)")
    p.add_argument("--gpu", action="store_true", help="let ComfyUI use the GPU (default: CPU)")
    p.add_argument("--reference-model", default=None, type=reference_model,
                   help=f"{REFERENCE_MODEL_HELP}: 'same' = --checkpoint loaded "
                   "again without --quant, or another checkpoint")
    p.add_argument("--fp-control", action="store_true", help="with --quant: --reference-model same, for the FP "
                   "control of a jaq/tc/iq calibration (say whether the gain is quantization-specific); objective "
                   "auto is then jaq")
    return p


def config_of(args, prompts_text=""):
    """The CalibrationConfig of parsed arguments (the prompts come from --prompts-file)."""
    values = {name: getattr(args, dest) for name, (_, dest) in config_flags().items()}
    return CalibrationConfig(**values, prompts=prompts_text)


def _import_comfyui(path, gpu):
    if not path or not os.path.isfile(os.path.join(path, "main.py")):
        raise SystemExit(f"calibrate needs a ComfyUI checkout: pass --comfyui or set COMFYUI_DIR (got {path!r})")
    path = os.path.abspath(path)
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)   # first, or its top-level `nodes` would resolve to the pack's nodes/ folder
    import comfy.cli_args
    comfy.cli_args.args.cpu = not gpu


def read_prompts_text(prompts_file):
    """The prompts file's text ('' without a file: the pack's prompts); only a small regular file is read."""
    if not prompts_file:
        return ""
    try:
        return read_regular_file(prompts_file, MAX_PROMPTS_FILE_BYTES).decode("utf-8")
    except (OSError, UnsafeFileError, UnicodeDecodeError) as error:
        raise SystemExit(f"--prompts-file {prompts_file}: cannot be read: {error}") from None


def read_prompts(prompts_file, n_prompts):
    """The calibration prompts: the file's lines (or the pack's set), the first `n_prompts` of them if given."""
    try:
        return CalibrationConfig(prompts=read_prompts_text(prompts_file), n_prompts=n_prompts).prompt_list()
    except ConfigError as error:
        raise SystemExit(f"--n-prompts {n_prompts}: {error}") from None


def check_prompts(config, prompts_file):
    """Enough prompts for the search and its held-out check (ConfigError naming the file otherwise); a given file
    with no prompt is refused, not replaced by the pack's prompts."""
    try:
        if prompts_file and not config.prompts.strip():
            raise ValueError("no prompt in the file (one prompt per line, at least 2)")
        split_pairs(len(config.prompt_list()), config.holdout)
    except ValueError as error:
        raise ConfigError(f"--prompts-file {prompts_file}: {error}" if prompts_file else str(error)) from None


def reference_path(args):
    """The full-precision checkpoint to load (None: none): --reference-model, 'same' (and --fp-control) being
    --checkpoint without --quant."""
    path = args.reference_model or ("same" if args.fp_control else None)
    if path == "same" and not args.quant:
        raise SystemExit("--reference-model same / --fp-control compare the quantized model with the full-precision "
                         "one: give --quant too")
    return args.checkpoint if path == "same" else path


class Progress:
    """progress(done, total) of the calibration. On a terminal: one line updated in place, its total the first plan
    (a search that stops early ends below it; one that needs more raises it), ended with a newline by finish().
    Elsewhere (a log file) nothing: the summary printed at the end has the counts."""

    def __init__(self, started, stream=None):
        self.stream = stream or sys.stderr
        self.started, self.total, self.shown = started, None, False
        self.live = self.stream.isatty()

    def __call__(self, done, total):
        self.total = max(done, total if self.total is None else self.total)
        if self.live:
            self.stream.write(f"\r{done}/{self.total} images, {time.monotonic() - self.started:.0f} s\x1b[K")
            self.stream.flush()
            self.shown = True

    def finish(self):
        if self.shown:
            self.stream.write("\n")
            self.shown = False


def check_before_loading(config, args, reference):
    """What the node refuses before its first image, refused here before ComfyUI or a checkpoint loads, with the
    node's messages (calibration.run's checks): the objective's inputs, prompt count and budget, the folders; and
    the files the node's loaders check (the checkpoints, a scorer file)."""
    from ..quant.source import check_source
    from ..tensor_files import check_regular, check_safetensors
    from ..calibration.run import check_folder

    config.check_before_run(reference=reference is not None, scorer=args.scorer is not None)
    for folder, what in ((args.preset_folder, "preset folder"), (args.runs_folder, "run-log folder")):
        if folder:
            check_folder(folder, what)
    for path in dict.fromkeys(p for p in (args.checkpoint, reference) if p):
        check_source(path)
    if args.scorer and not os.path.isdir(args.scorer):
        check_regular(args.scorer, "scorer weights")
        if args.scorer.endswith(".safetensors"):
            check_safetensors(args.scorer, "scorer weights")


def main(argv):
    p = parser()
    args = p.parse_args(argv)
    reference = reference_path(args)
    try:
        config = config_of(args, read_prompts_text(args.prompts_file))
        if args.fp_control:   # the FP control of a reference-free calibration: auto is jaq there
            config = config.resolved(reference=False)
        check_prompts(config, args.prompts_file)
        check_before_loading(config, args, reference)
    except ValueError as error:   # ConfigError, TensorFileError, ...: the node's messages
        p.error(str(error))
    _import_comfyui(args.comfyui, args.gpu)
    from ..scoring import load_scorer
    from .calibration import calibrate
    from .loading import load_checkpoint

    model, clip, vae, quantized = load_checkpoint(args.checkpoint, config.quant or None, backend=args.backend,
                                                  layer_policy=args.layer_policy, cache=args.quant_cache,
                                                  attention=args.attention, cuda_graphs=args.cuda_graphs)
    if quantized:
        print(quantized, file=sys.stderr)
    reference_model = load_checkpoint(reference)[0] if reference is not None else None
    scorer = load_scorer(args.scorer, k=args.scorer_k) if args.scorer else None
    started = time.monotonic()
    progress = Progress(started)
    try:
        calibration = calibrate(config, model, clip, vae, scorer, reference_model=reference_model,
                                preset_folder=args.preset_folder, runs_folder=args.runs_folder,
                                model_name=os.path.splitext(os.path.basename(args.checkpoint))[0],
                                scorer_k=args.scorer_k if scorer is not None else None, progress=progress)
    except (ConfigError, ReferenceError) as error:
        raise SystemExit(f"calibrate: {error}") from None
    finally:
        progress.finish()
    summary = calibration.summary()
    print(summary["summary"], file=sys.stderr)
    if args.plot:
        from PIL import Image
        from ..calibration.plot import plot_result
        Image.fromarray((plot_result(calibration.search)[0].numpy() * 255).round().astype("uint8")).save(args.plot)
    print(json.dumps({**summary, "seconds": round(time.monotonic() - started, 1)}, indent=2))
    return 0
