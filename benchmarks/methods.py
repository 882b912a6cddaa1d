"""The published observation methods attnkit runs by name, and how closely each equals its reference code, from the
parity tests' own measurements: writes benchmarks/results/methods.json and the README's methods table.

    python benchmarks/methods.py            # run tests/test_methods.py, then rewrite the table
    python benchmarks/methods.py --readme   # only rewrite the table from the JSON

Every figure is what a test of tests/test_methods.py measured (`method_oracles.report`) against an independent
float64 implementation of the reference's algorithm and hyperparameters; a method whose tests did not all pass shows
"FAILED".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results" / "methods.json"
README = ROOT / "README.md"
START, END = "<!-- methods table: written by benchmarks/methods.py -->", "<!-- end of methods table -->"
TESTS = "tests/test_methods.py"
#: What each row says besides the measured parity: the paper, the reference code, the attnkit call, what is not
#: reproduced; `tests` is the prefix of the test names whose outcomes the row's figures stand on.
METHODS: dict[str, dict[str, str]] = {
    "DiffSeg": {
        "paper": "[Tian et al., CVPR 2024](https://arxiv.org/abs/2308.12469)",
        "code": "[google/diffseg@77ea596](https://github.com/google/diffseg/tree/77ea59657da1be832c89e48085e04b97952e2a36)",
        "call": "`attnkit.segment.segment_image(pipe, image)` (`protocol=\"diffseg\"`, `\"diffseg-notebook\"`); "
                "`attnkit.segment.trace` while generating; `attnkit segment --protocol`",
        "missing": "the first merging round's float16 distances (float64 here); segments named by word maps, not by "
                   "the demo's noun voting over BLIP captions; its TF Stable Diffusion 1.4 port's GELU",
        "tests": "test_diffseg",
    },
    "DAAM": {
        "paper": "[Tang et al., ACL 2023](https://arxiv.org/abs/2210.04885)",
        "code": "[castorini/daam@09564e0](https://github.com/castorini/daam/tree/09564e048cf5ffc1523aa0605736e7f178ca505a)"
                " (0.2.0)",
        "call": "`attnkit.maps.trace(pipe, prompt, method=\"daam\", normalize=...)`; `attnkit maps --method daam`",
        "missing": "UNets only; without CFG every head of the single item (DAAM keeps the last half of its heads); "
                   "the output side is the finest grid of its layers (DAAM's fixed 64 or 96)",
        "tests": "test_daam",
    },
    "ConceptAttention": {
        "paper": "[Helbling et al., ICML 2025](https://arxiv.org/abs/2502.04320)",
        "code": "[helblazer811/ConceptAttention](https://github.com/helblazer811/ConceptAttention): Flux "
                "[@8c2709c](https://github.com/helblazer811/ConceptAttention/tree/8c2709cd34f542b73fc403d8c6a3b684b62142ad),"
                " SD3 [@db30c4d](https://github.com/helblazer811/ConceptAttention/tree/"
                "db30c4dcee01184c4d3f9fc9e46477eeb4e3eef3)",
        "call": "`attnkit.maps.trace(pipe, prompt, space=\"output\", concepts=[...])`; "
                "`attnkit.maps.concept_maps_of_image`; `attnkit maps --space output`",
        "missing": "an existing image's posterior mean and seeded noise (the code draws unseeded samples); the cond "
                   "half of a CFG batch (the SD3 code reads the first item); the Flux code's benchmark variants "
                   "(linear normalisation, blur)",
        "tests": "test_concept",
    },
}


def run_tests() -> tuple[dict[str, str], list[dict]]:
    """({test id: "passed" | "failed" | "skipped"}, the figures the tests reported) from one pytest run."""
    with tempfile.TemporaryDirectory() as folder:
        report, figures = Path(folder) / "report.xml", Path(folder) / "figures.jsonl"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "ATTNKIT_METHODS_REPORT": str(figures)}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", TESTS],
                       cwd=ROOT, env=env, check=False)
        outcomes = {}
        for case in ET.parse(report).iter("testcase"):
            failed = case.find("failure") is not None or case.find("error") is not None
            outcomes[case.get("name", "")] = ("failed" if failed else
                                              "skipped" if case.find("skipped") is not None else "passed")
        lines = figures.read_text().splitlines() if figures.exists() else []
    return outcomes, [json.loads(line) for line in lines]


def parity(method: str, figures: list[dict]) -> str:
    """The row's parity cell: the largest difference measured, over what, and label agreement where measured."""
    mine = [f for f in figures if f["method"] == method]
    if not mine:
        return "not measured"
    models = ", ".join(dict.fromkeys(f["model"] for f in mine))
    differences = [f["max_abs_difference"] for f in mine if "max_abs_difference" in f]
    text = f"maps within {max(differences):.1e} (largest of {len(differences)} checks; {models})"
    agreements = [f["label_agreement"] for f in mine if "label_agreement" in f]
    if agreements:
        segments = sorted({f["segments"] for f in mine if "segments" in f})
        text += (f"; labels {min(agreements):.0%} the same in {len(agreements)} runs (1 to {segments[-1]} "
                 "segments, the published thresholds and a splitting one)")
    return text


def methods_table(results: dict) -> str:
    header = ["method", "paper", "reference code", "attnkit", "parity with the reference (float64)", "not reproduced"]
    rows = [f"| {' | '.join(header)} |", "| --- |" + " --- |" * (len(header) - 1)]
    for name, entry in results["methods"].items():
        about = METHODS[name]
        rows.append(f"| {name} | {about['paper']} | {about['code']} | {about['call']} | {entry['parity']} | "
                    f"{about['missing']} |")
    rows += ["", f"From `benchmarks/results/methods.json`: what `{TESTS}` measured against an independent float64 "
             f"implementation of each reference's algorithm and hyperparameters (diffusers {results['diffusers']}, "
             "on SD1.5's UNet layout with small channels, tiny SDXL, SD3, SD3.5 and Flux)."]
    return "\n".join(rows)


def readme_with_table(readme: str, results: dict) -> str:
    if START not in readme or END not in readme:
        raise SystemExit(f"README.md lacks the markers {START!r} ... {END!r}: put them where the table goes")
    head, rest = readme.split(START, 1)
    return f"{head}{START}\n{methods_table(results)}\n{END}{rest.split(END, 1)[1]}"


def results_of(outcomes: dict[str, str], figures: list[dict], diffusers: str) -> dict:
    """The JSON: per method its tests' outcomes, figures and parity cell ("FAILED" unless every test passed)."""
    methods = {}
    for name, about in METHODS.items():
        tests = {test: outcome for test, outcome in outcomes.items() if test.startswith(about["tests"])}
        passed = bool(tests) and all(outcome == "passed" for outcome in tests.values())
        methods[name] = {"tests": tests, "figures": [f for f in figures if f["method"] == name],
                         "parity": parity(name, figures) if passed else "FAILED"}
    return {"diffusers": diffusers, "methods": methods}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", action="store_true", help="only rewrite README.md's table from the saved JSON")
    args = parser.parse_args(argv)
    if not args.readme:
        import diffusers

        outcomes, figures = run_tests()
        RESULTS.write_text(json.dumps(results_of(outcomes, figures, diffusers.__version__), indent=2) + "\n")
    README.write_text(readme_with_table(README.read_text(), json.loads(RESULTS.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
