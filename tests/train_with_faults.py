"""`fastwhisper.py` with faults injected, for tests/test_askd.py (production code has no test hooks).

    python tests/train_with_faults.py NAN_AT KILL_AT train ARGS...

runs the CLI with a NaN loss in rank 0's first micro-batch of step NAN_AT (the step must be skipped by
every rank) and the process killed by SIGKILL, like a killed job, as step KILL_AT begins (0: never).
Both go in through askd.Trainer.micro_batch_loss, the seam this script patches; works under torchrun.
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import askd  # noqa: E402
import fastwhisper  # noqa: E402


def inject(nan_at: int, kill_at: int) -> None:
    loss_of, poisoned = askd.Trainer.micro_batch_loss, set()

    def micro_batch_loss(self, batch, s):
        step = self.step + 1
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        loss, parts = loss_of(self, batch, s)
        if step == nan_at and self.rank == 0 and step not in poisoned:      # the step's first micro-batch
            poisoned.add(step)
            loss = loss * float("nan")
        return loss, parts
    askd.Trainer.micro_batch_loss = micro_batch_loss


if __name__ == "__main__":
    inject(int(sys.argv[1]), int(sys.argv[2]))
    sys.exit(fastwhisper.main(sys.argv[3:]))
