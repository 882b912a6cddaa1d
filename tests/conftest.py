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


#: What the parity and inversion tests measured in this run: figure name -> value, and the test that measured it.
_figures: dict[str, float] = {}
_measured_by: dict[str, str] = {}
#: Each test's outcome in this run ("failed" once any of its phases failed).
_outcomes: dict[str, str] = {}


class _Figures:
    """`figures[name] = value`: one figure a test measured, kept with the test's id."""

    def __init__(self, test: str) -> None:
        self.test = test

    def __setitem__(self, name: str, value: float) -> None:
        _figures[name] = float(value)
        _measured_by[name] = self.test


@pytest.fixture
def figures(request):
    """What the parity and inversion tests measured, by name; with ATTNKIT_METHODS_JSON set, merged into that JSON
    file at the end of the run with the test that measured each and its outcome (benchmarks/methods.py turns it into
    the methods table of docs/methods.md)."""
    return _Figures(request.node.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        _outcomes[item.nodeid] = "failed"
    elif report.skipped:
        _outcomes.setdefault(item.nodeid, "skipped")
    elif report.when == "call":
        _outcomes.setdefault(item.nodeid, "passed")
    return report


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("ATTNKIT_METHODS_JSON")
    if not target or not _figures:
        return
    known = json.loads(open(target).read()) if os.path.exists(target) else {}
    tests = {name: {"test": test, "outcome": _outcomes.get(test, "not run")} for name, test in _measured_by.items()}
    with open(target, "w") as out:
        json.dump({"figures": known.get("figures", {}) | _figures, "tests": known.get("tests", {}) | tests}, out,
                  indent=2, sort_keys=True)
        out.write("\n")


def generate(pipe, seed: int = 0, steps: int = 2, **kwargs):
    """Latents of a short deterministic generation."""
    kwargs.setdefault("prompt", "a red circle and a blue square")
    with torch.inference_mode():
        return pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="latent",
                    **kwargs).images
