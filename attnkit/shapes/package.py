"""Ship a trained run: `python -m attnkit.shapes.package RUN_DIR/pipeline NAME [--quality JSON]`.

Copies RUN_DIR/pipeline into `attnkit/shapes/models/NAME` with the denoiser and VAE weights stored in fp16
(half the bytes; they load back as fp32, and the images are checked to stay the same), ships the loss logs of
every run that made it, and writes the model card from the runs' own records, so no figure in it is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AttnkitError
from ..families import denoiser_of
from . import GUIDANCE, MODELS_DIR, call_kwargs, guidance_kwargs, image_size, load
from .data import SIZE
from .evaluate import REGIONAL_BASE_WEIGHT
from .tokenizer import MAX_LENGTH

__all__ = ["main", "model_card", "package"]


def _sample(pipe: Any) -> np.ndarray:
    size = image_size(pipe)
    return pipe(["a red circle", "a yellow triangle"], num_inference_steps=8, output_type="np", height=size,
                width=size, negative_prompt=["", ""], generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
                **call_kwargs(pipe), **guidance_kwargs(pipe)).images


def _denoiser_config(folder: Path) -> dict[str, Any]:
    """The config of a saved pipeline's denoiser (`transformer` for SD3 and Flux, `unet` for SD1.x)."""
    return next(json.loads((folder / d / "config.json").read_text()) for d in ("transformer", "unet")
                if (folder / d).is_dir())


def _portable_tokenizers(folder: Path) -> None:
    """Writes a saved pipeline's tokenizers so transformers 4 loads them too: `model_index.json` names the `*Fast`
    classes (4 reads `CLIPTokenizer` and `T5Tokenizer` as the slow classes, which need vocab files a
    `tokenizer.json` folder lacks; 5 keeps the `*Fast` names as aliases), and the empty `extra_special_tokens` list
    that 5 writes is dropped (4.47 and later expect a mapping there)."""
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    for key, value in index.items():
        if isinstance(value, list) and value[1] in ("CLIPTokenizer", "T5Tokenizer"):
            index[key] = [value[0], value[1] + "Fast"]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for config_file in folder.glob("tokenizer*/tokenizer_config.json"):
        config = json.loads(config_file.read_text())
        if config.get("extra_special_tokens") == []:
            del config["extra_special_tokens"]
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _loss_logs(run: Path, out: Path) -> dict[str, bytes]:
    """The loss logs a model ships: those of the shipped model this run continued (`--init` of `out`'s name or
    folder), then this run's own `RUN_DIR/loss.jsonl` as `loss-runN.jsonl`, N counting every run that made it."""
    training = json.loads((run / "training.json").read_text())
    init = training.get("init")
    continued = init is not None and (init == out.name or Path(init).resolve() == out.resolve())
    logs = {p.name: p.read_bytes() for p in out.glob("loss-run*.jsonl")} if continued else {}
    own = run.parent / "loss.jsonl"
    if own.is_file():
        logs[f"loss-run{len(_stages(training))}.jsonl"] = own.read_bytes()
    return logs


def package(run: Path, name: str, models_dir: Path = MODELS_DIR) -> Path:
    """fp16 copy of `run` (a saved pipeline folder) in the package, replacing the model of that name only once
    the copy is checked; refuses if fp16 changes the images visibly."""
    if not (run / "model_index.json").is_file():
        raise AttnkitError(f"{run} is not a saved pipeline folder (no model_index.json)")
    pipe = load(str(run))
    pipe.set_progress_bar_config(disable=True)
    reference = _sample(pipe)
    out = models_dir / name
    staging = out.with_name(f"{name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    denoiser_of(pipe).to(torch.float16)
    pipe.vae.to(torch.float16)
    pipe.save_pretrained(staging)
    _portable_tokenizers(staging)
    shutil.copy(run / "training.json", staging / "training.json")
    for log, data in _loss_logs(run, out).items():
        (staging / log).write_bytes(data)
    shipped = load(str(staging))
    shipped.set_progress_bar_config(disable=True)
    error = float(np.abs(_sample(shipped) - reference).max())
    if error > 0.05:
        shutil.rmtree(staging)
        raise AttnkitError(f"fp16 weights change the images by up to {error:.3f}: ship fp32 instead")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def _hardware(training: dict[str, Any]) -> str:
    """Where a run trained; the records of the first shipped runs predate these fields and were one CPU thread."""
    device, threads = training.get("device", "cpu"), training.get("threads", 1)
    if device != "cpu":
        return f"on `{device}`"
    return "on one CPU thread" if threads == 1 else f"on {threads} CPU threads"


def _stage(training: dict[str, Any]) -> str:
    """One training run in words: steps, batch, time, seed, schedule, final loss."""
    start = "`--init` with the weights of the run above: " if "init" in training else ""
    stopped = ("" if training["steps"] == training["planned_steps"] else
               f"; stopped early in the cosine schedule planned for {training['planned_steps']} steps")
    pooled = training.get("pooled_dropout", 0.0)
    start += f"at {training['size']} px (`--size`), " if "size" in training else ""
    stopped += (f"; {pooled:.0%} of the batch items got the empty caption's pooled vector with their caption's tokens "
                "(`--pooled-dropout`)") if pooled else ""
    return (f"{start}{training['steps']} steps of batch {training['batch']} at peak learning rate "
            f"{training.get('lr', 1e-3):g} in {training['minutes']} minutes {_hardware(training)} "
            f"(seed {training['seed']}, {training['scenes']} pre-encoded scenes{stopped}); final loss (mean of the "
            "last 100 steps) "
            f"{training['loss']:.4f}")


def _stages(training: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs that made a model, first to last (`--init` nests the earlier run's record)."""
    earlier = training.get("init_training")
    return [*(_stages(earlier) if earlier else []), training]


def _vae_line(stages: list[dict[str, Any]]) -> str:
    first = stages[0]
    trained = (f"{first['vae_steps']} steps of 16" if "vae_steps" in first else
               f"the VAE of `{first['vae']}` (same weights)")
    return ("- VAE: `AutoencoderKL` (32, 64, 64) channels, 4 latent channels, 4x down; L1 + MSE + "
            f"1e-6 KL on 32 px crops then whole 64 px scenes: {trained}.")


def _sizes(stages: list[dict[str, Any]]) -> str:
    """"64x64", or "64x64 then 128x128" (the same world at a higher resolution) when a run changed the size."""
    sizes = list(dict.fromkeys(stage.get("size", SIZE) for stage in stages))
    return " then ".join(f"{size}x{size}" for size in sizes)


def model_card(name: str, folder: Path, quality: dict[str, Any] | None) -> str:
    """README.md of the model saved in `folder`, from its training.json, denoiser config and loss logs, and the
    benchmark's JSON."""
    stages = _stages(json.loads((folder / "training.json").read_text()))
    config = _denoiser_config(folder)
    loss_logs = sorted((p.name for p in folder.glob("loss-run*.jsonl")), key=lambda log: int(log[8:-6]))
    arch = stages[0]["arch"]
    size = stages[-1].get("size", SIZE)
    tokens = f"{size // 8}x{size // 8} image tokens"
    if arch == "flux":
        pipeline, loading = "FluxPipeline", (
            f"(`from_pretrained` on this folder; `attnkit.shapes.load` also sets the default size to {size} px). "
            f"It was trained on {MAX_LENGTH} T5 tokens and has no guidance embedding: pass "
            f"`max_sequence_length={MAX_LENGTH}` (`attnkit.shapes.call_kwargs(pipe)`) and guide with true CFG, "
            f"`true_cfg_scale={GUIDANCE:g}, negative_prompt=\"\"` (`attnkit.shapes.guidance_kwargs(pipe)`); "
            "`guidance_scale` does nothing here.")
        text = ("- Text: a tiny CLIP text encoder (hidden 64, 2 layers) for the pooled vector and a tiny T5 encoder "
                "(d_model 64, 2 layers) for the tokens, both frozen at random init; tokenizers where each vocabulary "
                "word is one token.")
        denoiser = (f"- Transformer: `FluxTransformer2DModel`, 2x2 packed latents ({tokens}), "
                    f"{config['num_layers']} double-stream and {config['num_single_layers']} single-stream blocks, "
                    f"{config['num_attention_heads']} heads x {config['attention_head_dim']}, no guidance embedding; "
                    "rectified flow, logit-normal sigmas, AdamW with warm-up and cosine decay, 10% caption dropout, "
                    "EMA.")
    elif arch == "sd3":
        pipeline, loading = "StableDiffusion3Pipeline", (
            "(`from_pretrained` on this folder with `text_encoder_3=None, tokenizer_3=None`). There is no T5: pass "
            "`max_sequence_length=0` to every call (`attnkit.shapes.call_kwargs(pipe)`).")
        text = ("- Text: two tiny CLIP text encoders (hidden 64, 2 layers), frozen at random init with large token "
                "and position embeddings; a tokenizer where each vocabulary word is one token.")
        denoiser = (f"- Transformer: `SD3Transformer2DModel`, patch 2 ({tokens}), {config['num_layers']} "
                    f"layers, {config['num_attention_heads']} heads x {config['attention_head_dim']}; rectified flow, "
                    "logit-normal sigmas, AdamW with warm-up and cosine decay, 10% caption dropout, EMA.")
    else:
        pipeline, loading = "StableDiffusionPipeline", "(`from_pretrained` on this folder; no safety checker)."
        text = ("- Text: one tiny CLIP text encoder (hidden 64, 2 layers), frozen at random init with large token "
                "and position embeddings; a tokenizer where each vocabulary word is one token.")
        denoiser = (f"- UNet: `UNet2DConditionModel`, channels {tuple(config['block_out_channels'])}, blocks "
                    f"{', '.join(config['down_block_types'])} (cross-attention at {size // 4}x{size // 4} and "
                    f"{size // 8}x{size // 8} latents), "
                    f"{config['attention_head_dim']} heads; epsilon prediction on SD's scaled-linear betas with "
                    "min-SNR-5 weights, AdamW with warm-up and cosine decay, 10% caption dropout, EMA; sampled with "
                    "Euler (trailing timesteps).")
    lines = [
        f"# {name}", "",
        f"A stock `{pipeline}` trained from scratch by `python -m attnkit.shapes.train --arch {stages[0]['arch']}` "
        f"on the attnkit shapes world: {_sizes(stages)} images of 1-3 flat-coloured circles, squares and triangles "
        "(red, green, blue, yellow) on a dark grey background, captioned like \"a red circle and a blue square\".", "",
        f"Load: `attnkit.shapes.load(\"{name}\")` or `attnkit.models.load_pipeline(\"{name}\")` {loading}", "",
        "## Recipe", "", text, _vae_line(stages), denoiser,
        *(f"- Run {i}: {_stage(stage)}." for i, stage in enumerate(stages, 1)),
        *([f"- Loss logs: {', '.join(f'`{log}`' for log in loss_logs)} (JSON lines: stage, step, seconds, loss, "
           "learning rate)."] if loss_logs else []),
        "- Weights of the denoiser and VAE are stored in fp16 and load as fp32.", "",
        "## Measured quality", "",
    ]
    if quality is None:
        lines.append("Not measured yet: run `python benchmarks/quality.py " + name + "`.")
    else:
        d = quality["details"]
        lines += [
            "Regional prompting runs through `attnkit.regional` with its defaults, a prompt per half and the plain "
            f"prompt as the base prompt at weight {REGIONAL_BASE_WEIGHT:g}; plain adherence uses the plain prompt, "
            "which names both objects, alone.", "",
            f"From `benchmarks/results/quality-{name}.json` ({d['steps']} steps, CFG {d['guidance']}, "
            f"{d['single']['images']} single-object images, {d['two_objects']['layouts']} two-object layouts):", "",
            "| metric | value |", "| --- | --- |",
            *(f"| {k} | {'n/a' if quality[k] is None else f'{quality[k]:.3f}'} |"
              for k in ("prompt_following", "regional_adherence", "plain_adherence", "map_iou")),
            f"| colour only, single object | {d['single']['color_rate']:.3f} |",
            *(f"| colour and shape, {c} | {v:.3f} |" for c, v in d["single"]["per_color"].items()),
            *(f"| colour and shape, {s} | {v:.3f} |" for s, v in d["single"]["per_shape"].items()),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnkit.shapes.package", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a pipeline folder written by attnkit.shapes.train (RUN/pipeline)")
    parser.add_argument("name", help="model name, e.g. shapes-sd3")
    parser.add_argument("--quality", type=Path, default=None, help="benchmark JSON for the card (optional)")
    parser.add_argument("--card-only", action="store_true", help="rewrite the card of an already shipped model")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = MODELS_DIR / args.name if args.card_only else package(args.run, args.name)
    quality = json.loads(args.quality.read_text()) if args.quality else None
    (out / "README.md").write_text(model_card(args.name, out, quality))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
