"""fastwhisper.py: its options and their errors, and `transcribe` run as a process on many files."""

import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import audio_of, cli, speech

import askd
import audio_io
import data
import run_plumbing

ROOT = Path(__file__).resolve().parent.parent


# ----- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        ("transcribe x.wav --threads -3", "argument --threads: -3: must be >= 0"),
        (
            "transcribe x.wav --device tpu",
            "argument --device: 'tpu': use auto, cpu, cuda, cuda:N or mps",
        ),
        (
            "transcribe x.wav --temperature nan",
            "argument --temperature: nan: must be >= 0 and <= 2",
        ),
        (
            "transcribe x.wav --temperature 0,-1",
            "argument --temperature: -1: must be >= 0 and <= 2",
        ),
        (
            "transcribe x.wav --temperature 1e9",
            "argument --temperature: 1e9: must be >= 0 and <= 2",
        ),
        ("transcribe x.wav --beam-size 0", "argument --beam-size: 0: must be >= 1"),
        ("train --alpha bogus", "argument --alpha: bad schedule 'bogus'"),
        ("train --lr nan", "argument --lr: nan: must be > 0"),
        ("train --limit -1", "argument --limit: -1: must be >= 1"),
        ("train --ema-decay 1", "argument --ema-decay: 1: must be >= 0 and <= 0.999999"),
        ("eval --batch-size x", "argument --batch-size: not a whole number: 'x'"),
    ],
)
def test_bad_options_are_one_line_usage_errors(argv, message, capsys):
    import fastwhisper

    with pytest.raises(SystemExit) as exit:
        fastwhisper.main(argv.split())
    assert exit.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in last and last.startswith("fastwhisper.py ")


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


# ----- transcribe: many files, bad ones, pipes, Ctrl-C --------------------------------------------


@pytest.mark.slow
def test_cli_transcribes_files_and_survives_bad_ones(tiny, golden, sounds, tmp_path):
    item = speech(golden)[5]
    wav = tmp_path / "prompt.wav"
    pcm = (audio_of(sounds, item["name"]) * 32768).clip(-32768, 32767).astype("<i2").tobytes()
    wav.write_bytes(
        b"RIFF"
        + struct.pack("<I", 36 + len(pcm))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data"
        + struct.pack("<I", len(pcm))
        + pcm
    )
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fastwhisper.py"),
            "transcribe",
            str(wav),
            str(bad),
            str(tmp_path / "missing.flac"),
            "--temperature",
            "0",
            "-o",
            str(out),
            "-f",
            "all",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1  # some files failed ...
    assert item["transcribe"]["text"].strip() in proc.stdout  # ... but the good one was transcribed
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and str(bad) in errors[0] and "missing.flac" in errors[1]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        f"prompt.{f}" for f in ("json", "srt", "tsv", "txt", "vtt")
    ]


@pytest.mark.slow
def test_cli_reads_pipes_and_costs_an_absurd_header_only_its_file(tiny, golden, sounds, tmp_path):
    """In one chunk of files: a WAV declaring 4294967291 Hz is one error line; `<(cat x.wav)` of a
    WAV whose data size is 0 (a crashed recorder) is read to its end with a warning; the other
    files' transcripts are written."""
    item = speech(golden)[5]
    pcm = (audio_of(sounds, item["name"]) * 32768).clip(-32768, 32767).astype("<i2").tobytes()

    def wav(name, rate=16000, size=len(pcm)):
        fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, 32000, 2, 16)
        (tmp_path / name).write_bytes(
            b"RIFF"
            + struct.pack("<I", 36 + len(pcm))
            + b"WAVEfmt "
            + fmt
            + b"data"
            + struct.pack("<I", size)
            + pcm
        )
        return str(tmp_path / name)

    good, absurd = wav("good.wav"), wav("absurd.wav", rate=4_294_967_291)
    crashed, out = wav("crashed.wav", size=0), tmp_path / "out"
    command = 'exec "$0" "$1" transcribe "$2" "$3" <(cat "$4") --temperature 0 -o "$5" -q'
    proc = subprocess.run(
        [
            "bash",
            "-c",
            command,
            sys.executable,
            str(ROOT / "fastwhisper.py"),
            good,
            absurd,
            crashed,
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {absurd}: sample rate 4294967291 Hz is outside 1000-768000 Hz "
        f"(a damaged WAV header?)"
    ]
    assert any(
        line.startswith("warning: /dev/fd/")
        and "no audio (data size 0) but " in line
        and line.endswith(" s follow it: read to the end of the file")
        for line in proc.stderr.splitlines()
    )
    text = item["transcribe"]["text"].strip()
    lines = proc.stdout.splitlines()
    assert f"{good}: {text}" in lines
    assert any(line.startswith("/dev/fd/") and line.endswith(f": {text}") for line in lines)
    assert len(list(out.iterdir())) == 2 and (out / "good.txt").read_text().strip() == text


@pytest.mark.slow
def test_cli_outputs_never_collide_and_bad_files_cost_only_themselves(
    tiny, golden, sounds, tmp_path
):
    """Same stems in two folders get two transcripts; an input is never overwritten by an output;
    a NaN WAV and a truncated one are one line each while the others are written; an output folder
    that cannot be written is an error before any decoding."""
    speech_audio = audio_of(sounds, speech(golden)[5]["name"])
    for folder in ("a", "b"):
        audio_io.save_wav(tmp_path / folder / "same.wav", speech_audio)
    clip = tmp_path / "clip.json"
    clip.write_bytes((tmp_path / "a" / "same.wav").read_bytes())  # a WAV named .json
    nan = tmp_path / "nan.wav"
    nan.write_bytes(
        b"RIFF"
        + struct.pack("<I", 48)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 3, 1, 16000, 64000, 4, 32)
        + b"data"
        + struct.pack("<I", 12)
        + np.array([0, np.nan, 0], "<f4").tobytes()
    )
    pcm = (tmp_path / "a" / "same.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(pcm[: len(pcm) // 2])  # the header claims twice the data
    files = [
        tmp_path / "a" / "same.wav",
        tmp_path / "b" / "same.wav",
        nan,
        clip,
        tmp_path / "cut.wav",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fastwhisper.py"),
            "transcribe",
            *map(str, files),
            "--temperature",
            "0",
            "-f",
            "json",
            "-o",
            str(tmp_path),
            "-q",
            "--batch-size",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {nan}: the WAV holds 1 NaN or infinite samples"]
    assert any(
        line.startswith(f"warning: {tmp_path / 'cut.wav'}: the WAV header declares")
        for line in proc.stderr.splitlines()
    )
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "clip-2.json",
        "clip.json",
        "cut.json",
        "same-2.json",
        "same.json",
    ]
    assert clip.read_bytes()[:4] == b"RIFF"  # the input is untouched
    texts = [
        json.loads((tmp_path / n).read_text())["text"]
        for n in ("same.json", "same-2.json", "clip-2.json")
    ]
    assert texts[0] == texts[1] == texts[2] and texts[0].strip()

    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fastwhisper.py"),
            "transcribe",
            str(files[0]),
            "-o",
            str(blocked),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.startswith(
        f"error: -o {blocked}: cannot write there"
    )
    assert proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_cli_reads_files_in_bounded_chunks(sounds, tmp_path, monkeypatch):
    """transcribe hands the model up to FILES_PER_BATCH batches of files at a time (or CHUNK_SECONDS
    of audio), every file once, in order; a bad file is an error line and costs only itself."""
    import fastwhisper

    class Bar:
        lines = []

        def write(self, text, file=None):
            self.lines.append(text)

    good = sorted(sounds.glob("*.g722"))[:19]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF nonsense")
    paths = [str(p) for p in good[:5]] + [str(bad)] + [str(p) for p in good[5:]]
    chunks = list(fastwhisper.read_in_chunks(paths, 2, Bar()))
    assert [len(c) for c, _, _ in chunks] == [16, 4] and sum((c for c, _, _ in chunks), []) == paths
    assert sum((g for _, g, _ in chunks), []) == [p for p in paths if p != str(bad)]
    assert (
        all(len(a) == len(g) for _, g, a in chunks)
        and Bar.lines == [Bar.lines[0]]
        and "bad.wav" in Bar.lines[0]
    )
    monkeypatch.setattr(fastwhisper, "CHUNK_SECONDS", 3)  # about one prompt of audio a chunk
    assert len(list(fastwhisper.read_in_chunks(paths, 2, Bar()))) >= 10


@pytest.mark.slow
def test_ctrl_c_keeps_every_file_transcribed_so_far(asterisk, tmp_path, ctrl_c):
    """Ctrl-C during `transcribe` of 10 real prompts, two to a batch: the files decoded so far are
    written, each whole and as an uninterrupted run writes it; one stderr line counts them; exit
    status 130."""
    prompts = sorted((u for u in asterisk if 1 < (u.duration or 0) < 3), key=lambda u: u.id)[:10]
    files = [
        str(
            audio_io.save_wav(
                tmp_path / "in" / f"{i}.wav", audio_io.load_audio(u.audio, cache=True)
            )
        )
        for i, u in enumerate(prompts)
    ]
    command = [
        sys.executable,
        str(ROOT / "fastwhisper.py"),
        "transcribe",
        *files,
        "-f",
        "all",
        "-q",
        "--temperature",
        "0",
        "--without-timestamps",
        "--batch-size=2",
        "--threads=2",
    ]
    whole = subprocess.run(
        [*command, "-o", str(tmp_path / "whole")], capture_output=True, text=True, timeout=120
    )
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "cut"
    proc = subprocess.Popen(
        [*command, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while len(list(out.glob("*.vtt"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=60)[1]
    stems = sorted({p.stem for p in out.iterdir()})
    assert proc.returncode == 130 and stderr.splitlines() == [
        f"interrupted: {len(stems)} of 10 files written, {10 - len(stems)} not"
    ], stderr
    assert 2 <= len(stems) < 10  # stopped midway, with files kept
    for stem in stems:  # whole, and as the full run wrote them
        names = [f"{stem}.{f}" for f in ("json", "srt", "tsv", "txt", "vtt")]
        assert sorted(p.name for p in out.glob(f"{stem}.*")) == names
        assert all((out / n).read_bytes() == (tmp_path / "whole" / n).read_bytes() for n in names)


# ----- a trained student on the command line ------------------------------------------------------


@pytest.mark.slow
def test_cli_teacher_exact_mode_with_a_student_draft(reference_run, workspace):
    """transcribe --draft STUDENT gives the teacher's own text; a student as the model with a draft
    is a one-line usage error."""
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
