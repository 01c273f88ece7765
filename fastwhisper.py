"""FastWhisper's command line: argument parsing only; the work is in model.py, data.py, askd.py.

    python fastwhisper.py transcribe FILES... [--model tiny.en] [--output-format txt|srt|vtt|json|tsv|all]
    python fastwhisper.py transcribe FILES... --model tiny.en --draft runs/askd/student.pt   # teacher-exact
    python fastwhisper.py bench [FILES...] [--model A --model B ...]
    python fastwhisper.py bench kernels
    python fastwhisper.py bench ood [--model A --model B ...]
    python fastwhisper.py train [--loss ce|kd|askd] [--teacher tiny.en] [--train SOURCE] [--name NAME] [--resume]
    python fastwhisper.py eval [--model A --model B ...] [--data SOURCE]
"""
from __future__ import annotations

import argparse
import sys


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


def load(name: str, device: str, weights: str = "auto"):
    """(model, how it reads its input), or a one-line error."""
    import model
    import askd
    try:
        return askd.load_for_inference(name, device, weights)
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
    import formats
    import model as M

    if args.threads:
        torch.set_num_threads(args.threads)
    import askd
    device = pick_device(args.device)
    whisper, mode = load(args.model, device, args.weights)
    draft = None
    if args.draft:
        if mode["input"] == "trimmed":
            fail(f"--draft {args.draft}: the model to draft for must be a Whisper model, not a student")
        student, student_mode = load(args.draft, device)
        draft = M.Draft(student, round_frames=student_mode.get("round_frames"))
    options = M.TranscribeOptions(language=args.language, task=args.task, temperature=args.temperature,
                                  beam_size=args.beam_size, best_of=args.best_of, patience=args.patience,
                                  length_penalty=args.length_penalty, initial_prompt=args.initial_prompt,
                                  condition_on_previous_text=not args.no_condition,
                                  without_timestamps=args.without_timestamps, draft=draft)
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
            if mode["input"] == "trimmed":     # a student from `train`: its own input, text without timestamps
                results = askd.transcribe_trimmed(whisper, audios, args.batch_size, mode["round_frames"])
            else:
                results = M.transcribe_many(whisper, audios, options, batch_size=args.batch_size,
                                            progress=not args.quiet and len(chunk) == 1)
        except ValueError as e:
            fail(str(e))
        for path, result in zip(chunk, results):
            text = result["text"].strip()
            files.write(f"{path}: {text}" if len(args.files) > 1 else text)
            if args.output_dir is not None:
                formats.write_result(result, path, args.output_dir, args.output_format)
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
    if args.files[:1] == ["ood"]:
        from bench.ood import ood_table
        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            ood_table(args.model or ["tiny.en", "runs/askd/student.pt"], per_voice=args.per_voice,
                      device=pick_device(args.device), batch_size=args.batch_size)
        except ValueError as e:
            fail(str(e))
        return 0
    from bench.speed import bench_models
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        bench_models(args.model or [], args.files, device=pick_device(args.device), limit=args.limit,
                     batch_size=args.batch_size, long_audio=not args.no_long)
    except ValueError as e:
        fail(str(e))
    return 0


def cmd_train(args) -> int:
    import torch
    import data
    import model as M
    import askd

    options = {k: v for k, v in vars(args).items() if k not in ("command", "run")}
    try:
        config = askd.TrainConfig(**options)
        results = askd.train(config)
    except (askd.TrainError, data.DataError, M.ModelError) as e:
        fail(str(e))
    except torch.cuda.OutOfMemoryError as e:
        fail(f"out of GPU memory ({str(e).splitlines()[0]}); lower --batch-size or --max-frames, "
             f"or raise --accum; continue with --resume")
    except KeyboardInterrupt:
        fail("interrupted; the teacher cache keeps what was computed, and a run that had started "
             "training continues from its last checkpoint with --resume", 130)
    return 130 if "stopped" in results else 0


def cmd_eval(args) -> int:
    import torch
    import data
    import model as M
    import askd

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        utts = askd.load_source(args.data)
        if args.limit:
            utts = utts[: args.limit]
        rows = askd.evaluate(args.model or ["tiny.en"], utts, device=pick_device(args.device),
                             batch_size=args.batch_size, quiet=args.quiet, weights=args.weights)
    except (data.DataError, M.ModelError) as e:
        fail(str(e))
    print(f"{args.data}: {rows[0]['utterances']} utterances, greedy decoding without timestamps, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(askd.format_table(rows))
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
    p.add_argument("--draft", default=None, help="teacher-exact mode: a student from `train` guesses tokens and "
                   "--model checks them; greedy output is exactly --model's own, sooner")
    p.add_argument("--weights", choices=("auto", "fp32", "fp16"), default="auto", help="fp16: decoder weights "
                   "packed in fp16 for the CPU (about 2x faster decoding); auto (default): fp16 for students, "
                   "fp32 (OpenAI's exact tokens) for Whisper models")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=8, help="30-second windows decoded together (default 8)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(run=cmd_transcribe)

    p = sub.add_parser("bench", help="speed: real-time factor and per-token latency, models side by side; "
                                     "`bench kernels` for the Triton kernels")
    p.add_argument("files", nargs="*", help="audio to time (default: the test split of the default corpus), "
                   "or `kernels` (the Triton kernels), or `ood` (WER on out-of-domain speech)")
    p.add_argument("--model", action="append", help="a model to time (repeat to compare; the first is the "
                   "baseline; default: tiny.en and runs/askd/student.pt if it exists)")
    p.add_argument("--limit", type=int, default=40, help="at most this many files (default 40)")
    p.add_argument("--no-long", action="store_true", help="skip the long recording made by joining the files")
    p.add_argument("--per-voice", type=int, default=30, help="bench ood: sentences per synthetic voice (default 30)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8, help="windows or pieces decoded together (default 8, "
                   "as transcribe)")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(run=cmd_bench)

    # train: an option left out keeps askd.TrainConfig's default (argparse.SUPPRESS), so the defaults
    # live in one place; the help texts repeat them
    p = sub.add_parser("train", help="distil a teacher into a small, fast student (ASKD, KD or plain fine-tuning)",
                       argument_default=argparse.SUPPRESS,
                       description="With no arguments: the tiny.en teacher, the default corpus (Debian's Asterisk "
                                   "prompts), about 7-12 minutes on a 2-core CPU, then a test table. Writes "
                                   "runs/NAME/student.pt (use it with `transcribe --model`), last.pt (to --resume), "
                                   "metrics.jsonl and results.json. Multi-GPU: torchrun --nproc-per-node N "
                                   "fastwhisper.py train ...")
    g = p.add_argument_group("what and where")
    g.add_argument("--teacher", help="teacher model: a name or a path (default tiny.en)")
    g.add_argument("--train", help="training data: asterisk (the default corpus), a manifest (.tsv/.csv/.jsonl "
                   "with audio and text columns; empty text = use the teacher's transcript) or a LibriSpeech "
                   "folder, each optionally :train, :dev or :test (default asterisk:train)")
    g.add_argument("--dev", help="data for the dev WER after each epoch (default asterisk:dev, or 10%% of a "
                   "custom --train)")
    g.add_argument("--test", help="data for the final table (default asterisk:test with the default corpus)")
    g.add_argument("--limit", type=int, help="use only the first N training utterances")
    g.add_argument("--name", help="run name: files go to RUNS_DIR/NAME (default askd)")
    g.add_argument("--runs-dir", help="default runs")
    g.add_argument("--cache-dir", help="where the teacher's outputs are cached "
                   "(default $FASTWHISPER_CACHE or ~/.cache/fastwhisper)")
    g.add_argument("--resume", action="store_true", help="continue RUNS_DIR/NAME exactly where it stopped")
    g.add_argument("--overwrite", action="store_true", help="start RUNS_DIR/NAME over")
    g = p.add_argument_group("the student")
    g.add_argument("--decoder-layers", type=int, help="decoder layers, maximally spaced teacher layers (4 -> "
                   "2: layers 0 and 3) (default: all; on tiny.en, 2-layer students loop on unseen prompts)")
    g.add_argument("--encoder-layers", type=int, help="encoder layers (default: all of the teacher's)")
    g.add_argument("--input", choices=("trimmed", "padded"), help="trimmed (default): the encoder reads the "
                   "audio's real length and is trained toward the teacher's states; padded: 30 s windows, "
                   "frozen encoder (the classic setting)")
    g.add_argument("--round-frames", type=int, help="trimmed input is rounded up to a multiple of this many "
                   "mel frames (default 100 = 1 s)")
    g.add_argument("--train-embed", action="store_true", help="train the token embedding (which is also the "
                   "output projection) too; by default it stays the teacher's")
    g.add_argument("--enc-weight", type=float, help="weight of the MSE pulling the student's encoder states "
                   "(trimmed input) toward the teacher's (padded input) (default 1.0)")
    g = p.add_argument_group("the loss")
    g.add_argument("--loss", choices=("ce", "kd", "askd"), help="ce: plain fine-tuning; kd: classic KD "
                   "(0.8 CE + 1.0 KL at T = 2); askd: adaptive self-knowledge distillation (default)")
    g.add_argument("--T", "--temperature", dest="T", type=float, help="distillation temperature (default 2)")
    g.add_argument("--alpha", help="askd: teacher weight over training: const:V, linear:A:B, cosine:A:B or "
                   "exp:A:B (default cosine:1:0)")
    g.add_argument("--beta", help="askd: self-teacher weight over training (default linear:0:1)")
    g.add_argument("--trust", choices=("prob", "argmax", "none"), help="askd: per-token trust in the teacher: "
                   "its probability of the right token (default), whether its best guess is right, or none")
    g.add_argument("--self-teacher", choices=("ema", "epoch"), help="askd: the student's earlier self: an EMA "
                   "of its weights (default) or its snapshot from the end of the last epoch")
    g.add_argument("--ema-decay", type=float, help="default 0.99")
    g.add_argument("--kd-ce-weight", type=float, help="kd: CE weight (default 0.8)")
    g.add_argument("--kd-weight", type=float, help="kd: KL weight (default 1.0)")
    g.add_argument("--labels", choices=("auto", "reference", "pseudo"), help="targets: the reference text, the "
                   "teacher's transcript, or auto (default): the reference where there is one")
    g.add_argument("--max-label-wer", type=float, help="--labels pseudo: drop utterances whose pseudo-label is "
                   "further than this WER from their reference (default 0.2)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="default 6")
    g.add_argument("--batch-size", type=int, help="utterances per micro-batch (default 16)")
    g.add_argument("--max-frames", type=int, help="mel frames per micro-batch, padding included (default 8000)")
    g.add_argument("--accum", type=int, help="micro-batches per optimiser step (default 1)")
    g.add_argument("--lr", type=float, help="AdamW peak learning rate (default 1e-4)")
    g.add_argument("--warmup", type=float, help="a fraction of the steps (< 1) or a number of steps (default 0.1)")
    g.add_argument("--lr-schedule", choices=("linear", "cosine"), help="decay to 0 after warmup (default linear)")
    g.add_argument("--weight-decay", type=float, help="default 0.01")
    g.add_argument("--clip", type=float, help="gradient norm clipping (default 1.0)")
    g.add_argument("--spec-augment", action="store_true", help="SpecAugment on the student's input")
    g.add_argument("--seed", type=int, help="default 0")
    g = p.add_argument_group("machinery")
    g.add_argument("--device", help="cpu, cuda, ... (default: cuda if available); under torchrun each process "
                   "takes its LOCAL_RANK's GPU, or the CPU with gloo")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), help="auto (default): bf16 "
                   "autocast on GPUs, fp32 on the CPU")
    g.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--save-every", type=int, help="steps between checkpoints, besides every epoch's end "
                   "(default 50)")
    g.add_argument("--eval-batch-size", type=int, help="dev-set decoding batch (default 8)")
    g.add_argument("--max-bad-steps", type=int, help="give up after this many non-finite steps in a row "
                   "(default 20)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("eval", help="WER and speed of models side by side on a data set")
    p.add_argument("--model", action="append", help="a model (repeat to compare; the first is the speed baseline); "
                   "students from `train` are read the way they were trained (default tiny.en)")
    p.add_argument("--data", "--manifest", dest="data", default="asterisk:test", help="asterisk[:SPLIT], a "
                   "manifest (.tsv/.csv/.jsonl) or a LibriSpeech folder, optionally :SPLIT (default asterisk:test)")
    p.add_argument("--limit", type=int, default=None, help="only the first N utterances")
    p.add_argument("--weights", choices=("auto", "fp32", "fp16"), default="auto", help="as for transcribe")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(run=cmd_eval)

    args = parser.parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        parser.error("--batch-size must be at least 1")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
