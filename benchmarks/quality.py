"""Quality benchmark of the shapes models (issue 6): writes benchmarks/results/quality-<model>.json.

    python benchmarks/quality.py [MODEL ...] [--seeds N]

Numbers in the README and the model cards come from these files, never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from attnkit.shapes import MODEL_NAMES, load
from attnkit.shapes.evaluate import evaluate

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(MODEL_NAMES), help="shapes models (default: all shipped)")
    parser.add_argument("--seeds", type=int, default=8, help="images per single-object prompt (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    for model in args.models:
        start = time.monotonic()
        pipe = load(model)
        pipe.set_progress_bar_config(disable=True)
        with torch.inference_mode():
            result = evaluate(pipe, seeds=args.seeds)
        result = {"model": model, **result, "seconds": round(time.monotonic() - start, 1),
                  "torch": torch.__version__}
        name = Path(model).name
        (RESULTS / f"quality-{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: result[k] for k in ("model", "prompt_following", "regional_adherence",
                                                 "plain_adherence", "map_iou")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
