"""Use the pack outside ComfyUI: `python -m qsched <command>` from the pack's folder.

Importing this module registers the pack folder as the package `comfyui_qsched` without running its
`__init__.py` (which is ComfyUI's entry point and imports ComfyUI), so the plain-torch parts
(samplers, quant, calibration, testbed) can be imported by tests, benchmarks and scripts.
"""
import importlib
import os
import sys
import types

PACKAGE = "comfyui_qsched"
ROOT = os.path.dirname(os.path.abspath(__file__))

if PACKAGE not in sys.modules:
    _package = types.ModuleType(PACKAGE)
    _package.__path__ = [ROOT]
    _package.__file__ = os.path.join(ROOT, "__init__.py")
    sys.modules[PACKAGE] = _package

# command -> ("module:function" inside the pack, one-line description); each function takes the remaining argv.
COMMANDS = {
    "demo": ("testbed.digits.demo:main",
             "quantize the shipped digits model, calibrate Q-Sched and compare FID/JAQ with FP32 (CPU)"),
    "calibrate": ("comfy_adapter.cli:main",
                  "calibrate a checkpoint headless, as the Q-Sched Calibrate node does (needs ComfyUI)"),
    "train-digits": ("testbed.digits.train:main", "retrain the digits testbed's shipped weights (GPU advised)"),
    "digits-experiment": ("testbed.digits.experiment:main",
                          "the digits testbed's quality table: FP32 vs quantized vs quantized + Q-Sched"),
    "digits-trust": ("testbed.digits.trust:main",
                     "how far the calibration's pick can be trusted: strategies, held-out verdicts, stability"),
    "digits-reference": ("testbed.digits.reference_experiment:main",
                         "calibration against the full-precision model on the digits testbed"),
    "digits-reference-report": ("testbed.digits.reference_report:main",
                                "Markdown tables of digits-reference result files"),
    "digits-quantizer": ("testbed.digits.quantizer_experiment:main",
                         "the digits testbed's quantizer table: group-wise, low-rank branch, closed-form correction"),
}
HELP_WORDS = ("-h", "--help", "help")


def usage():
    """The command list: one line per command with its description."""
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m qsched <command> [options]", "",
             "Q-Sched outside ComfyUI. Commands (python -m qsched <command> --help for their options):"]
    lines += [f"  {name:<{width}}  {description}" for name, (_, description) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] in HELP_WORDS:
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"python -m qsched: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)} "
              "(python -m qsched --help describes them)", file=sys.stderr)
        return 2
    module_name, function_name = COMMANDS[argv[0]][0].split(":")
    module = importlib.import_module(f"{PACKAGE}.{module_name}")
    return getattr(module, function_name)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
