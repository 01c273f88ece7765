"""A training run's plumbing: its folder lock, checkpoints written atomically, random states to
resume from, the stop flag, metrics files, several processes (torchrun), and the student saved.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

import fileio
import model as M
import transcribe
import weight_files

try:
    import fcntl
except ImportError:  # Windows: run folders are not locked there
    fcntl = None

if TYPE_CHECKING:  # annotations only: never at run time
    import askd


class TrainError(ValueError):
    """A run that cannot start or go on; the message says what to do."""


def atomic_torch_save(obj, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    fileio.write_atomic(path, buffer.getvalue())


def setup_distributed(cfg: askd.TrainConfig):
    """(rank, world size, device); under torchrun each process takes a GPU (or the CPU, gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {device}: no CUDA device is available")
    if world > 1:
        import torch.distributed as dist

        if device == "cuda":
            device = f"cuda:{local}"
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return rank, world, torch.device(device)


def all_reduce(values: list[float], world: int, device) -> list[float]:
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def mean_over_ranks(values: dict, world: int, device) -> dict:
    """Each value averaged over the processes (keys in sorted order, the same on every rank)."""
    keys = sorted(values)
    totals = all_reduce([values[k] for k in keys], world, device)
    return {k: v / world for k, v in zip(keys, totals)}


def accumulating(module: torch.nn.Module, world: int, last: bool):
    """Context for a micro-batch's forward and backward: DDP averages the gradients on the last
    micro-batch of a step only."""
    return module.no_sync() if world > 1 and not last else contextlib.nullcontext()


def out_of_memory(error: Exception, optimizer, world: int, batch) -> str:
    """Drop the step's gradients after a CUDA out-of-memory error and say why the update is
    skipped; with several processes, re-raise (the others wait in an all-reduce)."""
    if world > 1:
        raise error
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    frames = 0 if batch is None or batch.mel is None else batch.mel.shape[-1]
    size = 0 if batch is None else len(batch.ids)
    return f"out of GPU memory ({size} utterances, {frames} frames; lower --max-frames)"


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopFlag:
    """SIGINT / SIGTERM ask the loop to stop at the next step boundary and save (a second Ctrl-C
    stops at once)."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self.handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


class RunLock:
    """runs/NAME/.lock: two runs never write into one folder at once. The file's text (host, pid,
    start time) is for people; the lock itself is the kernel's, so it dies with its process."""

    def __init__(self, run_dir: Path, main: bool = True):
        self.path, self.main, self.fd = run_dir / ".lock", main, None
        self.made = []  # the folders it made, the deepest first

    def __enter__(self):
        if not self.main:
            return self
        self.made = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        if fcntl is None:
            print(
                f"warning: {self.path.parent}: run folders cannot be locked on this system",
                file=sys.stderr,
            )
            return self
        # flock on a file kept open for the run's life: taking it is one atomic call that fails
        # while a live process holds it, a dead run's file is taken as is, and the holder removes
        # the file before letting go, so a taker whose file is no longer at the path tries again
        for _ in range(100):
            fd = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if self._same_file(fd):
                    started = time.strftime("%Y-%m-%d %H:%M:%S")
                    os.ftruncate(fd, 0)
                    me = f"host {socket.gethostname()} pid {os.getpid()} started {started}\n"
                    os.write(fd, me.encode())
                    self.fd, fd = fd, None
                    return self
            except BlockingIOError:
                owner = self._owner()
                owner = f" ({owner})" if owner else ""
                raise TrainError(
                    f"{self.path.parent}: another run{owner} is using this folder; "
                    f"wait for it to end, or choose another --name"
                ) from None
            except OSError as e:
                raise TrainError(
                    f"{self.path}: cannot take the run folder's lock ({e.strerror})"
                ) from None
            finally:
                if fd is not None:
                    os.close(fd)
        raise TrainError(f"{self.path}: could not take the run folder's lock")

    def _same_file(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    def _owner(self) -> str:
        try:
            return " ".join(self.path.read_text(errors="replace").split())
        except OSError:
            return ""

    def __exit__(self, *exc):
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before letting go: see __enter__
            os.close(self.fd)
            self.fd = None
        for folder in self.made:  # a run that wrote nothing leaves no empty folder behind
            try:
                folder.rmdir()
            except OSError:  # not empty: the run's files are there
                break
        return False


def save_student(student: M.Whisper, path: Path, cfg: askd.TrainConfig, extra: dict) -> Path:
    """The student in OpenAI's .pt format, with its vocabulary and how it wants its input."""
    info = {**transcribe.student_info(cfg), **extra}
    return weight_files.save_model(student, path, extra={"fastwhisper": info})


def finite(value):
    """`value` with every NaN or infinity in it replaced by None: results.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def gather_objects(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (the resumed run redoes them)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError):
            continue
    fileio.write_atomic(path, "".join(line + "\n" for line in kept).encode())
