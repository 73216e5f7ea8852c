"""The JAQ scorer under ComfyUI's memory management (the scorer loader node's device "auto")."""
import torch

import comfy.model_management
import comfy.model_patcher


class ManagedScorer:
    """A scorer whose models ComfyUI's memory manager loads onto the GPU for each scoring call and offloads
    (or evicts, to make room for the diffusion model) like any other model. Everything else is the scorer's."""

    def __init__(self, scorer):
        self.scorer = scorer
        towers = {id(m.towers): m.towers for m in (scorer.tc_metric, scorer.iq_metric)}
        holder = torch.nn.Module()  # the towers' read-only `device` property cannot take ModelPatcher's assignment
        holder.towers = torch.nn.ModuleList(towers.values())
        self.patcher = comfy.model_patcher.ModelPatcher(
            holder, load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.text_encoder_offload_device())

    def score(self, images, prompts):
        # plain torch modules cannot be partially loaded (no comfy cast weights): always the whole scorer
        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        return self.scorer.score(images, prompts)

    def image_features(self, images):
        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        return self.scorer.image_features(images)

    def __getattr__(self, name):
        if name == "scorer":  # not set yet (copy, unpickling): no delegation loop
            raise AttributeError(name)
        return getattr(self.scorer, name)
