"""Score definitions checked by hand, weight formats, JAQ options and bad input of the JAQ scorer."""
import math

import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from comfyui_qsched.scoring import JAQOptions, ScorerError, load_scorer
from comfyui_qsched.scoring.checkpoints import read_scorer_weights
from comfyui_qsched.scoring.towers import _model_config, build_towers, infer_config
from test_metrics_fixtures import as_uint8_chw, comfy_images, save_open_clip, tiny_vit_clip

PROMPTS = ["a red bus", "a cat on a sofa"]
MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    model = tiny_vit_clip(seed=11)
    return model, save_open_clip(model, tmp_path_factory.mktemp("w") / "tiny.safetensors")


def _cosine(model, pixels, texts):
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(open_clip.tokenize(texts)), dim=-1)
    return (image * text).sum(-1)


def test_hessel_convention_by_hand(vit):
    model, path = vit
    images = comfy_images(2, 32, 32, seed=4)  # model size: no resize, so the pixels are plain normalisation
    pixels = (as_uint8_chw(images).float() / 255 - MEAN) / STD
    expected = 2.5 * _cosine(model, pixels, ["A photo depicts " + p for p in PROMPTS]).clamp(min=0)
    result = load_scorer(path, device="cpu", clip_score_convention="hessel").score(images, PROMPTS)
    torch.testing.assert_close(result.tc, expected, atol=1e-5, rtol=0)
    torchmetrics_style = load_scorer(path, device="cpu").score(images, PROMPTS).tc
    torch.testing.assert_close(torchmetrics_style, 100 * _cosine(model, pixels, PROMPTS).clamp(min=0), atol=1e-4,
                               rtol=0)


def test_preference_variant_hpsv2_by_hand_with_open_clip_transform(vit, tmp_path):
    """HPS file layout ({"state_dict"}, DDP 'module.' prefix); HPS preprocessing = open_clip's longest-side + pad."""
    hps_model = tiny_vit_clip(seed=12)
    hps_file = tmp_path / "HPS_v2.1_tiny.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in hps_model.state_dict().items()}}, hps_file)
    _, clip_path = vit
    images = comfy_images(2, 32, 20, seed=6)  # longest side = model size: only the zero padding applies
    transform = open_clip.image_transform(32, is_train=False, resize_mode="longest", fill_color=0)
    pils = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in as_uint8_chw(images)]
    expected_iq = _cosine(hps_model, torch.stack([transform(p) for p in pils]), PROMPTS)
    scorer = load_scorer(hps_file, variant="preference", tc_checkpoint=clip_path, device="cpu")
    result = scorer.score(images, PROMPTS)
    torch.testing.assert_close(result.iq, expected_iq, atol=1e-5, rtol=0)
    clip_only = load_scorer(clip_path, device="cpu").score(images, PROMPTS)
    torch.testing.assert_close(result.tc, clip_only.tc)
    torch.testing.assert_close(result.jaq, result.tc + 2 * result.iq)
    with pytest.raises(ScorerError, match="tc_checkpoint"):
        load_scorer(hps_file, variant="preference", device="cpu")


def test_openai_torchscript_archive_reads_like_safetensors_and_uses_quick_gelu(tmp_path):
    model = tiny_vit_clip(seed=13, quick_gelu=True)
    archive = tmp_path / "ViT-tiny.pt"
    torch.jit.script(model).save(str(archive))
    plain = save_open_clip(model, tmp_path / "ViT-tiny.safetensors")
    images = comfy_images(2, 40, 40, seed=1)
    from_archive = load_scorer(archive, device="cpu").score(images, PROMPTS)
    right = load_scorer(plain, device="cpu", quick_gelu=True).score(images, PROMPTS)
    wrong = load_scorer(plain, device="cpu").score(images, PROMPTS)  # no 'openai' in the name: GELU
    torch.testing.assert_close(from_archive.jaq, right.jaq)
    assert (wrong.tc - right.tc).abs().max() > 1e-3  # the activation matters, silently


def test_hf_and_open_clip_layouts_of_the_same_weights_agree(vit, tmp_path):
    from test_metrics_fixtures import save_hf_clip
    model, path = vit
    folder = save_hf_clip(model, tmp_path / "hf")
    images = comfy_images(2, 50, 33, seed=8)
    a = load_scorer(path, device="cpu").score(images, PROMPTS)
    b = load_scorer(folder, device="cpu").score(images, PROMPTS)
    torch.testing.assert_close(a.jaq, b.jaq, atol=1e-4, rtol=0)
    picked_by_file = read_scorer_weights(tmp_path / "hf" / "model.safetensors")  # what the node's dropdown lists
    assert picked_by_file.layout == "hf_clip" and picked_by_file.path == str(tmp_path / "hf")


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-L-14", "ViT-H-14", "RN50"])
def test_architecture_found_by_shapes_including_head_width(name):
    config = open_clip.get_model_config(name)
    with torch.device("meta"):  # shapes only, no memory
        state = open_clip.model.CLIP(config["embed_dim"], config["vision_cfg"], config["text_cfg"]).state_dict()
    found, config = _model_config(state, read_weights_stub(), "auto")
    assert found == name
    assert config["vision_cfg"] == open_clip.get_model_config(name)["vision_cfg"]  # e.g. ViT-H-14's 80-wide heads
    assert infer_config(state)["vision_cfg"]["width"] == config["vision_cfg"]["width"]


def read_weights_stub():
    from comfyui_qsched.scoring.checkpoints import ScorerWeights
    return ScorerWeights("mem", "open_clip")


def test_jaq_options_combine_as_documented(vit):
    _, path = vit
    images = comfy_images(3, 36, 36, seed=2)
    base = load_scorer(path, device="cpu").score(images, PROMPTS[:1])
    logged = load_scorer(path, device="cpu", tc_transform="log", k=3.0).score(images, PROMPTS[:1])
    on_tc = load_scorer(path, device="cpu", k_weights="tc", k=0.5).score(images, PROMPTS[:1])
    torch.testing.assert_close(base.jaq, base.tc + 2 * base.iq)
    torch.testing.assert_close(logged.jaq, base.tc.clamp(min=1e-6).log() + 3 * base.iq)
    torch.testing.assert_close(on_tc.jaq, 0.5 * base.tc + base.iq)
    assert "log(CLIPScore[torchmetrics]) + 3 * CLIP-IQA" in logged.formula
    for bad in (dict(tc_transform="sqrt"), dict(k_weights="both"), dict(k=math.nan)):
        with pytest.raises(ScorerError):
            JAQOptions(**{"k": 2.0, **bad})


def test_batching_and_prompt_broadcast(vit):
    _, path = vit
    images = comfy_images(5, 30, 44, seed=3)
    whole = load_scorer(path, device="cpu").score(images, "a red bus")
    chunked = load_scorer(path, device="cpu", batch_size=2).score(images, ["a red bus"] * 5)
    torch.testing.assert_close(whole.jaq, chunked.jaq)
    assert [row["prompt"] for row in whole.rows()] == ["a red bus"] * 5


def test_image_channels_and_sizes(vit):
    _, path = vit
    scorer = load_scorer(path, device="cpu")
    rgb = comfy_images(2, 24, 24, seed=5)
    rgba = torch.cat([rgb, torch.rand(2, 24, 24, 1)], -1)
    torch.testing.assert_close(scorer.score(rgba, "x").jaq, scorer.score(rgb, "x").jaq)  # alpha is dropped
    grey = rgb[..., :1]
    torch.testing.assert_close(scorer.score(grey, "x").jaq, scorer.score(grey.expand(-1, -1, -1, 3), "x").jaq)
    for height, width in ((1, 1), (7, 300), (301, 5)):
        assert torch.isfinite(scorer.score(torch.rand(1, height, width, 3), "x").jaq).all()


@pytest.mark.parametrize("images, prompts, message", [
    (torch.rand(2, 8, 8, 3), [], "No prompt"),
    (torch.rand(2, 8, 8, 3), ["a", "b", "c"], "3 prompts for 2 images"),
    (torch.rand(8, 8, 3), ["a"], "batch, height, width, channels"),
    (torch.rand(1, 8, 8, 2), ["a"], "1, 3 or 4"),
    (torch.full((1, 8, 8, 3), math.nan), ["a"], "NaN"),
    (torch.zeros(1, 8, 8, 3, dtype=torch.uint8), ["a"], "float"),
])
def test_bad_score_input_is_named(vit, images, prompts, message):
    _, path = vit
    with pytest.raises(ScorerError, match=message):
        load_scorer(path, device="cpu").score(images, prompts)


def test_bad_weight_files_are_named(tmp_path, vit):
    with pytest.raises(ScorerError, match="not found.*models/qsched_scorers"):
        read_scorer_weights(tmp_path / "nope.safetensors")
    vision_only = tmp_path / "clip_vision_g.safetensors"
    save_file({"vision_model.embeddings.patch_embedding.weight": torch.zeros(4, 3, 2, 2),
               "visual_projection.weight": torch.zeros(4, 4)}, str(vision_only))
    with pytest.raises(ScorerError, match="only a CLIP vision tower"):
        read_scorer_weights(vision_only)
    unet = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(unet))
    with pytest.raises(ScorerError, match="not a CLIP checkpoint"):
        read_scorer_weights(unet)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(open(vit[1], "rb").read()[:1000])
    with pytest.raises(ScorerError, match="safetensors"):
        read_scorer_weights(truncated)
    pickled = tmp_path / "object.pt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "optimizer": Image.new("RGB", (1, 1))}, pickled)
    with pytest.raises(ScorerError, match="weights-only"):
        read_scorer_weights(pickled)
    folder = tmp_path / "t5"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "t5"}')
    with pytest.raises(ScorerError, match="not a CLIPModel"):
        read_scorer_weights(folder)


def test_wrong_architecture_is_named(vit):
    _, path = vit
    with pytest.raises(ScorerError, match="does not fit the ViT-B-32"):
        build_towers(read_scorer_weights(path), architecture="ViT-B-32")
    with pytest.raises(ScorerError, match="Unknown open_clip architecture"):
        build_towers(read_scorer_weights(path), architecture="ViT-Q-99")
