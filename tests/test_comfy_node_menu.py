"""How the nodes present themselves in ComfyUI's menu and on the canvas: one category scheme (nodes/categories.py)
and a tooltip on every input and output, read from the node info ComfyUI sends the frontend."""
import pytest

from comfy_fixtures import import_comfyui


@pytest.fixture(scope="module")
def node_infos():
    import_comfyui()
    from comfyui_qsched.nodes import NODES
    return {node.GET_SCHEMA().node_id: node.GET_NODE_INFO_V1() for node in NODES}


def test_every_node_is_in_one_scheme_of_categories(node_infos):
    from comfyui_qsched.nodes import categories
    used = {info["category"] for info in node_infos.values()}
    assert used == set(categories.ALL), sorted(used)
    assert all(category.split("/")[0] == categories.ROOT for category in used)
    assert node_infos["QSchedKSampler"]["category"] == categories.SAMPLING
    assert node_infos["QSchedCalibrate"]["category"] == categories.CALIBRATION


def test_every_input_and_output_has_a_tooltip(node_infos):
    assert len(node_infos) == 13
    for node_id, info in node_infos.items():
        tooltips = info.get("output_tooltips") or []
        assert len(tooltips) == len(info["output"]) and all(t and t.strip() for t in tooltips), \
            f"{node_id}: outputs {info['output_name']} with tooltips {tooltips}"
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
