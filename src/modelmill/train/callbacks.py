"""Trainer callbacks: a progress bar with loss and ETA, a JSONL metrics log, and a clean stop on Ctrl-C.

Only the main process draws and writes; the stop flag is agreed on by every process, so
all ranks save the same checkpoint and leave together.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from transformers import TrainerCallback


class ProgressCallback(TrainerCallback):
    """tqdm bar over optimizer steps, showing the last loss, the learning rate and the ETA."""

    def __init__(self):
        self.bar = None

    def on_train_begin(self, args, state, control, **kw):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step",
                            dynamic_ncols=True, file=sys.stderr)

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.bar is not None and logs and "loss" in logs:
            post = {"loss": f"{logs['loss']:.4f}"}
            if "learning_rate" in logs:
                post["lr"] = f"{logs['learning_rate']:.2e}"
            self.bar.set_postfix(post, refresh=True)

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class MetricsLogCallback(TrainerCallback):
    """Append every log event (loss, lr, grad norm, tokens) to ``metrics.jsonl``, one object a line."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch, "time": time.time(), **logs}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


class GracefulStop(TrainerCallback):
    """On SIGINT/SIGTERM: finish the current step, save a checkpoint, stop. ``stopped`` tells the caller."""

    def __init__(self):
        self.requested = False
        self.stopped = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        if self.requested:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.requested = True
        print("\nStopping after this step and saving a checkpoint (Ctrl-C again to abort)...",
              file=sys.stderr, flush=True)

    def _agreed(self) -> bool:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            import torch

            flag = torch.tensor([1 if self.requested else 0])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return bool(flag.item())
        return self.requested

    def on_step_end(self, args, state, control, **kw):
        if self._agreed():
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
