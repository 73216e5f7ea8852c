"""JAQ Score and Load JAQ Scorer inside real ComfyUI (needs COMFYUI_DIR): the example workflow on the harness's
tiny SD1.5 checkpoint with a tiny random CLIP scorer in models/qsched_scorers, plus the nodes in-process."""
import json
import os

import pytest
import torch

from comfy_fixtures import (SD15_CHECKPOINT, TEST_DEVICE, PromptFailed, combo_options, load_example_workflow,
                            register_model_folder, ui_workflow_to_prompt)
from test_metrics_fixtures import comfy_images, save_open_clip, tiny_vit_clip

TINY_SCORER = "qsched_tiny_scorer_clip.safetensors"


def _build_scorers(folder):
    save_open_clip(tiny_vit_clip(seed=21), os.path.join(folder, TINY_SCORER))


register_model_folder("qsched_scorers", _build_scorers)


def _example_graph(server, prompt_text=None):
    graph = ui_workflow_to_prompt(load_example_workflow("jaq_score_batch"), server.object_info())
    by_type = {node["class_type"]: node for node in graph.values()}
    by_type["CheckpointLoaderSimple"]["inputs"]["ckpt_name"] = SD15_CHECKPOINT  # the example names a real SD1.5 file
    by_type["QSchedScorerLoader"]["inputs"]["checkpoint"] = TINY_SCORER
    by_type["EmptyLatentImage"]["inputs"].update(width=64, height=64, batch_size=2)
    by_type["KSampler"]["inputs"].update(steps=1, seed=1)
    if prompt_text is not None:
        by_type["QSchedJAQScore"]["inputs"]["prompts"] = prompt_text
    return graph


def _texts(history, graph, title_type="PreviewAny"):
    return {node_id: history["outputs"][node_id]["text"][0] for node_id, node in graph.items()
            if node["class_type"] == title_type and node_id in history["outputs"]}


def test_example_workflow_scores_a_generated_batch(comfy_server):
    loader = comfy_server.object_info("QSchedScorerLoader")
    assert TINY_SCORER in combo_options(loader["input"]["required"]["checkpoint"])
    graph = _example_graph(comfy_server)
    history = comfy_server.run(graph, timeout=300)
    texts = _texts(history, graph)
    scores = json.loads(next(t for t in texts.values() if t.lstrip().startswith("{")))
    mean_jaq = float(next(t for t in texts.values() if not t.lstrip().startswith("{")))
    assert len(scores["images"]) == 2 and scores["formula"].startswith("CLIPScore[torchmetrics] + 2 * CLIP-IQA")
    per_image = [row["jaq"] for row in scores["images"]]
    assert mean_jaq == pytest.approx(sum(per_image) / 2, abs=1e-5)
    for row in scores["images"]:
        assert row["jaq"] == pytest.approx(row["tc"] + 2 * row["iq"], abs=1e-4)
    assert len(comfy_server.output_images(history)) == 2  # the annotated images


def test_prompt_count_mismatch_fails_with_a_clear_message(comfy_server):
    graph = _example_graph(comfy_server, prompt_text="one\ntwo\nthree")
    with pytest.raises(PromptFailed) as failure:
        comfy_server.run(graph, timeout=300)
    assert "3 prompts for 2 images" in json.dumps(failure.value.args[0] if failure.value.args else str(failure.value))


@pytest.fixture
def scoring_nodes(comfyui_dir, tmp_path):
    import folder_paths
    from comfyui_qsched.nodes import scoring
    folder_paths.add_model_folder_path(scoring.SCORER_FOLDER, str(tmp_path))
    folder_paths.filename_list_cache.pop(scoring.SCORER_FOLDER, None)
    save_open_clip(tiny_vit_clip(seed=22), tmp_path / "inproc.safetensors")
    yield scoring, tmp_path
    folder_paths.folder_names_and_paths[scoring.SCORER_FOLDER][0].remove(str(tmp_path))


SETTINGS = dict(variant="clip", k=2.0, tc_transform="identity", k_weights="iq", clip_score_convention="torchmetrics",
                iqa_prompt_pair="quality", device="cpu")


def test_loader_caches_the_scorer_until_an_input_or_the_file_changes(scoring_nodes):
    scoring, folder = scoring_nodes
    loader = scoring.QSchedScorerLoader
    assert "inproc.safetensors" in combo_options(loader.INPUT_TYPES()["required"]["checkpoint"])
    first = loader.execute("inproc.safetensors", **SETTINGS)[0]
    assert scoring.QSchedScorerLoader.execute("inproc.safetensors", **SETTINGS)[0] is first
    assert loader.execute("inproc.safetensors", **{**SETTINGS, "k": 3.0})[0] is not first
    changed_before = loader.fingerprint_inputs("inproc.safetensors")
    again = loader.execute("inproc.safetensors", **SETTINGS)[0]
    os.utime(folder / "inproc.safetensors", ns=(1, 1))
    assert loader.fingerprint_inputs("inproc.safetensors") != changed_before
    assert loader.execute("inproc.safetensors", **SETTINGS)[0] is not again
    from comfyui_qsched.scoring import ScorerError
    with pytest.raises(ScorerError, match="qsched_scorers"):
        loader.execute("missing.safetensors", **SETTINGS)
    # a value none of the combo's choices (ComfyUI 0.3.64 lets V3 combo values through when the prompt is queued)
    for name in ("quick_gelu", "device", "precision"):
        with pytest.raises(ScorerError, match=f"{name} is 'other': choose one of"):
            loader.execute("inproc.safetensors", **{**SETTINGS, name: "other"})


def test_score_node_outputs_floats_json_and_annotated_images(scoring_nodes):
    scoring, _ = scoring_nodes
    scorer = scoring.QSchedScorerLoader.execute("inproc.safetensors", **SETTINGS)[0]
    images = comfy_images(2, 96, 128, seed=9)
    output = scoring.QSchedJAQScore.execute(images, scorer, "a red bus\n\na cat\n", annotate=True)
    jaq, tc, iq, scores_json, annotated = output.result
    assert all(isinstance(v, float) for v in (jaq, tc, iq))
    rows = json.loads(scores_json)["images"]
    assert [row["prompt"] for row in rows] == ["a red bus", "a cat"]  # blank lines ignored, one per image
    direct = scorer.score(images, ["a red bus", "a cat"])
    assert jaq == pytest.approx(float(direct.jaq.mean()), abs=1e-6)
    assert annotated.shape == images.shape
    assert (annotated[:, :12, :60] - images[:, :12, :60]).abs().max() > 0.1  # text drawn top-left
    torch.testing.assert_close(annotated[:, 60:], images[:, 60:], atol=1 / 255, rtol=0)
    plain = scoring.QSchedJAQScore.execute(images, scorer, "a red bus")[4]
    assert plain is images
    assert "mean JAQ" in output.ui["text"][0]


def test_auto_device_scorer_is_loaded_through_comfyui_memory_manager(scoring_nodes):
    import comfy.model_management
    scoring, _ = scoring_nodes
    images = comfy_images(2, 64, 64, seed=3)
    plain = scoring.QSchedScorerLoader.execute("inproc.safetensors", **SETTINGS)[0]
    expected = plain.score(images, ["a red bus"])
    managed = scoring.QSchedScorerLoader.execute("inproc.safetensors", **{**SETTINGS, "device": "auto"})[0]
    assert not any(loaded.model is managed.patcher for loaded in comfy.model_management.current_loaded_models)
    result = managed.score(images, ["a red bus"])
    assert any(loaded.model is managed.patcher for loaded in comfy.model_management.current_loaded_models)
    # "auto" is ComfyUI's torch device: the GPU on the GPU run, where float sums differ from the CPU's in the 6th digit
    torch.testing.assert_close(result.jaq, expected.jaq, **({} if TEST_DEVICE == "cpu" else dict(rtol=1e-4, atol=0)))
    assert managed.formula == plain.formula and managed.describe() == plain.describe()
    output = scoring.QSchedJAQScore.execute(images, managed, "a red bus").result
    assert output[0] == pytest.approx(float(result.jaq.mean()), abs=1e-6)  # the node scores with the managed scorer
    comfy.model_management.unload_all_models()
