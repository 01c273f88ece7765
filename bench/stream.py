"""Live transcription: the test split replayed as a live stream, models side by side in one run.

    python fastwhisper.py bench stream                     # tiny.en and runs/askd/student.pt
    python fastwhisper.py bench stream --model tiny.en --model runs/askd/student.pt --threads 2
    python fastwhisper.py bench stream --data real-speech-dev      # real speech of other people

Two streams per model: each test utterance alone (LEAD seconds of silence, the utterance, TRAIL
seconds of silence), and all of them as one long recording with pauses of GAPS seconds between
them. Each is handed to streaming.LiveTranscriber LIVE_CHUNK at a time, as `stream` hands on a live
source, with its defaults (a partial every 0.5 s of new audio, an endpoint after 0.5 s of quiet).
The clock is simulated: chunk k arrives at (k + 1) x LIVE_CHUNK seconds of audio; each feed starts
when the work before it is done and takes every chunk that has arrived by then (at least one), as
`stream` reads a live source. So the figures are what a stream at 1x would see on this machine. For
each model and stream:

- latency from the end of a phrase's last sound to its final text, p50 and p95, and its parts: the
  endpoint's wait (quiet heard before the phrase was known to end, rounded up to a chunk), the
  queue (work still running when that chunk arrived) and compute (reading the phrase);
- the time of a partial update (p50), the real-time factor (all reads over the audio's seconds),
  and the most the stream ever fell behind (lag);
- partial stability: the share of the words shown in partials that the final text changed
  (aligned, so one word more or less early on does not count every word after it);
- WER of the streamed finals, and of offline `transcribe` of the same audio (its default decoding).
"""

from __future__ import annotations

import difflib
import random
import sys
import time

import numpy as np
from tqdm import tqdm

import audio_io
import data
import streaming
import text_norm
import transcribe

SOURCE = "asterisk:test"
LEAD, TRAIL = 0.3, 1.0  # seconds of silence around each utterance streamed alone
GAPS = (0.2, 1.2)  # pauses between the utterances of the long recording: uniform in this range


def replay(recognizer, audio: np.ndarray, chunk: float = streaming.LIVE_CHUNK, **options) -> dict:
    """Stream `audio` through a LiveTranscriber on a simulated 1x clock, as `stream` reads a live
    source: each feed takes every chunk that has arrived by the time the work before it is done
    (at least the next one, waited for). Its events, its reads, the latency of each final (see the
    module docstring) and the most it fell behind."""
    live, step, n = (
        streaming.LiveTranscriber(recognizer, **options),
        round(chunk * audio_io.SAMPLE_RATE),
        len(audio),
    )
    events, finals, clock, lag, fed = [], [], 0.0, 0.0, 0
    while True:
        if fed < n:
            upto = min(n, max(fed + step, int(clock * audio_io.SAMPLE_RATE) // step * step))
        arrived = (upto if fed < n else n) / audio_io.SAMPLE_RATE
        began, done = max(clock, arrived), len(live.reads)
        start = time.perf_counter()
        events += live.feed(audio[fed:upto]) if fed < n else live.finish()
        clock = began + time.perf_counter() - start
        lag = max(lag, clock - arrived)
        before = began - arrived  # finals are read first in a feed, one after another
        for read in live.reads[done:]:
            if read["kind"] == "final":
                finals.append({"wait": read["wait"], "queue": before, "compute": read["compute"]})
            before += read["compute"]
        if fed >= n:
            break
        fed = upto
    return {"events": events, "reads": live.reads, "finals": finals, "lag": lag}


def stability(events: list[dict]) -> tuple[int, int]:
    """(words shown in partials, of those, words the phrase's final text changed): a partial's word
    is kept if it lines up with the same word of the final's start (the longest matching word
    sequence, difflib's, between the partial and as many words of the final, plus one)."""
    finals = {
        e["start"]: text_norm.normalize_text(e["text"]).split()
        for e in events
        if e["type"] == "final"
    }
    shown = changed = 0
    for e in (e for e in events if e["type"] == "partial"):
        words = text_norm.normalize_text(e["text"]).split()
        final = finals.get(e["start"], [])[: len(words) + 1]
        kept = sum(
            m.size
            for m in difflib.SequenceMatcher(
                None, words, final, autojunk=False
            ).get_matching_blocks()
        )
        shown, changed = shown + len(words), changed + len(words) - kept
    return shown, changed


def streams(utts: list, seed: int = 0) -> list[tuple[str, list[np.ndarray], list[str]]]:
    """(name, audios, reference texts): each utterance alone, and all of them as one recording."""
    audios = [audio_io.load_audio(u.audio, cache=True) for u in utts]
    lead, trail = (np.zeros(round(s * audio_io.SAMPLE_RATE), np.float32) for s in (LEAD, TRAIL))
    rng = random.Random(seed)
    joined = []
    for a in audios:
        joined += [a, np.zeros(round(rng.uniform(*GAPS) * audio_io.SAMPLE_RATE), np.float32)]
    return [
        (
            f"{len(utts)} utterances, one stream each",
            [np.concatenate([lead, a, trail]) for a in audios],
            [u.text for u in utts],
        ),
        (
            f"one {sum(map(len, joined)) / audio_io.SAMPLE_RATE:.0f} s recording, "
            f"pauses {GAPS[0]}-{GAPS[1]} s",
            [np.concatenate(joined)],
            [" ".join(u.text for u in utts)],
        ),
    ]


def ms(values, q) -> float:
    return 1000 * float(np.percentile(values, q)) if len(values) else float("nan")


def stream_table(
    models: list[str], source: str = SOURCE, limit=None, device: str = "cpu"
) -> list[dict]:
    utts = [u for u in data.load_source(source) if u.text][:limit]
    rows = []
    for model in models:
        recognizer = transcribe.load_recognizer(model, device)
        recognizer.transcribe_text([np.zeros(audio_io.SAMPLE_RATE, np.float32)])  # warm up
        for name, audios, references in streams(utts):
            runs = [
                replay(recognizer, a) for a in tqdm(audios, desc=f"{model}: {name}", leave=False)
            ]
            offline = [
                r["text"]
                for r in recognizer.transcribe(audios, transcribe.TranscribeOptions(), times=False)
            ]
            finals = [f for r in runs for f in r["finals"]]
            total = [f["wait"] + f["queue"] + f["compute"] for f in finals]
            partials = [
                r["compute"] for run in runs for r in run["reads"] if r["kind"] == "partial"
            ]
            shown, changed = map(sum, zip(*(stability(r["events"]) for r in runs)))
            streamed = [
                " ".join(e["text"] for e in r["events"] if e["type"] == "final") for r in runs
            ]
            seconds = sum(len(a) for a in audios) / audio_io.SAMPLE_RATE
            rows.append(
                {
                    "stream": name,
                    "model": model,
                    "phrases": len(finals),
                    "latency p50 ms": ms(total, 50),
                    "p95": ms(total, 95),
                    "wait p50": ms([f["wait"] for f in finals], 50),
                    "queue p95": ms([f["queue"] for f in finals], 95),
                    "compute p50": ms([f["compute"] for f in finals], 50),
                    "compute p95": ms([f["compute"] for f in finals], 95),
                    "partial ms": ms(partials, 50),
                    "RTF": sum(r["compute"] for run in runs for r in run["reads"]) / seconds,
                    "lag s": max(r["lag"] for r in runs),
                    "revised %": 100 * changed / max(shown, 1),
                    "WER %": 100 * text_norm.wer(references, streamed),
                    "offline WER %": 100 * text_norm.wer(references, offline),
                }
            )
            print(
                f"  {model}, {name}: compute p50 {rows[-1]['compute p50']:.0f} ms, "
                f"WER {rows[-1]['WER %']:.2f}%",
                file=sys.stderr,
            )
    import torch

    print(
        f"{source}: replayed as live streams at 1x (simulated clock), "
        f"{streaming.STEP_SECONDS} s partials, {streaming.ENDPOINT_SECONDS} s endpoint, "
        f"{torch.get_num_threads()} threads; latency = wait + queue + compute, "
        f"from a phrase's last sound to its final text; offline WER: `transcribe` of the same audio"
    )
    print(transcribe.format_table(rows, columns=list(rows[0])))
    return rows
