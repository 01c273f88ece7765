"""Whisper from scratch: the network, its weights, its words, and how it decodes.

Read top to bottom, this file follows the data: the shape of a model (ModelDims), the transformer
that turns a log-mel spectrogram into next-token logits, OpenAI's `.pt` format that holds its
weights, the byte-level BPE tokenizer, and the decoding that turns logits into text: greedy, beam
search, temperature fallback and long-form transcription with timestamps. Other tools' files
(faster-whisper and Hugging Face folders, vocabulary files, subtitles) are read and written in
formats.py, which also finds weights by name: `formats.load_model("tiny.en")`.

Parameter names follow OpenAI's checkpoints exactly (`encoder.blocks.0.attn.query.weight`, ...),
so a state dict saved here loads in any Whisper tool and vice versa.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import re
import unicodedata
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import data
from kernels import attention as fused_attention, use_triton
from kernels.attention import visible_keys


class ModelError(ValueError):
    """A checkpoint or model name that cannot be used; the message names the file and the problem."""


# ----------------------------------------------------------------------------------------------
# 1. The shape of a model
# ----------------------------------------------------------------------------------------------

@dataclass
class ModelDims:
    n_mels: int
    n_audio_ctx: int      # encoder positions: 1500 = 30 s at 50 frames/s after the stride-2 conv
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int       # decoder positions: 448 tokens
    n_text_state: int
    n_text_head: int
    n_text_layer: int


# The largest sizes a checkpoint may claim, far above any released Whisper's (large-v3: 128 mels,
# 1280 wide, 32 layers), so that a corrupt file is refused before anything is built; the encoder
# never reads more than one 30 s window.
DIM_LIMITS = {"n_mels": 1024, "n_audio_ctx": data.N_FRAMES // 2, "n_audio_state": 1 << 14,
              "n_audio_head": 1024, "n_audio_layer": 1024, "n_vocab": 1 << 20,
              "n_text_ctx": 1 << 14, "n_text_state": 1 << 14, "n_text_head": 1024,
              "n_text_layer": 1024}


def check_dims(dims: ModelDims, source, names: Optional[dict] = None) -> None:
    """A one-line ModelError unless each size is a whole number from 1 to its DIM_LIMITS and each
    width splits evenly into its heads. `names`: the file's own names of the sizes, if any."""
    label = lambda key: f"{names[key]} ({key})" if names and key in names else key
    for key, limit in DIM_LIMITS.items():
        value = getattr(dims, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelError(f"{source}: {label(key)} is {value!r}, not a whole number")
        if not 1 <= value <= limit:
            raise ModelError(f"{source}: {label(key)} is {value}, outside 1 to {limit}")
    for side in ("audio", "text"):
        state, head = f"n_{side}_state", f"n_{side}_head"
        if getattr(dims, state) % getattr(dims, head):
            raise ModelError(f"{source}: {label(state)} {getattr(dims, state)} does not split into "
                             f"{label(head)} {getattr(dims, head)} equal heads")


def weight_shapes(dims: ModelDims) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor of Whisper(dims), by name, worked out without building it."""
    a, t = dims.n_audio_state, dims.n_text_state
    shapes = {"encoder.conv1.weight": (a, dims.n_mels, 3), "encoder.conv1.bias": (a,),
              "encoder.conv2.weight": (a, a, 3), "encoder.conv2.bias": (a,),
              "encoder.positional_embedding": (dims.n_audio_ctx, a),
              "decoder.token_embedding.weight": (dims.n_vocab, t),
              "decoder.positional_embedding": (dims.n_text_ctx, t)}
    for side, n, layers in (("encoder", a, dims.n_audio_layer), ("decoder", t, dims.n_text_layer)):
        attentions = ("attn", "cross_attn") if side == "decoder" else ("attn",)
        for i in range(layers):
            block = f"{side}.blocks.{i}"
            for attn in attentions:
                for proj in ("query", "key", "value", "out"):
                    shapes[f"{block}.{attn}.{proj}.weight"] = (n, n)
                    if proj != "key":
                        shapes[f"{block}.{attn}.{proj}.bias"] = (n,)
                shapes[f"{block}.{attn}_ln.weight"] = shapes[f"{block}.{attn}_ln.bias"] = (n,)
            shapes.update({f"{block}.mlp.0.weight": (4 * n, n), f"{block}.mlp.0.bias": (4 * n,),
                           f"{block}.mlp.2.weight": (n, 4 * n), f"{block}.mlp.2.bias": (n,),
                           f"{block}.mlp_ln.weight": (n,), f"{block}.mlp_ln.bias": (n,)})
    for norm, n in (("encoder.ln_post", a), ("decoder.ln", t)):
        shapes[f"{norm}.weight"] = shapes[f"{norm}.bias"] = (n,)
    return shapes


def check_weights(dims: ModelDims, state_dict, source) -> None:
    """A one-line ModelError unless the sizes are sane (check_dims) and the tensors are exactly
    those of a Whisper of these sizes, each of the shape they imply: so nothing is allocated for a
    file whose sizes and tensors disagree."""
    check_dims(dims, source)
    if not isinstance(state_dict, dict):
        raise ModelError(f"{source}: the weights are a {type(state_dict).__name__}, not a dict")
    shapes = weight_shapes(dims)
    tensors = {k: v for k, v in state_dict.items() if k != "alignment_heads"}
    sinusoids = "encoder.positional_embedding"           # may be left out: it can be recomputed
    missing = [k for k in shapes if k not in tensors and k != sinusoids]
    unexpected = [k for k in tensors if k not in shapes]
    if missing or unexpected:
        raise ModelError(f"{source}: weights do not fit a Whisper of these sizes "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    positions = {sinusoids: "n_audio_ctx", "decoder.positional_embedding": "n_text_ctx"}
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            raise ModelError(f"{source}: {name} is a {type(value).__name__}, not a tensor")
        want = shapes[name]
        if tuple(value.shape) == want:
            continue
        if name in positions and value.dim() == 2 and value.shape[1] == want[1]:
            raise ModelError(f"{source}: {positions[name]} is {want[0]}, but the weights hold "
                             f"{value.shape[0]} positions ({name})")
        raise ModelError(f"{source}: tensor {name} has shape {list(value.shape)}; these sizes need "
                         f"{list(want)}")


# ----------------------------------------------------------------------------------------------
# 2. The network
# ----------------------------------------------------------------------------------------------

def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """The encoder's fixed positional embedding: sin in the first half of the channels, cos in the second."""
    half = channels // 2
    inv_timescales = torch.exp(-math.log(max_timescale) / (half - 1) * torch.arange(half))
    t = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, q_offset: int = 0,
              k_lengths: Optional[Tensor] = None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v over [batch, heads, length, head_dim] tensors.

    Every attention in the model goes through here, so one switch picks the fused Triton kernel
    (CUDA tensors) or PyTorch's SDPA. `q_offset` is the absolute position of the first query, so a
    single new token attends to a whole KV cache; `k_lengths` hides padded keys per sequence.
    """
    if use_triton(q):
        return fused_attention(q, k, v, causal=causal, q_offset=q_offset, k_lengths=k_lengths)
    n_q, n_k = q.shape[-2], k.shape[-2]
    causal = causal and (n_q > 1 or n_k > q_offset + 1)     # one new token after its cache sees every key
    mask = None
    if causal or k_lengths is not None:                     # the kernel's and its twin's one rule
        mask = visible_keys(n_q, n_k, causal=causal, q_offset=q_offset, k_lengths=k_lengths, device=q.device)
    if n_q == 1 and q.dtype == torch.bfloat16 and q.device.type == "cpu" and not cpu_has_amx():
        return one_query_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def one_query_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
    """attention() for one query position in bf16 on a CPU without AMX: two matrix products and an
    fp32 softmax. There SDPA's bf16 kernel is 7x slower than this on a decoding step's
    cross-attention (8 rows, 1,000 audio frames: 3.9 ms against 0.55 ms, AMD EPYC with AVX512-BF16,
    2 threads), 60% of a student's time on a long recording. The scores are rounded to bf16 before
    the softmax (SDPA keeps them in fp32): outputs within ~1e-2, as the bf16 keys already are."""
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, -torch.inf)
    return scores.softmax(dim=-1).to(v.dtype) @ v


class KVCache:
    """Keys and values of the decoder, kept between decoding steps.

    Self-attention keys/values go into tensors allocated once for the whole text context, so a step
    writes one column instead of concatenating (no copies); cross-attention keys/values depend only
    on the audio and are computed once per utterance.
    """

    def __init__(self, model: "Whisper", batch: int, device=None, dtype=None):
        dims = model.dims
        device = device or next(model.parameters()).device
        dtype = dtype or next(model.parameters()).dtype
        head_dim = dims.n_text_state // dims.n_text_head
        shape = (batch, dims.n_text_head, dims.n_text_ctx, head_dim)
        self.self_kv = [(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype))
                        for _ in range(dims.n_text_layer)]
        self.cross_kv: list[Optional[tuple[Tensor, Tensor]]] = [None] * dims.n_text_layer
        self.offset = 0          # how many tokens are cached

    def reorder(self, index: Tensor) -> None:
        """Keep the rows `index` (beam search picks which hypotheses survive)."""
        for k, v in self.self_kv:
            k[:, :, : self.offset].copy_(k[index, :, : self.offset])
            v[:, :, : self.offset].copy_(v[index, :, : self.offset])
        self.cross_kv = [None if kv is None else (kv[0][index], kv[1][index]) for kv in self.cross_kv]

    def keep(self, index: Tensor) -> None:
        """Keep the rows `index` (increasing) only: finished hypotheses leave the batch.

        The kept rows move to the front of the same buffers; rows already in place stay, and of the
        self-attention keys only the filled positions move. (Copying whole buffers cost a sixth of a
        student's decoding time; a batch whose short rows come last moves nothing.)"""
        n, end = len(index), self.offset
        moved = (index != torch.arange(n, device=index.device)).nonzero()
        start = int(moved[0]) if len(moved) else n
        for k, v in self.self_kv:
            k[start:n, :, :end] = k[index[start:], :, :end]      # the gather copies first: no overlap
            v[start:n, :, :end] = v[index[start:], :, :end]
        for kv in self.cross_kv:
            if kv is not None:
                kv[0][start:n] = kv[0][index[start:]]
                kv[1][start:n] = kv[1][index[start:]]
        self.self_kv = [(k[:n], v[:n]) for k, v in self.self_kv]
        self.cross_kv = [None if kv is None else (kv[0][:n], kv[1][:n]) for kv in self.cross_kv]


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)   # a key bias only shifts all scores of a row equally
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)
        self.kv_dtype: Optional[torch.dtype] = None      # cross-attention keys/values in bf16: pack_for_cpu

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_head, -1).transpose(1, 2)

    def keys_and_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the audio; with kv_dtype set, computed and kept in it."""
        if self.kv_dtype is None:
            return self.split_heads(self.key(source)), self.split_heads(self.value(source))
        # contiguous per head: every decoding step multiplies by them (one_query_attention), and a
        # strided view would be copied at each step
        with torch.autocast(source.device.type, dtype=self.kv_dtype):
            return (self.split_heads(self.key(source)).to(self.kv_dtype).contiguous(),
                    self.split_heads(self.value(source)).to(self.kv_dtype).contiguous())

    def forward(self, x: Tensor, source: Optional[Tensor] = None, causal: bool = False,
                k_lengths: Optional[Tensor] = None, cache: Optional[KVCache] = None, layer: int = 0) -> Tensor:
        q = self.split_heads(self.query(x))
        q_offset = 0
        if source is not None:                         # cross-attention to the audio
            kv = cache.cross_kv[layer] if cache is not None else None
            if kv is None:
                kv = self.keys_and_values(source)
                if cache is not None:
                    cache.cross_kv[layer] = kv
            k, v = kv
            q = q.to(k.dtype)
        else:                                          # self-attention
            k, v = self.split_heads(self.key(x)), self.split_heads(self.value(x))
            if cache is not None:
                q_offset, end = cache.offset, cache.offset + x.shape[1]
                k_all, v_all = cache.self_kv[layer]
                k_all[:, :, q_offset:end] = k
                v_all[:, :, q_offset:end] = v
                k, v = k_all[:, :, :end], v_all[:, :, :end]
        y = attention(q, k, v, causal=causal, q_offset=q_offset, k_lengths=k_lengths).to(x.dtype)
        return self.out(y.transpose(1, 2).flatten(2))


class ResidualAttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block; decoder blocks add cross-attention to the audio."""

    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross_attention else None
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: Tensor, audio: Optional[Tensor] = None, causal: bool = False,
                lengths: Optional[Tensor] = None, audio_lengths: Optional[Tensor] = None,
                cache: Optional[KVCache] = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.attn_ln(x), causal=causal, k_lengths=lengths, cache=cache, layer=layer)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_attn_ln(x), audio, k_lengths=audio_lengths, cache=cache, layer=layer)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(n_ctx, n_state))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(n_state, n_head) for _ in range(n_layer))
        self.ln_post = nn.LayerNorm(n_state)

    def forward(self, mel: Tensor, mel_lengths: Optional[Tensor] = None) -> Tensor:
        """mel [batch, n_mels, frames] -> audio features [batch, frames // 2, n_state].

        Whisper always feeds 3000 frames (30 s). Shorter input uses the first positions only: an
        untrained encoder then goes wrong, but a student trained this way is many times faster.
        `mel_lengths` (frames per item) keeps padded frames out of attention in a mixed batch.
        """
        keep = None
        if mel_lengths is not None:
            # zero what lies past each item's end, as the convolutions' own padding would see it,
            # so that an item gives the same features alone and in a mixed batch
            keep = (torch.arange(mel.shape[-1], device=mel.device) < mel_lengths.to(mel.device)[:, None])[:, None, :]
            mel = mel * keep
        x = F.gelu(self.conv1(mel))
        if keep is not None:
            x = x * keep
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        if x.shape[1] > self.positional_embedding.shape[0]:
            raise ValueError(f"audio of {mel.shape[-1]} frames is longer than the encoder's "
                             f"{2 * self.positional_embedding.shape[0]}")
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        lengths = None if mel_lengths is None else (mel_lengths + 1) // 2
        for block in self.blocks:
            x = block(x, lengths=lengths)
        return self.ln_post(x)


class TextDecoder(nn.Module):
    def __init__(self, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.positional_embedding = nn.Parameter(torch.empty(n_ctx, n_state))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(n_state, n_head, cross_attention=True) for _ in range(n_layer))
        self.ln = nn.LayerNorm(n_state)
        self.packed_projection: Optional[PackedLinear] = None      # set by pack_for_cpu

    def hidden(self, tokens: Tensor, audio: Tensor, audio_lengths: Optional[Tensor] = None,
               cache: Optional[KVCache] = None) -> Tensor:
        """tokens [batch, n] -> final hidden states [batch, n, n_state] (before the output projection)."""
        offset = cache.offset if cache is not None else 0
        x = self.token_embedding(tokens) + self.positional_embedding[offset: offset + tokens.shape[-1]]
        x = x.to(audio.dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, audio, causal=True, audio_lengths=audio_lengths, cache=cache, layer=i)
        if cache is not None:
            cache.offset += tokens.shape[-1]
        return self.ln(x)

    def project(self, hidden: Tensor) -> Tensor:
        """Hidden states -> logits. The output projection is the token embedding itself (tied weights);
        the logits come out in float32 for a stable softmax."""
        if self.packed_projection is not None:
            return self.packed_projection(hidden)
        return F.linear(hidden, self.token_embedding.weight.to(hidden.dtype)).float()

    def forward(self, tokens: Tensor, audio: Tensor, audio_lengths: Optional[Tensor] = None,
                cache: Optional[KVCache] = None) -> Tensor:
        return self.project(self.hidden(tokens, audio, audio_lengths, cache))


class Whisper(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer)
        self.decoder = TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer)
        self.tokenizer: Optional[Tokenizer] = None       # attached by formats.open_model
        self.encoder_autocast: Optional[torch.dtype] = None   # bf16 on a bf16 CPU: pack_for_cpu

    @property
    def device(self) -> torch.device:
        return self.decoder.token_embedding.weight.device

    @property
    def packed(self) -> bool:
        """Whether pack_for_cpu has packed the decoder (for decoding only)."""
        return self.decoder.packed_projection is not None

    @property
    def is_multilingual(self) -> bool:
        return self.dims.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        return self.dims.n_vocab - 51765 - int(self.is_multilingual)

    def embed_audio(self, mel: Tensor, mel_lengths: Optional[Tensor] = None) -> Tensor:
        if self.encoder_autocast is None:
            return self.encoder(mel, mel_lengths)
        with torch.autocast(mel.device.type, dtype=self.encoder_autocast):
            return self.encoder(mel, mel_lengths).float()

    def logits(self, tokens: Tensor, audio_features: Tensor, audio_lengths: Optional[Tensor] = None,
               cache: Optional[KVCache] = None) -> Tensor:
        return self.decoder(tokens, audio_features, audio_lengths, cache)

    def forward(self, mel: Tensor, tokens: Tensor, mel_lengths: Optional[Tensor] = None) -> Tensor:
        audio_lengths = None if mel_lengths is None else (mel_lengths + 1) // 2
        return self.decoder(tokens, self.encoder(mel, mel_lengths), audio_lengths)

    def num_parameters(self) -> int:
        packed = sum(m.n_params for m in self.modules() if isinstance(m, PackedLinear))
        return sum(p.numel() for p in self.parameters()) + packed


CPU_ENCODER_FRAMES = 2000      # mel frames per encoder batch on a CPU (embed_each)


def embed_each(model: Whisper, mel: Tensor, frames: Sequence[int]) -> tuple[Tensor, Optional[Tensor]]:
    """Encoder output for inputs of `frames` mel frames each (mel [batch, n_mels, >= max(frames)]),
    zero-padded to the longest, and the lengths to mask it with (None when all are equally long).

    On a CPU, inputs of equal length go together, up to CPU_ENCODER_FRAMES frames a batch, and
    nothing is padded or masked (measured: a padded, masked batch of mixed lengths is no faster than
    one by one; 8 inputs of 200 frames are 2.5x faster together in bf16 and 1.2x in fp32, while 8
    of Whisper's 3000 are 5% slower together than one by one). Elsewhere the batch goes at once, masked.
    """
    longest = max(frames)
    mel = mel[..., :longest].to(model.device, next(model.parameters()).dtype)
    lengths = None if all(n == longest for n in frames) else torch.tensor(frames, device=model.device)
    if mel.device.type == "cpu":
        features = mel.new_zeros(len(frames), (longest + 1) // 2, model.dims.n_audio_state)
        for n in sorted(set(frames)):
            same = [i for i, f in enumerate(frames) if f == n]
            per_batch = max(1, CPU_ENCODER_FRAMES // n)
            for rows in (same[k: k + per_batch] for k in range(0, len(same), per_batch)):
                features[rows, : (n + 1) // 2] = model.embed_audio(mel[rows, :, :n]).to(features.dtype)
    else:
        features = model.embed_audio(mel, lengths)
    return features, None if lengths is None else (lengths + 1) // 2


PACKED_FP16_MAX_ROWS = 16     # up to this many rows a PackedLinear multiplies in fp16 even with bf16 at hand


class PackedLinear(nn.Module):
    """nn.Linear for decoding on a CPU: the weight kept in fp16, in fbgemm's packed layout, and (bf16)
    a bfloat16 copy for many rows at once, on a CPU that multiplies bf16 in hardware.

    A decoding step multiplies a few rows by every decoder weight, so a CPU spends it waiting on
    memory, not on arithmetic; 16-bit weights halve the bytes read (fp16's product is still computed
    in fp32). Outputs differ from fp32 by about 1e-3 relative (fp16) or 1e-2 (bf16). Measured for the
    51,864-way output projection, 2 threads, fp16 against bf16: AMD EPYC with AVX512-BF16, 1 row
    0.96 against 3.3 ms, 8 rows 2.0 against 3.7, 16 rows 4.4 against 4.7, 40 rows 8.9 against 7.5;
    Intel Xeon with AMX, 8 rows 1.4 against 1.6, 32 rows 5.2 against 2.2. So fp16 up to
    PACKED_FP16_MAX_ROWS rows (greedy decoding of a batch of 8, one live phrase), bf16 above (beam
    search over a batch). Packing takes 0.3 s for the output projection, the bf16 copy 0.02 s.
    Inference only: no gradients.
    """

    def __init__(self, linear_weight: Tensor, bias: Optional[Tensor] = None, bf16: bool = False):
        super().__init__()
        bias = None if bias is None else bias.detach().float().contiguous()
        self.n_params = linear_weight.numel() + (0 if bias is None else bias.numel())   # not parameters() any more
        self.packed = torch.ops.quantized.linear_prepack_fp16(linear_weight.detach().float().contiguous(), bias)
        self.weight = linear_weight.detach().bfloat16() if bf16 else None
        self.bias = bias

    def forward(self, x: Tensor) -> Tensor:
        if self.weight is not None and x.numel() > PACKED_FP16_MAX_ROWS * x.shape[-1]:
            y = F.linear(x.bfloat16(), self.weight).float()
            return y if self.bias is None else y + self.bias
        return torch.ops.quantized.linear_dynamic_fp16(x.float(), self.packed)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, from the 'flags' lines of /proc/cpuinfo (none where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(flag for line in re.findall(r"^flags\s*:(.*)$", text, re.M) for flag in line.split())


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX). Only there is bf16
    worth it: elsewhere it is emulated, and slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles for bf16: only with them is SDPA's bf16 kernel fast on one
    query (one_query_attention)."""
    return "amx_bf16" in cpu_flags()


def pack_for_cpu(model: Whisper, bf16: Optional[bool] = None) -> Whisper:
    """Swap the decoder's per-token linear layers and its output projection for PackedLinear, and on
    a CPU with bf16 hardware (`bf16` None: cpu_has_bf16()) run the encoder under bf16 autocast and
    keep cross-attention keys/values in bf16.

    In place; returns the model. A decoding step reads every cross-attention key and value of
    every row (memory-bound: 6 MB per layer for 8 rows of 5 s), and bf16 halves that; the encoder's
    products are arithmetic-bound, which bf16 hardware does twice as fast. Measured on a student
    (49 real recordings, 2 threads): same WER, 30% less time. The weights autocast would cast at
    every read are kept in bf16 (the same values: 8% less time per phrase of live transcription).
    A packed model is for decoding only: save and train the unpacked one.
    """
    if model.device.type != "cpu" or "fbgemm" not in torch.backends.quantized.supported_engines:
        return model
    for block in model.decoder.blocks:
        layers = [(block.attn, n) for n in ("query", "key", "value", "out")]
        layers += [(block.cross_attn, n) for n in ("query", "out")]         # cross keys/values: once per audio
        layers += [(block.mlp, "0"), (block.mlp, "2")]
        for parent, name in layers:
            linear = getattr(parent, name)
            setattr(parent, name, PackedLinear(linear.weight, linear.bias))
    bf16 = cpu_has_bf16() if bf16 is None else bf16
    model.decoder.packed_projection = PackedLinear(model.decoder.token_embedding.weight, bf16=bf16)
    model.decoder.packed_projection.n_params = 0          # tied: the token embedding still counts it
    if bf16:
        model.encoder_autocast = torch.bfloat16
        for block in model.decoder.blocks:
            block.cross_attn.kv_dtype = torch.bfloat16
        # the weights autocast would cast to bf16 at every read, cast once: the same values, no copies
        linears = [layer for b in model.encoder.blocks
                   for layer in (b.attn.query, b.attn.key, b.attn.value, b.attn.out, b.mlp[0], b.mlp[2])]
        linears += [layer for b in model.decoder.blocks for layer in (b.cross_attn.key, b.cross_attn.value)]
        for layer in linears:
            layer.to(torch.bfloat16)
    return model


# ----------------------------------------------------------------------------------------------
# 3. Weights: OpenAI's .pt format
# ----------------------------------------------------------------------------------------------
# A checkpoint is a dict {"dims": asdict(ModelDims), "model_state_dict": {...}}; ours add the
# vocabulary and whatever `extra` their writer passed. Other tools' formats: see formats.py.

def read_checkpoint(path: Path) -> tuple[ModelDims, dict[str, Tensor], dict]:
    """(dims, state dict, the checkpoint's other entries: 'vocabulary', a student's 'fastwhisper', ...)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip, a pickle from elsewhere, ...
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({data.brief(e)})")
    if not isinstance(checkpoint, dict) or "dims" not in checkpoint or "model_state_dict" not in checkpoint:
        raise ModelError(f"{path}: not an OpenAI Whisper checkpoint (expected the keys 'dims' and 'model_state_dict')")
    dims, state = checkpoint.pop("dims"), checkpoint.pop("model_state_dict")
    if not isinstance(dims, dict):
        raise ModelError(f"{path}: the checkpoint's 'dims' is a {type(dims).__name__}, not a dict")
    keys = [f.name for f in fields(ModelDims)]
    missing, unknown = [k for k in keys if k not in dims], [str(k) for k in dims if k not in keys]
    if missing:
        raise ModelError(f"{path}: the checkpoint's 'dims' lack {', '.join(missing)}")
    if unknown:
        raise ModelError(f"{path}: the checkpoint's 'dims' hold unknown keys {', '.join(unknown)}")
    dims = ModelDims(**dims)
    check_dims(dims, path)
    if not isinstance(state, dict):
        raise ModelError(f"{path}: the checkpoint's 'model_state_dict' is a "
                         f"{type(state).__name__}, not a dict")
    return dims, state, checkpoint


def build_whisper(dims: ModelDims, state_dict: dict[str, Tensor], source="weights") -> Whisper:
    """A Whisper of these sizes holding these weights (OpenAI's names; the sinusoids may be left out).
    The modules are built without their random initialisation and then take the given tensors as
    their weights (no copy): filling 37M weights with random numbers only to overwrite them was
    0.2-0.3 s of every start. (The meta device would skip it too, but its first normal_() imports
    torch's compiler, 2 s.)"""
    check_weights(dims, state_dict, source)
    with without_random_init():
        model = Whisper(dims)
    state_dict = {k: v.float().contiguous() for k, v in state_dict.items() if k != "alignment_heads"}
    model.load_state_dict(state_dict, strict=False, assign=True)    # sinusoids may be missing
    return model


@contextlib.contextmanager
def without_random_init():
    """Modules built inside keep torch.empty's memory where nn.init would draw random numbers: for a
    model whose every weight is assigned next (build_whisper). LayerNorm's ones and zeros still run."""
    names = ("kaiming_uniform_", "uniform_", "normal_")
    saved = {name: getattr(nn.init, name) for name in names}
    for name in names:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, init in saved.items():
            setattr(nn.init, name, init)


def save_model(model: Whisper, path: str | Path, half: bool = False, extra: Optional[dict] = None) -> Path:
    """Save in OpenAI's .pt format (dims + model_state_dict) so any Whisper tool can load it.

    The vocabulary travels inside the file as one more key, so our own loader needs nothing else;
    OpenAI's loader ignores it, and `extra` entries too (formats.open_model returns them).
    """
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    checkpoint = {"dims": asdict(model.dims), "model_state_dict": state, **(extra or {})}
    if model.tokenizer is not None:           # as two tensors: 50k strings take torch.load 0.3 s to unpickle
        tok = model.tokenizer
        tokens = [tok.token_bytes(i) for i in range(tok.eot)]
        checkpoint["vocabulary"] = {"bytes": torch.frombuffer(bytearray(b"".join(tokens)), dtype=torch.uint8),
                                    "lengths": torch.tensor([len(t) for t in tokens], dtype=torch.int32),
                                    "num_languages": tok.num_languages}
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return data.write_atomic(path, buffer.getvalue())         # makes the folder, never leaves half a file


# ----------------------------------------------------------------------------------------------
# 4. Words: the tokenizer
# ----------------------------------------------------------------------------------------------
# Whisper's tokenizer: byte-level BPE plus Whisper's special tokens.
#
# Text becomes token ids in three steps:
#   1. split the text into "words" with the GPT-2 pre-tokenisation pattern,
#   2. turn each word into UTF-8 bytes,
#   3. merge adjacent byte runs, always taking the merge whose result has the
#      lowest rank, until no adjacent pair forms a known token.
# For the GPT-2 family (and Whisper) a token's rank *is* its id, so a plain
# vocabulary is enough; no merges file is needed.
#
# Whisper appends its special tokens right after the ordinary ones:
#   <|endoftext|> <|startoftranscript|> <|en|> ... <|translate|> <|transcribe|>
#   <|startoflm|> <|startofprev|> <|nospeech|> <|notimestamps|> <|0.00|> ... <|30.00|>
# English-only vocabularies have 50256 ordinary tokens, multilingual ones 50257
# (their last one is empty), so the special ids differ by one between the two.

# Whisper's languages, in the order of their tokens (code -> English name).
# The first 99 are in every multilingual model; large-v3 adds Cantonese.
LANGUAGES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish", "ca": "catalan",
    "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian", "id": "indonesian", "hi": "hindi",
    "fi": "finnish", "vi": "vietnamese", "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay",
    "cs": "czech", "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian", "la": "latin",
    "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak", "te": "telugu", "fa": "persian",
    "lv": "latvian", "bn": "bengali", "sr": "serbian", "az": "azerbaijani", "sl": "slovenian",
    "kn": "kannada", "et": "estonian", "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic",
    "hy": "armenian", "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian",
    "sw": "swahili", "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer",
    "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan", "ka": "georgian",
    "be": "belarusian", "tg": "tajik", "sd": "sindhi", "gu": "gujarati", "am": "amharic", "yi": "yiddish",
    "lo": "lao", "uz": "uzbek", "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen",
    "nn": "nynorsk", "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar",
    "bo": "tibetan", "tl": "tagalog", "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian",
    "ln": "lingala", "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}

N_ORDINARY_ENGLISH = 50256        # gpt2 vocabulary
N_ORDINARY_MULTILINGUAL = 50257   # gpt2-like vocabulary retrained, one token more
N_TIMESTAMPS = 1501               # <|0.00|> .. <|30.00|> in 0.02 s steps
TIMESTAMP_STEP = 0.02
# Special tokens that follow the language tokens, in Whisper's order.
TASK_AND_MISC_TOKENS = ("<|translate|>", "<|transcribe|>", "<|startoflm|>",
                        "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>")


# ---------------------------------------------------------------------------
# Pre-tokenisation. Whisper splits text with GPT-2's pattern
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# Python's re has no \p{..} classes, so we build explicit ones from the
# Unicode database. \s must also be Unicode's White_Space property (what the
# Rust regex engine of tiktoken uses), not Python's wider str.isspace().
# (Our classes follow Python's Unicode database, 14.0 in Python 3.11; letters
# assigned in later Unicode versions would split differently. Speech never has them.)

_WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0),
                (0x1680, 0x1680), (0x2000, 0x200A), (0x2028, 0x2029),
                (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)]


def _ranges_of_category(major: str) -> list[tuple[int, int]]:
    """Code point ranges whose general category starts with `major` ('L', 'N')."""
    ranges, start = [], None
    category = unicodedata.category
    for cp in range(0x110000 + 1):
        inside = cp < 0x110000 and category(chr(cp))[0] == major
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append((start, cp - 1))
            start = None
    return ranges


def _class_body(ranges) -> str:
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


def _letter_and_number_ranges() -> tuple[list, list]:
    """The ranges of \\p{L} and \\p{N}. Scanning the Unicode database takes ~0.2 s of every start-up
    that decodes, so the result is kept in the cache folder (per Unicode version)."""
    path = data.cache_dir() / f"unicode-{unicodedata.unidata_version}-letters-numbers.json"
    try:
        letters, numbers = json.loads(path.read_text())
        return [tuple(r) for r in letters], [tuple(r) for r in numbers]
    except (OSError, ValueError, TypeError):
        pass
    ranges = _ranges_of_category("L"), _ranges_of_category("N")
    try:
        data.write_atomic(path, json.dumps(ranges).encode())
    except OSError:                  # a read-only cache: just scan again next time
        pass
    return ranges


@functools.cache
def _word_pattern() -> re.Pattern:
    letters, numbers = _letter_and_number_ranges()
    letter, number = _class_body(letters), _class_body(numbers)
    space = _class_body(_WHITE_SPACE)
    return re.compile(
        r"'s|'t|'re|'ve|'m|'ll|'d"
        rf"| ?[{letter}]+| ?[{number}]+| ?[^{space}{letter}{number}]+"
        rf"|[{space}]+(?![^{space}])|[{space}]+"
    )


# ---------------------------------------------------------------------------

class Tokenizer:
    """Text <-> Whisper token ids. Ranks == ids, specials follow the ordinary tokens."""

    def __init__(self, ordinary: list[bytes], multilingual: bool, num_languages: int = 99,
                 source="vocabulary"):
        expected = N_ORDINARY_MULTILINGUAL if multilingual else N_ORDINARY_ENGLISH
        if len(ordinary) != expected:
            kind = "multilingual" if multilingual else "English-only"
            raise ValueError(f"{source}: {len(ordinary)} ordinary tokens, but a {kind} "
                             f"Whisper vocabulary has {expected}")
        if not 1 <= num_languages <= len(LANGUAGES):
            raise ValueError(f"{source}: {num_languages} languages; Whisper knows 1..{len(LANGUAGES)}")
        self.multilingual = multilingual
        self.num_languages = num_languages
        self._ordinary = ordinary
        # The empty token of multilingual vocabularies can never be produced.
        self._ranks = {token: rank for rank, token in enumerate(ordinary) if token}

        self.language_codes = list(LANGUAGES)[:num_languages]
        self._special_names = ["<|endoftext|>", "<|startoftranscript|>",
                               *(f"<|{code}|>" for code in self.language_codes),
                               *TASK_AND_MISC_TOKENS,
                               *(f"<|{i * TIMESTAMP_STEP:.2f}|>" for i in range(N_TIMESTAMPS))]
        self._special_ids = {name: len(ordinary) + i for i, name in enumerate(self._special_names)}
        self.n_vocab = len(ordinary) + len(self._special_names)

        self.eot = self._special_ids["<|endoftext|>"]
        self.sot = self._special_ids["<|startoftranscript|>"]
        self.translate = self._special_ids["<|translate|>"]
        self.transcribe = self._special_ids["<|transcribe|>"]
        self.sot_lm = self._special_ids["<|startoflm|>"]
        self.sot_prev = self._special_ids["<|startofprev|>"]
        self.no_speech = self._special_ids["<|nospeech|>"]
        self.no_timestamps = self._special_ids["<|notimestamps|>"]
        self.timestamp_begin = self._special_ids["<|0.00|>"]
        self.language_tokens = [self._special_ids[f"<|{c}|>"] for c in self.language_codes]

        # Words repeat a lot in speech, so remember each word's tokens.
        self._encode_word = functools.lru_cache(maxsize=1 << 16)(self._merge_bytes)

    # -- special token sequences -------------------------------------------

    def language_token(self, code: str) -> int:
        token = self._special_ids.get(f"<|{code}|>")
        if token is None or code not in self.language_codes:
            raise ValueError(f"unknown language {code!r}; this model knows "
                             f"{', '.join(self.language_codes)}")
        return token

    def sot_sequence(self, language: str | None = None, task: str | None = "transcribe") -> tuple[int, ...]:
        """The prompt that starts a transcript.

        English-only models take <|startoftranscript|> alone. Multilingual ones
        add the language (when known) and the task: (sot, <|en|>, <|transcribe|>).
        """
        if not self.multilingual:
            return (self.sot,)
        sequence = [self.sot]
        if language is not None:
            sequence.append(self.language_token(language))
        if task is not None:
            if task not in ("transcribe", "translate"):
                raise ValueError(f"unknown task {task!r}; expected 'transcribe' or 'translate'")
            sequence.append(self.transcribe if task == "transcribe" else self.translate)
        return tuple(sequence)

    @functools.cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens that start speaker tags or sound annotations ("[MUSIC]", "♪♪").

        Whisper suppresses them while decoding. A symbol counts when it is a
        single token (alone or after a space); the musical notes always count
        by their first token, which they share with their neighbours in
        U+2640..U+267F. Plain hyphens and apostrophes stay allowed inside
        words, but not at the start of one.
        """
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        notes = "♩♪♫♬♭♮♯"
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + list(notes):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in notes:
                    result.add(tokens[0])
        return tuple(sorted(result))

    # -- text -> ids ---------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Ordinary text to token ids. Special token names are encoded as plain text."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates have no UTF-8 form: pair what pairs, replace the rest.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ids = []
        for word in _word_pattern().findall(text):
            ids.extend(self._encode_word(word.encode("utf-8")))
        return ids

    def _merge_bytes(self, word: bytes) -> tuple[int, ...]:
        """Byte pair merging of one word: join the adjacent pair whose union has
        the lowest rank (leftmost on ties) until no pair is a token."""
        ranks = self._ranks
        whole = ranks.get(word)
        if whole is not None:  # a word that is itself a token is taken as is
            return (whole,)
        parts = [word[i:i + 1] for i in range(len(word))]
        while len(parts) > 1:
            best_rank, best = None, -1
            for i in range(len(parts) - 1):
                rank = ranks.get(parts[i] + parts[i + 1])
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, i
            if best_rank is None:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        return tuple(ranks[p] for p in parts)

    # -- ids -> text ---------------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token; special tokens give their name, e.g. b'<|en|>'."""
        if 0 <= token_id < self.eot:
            return self._ordinary[token_id]
        if token_id < self.n_vocab:
            return self._special_names[token_id - self.eot].encode()
        raise ValueError(f"token id {token_id} out of range (n_vocab {self.n_vocab})")

    def decode(self, ids) -> str:
        """Text of the ordinary tokens; every special token is dropped."""
        raw = b"".join(self._ordinary[int(t)] for t in ids if 0 <= int(t) < self.eot)
        return raw.decode("utf-8", errors="replace")

    def decode_with_timestamps(self, ids) -> str:
        """Text with special tokens written out, e.g. '<|0.00|> Hello.<|1.08|>'."""
        return b"".join(self.token_bytes(int(t)) for t in ids).decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------------------
# 5. Decoding: from audio features to tokens
# ----------------------------------------------------------------------------------------------
# Whisper's rules, reproduced so that greedy decoding gives exactly Whisper's tokens: a start
# sequence (<|startoftranscript|> <|en|> <|transcribe|>), optional prompt (<|startofprev|> ...),
# suppressed tokens, timestamp rules, then greedy / sampling / beam search until <|endoftext|>.
# A DecodingTask holds one batch's state; a Draft (a faster model) may speed up its greedy path.

@dataclass
class DecodingOptions:
    task: str = "transcribe"                 # or "translate" (multilingual models)
    language: Optional[str] = None           # None: detect (multilingual) or English
    temperature: float = 0.0                 # 0: greedy or beam search; > 0: sampling
    sample_len: Optional[int] = None         # most tokens to sample (default: half the text context)
    best_of: Optional[int] = None            # samples per audio at temperature > 0, best kept
    beam_size: Optional[int] = None          # beam search at temperature 0
    patience: Optional[float] = None         # beam search: wait for beam_size * patience finished hypotheses
    length_penalty: Optional[float] = None   # None: rank by log-prob / length; a: by Google NMT's ((5+n)/6)^a
    prompt: Optional[str | list[int]] = None # previous text, to condition on
    prefix: Optional[str | list[int]] = None # forced start of this window's text
    suppress_tokens: Optional[str | Iterable[int]] = "-1"   # "-1": Whisper's non-speech symbols
    suppress_blank: bool = True              # no blank or <|endoftext|> as first token
    without_timestamps: bool = False
    max_initial_timestamp: Optional[float] = 1.0
    close_segments: bool = False             # no <|endoftext|> right after text: every segment gets its end time
    seed: int = 0                            # sampling draws from its own generator: the same text every run


@dataclass
class DecodingResult:
    tokens: list[int]
    text: str
    language: str
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float
    language_probs: Optional[dict] = None


def compression_ratio(text: str) -> float:
    """Bytes / zlib-compressed bytes: repetitive (looping) output compresses well and scores high."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


@torch.inference_mode()
def detect_language(model: Whisper, audio_features: Tensor) -> tuple[Tensor, list[dict]]:
    """The most likely language token per audio, and each language's probability, from one decoder step."""
    tok = model.tokenizer
    if not model.is_multilingual:
        raise ValueError("this model is English-only: it has no language tokens to detect with")
    sot = torch.full((audio_features.shape[0], 1), tok.sot, device=audio_features.device)
    logits = model.logits(sot, audio_features)[:, 0]
    lang_ids = torch.tensor(tok.language_tokens, device=logits.device)
    probs = logits[:, lang_ids].softmax(dim=-1)            # softmax over the language tokens alone
    best = lang_ids[probs.argmax(dim=-1)]
    return best, [dict(zip(tok.language_codes, row.tolist())) for row in probs.cpu()]


class LogitRules:
    """Whisper's logit filters, applied in place to the last step's logits [batch, vocab]."""

    def __init__(self, model: Whisper, options: DecodingOptions, sample_begin: int):
        tok, self.tok = model.tokenizer, model.tokenizer
        self.sample_begin = sample_begin
        self.blank = tok.encode(" ") + [tok.eot] if options.suppress_blank else None
        self.suppress = self.suppressed_tokens(options.suppress_tokens)
        self.timestamps = not options.without_timestamps
        self.close_segments = options.close_segments
        precision = data.CHUNK_LENGTH / model.dims.n_audio_ctx          # 0.02 s per timestamp step
        self.max_initial = None if not options.max_initial_timestamp else round(options.max_initial_timestamp / precision)

    def suppressed_tokens(self, spec) -> list[int]:
        tok = self.tok
        ids = [int(t) for t in spec.split(",") if t.strip()] if isinstance(spec, str) else list(spec or [])
        if -1 in ids:
            ids = [t for t in ids if t >= 0] + list(tok.non_speech_tokens)
        # the special tokens of the start sequence never belong in a transcript
        ids += [tok.transcribe, tok.translate, tok.sot, tok.sot_prev, tok.sot_lm, tok.no_speech]
        return sorted(set(ids))

    def __call__(self, logits: Tensor, tokens: Tensor) -> None:
        if self.blank is not None and tokens.shape[1] == self.sample_begin:
            logits[:, self.blank] = -np.inf
        if self.suppress:
            logits[:, self.suppress] = -np.inf
        if self.timestamps:
            self.apply_timestamp_rules(logits, tokens)

    def apply_timestamp_rules(self, logits: Tensor, tokens: Tensor) -> None:
        """Timestamps come in pairs and never go back; text may not start without one."""
        tok, begin = self.tok, self.tok.timestamp_begin
        logits[:, tok.no_timestamps] = -np.inf
        sampled = tokens[:, self.sample_begin:]
        n = sampled.shape[1]
        if n > 0:
            is_ts = sampled >= begin
            last = is_ts[:, -1]
            penultimate = is_ts[:, -2] if n >= 2 else torch.ones_like(last)
            logits[last & penultimate, begin:] = -np.inf        # a pair just closed: text (or eot) next
            logits[last & ~penultimate, : tok.eot] = -np.inf    # an opened pair must close: no text
            if self.close_segments:
                logits[~last, tok.eot] = -np.inf                # text ends with a timestamp, then may stop
            # forbid timestamps before the last one; after an opening one, also forbid repeating it
            position = torch.where(is_ts, torch.arange(n, device=tokens.device), -1).max(dim=1).values
            last_ts = sampled.gather(1, position.clamp(min=0)[:, None])[:, 0] - begin
            bound = torch.where(last & ~penultimate, last_ts, last_ts + 1)
            bound = torch.where(position >= 0, bound, 0)
            steps = torch.arange(logits.shape[1] - begin, device=logits.device)
            logits[:, begin:].masked_fill_(steps < bound[:, None], -np.inf)
        else:
            logits[:, :begin] = -np.inf                         # the first token is a timestamp
            if self.max_initial is not None:
                logits[:, begin + self.max_initial + 1:] = -np.inf
        # when the timestamps together outweigh every single text token, take a timestamp (compared
        # as logits: the softmax's normaliser is the same on both sides, so it is not computed)
        logits32 = logits.float()
        ts_mass = logits32[:, begin:].logsumexp(dim=-1)
        best_text = logits32[:, :begin].max(dim=-1).values
        logits[ts_mass > best_text, :begin] = -np.inf


def initial_tokens(model: Whisper, options: DecodingOptions, language_token: Optional[int] = None) -> list[int]:
    """[<|startofprev|> prompt...] <|startoftranscript|> [lang task] [<|notimestamps|>] [prefix...]."""
    tok, n_ctx = model.tokenizer, model.dims.n_text_ctx
    tokens = list(tok.sot_sequence(language=options.language or "en", task=options.task))
    if language_token is not None and model.is_multilingual:
        tokens[1] = language_token
    if options.without_timestamps:
        tokens.append(tok.no_timestamps)
    if options.prefix:
        prefix = tok.encode(" " + options.prefix.strip()) if isinstance(options.prefix, str) else list(options.prefix)
        sample_len = options.sample_len or n_ctx // 2
        tokens += prefix[-(n_ctx // 2 - sample_len):] if n_ctx // 2 - sample_len > 0 else []
    if options.prompt:
        prompt = tok.encode(" " + options.prompt.strip()) if isinstance(options.prompt, str) else list(options.prompt)
        tokens = [tok.sot_prev] + prompt[-(n_ctx // 2 - 1):] + tokens
    return tokens


@torch.inference_mode()
def decode_batch(model: Whisper, mel: Optional[Tensor] = None, options: DecodingOptions = DecodingOptions(), *,
                 audio_features: Optional[Tensor] = None, audio_lengths: Optional[Tensor] = None,
                 prompts: Optional[list] = None, draft: Optional[Draft] = None) -> list[DecodingResult]:
    """Decode a batch of 30-second windows ([batch, n_mels, 3000] mel or encoder features).

    `prompts` gives each window its own previous-text prompt (lists of token ids of equal length).
    `draft` (its features computed for the same windows) speeds up greedy decoding, same tokens.
    """
    if audio_features is None:
        mel = mel[None] if mel.ndim == 2 else mel
        audio_features = model.embed_audio(mel.to(model.device, next(model.parameters()).dtype))
    return DecodingTask(model, options, audio_features, audio_lengths, prompts, draft).run()


class DecodingTask:
    """One decoding of a batch of windows: the state that sampling, beam search and speculative
    decoding share, built once. Each window's start row (prompt, start sequence, prefix) is
    repeated n_group times: once per beam or per sample."""

    def __init__(self, model: Whisper, options: DecodingOptions, features: Tensor,
                 lengths: Optional[Tensor] = None, prompts: Optional[list] = None, draft: Optional[Draft] = None):
        self.model, self.options, self.draft, self.tok = model, options, draft, model.tokenizer
        n_audio = features.shape[0]
        self.languages, self.language_probs = [options.language or "en"] * n_audio, [None] * n_audio
        language_tokens = [None] * n_audio
        if options.language is None and model.is_multilingual:
            best, self.language_probs = detect_language(model, features)
            language_tokens = best.tolist()
            self.languages = [max(p, key=p.get) for p in self.language_probs]
        rows = [initial_tokens(model, options if prompts is None else replace(options, prompt=prompts[i]),
                               language_tokens[i]) for i in range(n_audio)]
        if len({len(r) for r in rows}) != 1:
            raise ValueError("all windows of a batch need prompts of the same length")
        if isinstance(draft, Draft) and draft.model.dims.n_vocab != model.dims.n_vocab:
            raise ValueError(f"the draft's vocabulary ({draft.model.dims.n_vocab} tokens) is not the model's "
                             f"({model.dims.n_vocab}): draft with a student of this teacher")
        self.sample_begin, self.sot_index = len(rows[0]), rows[0].index(self.tok.sot)
        self.sample_len = options.sample_len or model.dims.n_text_ctx // 2
        self.rules = LogitRules(model, options, self.sample_begin)
        self.n_group = options.beam_size or options.best_of or 1
        self.tokens = torch.tensor(rows, device=features.device).repeat_interleave(self.n_group, dim=0)
        self.features = features.repeat_interleave(self.n_group, dim=0)
        self.lengths = None if lengths is None else lengths.repeat_interleave(self.n_group, dim=0)

    def run(self) -> list[DecodingResult]:
        if self.options.beam_size is not None:
            candidates, no_speech = self.beam_search()
        elif self.draft is not None and self.options.temperature == 0:
            candidates, no_speech = self.speculative()
        else:
            candidates, no_speech = self.sample()
        results = []
        for i, (seqs, logprobs) in enumerate(candidates):
            best = rank(seqs, logprobs, self.options.length_penalty)
            text = self.tok.decode(seqs[best]).strip()
            results.append(DecodingResult(
                tokens=seqs[best], text=text, language=self.languages[i],
                avg_logprob=logprobs[best] / (len(seqs[best]) + 1), no_speech_prob=no_speech[i * self.n_group],
                temperature=self.options.temperature, compression_ratio=compression_ratio(text),
                language_probs=self.language_probs[i]))
        return results

    def first_step(self, tokens: Tensor, features: Tensor, lengths: Optional[Tensor]):
        """Run the whole start sequence once: (the cache, last-position logits, no-speech probabilities).

        Only two positions are projected onto the vocabulary: <|startoftranscript|> (for the no-speech
        probability) and the last one. A long prompt would otherwise cost a [prompt, vocab] product.
        """
        cache = KVCache(self.model, tokens.shape[0], features.device, features.dtype)
        hidden = self.model.decoder.hidden(tokens, features, lengths, cache)[:, [self.sot_index, -1]]
        logits = self.model.decoder.project(hidden)
        no_speech = logits[:, 0].softmax(dim=-1)[:, self.tok.no_speech].tolist()
        return cache, logits[:, 1], no_speech

    def sample(self):
        """Greedy (temperature 0) or sampling, every row at once.

        A row that emits <|endoftext|> leaves the batch (its cache rows too), so a batch of short and
        long utterances costs the work of its tokens, not of its longest row times its size.
        """
        eot, temperature = self.tok.eot, self.options.temperature
        tokens, features, lengths = self.tokens, self.features, self.lengths
        sum_logprobs = torch.zeros(tokens.shape[0], device=features.device)
        finished: list[Optional[list[int]]] = [None] * tokens.shape[0]
        rows = torch.arange(tokens.shape[0], device=features.device)     # which original rows are still running
        cache, logits, no_speech = self.first_step(tokens, features, lengths)
        generator = torch.Generator(features.device).manual_seed(self.options.seed) if temperature > 0 else None
        for _ in range(self.sample_len):
            self.rules(logits, tokens)
            logits = logits.float()
            if temperature == 0:                  # max, not argmax: same first index, 3x faster on a CPU
                best, next_tokens = logits.max(dim=-1)
                sum_logprobs[rows] += best - torch.logsumexp(logits, dim=-1)
            else:
                next_tokens = torch.multinomial((logits / temperature).softmax(dim=-1), 1, generator=generator)[:, 0]
                sum_logprobs[rows] += F.log_softmax(logits, dim=-1).gather(1, next_tokens[:, None])[:, 0]
            tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)
            done = (next_tokens == eot) | (tokens.shape[-1] > self.model.dims.n_text_ctx)
            if done.any():
                for i in done.nonzero()[:, 0].tolist():
                    finished[rows[i]] = tokens[i, self.sample_begin:].tolist()
                keep = (~done).nonzero()[:, 0]
                if len(keep) == 0:
                    break
                # (features stay as they are: the audio's keys and values are in the cache now)
                rows, tokens, next_tokens = rows[keep], tokens[keep], next_tokens[keep]
                lengths = None if lengths is None else lengths[keep]
                cache.keep(keep)
            logits = self.model.logits(next_tokens[:, None], features, lengths, cache)[:, -1]
        for i, r in enumerate(rows.tolist()):                # rows cut off by sample_len
            if finished[r] is None:
                finished[r] = tokens[i, self.sample_begin:].tolist()
        n = self.n_group
        candidates = [([_until_eot(seq, eot) for seq in finished[i: i + n]], sum_logprobs[i: i + n].tolist())
                      for i in range(0, len(finished), n)]
        return candidates, no_speech

    def beam_search(self):
        """Keep the beam_size most probable unfinished hypotheses per audio; stop once
        beam_size * patience hypotheses have finished (or the length limit is hit)."""
        eot, beam, tokens = self.tok.eot, self.options.beam_size, self.tokens
        max_finished = round(beam * (self.options.patience or 1.0))
        if max_finished <= 0:
            raise ValueError(f"invalid beam size ({beam}) or patience ({self.options.patience})")
        n_audio = tokens.shape[0] // beam
        sum_logprobs = torch.zeros(tokens.shape[0])
        finished: list[dict[tuple, float]] = [{} for _ in range(n_audio)]
        cache, logits, no_speech = self.first_step(tokens, self.features, self.lengths)
        for _ in range(self.sample_len):
            self.rules(logits, tokens)
            top_lp, top_ids = F.log_softmax(logits.float(), dim=-1).cpu().topk(beam + 1, dim=-1)
            rows, sources, new_sums = [], [], []
            for a in range(n_audio):
                # every extension of every live hypothesis; equal sequences (as at the first step) merge
                scores, origin = {}, {}
                for j in range(a * beam, (a + 1) * beam):
                    prefix = tuple(tokens[j].tolist())
                    for lp, t in zip(top_lp[j].tolist(), top_ids[j].tolist()):
                        scores[prefix + (t,)], origin[prefix + (t,)] = sum_logprobs[j].item() + lp, j
                kept, newly_finished = 0, {}
                for seq in sorted(scores, key=scores.get, reverse=True):
                    if seq[-1] == eot:
                        newly_finished[seq] = scores[seq]
                    else:
                        rows.append(seq), sources.append(origin[seq]), new_sums.append(scores[seq])
                        kept += 1
                        if kept == beam:
                            break
                for seq in sorted(newly_finished, key=newly_finished.get, reverse=True):
                    if len(finished[a]) >= max_finished:
                        break
                    finished[a][seq] = newly_finished[seq]
            tokens, sum_logprobs = torch.tensor(rows, device=self.features.device), torch.tensor(new_sums)
            cache.reorder(torch.tensor(sources, device=self.features.device))
            if all(len(f) >= max_finished for f in finished) or tokens.shape[-1] > self.model.dims.n_text_ctx:
                break
            logits = self.model.logits(tokens[:, -1:], self.features, self.lengths, cache)[:, -1]
        candidates = []
        for a, done in enumerate(finished):
            # too few finished: add the best unfinished ones
            for j in sorted(range(a * beam, (a + 1) * beam), key=lambda j: -sum_logprobs[j].item()):
                if len(done) >= beam:
                    break
                done[tuple(tokens[j].tolist()) + (eot,)] = sum_logprobs[j].item()
            candidates.append(([_until_eot(list(s[self.sample_begin:]), eot) for s in done], list(done.values())))
        return candidates, no_speech

    def speculative(self):
        """Greedy decoding sped up by the draft: the same tokens as sample() at temperature 0.

        Per window: the draft guesses a few tokens one by one (cheap), then the model scores all of
        them in one forward pass (about the cost of one of its own steps) and keeps the guesses up to
        the first one it disagrees with, plus its own token there. Every kept token is the model's own
        greedy choice under its own logit rules, so the transcript is the model's, only sooner.
        Windows are decoded one after another: each keeps a different number of guesses per step.
        """
        rows = [self._speculative_row(i) for i in range(0, self.tokens.shape[0], self.n_group)]  # a group's rows are equal
        return [([seq], [logprob]) for seq, logprob, _ in rows], [ns for *_, ns in rows for _ in range(self.n_group)]

    def _choose(self, logits: Tensor, prefix: list[int], guesses: Sequence[int] = ()) -> list[tuple[int, float]]:
        """The model's greedy token and its log-probability, as sample() computes them, at each row of
        logits [1 + len(guesses), vocab]: after `prefix`, after `prefix` and the first guess, ... (the
        rules row by row, the rest for all rows at once)."""
        logits = logits.clone()
        for p in range(logits.shape[0]):
            self.rules(logits[p: p + 1], torch.tensor([prefix + list(guesses[:p])], device=logits.device))
        tokens = logits.argmax(dim=-1)
        logprobs = F.log_softmax(logits.float(), dim=-1).gather(1, tokens[:, None])[:, 0]
        return list(zip(tokens.tolist(), logprobs.tolist()))

    def _speculative_row(self, i: int) -> tuple[list[int], float, float]:
        """Row i's tokens, their total log-probability and its no-speech probability."""
        eot, n_ctx, sample_len = self.tok.eot, self.model.dims.n_text_ctx, self.sample_len
        features = self.features[i: i + 1]
        lengths = None if self.lengths is None else self.lengths[i: i + 1]
        tokens = self.tokens[i].tolist()
        cache, logits, no_speech = self.first_step(self.tokens[i: i + 1], features, lengths)
        draft_row = self.draft.row(self.options.task, self.languages[i // self.n_group], i // self.n_group)
        sum_logprob, emitted = 0.0, 0
        token, logprob = self._choose(logits, tokens)[0]   # the model's own token after `tokens`
        while True:
            tokens.append(token)
            sum_logprob += logprob
            emitted += 1
            if token == eot or emitted >= sample_len or len(tokens) > n_ctx:
                break
            if token < eot:                                # the draft sees text only, never timestamps
                draft_row.tokens.append(token)
            guesses = draft_row.guess(min(self.draft.guesses, sample_len - emitted, n_ctx - len(tokens)))
            # the model scores its token and every guess in one pass, from where its cache ends
            cache.offset = len(tokens) - 1
            candidates = torch.tensor([[token] + guesses], device=features.device)
            scored = self.model.logits(candidates, features, lengths, cache)[0]
            choices = self._choose(scored, tokens, guesses)   # its own token after each guess
            kept = 0
            for guess, (choice, logprob) in zip(guesses, choices):
                if choice != guess:
                    break
                tokens.append(guess)
                sum_logprob += logprob
                emitted += 1
                kept += 1
                if guess == eot or emitted >= sample_len or len(tokens) > n_ctx:
                    break
            if tokens[-1] == eot or emitted >= sample_len or len(tokens) > n_ctx:
                break
            token, logprob = choices[kept]                 # its own token after the last kept guess
            cache.offset = len(tokens)
            draft_row.forget(len(guesses) - kept)
        return _until_eot(tokens[self.sample_begin:], eot), sum_logprob, no_speech[0]


def rank(sequences: list[list[int]], logprobs: list[float], length_penalty: Optional[float]) -> int:
    """Index of the best candidate: total log-probability over a length penalty."""
    penalties = [len(s) if length_penalty is None else ((5 + len(s)) / 6) ** length_penalty for s in sequences]
    return int(np.argmax([lp / penalty for lp, penalty in zip(logprobs, penalties)]))


def _until_eot(seq: list[int], eot: int) -> list[int]:
    return seq[: seq.index(eot)] if eot in seq else seq


@dataclass
class Draft:
    """A fast model that guesses a slower model's next tokens: speculative decoding.

    The draft reads the same windows in its own way (a trimmed-input student reads each window cut
    after its speech, in multiples of `round_frames`; None: the whole 30 s) and always decodes
    without timestamps. `features`/`lengths` hold its encoder output for the batch being decoded.
    """
    model: Whisper
    round_frames: Optional[int] = None
    guesses: int = 3                         # tokens guessed per step of the verifying model
    shortlist: Optional[int] = 8192          # guess among the first N token ids only (see guess_logits)
    features: Optional[Tensor] = None
    lengths: Optional[Tensor] = None
    # shortlist size -> (token ids, projection), built once and shared by the copies encode() makes
    projections: dict = field(default_factory=dict, repr=False, compare=False)

    def encode(self, mel: Tensor, sizes: Sequence[int]) -> Draft:
        """The draft's encoder output for windows mel [batch, n_mels, 3000] holding `sizes` frames of audio."""
        frames = [data.N_FRAMES if self.round_frames is None else data.trimmed_frames(n, self.round_frames)
                  for n in sizes]
        features, lengths = embed_each(self.model, mel, frames)
        return replace(self, features=features, lengths=lengths)

    def select(self, index: Sequence[int]) -> Draft:
        """The draft of the windows `index` only."""
        lengths = None if self.lengths is None else self.lengths[index]
        return replace(self, features=self.features[index], lengths=lengths)

    def row(self, task: str, language: str, row: int) -> DraftRow:
        """The draft's side of window `row`, as speculative decoding asks it for guesses."""
        return DraftRow(self, task, language, row)

    def guess_logits(self, hidden: Tensor) -> Tensor:
        """The draft's logits [vocab] from its last hidden state, over the shortlist (-inf elsewhere).

        BPE ids follow the order of the merges, so the first 8192 are the commonest pieces of text;
        with <|endoftext|> they cover nearly every token of ordinary speech. A guess outside them is
        merely a wrong guess, which the verifying model corrects, and the projection, the costliest
        part of a decoding step on a CPU, shrinks six-fold.
        """
        if self.shortlist is None:
            return self.model.decoder.project(hidden)
        if self.shortlist not in self.projections:
            eot = self.model.tokenizer.eot
            ids = torch.cat([torch.arange(min(self.shortlist, eot)), torch.tensor([eot])]).to(hidden.device)
            weight = self.model.decoder.token_embedding.weight[ids]
            self.projections[self.shortlist] = (ids, PackedLinear(weight) if self.model.packed else
                                                (lambda h, w=weight: F.linear(h, w.to(h.dtype)).float()))
        ids, projection = self.projections[self.shortlist]
        logits = torch.full((*hidden.shape[:-1], self.model.dims.n_vocab), -np.inf, device=hidden.device)
        logits[..., ids] = projection(hidden)
        return logits


class DraftRow:
    """The draft's side of one window in speculative decoding: the text so far as the draft sees it
    (text only, never timestamps), its logit rules and its own KV cache."""

    def __init__(self, draft: Draft, task: str, language: str, row: int):
        self.draft, model = draft, draft.model
        options = DecodingOptions(task=task, language=language, without_timestamps=True)
        self.tokens = initial_tokens(model, options)
        self.rules = LogitRules(model, options, len(self.tokens))
        self.features = draft.features[row: row + 1]
        self.lengths = None if draft.lengths is None else draft.lengths[row: row + 1]
        self.cache = KVCache(model, 1, self.features.device, self.features.dtype)
        self.fed = 0                                       # how many of self.tokens are in the cache

    def guess(self, limit: int) -> list[int]:
        """Up to `limit` tokens the draft expects next, one at a time (stopping at <|endoftext|>)."""
        guesses = []
        while len(guesses) < limit:
            self.fed = min(self.fed, len(self.tokens) - 1)  # feed what the draft has not seen (or the last token again)
            self.cache.offset = self.fed
            new = torch.tensor([self.tokens[self.fed:]], device=self.features.device)
            self.fed = len(self.tokens)
            hidden = self.draft.model.decoder.hidden(new, self.features, self.lengths, self.cache)[:, -1]
            step = self.draft.guess_logits(hidden)
            self.rules(step, torch.tensor([self.tokens], device=step.device))
            guesses.append(int(step.argmax(dim=-1)))
            self.tokens.append(guesses[-1])
            if guesses[-1] == self.draft.model.tokenizer.eot:
                break
        return guesses

    def forget(self, n: int) -> None:
        """Drop the last `n` guesses (the ones the verifying model did not keep)."""
        del self.tokens[len(self.tokens) - n:]
        self.fed = min(self.fed, len(self.tokens))


@dataclass
class TextDraft:
    """A text the model will probably write, as the draft of speculative decoding: no second model.

    Live transcription has one: the text read from the same phrase half a second before, when less
    of it had been heard (askd.LiveTranscriber). Guesses are the draft's tokens that follow where
    the model's text so far ends in it, so a read that agrees with the draft costs a few forward
    passes of the decoder, not one per token; where they disagree the model's own tokens win, as
    with any draft. `tokens`: the draft's text tokens, <|endoftext|> last (so the end is guessed too).
    """
    tokens: list[int]
    guesses: int = 8                         # tokens guessed per step of the verifying model

    def encode(self, mel: Tensor, sizes: Sequence[int]) -> TextDraft:
        return self                          # nothing to read: the same text serves every window

    def select(self, index: Sequence[int]) -> TextDraft:
        return self

    def row(self, task: str, language: str, row: int) -> TextDraftRow:
        return TextDraftRow(self)


class TextDraftRow:
    """A TextDraft's side of one window: the text so far (as DraftRow keeps it) and where it goes on
    in the draft."""
    TAIL = 4                                 # the most tokens of the text so far matched against the draft

    def __init__(self, draft: TextDraft):
        self.draft, self.tokens = draft, []

    def guess(self, limit: int) -> list[int]:
        """Up to `limit` of the draft's tokens after the place where the text so far ends in it:
        after the text itself if the draft starts with it, else after the latest occurrence of its
        longest tail (a word the model wrote differently), else none."""
        at = self.where()
        guesses = self.draft.tokens[at: at + limit] if at is not None else []
        self.tokens += guesses
        return guesses

    def where(self) -> Optional[int]:
        """Where in the draft the text so far goes on (see guess), or None."""
        text, draft = self.tokens, self.draft.tokens
        if draft[: len(text)] == text:
            return len(text)
        for n in range(min(self.TAIL, len(text)), 0, -1):
            ends = [j + n for j in range(len(draft) - n) if draft[j: j + n] == text[-n:]]
            if ends:
                return ends[-1]
        return None

    def forget(self, n: int) -> None:
        """Drop the last `n` guesses (the ones the verifying model did not keep)."""
        del self.tokens[len(self.tokens) - n:]


# ----------------------------------------------------------------------------------------------
# 6. Transcription: long audio, window by window, into timed segments
# ----------------------------------------------------------------------------------------------
# Whisper reads 30 s at a time. After each window it seeks to the last complete timestamp pair
# (or past the window), so speech cut at a window edge is decoded again in the next window. The
# text so far conditions the next window as a prompt. A window whose output looks wrong (too
# repetitive, too improbable) is decoded again at the next temperature.

TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class TranscribeOptions(DecodingOptions):
    """How to transcribe long audio: the decoding options of every window, and the rules around them.

    Each window is decoded at the first temperature of the schedule, and again at the next one
    while its text looks wrong: more compressible than compression_ratio_threshold (a loop) or
    less probable than logprob_threshold on average, unless no_speech_threshold calls it silence.
    """
    temperature: float | Sequence[float] = TEMPERATURES     # one temperature, or a fallback schedule
    best_of: Optional[int] = 5
    compression_ratio_threshold: Optional[float] = 2.4
    logprob_threshold: Optional[float] = -1.0
    no_speech_threshold: Optional[float] = 0.6
    condition_on_previous_text: bool = True
    initial_prompt: Optional[str] = None
    draft: Optional[Draft] = None            # faster greedy windows, the same text (see DecodingTask.speculative)
    vad: bool = True                         # skip long silence (data.sound_regions); off: Whisper

    def for_window(self, temperature: float, language: Optional[str]) -> DecodingOptions:
        """The options of one try of one window: beam search at temperature 0, best_of samples above."""
        options = DecodingOptions(**{f.name: getattr(self, f.name) for f in fields(DecodingOptions)})
        return replace(options, temperature=temperature, language=language,
                       beam_size=self.beam_size if temperature == 0 else None,
                       patience=self.patience if temperature == 0 else None,
                       best_of=self.best_of if temperature > 0 else None)

    def needs_fallback(self, r: DecodingResult) -> bool:
        too_repetitive = self.compression_ratio_threshold is not None and \
            r.compression_ratio > self.compression_ratio_threshold
        too_improbable = self.logprob_threshold is not None and r.avg_logprob < self.logprob_threshold
        return (too_repetitive or too_improbable) and not (self.is_silence(r) and too_improbable)

    def is_silence(self, r: DecodingResult) -> bool:
        return self.no_speech_threshold is not None and r.no_speech_prob > self.no_speech_threshold


@dataclass
class _Track:
    """One input's progress through transcription."""
    mel: Tensor                      # log-mel of the whole input plus 30 s of padding
    content_frames: int
    language: Optional[str]
    seek: int = 0
    all_tokens: list = field(default_factory=list)
    segments: list = field(default_factory=list)
    prompt_reset_since: int = 0
    initial_prompt_tokens: list = field(default_factory=list)
    regions: Optional[list] = None   # (start, end) frames to read, the rest silence; None: all

    def region_end(self) -> int:
        """Where the stretch to read that holds the seek ends: no window reads past it."""
        if self.regions is None:
            return self.content_frames
        return next((b for a, b in self.regions if self.seek < b), self.content_frames)

    def skip_silence(self) -> None:
        """Move the seek past silence to the next stretch to read (or to the end), as Whisper's
        no-speech rule skips a silent window: the text so far still conditions what follows."""
        if self.regions is not None:
            ahead = [max(self.seek, a) for a, b in self.regions if self.seek < b]
            self.seek = ahead[0] if ahead else self.content_frames


def transcribe_one(model: Whisper, audio, options: TranscribeOptions = TranscribeOptions()) -> dict:
    """Transcribe one input (path, waveform or log-mel): {'text', 'segments', 'language'}."""
    return transcribe_many(model, [audio], options)[0]


@torch.inference_mode()
def transcribe_many(model: Whisper, audios: Sequence, options: TranscribeOptions = TranscribeOptions(), *,
                    batch_size: int = 1, progress: bool = False,
                    done: Optional[Callable[[int, dict], None]] = None) -> list[dict]:
    """Transcribe several inputs; windows of different inputs are decoded together, `batch_size` at a time.

    With batch_size 1 this is exactly Whisper's own transcribe loop, input after input. Only with
    options.vad (the default) the seek jumps over each silence of data.SILENCE_GAP seconds or
    more (data.sound_regions), and no window reads into one; what is read is the whole input's mel.
    (An input given as log-mel is read whole.)
    `done(i, result)` is called as soon as input i is read to its end (the inputs whose last windows
    share a batch together), so a caller can keep each result before the others are decoded.
    """
    from tqdm import tqdm
    if options.task == "translate" and not model.is_multilingual:
        raise ValueError("translate needs a multilingual model; English-only models can only transcribe")
    options = replace(options, language=_language_code(model, options.language))
    prompt = model.tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
    tracks = []
    for audio in audios:
        regions = None
        if not (isinstance(audio, Tensor) and audio.ndim == 2):
            audio = data.load_audio(audio) if isinstance(audio, (str, os.PathLike)) else audio
            if options.vad:       # the silence gate; its 10 ms frames are the mel frames
                samples = audio.cpu().numpy() if isinstance(audio, Tensor) else audio
                regions = [(a // data.HOP_LENGTH, b // data.HOP_LENGTH)
                           for a, b in data.sound_regions(samples)]
            audio = data.log_mel_spectrogram(audio, model.dims.n_mels, padding=data.N_SAMPLES)
        tracks.append(_Track(mel=audio, content_frames=audio.shape[-1] - data.N_FRAMES,
                             language=options.language, all_tokens=list(prompt),
                             initial_prompt_tokens=prompt, regions=regions))
        tracks[-1].skip_silence()
    undetected = [t for t in tracks if t.language is None and t.seek < t.content_frames]
    _detect_languages(model, undetected, batch_size)
    results: list[Optional[dict]] = [None] * len(tracks)
    place = {id(t): i for i, t in enumerate(tracks)}        # by identity: tracks compare by value

    def finish(ts: Sequence[_Track]) -> None:
        for t in ts:
            i = place[id(t)]
            if t.seek >= t.content_frames and results[i] is None:
                text = model.tokenizer.decode(t.all_tokens[len(t.initial_prompt_tokens):])
                results[i] = {"text": text, "segments": t.segments, "language": t.language or "en"}
                if done is not None:
                    done(i, results[i])

    finish(tracks)                           # inputs with nothing to decode
    total = sum(t.content_frames - t.seek for t in tracks)
    with tqdm(total=total, unit="frames", disable=not progress, leave=False) as bar:
        while active := [t for t in tracks if t.seek < t.content_frames]:
            # windows decode together when their prompts are equally long (one tensor of tokens)
            groups: dict[tuple, list[_Track]] = {}
            for t in active:
                groups.setdefault((len(_prompt_of(t, model.dims.n_text_ctx)), t.language), []).append(t)
            for group in groups.values():
                group.sort(key=lambda t: t.content_frames - t.seek)   # similar lengths decode together
                for i in range(0, len(group), batch_size):
                    chunk = group[i: i + batch_size]
                    before = sum(min(t.seek, t.content_frames) for t in chunk)
                    _transcribe_windows(model, chunk, options)
                    bar.update(sum(min(t.seek, t.content_frames) for t in chunk) - before)
                    finish(chunk)
    return results


def _language_code(model: Whisper, language: Optional[str]) -> Optional[str]:
    """A language code from a code or an English name ('en', 'English'); None: detect it."""
    if language is not None and language.lower() not in model.tokenizer.language_codes:
        by_name = {name: code for code, name in LANGUAGES.items()}
        if language.lower() not in by_name:
            raise ValueError(f"unknown language {language!r}")
        language = by_name[language.lower()]
    return language and language.lower() if model.is_multilingual else "en"


def _detect_languages(model: Whisper, tracks: list[_Track], batch_size: int) -> None:
    """Language of each input from the first 30 s it reads (multilingual models, no --language)."""
    for i in range(0, len(tracks), batch_size):
        chunk = tracks[i: i + batch_size]
        mel = torch.stack([t.mel[:, t.seek: t.seek + data.N_FRAMES] for t in chunk])    # 1st window
        mel = mel.to(model.device, next(model.parameters()).dtype)
        _, probs = detect_language(model, model.embed_audio(mel))
        for t, p in zip(chunk, probs):
            t.language = max(p, key=p.get)


def _prompt_of(t: _Track, n_text_ctx: int) -> list[int]:
    """The text so far (since the last reset), as much as fits in half the text context."""
    prompt = t.all_tokens[t.prompt_reset_since:]
    return prompt[-(n_text_ctx // 2 - 1):] if prompt else []


def _transcribe_windows(model: Whisper, tracks: list[_Track], options: TranscribeOptions) -> None:
    """Decode the current window of each track (with temperature fallback) and advance its seek."""
    sizes = [min(data.N_FRAMES, t.region_end() - t.seek) for t in tracks]
    mel = torch.stack([data.pad_or_trim(t.mel[:, t.seek: t.seek + n], data.N_FRAMES) for t, n in zip(tracks, sizes)])
    temperatures = [options.temperature] if isinstance(options.temperature, (int, float)) else options.temperature
    draft = options.draft
    draft = draft.encode(mel, sizes) if draft and temperatures[0] == 0 and options.beam_size is None else None
    features, _ = embed_each(model, mel, [data.N_FRAMES] * len(tracks))
    prompts = [_prompt_of(t, model.dims.n_text_ctx) for t in tracks]
    results: list[Optional[DecodingResult]] = [None] * len(tracks)
    todo = list(range(len(tracks)))
    for temperature in temperatures:
        decoded = decode_batch(model, options=options.for_window(temperature, tracks[0].language),
                               audio_features=features[todo], prompts=[prompts[i] for i in todo],
                               draft=draft.select(todo) if draft is not None and temperature == 0 else None)
        for i, r in zip(todo, decoded):
            results[i] = r
        todo = [i for i, r in zip(todo, decoded) if options.needs_fallback(r)]
        if not todo:
            break
    for t, size, result in zip(tracks, sizes, results):
        _advance(model, t, size, result, options)
        t.skip_silence()


def _advance(model: Whisper, t: _Track, size: int, result: DecodingResult, options: TranscribeOptions) -> None:
    """Cut the window's tokens into segments at timestamp pairs and move the seek forward."""
    tok = model.tokenizer
    frames_per_token = data.N_FRAMES // model.dims.n_audio_ctx             # 2 mel frames per timestamp step
    precision = frames_per_token * data.HOP_LENGTH / data.SAMPLE_RATE       # 0.02 s
    offset = t.seek * data.HOP_LENGTH / data.SAMPLE_RATE
    lp_threshold = options.logprob_threshold
    if options.is_silence(result) and not (lp_threshold is not None and result.avg_logprob > lp_threshold):
        t.seek += size                       # silence: skip the window
        return
    tokens, begin = result.tokens, tok.timestamp_begin
    is_ts = [x >= begin for x in tokens]
    single_ending = is_ts[-2:] == [False, True]
    cuts = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]    # between two timestamps
    new = []

    def segment(start: float, end: float, toks: list[int]) -> dict:
        text = tok.decode([x for x in toks if x < tok.eot])
        return {"seek": t.seek, "start": start, "end": end, "text": text, "tokens": toks,
                "temperature": result.temperature, "avg_logprob": result.avg_logprob,
                "compression_ratio": result.compression_ratio, "no_speech_prob": result.no_speech_prob}

    if cuts:
        if single_ending:
            cuts.append(len(tokens))
        last = 0
        for cut in cuts:
            piece = tokens[last:cut]
            new.append(segment(offset + (piece[0] - begin) * precision, offset + (piece[-1] - begin) * precision, piece))
            last = cut
        if single_ending:
            t.seek += size                   # nothing after the last timestamp: the window is done
        else:
            t.seek += (tokens[last - 1] - begin) * frames_per_token   # resume at the last timestamp
    else:
        duration = size * data.HOP_LENGTH / data.SAMPLE_RATE
        stamps = [x for x in tokens if x >= begin]
        if stamps and stamps[-1] != begin:
            duration = (stamps[-1] - begin) * precision
        new.append(segment(offset, offset + duration, tokens))
        t.seek += size
    for s in new:                            # an instantaneous or blank segment keeps no text
        if s["start"] == s["end"] or not s["text"].strip():
            s["text"], s["tokens"] = "", []
        s["id"] = len(t.segments)
        t.segments.append(s)
        t.all_tokens.extend(s["tokens"])
    if not options.condition_on_previous_text or result.temperature > 0.5:
        t.prompt_reset_since = len(t.all_tokens)     # a high-temperature guess should not steer what follows
