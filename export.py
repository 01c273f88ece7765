"""Export: write a model the project loads (a student from `train`, or any Whisper weights) in the
formats the runtimes users deploy read: OpenAI's .pt (openai-whisper), a CTranslate2 folder
(faster-whisper), a ggml file (whisper.cpp) and a Hugging Face folder (transformers). Every file is
written here, by hand, with the tokenizer files each runtime needs; no converter package runs.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

import audio_io
import fileio
import model as M
import weight_files

# format -> the weight types it can hold (the first is the default)
QUANTIZATIONS = {
    "pt": ("float32", "float16"),
    "ct2": ("float16", "float32", "int8"),
    "ggml": ("f16", "q8_0"),
    "hf": ("float32", "float16"),
}
FORMATS = tuple(QUANTIZATIONS)


class ExportError(ValueError):
    """Bad export input, said in one line."""


# ----------------------------------------------------------------------------------------------
# 1. OpenAI's .pt
# ----------------------------------------------------------------------------------------------


def write_pt(model: M.Whisper, extra: dict, out: Path, quantization: str) -> list[Path]:
    raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# 2. CTranslate2 (faster-whisper)
# ----------------------------------------------------------------------------------------------


def write_ct2(model: M.Whisper, extra: dict, out: Path, quantization: str) -> list[Path]:
    raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# 3. ggml (whisper.cpp)
# ----------------------------------------------------------------------------------------------


# whisper.cpp's model file (its loader, whisper_model_load), little-endian, no padding: i32 magic
# "ggml"; 11 x i32 sizes (n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
# n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype); the mel filter bank (i32
# n_mels, i32 n_fft/2+1, f32 values); the ordinary tokens (i32 count, then per token i32 length and
# its bytes); then each tensor: i32 rank, i32 name length, i32 ggml type, rank x i32 dims
# innermost first, the name, the values. whisper.cpp adds the special tokens itself, numbered
# from n_vocab: multilingual from 51865 up, with n_vocab - 51766 languages.
# The file type sets the type of the matrices (attention, MLP, token embedding); the conv kernels
# are f16 unless all is f32, positional embeddings, biases and norms always f32. No f32 file:
# whisper.cpp's conv (im2col) reads only f16 kernels and aborts on f32 ones (whisper.cpp #2557).
GGML_MAGIC = 0x67676D6C
GGML_FTYPES = {"f16": 1, "q8_0": 7}  # the file type: ggml_ftype's MOSTLY_F16, MOSTLY_Q8_0
GGML_F32, GGML_F16, GGML_Q8_0 = 0, 1, 8  # ggml_type of a tensor
GGML_MATRIX_TYPES = {"f16": GGML_F16, "q8_0": GGML_Q8_0}
Q8_BLOCK = 32  # q8_0: each run of 32 values of a row as an f16 scale and 32 int8
GGML_ENGLISH_VOCAB = 51864  # the one size of an English-only vocabulary whisper.cpp reads right


def ggml_kind(name: str, rank: int, quantization: str) -> int:
    """The ggml type whisper.cpp allocates for a tensor of this rank (in OpenAI's shape)."""
    if rank == 1 or name.endswith("positional_embedding"):
        return GGML_F32
    if rank == 3:  # the conv kernels
        return GGML_F16
    return GGML_MATRIX_TYPES[quantization]


def q8_0(values: np.ndarray) -> bytes:
    """ggml's q8_0 of a tensor (rows a multiple of 32 long): per block of 32 values, the f16
    scale amax/127 and the values / scale rounded half away from zero, as int8."""
    blocks = values.astype(np.float32).reshape(-1, Q8_BLOCK)
    scale = np.abs(blocks).max(axis=1, keepdims=True) / 127
    scaled = blocks * np.divide(1, scale, out=np.zeros_like(scale), where=scale > 0)
    packed = np.empty(len(blocks), dtype=[("d", "<f2"), ("qs", "i1", Q8_BLOCK)])
    packed["d"] = scale[:, 0]
    packed["qs"] = np.trunc(scaled + np.copysign(0.5, scaled))
    return packed.tobytes()


def ggml_tensors(model: M.Whisper, quantization: str) -> list[tuple[str, int, tuple, bytes]]:
    """(name, ggml type, shape, bytes) of each tensor whisper.cpp reads, in the type it
    allocates for it (ggml_kind); conv biases as [n, 1], the shape whisper.cpp adds them in."""
    state = model.state_dict()
    tensors = []
    for name, shape in M.weight_shapes(model.dims).items():
        values = state[name].detach().float().cpu().numpy().reshape(shape)
        kind = ggml_kind(name, len(shape), quantization)
        if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
            values = values.reshape(-1, 1)
        if kind == GGML_Q8_0 and values.shape[-1] % Q8_BLOCK:
            raise ExportError(
                f"{name}: rows of {values.shape[-1]} values do not split into q8_0 blocks of "
                f"{Q8_BLOCK}; use --quantize f16"
            )
        if kind == GGML_Q8_0:
            payload = q8_0(values)
        else:
            payload = values.astype("<f4" if kind == GGML_F32 else "<f2").tobytes()
        tensors.append((name, kind, values.shape, payload))
    return tensors


def ggml_bytes(model: M.Whisper, quantization: str) -> bytes:
    """The whole ggml file of a model, as whisper.cpp reads it (see GGML_MAGIC)."""
    dims, tok = model.dims, model.tokenizer
    if tok is None or tok.n_vocab != dims.n_vocab:
        raise ExportError(f"the model's vocabulary does not match its n_vocab {dims.n_vocab}")
    if not tok.multilingual and dims.n_vocab != GGML_ENGLISH_VOCAB:
        # whisper.cpp numbers an English-only model's special tokens for 99 languages
        raise ExportError(
            f"an English-only model of {dims.n_vocab} tokens: whisper.cpp reads only "
            f"{GGML_ENGLISH_VOCAB} (99 language tokens)"
        )
    if dims.n_audio_state != dims.n_text_state:
        raise ExportError(
            f"n_audio_state {dims.n_audio_state} != n_text_state {dims.n_text_state}: "
            f"whisper.cpp needs one width"
        )
    sizes = (
        dims.n_vocab,
        dims.n_audio_ctx,
        dims.n_audio_state,
        dims.n_audio_head,
        dims.n_audio_layer,
        dims.n_text_ctx,
        dims.n_text_state,
        dims.n_text_head,
        dims.n_text_layer,
        dims.n_mels,
        GGML_FTYPES[quantization],
    )
    filters = audio_io.mel_filters(dims.n_mels).numpy().astype("<f4")
    parts = [struct.pack("<12i", GGML_MAGIC, *sizes), struct.pack("<2i", *filters.shape)]
    parts.append(filters.tobytes())
    parts.append(struct.pack("<i", tok.eot))  # the ordinary tokens: specials are whisper.cpp's
    for i in range(tok.eot):
        word = tok.token_bytes(i)
        parts += [struct.pack("<i", len(word)), word]
    for name, kind, shape, payload in ggml_tensors(model, quantization):
        key = name.encode()
        parts.append(struct.pack(f"<3i{len(shape)}i", len(shape), len(key), kind, *shape[::-1]))
        parts += [key, payload]
    return b"".join(parts)


def write_ggml(model: M.Whisper, extra: dict, out: Path, quantization: str) -> list[Path]:
    """One ggml .bin that whisper.cpp loads (and pywhispercpp, and every app built on it). A
    student is a plain Whisper there; its trimmed reading is whisper.cpp's audio_ctx, set per
    input to the encoder positions the student reads (bench/export.py: read_whispercpp)."""
    return [fileio.write_atomic(out, ggml_bytes(model, quantization))]


# ----------------------------------------------------------------------------------------------
# 4. Hugging Face (transformers)
# ----------------------------------------------------------------------------------------------


def write_hf(model: M.Whisper, extra: dict, out: Path, quantization: str) -> list[Path]:
    raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# 5. The command
# ----------------------------------------------------------------------------------------------

WRITERS = {"pt": write_pt, "ct2": write_ct2, "ggml": write_ggml, "hf": write_hf}


def export(source: str, to: str, out: str | Path, quantization: str | None = None) -> list[Path]:
    """Read `source` (a name or a path, any format weight_files reads) and write it as `to` at
    `out`; the files written. Bad input raises ExportError or model.ModelError in one line."""
    if to not in WRITERS:
        raise ExportError(f"--to {to}: unknown format; use one of {', '.join(FORMATS)}")
    quantization = quantization or QUANTIZATIONS[to][0]
    if quantization not in QUANTIZATIONS[to]:
        raise ExportError(f"--quantize {quantization}: {to} holds {', '.join(QUANTIZATIONS[to])}")
    out = Path(out)
    if out.exists():
        raise ExportError(f"{out}: already exists; choose a new path")
    model, extra = weight_files.open_model(source)
    return WRITERS[to](model, extra, out, quantization)
