import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import qsched  # noqa: E402,F401  registers the pack as the package `comfyui_qsched`

import pytest  # noqa: E402

# CI sets this: there every test must really run (a skipped ComfyUI or browser test is not a pass), so a skip
# is reported as a failure that keeps its reason.
NO_SKIPS = os.environ.get("QSCHED_NO_SKIPS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped where QSCHED_NO_SKIPS=1 (CI): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if NO_SKIPS and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"module skipped where QSCHED_NO_SKIPS=1 (CI): {reason}"

# GPU-only cases (tests/gpu/) are collected only for the GPU run, never skipped on the CPU.
collect_ignore = [] if os.environ.get("QSCHED_TEST_DEVICE") == "cuda" else ["gpu"]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """`python -m qsched calibrate`'s required files (the command checks while parsing that they exist)."""
    folder = tmp_path_factory.mktemp("cli_files")
    for name in ("c.safetensors", "s.safetensors"):
        (folder / name).write_bytes(b"")
    return ["--checkpoint", str(folder / "c.safetensors"), "--scorer", str(folder / "s.safetensors")]
