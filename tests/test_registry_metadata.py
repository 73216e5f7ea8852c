"""The Comfy Registry metadata in pyproject.toml: the Registry's rules for the node id, the icon, the declared
ComfyUI and frontend ranges against what CI tests (.ci/run), read by comfy-cli (what goes to the Registry) and by
node-semver (what ComfyUI-Manager checks), and ComfyUI's own pyproject parser (comfy_config) reading them back.
`comfy node validate` runs in CI through .ci/comfy_cli.sh.
"""
import json
import os
import re
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ElementTree

import pytest

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from comfy_fixtures import REPO_ROOT, import_comfyui
from test_registry_archive import comfy_cli_reading

FRONTEND = "comfyui-frontend-package"
BROWSER_DIR = os.path.join(REPO_ROOT, "tests", "browser")
ICON_MAX = (800, 400)  # the Registry's largest icon, width x height


def pyproject():
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def ci_setting(name):
    """A shell assignment in .ci/run (what CI really tests): `name=value` or `name=(a b c)`."""
    with open(os.path.join(REPO_ROOT, ".ci", "run"), encoding="utf-8") as f:
        text = f.read()
    match = re.search(rf"^{name}=(\([^)]*\)|\S+)", text, re.MULTILINE)
    assert match, f".ci/run no longer sets {name}: update this test to where CI's tested versions are defined"
    return match.group(1).strip("()").split()


def frontend_range():
    [frontend] = [Requirement(d) for d in pyproject()["project"]["dependencies"] if Requirement(d).name == FRONTEND]
    return frontend.specifier


def tracked_files():
    out = subprocess.run(["git", "-C", REPO_ROOT, "ls-files"], capture_output=True, text=True, check=True).stdout
    return set(out.splitlines())


def test_node_id_follows_the_registry_rules():
    name = pyproject()["project"]["name"]
    assert len(name) < 100
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name), name
    assert name[0].isalpha(), "cannot start with a number or special character"
    assert not re.search(r"[._-]{2}", name), "no consecutive special characters"
    assert "comfy" not in name.lower(), "the Registry asks that the id not contain ComfyUI"


def test_project_fields_the_registry_requires():
    data = pyproject()
    project, comfy = data["project"], data["tool"]["comfy"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), "semantic version X.Y.Z"
    assert os.path.isfile(os.path.join(REPO_ROOT, project["license"]["file"]))
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", project["urls"]["Repository"])
    assert comfy["PublisherId"] and comfy["DisplayName"].strip()
    assert project["description"].strip()


def test_icon_is_a_shipped_file_at_its_registry_url():
    data = pyproject()
    owner_repo = data["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    icon = data["tool"]["comfy"]["Icon"]
    assert icon.startswith(prefix), f"Icon {icon!r} should be the repository's raw file URL {prefix}<path>"
    path = icon.removeprefix(prefix)
    assert path in tracked_files(), f"{path}: the icon must be a file committed to the repository"
    assert os.path.splitext(path)[1] in (".svg", ".png", ".jpg", ".gif")
    root = ElementTree.parse(os.path.join(REPO_ROOT, path)).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    width, height = float(root.get("width")), float(root.get("height"))
    assert 0 < width <= ICON_MAX[0] and 0 < height <= ICON_MAX[1]
    assert root.get("viewBox") and len(list(root)) > 1, "an icon with content"


def test_classifiers_name_supported_os_and_accelerators():
    classifiers = pyproject()["project"]["classifiers"]
    os_values = [c.removeprefix("Operating System :: ") for c in classifiers if c.startswith("Operating System :: ")]
    accelerators = [c.removeprefix("Environment :: ") for c in classifiers if c.startswith("Environment ::")]
    assert os_values and all(v.startswith(("Microsoft", "POSIX", "MacOS", "OS Independent")) for v in os_values)
    # The Registry's accelerator names; CUDA is the accelerator the benchmarks ran on (bench/results).
    assert accelerators and set(accelerators) <= {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc",
                                                   "NPU :: Huawei Ascend", "GPU :: Apple Metal"}
    assert "GPU :: NVIDIA CUDA" in accelerators


def test_declared_ranges_are_lower_bounds_only():
    """Lower bounds only: the oldest ComfyUI CI tests and the frontend it pins. An upper bound would shut out the
    releases users run after the newest one tested (the README names the tested releases)."""
    declared = pyproject()["tool"]["comfy"]["requires-comfyui"]
    oldest = min(Version(v) for v in ci_setting("versions"))
    assert declared == f">={oldest}", f"requires-comfyui {declared!r}: expected the lower bound >={oldest} only"
    assert [spec.operator for spec in frontend_range()] == [">="], str(frontend_range())


# Reads the ranges as ComfyUI-Manager does: node-semver's satisfies(), which throws on a range it cannot parse (the
# comma form among them). argv: the range, then versions; prints {version: satisfied}.
NODE_SEMVER = """
const semver = require("semver");
const [range, ...versions] = process.argv.slice(1);
new semver.Range(range);
console.log(JSON.stringify(Object.fromEntries(versions.map(v => [v, semver.satisfies(v, range)]))));
"""
# 0.39.1: the newest release users run (no tree here); the frontends CI runs the browser tests on.
COMFYUI_VERSIONS = {"0.3.64": True, "0.33.0": True, "0.39.1": True, "0.3.63": False}
FRONTEND_VERSIONS = {"1.27.10": True, "1.49.6": True, "1.58.1": True, "1.27.9": False}


def node_semver(range_, versions):
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs Node.js (`node` on PATH) for the semver package")
    if not os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "semver")):
        pytest.skip("needs the semver package: npm ci --prefix tests/browser")
    result = subprocess.run([node, "-e", NODE_SEMVER, range_, *versions], cwd=BROWSER_DIR, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"node-semver refuses {range_!r}: {result.stderr.strip().splitlines()[:5]}"
    return json.loads(result.stdout)


def test_node_semver_and_comfy_cli_accept_the_ranges():
    """comfy-cli keeps each range only if its validator accepts it (else it prints a warning and sends none to the
    Registry); what it keeps must parse in node-semver and admit every tested release and today's newest."""
    seen = comfy_cli_reading()
    assert seen["printed"] == "", seen["printed"]
    data = pyproject()
    assert seen["comfyui"] == data["tool"]["comfy"]["requires-comfyui"]
    assert seen["frontend"] == str(frontend_range())
    assert node_semver(seen["comfyui"], list(COMFYUI_VERSIONS)) == COMFYUI_VERSIONS
    assert node_semver(seen["frontend"], list(FRONTEND_VERSIONS)) == FRONTEND_VERSIONS


def test_node_semver_refuses_the_comma_form():
    """The check above can fail: node-semver throws on the form the metadata used to have."""
    with pytest.raises(AssertionError, match="Invalid comparator"):
        node_semver(">=0.3.64,<=0.33.0", ["0.33.0"])


def comfyui_release(comfyui):
    with open(os.path.join(comfyui, "comfyui_version.py"), encoding="utf-8") as f:
        return Version(re.search(r'__version__ = "([^"]+)"', f.read()).group(1))


def pinned_frontend(comfyui):
    with open(os.path.join(comfyui, "requirements.txt"), encoding="utf-8") as f:
        [pin] = [Requirement(line.strip()) for line in f if line.startswith(FRONTEND)]
    return Version(next(iter(pin.specifier)).version)


def test_this_comfyui_and_its_frontend_are_in_the_declared_ranges():
    comfyui = import_comfyui()
    release, frontend = comfyui_release(comfyui), pinned_frontend(comfyui)
    assert release in SpecifierSet(pyproject()["tool"]["comfy"]["requires-comfyui"])
    assert frontend in frontend_range(), f"ComfyUI {release} pins frontend {frontend}"
    tested = sorted(Version(v) for v in ci_setting("versions"))
    if release == tested[0]:
        [lower] = frontend_range()
        assert Version(lower.version) == frontend, "lower bound: the frontend of the oldest tested ComfyUI"


def test_comfyuis_own_parser_reads_the_metadata():
    """ComfyUI parses each pack's pyproject.toml when loading it (comfy_config, pydantic): it must read ours and
    get the same ranges, classifiers and includes."""
    import_comfyui()
    from comfy_config import config_parser
    data = pyproject()
    config = config_parser.extract_node_configuration(REPO_ROOT)
    project, comfy = config.project, config.tool_comfy
    assert project.name == data["project"]["name"] and project.version == data["project"]["version"]
    assert project.supported_comfyui_version == data["tool"]["comfy"]["requires-comfyui"]
    assert SpecifierSet(project.supported_comfyui_frontend_version) == frontend_range()
    assert project.supported_os == ["OS Independent"]
    assert project.supported_accelerators == ["GPU :: NVIDIA CUDA"]
    assert comfy.icon == data["tool"]["comfy"]["Icon"] and comfy.display_name == data["tool"]["comfy"]["DisplayName"]
    assert comfy.includes == data["tool"]["comfy"]["includes"]
    assert comfy.web is None, "[tool.comfy].web would register web/ a second time under the project name"
