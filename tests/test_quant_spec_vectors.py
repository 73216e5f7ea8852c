"""QuantSpec.parse against the shared spec vectors (tests/quant_spec_vectors.json), which the web extension's parser
(web/lib/quantspec.js) is checked against too (tests/browser/quantspec.test.mjs, run by tests/test_browser_js.py)."""
import json
import os

import pytest

from comfyui_qsched.quant.spec import QuantSpec, QuantSpecError

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quant_spec_vectors.json")
with open(VECTORS, encoding="utf-8") as handle:
    CASES = json.load(handle)["cases"]


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{case['why']}" for i, case in enumerate(CASES)])
def test_python_parses_spec_text_as_the_vectors_say(case):
    if "error" in case:
        with pytest.raises(QuantSpecError) as raised:
            QuantSpec.parse(case["text"])
        assert str(raised.value) == case["error"]
        return
    spec = QuantSpec.parse(case["text"])
    assert (spec.name, spec.w_bits, spec.a_bits, spec.group_size, spec.act_granularity, spec.act_group_size,
            spec.rank) == (case["name"], case["w_bits"], case["a_bits"], case["group_size"], case["act_granularity"],
                           case.get("act_group_size"), case["rank"])


def test_the_vectors_cover_the_rank_option_both_ways():
    ranks = [case for case in CASES if "-r" in case["text"].lower()]
    assert any(case.get("rank") for case in ranks) and any("rank" in case.get("error", "") for case in ranks)
