"""Attention maps: exact against an fp64 softmax, generation untouched, memory flat, words on the right tokens."""

import gc
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, generate
from diffusers import DiffusionPipeline
from safetensors import safe_open

import attnkit
import attnkit.maps
import attnkit.recorders
from attnkit import AttnkitError, Control
from attnkit.cli import main
from attnkit.maps import prompt_tokens

PROMPT = "a red circle and a blue square"


class Capture(Control):
    """Keeps what an independent reference needs from every call: q, k, mask, layout, grid, branches, step."""

    name = "capture"

    def __init__(self):
        self.calls = []

    def after(self, call, out, lse):
        state = call.state
        self.calls.append((call.q, call.k, call.mask, call.layout, call.grid, call.scale, state.branches, state.step))


def reference(calls, steps=None, branch="cond", relation="image->text"):
    """Sum over heads, calls and steps (all when None) of the fp64 softmax block, each grid bilinearly upsampled to the
    largest."""
    queries, keys = relation.split("->")
    size = max((c[4] for c in calls), key=lambda g: g[0] * g[1])
    total, count = 0, 0
    for q, k, mask, layout, grid, scale, branches, step in calls:
        items = [i for i, b in enumerate(branches) if b == branch]
        if (steps is not None and step not in steps) or not items:
            continue
        scores = q[items].double() @ k[items].double().transpose(-1, -2) * scale
        if mask is not None:
            scores = scores + attnkit.ops.additive(mask, torch.float64)
        block = torch.softmax(scores, -1)[:, :, layout.span("queries", queries), layout.span("keys", keys)].sum(1)
        if relation != "text->text":
            block = {"image->text": block.transpose(1, 2), "text->image": block,
                     "image->image": block.sum(1, keepdim=True)}[relation]
            block = F.interpolate(block.reshape(*block.shape[:2], *grid), size=size, mode="bilinear",
                                  align_corners=False)
        total = total + block
        count += q.shape[1]
    return total, count


def processors(pipe):
    denoiser = pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.unet
    return dict(denoiser.attn_processors)


def traced(pipe, capture=None, steps=3, trace_kwargs=None, **generate_kwargs):
    """A trace around one generation, with an optional capture control on the same sites; returns (trace, latents)."""
    tc = attnkit.maps.trace(pipe, generate_kwargs.get("prompt", PROMPT), **(trace_kwargs or {}))
    with tc:
        if capture is None:
            latents = generate(pipe, steps=steps, **generate_kwargs)
        else:
            with attnkit.attach(pipe, capture, tc.recorder.sites):
                latents = generate(pipe, steps=steps, **generate_kwargs)
    return tc, latents


@pytest.mark.parametrize("exact", ["lse", "explicit"])
@pytest.mark.parametrize("name", TINY)
def test_maps_equal_an_fp64_softmax_reference(pipelines, name, exact):
    """Both paths give the model's own normalisation (joint: softmax over all keys), cond branch, selected steps."""
    capture = Capture()
    tc, _ = traced(pipelines[name], capture, trace_kwargs={"exact": exact, "steps": [1, 2]})
    want, count = reference(capture.calls, steps={1, 2})
    assert tc.count == count and tc.recorder.steps_recorded == {1, 2} and tc.recorder.needs_lse == (exact == "lse")
    torch.testing.assert_close(tc.total.double(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("name", "relation"), [
    ("tiny-sd3", "text->image"), ("tiny-flux", "text->image"), ("tiny-sd35", "text->text"), ("tiny-flux", "text->text"),
    ("tiny-sd15", "image->image"), ("tiny-sd35", "image->image"), ("tiny-flux", "image->image"),
])
def test_other_relations_equal_the_reference_also_in_query_chunks(pipelines, name, relation, monkeypatch):
    """Joint attention's text->image and text->text blocks, and image->image summed over queries (self, joint, single,
    MMDiT-X attn2 sites), with a chunk budget so small that every call is computed a few query rows at a time."""
    monkeypatch.setattr(attnkit.recorders, "CHUNK_BYTES", 4096)
    capture = Capture()
    tc, _ = traced(pipelines[name], capture, trace_kwargs={"relation": relation})
    want, count = reference(capture.calls, relation=relation)
    assert tc.count == count
    torch.testing.assert_close(tc.total.double(), want, rtol=1e-4, atol=1e-6)


def test_flux_true_cfg_records_the_cond_pass_only(pipelines):
    """Flux runs the negative prompt as a separate forward; the state's branch (diffusers' cache context) skips it."""
    capture = Capture()
    tc, _ = traced(pipelines["tiny-flux"], capture, negative_prompt="ugly", true_cfg_scale=2.0)
    assert {c[6] for c in capture.calls} == {("cond",), ("uncond",)}
    want, count = reference(capture.calls, steps={0, 1, 2})
    assert tc.count == count
    torch.testing.assert_close(tc.total.double(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", ["img2img", "controlnet"])
def test_img2img_and_controlnet_pipelines_of_the_family_record_the_same_way(pipelines, variant):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionImg2ImgPipeline

    sd = pipelines["tiny-sd15"]
    if variant == "img2img":
        pipe, extra = StableDiffusionImg2ImgPipeline(**sd.components), {"strength": 0.5}
    else:
        pipe, extra = StableDiffusionControlNetPipeline(**sd.components, controlnet=ControlNetModel.from_unet(
            sd.unet, conditioning_embedding_out_channels=(8, 16, 16))), {}  # 4x down, as the tiny VAE
    capture = Capture()
    loop = []
    tc, _ = traced(pipe, capture, steps=4, image=torch.rand(1, 3, 64, 64),
                   callback_on_step_end=lambda p, i, t, kw: loop.append(i) or kw, **extra)
    recorded = set(loop)
    assert tc.recorder.steps_recorded == recorded and len(recorded) == (3 if variant == "img2img" else 5)  # PNDM +1
    want, _ = reference(capture.calls, steps=recorded)
    torch.testing.assert_close(tc.total.double(), want, rtol=1e-4, atol=1e-6)


def test_batches_of_prompts_give_maps_per_item(pipelines):
    """Two prompts x two images each: four maps per branch, item i labelled with prompt i // 2; two traces (cond and
    uncond branch) share the sites of one generation."""
    pipe, prompts = pipelines["tiny-sd15"], ["a red circle", "a blue zebra square"]
    capture = Capture()
    tc, uncond = attnkit.maps.trace(pipe, prompts), attnkit.maps.trace(pipe, branch="uncond")
    with tc, uncond, attnkit.attach(pipe, capture, tc.recorder.sites):
        generate(pipe, prompt=prompts, num_images_per_prompt=2)
    for trace, branch in ((tc, "cond"), (uncond, "uncond")):
        want, _ = reference(capture.calls, branch=branch)
        assert trace.total.shape == (4, 77, 16, 16)
        torch.testing.assert_close(trace.total.double(), want, rtol=1e-4, atol=1e-6)
    assert not torch.equal(tc.total[0], tc.total[2])
    torch.testing.assert_close(tc.heatmap("circle", item=1), tc.maps[1, 3])
    torch.testing.assert_close(tc.heatmap("square", item=3), tc.maps[3, 8])
    with pytest.raises(AttnkitError, match="'circle' is not a word of the prompt 'a blue zebra square'"):
        tc.heatmap("circle", item=2)


@pytest.mark.parametrize("exact", ["lse", "explicit"])
@pytest.mark.parametrize("name", TINY)
def test_recording_leaves_the_generation_unchanged(pipelines, name, exact):
    """explicit keeps the stock kernel; lse swaps in the CPU flash kernel, which is the one SDPA runs here too."""
    pipe = pipelines[name]
    want = generate(pipe, steps=3)
    _, got = traced(pipe, trace_kwargs={"exact": exact})
    assert torch.equal(got, want)


def held_tensor_bytes(root):
    """Bytes of tensor storage reachable from `root`, not counting models, pipelines, modules, classes, functions."""
    skip = (torch.nn.Module, DiffusionPipeline, type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
            types.MethodType)
    seen, storages, todo = set(), {}, [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            continue
        todo.extend(gc.get_referents(obj))
    return sum(storages.values())


def test_memory_is_flat_over_steps(pipelines):
    """50 recorded steps hold exactly what 1 step holds: the aggregate, never per-step or per-layer maps."""
    pipe = pipelines["tiny-sd15"]
    one, _ = traced(pipe, steps=1)
    fifty, _ = traced(pipe, steps=50)
    steps_one, steps_fifty = len(one.recorder.steps_recorded), len(fifty.recorder.steps_recorded)
    assert steps_fifty >= 50 and fifty.count * steps_one == one.count * steps_fifty
    assert fifty.total.shape == one.total.shape
    assert held_tensor_bytes(fifty) == held_tensor_bytes(one) == fifty.total.nbytes


def test_clip_words_split_into_tokens_repeat_and_follow_the_bos(pipelines):
    pipe = pipelines["tiny-sd15"]
    prompt = "A Red zebra and a red square"
    labels = prompt_tokens(pipe, prompt, 77)
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77).input_ids
    tokens = pipe.tokenizer.convert_ids_to_tokens(ids)
    zebra = labels.positions("zebra")
    assert len(zebra) > 1 and "".join(tokens[p] for p in zebra) == "zebra</w>"
    assert labels.positions("a") == [1, 9]  # position 0 is the begin-of-text token; "A" matches "a"
    red = labels.positions("RED")
    assert [tokens[p] for p in red] == ["red</w>", "red</w>"] and labels.positions("red", occurrence=1) == red[1:]
    assert labels.unique_words == ["a", "red", "zebra", "and", "square"]


def test_sd3_words_map_to_both_the_clip_and_the_t5_stream(pipelines):
    pipe = pipelines["tiny-sd3"]
    labels = prompt_tokens(pipe, PROMPT, 77 + 256)
    t5 = pipe.tokenizer_3.convert_ids_to_tokens(pipe.tokenizer_3(PROMPT).input_ids)
    clip = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(PROMPT).input_ids)
    clip_position, t5_position = labels.positions("square")
    assert clip[clip_position] == "square</w>" and t5[t5_position - 77] == "▁square"


def test_flux_words_are_labelled_with_t5_tokens_not_clip(pipelines):
    pipe = pipelines["tiny-flux"]
    tc, _ = traced(pipe, steps=1)
    t5 = pipe.tokenizer_2.convert_ids_to_tokens(pipe.tokenizer_2(PROMPT).input_ids)
    (position,) = tc.tokens().positions("red")
    assert t5[position] == "▁red" and position == 1  # CLIP, with its begin-of-text token, would say 2
    torch.testing.assert_close(tc.heatmap("red"), tc.maps[0, 1])


def test_missing_and_truncated_words_are_clear_errors(pipelines):
    pipe = pipelines["tiny-sd15"]
    with pytest.raises(AttnkitError, match="'dog' is not a word of the prompt .*its words are a, red, circle, and, "
                                           "blue, square"):
        prompt_tokens(pipe, PROMPT, 77).positions("dog")
    with pytest.raises(AttnkitError, match="'square' in .* lies beyond the text the pipeline encodes"):
        prompt_tokens(pipe, PROMPT, 4).positions("square")


@pytest.mark.parametrize("name", TINY)
def test_processors_are_restored_after_the_trace_and_after_an_error(pipelines, name):
    pipe = pipelines[name]
    before = processors(pipe)
    traced(pipe, steps=1)
    assert all(processors(pipe)[k] is before[k] for k in before)

    def boom(*_):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        traced(pipe, steps=2, callback_on_step_end=boom)
    assert all(processors(pipe)[k] is before[k] for k in before)


@pytest.mark.parametrize("swapped", ["one", "all"])
def test_maps_never_come_back_incomplete(pipelines, swapped):
    """Sites that stop being recorded mid-run (another tool swapped their processors) make the maps an error."""
    pipe = pipelines["tiny-sd15"]
    cross = attnkit.sites(pipe).select(kind="cross")
    modules = [pipe.unet.get_submodule(s.module_name) for s in (cross[:1] if swapped == "one" else cross)]

    def swap(pipe_, step, timestep, kwargs):
        if step == 0:
            for module in modules:
                module.set_processor(module.processor.original)
        return kwargs

    tc, _ = traced(pipe, steps=3, callback_on_step_end=swap)
    message = (f"step 1: 1 site.*{cross[0].name}; step 2: 1 site" if swapped == "one"
               else r"steps \[1, 2, 3\] of 4: no site at all")  # SD1.5's PNDM loops 4 times for 3 steps
    with pytest.raises(AttnkitError, match=f"incomplete attention maps: .*{message}"):
        tc.maps


def test_nothing_recorded_and_sites_without_text_are_errors(pipelines):
    pipe = pipelines["tiny-sd15"]
    with attnkit.maps.trace(pipe, PROMPT) as tc:
        pass
    with pytest.raises(AttnkitError, match="no attention maps were recorded"):
        tc.maps
    with pytest.raises(AttnkitError, match=r"image->text maps need image queries and text keys.*kind=\['cross'"):
        attnkit.maps.trace(pipe, kind="self")
    with pytest.raises(AttnkitError, match="text->image maps need text queries"):
        attnkit.maps.trace(pipe, relation="text->image")
    sd3 = pipelines["tiny-sd3"]
    with attnkit.maps.trace(sd3, PROMPT, relation="text->text") as tc:
        generate(sd3)
    with pytest.raises(AttnkitError, match="text->text maps have no heat map per word"):
        tc.heatmap("red")


def test_cli_writes_image_word_maps_grid_and_safetensors(tmp_path, capsys):
    out = tmp_path / "maps"
    assert main(["maps", "tiny-sd15", "--prompt", PROMPT, "--out", str(out), "--words", "red,square",
                 "--steps", "2", "--seed", "1", "--size", "64"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "image.png", "maps.safetensors", "red.png",
                                                   "square.png"]
    from PIL import Image

    assert Image.open(out / "red.png").size == Image.open(out / "image.png").size == (64, 64)
    with safe_open(out / "maps.safetensors", "pt") as f:
        assert f.get_tensor("maps").shape == (1, 77, 16, 16) and f.get_tensor("word.red").shape == (1, 16, 16)
        assert f.metadata()["prompts"] == f'["{PROMPT}"]'
    assert main(["maps", "tiny-sd15", "--prompt", PROMPT, "--out", str(tmp_path / "x"), "--words", "dog",
                 "--steps", "1"]) == 2
    assert "'dog' is not a word of the prompt" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_maps_per_region_prompt_lie_in_their_segment_and_their_region(pipelines, name):
    pipe = pipelines[name]
    spec = {"regions": [{"prompt": "a red circle", "box": [0, 0, 0.5, 1]},
                        {"prompt": "a blue square", "box": [0.5, 0, 1, 1]}]}
    with attnkit.regional(pipe, spec) as call, attnkit.maps.trace(pipe, call) as tc:
        pipe(**call(seed=0, num_inference_steps=2))
    (_, first), (_, second) = call.encoded.cond
    red, blue = tc.tokens(region=0).positions("red"), tc.tokens(region=1).positions("blue")
    assert red and all(p < first for p in red) and blue and all(first <= p < first + second for p in blue)
    cols = tc.total.shape[-1]
    blue_map, red_map = tc.heatmap("blue", region=1), tc.heatmap("red", region=0)
    assert torch.all(blue_map[:, : cols // 2] == 0) and torch.all(blue_map[:, cols // 2:] > 0)
    assert torch.all(red_map[:, cols // 2:] == 0) and torch.all(red_map[:, : cols // 2] > 0)
    with pytest.raises(AttnkitError, match="region=2 is not in this regional prompt"):
        tc.heatmap("red", region=2)
    with pytest.raises(AttnkitError, match="'blue' is not a word of the prompt 'a red circle'"):
        tc.heatmap("blue", region=0)


def test_daam_buffers_are_per_layer_and_head_and_flat_over_steps(pipelines):
    """DAAM keeps one sum over steps per (layer, head) at the layer's grid; the global map is what it reads."""
    pipe = pipelines["tiny-sd15"]
    one, _ = traced(pipe, steps=1, trace_kwargs={"method": "daam"})
    five, _ = traced(pipe, steps=5, trace_kwargs={"method": "daam"})
    assert isinstance(five, attnkit.maps.DaamTrace)
    assert {name: part.shape for name, part in five.recorder.parts.items()} == \
        {name: part.shape for name, part in one.recorder.parts.items()}
    for site in five.recorder.sites:
        assert five.recorder.parts[site.name].shape[1] == site.heads  # (items, heads, text, rows, cols)
    assert not any(s.stage == "mid" for s in five.recorder.sites)  # DAAM reads the down and up blocks only
    assert five.maps.shape == (1, 77, 16, 16) and float(five.maps.min()) >= 0  # bicubic undershoot clamped


def test_daam_normalize_divides_by_the_prompt_words_maps(pipelines):
    pipe = pipelines["tiny-sd15"]
    tc, _ = traced(pipe, steps=2, trace_kwargs={"method": "daam", "normalize": True})
    positions = sorted({p for word in tc.tokens().words for p in word.positions})
    torch.testing.assert_close(tc.maps[0, positions].sum(0), torch.ones(16, 16), atol=1e-4, rtol=0)
    assert tc.heatmap("red").shape == (16, 16)


def test_method_and_normalize_are_checked(pipelines):
    pipe = pipelines["tiny-sd15"]
    with pytest.raises(AttnkitError, match="unknown method 'damm'"):
        attnkit.maps.trace(pipe, PROMPT, method="damm")
    with pytest.raises(AttnkitError, match="normalize= is DAAM's"):
        attnkit.maps.trace(pipe, PROMPT, normalize=True)
    with pytest.raises(AttnkitError, match="space='output' maps concepts"):
        attnkit.maps.trace(pipelines["tiny-sd3"], PROMPT, space="output", concepts=["red"], method="daam")
    with pytest.raises(AttnkitError, match="method='daam' maps image->text"):
        attnkit.maps.trace(pipe, PROMPT, method="daam", relation="image->image")


def test_cli_maps_by_daams_method_write_its_word_maps(tmp_path, capsys):
    out = tmp_path / "daam"
    assert main(["maps", "tiny-sd15", "--prompt", PROMPT, "--out", str(out), "--words", "red,square", "--steps", "2",
                 "--method", "daam", "--normalize"]) == 0
    with safe_open(out / "maps.safetensors", "pt") as f:
        assert f.metadata()["method"] == "daam" and f.get_tensor("word.red").shape == (1, 16, 16)
    assert main(["maps", "tiny-sd15", "--prompt", PROMPT, "--out", str(tmp_path / "x"), "--normalize"]) == 2
    assert "--normalize is DAAM's normalisation" in capsys.readouterr().err
    assert main(["maps", "tiny-sd3", "--prompt", PROMPT, "--out", str(tmp_path / "y"), "--method", "daam",
                 "--steps", "1"]) == 2
    assert "method='daam' reads the cross-attention of a UNet's down and up blocks" in capsys.readouterr().err
