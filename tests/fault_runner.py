"""``python tests/fault_runner.py fit ...``: ``tubelet fit`` with test-only hooks, for fault tests that kill it.

Environment:
    TUBELET_TEST_STEP_SLEEP   seconds to sleep before each training batch (gives a killer time to act)
    TUBELET_TEST_BLOCK_CKPT   block inside the write of the checkpoint whose file name contains this
                              text: its temporary file is complete, the rename has not happened yet
    TUBELET_TEST_MARKER       file created once the write is blocked
    TUBELET_TEST_PIDS         folder: each process (rank) writes <rank>.pid there when training starts
    TUBELET_TEST_NAN_LOSS     "STEP:RANK": the method's loss is NaN at that step on that rank only

Apart from TUBELET_TEST_NAN_LOSS, nothing here changes the numbers: the hooks only wait.
"""

import os
import sys
import time
from pathlib import Path


def _install() -> None:
    from tubelet.engine.module import TubeletModule

    sleep = float(os.environ.get("TUBELET_TEST_STEP_SLEEP", "0"))
    pids = os.environ.get("TUBELET_TEST_PIDS")

    def on_train_batch_start(self, batch, batch_idx):
        if pids:
            path = Path(pids) / f"{self.global_rank}.pid"
            if not path.exists():
                path.write_text(str(os.getpid()))
        if sleep:
            time.sleep(sleep)

    TubeletModule.on_train_batch_start = on_train_batch_start

    nan = os.environ.get("TUBELET_TEST_NAN_LOSS")
    if nan:
        step, rank = (int(v) for v in nan.split(":"))
        training_step = TubeletModule.training_step

        def poisoned_step(self, batch, batch_idx):
            if not getattr(self.method, "_poisoned", False):
                forward = self.method.forward

                def forward_nan(b, module=self):
                    out = forward(b)
                    if module.global_step == step and module.global_rank == rank:
                        out = dict(out, loss=out["loss"] * float("nan"))
                    return out

                self.method.forward = forward_nan
                self.method._poisoned = True
            return training_step(self, batch, batch_idx)

        TubeletModule.training_step = poisoned_step

    block = os.environ.get("TUBELET_TEST_BLOCK_CKPT")
    if block:
        real_replace = os.replace

        def blocking_replace(src, dst):
            if str(dst).endswith(".ckpt") and block in Path(dst).name:
                Path(os.environ["TUBELET_TEST_MARKER"]).write_text(str(src))
                time.sleep(3600)
            return real_replace(src, dst)

        os.replace = blocking_replace


if __name__ == "__main__":
    _install()
    from tubelet.cli.main import main

    sys.exit(main(sys.argv[1:]))
