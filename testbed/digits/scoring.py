"""The testbed's own reference-free score (JAQ = TC + k * IQ, k = 2) and its FID on classifier features.

- TC: the digit classifier's probability of the requested class (the testbed's text-image alignment).
- IQ: a no-reference quality critic trained on real digits against synthetically degraded ones (noise, blur,
  washed-out contrast, ghosting, speckle, blotches) to predict 1 - severity; the digit analogue of a learned NR-IQA
  (CLIP-IQA's good-vs-bad, KADID-style synthetic distortions). It is trained without any generated image, so it is
  not tuned to the generators it judges, and it never sees a reference image at scoring time.
- FID: Frechet distance between Gaussians fitted to the classifier's 128-d penultimate features of generated
  images and of the 1,797 real digits.
"""
from dataclasses import dataclass

import numpy as np
import torch

from .data import from_comfy_image, load_digits_tensors, parse_class_prompt
from .networks import DigitsCNN
from .weights import load_weights

JAQ_K = 2.0


@dataclass
class ScoreResult:
    tc: torch.Tensor
    iq: torch.Tensor
    jaq: torch.Tensor


class DigitsScorer:
    """`score(images, prompts)` with the pack's scorer interface (ComfyUI IMAGE in [0, 1], prompts naming a digit);
    `score_tensors(x, labels)` on [-1, 1] NCHW tensors; `features(x)` for FID."""

    def __init__(self, classifier, critic, k=JAQ_K):
        self.classifier = classifier.eval()
        self.critic = critic.eval()
        self.k = float(k)

    @classmethod
    def load(cls, folder=None, k=JAQ_K):
        kwargs = {} if folder is None else {"folder": folder}
        classifier, _ = load_weights(DigitsCNN, "classifier", **kwargs)
        critic, _ = load_weights(DigitsCNN, "critic", **kwargs)
        return cls(classifier, critic, k)

    @torch.no_grad()
    def score_tensors(self, x, labels, batch_size=1024):
        tcs, iqs = [], []
        for start in range(0, x.shape[0], batch_size):
            xb, lb = x[start:start + batch_size].float().clamp(-1, 1), labels[start:start + batch_size]
            probs = self.classifier(xb).softmax(dim=1)
            tcs.append(probs.gather(1, lb[:, None].long()).squeeze(1))
            iqs.append(torch.sigmoid(self.critic(xb).squeeze(1)))
        tc, iq = torch.cat(tcs), torch.cat(iqs)
        return ScoreResult(tc=tc, iq=iq, jaq=tc + self.k * iq)

    def score(self, images, prompts):
        labels = [parse_class_prompt(p) for p in prompts]
        if len(labels) not in (1, images.shape[0]):
            raise ValueError(f"need 1 or {images.shape[0]} prompts, got {len(labels)}")
        labels = torch.tensor(labels * (images.shape[0] if len(labels) == 1 else 1))
        return self.score_tensors(from_comfy_image(images), labels)

    @torch.no_grad()
    def features(self, x, batch_size=1024):
        return torch.cat([self.classifier.features(x[s:s + batch_size].float().clamp(-1, 1))
                          for s in range(0, x.shape[0], batch_size)])


def gaussian_stats(features):
    f = features.double().cpu().numpy()
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(stats_a, stats_b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) (Heusel et al. 2017); the trace of the matrix square root
    is taken as sum sqrt(eig(S_a^1/2 S_b S_a^1/2)), a symmetric PSD matrix with the same eigenvalues as S_a S_b."""
    (mu_a, cov_a), (mu_b, cov_b) = stats_a, stats_b
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    trace_covmean = np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(min=0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_covmean)


class FeatureFID:
    """FID against the 1,797 real digits on the classifier's features."""

    def __init__(self, scorer, real=None):
        self.scorer = scorer
        real = load_digits_tensors()[0] if real is None else real
        self.real_count = real.shape[0]
        self.real_stats = gaussian_stats(scorer.features(real))

    def __call__(self, x):
        return frechet_distance(gaussian_stats(self.scorer.features(x)), self.real_stats)
