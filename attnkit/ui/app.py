"""The Gradio app of `attnkit ui`: one loaded pipeline behind the Regional, Maps, Segment, Video and Generate tabs.

Gradio only: each tab reads its fields with the run layer's checks and runs the run layer's function of its command
(`attnkit regional`, `maps`, `segment`, `video-edit`, `generate`), so a PNG downloaded here carries the record
`attnkit regional` writes. attnkit sessions swap the pipeline's processors for the span of a
generation, so one lock per pipeline lets a single generation run at a time; Gradio's queue holds the others.
The endpoints are named (`/generate`, `/regional`, `/maps`, `/segment`, `/video_edit`) for `gradio_client` scripts.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import socket
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import yaml
from PIL import Image

from ..errors import AttnkitError
from ..kv.defaults import ATTEND, VIDEO_METHODS
from ..run import checks

if TYPE_CHECKING:
    from ..regional.spec import RegionSpec

__all__ = ["DEFAULT_MODEL", "REGION_COLUMNS", "SHOWN_SIDE", "Studio", "build_app", "check_port", "enlarged", "launch",
           "load", "lock_of", "region_spec"]

DEFAULT_MODEL = "shapes-sd3"

#: Columns of the regions table: a prompt, its optional negative, and its box as fractions of the image.
REGION_COLUMNS = ("prompt", "negative", "x0", "y0", "x1", "y1")
_BOX_COLUMNS = REGION_COLUMNS[2:]
_EXAMPLE_REGIONS = [["a red circle", "", 0.0, 0.0, 0.5, 1.0], ["a blue square", "", 0.5, 0.0, 1.0, 1.0]]
_EXAMPLE_BASE = "a red circle and a blue square"

#: Smallest side the page shows an image at: small models (the shapes models draw 64 px) would be specks.
SHOWN_SIDE = 384

_LOG = logging.getLogger(__name__)
_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def lock_of(pipe: Any) -> threading.Lock:
    """The one lock of `pipe`, shared by every app serving it: sessions change its processors while they run."""
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(pipe, threading.Lock())


def _shown(handler: Callable[..., Any]) -> Callable[..., Any]:
    """`handler` with an AttnkitError shown as its message in the page (gr.Error), never as a failed request; any
    other exception is logged with its traceback and fails the request."""

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except AttnkitError as error:
            raise gr.Error(str(error), duration=None, print_exception=False) from None  # stays until closed
        except Exception:
            _LOG.exception("attnkit ui: %s failed", handler.__name__)
            raise

    return wrapped


def _field(check: checks.Check[Any], value: Any, name: str, blank: str | None = None) -> Any:
    """A field's value read by the run layer's `check`, or an AttnkitError naming the field and what to enter;
    with `blank` (what an empty field means), an empty field is None."""
    if blank is not None and _blank(value):
        return None
    read = check(value)
    if read is None:
        raise AttnkitError(f"{name} is {value!r}; enter {check.wanted}"
                           + (f", or leave it blank for {blank}." if blank is not None else "."))
    return read


def _size(value: Any, name: str) -> int | None:
    """An image side in pixels; blank means the model's default."""
    return _field(checks.POSITIVE, value, name, "the model's")


def _guidance(value: Any) -> float | None:
    return _field(checks.GUIDANCE, value, "guidance", "the model's")


def _blank(cell: Any) -> bool:
    """An empty table cell or field: None, NaN (pandas' blank) or whitespace."""
    if isinstance(cell, str):
        return not cell.strip()
    return cell is None or (isinstance(cell, float) and math.isnan(cell))


def _text(cell: Any) -> str:
    """A cell or field as stripped text, blank as ""."""
    return "" if _blank(cell) else str(cell).strip()


def _fraction(cell: Any, where: str) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        raise AttnkitError(f"{where} is {cell!r}, not a number; enter a fraction of the image from 0 to 1, "
                           "e.g. 0.5.") from None


def region_spec(rows: Sequence[Sequence[Any]] | None, grid: str | None = None, base: str | None = None,
                weight: float | None = None, negative: str | None = None) -> RegionSpec:
    """The RegionSpec of the Regional tab: table rows (prompt, negative, x0, y0, x1, y1; blank rows skipped), the
    grid string that places them instead of boxes, the base prompt and weight, the global negative."""
    from ..regional.spec import RegionSpec

    grid = _text(grid)
    regions = []
    for row in rows or []:
        cells = list(row) + [None] * (len(REGION_COLUMNS) - len(row))
        if all(_blank(cell) for cell in cells):
            continue
        where = f"region {len(regions) + 1}"
        entry: dict[str, Any] = {"prompt": _text(cells[0])}
        if _text(cells[1]):
            entry["negative"] = _text(cells[1])
        box = cells[2:len(REGION_COLUMNS)]
        if not all(_blank(cell) for cell in box):
            if grid:
                raise AttnkitError(f"{where} has a box and the grid {grid!r} places it too: clear the grid to use the "
                                   "boxes, or clear the box cells to use the grid.")
            missing = [name for name, cell in zip(_BOX_COLUMNS, box) if _blank(cell)]
            if missing:
                raise AttnkitError(f"{where}: the box has no {', '.join(missing)}; fill in x0, y0, x1, y1 as "
                                   "fractions of the image from 0 to 1.")
            entry["box"] = [_fraction(cell, f"{where}: {name}") for name, cell in zip(_BOX_COLUMNS, box)]
        elif not grid:
            raise AttnkitError(f"{where} has no box: fill in x0, y0, x1, y1 (fractions of the image from 0 to 1), or "
                               "give a grid such as '1,1' that places every region.")
        regions.append(entry)
    if not regions:
        raise AttnkitError("the regions table is empty: add a row with a prompt and a box.")
    data: dict[str, Any] = {"regions": regions}
    if grid:
        data["grid"] = grid
    if _text(base):
        data["base"] = {"prompt": _text(base)} | ({} if weight in (None, "") else {"weight": weight})
    if _text(negative):
        data["negative"] = _text(negative)
    return RegionSpec.from_dict(data)


def _spec_fields(spec: RegionSpec) -> tuple[list[list[Any]], str, str, float, str]:
    """A spec as the Regional tab's fields: rows, grid, base prompt, base weight, negative."""
    unfit = [i + 1 for i, r in enumerate(spec.regions) if r.mask is not None or r.from_word is not None]
    if unfit:
        raise AttnkitError(f"region(s) {unfit} take their area from a mask or a word, which the table cannot hold "
                           "(it holds boxes or a grid): run this spec with `attnkit regional`.")
    if spec.method is not None:
        raise AttnkitError(f"the spec sets method {spec.method!r}, which this page does not offer: remove it, or run "
                           "the spec with `attnkit regional`.")
    rows = [[r.prompt, r.negative or "", *(r.box if r.box is not None else [None] * 4)] for r in spec.regions]
    base = spec.base
    return rows, spec.grid or "", base.prompt if base else "", base.weight if base else 1.0, spec.negative or ""


def enlarged(image: Image.Image) -> Image.Image:
    """`image` scaled up by a whole factor, pixels kept square (nearest neighbour), to at least SHOWN_SIDE a side
    for the page; downloads keep the generated size."""
    factor = max(1, math.ceil(SHOWN_SIDE / min(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def _progress(progress: gr.Progress, steps: int) -> Callable[..., dict[str, Any]]:
    """A `callback_on_step_end` reporting each finished denoising step to the page."""

    def step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        progress((step + 1, steps), desc="denoising", unit="steps")
        return tensors

    return step_end


class Studio:
    """One loaded pipeline, its lock and the folder of the files it serves; the handlers of every tab."""

    def __init__(self, model: str, pipe: Any, folder: Path | None = None) -> None:
        self.model = model
        self.pipe = pipe
        self.lock = lock_of(pipe)
        self.folder = Path(tempfile.mkdtemp(prefix="attnkit-ui-")) if folder is None else Path(folder)

    def _request_folder(self) -> Path:
        """A fresh folder for one request's files, so that downloads of concurrent requests never clash."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.folder))

    @contextmanager
    def _running(self, steps: int, progress: gr.Progress) -> Iterator[dict[str, Any]]:
        """Hold the pipeline for one generation; yields the pipeline arguments that report its steps."""
        progress(0, desc="waiting for the model")
        with self.lock:
            yield {"callback_on_step_end": _progress(progress, steps)}

    def _sampling(self, seed: Any, steps: Any) -> tuple[int, int]:
        return _field(checks.SEED, seed, "seed"), _field(checks.POSITIVE, steps, "steps")

    def _options(self, steps: int, height: Any, width: Any, guidance: Any) -> dict[str, Any]:
        from ..run import sampling_options

        return sampling_options(self.model, self.pipe, steps, _size(height, "height"), _size(width, "width"),
                                _guidance(guidance))

    def generate(self, prompt: str, seed: Any, steps: Any, height: Any, width: Any, guidance: Any,
                 progress: gr.Progress = gr.Progress()) -> tuple[Image.Image, str]:
        """Plain text-to-image, as `attnkit generate`: the image and its PNG with the record embedded."""
        from ..run import generate

        prompt = _prompt(prompt)
        seed, steps = self._sampling(seed, steps)
        path = self._request_folder() / "generate.png"
        with self._running(steps, progress) as extra:
            options = self._options(steps, height, width, guidance)
            result = generate(self.model, self.pipe, prompt, seed, options, out=path, **extra)
        return enlarged(result.image), str(path)

    def regional(self, rows: Any, grid: str, base: str, weight: Any, negative: str, seed: Any, steps: Any,
                 height: Any, width: Any, guidance: Any, true_cfg: Any = None,
                 progress: gr.Progress = gr.Progress()) -> tuple[Image.Image, str]:
        """Regional prompting, as `attnkit regional`: the image with region outlines, and the PNG (no outlines) with
        the record `attnkit regional` embeds. `true_cfg` is `--true-cfg-scale`, on the pipelines that take it."""
        from ..regional.outline import draw_outlines
        from ..run import regional, true_cfg_options

        spec = region_spec(rows, grid, base, weight, negative)
        seed, steps = self._sampling(seed, steps)
        scale = _field(checks.GUIDANCE, true_cfg, "true CFG scale", "none")
        true_cfg = true_cfg_options(self.pipe, scale, "true CFG scale")
        path = self._request_folder() / "regional.png"
        with self._running(steps, progress) as extra:
            options = self._options(steps, height, width, guidance) | true_cfg
            result = regional(self.model, self.pipe, spec, seed, options, out=path, **extra)
        return draw_outlines(enlarged(result.image), result.spec, result.grid), str(path)

    def save_spec(self, rows: Any, grid: str, base: str, weight: Any, negative: str) -> list[str]:
        """The Regional tab's spec as spec.yaml and spec.json, checked as `attnkit regional --spec` would."""
        data = region_spec(rows, grid, base, weight, negative).as_dict()
        folder = self._request_folder()
        (folder / "spec.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        (folder / "spec.json").write_text(json.dumps(data, indent=2) + "\n")
        return [str(folder / "spec.yaml"), str(folder / "spec.json")]

    def load_spec(self, path: str | None) -> tuple[list[list[Any]], str, str, float, str]:
        """A YAML or JSON spec file as the Regional tab's fields."""
        from ..regional.spec import load_spec

        if not path:
            raise AttnkitError("no spec file arrived; choose a .yaml, .yml or .json region spec.")
        return _spec_fields(load_spec(path))

    def maps(self, prompt: str, seed: Any, steps: Any, height: Any, width: Any, guidance: Any,
             progress: gr.Progress = gr.Progress()) -> tuple[Image.Image, Any, str, str, dict[str, str]]:
        """The image, one choice per prompt word, the first word's overlay, maps.safetensors, and every word's
        overlay file (the page's state)."""
        from ..maps import plot
        from ..run import maps as word_maps

        prompt = _prompt(prompt)
        seed, steps = self._sampling(seed, steps)
        folder = self._request_folder()
        with self._running(steps, progress) as extra:
            options = self._options(steps, height, width, guidance)
            result = word_maps(self.model, self.pipe, prompt, seed, options, **extra)
            result.trace.save(folder / "maps.safetensors")
        image, maps = result.image, result.maps
        if not maps:
            raise AttnkitError(f"the prompt {prompt!r} has no words to map; enter a prompt with words.")
        overlays = {}
        for index, (word, heat) in enumerate(maps.items()):
            overlays[word] = str(folder / f"word-{index}.png")
            plot.overlay(enlarged(image), heat).save(overlays[word])
        first = next(iter(overlays))
        return (enlarged(image), gr.Radio(choices=list(overlays), value=first), overlays[first],
                str(folder / "maps.safetensors"), overlays)

    def segment(self, prompt: str, image: Image.Image | None, seed: Any, steps: Any, height: Any, width: Any,
                guidance: Any, progress: gr.Progress = gr.Progress()) -> tuple[Image.Image, Image.Image, list[list]]:
        """Segments of the uploaded image, or of one generated from the prompt, as `attnkit segment`: the image, its
        overlay, and a row (id, label, area, box) per segment."""
        from ..run import segment

        prompt = _text(prompt)
        seed, steps = self._sampling(seed, steps)
        if image is None and not prompt:
            raise AttnkitError("enter a prompt to segment a generated image, or upload an image (a prompt describing "
                               "it then names the segments).")
        with self._running(steps, progress) as extra:
            options = {} if image is not None else self._options(steps, height, width, guidance)
            result = segment(self.model, self.pipe, prompt, image, seed, options, **extra)
        segments = result.segmentation.segments
        rows = [[s.id, s.label or "", s.area, " ".join(str(v) for v in s.bbox)] for s in segments]
        return enlarged(result.image), enlarged(result.segmentation.overlay()), rows


    def video_edit(self, video: str | None, prompt: str, attend: str, strength: Any, frames: Any, seed: Any,
                   steps: Any, guidance: Any, progress: gr.Progress = gr.Progress()) -> tuple[str, list[Image.Image]]:
        """A video (mp4, GIF) edited frame by frame, as `attnkit video-edit`: the mp4 and its frames. `attend` is a
        published method's name (`--method`) or the frames later frames attend to (`--attend`)."""
        from ..run import video_edit
        from ..videoio import read_frames

        if not video:
            raise AttnkitError("no video arrived; upload an .mp4 or .gif clip to edit.")
        prompt = _prompt(prompt)
        seed, steps = self._sampling(seed, steps)
        count = _field(checks.POSITIVE, frames, "frames", "all")
        amount = _field(checks.STRENGTH, strength, "strength")
        total = sum(1 for _ in read_frames(video, count))
        out = self._request_folder() / "video.mp4"
        progress(0, desc="waiting for the model")
        with self.lock:
            method = attend if attend in VIDEO_METHODS else None
            video_edit(self.model, self.pipe, Path(video), out, prompt, method=method,
                       attend=None if method else attend, strength=amount, steps=steps,
                       seed=seed, guidance=_guidance(guidance), frames=count,
                       on_frame=lambda done: progress((done, total), desc="editing frames", unit="frames"))
        return str(out), [enlarged(frame) for frame in read_frames(out)]


def _prompt(prompt: Any) -> str:
    if not _text(prompt):
        raise AttnkitError("the prompt is empty; enter what to generate, e.g. 'a red circle'.")
    return _text(prompt)


def _show_word(word: str | None, overlays: dict[str, str] | None) -> str | None:
    """The overlay of the word clicked on the Maps tab."""
    return (overlays or {}).get(word)


def _sampling_inputs(tab: str, size: int) -> list[gr.components.Component]:
    """Seed, steps, height, width (shown at the model's default `size`) and guidance fields of one tab."""
    with gr.Row():
        fields = [gr.Number(label="seed", value=0, precision=0, elem_id=f"{tab}-seed"),
                  gr.Number(label="steps", value=28, precision=0, elem_id=f"{tab}-steps"),
                  gr.Number(label="height", value=size, precision=0, elem_id=f"{tab}-height"),
                  gr.Number(label="width", value=size, precision=0, elem_id=f"{tab}-width"),
                  gr.Textbox(label="guidance (blank: the model's)", elem_id=f"{tab}-guidance")]
    return fields


def build_app(studio: Studio) -> gr.Blocks:
    """The page: a tab per feature, each button an endpoint named after its command."""
    from ..pipeline import default_size, takes_true_cfg

    size = default_size(studio.pipe)
    with gr.Blocks(title=f"attnkit · {studio.model}", analytics_enabled=False) as app:
        gr.Markdown(f"## attnkit · `{studio.model}`")
        with gr.Tab("Regional", id="regional"):
            with gr.Row():
                with gr.Column():
                    rows = gr.Dataframe(value=_EXAMPLE_REGIONS, headers=list(REGION_COLUMNS),
                                        datatype=["str", "str", "number", "number", "number", "number"],
                                        column_count=len(REGION_COLUMNS), type="array",
                                        interactive=True, elem_id="regions",
                                        label="regions: a prompt per row, its box as fractions of the image "
                                              "(x0, y0 top left; x1, y1 bottom right); later rows win overlaps")
                    grid = gr.Textbox(label="grid instead of boxes (regional-prompter ratios, e.g. 1,1)",
                                      elem_id="grid")
                    with gr.Row():
                        base = gr.Textbox(label="base prompt (whole image)", value=_EXAMPLE_BASE, elem_id="base")
                        weight = gr.Number(label="base weight", value=0.5, elem_id="base-weight")
                    negative = gr.Textbox(label="negative prompt", elem_id="negative")
                    sampling = _sampling_inputs("regional", size)
                    true_cfg = gr.Textbox(label="true CFG scale, against the negatives (blank: none)",
                                          elem_id="true-cfg", visible=takes_true_cfg(studio.pipe))
                    run = gr.Button("Generate", variant="primary", elem_id="regional-generate")
                    with gr.Row():
                        upload = gr.UploadButton("Load spec (YAML / JSON)", file_types=[".yaml", ".yml", ".json"],
                                                 elem_id="load-spec")
                        save = gr.Button("Save spec", elem_id="save-spec")
                    spec_files = gr.File(label="spec files", file_count="multiple", elem_id="spec-files")
                with gr.Column():
                    outlined = gr.Image(label="image with region outlines", format="png", elem_id="regional-image")
                    png = gr.File(label="PNG with the spec embedded", elem_id="regional-png")
            fields = [rows, grid, base, weight, negative]
            run.click(_shown(studio.regional), fields + sampling + [true_cfg], [outlined, png], api_name="regional")
            save.click(_shown(studio.save_spec), fields, spec_files, api_name="save_spec")
            upload.upload(_shown(studio.load_spec), upload, fields, api_name="load_spec")

        with gr.Tab("Maps", id="maps"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="prompt", value=_EXAMPLE_BASE, elem_id="maps-prompt")
                    sampling = _sampling_inputs("maps", size)
                    run = gr.Button("Generate", variant="primary", elem_id="maps-generate")
                    words = gr.Radio(label="words: click one to see where it went", choices=[], elem_id="words")
                    file = gr.File(label="maps.safetensors", elem_id="maps-file")
                with gr.Column():
                    image = gr.Image(label="image", format="png", elem_id="maps-image")
                    overlay = gr.Image(label="word map", format="png", elem_id="word-overlay")
            overlays = gr.State({})
            run.click(_shown(studio.maps), [prompt] + sampling, [image, words, overlay, file, overlays],
                      api_name="maps")
            words.select(_show_word, [words, overlays], overlay, api_visibility="private")

        with gr.Tab("Segment", id="segment"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="prompt (with an uploaded image: its description, to name segments)",
                                        value="a red circle", elem_id="segment-prompt")
                    given = gr.Image(label="image to segment (optional; it keeps its own size: height and width "
                                           "apply to a generated image)", type="pil",
                                     sources=["upload", "clipboard"], elem_id="segment-input")
                    sampling = _sampling_inputs("segment", size)
                    run = gr.Button("Segment", variant="primary", elem_id="segment-run")
                with gr.Column():
                    image = gr.Image(label="image", format="png", elem_id="segment-image")
                    overlay = gr.Image(label="segments", format="png", elem_id="segment-overlay")
                    labels = gr.Dataframe(headers=["id", "label", "area", "box (left top right bottom)"],
                                          interactive=False, label="segments", elem_id="segment-labels")
            run.click(_shown(studio.segment), [prompt, given] + sampling, [image, overlay, labels], api_name="segment")

        with gr.Tab("Video", id="video"):
            with gr.Row():
                with gr.Column():
                    clip = gr.File(label="video to edit (.mp4 or .gif)", file_types=[".mp4", ".gif"],
                                   elem_id="video-input")
                    prompt = gr.Textbox(label="prompt: what the edited frames show", elem_id="video-prompt")
                    attend = gr.Radio(label="cross-frame attention: a published method, or the frames later frames "
                                            "attend to", choices=[*VIDEO_METHODS, *ATTEND],
                                      value="first+previous", elem_id="video-attend")
                    with gr.Row():
                        strength = gr.Number(label="strength", value=0.6, elem_id="video-strength")
                        frames = gr.Number(label="frames (blank: all)", precision=0, elem_id="video-frames")
                        seed = gr.Number(label="seed", value=0, precision=0, elem_id="video-seed")
                        steps = gr.Number(label="steps", value=28, precision=0, elem_id="video-steps")
                        guidance = gr.Textbox(label="guidance (blank: the model's)", elem_id="video-guidance")
                    run = gr.Button("Edit", variant="primary", elem_id="video-run")
                with gr.Column():
                    edited = gr.File(label="edited video (mp4)", elem_id="video-output")
                    gallery = gr.Gallery(label="edited frames", columns=4, elem_id="video-frames-out")
            run.click(_shown(studio.video_edit), [clip, prompt, attend, strength, frames, seed, steps, guidance],
                      [edited, gallery], api_name="video_edit")

        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="prompt", value=_EXAMPLE_BASE, elem_id="generate-prompt")
                    sampling = _sampling_inputs("generate", size)
                    run = gr.Button("Generate", variant="primary", elem_id="generate-run")
                with gr.Column():
                    image = gr.Image(label="image", format="png", elem_id="generate-image")
                    png = gr.File(label="PNG with the prompt embedded", elem_id="generate-png")
            run.click(_shown(studio.generate), [prompt] + sampling, [image, png], api_name="generate")
    app.queue(default_concurrency_limit=None)  # the pipeline's lock orders generations; waiting ones show it
    return app


def load(model: str, loader: Callable[[str], Any] | None = None) -> Any:
    """`model`'s pipeline from `loader` (default `attnkit.run.load_pipeline`); a file that cannot be read as a model
    is an AttnkitError that names the model, anything else (a bug) keeps its traceback."""
    from ..run import load_pipeline

    try:
        return (loader or load_pipeline)(model)
    except AttnkitError:
        raise
    except (OSError, ValueError, ImportError) as error:
        raise AttnkitError(f"cannot load the model {model!r} ({type(error).__name__}: {error}). Give a built-in name, "
                           "a folder written by `save_pretrained`, or a hub id that is downloaded.") from error


def check_port(host: str, port: int) -> None:
    """An AttnkitError naming the address when nothing could listen there, before the model takes time to load."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise AttnkitError(f"cannot serve on {host}:{port} ({error.strerror or error}): another program may be "
                           "listening there; stop it, or pick a free port with --port.") from None


def launch(model: str = DEFAULT_MODEL, host: str = "127.0.0.1", port: int = 7860,
           loader: Callable[[str], Any] | None = None, **launch_kwargs: Any) -> gr.Blocks:
    """Load `model` once (with `loader`, default `attnkit.run.load_pipeline`) and serve the app on `host`:`port`;
    `launch_kwargs` go to `gr.Blocks.launch` (e.g. `prevent_thread_lock=True` to return at once, serving on)."""
    check_port(host, port)
    app = build_app(Studio(model, load(model, loader)))
    try:
        app.launch(server_name=host, server_port=port, **launch_kwargs)
    except OSError as error:
        raise AttnkitError(f"cannot serve on {host}:{port} ({error}); pick a free port with --port.") from None
    return app
