"""Writing results: txt, srt, vtt, tsv and json files, and the live line of `stream`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import fileio

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
        return "".join(
            f"{i}\n{format_timestamp(s['start'], True, True)} --> "
            f"{format_timestamp(s['end'], True, True)}\n"
            f"{s['text'].strip().replace('-->', '->')}\n\n"
            for i, s in enumerate(segments, 1)
        )
    if fmt == "vtt":
        return "WEBVTT\n\n" + "".join(
            f"{format_timestamp(s['start'])} --> {format_timestamp(s['end'])}\n"
            f"{s['text'].strip().replace('-->', '->')}\n\n"
            for s in segments
        )
    if fmt == "tsv":
        return "start\tend\ttext\n" + "".join(
            f"{round(1000 * s['start'])}\t{round(1000 * s['end'])}\t"
            f"{s['text'].strip().replace(chr(9), ' ')}\n"
            for s in segments
        )
    if fmt == "json":
        return json.dumps(result, ensure_ascii=False)
    raise ValueError(
        f"unknown output format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)} or all"
    )


def output_names(
    audio_paths: Sequence[str | Path], output_dir: str | Path, fmt: str = "txt"
) -> list[str]:
    """A distinct output name (stem) for each input: its own stem (`talk.wav` -> `talk`), or
    `talk-2`, `talk-3`, ... when an earlier input already took it (a/same.wav and b/same.wav) or
    when one of its outputs would overwrite an input file (clip.json transcribed to json in its own
    folder)."""
    inputs = {os.path.realpath(p) for p in audio_paths}
    suffixes = OUTPUT_FORMATS if fmt == "all" else (fmt,)
    taken, names = set(), []
    for path in audio_paths:
        stem = name = Path(path).stem
        n = 1
        while name.lower() in taken or any(
            os.path.realpath(Path(output_dir) / f"{name}.{f}") in inputs for f in suffixes
        ):
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
        fileio.write_atomic(path, format_result(result, f).encode("utf-8"))
        written.append(path)
    return written


def live_line(event: dict, terminal: bool, width: int = 80) -> str:
    """How `stream` shows an event. In a terminal the open phrase's partial text is rewritten in
    place (its last `width` characters) and each final gets its own line; elsewhere only finals."""
    if event["type"] == "partial":
        return f"\r\033[K{event['text'][-(width - 1) :]}" if terminal else ""
    line = (
        f"[{format_timestamp(event['start'])} --> {format_timestamp(event['end'])}] "
        f"{event['text']}\n"
    )
    return "\r\033[K" + line if terminal else line
