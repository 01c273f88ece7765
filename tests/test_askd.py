"""askd.py: the student, its targets, schedules, the loss by hand, training data, training."""

import json
import math
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import metrics

import askd
import audio_io
import data
import fileio
import run_plumbing
import text_norm
import transcribe
import weight_files

ROOT = Path(__file__).resolve().parent.parent


# ----- the student --------------------------------------------------------------------------------


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


# ----- targets ------------------------------------------------------------------------------------


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


def test_a_padded_batch_is_read_as_30_s_windows_and_its_encoder_target_fits(
    tiny, asterisk, tmp_path, monkeypatch
):
    """--padded-share: the same examples padded to 30 s. The teacher's own encoder reading them
    meets the encoder target (the teacher's padded states over the speech), which it misses when
    it reads the trimmed input: what the share teaches the student."""
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path))
    utts = sorted(data.split_corpus(asterisk)["train"], key=lambda u: u.id)[:3]
    examples = askd.prepare_examples(utts, tiny.tokenizer, 100, tiny.dims.n_text_ctx)
    cache = askd.TeacherCache(tmp_path / "teacher", tiny)
    cache.build(examples, "trimmed", progress=False)
    n_mels, eot = tiny.dims.n_mels, tiny.tokenizer.eot
    trimmed = askd.collate(examples, cache, "trimmed", n_mels, eot)
    padded = askd.collate(examples, cache, "trimmed", n_mels, eot, padded=True)
    assert padded.mel.shape[-1] == audio_io.N_FRAMES > trimmed.mel.shape[-1]
    assert padded.mel_lengths.tolist() == [audio_io.N_FRAMES] * len(examples)
    assert padded.enc_positions() == trimmed.enc_positions() == [ex.frames // 2 for ex in examples]
    for i, ex in enumerate(examples):  # the same speech, then 30 s of padding
        assert torch.equal(padded.mel[i, :, : ex.frames], trimmed.mel[i, :, : ex.frames])
    with torch.no_grad():
        losses = [
            askd.encoder_loss(tiny.encoder(b.mel, b.mel_lengths), b.enc_targets, b.enc_positions())
            for b in (padded, trimmed)
        ]
    assert losses[0] < 1e-4 < losses[1]


# ----- schedules ----------------------------------------------------------------------------------


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


# ----- the loss, by hand --------------------------------------------------------------------------


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


# ----- training data ------------------------------------------------------------------------------


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


def test_default_dev_sets_are_the_corpus_split_and_real_speech(asterisk, monkeypatch, capsys):
    """With the default corpus the student is chosen on its dev split and on the select part of
    real speech of other people; if that cannot be fetched, on the dev split alone, with a
    warning."""
    train, dev, test, label = askd.default_sources(askd.TrainConfig())
    assert list(dev) == ["asterisk:dev", "real-speech-dev:select"]
    assert len(dev["real-speech-dev:select"]) == 14
    assert {u.id for u in dev["asterisk:dev"]} == {u.id for u in data.split_corpus(asterisk)["dev"]}
    assert label == "asterisk:test" and len(test) == 97 and len(train) == 398

    def offline(spec):
        if spec.startswith("real-speech-dev"):
            raise fileio.DataError("real-speech-dev: could not download (offline)")
        return data.split_corpus(asterisk)[spec.split(":")[1]]

    monkeypatch.setattr(data, "load_source", offline)
    _, dev, _, _ = askd.default_sources(askd.TrainConfig())
    assert list(dev) == ["asterisk:dev"]
    assert "warning: dev set without real-speech-dev" in capsys.readouterr().err


def test_train_joins_sources_each_with_its_own_labels(tiny, tmp_path):
    """--train A+B reads both; a transcribed utterance keeps its reference, an untranscribed
    one (as in `voices`) takes the teacher's transcript."""
    for name, text in (("said", "Hello there."), ("heard", "")):
        audio = write_wav(tmp_path / f"{name}.wav", 1)
        (tmp_path / f"{name}.tsv").write_text(f"id\taudio\ttext\n{name}\t{audio}\t{text}\n")
    cfg = askd.TrainConfig(train=f"{tmp_path}/said.tsv+{tmp_path}/heard.tsv", test="")
    cfg.dev = f"{tmp_path}/said.tsv"  # a dev set given, so no 10% of --train is held out
    train, _, _, _ = askd.default_sources(cfg)
    assert [(u.id, u.text) for u in train] == [("said", "Hello there."), ("heard", "")]
    pseudo = {train[1].audio: "The teacher's words."}
    examples = askd.prepare_examples(train, tiny.tokenizer, 100, 448, "auto", pseudo)
    assert [(e.id, e.text) for e in examples] == [
        ("said", "Hello there."),
        ("heard", "The teacher's words."),
    ]


# ----- training -----------------------------------------------------------------------------------


def test_config_errors():
    with pytest.raises(run_plumbing.TrainError, match="--loss"):
        askd.TrainConfig(loss="mse").check()
    with pytest.raises(ValueError, match="schedule"):
        askd.TrainConfig(alpha="cosine:1").check()
    with pytest.raises(run_plumbing.TrainError, match="--epochs must be positive"):
        askd.TrainConfig(epochs=0).check()


# ----- a training run through the command line (conftest.py's reference_run) ----------------------


@pytest.mark.slow
def test_the_run_prints_the_test_table(reference_run, workspace):
    """The run ends with the test table on stdout: teacher and student, WER, speed-up, and the WER
    on the out-of-domain set named by --ood."""
    table = reference_run.stdout
    assert (
        "teacher tiny.en" in table
        and "student (askd)" in table
        and "WER %" in table
        and "speed-up" in table
    )
    assert f"OOD WER %: {workspace['dev']} (2 utterances" in table and "OOD WER %  s / utt" in table


@pytest.mark.slow
def test_the_nan_step_is_skipped_and_counted(reference_run, workspace):
    """Step 2's NaN loss: that step is logged as skipped, with no gradient norm, every other step
    of the 6 is taken, and results.json counts the one skipped step."""
    log = metrics(workspace, "reference")
    steps = [r for r in log if "loss" in r or r.get("skipped")]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[1].get("skipped") and steps[1]["grad_norm"] is None  # the NaN step, skipped
    assert all(not r.get("skipped") for r in steps if r["step"] != 2)
    results = json.loads((Path(workspace["runs"]) / "reference" / "results.json").read_text())
    assert (
        results["counters"] == {"steps skipped: non-finite loss or gradient": 1}
        and results["steps"] == 6
    )


@pytest.mark.slow
def test_the_student_learns(reference_run, workspace):
    """The cross-entropy of the last step is below that of the first."""
    steps = [r for r in metrics(workspace, "reference") if "loss" in r or r.get("skipped")]
    assert steps[-1]["ce"] < steps[0]["ce"]


@pytest.mark.slow
def test_the_dev_wer_is_measured_after_each_epoch(reference_run, workspace):
    """The student is scored on the dev set at the end of each of the two epochs."""
    assert [r["epoch"] for r in metrics(workspace, "reference") if "dev_wer" in r] == [1, 2]


@pytest.mark.slow
def test_results_name_the_dev_sets_the_student_was_chosen_on(reference_run, workspace):
    """results.json says which dev sets chose the student (bench ood --runs checks them)."""
    results = json.loads((Path(workspace["runs"]) / "reference" / "results.json").read_text())
    assert results["chosen on"] == [workspace["dev"]]


def test_the_default_out_of_domain_column_is_the_report_part():
    """With the default corpus the final table's out-of-domain column is real-speech-dev:report,
    which chose nothing."""
    from types import SimpleNamespace

    cfg = askd.TrainConfig()
    _, dev, _, _ = askd.default_sources(cfg)
    name, utts = askd.Trainer.ood_utterances(SimpleNamespace(cfg=cfg, dev_sets=dev))
    assert name == "real-speech-dev:report" and len(utts) == 35
    assert not {u.id for u in utts} & {u.id for u in dev["real-speech-dev:select"]}


@pytest.mark.slow
def test_the_student_is_the_weight_average(reference_run, workspace):
    """--pick average (the default): student.pt holds the EMA of the student's weights at the end
    (the askd self-teacher's, last.pt's 'earlier'), not the last step's weights."""
    run = Path(workspace["runs"]) / "reference"
    last = torch.load(run / "last.pt", weights_only=True)
    saved = torch.load(run / "student.pt", weights_only=True)
    assert saved["fastwhisper"]["pick"] == "average" and saved["fastwhisper"]["epoch"] == 2
    weights = saved["model_state_dict"]
    assert all(torch.equal(weights[k], last["earlier"][k]) for k in weights)
    assert not all(torch.equal(weights[k], last["student"][k]) for k in weights)


@pytest.mark.slow
def test_the_untranscribed_utterance_is_labelled_by_the_teacher(reference_run, workspace):
    """The training utterance without a transcript takes the teacher's words as its target, and
    that pseudo-label is cached."""
    labelled = [json.loads(p.read_text()) for p in Path(workspace["cache"]).rglob("*.pseudo.json")]
    assert [x["audio"] for x in labelled] == [workspace["untranscribed"].audio]
    assert text_norm.wer(workspace["untranscribed"].text, labelled[0]["text"]) <= 0.5


@pytest.mark.slow
def test_results_hold_the_test_table_rows(reference_run, workspace):
    """results.json's test rows: the teacher, the student on trimmed input and the student on 30 s
    windows, each with its WER on the out-of-domain set."""
    results = json.loads((Path(workspace["runs"]) / "reference" / "results.json").read_text())
    assert [row["input"] for row in results["test"]] == ["padded", "trimmed", "padded"]
    assert [row["model"] for row in results["test"]] == [
        "teacher tiny.en",
        "student (askd)",
        "student, 30 s windows",
    ]
    assert (
        results["test"][0]["OOD WER %"] <= 50 and results["test"][1]["OOD WER %"] >= 0
    )  # the teacher, the student


@pytest.mark.slow
def test_the_student_loads_as_a_trimmed_student_that_reads_pieces(reference_run, workspace):
    """student.pt is an ordinary Whisper checkpoint that says how it wants its input: it loads as a
    2-layer Student on trimmed input, reads each test file as one segment, cuts 31 s of silence
    into two pieces when the gate is off and reads nothing there when it is on."""
    student = transcribe.load_recognizer(Path(workspace["runs"]) / "reference" / "student.pt")
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


@pytest.mark.slow
def test_eval_prints_a_table_of_the_teacher_and_the_student(reference_run, workspace):
    """`eval` takes any models on any manifest and prints one table row for each."""
    run = Path(workspace["runs"]) / "reference"
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


# ----- training in process: more inputs, no dev data, padded input --------------------------------


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    # kd has no self-teacher: --pick average keeps a weight average of its own, saved for resuming
    last = torch.load(path.parent / "last.pt", weights_only=True)
    assert last["earlier"] is None and all(torch.equal(s[k], last["average"][k]) for k in s)
