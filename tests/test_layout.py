"""The module layout: the command line and the inference modules never import the training code
(askd.py, run_plumbing.py), so `transcribe` and `stream` start without it."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING = {"askd", "run_plumbing"}


def imported(*args: str) -> tuple[subprocess.CompletedProcess, set]:
    """A fresh interpreter run with -X importtime, and the names of the modules it imported."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", *args], cwd=ROOT, capture_output=True, text=True
    )
    modules = {
        line.split("|")[-1].strip()
        for line in r.stderr.splitlines()
        if line.startswith("import time:")
    }
    return r, modules


def test_transcribe_and_stream_help_import_no_training_code():
    for command in ("transcribe", "stream"):
        r, modules = imported("fastwhisper.py", command, "--help")
        assert r.returncode == 0 and "--model" in r.stdout, r.stderr
        assert "argparse" in modules  # the list of imports is real
        assert not modules & (TRAINING | {"streaming"} if command == "transcribe" else TRAINING)


@pytest.mark.slow
def test_train_help_still_shows_the_training_defaults():
    r, modules = imported("fastwhisper.py", "train", "--help")
    assert r.returncode == 0 and "AdamW peak learning rate (default" in r.stdout
    assert "askd" in modules


@pytest.mark.slow
def test_inference_modules_import_no_training_code():
    code = (
        "import fastwhisper, transcribe, streaming, writers, weight_files, audio_io, decoding, "
        "tokenization\n"
        "import sys; print(' '.join(sorted(sys.modules)))"
    )
    r, modules = imported("-c", code)
    assert r.returncode == 0, r.stderr
    assert "transcribe" in modules and "streaming" in r.stdout.split()
    assert not modules & TRAINING and not TRAINING & set(r.stdout.split())
