"""What the regional-prompting test files share: the two-region spec they use most, and short generations."""

import torch

LEFT_RIGHT = {"regions": [{"prompt": "a red circle", "box": [0, 0, 0.5, 1]},
                          {"prompt": "a blue square", "box": [0.5, 0, 1, 1]}]}


def latents(pipe, **kwargs):
    with torch.inference_mode():
        return pipe(output_type="latent", **kwargs).images


def state_of(pipe):
    """The processors and attnkit hooks of the denoiser, to check that nothing is left behind."""
    denoiser = getattr(pipe, "transformer", None) or pipe.unet
    registry = getattr(denoiser, "_diffusers_hook", None)
    hooks = [] if registry is None else [n for n in registry.hooks if n.startswith("attnkit")]
    return dict(denoiser.attn_processors), hooks
