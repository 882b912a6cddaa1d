"""The published methods attnkit names, each with the largest difference its parity test measured against the
method's own code: writes benchmarks/results/methods.json and the README's methods table.

    python benchmarks/methods.py            # run the parity tests, then rewrite the table
    python benchmarks/methods.py --readme   # only rewrite the table from the JSON

The figures come from the tests themselves (`TESTS`; each puts what it measured into the `figures` fixture, which
ATTNKIT_METHODS_JSON sends to the JSON file), so the table says only what the suite checks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from readme_table import between  # noqa: E402

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results" / "methods.json"
README = ROOT / "README.md"
START, END = "<!-- methods table: written by benchmarks/methods.py -->", "<!-- end of methods table -->"
TESTS = ("tests/test_kv_methods.py", "tests/test_kv_inversion.py")
README_TEST = "test_the_readmes_methods_table_is_the_one_the_saved_parity_figures_make"  # compares with this output


@dataclass(frozen=True)
class Row:
    method: str
    paper: str
    code: str  # repository, commit and file the test's oracle follows
    call: str
    figures: tuple[str, ...]  # keys of the JSON: the largest difference on each layout
    not_reproduced: str


ROWS = (
    Row("MasaCtrl (mutual self-attention)", "[Cao et al., ICCV 2023](https://arxiv.org/abs/2304.08465)",
        "TencentARC/MasaCtrl `d0ba16bb` masactrl/masactrl.py", '`kv.inject(pipe, store, method="masactrl")`',
        ("masactrl/sd15-layout", "masactrl/tiny-sdxl", "masactrl/tiny-sd3", "masactrl/tiny-flux"),
        "the automatic variant that takes its masks from cross-attention"),
    Row("MasaCtrl, mask-guided", "same", "same, `MutualSelfAttentionControlMask`",
        '`method="masactrl", mask_s=..., mask_t=...`', ("masactrl/sd15-layout/mask_s,mask_t",),
        "masks other than 0/1 (the code adds their values to the logits)"),
    Row("MasaCtrl, union", "same", "same, `MutualSelfAttentionControlUnion`", '`method="masactrl-union"`',
        ("masactrl-union/sd15-layout",), "nothing; the class raises as published, attnkit does what it intends"),
    Row("StyleAligned (shared attention)", "[Hertz et al., CVPR 2024](https://arxiv.org/abs/2312.02133)",
        "google/style-aligned `2faf0af7` sa_handler.py", '`method="style-aligned"` (`shared_group_norm=True`)',
        ("style-aligned/sd15-layout", "style-aligned/tiny-sdxl", "style-aligned/sd15-layout/shared_group_norm",
         "style-aligned/tiny-sd3", "style-aligned/tiny-flux"),
        "`shared_score_shift`; shared LayerNorm (changes nothing)"),
    Row("DDIM inversion", "[Song et al., ICLR 2021](https://arxiv.org/abs/2010.02502)",
        "MasaCtrl's `invert`, StyleAligned's `ddim_inversion`", "`kv.invert(pipe, image, prompt)`",
        ("ddim-inversion/sd15-layout/guidance-1", "ddim-inversion/sd15-layout/guidance-2"),
        "null-text optimisation"),
    Row("Flow-matching inversion (SD3, Flux)", "Euler steps of the rectified-flow ODE, backwards",
        "(no reference code; an explicit Euler loop)", "`kv.invert(pipe, image, prompt)`",
        ("flow-matching-inversion/tiny-sd3",), "diffusers' scheduler adds in float32, hence 1e-7"),
    Row("Text2Video-Zero (cross-frame attention)", "[Khachatryan et al., ICCV 2023](https://arxiv.org/abs/2303.13439)",
        "diffusers' `CrossFrameAttnProcessor2_0`, imported", '`kv.edit_video(..., method="text2video-zero")`',
        ("text2video-zero/sd15-layout+controlnet",), "the motion-field latent warping and its re-noising"),
    Row("Rerender-A-Video (cross-frame attention)",
        "[Yang et al., SIGGRAPH Asia 2023](https://arxiv.org/abs/2306.07954)",
        "williamyang1991/Rerender_A_Video `dfaf9d88` src/controller.py", '`kv.edit_video(..., method="rerender")`',
        ("rerender/sd15-layout", "rerender/sd15-layout/cross_period,loose_cfattn"),
        "optical-flow and pixel-aware fusion, colour AdaIN, keyframe propagation"),
)
LAYOUTS = {"sd15-layout": "SD1.5 layout", "tiny-sdxl": "tiny SDXL", "tiny-sd3": "tiny SD3", "tiny-flux": "tiny Flux"}


def run_tests() -> dict[str, float]:
    """What the parity tests measured, from one pytest run."""
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "methods.json"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "ATTNKIT_METHODS_JSON": str(target)}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS,
                               "--deselect", f"{TESTS[0]}::{README_TEST}"], cwd=ROOT, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit("the parity tests failed; the table keeps its last figures")
        return json.loads(target.read_text())


def _figure(name: str, figures: dict[str, float]) -> str:
    """"7.5e-14 (SD1.5 layout, shared_group_norm)" from a figure named method/layout[+part][/option]."""
    _, layout, *option = name.split("/")
    base, _, part = layout.partition("+")
    where = LAYOUTS[base] + (f" + {part}" if part else "") + (f", {'/'.join(option)}" if option else "")
    return f"{figures[name]:.1e} ({where})"


def methods_table(figures: dict[str, float]) -> str:
    missing = [name for row in ROWS for name in row.figures if name not in figures]
    if missing:
        raise SystemExit(f"{RESULTS} lacks {missing}: run `python benchmarks/methods.py`")
    header = ["method", "paper", "reference code", "attnkit", "largest difference, float64", "not reproduced"]
    lines = [f"| {' | '.join(header)} |", "| --- |" + " --- |" * (len(header) - 1)]
    for row in ROWS:
        measured = "; ".join(_figure(name, figures) for name in row.figures)
        lines.append(f"| {row.method} | {row.paper} | {row.code} | {row.call} | {measured} | {row.not_reproduced} |")
    inverted = figures["inversion/shapes-sd15/mean-latent-error-over-range"]
    single = max(value for name, value in figures.items() if name.endswith("/float32"))
    lines += ["", f"From `benchmarks/results/methods.json`, measured by {' and '.join(f'`{t}`' for t in TESTS)}: "
              "each method run by attnkit (the reference recorded, then attended to) against the method's rule as "
              "its code runs it (one batched pass), on a UNet with SD1.5's layout and small channels and on tiny "
              "SDXL, and their declared adaptation written out on tiny SD3 and Flux (image tokens only); random "
              f"weights, float64 (in float32, as the methods are used: {single:.1e} at most). A shapes-sd15 scene "
              f"inverted with 50 DDIM steps and regenerated is off by {inverted:.1%} of its latent range on average."]
    return "\n".join(lines)


def readme_with_table(readme: str, figures: dict[str, float]) -> str:
    return between(readme, START, END, methods_table(figures))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", action="store_true", help="only rewrite README.md's table from the saved JSON")
    args = parser.parse_args(argv)
    if not args.readme:
        RESULTS.write_text(json.dumps(run_tests(), indent=2, sort_keys=True) + "\n")
    README.write_text(readme_with_table(README.read_text(), json.loads(RESULTS.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
