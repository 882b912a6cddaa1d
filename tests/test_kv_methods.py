"""The published K/V methods attnkit names compute what their authors' code computes: each preset (two passes: the
reference recorded, then attended to) against an independent re-implementation of the reference code's equations
(one batched pass, as the reference runs it), in float64 on a UNet with SD1.5's layout and on tiny SDXL; and the
layers each method picks on the full-size SD1.5 and SDXL layouts.

The oracles below are written from the equations of the reference code named in each docstring (see also
`attnkit.kv.methods`); none is a copy of it. `PARITY` collects the largest difference each parity test measured; with
ATTNKIT_METHODS_JSON set, the session writes it there (benchmarks/methods.py turns it into the README's table).
"""

import json
import os

import pytest
import torch

import attnkit
import attnkit.kv as kv
from attnkit import AttnkitError
from attnkit.testing import build_pipeline, meta_denoiser, sd15_layout_pipeline

STEPS = 8  # MasaCtrl's steps 4 to 7 are controlled
PARITY: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_parity():
    yield
    target = os.environ.get("ATTNKIT_METHODS_JSON")
    if target and PARITY:
        found = json.loads(open(target).read()) if os.path.exists(target) else {}
        with open(target, "w") as out:
            json.dump(found | PARITY, out, indent=2, sort_keys=True)
            out.write("\n")


@pytest.fixture(scope="module")
def pipes():
    torch.set_num_threads(1)
    built = {"sd15-layout": sd15_layout_pipeline(), "tiny-sdxl": build_pipeline("tiny-sdxl")}
    for pipe in built.values():
        pipe.to(torch.float64)
    return built


def noise(pipe, seed=0):
    size = pipe.unet.config.sample_size
    return torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run(pipe, prompts, latents, **kwargs):
    with torch.inference_mode():
        return pipe(prompts, latents=latents, num_inference_steps=STEPS, output_type="latent", **kwargs).images


def two_passes(pipe, method, reference, edited, latents, **options):
    """attnkit's way: the reference generated and recorded, then the edit attending to it."""
    store = kv.KVStore()
    with kv.record(pipe, store, method=method, **options):
        source = run(pipe, reference, latents)
    with kv.inject(pipe, store, method=method, **options):
        target = run(pipe, edited, latents)
    return torch.cat([source, target])


def batched(pipe, oracle, reference, edited, latents):
    """The reference code's way: [reference, edit] in one batch, the oracle processor on every attention module."""
    before = dict(pipe.unet.attn_processors)
    pipe.unet.set_attn_processor(oracle)
    try:
        return run(pipe, [reference, edited], latents.expand(2, -1, -1, -1))
    finally:
        pipe.unet.set_attn_processor(before)


def heads(attn, x):
    return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)


def attention(q, k, v, scale, logits_shift=None):
    """softmax(q k^T scale) v, with `logits_shift` added to the logits of the keys it gives (a key mask)."""
    logits = q @ k.transpose(-1, -2) * scale
    if logits_shift is not None:
        logits = logits + logits_shift
    return logits.softmax(-1) @ v


class _Oracle:
    """A diffusers attention processor that runs the reference's rule at self-attention layers, with the reference
    code's own bookkeeping: a layer counter that ticks on every attention module call and a step counter that ticks
    when all have run (MasaCtrl's `AttentionBase.__call__`, masactrl_utils.py l.23-31)."""

    def __init__(self, unet):
        self.modules = len(unet.attn_processors)
        self.layer_calls = 0
        self.step = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        cross = encoder_hidden_states is not None
        context = encoder_hidden_states if cross else hidden_states
        q, k, v = (heads(attn, x) for x in (attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)))
        if cross:
            out = attention(q, k, v, attn.scale)
        else:
            out = self.self_attention(attn, q, k, v, layer=self.layer_calls // 2)
        self.layer_calls += 1
        if self.layer_calls == self.modules:
            self.layer_calls, self.step = 0, self.step + 1
        out = out.transpose(1, 2).flatten(2)
        return attn.to_out[1](attn.to_out[0](out))


class MasaCtrlOracle(_Oracle):
    """MutualSelfAttentionControl (TencentARC/MasaCtrl d0ba16bb, masactrl/masactrl.py l.20-72): at self-attention
    layers `start_layer` and after and steps in [start_step, total_steps), each item of a CFG half attends to the first
    item's keys and values only; `union` (`MutualSelfAttentionControlUnion`, l.75-111, as its code intends): to the
    first item's and its own, the first item's first, in one softmax."""

    def __init__(self, unet, start_step=4, start_layer=10, total_steps=50, union=False):
        super().__init__(unet)
        self.start_step, self.start_layer, self.total_steps, self.union = start_step, start_layer, total_steps, union

    def self_attention(self, attn, q, k, v, layer):
        if not (self.start_step <= self.step < self.total_steps and layer >= self.start_layer):
            return attention(q, k, v, attn.scale)
        half = q.shape[0] // 2
        outs = []
        for item in range(q.shape[0]):
            source = (item // half) * half
            keys, values = k[source:source + 1], v[source:source + 1]
            if self.union:
                keys, values = torch.cat([keys, k[item:item + 1]], 2), torch.cat([values, v[item:item + 1]], 2)
            outs.append(attention(q[item:item + 1], keys, values, attn.scale))
        return torch.cat(outs)


class StyleAlignedOracle(_Oracle):
    """StyleAligned's shared attention (google/style-aligned 2faf0af7, sa_handler.py l.43-71 and l.93-165): at every
    self-attention layer and step, each item's queries and keys (and values with `adain_values`) are normalised to
    the first item of its CFG half over the tokens (mean, unbiased variance plus 1e-5 inside the square root), and it
    attends to [its own keys ; the first item's keys x shared_score_scale] with [its own values ; the first item's]."""

    def __init__(self, unet, adain_queries=True, adain_keys=True, adain_values=False, shared_score_scale=1.0):
        super().__init__(unet)
        self.adain = {"q": adain_queries, "k": adain_keys, "v": adain_values}
        self.scale = shared_score_scale

    def self_attention(self, attn, q, k, v, layer):
        half = q.shape[0] // 2
        reference = [0] * half + [half] * half

        def normalised(x):
            mean, std = x.mean(-2, keepdim=True), (x.var(-2, keepdim=True) + 1e-5).sqrt()
            return (x - mean) / std * std[reference] + mean[reference]

        q, k, v = (normalised(x) if self.adain[name] else x for name, x in (("q", q), ("k", k), ("v", v)))
        scales = torch.tensor([1.0 if item in (0, half) else self.scale for item in range(q.shape[0])],
                              dtype=k.dtype)[:, None, None, None]
        keys = torch.cat([k, k[reference] * scales], 2)
        return attention(q, keys, torch.cat([v, v[reference]], 2), attn.scale)


CASES = {
    "masactrl": (MasaCtrlOracle, {}),
    "masactrl-union": (lambda unet, **o: MasaCtrlOracle(unet, union=True, **o), {}),
    "style-aligned": (StyleAlignedOracle, {}),
}


@pytest.mark.parametrize("method", CASES)
def test_each_image_method_equals_its_reference_codes_rule_on_sd15s_layout(pipes, method):
    pipe = pipes["sd15-layout"]
    make, options = CASES[method]
    latents = noise(pipe)
    want = batched(pipe, make(pipe.unet, **options), "a red circle", "a blue square", latents)
    got = two_passes(pipe, method, "a red circle", "a blue square", latents, **options)
    difference = float((got - want).abs().max())
    PARITY[f"{method}/sd15-layout"] = difference
    assert difference < 1e-10
    plain = run(pipe, "a blue square", latents)
    assert (got[1] - plain[0]).abs().max() > 1e-3  # the method changed the edit


@pytest.mark.parametrize(("method", "options", "oracle"), [
    ("masactrl", {"start_layer": 2, "start_step": 2}, {"start_layer": 2, "start_step": 2}),
    ("style-aligned", {"adain_values": True, "keys_scale": 0.5},
     {"adain_values": True, "shared_score_scale": 0.5}),
])
def test_options_by_the_reference_codes_names_equal_its_rule_on_tiny_sdxl(pipes, method, options, oracle):
    pipe = pipes["tiny-sdxl"]
    make, _ = CASES[method]
    latents = noise(pipe)
    want = batched(pipe, make(pipe.unet, **oracle), "a red circle", "a blue square", latents)
    got = two_passes(pipe, method, "a red circle", "a blue square", latents, **options)
    difference = float((got - want).abs().max())
    PARITY[f"{method}/tiny-sdxl"] = difference
    assert difference < 1e-10


def _layers(found, chosen):
    selves = [site for site in found if site.kind == "self"]
    return [selves.index(site) for site in chosen]


def test_masactrl_picks_sd15s_up_blocks_2_and_3_and_the_last_26_of_sdxls_70_layers():
    from attnkit.kv.methods import setup

    sd15 = meta_denoiser("sd15")
    chosen = setup(_Pipe(sd15), "masactrl", {}, video=False).sites
    assert {site.block for site in chosen} == {"up.2", "up.3"} and len(chosen) == 6
    assert _layers(attnkit.sites(sd15), chosen) == list(range(10, 16))
    sdxl = meta_denoiser("sdxl")
    chosen = setup(_Pipe(sdxl), "masactrl", {"start_layer": 44}, video=False).sites
    assert len(chosen) == 26 and _layers(attnkit.sites(sdxl), chosen) == list(range(44, 70))
    assert {site.module_name.split(".transformer_blocks")[0] for site in chosen} == {
        "up_blocks.0.attentions.1", "up_blocks.0.attentions.2", "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1", "up_blocks.1.attentions.2"}
    every = setup(_Pipe(sd15), "style-aligned", {}, video=False).sites
    assert len(every) == 16 and {site.kind for site in every} == {"self"}


class _Pipe:
    """A pipeline around a bare denoiser, for site selection without weights (meta device)."""

    def __init__(self, unet):
        self.components = {"unet": unet}
        self.unet = unet


def test_a_method_that_does_not_exist_another_methods_option_or_its_own_sites_are_one_error_each(pipes):
    pipe = pipes["sd15-layout"]
    store = kv.KVStore()
    with pytest.raises(AttnkitError, match="method='masactr': the image methods are masactrl, masactrl-union"):
        kv.inject(pipe, store, method="masactr")
    with pytest.raises(AttnkitError, match="a video method: `attnkit.kv.edit_video` takes it"):
        kv.inject(pipe, store, method="rerender")
    with pytest.raises(AttnkitError, match="adain_queries is an option of style-aligned"):
        kv.inject(pipe, store, method="masactrl", adain_queries=False)
    with pytest.raises(AttnkitError, match="sets its own sites, mode and steps .* leave out mode, kind"):
        kv.inject(pipe, store, mode="replace", method="masactrl", kind="self")
    with pytest.raises(AttnkitError, match="start_layer=16 leaves no layer: .* has 16 self-attention layers"):
        kv.inject(pipe, store, method="masactrl", start_layer=16)
    with pytest.raises(AttnkitError, match="keys_scale=0: give a finite number above 0"):
        kv.inject(pipe, store, method="style-aligned", keys_scale=0)
    sana = build_pipeline("tiny-sana")
    with pytest.raises(AttnkitError, match="no site where image tokens attend to image tokens"):
        kv.inject(sana, store, method="masactrl")


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_on_transformers_the_methods_act_on_image_tokens_and_keep_the_text_keys(name):
    """The declared adaptation: joint and single-stream sites, image keys replaced (MasaCtrl) or joined
    (StyleAligned), text keys as they were."""
    pipe = build_pipeline(name)
    options = {"max_sequence_length": 8}
    for method, added in (("masactrl", 0), ("style-aligned", 1)):
        store = kv.KVStore()
        with kv.record(pipe, store, method=method, start_layer=0) if method == "masactrl" else \
                kv.record(pipe, store, method=method):
            with torch.inference_mode():
                pipe("a red circle", num_inference_steps=6, output_type="latent", **options)
        shapes = []

        class Keys(attnkit.Control):
            name = "keys"

            def before(self, call):
                shapes.append((call.k.shape[2], call.layout.span("keys", "text"), call.layout.span("keys", "image")))

        extra = {"start_layer": 0} if method == "masactrl" else {}
        with kv.inject(pipe, store, method=method, **extra):
            with attnkit.attach(pipe, Keys(), kind=["joint", "single"]):
                with torch.inference_mode():
                    pipe("a blue square", num_inference_steps=6, output_type="latent", **options)
        grown = {keys - (text.stop - text.start) - (image.stop - image.start) for keys, text, image in shapes}
        assert all(text.stop > text.start for _, text, _ in shapes)
        assert max(grown) == added * max(image.stop - image.start for _, _, image in shapes)
