"""Export: write a model the project loads (a student from `train`, or any Whisper weights) in the
formats the runtimes users deploy read: OpenAI's .pt (openai-whisper), a CTranslate2 folder
(faster-whisper), a ggml file (whisper.cpp) and a Hugging Face folder (transformers). Every file is
written here, by hand, with the tokenizer files each runtime needs; no converter package runs.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import audio_io
import fileio
import model as M
import tokenization
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
# A folder: model.bin (the layout weight_files.read_ct2_variables reads, under the names
# weight_files.ct2_to_openai maps back), config.json (what ctranslate2 reads to decode, and a
# student's "fastwhisper" entry, which weight_files hands back), vocabulary.json and
# preprocessor_config.json (faster-whisper's feature sizes). faster-whisper also wants the
# tokenizer.json of section 4 in the same folder.
CT2_VERSION, CT2_SPEC, CT2_REVISION = 6, "WhisperSpec", 3
QKV = ("query", "key", "value")
CT2_CODES = {dtype: code for code, dtype in weight_files.CT2_DTYPES.items()}
# The decoder's settings as CTranslate2's WhisperSpec declares them (rank-0 variables).
CT2_DECODER_FLAGS = {
    "activation": (torch.int8, 3),  # GELU
    "alibi": (torch.int8, 0),
    "alibi_use_positive_positions": (torch.int8, 0),
    "alignment_heads": (torch.int16, 1),
    "alignment_layer": (torch.int16, -1),
    "pre_norm": (torch.int8, 1),
    "scale_alibi": (torch.int8, 0),
    "scale_embeddings": (torch.int8, 0),
    "start_from_zero_embedding": (torch.int8, 0),
}


def openai_to_ct2(model: M.Whisper) -> dict[str, Tensor]:
    """The model's tensors under CTranslate2's names (weight_files.ct2_to_openai's inverse), fp32:
    query, key and value fused into one projection, the key's missing bias as zeros."""
    sd = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    v: dict[str, Tensor] = {}

    def linear(dst: str, src: str):
        v[f"{dst}/weight"] = sd[f"{src}.weight"]
        if f"{src}.bias" in sd:
            v[f"{dst}/bias"] = sd[f"{src}.bias"]

    def norm(dst: str, src: str):
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fused(dst: str, srcs: list[str]):
        v[f"{dst}/weight"] = torch.cat([sd[f"{s}.weight"] for s in srcs])
        v[f"{dst}/bias"] = torch.cat(
            [sd.get(f"{s}.bias", torch.zeros(sd[f"{s}.weight"].shape[0])) for s in srcs]
        )

    d = model.dims
    for part in ("conv1", "conv2"):
        linear(f"encoder/{part}", f"encoder.{part}")
    v["encoder/position_encodings/encodings"] = sd["encoder.positional_embedding"]
    for side, n_layer in (("encoder", d.n_audio_layer), ("decoder", d.n_text_layer)):
        for i in range(n_layer):
            dst, src = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            fused(f"{dst}/self_attention/linear_0", [f"{src}.attn.{p}" for p in QKV])
            linear(f"{dst}/self_attention/linear_1", f"{src}.attn.out")
            norm(f"{dst}/self_attention/layer_norm", f"{src}.attn_ln")
            if side == "decoder":
                linear(f"{dst}/attention/linear_0", f"{src}.cross_attn.query")
                fused(f"{dst}/attention/linear_1", [f"{src}.cross_attn.{p}" for p in QKV[1:]])
                linear(f"{dst}/attention/linear_2", f"{src}.cross_attn.out")
                norm(f"{dst}/attention/layer_norm", f"{src}.cross_attn_ln")
            linear(f"{dst}/ffn/linear_0", f"{src}.mlp.0")
            linear(f"{dst}/ffn/linear_1", f"{src}.mlp.2")
            norm(f"{dst}/ffn/layer_norm", f"{src}.mlp_ln")
        v[f"{side}/num_heads"] = torch.tensor(
            d.n_audio_head if side == "encoder" else d.n_text_head, dtype=torch.int16
        )
    norm("encoder/layer_norm", "encoder.ln_post")
    norm("decoder/layer_norm", "decoder.ln")
    v["decoder/embeddings/weight"] = sd["decoder.token_embedding.weight"]
    v["decoder/projection/weight"] = sd["decoder.token_embedding.weight"]  # tied: an alias
    v["decoder/position_encodings/encodings"] = sd["decoder.positional_embedding"]
    for name, (dtype, value) in CT2_DECODER_FLAGS.items():
        v[f"decoder/{name}"] = torch.tensor(value, dtype=dtype)
    return v


def ct2_aliases(variables: dict[str, Tensor]) -> dict[str, str]:
    """{alias: target} for every tensor equal to one earlier in name order, as CTranslate2's
    converter finds them: the first name keeps the data, the others point to it."""
    first: dict[tuple, str] = {}
    aliases = {}
    for name in sorted(variables):
        t = variables[name]
        if t.ndim == 0:
            continue
        key = (t.dtype, tuple(t.shape), t.numpy().tobytes())
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def ct2_quantize(variables: dict[str, Tensor], quantization: str) -> dict[str, Tensor]:
    """Weights of the given type. int8 is CTranslate2's: each weight (linear, convolution, token
    embedding) rounded to int8 per output row, q = round(w * 127 / max|row|), with that row's
    scale 127 / max|row| beside it as NAME_scale (float32); everything else stays float32."""
    out = {}
    for name, t in variables.items():
        if not t.is_floating_point():
            out[name] = t
        elif quantization == "int8" and name.endswith("/weight"):
            rows = t.reshape(t.shape[0], -1)
            amax = rows.abs().amax(dim=1)
            amax[amax == 0] = 127.0
            # a tiny nonzero row must still give a scale float32 can hold
            amax = amax.clamp(min=127.0 / torch.finfo(torch.float32).max)
            scale = torch.full_like(amax, 127.0) / amax  # a true division, as numpy's
            out[name] = torch.round(rows * scale[:, None]).to(torch.int8).reshape(t.shape)
            out[f"{name}_scale"] = scale
        else:
            out[name] = t.half() if quantization == "float16" else t.float()
    return out


def ct2_model_bin(variables: dict[str, Tensor], aliases: dict[str, str]) -> bytes:
    """model.bin's bytes (format in weight_files, section 2): variables in name order, then the
    aliases."""

    def string(s: str) -> bytes:
        raw = s.encode("utf-8") + b"\0"
        return struct.pack("<H", len(raw)) + raw

    chunks = [struct.pack("<I", CT2_VERSION), string(CT2_SPEC), struct.pack("<I", CT2_REVISION)]
    names = sorted(n for n in variables if n not in aliases)
    chunks.append(struct.pack("<I", len(names)))
    for name in names:
        t = variables[name].contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        chunks += [
            string(name),
            struct.pack(f"<B{t.ndim}I", t.ndim, *t.shape),
            struct.pack("<BI", CT2_CODES[t.dtype], len(data)),
            data,
        ]
    chunks.append(struct.pack("<I", len(aliases)))
    for alias in sorted(aliases):
        chunks += [string(alias), string(aliases[alias])]
    return b"".join(chunks)


def ct2_config(model: M.Whisper, extra: dict) -> dict:
    """config.json: what ctranslate2 decodes by. suppress_ids are the tokens Whisper's "-1"
    suppresses (non-speech symbols and the start-sequence specials), suppress_ids_begin a blank and
    <|endoftext|>, alignment_heads every head of the decoder's second half (CTranslate2's default
    where a model's own table is unknown), lang_ids the language tokens."""
    tok, d = model.tokenizer, model.dims
    specials = [tok.transcribe, tok.translate, tok.sot, tok.sot_prev, tok.sot_lm, tok.no_speech]
    config = {
        "alignment_heads": [
            [layer, head]
            for layer in range(d.n_text_layer // 2, d.n_text_layer)
            for head in range(d.n_text_head)
        ],
        "lang_ids": list(tok.language_tokens),
        "suppress_ids": sorted(set(tok.non_speech_tokens) | set(specials)),
        "suppress_ids_begin": [*tok.encode(" "), tok.eot],
    }
    if extra.get("fastwhisper"):
        config["fastwhisper"] = extra["fastwhisper"]
    return config


def ct2_vocabulary(tok) -> list[str]:
    """Every token as CTranslate2 names it: ordinary tokens in GPT-2's byte-level characters,
    special tokens by name (<|endoftext|>, ..., <|30.00|>)."""
    to_char = {b: c for c, b in tokenization._BYTE_LEVEL_CHARS.items()}
    return [
        "".join(to_char[b] for b in tok.token_bytes(i))
        if i < tok.eot
        else tok.token_bytes(i).decode()
        for i in range(tok.n_vocab)
    ]


def preprocessor_config(model: M.Whisper) -> dict:
    """Hugging Face's WhisperFeatureExtractor settings; faster-whisper takes n_mels from here."""
    return {
        "chunk_length": audio_io.CHUNK_LENGTH,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": model.dims.n_mels,
        "hop_length": audio_io.HOP_LENGTH,
        "n_fft": audio_io.N_FFT,
        "n_samples": audio_io.N_SAMPLES,
        "nb_max_frames": audio_io.N_FRAMES,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "sampling_rate": audio_io.SAMPLE_RATE,
    }


def write_ct2(model: M.Whisper, extra: dict, out: Path, quantization: str) -> list[Path]:
    if model.tokenizer is None:
        raise ExportError("the model has no vocabulary; CTranslate2 needs one")
    if model.tokenizer.n_vocab != model.dims.n_vocab:
        raise ExportError(
            f"the vocabulary has {model.tokenizer.n_vocab} tokens, the model {model.dims.n_vocab}"
        )
    variables = openai_to_ct2(model)
    aliases = ct2_aliases(variables)
    variables = ct2_quantize({k: t for k, t in variables.items() if k not in aliases}, quantization)
    files = {
        "model.bin": ct2_model_bin(variables, aliases),
        "config.json": json_bytes(ct2_config(model, extra)),
        "vocabulary.json": json_bytes(ct2_vocabulary(model.tokenizer)),
        "preprocessor_config.json": json_bytes(preprocessor_config(model)),
    }
    return write_folder(out, files)


def json_bytes(value) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_folder(out: Path, files: dict[str, bytes]) -> list[Path]:
    """Write the files into a temporary sibling of `out`, then rename it to `out`: a failed export
    leaves no half model behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the model from other users
        for name, blob in files.items():
            fileio.write_atomic(tmp / name, blob)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / name for name in files]


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
