"""Shipped weights: safetensors files with their config and training record in the metadata, checked against
`weights/MANIFEST.json` (sha256) so a missing, truncated or altered file gives a clear error naming `--retrain`."""
import hashlib
import json
import os

from ...atomic_files import write_atomic, write_text_atomic

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
MANIFEST = "MANIFEST.json"
RETRAIN_HINT = ("retrain them with `python -m qsched train-digits` (about 6 minutes on one H100 GPU; many hours on a CPU) "
                "or run `python -m qsched demo --retrain`")


class WeightsError(RuntimeError):
    """Shipped digits weights are missing, corrupt or do not match the network they are loaded into."""


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(folder):
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def save_weights(module, name, record, folder=WEIGHTS_DIR):
    """Write `<name>.safetensors` (atomically) with `module.config` and `record` in the metadata; update the manifest."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.safetensors")
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}
    metadata = {"config": json.dumps(module.config), "record": json.dumps(record)}
    write_atomic(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))
    manifest = _read_manifest(folder)
    manifest[name] = _sha256(path)
    write_text_atomic(os.path.join(folder, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True))
    return path


def load_weights(build, name, folder=WEIGHTS_DIR):
    """Build a network with `build(**config)` and load `<name>.safetensors` into it; returns (module, record)."""
    from safetensors import safe_open

    path = os.path.join(folder, f"{name}.safetensors")
    if not os.path.exists(path):
        raise WeightsError(f"digits testbed weights '{name}' not found at {path}; {RETRAIN_HINT}")
    expected = _read_manifest(folder).get(name)
    if expected is not None and _sha256(path) != expected:
        raise WeightsError(f"digits testbed weights '{name}' at {path} are corrupt (sha256 differs from "
                           f"{MANIFEST}); {RETRAIN_HINT}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        module = build(**json.loads(metadata["config"]))
        module.load_state_dict(tensors)
    except Exception as error:  # any unreadable file or mismatched state dict is the same problem for the user
        raise WeightsError(f"digits testbed weights '{name}' at {path} cannot be loaded ({error}); "
                           f"{RETRAIN_HINT}") from error
    return module.eval(), json.loads(metadata.get("record", "{}"))
