"""Long recordings of real speech: teacher and student side by side on one long recording each.

    python fastwhisper.py bench long                      # tiny.en and runs/askd/student.pt
    python fastwhisper.py bench long --model tiny.en --model runs/askd/student.pt --threads 2
    python fastwhisper.py bench pieces --model runs/askd/student.pt --threads 2  # pieces

The recordings: the 49 recordings of real-speech-dev (other people: read books, spontaneous talk,
cold, whispered and falsetto voices) one after another, once with 0.3 s of silence between them and
once with none, as a talk or a call with several speakers would run. Each model transcribes each
recording in whole `transcribe` processes, as a user runs it, twice: with timestamps (a Whisper
model's long-form mode: timestamps, seeking, the temperature fallback, what users run; a student's
timestamps, what `-f srt` or `json` gets) and text only (`--without-timestamps`, which is also what
a student gives for `-f txt`). For each: seconds, real-time factor (seconds
of work per second of audio), WER against the joined transcripts, the speed-up over the first
model's long-form run, and, for subtitles, how far the segments' times are from that run's
(median over the segments of |start difference| and |end difference|, each segment against the
reference segment it overlaps most). The first model, a Whisper model, also reads each recording
with SHIFTS seconds of silence before it, its times then taken back by as much: how far its own
cues move when only where its 30 s windows fall has changed, the scale for a student's.

`bench pieces` compares, inside one process, the ways a student can read the same two recordings:
how long its pieces may be, reading on from the last timestamp, the temperature fallback, text only.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import audio_io
import data
import text_norm
import transcribe
from bench.process import SOURCE, is_student, transcribe_process

GAPS = (0.3, 0.0)  # seconds of silence between recordings
SHIFTS = (0.5, 3.0)  # seconds of silence before the recording, for the teacher against itself


def joined_recording(utts: list, gap: float) -> tuple[np.ndarray, str]:
    """The utterances' audio in a row, `gap` seconds of silence between them, and their text."""
    silence = np.zeros(round(gap * audio_io.SAMPLE_RATE), np.float32)
    audios = [audio_io.load_audio(u.audio, cache=True) for u in utts]
    return np.concatenate([x for a in audios for x in (a, silence)][:-1]), " ".join(
        u.text.strip() for u in utts
    )


def cue_error(segments: list[dict], reference: list[dict]) -> float:
    """Median over `segments` (with text) of |start - start'| and |end - end'| in seconds, where '
    is the reference segment it overlaps most (the nearest one when it overlaps none)."""
    reference = [r for r in reference if r["text"].strip()]
    errors = []
    for s in (s for s in segments if s["text"].strip()):

        def closeness(r):
            overlap = min(s["end"], r["end"]) - max(s["start"], r["start"])
            return overlap if overlap > 0 else overlap - 1e6  # no overlap: the nearest comes first

        best = max(reference, key=closeness)
        errors += [abs(s["start"] - best["start"]), abs(s["end"] - best["end"])]
    return float(np.median(errors)) if errors else float("nan")


def runs_of(models: list[str]) -> list[tuple[str, str, list[str], float]]:
    """(model, mode, transcribe options, seconds of silence before the recording): each model with
    timestamps (a Whisper model's long-form mode, a student's pieces) and text only; and the first
    model's long-form again on the recording SHIFTS seconds later, if it is a Whisper model: how far
    its own cues move when nothing but where its 30 s windows fall has changed."""
    runs = []
    for i, model in enumerate(models):
        runs += [
            (model, "timestamps (srt, json)" if is_student(model) else "long-form", [], 0.0),
            (
                model,
                "text only (txt)" if is_student(model) else "text only",
                ["--without-timestamps"],
                0.0,
            ),
        ]
        if i == 0 and not is_student(model):
            runs += [(model, f"long-form, {shift:g} s later", [], shift) for shift in SHIFTS]
    return runs


def shifted_back(segments: list[dict], seconds: float) -> list[dict]:
    """Segments of a recording that had `seconds` of silence put before it, in its own times."""
    return [{**s, "start": s["start"] - seconds, "end": s["end"] - seconds} for s in segments]


def long_table(models: list[str], threads: int = 0, source: str = SOURCE) -> list[dict]:
    utts = [u for u in data.load_source(source) if u.text]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for gap in GAPS:
            audio, reference = joined_recording(utts, gap)
            seconds_of_audio = len(audio) / audio_io.SAMPLE_RATE
            first, paths = None, {}
            for model, mode, options, shift in runs_of(models):
                if shift not in paths:
                    silence = np.zeros(round(shift * audio_io.SAMPLE_RATE), np.float32)
                    paths[shift] = audio_io.save_wav(
                        Path(folder) / f"joined-{gap}-{shift}.wav", np.concatenate([silence, audio])
                    )
                path = paths[shift]
                seconds, (result,) = transcribe_process(model, [str(path)], options, threads)
                segments = shifted_back(result["segments"], shift)
                first = first or (seconds, segments)
                rows.append(
                    {
                        "recording": f"{seconds_of_audio:.0f} s, gaps {gap} s",
                        "model": model,
                        "mode": mode,
                        "seconds": seconds,
                        "RTF": seconds / seconds_of_audio,
                        "WER %": 100 * text_norm.wer(reference, result["text"]),
                        "speed-up": first[0] / seconds,
                        "cue error s": cue_error(segments, first[1]),
                    }
                )
                print(
                    f"  {rows[-1]['recording']}: {model} ({mode}) {seconds:.1f} s, "
                    f"WER {rows[-1]['WER %']:.2f}%",
                    file=sys.stderr,
                )
    print(
        f"{source}: {len(utts)} recordings joined; whole `transcribe` processes; "
        f"cue error: median distance of segment times from the first model's long-form segments"
    )
    print(
        transcribe.format_table(
            rows,
            columns=[
                "recording",
                "model",
                "mode",
                "seconds",
                "RTF",
                "WER %",
                "speed-up",
                "cue error s",
            ],
        )
    )
    return rows


PIECE_LENGTHS = (
    0.0,
    10.0,
    15.0,
    20.0,
    25.0,
    30.0,
)  # transcribe.JOIN_SECONDS to try (0: one per stretch of speech)


def pieces_table(student: str, teacher: str = "tiny.en", source: str = SOURCE) -> list[dict]:
    """One student, in one process, on the two long recordings: each piece length
    (transcribe.JOIN_SECONDS), then the default without reading on (transcribe.RESEEK_SECONDS),
    without the fallback, and text only; seconds of transcription (no start-up), WER, and the cue
    error against the teacher's long-form."""
    utts = [u for u in data.load_source(source) if u.text]
    reader, whisper = transcribe.load_recognizer(student), transcribe.load_recognizer(teacher)
    if not isinstance(reader, transcribe.Student):
        raise ValueError(f"{student}: bench pieces needs a student from `train`")
    defaults = (transcribe.JOIN_SECONDS, transcribe.RESEEK_SECONDS)
    variants = [
        (
            f"pieces up to {j:g} s" if j else "one piece per stretch of speech",
            j,
            defaults[1],
            True,
            True,
        )
        for j in PIECE_LENGTHS
    ]
    variants += [
        ("default, no reading on", defaults[0], math.inf, True, True),
        ("default, no fallback", defaults[0], defaults[1], False, True),
        ("default, text only", defaults[0], defaults[1], True, False),
    ]
    rows = []
    try:
        for gap in GAPS:
            audio, reference = joined_recording(utts, gap)
            cues = whisper.transcribe([audio], transcribe.TranscribeOptions())[0]["segments"]
            for name, join, reseek, fallback, timestamps in variants:
                transcribe.JOIN_SECONDS, transcribe.RESEEK_SECONDS = join, reseek
                options = transcribe.TranscribeOptions(
                    temperature=transcribe.TEMPERATURES if fallback else 0.0,
                    without_timestamps=not timestamps,
                )
                start = time.perf_counter()
                (result,) = reader.transcribe([audio], options)
                seconds = time.perf_counter() - start
                rows.append(
                    {
                        "recording": f"{len(audio) / audio_io.SAMPLE_RATE:.0f} s, gaps {gap} s",
                        "reading": name,
                        "seconds": seconds,
                        "WER %": 100 * text_norm.wer(reference, result["text"]),
                        "cue error s": cue_error(result["segments"], cues),
                    }
                )
                print(f"  {rows[-1]['recording']}: {name} {seconds:.2f} s", file=sys.stderr)
    finally:
        transcribe.JOIN_SECONDS, transcribe.RESEEK_SECONDS = defaults
    print(
        f"{source}: {len(utts)} recordings joined; {student}, in one process "
        f"(seconds without start-up); cue error against {teacher}'s long-form segments"
    )
    print(
        transcribe.format_table(
            rows, columns=["recording", "reading", "seconds", "WER %", "cue error s"]
        )
    )
    return rows
