"""Self-attention K/V injection: exact on its own reference, keyed by the loop's step, composable with other
controls, bounded in memory over a video, and released after every frame."""

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, HeunDiscreteScheduler
from PIL import Image

import attnkit
import attnkit.kv as kv
import attnkit.maps
from attnkit import AttnkitError, Control
from attnkit.kv.control import KVControl

MODELS = ("tiny-sd15", "tiny-sdxl", "tiny-sd3", "tiny-flux")


def latents(pipe, prompt="a red circle", steps=3, **kwargs):
    with torch.inference_mode():
        return pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                    output_type="latent", **kwargs).images


def processors(pipe):
    model = pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.unet
    return dict(model.attn_processors)


def recorded(pipe, **kwargs):
    store = kv.KVStore()
    with kv.record(pipe, store):
        plain = latents(pipe, **kwargs)
    return store, plain


@pytest.mark.parametrize("name", MODELS)
def test_replace_from_a_runs_own_store_reproduces_it_exactly(pipelines, name):
    pipe = pipelines[name]
    store, plain = recorded(pipe)
    assert torch.equal(plain, latents(pipe))  # recording changes nothing
    with kv.inject(pipe, store, mode="replace"):
        again = latents(pipe)
    assert torch.equal(again, plain)
    with kv.inject(pipe, store, mode="replace"):
        other = latents(pipe, "a blue square")
    assert not torch.equal(other, latents(pipe, "a blue square"))  # another prompt does follow the reference


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sdxl"])
def test_extending_self_attention_with_its_own_keys_changes_nothing(pipelines, name):
    """Self-attention over [own | own] is attention over own: each weight halves, the output stays."""
    pipe = pipelines[name]
    store, plain = recorded(pipe)
    with kv.inject(pipe, store, mode="extend"):
        extended = latents(pipe)
    torch.testing.assert_close(extended, plain, rtol=1e-5, atol=1e-5)


def test_blend_of_a_reference_with_itself_is_that_reference(pipelines):
    pipe = pipelines["tiny-sd15"]
    store, plain = recorded(pipe)
    with kv.inject(pipe, [store, store], mode="blend", weights=[0.25, 0.75]):
        blended = latents(pipe)
    torch.testing.assert_close(blended, plain, rtol=1e-5, atol=1e-5)


def test_two_denoiser_calls_per_step_load_their_own_step(pipelines):
    """Heun calls the denoiser twice per step at repeated timesteps; each loop iteration loads its own entry."""
    pipe = pipelines["tiny-sd15"]
    original = pipe.scheduler
    pipe.scheduler = HeunDiscreteScheduler.from_config(original.config)
    try:
        store, plain = recorded(pipe)
        with kv.inject(pipe, store, mode="replace"):
            again = latents(pipe)
        shuffled = kv.KVStore()
        steps = sorted({step for _, step, _ in store})
        for site, step, branch in store:  # each step's entry moved one loop iteration on
            shuffled.put(site, steps[(steps.index(step) + 1) % len(steps)], branch, *store.get(site, step, branch))
        with kv.inject(pipe, shuffled, mode="replace"):
            off_by_one = latents(pipe)
    finally:
        pipe.scheduler = original
    assert len(steps) == 2 * 3 - 1  # Heun: 2N - 1 loop iterations
    assert torch.equal(again, plain)
    assert not torch.equal(off_by_one, plain)


def test_steps_limit_where_references_are_loaded(pipelines):
    pipe = pipelines["tiny-sd15"]
    store, _ = recorded(pipe, prompt="a blue square")
    with kv.inject(pipe, store, mode="replace", steps=(0, 0)):
        nowhere = latents(pipe)
    with kv.inject(pipe, store, mode="replace", steps=(1, None)):
        late = latents(pipe)
    assert torch.equal(nowhere, latents(pipe))
    assert not torch.equal(late, nowhere)


class FullRowSums(Control):
    """Sum over every key of the probabilities of each image query, as a map recorder composed on the site sees."""

    name = "row-sums"
    needs_lse = True

    def __init__(self):
        self.sums, self.layouts = [], []

    def after(self, call, out, lse):
        self.sums.append(call.probabilities(lse, "image", slice(None)).sum(-1))
        self.layouts.append(call.layout.keys)


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sd3", "tiny-flux"])
def test_probabilities_over_extended_keys_sum_to_one_and_maps_trace_composes(pipelines, name):
    pipe = pipelines[name]
    store, _ = recorded(pipe)
    sums = FullRowSums()
    with kv.inject(pipe, store, mode="extend"), attnkit.attach(pipe, sums, kv.default_sites(pipe)):
        latents(pipe, "a blue square")
    assert all(keys[-1][0] == "reference" for keys in sums.layouts)
    torch.testing.assert_close(torch.cat([s.flatten() for s in sums.sums]),
                               torch.ones(sum(s.numel() for s in sums.sums)), rtol=1e-4, atol=1e-4)
    with kv.inject(pipe, store, mode="extend"), attnkit.maps.trace(pipe, "a blue square") as tc:
        latents(pipe, "a blue square")
    heat = tc.heatmap("square")
    assert torch.isfinite(heat).all() and heat.sum() > 0


def test_regional_mask_covers_reference_keys_appended_before_it(pipelines):
    """K/V extension first, the regional mask second: region texts stay hidden from other regions' image tokens,
    and every query may see the reference's tokens."""
    pipe = pipelines["tiny-sd3"]
    store, _ = recorded(pipe)
    spec = {"regions": [{"prompt": "a red circle", "box": [0, 0, 0.5, 1]},
                        {"prompt": "a blue square", "box": [0.5, 0, 1, 1]}]}
    masks = []

    class Mask(Control):
        name = "mask-log"

        def before(self, call):
            masks.append((call.layout, call.mask))

    with kv.inject(pipe, store, mode="extend"):
        with attnkit.regional(pipe, spec, max_sequence_length=8) as call:
            with attnkit.attach(pipe, Mask(), kind="joint"):
                with torch.inference_mode():
                    pipe(**call(seed=0, num_inference_steps=2), output_type="latent")
    layout, mask = masks[0]
    reference = layout.span("keys", "reference")
    text = layout.span("keys", "text")
    assert mask[..., reference].all()
    assert not mask[..., layout.span("queries", "image"), text].all()


def video(n=4, size=64):
    """A red square moving right over a grey background."""
    frames = []
    for i in range(n):
        image = Image.new("RGB", (size, size), (128, 128, 128))
        image.paste((220, 30, 30), (8 + 4 * i, 20, 28 + 4 * i, 40))
        frames.append(image)
    return frames


def test_video_store_holds_two_frames_worth_whatever_the_length(pipelines):
    pipe = pipelines["tiny-sd15"]
    first, previous = kv.KVStore(), kv.KVStore()
    held = []
    for _ in kv.edit_video(pipe, video(6), "a blue square", num_inference_steps=3, strength=0.6, first=first,
                           previous=previous, progress=False):
        held.append((first.nbytes, previous.nbytes))
    frame = held[0][0]
    assert frame > 0 and held[0][1] == 0
    assert all(a == frame and b <= frame for a, b in held) and held[-1][1] == frame
    assert first.nbytes == previous.nbytes == 0  # emptied after the last frame
    assert not any(type(p).__module__.startswith("attnkit") for p in processors(pipe).values())


@pytest.mark.parametrize("attend", ["none", "first", "first+previous"])
def test_first_frame_is_plain_img2img_and_later_frames_follow_the_attend_mode(pipelines, attend):
    pipe = pipelines["tiny-sd15"]
    frames = video(3)
    plain = list(kv.edit_video(pipe, frames, "a blue square", attend="none", num_inference_steps=3, progress=False))
    edited = list(kv.edit_video(pipe, frames, "a blue square", attend=attend, num_inference_steps=3, progress=False))
    same = [np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain, edited)]
    assert same == [True, attend == "none", attend == "none"]


@pytest.mark.parametrize(("attend", "later"), [("first", (1, 0)), ("first+previous", (2, 1))])
def test_the_first_frame_pass_stores_and_each_later_pass_loads(pipelines, monkeypatch, attend, later):
    seen = []
    before = kv.KVControl.before

    def spy(self, call):
        if not getattr(self, "seen", False):  # once per control: one per frame's pass
            self.seen = True
            seen.append((len(self.load), len(self.record)))
        return before(self, call)

    monkeypatch.setattr(kv.KVControl, "before", spy)
    list(kv.edit_video(pipelines["tiny-sd15"], video(3), "a blue square", attend=attend, num_inference_steps=2,
                       progress=False))
    assert seen == [(0, 1), later, later]  # (stores loaded, stores recorded) of each frame's pass


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
@pytest.mark.parametrize(("mode", "added_frames"), [("replace", 1), ("extend", 2)])
def test_later_frames_replace_or_extend_image_keys_and_keep_their_text_keys(pipelines, monkeypatch, name, mode,
                                                                           added_frames):
    seen = []
    before = kv.KVControl.before

    def spy(self, call):
        own_keys, own_text = call.k.shape[2], call.layout.span("keys", "text")
        image = call.layout.span("keys", "image")
        before(self, call)
        if self.load:
            text = call.layout.span("keys", "text")
            seen.append((call.k.shape[2] - own_keys, added_frames * (image.stop - image.start),
                         text.stop - text.start == own_text.stop - own_text.start))

    monkeypatch.setattr(kv.KVControl, "before", spy)
    list(kv.edit_video(pipelines[name], video(3), "a blue square", attend="first+previous", mode=mode,
                       num_inference_steps=2, progress=False))
    assert seen and all(added == expected and text_kept for added, expected, text_kept in seen)


def test_an_unknown_cross_frame_mode_is_refused(pipelines):
    with pytest.raises(AttnkitError, match="mode='blend': cross-frame attention either replaces"):
        next(kv.edit_video(pipelines["tiny-sd15"], video(2), "a blue square", mode="blend", progress=False))


def test_two_videos_in_a_row_share_no_state(pipelines):
    pipe = pipelines["tiny-sd15"]
    def run(frames):
        return np.stack([np.asarray(f) for f in kv.edit_video(pipe, frames, "a blue square", num_inference_steps=3,
                                                               progress=False)])

    alone = run(video(3))
    run([f.transpose(Image.FLIP_LEFT_RIGHT) for f in video(3)])
    assert np.array_equal(run(video(3)), alone)


def test_processors_and_stores_released_when_a_frame_raises(pipelines):
    pipe = pipelines["tiny-sd15"]
    before = processors(pipe)
    first, previous = kv.KVStore(), kv.KVStore()
    calls = []

    def fail_in_the_third_frame(pipeline, i, t, tensors):
        calls.append(i)
        if calls.count(0) == 3:
            raise RuntimeError("disk full")
        return tensors

    with pytest.raises(RuntimeError, match="disk full"):
        list(kv.edit_video(pipe, video(4), "a blue square", num_inference_steps=2, first=first, previous=previous,
                           progress=False, callback_on_step_end=fail_in_the_third_frame))
    after = processors(pipe)
    assert all(after[k] is before[k] for k in before)
    assert first.nbytes == previous.nbytes == 0


@pytest.mark.parametrize("name", MODELS)
def test_edit_video_runs_offline_on_every_family(pipelines, name):
    pipe = pipelines[name]
    edited = list(kv.edit_video(pipe, video(3), "a blue square", num_inference_steps=2, progress=False))
    assert [f.size for f in edited] == [(64, 64)] * 3


def test_edit_video_with_a_tiny_controlnet_uses_controlnet_img2img(pipelines):
    sd = pipelines["tiny-sd15"]
    controlnet = ControlNetModel.from_unet(sd.unet, conditioning_embedding_out_channels=(8, 16, 16))
    g = torch.Generator().manual_seed(0)
    for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:  # zero-initialised: wake up
        block.weight.data = torch.randn(block.weight.shape, generator=g) * 0.05
    frames = video(3)
    with_cn = list(kv.edit_video(sd, frames, "a blue square", num_inference_steps=2, controlnet=controlnet,
                                 progress=False))
    without = list(kv.edit_video(sd, frames, "a blue square", num_inference_steps=2, progress=False))
    assert len(with_cn) == 3 and not np.array_equal(np.asarray(with_cn[0]), np.asarray(without[0]))
    assert kv.video.img2img_pipeline(sd, controlnet).__class__.__name__ == "StableDiffusionControlNetImg2ImgPipeline"


def test_store_budget_is_one_error_naming_the_size_and_the_fix(pipelines):
    pipe = pipelines["tiny-sd15"]
    store = kv.KVStore(budget_bytes=1000)
    before = processors(pipe)
    with pytest.raises(AttnkitError, match=r"K/V store would hold .* MiB, over its budget .* float16"):
        with kv.record(pipe, store):
            latents(pipe)
    assert all(processors(pipe)[k] is before[k] for k in before)


def test_store_keeps_entries_in_the_chosen_dtype(pipelines):
    pipe = pipelines["tiny-sd15"]
    full, half = kv.KVStore(), kv.KVStore(dtype=torch.float16)
    with kv.record(pipe, full), kv.record(pipe, half):
        latents(pipe)
    assert half.nbytes * 2 == full.nbytes and len(half) == len(full)
    assert {half.get(*key)[0].dtype for key in half} == {torch.float16}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "swap"}, "mode='swap': choose one of replace, extend, blend"),
    ({"mode": "blend"}, "mode='blend' interpolates two or more references"),
    ({"mode": "extend", "weights": [1.0]}, "`weights` are for mode='blend'"),
    ({"steps": (3, 1)}, r"steps=\[3, 1\]: need 0 <= start <= end"),
])
def test_bad_options_are_refused_before_anything_runs(kwargs, message):
    with pytest.raises(AttnkitError, match=message):
        KVControl(load=[kv.KVStore()], **kwargs)


def test_cross_attention_sites_are_refused_and_a_missing_entry_is_named(pipelines):
    pipe = pipelines["tiny-sd15"]
    with pytest.raises(AttnkitError, match="cross-attention sites do not have"):
        kv.record(pipe, kv.KVStore(), kind="cross")
    store, _ = recorded(pipe, steps=2)
    with pytest.raises(AttnkitError, match="no entry for .* at step 3.*same sites, number of steps"):
        with kv.inject(pipe, store, mode="replace"):
            latents(pipe, steps=3)


@pytest.mark.parametrize("source", ["in.mp4", "in.gif", "frames"])
@pytest.mark.parametrize("target", ["out.mp4", "out.gif", "edited"])
def test_video_edit_command_reads_and_writes_mp4_gif_and_folders(tmp_path, source, target):
    from attnkit.cli import main
    from attnkit.videoio import probe, read_frames, write_frames

    write_frames(tmp_path / source, video(3), fps=5)
    assert main(["video-edit", "tiny-sd15", "--video", str(tmp_path / source), "--prompt", "a blue square",
                 "--out", str(tmp_path / target), "--steps", "2", "--frames", "2"]) == 0
    frames = list(read_frames(tmp_path / target))
    assert len(frames) == 2 and frames[0].size == (64, 64)
    size, fps = probe(tmp_path / target)
    want = 5 if source != "frames" and target != "edited" else 8  # a folder keeps no frame rate: 8 by default
    assert fps == pytest.approx(want, rel=0.05)  # GIF frame times are whole centiseconds


def test_video_edit_command_gives_one_clear_error_for_each_bad_input(tmp_path, capsys):
    from attnkit.cli import main
    from attnkit.videoio import write_frames

    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    (tmp_path / "broken.gif").write_bytes(b"GIF89a but nothing else")
    write_frames(tmp_path / "odd.gif", [f.resize((60, 64)) for f in video(2)], fps=5)
    cases = {
        "missing.mp4": "no video at",
        "broken.mp4": "cannot read",
        "broken.gif": "cannot read",
        "empty": "holds no frames",
        "odd.gif": "--width 60 is not a multiple of 8",
    }
    for name, message in cases.items():
        code = main(["video-edit", "tiny-sd15", "--video", str(tmp_path / name), "--prompt", "a blue square",
                     "--out", str(tmp_path / "out.gif"), "--steps", "2"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (name, lines)
    assert not (tmp_path / "out.gif").exists()


def test_video_edit_command_runs_text2video_zero_with_the_shipped_edge_controlnet(tmp_path, capsys):
    from attnkit.cli import main
    from attnkit.videoio import read_frames, write_frames

    write_frames(tmp_path / "in.gif", video(3), fps=5)
    argv = ["video-edit", "shapes-sd15", "--video", str(tmp_path / "in.gif"), "--prompt", "a blue square", "--steps",
            "3", "--frames", "2", "--method", "text2video-zero", "--controlnet", "shapes-sd15-edges"]
    assert main([*argv, "--out", str(tmp_path / "out.gif")]) == 0
    assert len(list(read_frames(tmp_path / "out.gif"))) == 2
    assert main([*argv, "--out", str(tmp_path / "again.gif"), "--attend", "first"]) == 2
    assert "--method text2video-zero sets which frames later frames attend to; leave out --attend" in \
        capsys.readouterr().err
    assert not (tmp_path / "again.gif").exists()


def test_reference_image_is_recorded_at_every_step_and_puts_the_generated_object_where_the_reference_has_its():
    """Existing one-object images given as the reference of a prompt for another object: with their K/V in place of
    the generation's own, shapes-flux draws its object over the reference's object, which the same seed without the
    reference draws elsewhere."""
    from attnkit import shapes
    from attnkit.shapes.data import random_scene
    from attnkit.shapes.scorer import detect

    pipe = shapes.load("shapes-flux")
    pipe.set_progress_bar_config(disable=True)
    options = {"num_inference_steps": 8, "negative_prompt": "", **shapes.call_kwargs(pipe),
               **shapes.guidance_kwargs(pipe)}

    def overlap(image, where):
        drawn = np.any([blob.mask for blob in detect(np.asarray(image))], axis=0)
        return float((drawn & where).sum() / (drawn | where).sum())

    def generate():
        with torch.inference_mode():
            return pipe("a blue circle", generator=torch.Generator().manual_seed(1), height=64, width=64,
                        **options).images[0]

    plain, guided = [], []
    for seed in (5, 6, 7, 8):
        scene = random_scene(seed, count=1)
        store = kv.record_image(pipe, Image.fromarray(scene.image), **options)
        if seed == 5:
            assert {step for _, step, _ in store} == set(range(8))
            assert {branch for *_, branch in store} == {"cond", "uncond"}  # Flux true CFG: two passes per step
        plain.append(overlap(generate(), scene.masks[0]))
        with kv.reference(pipe, store, mode="replace"):
            guided.append(overlap(generate(), scene.masks[0]))
    assert all(g > p + 0.1 for g, p in zip(guided, plain)), (plain, guided)


def test_a_reference_recorded_at_another_size_is_refused(pipelines):
    pipe = pipelines["tiny-sd15"]
    store, _ = recorded(pipe)
    with pytest.raises(AttnkitError, match=r"has \[64\] image tokens here, this run 16: .* another size"):
        with kv.inject(pipe, store, mode="replace"):
            latents(pipe, height=32, width=32)


def test_reference_must_be_an_image_or_a_store(pipelines):
    with pytest.raises(AttnkitError, match="reference must be a PIL image or an attnkit.kv.KVStore, got str"):
        kv.reference(pipelines["tiny-sd15"], "reference.png")
