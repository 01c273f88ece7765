"""`fastwhisper.py` with faults injected, for tests/test_askd.py (production code has no test
hooks).

    python tests/train_with_faults.py [nan=K] [kill=K] [interrupt=K] train ARGS...

nan=K: a NaN loss in rank 0's first micro-batch of step K (every rank must skip the step);
kill=K: SIGKILL, like a killed job, as step K begins; interrupt=K: SIGINT (Ctrl-C) as step K
begins (the run saves after that step and stops). They go in through askd.Trainer.micro_batch_loss,
the seam this script patches; it works under torchrun too.
"""

import os
import signal
import sys

import askd
import fastwhisper


def inject(faults: dict) -> None:
    loss_of, started = askd.Trainer.micro_batch_loss, set()

    def micro_batch_loss(self, batch, s):
        step, first = (
            self.step + 1,
            self.step + 1 not in started,
        )  # first: the step's first micro-batch
        started.add(step)
        if first and step == faults.get("kill"):
            os.kill(os.getpid(), signal.SIGKILL)
        if first and step == faults.get("interrupt"):
            os.kill(os.getpid(), signal.SIGINT)
        loss, parts = loss_of(self, batch, s)
        if first and step == faults.get("nan") and self.rank == 0:
            loss = loss * float("nan")
        return loss, parts

    askd.Trainer.micro_batch_loss = micro_batch_loss


if __name__ == "__main__":
    at = sys.argv.index("train")
    inject({name: int(step) for name, step in (arg.split("=") for arg in sys.argv[1:at])})
    sys.exit(fastwhisper.main(sys.argv[at:]))
