"""The shapes world's edge ControlNet: `python -m attnkit.shapes.controlnet --out DIR` trains it for shapes-sd15.

A stock diffusers `ControlNetModel.from_unet` of shapes-sd15's UNet (`--base`: another shapes UNet model, at its own
image size; `--init`: continue a trained ControlNet), trained with the base's own epsilon loss
(`train._epsilon_loss`: min-SNR weights, scaled-linear betas) on its frozen UNet, VAE and text encoder. Conditions are
`attnkit.kv.video.edges` of random scenes and video frames, so training and `edit_video` share one edge map, and they
pass through the ControlNet pipeline's own image processor, so training sees exactly what inference feeds. Time-boxed
like `train.py`: OUT/controlnet holds the latest checkpoint (saved every `--checkpoint-minutes` and at the end), and
`--ship NAME` writes a run's checkpoint to `attnkit/shapes/models/NAME` in fp16 with its model card.

    controlnet = attnkit.shapes.controlnet.load_controlnet()
    pipe = StableDiffusionControlNetPipeline.from_pipe(attnkit.shapes.load("shapes-sd15"), controlnet=controlnet)
    image = pipe("a red circle", image=edges(picture), negative_prompt="", **attnkit.shapes.guidance_kwargs(pipe))
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import AttnkitError
from ..kv.video import edges
from . import GUIDANCE, MODELS_DIR, STEPS, image_size, load
from .data import random_scene, random_video
from .evaluate import generate
from .package import _hardware
from .scorer import detect, follows_prompt
from .train import _encode_prompts, _epsilon_loss, _Log

__all__ = ["BASE", "NAME", "build", "controlnet_pipeline", "edge_following", "load_controlnet", "main", "model_card",
           "ship", "train_controlnet"]

#: The shipped edge ControlNet and the pipeline it was trained for.
NAME, BASE = "shapes-sd15-edges", "shapes-sd15"
#: Share of training images that are video frames (a moving object beside a still one), the rest random scenes.
VIDEO_SHARE = 0.25
#: Captions replaced by "" in training, as in the ControlNet paper: the unconditional branch of CFG also runs the
#: ControlNet, and shape and place must be read from the edges, not the words.
PROMPT_DROPOUT = 0.5
#: Scene seeds of the edge-following measurement, away from any training draw (those are below 2**31).
EVAL_SEED = 2**32


def load_controlnet(name: str = NAME, **from_pretrained_kwargs: Any) -> Any:
    """The stock `ControlNetModel` of shipped ControlNet `name` (or of a folder), via `from_pretrained`."""
    from diffusers import ControlNetModel

    folder = MODELS_DIR / name if (MODELS_DIR / name).is_dir() else Path(name)
    if not (folder / "config.json").is_file():
        raise AttnkitError(f"no ControlNet at {folder}: give {NAME!r} or a folder written by "
                           "`python -m attnkit.shapes.controlnet` (OUT/controlnet)")
    return ControlNetModel.from_pretrained(folder, **from_pretrained_kwargs)


def build(pipe: Any, seed: int) -> Any:
    """A new ControlNet for `pipe`'s UNet (its encoder weights copied, zero convolutions out): the conditioning
    embedding halves the 64 px condition once per 2x of the VAE, so it lands on the latent grid."""
    from diffusers import ControlNetModel

    downsamplings = int(math.log2(pipe.vae_scale_factor))
    if 2**downsamplings != pipe.vae_scale_factor:
        raise AttnkitError(f"VAE scale factor {pipe.vae_scale_factor} is not a power of 2: a ControlNet's "
                           "conditioning embedding downsamples by 2x steps; use a pipeline with a 2^n VAE")
    torch.manual_seed(seed)
    channels = tuple(16 * 2**i for i in range(downsamplings + 1))
    return ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=channels)


def controlnet_pipeline(pipe: Any, controlnet: Any) -> Any:
    """`StableDiffusionControlNetPipeline` on `pipe`'s components and `controlnet`."""
    from diffusers import StableDiffusionControlNetPipeline

    controlled = StableDiffusionControlNetPipeline.from_pipe(pipe, controlnet=controlnet)
    controlled.set_progress_bar_config(disable=True)
    return controlled


def _draw(rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
    """One training image and caption of side `size`: a random scene, or a random frame of a random video."""
    seed = int(rng.integers(2**31))
    if rng.random() < VIDEO_SHARE:
        video = random_video(seed, size=size)
        return Image.fromarray(video.frames[int(rng.integers(len(video.frames)))]), video.caption
    scene = random_scene(seed, size=size)
    return Image.fromarray(scene.image), scene.caption


class _Controlled(torch.nn.Module):
    """The UNet with the ControlNet's residuals added, called like the UNet, so `train._epsilon_loss` trains it."""

    def __init__(self, unet: Any, controlnet: Any, condition: torch.Tensor) -> None:
        super().__init__()
        self.unet, self.controlnet, self.condition = unet, controlnet, condition

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> Any:
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                    controlnet_cond=self.condition, return_dict=False)
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid)


def _save(controlnet: Any, out: Path, meta: dict[str, Any]) -> None:
    """Writes the fp32 checkpoint and its record to out/controlnet atomically (a temp folder renamed over it)."""
    tmp, final = out / "controlnet.tmp", out / "controlnet"
    shutil.rmtree(tmp, ignore_errors=True)
    controlnet.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def train_controlnet(args: argparse.Namespace) -> dict[str, Any]:
    """AdamW with 100 warm-up steps and cosine decay to 0.1x on the ControlNet only; returns the final record."""
    pipe = load(args.base)
    size = image_size(pipe)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.eval().requires_grad_(False)
    controlnet = (build(pipe, args.seed) if args.init is None else load_controlnet(args.init)).train()
    controlled = controlnet_pipeline(pipe, controlnet)
    opt = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=0.01)
    rng, gen = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)
    scale = pipe.vae.config.scaling_factor
    log = _Log(args.out / "loss.jsonl", args.steps, "controlnet")
    meta = {"base": args.base, "size": size, "init": args.init, "seed": args.seed, "batch": args.batch, "lr": args.lr,
            "planned_steps": args.steps, "video_share": VIDEO_SHARE, "prompt_dropout": PROMPT_DROPOUT, "device": "cpu",
            "threads": args.threads,
            "conditioning_embedding_out_channels": list(controlnet.config.conditioning_embedding_out_channels)}
    start = last_save = time.monotonic()
    losses: list[float] = []
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, step / 100) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / args.steps)))
        images, captions = zip(*(_draw(rng, size) for _ in range(args.batch)))
        captions = ["" if drop else c for c, drop in zip(captions, rng.random(args.batch) < PROMPT_DROPOUT)]
        condition = controlled.control_image_processor.preprocess([edges(im) for im in images], size, size)
        with torch.no_grad():
            dist = pipe.vae.encode(pipe.image_processor.preprocess(list(images), size, size)).latent_dist
            x0 = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)) * scale
            embeds, _ = _encode_prompts(pipe, captions)
        loss = _epsilon_loss(_Controlled(pipe.unet, controlnet, condition), pipe.scheduler.alphas_cumprod, x0, embeds,
                             gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        now = time.monotonic()
        done = step == args.steps or now - start > args.minutes * 60
        if step % 20 == 0 or done:
            log(step, loss=float(np.mean(losses[-100:])), lr=opt.param_groups[0]["lr"])
        if done or now - last_save > args.checkpoint_minutes * 60:
            meta |= {"steps": step, "minutes": round((now - start) / 60, 1), "loss": float(np.mean(losses[-100:]))}
            _save(controlnet, args.out, meta)
            last_save = now
        if done:
            break
    return meta


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(int((a | b).sum()), 1))


def _outlined(condition: Image.Image, mask: np.ndarray) -> bool:
    """Whether the edge map shows this object: at least a fifth of its one-pixel border ring is edge."""
    from scipy import ndimage

    ring = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
    return bool((np.asarray(condition)[..., 0] > 0)[ring].mean() >= 0.2)


def edge_following(pipe: Any, controlnet: Any, seeds: int = 32, objects: int = 1, steps: int = STEPS,
                   guidance: float = GUIDANCE) -> dict[str, Any]:
    """How well generated objects follow the edge map, with the ControlNet and without it (same prompts and noise).

    Scene k (seed EVAL_SEED + k, `objects` objects) gives the prompt (its caption) and the condition (its edges);
    each drawn object scores the best IoU between its mask and a generated blob of its colour (0 if none), over all
    objects and over those the edge map outlines (at least a fifth of the object's border is edge);
    `prompt_following` is the single-object rate of the right colour and shape (`scorer.follows_prompt`).
    """
    scenes = [random_scene(EVAL_SEED + k, count=objects, size=image_size(pipe)) for k in range(seeds)]
    prompts, noise = [s.caption for s in scenes], list(range(seeds))
    conditions = [edges(Image.fromarray(s.image)) for s in scenes]
    outlined = [_outlined(c, mask) for s, c in zip(scenes, conditions) for mask in s.masks]
    result: dict[str, Any] = {"scenes": seeds, "objects": objects, "steps": steps, "guidance": guidance,
                              "outlined": float(np.mean(outlined))}
    for key, images in (("without", generate(pipe, prompts, noise, steps, guidance, batch=seeds)),
                        ("with", generate(controlnet_pipeline(pipe, controlnet), prompts, noise, steps, guidance,
                                          batch=seeds, image=conditions))):
        ious = []
        for scene, image in zip(scenes, images):
            blobs = detect(image)
            ious += [max([_iou(b.mask, mask) for b in blobs if b.color == o.color], default=0.0)
                     for o, mask in zip(scene.objects, scene.masks)]
        shown = [v for v, o in zip(ious, outlined) if o]
        result[key] = {"iou": float(np.mean(ious)), "iou_outlined": float(np.mean(shown)) if shown else None,
                       "iou_per_object": [round(v, 4) for v in ious]}
        if objects == 1:
            result[key]["prompt_following"] = float(np.mean(
                [follows_prompt(im, s.objects[0].color, s.objects[0].shape)[1] for s, im in zip(scenes, images)]))
    return result


def _fp16_error(pipe: Any, reference: Any, shipped: Any) -> float:
    """Largest pixel difference between two ControlNets on the same short controlled generations."""
    scenes = [random_scene(EVAL_SEED - 1 - k, size=image_size(pipe)) for k in range(2)]
    conditions = [edges(Image.fromarray(s.image)) for s in scenes]
    images = [generate(controlnet_pipeline(pipe, cn), [s.caption for s in scenes], [0, 1], steps=8, image=conditions)
              for cn in (reference, shipped)]
    return float(np.abs(np.float32(images[0]) - np.float32(images[1])).max()) / 255


def ship(run: Path, name: str = NAME, models_dir: Path = MODELS_DIR, seeds: int = 32, steps: int = STEPS) -> Path:
    """fp16 copy of checkpoint `run` (OUT/controlnet) in the package with its loss log, training record, measured
    edge following and model card; replaces the model of that name only once the copy is checked."""
    if not (run / "config.json").is_file() or not (run / "training.json").is_file():
        raise AttnkitError(f"{run} is not a ControlNet checkpoint of `python -m attnkit.shapes.controlnet` "
                           "(config.json and training.json): pass OUT/controlnet")
    pipe = load(json.loads((run / "training.json").read_text())["base"])
    pipe.set_progress_bar_config(disable=True)
    reference = load_controlnet(str(run))
    out = models_dir / name
    staging = out.with_name(f"{name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    load_controlnet(str(run), torch_dtype=torch.float16).save_pretrained(staging)
    shipped = load_controlnet(str(staging))
    error = _fp16_error(pipe, reference, shipped)
    if error > 0.05:
        shutil.rmtree(staging)
        raise AttnkitError(f"fp16 weights change the images by up to {error:.3f}: ship fp32 instead")
    shutil.copy(run / "training.json", staging / "training.json")
    if (run.parent / "loss.jsonl").is_file():
        shutil.copy(run.parent / "loss.jsonl", staging / "loss.jsonl")
    measured = {f"{n}_object": edge_following(pipe, shipped, seeds, n, steps) for n in (1, 2)}
    (staging / "edge-following.json").write_text(json.dumps(measured, indent=1))
    (staging / "README.md").write_text(model_card(name, staging))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def model_card(name: str, folder: Path) -> str:
    """README.md of the ControlNet in `folder`, from its config, training.json and edge-following.json."""
    training = json.loads((folder / "training.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    measured = json.loads((folder / "edge-following.json").read_text())
    stopped = ("" if training["steps"] == training["planned_steps"] else
               f"; stopped by the time box in the cosine schedule planned for {training['planned_steps']} steps")
    single, pair = measured["1_object"], measured["2_object"]
    megabytes = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20
    side = training.get("size", 64)  # the first shipped record predates the field: 64 px
    latents = side // 2 ** (len(config["conditioning_embedding_out_channels"]) - 1)
    start = (f"`--init` with the weights of ControlNet `{Path(training['init']).name}`, then "
             if training.get("init") else "")
    return "\n".join([
        f"# {name}", "",
        f"An edge ControlNet for `{training['base']}`: a stock diffusers `ControlNetModel` made by "
        f"`ControlNetModel.from_unet` of {training['base']}'s UNet and trained by `python -m attnkit.shapes.controlnet`"
        " on the attnkit shapes world. The condition is `attnkit.kv.video.edges(image)` (Sobel edges, white on "
        f"black, {side}x{side}); generated objects take the position and outline of the edge map, colour and kind from "
        "the prompt.", "",
        f"Load: `attnkit.shapes.controlnet.load_controlnet(\"{name}\")` (`ControlNetModel.from_pretrained` on this "
        f"folder); use it with `StableDiffusionControlNetPipeline` or `StableDiffusionControlNetImg2ImgPipeline` "
        f"`.from_pipe(attnkit.shapes.load(\"{training['base']}\"), controlnet=...)`, or "
        "`attnkit.kv.edit_video(..., controlnet=...)`.", "",
        "## Recipe", "",
        f"- ControlNet: the encoder and middle block of {training['base']}'s UNet (weights copied), zero "
        f"convolutions out, conditioning embedding channels {tuple(config['conditioning_embedding_out_channels'])} "
        f"({len(config['conditioning_embedding_out_channels']) - 1} stride-2 steps: {side} px to the "
        f"{latents}x{latents} latents).",
        f"- Frozen: {training['base']}'s UNet, VAE and text encoder. Loss: its epsilon loss with min-SNR-5 weights on "
        "its scaled-linear betas, the ControlNet's residuals added to the UNet.",
        f"- Data: drawn on the fly, {1 - training['video_share']:.0%} random scenes and {training['video_share']:.0%} "
        f"frames of random videos, captioned; {training['prompt_dropout']:.0%} of captions replaced by \"\".",
        f"- {start}{training['steps']} steps of batch {training['batch']}, AdamW at peak learning rate "
        f"{training['lr']:g} with warm-up and cosine decay, in {training['minutes']} minutes {_hardware(training)} "
        f"(seed {training['seed']}{stopped}); final loss (mean of the last 100 steps) {training['loss']:.4f}.",
        "- Loss log: `loss.jsonl` (JSON lines: stage, step, seconds, loss, learning rate).",
        f"- Weights stored in fp16 ({megabytes:.1f} MiB) and load as fp32.", "",
        "## Measured edge following", "",
        f"From `edge-following.json`: {single['scenes']} single-object and {pair['scenes']} two-object scenes not "
        f"seen in training, each scene's caption as the prompt and its edges as the condition, {single['steps']} "
        f"steps, CFG {single['guidance']:g}, the same noise with and without the ControlNet. IoU: each drawn object's "
        "mask against the best-matching generated blob of its colour (colour segmentation, `attnkit.shapes.scorer`).",
        "",
        "| metric | without ControlNet | with ControlNet |", "| --- | --- | --- |",
        f"| IoU, single object | {single['without']['iou']:.3f} | {single['with']['iou']:.3f} |",
        f"| IoU, two objects | {pair['without']['iou']:.3f} | {pair['with']['iou']:.3f} |",
        f"| IoU, two objects, only those the edge map outlines ({pair['outlined']:.0%}) | "
        f"{_cell(pair['without']['iou_outlined'])} | {_cell(pair['with']['iou_outlined'])} |",
        f"| right colour and shape, single object | {single['without']['prompt_following']:.3f} | "
        f"{single['with']['prompt_following']:.3f} |",
        "",
        "`edges` thresholds the largest per-channel (RGB) Sobel magnitude at a fixed level, so a dark object's "
        "outline (red, blue) stays in the condition beside a bright one (yellow, green); an object counts as "
        "outlined when a fifth of its border is edge.",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnkit.shapes.controlnet", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder; the checkpoint goes to OUT/controlnet")
    parser.add_argument("--base", default=BASE, help=f"the shapes UNet model to control (default {BASE}); the "
                        "ControlNet trains at its image size")
    parser.add_argument("--init", default=None, help="continue training this ControlNet (a shipped name or folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500, help="training steps (also sets the cosine LR schedule)")
    parser.add_argument("--minutes", type=float, default=40.0, help="time box")
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (shared machines: keep 1)")
    parser.add_argument("--ship", metavar="NAME", default=None,
                        help="do not train: ship OUT/controlnet as attnkit/shapes/models/NAME (fp16, card, measured)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.minutes <= 0 or args.batch < 1:
        raise AttnkitError("--steps and --batch must be >= 1 and --minutes > 0")
    torch.set_num_threads(args.threads)
    if args.ship:
        print(f"wrote {ship(args.out / 'controlnet', args.ship)}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    train_controlnet(args)
    print(f"\nsaved {args.out / 'controlnet'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
