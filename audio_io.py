"""Audio in: a file on disk to Whisper's log-mel features.

Audio files are decoded to 16 kHz mono float32 (WAV parsed here, everything else through ffmpeg),
resampled with a windowed-sinc filter when needed, measured for loudness and cut at pauses, and
turned into Whisper's exact log-mel spectrogram. Live audio (a stream as it arrives) is
streaming.py's.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import warnings
import wave
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

import fileio

# Whisper's fixed audio front end: 25 ms windows every 10 ms over 30 s chunks.
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30  # seconds of audio the encoder sees
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a chunk
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a chunk
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100: one frame per 10 ms


# ----------------------------------------------------------------------------------------------
# 1. Audio in: WAV parsed here, everything else decoded by ffmpeg
# ----------------------------------------------------------------------------------------------


def load_audio(path, sr: int = SAMPLE_RATE, cache: bool = False) -> np.ndarray:
    """Decode an audio file to a 1-D float32 mono waveform at `sr` Hz, values in [-1, 1].

    cache=True keeps the decoded array under cache_dir()/audio, keyed by the file's
    path, size and mtime, which turns re-reading a corpus from ffmpeg seconds into
    a few milliseconds per file. A FIFO, `<(...)` (/dev/fd/N) or other stream is read
    to its end first, and never cached.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise fileio.AudioError(f"{path}: file not found")
    if os.path.isdir(path):
        raise fileio.AudioError(f"{path}: is a directory, not an audio file")
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # its size says nothing, and it can be read only once
        return _decode(path, sr, _read_stream(path))
    if st.st_size == 0:
        raise fileio.AudioError(f"{path}: empty file")
    if not cache:
        return _decode(path, sr)

    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{sr}"
    cached = fileio.cache_dir() / "audio" / (hashlib.sha1(key.encode()).hexdigest() + ".npy")
    try:
        return np.load(cached)
    except (OSError, ValueError):
        pass  # not cached yet (or a damaged entry): decode and (re)write it
    audio = _decode(path, sr)
    fileio.write_atomic(cached, _npy_bytes(audio))
    return audio


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
    return fileio.write_atomic(dest, buffer.getvalue())


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
                raise fileio.AudioError(
                    f"{path}: the stream holds more than "
                    f"{MAX_STREAM_BYTES >> 30} GiB; save it to a file first"
                )
    if not total:
        raise fileio.AudioError(f"{path}: empty input (nothing could be read from it)")
    return b"".join(parts)


def _decode(path: str, sr: int, blob: Optional[bytes] = None) -> np.ndarray:
    """Decode the file at `path`, or `blob` (a stream's bytes, `path` naming it in errors)."""
    if path.lower().endswith(
        ".raw"
    ):  # headerless 16 kHz mono s16le, as speech toolkits ship test audio
        pcm = (
            np.fromfile(path, "<i2") if blob is None else np.frombuffer(blob, "<i2", len(blob) // 2)
        )
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
            raise fileio.AudioError(f"{path}: WAV file has no data chunk")
        chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if chunk_id == b"fmt ":
            fmt = f.read(chunk_size)
            f.seek(chunk_size & 1, 1)  # chunks are padded to an even length
        elif chunk_id == b"data":
            break
        else:
            f.seek(chunk_size + (chunk_size & 1), 1)
    if fmt is None or len(fmt) < 16:
        raise fileio.AudioError(f"{path}: WAV file has no valid fmt chunk before its data")
    # Streaming writers leave the size at 0xFFFFFFFF (or just wrong), a crashed recorder at 0:
    # read what is there.
    raw = f.read(size - f.tell() if chunk_size == 0 else min(chunk_size, size - f.tell()))
    got = len(raw)

    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # first two bytes of the SubFormat GUID
    if channels == 0 or rate == 0 or block_align == 0 or block_align % channels:
        raise fileio.AudioError(
            f"{path}: invalid WAV header ({channels} channels, {rate} Hz, "
            f"{block_align} bytes per frame)"
        )
    if not WAV_RATES[0] <= rate <= WAV_RATES[1]:
        raise fileio.AudioError(
            f"{path}: sample rate {rate} Hz is outside "
            f"{WAV_RATES[0]}-{WAV_RATES[1]} Hz (a damaged WAV header?)"
        )
    need = channels * -(-bits // 8)
    if tag in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT) and block_align != need:
        raise fileio.AudioError(
            f"{path}: invalid WAV header ({bits}-bit samples in {channels} "
            f"channel(s) take {need} bytes per frame, not {block_align})"
        )
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
            raise fileio.AudioError(
                f"{path}: the WAV holds {np.count_nonzero(~np.isfinite(x))} NaN or infinite samples"
            )
        x = np.clip(x, -1.0, 1.0)  # as ffmpeg's conversion to 16-bit would
    else:
        return None
    if chunk_size == 0 and raw:
        warnings.warn(
            f"{path}: the WAV header declares no audio (data size 0) but "
            f"{len(raw) / block_align / rate:.2f} s follow it: read to the end of the "
            f"file",
            stacklevel=4,
        )
    elif 0 < chunk_size < 0xFFFFFFFF and got < chunk_size:
        warnings.warn(
            f"{path}: the WAV header declares {chunk_size / block_align / rate:.2f} s of "
            f"audio, the file holds {got / block_align / rate:.2f} s: reading what is "
            f"there",
            stacklevel=4,
        )
    x = x.reshape(-1, channels)
    mono = x[:, 0] if channels == 1 else x.mean(axis=1)
    return np.ascontiguousarray(mono, dtype=np.float32), rate


def _decode_ffmpeg(path: str, sr: int, blob: Optional[bytes] = None) -> np.ndarray:
    if shutil.which("ffmpeg") is None:
        kind = os.path.splitext(path)[1] or "non-WAV"
        raise fileio.AudioError(
            f"{path}: ffmpeg is not installed; it is needed to decode {kind} files "
            f"(install it, e.g. `apt-get install ffmpeg`, or convert to WAV)"
        )
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
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-threads",
        "0",
        "-i",
        "file:" + os.path.abspath(source),
        "-f",
        "s16le",
        "-ac",
        "1",
        "-acodec",
        "pcm_s16le",
        "-ar",
        str(sr),
        "-",
    ]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        last = last.split(": ", 1)[1] if last.startswith("file:") and ": " in last else last
        raise fileio.AudioError(f"{path}: cannot decode audio (ffmpeg: {last})")
    return np.frombuffer(proc.stdout, np.int16).astype(np.float32) / 32768.0


# A polyphase table (phases x taps) or packed kernel holds at most this many coefficients; a ratio
# that needs more (an odd rate such as 44101 Hz, or an absurd one) is filtered block by block.
MAX_POLYPHASE_TAPS = 2**20
# Outputs x taps (x rows) filtered at once on that block-by-block path: bounds its extra memory.
DIRECT_BLOCK = 2**17


def resample(
    x, orig_sr: int, new_sr: int, zeros: int = 32, rolloff: float = 0.95, beta: float = 10.0
):
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
    signal = F.pad(
        t.reshape(math.prod(shape), 1, n), (width - 1, (n_blocks + 1) * down + 2 * width)
    )
    out = torch.empty(signal.shape[0], n_blocks, up, dtype=t.dtype, device=t.device)
    # Phases are packed into one kernel of width (offset spread + 2*width); for odd
    # ratios with thousands of phases that would be huge, so go a group at a time.
    group = max(1, MAX_POLYPHASE_TAPS // (down + 2 * width))
    for p0 in range(0, up, group):
        p1 = min(up, p0 + group)
        base = offsets[p0]
        kernel = np.zeros((p1 - p0, offsets[p1 - 1] - base + 2 * width))
        for p in range(p0, p1):
            kernel[p - p0, offsets[p] - base : offsets[p] - base + 2 * width] = taps[p]
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
    offsets = phase * down // up  # whole input samples before each phase's time
    frac = phase * down / up - offsets  # and the fraction of a sample left over
    t = frac[:, None] - np.arange(-width + 1, width + 1)[None, :]  # distance to each tap
    return up, down, width, offsets, _kaiser_sinc(t, cutoff, width, beta)


# Points of the fine filter table the block-by-block path interpolates in.
FILTER_TABLE = 2**18


@functools.lru_cache(maxsize=4)
def _filter_table(cutoff, width, beta):
    return _kaiser_sinc(np.linspace(-width, width, FILTER_TABLE + 1), cutoff, width, beta)


def _resample_direct(
    x: np.ndarray, orig_sr: int, new_sr: int, cutoff: float, width: int, beta: float
) -> np.ndarray:
    """resample() of rows `x` for any ratio: output o sits at input time o*orig/new exactly, its
    taps (clipped to the input) are read from a fine table of the filter by linear interpolation,
    and DIRECT_BLOCK outputs x taps are filtered at a time."""
    rows, n = x.shape
    n_out = -(-n * new_sr // orig_sr)
    out = np.zeros((rows, n_out))
    table = _filter_table(cutoff, width, beta)
    scale = FILTER_TABLE / (2 * width)  # table points per input sample
    span = min(2 * width, n)  # taps of an output inside the input
    budget = max(1, DIRECT_BLOCK // max(1, rows))
    block = max(1, budget // span)
    for o0 in range(0, n_out, block):
        o = np.arange(o0, min(n_out, o0 + block), dtype=np.int64)
        offset, rest = np.divmod(o * orig_sr, new_sr)  # whole input samples, and the fraction
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
            out[:, o0 : o0 + len(o)] += (x[:, np.clip(index, 0, n - 1)] * taps).sum(-1)
    return out


LEVEL_FRAMES = 5  # a level is the power over 50 ms: short, so 0.3 s between speakers stays a pause
SLOW_FRAMES = 11  # what is quiet is judged from levels over 110 ms
QUIET_UNDER_LOUD = 35.0  # dB under a recording's loud parts (its 95th percentile) is quiet,
NOISE_FLOOR = (10, 6.0)  # and so is within 6 dB of its quietest tenth (a noisy recording)


def frame_power(audio, hop: int) -> np.ndarray:
    """The mean square of each whole `hop` samples of the audio (float64)."""
    frames = len(audio) // hop
    x = np.asarray(audio[: frames * hop], dtype=np.float64)
    return np.square(x).reshape(frames, hop).mean(axis=1)


def decibels(power: np.ndarray, frames: int, mode: str = "same") -> np.ndarray:
    """The level in dB of the power averaged over `frames` frames: centred ("same"), ending at
    each frame ("full", as a live stream must), or only where all of them exist ("valid")."""
    mean = np.convolve(power, np.ones(frames) / frames, mode=mode)[: len(power)]
    return 10 * np.log10(mean + 1e-10)


def quiet_threshold(slow: np.ndarray, noise_floor: tuple = NOISE_FLOOR) -> float:
    """The level (dB) below which 10 ms is quiet, from levels over 110 ms: QUIET_UNDER_LOUD under
    the loud parts, or `noise_floor` = (percentile, dB) over the quiet ones, whichever is higher."""
    percentile, margin = noise_floor
    return max(np.percentile(slow, 95) - QUIET_UNDER_LOUD, np.percentile(slow, percentile) + margin)


def loudness(audio, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """The audio's level in dB every 10 ms (each over 50 ms), and which 10 ms are quiet
    (quiet_threshold of its levels over 110 ms)."""
    power = frame_power(audio, sr // 100)
    if len(power) == 0:
        return np.zeros(0), np.zeros(0, bool)
    level = decibels(power, LEVEL_FRAMES)
    return level, level < quiet_threshold(decibels(power, SLOW_FRAMES))


def split_at_pauses(
    audio,
    max_seconds: float = 20.0,
    min_pause: float = 0.25,
    join_up_to: float = 0.0,
    sr: int = SAMPLE_RATE,
    levels: Optional[tuple] = None,
) -> list[tuple[int, int]]:
    """Cut long audio at its pauses, as (start, end) sample indices: one piece per stretch of
    speech, or, with `join_up_to`, neighbouring stretches together while they span at most that many
    seconds.

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
    starts, ends = (
        np.flatnonzero(edges == 1),
        np.flatnonzero(edges == -1),
    )  # quiet runs [start, end)
    inside = (ends - starts >= min_pause * 100) & (starts > 0) & (ends < frames)
    cuts = [int((a + b) // 2 * hop) for a, b in zip(starts[inside], ends[inside])]
    pieces, start = [], 0
    for end in cuts + [n]:
        while end - start > max_len:  # no pause long enough: force one
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
SILENCE_DB = -80.0  # 10 ms this quiet is silence in any recording (a few steps of 16 bits)
FAINT_DB = -55.0  # and this quiet too, where quiet_threshold() also finds it quiet
SILENCE_GAP = 5.0  # seconds of silence in a row that the gate leaves out
SILENCE_KEEP = 1.0  # of which it keeps this much next to the sound on either side


def sound_regions(
    audio,
    sr: int = SAMPLE_RATE,
    levels: Optional[tuple] = None,
    gap: float = SILENCE_GAP,
    keep: float = SILENCE_KEEP,
) -> list[tuple[int, int]]:
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

    def runs(flags):  # [start, end) of each run of True
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
        if cut_to <= cut_from:  # (a gap under twice `keep`: nothing to cut)
            continue
        if cut_from > at:
            regions.append((at, cut_from))
        at = max(at, cut_to)
    if at < n:
        regions.append((at, n))
    return regions


PHRASE_ONSET = 0.1  # this much sound opens a phrase (a click does not)


# ----------------------------------------------------------------------------------------------
# 2. Whisper's log-mel spectrogram
# ----------------------------------------------------------------------------------------------


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
    stft = torch.stft(
        x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    power = stft[..., :n_frames].abs() ** 2  # the last centred frame is dropped, as in Whisper
    mel = mel_filters(n_mels, x.device) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    if n_frames > 0:
        peak = log_spec.amax(dim=(-2, -1), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)  # keep 80 dB below the loudest bin
    return (log_spec + 4.0) / 4.0
