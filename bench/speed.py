"""Speed of whole models, side by side in one run: real-time factor, per-token latency, WER.

    python fastwhisper.py bench                        # tiny.en on the default corpus's test split
    python fastwhisper.py bench --model tiny.en --model runs/askd/student.pt --long

Every model sees the same audio, already decoded to waveforms, so ffmpeg is not timed. Each model is
warmed up on one file first. Decoding is greedy at temperature 0 (no fallback), so the work is the
same from run to run. Each model is run the way it is meant to be used: Whisper on 30-second windows
with timestamps, a student from `train` on its trimmed input (askd.transcribe_trimmed). The first
model is the baseline of the speed-up column.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import askd  # noqa: E402
import data  # noqa: E402
import model as M  # noqa: E402


def default_audio(limit: int):
    """The test split of the default corpus, longest first dropped to `limit` files spread over it."""
    test = data.split_corpus(data.asterisk_corpus())["test"]
    step = max(1, len(test) // limit)
    return test[::step][:limit]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def per_token_latency(whisper: M.Whisper, audios: list[np.ndarray]) -> tuple[float, int]:
    """Milliseconds per decoded token, the encoder excluded (features computed beforehand)."""
    total_time, total_tokens = 0.0, 0
    for audio in audios:
        mel = data.log_mel_spectrogram(data.pad_or_trim(audio), whisper.dims.n_mels)[None].to(whisper.device)
        with torch.no_grad():
            features = whisper.embed_audio(mel)
        results, seconds = timed(lambda: M.decode(whisper, options=M.DecodingOptions(language="en"),
                                                  audio_features=features))
        total_time += seconds
        total_tokens += len(results[0].tokens) + 1        # + the end-of-text step
    return 1000 * total_time / max(total_tokens, 1), total_tokens


def bench_models(models: list[str], files: list[str], device: str = "cpu", limit: int = 40,
                 batch_size: int = 1, long_audio: bool = False) -> list[dict]:
    if files:
        utterances = [data.Utterance(id=Path(f).stem, audio=f, text=None) for f in files[:limit]]
    else:
        utterances = default_audio(limit)
    audios = [data.load_audio(u.audio) for u in utterances]
    seconds_of_audio = sum(len(a) for a in audios) / data.SAMPLE_RATE
    refs = [u.text for u in utterances]
    joined = None
    if long_audio:
        gap = np.zeros(data.SAMPLE_RATE // 2, dtype=np.float32)
        joined = np.concatenate([x for a in audios for x in (a, gap)])

    print(f"{len(audios)} files, {seconds_of_audio:.1f} s of audio, device {device}, "
          f"{torch.get_num_threads()} threads, batch {batch_size}")
    rows = []
    for name in models:
        whisper = M.load_model(name, device=device)
        mode = askd.model_input_mode(name)
        if mode["input"] == "trimmed":
            run = lambda xs: askd.transcribe_trimmed(whisper, xs, batch_size, mode["round_frames"])
        else:
            run = lambda xs: M.transcribe_many(whisper, xs, temperature=0.0, batch_size=batch_size)
        run(audios[:1])                                                    # warm-up
        results, seconds = timed(lambda: run(audios))
        row = {"model": name, "params (M)": whisper.num_parameters() / 1e6, "input": mode["input"], "seconds": seconds,
               "RTF": seconds / seconds_of_audio, "s / file": seconds / len(audios)}
        if mode["input"] == "padded":
            row["ms / token"], _ = per_token_latency(whisper, audios[: min(8, len(audios))])
        if all(refs):
            row["WER %"] = 100 * data.wer(refs, [r["text"] for r in results])
        if joined is not None:
            _, row["long s"] = timed(lambda: run([joined]))
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["speed-up"] = base["seconds"] / row["seconds"]
        if joined is not None:
            row["long speed-up"] = base["long s"] / row["long s"]
    print(askd.format_table(rows, columns=list(dict.fromkeys(k for row in rows for k in row))))
    if joined is not None:
        print(f"long recording: {len(joined) / data.SAMPLE_RATE:.0f} s")
    return rows


if __name__ == "__main__":
    bench_models(sys.argv[1:] or ["tiny.en"], [])
