"""Export: write a model the project loads (a student from `train`, or any Whisper weights) in the
formats the runtimes users deploy read: OpenAI's .pt (openai-whisper), a CTranslate2 folder
(faster-whisper), a ggml file (whisper.cpp) and a Hugging Face folder (transformers). Every file is
written here, by hand, with the tokenizer files each runtime needs; no converter package runs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import struct
from pathlib import Path
from typing import Callable

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
# 0. Files: a folder written whole or not at all
# ----------------------------------------------------------------------------------------------


def json_bytes(value, indent: int | None = 2) -> bytes:
    return (json.dumps(value, ensure_ascii=False, indent=indent) + "\n").encode("utf-8")


def write_folder(out: Path, files: dict[str, bytes | Callable[[Path], object]]) -> list[Path]:
    """Write a folder whole or not at all: each file (bytes, or a function writing that path) goes
    into a hidden sibling, which is renamed to `out` once every file is there."""
    tmp = out.parent / f".{out.name}.{secrets.token_hex(8)}.tmp"
    tmp.mkdir(parents=True)
    try:
        for name, content in files.items():
            if callable(content):
                content(tmp / name)
            else:
                fileio.write_atomic(tmp / name, content)
        os.rename(tmp, out)  # fails, rather than replace, if `out` appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / name for name in files]


# ----------------------------------------------------------------------------------------------
# 1. OpenAI's .pt
# ----------------------------------------------------------------------------------------------


def write_pt(model: M.Whisper, extra: dict, out: Path, quantization: str) -> list[Path]:
    """OpenAI's checkpoint (dims + model_state_dict), which openai-whisper loads as it is; the
    vocabulary and a student's "fastwhisper" entry ride along, so the project reads it back as the
    same model (a student still reads audio trimmed). float16 halves every tensor."""
    half = quantization == "float16"
    return [weight_files.save_model(model, out, half=half, extra=extra)]


# ----------------------------------------------------------------------------------------------
# 2. CTranslate2 (faster-whisper)
# ----------------------------------------------------------------------------------------------
# A folder: model.bin (the layout weight_files.read_ct2_variables reads, under the names
# weight_files.ct2_to_openai maps back), config.json (what ctranslate2 reads to decode, and a
# student's "fastwhisper" entry, which weight_files hands back), vocabulary.json and
# preprocessor_config.json (faster-whisper's feature sizes) and the tokenizer.json of section 4,
# which faster-whisper reads its tokenizer from.
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
    return [
        _byte_level(tok.token_bytes(i))  # section 4's byte-level characters
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
        # faster-whisper reads its tokenizer from here (section 4 writes it)
        "tokenizer.json": hf_tokenizer_files(model.tokenizer, model.dims.n_text_ctx)[
            "tokenizer.json"
        ],
    }
    return write_folder(out, files)


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


# A Hugging Face Whisper folder: config.json, generation_config.json, model.safetensors,
# preprocessor_config.json and the tokenizer files. The tokenizer is a byte-level BPE: the
# vocabulary as byte-level strings, merges, and Whisper's special tokens added after the ordinary
# ones. The project's tokenizer has ranks, not merges: its rule (join the adjacent pair whose union
# has the lowest rank) is a BPE whose merges are every split of every token into two tokens,
# ordered by the joined token's rank. A word that is a token is taken whole (ignore_merges), as
# the project does.

_BYTE_TO_CHAR = {b: c for c, b in tokenization._BYTE_LEVEL_CHARS.items()}
HF_MAX_LENGTH = 448  # Whisper's text context, every size


def _byte_level(token: bytes) -> str:
    return "".join(_BYTE_TO_CHAR[b] for b in token)


def hf_merges(tokenizer: tokenization.Tokenizer) -> list[tuple[str, str]]:
    """BPE merges (byte-level strings) equivalent to the tokenizer's ranks."""
    ranks = {}
    for i in range(tokenizer.eot):
        token = tokenizer.token_bytes(i)
        if token:  # the empty token of multilingual vocabularies is never produced
            ranks.setdefault(token, i)
    merges = []
    for token, rank in ranks.items():
        for k in range(1, len(token)):
            a, b = ranks.get(token[:k]), ranks.get(token[k:])
            if a is not None and b is not None:
                merges.append((rank, a, b, token[:k], token[k:]))
    merges.sort()
    return [(_byte_level(a), _byte_level(b)) for *_, a, b in merges]


def hf_tokenizer_files(
    tokenizer: tokenization.Tokenizer, max_length: int = HF_MAX_LENGTH
) -> dict[str, bytes]:
    """The tokenizer files of a Hugging Face Whisper folder (file name -> content): tokenizer.json
    (what the `tokenizers` library and faster-whisper read), and vocab.json, merges.txt,
    added_tokens.json, special_tokens_map.json, tokenizer_config.json (what transformers reads)."""
    tok = tokenizer
    vocab = {_byte_level(tok.token_bytes(i)): i for i in range(tok.eot)}
    eot_name = "<|endoftext|>"
    vocab[eot_name] = tok.eot
    # every special token, at Whisper's ids; timestamps are not "special" in transformers' sense:
    # its Whisper tokenizer finds the first timestamp right after the last special token
    names = [tok.token_bytes(i).decode() for i in range(tok.eot, tok.n_vocab)]
    specials = [n for i, n in enumerate(names, tok.eot) if i < tok.timestamp_begin]
    added = [
        {
            "id": i,
            "content": name,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": i < tok.timestamp_begin,
        }
        for i, name in enumerate(names, tok.eot)
    ]
    merges = hf_merges(tok)
    prefix = ["<|startoftranscript|>", "<|notimestamps|>"]
    template = {
        "type": "TemplateProcessing",
        "single": [
            *({"SpecialToken": {"id": p, "type_id": 0}} for p in prefix),
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": eot_name, "type_id": 0}},
        ],
        "pair": [
            *({"SpecialToken": {"id": p, "type_id": 0}} for p in prefix),
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
            {"SpecialToken": {"id": eot_name, "type_id": 1}},
        ],
        "special_tokens": {
            name: {"id": name, "ids": [names.index(name) + tok.eot], "tokens": [name]}
            for name in [eot_name, *prefix]
        },
    }
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": template,
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": [list(m) for m in merges],
        },
    }
    named = {key: eot_name for key in ("bos_token", "eos_token", "pad_token", "unk_token")}
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added
        },
        "additional_special_tokens": specials,
        **named,
        "clean_up_tokenization_spaces": False,  # the text exactly as decoded, like the project's
        "errors": "replace",
        "model_max_length": max_length,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "tokenizer_class": "WhisperTokenizer",
    }
    return {
        "tokenizer.json": json_bytes(tokenizer_json, indent=None),
        "vocab.json": json_bytes(vocab, indent=None),
        "merges.txt": ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode(),
        "added_tokens.json": json_bytes(
            {n: i for i, n in enumerate(names, tok.eot) if n != eot_name}
        ),
        "special_tokens_map.json": json_bytes({"additional_special_tokens": specials, **named}),
        "tokenizer_config.json": json_bytes(config),
    }


def hf_configs(model: M.Whisper, extra: dict, dtype: str) -> dict[str, bytes]:
    """config.json, generation_config.json and preprocessor_config.json of the model."""
    d, tok = model.dims, model.tokenizer
    if d.n_audio_state != d.n_text_state:
        raise ExportError(
            f"an encoder {d.n_audio_state} wide and a decoder {d.n_text_state} wide: "
            f"a Hugging Face Whisper has one width (d_model)"
        )
    config, _ = weight_files.openai_to_hf(model)
    # what Whisper's decoding suppresses: non-speech symbols and the start sequence's specials
    suppress = sorted(
        {
            *tok.non_speech_tokens,
            tok.transcribe,
            tok.translate,
            tok.sot,
            tok.sot_prev,
            tok.sot_lm,
            tok.no_speech,
        }
    )
    begin_suppress = [*tok.encode(" "), tok.eot]
    ids = {"pad_token_id": tok.eot, "bos_token_id": tok.eot, "eos_token_id": tok.eot}
    config.update(
        {
            **ids,
            "decoder_start_token_id": tok.sot,
            "suppress_tokens": suppress,
            "begin_suppress_tokens": begin_suppress,
            "activation_function": "gelu",
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "activation_dropout": 0.0,
            "encoder_layerdrop": 0.0,
            "decoder_layerdrop": 0.0,
            "init_std": 0.02,
            "scale_embedding": False,
            "use_cache": True,
            "is_encoder_decoder": True,
            "tie_word_embeddings": True,
            "use_weighted_layer_sum": False,
            "classifier_proj_size": 256,
            "apply_spec_augment": False,
            "mask_time_prob": 0.05,
            "mask_time_length": 10,
            "mask_time_min_masks": 2,
            "mask_feature_prob": 0.0,
            "mask_feature_length": 10,
            "mask_feature_min_masks": 0,
            "median_filter_width": 7,
            "torch_dtype": dtype,
        }
    )
    if extra.get("fastwhisper"):  # a student: how it reads audio (weight_files.read_hf_folder)
        config["fastwhisper"] = extra["fastwhisper"]
    # word timestamps' heads: without a measured set, OpenAI's default, the later half's heads
    heads = [
        [layer, h]
        for layer in range(d.n_text_layer // 2, d.n_text_layer)
        for h in range(d.n_text_head)
    ]
    generation = {
        **ids,
        "decoder_start_token_id": tok.sot,
        "alignment_heads": heads,
        "begin_suppress_tokens": begin_suppress,
        "suppress_tokens": suppress,
        "is_multilingual": tok.multilingual,
        "max_initial_timestamp_index": 50,  # 1 s, Whisper's max_initial_timestamp
        "max_length": d.n_text_ctx,
        "no_timestamps_token_id": tok.no_timestamps,
        "prev_sot_token_id": tok.sot_prev,
        "return_timestamps": False,
    }
    if tok.multilingual:
        generation["lang_to_id"] = {f"<|{c}|>": tok.language_token(c) for c in tok.language_codes}
        generation["task_to_id"] = {"transcribe": tok.transcribe, "translate": tok.translate}
    return {
        "config.json": json_bytes(config),
        "generation_config.json": json_bytes(generation),
        "preprocessor_config.json": json_bytes(preprocessor_config(model)),
    }


def write_hf(model: M.Whisper, extra: dict, out: Path, quantization: str) -> list[Path]:
    """A folder transformers loads with WhisperForConditionalGeneration.from_pretrained and
    WhisperProcessor.from_pretrained; the project reads it back too (a student as a student)."""
    dtype = {"float32": torch.float32, "float16": torch.float16}[quantization]
    _, tensors = weight_files.openai_to_hf(model)
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in tensors.items()}
    files: dict = {
        **hf_configs(model, extra, quantization),
        "model.safetensors": lambda path: weight_files.write_safetensors(tensors, path),
        **hf_tokenizer_files(model.tokenizer, model.dims.n_text_ctx),
    }
    return write_folder(out, files)


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
