"""Transcription: a loaded model that knows how it reads audio.

One long-form driver (read_long) with two ways of reading: Whisper's 30-second windows (temperature
fallback, seeking by timestamps) and a student's pieces of speech, each read at its own length
(trimmed input). The Recognizer (any Whisper) or Student (a model from `train`) is what the command
line, the bench and eval hold: load_recognizer, evaluate. Inference only: nothing here imports the
training code (askd.py).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import audio_io
import cpu
import decoding
import fileio
import model as M
import text_norm
import tokenization
import weight_files

if TYPE_CHECKING:  # annotations only: never at run time
    import data

WEIGHTS = ("auto", "fp32", "fp16")  # how a model is held for inference (load_recognizer)
ROUND_FRAMES = 100  # trimmed input is cut at a whole number of seconds (100 mel frames)
MAX_TOKENS_PER_SECOND = 10.0  # decoding stops there: people say ~3 tokens a second
PIECE_SECONDS = 30.0  # longer audio is cut at pauses, a longer stretch of speech at its quietest,
JOIN_SECONDS = 20.0  # and neighbouring stretches read together up to this long, for context
PADDED_PREFIX = "padded:"  # --model padded:STUDENT: a student read in 30 s windows, as Whisper is
RESEEK_SECONDS = 1.0  # a piece whose text ends this long before the piece does, and before at
RESEEK_SPEECH = 0.3  # least this many seconds of sound (audio_io.loudness), is read on from there
NO_SPEECH = 0.8  # a student's piece likelier silence than this has no text; speech stays well below


# ----------------------------------------------------------------------------------------------
# 1. Options: how to read long audio
# ----------------------------------------------------------------------------------------------

TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class TranscribeOptions(decoding.DecodingOptions):
    """How to transcribe long audio: the decoding options of every window, and the rules around
    them.

    Each window is decoded at the first temperature of the schedule, and again at the next one
    while its text looks wrong: more compressible than compression_ratio_threshold (a loop) or
    less probable than logprob_threshold on average, unless no_speech_threshold calls it silence.
    """

    temperature: float | Sequence[float] = TEMPERATURES  # one temperature, or a fallback schedule
    best_of: Optional[int] = 5
    compression_ratio_threshold: Optional[float] = 2.4
    logprob_threshold: Optional[float] = -1.0
    no_speech_threshold: Optional[float] = 0.6
    condition_on_previous_text: bool = True
    initial_prompt: Optional[str] = None
    draft: Optional[decoding.Draft] = (
        None  # faster greedy windows, the same text (see DecodingTask.speculative)
    )
    vad: bool = True  # skip long silence (audio_io.sound_regions); off: Whisper

    def for_window(self, temperature: float, language: Optional[str]) -> decoding.DecodingOptions:
        """Options of one try of one window: beam search at temperature 0, best_of samples above."""
        options = decoding.DecodingOptions(
            **{f.name: getattr(self, f.name) for f in fields(decoding.DecodingOptions)}
        )
        return replace(
            options,
            temperature=temperature,
            language=language,
            beam_size=self.beam_size if temperature == 0 else None,
            patience=self.patience if temperature == 0 else None,
            best_of=self.best_of if temperature > 0 else None,
        )

    def needs_fallback(self, r: decoding.DecodingResult) -> bool:
        too_repetitive = (
            self.compression_ratio_threshold is not None
            and r.compression_ratio > self.compression_ratio_threshold
        )
        too_improbable = (
            self.logprob_threshold is not None and r.avg_logprob < self.logprob_threshold
        )
        return (too_repetitive or too_improbable) and not (self.is_silence(r) and too_improbable)

    def is_silence(self, r: decoding.DecodingResult) -> bool:
        return self.no_speech_threshold is not None and r.no_speech_prob > self.no_speech_threshold


# ----------------------------------------------------------------------------------------------
# 2. One long-form driver: each input a track, read window by window by a reading strategy
# ----------------------------------------------------------------------------------------------
# A strategy says how a model reads audio: Whisper's 30 s windows one after another (Windows), or
# a student's pieces of speech each at its own length (Pieces). The driver gathers the windows
# every track has ready, decodes them in batches, and hands each input on once it is read.


@torch.inference_mode()
def read_long(
    reading,
    audios: Sequence,
    batch_size: int = 1,
    progress: bool = False,
    done: Optional[Callable[[int, dict], None]] = None,
) -> list[dict]:
    """Read each input (path, waveform or, for Windows, log-mel) to its end with `reading` (Windows
    or Pieces), the windows of different inputs decoded together `batch_size` at a time: per input
    {'text', 'segments', 'language'}. `done(i, result)` is called as soon as input i is read to its
    end, so a caller can keep each result before the others are decoded."""
    from tqdm import tqdm

    tracks = reading.start(audios, batch_size)
    place = {id(t): i for i, t in enumerate(tracks)}  # by identity: tracks compare by value
    results: list[Optional[dict]] = [None] * len(tracks)

    def finish(ts: Sequence) -> None:
        for t in ts:
            i = place[id(t)]
            if results[i] is None and reading.finished(t):
                results[i] = reading.result(t)
                if done is not None:
                    done(i, results[i])

    finish(tracks)  # inputs with nothing to read
    total = sum(reading.left(t) for t in tracks)
    with tqdm(total=total, unit="frames", disable=not progress, leave=False) as bar:
        # the windows of a round are gathered before any is read: what a read adds waits a round
        while windows := [w for t in tracks for w in reading.windows(t)]:
            for batch in reading.batches(windows, batch_size):
                touched = list({id(w.track): w.track for w in batch}.values())
                before = sum(reading.left(t) for t in touched)
                reading.read(batch)
                bar.update(before - sum(reading.left(t) for t in touched))
                finish(touched)
    return results


def transcribe_many(
    model: M.Whisper,
    audios: Sequence,
    options: TranscribeOptions = TranscribeOptions(),
    *,
    batch_size: int = 1,
    progress: bool = False,
    done: Optional[Callable[[int, dict], None]] = None,
) -> list[dict]:
    """Transcribe several inputs as Whisper does (read_long with Windows). With batch_size 1 this
    is exactly Whisper's own transcribe loop, input after input."""
    return read_long(Windows(model, options), audios, batch_size, progress, done)


def transcribe_one(
    model: M.Whisper, audio, options: TranscribeOptions = TranscribeOptions()
) -> dict:
    """Transcribe one input (path, waveform or log-mel): {'text', 'segments', 'language'}."""
    return transcribe_many(model, [audio], options)[0]


# ----------------------------------------------------------------------------------------------
# 3. Whisper's reading: 30 s windows, seeking by timestamps
# ----------------------------------------------------------------------------------------------
# Whisper reads 30 s at a time. After each window it seeks to the last complete timestamp pair
# (or past the window), so speech cut at a window edge is decoded again in the next window. The
# text so far conditions the next window as a prompt. A window whose output looks wrong (too
# repetitive, too improbable) is decoded again at the next temperature.


@dataclass
class _Track:
    """One input's progress through Whisper's reading; its window is the 30 s from its seek."""

    mel: Tensor  # log-mel of the whole input plus 30 s of padding
    content_frames: int
    language: Optional[str]
    seek: int = 0
    all_tokens: list = field(default_factory=list)
    segments: list = field(default_factory=list)
    prompt_reset_since: int = 0
    initial_prompt_tokens: list = field(default_factory=list)
    regions: Optional[list] = None  # (start, end) frames to read, the rest silence; None: all

    @property
    def track(self) -> "_Track":
        return self  # a track is read one window at a time: the window is the track at its seek

    def region_end(self) -> int:
        """Where the stretch to read that holds the seek ends: no window reads past it."""
        if self.regions is None:
            return self.content_frames
        return next((b for a, b in self.regions if self.seek < b), self.content_frames)

    def skip_silence(self) -> None:
        """Move the seek past silence to the next stretch to read (or to the end), as Whisper's
        no-speech rule skips a silent window: the text so far still conditions what follows."""
        if self.regions is not None:
            ahead = [max(self.seek, a) for a, b in self.regions if self.seek < b]
            self.seek = ahead[0] if ahead else self.content_frames


class Windows:
    """Whisper's reading of long audio, as a strategy for read_long.

    Only with options.vad (the default) the seek jumps over each silence of audio_io.SILENCE_GAP
    seconds or more (audio_io.sound_regions), and no window reads into one; what is read is the
    whole input's mel. (An input given as log-mel is read whole.)
    """

    def __init__(self, model: M.Whisper, options: TranscribeOptions):
        if options.task == "translate" and not model.is_multilingual:
            raise ValueError(
                "translate needs a multilingual model; English-only models can only transcribe"
            )
        self.model = model
        self.options = replace(options, language=_language_code(model, options.language))
        prompt = options.initial_prompt
        self.prompt = model.tokenizer.encode(" " + prompt.strip()) if prompt else []

    def start(self, audios: Sequence, batch_size: int) -> list[_Track]:
        tracks = [self._track(audio) for audio in audios]
        undetected = [t for t in tracks if t.language is None and t.seek < t.content_frames]
        _detect_languages(self.model, undetected, batch_size)
        return tracks

    def _track(self, audio) -> _Track:
        regions = None
        if not (isinstance(audio, Tensor) and audio.ndim == 2):
            audio = audio_io.load_audio(audio) if isinstance(audio, (str, os.PathLike)) else audio
            if self.options.vad:  # the silence gate; its 10 ms frames are the mel frames
                samples = audio.cpu().numpy() if isinstance(audio, Tensor) else audio
                regions = [
                    (a // audio_io.HOP_LENGTH, b // audio_io.HOP_LENGTH)
                    for a, b in audio_io.sound_regions(samples)
                ]
            audio = audio_io.log_mel_spectrogram(
                audio, self.model.dims.n_mels, padding=audio_io.N_SAMPLES
            )
        track = _Track(
            mel=audio,
            content_frames=audio.shape[-1] - audio_io.N_FRAMES,
            language=self.options.language,
            all_tokens=list(self.prompt),
            initial_prompt_tokens=self.prompt,
            regions=regions,
        )
        track.skip_silence()
        return track

    def windows(self, t: _Track) -> list[_Track]:
        return [t] if t.seek < t.content_frames else []

    def batches(self, windows: list[_Track], batch_size: int) -> list[list[_Track]]:
        """Windows decode together when their prompts are equally long (one tensor of tokens) and
        their language is the same; similar lengths side by side."""
        groups: dict[tuple, list[_Track]] = {}
        for t in windows:
            key = (len(_prompt_of(t, self.model.dims.n_text_ctx)), t.language)
            groups.setdefault(key, []).append(t)
        batches = []
        for group in groups.values():
            group.sort(key=lambda t: t.content_frames - t.seek)
            batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
        return batches

    def read(self, tracks: list[_Track]) -> None:
        _transcribe_windows(self.model, tracks, self.options)

    def finished(self, t: _Track) -> bool:
        return t.seek >= t.content_frames

    def left(self, t: _Track) -> int:
        return t.content_frames - min(t.seek, t.content_frames)

    def result(self, t: _Track) -> dict:
        text = self.model.tokenizer.decode(t.all_tokens[len(t.initial_prompt_tokens) :])
        return {"text": text, "segments": t.segments, "language": t.language or "en"}


def _language_code(model: M.Whisper, language: Optional[str]) -> Optional[str]:
    """A language code from a code or an English name ('en', 'English'); None: detect it."""
    if language is not None and language.lower() not in model.tokenizer.language_codes:
        by_name = {name: code for code, name in tokenization.LANGUAGES.items()}
        if language.lower() not in by_name:
            raise ValueError(f"unknown language {language!r}")
        language = by_name[language.lower()]
    return language and language.lower() if model.is_multilingual else "en"


def _detect_languages(model: M.Whisper, tracks: list[_Track], batch_size: int) -> None:
    """Language of each input from the first 30 s it reads (multilingual models, no --language)."""
    for i in range(0, len(tracks), batch_size):
        chunk = tracks[i : i + batch_size]
        mel = torch.stack(
            [t.mel[:, t.seek : t.seek + audio_io.N_FRAMES] for t in chunk]
        )  # 1st window
        mel = mel.to(model.device, next(model.parameters()).dtype)
        _, probs = decoding.detect_language(model, model.embed_audio(mel))
        for t, p in zip(chunk, probs):
            t.language = max(p, key=p.get)


def _prompt_of(t: _Track, n_text_ctx: int) -> list[int]:
    """The text so far (since the last reset), as much as fits in half the text context."""
    prompt = t.all_tokens[t.prompt_reset_since :]
    return prompt[-(n_text_ctx // 2 - 1) :] if prompt else []


def _transcribe_windows(model: M.Whisper, tracks: list[_Track], options: TranscribeOptions) -> None:
    """Decode the current window of each track (with temperature fallback) and advance its seek."""
    sizes = [min(audio_io.N_FRAMES, t.region_end() - t.seek) for t in tracks]
    mel = torch.stack(
        [
            audio_io.pad_or_trim(t.mel[:, t.seek : t.seek + n], audio_io.N_FRAMES)
            for t, n in zip(tracks, sizes)
        ]
    )
    temperatures = (
        [options.temperature]
        if isinstance(options.temperature, (int, float))
        else options.temperature
    )
    draft = options.draft
    draft = (
        draft.encode(mel, sizes)
        if draft and temperatures[0] == 0 and options.beam_size is None
        else None
    )
    features, _ = M.embed_each(model, mel, [audio_io.N_FRAMES] * len(tracks))
    prompts = [_prompt_of(t, model.dims.n_text_ctx) for t in tracks]
    results: list[Optional[decoding.DecodingResult]] = [None] * len(tracks)
    todo = list(range(len(tracks)))
    for temperature in temperatures:
        decoded = decoding.decode_batch(
            model,
            options=options.for_window(temperature, tracks[0].language),
            audio_features=features[todo],
            prompts=[prompts[i] for i in todo],
            draft=draft.select(todo) if draft is not None and temperature == 0 else None,
        )
        for i, r in zip(todo, decoded):
            results[i] = r
        todo = [i for i, r in zip(todo, decoded) if options.needs_fallback(r)]
        if not todo:
            break
    for t, size, result in zip(tracks, sizes, results):
        _advance(model, t, size, result, options)
        t.skip_silence()


def _advance(
    model: M.Whisper,
    t: _Track,
    size: int,
    result: decoding.DecodingResult,
    options: TranscribeOptions,
) -> None:
    """Cut the window's tokens into segments at timestamp pairs and move the seek forward."""
    tok = model.tokenizer
    frames_per_token = (
        audio_io.N_FRAMES // model.dims.n_audio_ctx
    )  # 2 mel frames per timestamp step
    precision = frames_per_token * audio_io.HOP_LENGTH / audio_io.SAMPLE_RATE  # 0.02 s
    offset = t.seek * audio_io.HOP_LENGTH / audio_io.SAMPLE_RATE
    lp_threshold = options.logprob_threshold
    if options.is_silence(result) and not (
        lp_threshold is not None and result.avg_logprob > lp_threshold
    ):
        t.seek += size  # silence: skip the window
        return
    tokens, begin = result.tokens, tok.timestamp_begin
    is_ts = [x >= begin for x in tokens]
    single_ending = is_ts[-2:] == [False, True]
    cuts = [
        i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]
    ]  # between two timestamps
    new = []

    def segment(start: float, end: float, toks: list[int]) -> dict:
        text = tok.decode([x for x in toks if x < tok.eot])
        return {
            "seek": t.seek,
            "start": start,
            "end": end,
            "text": text,
            "tokens": toks,
            "temperature": result.temperature,
            "avg_logprob": result.avg_logprob,
            "compression_ratio": result.compression_ratio,
            "no_speech_prob": result.no_speech_prob,
        }

    if cuts:
        if single_ending:
            cuts.append(len(tokens))
        last = 0
        for cut in cuts:
            piece = tokens[last:cut]
            new.append(
                segment(
                    offset + (piece[0] - begin) * precision,
                    offset + (piece[-1] - begin) * precision,
                    piece,
                )
            )
            last = cut
        if single_ending:
            t.seek += size  # nothing after the last timestamp: the window is done
        else:
            t.seek += (tokens[last - 1] - begin) * frames_per_token  # resume at the last timestamp
    else:
        duration = size * audio_io.HOP_LENGTH / audio_io.SAMPLE_RATE
        stamps = [x for x in tokens if x >= begin]
        if stamps and stamps[-1] != begin:
            duration = (stamps[-1] - begin) * precision
        new.append(segment(offset, offset + duration, tokens))
        t.seek += size
    for s in new:  # an instantaneous or blank segment keeps no text
        if s["start"] == s["end"] or not s["text"].strip():
            s["text"], s["tokens"] = "", []
        s["id"] = len(t.segments)
        t.segments.append(s)
        t.all_tokens.extend(s["tokens"])
    if not options.condition_on_previous_text or result.temperature > 0.5:
        t.prompt_reset_since = len(
            t.all_tokens
        )  # a high-temperature guess should not steer what follows


# ----------------------------------------------------------------------------------------------
# 4. A student's reading: pieces of speech, each read at its own length
# ----------------------------------------------------------------------------------------------


def trimmed_frames(n_samples: int, round_frames: int = ROUND_FRAMES) -> int:
    """Mel frames a trimmed-input model reads for audio of n_samples: the audio's frames rounded
    up to a multiple of round_frames, at least one multiple, at most Whisper's 3000."""
    return audio_io.trimmed_frames(math.ceil(n_samples / audio_io.HOP_LENGTH), round_frames)


def trimmed_mel(audio, n_mels: int, frames: int) -> Tensor:
    """The first `frames` frames of Whisper's log-mel of the audio padded with 30 s of silence.

    Only `frames` frames plus one FFT window of zeros are computed: the frames past the speech see
    nothing but the silence Whisper would have padded with, and the loudness floor is set by the
    speech either way, so the result equals the padded version's first frames exactly.
    """
    audio = torch.as_tensor(audio)
    length = max(audio.shape[-1], frames * audio_io.HOP_LENGTH) + audio_io.N_FFT
    mel = audio_io.log_mel_spectrogram(F.pad(audio, (0, length - audio.shape[-1])), n_mels)
    return mel[..., :frames]


def cut_pieces(audio, vad: bool = True) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Where a student reads an audio (waveform): (start, end) samples of each piece, and which
    10 ms of it are quiet (audio_io.loudness). With `vad`, long silence is left out
    (audio_io.sound_regions), and all of an audio that holds no sound. A stretch longer than
    PIECE_SECONDS is cut at its pauses (audio_io.split_at_pauses) into pieces of up to
    JOIN_SECONDS, neighbouring stretches together: a lone phrase of another speaker is read worse
    than the same phrase in its context."""
    samples = np.asarray(audio)
    hop = audio_io.SAMPLE_RATE // 100  # loudness every 10 ms
    levels = audio_io.loudness(samples)
    regions = audio_io.sound_regions(samples, levels=levels) if vad else [(0, len(samples))]
    pieces = []
    for a, b in regions:
        spans = [(0, b - a)]
        if b - a > PIECE_SECONDS * audio_io.SAMPLE_RATE:
            levels_ab = tuple(x[a // hop : b // hop] for x in levels)
            spans = audio_io.split_at_pauses(
                samples[a:b], PIECE_SECONDS, join_up_to=JOIN_SECONDS, levels=levels_ab
            )
        pieces += [(a + start, a + end) for start, end in spans if end > start]
    return pieces, levels[1]


@dataclass
class _Audio:
    """One input's progress through a student's reading."""

    audio: Tensor
    quiet: np.ndarray  # which 10 ms are quiet
    todo: list  # (start, end, round) of the pieces to read next
    left: int = 0  # samples of its first pieces not yet read
    reading: int = 0  # pieces handed out and not yet read
    parts: list = field(default_factory=list)  # ((round, start), segments) of each piece read


@dataclass
class _Piece:
    """A stretch of an audio to read: a window of Pieces."""

    track: _Audio
    start: int  # samples into the audio
    end: int
    round: int  # 0, or how many times the text stopped early before it

    @property
    def audio(self) -> Tensor:
        return self.track.audio[self.start : self.end]


class Pieces:
    """A student's reading of long audio, as a strategy for read_long: each piece of speech
    (cut_pieces) read whole at its own trimmed length, greedy, English; the pieces of every audio
    decoded together, similar lengths side by side.

    With `timestamps`, a piece of an audio longer than PIECE_SECONDS whose text stops well before
    its sound does is read on from its last timestamp, as Whisper seeks (a student taught mostly on
    single prompts may stop after the first of several). A piece whose greedy text is a loop is
    decoded again at the next temperatures of the schedule (Whisper's fallback). Since a student
    knows how long its audio is, a decoder stuck in a loop stops after MAX_TOKENS_PER_SECOND tokens
    per second of audio (+ 16), far more than anyone says, not after Whisper's fixed 224.
    """

    def __init__(self, student: "Student", options: TranscribeOptions, timestamps: bool):
        self.model, self.round_frames = student.model, student.round_frames
        self.options, self.timestamps, self.name = options, timestamps, student.name

    def start(self, audios: Sequence, batch_size: int) -> list[_Audio]:
        tracks = []
        for audio in audios:
            audio = torch.as_tensor(
                audio_io.load_audio(audio) if isinstance(audio, (str, os.PathLike)) else audio
            )
            pieces, quiet = cut_pieces(audio.numpy(), self.options.vad)
            todo = [(a, b, 0) for a, b in pieces]
            tracks.append(_Audio(audio, quiet, todo, left=sum(b - a for a, b in pieces)))
        if self.options.prefix and sum(len(t.todo) for t in tracks) > 1:
            raise ValueError(
                f"{self.name}: a forced start of the text (prefix) needs audio of one piece, "
                f"at most {PIECE_SECONDS:g} s"
            )
        return tracks

    def windows(self, t: _Audio) -> list[_Piece]:
        pieces, t.todo = [_Piece(t, *p) for p in t.todo], []
        t.reading += len(pieces)
        return pieces

    def batches(self, pieces: list[_Piece], batch_size: int) -> list[list[_Piece]]:
        """Similar lengths side by side, each batch longest first: short rows finish first, and
        the rows that stay then need not move (KVCache.keep)."""
        order = sorted(pieces, key=lambda p: self.frames(p))
        return [order[i : i + batch_size][::-1] for i in range(0, len(order), batch_size)]

    def frames(self, p: _Piece) -> int:
        return trimmed_frames(p.end - p.start, self.round_frames)

    def read(self, pieces: list[_Piece]) -> None:
        decoded = self.decode(pieces, draft=self.options.draft)
        decoded = self.fallback(pieces, decoded)
        for p, r in zip(pieces, decoded):
            self.advance(p, r)

    def decode(
        self,
        pieces: list[_Piece],
        temperature: float = 0.0,
        best_of: Optional[int] = None,
        draft: Optional[decoding.Draft] = None,
    ) -> list[decoding.DecodingResult]:
        """The tokens of each piece, each read at its own trimmed length, with Whisper's timestamp
        tokens if self.timestamps: greedy (sped up by `draft`, the same tokens), or at a
        temperature the best of `best_of` samples; after options.prefix (forced text)."""
        model, frames = self.model, [self.frames(p) for p in pieces]
        seconds = max(p.end - p.start for p in pieces) / audio_io.SAMPLE_RATE
        options = decoding.DecodingOptions(
            language="en",
            without_timestamps=not self.timestamps,
            sample_len=min(
                model.dims.n_text_ctx // 2, 16 + math.ceil(MAX_TOKENS_PER_SECOND * seconds)
            ),
            close_segments=True,
            temperature=temperature,
            prefix=self.options.prefix,
            best_of=best_of if temperature > 0 else None,
        )
        mel = torch.stack([trimmed_mel(p.audio, model.dims.n_mels, max(frames)) for p in pieces])
        features, lengths = M.embed_each(model, mel, frames)
        return decoding.decode_batch(
            model,
            options=options,
            audio_features=features,
            audio_lengths=lengths,
            # a model's draft would need an encoder pass of its own: text drafts only
            draft=draft if isinstance(draft, decoding.TextDraft) else None,
        )

    def fallback(
        self, pieces: list[_Piece], decoded: list[decoding.DecodingResult]
    ) -> list[decoding.DecodingResult]:
        """Whisper's temperature fallback, for the pieces whose greedy text is a loop (more
        compressible than options.compression_ratio_threshold): decoded again at each next
        temperature of the schedule, best of options.best_of samples, until it is not. Whisper's
        other rule, an average log-probability under -1, is left out: a student's good pieces
        often fall under it, and reading them again does not make them better."""
        schedule = self.options.temperature
        schedule = [] if isinstance(schedule, (int, float)) else list(schedule)[1:]
        loops = replace(self.options, logprob_threshold=None)
        for temperature in schedule:
            redo = [j for j, r in enumerate(decoded) if loops.needs_fallback(r)]
            if not redo:
                break
            again = self.decode([pieces[j] for j in redo], temperature, self.options.best_of)
            for j, r in zip(redo, again):
                decoded[j] = r
        return decoded

    def advance(self, p: _Piece, r: decoding.DecodingResult) -> None:
        """Keep a decoded piece's segments; read it on from its last timestamp if its text stopped
        RESEEK_SECONDS before the piece and RESEEK_SPEECH of sound did."""
        t, n = p.track, p.end - p.start
        segments, end = self.segments(r, n, p.start)
        t.parts.append(((p.round, p.start), segments))
        t.reading -= 1
        t.left -= n if p.round == 0 else 0
        hop = audio_io.SAMPLE_RATE // 100  # quiet every 10 ms
        sound_after = (~t.quiet[(p.start + end) // hop : p.end // hop]).sum()
        if (
            self.timestamps
            and len(t.quiet) > PIECE_SECONDS * 100  # a long audio (quiet: one flag per 10 ms)
            and end
            and n - end > RESEEK_SECONDS * audio_io.SAMPLE_RATE
            and sound_after >= 100 * RESEEK_SPEECH
        ):
            t.todo.append((p.start + end, p.end, p.round + 1))

    def segments(
        self, r: decoding.DecodingResult, n_samples: int, offset: int
    ) -> tuple[list[dict], int]:
        """One decoded piece as Whisper's segments, times in seconds of the whole audio: one per
        timestamp pair, or the whole piece (text only, or silence: no text); and where in the piece
        its last segment ends (samples; 0 if that segment is empty, or the piece silence)."""
        tok = self.model.tokenizer
        seconds, start = n_samples / audio_io.SAMPLE_RATE, offset / audio_io.SAMPLE_RATE
        timed = (
            timed_segments(r.tokens, tok, seconds)
            if self.timestamps
            else [(0.0, seconds, r.tokens)]
        )
        if r.no_speech_prob > NO_SPEECH:
            timed = [(0.0, seconds, [])]
        segments = []
        for a, b, tokens in timed:
            text = tok.decode(tokens).strip()
            if not any(c.isalnum() for c in text):  # "..." or "-" is not a transcript
                text, tokens = "", []
            segments.append(
                {
                    "seek": offset // audio_io.HOP_LENGTH,
                    "start": start + a,
                    "end": start + b,
                    "text": " " + text if text else "",
                    "tokens": tokens,
                    "temperature": r.temperature,
                    "avg_logprob": r.avg_logprob,
                    "compression_ratio": r.compression_ratio,
                    "no_speech_prob": r.no_speech_prob,
                }
            )
        return segments, round(timed[-1][1] * audio_io.SAMPLE_RATE) if timed and timed[-1][2] else 0

    def finished(self, t: _Audio) -> bool:
        return not t.todo and not t.reading

    def left(self, t: _Audio) -> int:
        return t.left // audio_io.HOP_LENGTH

    def result(self, t: _Audio) -> dict:
        segments = [seg for _, segs in sorted(t.parts, key=lambda p: p[0]) for seg in segs]
        segments.sort(key=lambda seg: seg["start"])
        for i, seg in enumerate(segments):
            seg["id"] = i
        return {
            "text": "".join(seg["text"] for seg in segments),
            "segments": segments,
            "language": "en",
        }


def timed_segments(
    tokens: Sequence[int], tokenizer, seconds: float
) -> list[tuple[float, float, list[int]]]:
    """(start s, end s, text tokens) of each segment in one piece's timestamped tokens, Whisper's
    pairs <|a|> text <|b|><|c|> text <|d|>: a timestamp after text closes a segment, one before text
    opens it. Text after the last timestamp (the piece ended mid-segment) runs to the piece's end;
    no time lies past it."""
    begin, segments, start, last, text = tokenizer.timestamp_begin, [], None, 0.0, []
    for x in tokens:
        if x >= begin:
            t = min(round((x - begin) * tokenization.TIMESTAMP_STEP, 2), seconds)
            if text:
                segments.append((last if start is None else start, t, text))
                start, text = None, []
            else:
                start = t
            last = t
        elif x < tokenizer.eot:
            text.append(x)
    if text:
        segments.append((last if start is None else start, seconds, text))
    return segments


# ----------------------------------------------------------------------------------------------
# 5. Transcribing and evaluating: a loaded model knows how it reads audio
# ----------------------------------------------------------------------------------------------


class Recognizer:
    """A Whisper model ready to transcribe: 30-second windows, Whisper's long-form loop.

    The CLI, the bench and eval hold every model as a Recognizer or a Student and call its
    transcribe() or transcribe_text(): the model knows how it reads audio, nobody asks.
    A `draft` (a student's guesses) makes greedy decoding faster and changes no token.
    """

    input = "padded"
    pack = False  # load_recognizer(weights="auto") keeps Whisper's own fp32: OpenAI's exact tokens

    def __init__(self, model: M.Whisper, name: str = "", draft: Optional[decoding.Draft] = None):
        self.model, self.name, self.draft = model, name, draft

    @property
    def weights(self) -> str:
        """fp32 as stored, or fp16-dec: the decoder packed in fp16 for the CPU (pack_for_cpu)."""
        dtype = str(next(self.model.parameters()).dtype).replace("torch.float", "fp")
        return "fp16-dec" if self.model.packed else dtype

    def transcribe(
        self,
        audios: Sequence,
        options: TranscribeOptions = TranscribeOptions(),
        batch_size: int = 8,
        progress: bool = False,
        times: bool = True,
        done: Optional[Callable[[int, dict], None]] = None,
    ) -> list[dict]:
        """Per audio (path or waveform) {'text', 'segments', 'language'}, as
        transcribe.transcribe_many. `times`: whether the caller uses the segments' times (a Whisper
        model decodes the same either way). `done(i, result)`: called as soon as audio i is read to
        its end (transcribe.transcribe_many)."""
        options = options if self.draft is None else replace(options, draft=self.draft)
        return transcribe_many(
            self.model, audios, options, batch_size=batch_size, progress=progress, done=done
        )

    def check(self, options: TranscribeOptions) -> None:
        """Raise ValueError for options this model cannot honour (a Whisper model honours all)."""

    def transcribe_text(self, audios: Sequence, batch_size: int = 1) -> list[str]:
        """Greedy, no timestamps, no fallback: the decoding every model is compared under."""
        results = self.transcribe(
            audios, TranscribeOptions(temperature=0.0, without_timestamps=True), batch_size
        )
        return [r["text"].strip() for r in results]

    def drafted_by(self, student: "Recognizer") -> "Recognizer":
        """This model in teacher-exact mode: its own greedy tokens, the student guessing ahead."""
        return Recognizer(self.model, self.name, draft=student.as_draft())

    def as_draft(self) -> decoding.Draft:
        raise ValueError(f"{self.name}: only a student from `train` can draft for a model")


class Student(Recognizer):
    """A student from `train`: it reads each audio at its own length (trimmed input), greedy,
    English, with timestamps (its segments' real times) unless asked for text alone: read_long
    with Pieces."""

    input = "trimmed"
    pack = True  # the decoder in fp16 for the CPU: about twice the decoding speed

    def __init__(self, model: M.Whisper, name: str = "", round_frames: int = ROUND_FRAMES):
        super().__init__(model, name)
        self.round_frames = round_frames

    def transcribe(
        self,
        audios: Sequence,
        options: TranscribeOptions = TranscribeOptions(),
        batch_size: int = 8,
        progress: bool = False,
        times: bool = True,
        done: Optional[Callable[[int, dict], None]] = None,
    ) -> list[dict]:
        """As Recognizer.transcribe: the segments of each piece, timed by the student's timestamps
        (or one per piece with options.without_timestamps). A piece the student finds more likely
        silence than NO_SPEECH keeps no text, as Whisper skips one.

        Timestamps are decoded only where they are used, for segment times (`times`: the caller
        writes srt, vtt, tsv or json). Otherwise text only, which is faster and on real speech of
        other people no worse (timestamps make a student invent a word or two on odd voices)."""
        self.check(options)
        timestamps = times and not options.without_timestamps
        return read_long(Pieces(self, options, timestamps), audios, batch_size, progress, done)

    def check(self, options: TranscribeOptions) -> None:
        first = (
            options.temperature
            if isinstance(options.temperature, (int, float))
            else options.temperature[0]
        )
        cannot = [
            what
            for what, asked in [
                (f"--language {options.language}", options.language not in (None, "en", "english")),
                (f"--task {options.task}", options.task != "transcribe"),
                (f"--beam-size {options.beam_size}", options.beam_size is not None),
                ("--initial-prompt", bool(options.initial_prompt)),
                (f"--temperature {options.temperature}", first != 0),
            ]
            if asked
        ]
        if cannot:
            raise ValueError(
                f"{self.name}: a student from `train` decodes English greedily (then falls back to "
                f"the next temperatures on a loop), so it cannot honour {', '.join(cannot)}"
            )

    def drafted_by(self, student: Recognizer) -> Recognizer:
        raise ValueError(
            f"{self.name}: the model to draft for must be a Whisper model, not a student"
        )

    def as_draft(self) -> decoding.Draft:
        return decoding.Draft(self.model, round_frames=self.round_frames)


def student_info(cfg) -> dict:
    """What a student's checkpoint says about how it reads audio (and where it came from)."""
    return {
        "input": cfg.input,
        "round_frames": cfg.round_frames,
        "teacher": cfg.teacher,
        "loss": cfg.loss,
    }


def as_recognizer(model: M.Whisper, info: Optional[dict] = None, name: str = "") -> Recognizer:
    """A Student if `info` (a checkpoint's 'fastwhisper' entry, see student_info) says it was
    trained for trimmed input, else a Recognizer (30-second windows)."""
    if info and info.get("input") == "trimmed":
        return Student(model, name, info.get("round_frames", ROUND_FRAMES))
    return Recognizer(model, name)


def load_recognizer(spec, device="cpu", weights: str = "auto") -> Recognizer:
    """A model ready to transcribe, read once from a name or a path. 'padded:PATH' reads a student
    as any Whisper tool reads its .pt: 30-second windows, timestamps and all (a Recognizer).

    weights: 'fp32' as stored; 'fp16' packs the decoder for the CPU (cpu.pack_for_cpu: half the
    bytes per token, about twice the decoding speed, logits within ~1e-3); 'auto' packs a student
    from `train` and leaves Whisper checkpoints in fp32, so they give OpenAI's tokens exactly.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, not {weights!r}")
    padded = str(spec).startswith(PADDED_PREFIX)
    model, extra = weight_files.open_model(
        str(spec)[len(PADDED_PREFIX) :] if padded else spec, device=device
    )
    recognizer = (
        Recognizer(model, str(spec))
        if padded
        else as_recognizer(model, extra.get("fastwhisper"), str(spec))
    )
    if weights == "fp16" or (weights == "auto" and recognizer.pack):
        cpu.pack_for_cpu(model)
    return recognizer


def read_utterances(utts: Sequence[data.Utterance], warn: bool = True) -> tuple[list, list[str]]:
    """The waveforms of the utterances whose audio decodes (through the audio cache), and their
    texts; each other one is left out, with a warning if `warn`."""
    audios, refs = [], []
    for u in utts:
        try:
            audios.append(audio_io.load_audio(u.audio, cache=True))
            refs.append(u.text or "")
        except (fileio.AudioError, OSError) as e:
            if warn:
                print(f"warning: {e}", file=sys.stderr)
    return audios, refs


def with_references(utts: Sequence[data.Utterance], source: str = "") -> list:
    """The utterances whose reference text keeps words after text_norm.normalize_text; the others
    are left out of WER (their hypotheses would count as insertions), with one warning naming them.
    A set with no reference at all is kept whole: it can still be timed (its WER is nan)."""
    kept = [u for u in utts if text_norm.normalize_text(u.text or "")]
    if kept and len(kept) < len(utts):
        empty = [u.id for u in utts if not text_norm.normalize_text(u.text or "")]
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        print(
            f"warning: {source or 'evaluation data'}: {len(empty)} utterance(s) with an empty "
            f"reference text left out of WER: {shown}",
            file=sys.stderr,
        )
        return kept
    return list(utts)


def evaluate(
    models: Sequence[str],
    utts: Sequence[data.Utterance],
    device="cpu",
    batch_size: int = 1,
    names: Optional[Sequence[str]] = None,
    quiet: bool = False,
    weights: str = "auto",
    source: str = "",
) -> list[dict]:
    """WER and speed of each model on the same utterances (audio decoded beforehand, so only the
    model is timed; one warm-up utterance first). The first model is the speed baseline. Utterances
    without reference words are left out (with_references: `source` names the data)."""
    audios, refs = read_utterances(with_references(utts, source))
    if not audios:
        raise fileio.DataError("no readable audio to evaluate on")
    rows = []
    for i, spec in enumerate(models):
        recognizer = load_recognizer(spec, device, weights)
        recognizer.transcribe_text(audios[:1], batch_size)  # warm-up
        start = time.perf_counter()
        hyps = recognizer.transcribe_text(audios, batch_size)
        seconds = time.perf_counter() - start
        row = {
            "model": names[i] if names else str(spec),
            "params (M)": recognizer.model.num_parameters() / 1e6,
            "input": recognizer.input,
            "weights": recognizer.weights,
            "WER %": 100 * text_norm.wer(refs, hyps) if any(refs) else float("nan"),
            "s / utt": seconds / len(audios),
            "utterances": len(audios),
        }
        rows.append(row)
        if not quiet:
            print(
                f"  {row['model']}: WER {row['WER %']:.2f}%, {row['s / utt']:.3f} s per utterance",
                file=sys.stderr,
            )
    for row in rows:
        row["speed-up"] = rows[0]["s / utt"] / row["s / utt"]
    return rows


def format_table(
    rows: Sequence[dict],
    columns: Sequence[str] = (
        "model",
        "params (M)",
        "input",
        "weights",
        "WER %",
        "OOD WER %",
        "s / utt",
        "speed-up",
    ),
) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    columns = [c for c in columns if any(c in r for r in rows)]
    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(vals):
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths))
        )

    return "\n".join([line(columns)] + [line(r) for r in cells])
