"""Train the testbed's metric networks on the real digits: the classifier (TC, FID features) and the quality
critic (IQ). Seeded; `python -m qsched train-digits --only metrics [--device cuda]`.

Reference run (seed 0, the shipped weights; compare a rerun with REFERENCE below): one H100, torch 2.11, 40 s.
"""
import argparse
import time

import torch
import torch.nn.functional as F

from .data import load_digits_tensors, train_test_split
from .degrade import KINDS, degrade
from .networks import DigitsCNN
from .weights import WEIGHTS_DIR, save_weights

REFERENCE = {  # what the shipped run reached (also in the files' metadata)
    "seed": 0, "iters": 3000,
    "classifier": {"test_accuracy": 0.9972, "test_count": 359},
    "critic": {"real": 0.9796, "noise@0.5": 0.4829, "noise@1.0": 0.0653, "blur@0.5": 0.5073, "blur@1.0": 0.0817,
               "washout@0.5": 0.4946, "washout@1.0": 0.0331, "ghost@0.5": 0.4667, "ghost@1.0": 0.2965,
               "speckle@0.5": 0.4765, "speckle@1.0": 0.1695, "blotches@0.5": 0.4601, "blotches@1.0": 0.1718,
               "saturate@0.5": 0.4885, "saturate@1.0": 0.1145},
}


def _jitter(x, g):
    """Random +-1 pixel shifts and mild noise: makes the classifier robust on generated digits."""
    shifts = torch.randint(-1, 2, (2,), generator=g, device=g.device).tolist()
    x = torch.roll(x, shifts=shifts, dims=(2, 3))
    return x + 0.05 * torch.randn(x.shape, generator=g, device=x.device)


def train_classifier(images, labels, train_idx, test_idx, iters, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsCNN(outputs=10).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=iters)
    x_train, y_train = images[train_idx].to(device), labels[train_idx].to(device)
    for _ in range(iters):
        batch = torch.randint(0, len(train_idx), (256,), generator=g, device=device)
        loss = F.cross_entropy(model(_jitter(x_train[batch], g)), y_train[batch], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[test_idx].to(device)).argmax(1).cpu() == labels[test_idx]).float().mean().item()
    return model.cpu(), {"test_accuracy": round(accuracy, 4), "test_count": len(test_idx)}


def train_critic(images, train_idx, iters, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsCNN(outputs=1).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=iters)
    x_train = images[train_idx].to(device)
    for _ in range(iters):
        x = x_train[torch.randint(0, len(train_idx), (256,), generator=g, device=device)]
        severity = torch.rand(256, generator=g, device=device)
        severity[:64] = 0  # a quarter clean
        kinds = torch.randint(0, len(KINDS), (256,), generator=g, device=device)
        loss = F.binary_cross_entropy_with_logits(model(degrade(x, severity, kinds, g)).squeeze(1), 1 - severity)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval().cpu()


@torch.no_grad()
def critic_report(critic, images, test_idx, seed):
    """Mean IQ on held-out real digits and on each degradation at severity 0.5 and 1."""
    g = torch.Generator().manual_seed(seed + 1)
    x = images[test_idx]
    report = {"real": round(torch.sigmoid(critic(x)).mean().item(), 4)}
    for k, kind in enumerate(KINDS):
        for s in (0.5, 1.0):
            xd = degrade(x, torch.full((len(x),), s), torch.full((len(x),), k), g)
            report[f"{kind}@{s}"] = round(torch.sigmoid(critic(xd)).mean().item(), 4)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m qsched train-digits --only metrics")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--out", default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    start = time.time()
    images, labels = load_digits_tensors()
    train_idx, test_idx = train_test_split(len(labels), seed=0)
    classifier, cls_report = train_classifier(images, labels, train_idx, test_idx, args.iters, args.device, args.seed)
    critic = train_critic(images, train_idx, args.iters, args.device, args.seed + 1)
    iq_report = critic_report(critic, images, test_idx, args.seed)
    record = {"seed": args.seed, "iters": args.iters, "classifier": cls_report, "critic": iq_report,
              "seconds": round(time.time() - start, 1), "device": args.device, "torch": torch.__version__}
    save_weights(classifier, "classifier", record, args.out)
    save_weights(critic, "critic", record, args.out)
    print("metrics:", record, flush=True)
    return 0
