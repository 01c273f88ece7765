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
from pathlib import Path
from typing import Callable

import torch

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
    """OpenAI's checkpoint (dims + model_state_dict), which openai-whisper loads as it is; the
    vocabulary and a student's "fastwhisper" entry ride along, so the project reads it back as the
    same model (a student still reads audio trimmed). float16 halves every tensor."""
    half = quantization == "float16"
    return [weight_files.save_model(model, out, half=half, extra=extra)]


# ----------------------------------------------------------------------------------------------
# 2. CTranslate2 (faster-whisper)
# ----------------------------------------------------------------------------------------------


def write_ct2(model: M.Whisper, extra: dict, out: Path, quantization: str) -> list[Path]:
    raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# 3. ggml (whisper.cpp)
# ----------------------------------------------------------------------------------------------


def write_ggml(model: M.Whisper, extra: dict, out: Path, quantization: str) -> list[Path]:
    raise NotImplementedError


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


def _json(doc, indent: int | None = 2) -> bytes:
    return (json.dumps(doc, ensure_ascii=False, indent=indent) + "\n").encode("utf-8")


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
        "tokenizer.json": _json(tokenizer_json, indent=None),
        "vocab.json": _json(vocab, indent=None),
        "merges.txt": ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode(),
        "added_tokens.json": _json({n: i for i, n in enumerate(names, tok.eot) if n != eot_name}),
        "special_tokens_map.json": _json({"additional_special_tokens": specials, **named}),
        "tokenizer_config.json": _json(config),
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
    preprocessor = {
        "chunk_length": audio_io.CHUNK_LENGTH,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": d.n_mels,
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
    return {
        "config.json": _json(config),
        "generation_config.json": _json(generation),
        "preprocessor_config.json": _json(preprocessor),
    }


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
