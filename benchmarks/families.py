"""Which feature works on which model family, from the test suite's own results: writes
benchmarks/results/families.json and the family table of README.md and docs/families.md.

    python benchmarks/families.py            # run the family tests, then rewrite the table
    python benchmarks/families.py --table    # only rewrite the tables from the JSON

Every cell is the outcome of the tests named in `FEATURES` for that family (tests/test_dits.py and
tests/test_dits_regional.py, parametrized over every family of `attnkit.families`): "yes" when all passed, "no" when
the family refuses the feature with its one clear error (also a passing test), "FAILED" otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from readme_table import between  # noqa: E402

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results" / "families.json"
PAGES = (ROOT / "README.md", ROOT / "docs" / "families.md")
START, END = "<!-- family table: written by benchmarks/families.py -->", "<!-- end of family table -->"
TESTS = ("tests/test_dits.py", "tests/test_dits_regional.py")
#: feature column -> (tests that must pass for "yes", test whose pass means a clear refusal: "no")
FEATURES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "sites": (("test_sites_json_lists_every_attention_module_typed",
               "test_an_undescribed_attention_module_is_an_error_naming_it"), None),
    "inspect": (("test_inspect_shapes_agree_with_the_stock_run",), None),
    "bit-identical when idle": (("test_doing_nothing_leaves_output_bit_identical",), None),
    "word maps (exact)": (("test_word_maps_are_probabilities_equal_to_an_fp64_softmax",), None),
    "regional": (("test_one_whole_image_region_is_the_plain_pipeline",
                  "test_image_tokens_of_one_region_give_the_other_regions_text_probability_zero"),
                 "test_a_family_without_regional_prompting_says_so"),
}


def run_tests() -> dict[str, dict[str, str]]:
    """{family: {test name: "passed" | "failed" | "skipped"}} from one pytest run over the family tests."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.xml"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                        *TESTS], cwd=ROOT, env=env, check=False)
        outcomes: dict[str, dict[str, str]] = {}
        for case in ET.parse(report).iter("testcase"):
            match = re.fullmatch(r"(test_\w+)\[(\w+)\]", case.get("name", ""))
            if match is None:
                continue
            failed = case.find("failure") is not None or case.find("error") is not None
            outcome = "failed" if failed else "skipped" if case.find("skipped") is not None else "passed"
            outcomes.setdefault(match.group(2), {})[match.group(1)] = outcome
    return outcomes


def cells(outcomes: dict[str, str]) -> dict[str, str]:
    """The table row of one family from its test outcomes."""
    row = {}
    for feature, (needed, refusal) in FEATURES.items():
        if all(outcomes.get(test) == "passed" for test in needed):
            row[feature] = "yes"
        elif refusal is not None and outcomes.get(refusal) == "passed":
            row[feature] = "no"
        else:
            row[feature] = "FAILED"
    return row


def family_table(results: dict) -> str:
    header = ["family", "denoiser", "built-in tiny pipeline", *FEATURES]
    rows = [f"| {' | '.join(header)} |", "| --- |" + " --- |" * (len(header) - 1)]
    for name, entry in sorted(results["families"].items()):
        rows.append(f"| {name} | `{entry['model']}` | `tiny-{name}` | "
                    + " | ".join(entry["features"][f] for f in FEATURES) + " |")
    rows += ["", f"From `benchmarks/results/families.json`: the outcomes of {' and '.join(f'`{t}`' for t in TESTS)} "
             f"(diffusers {results['diffusers']}). \"no\": the family refuses the feature with a clear error."]
    return "\n".join(rows)


def page_with_table(page: str, results: dict) -> str:
    return between(page, START, END, family_table(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", action="store_true", help="only rewrite the pages' tables from the saved JSON")
    args = parser.parse_args(argv)
    if not args.table:
        import diffusers

        from attnkit.families import dits

        outcomes = run_tests()
        results = {"diffusers": diffusers.__version__,
                   "families": {dit.name: {"model": dit.model, "features": cells(outcomes.get(dit.name, {})),
                                           "tests": outcomes.get(dit.name, {})} for dit in dits()}}
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for page in PAGES:
        page.write_text(page_with_table(page.read_text(), json.loads(RESULTS.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
