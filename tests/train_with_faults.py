"""`fastwhisper.py` with faults injected, for tests/test_askd.py (production code has no test
hooks).

    python tests/train_with_faults.py [nan=K] [kill=K] [interrupt=K] train ARGS...

nan=K: a NaN loss in rank 0's first micro-batch of step K (every rank must skip the step);
kill=K: SIGKILL, like a killed job, as step K begins; interrupt=K: SIGINT (Ctrl-C) as step K
begins (the run saves after that step and stops). They go in through askd.Trainer.train_step and
askd.distill_loss, the seams this script patches; it works under torchrun too.
"""

import os
import signal
import sys

import askd
import fastwhisper


def inject(faults: dict) -> None:
    train_step, distill_loss, nan_next = askd.Trainer.train_step, askd.distill_loss, []

    def faulty_train_step(self, *args):
        step = self.step + 1
        if step == faults.get("kill"):
            os.kill(os.getpid(), signal.SIGKILL)
        if step == faults.get("interrupt"):
            os.kill(os.getpid(), signal.SIGINT)
        if step == faults.get("nan") and self.rank == 0:
            nan_next.append(step)  # the step's first micro-batch
        return train_step(self, *args)

    def faulty_distill_loss(*args, **kwargs):
        loss, parts = distill_loss(*args, **kwargs)
        return (loss * float("nan") if nan_next and nan_next.pop() else loss), parts

    askd.Trainer.train_step, askd.distill_loss = faulty_train_step, faulty_distill_loss


if __name__ == "__main__":
    at = sys.argv.index("train")
    inject({name: int(step) for name, step in (arg.split("=") for arg in sys.argv[1:at])})
    sys.exit(fastwhisper.main(sys.argv[at:]))
