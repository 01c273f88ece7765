"""audio_io.py: WAV and ffmpeg decoding, resampling, pauses, the silence gate, log-mel."""

import math
import os
import shutil
import struct
import subprocess
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import int_bytes, write_wav

import audio_io
import data
import fileio

ROOT = Path(__file__).resolve().parents[1]

GOLDEN = ROOT / "tests" / "golden"

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


# ----- WAV files written by hand, byte by byte ----------------------------------------------------


EXPECTED = np.array([0.0, 0.5, -0.5, 0.25, -1.0, 0.75], np.float32)


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


# ----- streams, ffmpeg, errors and the cache ------------------------------------------------------


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


# ----- resampling ---------------------------------------------------------------------------------


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


# ----- pauses and the silence gate ----------------------------------------------------------------


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


# ----- the log-mel front end ----------------------------------------------------------------------


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
