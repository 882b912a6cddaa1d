"""Site discovery and selection, on full-size architectures built on the meta device and on tiny pipelines."""

import pytest
import torch
from diffusers import UNet2DModel

import attnkit
from attnkit import AttnkitError
from attnkit.testing import meta_denoiser

pytestmark = pytest.mark.core

# Seed 003: SD1.x latent scale of each 1-based index (same table for self- and cross-attention).
SEED_003_SCALES = {64: [1, 2, 14, 15, 16], 32: [3, 4, 11, 12, 13], 16: [5, 6, 8, 9, 10], 8: [7]}


@pytest.mark.parametrize(
    "name, counts",
    [
        ("sd15", {"self": 16, "cross": 16}),
        ("sdxl", {"self": 70, "cross": 70}),
        ("sd3-medium", {"joint": 24}),
        ("sd35-medium", {"joint": 24, "self2": 13}),
        ("sd35-large", {"joint": 38}),
        ("flux-dev", {"joint": 19, "single": 38}),
    ],
)
def test_site_counts_and_kinds_per_architecture(name, counts):
    model = meta_denoiser(name)
    found = attnkit.sites(model)
    assert {k: sum(s.kind == k for s in found) for k in counts} == counts
    assert len(found) == len(model.attn_processors) == sum(counts.values())
    assert set(found.names) == set(model.attn_processors)
    for kind, n in counts.items():  # per-kind index runs 1..n in execution order
        assert [s.index for s in found if s.kind == kind] == list(range(1, n + 1))


def test_sd15_indices_and_resolutions_follow_seed_003():
    found = attnkit.sites(meta_denoiser("sd15"), latent=(64, 64))
    for kind in ("self", "cross"):
        for scale, indices in SEED_003_SCALES.items():
            assert [s.index for s in found if s.kind == kind and s.resolution == (scale, scale)] == indices
    assert {s.heads for s in found} == {8} and sorted({s.head_dim for s in found}) == [40, 80, 160]


def test_unet_blocks_and_odd_sizes_round_up_like_the_convolutions():
    found = attnkit.sites(meta_denoiser("sd15"), latent=(63, 41))
    assert found.select(block="mid")[0].resolution == (8, 6)
    assert [s.block for s in found.select(kind="self", index=[1, 7, 16])] == ["down.0", "mid.0", "up.3"]


def test_selection_filters(pipelines):
    found = attnkit.sites(pipelines["tiny-sd15"], height=64, width=64)
    largest = max(max(s.resolution) for s in found)
    assert all(s.kind == "cross" for s in found.select(kind="cross"))
    assert all(s.stage == "up" for s in found.select(block="up"))
    assert all(max(s.resolution) == largest for s in found.select(resolution=largest))
    assert [s.index for s in found.select(kind="self", index=range(1, 3))] == [1, 2]
    picked = found.select(where=lambda s: s.kind == "self" and s.stage == "down")
    assert picked and all(s.kind == "self" and s.stage == "down" for s in picked)
    name = found[0].name
    assert found.select(names=[name.removesuffix(".processor")]).names == [name]


def test_selection_errors_name_the_problem(pipelines):
    found = attnkit.sites(pipelines["tiny-sd3"])
    with pytest.raises(AttnkitError, match="no site matches kind=\\['cross'\\]"):
        found.select(kind="cross")
    with pytest.raises(AttnkitError, match="unknown site kind"):
        found.select(kind="crosss")
    with pytest.raises(AttnkitError, match="Did you mean 'transformer_blocks.0.attn.processor'"):
        found.get("transformer_blocks.0.atn.processor")
    with pytest.raises(AttnkitError, match="needs the image size"):
        found.select(resolution=4)


def test_unsupported_models_get_one_clear_error():
    plain = dict(block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
                 up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)
    with pytest.raises(AttnkitError, match="UNet2DModel: it has no attention processors at all"):
        attnkit.sites(UNet2DModel(**plain, add_attention=False))
    with pytest.raises(AttnkitError, match=r"UNet2DModel: it has attention modules \(Attention\), but attnkit does not know"):
        attnkit.sites(UNet2DModel(**plain))
    with pytest.raises(AttnkitError, match="expected a diffusers pipeline or model"):
        attnkit.sites("not a pipeline")
    with pytest.raises(AttnkitError, match="unsupported model Linear"):
        attnkit.sites(torch.nn.Linear(2, 2))


# --- a pipeline's ControlNet -----------------------------------------------------------------------------------------

def _controlnet_pipeline(nets: int = 1):
    from diffusers import MultiControlNetModel, StableDiffusionControlNetPipeline

    from attnkit.testing import build_pipeline, tiny_controlnet

    torch.set_num_threads(1)
    base = build_pipeline("tiny-sd15")
    controlnet = [tiny_controlnet(base.unet, seed=seed) for seed in range(nets)]
    pipe = StableDiffusionControlNetPipeline(**base.components, controlnet=controlnet[0] if nets == 1
                                             else MultiControlNetModel(controlnet))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe, nets: int = 1):
    from PIL import Image

    condition = Image.new("RGB", (64, 64), (255, 255, 255))
    with torch.inference_mode():
        return pipe("a red circle", image=[condition] * nets if nets > 1 else condition, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0), output_type="latent").images


def test_controlnet_sites_are_its_down_and_mid_blocks_named_as_the_pipeline_holds_them():
    pipe = _controlnet_pipeline()
    bare = attnkit.sites(pipe.controlnet)
    held = attnkit.sites(pipe, component="controlnet")
    assert {s.stage for s in held} == {"down", "mid"} and {s.kind for s in held} == {"self", "cross"}
    assert held.names == [f"controlnet.{name}" for name in bare.names]
    assert set(bare.names) == set(pipe.controlnet.attn_processors)
    assert [(s.kind, s.block, s.stride) for s in held] == [(s.kind, s.block, s.stride) for s in bare]
    unet = attnkit.sites(pipe)
    assert [(s.kind, s.block, s.stride) for s in held] == [(s.kind, s.block, s.stride) for s in unet
                                                             if s.stage in ("down", "mid")]
    two = _controlnet_pipeline(nets=2)
    both = attnkit.sites(two, component="controlnet")
    assert [s.component for s in both] == ["controlnet.nets.0"] * len(bare) + ["controlnet.nets.1"] * len(bare)


class _Seen(attnkit.Control):
    def __init__(self):
        self.seen = []

    def after(self, call, out, lse):
        self.seen.append((call.site.component, call.state.step, call.state.branches, call.grid))


def test_a_session_on_controlnet_sites_reads_the_pipelines_steps_and_branches_and_restores_its_processors():
    pipe = _controlnet_pipeline()
    plain = _generate(pipe)
    before = dict(pipe.controlnet.attn_processors)
    held = attnkit.sites(pipe, component="controlnet").select(kind="self")
    seen = _Seen()
    with attnkit.Session(pipe, [(seen, held), (seen, attnkit.sites(pipe).select(kind="self", block="up"))]):
        watched = _generate(pipe)
    assert torch.equal(watched, plain)  # an observing control leaves the generation bit-identical
    steps = len(pipe.scheduler.timesteps)
    assert sorted({step for component, step, _, _ in seen.seen if component}) == list(range(steps))
    assert {branches for _, _, branches, _ in seen.seen} == {("uncond", "cond")}
    assert len([s for s in seen.seen if s[0] == "controlnet"]) == len(held) * steps
    assert {grid for component, _, _, grid in seen.seen if component} == {s.grid((16, 16)) for s in held}
    assert all(pipe.controlnet.attn_processors[k] is v for k, v in before.items())


def test_controlnet_sites_of_a_model_the_pipeline_lacks_or_of_a_bare_model_are_one_error_each():
    pipe = _controlnet_pipeline()
    with pytest.raises(AttnkitError, match="has no model component 'adapter'"):
        attnkit.sites(pipe, component="adapter")
    with pytest.raises(AttnkitError, match="names a part of a pipeline"):
        attnkit.sites(pipe.unet, component="controlnet")
