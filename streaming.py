"""Live transcription: audio as it arrives, cut into phrases where the speaker pauses
(live_audio, Endpointer), each read as it is spoken (LiveTranscriber). Inference only.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from typing import Optional

import numpy as np

import audio_io
import decoding
import fileio
import transcribe

# ----------------------------------------------------------------------------------------------
# 1. Audio as it arrives
# ----------------------------------------------------------------------------------------------
# Live audio: a stream of PCM as it arrives, and where its phrases end. A source hands on what it
# has read since it was last asked, so a listener that falls behind gets more at once, not later.

LIVE_CHUNK = 0.1  # seconds of audio a live source reads at a time
LIVE_MOST = 10.0  # and hands on at most, however far behind its listener is
PHRASE_PAD = 0.3  # sound kept before a phrase's first loud 10 ms and after its last: soft edges
LIVE_NOISE_FLOOR = (0, 8.0)  # within 8 dB of the quietest 110 ms heard is quiet (audio_io.loudness)
VAD_HISTORY = 30.0  # seconds of levels that set the quiet threshold (as loudness sets it)


def live_audio(
    source: str,
    input_format: Optional[str] = None,
    realtime: bool = False,
    chunk: float = LIVE_CHUNK,
):
    """Yield 16 kHz mono float32 audio as it arrives. `source`: '-' is raw s16le PCM on stdin
    (16 kHz mono: `arecord -f S16_LE -r 16000 -c 1`); with `input_format`, a capture device that
    ffmpeg opens (`-f pulse default`, `-f avfoundation :0`, ...); else a file, read whole and handed
    on `chunk` seconds at a time, at 1x if `realtime` (as if it were live), else at once."""
    if input_format is None and source != "-":
        audio, step = audio_io.load_audio(source), round(chunk * audio_io.SAMPLE_RATE)
        began = time.monotonic()
        for i in range(0, len(audio), step):
            if realtime:
                time.sleep(max(0.0, began + (i + step) / audio_io.SAMPLE_RATE - time.monotonic()))
            yield audio[i : i + step]
        return
    if input_format is None:
        process, pipe = None, sys.stdin.fileno()
    else:
        process = _open_device(source, input_format)
        pipe = process.stdout.fileno()
    arrived = queue.Queue()
    threading.Thread(
        target=_read_pcm, args=(pipe, round(chunk * audio_io.SAMPLE_RATE) * 2, arrived), daemon=True
    ).start()
    heard = False
    try:
        while True:
            parts = [_next_block(arrived)]
            while (
                not arrived.empty()
                and parts[-1] is not None
                and sum(map(len, parts)) < LIVE_MOST * audio_io.SAMPLE_RATE * 2
            ):
                parts.append(arrived.get())
            done = parts[-1] is None
            audio = b"".join(p for p in parts if p)
            if audio:
                heard = True
                yield (
                    np.frombuffer(audio[: len(audio) // 2 * 2], np.int16).astype(np.float32)
                    / 32768.0
                )
            if done:
                break
    finally:
        if process is not None:
            process.kill()
            error = [
                re.sub(r"^\[\w+ @ 0x[0-9a-f]+\] ", "", line)
                for line in process.stderr.read().decode(errors="replace").strip().splitlines()
            ]
            if (
                process.wait() != 0 and not heard and error
            ):  # the first line says why (a bad device)
                raise fileio.AudioError(
                    f"{source}: cannot record from it (ffmpeg -f {input_format}: {error[0]})"
                )


def _open_device(source: str, input_format: str) -> subprocess.Popen:
    if shutil.which("ffmpeg") is None:
        raise fileio.AudioError(
            f"{source}: ffmpeg is not installed; it is needed to record from a device "
            f"(install it, e.g. `apt-get install ffmpeg`, or pipe PCM into `stream -`)"
        )
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-loglevel",
        "error",
        "-f",
        input_format,
        "-i",
        source,
        "-f",
        "s16le",
        "-ac",
        "1",
        "-acodec",
        "pcm_s16le",
        "-ar",
        str(audio_io.SAMPLE_RATE),
        "-",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _next_block(arrived: "queue.Queue", poll: float = 0.1):
    """The next block the reader thread put in `arrived`, waited for in slices of `poll` seconds.
    (A Ctrl-C that the kernel hands to another thread, the reader or a torch worker, only marks
    the signal for the main thread; one blocked in a plain get() would never wake to act on it
    while a live source stays open and quiet.)"""
    while True:
        try:
            return arrived.get(timeout=poll)
        except queue.Empty:
            pass


def _read_pcm(fd: int, size: int, arrived: "queue.Queue") -> None:
    """Read a pipe up to `size` bytes at a time into `arrived` until it ends (then None). An odd
    byte waits for its partner, so a read that splits a sample does not shift the rest. (os.read,
    not a file object: a reader blocked in it must not hold a lock the exiting interpreter
    wants.)"""
    odd = b""
    try:
        while True:
            block = os.read(fd, size)
            if not block:
                break
            block = odd + block
            cut = len(block) // 2 * 2
            odd = block[cut:]
            arrived.put(block[:cut])
    except (OSError, ValueError):
        pass
    arrived.put(None)


class Endpointer:
    """Cuts a live stream into phrases: voice-activity detection by loudness, online.

    Each 10 ms is quiet or not by audio_io.quiet_threshold (the quietest 110 ms the noise floor),
    its thresholds taken from the last VAD_HISTORY seconds. PHRASE_ONSET of sound in a row opens a
    phrase (from where that sound began, with PHRASE_PAD before it); `silence` seconds of quiet
    close it (PHRASE_PAD after its last sound kept). A phrase that reaches `max_seconds` is cut at
    its quietest 50 ms past its first quarter, and the rest carries on as the next phrase. So every
    stretch of sound longer than a click ends up in a phrase. Positions are samples of the whole
    stream.
    """

    def __init__(
        self, silence: float = 0.5, max_seconds: float = 30.0, sr: int = audio_io.SAMPLE_RATE
    ):
        if silence <= 0 or max_seconds <= 1:
            raise ValueError(
                f"an endpoint needs silence > 0 and phrases over 1 s (got {silence}, {max_seconds})"
            )
        self.hop = sr // 100
        self.silence, self.max_frames = round(silence * 100), round(max_seconds * 100)
        self.keep = round(max(VAD_HISTORY, max_seconds) * 100) + 100  # 10 ms frames of history
        self.power = np.zeros(0)  # power of each 10 ms of the history
        self.db = np.zeros(0)  # level of each (dB over the 50 ms ending there)
        self.tail = np.zeros(0, np.float32)  # samples short of a whole 10 ms
        self.frames = 0  # 10 ms frames seen
        self.start = None  # the open phrase's first frame (None: between phrases)
        self.sound = 0  # the frame after its last one with sound
        self.free = 0  # where the next phrase may start: the last one's end

    @property
    def open(self) -> Optional[int]:
        """Where the open phrase starts, or None between phrases."""
        return None if self.start is None else self.start * self.hop

    @property
    def now(self) -> int:
        """Samples heard so far."""
        return self.frames * self.hop + len(self.tail)

    @property
    def earliest(self) -> int:
        """The earliest sample a phrase may still hold: the open phrase's start, or between phrases
        the later of the last one's end and the oldest 10 ms of the history."""
        return self.start * self.hop if self.start is not None else self._oldest() * self.hop

    @property
    def last_sound(self) -> int:
        """Where the open phrase's last sound ends (samples)."""
        return self.sound * self.hop

    def feed(self, audio) -> list[tuple[int, int, int]]:
        """The phrases this audio closed, as (start, end, end of the last sound)."""
        audio = np.concatenate([self.tail, np.asarray(audio, np.float32)])
        n = len(audio) // self.hop
        self.tail = audio[n * self.hop :]
        if n == 0:
            return []
        self.power = np.concatenate([self.power, audio_io.frame_power(audio, self.hop)])
        self.power = self.power[-self.keep :]
        self.db = audio_io.decibels(self.power, audio_io.LEVEL_FRAMES, "full")  # ends at each frame
        slow = audio_io.decibels(self.power, audio_io.SLOW_FRAMES, "valid")
        slow = slow if len(slow) else self.db
        # The noise floor is the quietest 110 ms, not the quietest tenth: a live history may hold
        # little quiet (a fast talker; the stream's start), and then its quietest tenth is speech.
        threshold = audio_io.quiet_threshold(slow, noise_floor=LIVE_NOISE_FLOOR)
        # Between phrases, everything since the last one is looked at again by the new threshold: at
        # the start of a stream the threshold settles only once it has heard a pause.
        self.frames += n
        frame = self.frames - n if self.start is not None else self._oldest()
        closed = []
        while frame < self.frames:
            if self.start is None:
                frame = self._onset(frame, threshold)
            else:
                closed += self._step(frame, threshold)
                frame += 1
        return closed

    def _oldest(self) -> int:
        """The first frame a new phrase may start: the last phrase's end or the history's start."""
        return max(self.free, self.frames - len(self.db))

    def _levels(self, start: int, end: Optional[int] = None) -> np.ndarray:
        """The levels of frames [start, end) (to the newest if end is None), from the history."""
        base = len(self.db) - self.frames
        return self.db[start + base : None if end is None else end + base]

    def _onset(self, frame: int, threshold: float) -> int:
        """Open a phrase at the first PHRASE_ONSET of sound from `frame` on, if there is one; the
        frame to go on from."""
        onset = round(audio_io.PHRASE_ONSET * 100)
        loud = self._levels(frame) >= threshold
        full = np.flatnonzero(np.convolve(loud, np.ones(onset, int), mode="valid") == onset)
        if not len(full):
            return self.frames
        first = frame + int(full[0])
        self.start, self.sound = max(self._oldest(), first - round(PHRASE_PAD * 100)), first + onset
        return first + onset

    def _step(self, frame: int, threshold: float) -> list[tuple[int, int, int]]:
        if self._levels(frame, frame + 1)[0] >= threshold:
            self.sound = frame + 1
        if frame + 1 - self.sound >= self.silence:
            return [self._close(min(frame + 1, self.sound + round(PHRASE_PAD * 100)))]
        if frame + 1 - self.start >= self.max_frames:  # too long: cut at its quietest
            lo = self.start + self.max_frames // 4
            cut = lo + int(np.argmin(self._levels(lo, frame + 1)))
            phrase = self._close(cut, min(self.sound, cut))
            self.start, self.sound = cut, max(self.sound, cut)
            return [phrase]
        return []

    def quietest(self, seconds: float) -> int:
        """The middle of the quietest 50 ms among the last `seconds` of the open phrase (samples):
        a place between two words, more likely than the stream's edge, to read a phrase up to."""
        lo = max(self.start, self.frames - round(seconds * 100), self.frames - len(self.db))
        if lo >= self.frames:
            return self.now
        frame = lo + int(np.argmin(self._levels(lo)))
        return max(self.start, frame - 1) * self.hop

    def _close(self, end: int, sound: Optional[int] = None) -> tuple[int, int, int]:
        phrase = (
            self.start * self.hop,
            end * self.hop,
            (self.sound if sound is None else sound) * self.hop,
        )
        self.start, self.free = None, end
        return phrase

    def finish(self) -> list[tuple[int, int, int]]:
        """The open phrase, closed where the input ended."""
        if self.start is None:
            return []
        phrase = (self.start * self.hop, self.now, self.sound * self.hop)
        self.start, self.free = None, self.frames
        return [phrase]


# ----------------------------------------------------------------------------------------------
# 2. Live transcription: phrase by phrase, as they are spoken
# ----------------------------------------------------------------------------------------------
STEP_SECONDS = 0.5  # the open phrase is read again after this much more audio, for its partial text
ENDPOINT_SECONDS = 0.5  # this much quiet ends a phrase (Endpointer), then read for its final text
PARTIAL_CUT = 0.3  # a partial reads up to the quietest 50 ms of this much of the newest audio
NOISE_SECONDS = 1.0  # less sound than this, read with doubt, is noise (LiveTranscriber.read)
CONTEXT_SECONDS = 10.0  # a phrase is read after the earlier finals fitting in this, text forced
# tokens a read after context may add: leaves Whisper's n_ctx / 2 - 112 for the forced text
CONTEXT_SAMPLE_LEN = 112
# text only; a final that loops falls back; the endpointer is the gate (a read spans pauses)
LIVE_DECODING = transcribe.TranscribeOptions(without_timestamps=True, vad=False)


def is_loop(text: str) -> bool:
    """Whether a text repeats itself as a looping decoder's does (Whisper's compression rule)."""
    return decoding.compression_ratio(text) > LIVE_DECODING.compression_ratio_threshold


class LiveTranscriber:
    """Transcribes a live stream phrase by phrase. streaming.Endpointer cuts the stream; the open
    phrase is read again every `step` seconds of audio for its partial text, and once more when it
    ends for its final text. Every read is the recognizer's text-only decoding of the phrase so far,
    greedy (a final that loops is decoded again at the next temperatures, as `transcribe` does), so
    a student reads just the phrase's length, a Whisper model a 30 s window. Each read starts with
    the final phrases before it that fit in CONTEXT_SECONDS with it, their text forced (read()).

    feed() and finish() return events, {"type": "partial" | "final", "start": s, "end": s, "text":
    ...}, times in seconds of the stream; an empty final is left out (a cough, a click). `reads`
    keeps what each read cost, for the bench: {"kind", "seconds" (of audio read), "compute" (s),
    "wait" (for a final: audio heard after the phrase's last sound before it was known to end)}.
    """

    def __init__(
        self,
        recognizer: transcribe.Recognizer,
        step: float = STEP_SECONDS,
        silence: float = ENDPOINT_SECONDS,
        max_seconds: float = float(audio_io.CHUNK_LENGTH),
        partials: bool = True,
    ):
        self.recognizer, self.partials = recognizer, partials
        self.step = round(step * audio_io.SAMPLE_RATE)
        self.endpointer = Endpointer(silence, max_seconds)
        self.audio, self.first = (
            np.zeros(0, np.float32),
            0,
        )  # audio kept, and where in the stream it starts
        self.read_to = 0  # the open phrase was last read up to here
        self.last_partial = ""
        self.context: list[
            tuple[int, str]
        ] = []  # the last final phrases: where each starts, its text
        self.finals: list[dict] = []
        self.reads: list[dict] = []

    def feed(self, audio: np.ndarray) -> list[dict]:
        """Events for this much more audio: the finals of the phrases it ended, and the open
        phrase's partial text if `step` more of it was heard since it was last read."""
        self.audio = np.concatenate([self.audio, np.asarray(audio, np.float32)])
        events = [self.final(*phrase) for phrase in self.endpointer.feed(audio)]
        start, now = self.endpointer.open, self.endpointer.now
        if self.partials and start is not None and now - max(self.read_to, start) >= self.step:
            events.append(self.partial(start, now))
        self.context = self.recent(now)  # let go of what no later read can take in
        keep = min([self.endpointer.earliest] + [p[0] for p in self.context[:1]])
        keep = max(keep, self.first)
        self.audio, self.first = self.audio[keep - self.first :], keep  # what no read will need
        return [e for e in events if e is not None]

    def finish(self) -> list[dict]:
        """The final text of the phrase open when the input ended."""
        return [
            e for e in (self.final(*phrase) for phrase in self.endpointer.finish()) if e is not None
        ]

    def read(
        self, start: int, end: int, kind: str, sound: int, context: Optional[tuple[int, str]] = None
    ) -> str:
        """The text of the stream from `start` to `end`, text only.

        With `context` (the phrases before: where the first starts, their final text) the read
        starts there and that text is forced as the start of the transcript, so the model hears the
        phrase among its neighbours, as `transcribe` reads a recording, and writes only what
        follows: a student reads a lone phrase of another speaker worse. If that gives no
        text, a loop, or a short phrase's text in doubt, the phrase is read alone after all (a model
        may end its transcript with the forced text, as across a change of speaker, or repeat it).

        A phrase with under NOISE_SECONDS of sound (up to `sound`) whose text the model itself
        doubts (average log-probability under -1, Whisper's sign of a failed window) is taken for
        noise: a breath or a click read as "you", as Whisper does on near-silence."""
        began = time.perf_counter()
        options = LIVE_DECODING if kind == "final" else replace(LIVE_DECODING, temperature=0.0)
        short = sound - start < NOISE_SECONDS * audio_io.SAMPLE_RATE
        text, doubt = self.decode(start, end, options, context)
        if context is not None and (not text or is_loop(text) or short and doubt < -1):
            text, doubt = self.decode(start, end, options)
        self.reads.append(
            {
                "kind": kind,
                "seconds": (end - (start if context is None else context[0]))
                / audio_io.SAMPLE_RATE,
                "compute": time.perf_counter() - began,
            }
        )
        return "" if short and doubt < -1 else text

    def decode(
        self,
        start: int,
        end: int,
        options: transcribe.TranscribeOptions,
        context: Optional[tuple[int, str]] = None,
    ) -> tuple[str, float]:
        """(text, lowest average log-probability of its segments) of the audio from `start` (or the
        context's start, its text forced) to `end`."""
        if context is not None:
            start, options = (
                context[0],
                replace(options, prefix=context[1], sample_len=CONTEXT_SAMPLE_LEN),
            )
        if self.last_partial:  # the open phrase's text a moment ago: what it probably says now
            tok = self.recognizer.model.tokenizer
            options = replace(
                options, draft=decoding.TextDraft(tok.encode(" " + self.last_partial) + [tok.eot])
            )
        (result,) = self.recognizer.transcribe(
            [self.audio[start - self.first : end - self.first]], options, batch_size=1, times=False
        )
        doubt = min((seg["avg_logprob"] for seg in result["segments"] if seg["text"]), default=0.0)
        return result["text"].strip(), doubt

    def recent(self, end: int) -> list[tuple[int, str]]:
        """The final phrases kept as context that a read up to `end` can take in
        (CONTEXT_SECONDS)."""
        return [p for p in self.context if end - p[0] <= CONTEXT_SECONDS * audio_io.SAMPLE_RATE]

    def context_for(self, end: int) -> Optional[tuple[int, str]]:
        """(where the first starts, their text) of the recent() finals: more of them than one read a
        short phrase better."""
        phrases = self.recent(end)
        return (phrases[0][0], " ".join(text for _, text in phrases)) if phrases else None

    def partial(self, start: int, now: int) -> Optional[dict]:
        """The open phrase read up to its quietest moment of the last PARTIAL_CUT seconds (audio cut
        mid-word makes a student invent words, or loop); a text that is a loop is not shown."""
        end = self.endpointer.quietest(PARTIAL_CUT)
        text, self.read_to = (
            self.read(start, end, "partial", self.endpointer.last_sound, self.context_for(end)),
            now,
        )
        if not text or text == self.last_partial or is_loop(text):
            return None
        self.last_partial = text
        return {
            "type": "partial",
            "start": start / audio_io.SAMPLE_RATE,
            "end": end / audio_io.SAMPLE_RATE,
            "text": text,
        }

    def final(self, start: int, end: int, sound: int) -> Optional[dict]:
        text = self.read(start, end, "final", sound, self.context_for(end))
        self.context = self.context + [(start, text)] if text else []
        self.reads[-1]["wait"] = (self.endpointer.now - sound) / audio_io.SAMPLE_RATE
        self.read_to, self.last_partial = end, ""
        if not text:
            return None
        self.finals.append(
            {
                "type": "final",
                "start": start / audio_io.SAMPLE_RATE,
                "end": end / audio_io.SAMPLE_RATE,
                "text": text,
            }
        )
        return self.finals[-1]

    def result(self) -> dict:
        """The finals so far as transcribe's result, one segment each (for writers.write_result)."""
        segments = [
            {
                "id": i,
                "seek": round(e["start"] * audio_io.FRAMES_PER_SECOND),
                "start": e["start"],
                "end": e["end"],
                "text": " " + e["text"],
                "tokens": [],
            }
            for i, e in enumerate(self.finals)
        ]
        return {
            "text": "".join(seg["text"] for seg in segments),
            "segments": segments,
            "language": "en",
        }
