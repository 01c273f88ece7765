"""Speed of whole models, side by side in one run: seconds, real-time factor, speed-up, WER.

    python fastwhisper.py bench                   # the teacher and runs/askd/student.pt, if trained
    python fastwhisper.py bench --model tiny.en --model runs/askd/student.pt --batch-size 1
    python -m bench.speed tiny.en runs/askd/student.pt    # from the repository's root

Two inputs: `limit` files of the default corpus's test split (or the files given), and one long
recording made by joining every test utterance (or every file given) with half a second of silence
between them (5 minutes for the default corpus). Every model
sees the same waveforms, decoded beforehand, so ffmpeg is not timed; each is warmed up on one file
first. Decoding is greedy at temperature 0 (no fallback), so the work is the same from run to run.

Each model runs the way it is meant to be used: Whisper on 30 s windows with timestamps, a student
from `train` on its trimmed input (transcribe.Student; long audio cut at pauses). The rows:
  - a Whisper model as stored (fp32): the baseline of every speed-up;
  - the same with its decoder packed in fp16 for the CPU (cpu.pack_for_cpu), to show how much
    of a student's speed comes from that alone;
  - with a student: the teacher-exact mode (the teacher decoding, the student drafting: the
    teacher's own transcript, checked here, only sooner);
  - the student, fp32 and packed (its default).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

import audio_io
import data
import text_norm
import transcribe

DEFAULT_STUDENT = Path("runs/askd/student.pt")
GAP_SECONDS = 0.5


def default_audio(limit: int):
    """`limit` utterances spread over the test split of the default corpus."""
    test = data.split_corpus(data.asterisk_corpus())["test"]
    step = max(1, len(test) // limit)
    return test[::step][:limit]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def join_audio(audios: list[np.ndarray]) -> np.ndarray:
    gap = np.zeros(int(GAP_SECONDS * audio_io.SAMPLE_RATE), dtype=np.float32)
    return np.concatenate([x for a in audios for x in (a, gap)][:-1])


def contenders(models: list[str], device: str) -> list[transcribe.Recognizer]:
    """What to time: every model in fp32 and, on the CPU, with its decoder packed in fp16; before a
    model that can draft (a student), the first model drafted by it (teacher-exact mode)."""
    out, first = [], None
    for name in models:
        plain = transcribe.load_recognizer(name, device, "fp32")
        if first is None:
            first = plain
        else:
            try:
                out.append(first.drafted_by(plain))
            except ValueError:  # a Whisper model cannot draft; a student is not drafted for
                pass
        out += [plain] + (
            [transcribe.load_recognizer(name, device, "fp16")] if device == "cpu" else []
        )
    return out


def bench_models(
    models: list[str],
    files: list[str],
    device: str = "cpu",
    limit: int = 40,
    batch_size: int = 8,
    long_audio: bool = True,
) -> list[dict]:
    if not models:
        models = ["tiny.en"] + ([str(DEFAULT_STUDENT)] if DEFAULT_STUDENT.is_file() else [])
    if files:
        utterances = [data.Utterance(id=Path(f).stem, audio=f, text=None) for f in files]
        long_utterances, utterances = utterances, utterances[:limit]
    else:
        long_utterances = data.split_corpus(data.asterisk_corpus())["test"]  # every test utterance
        utterances = default_audio(limit)
    audios = [audio_io.load_audio(u.audio, cache=True) for u in utterances]
    seconds_of_audio = sum(len(a) for a in audios) / audio_io.SAMPLE_RATE
    refs = [u.text for u in utterances]
    joined = (
        join_audio([audio_io.load_audio(u.audio, cache=True) for u in long_utterances])
        if long_audio
        else None
    )
    joined_ref = (
        " ".join(u.text for u in long_utterances) if all(u.text for u in long_utterances) else None
    )

    print(
        f"{len(audios)} files, {seconds_of_audio:.1f} s of audio"
        + (
            f"; long recording {len(joined) / audio_io.SAMPLE_RATE:.1f} s"
            if joined is not None
            else ""
        )
        + f"; device {device}, {torch.get_num_threads()} threads, batch {batch_size}",
        file=sys.stderr,
    )
    rows, baseline = [], {}
    greedy = transcribe.TranscribeOptions(temperature=0.0)
    for c in contenders(models, device):
        run = lambda xs, c=c: c.transcribe(xs, greedy, batch_size)  # noqa: E731
        how = "exact" if c.draft is not None else c.input
        run(audios[:1])  # warm-up
        results, seconds = timed(lambda: run(audios))
        texts = [r["text"] for r in results]
        row = {
            "model": c.name + (" + draft" if c.draft is not None else ""),
            "weights": c.weights,
            "input": how,
            "seconds": seconds,
            "RTF": seconds / seconds_of_audio,
        }
        if all(refs):
            row["WER %"] = 100 * text_norm.wer(refs, texts)
        if joined is not None:
            long_result, row["long s"] = timed(lambda: run([joined]))
            row["long RTF"] = row["long s"] * audio_io.SAMPLE_RATE / len(joined)
            if joined_ref:
                row["long WER %"] = 100 * text_norm.wer([joined_ref], [long_result[0]["text"]])
            texts.append(long_result[0]["text"])
        if not rows:
            baseline = {"seconds": seconds, "long s": row.get("long s"), "texts": texts}
        elif how == "exact":  # the teacher's transcripts, word for word?
            same = sum(a == b for a, b in zip(texts, baseline["texts"]))
            row["same text"] = f"{same}/{len(texts)}"
        rows.append(row)
        print(f"  {row['model']} ({c.weights}, {how}): {seconds:.2f} s", file=sys.stderr)
    for row in rows:
        row["speed-up"] = baseline["seconds"] / row["seconds"]
        if joined is not None:
            row["long speed-up"] = baseline["long s"] / row["long s"]
    columns = [
        "model",
        "weights",
        "input",
        "seconds",
        "RTF",
        "speed-up",
        "WER %",
        "long s",
        "long RTF",
        "long speed-up",
        "long WER %",
        "same text",
    ]
    print(transcribe.format_table(rows, columns=columns))
    return rows


if __name__ == "__main__":
    bench_models(sys.argv[1:], [])
