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

# command -> "module:function" inside the pack; each function takes the remaining argv.
COMMANDS = {
    "demo": "testbed.digits.demo:main",
    "train-digits": "testbed.digits.train:main",
    "digits-experiment": "testbed.digits.experiment:main",
    "digits-trust": "testbed.digits.trust:main",
    "digits-reference": "testbed.digits.reference_experiment:main",
    "digits-reference-report": "testbed.digits.reference_report:main",
    "calibrate": "comfy_adapter.cli:main",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        names = ", ".join(sorted(COMMANDS)) or "(none yet)"
        print(f"usage: python -m qsched <command> [options]; commands: {names}", file=sys.stderr)
        return 2
    module_name, function_name = COMMANDS[argv[0]].split(":")
    module = importlib.import_module(f"{PACKAGE}.{module_name}")
    return getattr(module, function_name)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
