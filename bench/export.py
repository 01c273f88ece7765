"""bench export: each runtime reads the models `fastwhisper.py export` wrote, side by side with the
project's own reading. One reader per runtime: `read_<runtime>(path, audios, trimmed=False)` loads
an exported model in that runtime and returns one text per audio (16 kHz waveforms), greedy, text
only, English, no timestamps. `trimmed`: a student read at each input's own length, where the
runtime accepts shorter inputs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import audio_io
import tokenization
import transcribe

# ----------------------------------------------------------------------------------------------
# 1. The project itself (export --to pt)
# ----------------------------------------------------------------------------------------------


def read_fastwhisper(path: Path, audios: list[np.ndarray], trimmed: bool = False) -> list[str]:
    """The project's own reading of a .pt: a student trimmed (its pieces, fp16 decoder), or any
    model in Whisper's 30 s windows (`padded:`), batch 8."""
    spec = str(path) if trimmed else transcribe.PADDED_PREFIX + str(path)
    return transcribe.load_recognizer(spec).transcribe_text(audios, 8)


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


ROOT = Path(__file__).resolve().parent.parent


def read_faster_whisper(
    path: Path, audios: list[np.ndarray], trimmed: bool = False, threads: int = 2
) -> list[str]:
    """faster-whisper's WhisperModel on the CTranslate2 folder (it reads tokenizer.json and
    preprocessor_config.json there), as its users call it: greedy at temperature 0 only (no
    fallback), English, no timestamps, no VAD; its own feature extractor, 30 s windows."""
    from faster_whisper import WhisperModel  # a test requirement, not the project's

    if trimmed:
        raise ValueError("faster-whisper pads every input to 30 s: no trimmed reading")
    model = WhisperModel(str(path), device="cpu", compute_type="default", cpu_threads=threads)
    texts = []
    for audio in audios:
        segments, _ = model.transcribe(
            np.asarray(audio, np.float32),
            language="en",
            beam_size=1,
            best_of=1,
            temperature=0.0,
            without_timestamps=True,
            vad_filter=False,
        )
        texts.append(" ".join(segment.text.strip() for segment in segments).strip())
    return texts


# ----------------------------------------------------------------------------------------------
# 3. whisper.cpp (a ggml file), through pywhispercpp
# ----------------------------------------------------------------------------------------------

WHISPERCPP_THREADS = 2
# whisper.cpp decodes at most half the text context less 4 tokens a window (Whisper: half), so a
# loop stops 4 tokens sooner there
WHISPERCPP_SAMPLE_LEN = 448 // 2 - 4


def whispercpp_audio_ctx(n_samples: int, round_frames: int = transcribe.ROUND_FRAMES) -> int:
    """whisper.cpp's audio_ctx for a student's trimmed reading of n_samples: the encoder
    positions (half the mel frames) of the student's rounded length (transcribe.trimmed_frames)."""
    return transcribe.trimmed_frames(n_samples, round_frames) // 2


def whispercpp_max_tokens(n_samples: int) -> int:
    """The tokens a student's reading allows a piece of n_samples (transcribe.Pieces.decode)."""
    seconds = n_samples / audio_io.SAMPLE_RATE
    return 16 + math.ceil(transcribe.MAX_TOKENS_PER_SECOND * seconds)


def read_whispercpp(
    path: Path,
    audios: Sequence[np.ndarray],
    trimmed: bool = False,
    round_frames: int = transcribe.ROUND_FRAMES,
    threads: int = WHISPERCPP_THREADS,
    frontend: str = "whispercpp",
) -> list[str]:
    """Each audio's text as whisper.cpp reads the ggml file at `path`: greedy, no temperature
    fallback, English, no timestamps, one segment, Whisper's non-speech symbols suppressed.

    frontend: "whispercpp", its own log-mel of the waveform, which it pads with 30 s of silence
    first (as transformers' feature extractor does); "whisper", OpenAI's window (openai-whisper,
    faster-whisper and this project): the project's log-mel of the audio alone, handed over with
    whisper_set_mel, and whisper.cpp fills the rest of the 30 s window with zeros. The two
    paddings differ after the speech, and greedy text follows the difference on some recordings.

    Padded (default): 30 s windows, as Whisper. Trimmed: a student's reading: each piece of
    speech of an audio (transcribe.cut_pieces: long silence left out, as the student's reading
    does) read at its own length, whisper.cpp's audio_ctx set to the encoder positions the student
    reads for it (its length rounded up to round_frames mel frames), with at most the tokens the
    student's reading allows for that length; the pieces' texts joined.

    whisper.cpp runs in a process of its own (the whole process is what a user runs, its log
    stays out of ours, and a crash there is an error here, not the end of this process)."""
    if frontend not in ("whispercpp", "whisper"):
        raise ValueError(f"frontend {frontend!r}: use 'whispercpp' or 'whisper'")
    if trimmed and frontend == "whisper":
        raise ValueError("OpenAI's window is a 30 s reading: read trimmed with frontend whispercpp")
    if trimmed:  # the student's pieces of speech (transcribe.cut_pieces), each read alone
        owners, pieces = [], []
        for i, audio in enumerate(audios):
            for a, b in transcribe.cut_pieces(np.asarray(audio))[0]:
                owners.append(i)
                pieces.append(np.asarray(audio[a:b], np.float32))
        texts = [[] for _ in audios]
        for i, text in zip(owners, _run_whispercpp(path, pieces, round_frames, threads)):
            texts[i].append(text)
        return [" ".join(t for t in parts if t) for parts in texts]
    return _run_whispercpp(path, audios, None, threads, frontend)


def _run_whispercpp(
    path: Path,
    audios: Sequence[np.ndarray],
    round_frames: Optional[int],
    threads: int,
    frontend: str = "whispercpp",
) -> list[str]:
    """whisper.cpp's text of each audio, read whole at its trimmed length if round_frames."""
    trimmed = round_frames is not None
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.json"
        np.savez(Path(tmp) / "audio.npz", *[np.asarray(a, np.float32) for a in audios])
        job.write_text(
            json.dumps(
                {
                    "model": str(Path(path).resolve()),
                    "audio": str(Path(tmp) / "audio.npz"),
                    "audio_ctx": [
                        whispercpp_audio_ctx(len(a), round_frames) if trimmed else 0 for a in audios
                    ],
                    "max_tokens": [whispercpp_max_tokens(len(a)) if trimmed else 0 for a in audios],
                    "threads": threads,
                    "frontend": frontend,
                    "out": str(Path(tmp) / "texts.json"),
                }
            )
        )
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        command = [sys.executable, "-m", "bench.export", "--whispercpp-job", str(job)]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            lines = [x for x in result.stderr.splitlines() if x.strip()] or ["no message"]
            raise RuntimeError(
                f"whisper.cpp failed on {path} (exit {result.returncode}): {lines[-1]}"
            )
        return json.loads((Path(tmp) / "texts.json").read_text())


def _whispercpp_job(job_file: str) -> None:
    """The reading read_whispercpp hands to a process of its own."""
    from pywhispercpp.model import Model  # a test requirement, not the project's

    job = json.loads(Path(job_file).read_text())
    model = Model(
        job["model"],
        redirect_whispercpp_logs_to=None,
        # whisper.cpp's flash attention (its default) drifts from Whisper, far more with audio_ctx
        context_params={"flash_attn": False},
        n_threads=job["threads"],
        language="en",
        no_timestamps=True,
        single_segment=True,
        no_context=True,
        temperature=0.0,
        temperature_inc=0.0,  # no fallback: the greedy text alone
        suppress_nst=True,
        print_progress=False,
        print_realtime=False,
        print_timestamps=False,
    )
    texts = []
    with np.load(job["audio"]) as audios:
        for i, (ctx, tokens) in enumerate(zip(job["audio_ctx"], job["max_tokens"])):
            audio = np.ascontiguousarray(audios[f"arr_{i}"], np.float32)
            if job["frontend"] == "whisper":
                texts.append(_whispercpp_window(model, audio))
                continue
            segments = model.transcribe(audio, audio_ctx=ctx, max_tokens=tokens)
            texts.append(" ".join(s.text.strip() for s in segments).strip())
    Path(job["out"]).write_text(json.dumps(texts))


def _whispercpp_window(model, audio: np.ndarray) -> str:
    """whisper.cpp's text of OpenAI's window of the audio: the project's log-mel of the audio
    alone (normalised with 30 s of silence after it, as Whisper computes it), set in its context;
    whisper_full given no samples reads that log-mel instead of making its own."""
    import _pywhispercpp as pw  # pywhispercpp's bindings of whisper.h

    ctx = model._ctx
    mel = np.ascontiguousarray(
        whisper_log_mel(audio, pw.whisper_model_n_mels(ctx)).numpy(), np.float32
    )
    if pw.whisper_set_mel(ctx, mel.ravel(), mel.shape[1], mel.shape[0]) != 0:
        raise RuntimeError("whisper.cpp refused the log-mel (whisper_set_mel)")
    if pw.whisper_full(ctx, model._params, np.zeros(0, np.float32), 0) != 0:
        raise RuntimeError("whisper.cpp failed (whisper_full)")
    texts = [
        pw.whisper_full_get_segment_text(ctx, i) for i in range(pw.whisper_full_n_segments(ctx))
    ]
    return " ".join(t.decode("utf-8", "replace").strip() for t in texts).strip()


# ----------------------------------------------------------------------------------------------
# 4. Hugging Face transformers (export --to hf)
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


def whisper_log_mel(audio: np.ndarray, n_mels: int):
    """The log-mel frames of the audio alone, normalised with 30 s of silence after it, as
    Whisper's transcribe computes them."""
    mel = audio_io.log_mel_spectrogram(audio, n_mels, padding=audio_io.N_SAMPLES)
    return mel[:, : len(audio) // audio_io.HOP_LENGTH]


def whisper_window(audio: np.ndarray, n_mels: int):
    """OpenAI's 30 s window of audio up to 30 s long: whisper_log_mel, then zeros up to 3000
    frames."""
    return audio_io.pad_or_trim(whisper_log_mel(audio, n_mels), audio_io.N_FRAMES)


# ----------------------------------------------------------------------------------------------
# 5. The table: each runtime x (teacher, student), whole processes, side by side
# ----------------------------------------------------------------------------------------------
# Each reading is one process, as a user runs it: start, import the runtime, load the exported
# model, read the audio, write the texts; its wall time is the figure. The audio is decoded once,
# before, so every process reads the same waveforms (audio_io's cache).

DATA_SETS = ("real-speech-dev", "asterisk:test")


@dataclass(frozen=True)
class Runtime:
    name: str
    format: str  # export --to
    quantization: str
    reader: str  # a read_<runtime> function of this module
    trimmed: bool  # whether it reads a student at each input's own length
    needs: str  # the package it imports


RUNTIMES = (
    Runtime("fastwhisper", "pt", "float32", "read_fastwhisper", True, "torch"),
    Runtime("faster-whisper", "ct2", "float16", "read_faster_whisper", False, "faster_whisper"),
    Runtime("ctranslate2", "ct2", "float16", "read_ctranslate2", True, "ctranslate2"),
    Runtime("ctranslate2 int8", "ct2", "int8", "read_ctranslate2", True, "ctranslate2"),
    Runtime("whisper.cpp", "ggml", "f16", "read_whispercpp", True, "pywhispercpp"),
    Runtime("transformers", "hf", "float32", "read_transformers", False, "transformers"),
)


def timed_process(runtime: Runtime, model: Path, audio_files: list[str], trimmed: bool, threads):
    """(seconds, texts) of one process reading the files with the runtime."""
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.json"
        out = Path(tmp) / "texts.json"
        job.write_text(
            json.dumps(
                {
                    "reader": runtime.reader,
                    "model": str(model),
                    "audio": audio_files,
                    "trimmed": trimmed,
                    "out": str(out),
                }
            )
        )
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        command = [sys.executable, "-m", "bench.export", "--job", str(job)]
        start = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            lines = [x for x in result.stderr.splitlines() if x.strip()] or ["no message"]
            raise RuntimeError(f"{runtime.name} failed on {model}: {lines[-1]}")
        return seconds, json.loads(out.read_text())


def _run_job(job_file: str) -> None:
    """A process of timed_process: read the job's audio with its reader, write the texts."""
    job = json.loads(Path(job_file).read_text())
    audios = [audio_io.load_audio(a, cache=True) for a in job["audio"]]
    texts = globals()[job["reader"]](Path(job["model"]), audios, trimmed=job["trimmed"])
    Path(job["out"]).write_text(json.dumps(texts))


def available(runtime: Runtime) -> Optional[str]:
    """None, or why the runtime cannot run here (its package is not installed)."""
    import importlib.util

    if importlib.util.find_spec(runtime.needs) is None:
        return f"{runtime.needs} is not installed (pip install -r requirements-test.txt)"
    return None


def export_table(
    teacher: str = "tiny.en",
    student: str = "runs/askd/student.pt",
    runtimes: Sequence[Runtime] = RUNTIMES,
    data_sets: Sequence[str] = DATA_SETS,
    limit: Optional[int] = None,
    threads: int = 2,
) -> list[dict]:
    """Teacher and student exported to each runtime and read there by whole processes, on each
    data set: seconds and WER, the student's speed-up over the teacher in the same runtime.
    Printed as a table; the rows are returned."""
    import data
    import export
    import text_norm

    sets = {}
    for name in data_sets:
        utts = [u for u in data.load_source(name) if text_norm.normalize_text(u.text or "")]
        utts = utts[:limit] if limit else utts
        transcribe.read_utterances(utts)  # decoded once, into the audio cache
        sets[name] = ([u.audio for u in utts], [u.text for u in utts])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in runtimes:
            why = available(runtime)
            if why:
                print(f"warning: {runtime.name} skipped: {why}", file=sys.stderr)
                continue
            readings = [("teacher", teacher, False), ("student", student, False)]
            readings += [("student", student, True)] if runtime.trimmed else []
            paths = {}
            for role, source in (("teacher", teacher), ("student", student)):
                suffix = {"pt": ".pt", "ggml": ".bin"}.get(runtime.format, "")
                out = Path(tmp) / f"{role}-{runtime.format}-{runtime.quantization}{suffix}"
                if not out.exists():
                    export.export(source, runtime.format, out, runtime.quantization)
                paths[role] = out
            base = {}
            for role, _, trimmed in readings:
                row = {
                    "runtime": runtime.name,
                    "format": f"{runtime.format} {runtime.quantization}",
                    "model": role,
                    "reading": "trimmed" if trimmed else "30 s",
                }
                total = 0.0
                for name, (files, refs) in sets.items():
                    seconds, texts = timed_process(runtime, paths[role], files, trimmed, threads)
                    row[f"s {name}"] = seconds
                    row[f"WER % {name}"] = 100 * text_norm.wer(refs, texts)
                    total += seconds
                base.setdefault(runtime.name, total)  # the teacher's, read first
                row["speed-up"] = base[runtime.name] / total
                rows.append(row)
    counts = ", ".join(f"{name} ({len(files)} files)" for name, (files, _) in sets.items())
    print(
        f"Whole processes, {threads} threads each, greedy, text only, English: {teacher} and "
        f"{student} exported and read in each runtime, on {counts}; speed-up: against the "
        "teacher in the same runtime"
    )
    columns = ["runtime", "format", "model", "reading"]
    for name in sets:
        columns += [f"s {name}", f"WER % {name}"]
    print(transcribe.format_table(rows, columns=columns + ["speed-up"]))
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--whispercpp-job":
        _whispercpp_job(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--job":
        _run_job(sys.argv[2])
