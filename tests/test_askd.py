"""askd.py: the loss against numbers worked out by hand, the schedules, the student, its trimmed
input, bad data, and real training runs on real speech: end to end through the CLI, a run killed
with SIGKILL and resumed (bit for bit the same as an uninterrupted one), and two gloo processes
under torchrun (the same as one process accumulating two micro-batches).
"""

import json
import math
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

import askd
import audio_io
import data
import decoding
import fileio
import model as M
import run_plumbing
import text_norm
import transcribe
import weight_files
import writers

ROOT = Path(__file__).resolve().parent.parent

# ----- the loss, by hand ------------------------------------------------------------------------


def softmax(xs, T=1.0):
    m = max(x / T for x in xs)
    e = [math.exp(x / T - m) for x in xs]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


STUDENT = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, 1.0, 1.0]]
TEACHER = [[3.0, 0.0, -2.0], [1.5, -0.5, 0.0], [0.0, 0.0, 0.0]]
SELF = [[1.0, 1.0, 0.0], [0.0, 0.5, 0.2], [5.0, 5.0, 5.0]]
LABELS = [0, 2, askd.IGNORE]  # the third token carries no loss


def hand_loss(w_ce, w_kd, w_self, T, trust):
    """Mean over the labelled tokens of w_ce CE + w_kd c_i T^2 KL(t||s) + w_self T^2 KL(e||s)."""
    total = 0.0
    for s, t, e, y in zip(STUDENT[:2], TEACHER[:2], SELF[:2], LABELS[:2]):
        ce = -math.log(softmax(s)[y])
        c = {
            "prob": softmax(t)[y],
            "argmax": float(max(range(3), key=t.__getitem__) == y),
            "none": 1.0,
        }[trust]
        total += (
            w_ce * ce
            + w_kd * c * T * T * kl(softmax(t, T), softmax(s, T))
            + w_self * T * T * kl(softmax(e, T), softmax(s, T))
        )
    return total / 2


@pytest.mark.parametrize("trust", ["prob", "argmax", "none"])
def test_askd_loss_matches_hand_computation(trust):
    cfg = askd.LossConfig("askd", T=2.0, alpha="linear:1:0", beta="linear:0:1", trust=trust)
    s = 0.25  # alpha = 0.75, beta = 0.25
    student = torch.tensor(STUDENT, requires_grad=True)
    loss, parts = askd.distill_loss(
        student, torch.tensor(LABELS), torch.tensor(TEACHER), torch.tensor(SELF), cfg, s
    )
    assert loss.item() == pytest.approx(hand_loss(1.0, 0.75, 0.25, 2.0, trust), rel=1e-5)
    assert parts["ce"] == pytest.approx(hand_loss(1.0, 0, 0, 2.0, trust), rel=1e-5)
    assert (parts["w_kd"], parts["w_self"]) == (0.75, 0.25)
    loss.backward()
    assert student.grad[2].abs().max() == 0  # the ignored token gets no gradient
    # token 2: the teacher's best guess (0) is wrong (label 2), so 'argmax' trust drops its KL term
    if trust == "argmax":
        c = askd.teacher_trust(torch.tensor(TEACHER), torch.tensor(LABELS), "argmax")
        assert c.tolist() == [1.0, 0.0, 0.0]


def test_ce_and_classic_kd_losses_match_hand_computation():
    student, labels, teacher = torch.tensor(STUDENT), torch.tensor(LABELS), torch.tensor(TEACHER)
    ce, _ = askd.distill_loss(student, labels, teacher, None, askd.LossConfig("ce"))
    assert ce.item() == pytest.approx(hand_loss(1.0, 0, 0, 1.0, "none"), rel=1e-5)
    kd, _ = askd.distill_loss(student, labels, teacher, None, askd.LossConfig("kd"), s=0.9)
    assert kd.item() == pytest.approx(
        hand_loss(0.8, 1.0, 0, 2.0, "none"), rel=1e-5
    )  # distil-whisper's mix


def four_pass_loss(student, labels, teacher, self_logits, cfg, s):
    """The loss as distill_loss computed it before the single pass: CE, trust-weighted KL, the plain
    KL for the log and the self-KL, each a separate call of the kernel's twin."""
    from kernels import kd_loss_reference as kd

    w_ce, w_kd, w_self = cfg.weights(s)
    trust = askd.teacher_trust(teacher, labels, cfg.trust if cfg.loss == "askd" else "none")
    ce = kd(student, None, labels)
    kl = kd(student, teacher, labels, ce_weight=0.0, kd_weight=trust, T=cfg.T)
    plain = kd(student, teacher, labels, ce_weight=0.0, kd_weight=1.0, T=cfg.T)
    own = kd(
        student, None, labels, self_teacher=self_logits, ce_weight=0.0, self_weight=1.0, T=cfg.T
    )
    return w_ce * ce + w_kd * kl + w_self * own, {
        "ce": ce.item(),
        "kd": plain.item(),
        "self": own.item(),
    }


@pytest.mark.parametrize("loss", ["askd", "kd"])
def test_distill_loss_is_the_four_separate_terms(loss):
    """distill_loss's one written-out pass gives what four separate losses gave: the same loss,
    gradient and logged parts."""
    g = torch.Generator().manual_seed(0)
    student, teacher, own = (torch.randn(7, 50, generator=g) * 3 for _ in range(3))
    labels = torch.randint(0, 50, (7,), generator=g)
    labels[[0, 4]] = askd.IGNORE
    cfg = askd.LossConfig(loss, T=2.0, alpha="linear:1:0", beta="linear:0:1")
    new = student.clone().requires_grad_(True)
    got, parts = askd.distill_loss(new, labels, teacher, own, cfg, s=0.4)
    old = student.clone().requires_grad_(True)
    want, want_parts = four_pass_loss(old, labels, teacher, own, cfg, 0.4)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(
        *(torch.autograd.grad(x, y)[0] for x, y in ((got, new), (want, old)))
    )
    for name in ("ce", "kd", "self") if loss == "askd" else ("ce", "kd"):
        assert parts[name] == pytest.approx(want_parts[name], rel=1e-6), name


@pytest.mark.parametrize("loss,s", [("askd", 0.0), ("askd", 0.4), ("kd", 0.4), ("ce", 0.4)])
def test_distill_loss_on_the_cpu_is_the_kernels_twin_to_the_bit(loss, s, monkeypatch):
    """On the CPU training gives the very floats the kernel's PyTorch twin gave (loss and
    gradient), so moving the loss into askd.py left every trained student unchanged."""
    from kernels import kd_loss_reference

    monkeypatch.setenv("FASTWHISPER_KERNELS", "torch")
    g = torch.Generator().manual_seed(1)
    student, teacher, own = (torch.randn(9, 300, generator=g) * 4 for _ in range(3))
    labels = torch.randint(0, 300, (9,), generator=g)
    labels[[1, 5]] = askd.IGNORE
    cfg = askd.LossConfig(loss, T=2.0)
    w_ce, w_kd, w_self = cfg.weights(s)
    trust = askd.teacher_trust(teacher, labels, cfg.trust if loss == "askd" else "none")
    new, old = (student.clone().requires_grad_(True) for _ in range(2))
    got, _ = askd.distill_loss(new, labels, teacher, own, cfg, s)
    want = kd_loss_reference(
        old,
        teacher if w_kd else None,
        labels,
        self_teacher=own if w_self else None,
        ce_weight=w_ce,
        kd_weight=w_kd * trust if w_kd else 0.0,
        self_weight=w_self,
        T=cfg.T,
    )
    got.backward()
    want.backward()
    assert torch.equal(got, want)
    assert torch.equal(new.grad, old.grad)


def test_encoder_loss_uses_only_each_items_own_positions():
    student = torch.zeros(2, 5, 4)
    student[0, 3:] = 100.0  # beyond item 0's 3 positions: must not count
    teachers = [torch.ones(3, 4).half(), torch.full((5, 4), 2.0).half()]
    # (3 * 4 * 1 + 5 * 4 * 4) / (3 * 4 + 5 * 4)
    assert askd.encoder_loss(student, teachers, [3, 5]).item() == pytest.approx((12 + 80) / 32)


# ----- schedules --------------------------------------------------------------------------------


def test_schedules():
    P = askd.Schedule.parse
    assert [P("linear:1:0")(s) for s in (0, 0.25, 1)] == [1.0, 0.75, 0.0]
    assert P("cosine:1:0")(0.5) == pytest.approx(0.5)
    assert P("cosine:1:0")(0.25) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert P("exp:1:0.01")(0.5) == pytest.approx(0.1)
    assert P("const:0.3")(0.7) == 0.3 and P(0.3)(0.1) == 0.3
    assert P("linear:0:1")(-1) == 0.0 and P("linear:0:1")(2) == 1.0  # clamped to [0, 1]
    assert str(P("cosine:1:0.1")) == "cosine:1:0.1"
    for bad in ("linear:1", "cosine:a:b", "step:1:2", "exp:0:1", ""):
        with pytest.raises(ValueError, match="schedule"):
            P(bad)
    # the defaults: the teacher's weight falls, the self-teacher's rises, CE stays
    cfg = askd.LossConfig()
    weights = [cfg.weights(s) for s in np.linspace(0, 1, 11)]
    alphas, betas = [w[1] for w in weights], [w[2] for w in weights]
    assert (
        alphas[0] == 0.3 and alphas[-1] == 0.0 and all(a >= b for a, b in zip(alphas, alphas[1:]))
    )
    assert betas[0] == 0.0 and betas[-1] == 0.3 and all(a <= b for a, b in zip(betas, betas[1:]))
    assert {w[0] for w in weights} == {1.0}
    assert (
        askd.LossConfig("kd").weights(0.3) == askd.LossConfig("kd").weights(0.9) == (0.8, 1.0, 0.0)
    )
    assert askd.LossConfig("ce").weights(0.5) == (1.0, 0.0, 0.0)


# ----- the student and its input ----------------------------------------------------------------


def test_student_from_teacher(tiny):
    assert askd.spaced_layers(4, 2) == [0, 3] and askd.spaced_layers(32, 4) == [0, 10, 21, 31]
    assert askd.spaced_layers(4, 4) == [0, 1, 2, 3] and askd.spaced_layers(4, 1) == [3]
    student = askd.make_student(tiny, decoder_layers=2)
    assert student.dims.n_text_layer == 2 and student.dims.n_audio_layer == 4
    t, s = tiny.state_dict(), student.state_dict()
    assert all(torch.equal(s[k], t[k]) for k in s if k.startswith("encoder."))
    for mine, theirs in ((0, 0), (1, 3)):
        for name in ("attn.query.weight", "cross_attn.value.bias", "mlp.2.weight", "mlp_ln.bias"):
            assert torch.equal(
                s[f"decoder.blocks.{mine}.{name}"], t[f"decoder.blocks.{theirs}.{name}"]
            )
    assert torch.equal(s["decoder.token_embedding.weight"], t["decoder.token_embedding.weight"])
    assert student.num_parameters() < tiny.num_parameters() and student.tokenizer is tiny.tokenizer
    assert (
        askd.make_student(tiny).dims.n_text_layer == 4
    )  # by default all, as TrainConfig's default


def test_trimmed_input_equals_whisper_padded_input(asterisk):
    assert transcribe.trimmed_frames(16000) == 100 and transcribe.trimmed_frames(16001) == 200
    assert transcribe.trimmed_frames(1) == 100 and transcribe.trimmed_frames(40 * 16000) == 3000
    assert transcribe.trimmed_frames(16001, round_frames=50) == 150
    audio = audio_io.load_audio(next(u.audio for u in asterisk if u.id == "digits/1"))
    frames = transcribe.trimmed_frames(len(audio))
    padded = audio_io.log_mel_spectrogram(audio, 80, padding=audio_io.N_SAMPLES)
    assert torch.equal(transcribe.trimmed_mel(audio, 80, frames), padded[:, :frames])
    assert torch.equal(transcribe.trimmed_mel(audio, 80, 3000), padded[:, :3000])


def test_targets_and_labels(tiny):
    tok = tiny.tokenizer
    tokens = askd.target_tokens(tok, "  Press 1.  ")
    assert tokens == [tok.sot, tok.no_timestamps, *tok.encode(" Press 1."), tok.eot]
    short = askd.target_tokens(tok, "Hi.")
    stamped = askd.timestamped_tokens(tok, [(0.0, 1.5, "Hi."), (2.0, 3.3, "Press 1.")])

    def ts(s):
        return tok.timestamp_begin + round(s / 0.02)

    assert stamped == [
        tok.sot,
        ts(0),
        *tok.encode(" Hi."),
        ts(1.5),
        ts(2.0),
        *tok.encode(" Press 1."),
        ts(3.3),
        tok.eot,
    ]
    prompts = [askd.prompt_length(tok, t) for t in (tokens, short, stamped)]
    assert prompts == [2, 2, 1]
    inputs, labels = askd.batch_targets([tokens, short, stamped], prompts, tok.eot)
    assert inputs[0].tolist() == tokens[:-1] + [tok.eot] * (len(stamped) - len(tokens))

    # no loss on predicting <|notimestamps|>; then every text token and <|endoftext|>; no padding
    def pad(t):
        return [askd.IGNORE] * (len(stamped) - len(t))

    assert labels[0].tolist() == [askd.IGNORE] + tokens[2:] + pad(tokens)
    assert labels[1].tolist() == [askd.IGNORE] + short[2:] + pad(short)
    # a timestamped target learns its first timestamp too
    assert labels[2].tolist() == stamped[1:]


def test_timestamp_targets_are_the_teachers_times_on_real_speech(
    tiny, asterisk, tmp_path, monkeypatch
):
    """Real prompts, alone and joined with known pauses: forced through the reference text, the
    teacher times each prompt inside its own stretch of audio (its speech, not the pauses), and a
    training batch of timestamped targets learns those timestamps."""
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path))
    utts = sorted(data.split_corpus(asterisk)["train"], key=lambda u: u.id)[:8]
    joined = data.join_utterances(utts, 1, seconds=(10.0, 16.0), pause=(0.4, 0.6))
    examples = askd.prepare_examples(utts[:2] + joined, tiny.tokenizer, 100, tiny.dims.n_text_ctx)
    assert [len(ex.parts) for ex in examples[:2]] == [1, 1] and len(examples[2].parts) >= 3
    cache = askd.TeacherCache(tmp_path / "teacher", tiny)
    times = cache.timestamps(examples, progress=False)
    for ex in examples:
        assert [t for _, _, t in times[ex.id]] == [
            t for _, _, t in ex.parts
        ]  # the reference text, in order
        flat = [x for a, b, _ in times[ex.id] for x in (a, b)]
        assert flat == sorted(flat) and flat[-1] <= ex.n_samples / audio_io.SAMPLE_RATE + 0.02
        for (a, b, _), (start, end, _) in zip(times[ex.id], ex.parts):
            assert start - 0.1 <= a < b <= end + 0.1 and b - a >= 0.5 * (end - start)
    speech = [(a, b) for a, b, _ in times[examples[2].id]]
    gaps = [(e1, s2) for (_, e1, _), (s2, _, _) in zip(examples[2].parts, examples[2].parts[1:])]
    assert all(
        b <= g1 + 0.1 and a >= g0 - 0.1
        for (_, b), (a, _), (g0, g1) in zip(speech, speech[1:], gaps)
    )
    assert cache.timestamps(examples, progress=False) == times  # cached
    for ex in examples:
        ex.tokens = askd.timestamped_tokens(tiny.tokenizer, times[ex.id])
        ex.prompt = askd.prompt_length(tiny.tokenizer, ex.tokens)
    cache.build(examples, "trimmed", progress=False)
    batch = askd.collate(examples, cache, "trimmed", tiny.dims.n_mels, tiny.tokenizer.eot)
    begin = tiny.tokenizer.timestamp_begin
    for row, ex in zip(batch.labels, examples):
        learnt = row[row != askd.IGNORE].tolist()
        assert learnt == ex.tokens[1:] and sum(x >= begin for x in learnt) == 2 * len(ex.parts)


def test_a_loaded_model_knows_how_it_reads_audio(tiny, tmp_path):
    teacher = transcribe.load_recognizer("tiny.en")
    assert (
        type(teacher) is transcribe.Recognizer
        and teacher.input == "padded"
        and teacher.weights == "fp32"
    )
    student = askd.make_student(tiny, decoder_layers=1)
    path = run_plumbing.save_student(
        student, tmp_path / "s.pt", askd.TrainConfig(round_frames=50), {"epoch": 1}
    )
    loaded = transcribe.load_recognizer(path)
    assert (
        isinstance(loaded, transcribe.Student)
        and loaded.round_frames == 50
        and loaded.weights == "fp16-dec"
    )
    assert transcribe.load_recognizer(path, weights="fp32").weights == "fp32"
    as_whisper = transcribe.load_recognizer(f"padded:{path}")  # as other Whisper tools read its .pt
    assert (
        type(as_whisper) is transcribe.Recognizer
        and as_whisper.input == "padded"
        and as_whisper.weights == "fp32"
    )
    assert as_whisper.name == f"padded:{path}"
    assert loaded.model.dims.n_text_layer == 1
    assert loaded.model.tokenizer.encode(" Hello") == tiny.tokenizer.encode(" Hello")
    assert isinstance(teacher.drafted_by(loaded).draft, decoding.Draft)
    with pytest.raises(ValueError, match="must be a Whisper model, not a student"):
        loaded.drafted_by(loaded)
    with pytest.raises(ValueError, match="only a student"):
        teacher.drafted_by(teacher)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(M.ModelError, match="junk.pt: not a readable PyTorch checkpoint"):
        transcribe.load_recognizer(tmp_path / "junk.pt")


# ----- bad input --------------------------------------------------------------------------------


def write_wav(path, seconds, rate=16000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(
            (np.random.default_rng(0).normal(0, 300, int(seconds * rate))).astype("<i2").tobytes()
        )
    return str(path)


class PickyTokenizer:
    """The real tokenizer, except that it refuses one character."""

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def encode(self, text):
        if "\u2603" in text:
            raise ValueError("cannot encode '\u2603'")
        return self.tok.encode(text)


def test_bad_utterances_are_skipped_and_counted(tiny, tmp_path, asterisk, capsys):
    good = next(u for u in asterisk if u.id == "digits/1")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100))
    utts = [
        data.Utterance("good", good.audio, good.text),
        data.Utterance("missing", str(tmp_path / "missing.wav"), "Hello."),
        data.Utterance("garbage", str(garbage), "Hello."),
        data.Utterance("long", write_wav(tmp_path / "long.wav", 31), "Hello."),
        data.Utterance("untranscribed", good.audio, ""),
        data.Utterance("snowman", good.audio, "Snow \u2603."),
        data.Utterance("essay", good.audio, "word " * 500),
    ]
    skipped = askd.Counter()
    examples = askd.prepare_examples(
        utts, PickyTokenizer(tiny.tokenizer), 100, 448, labels="reference", skipped=skipped
    )
    assert [e.id for e in examples] == ["good"] and examples[0].frames == 100
    assert skipped == {
        "unreadable audio": 2,
        "longer than 30 s": 1,
        "no text": 1,
        "text the tokenizer cannot encode": 1,
        "text too long": 1,
    }
    err = capsys.readouterr().err
    assert "skipped 6 utterance(s)" in err and "missing.wav: unreadable audio" in err
    # pseudo-labels: untranscribed audio takes the teacher's words; a disagreeing one is dropped
    pseudo = {good.audio: "One."}
    examples = askd.prepare_examples(utts[:1] + utts[4:5], tiny.tokenizer, 100, 448, "auto", pseudo)
    assert [e.text for e in examples] == [good.text, "One."]
    examples = askd.prepare_examples(
        utts[:1], tiny.tokenizer, 100, 448, "pseudo", {good.audio: "Two."}
    )
    assert examples == []


def test_bad_sources_and_manifest_lines(tmp_path, asterisk, capsys):
    good = next(u for u in asterisk if u.id == "digits/1")
    manifest = tmp_path / "m.tsv"
    manifest.write_text(
        f"audio\ttext\n{good.audio}\tOne.\n\nonly-one-column\n{tmp_path}/gone.wav\tGone.\n"
    )
    utts = data.load_source(str(manifest))
    assert [u.text for u in utts] == ["One."]
    assert "skipped 2 bad line(s)" in capsys.readouterr().err
    with pytest.raises(fileio.DataError, match="nowhere.tsv: manifest not found"):
        data.load_source(str(tmp_path / "nowhere.tsv"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(fileio.DataError, match="notes.txt: not a manifest"):
        data.load_source(str(tmp_path / "notes.txt"))
    assert {u.id for u in data.load_source("asterisk:test")} == {
        u.id for u in data.split_corpus(asterisk)["test"]
    }


def test_eval_leaves_out_utterances_without_reference_words(tiny, asterisk, tmp_path, capsys):
    """`eval` on a manifest where some texts are empty, blank or only a note: those utterances are
    left out of the WER (not counted as insertions), with one warning naming how many and which."""
    import fastwhisper

    said = [u for u in data.split_corpus(asterisk)["test"] if 1 < u.duration < 3][:4]
    texts = [said[0].text, "", "   ", "[noise]"]
    rows = [f"{u.audio}\t{text}\tu{i}\n" for i, (u, text) in enumerate(zip(said, texts))]
    mixed, plain = tmp_path / "mixed.tsv", tmp_path / "plain.tsv"
    mixed.write_text("audio\ttext\tid\n" + "".join(rows))
    plain.write_text("audio\ttext\tid\n" + rows[0])
    runs = []
    for manifest in (mixed, plain):
        assert fastwhisper.main(["eval", "--data", str(manifest), "-q"]) == 0
        runs.append(capsys.readouterr())
    (out, err), (plain_out, _) = runs

    def row(text):
        return text.splitlines()[-1].split()[:5]  # model, params, input, weights, WER %

    assert out.startswith(f"{mixed}: 1 utterances") and row(out) == row(plain_out)
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warned == [
        f"warning: {mixed}: 3 utterance(s) with an empty reference text left out of WER: u1, u2, u3"
    ]


def test_default_dev_sets_are_the_corpus_split_and_real_speech(asterisk, monkeypatch, capsys):
    """With the default corpus the student is chosen on its dev split and on real speech of other
    people; if that cannot be fetched, on the dev split alone, with a warning."""
    train, dev, test, label = askd.default_sources(askd.TrainConfig())
    assert list(dev) == ["asterisk:dev", "real-speech-dev"] and len(dev["real-speech-dev"]) == 49
    assert {u.id for u in dev["asterisk:dev"]} == {u.id for u in data.split_corpus(asterisk)["dev"]}
    assert label == "asterisk:test" and len(test) == 97 and len(train) == 398

    def offline(spec):
        if spec == "real-speech-dev":
            raise fileio.DataError("real-speech-dev: could not download (offline)")
        return data.split_corpus(asterisk)[spec.split(":")[1]]

    monkeypatch.setattr(data, "load_source", offline)
    _, dev, _, _ = askd.default_sources(askd.TrainConfig())
    assert list(dev) == ["asterisk:dev"]
    assert "warning: dev set without real-speech-dev" in capsys.readouterr().err


def test_timed_segments_follow_whisper_timestamp_pairs(tiny):
    tok = tiny.tokenizer

    def ts(s):
        return tok.timestamp_begin + round(s / 0.02)

    hi, press = tok.encode(" Hi."), tok.encode(" Press 1.")
    tokens = [ts(0.2), *hi, ts(1.5), ts(2.0), *press, ts(3.3), ts(4.0), *hi, tok.eot]
    assert transcribe.timed_segments(tokens, tok, 5.0) == [
        (0.2, 1.5, hi),
        (2.0, 3.3, press),
        (4.0, 5.0, hi),
    ]
    assert transcribe.timed_segments([ts(0.0), *hi, ts(9.0)], tok, 5.0) == [
        (0.0, 5.0, hi)
    ]  # never past the piece
    assert transcribe.timed_segments([ts(0.0), tok.eot], tok, 5.0) == []


def test_a_student_writes_timestamps_on_real_speech(tiny, asterisk, tmp_path):
    """Real prompts one after another with 0.8 s pauses, 37 s in all: a student cuts the audio into
    pieces and times each segment with Whisper's timestamps, across pieces, and `-f srt` writes
    those times. Each prompt's words come out timed within its own stretch of audio.

    The student here is the teacher's own copy reading pieces padded to 30 s (round_frames 3000),
    whose timestamps are Whisper's: what is tested is the student's path, not a training run."""
    student = transcribe.Student(weight_files.load_model("tiny.en"), "s.pt", round_frames=3000)
    utts = sorted(data.split_corpus(asterisk)["test"], key=lambda u: (u.duration < 2, u.id))[:40]
    pause, audios, spans, total = np.zeros(int(0.8 * audio_io.SAMPLE_RATE), np.float32), [], [], 0
    for u in utts:
        audio = audio_io.load_audio(u.audio)
        spans.append(
            (total / audio_io.SAMPLE_RATE, (total + len(audio)) / audio_io.SAMPLE_RATE, u.text)
        )
        audios += [audio, pause]
        total += len(audio) + len(pause)
        if total > 37 * audio_io.SAMPLE_RATE:
            break
    (result,) = student.transcribe([np.concatenate(audios)])
    segments = [s for s in result["segments"] if s["text"]]
    assert (
        len(segments) >= len(spans) - 1 and segments[-1]["start"] > 30
    )  # pieces past the first 30 s
    assert all(a["end"] <= b["start"] + 0.02 for a, b in zip(segments, segments[1:]))
    assert all(s["end"] - s["start"] < 20 for s in segments)
    for start, end, text in spans:  # the segments that hold a prompt's words lie on its audio
        inside = [s for s in segments if start - 0.3 <= (s["start"] + s["end"]) / 2 <= end + 0.3]
        assert text_norm.wer(text, " ".join(s["text"] for s in inside)) <= 0.35, (text, segments)
    assert text_norm.wer(" ".join(t for _, _, t in spans), result["text"]) <= 0.15
    (srt,) = writers.write_result(result, "joined", tmp_path, "srt")
    cues = srt.read_text().strip().split("\n\n")
    assert len(cues) == len(segments) and cues[-1].split("\n")[1].startswith("00:00:3")


def test_a_student_decodes_timestamps_only_where_they_are_used(tiny, asterisk, monkeypatch):
    """A prompt of up to 30 s whose times nobody reads (`transcribe -f txt`) is decoded text only:
    one segment, the piece; the same prompt for srt (times=True) is decoded with timestamps.
    --without-timestamps is text only either way."""
    student = transcribe.Student(tiny, "s.pt", round_frames=3000)
    decoded, real = [], decoding.decode_batch
    monkeypatch.setattr(
        decoding,
        "decode_batch",
        lambda model, options, **named: (
            decoded.append(not options.without_timestamps) or real(model, options=options, **named)
        ),
    )
    u = next(u for u in data.split_corpus(asterisk)["test"] if 3 < u.duration < 8)
    audio = audio_io.load_audio(u.audio, cache=True)
    seconds = len(audio) / audio_io.SAMPLE_RATE
    (plain,) = student.transcribe(
        [audio], transcribe.TranscribeOptions(temperature=0.0), times=False
    )
    (timed,) = student.transcribe(
        [audio], transcribe.TranscribeOptions(temperature=0.0), times=True
    )
    (text_only,) = student.transcribe(
        [audio], transcribe.TranscribeOptions(temperature=0.0, without_timestamps=True)
    )
    assert decoded == [False, True, False]
    assert [(s["start"], s["end"]) for s in plain["segments"]] == [(0.0, seconds)]
    assert all(0 <= seg["start"] < seg["end"] <= seconds for seg in timed["segments"])
    for result in (plain, timed, text_only):
        assert text_norm.wer(u.text, result["text"]) <= 0.2


def test_each_audio_is_handed_on_as_soon_as_its_batch_is_decoded(tiny, asterisk, monkeypatch):
    """transcribe(done=...) hands each audio's result on right after the batch that finished it,
    before the next batch is decoded (an empty audio at once), and returns the same results."""
    audios = [
        audio_io.load_audio(u.audio, cache=True)
        for u in data.split_corpus(asterisk)["test"]
        if 1 < u.duration < 3
    ][:2] + [np.zeros(0, np.float32)]
    batches, real = [], decoding.decode_batch
    monkeypatch.setattr(
        decoding, "decode_batch", lambda *a, **k: batches.append(1) or real(*a, **k)
    )
    for reader in (
        transcribe.Student(tiny, "s.pt", round_frames=3000),
        transcribe.Recognizer(tiny, "tiny.en"),
    ):
        batches.clear()
        seen = {}
        options = transcribe.TranscribeOptions(temperature=0.0, without_timestamps=True)
        results = reader.transcribe(
            audios, options, batch_size=1, done=lambda i, r: seen.setdefault(i, (len(batches), r))
        )
        assert sorted(n for n, _ in seen.values()) == [0, 1, 2] and seen[2][0] == 0
        assert [seen[i][1] for i in range(3)] == results and results[0]["text"].strip()


def test_pieces_of_several_speakers_with_short_gaps_lose_no_words(tiny, monkeypatch):
    """Real recordings of different people (real-speech-dev, its sources in turn, 36 s in all), one
    after another with 0.3 s of silence between them and with none: the pieces cover the audio, none
    is longer than 30 s, the recordings' borders with a gap are cuts, and cutting loses no words:
    read piece by piece as a student reads (timestamps, reading on where the text stopped early;
    the reader here is the teacher, each piece in its 30 s window) the joined audio scores within 4
    points of the WER of the recordings read one by one."""
    by_source = {}
    for u in data.load_source("real-speech-dev"):
        if u.text:
            by_source.setdefault(u.id.split("_")[0], []).append(u)
    utts, audios = [], []
    while sum(map(len, audios)) < 36 * audio_io.SAMPLE_RATE:
        for source in by_source.values():
            if source:
                utts.append(source.pop(0))
                audios.append(audio_io.load_audio(utts[-1].audio, cache=True))
    assert len(by_source) >= 4 and len(utts) >= 10
    reader = transcribe.Student(
        weight_files.load_model("tiny.en"), "teacher in pieces", round_frames=3000
    )
    monkeypatch.setattr(
        transcribe, "JOIN_SECONDS", 0.0
    )  # the cuts alone: a student's pieces join stretches
    # up to 20 s, which suits students, not this reader
    alone = transcribe.Recognizer(reader.model).transcribe_text(audios, batch_size=8)
    one_by_one = text_norm.wer([u.text for u in utts], alone)
    reference = " ".join(u.text for u in utts)
    for gap in (0.3, 0.0):
        silence = np.zeros(round(gap * audio_io.SAMPLE_RATE), np.float32)
        joined = np.concatenate([x for a in audios for x in (a, silence)][:-1])
        pieces = audio_io.split_at_pauses(joined, transcribe.PIECE_SECONDS)
        assert pieces[0][0] == 0 and pieces[-1][1] == len(joined)
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
        assert all(b - a <= transcribe.PIECE_SECONDS * audio_io.SAMPLE_RATE for a, b in pieces)
        if gap:  # each border lies in the same pause as a cut: only quiet between the two
            borders = np.cumsum([len(a) + len(silence) for a in audios[:-1]]) - len(silence) // 2
            quiet, hop = audio_io.loudness(joined)[1], audio_io.SAMPLE_RATE // 100
            for b in borders:
                c = min((a for a, _ in pieces[1:]), key=lambda a: abs(a - b))
                assert quiet[min(b, c) // hop : max(b, c) // hop + 1].all(), (b, c)
        (result,) = reader.transcribe([joined])
        assert text_norm.wer(reference, result["text"]) <= one_by_one + 0.04, (gap, result["text"])


def test_a_student_keeps_silence_silent_and_refuses_what_it_cannot_do(tiny):
    """Whisper returns nothing for silence and for an empty file; so does a student, instead of
    inventing 'you': the silence gate reads nothing, and without it (vad=False) the piece's
    no-speech probability keeps it empty. Options it cannot honour are an error, not ignored."""
    student = transcribe.Student(askd.make_student(tiny), "s.pt")
    silence, empty = student.transcribe([np.zeros(16000 * 10, np.float32), np.zeros(0, np.float32)])
    assert silence == empty == {"text": "", "segments": [], "language": "en"}
    ungated = transcribe.TranscribeOptions(vad=False)
    (silence,) = student.transcribe([np.zeros(16000 * 10, np.float32)], ungated)
    assert silence["text"] == "" and silence["segments"][0]["no_speech_prob"] > transcribe.NO_SPEECH
    student.check(transcribe.TranscribeOptions())  # the defaults: greedy at its first temperature
    student.check(transcribe.TranscribeOptions(temperature=0.0, language="en"))
    with pytest.raises(
        ValueError, match=r"^s\.pt: a student .* cannot honour --language de, --beam-size 5$"
    ):
        student.check(transcribe.TranscribeOptions(language="de", beam_size=5))
    with pytest.raises(
        ValueError, match=r"cannot honour --task translate, --initial-prompt, --temperature 0.5$"
    ):
        student.transcribe(
            [np.zeros(1600, np.float32)],
            transcribe.TranscribeOptions(task="translate", initial_prompt="x", temperature=0.5),
        )


def test_a_students_pieces_leave_out_long_silence(tiny, asterisk):
    """Real prompts with 35 s of digital zeros and of faint noise (-60 dB) between them: a
    student's pieces hold every prompt and no more than the second of silence the gate keeps beside
    each; a minute of zeros or of faint noise is no piece at all, so no text. vad=False: the old
    pieces, every sample in one."""
    sr, rng = audio_io.SAMPLE_RATE, np.random.default_rng(0)
    student = transcribe.Student(askd.make_student(tiny, decoder_layers=1), "s.pt")
    prompts = [
        audio_io.load_audio(u.audio, cache=True)
        for u in data.split_corpus(asterisk)["test"]
        if 1.5 < u.duration < 5
    ][:3]
    parts = [
        prompts[0],
        np.zeros(35 * sr, np.float32),
        prompts[1],
        rng.normal(0, 1e-3, 35 * sr).astype(np.float32),
        prompts[2],
    ]
    joined = np.concatenate(parts)
    starts = np.cumsum([0] + [len(p) for p in parts])[::2]
    pieces, _ = transcribe.cut_pieces(joined)
    assert len(pieces) == 3
    for (a, b), prompt, start in zip(pieces, prompts, starts):
        assert a <= start and start + len(prompt) <= b
        assert b - a <= len(prompt) + 2 * (audio_io.SILENCE_KEEP + 0.05) * sr
    pieces, _ = transcribe.cut_pieces(joined, vad=False)
    assert pieces[0][0] == 0 and sum(b - a for a, b in pieces) == len(joined)
    silent = [np.zeros(60 * sr, np.float32), rng.normal(0, 1e-3, 60 * sr).astype(np.float32)]
    assert all(transcribe.cut_pieces(x)[0] == [] for x in silent)
    assert student.transcribe(silent) == [{"text": "", "segments": [], "language": "en"}] * 2


def test_config_errors():
    with pytest.raises(run_plumbing.TrainError, match="--loss"):
        askd.TrainConfig(loss="mse").check()
    with pytest.raises(ValueError, match="schedule"):
        askd.TrainConfig(alpha="cosine:1").check()
    with pytest.raises(run_plumbing.TrainError, match="--epochs must be positive"):
        askd.TrainConfig(epochs=0).check()


def test_train_options_are_made_from_train_config(capsys, monkeypatch):
    """Each TrainConfig field is a train option with its metadata's help; a choice list is written
    once: the CLI refuses what check() refuses, in one line."""
    import dataclasses

    import fastwhisper

    monkeypatch.setenv("COLUMNS", "1000")  # no help line wrapped inside a word
    with pytest.raises(SystemExit):
        fastwhisper.main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(askd.TrainConfig):
        help = " ".join(f.metadata["help"].split())
        assert f"--{f.name.replace('_', '-')}" in shown and help in shown, f.name
    assert "--T T, --temperature T" in shown and "--quiet, -q" in shown
    assert "(default 0.99)" in shown and "(default cosine:0.3:0)" in shown
    with pytest.raises(
        run_plumbing.TrainError, match="--lr-schedule step: use one of linear, cosine"
    ):
        askd.TrainConfig(lr_schedule="step").check()
    for argv, said in [
        (["--lr-schedule", "step"], "invalid choice: 'step' (choose from 'linear', 'cosine')"),
        (["--ema-decay", "1"], "argument --ema-decay: 1: must be >= 0 and <= 0.999999"),
        (["--epochs", "0"], "argument --epochs: 0: must be >= 1"),
    ]:
        with pytest.raises(SystemExit) as exit:
            fastwhisper.main(["train", *argv])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and err.splitlines()[-1].endswith(said), err


# ----- training runs on real speech -------------------------------------------------------------
# 12 short training prompts, micro-batches of 2, 2 epochs: 6 micro-batches an epoch, 3 steps of 2
# accumulated micro-batches each. One training prompt has no transcript (the teacher labels it).
# Every run injects a NaN loss into step 2 (which must be skipped).

TRAIN_ARGS = [
    "--decoder-layers",
    "2",
    "--batch-size",
    "2",
    "--epochs",
    "2",
    "--save-every",
    "2",
    "--spec-augment",
    "--threads",
    "1",
    "--eval-batch-size",
    "2",
    "--lr",
    "1e-4",
    "--joined",
    "0",
    "--perturbed",
    "0",
    "--quiet",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, asterisk, tiny):
    root = tmp_path_factory.mktemp("askd")
    split = data.split_corpus(asterisk)

    def short(us):
        return sorted((u for u in us if u.duration < 1.6), key=lambda u: u.id)

    def manifest(name, utts, untranscribed=()):
        path = root / name
        path.write_text(
            "audio\ttext\n"
            + "".join(f"{u.audio}\t{'' if u in untranscribed else u.text}\n" for u in utts)
        )
        return str(path)

    train = short(split["train"])[:12]
    return {
        "root": root,
        "train": manifest("train.tsv", train, untranscribed=train[-1:]),
        "untranscribed": train[-1],
        "dev": manifest("dev.tsv", short(split["dev"])[:2]),
        "test": manifest("test.tsv", short(split["test"])[:2]),
        "cache": str(root / "cache"),
        "runs": str(root / "runs"),
    }


def train_cli(ws, name, *extra, nproc=1, **faults):
    """`fastwhisper.py train` through tests/train_with_faults.py: a NaN loss in step 2, and any
    other faults (kill=K, interrupt=K)."""
    faults = [f"{fault}={step}" for fault, step in {"nan": 2, **faults}.items()]
    command = [
        sys.executable,
        "tests/train_with_faults.py",
        *faults,
        "train",
        "--train",
        ws["train"],
        "--dev",
        ws["dev"],
        "--cache-dir",
        ws["cache"],
        "--runs-dir",
        ws["runs"],
        "--name",
        name,
        *TRAIN_ARGS,
        *extra,
    ]
    if nproc > 1:
        command[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    # the child script imports the repository's modules from its root
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


def final_weights(ws, name):
    return torch.load(Path(ws["runs"]) / name / "last.pt", map_location="cpu", weights_only=True)


def metrics(ws, name):
    return [
        json.loads(line)
        for line in (Path(ws["runs"]) / name / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def reference_run(workspace):
    """One process accumulating 2 micro-batches a step, straight through, then the test table."""
    result = train_cli(
        workspace,
        "reference",
        "--accum",
        "2",
        "--test",
        workspace["test"],
        "--ood",
        workspace["dev"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_end_to_end_train_then_eval(reference_run, workspace, tiny):
    run = Path(workspace["runs"]) / "reference"
    table = reference_run.stdout
    assert (
        "teacher tiny.en" in table
        and "student (askd)" in table
        and "WER %" in table
        and "speed-up" in table
    )
    assert f"OOD WER %: {workspace['dev']} (2 utterances" in table and "OOD WER %  s / utt" in table
    log = metrics(workspace, "reference")
    steps = [r for r in log if "loss" in r or r.get("skipped")]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[1].get("skipped") and steps[1]["grad_norm"] is None  # the NaN step, skipped
    assert all(not r.get("skipped") for r in steps if r["step"] != 2)
    assert steps[-1]["ce"] < steps[0]["ce"]  # it learns
    assert [r["epoch"] for r in log if "dev_wer" in r] == [1, 2]
    results = json.loads((run / "results.json").read_text())
    assert (
        results["counters"] == {"steps skipped: non-finite loss or gradient": 1}
        and results["steps"] == 6
    )
    # the untranscribed training utterance was labelled by the teacher (and cached)
    labelled = [json.loads(p.read_text()) for p in Path(workspace["cache"]).rglob("*.pseudo.json")]
    assert [x["audio"] for x in labelled] == [workspace["untranscribed"].audio]
    assert text_norm.wer(workspace["untranscribed"].text, labelled[0]["text"]) <= 0.5
    assert [row["input"] for row in results["test"]] == ["padded", "trimmed", "padded"]
    assert [row["model"] for row in results["test"]] == [
        "teacher tiny.en",
        "student (askd)",
        "student, 30 s windows",
    ]
    assert (
        results["test"][0]["OOD WER %"] <= 50 and results["test"][1]["OOD WER %"] >= 0
    )  # the teacher, the student

    # the student is an ordinary Whisper checkpoint that says how it wants its input
    student = transcribe.load_recognizer(run / "student.pt")
    assert student.model.dims.n_text_layer == 2 and student.input == "trimmed"
    test = data.load_source(workspace["test"])
    results = student.transcribe(
        [u.audio for u in test] + [np.zeros(16000 * 31, np.float32)],
        transcribe.TranscribeOptions(without_timestamps=True, vad=False),
    )
    assert len(results) == 3 and [len(r["segments"]) for r in results[:2]] == [1, 1]
    pieces = results[2]["segments"]  # 31 s of silence: no pause to cut at, cut anyway
    assert len(pieces) == 2 and pieces[0]["start"] == 0 and pieces[-1]["end"] == 31.0
    assert pieces[0]["end"] == pieces[1]["start"] and all(
        p["end"] - p["start"] <= 30 for p in pieces
    )
    assert student.transcribe([np.zeros(16000 * 31, np.float32)])[0]["segments"] == []  # the gate
    assert results[0]["text"] == "".join(s["text"] for s in results[0]["segments"])

    # eval: any models on any manifest, as a table
    result = subprocess.run(
        [
            sys.executable,
            "fastwhisper.py",
            "eval",
            "--model",
            "tiny.en",
            "--model",
            str(run / "student.pt"),
            "--data",
            workspace["test"],
            "--threads",
            "1",
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[1].split()[:2] == ["model", "params"] and lines[2].startswith("tiny.en")
    assert lines[3].startswith(str(run / "student.pt")) and "trimmed" in lines[3]


def cli(*args):
    return subprocess.run(
        [sys.executable, "fastwhisper.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_cli_teacher_exact_mode_and_bench(reference_run, workspace):
    """transcribe --draft gives the teacher's own text; bench times every way of running both."""
    student = str(Path(workspace["runs"]) / "reference" / "student.pt")
    files = [u.audio for u in data.load_source(workspace["test"])]
    plain = cli(
        "transcribe",
        *files,
        "--model",
        "tiny.en",
        "--temperature",
        "0",
        "-o",
        str(workspace["root"]),
        "-q",
    )
    exact = cli(
        "transcribe",
        *files,
        "--model",
        "tiny.en",
        "--draft",
        student,
        "--temperature",
        "0",
        "-o",
        str(workspace["root"]),
        "-q",
    )
    assert plain.returncode == 0 and exact.returncode == 0, exact.stderr[-2000:]
    assert exact.stdout == plain.stdout and len(plain.stdout.splitlines()) == len(files)
    wrong = cli("transcribe", files[0], "--model", student, "--draft", student)
    assert (
        wrong.returncode == 2
        and wrong.stderr.startswith("error: --draft")
        and "Traceback" not in wrong.stderr
    )

    bench = cli("bench", *files, "--model", "tiny.en", "--model", student, "--threads", "1")
    assert bench.returncode == 0, bench.stderr[-2000:]
    table = bench.stdout.splitlines()
    assert (
        table[0].split()[:4] == ["model", "weights", "input", "seconds"]
        and "long speed-up" in table[0]
    )
    rows = [line.split() for line in table[1:]]
    assert [r[:3] for r in rows] == [
        ["tiny.en", "fp32", "padded"],
        ["tiny.en", "fp16-dec", "padded"],
        ["tiny.en", "+", "draft"],
        [student, "fp32", "trimmed"],
        [student, "fp16-dec", "trimmed"],
    ]
    assert (
        rows[2][-1] == f"{len(files) + 1}/{len(files) + 1}"
    )  # every file and the long one: the same text


def test_killed_run_resumes_exactly(reference_run, workspace):
    killed = train_cli(workspace, "killed", "--accum", "2", kill=5)
    assert killed.returncode == -9  # SIGKILL during step 5, mid-epoch 2
    assert final_weights(workspace, "killed")["step"] == 4
    again = train_cli(workspace, "killed", "--accum", "2")
    assert again.returncode != 0 and "--resume" in again.stderr  # will not silently start over
    resumed = train_cli(workspace, "killed", "--accum", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_weights(workspace, "reference"), final_weights(workspace, "killed")
    assert a["step"] == b["step"] == 6
    for part in ("student", "earlier"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part} {name} differs after resuming"
    assert a["optimizer"]["state"][0]["exp_avg_sq"].equal(b["optimizer"]["state"][0]["exp_avg_sq"])

    # the log reads as if the run had never stopped
    def strip(log):
        return [{k: v for k, v in r.items() if k != "time"} for r in log]

    assert strip(metrics(workspace, "killed")) == strip(metrics(workspace, "reference"))
    changed = train_cli(workspace, "killed", "--accum", "2", "--resume", "--lr", "1e-3")
    assert changed.returncode != 0 and "lr (0.0001 -> 0.001)" in changed.stderr


def test_interrupted_run_saves_and_resumes(reference_run, workspace, ctrl_c):
    """Ctrl-C (SIGINT) during step 4: the step ends, last.pt is saved, exit status 130; --resume
    ends exactly where the uninterrupted run did."""
    stopped = train_cli(workspace, "interrupted", "--accum", "2", interrupt=4)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "stopped at step 4 of 6; continue with the same command and --resume" in stopped.stderr
    assert final_weights(workspace, "interrupted")["step"] == 4
    resumed = train_cli(workspace, "interrupted", "--accum", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_weights(workspace, "reference"), final_weights(workspace, "interrupted")
    assert all(torch.equal(tensor, b["student"][name]) for name, tensor in a["student"].items())


def test_two_gloo_processes_equal_one_accumulating(reference_run, workspace):
    """torchrun, 2 CPU processes: rank r takes micro-batch r of each pair, gradients are averaged
    (and the NaN that only rank 0 sees is skipped by both), which is what one process does with
    --accum 2."""
    result = train_cli(workspace, "ddp", "--accum", "1", nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = final_weights(workspace, "reference"), final_weights(workspace, "ddp")
    assert b["step"] == 6 and len(b["rng"]) == 2
    for name, tensor in a["student"].items():
        torch.testing.assert_close(
            b["student"][name], tensor, rtol=1e-4, atol=1e-5, msg=f"student {name}"
        )
    ref = [r for r in metrics(workspace, "reference") if "loss" in r]
    ddp = [r for r in metrics(workspace, "ddp") if "loss" in r]
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in ref], rel=1e-4)


def test_without_dev_data_the_student_is_the_last_epochs(workspace, tmp_path, capsys):
    """A dev set with no transcribed utterance is left out with a warning; without dev data every
    epoch's student is saved, so a run always ends with a student.pt, and results.json is valid
    JSON."""
    untranscribed = tmp_path / "dev.tsv"
    untranscribed.write_text(
        "audio\ttext\n"
        + "".join(
            f"{line.split(chr(9))[0]}\t\n"
            for line in Path(workspace["dev"]).read_text().splitlines()[1:]
        )
    )
    cfg = askd.TrainConfig(
        train=workspace["train"],
        dev=str(untranscribed),
        input="padded",
        limit=4,
        batch_size=4,
        epochs=2,
        cache_dir=workspace["cache"],
        runs_dir=str(tmp_path),
        name="nodev",
        decoder_layers=1,
        joined=0,
        perturbed=0,
        quiet=True,
    )
    results = askd.train(cfg)
    assert "dev.tsv holds no transcribed utterance; left out" in capsys.readouterr().err
    info = torch.load(tmp_path / "nodev" / "student.pt", weights_only=True)["fastwhisper"]
    assert info["epoch"] == 2 and info["dev_wer"] is None and results["best_dev_wer"] is None
    json.loads(
        (tmp_path / "nodev" / "results.json").read_text(), parse_constant=lambda c: pytest.fail(c)
    )


def test_training_adds_long_and_perturbed_inputs(workspace, tmp_path, monkeypatch):
    """--joined and --perturbed (per training utterance) add long recordings and perturbed copies of
    the training prompts as ordinary examples, with the teacher's outputs cached for each."""
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path / "cache"))
    cfg = askd.TrainConfig(
        train=workspace["train"],
        dev=workspace["dev"],
        limit=4,
        joined=0.5,
        perturbed=0.75,
        batch_size=4,
        epochs=1,
        cache_dir=workspace["cache"],
        runs_dir=str(tmp_path),
        name="more",
        decoder_layers=1,
        quiet=True,
    )
    trainer = askd.Trainer(cfg)
    plain = [ex for ex in trainer.examples if ":" not in ex.id]
    joined = [ex for ex in trainer.examples if ex.id.startswith("joined:")]
    perturbed = [ex for ex in trainer.examples if ex.id.startswith("perturbed:")]
    assert (len(plain), len(joined), len(perturbed)) == (4, 2, 3) and len(trainer.examples) == 9
    texts = {ex.id: ex.text for ex in plain}
    for ex in joined:
        assert (
            14.4 <= ex.n_samples / audio_io.SAMPLE_RATE <= 28
            and ex.frames == transcribe.trimmed_frames(ex.n_samples)
        )
        assert ex.text == " ".join(texts[i] for i in ex.id.removeprefix("joined:").split("+"))
    for ex in perturbed:
        assert (
            ex.text == texts[ex.id.split(":")[1]]
            and str(tmp_path / "cache" / "perturbed") in ex.audio
        )
    assert trainer.cache.missing(trainer.examples, "trimmed") == []


def test_perturbed_copies_still_say_the_same_words(asterisk, tmp_path, monkeypatch):
    """The teacher still hears the prompt's words in most perturbed copies of real prompts (harder,
    not garbled): its WER on them stays within 25 points of its WER on the originals."""
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path))
    utts = sorted(data.split_corpus(asterisk)["test"], key=lambda u: u.id)[:12]
    teacher = transcribe.load_recognizer("tiny.en")
    clean, clean_refs = transcribe.read_utterances(utts)
    noisy, noisy_refs = transcribe.read_utterances(
        data.perturbed_utterances(utts, len(utts), seed=0)
    )
    assert sorted(noisy_refs) == sorted(clean_refs)  # each prompt once, its own text
    clean_wer = text_norm.wer(clean_refs, teacher.transcribe_text(clean, 4))
    noisy_wer = text_norm.wer(noisy_refs, teacher.transcribe_text(noisy, 4))
    assert noisy_wer <= clean_wer + 0.25


FORK = multiprocessing.get_context("fork")  # children start at once, askd already imported


def take_and_die(run: Path) -> None:
    """Leave a dead run's lock in `run`: a process takes it and exits without letting go."""
    child = FORK.Process(target=lambda: (run_plumbing.RunLock(run).__enter__(), os._exit(0)))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    assert (run / ".lock").read_text().startswith(f"host {socket.gethostname()} pid ")


def race_for_locks(runs, start, tried, done, results):
    """One racer: at each round, try to take that round's run folder, say whether it got it, and
    (if so) hold it until every racer has tried."""
    for run in runs:
        start.wait(10)
        lock = run_plumbing.RunLock(run)
        try:
            lock.__enter__()
        except run_plumbing.TrainError:
            pass
        results.put((os.getpid(), lock.fd is not None))
        tried.wait(10)
        done.wait(10)
        lock.__exit__(None, None, None)


ROUNDS = 100  # enough that a lock with a gap between taking and writing it is caught


def test_racing_runs_never_share_a_folder(tmp_path):
    """6 processes released together race for a run folder, round after round, every second one with
    a dead run's lock in it: each time exactly one holds it, and the lock's text names that one."""
    runs = [tmp_path / f"run{i}" for i in range(ROUNDS)]
    take_and_die(runs[1])
    for run in runs[3::2]:
        run.mkdir()
        (run / ".lock").write_bytes((runs[1] / ".lock").read_bytes())
    start, tried, done = (FORK.Barrier(7) for _ in range(3))
    results = FORK.Queue()
    racers = [
        FORK.Process(target=race_for_locks, args=(runs, start, tried, done, results))
        for _ in range(6)
    ]
    for racer in racers:
        racer.start()
    try:
        for run in runs:
            start.wait(10)
            tried.wait(10)
            holders = [pid for pid, held in (results.get(timeout=10) for _ in racers) if held]
            assert len(holders) == 1, f"{run.name}: held by {len(holders)} processes at once"
            assert f" pid {holders[0]} " in (run / ".lock").read_text()
            done.wait(10)
        for racer in racers:
            racer.join(10)
            assert racer.exitcode == 0
    finally:
        for barrier in (start, tried, done):
            barrier.abort()
        for racer in racers:
            racer.kill()
            racer.join()
    assert not any((run / ".lock").exists() for run in runs)  # each holder took its lock away


def test_a_run_folder_is_locked_and_overwrite_clears_it(workspace, tmp_path, monkeypatch):
    """A live run's lock stops a second run; a dead one's is taken over; --overwrite removes the old
    run's files before anything else; a corrupt last.pt on --resume is a one-line error."""
    cfg = dict(
        train=workspace["train"],
        dev=workspace["dev"],
        input="padded",
        limit=4,
        batch_size=4,
        epochs=1,
        cache_dir=workspace["cache"],
        runs_dir=str(tmp_path),
        name="locked",
        decoder_layers=1,
        joined=0,
        perturbed=0,
        quiet=True,
    )
    run = tmp_path / "locked"
    with run_plumbing.RunLock(run):  # this test process: alive
        owner = rf"host {re.escape(socket.gethostname())} pid {os.getpid()} started [-\d]+ [:\d]+"
        with pytest.raises(
            run_plumbing.TrainError, match=rf"locked: another run \({owner}\) is using "
        ):
            askd.train(askd.TrainConfig(**cfg))
    take_and_die(run)
    for name in ("last.pt", "student.pt", "results.json", "metrics.jsonl"):
        (run / name).write_text("an older run")
    seen = {}
    monkeypatch.setattr(
        askd.Trainer,
        "run",
        lambda self: seen.setdefault("files", sorted(p.name for p in run.iterdir())),
    )
    askd.train(askd.TrainConfig(**cfg, overwrite=True))
    assert seen["files"] == [
        ".lock",
        "config.json",
        "metrics.jsonl",
    ]  # a fresh run, holding the lock
    assert (run / "metrics.jsonl").read_text() == "" and not (run / ".lock").exists()
    (run / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(
        run_plumbing.TrainError,
        match=r"last\.pt: cannot read the checkpoint \(.*\); start over with ",
    ):
        askd.train(askd.TrainConfig(**cfg, resume=True))


def test_resuming_a_run_that_is_not_there_leaves_nothing(tmp_path, capsys):
    """`train --resume` of a run that was never started: one line saying so, and no folder made."""
    import fastwhisper

    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit:
        fastwhisper.main(["train", "--runs-dir", str(runs), "--name", "never", "--resume", "-q"])
    assert exit.value.code == 2 and not runs.exists()
    said = "there is no run to resume there (no last.pt); start it without --resume"
    assert capsys.readouterr().err == f"error: {runs / 'never'}: {said}\n"


def test_a_full_disk_while_checkpointing_is_one_line(workspace, tmp_path, monkeypatch):
    cfg = askd.TrainConfig(
        train=workspace["train"],
        dev=workspace["dev"],
        input="padded",
        limit=4,
        batch_size=4,
        epochs=1,
        cache_dir=workspace["cache"],
        runs_dir=str(tmp_path),
        name="full",
        decoder_layers=1,
        joined=0,
        perturbed=0,
        quiet=True,
    )

    def full(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_plumbing, "atomic_torch_save", full)
    with pytest.raises(
        run_plumbing.TrainError,
        match=r"full/last\.pt: cannot write the checkpoint at step 1 \(No space "
        r"left on device\); the one before is intact",
    ):
        askd.train(cfg)
    assert not (tmp_path / "full" / ".lock").exists()  # the lock goes with the run


def test_classic_padded_student_keeps_the_teachers_encoder(workspace, tiny):
    """--input padded: 30 s windows, the encoder frozen (its states come from the teacher cache);
    two dev sets joined with '+' choose the student by the mean of their WERs."""
    dev = f"{workspace['dev']}+{workspace['test']}"
    cfg = askd.TrainConfig(
        train=workspace["train"],
        dev=dev,
        input="padded",
        loss="kd",
        limit=4,
        batch_size=4,
        epochs=2,
        cache_dir=workspace["cache"],
        runs_dir=workspace["runs"],
        name="padded",
        decoder_layers=2,
        joined=0,
        perturbed=0,
        quiet=True,
    )
    results = askd.train(cfg)
    assert results["steps"] == 2 and results["counters"] == {}
    for record in [r for r in metrics(workspace, "padded") if "dev_wer" in r]:
        each = [record[f"dev_wer {workspace[k]}"] for k in ("dev", "test")]
        assert record["dev_wer"] == pytest.approx(sum(each) / 2)
    path = Path(workspace["runs"]) / "padded" / "student.pt"
    assert type(transcribe.load_recognizer(path)) is transcribe.Recognizer
    student = weight_files.load_model(path)
    t, s = tiny.state_dict(), student.state_dict()
    assert all(torch.equal(s[k], t[k]) for k in s if k.startswith("encoder."))
    assert not torch.equal(s["decoder.blocks.1.mlp.0.weight"], t["decoder.blocks.3.mlp.0.weight"])
