"""FastWhisper's command line: argument parsing; the work is in the modules (docs/architecture.md).

python fastwhisper.py transcribe FILES... [--model tiny.en] [-f txt|srt|vtt|json|tsv|all]
python fastwhisper.py transcribe FILES... --model tiny.en --draft STUDENT  # teacher-exact
python fastwhisper.py stream - | FILE [--realtime] | DEVICE --input-format pulse [--jsonl]
python fastwhisper.py bench [FILES...] [--model A --model B ...]
python fastwhisper.py bench kernels
python fastwhisper.py bench ood [--model A --model B ...] [--runs RUN1 RUN2 RUN3]
python fastwhisper.py bench process [--model A --model B ...] [--repeat 4]
python fastwhisper.py bench long [--model A --model B ...]
python fastwhisper.py bench pieces [--model STUDENT]
python fastwhisper.py bench stream [--model A --model B ...] [--data real-speech-dev]
python fastwhisper.py train [--loss ce|kd|askd] [--teacher tiny.en] [--train SOURCE] [--name NAME]
                            [--resume]
python fastwhisper.py eval [--model A --model B ...] [--data SOURCE]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import signal
import sys
import threading
import typing
import warnings
from pathlib import Path

WEIGHTS_HELP = (
    "fp16: decoder weights packed in fp16 for the CPU (faster decoding); auto (default): "
    "fp16 for students, fp32 (OpenAI's exact tokens) for Whisper models"
)

# Files are read and handed to the model in chunks of up to FILES_PER_BATCH batches or CHUNK_SECONDS
# of audio: the model sorts a chunk's pieces by length, so a bigger chunk pads less and takes
# less time, while memory stays bounded.
FILES_PER_BATCH, CHUNK_SECONDS = 8, 1200

EXPORT_FORMATS = ("pt", "ct2", "ggml", "hf")  # export.FORMATS, without importing torch here


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def set_up(args) -> str:
    """Torch threads as asked; the device to run on (or a one-line error)."""
    import torch

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    name = args.device
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {name}: no CUDA device is available")
    return name


def load(name: str, device: str, weights: str = "auto"):
    """A transcribe.Recognizer (a Whisper model or a student that knows how it reads audio), or a
    one-line error."""
    import model
    import transcribe

    try:
        return transcribe.load_recognizer(name, device, weights)
    except (model.ModelError, OSError) as e:
        fail(str(e))


# Option types: each checks its value when the command line is read, so a bad one is a one-line
# usage error before any work starts.


def number(kind, low=None, high=None, above=None):
    """A finite int or float, at least `low` (or more than `above`) and at most `high`."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not {'a whole number' if kind is int else 'a number'}: {text!r}"
            )
        if (
            not math.isfinite(value)
            or (low is not None and value < low)
            or (above is not None and value <= above)
            or (high is not None and value > high)
        ):
            bounds = [
                f">= {low}" if low is not None else "",
                f"> {above}" if above is not None else "",
                f"<= {high}" if high is not None else "",
            ]
            raise argparse.ArgumentTypeError(
                f"{text}: must be {' and '.join(b for b in bounds if b)}"
            )
        return value

    return parse


COUNT, ZERO_OR_MORE = number(int, low=1), number(int, low=0)
POSITIVE, NON_NEGATIVE = number(float, above=0), number(float, low=0)
TEMPERATURE = number(float, low=0, high=2)
FRACTION = number(float, low=0, high=1)


def temperatures(value: str):
    """'0' -> 0.0 (one temperature); '0,0.2,0.4' -> a fallback schedule; each in [0, 2]."""
    values = [TEMPERATURE(v) for v in value.split(",")]
    return values[0] if len(values) == 1 else tuple(values)


def device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"{value!r}: use auto, cpu, cuda, cuda:N or mps")
    return value


def schedule(value: str) -> str:
    """A weight schedule of askd.Schedule (const:V, linear:A:B, cosine:A:B, exp:A:B), as text."""
    import askd

    try:
        askd.Schedule.parse(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))
    return value


# ----------------------------------------------------------------------------------------------
# The commands
# ----------------------------------------------------------------------------------------------


def cmd_transcribe(args) -> int:
    written = []  # the files whose outputs are all written
    try:
        return transcribe_files(args, written)
    except KeyboardInterrupt:  # Ctrl-C: the files written stay; one line says so
        print(
            f"interrupted: {len(written)} of {len(args.files)} files written, "
            f"{len(args.files) - len(written)} not",
            file=sys.stderr,
        )
        return 130


def transcribe_files(args, written: list) -> int:
    """Transcribe args.files, writing each file's outputs as soon as it is decoded (its path then
    goes into `written`)."""
    from tqdm import tqdm

    import transcribe
    import writers

    device = set_up(args)
    check_output_folder(args.output_dir)
    names = dict(
        zip(args.files, writers.output_names(args.files, args.output_dir, args.output_format))
    )
    recognizer = load(args.model, device, args.weights)
    if args.draft:
        try:
            recognizer = recognizer.drafted_by(load(args.draft, device))
        except ValueError as e:
            fail(f"--draft {args.draft}: {e}")
    options = transcribe.TranscribeOptions(
        language=args.language,
        task=args.task,
        temperature=args.temperature,
        beam_size=args.beam_size,
        best_of=args.best_of,
        patience=args.patience,
        length_penalty=args.length_penalty,
        initial_prompt=args.initial_prompt,
        condition_on_previous_text=not args.no_condition,
        without_timestamps=args.without_timestamps,
        seed=args.seed,
        vad=not args.no_vad,
    )
    try:
        recognizer.check(options)
    except ValueError as e:
        fail(str(e))
    failed = 0
    with tqdm(args.files, unit="file", disable=len(args.files) < 2 or args.quiet) as bar:

        def write(path: str, result: dict) -> None:
            nonlocal failed
            text = result["text"].strip()
            with holding_ctrl_c():  # its outputs and its line, whole or not at all
                bar.write(f"{path}: {text}" if len(args.files) > 1 else text)
                try:
                    writers.write_result(result, names[path], args.output_dir, args.output_format)
                    written.append(path)
                except OSError as e:
                    bar.write(f"error: {path}: cannot write its transcript ({e})", file=sys.stderr)
                    failed += 1
                bar.update(1)

        for chunk, paths, audios in read_in_chunks(args.files, args.batch_size, bar):
            failed += len(chunk) - len(paths)
            bar.update(len(chunk) - len(paths))
            if paths:
                each = lambda i, result, paths=paths: write(paths[i], result)  # noqa: E731
                try:
                    recognizer.transcribe(
                        audios,
                        options,
                        args.batch_size,
                        progress=not args.quiet and len(paths) == 1,
                        times=args.output_format != "txt",
                        done=each,
                    )
                except ValueError as e:
                    fail(str(e))
    if failed:
        print(f"{failed} of {len(args.files)} files failed", file=sys.stderr)
    return 1 if failed else 0


@contextlib.contextmanager
def holding_ctrl_c():
    """A Ctrl-C that comes inside the block is raised as KeyboardInterrupt when the block ends."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield  # SIGINT ignored or handled elsewhere: leave it be
        return
    caught = []
    signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


def cmd_stream(args) -> int:
    import json
    import shutil

    import fileio
    import streaming
    import writers

    device = set_up(args)
    if args.output_dir:
        check_output_folder(args.output_dir)
    live_source = args.source == "-" or args.input_format
    name = (
        "stream"
        if live_source
        else writers.output_names([args.source], args.output_dir or ".", args.output_format)[0]
    )
    if not live_source and not os.path.exists(args.source):
        fail(
            f"{args.source}: file not found (a capture device needs --input-format, e.g. -i pulse)"
        )
    recognizer = load(args.model, device, args.weights)
    live = streaming.LiveTranscriber(
        recognizer, step=args.step, silence=args.silence, partials=args.step > 0
    )
    terminal, width = sys.stdout.isatty() and not args.jsonl, shutil.get_terminal_size().columns

    def show(events):
        for event in events:
            sys.stdout.write(
                json.dumps(event) + "\n"
                if args.jsonl
                else writers.live_line(event, terminal, width)
            )
            sys.stdout.flush()
            if (
                event["type"] == "final" and args.output_dir
            ):  # rewritten at each final: nothing lost
                writers.write_result(live.result(), name, args.output_dir, args.output_format)

    try:
        try:
            for audio in streaming.live_audio(args.source, args.input_format, args.realtime):
                show(live.feed(audio))
        except KeyboardInterrupt:  # Ctrl-C: the open phrase still gets its final text
            pass
        show(live.finish())
    except fileio.AudioError as e:
        fail(str(e))
    except BrokenPipeError:  # whoever read our output has gone: end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def check_output_folder(folder: str) -> None:
    """The output folder exists (made if need be) and takes files, before any decoding starts."""
    import tempfile

    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        fail(f"-o {folder}: cannot write there ({e.strerror or e})")


def read_in_chunks(paths: list, batch_size: int, bar):
    """Yield (paths of the chunk, those that decode, their waveforms); each other one is an error
    line."""
    import audio_io
    import fileio

    chunk, good, audios, samples = [], [], [], 0
    for path in paths:
        chunk.append(path)
        try:
            audios.append(audio_io.load_audio(path))
            good.append(path)
            samples += len(audios[-1])
        except (fileio.AudioError, OSError) as e:
            bar.write(f"error: {e}", file=sys.stderr)
        if (
            len(chunk) >= FILES_PER_BATCH * batch_size
            or samples >= CHUNK_SECONDS * audio_io.SAMPLE_RATE
        ):
            yield chunk, good, audios
            chunk, good, audios, samples = [], [], [], 0
    if chunk:
        yield chunk, good, audios


def cmd_bench(args) -> int:
    if args.files[:1] == ["kernels"]:
        from bench.kernels import main as bench_kernels

        return bench_kernels() or 0
    device = set_up(args)
    models = args.model or ["tiny.en", "runs/askd/student.pt"]  # for ood, process and long
    try:
        if args.files[:1] == ["long"]:
            from bench.longform import long_table

            long_table(models, threads=args.threads)
        elif args.files[:1] == ["stream"]:
            from bench.stream import stream_table

            stream_table(models, source=args.data, limit=args.limit, device=device)
        elif args.files[:1] == ["pieces"]:
            from bench.longform import pieces_table

            pieces_table(models[-1])
        elif args.files[:1] == ["process"]:
            from bench.process import process_table

            process_table(
                models,
                repeat=args.repeat,
                rounds=args.rounds,
                threads=args.threads,
                batch_size=args.batch_size,
            )
        elif args.files[:1] == ["export"]:
            from bench.export import export_table

            export_table(models[0], models[-1], limit=args.limit, threads=args.threads or 2)
        elif args.files[:1] == ["ood"]:
            from bench.ood import evidence_table, ood_table

            if args.runs:
                teacher = (args.model or ["tiny.en"])[0]
                evidence_table(teacher, args.runs, device=device, batch_size=args.batch_size)
            else:
                ood_table(
                    models, per_voice=args.per_voice, device=device, batch_size=args.batch_size
                )
        else:
            from bench.speed import bench_models

            bench_models(
                args.model or [],
                args.files,
                device=device,
                limit=args.limit or 40,
                batch_size=args.batch_size,
                long_audio=not args.no_long,
            )
    except (ValueError, RuntimeError) as e:  # RuntimeError: a runtime's process failed
        fail(str(e))
    return 0


def cmd_train(args) -> int:
    import torch

    import askd
    import fileio
    import model as M
    import run_plumbing

    options = {k: v for k, v in vars(args).items() if k not in ("command", "run")}
    try:
        results = askd.train(askd.TrainConfig(**options))
    except (run_plumbing.TrainError, fileio.DataError, M.ModelError) as e:
        fail(str(e))
    except torch.cuda.OutOfMemoryError as e:
        fail(
            f"out of GPU memory ({str(e).splitlines()[0]}); lower --batch-size or --max-frames, "
            f"or raise --accum; continue with --resume"
        )
    except KeyboardInterrupt:
        fail(
            "interrupted; the teacher cache keeps what was computed, and a run that had started "
            "training continues from its last checkpoint with --resume",
            130,
        )
    return 130 if "stopped" in results else 0


def cmd_eval(args) -> int:
    import torch

    import fileio
    import model as M
    import transcribe
    from bench.ood import load_eval_source

    device = set_up(args)
    try:
        utts = load_eval_source(args.data)
        if args.limit:
            utts = utts[: args.limit]
        rows = transcribe.evaluate(
            args.model or ["tiny.en"],
            utts,
            device=device,
            batch_size=args.batch_size,
            quiet=args.quiet,
            weights=args.weights,
            source=args.data,
        )
    except (fileio.DataError, M.ModelError) as e:
        fail(str(e))
    print(
        f"{args.data}: {rows[0]['utterances']} utterances, greedy decoding without timestamps, "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    print(transcribe.format_table(rows))
    return 0


# ----------------------------------------------------------------------------------------------
# The parsers, one per command
# ----------------------------------------------------------------------------------------------


def cmd_export(args) -> int:
    import export
    import model

    try:
        written = export.export(args.model, args.to, args.output, args.quantize)
    except (export.ExportError, model.ModelError, OSError) as e:
        fail(str(e))
    for path in written:
        print(path)
    return 0


def add_transcribe(sub) -> None:
    p = sub.add_parser("transcribe", help="speech to text (txt/srt/vtt/json/tsv)")
    p.add_argument(
        "files",
        nargs="+",
        help="audio files: wav, flac, mp3, ogg, m4a, g722, ... (ffmpeg for non-WAV)",
    )
    p.add_argument(
        "--model",
        default="tiny.en",
        help="a name (tiny.en, base, ...) or a path: OpenAI .pt, faster-whisper folder, Hugging "
        "Face folder, or a student from `train`; padded:STUDENT reads a student in 30-second "
        "windows, as other Whisper tools do (default tiny.en)",
    )
    p.add_argument(
        "--language",
        default=None,
        help="spoken language (code or name); default: detect (multilingual)",
    )
    p.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    p.add_argument(
        "--temperature",
        type=temperatures,
        default=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        help="one temperature (0 = greedy), or a comma-separated fallback schedule (the default)",
    )
    p.add_argument(
        "--beam-size",
        type=COUNT,
        default=None,
        help="beam search width at temperature 0 (default greedy)",
    )
    p.add_argument("--best-of", type=COUNT, default=5, help="samples per window at temperature > 0")
    p.add_argument(
        "--patience", type=POSITIVE, default=None, help="beam search patience (default 1.0)"
    )
    p.add_argument(
        "--length-penalty",
        type=number(float),
        default=None,
        help="alpha of ((5+n)/6)^alpha; default: length",
    )
    p.add_argument("--initial-prompt", default=None, help="text to condition the first window on")
    p.add_argument(
        "--no-condition", action="store_true", help="do not condition a window on the previous text"
    )
    p.add_argument(
        "--without-timestamps",
        action="store_true",
        help="decode text only, which is faster (segments = 30 s windows, or a student's pieces)",
    )
    p.add_argument(
        "--no-vad",
        action="store_true",
        help="read long silence too: no silence "
        "gate in front of the model, so a Whisper model gives exactly OpenAI's output, "
        "text it may invent in silence and all",
    )
    p.add_argument(
        "--seed",
        type=ZERO_OR_MORE,
        default=0,
        help="seed of the temperature fallback's sampling: the "
        "same command gives the same text (default 0)",
    )
    p.add_argument(
        "--output-dir", "-o", default=".", help="where to write FILE_STEM.FORMAT (default: here)"
    )
    p.add_argument(
        "--output-format", "-f", default="txt", choices=["txt", "srt", "vtt", "json", "tsv", "all"]
    )
    p.add_argument(
        "--draft",
        default=None,
        help="teacher-exact mode: a student from `train` guesses tokens and "
        "--model checks them; greedy output is exactly --model's own, sooner",
    )
    p.add_argument("--weights", choices=("auto", "fp32", "fp16"), default="auto", help=WEIGHTS_HELP)
    p.add_argument(
        "--batch-size",
        type=COUNT,
        default=8,
        help="30-second windows, or a student's pieces, decoded "
        "together (default 8; files are read 8 batches or 20 minutes of audio at a time)",
    )
    add_machine(p, quiet=True)
    p.set_defaults(run=cmd_transcribe)


def add_stream(sub) -> None:
    p = sub.add_parser(
        "stream", help="live transcription of a microphone, a pipe or a file, phrase by phrase"
    )
    p.add_argument(
        "source",
        help="'-': raw 16 kHz mono s16le PCM on stdin; a file (decoded whole, handed on as if "
        "live; --realtime paces it at 1x); with --input-format, a capture device that ffmpeg opens "
        "(pulse default, alsa hw:0, avfoundation :0, dshow audio=NAME)",
    )
    p.add_argument(
        "--model",
        default="tiny.en",
        help="as for transcribe: a student from `train` reads only each "
        "phrase's length, a Whisper model a 30-second window (default tiny.en)",
    )
    p.add_argument(
        "--input-format",
        "-i",
        default=None,
        help="ffmpeg's input format of a capture device: pulse, alsa, avfoundation, dshow, ...",
    )
    p.add_argument(
        "--realtime", action="store_true", help="hand a file on at 1x, as a live source would"
    )
    p.add_argument(
        "--step",
        type=NON_NEGATIVE,
        default=0.5,
        help="seconds of new audio between partial texts of "
        "the open phrase (0: finals only; default 0.5)",
    )
    p.add_argument(
        "--silence",
        type=POSITIVE,
        default=0.5,
        help="seconds of quiet that end a phrase (default 0.5)",
    )
    p.add_argument(
        "--jsonl",
        action="store_true",
        help="one JSON object per event: {type: partial|final, start, "
        "end, text}, times in seconds of the stream",
    )
    p.add_argument(
        "--output-dir",
        "-o",
        default=None,
        help="also write the finals into this folder, as transcribe "
        "writes a file (rewritten after each final)",
    )
    p.add_argument(
        "--output-format", "-f", default="txt", choices=["txt", "srt", "vtt", "json", "tsv", "all"]
    )
    p.add_argument("--weights", choices=("auto", "fp32", "fp16"), default="auto", help=WEIGHTS_HELP)
    add_machine(p)
    p.set_defaults(run=cmd_stream)


def add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="speed: real-time factor and per-token latency, models side by side; "
        "`bench kernels` for the Triton kernels",
    )
    p.add_argument(
        "files",
        nargs="*",
        help="audio to time (default: the test split of the default corpus), or `kernels` (the "
        "Triton kernels), `ood` (WER on out-of-domain speech), `process` (whole transcribe "
        "processes on real speech, as a user waits for them), `long` (long recordings of real "
        "speech), `pieces` (how the last --model, a student, reads them) or `stream` (the test "
        "split as live streams: latency after each phrase, partials, WER) or `export` (the teacher "
        "and the last --model exported to each runtime, read there by whole processes)",
    )
    p.add_argument(
        "--model",
        action="append",
        help="a model to time (repeat to compare; the first is the "
        "baseline; default: tiny.en and runs/askd/student.pt if it exists)",
    )
    p.add_argument(
        "--limit",
        type=COUNT,
        default=None,
        help="at most this many files (default 40; bench stream: all of the test split)",
    )
    p.add_argument(
        "--no-long", action="store_true", help="skip the long recording made by joining the files"
    )
    p.add_argument(
        "--data",
        default="asterisk:test",
        help="bench stream: the recordings to replay, any --data of "
        "eval (default asterisk:test; real-speech-dev: real speech of other people)",
    )
    p.add_argument(
        "--per-voice",
        type=COUNT,
        default=30,
        help="bench ood: sentences per synthetic voice (default 30)",
    )
    p.add_argument(
        "--runs",
        nargs="+",
        type=Path,
        action="append",
        metavar="RUN",
        help="bench ood: runs of one recipe, one seed each (runs/NAME): their students against the "
        "teacher (the first --model, default tiny.en) on real-speech-dev:report, which none was "
        "chosen on; mean and spread over the seeds; repeat --runs to compare recipes side by side",
    )
    p.add_argument(
        "--repeat",
        type=COUNT,
        default=4,
        help="bench process: each real recording this many times (default 4: 196 files)",
    )
    p.add_argument(
        "--rounds",
        type=COUNT,
        default=1,
        help="bench process: runs per model; the fastest counts (default 1)",
    )
    p.add_argument(
        "--batch-size",
        type=COUNT,
        default=8,
        help="windows or pieces decoded together (default 8, as transcribe)",
    )
    add_machine(p)
    p.set_defaults(run=cmd_bench)


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="WER and speed of models side by side on a data set")
    p.add_argument(
        "--model",
        action="append",
        help="a model (repeat to compare; the first is the speed baseline); "
        "students from `train` are read the way they were trained, padded:STUDENT in 30-second "
        "windows as other Whisper tools read them (default tiny.en)",
    )
    p.add_argument(
        "--data",
        "--manifest",
        dest="data",
        default="asterisk:test",
        help="asterisk[:SPLIT], a "
        "manifest (.tsv/.csv/.jsonl) or a LibriSpeech folder, optionally :SPLIT; or asterisk-gsm, "
        "tts, tts:VOICE (bench/ood.py) (default asterisk:test)",
    )
    p.add_argument("--limit", type=COUNT, default=None, help="only the first N utterances")
    p.add_argument(
        "--weights", choices=("auto", "fp32", "fp16"), default="auto", help="as for transcribe"
    )
    p.add_argument("--batch-size", type=COUNT, default=1)
    add_machine(p, quiet=True)
    p.set_defaults(run=cmd_eval)


def add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a model (a student from train, or any Whisper weights) for another runtime: "
        "pt (openai-whisper), ct2 (faster-whisper), ggml (whisper.cpp), hf (transformers)",
    )
    p.add_argument("model", help="a model name or path, as for transcribe --model")
    p.add_argument("--to", required=True, choices=EXPORT_FORMATS, help="the format to write")
    p.add_argument("-o", "--output", required=True, help="the file or folder to write (new)")
    p.add_argument(
        "--quantize",
        help="weight type: pt and hf: float32 (default), float16; ct2: float16 (default), "
        "float32, int8; ggml: f16 (default), q8_0",
    )
    p.set_defaults(run=cmd_export)


def add_machine(p, quiet: bool = False) -> None:
    p.add_argument(
        "--device",
        type=device,
        default="auto",
        help="cpu, cuda, cuda:1, ... (default: cuda if available)",
    )
    p.add_argument(
        "--threads",
        type=ZERO_OR_MORE,
        default=0,
        help="CPU threads for torch (default: torch's choice)",
    )
    if quiet:
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


# train's options come from askd.TrainConfig's fields: their help, choices and bounds are in each
# field's metadata. An option left out keeps the field's default (argparse.SUPPRESS), so defaults
# live in one place. Presentation only here: the help groups' order, the parsers named by "type".
TRAIN_GROUPS = ("what and where", "the student", "the loss", "optimisation", "machinery")
TRAIN_TYPES = {"schedule": schedule, "device": device}


def train_option(f, kind) -> tuple[list, dict]:
    """A TrainConfig field as (flags, argparse keywords)."""
    meta = f.metadata
    flags = ["--" + f.name.replace("_", "-"), *meta.get("aliases", ())]
    shown = "" if kind is bool or f.default is None else f" (default {f.default})"
    keywords = {"dest": f.name, "help": meta["help"].replace("%", "%%") + shown}
    if kind is bool:
        keywords["action"] = "store_true"
    elif "choices" in meta:
        keywords["choices"] = meta["choices"]
    elif "type" in meta:
        keywords["type"] = TRAIN_TYPES[meta["type"]]
    elif kind in (int, float):
        bounds = {k: meta[k] for k in ("low", "above", "high") if k in meta}
        keywords["type"] = number(kind, **bounds)
    return flags, keywords


def add_train(sub, options: bool = True) -> None:
    """The train command; its options, and so the training code (askd), only with `options`."""
    p = sub.add_parser(
        "train",
        help="distil a teacher into a small, fast student (ASKD, KD or plain fine-tuning)",
        argument_default=argparse.SUPPRESS,
        description="With no arguments: the tiny.en teacher, the default corpus (Debian's Asterisk "
        "prompts), then a test table; training takes a while on a CPU. Writes runs/NAME/student.pt "
        "(use it with `transcribe --model`), last.pt (to --resume), metrics.jsonl and "
        "results.json. Multi-GPU: torchrun --nproc-per-node N fastwhisper.py train ...",
    )
    p.set_defaults(run=cmd_train)
    if not options:
        return
    import askd

    hints = typing.get_type_hints(askd.TrainConfig)
    grouped = {title: [] for title in TRAIN_GROUPS}
    title = None
    for f in dataclasses.fields(askd.TrainConfig):
        title = f.metadata.get("group", title)
        grouped[title].append(f)
    for title, group_fields in grouped.items():  # added group by group, so usage lists them so
        group = p.add_argument_group(title)
        for f in group_fields:
            hint = hints[f.name]  # Optional[X] -> X
            kind = next(t for t in typing.get_args(hint) or [hint] if t is not type(None))
            flags, keywords = train_option(f, kind)
            group.add_argument(*flags, **keywords)


def main(argv=None) -> int:
    warnings.formatwarning = lambda message, *rest, **keywords: f"warning: {message}\n"
    parser = argparse.ArgumentParser(
        prog="fastwhisper.py",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    add_transcribe(sub)
    add_stream(sub)
    add_bench(sub)
    add_train(sub, options=command == "train")  # other commands never import the training code
    add_eval(sub)
    add_export(sub)
    args = parser.parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        parser.error("--batch-size must be at least 1")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
