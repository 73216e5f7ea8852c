"""Shared ComfyUI test harness: tiny random-initialised models, a headless server, workflow helpers.

Every ComfyUI integration test of the pack uses this module; tests that need ComfyUI skip with a reason
unless env COMFYUI_DIR points at a ComfyUI checkout.

Pytest fixtures (this module is a pytest plugin, `-p comfy_fixtures` in pyproject.toml: tests just name them as
arguments; do not import them, one session-wide instance each):
- `comfyui_dir`: the checkout path, put on sys.path so `import comfy...` works in-process.
- `comfy_models`: a `ModelFiles` with tiny model files in ComfyUI's folder layout, built once per session:
    checkpoints/qsched_tiny_sd15.safetensors  SD1.5 layout (UNet 320 channels, CLIP-L, TAESD embedded)
    unet/qsched_tiny_sd3.safetensors          SD3 MMDiT depth 2 (a flow model; load with UNETLoader)
    clip/qsched_tiny_clip_l.safetensors       CLIP-L text encoder (CLIPLoader type "sd3" for the flow model)
    vae_approx/taesd*_{encoder,decoder}       TAESD for SD1.5 ("taesd") and SD3 ("taesd3") for VAELoader
  Other test modules add their own folders/files at import time with `register_model_folder(name, builder)`;
  the builder is called once per session as `builder(folder_path)` and the folder is passed to ComfyUI under
  that name (e.g. `qsched_scorers`).
- `comfy_server`: one headless ComfyUI (`main.py --cpu`) per session, with this pack linked under a temp
  custom_nodes folder; see `ComfyServer` for `object_info()`, `queue_prompt()`, `wait_for()`,
  `output_images()`, `interrupt()`. It serves the frontend ComfyUI pins, or the one whose `static` folder env
  QSCHED_FRONTEND_ROOT names (`--front-end-root`).

Plain helpers: `require_comfyui()`, `import_comfyui()`, `ui_workflow_to_prompt(ui_workflow, object_info)`,
`load_example_workflow(name)`.
"""
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
import torch

__all__ = ["require_comfyui", "import_comfyui", "register_model_folder", "ModelFiles", "ComfyServer",
           "PromptRejected", "PromptFailed", "ui_workflow_to_prompt", "load_example_workflow", "combo_options",
           "input_specs", "is_widget", "takes_control_after_generate", "VIRTUAL_NODE_TYPES",
           "comfyui_dir", "comfy_models", "comfy_server", "SD15_CHECKPOINT", "SD3_UNET", "CLIP_L", "TEST_DEVICE",
           "rounding_tolerance"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_DIR_NAME = "ComfyUI-QSched"

# The in-process tests run on the CPU; QSCHED_TEST_DEVICE=cuda lets ComfyUI pick the GPU instead (the GPU run of
# the integration cases; the server tests always start `main.py --cpu`).
TEST_DEVICE = os.environ.get("QSCHED_TEST_DEVICE", "cpu")


def rounding_tolerance(dtype):
    """Relative tolerance between two computations of the same math that round differently (a batch and its items
    alone, another kernel) in ComfyUI's compute dtype: 1e-5 in float32 (the CPU runs), the dtype's epsilon in 16 bit
    (the GPU run, where ComfyUI loads these models in float16)."""
    return max(1e-5, torch.finfo(dtype).eps)


SD15_CHECKPOINT = "qsched_tiny_sd15.safetensors"
SD3_UNET = "qsched_tiny_sd3.safetensors"
CLIP_L = "qsched_tiny_clip_l.safetensors"

# The smallest SD1.5 UNet that ComfyUI's detection still maps to SD15: model_channels 320 and context_dim 768
# are what SD15 matches on; depth, levels and the middle block are free.
SD15_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1], "channel_mult": [1],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
    "use_temporal_resblock": False, "use_temporal_attention": False, "num_heads": 8, "num_head_channels": -1,
}

# SD3 MMDiT is fully shape-detected; hidden size = 64 * depth. Context/pooled widths are what the SD3 text
# encoder produces (4096 padded context, 768 + 1280 pooled) so CLIPLoader(type="sd3") on CLIP-L feeds it.
SD3_MMDIT_CONFIG = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
    "adm_in_channels": 2048, "num_patches": 64 * 64, "pos_embed_max_size": 64, "pos_embed_scaling_factor": None,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
    "x_block_self_attn_layers": [],
}


# --------------------------------------------------------------------------------------------------------
# Locating and importing ComfyUI

def require_comfyui():
    """Path of the ComfyUI checkout named by env COMFYUI_DIR, or skip the test."""
    path = os.environ.get("COMFYUI_DIR")
    if not path:
        pytest.skip("ComfyUI integration test: set COMFYUI_DIR to a ComfyUI checkout")
    if not os.path.isfile(os.path.join(path, "main.py")) or not os.path.isdir(os.path.join(path, "comfy")):
        pytest.fail(f"COMFYUI_DIR={path!r} is not a ComfyUI checkout (no main.py / comfy/)")
    return os.path.abspath(path)


def import_comfyui():
    """Make ComfyUI importable in this process (`import comfy.sample`, `import nodes`); returns its path.

    ComfyUI goes first on sys.path because its top-level `nodes` module would otherwise resolve to this
    repository's `nodes/` folder (the repo root is on sys.path for the `comfyui_qsched` bootstrap).
    """
    path = require_comfyui()
    if sys.path[0] != path:
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    import comfy.cli_args
    comfy.cli_args.args.cpu = TEST_DEVICE == "cpu"
    return path


# --------------------------------------------------------------------------------------------------------
# Tiny random-initialised models (ComfyUI's own classes, so the key layouts are the real ones)

def init_parameters(module, seed, conv_init="fan_in"):
    """Initialise every parameter and float buffer of `module` (ComfyUI's ops skip init: memory is garbage).

    Biases 0, 1-D weights (norms) 1, other weights N(0, 1/fan_in) ("fan_in") or kaiming-normal for ReLU nets
    ("kaiming"; std 0.02 makes TAESD decode to black), float buffers and embeddings N(0, 0.02).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not tensor.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                tensor.zero_()
            elif tensor.ndim == 1 and leaf == "weight":
                tensor.fill_(1.0)
            elif tensor.ndim >= 2 and leaf == "weight" and "embedding" not in name:
                fan_in = tensor[0].numel()
                gain = math.sqrt(2.0) if conv_init == "kaiming" else 1.0
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (gain / math.sqrt(fan_in)))
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
    return module


def _normalise_output(model, last_weight, *inputs, **kwargs):
    """Rescale the last layer so the random model predicts unit-scale noise (not a latent of std ~100)."""
    with torch.no_grad():
        out = model(*inputs, **kwargs)
        last_weight.div_(out.std().clamp(min=1e-6))


def _save(state_dict, path, dtype=None):
    from safetensors.torch import save_file
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in state_dict.items()}
    tmp = path + ".tmp"
    save_file(tensors, tmp)
    os.replace(tmp, path)


def _clip_l_state_dict(seed):
    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip
    with open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")) as f:
        config = json.load(f)
    model = comfy.clip_model.CLIPTextModel(config, torch.float32, "cpu", comfy.ops.disable_weight_init)
    return init_parameters(model, seed).state_dict()


def _taesd(latent_channels, seed):
    import comfy.taesd.taesd
    return init_parameters(comfy.taesd.taesd.TAESD(latent_channels=latent_channels), seed, conv_init="kaiming")


def build_sd15_checkpoint(path, seed=0):
    """SD1.5-layout checkpoint: tiny UNet, CLIP-L (fixed config, fp16 on disk), TAESD as the VAE."""
    import_comfyui()
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    unet = UNetModel(**SD15_UNET_CONFIG, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    init_parameters(unet, seed)
    _normalise_output(unet, unet.out[-1].weight, torch.randn(1, 4, 8, 8), torch.tensor([500.0]),
                      context=torch.randn(1, 77, 768))
    state = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    clip = _clip_l_state_dict(seed + 1)
    clip.pop("text_projection.weight")  # SD1.5 checkpoints carry no projection
    state.update({f"cond_stage_model.transformer.{k}": v.half() for k, v in clip.items()})
    taesd = _taesd(4, seed + 2).state_dict()
    taesd.update(vae_scale=torch.tensor(0.18215), vae_shift=torch.tensor(0.0))
    state.update({f"first_stage_model.{k}": v for k, v in taesd.items()})
    _save(state, path)
    return path


def build_sd3_unet(path, seed=0):
    """SD3 MMDiT diffusion-model file (depth 2, hidden 128), for UNETLoader."""
    import_comfyui()
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    model = MMDiT(**SD3_MMDIT_CONFIG, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    _save(init_parameters(model, seed).state_dict(), path)
    return path


def build_clip_l(path, seed=0):
    """Stand-alone CLIP-L text encoder file (keys `text_model.*`, `text_projection.weight`), for CLIPLoader."""
    import_comfyui()
    _save(_clip_l_state_dict(seed), path, dtype=torch.float16)
    return path


def build_taesd_pair(folder, name, latent_channels, seed=0):
    """`<name>_encoder.safetensors` + `<name>_decoder.safetensors` as VAELoader expects in vae_approx/."""
    import_comfyui()
    taesd = _taesd(latent_channels, seed)
    _save(taesd.taesd_encoder.state_dict(), os.path.join(folder, f"{name}_encoder.safetensors"))
    _save(taesd.taesd_decoder.state_dict(), os.path.join(folder, f"{name}_decoder.safetensors"))


def _build_core_models(folders):
    build_sd15_checkpoint(os.path.join(folders["checkpoints"], SD15_CHECKPOINT), seed=0)
    build_sd3_unet(os.path.join(folders["unet"], SD3_UNET), seed=10)
    build_clip_l(os.path.join(folders["clip"], CLIP_L), seed=20)
    build_taesd_pair(folders["vae_approx"], "taesd", 4, seed=30)
    build_taesd_pair(folders["vae_approx"], "taesd3", 16, seed=40)


def torch_threads_for_tests():
    """Torch threads for ComfyUI in tests (env QSCHED_TEST_THREADS, default 1): the tiny models are far faster
    on one thread than on oversubscribed cores (measured 0.3 s vs 2-3.5 s per UNet call on a loaded 2-core box)."""
    return max(1, int(os.environ.get("QSCHED_TEST_THREADS", "1")))


CORE_MODEL_FOLDERS = ("checkpoints", "unet", "diffusion_models", "clip", "text_encoders", "vae", "vae_approx",
                      "loras", "embeddings")
_EXTRA_MODEL_FOLDERS = {}


def register_model_folder(name, builder=None):
    """Add a model folder `name` (e.g. "qsched_scorers") that ComfyUI sees; call at test-module import time.

    `builder(folder_path)` (optional) writes that folder's files once per session. Several modules may
    register the same name; each builder runs once.
    """
    builders = _EXTRA_MODEL_FOLDERS.setdefault(name, [])
    if builder is not None and builder not in builders:
        builders.append(builder)


class ModelFiles:
    """The session's model folders: `.root`, `.folders` {folder name: path}, `.path(folder, file)`."""

    def __init__(self, root):
        self.root = root
        self.folders = {}
        self._built = set()

    def folder(self, name):
        path = self.folders.get(name)
        if path is None:
            path = self.folders[name] = os.path.join(self.root, name)
            os.makedirs(path, exist_ok=True)
        return path

    def path(self, folder, filename):
        return os.path.join(self.folder(folder), filename)

    def build(self):
        """Create the core models once, then any registered extra folders not built yet."""
        for name in CORE_MODEL_FOLDERS:
            self.folder(name)
        if "core" not in self._built:
            _build_core_models(self.folders)
            self._built.add("core")
        for name, builders in _EXTRA_MODEL_FOLDERS.items():
            for builder in builders:
                if (name, builder) not in self._built:
                    builder(self.folder(name))
                    self._built.add((name, builder))
        return self

    def extra_model_paths_yaml(self, path, custom_nodes=None):
        lines = ["qsched_tests:", "    is_default: true"]
        lines += [f"    {name}: {folder}" for name, folder in sorted(self.folders.items())]
        if custom_nodes:
            lines.append(f"    custom_nodes: {custom_nodes}")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path


# --------------------------------------------------------------------------------------------------------
# Headless server

class PromptRejected(RuntimeError):
    """POST /prompt answered 400 (validation failed); `.node_errors` as ComfyUI reports them."""

    def __init__(self, body):
        self.body = body
        self.error = body.get("error", {})
        self.node_errors = body.get("node_errors", {})
        super().__init__(f"prompt rejected: {json.dumps(body)[:2000]}")


class PromptFailed(RuntimeError):
    """The prompt ran and failed or was interrupted; `.history` is its /history entry, `.kind` the message
    type ("execution_error" or "execution_interrupted"), `.details` that message's data (node_id,
    node_type, exception_message, ...)."""

    def __init__(self, history):
        self.history = history
        messages = history.get("status", {}).get("messages", [])
        self.kind, self.details = next(((k, d) for k, d in messages
                                        if k in ("execution_error", "execution_interrupted")), ("unknown", {}))
        summary = {k: self.details.get(k) for k in ("node_id", "node_type", "exception_type", "exception_message")}
        super().__init__(f"prompt {self.kind}: {summary}")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A `python main.py --cpu` subprocess on a free local port, everything under one temp base dir."""

    def __init__(self, comfyui_dir, models, base_dir, startup_timeout=180):
        self.comfyui_dir = comfyui_dir
        self.models = models
        self.base_dir = base_dir
        self.output_dir = os.path.join(base_dir, "output")
        self.user_dir = os.path.join(base_dir, "user")
        self.log_path = os.path.join(base_dir, "comfyui.log")
        self.custom_nodes_dir = os.path.join(base_dir, "custom_nodes")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.startup_timeout = startup_timeout
        self.process = None
        self._log_file = None

    # -- lifecycle
    def start(self):
        for path in (self.output_dir, self.user_dir, self.custom_nodes_dir,
                     os.path.join(self.base_dir, "input"), os.path.join(self.base_dir, "temp")):
            os.makedirs(path, exist_ok=True)
        link = os.path.join(self.custom_nodes_dir, PACK_DIR_NAME)
        if not os.path.lexists(link):
            os.symlink(REPO_ROOT, link)
        yaml_path = self.models.extra_model_paths_yaml(os.path.join(self.base_dir, "extra_model_paths.yaml"))
        command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--disable-auto-launch", "--base-directory", self.base_dir,
                   "--output-directory", self.output_dir, "--user-directory", self.user_dir,
                   "--input-directory", os.path.join(self.base_dir, "input"),
                   "--temp-directory", os.path.join(self.base_dir, "temp"),
                   "--extra-model-paths-config", yaml_path,
                   "--database-url", f"sqlite:///{os.path.join(self.base_dir, 'comfyui.db')}"]
        frontend_root = os.environ.get("QSCHED_FRONTEND_ROOT")  # another frontend than the pinned one
        if frontend_root:
            command += ["--front-end-root", frontend_root]
        self._log_file = open(self.log_path, "wb")
        threads = str(torch_threads_for_tests())
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        self.process = subprocess.Popen(command, cwd=self.comfyui_dir, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, env=env)
        self._wait_ready()
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} during startup:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        else:
            raise RuntimeError(f"ComfyUI not ready after {self.startup_timeout}s:\n{self.log_tail()}")
        failed = [line for line in self.log().splitlines() if "IMPORT FAILED" in line and PACK_DIR_NAME in line]
        if failed:
            raise RuntimeError(f"ComfyUI could not import the pack: {failed}\n{self.log_tail()}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, chars=6000):
        return self.log()[-chars:]

    # -- HTTP
    def _request(self, method, path, payload=None, timeout=30):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def get(self, path, timeout=30):
        return self._request("GET", path, timeout=timeout)

    def post(self, path, payload=None, timeout=30):
        return self._request("POST", path, payload if payload is not None else {}, timeout=timeout)

    # -- API
    def object_info(self, node_class=None):
        """GET /object_info (all nodes) or /object_info/<class> (that node's entry)."""
        if node_class is None:
            return self.get("/object_info", timeout=120)
        return self.get(f"/object_info/{urllib.parse.quote(node_class)}")[node_class]

    def queue_prompt(self, graph):
        """POST an API-format graph; returns the prompt id, raises PromptRejected on validation errors."""
        try:
            answer = self.post("/prompt", {"prompt": graph, "client_id": self.client_id})
        except urllib.error.HTTPError as error:
            body = error.read().decode("utf-8", "replace")
            try:
                raise PromptRejected(json.loads(body)) from None
            except json.JSONDecodeError:
                raise RuntimeError(f"POST /prompt failed with {error.code}: {body}") from None
        if answer.get("node_errors"):
            raise PromptRejected(answer)
        return answer["prompt_id"]

    def history(self, prompt_id):
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def wait_for(self, prompt_id, timeout=120):
        """Poll /history until the prompt finished; returns its entry, raises PromptFailed if it failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") != "success":
                    raise PromptFailed(entry)
                return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout}s; queue: {self.get('/queue')}")

    def run(self, graph, timeout=120):
        """queue_prompt + wait_for."""
        return self.wait_for(self.queue_prompt(graph), timeout)

    def wait_until_running(self, prompt_id, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = self.get("/queue").get("queue_running", [])
            if any(item[1] == prompt_id for item in running):
                return
            if self.history(prompt_id) is not None:
                raise RuntimeError(f"prompt {prompt_id} finished before it was seen running")
            time.sleep(0.05)
        raise TimeoutError(f"prompt {prompt_id} did not start within {timeout}s")

    def interrupt(self):
        self.post("/interrupt")

    def output_images(self, history, node_id=None):
        """Paths of the images a finished prompt saved (type "output"), in node-id order, or one node's."""
        paths = []
        node_ids = sorted(history.get("outputs", {}), key=str) if node_id is None else [str(node_id)]
        for node_id in node_ids:
            if node_id not in history.get("outputs", {}):
                continue
            for image in history["outputs"][node_id].get("images", []):
                if image.get("type") == "output":
                    paths.append(os.path.join(self.output_dir, image.get("subfolder", ""), image["filename"]))
        return paths


# --------------------------------------------------------------------------------------------------------
# UI workflow -> API prompt

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL_NODE_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def input_specs(info):
    """(name, spec) of a node's inputs in the order the frontend builds widgets."""
    specs = []
    for section in ("required", "optional"):
        inputs = info.get("input", {}).get(section, {})
        order = info.get("input_order", {}).get(section, list(inputs))
        specs += [(name, inputs[name]) for name in order if name in inputs]
    return specs


def is_widget(spec):
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def combo_options(spec):
    """The choices of a combo input from its /object_info spec, None for any other input: V1 nodes give them as
    the type ([choices, {...}]), V3 nodes as ["COMBO", {"options": choices, ...}]."""
    kind = spec[0]
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list(spec[1].get("options", [])) if len(spec) > 1 else []
    return None


def takes_control_after_generate(name, spec):
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in options:
        return bool(options["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def ui_workflow_to_prompt(ui_workflow, object_info):
    """Convert a UI-format workflow (example_workflows/*.json, what the frontend saves) to the API format.

    Widget values are matched to the node's widget inputs in /object_info order (one extra value after
    seed-like INT widgets: the frontend's control_after_generate). Linked inputs take the link instead;
    Reroute chains, bypassed nodes (mode 4: pass-through) and PrimitiveNode values are resolved; notes and
    muted nodes (mode 2) are dropped, with the inputs they fed.
    """
    nodes = {node["id"]: node for node in ui_workflow["nodes"]}
    links = {link[0]: link for link in ui_workflow.get("links", [])}  # id, from, from_slot, to, to_slot, type

    def source(link_id):
        """The (node, slot) a link really comes from, following Reroutes and bypassed nodes (their input of the
        output's type); PrimitiveNode -> ("value", v); None when it comes from a muted node."""
        _, from_id, from_slot = links[link_id][:3]
        node = nodes[from_id]
        if node.get("mode", 0) == 2:
            return None
        if node["type"] == "Reroute" or node.get("mode", 0) == 4:
            wanted = None if node["type"] == "Reroute" else node["outputs"][from_slot]["type"]
            upstream = next((entry.get("link") for entry in node.get("inputs", [])
                             if entry.get("link") is not None and wanted in (None, entry.get("type"))), None)
            return source(upstream) if upstream is not None else None
        if node["type"] == "PrimitiveNode":
            return ("value", node["widgets_values"][0])
        return (str(from_id), from_slot)

    prompt = {}
    for node_id, node in nodes.items():
        node_type = node["type"]
        if node_type in VIRTUAL_NODE_TYPES or node.get("mode", 0) in (2, 4):
            continue
        if node_type not in object_info:
            raise KeyError(f"node {node_id}: type {node_type!r} is not in /object_info (pack not loaded?)")
        linked = {entry["name"]: entry["link"] for entry in node.get("inputs", []) if entry.get("link") is not None}
        values = node.get("widgets_values") or []
        inputs = {}
        position = 0
        for name, spec in input_specs(object_info[node_type]):
            if is_widget(spec):
                if isinstance(values, dict):
                    if name in values:
                        inputs[name] = values[name]
                elif position < len(values):
                    inputs[name] = values[position]
                    position += 1
                    if takes_control_after_generate(name, spec):
                        position += 1
            if name in linked:
                origin = source(linked[name])
                if origin is None:
                    inputs.pop(name, None)
                elif origin[0] == "value":
                    inputs[name] = origin[1]
                else:
                    inputs[name] = [origin[0], origin[1]]
        prompt[str(node_id)] = {"class_type": node_type, "inputs": inputs}
    return prompt


def load_example_workflow(name):
    """A workflow from this repository's example_workflows/ (name with or without .json)."""
    filename = name if name.endswith(".json") else name + ".json"
    with open(os.path.join(REPO_ROOT, "example_workflows", filename)) as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------------------
# Pytest plugin (loaded by pyproject's `-p comfy_fixtures`) and fixtures

@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path, parent):
    """Collect the repository root as a plain directory, not a Package: its __init__.py is ComfyUI's entry
    point (it imports the node modules, hence ComfyUI), and pytest would import it before every test."""
    if str(path) == REPO_ROOT:
        return pytest.Dir.from_parent(parent, path=path)
    return None


@pytest.fixture(scope="session", name="comfyui_dir")
def _comfyui_dir_fixture():
    path = import_comfyui()
    torch.set_num_threads(torch_threads_for_tests())
    return path


@pytest.fixture(scope="session", name="comfy_models")
def _comfy_models_fixture(comfyui_dir):
    # ~600 MB of random weights: removed at the end of the session rather than kept by pytest's tmp_path.
    root = tempfile.mkdtemp(prefix="qsched_models_")
    try:
        yield ModelFiles(root).build()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", name="comfy_server")
def _comfy_server_fixture(comfyui_dir, comfy_models):
    # A short base path: ComfyUI's sqlite URL and sockets do not like very long temp paths.
    base_dir = tempfile.mkdtemp(prefix="qsched_comfy_")
    server = ComfyServer(comfyui_dir, comfy_models.build(), base_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        link = os.path.join(server.custom_nodes_dir, PACK_DIR_NAME)
        if os.path.islink(link):
            os.unlink(link)  # never let the cleanup walk into the repository
        shutil.rmtree(base_dir, ignore_errors=True)


# Test modules written before this was a plugin import the fixture names; a fixture object imported into a
# module would be registered again for that module (its own "session" instance: one more server and model
# set per module). These placeholders keep such imports working while pytest uses the plugin's fixtures.
comfyui_dir = comfy_models = comfy_server = "pytest fixture from the comfy_fixtures plugin: request it by name"
