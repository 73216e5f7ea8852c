"""One dependency list, and every import of the pack declared in it.

pyproject.toml's [project].dependencies is the list; requirements.txt (what ComfyUI-Manager and `pip install -r`
install) is that list without the comfyui-frontend-package range, requirements-test.txt is the `test` extra.
Every third-party module the pack imports (outside tests/ and bench/) must come from a declared distribution,
found through the installed distributions' own file lists (importlib.metadata), and every declared distribution
must be imported somewhere.
"""
import ast
import functools
import importlib.metadata
import os
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from comfy_fixtures import REPO_ROOT

FRONTEND = "comfyui-frontend-package"
# The torch family is ComfyUI's: this pack never pins or replaces it.
TORCH_FAMILY = {"torch", "torchvision", "torchaudio"}
# Importable only inside ComfyUI (its own modules and its server's aiohttp); test_comfyui_provides_them checks
# each against a real checkout.
PROVIDED_BY_COMFYUI = {"comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "latent_preview",
                       "node_helpers", "nodes", "server", "aiohttp"}
NOT_PACK_CODE = {"tests", "bench", ".ci", ".git", "node_modules", "web", "__pycache__"}
# quant/ imports them when that backend is chosen (comfy-kitchen), or where they are installed (triton)
OPTIONAL_EXTRAS = {"bitsandbytes", "torchao", "comfy-kitchen", "triton"}


def pyproject():
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def requirement_lines(name):
    """Requirement lines of a requirements file (full-line comments and blank lines dropped)."""
    with open(os.path.join(REPO_ROOT, name), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


def normalized(requirements):
    return sorted(str(Requirement(r)) for r in requirements)


def declared(requirements):
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in requirements}


def pack_sources():
    for root, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = sorted(d for d in dirs if d not in NOT_PACK_CODE and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(root, name)


@functools.lru_cache(maxsize=None)
def installed_top_level_modules():
    return importlib.metadata.packages_distributions()


@functools.lru_cache(maxsize=None)
def imported_modules():
    """{top-level module: {"static" | "dynamic": [files]}}: `import x` / `from x import y` (absolute) anywhere
    in a file, and literal names given to import_module / __import__ / find_spec / the pack's `_import` helper."""
    found = {}

    def add(module, kind, path):
        found.setdefault(module.split(".")[0], {}).setdefault(kind, []).append(os.path.relpath(path, REPO_ROOT))

    for path in pack_sources():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, "static", path)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                add(node.module, "static", path)
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("import_module", "__import__", "find_spec", "_import"):
                    add(node.args[0].value, "dynamic", path)
    return found


def distributions_of(module, declared_names):
    """Canonical names of the distributions that install top-level `module`: from the installed distributions'
    file lists; for a module nothing installed provides (an optional backend), a declared distribution of the
    same name."""
    providers = installed_top_level_modules().get(module, [])
    if providers:
        return {canonicalize_name(d) for d in providers}
    return {canonicalize_name(module)} & set(declared_names)


def first_party_modules():
    own = {"comfyui_qsched", "qsched"}  # the bootstrap package name and qsched.py
    own |= {name for name in os.listdir(REPO_ROOT)
            if os.path.isdir(os.path.join(REPO_ROOT, name)) and os.path.isfile(os.path.join(REPO_ROOT, name, "__init__.py"))}
    own |= {name[:-3] for name in os.listdir(REPO_ROOT) if name.endswith(".py")}
    return own


def test_requirements_txt_is_the_dependency_list_without_the_frontend():
    dependencies = pyproject()["project"]["dependencies"]
    expected = [d for d in dependencies if canonicalize_name(Requirement(d).name) != FRONTEND]
    assert len(expected) == len(dependencies) - 1, "pyproject.toml must declare the comfyui-frontend-package range"
    lines = requirement_lines("requirements.txt")
    assert normalized(lines) == normalized(expected), (
        "requirements.txt must list exactly pyproject.toml's [project].dependencies without "
        f"{FRONTEND}:\n" + "\n".join(expected))
    assert len(set(lines)) == len(lines), "a requirement is listed twice"


def test_requirements_test_txt_is_the_test_extra():
    extra = pyproject()["project"]["optional-dependencies"]["test"]
    assert normalized(requirement_lines("requirements-test.txt")) == normalized(extra), \
        "requirements-test.txt must list exactly [project.optional-dependencies].test:\n" + "\n".join(extra)


def test_requirements_txt_installs_line_by_line_as_comfyui_manager_does():
    # ComfyUI-Manager runs `pip install <line>` for each line: no options, no inline comments, no URLs.
    for line in requirement_lines("requirements.txt"):
        assert not line.startswith("-") and " #" not in line and "://" not in line, line
        Requirement(line)


def test_torch_family_is_never_pinned():
    for requirements in (pyproject()["project"]["dependencies"], requirement_lines("requirements.txt"),
                         *pyproject()["project"]["optional-dependencies"].values()):
        for requirement in map(Requirement, requirements):
            if canonicalize_name(requirement.name) in TORCH_FAMILY:
                assert not requirement.specifier and not requirement.url, \
                    f"{requirement}: torch and its family come with ComfyUI and are never pinned here"


def test_frontend_range_uses_the_registry_syntax():
    [frontend] = [Requirement(d) for d in pyproject()["project"]["dependencies"]
                  if canonicalize_name(Requirement(d).name) == FRONTEND]
    operators = {spec.operator for spec in frontend.specifier}
    assert operators == {">="}, f"{frontend}: a lower bound only, the oldest frontend tested (no upper bound)"
    for spec in frontend.specifier:
        assert spec.version.count(".") == 2, f"{spec}: the Registry wants major.minor.patch"


def test_optional_backends_are_extras():
    extras = pyproject()["project"]["optional-dependencies"]
    for backend in OPTIONAL_EXTRAS:
        assert [canonicalize_name(Requirement(r).name) for r in extras.get(backend, [])] == [backend], \
            f"[project.optional-dependencies] needs an extra {backend!r} installing {backend}"


def test_every_import_of_the_pack_is_declared():
    project = pyproject()["project"]
    required = declared(project["dependencies"])
    optional = declared(r for extra, reqs in project["optional-dependencies"].items() if extra != "test" for r in reqs)
    own, stdlib = first_party_modules(), set(sys.stdlib_module_names)
    undeclared = []
    for module, kinds in sorted(imported_modules().items()):
        if module in stdlib or module in own or module in PROVIDED_BY_COMFYUI:
            continue
        allowed = set(required) | (set(optional) if set(kinds) == {"dynamic"} else set())
        providers = distributions_of(module, set(required) | set(optional))
        if not providers & allowed:
            where = sorted({p for files in kinds.values() for p in files})
            undeclared.append(f"{module} (from {providers or 'no installed distribution'}; imported in {where})")
    assert not undeclared, "imported but not declared in pyproject.toml [project].dependencies:\n" + \
        "\n".join(undeclared)


def test_every_declared_dependency_is_imported():
    project = pyproject()["project"]
    imported = imported_modules()
    names = set(declared(project["dependencies"])) | set(
        declared(r for extra, reqs in project["optional-dependencies"].items() if extra != "test" for r in reqs))
    providers = {m: distributions_of(m, names) for m in imported}
    unused = [n for n in sorted(names - {FRONTEND}) if not any(n in p for p in providers.values())]
    assert not unused, f"declared but never imported by the pack: {unused}"


def test_comfyui_provides_them():
    from comfy_fixtures import require_comfyui
    comfyui = require_comfyui()
    with open(os.path.join(comfyui, "requirements.txt"), encoding="utf-8") as f:
        lines = [line.split("#")[0].strip() for line in f]
    comfyui_requirements = {canonicalize_name(Requirement(line).name) for line in lines
                            if line and not line.startswith("-")}
    used = set(imported_modules()) & PROVIDED_BY_COMFYUI
    assert used, "the pack imports nothing from ComfyUI?"
    for module in used:
        in_checkout = os.path.isfile(os.path.join(comfyui, f"{module}.py")) or \
            os.path.isdir(os.path.join(comfyui, module))  # packages, some without __init__.py (namespace)
        assert in_checkout or canonicalize_name(module) in comfyui_requirements, \
            f"{module} is neither a module of {comfyui} nor in its requirements.txt"
    # What requirements.txt asks beyond ComfyUI's own requirements is what a user's install adds.
    ours = declared(requirement_lines("requirements.txt"))
    assert TORCH_FAMILY & set(ours) <= comfyui_requirements


@pytest.mark.parametrize("module, kind", [("tqdm", "static"), ("scipy", "static"), ("torchvision", "static"),
                                          ("bitsandbytes", "dynamic"), ("torchao", "dynamic")])
def test_the_walk_sees_the_imports_it_must_check(module, kind):
    # The imports that were undeclared before (issue 17) and the optional backends, seen by the walker.
    assert kind in imported_modules().get(module, {}), f"{module}: not found as a {kind} import"
