"""A session whose controls do nothing leaves every output bit-identical: for every stock processor class attnkit
replays, with and without an attention mask in the kwargs, under diffusers' attention backends. Where a control needs
what the selected backend cannot give, attnkit says so; under context parallelism such a control is refused."""

import contextlib
import warnings

import pytest
import torch
from conftest import TINY, generate
from diffusers.models.attention_dispatch import attention_backend
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

import attnkit
from attnkit import AttnkitError, Control
from attnkit.errors import AttnkitWarning
from attnkit.processors import SiteProcessor


class Noop(Control):
    name = "noop"


class NeedsLse(Control):
    name = "needs-lse"
    needs_lse = True

    def __init__(self):
        self.calls = 0

    def after(self, call, out, lse):
        self.calls += 1


def denoiser(pipe):
    return pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.unet


def joint_mask(pipe):
    """A random boolean mask over the whole joint sequence of a 64 px image (each query keeps itself)."""
    tokens = 64 + {"tiny-flux": 512, "tiny-sd3": 333, "tiny-sd35": 333}[pipe.name]  # 8x8 image tokens, then text
    mask = torch.rand(1, 1, tokens, tokens, generator=torch.Generator().manual_seed(0)) > 0.3
    return mask | torch.eye(tokens, dtype=torch.bool)


@pytest.fixture
def with_processor(pipelines, request):
    """The tiny pipeline with every site on the requested stock processor class, put back afterwards."""
    name, processor = request.param
    pipe = pipelines[name]
    pipe.name = name
    model = denoiser(pipe)
    saved = dict(model.attn_processors)
    if processor == "AttnProcessor":
        model.set_default_attn_processor()
        assert {type(p) for p in model.attn_processors.values()} == {AttnProcessor}
    yield pipe
    model.set_attn_processor(saved)


STOCK = [(name, "default") for name in TINY] + [("tiny-sd15", "AttnProcessor"), ("tiny-sdxl", "AttnProcessor")]


@pytest.mark.parametrize("backend", [None, "native", "_native_math"])
@pytest.mark.parametrize("with_processor", STOCK, indirect=True, ids=[f"{n}-{p}" for n, p in STOCK])
def test_noop_session_is_bit_identical_for_each_stock_processor_and_backend(with_processor, backend):
    pipe = with_processor
    context = attention_backend(backend) if backend else contextlib.nullcontext()
    with context:
        want = generate(pipe)
        with attnkit.attach(pipe, Noop()):
            assert all(isinstance(p, SiteProcessor) for p in denoiser(pipe).attn_processors.values())
            got = generate(pipe)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-sd35", "tiny-flux"])
def test_noop_session_is_bit_identical_with_an_attention_mask_in_joint_attention_kwargs(pipelines, name):
    """SD3's stock processor takes `attention_mask` and ignores it; Flux's applies it. attnkit does the same."""
    pipe = pipelines[name]
    pipe.name = name
    kwargs = {"joint_attention_kwargs": {"attention_mask": joint_mask(pipe)}}
    want, plain = generate(pipe, **kwargs), generate(pipe)
    with attnkit.attach(pipe, Noop()):
        got = generate(pipe, **kwargs)
    assert torch.equal(got, want)
    assert torch.equal(want, plain) == (name != "tiny-flux")


@pytest.mark.parametrize("with_processor", [("tiny-sd15", "default"), ("tiny-sd15", "AttnProcessor")],
                         indirect=True, ids=["AttnProcessor2_0", "AttnProcessor"])
def test_noop_session_is_bit_identical_with_an_encoder_attention_mask_on_the_unet(with_processor):
    """UNet pipelines pass no mask; a user calling the UNet with `encoder_attention_mask` gets the stock result."""
    unet = with_processor.unet
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    keep = torch.rand(2, 77, generator=g) > 0.5
    keep[:, 0] = True

    def forward():
        with torch.inference_mode():
            return unet(sample, 500, encoder_hidden_states=text, encoder_attention_mask=keep).sample

    want = forward()
    with attnkit.attach(unet, Noop()):
        got = forward()
    assert torch.equal(got, want)
    assert not torch.equal(want, unet(sample, 500, encoder_hidden_states=text).sample)


def test_a_selected_backend_is_named_once_where_a_control_needs_the_log_sum_exp(pipelines):
    pipe = pipelines["tiny-flux"]
    control = NeedsLse()
    with attention_backend("_native_math"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        with attnkit.attach(pipe, control):
            generate(pipe, steps=2)
    named = [w for w in caught if issubclass(w.category, AttnkitWarning)]
    assert control.calls > 1
    assert len(named) == 1 and "'_native_math' attention backend" in str(named[0].message)
    assert "log-sum-exp" in str(named[0].message)


def test_no_warning_on_the_default_backend(pipelines):
    pipe = pipelines["tiny-flux"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with attnkit.attach(pipe, NeedsLse()):
            generate(pipe, steps=1)
    assert not [w for w in caught if issubclass(w.category, AttnkitWarning)]


def test_set_attention_backend_during_a_session_reaches_the_stock_processors(pipelines):
    model = pipelines["tiny-flux"].transformer
    stock = dict(model.attn_processors)
    with attention_backend("native"):  # set_attention_backend also sets the global active backend: restored here
        try:
            with attnkit.attach(model, Noop()):
                model.set_attention_backend("_native_math")
            assert all(model.attn_processors[k] is p for k, p in stock.items())
            assert {str(getattr(p._attention_backend, "value", p._attention_backend)) for p in stock.values()} == {
                "_native_math"}
        finally:
            model.reset_attention_backend()


def test_context_parallel_sites_refuse_controls_that_need_lse_or_masks_before_anything_changes(pipelines):
    model = pipelines["tiny-flux"].transformer
    stock = dict(model.attn_processors)
    for processor in stock.values():
        processor._parallel_config = object()  # what `enable_parallelism` leaves on each processor
    try:
        with pytest.raises(AttnkitError, match="'needs-lse' needs the log-sum-exp at .* context parallelism"):
            attnkit.attach(model, NeedsLse()).__enter__()
        regional_like = type("Masking", (Control,), {"name": "masking", "masks": True})()
        with pytest.raises(AttnkitError, match="'masking' needs an attention mask"):
            attnkit.attach(model, regional_like).__enter__()
        assert all(model.attn_processors[k] is p for k, p in stock.items())
        with attnkit.attach(model, Noop()):
            assert all(p._parallel_config is stock[k]._parallel_config for k, p in model.attn_processors.items())
    finally:
        for processor in stock.values():
            processor._parallel_config = None


def test_fused_projections_are_refused_with_advice_to_unfuse(pipelines):
    pipe = pipelines["tiny-sd3"]
    pipe.transformer.fuse_qkv_projections()
    try:
        with pytest.raises(AttnkitError, match=r"FusedJointAttnProcessor2_0.*unfuse_qkv_projections\(\)"):
            attnkit.attach(pipe, Noop()).__enter__()
    finally:
        pipe.transformer.unfuse_qkv_projections()
    with attnkit.attach(pipe, Noop()):
        pass


def test_refusal_advice_names_this_architectures_stock_processor(pipelines):
    pipe = pipelines["tiny-flux"]
    site = attnkit.sites(pipe)[0]
    module = pipe.transformer.get_submodule(site.module_name)
    stock = module.processor
    module.set_processor(AttnProcessor2_0())
    try:
        with pytest.raises(AttnkitError, match=r"AttnProcessor2_0.*set_attn_processor\(FluxAttnProcessor\(\)\)"):
            attnkit.attach(pipe, Noop()).__enter__()
    finally:
        module.set_processor(stock)
