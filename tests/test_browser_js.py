"""Unit tests of the web extension's pure JavaScript (web/lib/), run with Node's built-in test runner."""
import os
import shutil
import subprocess

import pytest

BROWSER_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser")


def test_web_lib_units():
    node = shutil.which("node")
    if node is None:
        pytest.skip("web/ unit tests need Node.js (`node` on PATH)")
    result = subprocess.run([node, "--test", "curves.test.mjs"], cwd=BROWSER_TESTS, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout
