"""ComfyUI glue shared by the calibration's generators and the PTQD / closed-form trajectories: prompts encoded
once, and the sampler's own progress bar muted while a node reports its own."""
import contextlib

import comfy.utils


@contextlib.contextmanager
def quiet_step_progress():
    """The sampler's per-step progress bar would overwrite the node's candidates-done bar: mute it meanwhile."""
    hook, comfy.utils.PROGRESS_BAR_HOOK = comfy.utils.PROGRESS_BAR_HOOK, None
    try:
        yield
    finally:
        comfy.utils.PROGRESS_BAR_HOOK = hook


class TextConditioning:
    """Encodes each calibration prompt once (the search reuses it for every candidate)."""

    def __init__(self, clip):
        self.clip, self.cache = clip, {}

    def __call__(self, text):
        if text not in self.cache:
            self.cache[text] = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))
        return self.cache[text]
