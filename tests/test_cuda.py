"""Regional prompting on CUDA: the split kernel (fused CUDA kernels) against the dense-mask kernel (the
memory-efficient kernel with a bias) in float32, for every mask part and bias the options can set; bfloat16, where
real models run, generates finite latents; and the paths that move tensors between devices (couple weights, masks
found from a word). Skipped without a GPU."""

import pytest
import torch

import attnkit
from attnkit.testing import build_pipeline
from regional_helpers import LEFT_RIGHT, latents

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BASE = {**LEFT_RIGHT, "base": {"prompt": "a red circle and a blue square", "weight": 0.5}}
OPTIONS = {
    "default": {},
    "soft image isolation": {"image_isolation": True, "image_isolation_strength": 2.0},
    "hard image isolation": {"image_isolation": True},
    "region weight": {"region_weight": 2.0},
    "no text->image": {"text_to_image": False},
}


NAMES = ("tiny-sd15", "tiny-sdxl", "tiny-sd3", "tiny-flux")


@pytest.fixture(scope="module")
def gpu_pipelines():
    return {(name, dtype): build_pipeline(name).to("cuda", dtype) for name in NAMES
            for dtype in (torch.float32, torch.bfloat16)}


@pytest.fixture
def exact_float32():
    """Convolutions and matrix products in true float32 (cuDNN takes TF32 by default, whose 10-bit mantissa turns
    rounding-level differences between two attention kernels into visible ones)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def generate(pipe, kernel: str, option: str) -> torch.Tensor:
    extra = {} if hasattr(pipe, "unet") else {"max_sequence_length": 8}
    with attnkit.regional(pipe, BASE, kernel=kernel, **extra, **OPTIONS[option]) as regions:
        return latents(pipe, **regions(seed=0, num_inference_steps=2)).float()


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("name", NAMES)
def test_split_kernel_on_cuda_generates_what_the_dense_mask_does(gpu_pipelines, exact_float32, name, option):
    pipe = gpu_pipelines[name, torch.float32]
    torch.testing.assert_close(generate(pipe, "split", option), generate(pipe, "dense", option), atol=1e-4, rtol=0)
    assert torch.isfinite(generate(gpu_pipelines[name, torch.bfloat16], "split", option)).all()


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sdxl"])
def test_couple_and_word_regions_run_on_cuda(gpu_pipelines, name):
    pipe = gpu_pipelines[name, torch.bfloat16]
    with attnkit.regional(pipe, BASE, method="couple") as regions:
        couple = latents(pipe, **regions(seed=0, num_inference_steps=2))
    spec = {"base": "a red circle and a blue square", "regions": [{"prompt": "a green triangle", "from_word": "circle"}]}
    with attnkit.regional(pipe, spec) as regions:
        words = latents(pipe, **regions(seed=0, num_inference_steps=2))
        mask = regions.spec.regions[0].mask
    assert torch.isfinite(couple.float()).all() and torch.isfinite(words.float()).all()
    assert mask.device.type == "cpu" and 0 < mask.mean() < 1
