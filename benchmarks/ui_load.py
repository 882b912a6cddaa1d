"""`attnkit ui` under load: concurrent `gradio_client` requests on the Regional tab, then a long run of sequential
ones, against the app served in this process. Checks that every request returns the image the same request returns
alone, and measures the process's open files, its resident memory along the sequential run, and the bytes of its
temp folders (the request folders and Gradio's cache), before and after the file keeper removes what was served;
writes benchmarks/results/ui-load.json.

    python benchmarks/ui_load.py [--concurrent 16] [--sequential 100] [--steps 2] [--model shapes-sd3]

`tests/test_ui.py` runs `measure` at 16 concurrent and 100 sequential requests; this script runs it at any size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

RESULTS = Path(__file__).parent / "results"
ROWS = [["a red circle", "", 0.0, 0.0, 0.5, 1.0], ["a blue square", "", 0.5, 0.0, 1.0, 1.0]]
BASE = "a red circle and a blue square"


def open_files() -> int:
    """File descriptors this process holds (Linux)."""
    return len(os.listdir("/proc/self/fd"))


def resident_mb() -> float:
    """This process's resident memory in MB (Linux)."""
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kb / 1024


def folder_bytes(*folders: Path) -> int:
    return sum(f.stat().st_size for folder in folders if folder.is_dir() for f in folder.rglob("*") if f.is_file())


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def measure(url: str, studio: Any, gradio_folder: Path, concurrent: int = 16, sequential: int = 100,
            steps: int = 2) -> dict[str, Any]:
    """Load figures of the app at `url` (served by `studio`, Gradio's files under `gradio_folder`): `concurrent`
    requests at once, then `sequential` one after another, each with one of `concurrent` seeds, compared with the
    same seed's request alone."""
    from gradio_client import Client

    table = {"headers": ["prompt", "negative", "x0", "y0", "x1", "y1"], "data": ROWS}
    folders = (studio.folder, gradio_folder)

    def ask(client: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
        outlined, png = client.predict(table, "", BASE, 0.5, "", seed, steps, None, None, None, api_name="/regional")
        return _pixels(outlined), _pixels(png)

    start_bytes = folder_bytes(*folders)
    client = Client(url, verbose=False)
    alone = {seed: ask(client, seed) for seed in range(concurrent)}
    start_files = open_files()

    def ask_new_client(seed: int) -> tuple[np.ndarray, np.ndarray]:
        one = Client(url, verbose=False)  # a user of its own
        try:
            return ask(one, seed)
        finally:
            one.close()

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrent) as pool:
        together = list(pool.map(ask_new_client, range(concurrent)))
    concurrent_seconds = time.perf_counter() - began
    mismatched = [seed for seed, result in enumerate(together) if not all(map(np.array_equal, result, alone[seed]))]

    memory = []
    began = time.perf_counter()
    for index in range(sequential):
        result = ask(client, index % concurrent)
        if not all(map(np.array_equal, result, alone[index % concurrent])):
            mismatched.append(f"sequential {index}")
        memory.append(resident_mb())
    sequential_seconds = time.perf_counter() - began
    client.close()
    served_bytes = folder_bytes(*folders)
    studio.keeper.sweep(time.time() + studio.keeper.keep.max_age + 1)  # what the keeper leaves once all is old
    return {"concurrent": concurrent, "sequential": sequential, "steps": steps, "mismatched": mismatched,
            "concurrent_seconds": round(concurrent_seconds, 2), "sequential_seconds": round(sequential_seconds, 2),
            "open_files": {"start": start_files, "end": open_files()},
            "temp_bytes": {"start": start_bytes, "served": served_bytes, "after_keeper": folder_bytes(*folders)},
            "resident_mb": {"first": round(memory[0], 1), "tenth": round(memory[min(9, len(memory) - 1)], 1),
                            "last": round(memory[-1], 1), "max": round(max(memory), 1)}}


def serve(model: str, pipe: Any, folder: Path) -> tuple[Any, Any, str]:
    """The app on `model`'s loaded `pipe` at a free local port, its request files under `folder`: (app, studio,
    url). Gradio puts its own files under GRADIO_TEMP_DIR as read when the app is built and launched."""
    from attnkit.ui.app import Studio, build_app

    studio = Studio(model, pipe, folder)
    app = build_app(studio)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return app, studio, f"http://127.0.0.1:{port}/"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes-sd3")
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from attnkit.ui.app import load

    with tempfile.TemporaryDirectory() as folder:
        os.environ["GRADIO_TEMP_DIR"] = str(Path(folder) / "gradio")  # Gradio's files apart, to be measured
        app, studio, url = serve(args.model, load(args.model), Path(folder) / "requests")
        try:
            figures = measure(url, studio, Path(folder) / "gradio", args.concurrent, args.sequential, args.steps)
        finally:
            app.close()
    figures |= {"model": args.model, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, 1 torch thread"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ui-load.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
