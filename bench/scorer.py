"""Images scored per second by the JAQ scorer (CLIPScore + 2 * CLIP-IQA), random weights of the real shapes.

    python bench/scorer.py [--device cpu|cuda] [--archs ViT-B-32,ViT-L-14,RN50] [--batch 16] [--out FILE]

Inputs are ComfyUI IMAGE batches of 512x512 (what a calibration run decodes), one distinct prompt per image.
"cold" text = new prompts every batch (text tower runs); "warm" = the prompts repeat, as in calibration, where the
same prompts are scored for every candidate schedule and their embeddings come from the cache. The time covers
the whole `scorer.score` call: 8-bit conversion, resize/crop, both towers, CPU transfer of the results.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import qsched  # noqa: E402,F401  registers comfyui_qsched

import open_clip  # noqa: E402

from comfyui_qsched.scoring import clip_scorer  # noqa: E402
from comfyui_qsched.scoring.towers import OpenClipTowers  # noqa: E402


def build(arch, device, dtype):
    config = open_clip.get_model_config(arch)
    with torch.device(device):
        model = open_clip.model.CLIP(config["embed_dim"], config["vision_cfg"], config["text_cfg"],
                                     quick_gelu=arch.startswith("RN"))
    return clip_scorer(OpenClipTowers(model, arch).to(dtype=dtype))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(scorer, device, batch, size, iterations, warm_text):
    images = torch.rand(batch, size, size, 3, device=device)
    counter = iter(range(10 ** 9))

    def prompts():
        tag = 0 if warm_text else next(counter)
        return [f"a photo of object {i} in scene {tag}" for i in range(batch)]

    for _ in range(2):
        scorer.score(images, prompts())
    sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        scorer.score(images, prompts())
    sync(device)
    return batch * iterations / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", default="ViT-B-32,ViT-L-14")
    parser.add_argument("--dtypes", default=None, help="float32,float16 (default: float32 on CPU, both on GPU)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--out", default=None, help="append the markdown table to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    dtypes = args.dtypes.split(",") if args.dtypes else (["float32", "float16"] if gpu else ["float32"])
    batch = args.batch or (32 if gpu else 4)
    iterations = args.iterations or (10 if gpu else 2)
    torch.set_grad_enabled(False)
    where = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    lines = [f"\n### {where} (torch {torch.__version__}, {args.size}x{args.size} images, batch {batch})\n",
             "| scorer towers | dtype | images/s, cold text | images/s, warm text | ms/image, warm |",
             "| --- | --- | --- | --- | --- |"]
    for arch in args.archs.split(","):
        for dtype in dtypes:
            scorer = build(arch, device, getattr(torch, dtype))
            cold = measure(scorer, device, batch, args.size, iterations, warm_text=False)
            warm = measure(scorer, device, batch, args.size, iterations, warm_text=True)
            lines.append(f"| {arch} | {dtype} | {cold:.1f} | {warm:.1f} | {1000 / warm:.2f} |")
            print(lines[-1], flush=True)
            del scorer
            if gpu:
                torch.cuda.empty_cache()
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(table)


if __name__ == "__main__":
    sys.exit(main())
