"""Decoding on a CPU: the decoder's weights packed in 16 bits (PackedLinear, pack_for_cpu), and
what the CPU can do in hardware (cpu_flags).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # annotations only: never at run time
    import model as M

# up to this many rows a PackedLinear multiplies in fp16 even with bf16 at hand
PACKED_FP16_MAX_ROWS = 16


class PackedLinear(nn.Module):
    """nn.Linear for decoding on a CPU: the weight kept in fp16, in fbgemm's packed layout, and
    (bf16) a bfloat16 copy for many rows at once, on a CPU that multiplies bf16 in hardware.

    A decoding step multiplies a few rows by every decoder weight, so a CPU spends it waiting on
    memory, not on arithmetic; 16-bit weights halve the bytes read (fp16's product is still computed
    in fp32). Outputs differ from fp32 by about 1e-3 relative (fp16) or 1e-2 (bf16). fbgemm's fp16
    product is the faster for few rows and bf16 hardware for many, so fp16 up to
    PACKED_FP16_MAX_ROWS rows (greedy decoding of a batch, one live phrase), bf16 above (beam
    search over a batch). Inference only: no gradients.
    """

    def __init__(self, linear_weight: Tensor, bias: Optional[Tensor] = None, bf16: bool = False):
        super().__init__()
        bias = None if bias is None else bias.detach().float().contiguous()
        self.n_params = linear_weight.numel() + (
            0 if bias is None else bias.numel()
        )  # not parameters() any more
        self.packed = torch.ops.quantized.linear_prepack_fp16(
            linear_weight.detach().float().contiguous(), bias
        )
        self.weight = linear_weight.detach().bfloat16() if bf16 else None
        self.bias = bias

    def forward(self, x: Tensor) -> Tensor:
        if self.weight is not None and x.numel() > PACKED_FP16_MAX_ROWS * x.shape[-1]:
            y = F.linear(x.bfloat16(), self.weight).float()
            return y if self.bias is None else y + self.bias
        return torch.ops.quantized.linear_dynamic_fp16(x.float(), self.packed)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, from /proc/cpuinfo's 'flags' lines (none if it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(
        flag for line in re.findall(r"^flags\s*:(.*)$", text, re.M) for flag in line.split()
    )


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX). Only there is bf16
    worth it: elsewhere it is emulated, and slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles for bf16: only with them is SDPA's bf16 kernel fast on one
    query (one_query_attention)."""
    return "amx_bf16" in cpu_flags()


def pack_for_cpu(model: M.Whisper, bf16: Optional[bool] = None) -> M.Whisper:
    """Swap the decoder's per-token linear layers and its output projection for PackedLinear, and on
    a CPU with bf16 hardware (`bf16` None: cpu_has_bf16()) run the encoder under bf16 autocast and
    keep cross-attention keys/values in bf16.

    In place; returns the model. A decoding step reads every cross-attention key and value of
    every row (memory-bound: 6 MB per layer for 8 rows of 5 s), and bf16 halves that; the encoder's
    products are arithmetic-bound, which bf16 hardware does twice as fast; the WER stays the same.
    The weights autocast would cast at every read are kept in bf16: the same values, cast once.
    A packed model is for decoding only: save and train the unpacked one.
    """
    if model.device.type != "cpu" or "fbgemm" not in torch.backends.quantized.supported_engines:
        return model
    for block in model.decoder.blocks:
        layers = [(block.attn, n) for n in ("query", "key", "value", "out")]
        layers += [
            (block.cross_attn, n) for n in ("query", "out")
        ]  # cross keys/values: once per audio
        layers += [(block.mlp, "0"), (block.mlp, "2")]
        for parent, name in layers:
            linear = getattr(parent, name)
            setattr(parent, name, PackedLinear(linear.weight, linear.bias))
    bf16 = cpu_has_bf16() if bf16 is None else bf16
    model.decoder.packed_projection = PackedLinear(model.decoder.token_embedding.weight, bf16=bf16)
    model.decoder.packed_projection.n_params = 0  # tied: the token embedding still counts it
    if bf16:
        model.encoder_autocast = torch.bfloat16
        for block in model.decoder.blocks:
            block.cross_attn.kv_dtype = torch.bfloat16
        # the weights autocast would cast to bf16 at every read, cast once: same values, no copies
        linears = [
            layer
            for b in model.encoder.blocks
            for layer in (b.attn.query, b.attn.key, b.attn.value, b.attn.out, b.mlp[0], b.mlp[2])
        ]
        linears += [
            layer for b in model.decoder.blocks for layer in (b.cross_attn.key, b.cross_attn.value)
        ]
        for layer in linears:
            layer.to(torch.bfloat16)
    return model
