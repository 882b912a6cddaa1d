"""Every DiT family described in `attnkit.families`, on its tiny offline pipeline: typed sites, shapes that agree
with the stock run, exact maps, and bit-identical output when attnkit's controls change nothing."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.models import attention_dispatch

import attnkit
from attnkit import maps
from attnkit.cli import main as cli_main
from attnkit.errors import AttnkitError
from attnkit.families import dits
from attnkit.inspector import inspect_shapes
from attnkit.processors import AttentionCall, Control
from attnkit.sites import KINDS
from attnkit.testing import build_pipeline, dits as builders, meta_denoiser

FAMILIES = {family.name: family for family in dits()}
PIPELINES = {name: f"tiny-{name}" for name in FAMILIES}
PROMPT = "a red circle"


def _available(name: str) -> str:
    if FAMILIES[name].model_class is None:
        pytest.skip(f"this diffusers has no {FAMILIES[name].model}")
    return PIPELINES[name]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_pipe(request):
    torch.set_num_threads(1)
    return request.param, build_pipeline(_available(request.param))


def _generate(pipe, **options):
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        out = pipe(prompt=PROMPT, num_inference_steps=2, generator=generator, output_type="latent", **options)
    images = getattr(out, "images", None)
    return images if images is not None else out.frames


class _Nothing(Control):
    name = "nothing"


class _Keep(Control):
    """Keeps every call's q, k, layout, mask and scale at its sites."""

    name = "keep"

    def __init__(self):
        self.calls: list[tuple[int | None, list[int], AttentionCall]] = []

    def before(self, call):
        kept = AttentionCall(call.site, None, call.q.clone(), call.k.clone(), call.v, call.layout, call.grid,
                             call.scale, mask=call.mask)
        self.calls.append((call.state.step, call.state.batch_index("cond"), kept))


def test_default_generation_is_finite_and_the_same_from_a_new_build(family_pipe):
    name, pipe = family_pipe
    first = _generate(pipe)
    assert torch.isfinite(first).all()
    assert torch.equal(first, _generate(pipe))
    assert torch.equal(first, _generate(build_pipeline(PIPELINES[name])))  # built again: the same weights


@pytest.mark.parametrize("release", sorted(builders.full_size_configs()))
def test_full_size_releases_on_the_meta_device_list_one_typed_site_per_attention_module(release):
    model_name = builders.full_size_configs()[release][0]
    if not any(f.model == model_name and f.model_class is not None for f in FAMILIES.values()):
        pytest.skip(f"this diffusers has no {model_name}")
    model = meta_denoiser(release)
    found = attnkit.sites(model)
    modules = [n for n, m in model.named_modules() if hasattr(m, "get_processor")]
    assert sorted(s.module_name for s in found) == sorted(modules)
    assert all(s.heads > 0 and s.head_dim > 0 and s.kind in KINDS for s in found)


def test_sites_json_lists_every_attention_module_typed(family_pipe, capsys):
    name, pipe = family_pipe
    assert cli_main(["sites", PIPELINES[name], "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    rows = listed["sites"] if isinstance(listed, dict) else listed
    modules = [n for n, m in pipe.transformer.named_modules() if hasattr(m, "get_processor")]
    assert sorted(r["name"].removesuffix(".processor") for r in rows) == sorted(modules)
    assert {r["kind"] for r in rows} <= set(KINDS)


def test_doing_nothing_leaves_output_bit_identical(family_pipe):
    _, pipe = family_pipe
    plain = _generate(pipe)
    with attnkit.attach(pipe, _Nothing()):
        held = _generate(pipe)
    assert torch.equal(plain, held)
    assert all(not type(m.get_processor()).__name__.startswith("Attnkit")
               for m in pipe.transformer.modules() if hasattr(m, "get_processor"))


def test_inspect_shapes_agree_with_the_stock_run(family_pipe, monkeypatch):
    _, pipe = family_pipe
    seen, inside, denoising = [], [], []

    def spying(stock, heads_first):
        def spy(*args, **kwargs):
            q, k = (kwargs["query"], kwargs["key"]) if "query" in kwargs else args[:2]
            if denoising and not inside:  # the dispatcher's native backend calls SDPA in turn: count the outer call
                batch, heads, queries = (q.shape[0], q.shape[1], q.shape[2]) if heads_first else (
                    q.shape[0], q.shape[2], q.shape[1])
                seen.append((batch * heads, queries, k.shape[2 if heads_first else 1]))
            inside.append(1)
            try:
                return stock(*args, **kwargs)
            finally:
                inside.pop()
        return spy

    for module in pipe.transformer.modules():
        if hasattr(module, "get_processor"):
            names = type(module.get_processor()).__call__.__globals__
            if names.get("dispatch_attention_fn") is attention_dispatch.dispatch_attention_fn:
                monkeypatch.setitem(names, "dispatch_attention_fn",
                                    spying(attention_dispatch.dispatch_attention_fn, heads_first=False))
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        spying(torch.nn.functional.scaled_dot_product_attention, heads_first=True))
    hooks = [pipe.transformer.register_forward_pre_hook(lambda *_: denoising.append(1)),
             pipe.transformer.register_forward_hook(lambda *_: denoising.clear())]
    try:
        with torch.inference_mode():
            pipe(prompt=PROMPT, num_inference_steps=1, output_type="latent")
    finally:
        for hook in hooks:
            hook.remove()
    monkeypatch.undo()
    records = inspect_shapes(pipe, prompt=PROMPT)
    inspected = [tuple(r.attention) for r in records]
    assert inspected and inspected == seen[: len(inspected)]
    listed = [s.name for s in attnkit.sites(pipe) if s.kind != "linear"]  # sites are listed in execution order
    assert [r.site for r in records][: len(listed)] == listed


def test_word_maps_are_probabilities_equal_to_an_fp64_softmax(family_pipe):
    name, pipe = family_pipe
    site = next(s for s in attnkit.sites(pipe) if s.kind in ("cross", "joint", "single"))
    keep = _Keep()
    with maps.trace(pipe, prompt=PROMPT, sites_=[site], steps=[0]) as tc, attnkit.attach(pipe, keep, [site]):
        _generate(pipe)
    heat = tc.heatmap("circle")
    assert torch.isfinite(heat).all() and (heat >= 0).all()
    per_token = tc.maps.sum(1)  # over text tokens, per image token
    assert (per_token <= 1 + 1e-5).all()

    cond, call = next((cond, c) for step, cond, c in keep.calls if step == 0 and cond)
    q, k = call.q.double(), call.k.double()
    logits = q @ k.transpose(-1, -2) * call.scale
    if call.mask is not None:
        mask = call.mask
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.double()
    probabilities = logits.softmax(-1)
    rows, cols = call.layout.span("queries", "image"), call.layout.span("keys", "text")
    reference = probabilities[cond][:, :, rows, cols].sum(1).transpose(1, 2)
    reference = reference.reshape(*reference.shape[:2], *call.grid) / call.q.shape[1]
    assert torch.allclose(tc.maps.double(), reference, atol=1e-5)


def test_video_word_maps_split_into_one_map_per_latent_frame(family_pipe):
    name, pipe = family_pipe
    if not FAMILIES[name].video:
        pytest.skip("an image model")
    with maps.trace(pipe, prompt=PROMPT) as tc:
        latents = _generate(pipe)
    frames = tc.frame_maps("circle")
    heat = tc.heatmap("circle")
    assert frames.shape[0] == tc.recorder.frames > 1 and frames.shape[1] * frames.shape[0] == heat.shape[0]
    assert torch.equal(frames.flatten(0, 1), heat) and torch.isfinite(latents).all()


def test_an_undescribed_attention_module_is_an_error_naming_it(family_pipe):
    from diffusers.models.attention_processor import Attention

    _, pipe = family_pipe
    pipe.transformer.add_module("stray", Attention(query_dim=8, heads=1, dim_head=8))
    try:
        with pytest.raises(AttnkitError, match="stray.*Attention"):
            attnkit.sites(pipe)
    finally:
        del pipe.transformer.stray


def test_an_unknown_denoiser_class_is_one_error_naming_it():
    from diffusers import HunyuanDiT2DModel

    model = HunyuanDiT2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2,
                              sample_size=8, hidden_size=16, num_layers=2, cross_attention_dim=16,
                              cross_attention_dim_t5=16, pooled_projection_dim=8, text_len=4, text_len_t5=4)
    with pytest.raises(AttnkitError, match="unsupported model HunyuanDiT2DModel.*attention modules"):
        attnkit.sites(model)


def test_readme_and_docs_family_tables_are_the_family_results_json():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "families.py"
    spec = importlib.util.spec_from_file_location("families_benchmark", path)
    families = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(families)
    results = json.loads(families.RESULTS.read_text())
    assert set(results["families"]) == set(FAMILIES), "every family is in the table: run benchmarks/families.py"
    for page in families.PAGES:
        text = page.read_text()
        assert families.page_with_table(text, results) == text, \
            f"{page.name}: run `python benchmarks/families.py --table`"
    for entry in results["families"].values():  # each cell is what its tests gave
        assert entry["features"] == families.cells(entry["tests"])


def test_cli_maps_of_a_video_model_overlay_a_filmstrip_of_its_latent_frames(tmp_path):
    from PIL import Image

    _available("wan")
    assert cli_main(["maps", "tiny-wan", "--prompt", "a red circle", "--out", str(tmp_path), "--steps", "2"]) == 0
    image = Image.open(tmp_path / "image.png")
    with maps.trace(build_pipeline("tiny-wan"), prompt="a red circle") as tc:
        _generate(tc.pipe)
    assert image.height == tc.recorder.frames * image.width > image.width  # square frames, one per latent frame
    assert (tmp_path / "circle.png").is_file() and (tmp_path / "maps.safetensors").is_file()
