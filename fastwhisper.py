"""FastWhisper's command line: argument parsing only; the work is in model.py, data.py, askd.py.

    python fastwhisper.py transcribe FILES... [--model tiny.en] [--output-format txt|srt|vtt|json|tsv|all]
    python fastwhisper.py bench [FILES...] [--model A --model B ...]
    python fastwhisper.py bench kernels
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def pick_device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {name}: no CUDA device is available")
    return name


def load(name: str, device: str):
    import model
    try:
        return model.load_model(name, device=device)
    except (model.ModelError, OSError) as e:
        fail(str(e))


def temperatures(value: str):
    """'0' -> 0.0 (one temperature); '0,0.2,0.4' -> a fallback schedule."""
    try:
        values = [float(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a temperature or comma-separated list: {value!r}")
    return values[0] if len(values) == 1 else tuple(values)


def cmd_transcribe(args) -> int:
    import torch
    from tqdm import tqdm
    import data
    import model as M

    if args.threads:
        torch.set_num_threads(args.threads)
    whisper = load(args.model, pick_device(args.device))
    options = dict(language=args.language, task=args.task, temperature=args.temperature, beam_size=args.beam_size,
                   best_of=args.best_of, patience=args.patience, length_penalty=args.length_penalty,
                   initial_prompt=args.initial_prompt, condition_on_previous_text=not args.no_condition,
                   without_timestamps=args.without_timestamps, batch_size=args.batch_size)
    failed = 0
    files = tqdm(args.files, unit="file", disable=len(args.files) < 2 or args.quiet)
    for start in range(0, len(args.files), args.batch_size):
        chunk, audios = [], []
        for path in args.files[start: start + args.batch_size]:
            try:
                audios.append(data.load_audio(path))
                chunk.append(path)
            except (data.AudioError, OSError) as e:
                files.write(f"error: {e}", file=sys.stderr)
                failed += 1
        if not chunk:
            files.update(len(args.files[start: start + args.batch_size]))
            continue
        try:
            results = M.transcribe_many(whisper, audios, progress=not args.quiet and len(chunk) == 1, **options)
        except ValueError as e:
            fail(str(e))
        for path, result in zip(chunk, results):
            text = result["text"].strip()
            files.write(f"{path}: {text}" if len(args.files) > 1 else text)
            if args.output_dir is not None:
                M.write_result(result, path, args.output_dir, args.output_format)
        files.update(len(args.files[start: start + args.batch_size]))
    files.close()
    if failed:
        print(f"{failed} of {len(args.files)} files failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_bench(args) -> int:
    if args.files[:1] == ["kernels"]:
        from bench.kernels import main as bench_kernels
        return bench_kernels() or 0
    import torch
    from bench.speed import bench_models
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        bench_models(args.model or ["tiny.en"], args.files, device=pick_device(args.device), limit=args.limit,
                     batch_size=args.batch_size, long_audio=args.long)
    except ValueError as e:
        fail(str(e))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastwhisper.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("transcribe", help="speech to text (txt/srt/vtt/json/tsv)")
    p.add_argument("files", nargs="+", help="audio files: wav, flac, mp3, ogg, m4a, g722, ... (ffmpeg for non-WAV)")
    p.add_argument("--model", default="tiny.en", help="a name (tiny.en, base, ...) or a path: OpenAI .pt, "
                   "faster-whisper folder, Hugging Face folder, or a student from `train` (default tiny.en)")
    p.add_argument("--language", default=None, help="spoken language (code or name); default: detect (multilingual)")
    p.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    p.add_argument("--temperature", type=temperatures, default=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                   help="one temperature (0 = greedy), or a comma-separated fallback schedule (the default)")
    p.add_argument("--beam-size", type=int, default=None, help="beam search width at temperature 0 (default greedy)")
    p.add_argument("--best-of", type=int, default=5, help="samples per window at temperature > 0")
    p.add_argument("--patience", type=float, default=None, help="beam search patience (default 1.0)")
    p.add_argument("--length-penalty", type=float, default=None, help="alpha of ((5+n)/6)^alpha; default: length")
    p.add_argument("--initial-prompt", default=None, help="text to condition the first window on")
    p.add_argument("--no-condition", action="store_true", help="do not condition a window on the previous text")
    p.add_argument("--without-timestamps", action="store_true", help="decode text only (segments = windows)")
    p.add_argument("--output-dir", "-o", default=".", help="where to write FILE_STEM.FORMAT (default: here)")
    p.add_argument("--output-format", "-f", default="txt", choices=["txt", "srt", "vtt", "json", "tsv", "all"])
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=8, help="30-second windows decoded together (default 8)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(run=cmd_transcribe)

    p = sub.add_parser("bench", help="speed: real-time factor and per-token latency, models side by side; "
                                     "`bench kernels` for the Triton kernels")
    p.add_argument("files", nargs="*", help="audio to time (default: the test split of the default corpus), "
                                            "or the single word `kernels`")
    p.add_argument("--model", action="append", help="a model to time (repeat to compare; the first is the baseline)")
    p.add_argument("--limit", type=int, default=40, help="at most this many files (default 40)")
    p.add_argument("--long", action="store_true", help="also time one long recording made by joining the files")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(run=cmd_bench)

    args = parser.parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        parser.error("--batch-size must be at least 1")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
