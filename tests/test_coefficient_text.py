"""The node's grammar for coefficient text against the shared vectors (tests/coefficient_text_vectors.json),
which the panel's parser (web/lib/curves.js) is checked against too (tests/browser/curves.test.mjs).

Needs COMFYUI_DIR: the grammar is the node's own (nodes/sampling.py imports ComfyUI).
"""
import json
import os

import pytest

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "coefficient_text_vectors.json")
with open(VECTORS, encoding="utf-8") as f:
    CASES = json.load(f)["cases"]


@pytest.fixture(scope="module")
def sampling(comfyui_dir):
    from comfyui_qsched.nodes import sampling
    return sampling


@pytest.mark.parametrize("case", CASES, ids=[c["why"] for c in CASES])
def test_node_reads_coefficient_text_as_the_vectors_say(sampling, case):
    from comfyui_qsched.samplers import ScheduleError
    args = (case["steps"], "list")
    lists = {"c_x_list": case["c_x_list"], "c_eps_list": case["c_eps_list"]}
    checked = sampling.QSchedCoefficients.validate_inputs(*args, **lists)
    if "error" in case:
        with pytest.raises(ScheduleError) as error:
            sampling.build_schedule(*args, **lists)
        assert str(error.value) == case["error"]
        assert checked == case["error"]  # what the queued prompt is refused with
    else:
        schedule = sampling.build_schedule(*args, **lists)
        assert list(schedule.c_x) == case["c_x"] and list(schedule.c_eps) == case["c_eps"]
        assert checked is True
