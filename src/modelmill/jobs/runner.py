"""One job, run in its own process by a worker: ``python -m modelmill.jobs.runner JOB_ID``.

It runs the kind's ``run`` with stdout and stderr going to ``jobs/<id>/job.log``, turns new log
lines, training metrics and checkpoints into job events as they appear, and sets the final
state. SIGTERM (the worker's cancel) stops the run the way Ctrl-C does: training saves a
checkpoint and leaves. If the worker itself dies, this process kills the trainer it started
and leaves without a final state: the job stays ``running`` until a worker sees its heartbeat
stop and re-queues it, and the next attempt resumes from the checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from modelmill.errors import ModelmillError

# tqdm redraws: "training:  40%|████      | 4/10 [00:03<00:05, ...]" (kept out of the log events)
REQUEUE = 75  # exit code: stopped before the end on purpose; put the job back in the queue
KILLED = 76  # exit code: its trainer was killed from outside; retried up to the worker's --max-attempts


class JobLost(ModelmillError):
    """This attempt lost its job (re-queued elsewhere, or cancelled): it must not publish."""


class _TracebackFolder:
    """Turns a Python traceback in the log into one line: the exception it ended in, said once per
    attempt however many processes print it (a stopped run's launcher and trainer both do).
    ``feed(line)`` returns (whether the line belongs to a traceback, the line to say or None): a
    traceback's frames stay in job.log, not in the events."""

    _PREFIX = re.compile(r"^(\[rank\d+\]:\s?)")

    def __init__(self):
        self.inside = False
        self.said: set[str] = set()

    def feed(self, raw: str) -> tuple[bool, str | None]:
        line = self._PREFIX.sub("", raw.rstrip())
        if line.startswith("Traceback (most recent call last)"):
            self.inside = True
            return True, None
        if not self.inside:
            return False, None
        if not line or line[0].isspace() or line.startswith(("During handling of the above exception",
                                                             "The above exception was the direct cause")):
            return True, None
        self.inside = False  # the exception line ends it
        if line in self.said:
            return True, None
        self.said.add(line)
        return True, "The process was interrupted (KeyboardInterrupt)" if line == "KeyboardInterrupt" else line


_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+|^\s*\d+/\d+ \[")


class JobContext:
    def __init__(self, store, job, config, job_dir: Path, worker_id: str | None = None, attempt: int | None = None):
        from modelmill.jobs.queue import JobQueue

        self.store = store
        self.job = job
        self.worker_id = worker_id
        self.attempt = attempt
        self.config = config
        self.queue = JobQueue(store)
        self.dir = job_dir
        self.log_file = job_dir / "job.log"
        self.log_start = 0
        self._stop = threading.Event()
        self._metrics_stop = threading.Event()  # the training run's metrics tail: its last pass
        self._metrics_thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []

    def event(self, message: str, *, level: str = "info", type: str = "message", data: dict | None = None):
        self.queue.event(self.job.id, message, level=level, type=type, data=data)

    def still_ours(self) -> None:
        """Raise unless this attempt still holds the job: called right before a result is
        published, so a copy whose job was re-queued (or cancelled) meanwhile publishes nothing."""
        if not self.queue.owns(self.job.id, self.worker_id, self.attempt):
            raise JobLost(f"job {self.job.id} is no longer attempt {self.attempt} on worker {self.worker_id} "
                          "(re-queued or cancelled meanwhile); this copy publishes nothing")

    # -- following a run's files

    def follow_log(self) -> None:
        self._start(self._tail_log)

    def watch_training(self, run_dir: Path) -> None:
        """Metrics (metrics.jsonl) and checkpoints of a training run become events as they appear."""
        self._metrics_thread = self._start(self._tail_metrics, Path(run_dir))

    def settle_training(self) -> None:
        """The run has ended: its last metrics and checkpoints become events now, before publishing
        moves its folder to adapters/ (the tail reads once a second and would miss the last lines)."""
        self._metrics_stop.set()
        if self._metrics_thread is not None:
            self._metrics_thread.join(timeout=30)

    def _start(self, fn, *args) -> threading.Thread:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def stop(self) -> None:
        self._stop.set()
        self._metrics_stop.set()
        for t in self._threads:
            t.join(timeout=5)

    def _tail_log(self) -> None:
        pos, partial = self.log_start, ""  # an earlier attempt's lines are already events
        folder = _TracebackFolder()
        while True:
            done = self._stop.is_set()
            try:
                with open(self.log_file, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except FileNotFoundError:
                chunk = b""
            text = partial + chunk.decode("utf-8", "replace")
            lines = re.split(r"[\r\n]", text)
            partial = "" if done else lines.pop()
            for raw in lines:
                in_traceback, said = folder.feed(raw)
                if said is not None:  # a traceback, folded to the exception it ended in
                    self.event(f"{said[:1500]} (the traceback is in jobs/{self.job.id}/job.log)", level="warn",
                               data={"source": "log", "traceback": True})
                line = raw.strip()
                if line and not in_traceback and not _BAR.search(line):
                    self.event(line[:2000], type="message", data={"source": "log"})
            if done:
                return
            self._stop.wait(0.5)

    def _tail_metrics(self, run_dir: Path) -> None:
        path, ckdir = run_dir / "metrics.jsonl", run_dir / "checkpoints"
        # A resumed attempt re-reads metrics.jsonl from the top and finds the checkpoints saved before:
        # what an earlier attempt reported stays reported. Steps and checkpoints are reported in
        # increasing order, so the newest such event says how far that went; it is read back from the
        # newest event (a long run has far more events than one page), and only when needed.
        first = (self.job.attempts or 0) <= 1  # nothing reported before this attempt
        seen_step = 0 if first else self._earlier_step("metrics", lambda d: "valid_loss" not in d)
        seen_eval: int | None = None  # at the first validation row (most runs have none)
        earlier_ckpt: int | None = None  # at the first whole checkpoint
        seen_ckpt: set[str] = set()  # this attempt's
        pos = 0
        last: dict = {}
        while True:
            done = self._metrics_stop.is_set()
            try:
                with open(path, "rb") as f:
                    f.seek(pos)
                    raw = f.read()
                    cut = raw.rfind(b"\n") + 1  # only whole lines
                    pos += cut
                rows = [json.loads(x) for x in raw[:cut].decode().splitlines() if x.strip()]
            except (FileNotFoundError, ValueError):
                rows = []
            for row in rows:
                if "eval_loss" in row:  # the held-out loss (--eval-data, or the job's validation_file)
                    if seen_eval is None:
                        seen_eval = 0 if first else self._earlier_step("metrics", lambda d: "valid_loss" in d)
                    if row.get("step", 0) > seen_eval:
                        seen_eval = row["step"]
                        self.event(f"Step {row['step']}/{row.get('max_steps', '?')}: validation loss="
                                   f"{row['eval_loss']:.4f}", type="metrics",
                                   data={"step": row["step"], "total_steps": row.get("max_steps"),
                                         "valid_loss": row["eval_loss"],
                                         "valid_mean_token_accuracy": row.get("eval_mean_token_accuracy")})
                    continue
                if "loss" not in row:  # the run's summary row: progress reaches its last step
                    if row.get("step") and row.get("max_steps"):
                        self.queue.progress(self.job.id, {"step": row["step"], "max_steps": row["max_steps"],
                                                          "loss": last.get("loss")})
                    continue
                if row.get("step", 0) <= seen_step:
                    continue
                seen_step = row["step"]
                data = {"step": row["step"], "total_steps": row.get("max_steps"), "loss": row["loss"],
                        "train_loss": row["loss"], "learning_rate": row.get("learning_rate"),
                        "epoch": row.get("epoch"), "grad_norm": row.get("grad_norm")}
                last = data
                self.event(f"Step {row['step']}/{row.get('max_steps', '?')}: training loss={row['loss']:.4f}",
                           type="metrics", data=data)
                self.queue.progress(self.job.id, {"step": row["step"], "max_steps": row.get("max_steps"),
                                                  "loss": row["loss"]})
            for ck in sorted(ckdir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) if ckdir.is_dir() else []:
                if ck.name not in seen_ckpt and (ck / "trainer_state.json").is_file():
                    seen_ckpt.add(ck.name)
                    step = int(ck.name.split("-")[-1])
                    if earlier_ckpt is None:
                        earlier_ckpt = 0 if first else next(
                            (e.data["step"] for e in saved_checkpoints(self.queue, self.job.id)), 0)
                    if step <= earlier_ckpt:  # reported by an earlier attempt
                        continue
                    self.event(f"Saved checkpoint at step {step}",
                               data={"checkpoint": ck.name, "step": step, "metrics": {"train_loss": last.get("loss")}})
            if done:
                return
            self._metrics_stop.wait(1.0)

    def _earlier_step(self, type: str, want) -> int:
        """The step of the newest event of ``type`` whose data ``want`` accepts (0: none)."""
        return next(((e.data or {}).get("step", 0) for e in _newest_first(self.queue, self.job.id, type)
                     if want(e.data or {})), 0)


def _newest_first(queue, job_id: str, type: str | None = None, page: int = 1000):
    """The job's events of ``type``, newest first, a page at a time for as long as the caller reads."""
    before = None
    while True:
        rows = queue.events(job_id, after=before, limit=page, type=type, newest_first=True)
        if not rows:
            return
        yield from rows
        before = rows[-1].id


def saved_checkpoints(queue, job_id: str):
    """The job's "Saved checkpoint" events (data: ``checkpoint``, ``step``, ``metrics``), newest
    first, however many events the job has: what the fine-tuning API lists, and what a resumed
    attempt does not report again."""
    return (e for e in _newest_first(queue, job_id, "message")
            if (e.data or {}).get("checkpoint") and isinstance((e.data or {}).get("step"), int))


def _watchdog(parent: int) -> None:
    """Our worker is gone: kill the trainer we started (its own process group) and leave at once."""
    from modelmill.train.launcher import RUNNING

    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            for pgid in list(RUNNING):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            os._exit(75)


def _redirect(log_file: Path) -> None:
    """This process's stdout and stderr (and its children's) go to the job's log."""
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run(job_id: str, worker_id: str | None = None, attempt: int | None = None) -> int:
    from modelmill.jobs.kinds import get_kind
    from modelmill.jobs.queue import JobQueue, held_by
    from modelmill.store import open_store

    store = open_store()
    q = JobQueue(store)
    job = q.get(job_id)
    kind = get_kind(job.kind)
    job_dir = store.home / "jobs" / job.id
    job_dir.mkdir(parents=True, exist_ok=True)
    log_start = (job_dir / "job.log").stat().st_size if (job_dir / "job.log").is_file() else 0
    _redirect(job_dir / "job.log")
    cfg = kind.config(job.spec)
    attempt = job.attempts if attempt is None else attempt
    ctx = JobContext(store, job, cfg, job_dir, worker_id, attempt)
    ctx.log_start = log_start
    ctx.follow_log()

    node = os.environ.get("MODELMILL_RAY_NODE")  # set by the Ray executor's task: the node it runs on
    ctx.event(f"Started on worker {worker_id or '?'}" + (f", {node}" if node else "") + f" (attempt {job.attempts})",
              data={"ray_node": node} if node else None)
    from modelmill.train.runs import TrainingInterrupted, TrainingKilled

    status, result, error, e = "failed", None, None, None
    try:
        result = kind.run(ctx) or {}
        status = "succeeded"
    except BaseException as caught:  # noqa: BLE001 - sorted below: a stop, a user's error, or a bug
        from modelmill.train.launcher import STOP

        e = caught
        if not isinstance(caught, (KeyboardInterrupt, ModelmillError)):
            if STOP.is_set():
                # the stop landed inside an import and surfaced as that library's error (numpy: "cannot
                # load module more than once per process"): it is the stop, not a bug
                e = KeyboardInterrupt()
            else:
                traceback.print_exc()  # a bug: record it, and its traceback, on the job
                error = {"code": "internal_error", "message": f"{type(caught).__name__}: {caught}", "param": None}
                e = None
    if e is not None:
        now = q.get(job_id)
        if now.status != "running" or not held_by(now, worker_id, attempt):
            # no longer ours: whoever holds the job now (or its cancel) decides its state and its files
            ctx.stop()
            ctx.event(f"Attempt {attempt} stopped: the job was re-queued or ended meanwhile", level="warn")
            return 1
        if now.cancel_requested:
            status = "cancelled"
            q.drop_run(job)
        elif isinstance(e, (KeyboardInterrupt, TrainingInterrupted)):
            # the worker is shutting down: no final state; it re-queues the job, which resumes
            ctx.stop()
            ctx.event("Interrupted; the next attempt resumes from the last checkpoint", level="warn")
            return REQUEUE
        elif isinstance(e, TrainingKilled):
            # killed from outside (out of memory?): the worker tries again from the checkpoints, a few times
            ctx.stop()
            ctx.event(f"{e.message}; the next attempt resumes from the last checkpoint", level="warn")
            return KILLED
        else:
            error = {"code": type(e).__name__, "message": str(e), "param": e.field}
    ctx.stop()
    columns = (result or {}).pop("columns", {}) if result else {}
    if status == "succeeded":
        ctx.event("The job has successfully completed")
    elif status == "cancelled":
        ctx.event("The job was cancelled", level="warn")
    else:
        ctx.event(f"The job failed: {error['message']}", level="error")
    ok = q.finish(job_id, status, result=result, error=error, worker_id=worker_id, attempt=attempt,
                  **{k: v for k, v in columns.items() if v is not None})
    return 0 if ok and status == "succeeded" else 1


def _term(signum, frame):
    """The worker's cancel or shutdown: stop the way Ctrl-C stops training (it saves and leaves).

    KeyboardInterrupt is what Ctrl-C raises: in the set-up it stops the set-up, and while a
    trainer runs it lands in ``launcher.launch``, which forwards it to the trainer's group and
    waits until the checkpoint is saved (accelerate's own launcher dies of it before that). STOP
    stops a trainer that starts anyway: a KeyboardInterrupt that lands inside some library's
    import-time ``except:`` is lost, the flag is not. A second SIGTERM while a trainer runs
    aborts it, as a second Ctrl-C does.
    """
    from modelmill.train.launcher import RUNNING, STOP

    first = not STOP.is_set()
    STOP.set()
    if first or RUNNING:
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _term)  # first of all: a cancel may come at once
    argv = sys.argv[1:] if argv is None else argv
    job_id = argv[0]
    worker_id = argv[1] if len(argv) > 1 else None
    attempt = int(argv[2]) if len(argv) > 2 else None
    threading.Thread(target=_watchdog, args=(os.getppid(),), daemon=True).start()
    return run(job_id, worker_id, attempt)


if __name__ == "__main__":
    sys.exit(main())
