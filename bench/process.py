"""Whole-process speed: `fastwhisper.py transcribe` run as a user runs it, each model in turn.

    python fastwhisper.py bench process                   # the teacher and runs/askd/student.pt
    python fastwhisper.py bench process --model tiny.en --model runs/askd/student.pt --repeat 4

What a user waits for: start-up (importing torch, reading and packing the weights), reading the
audio files, transcribing them in batches as `transcribe` does (default batch 8) and writing the
transcripts. The files are real speech of other people (real-speech-dev: 49 short recordings,
fetched on first use), each written once as a 16 kHz WAV and given `--repeat` times under distinct
names (links), so that a run is long enough for start-up not to hide the models' speed; 4 repeats
make 196 files. Every model
decodes text only (`--without-timestamps`: the same task for all), with transcribe's own defaults
otherwise (a Whisper model's temperature fallback included). Each model runs `--rounds` times and
its fastest round counts. The WER is of the transcripts written, against the recordings'
transcripts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import audio_io
import data
import text_norm
import transcribe
import writers

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "real-speech-dev"


def linked_files(utts: list, repeat: int, folder: Path) -> tuple[list[str], list[str]]:
    """Each utterance's audio as a 16 kHz WAV under folder, linked `repeat` times, and the reference
    of each link. (Some recordings come as flac or mp3; decoding those starts an ffmpeg process per
    file, which would weigh the same on every model and hide their difference.)"""
    paths, refs = [], []
    for i, u in enumerate(utts):
        wav = audio_io.save_wav(folder / f"{i:04d}.wav", audio_io.load_audio(u.audio, cache=True))
        for r in range(repeat):
            link = folder / f"{r}-{i:04d}.wav"
            link.symlink_to(wav)
            paths.append(str(link))
            refs.append(u.text)
    order = sorted(
        range(len(paths)), key=lambda j: Path(paths[j]).name
    )  # copy 0 of all, then copy 1, ...
    return [paths[j] for j in order], [refs[j] for j in order]


def is_student(model: str) -> bool:
    """Whether the model is a student from `train` (trimmed input), not a Whisper model."""
    return isinstance(transcribe.load_recognizer(model), transcribe.Student)


def transcribe_process(
    model: str, files: list[str], options: list[str], threads: int = 0
) -> tuple[float, list]:
    """Run `fastwhisper.py transcribe FILES --model MODEL OPTIONS` as a user would, writing JSON:
    (seconds the whole process took, each file's result as `transcribe` wrote it)."""
    with tempfile.TemporaryDirectory() as out:
        argv = [
            sys.executable,
            str(ROOT / "fastwhisper.py"),
            "transcribe",
            *files,
            "--model",
            model,
            "-q",
            "-o",
            out,
            "-f",
            "json",
            *options,
            *(["--threads", str(threads)] if threads else []),
        ]
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise ValueError(f"{model}: transcribe failed: {done.stderr.strip().splitlines()[-1:]}")
        names = writers.output_names(files, out, "json")
        return seconds, [json.loads((Path(out) / f"{name}.json").read_text()) for name in names]


def run_model(
    model: str, files: list[str], refs: list[str], rounds: int, threads: int, batch_size: int
) -> dict:
    options = ["--batch-size", str(batch_size), "--without-timestamps"]
    runs = [transcribe_process(model, files, options, threads) for _ in range(rounds)]
    hyps = [r["text"].strip() for r in runs[-1][1]]
    return {
        "model": model,
        "files": len(files),
        "seconds": min(s for s, _ in runs),
        "WER %": 100 * text_norm.wer(refs, hyps),
    }


def process_table(
    models: list[str],
    repeat: int = 4,
    rounds: int = 1,
    threads: int = 0,
    batch_size: int = 8,
    source: str = SOURCE,
) -> list[dict]:
    """Time every model's whole transcribe process on the same files; print and return the table."""
    utts = [u for u in data.load_source(source) if u.text]
    with tempfile.TemporaryDirectory() as folder:
        files, refs = linked_files(utts, repeat, Path(folder))
        rows = []
        for model in models:
            rows.append(run_model(model, files, refs, rounds, threads, batch_size))
            print(f"  {model}: {rows[-1]['seconds']:.1f} s", file=sys.stderr)
    for row in rows:
        row["speed-up"] = rows[0]["seconds"] / row["seconds"]
    print(
        f"{source}: {len(utts)} recordings x {repeat} = {len(files)} files, "
        f"whole `transcribe` processes, batch {batch_size}, best of {rounds}"
    )
    print(transcribe.format_table(rows, columns=["model", "files", "seconds", "WER %", "speed-up"]))
    return rows
