"""Attention maps: which word of the prompt each image region attends to, exact and memory-flat.

    with attnkit.maps.trace(pipe, prompt) as tc:
        image = pipe(prompt).images[0]
    tc.heatmap("circle"); tc.word_maps(); tc.save("maps.safetensors")

Built on the core: its `MapRecorder` (`attnkit.recorders`) reads exact probabilities through the kernel's
log-sum-exp and sums them into one fixed-size buffer, and its prompt-token labelling (`attnkit.tokens`) says which word
is which text position; `daam` aggregates them as DAAM does (`method="daam"`); `concepts` records concept maps in the
attention output space (`space="output"`); `plot` draws overlays (matplotlib, imported lazily). Names load on first
use, so the command line starts without torch.
"""

from .. import _lazy

__all__ = ["ConceptOptions", "ConceptRecorder", "ConceptTrace", "DaamTrace", "METHODS", "MapRecorder", "PromptTokens",
           "RELATIONS", "Reduction", "SPACES", "Summed", "Trace", "WORD_RELATIONS", "Word", "concept_maps_of_image",
           "prompt_tokens", "trace"]

_lazy.make_lazy(__name__, {
    "..recorders": ("RELATIONS", "MapRecorder", "Reduction", "Summed"),
    "..tokens": ("PromptTokens", "Word", "prompt_tokens"),
    ".trace": ("METHODS", "SPACES", "WORD_RELATIONS", "Trace", "trace"),
    ".concepts": ("ConceptOptions", "ConceptRecorder", "ConceptTrace", "concept_maps_of_image"),
    ".daam": ("DaamTrace",),
}, submodules=("concepts", "daam"), moved={"PerQuery": "attnkit.segment"})
