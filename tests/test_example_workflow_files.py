"""The example workflows' model entries and node metadata, as current frontends read them: every model file a
loader widget names has a `properties.models` entry (name, https url ending in that name, directory of that loader
and, where known, the SHA-256), one model is named the same way in every workflow, and every node of ComfyUI or of
this pack carries `cnr_id` / `ver` (whether the links and widgets still fit the nodes:
tests/test_comfy_saved_workflows.py)."""
import glob
import json
import os
import re
import tomllib
from urllib.parse import urlparse

import pytest

from comfy_fixtures import REPO_ROOT, VIRTUAL_NODE_TYPES

EXAMPLES = sorted(glob.glob(os.path.join(REPO_ROOT, "example_workflows", "*.json")))
# Loader node -> (the widget naming the model file, the model folder it lists).
LOADERS = {"CheckpointLoaderSimple": (0, "checkpoints"), "QSchedQuantizedCheckpointLoader": (0, "checkpoints"),
           "QSchedScorerLoader": (0, "qsched_scorers")}
# ComfyUI release the core nodes' `ver` names: the oldest the pack supports (pyproject requires-comfyui).
CORE_VERSION = "0.3.64"


def workflows():
    for path in EXAMPLES:
        with open(path, encoding="utf-8") as f:
            yield os.path.basename(path), json.load(f)


def pack_version():
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        data = tomllib.load(f)
    return data["project"]["name"], data["project"]["version"]


def test_every_loaded_model_has_a_downloadable_entry():
    checked = 0
    for name, workflow in workflows():
        for node in workflow["nodes"]:
            if node["type"] not in LOADERS:
                continue
            widget, directory = LOADERS[node["type"]]
            file_name = node["widgets_values"][widget]
            entries = node.get("properties", {}).get("models", [])
            assert [e["name"] for e in entries] == [file_name], f"{name}: {node['type']} loads {file_name!r}"
            [entry] = entries
            url = urlparse(entry["url"])
            assert url.scheme == "https" and url.netloc, f"{name}: {entry}"
            assert os.path.basename(url.path) == file_name, f"{name}: the download would be saved under another name"
            assert entry["directory"] == directory, f"{name}: {file_name} belongs in models/{directory}"
            if "hash" in entry or "hash_type" in entry:
                assert entry["hash_type"] == "SHA256" and re.fullmatch(r"[0-9a-f]{64}", entry["hash"]), entry
            checked += 1
    assert checked >= 5


def test_one_model_is_named_one_way_in_every_workflow():
    entries = {}
    for name, workflow in workflows():
        for node in workflow["nodes"]:
            for entry in node.get("properties", {}).get("models", []):
                entries.setdefault(entry["name"], []).append((name, json.dumps(entry, sort_keys=True)))
    for file_name, seen in entries.items():
        assert len({entry for _, entry in seen}) == 1, f"{file_name} is described differently: {seen}"
    stems = {}
    for file_name in entries:
        stems.setdefault(re.sub(r"[^a-z0-9]", "", file_name.lower().rsplit(".", 1)[0]), set()).add(file_name)
    assert all(len(names) == 1 for names in stems.values()), stems


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_every_node_names_its_pack_and_version(path):
    with open(path, encoding="utf-8") as f:
        workflow = json.load(f)
    ours, version = pack_version()
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODE_TYPES:
            continue
        properties = node.get("properties", {})
        expected = (ours, version) if node["type"].startswith("QSched") else ("comfy-core", CORE_VERSION)
        assert (properties.get("cnr_id"), properties.get("ver")) == expected, (node["id"], node["type"])
