import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

TINY = ("tiny-sd15", "tiny-sdxl", "tiny-sd3", "tiny-sd35", "tiny-flux")


@pytest.fixture(scope="session")
def pipelines():
    """One of each tiny pipeline for the whole run; tests must leave them as they found them (sessions restore)."""
    from attnkit.testing import build_pipeline

    return {name: build_pipeline(name) for name in TINY}


@pytest.fixture(scope="session")
def figures():
    """What the parity and inversion tests measured, by name; with ATTNKIT_METHODS_JSON set, merged into that JSON
    file at the end of the run (benchmarks/methods.py turns it into the README's methods table)."""
    found: dict[str, float] = {}
    yield found
    target = os.environ.get("ATTNKIT_METHODS_JSON")
    if target and found:
        known = json.loads(open(target).read()) if os.path.exists(target) else {}
        with open(target, "w") as out:
            json.dump(known | found, out, indent=2, sort_keys=True)
            out.write("\n")


def generate(pipe, seed: int = 0, steps: int = 2, **kwargs):
    """Latents of a short deterministic generation."""
    kwargs.setdefault("prompt", "a red circle and a blue square")
    with torch.inference_mode():
        return pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="latent",
                    **kwargs).images
