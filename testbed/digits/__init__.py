"""Digits testbed: a class-conditional EPS diffusion model on scikit-learn's handwritten digits, an LCM-style
few-step model distilled from it, and the testbed's own metrics (classifier TC, critic IQ, JAQ, feature FID)."""
