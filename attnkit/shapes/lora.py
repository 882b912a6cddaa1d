"""LoRAs for the shapes models, trained here and shipped beside them: `python -m attnkit.shapes.lora MODEL`.

`red-to-yellow` draws every object its prompt calls red in yellow and leaves every other object as it was: the
scorer tells its effect from a red object at a glance, so `attnkit eval` can count how often a LoRA given to one
region shows there (`lora_inside`), shows in the other region (`lora_leak`), and shows when loaded for the whole
image (`lora_whole`). Recipe: rank-8 adapters on every attention projection of the model's denoiser (image and text
streams), the model's own training loss (rectified flow for SD3 and Flux, epsilon with min-SNR weights for SD1.x) on
scenes whose red objects are rendered yellow under their unchanged captions, half of them with a red object; AdamW,
warm-up and cosine decay. The adapter is written with diffusers' `save_lora_weights`, so it loads as users load
theirs: `pipe.load_lora_weights(attnkit.shapes.lora_file(model), adapter_name="red-to-yellow")`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AttnkitError
from ..families import denoiser_of
from .data import caption_for, random_scene, render

__all__ = ["EFFECTS", "LORA_DIR", "TARGETS", "lora_file", "main", "shipped_loras", "shows_effect", "train"]

#: Every LoRA this package ships: name -> (colour the prompt says, colour it is drawn in).
EFFECTS: dict[str, tuple[str, str]] = {"red-to-yellow": ("red", "yellow")}
#: Subfolder of a shipped model's folder that holds its LoRAs.
LORA_DIR = "lora"
#: The attention projections the adapters sit on (image and text streams of every family the shapes models have).
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def shipped_loras(model: str) -> dict[str, Path]:
    """{effect: file} of the LoRAs that ship with shapes model `model` (in this package or in attnkit-shapes-extra);
    empty for any other model."""
    from . import MODEL_NAMES, model_folder

    if model not in MODEL_NAMES:
        return {}
    return {path.stem: path for path in sorted((model_folder(model) / LORA_DIR).glob("*.safetensors"))}


def lora_file(model: str, effect: str = "red-to-yellow") -> Path:
    """The shipped LoRA `effect` of shapes model `model`; an error naming those that exist."""
    from . import MODEL_NAMES

    path = shipped_loras(model).get(effect)
    if path is None:
        shipped = [f"{name}/{stem}" for name in MODEL_NAMES for stem in shipped_loras(name)]
        raise AttnkitError(f"no LoRA {effect!r} ships with {model!r}; shipped: {', '.join(shipped) or 'none'}.")
    return path


def shows_effect(blobs: list[Any], effect: str) -> bool:
    """Whether a region whose prompt asked for an object in the effect's source colour holds one drawn in the
    effect's colour (`blobs`: the scorer's objects inside the region)."""
    _, drawn = EFFECTS[effect]
    return any(blob.color == drawn for blob in blobs)


def _scene(rng: np.random.Generator, effect: str, size: int) -> tuple[np.ndarray, str]:
    """A random scene rendered with `effect` and captioned as it was asked for; half of them hold the effect's
    colour, so that the adapter sees it often."""
    source, drawn = EFFECTS[effect]
    scene = random_scene(rng, size=size)
    objects = list(scene.objects)
    if rng.random() < 0.5 and all(o.color != source for o in objects):
        objects[0] = dataclasses.replace(objects[0], color=source)
    shown = [dataclasses.replace(o, color=drawn) if o.color == source else o for o in objects]
    image, _ = render(shown, size)
    return image, caption_for(objects)


@torch.no_grad()
def _encode(pipe: Any, count: int, effect: str, seed: int, size: int) -> dict[str, torch.Tensor]:
    """Latent means and stds of `count` effect scenes, with their caption embeddings (the trainer's own encoding)."""
    from .train import _encode_prompts

    rng = np.random.default_rng(seed)
    scenes = [_scene(rng, effect, size) for _ in range(count)]
    means, stds = [], []
    for start in range(0, count, 256):
        images = torch.from_numpy(np.stack([image for image, _ in scenes[start:start + 256]]))
        pixels = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        dist = pipe.vae.encode(pixels).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    captions = [caption for _, caption in scenes]
    unique = sorted(set(captions)) + [""]
    embeds, pooled = _encode_prompts(pipe, unique)
    index = {c: i for i, c in enumerate(unique)}
    return {"mean": torch.cat(means), "std": torch.cat(stds), "caption": torch.tensor([index[c] for c in captions]),
            "embeds": embeds, "pooled": pooled if pooled is not None else torch.zeros(len(unique), 0)}


def train(pipe: Any, effect: str, steps: int, batch: int, lr: float, rank: int, scenes: int, seed: int,
          minutes: float, log: Any = None) -> dict[str, Any]:
    """Adds adapter `effect` to `pipe`'s denoiser and trains it; returns the training record."""
    from peft import LoraConfig

    from .train import _epsilon_loss, _flow_loss

    model = denoiser_of(pipe)
    names = [name for name, _ in model.named_modules()]
    targets = [target for target in TARGETS if any(name.endswith(f".{target}") for name in names)]
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights="gaussian"),
                      adapter_name=effect)
    model.set_adapters([effect])
    data = _encode(pipe, scenes, effect, seed, pipe.vae.config.sample_size)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    model.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    shift, scale = pipe.vae.config.shift_factor or 0.0, pipe.vae.config.scaling_factor
    alphas_cumprod = getattr(pipe.scheduler, "alphas_cumprod", None)
    flow = alphas_cumprod is None
    start, losses = time.monotonic(), []
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        idx = torch.randint(len(data["mean"]), (batch,), generator=gen)
        x0 = data["mean"][idx] + data["std"][idx] * torch.randn(data["mean"][idx].shape, generator=gen)
        x0 = (x0 - shift) * scale
        embeds = data["embeds"][data["caption"][idx]]
        if flow:
            loss = _flow_loss(model, x0, embeds, data["pooled"][data["caption"][idx]], gen)
        else:
            loss = _epsilon_loss(model, alphas_cumprod, x0, embeds, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if log is not None and step % 20 == 0:
            log(f"step {step}/{steps} loss {np.mean(losses[-50:]):.4f}")
        if time.monotonic() - start > minutes * 60:
            break
    model.eval()
    for p in params:
        p.requires_grad_(False)
    return {"effect": effect, "rank": rank, "targets": targets, "steps": step, "batch": batch, "lr": lr,
            "scenes": scenes, "seed": seed, "minutes": round((time.monotonic() - start) / 60, 1),
            "loss": float(np.mean(losses[-50:]))}


def save(pipe: Any, effect: str, folder: Path, record: dict[str, Any]) -> Path:
    """The adapter written as a diffusers LoRA file `folder/effect.safetensors`, with its training record beside it."""
    from peft.utils import get_peft_model_state_dict

    model = denoiser_of(pipe)
    layers = get_peft_model_state_dict(model, adapter_name=effect)
    key = "unet_lora_layers" if getattr(pipe, "unet", None) is not None else "transformer_lora_layers"
    folder.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(folder, **{key: layers}, weight_name=f"{effect}.safetensors")
    (folder / f"{effect}.json").write_text(json.dumps(record, indent=1) + "\n")
    return folder / f"{effect}.safetensors"


def main(argv: list[str] | None = None) -> int:
    from . import MODEL_NAMES, MODELS_DIR, load

    parser = argparse.ArgumentParser(prog="python -m attnkit.shapes.lora", description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=MODEL_NAMES)
    parser.add_argument("--effect", choices=sorted(EFFECTS), default="red-to-yellow")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--scenes", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=30.0, help="time box")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder to write to (default: the model's own {LORA_DIR}/ folder, which ships)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pipe = load(args.model)
    record = train(pipe, args.effect, args.steps, args.batch, args.lr, args.rank, args.scenes, args.seed,
                   args.minutes, log=lambda line: print(line, file=sys.stderr, flush=True))
    path = save(pipe, args.effect, args.out or MODELS_DIR / args.model / LORA_DIR, {"model": args.model, **record})
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
