"""Trainer callbacks: a progress bar with loss and ETA, a JSONL metrics log, a clean stop on Ctrl-C,
and a time budget.

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
            if self.bar.total != state.max_steps:  # a time budget cut the run
                self.bar.total = state.max_steps
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


def _all_min(value: int) -> int:
    """The smallest ``value`` over the training processes (itself when there is one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        import torch

        t = torch.tensor([value])
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())
    return value


class TimeBudget(TrainerCallback):
    """Fit a run into ``seconds``: time a few steps, cut the step count to what fits, and refit the
    learning-rate schedule to the new length, so that warm-up and decay keep their shape and the
    run ends at the schedule's end rather than in the middle of it.

    Step 1 is not timed (library start-up, first touch of every buffer); steps 2..1+PROBE are.
    A run that fits already is left alone. The plan is written to ``plan_file`` so a resumed run
    keeps the same length and schedule. Every process takes the smallest plan, so they stop together.
    """

    PROBE = 3

    def __init__(self, seconds: float, plan_file: Path):
        self.seconds = seconds
        self.plan_file = Path(plan_file)
        self.start = self.timed_from = None
        self.first = 0
        self.planned: int | None = None

    def on_train_begin(self, args, state, control, lr_scheduler=None, optimizer=None, **kw):
        self.start, self.first = time.monotonic(), state.global_step
        if self.plan_file.is_file():  # resumed: the plan made before the interruption
            try:
                self.planned = int(json.loads(self.plan_file.read_text(encoding="utf-8"))["max_steps"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                from modelmill.errors import InputError

                raise InputError(f"the run's time-budget plan cannot be read ({type(e).__name__}: {e})",
                                 file=str(self.plan_file),
                                 fix="delete the file: the resumed run then plans its remaining steps again") from None
            self._apply(args, state, lr_scheduler, optimizer)

    def on_step_end(self, args, state, control, lr_scheduler=None, optimizer=None, **kw):
        done = state.global_step - self.first
        if self.planned is None:
            if done == 1:
                self.timed_from = time.monotonic()
            elif done == 1 + self.PROBE:
                now = time.monotonic()
                per_step = (now - self.timed_from) / self.PROBE
                left = self.seconds - (now - self.start)
                fits = _all_min(state.global_step + max(0, int(left // per_step)))
                self.planned = min(state.max_steps, fits)
                if state.is_world_process_zero:  # whole or not at all: a kill mid-write leaves no half a plan
                    from modelmill.models._files import atomic_write_text

                    atomic_write_text(self.plan_file, json.dumps({
                        "max_steps": self.planned, "asked_steps": state.max_steps, "budget_s": self.seconds,
                        "seconds_per_step": round(per_step, 3)}))
                if self.planned < state.max_steps:
                    print(f"time budget {self.seconds / 60:g} min: {per_step:.1f} s a step here, so "
                          f"{self.planned} of {state.max_steps} steps", file=sys.stderr, flush=True)
                    self._apply(args, state, lr_scheduler, optimizer)
        if self.planned is not None and state.global_step >= self.planned:
            control.should_training_stop = True

    def _apply(self, args, state, lr_scheduler, optimizer):
        """state.max_steps = the plan, and the scheduler's factors computed for that many steps."""
        if self.planned >= state.max_steps:
            return
        state.max_steps = self.planned
        lr_scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps it
        if lr_scheduler is None or optimizer is None or not hasattr(lr_scheduler, "lr_lambdas"):
            return
        from transformers import get_scheduler

        fitted = get_scheduler(args.lr_scheduler_type, optimizer,
                               num_warmup_steps=args.get_warmup_steps(self.planned),
                               num_training_steps=self.planned,
                               scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
        lr_scheduler.lr_lambdas = fitted.lr_lambdas
        # the rate of the next step, from the fitted schedule (this also overwrites what building
        # ``fitted`` set the optimizer's rates to)
        step = lr_scheduler.last_epoch
        for g, base, factor in zip(optimizer.param_groups, lr_scheduler.base_lrs, lr_scheduler.lr_lambdas):
            g["lr"] = base * factor(step)
        lr_scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


class GracefulStop(TrainerCallback):
    """On SIGINT/SIGTERM: finish the current step, save a checkpoint, stop. ``stopped`` tells the caller."""

    def __init__(self):
        self.requested = False
        self.stopped = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (a Ray Train worker): Ray stops it, not a signal
                break

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
