"""Train a shapes-world pipeline: `python -m attnkit.shapes.train --arch sd3|flux|sd15 --out DIR`.

Every part is built from a config and the result is a stock diffusers pipeline folder (`save_pretrained`), so the
shipped models exercise exactly the code paths of real checkpoints. Recipe (see shapes-world-notes): a small VAE
first (or `--vae` reuses a trained one), then scenes pre-encoded once, then the denoiser with 10% caption dropout
and EMA: rectified flow with logit-normal sigmas for sd3 and flux, epsilon prediction with min-SNR weighting for
sd15.
`--init` continues from a saved pipeline instead of starting from scratch. Time-boxed: a checkpoint of the EMA
weights is saved every `--checkpoint-minutes` so a usable model always exists, and training stops at `--steps` or
`--minutes`, whichever comes first.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AttnkitError
from ..families import denoiser_of, family_of
from . import call_kwargs
from .data import SIZE, random_scene
from .tokenizer import MAX_LENGTH, shapes_t5_tokenizer, shapes_tokenizer

__all__ = ["build_flux", "build_sd15", "build_sd3", "main", "scene_batch"]

_TEXT_HIDDEN = 64  # per CLIP encoder; the two concatenate to the transformer's joint_attention_dim


def _text_encoder(seed: int, vocab_size: int, eos_id: int, projection: bool = True) -> Any:
    """A tiny CLIP text encoder, frozen at random init with large embeddings so word identity and order survive.
    SD3 reads the projected pooled output (`CLIPTextModelWithProjection`), SD1.x only the hidden states."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    from transformers.models.clip.modeling_clip import CLIPTextEmbeddings

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=_TEXT_HIDDEN, intermediate_size=2 * _TEXT_HIDDEN,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_LENGTH,
                            projection_dim=_TEXT_HIDDEN, eos_token_id=eos_id, bos_token_id=eos_id - 1,
                            pad_token_id=eos_id)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    # Found by type: transformers 5's CLIPTextModel holds them directly, 4's and every WithProjection under text_model.
    embeddings = next(module for module in model.modules() if isinstance(module, CLIPTextEmbeddings))
    with torch.no_grad():
        embeddings.token_embedding.weight.normal_(0.0, 1.0)
        embeddings.position_embedding.weight.normal_(0.0, 0.5)
    return model.eval().requires_grad_(False)


def _vae(shift_factor: float | None = None) -> Any:
    """The shapes VAE; SD3 and Flux pipelines need a `shift_factor` to decode (0 until `encode_scenes` sets it)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64),
                         layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=SIZE,
                         shift_factor=shift_factor)


def build_sd3(seed: int, layers: int = 8, heads: int = 4, head_dim: int = 32, shift: float = 1.0) -> Any:
    """An untrained shapes-sd3 pipeline (64 px, 16x16 latents, 8x8 image tokens), deterministic for `seed`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = shapes_tokenizer()
    eos = tokenizer.eos_token_id
    text_1 = _text_encoder(seed + 1, len(tokenizer), eos)
    text_2 = _text_encoder(seed + 2, len(tokenizer), eos)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=SIZE // 4, patch_size=2, in_channels=4, out_channels=4, num_layers=layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=2 * _TEXT_HIDDEN,
        caption_projection_dim=heads * head_dim, pooled_projection_dim=2 * _TEXT_HIDDEN, pos_embed_max_size=16)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=_vae(0.0),
        text_encoder=text_1, tokenizer=tokenizer, text_encoder_2=text_2, tokenizer_2=shapes_tokenizer(),
        text_encoder_3=None, tokenizer_3=None)


def build_sd15(seed: int, channels: tuple[int, ...] = (32, 64, 128), heads: int = 4) -> Any:
    """An untrained shapes-sd15 pipeline: SD1.x's UNet layout scaled down (cross-attention at 16x16 and 8x8 latents,
    a plain block at 4x4), one CLIP text encoder, epsilon prediction on SD's scaled-linear betas."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = shapes_tokenizer()
    text = _text_encoder(seed + 1, len(tokenizer), tokenizer.eos_token_id, projection=False)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=_TEXT_HIDDEN, attention_head_dim=heads, norm_num_groups=32)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1)
    return StableDiffusionPipeline(vae=_vae(), text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_flux(seed: int, layers: int = 4, heads: int = 4, head_dim: int = 32, shift: float = 1.0) -> Any:
    """An untrained shapes-flux pipeline: `layers` double-stream and 2x `layers` single-stream blocks over 8x8
    image tokens (16x16 latents packed 2x2), a CLIP encoder for the pooled vector and a tiny T5 for the tokens; no
    guidance embedding (that needs distillation from a CFG teacher), so it samples with true CFG."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = shapes_tokenizer(), shapes_t5_tokenizer()
    text = _text_encoder(seed + 1, len(tokenizer), tokenizer.eos_token_id, projection=False)
    torch.manual_seed(seed + 2)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=_TEXT_HIDDEN, d_kv=16, d_ff=2 * _TEXT_HIDDEN,
                                 num_layers=2, num_heads=_TEXT_HIDDEN // 16, feed_forward_proj="gated-gelu",
                                 dropout_rate=0.0, pad_token_id=tokenizer_2.pad_token_id,
                                 eos_token_id=tokenizer_2.eos_token_id, is_encoder_decoder=False, use_cache=False))
    t5.eval().requires_grad_(False)
    torch.manual_seed(seed)
    rope = (head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * 4, num_layers=layers, num_single_layers=2 * layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=_TEXT_HIDDEN,
        pooled_projection_dim=_TEXT_HIDDEN, guidance_embeds=False, axes_dims_rope=rope)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=_vae(0.0), text_encoder=text,
                        tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=tokenizer_2, transformer=transformer)


def scene_batch(seeds: range | list[int], size: int = SIZE) -> tuple[torch.Tensor, list[str]]:
    """Images in [-1, 1] (N, 3, size, size) and captions of the scenes with these seeds."""
    scenes = [random_scene(s, size=size) for s in seeds]
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return images, [s.caption for s in scenes]


class _Log:
    """Progress line on stderr and a JSON-lines loss log, so a run can be followed and plotted."""

    def __init__(self, path: Path, total: int, stage: str) -> None:
        self.file = path.open("a")
        self.total, self.stage, self.start = total, stage, time.monotonic()

    def __call__(self, step: int, **values: float) -> None:
        elapsed = time.monotonic() - self.start
        self.file.write(json.dumps({"stage": self.stage, "step": step, "seconds": round(elapsed, 1), **values}) + "\n")
        self.file.flush()
        done = step / self.total
        bar = "#" * int(30 * done) + "." * (30 - int(30 * done))
        shown = " ".join(f"{k} {v:.4f}" for k, v in values.items())
        print(f"\r{self.stage} [{bar}] {step}/{self.total} {shown} {elapsed / 60:.1f} min", end="", file=sys.stderr,
              flush=True)


def _vae_step(opt: torch.optim.Optimizer, loss: torch.Tensor, step: int, steps: int, log: _Log) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if step % 10 == 0 or step == steps:
        log(step, loss=loss.item())


def train_vae(vae: Any, steps: int, seed: int, log: _Log) -> None:
    """L1 + MSE + tiny KL on random 32 px crops (4x cheaper than full scenes; the VAE is convolutional)."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    vae.train()
    for step in range(1, steps + 1):
        images = scene_batch(rng.integers(0, 2**31, size=16).tolist())[0].to(vae.device)
        crop = SIZE // 2
        if step <= steps * 4 // 5:
            y, x = (int(v) for v in rng.integers(0, SIZE - crop + 1, size=2))
            images = images[:, :, y:y + crop, x:x + crop]
        else:
            images = images[:4]  # last fifth on whole scenes, so borders and context are seen too
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        _vae_step(opt, F.l1_loss(recon, images) + F.mse_loss(recon, images) + 1e-6 * posterior.kl().mean(),
                  step, steps, log)
    vae.eval().requires_grad_(False)


def refine_decoder(vae: Any, steps: int, seed: int, log: _Log) -> None:
    """More decoder training on whole scenes with the encoder frozen: sharper corners on small objects, and the
    latent space the denoiser was trained on stays exactly the same."""
    rng = np.random.default_rng(seed + 1)
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    opt = torch.optim.AdamW(decoder, lr=3e-4)
    vae.train()
    for step in range(1, steps + 1):
        images, _ = scene_batch(rng.integers(0, 2**31, size=8).tolist())
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample()
        recon = vae.decode(latents).sample
        _vae_step(opt, F.l1_loss(recon, images) + F.mse_loss(recon, images), step, steps, log)
    vae.eval().requires_grad_(False)


def _denoiser_name(pipe: Any) -> str:
    return "transformer" if hasattr(pipe, "transformer") else "unet"


def _arch(pipe: Any) -> str:
    """The trainer's name for a pipeline's architecture: sd3, flux or sd15 (any UNet)."""
    name = family_of(pipe).name
    return "sd15" if name == "unet" else name


def _encode_prompts(pipe: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Caption embeddings (and SD3's and Flux's pooled ones) exactly as the pipeline computes them at inference."""
    if _arch(pipe) == "flux":
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, max_sequence_length=MAX_LENGTH)
        return embeds, pooled
    if _arch(pipe) == "sd3":
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None,
                                                  do_classifier_free_guidance=False, **call_kwargs(pipe))
        return embeds, pooled
    embeds, _ = pipe.encode_prompt(prompts, pipe.text_encoder.device, 1, do_classifier_free_guidance=False)
    return embeds, None


@torch.no_grad()
def encode_scenes(pipe: Any, count: int, seed: int, set_scaling: bool = True,
                  size: int = SIZE) -> dict[str, torch.Tensor]:
    """Latent mean/std of `count` scenes and their caption embeddings, computed once. With `set_scaling`, the VAE's
    latent scaling is set from these latents: SD3 and Flux pipelines subtract `shift_factor` then scale, SD1.x only
    scale (so there it is 1 / RMS and no shift)."""
    means, stds, captions = [], [], []
    for start in range(0, count, 256):
        images, caps = scene_batch(range(seed + start, seed + min(start + 256, count)), size)
        dist = pipe.vae.encode(images.to(pipe.vae.device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
        captions += caps
    mean, std = torch.cat(means), torch.cat(stds)
    if set_scaling and _arch(pipe) != "sd15":
        pipe.vae.register_to_config(shift_factor=float(mean.mean()), scaling_factor=float(1.0 / mean.std()))
    elif set_scaling:
        pipe.vae.register_to_config(shift_factor=None, scaling_factor=float(mean.pow(2).mean().rsqrt()))
    unique = sorted(set(captions)) + [""]
    embeds, pooled = [], []
    for start in range(0, len(unique), 512):
        e, p = _encode_prompts(pipe, unique[start:start + 512])
        embeds.append(e.cpu())
        pooled.append(p.cpu() if p is not None else torch.zeros(len(e), 0))
    index = {c: i for i, c in enumerate(unique)}
    return {"mean": mean, "std": std, "caption": torch.tensor([index[c] for c in captions]),
            "embeds": torch.cat(embeds), "pooled": torch.cat(pooled)}


def _save(pipe: Any, ema: torch.nn.Module, out: Path, meta: dict[str, Any]) -> None:
    """Writes the pipeline with the EMA denoiser to out/pipeline atomically (a temp folder renamed over it)."""
    name = _denoiser_name(pipe)
    live = getattr(pipe, name)
    setattr(pipe, name, ema)
    tmp = out / "pipeline.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(meta, indent=1))
    setattr(pipe, name, live)
    final = out / "pipeline"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _flow_loss(model: Any, x0: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor,
               gen: torch.Generator) -> torch.Tensor:
    """Rectified flow: x_t = (1 - s) x0 + s noise, the model predicts noise - x0. SD3 takes the timestep as 1000 s;
    Flux takes s itself, with the latents packed into 2x2 patches and position ids by the pipeline's own functions,
    so training sees exactly the tokens inference does."""
    from diffusers import FluxPipeline

    b, c, h, w = x0.shape
    sigma = torch.sigmoid(torch.randn(b, generator=gen)).to(x0.device)
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    s = sigma.view(-1, 1, 1, 1)
    noisy, target = (1 - s) * x0 + s * noise, noise - x0
    if family_of(model).name != "flux":
        pred = model(hidden_states=noisy, encoder_hidden_states=embeds, pooled_projections=pooled,
                     timestep=sigma * 1000).sample
        return F.mse_loss(pred, target)
    pred = model(hidden_states=FluxPipeline._pack_latents(noisy, b, c, h, w), encoder_hidden_states=embeds,
                 pooled_projections=pooled, timestep=sigma,
                 img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x0.device, x0.dtype),
                 txt_ids=torch.zeros(embeds.shape[1], 3, device=x0.device, dtype=x0.dtype)).sample
    return F.mse_loss(pred, FluxPipeline._pack_latents(target, b, c, h, w))


def _epsilon_loss(model: Any, alphas_cumprod: torch.Tensor, x0: torch.Tensor, embeds: torch.Tensor,
                  gen: torch.Generator, gamma: float = 5.0) -> torch.Tensor:
    """DDPM epsilon prediction (SD1.x) with min-SNR-gamma weights, which converge several times faster than
    uniform weights by not spending the model on nearly clean timesteps (Hang et al., 2023)."""
    t = torch.randint(0, len(alphas_cumprod), (len(x0),), generator=gen)
    alpha = alphas_cumprod[t].view(-1, 1, 1, 1).to(x0.device)
    t, noise = t.to(x0.device), torch.randn(x0.shape, generator=gen).to(x0.device)
    pred = model(alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise, t, encoder_hidden_states=embeds).sample
    snr = (alpha / (1 - alpha)).flatten()
    return (snr.clamp(max=gamma) / snr * (pred - noise).pow(2).mean((1, 2, 3))).mean()


def _pooled_captions(cap: torch.Tensor, empty: int, args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:
    """The captions whose pooled vector each batch item gets: its own, or with probability `--pooled-dropout` the
    empty caption's, so that the model reads what to draw from the caption's tokens (which regional prompting gives
    each region) rather than from the one global pooled vector (which it cannot)."""
    if not args.pooled_dropout:
        return cap
    return torch.where(torch.rand(len(cap), generator=gen) < args.pooled_dropout, empty, cap)


def train_denoiser(pipe: Any, data: dict[str, torch.Tensor], args: argparse.Namespace, log: _Log, out: Path,
                   meta: dict[str, Any]) -> None:
    """AdamW with warm-up and cosine decay to 0.1x, 10% caption dropout, EMA; checkpoints the EMA weights."""
    model = getattr(pipe, _denoiser_name(pipe)).float().train().requires_grad_(True)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    shift, scale = pipe.vae.config.shift_factor or 0.0, pipe.vae.config.scaling_factor
    alphas_cumprod = getattr(pipe.scheduler, "alphas_cumprod", None)
    empty = len(data["embeds"]) - 1
    start = last_save = time.monotonic()
    losses: list[float] = []
    for step in range(1, args.steps + 1):
        warm = min(1.0, step / 100)
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = args.lr * warm * cosine
        idx = torch.randint(len(data["mean"]), (args.batch,), generator=gen)
        x0 = data["mean"][idx] + data["std"][idx] * torch.randn(data["mean"][idx].shape, generator=gen)
        x0 = ((x0 - shift) * scale).to(model.device)
        cap = data["caption"][idx].clone()
        cap[torch.rand(args.batch, generator=gen) < 0.1] = empty
        embeds = data["embeds"][cap].to(model.device)
        if args.arch in ("sd3", "flux"):
            loss = _flow_loss(model, x0, embeds, data["pooled"][_pooled_captions(cap, empty, args, gen)].to(
                model.device), gen)
        else:
            loss = _epsilon_loss(model, alphas_cumprod, x0, embeds, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if step % 20 == 0:
            log(step, loss=float(np.mean(losses[-100:])), lr=opt.param_groups[0]["lr"])
        now = time.monotonic()
        done = step == args.steps or now - start > args.minutes * 60
        if done or now - last_save > args.checkpoint_minutes * 60:
            _save(pipe, ema, out, {**meta, "steps": step, "minutes": round((now - start) / 60, 1),
                                   "loss": float(np.mean(losses[-100:]))})
            last_save = now
        if done:
            break


#: Per-architecture defaults of the options left unset on the command line.
DEFAULTS: dict[str, dict[str, Any]] = {"sd3": {"lr": 1e-3, "heads": 4, "layers": 8},
                                       "flux": {"lr": 1e-3, "heads": 4, "layers": 4},
                                       "sd15": {"lr": 5e-4, "heads": 4, "layers": None}}
_BUILDERS = {"sd3": build_sd3, "flux": build_flux}


def _pipeline(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The pipeline to train (new, or `--init`'s) and the training record it starts from."""
    from diffusers import AutoencoderKL

    from . import MODEL_NAMES, MODELS_DIR, load

    if args.init:
        folder = MODELS_DIR / args.init if str(args.init) in MODEL_NAMES else args.init
        pipe = load(str(folder)).to(args.device)
        if _arch(pipe) != args.arch:
            raise AttnkitError(f"--init {args.init} is not an {args.arch} pipeline: pass the matching --arch")
        pipe.vae.float()
        record = json.loads((folder / "training.json").read_text()) if (folder / "training.json").is_file() else {}
        return pipe, {"init": str(args.init), "init_training": record}
    pipe = (_BUILDERS[args.arch](args.seed, layers=args.layers, heads=args.heads) if args.arch in _BUILDERS
            else build_sd15(args.seed, heads=args.heads)).to(args.device)
    if args.vae:
        pipe.vae = AutoencoderKL.from_pretrained(args.vae).float().eval().requires_grad_(False).to(args.device)
        return pipe, {"vae": str(args.vae)}
    train_vae(pipe.vae, args.vae_steps, args.seed, _Log(args.out / "loss.jsonl", args.vae_steps, "vae"))
    print(file=sys.stderr)
    return pipe, {"vae_steps": args.vae_steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnkit.shapes.train", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(DEFAULTS), default="sd3")
    parser.add_argument("--out", type=Path, required=True, help="run folder; the model goes to OUT/pipeline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=6000, help="denoiser steps (also sets the cosine LR schedule)")
    parser.add_argument("--minutes", type=float, default=80.0, help="time box for the denoiser")
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--init", type=Path, default=None,
                        help="continue training the denoiser of this saved pipeline (keeps its VAE and scaling)")
    parser.add_argument("--vae", type=Path, default=None,
                        help="use this trained AutoencoderKL folder instead of training a VAE (e.g. shapes-sd3's)")
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--scenes", type=int, default=10000, help="pre-encoded training scenes")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default: sd3 and flux 1e-3, sd15 5e-4)")
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--pooled-dropout", type=float, default=0.0,
                        help="SD3 and Flux: share of batch items whose pooled vector is the empty caption's while "
                             "their tokens keep the caption (default 0)")
    parser.add_argument("--layers", type=int, default=None,
                        help="transformer blocks: sd3 joint blocks (default 8), flux double-stream blocks (default 4, "
                        "and twice as many single-stream); not for sd15")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default 4)")
    parser.add_argument("--decoder-steps", type=int, default=0,
                        help="decoder refinement after the denoiser (default 0: 300 steps did not help shapes-sd3)")
    parser.add_argument("--refine-decoder", action="store_true",
                        help="only refine the decoder of the model already in OUT/pipeline (--decoder-steps)")
    parser.add_argument("--size", type=int, default=SIZE,
                        help=f"scene side in pixels (default {SIZE}); objects scale with it. With --init, the model "
                        "continues at this size: a higher resolution of the same world")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (shared machines: keep 1)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (random draws stay on the CPU, so a "
                        "seed gives the same batches on every device)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.minutes <= 0:
        raise AttnkitError("--steps must be >= 1 and --minutes > 0")
    if args.arch == "sd15" and args.layers is not None:
        raise AttnkitError("--layers sets a transformer's depth: leave it out with --arch sd15")
    if not 0 <= args.pooled_dropout <= 1 or (args.pooled_dropout and args.arch == "sd15"):
        raise AttnkitError(f"--pooled-dropout {args.pooled_dropout}: give a share from 0 to 1, on --arch sd3 or flux "
                           "(SD1.x has no pooled vector)")
    if args.init and (args.vae or args.layers or args.heads):
        raise AttnkitError("--init continues a saved pipeline as it is: leave out --vae, --layers and --heads")
    for key, value in DEFAULTS[args.arch].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.refine_decoder:
        return _refine_saved(args)
    (args.out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    pipe, meta = _pipeline(args)
    _set_size(pipe, args.size)
    data = encode_scenes(pipe, args.scenes, seed=10_000_000 + args.seed * args.scenes, set_scaling=not args.init,
                         size=args.size)
    meta = {"arch": args.arch, "seed": args.seed, "batch": args.batch, "lr": args.lr, "scenes": args.scenes,
            "planned_steps": args.steps, "device": args.device, "threads": args.threads, **meta}
    if args.size != SIZE:
        meta["size"] = args.size
    if args.pooled_dropout:
        meta["pooled_dropout"] = args.pooled_dropout
    train_denoiser(pipe, data, args, _Log(args.out / "loss.jsonl", args.steps, "denoiser"), args.out, meta)
    if args.decoder_steps:
        return _refine_saved(args)
    print(f"\nsaved {args.out / 'pipeline'}", file=sys.stderr)
    return 0


def _set_size(pipe: Any, size: int) -> None:
    """Makes `size` px the pipeline's default output size (its VAE's `sample_size`, and its denoiser's in latents
    where the denoiser has one: Flux's has none), checking that the size fits the VAE and, on SD3, the position
    embedding's grid."""
    factor = pipe.vae_scale_factor
    model = denoiser_of(pipe)
    patch = model.config.get("patch_size") or 1
    if size < 32 or size % (factor * patch * 2):
        raise AttnkitError(f"--size {size}: give a side of at least 32 px that is a multiple of "
                           f"{factor * patch * 2} (the VAE's and the denoiser's downsampling).")
    grid = size // factor // patch
    limit = model.config.get("pos_embed_max_size")
    if limit is not None and grid > limit:
        raise AttnkitError(f"--size {size} needs a {grid}x{grid} token grid, but this transformer's position "
                           f"embedding covers {limit}x{limit}: at most {limit * patch * factor} px.")
    if "sample_size" in model.config:
        model.register_to_config(sample_size=size // factor)
    pipe.vae.register_to_config(sample_size=size)


def _refine_saved(args: argparse.Namespace) -> int:
    """Refines the decoder of OUT/pipeline in place and records the steps in its training.json."""
    from diffusers import AutoencoderKL

    folder = args.out / "pipeline"
    if not (folder / "vae").is_dir():
        raise AttnkitError(f"no trained pipeline in {folder}: train first")
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    refine_decoder(vae, args.decoder_steps, args.seed, _Log(args.out / "loss.jsonl", args.decoder_steps, "decoder"))
    vae.save_pretrained(folder / "vae")
    meta = json.loads((folder / "training.json").read_text())
    meta["decoder_steps"] = meta.get("decoder_steps", 0) + args.decoder_steps
    (folder / "training.json").write_text(json.dumps(meta, indent=1))
    print(f"\nsaved {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
