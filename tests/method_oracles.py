"""Independent implementations of published attention-observation methods, for the parity tests of
`tests/test_methods.py`.

Each is written from the method's equations and the hyperparameters its reference code uses (the file and commit are
named on each function), never copied from it, and shares no code with attnkit: attention probabilities are computed
here explicitly in float64 from the q, k (and mask) every stock diffusers processor hands to
`torch.nn.functional.scaled_dot_product_attention`, with no attnkit processor installed. DiffSeg's TensorFlow
bilinear upsampling (`tf.keras.layers.UpSampling2D(interpolation="bilinear")`: half-pixel centres, edges clamped) is
torch's `F.interpolate(mode="bilinear", align_corners=False)`.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

# --- attention probabilities, read around the stock processors --------------------------------------------------


@contextlib.contextmanager
def attention_calls(keep: Callable[[torch.Tensor, int, int], object],
                    only: Callable[[int, int], bool] | None = None) -> Iterator[list[object]]:
    """While the block runs, every `scaled_dot_product_attention` call (the stock processors' kernel; those with
    `only(queries, keys)`, where given) also computes its probabilities explicitly in float64, one head at a time,
    (batch, queries, keys), and appends `keep(probabilities of one head, head, heads)`'s results to the yielded list
    as one list per call."""
    original = F.scaled_dot_product_attention
    calls: list[object] = []

    def observed(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if only is not None and not only(query.shape[-2], key.shape[-2]):
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa)
        scale_ = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
        heads = query.shape[1]
        kept = []
        for head in range(heads):
            scores = query[:, head].double() @ key[:, head].double().transpose(-1, -2) * scale_
            if attn_mask is not None:
                mask = attn_mask[:, head if attn_mask.shape[1] == heads else 0] if attn_mask.ndim == 4 else attn_mask
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            kept.append(keep(scores.softmax(-1), head, heads))
        calls.append(kept)
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, enable_gqa=enable_gqa)

    torch.nn.functional.scaled_dot_product_attention = observed
    try:
        yield calls
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


# --- DiffSeg (Tian et al., CVPR 2024): github google/diffseg at 77ea59657da1be832c89e48085e04b97952e2a36 ----------


def clean_latent(pipe, image) -> torch.Tensor:
    """The image in [-1, 1] (x / 127.5 - 1), the VAE posterior mean, shifted and scaled as the pipeline's latents
    (DiffSeg: `image_encoder.layers[-1]` keeps the mean, times 0.18215)."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float64) / 127.5 - 1).permute(2, 0, 1)[None]
    vae = pipe.vae
    with torch.no_grad():
        mean = vae.encode(pixels.to(vae.dtype)).latent_dist.mean
    return (mean - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def self_attention_maps(run: Callable[[], object], image: Callable[[int, int], slice | None]) -> list[torch.Tensor]:
    """Per attention call of `run()` with image queries over image keys (`image(queries, keys)`: the image tokens'
    slice of the sequence, or None for a call without them): their maps (tokens, tokens), averaged over heads
    (DiffSeg's `weights.mean(0)`) and renormalised over the image keys (a no-op for UNet self-attention, which has
    no other keys; joint attention's image block is renormalised after the head mean)."""

    def image_block(probs: torch.Tensor, head: int, heads: int) -> torch.Tensor | None:
        part = image(*probs.shape[-2:])
        return None if part is None else probs[0, part, part] / heads

    with attention_calls(image_block) as calls, torch.no_grad():
        run()
    maps = []
    for kept in calls:
        if kept[0] is not None:
            block = sum(kept)
            maps.append(block / block.sum(-1, keepdim=True))
    return maps


def diffseg_aggregate(maps: list[torch.Tensor]) -> torch.Tensor:
    """DiffSeg's `aggregate_weights` (diffseg/segmentor.py) over maps (side^2, side^2) of any number of grids: the
    mean of each grid's layers, its key axes upsampled (bilinear) to the finest grid and renormalised, its query
    axes tiled (`tf.repeat`), weighted side / sum of sides. Returns (finest^2, finest, finest)."""
    grids: dict[int, list[torch.Tensor]] = defaultdict(list)
    for m in maps:
        grids[math.isqrt(m.shape[0])].append(m)
    finest = max(grids)
    total = sum(grids)
    out = torch.zeros(finest, finest, finest, finest, dtype=torch.float64)
    for side, layers in grids.items():
        mean = torch.stack(layers).mean(0)
        ratio = finest // side
        keys = F.interpolate(mean.reshape(side * side, 1, side, side), size=(finest, finest), mode="bilinear",
                             align_corners=False)
        keys = keys / keys.sum((-2, -1), keepdim=True)
        tiled = keys.reshape(side, side, finest, finest).repeat_interleave(ratio, 0).repeat_interleave(ratio, 1)
        out += tiled * side / total
    return out.reshape(finest * finest, finest, finest)


def sampling_grid(side: int, points: int = 16) -> np.ndarray:
    """DiffSeg's `generate_sampling_grid` with its 63 (the last index of its 64 grid) as side - 1: (points^2, 2)
    (row, col) pairs, row-major."""
    segment = (side - 1) // (points - 1)
    total = segment * (points - 1)
    start = (side - 1 - total) // 2
    axis = np.linspace(start, total + start, points)
    rows, cols = np.meshgrid(axis, axis, indexing="ij")
    return np.concatenate([rows.reshape(-1, 1), cols.reshape(-1, 1)], axis=-1).astype(int)


def symmetric_kl(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """DiffSeg's `KL`: sum x (log x - log Y) / 2 - sum Y (log x - log Y) / 2 over the last two axes, no epsilon."""
    quotient = np.log(x) - np.log(y)
    return (x * quotient).sum((-2, -1)) / 2 - (y * quotient).sum((-2, -1)) / 2


def diffseg_merge(attns: np.ndarray, thresholds: list[float], refine: bool, points: int = 16,
                  max_iter: int = 300, tol: float = 1e-4) -> np.ndarray:
    """DiffSeg's `generate_masks` up to the proposals (K, side, side): `mask_merge` round 0 (anchors' matched maps
    averaged), later rounds (in index order, unmatched proposals gather all proposals within the threshold), and with
    `refine` scikit-learn 1.3.2's `KMeans(init=proposals, n_init=1)` (Lloyd, max_iter 300, tol 1e-4 of the mean
    variance) re-implemented here, its clusters' member means as the proposals. Distances in float64 (the reference
    computes round 0 in float16)."""
    side = attns.shape[-1]
    grid = sampling_grid(side, points)
    square = attns.reshape(side, side, side, side)
    anchors = square[grid[:, 0], grid[:, 1]]
    flat = attns.reshape(side * side, -1)
    rows = []
    for anchor in anchors:
        matched = symmetric_kl(anchor[None], attns) < thresholds[0]
        rows.append(flat[matched].sum(0) / matched.sum())
    proposals = np.stack(rows).reshape(-1, side, side)
    for threshold in thresholds[1:]:
        matched_set: set[int] = set()
        merged = []
        for i, anchor in enumerate(proposals):
            if i in matched_set:
                continue
            matched_set.add(i)
            close = symmetric_kl(anchor[None], proposals) < threshold
            matched_set.update(np.flatnonzero(close).tolist())
            merged.append(proposals[close].mean(0))
        proposals = np.stack(merged)
    if refine:
        labels = lloyd(flat, proposals.reshape(len(proposals), -1), max_iter, tol)
        proposals = np.stack([flat[labels == k].mean(0) for k in range(len(proposals))]).reshape(-1, side, side)
    return proposals


def lloyd(points: np.ndarray, centres: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """Lloyd's k-means as scikit-learn's `_kmeans_single_lloyd` runs: assign, move the centres to their members'
    means, stop when the labels repeat or the centres' squared shift sums to at most tol x the mean variance; labels
    of the final centres. Asserts that no cluster ever empties (scikit-learn would relocate it)."""
    limit = tol * points.var(0).mean()
    previous = None
    for _ in range(max_iter):
        labels = np.argmin(((points[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        assert len(np.unique(labels)) == len(centres), "an empty cluster: scikit-learn would relocate it"
        updated = np.stack([points[labels == k].mean(0) for k in range(len(centres))])
        shift = ((updated - centres) ** 2).sum()
        centres = updated
        if previous is not None and np.array_equal(labels, previous):
            return labels
        if shift <= limit:
            break
        previous = labels
    return np.argmin(((points[:, None] - centres[None]) ** 2).sum(-1), axis=1)


def diffseg_labels(proposals: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """DiffSeg's final step: proposals upsampled (bilinear) to the image size, each pixel the proposal largest there
    (the first on a tie), as proposal indices."""
    upsampled = F.interpolate(torch.from_numpy(proposals)[None], size=size, mode="bilinear", align_corners=False)[0]
    return upsampled.argmax(0).numpy()


def reading_order(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0, 1, ... in the order they first appear (row-major)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse].reshape(labels.shape)


# --- DAAM (Tang et al., ACL 2023): github castorini/daam 0.2.0 at 09564e048cf5ffc1523aa0605736e7f178ca505a ----------


@contextlib.contextmanager
def named_attention(model: torch.nn.Module, keep: Callable[[str, int, torch.Tensor], None],
                    only: Callable[[int, int], bool] | None = None) -> Iterator[None]:
    """While the block runs, every attention call of `model` (with `only(queries, keys)`, where given) also hands
    `keep(module name, head, probabilities)` each head's float64 probabilities (batch, queries, keys)."""
    current: list[str] = [""]

    def entering(name: str) -> Callable[..., None]:
        def note(module: torch.nn.Module, args: tuple) -> None:
            current[0] = name

        return note

    handles = [module.register_forward_pre_hook(entering(name))
               for name, module in model.named_modules() if type(module).__name__ == "Attention"]
    try:
        with attention_calls(lambda probs, head, heads: keep(current[0], head, probs), only):
            yield
    finally:
        for handle in handles:
            handle.remove()


def daam_global_heat_map(sums: dict[tuple[str, int], torch.Tensor], normalize: bool,
                         prompt_tokens: int) -> torch.Tensor:
    """DAAM's `compute_global_heat_map` (daam/trace.py): every (layer, head) map summed over time (77, h, w)
    upsampled bicubic to the finest side, clamped at 0, averaged; the start token, the prompt's tokens and the first
    end token kept; with `normalize` divided by the prompt tokens' sum + 1e-6."""
    side = max(m.shape[-1] for m in sums.values())
    merged = [F.interpolate(m.unsqueeze(1), size=(side, side), mode="bicubic").clamp_(min=0) for m in sums.values()]
    maps = torch.stack(merged, 0).mean(0)[:, 0]
    maps = maps[:prompt_tokens + 2]
    if normalize:
        maps = maps / (maps[1:-1].sum(0, keepdim=True) + 1e-6)
    return maps


def daam_word_map(tokenizer, prompt: str, word: str, global_map: torch.Tensor) -> torch.Tensor:
    """DAAM's `compute_word_heat_map` with `compute_token_merge_indices` (daam/heatmap.py, daam/utils.py): the mean
    of the global map over every token of every occurrence of the word (positions after the start token)."""
    tokens = [t.replace("</w>", "") for t in tokenizer.tokenize(prompt.lower())]
    search = [t.replace("</w>", "") for t in tokenizer.tokenize(word.lower())]
    starts = [i for i in range(len(tokens)) if tokens[i:i + len(search)] == search]
    indices = [start + offset + 1 for start in starts for offset in range(len(search))]
    return global_map[indices].mean(0)


# --- ConceptAttention (Helbling et al., ICML 2025): github helblazer811/ConceptAttention ----------------------------
# Flux: concept_attention/modified_double_stream_block.py, modified_flux_dit.py, utils.py and
# concept_attention_pipeline.py at 8c2709cd34f542b73fc403d8c6a3b684b62142ad; SD3: concept_attention/sd3/dit_block.py,
# pipeline.py and concept_attention_pipeline.py at db30c4dcee01184c4d3f9fc9e46477eeb4e3eef3.


@contextlib.contextmanager
def block_inputs(model: torch.nn.Module, blocks: list[torch.nn.Module]) -> Iterator[list[dict]]:
    """While the block runs, every forward of `model` appends {"forward": its bound arguments, "blocks": the bound
    arguments of each of `blocks` in order} to the yielded list."""
    import inspect

    records: list[dict] = []

    def bind(module: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
        bound = inspect.signature(type(module).forward).bind(module, *args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    handles = [model.register_forward_pre_hook(
        lambda module, args, kwargs: records.append({"forward": bind(module, args, kwargs), "blocks": []}),
        with_kwargs=True)]
    handles += [block.register_forward_pre_hook(
        lambda module, args, kwargs: records[-1]["blocks"].append(bind(module, args, kwargs)), with_kwargs=True)
        for block in blocks]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Flux's rotary embedding on (batch, heads, tokens, dim) with per-token (tokens, dim) cos and sin of interleaved
    pairs, (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), computed in float32 as the reference's `apply_rope`
    computes it (`xq.float()`), then cast back."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    first, second = pairs[..., 0], pairs[..., 1]
    cos, sin = cos.float()[..., ::2], sin.float()[..., ::2]
    return torch.stack([first * cos - second * sin, second * cos + first * sin], -1).flatten(-2).to(x.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (batch, heads, tokens, dim), heads merged into (batch, tokens, heads * dim)."""
    out = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1) @ v
    return out.transpose(1, 2).flatten(2)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def flux_concept_maps(pipe, records: list[dict], concepts: list[str], layers: list[int]) -> torch.Tensor:
    """ConceptAttention's Flux maps (concepts, image tokens) of the recorded forwards: each concept's first T5 token
    (`embed_concepts`, at the prompt's T5 length) through `txt_in`, conditioned on `time_in(t) + guidance_in(g) +
    vector_in(0)`; in each double block (`ModifiedDoubleStreamBlock.forward`) the concept queries attend to the
    concept and image keys (image keys and values modulated by the prompt's vector, concept rotary positions 0); the
    concept outputs (before `proj`) dotted with the image outputs of the normal call, softmax over concepts, mean
    over the forwards and `layers`; the concepts updated with the text stream's gates, projection and MLP."""
    model = pipe.transformer
    text_tokens = records[0]["forward"]["encoder_hidden_states"].shape[1]
    with torch.no_grad():
        tokens = torch.stack([pipe.encode_prompt(c, prompt_2=None, max_sequence_length=text_tokens)[0][0, 0]
                              for c in concepts])
        maps = []
        for record in records:
            forward = record["forward"]
            dtype = forward["hidden_states"].dtype
            guidance = forward["guidance"]
            vector = model.time_text_embed(forward["timestep"].to(dtype) * 1000, guidance.to(dtype) * 1000,
                                           torch.zeros_like(forward["pooled_projections"]))
            stream = model.context_embedder(tokens)[None]
            ids = forward["img_ids"]
            concept_cos, concept_sin = model.pos_embed(torch.cat([torch.zeros(len(concepts), ids.shape[-1],
                                                                              dtype=ids.dtype), ids]))
            for index, args in enumerate(record["blocks"][:len(model.transformer_blocks)]):
                block, attn = model.transformer_blocks[index], model.transformer_blocks[index].attn
                image, text, temb = args["hidden_states"], args["encoder_hidden_states"], args["temb"]
                cos, sin = args["image_rotary_emb"]
                normed_image = block.norm1(image, emb=temb)[0]
                normed_text = block.norm1_context(text, emb=temb)[0]
                normed_concepts, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(stream,
                                                                                                        emb=vector)
                qi, ki, vi = (_heads(f(normed_image), attn.heads) for f in (attn.to_q, attn.to_k, attn.to_v))
                qi, ki = attn.norm_q(qi), attn.norm_k(ki)  # RMS norms over each head's features

                def added(x):
                    q, k, v = (_heads(f(x), attn.heads) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
                    return attn.norm_added_q(q), attn.norm_added_k(k), v

                qt, kt, vt = added(normed_text)
                qc, kc, vc = added(normed_concepts)
                q = rotate(torch.cat([qt, qi], 2), cos, sin)
                k = rotate(torch.cat([kt, ki], 2), cos, sin)
                image_out = attend(q, k, torch.cat([vt, vi], 2))[:, text.shape[1]:]
                q = rotate(torch.cat([qc, qi], 2), concept_cos, concept_sin)
                k = rotate(torch.cat([kc, ki], 2), concept_cos, concept_sin)
                concept_out = attend(q[:, :, :len(concepts)], k, torch.cat([vc, vi], 2))
                if index in layers:
                    maps.append(torch.einsum("bcd,bnd->bcn", concept_out, image_out).softmax(1))
                stream = stream + c_gate_msa[:, None] * attn.to_add_out(concept_out)
                normed = block.norm2_context(stream) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
                stream = stream + c_gate_mlp[:, None] * block.ff_context(normed)
    return torch.stack(maps).mean(0)[0]


def sd3_concept_maps(pipe, records: list[dict], concepts: list[str]) -> torch.Tensor:
    """ConceptAttention's SD3 maps (concepts, image tokens) of the recorded forwards: the concepts joined into one
    prompt, its first len(concepts) + 1 tokens (CLIP start token kept) through `context_embedder`; in each joint block
    (`CustomJointTransformerBlock.forward`) a second joint attention of the image and the concepts, both conditioned
    on the prompt's `temb`, whose image and concept outputs (before `to_out` / `to_add_out`) are kept; the concepts
    updated with the context stream's gates and MLP (not in the last, context-pre-only block). Heat
    (`_compute_heatmaps` with `average_over_timesteps`): vectors averaged over the forwards, start token dropped,
    concept vectors L2-normalised (+1e-8), dot products, softmax over concepts, mean over every layer."""
    model = pipe.transformer
    text_tokens = records[0]["forward"]["encoder_hidden_states"].shape[1]
    with torch.no_grad():
        joined = pipe.encode_prompt(" ".join(concepts), None, None, do_classifier_free_guidance=False,
                                    max_sequence_length=text_tokens - pipe.tokenizer_max_length)[0]
        first = model.context_embedder(joined[:, :len(concepts) + 1])
        concept_vectors: dict[int, list[torch.Tensor]] = defaultdict(list)
        image_vectors: dict[int, list[torch.Tensor]] = defaultdict(list)
        for record in records:
            stream = first
            for index, args in enumerate(record["blocks"]):
                block, attn = model.transformer_blocks[index], model.transformer_blocks[index].attn
                image, temb = args["hidden_states"], args["temb"]
                normed_image = block.norm1(image, emb=temb)[0]
                if block.context_pre_only:
                    normed_concepts = block.norm1_context(stream, temb)
                else:
                    normed_concepts, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(stream,
                                                                                                            emb=temb)
                qi, ki, vi = (_heads(f(normed_image), attn.heads) for f in (attn.to_q, attn.to_k, attn.to_v))
                qc, kc, vc = (_heads(f(normed_concepts), attn.heads)
                              for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
                if attn.norm_q is not None:
                    qi, ki = attn.norm_q(qi), attn.norm_k(ki)
                if attn.norm_added_q is not None:
                    qc, kc = attn.norm_added_q(qc), attn.norm_added_k(kc)
                out = attend(torch.cat([qi, qc], 2), torch.cat([ki, kc], 2), torch.cat([vi, vc], 2))
                image_out, concept_out = out[:, :image.shape[1]], out[:, image.shape[1]:]
                concept_vectors[index].append(concept_out)
                image_vectors[index].append(image_out)
                if not block.context_pre_only:
                    stream = stream + c_gate_msa[:, None] * attn.to_add_out(concept_out)
                    normed = block.norm2_context(stream) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
                    stream = stream + c_gate_mlp[:, None] * block.ff_context(normed)
        maps = []
        for index in sorted(concept_vectors):
            concept = torch.stack(concept_vectors[index]).mean(0)[:, 1:]
            concept = concept / (concept.norm(dim=-1, keepdim=True) + 1e-8)
            image = torch.stack(image_vectors[index]).mean(0)
            maps.append(torch.einsum("bcd,bpd->bcp", concept, image).softmax(-2))
    return torch.stack(maps).mean(0)[0]
