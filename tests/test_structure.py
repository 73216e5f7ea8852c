"""The pack's structure, read off its imports with `ast` (every import, at module level or inside a function):
the plain-torch floors import neither ComfyUI nor the pack's ComfyUI layers above them, no modules import each
other in a circle, and calibration/ stays at most a quarter of the pack's code."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "comfyui_qsched"
SKIP_DIRS = {"tests", ".ci", "web", "node_modules", "__pycache__", ".git", "docs", "example_workflows", "presets"}
PLAIN_TORCH = ("samplers", "quant", "scoring", "calibration", "testbed")
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "latent_preview",
                   "node_helpers", "nodes", "server", "execution", "main"}
PACK_COMFY_LAYERS = ("comfy_adapter", "nodes")


def pack_modules():
    """{dotted module name inside the pack: file path} for every .py file outside tests/ and the like."""
    modules = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


def imports_of(module, path, modules):
    """(pack modules imported, outside top-level modules imported) by one module. Inside the pack imports are
    relative (or through the package name comfyui_qsched, as bench/ does); any other absolute import is outside
    (`import nodes` is ComfyUI's top-level module, not the pack's nodes/)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    parts = module.split(".") if module else []
    package = parts if os.path.basename(path) == "__init__.py" else parts[:-1]
    inside, outside = set(), set()

    def add_inside(dotted, names):
        submodules = [".".join(filter(None, (dotted, name))) for name in names]
        submodules = [name for name in submodules if name in modules]
        inside.update(submodules)
        if len(submodules) < len(names) or not names:   # names defined in the module (or package) itself
            target = dotted
            while target not in modules:
                target = target.rpartition(".")[0]
            inside.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add_inside(alias.name[len(PACKAGE) + 1:], [])
                else:
                    outside.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level:
                base = package[:len(package) - node.level + 1]
                add_inside(".".join(base + ([node.module] if node.module else [])), names)
            elif node.module.split(".")[0] == PACKAGE:
                add_inside(node.module[len(PACKAGE) + 1:], names)
            else:
                outside.add(node.module.split(".")[0])
    inside.discard(module)
    return inside, outside


def import_graph():
    modules = pack_modules()
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def circles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node][0]:
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_plain_torch_floors_import_no_comfyui_and_nothing_above_them():
    graph = import_graph()
    upward = []
    for module, (inside, outside) in sorted(graph.items()):
        if module.split(".")[0] not in PLAIN_TORCH:
            continue
        upward += [f"{module} -> {name}" for name in sorted(outside & COMFYUI_MODULES)]
        upward += [f"{module} -> {name}" for name in sorted(inside) if name.split(".")[0] in PACK_COMFY_LAYERS]
    assert upward == []


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_the_graph_reader_sees_arrows_and_circles():
    # the checks above pass only if the reader finds what is there: known arrows, and a planted circle
    graph = import_graph()
    assert "calibration.search.space" in graph["calibration.search.racing"][0]
    assert "samplers.noise" in graph["samplers.batch"][0] and "comfy" in graph["comfy_adapter.sampling"][1]
    assert "calibration.run" in graph["comfy_adapter.cli"][0]
    planted = {**graph, "samplers.noise": (graph["samplers.noise"][0] | {"samplers.batch"}, set())}
    assert ["samplers.batch", "samplers.noise"] in circles(planted)


def code_lines(predicate):
    total = 0
    for module, path in pack_modules().items():
        if predicate(module):
            with open(path, encoding="utf-8") as handle:
                total += sum(1 for _ in handle)
    return total


def test_calibration_is_at_most_a_quarter_of_the_code():
    calibration = code_lines(lambda module: module.split(".")[0] == "calibration")
    everything = code_lines(lambda module: True)
    assert calibration <= everything / 4, f"calibration/ has {calibration} of {everything} lines"
