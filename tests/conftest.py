"""Shared fixtures."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's modules


@pytest.fixture(scope="session")
def asterisk():
    """The Asterisk prompts corpus as a list of data.Utterance (~550 real recordings).

    Uses $FASTWHISPER_ASTERISK when set; otherwise data.asterisk_corpus() fetches the
    Debian packages into the cache with `apt-get download` on first use.
    """
    import data

    return data.asterisk_corpus()
