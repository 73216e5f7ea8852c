import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import qsched  # noqa: E402,F401  registers the pack as the package `comfyui_qsched`
