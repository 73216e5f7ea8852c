"""Our CLIPScore and CLIP-IQA against torchmetrics (and piq's original CLIP-IQA), same tiny random weights."""
import warnings

import pytest
import torch

from comfyui_qsched.scoring import load_scorer
from test_metrics_fixtures import (as_uint8_chw, clip_processor, comfy_images, save_hf_clip, save_open_clip,
                                   tiny_rn_clip, tiny_vit_clip, torchmetrics_model)

torchmetrics_mm = pytest.importorskip("torchmetrics.multimodal")
PROMPTS = ["a red bus in the street", "a cat on a sofa", "a bowl of soup with noodles"]


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit")
    model = tiny_vit_clip(seed=3)
    return {"hf": save_hf_clip(model, folder / "hf"), "open_clip": save_open_clip(model, folder / "tiny.safetensors")}


def _torchmetrics_clip_score_per_image(folder, images, prompts):
    metric = torchmetrics_mm.CLIPScore(model_name_or_path=torchmetrics_model(folder))
    scores = []
    for image, prompt in zip(as_uint8_chw(images), prompts):
        metric.reset()
        scores.append(float(metric(image, prompt).detach()))
    return torch.tensor(scores)


@pytest.mark.parametrize("layout", ["hf", "open_clip"])
def test_clip_score_equals_torchmetrics(vit_files, layout):
    images = comfy_images(3, height=48, width=40)  # not the model size: exercises resize + centre crop
    expected = _torchmetrics_clip_score_per_image(vit_files["hf"], images, PROMPTS)
    assert expected.std() > 0.5, "scores do not vary: the parity test would compare constants"
    scorer = load_scorer(vit_files[layout], device="cpu")
    result = scorer.score(images, PROMPTS)
    torch.testing.assert_close(result.tc, expected, atol=1e-4, rtol=0)


def test_clip_score_batch_mean_equals_torchmetrics(vit_files):
    images = comfy_images(3, height=32, width=64, seed=5)
    metric = torchmetrics_mm.CLIPScore(model_name_or_path=torchmetrics_model(vit_files["hf"]))
    expected = float(metric(list(as_uint8_chw(images)), PROMPTS))
    result = load_scorer(vit_files["open_clip"], device="cpu").score(images, PROMPTS)
    if (result.tc > 0).all():  # torchmetrics clamps the batch mean, we clamp per image: equal when all positive
        assert abs(float(result.tc.mean()) - expected) < 1e-4


def test_clip_iqa_vit_equals_torchmetrics_hf_path(vit_files):
    # torchmetrics' HF path resizes float images (no 8-bit rounding); at the model size no resize happens at all.
    images = comfy_images(4, height=32, width=32, seed=1)
    metric = torchmetrics_mm.CLIPImageQualityAssessment(
        model_name_or_path=torchmetrics_model(vit_files["hf"]), data_range=1.0, prompts=("quality", "sharpness"))
    expected = metric(as_uint8_chw(images).float())  # 0-255 floats: the processor rescales by 1/255 itself
    scorer = load_scorer(vit_files["hf"], device="cpu", iqa_pairs=("quality", "sharpness"), iqa_logit_scale=100)
    result = scorer.score(images, "unused")
    per_pair = torch.stack([result.components["clip_iqa[Good photo.|Bad photo.]"],
                            result.components["clip_iqa[Sharp photo.|Blurry photo.]"]], 1)
    assert expected["quality"].std() > 1e-3
    torch.testing.assert_close(per_pair, torch.stack([expected["quality"], expected["sharpness"]], 1),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(result.iq, per_pair.mean(1))


@pytest.fixture(scope="module")
def rn_file(tmp_path_factory):
    model = tiny_rn_clip(seed=7)
    return model, save_open_clip(model, tmp_path_factory.mktemp("rn") / "RN-tiny-openai.safetensors")


def test_clip_iqa_rn_equals_torchmetrics_original(rn_file, monkeypatch):
    """torchmetrics' default 'clip_iqa' = piq's RN50 port of the original (attention pool without positions)."""
    piq = pytest.importorskip("piq")
    import transformers
    from piq.feature_extractors import clip as piq_clip

    model, path = rn_file
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # Offline stand-ins for the two downloads torchmetrics makes: piq's RN50.pt and the openai tokenizer.
    monkeypatch.setattr(piq.clip_iqa.clip, "load", lambda: piq_clip.build_model(dict(state)).float().eval())
    monkeypatch.setattr(transformers.CLIPProcessor, "from_pretrained", classmethod(lambda cls, *a, **k: clip_processor(64)))
    images = comfy_images(3, height=75, width=90, seed=2)  # any size: the original does not resize
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = torchmetrics_mm.CLIPImageQualityAssessment(data_range=255.0)
        expected = metric(as_uint8_chw(images).float())
    assert expected.std() > 1e-3
    result = load_scorer(path, device="cpu").score(images, "unused")  # the checkpoint's logit scale is 100
    torch.testing.assert_close(result.iq, expected, atol=1e-4, rtol=0)
