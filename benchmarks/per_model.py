"""The command line of the benchmarks that measure each shapes model on its own: `python benchmarks/NAME.py
[MODEL ...]` writes `benchmarks/results/<prefix>-<model>.json` per model and prints each result."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def per_model_main(doc: str, measure: Callable[[str], dict], prefix: str, models: Sequence[str],
                   argv: list[str] | None = None, shown: Callable[[dict], dict] = lambda result: result) -> None:
    """Measure every model named on the command line (default `models`), writing each result as it comes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(models))
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    for model in args.models:
        result = measure(model)
        (RESULTS / f"{prefix}-{model}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(shown(result)))
