"""Output-space concept maps: image untouched, the concept stream is the text stream's computation, maps are
distributions over concepts, memory flat, everything restored, every bad input one clear error."""

import numpy as np
import pytest
import torch
from conftest import generate
from safetensors import safe_open
from test_maps import held_tensor_bytes, processors

import attnkit
import attnkit.maps
import attnkit.maps.concepts
from attnkit import AttnkitError, Control
from attnkit.cli import main
from attnkit.testing import meta_denoiser

PROMPT = "a red circle and a blue square"
CONCEPTS = ["zebra", "sky", "background"]  # none of them in the prompt
TRANSFORMERS = ("tiny-sd3", "tiny-sd35", "tiny-flux")
#: attnkit's earlier choices, kept as options: each concept alone, the block's conditioning, the prompt call's image
#: outputs, the softmax of the mean logits.
ATTNKIT_CHOICES = {"encoding": "alone", "pooled": "prompt", "image_outputs": "prompt", "combine": "logits"}


def concept_traced(pipe, concepts=CONCEPTS, steps=2, trace_kwargs=None, **generate_kwargs):
    tc = attnkit.maps.trace(pipe, PROMPT, space="output", concepts=concepts, **(trace_kwargs or {}))
    with tc:
        latents = generate(pipe, steps=steps, **generate_kwargs)
    return tc, latents


def block_hooks(pipe):
    """Names of the diffusers hooks on every transformer block."""
    model = pipe.transformer
    blocks = list(model.transformer_blocks) + list(getattr(model, "single_transformer_blocks", ()))
    return [sorted(getattr(b, "_diffusers_hook").hooks) if hasattr(b, "_diffusers_hook") else [] for b in blocks]


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_concepts_absent_from_the_prompt_leave_the_image_bit_identical(pipelines, name):
    pipe = pipelines[name]
    kwargs = {"negative_prompt": "ugly", "true_cfg_scale": 2.0} if name == "tiny-flux" else {}

    def image():
        with torch.inference_mode():
            return pipe(PROMPT, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np",
                        **kwargs).images

    want_latents, want_image = generate(pipe, steps=3, **kwargs), image()
    with attnkit.maps.trace(pipe, PROMPT, space="output", concepts=CONCEPTS, kind=["joint", "single"]) as tc:
        got_latents, got_image = generate(pipe, steps=3, **kwargs), image()
    assert torch.equal(got_latents, want_latents) and np.array_equal(got_image, want_image)
    assert tc.recorder.count > 0


class TextOutputs(Control):
    """The main pass's image and text attention outputs (heads concatenated) of the cond items at every call."""

    name = "text outputs"

    def __init__(self):
        self.calls = []

    def after(self, call, out, lse):
        cond = call.state.batch_index("cond")
        image = out[cond][:, :, call.layout.span("queries", "image")].transpose(1, 2).flatten(2)
        text = out[cond][:, :, call.layout.span("queries", "text")].transpose(1, 2).flatten(2)
        self.calls.append((image.double(), text.double(), call.grid))


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_concepts_that_are_the_prompt_tokens_reproduce_the_text_stream(pipelines, name, monkeypatch):
    """With the prompt's own text embeddings as concepts (one concept per token), the concept stream is the text
    stream: each concept's output equals the text token's output of the normal call at every joint and single site,
    so the maps are o_x . o_text summed over sites and steps. This checks the stream between blocks, the blocks'
    adaLN and MLP, Flux's rotary rows and single-stream text length, and that other sessions never see the pass."""
    pipe = pipelines[name]
    with torch.inference_mode():
        if name == "tiny-flux":
            embeds = pipe.encode_prompt(PROMPT, prompt_2=None)[0]
        else:
            embeds = pipe.encode_prompt(PROMPT, None, None, do_classifier_free_guidance=False)[0]
    tokens = embeds.shape[1]
    monkeypatch.setattr(attnkit.maps.concepts, "encode_concepts",
                        lambda *_: (embeds[0], torch.eye(tokens)))
    capture = TextOutputs()
    tc = attnkit.maps.trace(pipe, PROMPT, space="output", concepts=[f"t{i}" for i in range(tokens)],
                            kind=["joint", "single"], **ATTNKIT_CHOICES)
    with tc, attnkit.attach(pipe, capture, tc.recorder.sites):
        generate(pipe, steps=2)
    assert len(capture.calls) == tc.count == 2 * len(tc.recorder.sites)  # the capture saw no concept pass
    want = sum((image @ text.transpose(1, 2)).transpose(1, 2).reshape(1, tokens, *grid)
               for image, text, grid in capture.calls)
    torch.testing.assert_close(tc.total.double(), want, rtol=1e-4, atol=1e-3 * want.abs().max().item())


@pytest.mark.parametrize("combine", ["logits", "softmax", "vectors"])
@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_maps_sum_to_one_over_concepts_at_every_image_token(pipelines, name, combine):
    tc, _ = concept_traced(pipelines[name], trace_kwargs={"combine": combine})
    maps = tc.maps
    assert maps.shape == (1, 3, 8, 8) and torch.all(maps >= 0)
    torch.testing.assert_close(maps.sum(1), torch.ones(1, 8, 8))
    torch.testing.assert_close(tc.heatmap("sky"), maps[0, 1])
    assert not torch.allclose(maps[0, 0], maps[0, 1])


def test_default_sites_follow_concept_attention(pipelines):
    """SD3: every joint block; Flux: the last four double-stream blocks, FLUX.1's layers 15-18 (tiny Flux has two)."""
    for name in TRANSFORMERS:
        pipe = pipelines[name]
        chosen = attnkit.maps.trace(pipe, space="output", concepts=["a"]).recorder.sites
        assert chosen == attnkit.sites(pipe).select(kind="joint")
    flux = attnkit.maps.concepts.default_sites(meta_denoiser("flux-dev"))
    assert [s.block for s in flux] == ["joint.15", "joint.16", "joint.17", "joint.18"]
    sd3 = attnkit.maps.concepts.default_sites(meta_denoiser("sd3-medium"))
    assert len(sd3) == 24 and {s.kind for s in sd3} == {"joint"}


@pytest.mark.parametrize("combine", ["logits", "softmax", "vectors"])
def test_the_buffer_does_not_grow_with_steps(pipelines, combine):
    pipe = pipelines["tiny-sd3"]
    one, _ = concept_traced(pipe, steps=1, trace_kwargs={"combine": combine})
    many, _ = concept_traced(pipe, steps=12, trace_kwargs={"combine": combine})
    per_step = combine != "vectors"  # "vectors" keeps one pair of step sums per site
    assert many.count == (12 if per_step else 1) * one.count and many.total.shape == one.total.shape == (1, 3, 8, 8)
    assert held_tensor_bytes(many) == held_tensor_bytes(one)


def test_selected_steps_only_run_the_concept_pass_there(pipelines):
    tc, _ = concept_traced(pipelines["tiny-flux"], steps=3, trace_kwargs={"steps": [2]})
    assert tc.recorder.steps_recorded == {2} and tc.count == len(tc.recorder.sites)


def test_a_probability_trace_beside_it_records_what_it_records_alone(pipelines):
    pipe = pipelines["tiny-flux"]
    with attnkit.maps.trace(pipe, PROMPT, kind=["joint", "single"]) as alone:
        generate(pipe)
    with attnkit.maps.trace(pipe, PROMPT, kind=["joint", "single"]) as beside, \
            attnkit.maps.trace(pipe, PROMPT, space="output", concepts=CONCEPTS, kind=["joint", "single"]):
        generate(pipe)
    assert beside.count == alone.count and torch.equal(beside.total, alone.total)


@pytest.mark.parametrize("name", TRANSFORMERS)
def boom(*_):
    raise RuntimeError("boom")


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_processors_and_hooks_are_restored_after_the_trace_and_after_an_error(pipelines, name):
    pipe = pipelines[name]
    before, hooks = processors(pipe), block_hooks(pipe)
    concept_traced(pipe, steps=1, trace_kwargs={"kind": ["joint", "single"]})
    assert all(processors(pipe)[k] is before[k] for k in before) and block_hooks(pipe) == hooks

    with pytest.raises(RuntimeError, match="boom"):
        concept_traced(pipe, steps=2, callback_on_step_end=boom)
    assert all(processors(pipe)[k] is before[k] for k in before) and block_hooks(pipe) == hooks
    assert torch.equal(generate(pipe), generate(pipe))  # blocks run as before


def test_maps_of_a_failed_generation_are_an_error(pipelines):
    pipe = pipelines["tiny-sd3"]
    tc = attnkit.maps.trace(pipe, PROMPT, space="output", concepts=CONCEPTS)
    with pytest.raises(RuntimeError, match="boom"), tc:
        generate(pipe, callback_on_step_end=boom)
    with pytest.raises(AttnkitError, match="raised an exception, so its concept maps are incomplete"):
        tc.maps


def test_cli_writes_image_concept_maps_grid_and_safetensors(tmp_path, capsys):
    out = tmp_path / "maps"
    assert main(["maps", "tiny-sd3", "--prompt", PROMPT, "--out", str(out), "--space", "output", "--concepts",
                 "red,zebra,background", "--steps", "2", "--size", "64"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["background.png", "grid.png", "image.png", "maps.safetensors",
                                                   "red.png", "zebra.png"]
    with safe_open(out / "maps.safetensors", "pt") as f:
        assert f.get_tensor("maps").shape == (1, 3, 8, 8) and f.get_tensor("concept.zebra").shape == (1, 8, 8)
        assert f.metadata()["space"] == "output" and f.metadata()["concepts"] == '["red", "zebra", "background"]'
    for args, message in [
        (["--space", "output"], "--space output maps concepts: give them with --concepts"),
        (["--concepts", "red"], "--concepts names the concepts of output-space maps: add --space output"),
        (["--space", "output", "--concepts", "red", "--words", "red"], "with --space output give --concepts only"),
        (["--space", "output", "--concepts", "grid,red"], "grid.png is the name of another output file"),
    ]:
        assert main(["maps", "tiny-sd3", "--prompt", PROMPT, "--out", str(tmp_path / "x"), "--steps", "1",
                     *args]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_bad_inputs_are_one_clear_error_each(pipelines):
    sd3 = pipelines["tiny-sd3"]
    for name in ("tiny-sd15", "tiny-sdxl"):
        stream = r"space=.output. needs a transformer with a joint text stream \(flux, sd3\)"
        with pytest.raises(AttnkitError, match=stream):
            attnkit.maps.trace(pipelines[name], PROMPT, space="output", concepts=["red"])
    with pytest.raises(AttnkitError, match="space='output' maps concepts, and got none"):
        attnkit.maps.trace(sd3, PROMPT, space="output", concepts=[])
    with pytest.raises(AttnkitError, match="space='output' maps concepts, and got none"):
        attnkit.maps.trace(sd3, PROMPT, space="output")
    with pytest.raises(AttnkitError, match="concepts 'sky' given more than once"):
        attnkit.maps.trace(sd3, PROMPT, space="output", concepts=["sky", "red", "Sky "])
    with pytest.raises(AttnkitError, match="concepts must be non-empty strings"):
        attnkit.maps.trace(sd3, PROMPT, space="output", concepts=["sky", " "])
    with pytest.raises(AttnkitError, match="unknown space 'outputs': choose 'probability'"):
        attnkit.maps.trace(sd3, PROMPT, space="outputs", concepts=["sky"])
    with pytest.raises(AttnkitError, match="`concepts`, `combine` belong to output-space maps"):
        attnkit.maps.trace(sd3, PROMPT, concepts=["sky"], combine="softmax")
    with pytest.raises(AttnkitError, match="`relation` and `exact` choose probability maps"):
        attnkit.maps.trace(sd3, PROMPT, space="output", concepts=["sky"], relation="text->image")
    with pytest.raises(AttnkitError, match="combine='mean': choose one of 'logits', 'softmax', 'vectors'"):
        attnkit.maps.trace(sd3, PROMPT, space="output", concepts=["sky"], combine="mean")
    for option, value in (("encoding", "whole"), ("pooled", "none"), ("image_outputs", "both")):
        with pytest.raises(AttnkitError, match=f"{option}='{value}': choose one of"):
            attnkit.maps.trace(sd3, PROMPT, space="output", concepts=["sky"], **{option: value})
    with pytest.raises(AttnkitError, match="encoding='joined' encodes the concepts as one prompt"):
        attnkit.maps.trace(sd3, PROMPT, space="output", concepts=["sky"], template="a {}")
    with pytest.raises(AttnkitError, match=r"concept maps need sites with a text stream.*self2"):
        attnkit.maps.trace(pipelines["tiny-sd35"], PROMPT, space="output", concepts=["sky"], kind="self2")
    tc, _ = concept_traced(sd3, steps=1)
    with pytest.raises(AttnkitError, match=r"'circle' is not one of the traced concepts \(zebra, sky, background\)"):
        tc.heatmap("circle")
    with pytest.raises(AttnkitError, match="'circle' is not one of the traced concepts"):
        tc.word_maps(["sky", "circle"])
    with pytest.raises(AttnkitError, match="concept '!!' has no token"):
        concept_traced(sd3, concepts=["sky", "!!"], steps=1)
    with attnkit.maps.trace(sd3, PROMPT, space="output", concepts=["sky"]) as empty:
        pass
    with pytest.raises(AttnkitError, match="no concept maps were recorded"):
        empty.maps


def test_defaults_follow_concept_attentions_code_for_each_family(pipelines):
    def options(pipe):
        chosen = attnkit.maps.trace(pipe, PROMPT, space="output", concepts=["sky"]).recorder.options
        return chosen.encoding, chosen.pooled, chosen.image_outputs, chosen.combine

    assert options(pipelines["tiny-flux"]) == ("first-token", "zero", "prompt", "softmax")
    assert options(pipelines["tiny-sd3"]) == options(pipelines["tiny-sd35"]) == ("joined", "prompt", "concepts",
                                                                                   "vectors")
    earlier = attnkit.maps.ConceptOptions()  # a family ConceptAttention has no code for: attnkit's earlier choices
    assert (earlier.encoding, earlier.pooled, earlier.image_outputs, earlier.combine) == tuple(ATTNKIT_CHOICES.values())


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_each_option_changes_the_maps_and_keeps_them_distributions(pipelines, name):
    """Every option away from the family's default gives other maps (concepts of several tokens: "zebra"), still a
    distribution over the concepts at every image token, and leaves the image untouched."""
    pipe = pipelines[name]
    want = generate(pipe, steps=2)
    default, _ = concept_traced(pipe)
    for option, value in ATTNKIT_CHOICES.items():
        if getattr(default.recorder.options, option) == value:
            continue
        other, latents = concept_traced(pipe, trace_kwargs={option: value})
        assert torch.equal(latents, want)
        torch.testing.assert_close(other.maps.sum(1), torch.ones_like(other.maps.sum(1)))
        assert not torch.allclose(other.maps, default.maps), option


def test_concept_maps_of_an_existing_image_read_one_noised_forward(pipelines):
    from PIL import Image

    pipe = pipelines["tiny-sd3"]
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    tc = attnkit.maps.concept_maps_of_image(pipe, image, ["sky", "tree"], "a red circle", seed=1)
    assert tc.recorder.steps_recorded == {0} and tc.count == len(tc.recorder.sites)
    torch.testing.assert_close(tc.maps.sum(1), torch.ones(1, 8, 8, dtype=tc.maps.dtype))
    again = attnkit.maps.concept_maps_of_image(pipe, image, ["sky", "tree"], "a red circle", seed=1)
    other = attnkit.maps.concept_maps_of_image(pipe, image, ["sky", "tree"], "a red circle", seed=2)
    assert torch.equal(again.maps, tc.maps) and not torch.equal(other.maps, tc.maps)
    with pytest.raises(AttnkitError, match="multiples of 8"):
        attnkit.maps.concept_maps_of_image(pipe, Image.new("RGB", (60, 64)), ["sky"])
    with pytest.raises(AttnkitError, match="PIL image"):
        attnkit.maps.concept_maps_of_image(pipe, np.zeros((64, 64, 3)), ["sky"])
    with pytest.raises(AttnkitError, match="step=4 is not a step of a 4-step run"):
        attnkit.maps.concept_maps_of_image(pipe, image, ["sky"], step=4)
