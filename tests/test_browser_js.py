"""Unit tests of the web extension's pure JavaScript (web/lib/), run with Node's built-in test runner."""
import json
import os
import re
import shutil
import subprocess

import pytest

BROWSER_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser")


def test_web_lib_units():
    node = shutil.which("node")
    if node is None:
        pytest.skip("web/ unit tests need Node.js (`node` on PATH)")
    result = subprocess.run([node, "--test", "curves.test.mjs", "quantspec.test.mjs"], cwd=BROWSER_TESTS,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
    # One test per shared coefficient-text case (tests/coefficient_text_vectors.json) ran, besides the others.
    with open(os.path.join(os.path.dirname(BROWSER_TESTS), "coefficient_text_vectors.json"), encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    ran = re.findall(r"^ok \d+ - coefficient text as the node reads it: ", result.stdout, re.MULTILINE)
    assert len(ran) == len(cases), (len(ran), len(cases))
    # ... and one per shared quantization-spec case (tests/quant_spec_vectors.json).
    with open(os.path.join(os.path.dirname(BROWSER_TESTS), "quant_spec_vectors.json"), encoding="utf-8") as f:
        spec_cases = json.load(f)["cases"]
    ran = re.findall(r"^ok \d+ - quantization spec as the loader reads it: ", result.stdout, re.MULTILINE)
    assert len(ran) == len(spec_cases), (len(ran), len(spec_cases))
