"""The published methods attnkit names, each with the largest difference its parity tests measured against the
method's own code: writes benchmarks/results/methods.json and the methods table of docs/methods.md.

    python benchmarks/methods.py            # run the parity tests, then rewrite the table
    python benchmarks/methods.py --table    # only rewrite the table from the JSON

The figures come from the tests themselves (`TESTS`; each puts what it measured into the `figures` fixture, which
ATTNKIT_METHODS_JSON sends to the JSON file with the test that measured it and the test's outcome), so the table says
only what the suite checks: the K/V methods and inversion against their code's rule, the observation methods
(DiffSeg, DAAM, ConceptAttention) against independent float64 implementations of their references
(`tests/method_oracles.py`). A run whose tests do not all pass writes nothing.
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
PAGE = ROOT / "docs" / "methods.md"
START, END = "<!-- methods table: written by benchmarks/methods.py -->", "<!-- end of methods table -->"
TESTS = ("tests/test_kv_methods.py", "tests/test_kv_inversion.py", "tests/test_methods.py")
TABLE_TEST = "test_the_docs_methods_table_is_the_one_the_saved_parity_figures_make"  # compares with this output


@dataclass(frozen=True)
class Row:
    method: str
    paper: str
    code: str  # repository, commit and file the test's oracle follows
    call: str
    figures: tuple[str, ...]  # figures of the JSON: the largest difference on each layout ("m/layout/*": all under it)
    not_reproduced: str
    labels: str = ""  # prefix of the figures that give the share of pixels labelled as the reference labels them


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
    Row("DiffSeg (segmentation)", "[Tian et al., CVPR 2024](https://arxiv.org/abs/2308.12469)",
        "[google/diffseg@77ea596](https://github.com/google/diffseg/tree/77ea59657da1be832c89e48085e04b97952e2a36) "
        "diffseg/segmentor.py", '`segment.segment_image(pipe, image)` (`protocol="diffseg"`, `"diffseg-notebook"`); '
        "`segment.trace` while generating; `attnkit segment --protocol`",
        ("diffseg/sd15-layout/*", "diffseg/sd15-layout-512/*", "diffseg/tiny-sdxl/*", "diffseg/tiny-sd3/*",
         "diffseg/tiny-flux/*"),
        "the first merging round's float16 distances (float64 here); segments named by word maps, not by the demo's "
        "noun voting over BLIP captions; its TF Stable Diffusion 1.4 port's GELU", labels="diffseg-labels/"),
    Row("DAAM (word maps)", "[Tang et al., ACL 2023](https://arxiv.org/abs/2210.04885)",
        "[castorini/daam@09564e0](https://github.com/castorini/daam/tree/09564e048cf5ffc1523aa0605736e7f178ca505a)"
        " (0.2.0)", '`maps.trace(pipe, prompt, method="daam", normalize=...)`; `attnkit maps --method daam`',
        ("daam/sd15-layout/*", "daam/tiny-sdxl/*"),
        "UNets only; without CFG every head of the single item (DAAM keeps the last half of its heads); the output "
        "side is the finest grid of its layers (DAAM's fixed 64 or 96)"),
    Row("ConceptAttention (concept maps)", "[Helbling et al., ICML 2025](https://arxiv.org/abs/2502.04320)",
        "[helblazer811/ConceptAttention](https://github.com/helblazer811/ConceptAttention): Flux "
        "[@8c2709c](https://github.com/helblazer811/ConceptAttention/tree/8c2709cd34f542b73fc403d8c6a3b684b62142ad),"
        " SD3 [@db30c4d](https://github.com/helblazer811/ConceptAttention/tree/db30c4dcee01184c4d3f9fc9e46477eeb4e3eef3)",
        '`maps.trace(pipe, prompt, space="output", concepts=[...])`; `maps.concept_maps_of_image`; '
        "`attnkit maps --space output`",
        ("concept-attention/tiny-flux/*", "concept-attention/tiny-sd3/*", "concept-attention/tiny-sd35/*"),
        "an existing image's posterior mean and seeded noise (the code draws unseeded samples); the cond half of a "
        "CFG batch (the SD3 code reads the first item); the Flux code's benchmark variants (linear normalisation, "
        "blur)"),
)
LAYOUTS = {"sd15-layout": "SD1.5 layout", "sd15-layout-512": "SD1.5 layout at 512 px", "tiny-sdxl": "tiny SDXL",
           "tiny-sd3": "tiny SD3", "tiny-sd35": "tiny SD3.5", "tiny-flux": "tiny Flux"}


def run_tests() -> dict:
    """What the parity tests measured, with the test behind each figure and its outcome, from one pytest run."""
    import diffusers

    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "methods.json"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "ATTNKIT_METHODS_JSON": str(target)}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS,
                               "--deselect", f"{TESTS[0]}::{TABLE_TEST}"], cwd=ROOT, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit("the parity tests failed; the table keeps its last figures")
        return {"diffusers": diffusers.__version__, **json.loads(target.read_text())}


def shown(name: str, figures: dict[str, float]) -> list[str]:
    """The figures a table entry stands on: `name` itself, or all those under its prefix where it ends in "/*"."""
    if name.endswith("/*"):
        return [key for key in figures if key.startswith(name[:-1])]
    return [name] if name in figures else []


def _figure(name: str, figures: dict[str, float]) -> str:
    """"7.5e-14 (SD1.5 layout, shared_group_norm)" from a figure named method/layout[+part][/option]; "8.7e-18 (tiny
    SD3, largest of 9)" from method/layout/*."""
    _, layout, *option = name.split("/")
    if option == ["*"]:
        values = [figures[key] for key in shown(name, figures)]
        return f"{max(values):.1e} ({LAYOUTS[layout]}, largest of {len(values)})"
    base, _, part = layout.partition("+")
    where = LAYOUTS[base] + (f" + {part}" if part else "") + (f", {'/'.join(option)}" if option else "")
    return f"{figures[name]:.1e} ({where})"


def _labels(prefix: str, figures: dict[str, float]) -> str:
    """"labels 100% the same in 12 runs (1 to 54 segments)": the agreement figures under `prefix`, the segment counts
    under the same names with "-segments/" for "-labels/"."""
    runs = [key for key in figures if key.startswith(prefix)]
    segments = [figures[key.replace("-labels/", "-segments/")] for key in runs]
    return (f"labels {min(figures[key] for key in runs):.0%} the same in {len(runs)} runs ({min(segments):.0f} to "
            f"{max(segments):.0f} segments; the published thresholds and a splitting one)")


def methods_table(results: dict) -> str:
    figures = results["figures"]
    missing = [name for row in ROWS for name in (*row.figures, *([f"{row.labels}*"] if row.labels else ()))
               if not shown(name, figures)]
    if missing:
        raise SystemExit(f"{RESULTS} lacks {missing}: run `python benchmarks/methods.py`")
    header = ["method", "paper", "reference code", "attnkit", "largest difference, float64", "not reproduced"]
    lines = [f"| {' | '.join(header)} |", "| --- |" + " --- |" * (len(header) - 1)]
    for row in ROWS:
        measured = [_figure(name, figures) for name in row.figures]
        measured += [_labels(row.labels, figures)] if row.labels else []
        lines.append(f"| {row.method} | {row.paper} | {row.code} | {row.call} | {'; '.join(measured)} | "
                     f"{row.not_reproduced} |")
    inverted = figures["inversion/shapes-sd15/mean-latent-error-over-range"]
    single = max(value for name, value in figures.items() if name.endswith("/float32"))
    lines += ["", f"From `benchmarks/results/methods.json`, measured by {', '.join(f'`{t}`' for t in TESTS)} "
              f"(diffusers {results['diffusers']}; random weights, float64). K/V methods: each run by attnkit (the "
              "reference recorded, then attended to) against the method's rule as its code runs it (one batched "
              "pass), on a UNet with SD1.5's layout and small channels and on tiny SDXL, and their declared "
              "adaptation written out on tiny SD3 and Flux (image tokens only); in float32, as the methods are used, "
              f"{single:.1e} at most. A shapes-sd15 scene inverted with 50 DDIM steps and regenerated is off by "
              f"{inverted:.1%} of its latent range on average. Observation methods: each against an independent "
              "implementation of its reference's algorithm and hyperparameters, written from the equations (the "
              "`daam` package pins diffusers 0.21 and does not install beside this diffusers), on the same UNet "
              "layout with SD1.5's VAE factor and on tiny SDXL, SD3, SD3.5 and Flux."]
    return "\n".join(lines)


def page_with_table(page: str, results: dict) -> str:
    return between(page, START, END, methods_table(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", action="store_true", help="only rewrite docs/methods.md's table from the saved JSON")
    args = parser.parse_args(argv)
    if not args.table:
        RESULTS.write_text(json.dumps(run_tests(), indent=2, sort_keys=True) + "\n")
    PAGE.write_text(page_with_table(PAGE.read_text(), json.loads(RESULTS.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
