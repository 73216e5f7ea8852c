"""The Comfy Registry archive, built by comfy-cli itself (.ci/registry_archive.py calls its zip_files, the code
behind `comfy node pack` and `comfy node publish`), and comfy-cli's reading of pyproject.toml.

The archive must hold what a user's install needs (the code, web/ with the help pages, the digits weights with
their recorded SHA-256, the example preset and workflows, the icon) and nothing local or development-only. It is
checked twice: packed from the git checkout (git-tracked files, as in CI and the publish action) and from a plain
copy with no git, where comfy-cli walks every file on disk and .comfyignore alone keeps planted local files out.

Needs comfy-cli: env QSCHED_COMFY_CLI = the `comfy` executable of a comfy-cli environment (.ci/comfy_cli.sh
makes one); skips naming it otherwise.
"""
import hashlib
import json
import os
import shutil
import subprocess
import tomllib
import zipfile

import pytest

from comfy_fixtures import REPO_ROOT

ARCHIVE_SCRIPT = os.path.join(REPO_ROOT, ".ci", "registry_archive.py")
WEIGHTS = "testbed/digits/weights/"
# Development-only parts of the repository: in git, not in the archive (the second training run's weights are
# for the testbed's experiments, not for users).
DEV_ONLY_DIRS = ("tests/", "bench/", ".ci/", "testbed/digits/weights_retrained/", "testbed/digits/weights_wide/")
DEV_ONLY_FILES = {"requirements-test.txt", ".gitignore", ".comfyignore"}
# Local files a developer's or user's checkout accumulates (caches, demo and test output, tool folders, own
# models and presets): planted for the no-git archive, where only .comfyignore keeps them out.
LOCAL_FILES = [
    "__pycache__/qsched.cpython-311.pyc", "nodes/__pycache__/sampling.cpython-311.pyc", "qsched_demo/digits_grid.png",
    "artifacts/browser/panels.png", "tests/browser/node_modules/playwright-core/index.js", ".devcarry/carry.json",
    ".pytest_cache/README.md", ".benchmarks/Linux-CPython/0001.json", "node_modules/left-pad/index.js",
    "comfyui.log", "presets/my-calibration.json", WEIGHTS + "retrained/teacher.safetensors", WEIGHTS + "train_cpu.log",
    "models/checkpoints/local_model.safetensors", "quant/cache.pyc", "node.zip",
]


def comfy_cli_python():
    comfy = os.environ.get("QSCHED_COMFY_CLI")
    if not comfy:
        pytest.skip("needs comfy-cli: bash .ci/comfy_cli.sh DIR, then QSCHED_COMFY_CLI=DIR/venv-comfycli/bin/comfy")
    python = os.path.join(os.path.dirname(os.path.abspath(comfy)), "python")
    check = subprocess.run([python, "-c", "import comfy_cli"], capture_output=True, text=True)
    assert check.returncode == 0, f"QSCHED_COMFY_CLI={comfy}: no comfy-cli beside it ({python}): {check.stderr}"
    return python


def tracked_files():
    out = subprocess.run(["git", "-C", REPO_ROOT, "ls-files"], capture_output=True, text=True, check=True).stdout
    return sorted(out.splitlines())


def pyproject():
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def shipped_files():
    """What the archive should hold, stated independently of .comfyignore and includes: the tracked files, less the
    development-only ones, and in the weights folder only the weights and their records (no training logs)."""
    shipped = set()
    for path in tracked_files():
        if path.startswith(DEV_ONLY_DIRS) or path in DEV_ONLY_FILES:
            continue
        if path.startswith(WEIGHTS) and path.endswith(".log"):
            continue
        shipped.add(path)
    return shipped


def build_archive(python, out, source=REPO_ROOT):
    result = subprocess.run([python, ARCHIVE_SCRIPT, out, "--source", source], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    python = comfy_cli_python()
    return build_archive(python, str(tmp_path_factory.mktemp("registry") / "node.zip"))


def test_archive_is_exactly_the_shipped_files(archive):
    files = set(archive["files"])
    assert files == shipped_files(), (f"missing: {sorted(shipped_files() - files)}\n"
                                      f"unexpected: {sorted(files - shipped_files())}")


def test_archive_holds_what_an_install_needs(archive):
    files = set(archive["files"])
    for path in ("__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md", "icon.svg",
                 "web/qsched.js", "nodes/__init__.py"):
        assert path in files, path
    web_docs = [f for f in files if f.startswith("web/docs/") and f.endswith(".md")]
    assert len(web_docs) >= 10, web_docs
    assert [f for f in files if f.startswith("presets/") and f.endswith(".json")], "no preset shipped"
    for workflow in (f for f in tracked_files() if f.startswith("example_workflows/") and f.endswith(".json")):
        assert workflow in files and workflow[:-5] + ".jpg" in files, workflow


def test_digits_weights_are_in_the_archive_as_recorded(archive):
    with open(os.path.join(REPO_ROOT, WEIGHTS, "MANIFEST.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    with zipfile.ZipFile(archive["archive"]) as packed:
        for name, sha256 in manifest.items():
            data = packed.read(f"{WEIGHTS}{name}.safetensors")
            assert hashlib.sha256(data).hexdigest() == sha256, name
            assert len(data) > 100_000, f"{name}: a pointer file, not the weights"


def test_includes_list_every_shipped_preset_and_weight(archive):
    # .comfyignore drops presets/ and the weights folder wholesale; includes must bring back each shipped one.
    wanted = {p for p in shipped_files() if p.startswith(("presets/", WEIGHTS))}
    assert set(archive["includes"]) == wanted


def test_archive_without_git_leaves_local_files_out(tmp_path):
    """Packed outside git (a downloaded copy), comfy-cli walks the folder: planted local files must stay out."""
    python = comfy_cli_python()
    source = tmp_path / "pack"
    for path in tracked_files():
        target = source / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(REPO_ROOT, path), target)
    for path in LOCAL_FILES:
        target = source / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"local file, not part of the pack\n")
    packed = build_archive(python, str(tmp_path / "node.zip"), str(source))
    assert any("Not in a git repository" in m for m in packed["messages"]), packed["messages"]
    files = set(packed["files"])
    assert not files & set(LOCAL_FILES), sorted(files & set(LOCAL_FILES))
    assert files == shipped_files(), (f"missing: {sorted(shipped_files() - files)}\n"
                                      f"unexpected: {sorted(files - shipped_files())}")


CLI_READ = """
import contextlib, io, json, os
from comfy_cli.registry import extract_node_configuration
out = io.StringIO()
with contextlib.redirect_stdout(out):
    config = extract_node_configuration(os.path.join(os.getcwd(), "pyproject.toml"))
p, c = config.project, config.tool_comfy
print(json.dumps({"printed": out.getvalue(), "name": p.name, "version": p.version, "dependencies": p.dependencies,
                  "os": p.supported_os, "accelerators": p.supported_accelerators,
                  "comfyui": p.supported_comfyui_version, "frontend": p.supported_comfyui_frontend_version,
                  "publisher": c.publisher_id, "display_name": c.display_name, "icon": c.icon,
                  "includes": c.includes}))
"""


def comfy_cli_reading():
    """pyproject.toml as comfy-cli reads it (its own parser and validators), with whatever it printed."""
    python = comfy_cli_python()
    result = subprocess.run([python, "-c", CLI_READ], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_comfy_cli_reads_the_metadata_without_warnings():
    """What `comfy node validate` and `comfy node publish` send to the Registry. comfy-cli drops a field it cannot
    parse with only a printed warning, so no warning may be printed."""
    seen = comfy_cli_reading()
    assert seen["printed"] == "", seen["printed"]
    data = pyproject()
    project, comfy = data["project"], data["tool"]["comfy"]
    assert seen["name"] == project["name"] and seen["version"] == project["version"]
    assert seen["comfyui"] == comfy["requires-comfyui"]
    frontend = [d for d in project["dependencies"] if d.startswith("comfyui-frontend-package")]
    assert seen["frontend"] == frontend[0].removeprefix("comfyui-frontend-package")
    # The Registry records the dependencies without the frontend: exactly requirements.txt.
    assert seen["dependencies"] == [d for d in project["dependencies"] if d not in frontend]
    assert seen["os"] == ["OS Independent"] and seen["accelerators"] == ["GPU :: NVIDIA CUDA"]
    assert (seen["publisher"], seen["display_name"], seen["icon"]) == \
        (comfy["PublisherId"], comfy["DisplayName"], comfy["Icon"])
    assert seen["includes"] == comfy["includes"]
