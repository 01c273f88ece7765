"""run_plumbing.py: run-folder locks, checkpoints, killed / interrupted runs resumed, DDP."""

import multiprocessing
import os
import re
import socket
from pathlib import Path

import pytest
import torch
from conftest import metrics, train_cli

import askd
import run_plumbing

# ----- the run folder's lock ----------------------------------------------------------------------


FORK = multiprocessing.get_context("fork")  # children start at once, askd already imported


def take_and_die(run: Path) -> None:
    """Leave a dead run's lock in `run`: a process takes it and exits without letting go."""
    child = FORK.Process(target=lambda: (run_plumbing.RunLock(run).__enter__(), os._exit(0)))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    assert (run / ".lock").read_text().startswith(f"host {socket.gethostname()} pid ")


def race_for_locks(runs, start, tried, done, results):
    """One racer: at each round, try to take that round's run folder, say whether it got it, and
    (if so) hold it until every racer has tried."""
    for run in runs:
        start.wait(10)
        lock = run_plumbing.RunLock(run)
        try:
            lock.__enter__()
        except run_plumbing.TrainError:
            pass
        results.put((os.getpid(), lock.fd is not None))
        tried.wait(10)
        done.wait(10)
        lock.__exit__(None, None, None)


ROUNDS = 100  # enough that a lock with a gap between taking and writing it is caught


def test_racing_runs_never_share_a_folder(tmp_path):
    """6 processes released together race for a run folder, round after round, every second one with
    a dead run's lock in it: each time exactly one holds it, and the lock's text names that one."""
    runs = [tmp_path / f"run{i}" for i in range(ROUNDS)]
    take_and_die(runs[1])
    for run in runs[3::2]:
        run.mkdir()
        (run / ".lock").write_bytes((runs[1] / ".lock").read_bytes())
    start, tried, done = (FORK.Barrier(7) for _ in range(3))
    results = FORK.Queue()
    racers = [
        FORK.Process(target=race_for_locks, args=(runs, start, tried, done, results))
        for _ in range(6)
    ]
    for racer in racers:
        racer.start()
    try:
        for run in runs:
            start.wait(10)
            tried.wait(10)
            holders = [pid for pid, held in (results.get(timeout=10) for _ in racers) if held]
            assert len(holders) == 1, f"{run.name}: held by {len(holders)} processes at once"
            assert f" pid {holders[0]} " in (run / ".lock").read_text()
            done.wait(10)
        for racer in racers:
            racer.join(10)
            assert racer.exitcode == 0
    finally:
        for barrier in (start, tried, done):
            barrier.abort()
        for racer in racers:
            racer.kill()
            racer.join()
    assert not any((run / ".lock").exists() for run in runs)  # each holder took its lock away


@pytest.mark.slow
def test_a_run_folder_is_locked_and_overwrite_clears_it(workspace, tmp_path, monkeypatch):
    """A live run's lock stops a second run; a dead one's is taken over; --overwrite removes the old
    run's files before anything else; a corrupt last.pt on --resume is a one-line error."""
    cfg = dict(
        train=workspace["train"],
        dev=workspace["dev"],
        input="padded",
        limit=4,
        batch_size=4,
        epochs=1,
        cache_dir=workspace["cache"],
        runs_dir=str(tmp_path),
        name="locked",
        decoder_layers=1,
        joined=0,
        perturbed=0,
        quiet=True,
    )
    run = tmp_path / "locked"
    with run_plumbing.RunLock(run):  # this test process: alive
        owner = rf"host {re.escape(socket.gethostname())} pid {os.getpid()} started [-\d]+ [:\d]+"
        with pytest.raises(
            run_plumbing.TrainError, match=rf"locked: another run \({owner}\) is using "
        ):
            askd.train(askd.TrainConfig(**cfg))
    take_and_die(run)
    for name in ("last.pt", "student.pt", "results.json", "metrics.jsonl"):
        (run / name).write_text("an older run")
    seen = {}
    monkeypatch.setattr(
        askd.Trainer,
        "run",
        lambda self: seen.setdefault("files", sorted(p.name for p in run.iterdir())),
    )
    askd.train(askd.TrainConfig(**cfg, overwrite=True))
    assert seen["files"] == [
        ".lock",
        "config.json",
        "metrics.jsonl",
    ]  # a fresh run, holding the lock
    assert (run / "metrics.jsonl").read_text() == "" and not (run / ".lock").exists()
    (run / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(
        run_plumbing.TrainError,
        match=r"last\.pt: cannot read the checkpoint \(.*\); start over with ",
    ):
        askd.train(askd.TrainConfig(**cfg, resume=True))


def test_resuming_a_run_that_is_not_there_leaves_nothing(tmp_path, capsys):
    """`train --resume` of a run that was never started: one line saying so, and no folder made."""
    import fastwhisper

    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit:
        fastwhisper.main(["train", "--runs-dir", str(runs), "--name", "never", "--resume", "-q"])
    assert exit.value.code == 2 and not runs.exists()
    said = "there is no run to resume there (no last.pt); start it without --resume"
    assert capsys.readouterr().err == f"error: {runs / 'never'}: {said}\n"


# ----- checkpoints, faults and resuming -----------------------------------------------------------


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_line(workspace, tmp_path, monkeypatch):
    cfg = askd.TrainConfig(
        train=workspace["train"],
        dev=workspace["dev"],
        input="padded",
        limit=4,
        batch_size=4,
        epochs=1,
        cache_dir=workspace["cache"],
        runs_dir=str(tmp_path),
        name="full",
        decoder_layers=1,
        joined=0,
        perturbed=0,
        quiet=True,
    )

    def full(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_plumbing, "atomic_torch_save", full)
    with pytest.raises(
        run_plumbing.TrainError,
        match=r"full/last\.pt: cannot write the checkpoint at step 1 \(No space "
        r"left on device\); the one before is intact",
    ):
        askd.train(cfg)
    assert not (tmp_path / "full" / ".lock").exists()  # the lock goes with the run


def final_weights(ws, name):
    return torch.load(Path(ws["runs"]) / name / "last.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_killed_run_resumes_exactly(reference_run, workspace):
    killed = train_cli(workspace, "killed", "--accum", "2", kill=5)
    assert killed.returncode == -9  # SIGKILL during step 5, mid-epoch 2
    assert final_weights(workspace, "killed")["step"] == 4
    again = train_cli(workspace, "killed", "--accum", "2")
    assert again.returncode != 0 and "--resume" in again.stderr  # will not silently start over
    resumed = train_cli(workspace, "killed", "--accum", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_weights(workspace, "reference"), final_weights(workspace, "killed")
    assert a["step"] == b["step"] == 6
    for part in ("student", "earlier"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part} {name} differs after resuming"
    assert a["optimizer"]["state"][0]["exp_avg_sq"].equal(b["optimizer"]["state"][0]["exp_avg_sq"])

    # the log reads as if the run had never stopped
    def strip(log):
        return [{k: v for k, v in r.items() if k != "time"} for r in log]

    assert strip(metrics(workspace, "killed")) == strip(metrics(workspace, "reference"))
    changed = train_cli(workspace, "killed", "--accum", "2", "--resume", "--lr", "1e-3")
    assert changed.returncode != 0 and "lr (0.0001 -> 0.001)" in changed.stderr


@pytest.mark.slow
def test_interrupted_run_saves_and_resumes(reference_run, workspace, ctrl_c):
    """Ctrl-C (SIGINT) during step 4: the step ends, last.pt is saved, exit status 130; --resume
    ends exactly where the uninterrupted run did."""
    stopped = train_cli(workspace, "interrupted", "--accum", "2", interrupt=4)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "stopped at step 4 of 6; continue with the same command and --resume" in stopped.stderr
    assert final_weights(workspace, "interrupted")["step"] == 4
    resumed = train_cli(workspace, "interrupted", "--accum", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_weights(workspace, "reference"), final_weights(workspace, "interrupted")
    assert all(torch.equal(tensor, b["student"][name]) for name, tensor in a["student"].items())


# ----- DDP ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_gloo_processes_equal_one_accumulating(reference_run, workspace):
    """torchrun, 2 CPU processes: rank r takes micro-batch r of each pair, gradients are averaged
    (and the NaN that only rank 0 sees is skipped by both), which is what one process does with
    --accum 2."""
    result = train_cli(workspace, "ddp", "--accum", "1", nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = final_weights(workspace, "reference"), final_weights(workspace, "ddp")
    assert b["step"] == 6 and len(b["rng"]) == 2
    for name, tensor in a["student"].items():
        torch.testing.assert_close(
            b["student"][name], tensor, rtol=1e-4, atol=1e-5, msg=f"student {name}"
        )
    ref = [r for r in metrics(workspace, "reference") if "loss" in r]
    ddp = [r for r in metrics(workspace, "ddp") if "loss" in r]
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in ref], rel=1e-4)
