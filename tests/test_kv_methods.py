"""The published K/V methods attnkit names compute what their authors' code computes: each preset (two passes: the
reference recorded, then attended to) against an independent re-implementation of the reference code's equations
(one batched pass, as the reference runs it), in float64 on a UNet with SD1.5's layout and on tiny SDXL; and the
layers each method picks on the full-size SD1.5 and SDXL layouts.

The oracles below are written from the equations of the reference code named in each docstring (see also
`attnkit.kv.methods`); none is a copy of it. Each parity test puts the largest difference it measured into the
`figures` fixture (written out where ATTNKIT_METHODS_JSON is set: benchmarks/methods.py makes the table of
docs/methods.md).
"""

import pytest
import torch
import torch.nn.functional as F

import attnkit
import attnkit.kv as kv
from attnkit import AttnkitError
from attnkit.testing import build_pipeline, meta_denoiser, sd15_layout_pipeline

STEPS = 8  # MasaCtrl's steps 4 to 7 are controlled
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
    """The reference code's way: [reference, edit] in one batch, the oracle processor on every attention module
    (and, where the oracle shares them, its GroupNorms on every GroupNorm)."""
    before = dict(pipe.unet.attn_processors)
    pipe.unet.set_attn_processor(oracle)
    norms = [m for m in pipe.unet.modules() if isinstance(m, torch.nn.GroupNorm)] if oracle.share_group_norm else []
    for module in norms:
        module.forward = shared_group_norm(module)
    try:
        return run(pipe, [reference, edited], latents.expand(2, -1, -1, -1))
    finally:
        pipe.unet.set_attn_processor(before)
        for module in norms:
            del module.forward


def shared_group_norm(module):
    """StyleAligned's shared GroupNorm (sa_handler.py l.232-261): each item is normalised over its own features and
    the first item's of its CFG half, stacked along the height, and keeps its own half of the result."""
    def forward(x):
        half = x.shape[0] // 2
        reference = [0] * half + [half] * half
        height = x.shape[-2]
        joint = torch.cat([x, x[reference]], dim=-2)
        return F.group_norm(joint, module.num_groups, module.weight, module.bias, module.eps)[..., :height, :]

    return forward


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

    share_group_norm = False

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

    def __init__(self, unet, start_step=4, start_layer=10, total_steps=50, union=False, mask_s=None, mask_t=None):
        super().__init__(unet)
        self.start_step, self.start_layer, self.total_steps, self.union = start_step, start_layer, total_steps, union
        self.mask_s, self.mask_t = mask_s, mask_t

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
            if self.mask_s is not None and item != source:
                outs.append(self.masked(attn, q[item:item + 1], keys, values))
            else:
                outs.append(attention(q[item:item + 1], keys, values, attn.scale))
        return torch.cat(outs)

    def masked(self, attn, q, k, v):
        """MutualSelfAttentionControlMask (l.114-193): attention over the source's foreground keys and over its
        background keys, the masks resized (nearest) to the layer's square grid, blended by the target's mask."""
        side = int(q.shape[2] ** 0.5)
        source, target = (F.interpolate(m[None, None], (side, side)).flatten() for m in (self.mask_s, self.mask_t))
        blocked = torch.tensor(float("-inf"), dtype=q.dtype)
        foreground = attention(q, k, v, attn.scale, torch.where(source == 0, blocked, 0.0))
        background = attention(q, k, v, attn.scale, torch.where(source == 1, blocked, 0.0))
        return foreground * target[:, None] + background * (1 - target[:, None])


class StyleAlignedOracle(_Oracle):
    """StyleAligned's shared attention (google/style-aligned 2faf0af7, sa_handler.py l.43-71 and l.93-165): at every
    self-attention layer and step, each item's queries and keys (and values with `adain_values`) are normalised to
    the first item of its CFG half over the tokens (mean, unbiased variance plus 1e-5 inside the square root), and it
    attends to [its own keys ; the first item's keys x shared_score_scale] with [its own values ; the first item's]."""

    def __init__(self, unet, adain_queries=True, adain_keys=True, adain_values=False, shared_score_scale=1.0,
                 share_group_norm=False):
        super().__init__(unet)
        self.adain = {"q": adain_queries, "k": adain_keys, "v": adain_values}
        self.scale = shared_score_scale
        self.share_group_norm = share_group_norm

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
    "masactrl": MasaCtrlOracle,
    "masactrl-union": lambda unet, **o: MasaCtrlOracle(unet, union=True, **o),
    "style-aligned": StyleAlignedOracle,
}


def against_oracle(pipe, method, latents, options=None, oracle=None):
    """attnkit's two passes and the oracle's batched pass of `method` from the same latents, `options` by attnkit's
    names and `oracle` by the reference code's (default: the same): (attnkit's latents, the largest difference)."""
    options = options or {}
    want = batched(pipe, CASES[method](pipe.unet, **(options if oracle is None else oracle)), "a red circle",
                   "a blue square", latents)
    got = two_passes(pipe, method, "a red circle", "a blue square", latents, **options)
    return got, float((got - want).abs().max())


@pytest.mark.parametrize("method", CASES)
def test_each_image_method_equals_its_reference_codes_rule_on_sd15s_layout(pipes, method, figures):
    pipe = pipes["sd15-layout"]
    latents = noise(pipe)
    got, difference = against_oracle(pipe, method, latents)
    figures[f"{method}/sd15-layout"] = difference
    assert difference < 1e-10
    plain = run(pipe, "a blue square", latents)
    assert (got[1] - plain[0]).abs().max() > 1e-3  # the method changed the edit


@pytest.mark.parametrize("method", CASES)
def test_each_image_method_equals_its_reference_codes_rule_in_float32_within_1e_4(method, figures):
    """The same two runs in float32, as the methods are used: rounding (and SDPA against the oracle's explicit
    softmax) stays far below the methods' effect."""
    pipe = sd15_layout_pipeline()
    _, difference = against_oracle(pipe, method, noise(pipe).float())
    figures[f"{method}/sd15-layout/float32"] = difference
    assert difference < 1e-4


@pytest.mark.parametrize(("method", "options", "oracle"), [
    ("masactrl", {"start_layer": 2, "start_step": 2}, {"start_layer": 2, "start_step": 2}),
    ("style-aligned", {"adain_values": True, "keys_scale": 0.5},
     {"adain_values": True, "shared_score_scale": 0.5}),
])
def test_options_by_the_reference_codes_names_equal_its_rule_on_tiny_sdxl(pipes, method, options, oracle, figures):
    pipe = pipes["tiny-sdxl"]
    _, difference = against_oracle(pipe, method, noise(pipe), options, oracle)
    figures[f"{method}/tiny-sdxl"] = difference
    assert difference < 1e-10


def foreground(left, right, size=64):
    mask = torch.zeros(size, size, dtype=torch.float64)
    mask[16:48, left:right] = 1
    return mask


@pytest.mark.parametrize(("method", "options", "oracle"), [
    ("style-aligned", {"shared_group_norm": True}, {"share_group_norm": True}),
    ("masactrl", {"mask_s": foreground(8, 40), "mask_t": foreground(24, 56)},
     {"mask_s": foreground(8, 40), "mask_t": foreground(24, 56)}),
], ids=["style-aligned+shared-group-norm", "masactrl+masks"])
def test_shared_group_norm_and_mask_guidance_equal_the_reference_codes_rule_on_sd15s_layout(
        pipes, method, options, oracle, figures):
    pipe = pipes["sd15-layout"]
    latents = noise(pipe)
    got, difference = against_oracle(pipe, method, latents, options, oracle)
    figures[f"{method}/sd15-layout/{'shared_group_norm' if method == 'style-aligned' else 'mask_s,mask_t'}"] = \
        difference
    assert difference < 1e-10
    without = two_passes(pipe, method, "a red circle", "a blue square", latents)
    assert (got[1] - without[1]).abs().max() > 1e-3  # the option changed the edit


def test_shared_group_norms_hooks_are_removed_and_stores_say_what_they_lack(pipes):
    from diffusers.hooks.hooks import HookRegistry

    pipe = pipes["sd15-layout"]
    latents = noise(pipe)
    store = kv.KVStore()
    with kv.record(pipe, store, method="style-aligned"):
        run(pipe, "a red circle", latents)
    with pytest.raises(AttnkitError, match="no GroupNorm statistics for down_blocks.0.resnets.0.norm1 at step 0, "
                                           "branch 'uncond': record the reference with shared_group_norm=True"):
        with kv.inject(pipe, store, method="style-aligned", shared_group_norm=True):
            run(pipe, "a blue square", latents)
    norms = [m for m in pipe.unet.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert all(getattr(m, "_diffusers_hook", None) is None or
               not HookRegistry.check_if_exists_or_initialize(m).hooks for m in norms)
    assert torch.equal(run(pipe, "a blue square", latents), run(pipe, "a blue square", latents))


def test_mask_and_group_norm_options_refuse_what_they_cannot_do(pipes, pipelines):
    pipe = pipes["sd15-layout"]
    store = kv.KVStore()
    with pytest.raises(AttnkitError, match="needs both foreground masks: mask_s .* and mask_t"):
        kv.inject(pipe, store, method="masactrl", mask_s=foreground(8, 40))
    with pytest.raises(AttnkitError, match="the target mask must be binary .* threshold it first"):
        kv.inject(pipe, store, method="masactrl", mask_s=foreground(8, 40), mask_t=foreground(8, 40) * 0.5)
    with pytest.raises(AttnkitError, match="the source mask must be height x width, got shape \\(1, 64, 64\\)"):
        kv.inject(pipe, store, method="masactrl", mask_s=foreground(8, 40)[None], mask_t=foreground(8, 40))
    with pytest.raises(AttnkitError, match="shared_group_norm=True: SD3Transformer2DModel has no GroupNorm layers"):
        kv.inject(pipelines["tiny-sd3"], store, method="style-aligned", shared_group_norm=True)
    latents = noise(pipe)
    with kv.record(pipe, store, method="masactrl"):
        run(pipe, "a red circle", latents)
    tiny = torch.zeros(64, 64, dtype=torch.float64)
    tiny[30:32, 30:32] = 1
    with pytest.raises(AttnkitError, match="the source mask is all background at this layer's 8x8 tokens"):
        with kv.inject(pipe, store, method="masactrl", mask_s=tiny, mask_t=foreground(8, 40)):
            run(pipe, "a blue square", latents)


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


class DiTOracle:
    """The declared adaptation on a transformer, written out: the stock joint and single-stream attention of SD3
    (`JointAttnProcessor2_0`: image tokens first) and Flux (`FluxAttnProcessor`: text first, rotary embeddings), with
    the method's rule applied to the image tokens only, counting layers and steps as MasaCtrl's code does and taking
    the first item of each CFG half as the reference, as the UNet oracles do; the reference items attend as they
    would alone (on a UNet the rules leave them so; here joining their own image keys again would not)."""

    def __init__(self, model, rule, text_first, guided, start_step=0, start_layer=0):
        self.modules, self.calls, self.step, self.text = len(model.attn_processors), 0, 0, 0
        self.rule, self.text_first, self.guided = rule, text_first, guided
        self.start_step, self.start_layer = start_step, start_layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 **kwargs):
        split = lambda x: heads(attn, x)  # noqa: E731
        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        q, k = normed(attn.norm_q, q), normed(attn.norm_k, k)
        joint = encoder_hidden_states is not None
        if joint:
            self.text = encoder_hidden_states.shape[1]
            context = (split(attn.add_q_proj(encoder_hidden_states)), split(attn.add_k_proj(encoder_hidden_states)),
                       split(attn.add_v_proj(encoder_hidden_states)))
            context = (normed(attn.norm_added_q, context[0]), normed(attn.norm_added_k, context[1]), context[2])
            q, k, v = (torch.cat([c, x] if self.text_first else [x, c], 2) for c, x in zip(context, (q, k, v)))
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            q, k = apply_rotary_emb(q, image_rotary_emb), apply_rotary_emb(k, image_rotary_emb)
        tokens = q.shape[2]
        image = slice(self.text, tokens) if self.text_first else slice(0, tokens - self.text if joint else tokens)
        half = q.shape[0] // 2 if self.guided else q.shape[0]
        reference = [(item // half) * half for item in range(q.shape[0])]
        scale = q.shape[-1] ** -0.5
        out = attention(q, k, v, scale)
        if self.step >= self.start_step and self.calls >= self.start_layer:
            edited = [item for item in range(q.shape[0]) if reference[item] != item]  # references stay as they are
            out[edited] = attention(*self.rule(q, k, v, image, reference), scale)[edited]
        out = out.transpose(1, 2).flatten(2)
        self.calls += 1
        if self.calls == self.modules:
            self.calls, self.step = 0, self.step + 1
        if not joint:
            return out if self.text_first else attn.to_out[1](attn.to_out[0](out))
        text = slice(0, self.text) if self.text_first else slice(tokens - self.text, tokens)
        hidden, context = attn.to_out[1](attn.to_out[0](out[:, image])), out[:, text]
        return hidden, context if getattr(attn, "context_pre_only", False) else attn.to_add_out(context)


def normed(norm, x):
    return x if norm is None else norm(x)


def masactrl_on_image_tokens(q, k, v, image, reference):
    """Each item's image keys and values become its reference's; text keys and values stay."""
    k, v = k.clone(), v.clone()
    k[:, :, image], v[:, :, image] = k[reference][:, :, image], v[reference][:, :, image]
    return q, k, v


def style_aligned_on_image_tokens(q, k, v, image, reference):
    """Each item's image queries and keys normalised to its reference's (AdaIN), and the reference's image keys and
    values joined to every item's own."""
    def normalised(x):
        part = x[:, :, image]
        mean, std = part.mean(-2, keepdim=True), (part.var(-2, keepdim=True) + 1e-5).sqrt()
        x = x.clone()
        x[:, :, image] = (part - mean) / std * std[reference] + mean[reference]
        return x

    q, k = normalised(q), normalised(k)
    return q, torch.cat([k, k[reference][:, :, image]], 2), torch.cat([v, v[reference][:, :, image]], 2)


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
@pytest.mark.parametrize(("method", "rule", "options"), [
    ("masactrl", masactrl_on_image_tokens, {"start_step": 2, "start_layer": 1}),
    ("style-aligned", style_aligned_on_image_tokens, {}),
], ids=["masactrl", "style-aligned"])
def test_the_declared_transformer_adaptation_equals_its_rule_written_out_in_float64(name, method, rule, options,
                                                                                    figures):
    pipe = build_pipeline(name).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    call = {"max_sequence_length": 8, "num_inference_steps": 6, "output_type": "latent"}
    shape = []
    with torch.inference_mode():
        pipe("a red circle", callback_on_step_end=lambda p, i, t, kw: shape.append(kw["latents"].shape) or kw,
             **{**call, "num_inference_steps": 1})
    latents = torch.randn(shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    store = kv.KVStore()
    with torch.inference_mode():
        with kv.record(pipe, store, method=method, **options):
            source = pipe("a red circle", latents=latents, **call).images
        with kv.inject(pipe, store, method=method, **options):
            target = pipe("a blue square", latents=latents, **call).images
        model = pipe.transformer
        before = dict(model.attn_processors)
        model.set_attn_processor(DiTOracle(model, rule, text_first=name == "tiny-flux", guided=name == "tiny-sd3",
                                           **options))
        try:
            want = pipe(["a red circle", "a blue square"], latents=latents.expand(2, *latents.shape[1:]),
                        **call).images
        finally:
            model.set_attn_processor(before)
        plain = pipe("a blue square", latents=latents, **call).images
    difference = float((torch.cat([source, target]) - want).abs().max())
    figures[f"{method}/{name}"] = difference
    assert difference < 1e-10
    assert (target - plain).abs().max() > 1e-3


# --- video: cross-frame attention -------------------------------------------------------------------------------

FRAMES = 3
STRENGTH = 0.75


def frames(size=64):
    from PIL import Image

    made = []
    for i in range(FRAMES):
        image = Image.new("RGB", (size, size), (128, 128, 128))
        image.paste((220, 30, 30), (8 + 6 * i, 20, 28 + 6 * i, 40))
        made.append(image)
    return made


@pytest.fixture(scope="module")
def controlnet_pipe(pipes):
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    from attnkit.testing import tiny_controlnet

    base = pipes["sd15-layout"]
    pipe = StableDiffusionControlNetImg2ImgPipeline(**base.components, controlnet=tiny_controlnet(base.unet))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.float64)


def edited(pipe, method, **options):
    return torch.stack(list(kv.edit_video(pipe, frames(), "a blue square", method=method, strength=STRENGTH,
                                        num_inference_steps=STEPS, seed=0, progress=False, output_type="latent",
                                        **options)))


def test_text2video_zero_equals_diffusers_cross_frame_processor_on_the_unet_and_the_controlnet(controlnet_pipe, figures):
    """Text2Video-Zero's ControlNet recipe (diffusers docs, text_to_video_zero.md at 149fc3f5): diffusers' own
    `CrossFrameAttnProcessor2_0(batch_size=2)` on the UNet and the ControlNet, all frames in one batch; attnkit edits
    them one after another, each later frame attending to the stored first frame."""
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor2_0,
    )

    from attnkit.kv.video import edges

    pipe = controlnet_pipe
    models = (pipe.unet, pipe.controlnet)
    before = [dict(model.attn_processors) for model in models]
    for model in models:
        model.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=2))
    try:
        with torch.inference_mode():
            want = pipe(["a blue square"] * FRAMES, image=frames(), control_image=[edges(f) for f in frames()],
                        strength=STRENGTH, num_inference_steps=STEPS, output_type="latent",
                        generator=[torch.Generator().manual_seed(0) for _ in range(FRAMES)]).images
    finally:
        for model, processors in zip(models, before):
            model.set_attn_processor(processors)
    got = edited(pipe, "text2video-zero", controlnet=pipe.controlnet)
    difference = float((got - want).abs().max())
    figures["text2video-zero/sd15-layout+controlnet"] = difference
    assert difference < 1e-10
    unet_only = edited(pipe, None, attend="first", mode="replace", sites_=attnkit.sites(pipe).select(kind="self"),
                       controlnet=pipe.controlnet)
    assert (got - unet_only).abs().max() > 1e-6  # the ControlNet's own self-attention takes part
    plain = edited(pipe, None, attend="none", controlnet=pipe.controlnet)
    assert torch.equal(got[0], plain[0]) and (got[1:] - plain[1:]).abs().max() > 1e-3


class RerenderOracle(_Oracle):
    """Rerender-A-Video's cross-frame attention (williamyang1991/Rerender_A_Video dfaf9d88, src/controller.py
    l.58-77, l.125-143): frames run one after another; the first frame's pass stores its decoder self-attention keys
    and values per (step, layer, CFG branch); each later frame replaces its own with [first frame's ; previous
    frame's] when `total * start <= step <= total * end`, then stores its own as the previous frame's. The decoder
    layers are the up blocks' self-attention, without the widest with `loose`."""

    def __init__(self, unet, decoder_layers, widest, period=(0.0, 1.0), loose=False):
        super().__init__(unet)
        self.decoder, self.widest, self.period, self.loose = decoder_layers, widest, period, loose
        self.first, self.previous, self.frame, self.total = {}, {}, 0, None

    def start_frame(self, frame, total):
        self.frame, self.total, self.step, self.layer_calls = frame, total, 0, 0

    def self_attention(self, attn, q, k, v, layer):
        width = attn.heads * k.shape[-1]
        if layer not in self.decoder or (self.loose and width >= self.widest):
            return attention(q, k, v, attn.scale)
        key = (self.step, layer)
        if self.frame == 0:
            self.first[key] = self.previous[key] = (k, v)
            return attention(q, k, v, attn.scale)
        start, end = self.period
        out = attention(q, k, v, attn.scale)
        if self.total * start <= self.step <= self.total * end:
            (k1, v1), (kp, vp) = self.first[key], self.previous[key]
            out = attention(q, torch.cat([k1, kp], 2), torch.cat([v1, vp], 2), attn.scale)
        self.previous[key] = (k, v)
        return out


@pytest.mark.parametrize("options", [{}, {"cross_period": (0.0, 0.5), "loose_cfattn": True}])
def test_rerender_equals_its_reference_codes_cross_frame_rule(pipes, options, figures):
    from diffusers import AutoPipelineForImage2Image

    pipe = AutoPipelineForImage2Image.from_pipe(pipes["sd15-layout"])
    pipe.set_progress_bar_config(disable=True)
    selves = attnkit.sites(pipe).select(kind="self")
    decoder = [i for i, site in enumerate(selves) if site.stage == "up"]
    oracle = RerenderOracle(pipe.unet, decoder, max(s.heads * s.head_dim for s in selves if s.stage == "up"),
                            options.get("cross_period", (0.0, 1.0)), options.get("loose_cfattn", False))
    before = dict(pipe.unet.attn_processors)
    pipe.unet.set_attn_processor(oracle)
    want = []
    try:
        for index, frame in enumerate(frames()):
            pipe.scheduler.set_timesteps(STEPS)
            oracle.start_frame(index, len(pipe.get_timesteps(STEPS, STRENGTH, "cpu")[0]))
            with torch.inference_mode():
                want.append(pipe("a blue square", image=frame, strength=STRENGTH, num_inference_steps=STEPS,
                                 output_type="latent", generator=torch.Generator().manual_seed(0)).images)
    finally:
        pipe.unet.set_attn_processor(before)
    got = edited(pipe, "rerender", **options)
    difference = float((got - torch.cat(want)).abs().max())
    figures["rerender/sd15-layout" + ("/" + ",".join(sorted(options)) if options else "")] = difference
    assert difference < 1e-10


def test_the_video_methods_the_command_line_offers_are_the_video_methods():
    from attnkit.kv.defaults import VIDEO_METHODS

    assert VIDEO_METHODS == tuple(name for name, method in kv.METHODS.items() if method.video)


def test_rerender_picks_sd15s_nine_decoder_layers_or_six_loosely_and_text2video_zero_every_layer():
    from attnkit.kv.methods import setup

    pipe = _Pipe(meta_denoiser("sd15"))
    assert {s.block for s in setup(pipe, "rerender", {}, video=True).sites} == {"up.1", "up.2", "up.3"}
    loose = setup(pipe, "rerender", {"loose_cfattn": True}, video=True).sites
    assert len(loose) == 6 and {s.block for s in loose} == {"up.2", "up.3"}
    assert len(setup(pipe, "text2video-zero", {}, video=True).sites) == 16
    assert len(setup(pipe, "rerender", {}, video=True).sites) == 9


def test_the_docs_methods_table_is_the_one_the_saved_parity_figures_make():
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "methods.py"
    spec = importlib.util.spec_from_file_location("methods_benchmark", path)
    methods = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclass looks itself up there
    spec.loader.exec_module(methods)
    results = json.loads(methods.RESULTS.read_text())
    figures, tests = results["figures"], results["tests"]
    # every figure was measured by a test of the parity files, and that test passed
    assert set(tests) == set(figures)
    assert all(test["test"].startswith(methods.TESTS) and test["outcome"] == "passed" for test in tests.values())
    for name, value in figures.items():
        if name.startswith("diffseg-labels/"):
            assert value == 1.0
        elif name.startswith(("diffseg/", "daam/", "concept-attention/")):
            assert value < 1e-10
        elif not name.startswith(("inversion/", "diffseg-segments/")):
            assert value < (1e-4 if name.endswith("float32") else 1e-6)
    page = methods.PAGE.read_text()
    assert methods.page_with_table(page, results) == page, "run `python benchmarks/methods.py --table`"
