"""Attention maps: which word of the prompt each image region attends to, exact and memory-flat.

    with attnkit.maps.trace(pipe, prompt) as tc:
        image = pipe(prompt).images[0]
    tc.heatmap("circle"); tc.word_maps(); tc.save("maps.safetensors")

Built only on the foundation: a `MapRecorder` control reads exact probabilities through the kernel's log-sum-exp
and sums them into one fixed-size buffer; `concepts` records concept maps in the attention output space
(`space="output"`); `plot` draws overlays (matplotlib, imported lazily). Names load on first use, so the
`attnkit maps` command line can be built without torch.
"""

from .. import _lazy

__all__ = ["ConceptRecorder", "ConceptTrace", "MapRecorder", "PerQuery", "PromptTokens", "RELATIONS", "Reduction",
           "SPACES", "Summed", "Trace", "WORD_RELATIONS", "Word", "prompt_tokens", "trace"]

_lazy.make_lazy(__name__, {
    ".recorder": ("RELATIONS", "MapRecorder", "PerQuery", "Reduction", "Summed"),
    ".tokens": ("PromptTokens", "Word", "prompt_tokens"),
    ".trace": ("SPACES", "WORD_RELATIONS", "Trace", "trace"),
    ".concepts": ("ConceptRecorder", "ConceptTrace"),
}, submodules=("concepts", "recorder", "tokens"))
