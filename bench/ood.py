"""Out-of-domain WER: does a student distilled on the default corpus keep its teacher's generality?

    python bench/ood.py --model tiny.en --model runs/askd/student.pt [--per-voice 30] [--threads N]

Every model is scored by askd.evaluate (greedy, no timestamps, no fallback, each model in its own
input mode) on the default corpus's test split (in domain: one speaker, 16 kHz G.722), on the same
prompts through the 8 kHz GSM telephone codec (asterisk-gsm: same words, another channel), and on
WordNet sentences read by each installed synthesiser voice (tts:VOICE: new words, new voices; see
data.TTS_VOICES). One table: utterances, WER % of each model, and the gap (last model minus first,
in points). The last row pools every out-of-domain utterance: errors over reference words, so a
set weighs by its words, not by one rate per set.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import askd  # noqa: E402
import data  # noqa: E402

IN_DOMAIN = "asterisk:test"
POOLED = "out-of-domain, pooled"


def ood_sets(per_voice: int = 30) -> list[tuple[str, list]]:
    """(name, utterances) of the in-domain test split, asterisk-gsm and each installed TTS voice."""
    sets = [(IN_DOMAIN, data.split_corpus(data.asterisk_corpus())["test"]),
            ("asterisk-gsm", data.asterisk_gsm_corpus())]
    by_voice: dict[str, list] = {}
    for u in data.tts_corpus(per_voice):                  # one progress bar for all voices
        by_voice.setdefault(u.id.split("/")[1], []).append(u)
    return sets + [(f"tts:{voice}", utts) for voice, utts in by_voice.items()]


def readable(utts: list) -> list:
    """The utterances whose audio decodes (a warning for each other), so that the words counted for
    the pooled row are exactly the ones askd.evaluate scores."""
    kept = []
    for u in utts:
        try:
            data.load_audio(u.audio, cache=True)          # askd.evaluate reads it back from the cache
            kept.append(u)
        except (data.AudioError, OSError) as e:
            print(f"warning: {e}", file=sys.stderr)
    return kept


def reference_words(utts: list) -> int:
    """Words after normalisation: the denominator data.wer uses."""
    return sum(len(data.normalize_text(u.text).split()) for u in utts)


def ood_table(models: list[str], per_voice: int = 30, device: str = "cpu", batch_size: int = 8) -> list[dict]:
    """Evaluate every model on every set of ood_sets, print the table and return its rows."""
    columns = [f"WER % {m}" for m in models]
    rows, pooled_errors, pooled_words, pooled_utts = [], [0.0] * len(models), 0, 0
    for name, utts in ood_sets(per_voice):
        utts = readable(utts)
        if not utts:
            print(f"warning: {name}: no readable audio, skipped", file=sys.stderr)
            continue
        results = askd.evaluate(models, utts, device=device, batch_size=batch_size, quiet=True)
        row = {"data set": name, "utterances": len(utts)}
        row.update({c: r["WER %"] for c, r in zip(columns, results)})
        rows.append(row)
        print(f"  {name}: {len(utts)} utterances, WER % " + ", ".join(f"{row[c]:.2f}" for c in columns),
              file=sys.stderr)
        if name != IN_DOMAIN:
            # data.wer is errors / reference words, so the errors come back exactly from the rate.
            words = reference_words(utts)
            pooled_errors = [e + row[c] / 100 * words for e, c in zip(pooled_errors, columns)]
            pooled_words += words
            pooled_utts += len(utts)
    if pooled_words:
        rows.append({"data set": POOLED, "utterances": pooled_utts,
                     **{c: 100 * e / pooled_words for c, e in zip(columns, pooled_errors)}})
    if len(models) > 1:
        for row in rows:
            row["gap"] = row[columns[-1]] - row[columns[0]]
    print(askd.format_table(rows, columns=["data set", "utterances", *columns, "gap"]))
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", help="a model name or path; repeat to compare (default tiny.en)")
    p.add_argument("--per-voice", type=int, default=30, help="sentences per synthesiser voice (default 30)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8, help="utterances decoded together (default 8)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return ood_table(args.model or ["tiny.en"], args.per_voice, args.device, args.batch_size)


if __name__ == "__main__":
    try:
        main()
    except data.DataError as e:
        sys.exit(f"error: {e}")
