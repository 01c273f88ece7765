"""fileio.py: files written atomically with the umask, and one-line errors."""

import os

import fileio


def test_written_files_keep_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert (fileio.write_atomic(tmp_path / "a.txt", b"x").stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        assert (fileio.write_atomic(tmp_path / "b.txt", b"x").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)


def test_brief_errors_end_on_a_whole_word():
    long = ValueError("weights only load failed " + "because of something " * 10 + "\nsecond line")
    text = fileio.brief(long, limit=60)
    assert text == "ValueError: weights only load failed because of something because of ..."
    assert (
        fileio.brief(KeyError()) == "KeyError"
        and fileio.brief(OSError("short")) == "OSError: short"
    )
