"""bench export: each runtime reads the models `fastwhisper.py export` wrote, side by side with the
project's own reading. One reader per runtime: `read_<runtime>(path, audios, trimmed=False)` loads
an exported model in that runtime and returns one text per audio (16 kHz waveforms), greedy, text
only, English, no timestamps. `trimmed`: a student read at each input's own length, where the
runtime accepts shorter inputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

import audio_io
import tokenization
import transcribe

# ----------------------------------------------------------------------------------------------
# 2. CTranslate2 (the engine of faster-whisper)
# ----------------------------------------------------------------------------------------------
# faster-whisper would need the folder's tokenizer.json; ctranslate2.models.Whisper itself needs
# only the folder export writes, so it is driven here directly, as faster-whisper drives it:
# Whisper's log-mel (audio_io), the start sequence, greedy generate, ids read back with the
# project's tokenizer.

CT2_NO_SPEECH = 0.6  # a 30 s window likelier silence than this, and improbable, keeps no text
CT2_LOGPROB = -1.0  # (Whisper's and faster-whisper's thresholds, as transcribe's Windows use)


def read_ctranslate2(
    path: Path, audios: list[np.ndarray], trimmed: bool = False, threads: int = 2
) -> list[str]:
    """Each audio's text from the CTranslate2 folder `path`: in Whisper's 30 s windows (each
    conditioned on the text before it), or `trimmed`, as a student reads: each piece of speech
    (transcribe.cut_pieces) at its own length, rounded up to the student's round_frames (from the
    folder's config.json), the same mel frames transcribe's Student computes."""
    import ctranslate2

    path = Path(path)
    model = ctranslate2.models.Whisper(str(path), device="cpu", intra_threads=threads)
    tok = tokenization.tokenizer_from_folder(path)
    info = json.loads((path / "config.json").read_text(encoding="utf-8")).get("fastwhisper") or {}
    start = [*tok.sot_sequence(language="en" if tok.multilingual else None), tok.no_timestamps]
    if trimmed:
        round_frames = info.get("round_frames", transcribe.ROUND_FRAMES)
        return [_ct2_trimmed(model, tok, start, a, round_frames) for a in audios]
    return [_ct2_padded(model, tok, start, a) for a in audios]


def _ct2_generate(model, mel, prompt: list[int], max_length: int = 448):
    import ctranslate2

    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None].numpy()))
    return model.generate(
        features,
        [prompt],
        beam_size=1,
        max_length=max_length,
        return_scores=True,
        return_no_speech_prob=True,
    )[0]


def _ct2_padded(model, tok, start: list[int], audio: np.ndarray) -> str:
    mel = audio_io.log_mel_spectrogram(audio, model.n_mels, padding=audio_io.N_SAMPLES)
    content, seek, text = mel.shape[-1] - audio_io.N_FRAMES, 0, []
    while seek < content:
        size = min(audio_io.N_FRAMES, content - seek)
        window = audio_io.pad_or_trim(mel[:, seek : seek + size], audio_io.N_FRAMES)
        prompt = ([tok.sot_prev, *text[-223:]] if text else []) + start
        r = _ct2_generate(model, window, prompt)
        tokens = r.sequences_ids[0]
        # generate's score is the log-probability over the length; Whisper's is over length + 1
        avg_logprob = r.scores[0] * len(tokens) / (len(tokens) + 1)
        if not (r.no_speech_prob > CT2_NO_SPEECH and avg_logprob <= CT2_LOGPROB):
            text += tokens
        seek += size
    return tok.decode(text).strip()


def _ct2_trimmed(model, tok, start: list[int], audio: np.ndarray, round_frames: int) -> str:
    texts = []
    for a, b in transcribe.cut_pieces(audio)[0]:
        frames = transcribe.trimmed_frames(b - a, round_frames)
        mel = transcribe.trimmed_mel(audio[a:b], model.n_mels, frames)
        seconds = (b - a) / audio_io.SAMPLE_RATE
        cap = min(224, 16 + math.ceil(transcribe.MAX_TOKENS_PER_SECOND * seconds))
        # CTranslate2 generates at most min(max_length / 2, max_length - prompt) tokens
        r = _ct2_generate(model, mel, start, max_length=2 * cap)
        text = tok.decode(r.sequences_ids[0]).strip()
        if r.no_speech_prob <= transcribe.NO_SPEECH and any(c.isalnum() for c in text):
            texts.append(text)
    return " ".join(texts)
