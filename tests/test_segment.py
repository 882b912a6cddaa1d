"""Segmentation from self-attention: DiffSeg's merging, the per-query recorder it reads, the API and the CLI."""

import inspect
import json

import numpy as np
import pytest
import torch
from PIL import Image

import attnkit
import attnkit.segment as seg
from attnkit.cli import main
from attnkit.errors import AttnkitError
from attnkit.families import family_of
from attnkit.recorders import RELATIONS, MapRecorder
from attnkit.segment import PerQuery
from attnkit.segment.diffseg import anchor_grid, kl, merge, segment_maps
from attnkit.shapes.scorer import detect
from attnkit.sites import architecture_of, denoiser_of
from attnkit.testing import PIPELINE_NAMES, TINY_IMAGE_SIZE, build_pipeline
from conftest import TINY

PARTITION = np.zeros((8, 8), int)
PARTITION[:, 4:] = 1
PARTITION[5:, 4:] = 2


def partition_maps(noise: float = 0.02, seed: int = 0) -> torch.Tensor:
    """One map per query of an 8x8 grid: uniform over the query's part of PARTITION, slightly perturbed."""
    rng = np.random.default_rng(seed)
    maps = []
    for part in PARTITION.reshape(-1):
        region = (PARTITION == part).astype(float) + 0.01
        region *= 1 + noise * rng.random(region.shape)
        maps.append(region / region.sum())
    return torch.tensor(np.stack(maps), dtype=torch.float32)


def same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    pairs = set(zip(labels.reshape(-1).tolist(), truth.reshape(-1).tolist()))
    return len(pairs) == len(np.unique(labels)) == len(np.unique(truth))


def test_kl_is_symmetric_and_zero_only_on_equal_maps():
    maps = partition_maps()
    assert torch.allclose(kl(maps[0], maps[0]), torch.tensor(0.0))
    assert torch.allclose(kl(maps[0], maps[63]), kl(maps[63], maps[0]))
    assert kl(maps[0], maps[63]) > 1


@pytest.mark.parametrize("refine", [True, False])
def test_merging_recovers_a_known_partition(refine):
    labels = segment_maps(partition_maps(), (8, 8), refine=refine)
    assert same_partition(labels, PARTITION)
    assert labels[0, 0] == 0  # ids follow reading order


def test_merging_upsamples_to_the_requested_size_and_keeps_the_partition():
    labels = segment_maps(partition_maps(), (32, 32))
    assert labels.shape == (32, 32)
    assert same_partition(labels[2::4, 2::4], PARTITION)


def test_a_threshold_below_the_within_part_distances_splits_parts():
    maps = partition_maps(noise=0.5)
    assert len(merge(maps, (1e-4,) * 3, refine=False)) > 3
    assert len(merge(maps, (1.1,) * 3, refine=False)) == 3


def test_anchor_grid_is_centred_and_capped_by_the_grid():
    assert anchor_grid(8, 8, 16).tolist() == list(range(64))
    rows, cols = np.divmod(anchor_grid(64, 64, 16).numpy(), 64)
    assert sorted(set(rows.tolist())) == sorted(set(cols.tolist())) == list(range(1, 62, 4))


def test_merge_refuses_maps_that_are_not_one_per_query():
    with pytest.raises(AttnkitError, match="one map per query"):
        merge(torch.rand(10, 8, 8))
    with pytest.raises(AttnkitError, match="positive KL threshold"):
        merge(partition_maps(), (0.0,))


def sd3_reference(pipe, prompt):
    """Image->image probabilities of every joint site at step 1, captured explicitly, mean over heads and
    renormalised per query, as PerQuery records them at each site's own grid."""

    class Capture(attnkit.Control):
        def __init__(self):
            self.maps = {}

        def after(self, call, out, lse):
            if call.state.step != 1:
                return
            cond = call.state.batch_index("cond")
            q, k = call.q[cond].double(), call.k[cond].double()
            probs = torch.softmax(q @ k.transpose(-1, -2) * call.scale, -1)
            image = call.layout.span("keys", "image")
            block = probs[:, :, image, image].mean(1)
            self.maps[call.site.name] = (block / block.sum(-1, keepdim=True)).float()

    capture = Capture()
    joint = attnkit.sites(pipe).select(kind="joint")
    recorder = MapRecorder(joint, relation="image->image", steps=[1], reduction=PerQuery())
    with attnkit.Session(pipe, [(capture, joint), (recorder, joint)]):
        with torch.inference_mode():
            pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent")
    return capture.maps, recorder


def test_per_query_maps_equal_the_explicit_self_attention_probabilities(pipelines):
    maps, recorder = sd3_reference(pipelines["tiny-sd3"], "a red circle")
    want = torch.stack(list(maps.values())).mean(0)  # every joint site has the same grid: equal weights
    rows = cols = int(want.shape[-1] ** 0.5)
    got = recorder.total / recorder.count
    assert got.shape == (want.shape[0], rows * cols, rows, cols)
    torch.testing.assert_close(got.reshape(want.shape), want, rtol=1e-4, atol=1e-6)


def test_per_query_buffer_is_flat_over_steps_and_bounded_by_the_anchor_grid(pipelines):
    pipe = pipelines["tiny-sd15"]
    chosen = attnkit.sites(pipe).select(kind="self")
    shapes = []
    for steps in (2, 5):
        recorder = MapRecorder(chosen, relation="image->image", reduction=PerQuery(max_side=4))
        with attnkit.Session(pipe, [(recorder, chosen)]), torch.inference_mode():
            pipe("a red circle", num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                 output_type="latent")
        recorder.check()
        shapes.append(tuple(recorder.total.shape))
        sums = (recorder.total / recorder.count).sum((-2, -1))
        torch.testing.assert_close(sums, torch.ones_like(sums))
    finest = max(max(s.grid((TINY_IMAGE_SIZE // pipe.vae_scale_factor,) * 2)) for s in chosen)
    assert finest > 4 and shapes[0] == shapes[1] == (1, 16, 4, 4)  # the cond item of the CFG batch


@pytest.mark.parametrize("name", TINY)
def test_generated_and_existing_images_segment_on_every_tiny_architecture(pipelines, name):
    pipe = pipelines[name]
    before = dict(denoiser_of(pipe).attn_processors)
    with seg.trace(pipe, "a red circle", timestep=500, thresholds=(0.01,) * 3) as tc, torch.inference_mode():
        image = pipe("a red circle", num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images[0]
    result = tc.segmentation(image)
    assert result.labels.shape == (image.height, image.width)
    assert sum(s.area for s in result.segments) == image.height * image.width
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    assert all(s.label in ("red", "circle", seg.BACKGROUND) for s in result.segments)
    for protocol in seg.PROTOCOLS:
        existing = seg.segment_image(pipe, image, timestep=500, thresholds=(0.01,) * 3, protocol=protocol)
        assert existing.labels.shape == (image.height, image.width)
        assert all(s.label is None for s in existing.segments) and existing.step is None
        if seg.PROTOCOLS[protocol].clean:
            assert existing.timestep == 500  # the clean latent, read at the very timestep asked for
        else:  # img2img: the one forward half way along its schedule; flow matching's shifted schedules lie higher
            unet = architecture_of(denoiser_of(pipe)).name == "unet"
            assert 400 < existing.timestep < 600 if unet else 400 < existing.timestep < 1000
    after = denoiser_of(pipe).attn_processors
    assert all(after[k] is before[k] for k in before)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_a_generation_is_read_at_the_step_whose_timestep_is_nearest(pipelines, name, steps):
    pipe = pipelines[name]
    timesteps = []

    def note(pipeline, i, t, tensors):
        timesteps.append(float(t))
        return tensors

    with seg.trace(pipe, "a red circle") as tc, torch.inference_mode():
        pipe("a red circle", num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
             output_type="latent", callback_on_step_end=note)
    result = tc.segmentation()
    distances = [abs(t - seg.DEFAULT_TIMESTEP) for t in timesteps]
    assert result.steps == len(timesteps)
    assert result.step == distances.index(min(distances)) and result.timestep == timesteps[result.step]


def test_the_clean_protocol_runs_the_denoiser_once_on_the_vae_posterior_mean_at_the_timestep(pipelines):
    pipe = pipelines["tiny-sd15"]
    image = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    seen = []
    handle = pipe.unet.register_forward_hook(lambda module, args, kwargs, out: seen.append((args, kwargs)),
                                             with_kwargs=True)
    try:
        seg.segment_image(pipe, image, timestep=250)
    finally:
        handle.remove()
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        mean = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        empty = pipe.text_encoder(pipe.tokenizer("", padding="max_length", max_length=77,
                                                 return_tensors="pt").input_ids)[0]
    (args, kwargs), = seen
    given = inspect.signature(type(pipe.unet).forward).bind(pipe.unet, *args, **kwargs).arguments
    torch.testing.assert_close(given["sample"], mean, rtol=1e-5, atol=1e-6)
    assert float(given["timestep"]) == 250
    torch.testing.assert_close(given["encoder_hidden_states"], empty)


def test_an_existing_image_is_read_with_a_scheduler_that_finds_its_step_by_the_timestep(pipelines):
    """DDIM keeps no step count, so sessions find its step by the forward's timestep: the one forward's own timestep
    stands in the run's timesteps while it runs, and the scheduler has its run's timesteps back afterwards."""
    from diffusers import DDIMScheduler

    pipe = pipelines["tiny-sd15"]
    scheduler = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(scheduler.config)
    try:
        result = seg.segment_image(pipe, Image.new("RGB", (64, 64), (200, 40, 40)), timestep=250)
        assert result.timestep == 250 and result.labels.shape == (64, 64)
        assert 250 not in pipe.scheduler.timesteps.tolist()
    finally:
        pipe.scheduler = scheduler


def test_protocols_and_their_options_are_checked(pipelines):
    pipe = pipelines["tiny-sd15"]
    image = Image.new("RGB", (64, 64))
    with pytest.raises(AttnkitError, match="unknown protocol 'diffsegg'.*'diffseg'"):
        seg.trace(pipe, protocol="diffsegg")
    with pytest.raises(AttnkitError, match="protocol 'img2img' reads an existing image"):
        seg.trace(pipe, protocol="img2img")
    with pytest.raises(AttnkitError, match="seed= draws the noise of protocol 'img2img'"):
        seg.segment_image(pipe, image, seed=3)
    with pytest.raises(AttnkitError, match="kmeans_iterations.*protocol 'diffseg' leaves out"):
        seg.segment_image(pipe, image, kmeans_iterations=10)
    assert seg.Options.of({"protocol": "diffseg-notebook", "kmeans_iterations": 10}).kmeans_iterations == 10
    notebook = seg.Options.of({"protocol": "diffseg-notebook"})
    assert (notebook.thresholds, notebook.refine) == ((0.9,) * 3, True)
    benchmark = seg.Options.of({})
    assert (benchmark.protocol, benchmark.thresholds, benchmark.refine) == ("diffseg", (1.1,) * 3, False)


def test_segment_threshold_is_the_architectures_at_the_nearest_swept_image_size():
    from attnkit.shapes import load
    from attnkit.shapes.evaluate import SEGMENT_THRESHOLDS, segment_threshold
    from attnkit.testing import build_pipeline

    pipe = load("shapes-sd3")
    chosen = {}
    for side in (64, 80, 112, 128, 256):
        pipe.vae.register_to_config(sample_size=side)
        chosen[side] = segment_threshold(pipe)
    assert chosen == {64: SEGMENT_THRESHOLDS["sd3", 64], 80: SEGMENT_THRESHOLDS["sd3", 64],
                      112: SEGMENT_THRESHOLDS["sd3", 128], 128: SEGMENT_THRESHOLDS["sd3", 128],
                      256: SEGMENT_THRESHOLDS["sd3", 128]}
    with pytest.raises(AttnkitError, match="no DiffSeg threshold for the pixart architecture"):
        segment_threshold(build_pipeline("tiny-pixart"))


def test_segments_of_a_shapes_image_are_named_by_its_words():
    from attnkit.shapes import load
    from attnkit.shapes.evaluate import generate, segment_options

    pipe = load("shapes-sd15")
    # the 16x16 and 8x8 grids: the mid block's 4x4 grid, weighted 4/28 as DiffSeg weights it, blurs a 64-px circle
    with seg.trace(pipe, "a red circle", resolutions=[16, 8], height=64, width=64, **segment_options(pipe)) as tc:
        image = generate(pipe, ["a red circle"], [0])[0]
    result = tc.segmentation()
    circle = max(detect(image), key=lambda blob: blob.area).mask
    on_circle = max(result.segments, key=lambda s: (result.labels[circle] == s.id).mean())
    on_rest = max(result.segments, key=lambda s: (result.labels[~circle] == s.id).mean())
    assert on_circle.label in ("red", "circle") and on_rest.label == seg.BACKGROUND


def test_segment_trace_restores_processors_when_generation_raises(pipelines):
    pipe = pipelines["tiny-sd3"]
    before = dict(pipe.transformer.attn_processors)

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with seg.trace(pipe, "a red circle"), torch.inference_mode():
            pipe("a red circle", num_inference_steps=4, callback_on_step_end=fail)
    assert all(pipe.transformer.attn_processors[k] is v for k, v in before.items())


def test_segment_options_are_checked(pipelines):
    pipe = pipelines["tiny-sd3"]
    with pytest.raises(AttnkitError, match="timestep=0"):
        seg.trace(pipe, timestep=0)
    with pytest.raises(AttnkitError, match="give `height` and"):
        seg.trace(pipe, resolutions=[4])
    with pytest.raises(AttnkitError, match=r"resolutions \[99\]"):
        seg.trace(pipe, resolutions=[99], height=64, width=64)
    with pytest.raises(AttnkitError, match="multiples of"):
        seg.segment_image(pipe, Image.new("RGB", (60, 64)))
    with pytest.raises(AttnkitError, match="PIL image"):
        seg.segment_image(pipe, np.zeros((64, 64, 3)))
    with pytest.raises(AttnkitError, match=r"unknown segmentation option\(s\) \['treshold'\]"):
        seg.trace(pipe, treshold=0.5)


def test_cli_segments_a_generated_image_and_writes_every_file(tmp_path):
    out = tmp_path / "gen"
    assert main(["segment", "tiny-sd15", "--prompt", "a red circle", "--out", str(out), "--steps", "4",
                 "--threshold", "0.01", "--resolutions", "16,8"]) == 0
    described = json.loads((out / "segments.json").read_text())
    segments = described["segments"]
    assert segments and set(segments[0]) == {"id", "label", "area", "bbox"}
    labels = Image.open(out / "labels.png")
    assert labels.mode == "P" and labels.size == Image.open(out / "image.png").size
    assert sum(s["area"] for s in segments) == labels.size[0] * labels.size[1]
    for s in segments:
        mask = np.asarray(Image.open(out / f"segment-{s['id']}.png")) > 0
        assert mask.sum() == s["area"]
    assert Image.open(out / "overlay.png").size == labels.size


@pytest.mark.parametrize("protocol", [[], ["--protocol", "diffseg-notebook", "--kmeans-iterations", "5"],
                                      ["--protocol", "img2img", "--seed", "3"]])
def test_cli_segments_an_existing_image_by_each_protocol(tmp_path, protocol):
    picture = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(picture)
    assert main(["segment", "tiny-flux", "--image", str(picture), "--out", str(tmp_path / "o"), *protocol]) == 0
    described = json.loads((tmp_path / "o" / "segments.json").read_text())
    assert (tmp_path / "o" / "labels.png").is_file() and described["step"] is None
    assert (described["timestep"] == 300) == ("img2img" not in protocol)


IMAGE_MODELS = [name for name in PIPELINE_NAMES if name.startswith("tiny-")]


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_cli_segments_a_two_step_run_of_every_tiny_family_and_says_which_step_it_read(tmp_path, capsys, name):
    pipe = build_pipeline(name)
    code = main(["segment", name, "--prompt", "a red circle", "--steps", "2", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    if family_of(pipe).video:
        assert code == 2 and "makes videos; `attnkit segment` segments one still image" in captured.err
        return
    if not any(s.kind in RELATIONS["image->image"][2] for s in attnkit.sites(pipe)):
        assert code == 2 and "no self-attention sites" in captured.err  # linear attention only (Sana)
        return
    assert code == 0, captured.err
    described = json.loads((tmp_path / "segments.json").read_text())
    assert described["steps"] >= 2 and 0 <= described["step"] < described["steps"]
    assert f"read at step {described['step']} of {described['steps']}" in captured.out


@pytest.mark.parametrize("setup, argv, message", [
    (None, ["--image", "{tmp}/missing.png"], "cannot read --image"),
    ("text", ["--image", "{tmp}/in.png"], "cannot read --image"),
    ("odd", ["--image", "{tmp}/in.png"], "multiples of"),
    (None, [], "give --prompt"),
    (None, ["--prompt", "a red circle", "--resolutions", "x"], "--resolutions"),
    (None, ["--prompt", "a red circle", "--protocol", "img2img"], "--protocol img2img reads an existing image"),
    ("ok", ["--image", "{tmp}/in.png", "--seed", "3"], "--seed draws the noise of --protocol img2img"),
    (None, ["--prompt", "a red circle", "--kmeans-iterations", "5"], "--protocol diffseg leaves out"),
])
def test_cli_bad_inputs_give_one_clear_error(tmp_path, capsys, setup, argv, message):
    if setup == "text":
        (tmp_path / "in.png").write_text("not an image")
    elif setup == "odd":
        Image.new("RGB", (60, 64)).save(tmp_path / "in.png")
    elif setup == "ok":
        Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["segment", "tiny-sd3", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("attnkit: error") == 1


def test_cli_an_unknown_protocol_is_a_usage_error_listing_the_protocols(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["segment", "tiny-sd3", "--prompt", "a red circle", "--protocol", "difseg", "--out", "o"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'difseg'" in err and "'diffseg-notebook'" in err


def test_the_per_query_reduction_maps_once_exported_says_where_it_moved():
    with pytest.raises(ImportError, match=r"attnkit\.maps\.PerQuery has moved: import it from attnkit\.segment"):
        from attnkit.maps import PerQuery  # noqa: F401
    from attnkit.segment import PerQuery as moved

    assert moved.relations == ("image->image",)
