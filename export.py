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
    "ggml": ("f16", "f32"),
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


def write_ggml(model: M.Whisper, extra: dict, out: Path, quantization: str) -> list[Path]:
    raise NotImplementedError


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
