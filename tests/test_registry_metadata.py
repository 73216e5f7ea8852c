"""The Comfy Registry metadata in pyproject.toml: the Registry's rules for the node id, the icon, the declared
ComfyUI and frontend ranges against what CI tests (.ci/run), and ComfyUI's own pyproject parser (comfy_config)
reading them back. comfy-cli's reading is checked in tests/test_registry_archive.py; `comfy node validate`
runs in CI through .ci/comfy_cli.sh.
"""
import os
import re
import subprocess
import tomllib
import xml.etree.ElementTree as ElementTree

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from comfy_fixtures import REPO_ROOT, import_comfyui

FRONTEND = "comfyui-frontend-package"
# The Registry's version syntax (comfy-cli's validate_version): [operator]major.minor.patch[-suffix], comma-separated.
REGISTRY_VERSION = re.compile(r"^(==|>=|<=|!=|~=|>|<|<>|=)?\s*\d+\.\d+\.\d+(-[A-Za-z0-9]+)?$")
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


def bounds(specifier):
    by_operator = {spec.operator: Version(spec.version) for spec in specifier}
    return by_operator[">="], by_operator["<="]


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


def test_comfyui_range_is_the_releases_ci_tests():
    declared = pyproject()["tool"]["comfy"]["requires-comfyui"]
    assert all(REGISTRY_VERSION.match(part.strip()) for part in declared.split(",")), declared
    tested = sorted(Version(v) for v in ci_setting("versions"))
    assert bounds(SpecifierSet(declared)) == (tested[0], tested[-1]), \
        f"requires-comfyui {declared!r} should span exactly the releases .ci/run tests: {tested}"


def test_frontend_range_is_the_frontends_ci_tests():
    low, high = bounds(frontend_range())
    assert high == Version(ci_setting("newest_frontend")[0]), "upper bound: the newest frontend .ci/run tests"
    for part in str(frontend_range()).split(","):
        assert REGISTRY_VERSION.match(part), part


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
        assert bounds(frontend_range())[0] == frontend, "lower bound: the frontend of the oldest tested ComfyUI"


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
