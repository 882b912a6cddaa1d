"""A LoRA per region: one region over the whole image is the pipeline with that adapter active; a region's adapter
changes no token outside it; two regions' adapters each act on their own tokens as that adapter alone would; the
pipeline's adapters are as before afterwards; LoRA files load and unload by name; and every bad input is one error
before anything runs.

The adapters are random (`init_lora_weights=False`) on every Linear and Conv2d of the denoiser unless said
otherwise, so that the layers outside attention (time and pooled-text embeddings, convolutions, feed-forwards) are
covered too."""

import math

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict

import attnkit
from attnkit import AttnkitError
from attnkit.families import denoiser_of
from attnkit.lora import lora_layers
from attnkit.regional import load_spec
from attnkit.testing import build_pipeline

LEFT, RIGHT = [0, 0, 0.5, 1], [0.5, 0, 1, 1]
#: Families whose every Linear and Conv2d takes a LoRA per region (the rest: see test_families_..._refuse_...).
EVERY_LAYER = ("tiny-sd15", "tiny-sdxl", "tiny-sd3", "tiny-flux", "tiny-qwenimage", "tiny-cogview4", "tiny-flux2")
SHORT = {"tiny-sd3": 16, "tiny-flux": 16, "tiny-qwenimage": 16, "tiny-cogview4": 16}


def with_adapters(name, names=("A",), layers=(torch.nn.Linear, torch.nn.Conv2d), seed=0, dtype=torch.float64):
    """A tiny pipeline whose denoiser holds random LoRA adapters `names` on every layer of `layers`, disabled."""
    pipe = build_pipeline(name).to(dtype)
    pipe.set_progress_bar_config(disable=True)
    denoiser = denoiser_of(pipe)
    targets = [n for n, m in denoiser.named_modules() if isinstance(m, layers) and n]
    for i, adapter in enumerate(names):
        torch.manual_seed(seed + i)
        denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False),
                             adapter_name=adapter)
    denoiser.disable_adapters()
    return pipe


def options(name):
    return {"max_sequence_length": SHORT[name]} if name in SHORT else {}


def latents(pipe, **kwargs):
    with torch.inference_mode():
        return pipe(output_type="latent", num_inference_steps=2, **kwargs).images


def plain_with(pipe, name, adapters, prompt="a red circle"):
    """The stock pipeline with `adapters` ({name: weight}) active, called as a user calls it."""
    denoiser = denoiser_of(pipe)
    denoiser.enable_adapters()
    denoiser.set_adapters(list(adapters), list(adapters.values()))
    try:
        return latents(pipe, prompt=prompt, generator=torch.Generator().manual_seed(3), **options(name))
    finally:
        denoiser.disable_adapters()


@pytest.mark.parametrize("name", EVERY_LAYER)
def test_one_whole_image_region_with_a_lora_is_the_pipeline_with_that_adapter_active(name):
    pipe = with_adapters(name)
    want = plain_with(pipe, name, {"A": 0.75})
    spec = {"regions": [{"prompt": "a red circle", "box": [0, 0, 1, 1], "lora": {"A": 0.75}}]}
    with attnkit.regional(pipe, spec, **options(name)) as regions:
        got = latents(pipe, **regions(seed=3))
    without = latents(pipe, prompt="a red circle", generator=torch.Generator().manual_seed(3), **options(name))
    assert float((got - want).abs().max()) < 1e-10
    assert float((want - without).abs().max()) > 1e-2  # the adapter does change the picture


def test_with_the_couple_method_too(pipelines):
    pipe = with_adapters("tiny-sd15")
    want = plain_with(pipe, "tiny-sd15", {"A": 1.0})
    spec = {"method": "couple", "regions": [{"prompt": "a red circle", "box": [0, 0, 1, 1], "lora": {"A": 1.0}}]}
    with attnkit.regional(pipe, spec) as regions:
        got = latents(pipe, **regions(seed=3))
    assert float((got - want).abs().max()) < 1e-10


class FirstCalls:
    """Keeps the input and output of the first call of every LoRA layer of a denoiser."""

    def __init__(self, denoiser):
        self.kept, self.hooks = {}, []
        for name, layer in lora_layers(denoiser):
            self.hooks.append(layer.register_forward_hook(self.keeper(name)))

    def keeper(self, name):
        def keep(module, args, out):
            self.kept.setdefault(name, (module, args[0], out))

        return keep

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()


def right_half(out, name):
    """The part of a layer's output on the right half of the image (image tokens or cells only)."""
    if out.dim() == 4:
        return out[..., out.shape[-1] // 2:], out[..., : out.shape[-1] // 2]
    side = math.isqrt(out.shape[1])
    grid = out.reshape(out.shape[0], side, side, -1)
    return grid[:, :, side // 2:], grid[:, :, : side // 2]


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sd3"])
def test_a_regions_lora_changes_no_token_outside_it_at_the_first_layer_it_touches(name):
    """Left region with adapter A, right region without: the first LoRA layer on image tokens adds nothing (exactly)
    on the right half, and something on the left."""
    pipe = with_adapters(name, layers=(torch.nn.Linear,))
    spec = {"regions": [{"prompt": "a red circle", "box": LEFT, "lora": {"A": 1.0}},
                        {"prompt": "a blue square", "box": RIGHT}]}
    with FirstCalls(denoiser_of(pipe)) as calls, attnkit.regional(pipe, spec, **options(name)) as regions:
        latents(pipe, **regions(seed=3))
    checked = 0
    for layer_name, (layer, x, out) in calls.kept.items():
        if out.dim() != 3 or math.isqrt(out.shape[1]) ** 2 != out.shape[1] or out.shape[1] < 16:
            continue  # image tokens of a square grid only
        with torch.inference_mode():
            delta = out - layer.base_layer(x)
        right, left = right_half(delta, layer_name)
        assert torch.count_nonzero(right) == 0, layer_name
        assert float(left.abs().max()) > 0, layer_name
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-flux"])
def test_two_regions_with_two_loras_each_compute_on_their_tokens_what_their_lora_alone_computes(name):
    pipe = with_adapters(name, names=("A", "B"), layers=(torch.nn.Linear,))
    spec = {"regions": [{"prompt": "a red circle", "box": LEFT, "lora": {"A": 1.0}},
                        {"prompt": "a blue square", "box": RIGHT, "lora": {"B": 0.5}}]}
    with FirstCalls(denoiser_of(pipe)) as calls, attnkit.regional(pipe, spec, **options(name)) as regions:
        latents(pipe, **regions(seed=3))
    denoiser = denoiser_of(pipe)
    compared = 0
    for layer_name, (layer, x, out) in calls.kept.items():
        if out.dim() != 3 or math.isqrt(out.shape[1]) ** 2 != out.shape[1] or out.shape[1] < 16:
            continue
        denoiser.enable_adapters()
        try:
            alone = {}
            for adapter, weight in (("A", 1.0), ("B", 0.5)):
                denoiser.set_adapters([adapter], [weight])
                with torch.inference_mode():
                    alone[adapter] = layer(x)
        finally:
            denoiser.disable_adapters()
        right, left = right_half(out, layer_name)
        assert torch.allclose(left, right_half(alone["A"], layer_name)[1], rtol=0, atol=1e-12), layer_name
        assert torch.allclose(right, right_half(alone["B"], layer_name)[0], rtol=0, atol=1e-12), layer_name
        compared += 1
    assert compared > 0


def adapter_state(pipe):
    denoiser = denoiser_of(pipe)
    return (list(denoiser.active_adapters()) if callable(denoiser.active_adapters) else denoiser.active_adapters,
            [(name, dict(layer.scaling), layer.disable_adapters, tuple(layer.active_adapters))
             for name, layer in lora_layers(denoiser)],
            dict(denoiser.attn_processors))


def test_the_pipelines_adapters_scales_and_processors_are_as_before_after_the_session_and_after_an_error():
    pipe = with_adapters("tiny-sd15", names=("A", "B"))
    denoiser = denoiser_of(pipe)
    denoiser.enable_adapters()
    denoiser.set_adapters(["B"], [0.3])  # the user's own adapter, active everywhere
    before = adapter_state(pipe)
    spec = {"regions": [{"prompt": "a red circle", "box": LEFT, "lora": {"A": 1.0}},
                        {"prompt": "a blue square", "box": RIGHT}]}
    with attnkit.regional(pipe, spec) as regions:
        latents(pipe, **regions(seed=3))
    assert adapter_state(pipe) == before
    with pytest.raises(RuntimeError, match="inside"):
        with attnkit.regional(pipe, spec) as regions:
            raise RuntimeError("inside")
    assert adapter_state(pipe) == before
    with pytest.raises(AttnkitError, match="does not hold"):
        with attnkit.regional(pipe, {"regions": [{"prompt": "a", "box": [0, 0, 1, 1], "lora": {"C": 1.0}}]}):
            pass
    assert adapter_state(pipe) == before
    assert all(not getattr(layer, "_diffusers_hook", None) or not layer._diffusers_hook.hooks
               for _, layer in lora_layers(denoiser))


def test_adapters_the_spec_does_not_name_still_apply_everywhere():
    """The user's active adapter B stays on the whole image while the spec's A is on its region: with one region
    over the whole image that is the pipeline with both active."""
    pipe = with_adapters("tiny-sd15", names=("A", "B"))
    want = plain_with(pipe, "tiny-sd15", {"A": 1.0, "B": 0.3})
    denoiser = denoiser_of(pipe)
    denoiser.enable_adapters()
    denoiser.set_adapters(["B"], [0.3])
    with attnkit.regional(pipe, {"regions": [{"prompt": "a red circle", "box": [0, 0, 1, 1],
                                              "lora": {"A": 1.0}}]}) as regions:
        got = latents(pipe, **regions(seed=3))
    denoiser.disable_adapters()
    assert float((got - want).abs().max()) < 1e-10


def test_a_text_encoder_lora_encodes_each_regions_prompt_with_its_own_adapter():
    pipe = with_adapters("tiny-sd15")
    torch.manual_seed(5)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                       init_lora_weights=False), pipe.text_encoder, adapter_name="A")
    pipe.text_encoder.to(torch.float64)
    pipe.enable_lora()
    pipe.set_adapters(["A"], [1.0])
    want = latents(pipe, prompt="a red circle", generator=torch.Generator().manual_seed(3))
    pipe.disable_lora()
    with attnkit.regional(pipe, {"regions": [{"prompt": "a red circle", "box": [0, 0, 1, 1],
                                              "lora": {"A": 1.0}}]}) as regions:
        got = latents(pipe, **regions(seed=3))
    assert float((got - want).abs().max()) < 1e-10


def saved_lora(pipe, folder, adapter="A"):
    """`adapter` of `pipe`'s denoiser written as a diffusers LoRA file."""
    denoiser = denoiser_of(pipe)
    layers = get_peft_model_state_dict(denoiser, adapter_name=adapter)
    key = "unet_lora_layers" if getattr(pipe, "unet", None) is not None else "transformer_lora_layers"
    type(pipe).save_lora_weights(folder, **{key: layers}, safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


def test_a_lora_file_named_in_the_spec_is_loaded_for_the_session_and_removed_after(tmp_path):
    source = with_adapters("tiny-sd15", layers=(torch.nn.Linear,))
    path = saved_lora(source, tmp_path)
    want = plain_with(source, "tiny-sd15", {"A": 1.0})
    pipe = build_pipeline("tiny-sd15").to(torch.float64)
    spec = {"loras": {"purple": str(path)},
            "regions": [{"prompt": "a red circle", "box": [0, 0, 1, 1], "lora": {"purple": 1.0}}]}
    with attnkit.regional(pipe, spec) as regions:
        got = latents(pipe, **regions(seed=3))
    assert float((got - want).abs().max()) < 1e-10
    assert not lora_layers(pipe.unet) or not any("purple" in layer.lora_A for _, layer in lora_layers(pipe.unet))


@pytest.mark.parametrize(("spec", "error"), [
    ({"regions": [{"prompt": "a", "box": [0, 0, 1, 1], "lora": {"A": float("nan")}}]},
     "region 1 .*the weight of LoRA 'A' must be a finite number"),
    ({"regions": [{"prompt": "a", "box": [0, 0, 1, 1], "lora": {"A": "strong"}}]},
     "the weight of LoRA 'A' must be a finite number"),
    ({"regions": [{"prompt": "a", "box": [0, 0, 1, 1], "lora": ["A"]}]}, "`lora` maps adapter names to weights"),
    ({"base": {"prompt": "b", "lora": {"A": math.inf}}, "regions": [{"prompt": "a", "box": [0, 0, 1, 1]}]},
     "base: the weight of LoRA 'A' must be a finite number"),
    ({"loras": {"A": "a.safetensors"}, "regions": [{"prompt": "a", "box": [0, 0, 1, 1]}]},
     r"`loras` lists \['A'\], which no region .* names"),
])
def test_a_bad_lora_entry_in_a_spec_is_one_error(spec, error):
    with pytest.raises(AttnkitError, match=error):
        load_spec(spec)


def test_a_lora_not_loaded_a_missing_file_a_file_that_is_no_lora_and_one_for_another_model_are_errors(tmp_path):
    pipe = build_pipeline("tiny-sd15")
    region = {"prompt": "a red circle", "box": [0, 0, 1, 1], "lora": {"P": 1.0}}
    with pytest.raises(AttnkitError, match=r"names LoRA adapter\(s\) \['P'\], which UNet2DConditionModel does not "
                                           r"hold \(it holds none\): load them first"):
        with attnkit.regional(pipe, {"regions": [region]}):
            pass
    with pytest.raises(AttnkitError, match="LoRA 'P': no file at"):
        with attnkit.regional(pipe, {"loras": {"P": str(tmp_path / "none.safetensors")}, "regions": [region]}):
            pass
    text = tmp_path / "notes.safetensors"
    text.write_text("not a LoRA")
    with pytest.raises(AttnkitError, match="is not a LoRA file diffusers can load into StableDiffusionPipeline"):
        with attnkit.regional(pipe, {"loras": {"P": str(text)}, "regions": [region]}):
            pass
    other = saved_lora(with_adapters("tiny-sd3", layers=(torch.nn.Linear,), dtype=torch.float32), tmp_path)
    with pytest.raises(AttnkitError, match="(has no weights for UNet2DConditionModel: it was made for another model|"
                                           "is not a LoRA file diffusers can load)"):
        with attnkit.regional(pipe, {"loras": {"P": str(other)}, "regions": [region]}):
            pass
    assert not any(lora_layers(pipe.unet)) or not any("P" in layer.lora_A for _, layer in lora_layers(pipe.unet))


def test_fused_adapters_are_refused_with_the_fix():
    pipe = with_adapters("tiny-sd15", layers=(torch.nn.Linear,))
    denoiser = denoiser_of(pipe)
    denoiser.enable_adapters()
    denoiser.set_adapters(["A"], [1.0])
    pipe.fuse_lora(adapter_names=["A"])
    with pytest.raises(AttnkitError, match=r"fused into this layer's weights .*pipe.unfuse_lora\(\)"):
        with attnkit.regional(pipe, {"regions": [{"prompt": "a", "box": [0, 0, 1, 1], "lora": {"A": 1.0}}]}) as r:
            latents(pipe, **r(seed=0))


@pytest.mark.parametrize("name", ["tiny-auraflow", "tiny-zimage"])
def test_families_whose_text_stream_holds_tokens_the_regions_do_not_refuse_a_lora_there_by_name(name):
    """AuraFlow's register tokens and Z-Image's padded caption refiner carry text the region spec does not lay out,
    so a LoRA layer there cannot be given to one region: one error names the layer."""
    pipe = with_adapters(name, layers=(torch.nn.Linear,), dtype=torch.float32)
    spec = {"regions": [{"prompt": "a red circle", "box": [0, 0, 1, 1], "lora": {"A": 1.0}}]}
    with pytest.raises(AttnkitError, match="cannot tell which region each token belongs to"):
        with attnkit.regional(pipe, spec) as regions:
            latents(pipe, **regions(seed=3))
    assert all(not getattr(layer, "_diffusers_hook", None) or not layer._diffusers_hook.hooks
               for _, layer in lora_layers(denoiser_of(pipe)))


def test_attnkit_regional_lora_loads_a_file_for_the_run_and_the_png_records_which_region_had_it(tmp_path, capsys):
    import json

    import yaml
    from PIL import Image

    from attnkit.cli import main

    path = saved_lora(with_adapters("tiny-sd15", layers=(torch.nn.Linear,), dtype=torch.float32), tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"regions": [{"prompt": "a red circle", "box": LEFT, "lora": {"purple": 1.0}},
                                                {"prompt": "a blue square", "box": RIGHT}]}))
    argv = ["regional", "tiny-sd15", "--spec", str(spec), "--steps", "2", "--seed", "1"]
    assert main([*argv, "--lora", f"purple={path}", "--out", str(tmp_path / "with.png")]) == 0
    record = json.loads(Image.open(tmp_path / "with.png").text["attnkit"])
    assert record["spec"]["loras"] == {"purple": str(path.resolve())}
    assert record["spec"]["regions"][0]["lora"] == {"purple": 1.0} and "lora" not in record["spec"]["regions"][1]
    assert main([*argv, "--out", str(tmp_path / "without.png")]) == 2  # the region names an adapter not loaded
    assert "names LoRA adapter(s) ['purple']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main([*argv, "--lora", "purple", "--out", str(tmp_path / "x.png")])
    assert usage.value.code == 2 and "--lora: got 'purple'; give NAME=PATH" in capsys.readouterr().err
    assert main([*argv, "--lora", f"purple={tmp_path / 'none.safetensors'}", "--out", str(tmp_path / "x.png")]) == 2
    assert "none.safetensors: no such file" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "without.png").exists()


def test_the_shapes_lora_trainer_writes_a_file_diffusers_loads_and_a_region_can_name():
    """A few steps of `python -m attnkit.shapes.lora`'s recipe on shapes-sd3: the file loads as users load LoRAs,
    under its effect's name, and one whole-image region with it is the pipeline with it active."""
    import tempfile
    from pathlib import Path

    from attnkit import shapes
    from attnkit.shapes.lora import save, train

    pipe = shapes.load("shapes-sd3")
    pipe.set_progress_bar_config(disable=True)
    record = train(pipe, "red-to-yellow", steps=2, batch=2, lr=1e-3, rank=4, scenes=8, seed=0, minutes=5)
    assert record["steps"] == 2 and set(record["targets"]) >= {"to_q", "add_k_proj"}
    with tempfile.TemporaryDirectory() as folder:
        path = save(pipe, "red-to-yellow", Path(folder), record)
        fresh = shapes.load("shapes-sd3")
        fresh.set_progress_bar_config(disable=True)
        fresh.load_lora_weights(str(path), adapter_name="red-to-yellow")
    call = {"num_inference_steps": 2, "output_type": "latent", **shapes.call_kwargs(fresh)}
    with torch.inference_mode():
        want = fresh("a red circle", generator=torch.Generator().manual_seed(0), **call).images
        fresh.disable_lora()
        spec = {"regions": [{"prompt": "a red circle", "box": [0, 0, 1, 1], "lora": {"red-to-yellow": 1.0}}]}
        with attnkit.regional(fresh, spec, **shapes.call_kwargs(fresh)) as regions:
            got = fresh(**regions(seed=0), **{k: v for k, v in call.items() if k != "max_sequence_length"}).images
    assert float((got - want).abs().max()) < 1e-5


def test_shipped_loras_are_the_shapes_models_lora_files_and_a_missing_one_is_an_error_naming_them():
    from attnkit.shapes import MODEL_NAMES, model_folder
    from attnkit.shapes.lora import lora_file, shipped_loras

    sd3 = model_folder("shapes-sd3") / "lora" / "red-to-yellow.safetensors"
    assert shipped_loras("shapes-sd3") == {"red-to-yellow": sd3}
    assert shipped_loras("tiny-sd3") == {} and shipped_loras("/some/model/folder") == {}
    assert lora_file("shapes-sd15") == shipped_loras("shapes-sd15")["red-to-yellow"]
    without = [name for name in MODEL_NAMES if not shipped_loras(name)]
    with pytest.raises(AttnkitError, match=r"no LoRA 'red-to-yellow' ships with .*shipped: .*shapes-sd3/red-to-yellow"):
        lora_file(without[0])
    with pytest.raises(AttnkitError, match="no LoRA 'purple' ships with 'shapes-sd3'"):
        lora_file("shapes-sd3", "purple")
