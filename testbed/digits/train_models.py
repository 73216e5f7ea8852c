"""Train the testbed's generators: a class-conditional EPS teacher (VP schedule, 1000 steps, label dropout for
classifier-free guidance), then an LCM-style few-step student by consistency distillation (Luo et al. 2023, Alg. 1):
the teacher's guided DDIM step over LCM's skip of 20 timesteps gives x_prev, and the student's output at x_t is
pulled towards the EMA target's output at x_prev. Everything in ComfyUI's VE latents (diffusion.py).
Seeded; `python -m qsched train-digits --only models [--device cuda]`.

Reference run (the shipped weights; compare a rerun with REFERENCE below and train.py's measurements).
"""
import argparse
import copy
import time

import torch
import torch.nn.functional as F

from .data import NUM_CLASSES, load_digits_tensors
from .diffusion import LCM_SKIP, EpsDenoiser, LCMDenoiser, lcm_timesteps, vp_sigmas
from .networks import DigitsUNet
from .weights import WEIGHTS_DIR, load_weights, save_weights

DEFAULT_CHANNELS, DEFAULT_EMB_DIM = (32, 48, 64), 128   # DigitsUNet's defaults (the shipped network)
GUIDANCE = 2.0  # the classifier-free guidance scale the student bakes in (LCM's guided distillation)
REFERENCE = {  # what the shipped run reached on one H100 (torch 2.11); also in the files' metadata
    "teacher": {"seed": 0, "iters": 16000, "batch": 256, "final_loss": 0.0153, "seconds": 259.6},
    "student_lcm": {"seed": 1, "iters": 1500, "batch": 1024, "guidance": GUIDANCE, "final_loss": 0.0064,
                    "seconds": 55.0},
}


@torch.no_grad()
def _ema_update(target, online, decay):
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), 1 - decay)


def wide_config(width):
    """DigitsUNet's arguments with every channel count and the embedding `width` times the shipped ones (1: the
    shipped network); the wide testbed variant (issue 22) uses 4, so group scales and low-rank factors cost
    about what they cost on real models' wider layers."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer multiplier, got {width!r}")
    return {"channels": tuple(c * width for c in DEFAULT_CHANNELS), "emb_dim": DEFAULT_EMB_DIM * width}


def train_teacher(images, labels, iters, device, seed, batch=256, width=1):
    g = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    unet = DigitsUNet(**wide_config(width)).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=iters, pct_start=0.05)
    alphas_cumprod = (1 / (1 + vp_sigmas() ** 2)).to(device)
    x_all, y_all = images.to(device), labels.to(device)
    losses = []
    for step in range(iters):
        idx = torch.randint(0, len(y_all), (batch,), generator=g, device=device)
        x0, y = x_all[idx], y_all[idx].clone()
        y[torch.rand(batch, generator=g, device=device) < 0.1] = NUM_CLASSES  # label dropout for CFG
        t = torch.randint(0, 1000, (batch,), generator=g, device=device)
        noise = torch.randn(x0.shape, generator=g, device=device)
        a = alphas_cumprod[t][:, None, None, None]
        loss = F.mse_loss(unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t.float(), y), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        _ema_update(ema, unet, 0.999 if step > 200 else 0.0)
        losses.append(loss.item()) if step % 50 == 0 else None
    return ema.eval().cpu(), {"final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4)}


def distill_student(teacher_unet, images, labels, iters, device, seed, batch=1024, huber_c=0.03, lr=3e-4):
    g = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    teacher = EpsDenoiser(copy.deepcopy(teacher_unet), guidance=GUIDANCE).to(device).requires_grad_(False)
    student = LCMDenoiser(copy.deepcopy(teacher_unet)).to(device).requires_grad_(True).train()  # LCM starts from the teacher
    target = copy.deepcopy(student).requires_grad_(False)
    ema = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iters, pct_start=0.05)
    sigmas = vp_sigmas().to(device)
    grid = lcm_timesteps().to(device)
    x_all, y_all = images.to(device), labels.to(device)
    losses = []
    for step in range(iters):
        idx = torch.randint(0, len(y_all), (batch,), generator=g, device=device)
        x0, y = x_all[idx], y_all[idx]
        t = grid[torch.randint(0, len(grid), (batch,), generator=g, device=device)]
        sigma = sigmas[t]
        sigma_prev = torch.where(t >= LCM_SKIP, sigmas[(t - LCM_SKIP).clamp(min=0)], torch.zeros_like(sigma))
        x_t = x0 + sigma[:, None, None, None] * torch.randn(x0.shape, generator=g, device=device)
        with torch.no_grad():
            # DDIM in VE latents is an Euler step: x_prev = x_t + (sigma_prev - sigma) * eps_teacher
            x_prev = x_t + (sigma_prev - sigma)[:, None, None, None] * teacher.eps(x_t, sigma, y)
            boundary = (sigma_prev == 0)[:, None, None, None]
            prev_out = target(x_prev, sigma_prev.clamp(min=sigmas[0]), labels=y)
            goal = torch.where(boundary, x_prev, prev_out)
        diff = student(x_t, sigma, labels=y) - goal
        loss = ((diff ** 2 + huber_c ** 2).sqrt() - huber_c).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        _ema_update(target, student, 0.95)
        _ema_update(ema, student, 0.995 if step > 100 else 0.0)
        losses.append(loss.item()) if step % 50 == 0 else None
    return ema.unet.eval().cpu(), {"final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 5)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m qsched train-digits --only models")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-iters", type=int, default=16000)
    parser.add_argument("--student-iters", type=int, default=1500)
    parser.add_argument("--out", default=WEIGHTS_DIR)
    parser.add_argument("--student-only", action="store_true", help="distill from the teacher already in --out")
    parser.add_argument("--width", type=int, default=1, help="channel multiplier of the UNet (4: the wide variant)")
    args = parser.parse_args(argv)
    wide_config(args.width)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    images, labels = load_digits_tensors()
    start = time.time()
    if args.student_only:
        teacher, _ = load_weights(DigitsUNet, "teacher", args.out)
    else:
        teacher, teacher_report = train_teacher(images, labels, args.teacher_iters, args.device, args.seed,
                                                width=args.width)
        teacher_report["seconds"] = round(time.time() - start, 1)
        save_weights(teacher, "teacher", {"seed": args.seed, "iters": args.teacher_iters, "width": args.width,
                                          **teacher_report,
                                          "device": args.device, "torch": torch.__version__}, args.out)
        print("teacher:", teacher_report, flush=True)
    start = time.time()
    student, student_report = distill_student(teacher, images, labels, args.student_iters, args.device, args.seed + 1)
    student_report["seconds"] = round(time.time() - start, 1)
    save_weights(student, "student_lcm", {"seed": args.seed + 1, "iters": args.student_iters, "guidance": GUIDANCE,
                                          **student_report, "device": args.device, "torch": torch.__version__}, args.out)
    print("student:", student_report, flush=True)
    return 0
