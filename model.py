"""Whisper from scratch: the shape of a model and the network.

The transformer that turns a log-mel spectrogram into next-token logits. Its weights are read and
written by weight_files.py (`weight_files.load_model("tiny.en")`), its words by tokenization.py,
its decoding is decoding.py's and long audio transcribe.py's; cpu.py packs it for the CPU.

Parameter names follow OpenAI's checkpoints exactly (`encoder.blocks.0.attn.query.weight`, ...),
so a state dict saved here loads in any Whisper tool and vice versa.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import audio_io
import cpu
from kernels import attention as fused_attention
from kernels import use_triton
from kernels.attention import visible_keys

if TYPE_CHECKING:  # annotations only: never at run time
    import tokenization


class ModelError(ValueError):
    """A checkpoint or model name that cannot be used; the message names the file and problem."""


# ----------------------------------------------------------------------------------------------
# 1. The shape of a model
# ----------------------------------------------------------------------------------------------


@dataclass
class ModelDims:
    n_mels: int
    n_audio_ctx: int  # encoder positions: 1500 = 30 s at 50 frames/s after the stride-2 conv
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int  # decoder positions: 448 tokens
    n_text_state: int
    n_text_head: int
    n_text_layer: int


# The largest sizes a checkpoint may claim, far above any released Whisper's (large-v3: 128 mels,
# 1280 wide, 32 layers), so that a corrupt file is refused before anything is built; the encoder
# never reads more than one 30 s window.
DIM_LIMITS = {
    "n_mels": 1024,
    "n_audio_ctx": audio_io.N_FRAMES // 2,
    "n_audio_state": 1 << 14,
    "n_audio_head": 1024,
    "n_audio_layer": 1024,
    "n_vocab": 1 << 20,
    "n_text_ctx": 1 << 14,
    "n_text_state": 1 << 14,
    "n_text_head": 1024,
    "n_text_layer": 1024,
}


def check_dims(dims: ModelDims, source, names: Optional[dict] = None) -> None:
    """A one-line ModelError unless each size is a whole number from 1 to its DIM_LIMITS and each
    width splits evenly into its heads. `names`: the file's own names of the sizes, if any."""

    def label(key):
        return f"{names[key]} ({key})" if names and key in names else key

    for key, limit in DIM_LIMITS.items():
        value = getattr(dims, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelError(f"{source}: {label(key)} is {value!r}, not a whole number")
        if not 1 <= value <= limit:
            raise ModelError(f"{source}: {label(key)} is {value}, outside 1 to {limit}")
    for side in ("audio", "text"):
        state, head = f"n_{side}_state", f"n_{side}_head"
        if getattr(dims, state) % getattr(dims, head):
            raise ModelError(
                f"{source}: {label(state)} {getattr(dims, state)} does not split into "
                f"{label(head)} {getattr(dims, head)} equal heads"
            )


def weight_shapes(dims: ModelDims) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor of Whisper(dims), by name, worked out without building it."""
    a, t = dims.n_audio_state, dims.n_text_state
    shapes = {
        "encoder.conv1.weight": (a, dims.n_mels, 3),
        "encoder.conv1.bias": (a,),
        "encoder.conv2.weight": (a, a, 3),
        "encoder.conv2.bias": (a,),
        "encoder.positional_embedding": (dims.n_audio_ctx, a),
        "decoder.token_embedding.weight": (dims.n_vocab, t),
        "decoder.positional_embedding": (dims.n_text_ctx, t),
    }
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
            shapes.update(
                {
                    f"{block}.mlp.0.weight": (4 * n, n),
                    f"{block}.mlp.0.bias": (4 * n,),
                    f"{block}.mlp.2.weight": (n, 4 * n),
                    f"{block}.mlp.2.bias": (n,),
                    f"{block}.mlp_ln.weight": (n,),
                    f"{block}.mlp_ln.bias": (n,),
                }
            )
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
    sinusoids = "encoder.positional_embedding"  # may be left out: it can be recomputed
    missing = [k for k in shapes if k not in tensors and k != sinusoids]
    unexpected = [k for k in tensors if k not in shapes]
    if missing or unexpected:
        raise ModelError(
            f"{source}: weights do not fit a Whisper of these sizes "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    positions = {sinusoids: "n_audio_ctx", "decoder.positional_embedding": "n_text_ctx"}
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            raise ModelError(f"{source}: {name} is a {type(value).__name__}, not a tensor")
        want = shapes[name]
        if tuple(value.shape) == want:
            continue
        if name in positions and value.dim() == 2 and value.shape[1] == want[1]:
            raise ModelError(
                f"{source}: {positions[name]} is {want[0]}, but the weights hold "
                f"{value.shape[0]} positions ({name})"
            )
        raise ModelError(
            f"{source}: tensor {name} has shape {list(value.shape)}; these sizes need {list(want)}"
        )


# ----------------------------------------------------------------------------------------------
# 2. The network
# ----------------------------------------------------------------------------------------------


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """The encoder's fixed positional embedding: sin in the first half of the channels, then cos."""
    half = channels // 2
    inv_timescales = torch.exp(-math.log(max_timescale) / (half - 1) * torch.arange(half))
    t = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    q_offset: int = 0,
    k_lengths: Optional[Tensor] = None,
) -> Tensor:
    """softmax(q k^T / sqrt(d)) v over [batch, heads, length, head_dim] tensors.

    Every attention in the model goes through here, so one switch picks the fused Triton kernel
    (CUDA tensors) or PyTorch's SDPA. `q_offset` is the absolute position of the first query, so a
    single new token attends to a whole KV cache; `k_lengths` hides padded keys per sequence.
    """
    if use_triton(q):
        return fused_attention(q, k, v, causal=causal, q_offset=q_offset, k_lengths=k_lengths)
    n_q, n_k = q.shape[-2], k.shape[-2]
    causal = causal and (
        n_q > 1 or n_k > q_offset + 1
    )  # one new token after its cache sees every key
    mask = None
    if causal or k_lengths is not None:  # the kernel's and its twin's one rule
        mask = visible_keys(
            n_q, n_k, causal=causal, q_offset=q_offset, k_lengths=k_lengths, device=q.device
        )
    if n_q == 1 and q.dtype == torch.bfloat16 and q.device.type == "cpu" and not cpu.cpu_has_amx():
        return one_query_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def one_query_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
    """attention() for one query position in bf16 on a CPU without AMX: two matrix products and an
    fp32 softmax. There SDPA's bf16 kernel is much slower than this on a decoding step's
    cross-attention, which is most of a student's time on a long recording. The scores are rounded
    to bf16 before the softmax (SDPA keeps them in fp32): outputs within ~1e-2, as the bf16 keys
    already are."""
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
        self.self_kv = [
            (
                torch.empty(shape, device=device, dtype=dtype),
                torch.empty(shape, device=device, dtype=dtype),
            )
            for _ in range(dims.n_text_layer)
        ]
        self.cross_kv: list[Optional[tuple[Tensor, Tensor]]] = [None] * dims.n_text_layer
        self.offset = 0  # how many tokens are cached

    def reorder(self, index: Tensor) -> None:
        """Keep the rows `index` (beam search picks which hypotheses survive)."""
        for k, v in self.self_kv:
            k[:, :, : self.offset].copy_(k[index, :, : self.offset])
            v[:, :, : self.offset].copy_(v[index, :, : self.offset])
        self.cross_kv = [
            None if kv is None else (kv[0][index], kv[1][index]) for kv in self.cross_kv
        ]

    def keep(self, index: Tensor) -> None:
        """Keep the rows `index` (increasing) only: finished hypotheses leave the batch.

        The kept rows move to the front of the same buffers; rows already in place stay, and of the
        self-attention keys only the filled positions move. (Copying whole buffers cost a sixth of a
        student's decoding time; a batch whose short rows come last moves nothing.)"""
        n, end = len(index), self.offset
        moved = (index != torch.arange(n, device=index.device)).nonzero()
        start = int(moved[0]) if len(moved) else n
        for k, v in self.self_kv:
            k[start:n, :, :end] = k[index[start:], :, :end]  # the gather copies first: no overlap
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
        self.key = nn.Linear(
            n_state, n_state, bias=False
        )  # a key bias only shifts all scores of a row equally
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)
        self.kv_dtype: Optional[torch.dtype] = (
            None  # cross-attention keys/values in bf16: pack_for_cpu
        )

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_head, -1).transpose(1, 2)

    def keys_and_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the audio; with kv_dtype set, made and kept in it."""
        if self.kv_dtype is None:
            return self.split_heads(self.key(source)), self.split_heads(self.value(source))
        # contiguous per head: every decoding step multiplies by them (one_query_attention), and a
        # strided view would be copied at each step
        with torch.autocast(source.device.type, dtype=self.kv_dtype):
            return (
                self.split_heads(self.key(source)).to(self.kv_dtype).contiguous(),
                self.split_heads(self.value(source)).to(self.kv_dtype).contiguous(),
            )

    def forward(
        self,
        x: Tensor,
        source: Optional[Tensor] = None,
        causal: bool = False,
        k_lengths: Optional[Tensor] = None,
        cache: Optional[KVCache] = None,
        layer: int = 0,
    ) -> Tensor:
        q = self.split_heads(self.query(x))
        q_offset = 0
        if source is not None:  # cross-attention to the audio
            kv = cache.cross_kv[layer] if cache is not None else None
            if kv is None:
                kv = self.keys_and_values(source)
                if cache is not None:
                    cache.cross_kv[layer] = kv
            k, v = kv
            q = q.to(k.dtype)
        else:  # self-attention
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
        self.mlp = nn.Sequential(
            nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state)
        )
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(
        self,
        x: Tensor,
        audio: Optional[Tensor] = None,
        causal: bool = False,
        lengths: Optional[Tensor] = None,
        audio_lengths: Optional[Tensor] = None,
        cache: Optional[KVCache] = None,
        layer: int = 0,
    ) -> Tensor:
        x = x + self.attn(
            self.attn_ln(x), causal=causal, k_lengths=lengths, cache=cache, layer=layer
        )
        if self.cross_attn is not None:
            x = x + self.cross_attn(
                self.cross_attn_ln(x), audio, k_lengths=audio_lengths, cache=cache, layer=layer
            )
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
            keep = (
                torch.arange(mel.shape[-1], device=mel.device) < mel_lengths.to(mel.device)[:, None]
            )[:, None, :]
            mel = mel * keep
        x = F.gelu(self.conv1(mel))
        if keep is not None:
            x = x * keep
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        if x.shape[1] > self.positional_embedding.shape[0]:
            raise ValueError(
                f"audio of {mel.shape[-1]} frames is longer than the encoder's "
                f"{2 * self.positional_embedding.shape[0]}"
            )
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
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(n_state, n_head, cross_attention=True) for _ in range(n_layer)
        )
        self.ln = nn.LayerNorm(n_state)
        self.packed_projection: Optional[cpu.PackedLinear] = None  # set by pack_for_cpu

    def hidden(
        self,
        tokens: Tensor,
        audio: Tensor,
        audio_lengths: Optional[Tensor] = None,
        cache: Optional[KVCache] = None,
    ) -> Tensor:
        """tokens [batch, n] -> final hidden states [batch, n, n_state] (before the projection)."""
        offset = cache.offset if cache is not None else 0
        x = (
            self.token_embedding(tokens)
            + self.positional_embedding[offset : offset + tokens.shape[-1]]
        )
        x = x.to(audio.dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, audio, causal=True, audio_lengths=audio_lengths, cache=cache, layer=i)
        if cache is not None:
            cache.offset += tokens.shape[-1]
        return self.ln(x)

    def project(self, hidden: Tensor) -> Tensor:
        """Hidden states -> logits. The output projection is the token embedding itself (tied
        weights); the logits come out in float32 for a stable softmax."""
        if self.packed_projection is not None:
            return self.packed_projection(hidden)
        return F.linear(hidden, self.token_embedding.weight.to(hidden.dtype)).float()

    def forward(
        self,
        tokens: Tensor,
        audio: Tensor,
        audio_lengths: Optional[Tensor] = None,
        cache: Optional[KVCache] = None,
    ) -> Tensor:
        return self.project(self.hidden(tokens, audio, audio_lengths, cache))


class Whisper(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(
            dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer
        )
        self.decoder = TextDecoder(
            dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer
        )
        self.tokenizer: Optional[tokenization.Tokenizer] = (
            None  # attached by weight_files.open_model
        )
        self.encoder_autocast: Optional[torch.dtype] = None  # bf16 on a bf16 CPU: pack_for_cpu

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

    def logits(
        self,
        tokens: Tensor,
        audio_features: Tensor,
        audio_lengths: Optional[Tensor] = None,
        cache: Optional[KVCache] = None,
    ) -> Tensor:
        return self.decoder(tokens, audio_features, audio_lengths, cache)

    def forward(self, mel: Tensor, tokens: Tensor, mel_lengths: Optional[Tensor] = None) -> Tensor:
        audio_lengths = None if mel_lengths is None else (mel_lengths + 1) // 2
        return self.decoder(tokens, self.encoder(mel, mel_lengths), audio_lengths)

    def num_parameters(self) -> int:
        packed = sum(m.n_params for m in self.modules() if isinstance(m, cpu.PackedLinear))
        return sum(p.numel() for p in self.parameters()) + packed


CPU_ENCODER_FRAMES = 2000  # mel frames per encoder batch on a CPU (embed_each)


def embed_each(
    model: Whisper, mel: Tensor, frames: Sequence[int]
) -> tuple[Tensor, Optional[Tensor]]:
    """Encoder output for inputs of `frames` mel frames each (mel [batch, n_mels, >= max(frames)]),
    zero-padded to the longest, and the lengths to mask it with (None when all are equally long).

    On a CPU, inputs of equal length go together, up to CPU_ENCODER_FRAMES frames a batch, and
    nothing is padded or masked: a padded, masked batch of mixed lengths gains nothing over one by
    one there, while short inputs of equal length gain from going together and Whisper's long
    3000-frame inputs do not. Elsewhere the batch goes at once, masked.
    """
    longest = max(frames)
    mel = mel[..., :longest].to(model.device, next(model.parameters()).dtype)
    lengths = (
        None if all(n == longest for n in frames) else torch.tensor(frames, device=model.device)
    )
    if mel.device.type == "cpu":
        features = mel.new_zeros(len(frames), (longest + 1) // 2, model.dims.n_audio_state)
        for n in sorted(set(frames)):
            same = [i for i, f in enumerate(frames) if f == n]
            per_batch = max(1, CPU_ENCODER_FRAMES // n)
            for rows in (same[k : k + per_batch] for k in range(0, len(same), per_batch)):
                features[rows, : (n + 1) // 2] = model.embed_audio(mel[rows, :, :n]).to(
                    features.dtype
                )
    else:
        features = model.embed_audio(mel, lengths)
    return features, None if lengths is None else (lengths + 1) // 2
