"""Install the pack into a fresh ComfyUI the way ComfyUI-Manager installs a Registry node, start it, check it.

1. unpack ComfyUI-<VERSION>.tar.gz (an unmodified release) into a new temporary folder;
2. build the Registry archive with comfy-cli (.ci/registry_archive.py) and extract it into
   custom_nodes/<node id>, as ComfyUI-Manager does for `comfy node install <node id>`;
3. `pip install -r custom_nodes/<node id>/requirements.txt` into ComfyUI's environment (--venv), then check that
   torch, torchvision and torchaudio are exactly the versions they were before;
4. start `main.py --cpu`, and require every node class of the pack in /object_info (from the pack's own
   custom_nodes/<node id>), its web extension and help pages served, and no import failure, traceback or
   pyproject warning for the pack in the log.

    usage: python3 .ci/install_test.py VERSION --venv VENV [--archives DIR] [--comfy-cli COMFY] [--keep]
VENV is ComfyUI's environment (e.g. what .ci/comfyui_env.sh made); COMFY the `comfy` executable of a comfy-cli
environment (.ci/comfy_cli.sh; default: env QSCHED_COMFY_CLI). Prints what it did and how long each part took;
exits 1 on any failure. Only the standard library.
"""
import argparse
import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import urllib.request
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
PYPROJECT_WARNING = "Unable to parse pyproject.toml"


class InstallFailed(RuntimeError):
    pass


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise InstallFailed(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                            f"{result.stderr[-3000:]}")
    return result.stdout


def versions(python, names):
    code = ("import importlib.metadata as m, json, sys\n"
            "def v(n):\n    try: return m.version(n)\n    except m.PackageNotFoundError: return None\n"
            "print(json.dumps({n: v(n) for n in sys.argv[1:]}))")
    return json.loads(run([python, "-c", code, *names]))


def pip_freeze(python):
    return set(run([python, "-m", "pip", "freeze", "--disable-pip-version-check"]).splitlines())


def node_classes(pack_dir):
    """Node ids of the installed pack's nodes/*.py: the node_id="..." of each V3 io.Schema(...)."""
    classes = []
    nodes_dir = os.path.join(pack_dir, "nodes")
    for name in sorted(os.listdir(nodes_dir)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(nodes_dir, name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Schema":
                classes += [k.value.value for k in node.keywords
                            if k.arg == "node_id" and isinstance(k.value, ast.Constant)]
    return classes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def tracebacks_about(log, marker):
    """Traceback blocks of the log that mention `marker` (a path of the pack)."""
    blocks, current = [], None
    for line in log.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            current = [line]
            blocks.append(current)
        elif current is not None:
            current.append(line)
            if line and not line.startswith((" ", "\t")):
                current = None  # the exception line ends the block
    return ["\n".join(b) for b in blocks if any(marker in line for line in b)]


def start_comfyui(python, comfyui, base, log_path, timeout):
    port = free_port()
    command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
               "--database-url", f"sqlite:///{os.path.join(base, 'comfyui.db')}"]
    log = open(log_path, "wb")
    process = subprocess.Popen(command, cwd=comfyui, stdout=log, stderr=subprocess.STDOUT,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise InstallFailed(f"ComfyUI exited with {process.returncode} while starting:\n{read_text(log_path)[-5000:]}")
        try:
            get(url + "/system_stats", timeout=2)
            return process, log, url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise InstallFailed(f"ComfyUI did not answer within {timeout} s:\n{read_text(log_path)[-5000:]}")


def read_text(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def install_test(version, venv, archives, comfy_cli, work, startup_timeout=300):
    python = os.path.join(venv, "bin", "python")
    times, report = {}, {"version": version, "venv": venv}
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        node_id = tomllib.load(f)["project"]["name"]

    t = time.monotonic()
    with tarfile.open(os.path.join(archives, f"ComfyUI-{version}.tar.gz")) as tar:
        tar.extractall(work, filter="data")
    comfyui = os.path.join(work, f"ComfyUI-{version}")
    if not os.path.isfile(os.path.join(comfyui, "main.py")):
        raise InstallFailed(f"no ComfyUI-{version}/main.py in the archive")
    times["unpack ComfyUI"] = time.monotonic() - t

    t = time.monotonic()
    cli_python = os.path.join(os.path.dirname(os.path.abspath(comfy_cli)), "python")
    archive = json.loads(run([cli_python, os.path.join(REPO, ".ci", "registry_archive.py"),
                              os.path.join(work, "node.zip")]).splitlines()[-1])
    pack = os.path.join(comfyui, "custom_nodes", node_id)
    os.makedirs(pack)
    with zipfile.ZipFile(archive["archive"]) as z:
        z.extractall(pack)
    report["archive_files"] = len(archive["files"])
    times["build and extract the registry archive"] = time.monotonic() - t

    t = time.monotonic()
    torch_before, freeze_before = versions(python, TORCH_FAMILY), pip_freeze(python)
    pip_log = run([python, "-m", "pip", "install", "--disable-pip-version-check", "-r",
                   os.path.join(pack, "requirements.txt")])
    torch_after, freeze_after = versions(python, TORCH_FAMILY), pip_freeze(python)
    times["pip install -r requirements.txt"] = time.monotonic() - t
    report["torch"] = torch_after
    report["pip_installed"] = sorted(freeze_after - freeze_before)
    report["pip_removed"] = sorted(freeze_before - freeze_after)
    report["pip_said"] = [line for line in pip_log.splitlines() if line.startswith("Successfully installed")]
    if torch_after != torch_before:
        raise InstallFailed(f"pip install -r requirements.txt changed the torch family: {torch_before} -> {torch_after}")

    t = time.monotonic()
    log_path = os.path.join(work, "comfyui.log")
    process, log_file, url = start_comfyui(python, comfyui, work, log_path, startup_timeout)
    times["start ComfyUI"] = time.monotonic() - t
    try:
        t = time.monotonic()
        info = json.loads(get(url + "/object_info", timeout=120)[1])
        expected = node_classes(pack)
        module = f"custom_nodes.{node_id}"
        missing = [n for n in expected if n not in info]
        wrong_module = [n for n in expected if n in info and info[n].get("python_module") != module]
        extra = sorted(n for n, i in info.items() if i.get("python_module") == module and n not in expected)
        extensions = json.loads(get(url + "/extensions")[1])
        docs = {n: get(f"{url}/extensions/{node_id}/docs/{n}.md")[0] for n in expected}
        times["check /object_info, /extensions, help pages"] = time.monotonic() - t
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log_file.close()
    log = read_text(log_path)
    report["nodes"] = len(expected)
    problems = []
    if len(expected) < 10:
        problems.append(f"only {len(expected)} node classes found in the installed pack: {expected}")
    if missing or wrong_module or extra:
        problems.append(f"/object_info: missing {missing}, not from {module}: {wrong_module}, unexpected {extra}")
    if f"/extensions/{node_id}/qsched.js" not in extensions:
        problems.append(f"the web extension is not served: {extensions}")
    if any(status != 200 for status in docs.values()):
        problems.append(f"help pages: {docs}")
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and node_id in line]
    tracebacks = tracebacks_about(log, os.path.join("custom_nodes", node_id))
    warnings = [line for line in log.splitlines() if PYPROJECT_WARNING in line]
    if failed or tracebacks or warnings:
        problems.append(f"log: {failed + tracebacks + warnings}")
    loaded = [line.strip() for line in log.splitlines() if line.strip().endswith(os.path.join("custom_nodes", node_id))]
    report["import_time_line"] = loaded[0] if loaded else None
    if not loaded:
        problems.append("the log's custom node import times do not list the pack")
    report["seconds"] = {k: round(v, 1) for k, v in times.items()}
    if problems:
        raise InstallFailed("\n".join(problems) + f"\n--- log tail ---\n{log[-5000:]}")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version")
    parser.add_argument("--venv", required=True, help="ComfyUI's environment (its bin/python runs ComfyUI and pip)")
    parser.add_argument("--archives", default=os.environ.get("COMFYUI_ARCHIVES",
                                                             os.path.join(REPO, "..", "shared", "comfyui")))
    parser.add_argument("--comfy-cli", default=os.environ.get("QSCHED_COMFY_CLI"),
                        help="the comfy executable of a comfy-cli environment")
    parser.add_argument("--keep", action="store_true", help="keep the temporary ComfyUI folder")
    args = parser.parse_args(argv)
    if not args.comfy_cli:
        parser.error("--comfy-cli or env QSCHED_COMFY_CLI: the comfy executable (bash .ci/comfy_cli.sh DIR makes one)")
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix=f"qsched-install-{args.version}-")
    try:
        report = install_test(args.version, os.path.abspath(args.venv), os.path.abspath(args.archives),
                              args.comfy_cli, work)
    except InstallFailed as error:
        print(f"install test on ComfyUI {args.version}: FAILED\n{error}\n(work folder: {work})", file=sys.stderr)
        return 1
    report["seconds"]["total"] = round(time.monotonic() - started, 1)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))
    print(f"install test on ComfyUI {args.version}: passed, {report['nodes']} nodes, "
          f"{report['seconds']['total']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
