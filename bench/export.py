"""bench export: the exported teacher and student read in each runtime, side by side.

One reader per runtime, each `read_<runtime>(path, audios, trimmed=False) -> list[str]`: load the
model `fastwhisper.py export` wrote at `path` in that runtime, read each 16 kHz waveform greedily,
English, text only (no timestamps), one text per audio. `trimmed` asks for a student's reading at
the input's own length, where the runtime can read shorter input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import audio_io

# ----------------------------------------------------------------------------------------------
# Hugging Face transformers (export --to hf)
# ----------------------------------------------------------------------------------------------


def read_transformers(
    path: Path,
    audios: list[np.ndarray],
    trimmed: bool = False,
    batch_size: int = 8,
    frontend: str = "transformers",
) -> list[str]:
    """WhisperForConditionalGeneration and WhisperProcessor from the folder, computing in float32
    (a float16 folder is widened: half precision is slow on a CPU). Audio up to 30 s is one window,
    batch_size at a time; longer audio goes through transformers' own long-form loop, one at a time
    (it seeks by timestamps, then drops them).

    frontend: "transformers", its feature extractor, which pads the audio to 30 s before the
    log-mel; "whisper", OpenAI's window (openai-whisper, faster-whisper and this project): the
    log-mel of the audio alone, zeros after its end. The model reads the same speech either way,
    but the two paddings differ, and greedy text follows the difference on some utterances."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    if frontend not in ("transformers", "whisper"):
        raise ValueError(f"frontend {frontend!r}: use 'transformers' or 'whisper'")
    if trimmed:
        raise ValueError("transformers' Whisper reads 30 s windows only: no trimmed reading")
    model = WhisperForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32).eval()
    processor = WhisperProcessor.from_pretrained(str(path))
    extract, tokenizer = processor.feature_extractor, processor.tokenizer
    options = {"do_sample": False, "num_beams": 1}
    if model.generation_config.is_multilingual:
        options.update(language="en", task="transcribe")
    rate, texts = audio_io.SAMPLE_RATE, [""] * len(audios)
    short = [i for i, a in enumerate(audios) if len(a) <= audio_io.N_SAMPLES]
    with torch.inference_mode():
        for start in range(0, len(short), batch_size):
            chunk = short[start : start + batch_size]
            features = (
                extract(
                    [audios[i] for i in chunk], sampling_rate=rate, return_tensors="pt"
                ).input_features
                if frontend == "transformers"
                else torch.stack([whisper_window(audios[i], extract.feature_size) for i in chunk])
            )
            # the project's sample_len: half the text context
            limit = model.config.max_target_positions // 2
            out = model.generate(features, max_new_tokens=limit, return_timestamps=False, **options)
            for i, text in zip(chunk, tokenizer.batch_decode(out, skip_special_tokens=True)):
                texts[i] = text.strip()
        for i in sorted(set(range(len(audios))) - set(short)):
            features = extract(
                audios[i],
                sampling_rate=rate,
                return_tensors="pt",
                truncation=False,
                padding="longest",
                return_attention_mask=True,
            )
            out = model.generate(
                features.input_features,
                attention_mask=features.attention_mask,
                return_timestamps=True,
                **options,
            )
            texts[i] = tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip()
    return texts


def whisper_window(audio: np.ndarray, n_mels: int):
    """OpenAI's 30 s window of audio up to 30 s long: its log-mel (normalised with 30 s of silence
    after it, as Whisper's transcribe computes it), then zeros up to 3000 frames."""
    mel = audio_io.log_mel_spectrogram(audio, n_mels, padding=audio_io.N_SAMPLES)
    frames = len(audio) // audio_io.HOP_LENGTH
    return audio_io.pad_or_trim(mel[:, :frames], audio_io.N_FRAMES)
