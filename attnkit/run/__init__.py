"""The run layer: what `attnkit generate`, `regional`, `maps`, `segment` and `video-edit` do, as plain functions on a
loaded pipeline that return their results and the files they wrote, used alike by the command line (`attnkit.cli`,
argparse only), the web app (`attnkit.ui`, Gradio only) and batch jobs (`attnkit.batch`); models by name
(`models`); the checks of every typed value (`checks`); and the compositions of features, such as regions found from
a word's attention map (`word_regions`: a maps pass, then regional prompting). Names load on first use, so the
command line starts without torch.
"""

from .. import _lazy

__all__ = ["Generated", "InitImages", "Maps", "Pipelines", "Regional", "Segmented", "builtin_names", "call_kwargs",
           "generate", "guidance_kwargs", "init_images", "load_controlnet", "load_pipeline", "maps", "regional",
           "sampling_options", "segment", "true_cfg_options", "video_edit", "with_lora_files", "word_mask",
           "word_regions"]

_lazy.make_lazy(__name__, {
    ".images": ("Generated", "InitImages", "Regional", "generate", "init_images", "regional", "sampling_options",
                "true_cfg_options", "with_lora_files"),
    ".attention_maps": ("Maps", "maps"),
    ".models": ("Pipelines", "builtin_names", "call_kwargs", "guidance_kwargs", "load_controlnet", "load_pipeline"),
    ".segments": ("Segmented", "segment"),
    ".video": ("video_edit",),
    ".words": ("word_mask", "word_regions"),
}, submodules=("checks", "models"))
