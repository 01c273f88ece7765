"""Long recordings of real speech: teacher and student side by side on one long recording each.

    python fastwhisper.py bench long                      # tiny.en and runs/askd/student.pt
    python fastwhisper.py bench long --model tiny.en --model runs/askd/student.pt --threads 2

The recordings: the 49 recordings of real-speech-dev (other people: read books, spontaneous talk,
cold, whispered and falsetto voices) one after another, once with 0.3 s of silence between them and
once with none, as a talk or a call with several speakers would run. Each model transcribes each
recording in a whole `transcribe` process, as a user runs it: a Whisper model twice, in Whisper's
long-form mode (timestamps, seeking, the temperature fallback: what users run) and text only
(`--without-timestamps`); a student once, its own way. For each: seconds, real-time factor (seconds
of work per second of audio), WER against the joined transcripts, the speed-up over the first
model's long-form run, and, for subtitles, how far the segments' times are from that run's
(median over the segments of |start difference| and |end difference|, each segment against the
reference segment it overlaps most).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import askd  # noqa: E402
import data  # noqa: E402
from bench.process import SOURCE, is_student, transcribe_process  # noqa: E402

GAPS = (0.3, 0.0)        # seconds of silence between recordings


def joined_recording(utts: list, gap: float) -> tuple[np.ndarray, str]:
    """The utterances' audio one after another with `gap` seconds of silence between, and their text."""
    silence = np.zeros(round(gap * data.SAMPLE_RATE), np.float32)
    audios = [data.load_audio(u.audio, cache=True) for u in utts]
    return np.concatenate([x for a in audios for x in (a, silence)][:-1]), " ".join(u.text.strip() for u in utts)


def cue_error(segments: list[dict], reference: list[dict]) -> float:
    """Median over `segments` (with text) of |start - start'| and |end - end'| in seconds, where ' is
    the reference segment it overlaps most (the nearest one when it overlaps none)."""
    reference = [r for r in reference if r["text"].strip()]
    errors = []
    for s in (s for s in segments if s["text"].strip()):
        def closeness(r):
            overlap = min(s["end"], r["end"]) - max(s["start"], r["start"])
            return overlap if overlap > 0 else overlap - 1e6         # no overlap: the nearest comes first
        best = max(reference, key=closeness)
        errors += [abs(s["start"] - best["start"]), abs(s["end"] - best["end"])]
    return float(np.median(errors)) if errors else float("nan")


def runs_of(models: list[str]) -> list[tuple[str, str, list[str]]]:
    """(model, mode, transcribe options): each model with timestamps (a Whisper model's long-form mode,
    a student's pieces) and text only."""
    runs = []
    for model in models:
        runs += [(model, "pieces" if is_student(model) else "long-form", []),
                 (model, "text only", ["--without-timestamps"])]
    return runs


def long_table(models: list[str], threads: int = 0, source: str = SOURCE) -> list[dict]:
    utts = [u for u in data.load_source(source) if u.text]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for gap in GAPS:
            audio, reference = joined_recording(utts, gap)
            path = data.save_wav(Path(folder) / f"joined-{gap}.wav", audio)
            seconds_of_audio = len(audio) / data.SAMPLE_RATE
            first = None
            for model, mode, options in runs_of(models):
                seconds, (result,) = transcribe_process(model, [str(path)], options, threads)
                first = first or (seconds, result["segments"])
                rows.append({"recording": f"{seconds_of_audio:.0f} s, gaps {gap} s", "model": model, "mode": mode,
                             "seconds": seconds, "RTF": seconds / seconds_of_audio,
                             "WER %": 100 * data.wer(reference, result["text"]), "speed-up": first[0] / seconds,
                             "cue error s": cue_error(result["segments"], first[1])})
                print(f"  {rows[-1]['recording']}: {model} ({mode}) {seconds:.1f} s, WER {rows[-1]['WER %']:.2f}%",
                      file=sys.stderr)
    print(f"{source}: {len(utts)} recordings joined; whole `transcribe` processes; cue error: median distance "
          f"of segment times from the first model's long-form segments")
    print(askd.format_table(rows, columns=["recording", "model", "mode", "seconds", "RTF", "WER %", "speed-up",
                                           "cue error s"]))
    return rows
