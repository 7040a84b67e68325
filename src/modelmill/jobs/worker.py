"""A worker: takes queued jobs that fit its resources and runs each in a subprocess.

    modelmill worker --cpu-slots 2 --gpus 0

Every ``poll`` seconds it heartbeats itself and its jobs, re-queues jobs whose worker stopped
heartbeating (any worker does this for all), asks the runners of cancelled jobs (and of jobs
past ``--job-timeout``, which then fail) to stop, and starts new jobs while slots are free.
SIGINT/SIGTERM: stop taking jobs, let running ones checkpoint and re-queue them, leave.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from sqlalchemy.exc import OperationalError

from modelmill.errors import InputError


@dataclass
class WorkerConfig:
    """Settings of ``modelmill worker``; each field is also a command-line flag."""

    cpu_slots: int = field(default=1, metadata={"help": "Jobs needing a CPU slot this worker runs at once."})
    gpus: int = field(default=-1, metadata={"help": "GPUs this worker offers (-1: every visible CUDA device)."})
    poll: float = field(default=1.0, metadata={"help": "Seconds between looks at the queue (and heartbeats)."})
    stale_after: float = field(default=30.0, metadata={
        "help": "A running job whose worker has not heartbeated for this many seconds is re-queued."})
    job_timeout: float = field(default=0.0, metadata={
        "help": "Stop a job that has run this many seconds in one attempt and mark it failed (0: no limit)."})

    def __post_init__(self):
        if not 0 <= self.cpu_slots <= 256:
            raise InputError(f"must be in [0, 256], got {self.cpu_slots}", field="--cpu-slots")
        if self.gpus < -1:
            raise InputError(f"must be -1 or more, got {self.gpus}", field="--gpus")
        if not 0.05 <= self.poll <= 60:
            raise InputError(f"must be in [0.05, 60], got {self.poll}", field="--poll")
        if self.job_timeout < 0:
            raise InputError(f"must be >= 0 (0: no limit), got {self.job_timeout}", field="--job-timeout",
                             fix="e.g. --job-timeout 86400")
        if self.stale_after < 3 * self.poll:
            raise InputError(f"must be at least 3 x --poll ({3 * self.poll}), got {self.stale_after}",
                             field="--stale-after", fix="heartbeats come every --poll seconds")


class Worker:
    def __init__(self, store, config: WorkerConfig | None = None, log=print):
        from modelmill.jobs.kinds import _gpu_count
        from modelmill.jobs.queue import JobQueue

        self.store = store
        self.config = config or WorkerConfig()
        self.queue = JobQueue(store)
        gpus = _gpu_count() if self.config.gpus == -1 else self.config.gpus
        self.resources = {"cpu": self.config.cpu_slots, "gpu": gpus}
        self.running: dict[str, tuple[subprocess.Popen, dict]] = {}  # job id -> (runner, resources)
        self.started: dict[str, float] = {}  # job id -> when its runner started (monotonic)
        self.timed_out: set[str] = set()  # jobs stopped for running past --job-timeout
        self.stopping = False
        self.log = log
        self.id = self.queue.register_worker(self.resources)

    def free(self) -> dict:
        used = {"cpu": 0, "gpu": 0}
        for _, need in self.running.values():
            for k in used:
                used[k] += need.get(k, 0)
        return {k: self.resources[k] - used[k] for k in self.resources}

    def _spawn(self, job) -> None:
        if job.id in self.running:  # our old copy still winds down: never two runners of one job here
            self._requeue(job.id)
            return
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen([sys.executable, "-m", "modelmill.jobs.runner", job.id, self.id], env=env,
                                stdin=subprocess.DEVNULL)
        self.running[job.id] = (proc, job.resources or {})
        self.started[job.id] = time.monotonic()
        self.queue.set_pid(job.id, proc.pid)
        self.log(f"worker {self.id}: started {job.kind} job {job.id} (attempt {job.attempts}, pid {proc.pid})")

    def _reap(self) -> None:
        from modelmill.jobs.queue import FINISHED
        from modelmill.jobs.runner import REQUEUE

        for job_id, (proc, _) in list(self.running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del self.running[job_id]
            self.started.pop(job_id, None)
            timed_out = job_id in self.timed_out
            self.timed_out.discard(job_id)
            job = self.queue.get(job_id)
            if job.status not in FINISHED and job.worker == self.id:
                if job.cancel_requested:  # stopped by its cancel before it could say so itself
                    self.queue.event(job_id, "The job was cancelled", level="warn")
                    self.queue.finish(job_id, "cancelled", worker_id=self.id)
                    self.queue.drop_run(job)
                elif timed_out:
                    msg = f"the job ran longer than this worker's --job-timeout ({self.config.job_timeout:g} s)"
                    name = (job.spec or {}).get("name") if job.kind == "train" else None
                    if name and (self.store.runs_dir / name / "checkpoints").is_dir():
                        msg += f"; its checkpoints are kept: `modelmill train --name {name} --resume` continues it"
                    self.queue.event(job_id, f"The job failed: {msg}", level="error")
                    self.queue.finish(job_id, "failed", error={"code": "timeout", "message": msg, "param": None},
                                      worker_id=self.id)
                elif self.stopping or rc == REQUEUE:  # stopped on purpose: back in the queue, resumes from its checkpoint
                    self.queue.event(job_id, f"Worker {self.id} stopped the job; re-queued", level="warn")
                    self._requeue(job_id)
                else:
                    msg = f"the job's process exited with code {rc} without a result (see jobs/{job_id}/job.log)"
                    self.queue.event(job_id, f"The job failed: {msg}", level="error")
                    self.queue.finish(job_id, "failed", error={"code": "runner_died", "message": msg, "param": None},
                                      worker_id=self.id)
            self.log(f"worker {self.id}: job {job_id} left with exit code {rc}")

    def _requeue(self, job_id: str) -> None:
        from sqlalchemy import update

        from modelmill.store.tables import Job

        with self.store.session() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.worker == self.id)
                      .values(status="queued", worker=None, pid=None))

    def _cancels(self) -> None:
        """Stop runners whose job was cancelled, or is no longer this worker's (re-queued while we
        were paused): SIGTERM first (the trainer checkpoints), SIGKILL if it is still there 60 s later."""
        limit = self.config.job_timeout
        for job_id, (proc, _) in self.running.items():
            job = self.queue.get(job_id)
            lost = job.worker != self.id or job.status != "running"
            if limit and job_id not in self.timed_out and time.monotonic() - self.started.get(job_id, 0.0) > limit \
                    and not (job.cancel_requested or lost) and proc.poll() is None:
                self.timed_out.add(job_id)
                self.queue.event(job_id, f"Running for more than --job-timeout ({limit:g} s): stopping the job",
                                 level="warn")
            if not (job.cancel_requested or lost or job_id in self.timed_out) or proc.poll() is not None:
                continue
            sent = getattr(proc, "_mm_stop_sent", None)
            if sent is None:
                if lost:
                    self.log(f"worker {self.id}: job {job_id} was re-queued elsewhere; stopping our copy")
                proc.send_signal(signal.SIGTERM)
                proc._mm_stop_sent = time.monotonic()
            elif time.monotonic() - sent > 60:
                proc.kill()

    def step(self) -> None:
        self.queue.heartbeat(self.id, list(self.running))
        self._reap()
        for job_id in self.queue.requeue_stale(self.config.stale_after):
            self.log(f"worker {self.id}: re-queued {job_id} (its worker stopped heartbeating)")
        self.queue.sweep_validating()
        self._cancels()
        while not self.stopping:
            job = self.queue.claim(self.id, self.free())
            if job is None:
                break
            self._spawn(job)

    def run(self) -> None:
        def _stop(signum, frame):
            self.stopping = True

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        self.log(f"worker {self.id}: offering {self.resources}; polling the queue every {self.config.poll}s")
        try:
            while not self.stopping:
                try:
                    self.step()
                except OperationalError as e:  # the database is busy or away for a moment: try again next poll
                    self.log(f"worker {self.id}: database unavailable ({e.orig}); retrying")
                time.sleep(self.config.poll)
            for proc, _ in self.running.values():  # runners stop the way Ctrl-C stops training: with a checkpoint
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.time() + 120
            while self.running and time.time() < deadline:
                self.queue.heartbeat(self.id, list(self.running))
                self._reap()
                time.sleep(0.2)
        finally:
            self.queue.stop_worker(self.id)
            self.log(f"worker {self.id}: stopped")
