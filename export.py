"""Export: write a model the project loads (a student from `train`, or any Whisper weights) in the
formats the runtimes users deploy read: OpenAI's .pt (openai-whisper), a CTranslate2 folder
(faster-whisper), a ggml file (whisper.cpp) and a Hugging Face folder (transformers). Every file is
written here, by hand, with the tokenizer files each runtime needs; no converter package runs.
"""

from __future__ import annotations

from pathlib import Path

import model as M
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
