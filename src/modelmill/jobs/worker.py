"""A worker: takes queued jobs that fit its resources and runs each in a subprocess.

    modelmill worker --cpu-slots 2 --gpus 0

Every ``poll`` seconds it re-queues jobs whose worker stopped heartbeating (any worker does this
for all), asks the runners of cancelled jobs (and of jobs past ``--job-timeout``, which then
fail) to stop, and starts new jobs while slots are free. A thread of its own heartbeats the
worker and its jobs every ``poll`` seconds too: that lease is renewed however long the loop's own
work takes (a busy database, a slow claim), so a loaded host never makes a live job look dead.
SIGINT/SIGTERM: stop taking jobs, let running ones checkpoint and re-queue them, leave.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
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
        "help": "A running job whose worker has not heartbeated for this many seconds is re-queued. Beats come "
                "every --poll seconds from a thread of their own; 30 s rides out a database busy for seconds."})
    max_attempts: int = field(default=3, metadata={
        "help": "Attempts a job gets when its runner or trainer is killed from outside (the out-of-memory killer, "
                "kill -9): each resumes from the last checkpoint; then the job fails."})
    job_timeout: float = field(default=0.0, metadata={
        "help": "Stop a job that has run this many seconds in one attempt and mark it failed (0: no limit)."})
    executor: str = field(default="local", metadata={
        "help": "Where jobs run: local (subprocesses on this host) or ray (on the Ray cluster at --ray-address, "
                "each job on a node with the CPUs and GPUs it asks for).", "choices": ("local", "ray")})
    ray_address: str = field(default="", metadata={
        "help": "The Ray cluster's head, HOST:PORT (with --executor ray; default: $RAY_ADDRESS)."})

    def __post_init__(self):
        if not 0 <= self.cpu_slots <= 256:
            raise InputError(f"must be in [0, 256], got {self.cpu_slots}", field="--cpu-slots")
        if self.gpus < -1:
            raise InputError(f"must be -1 or more, got {self.gpus}", field="--gpus")
        if not 0.05 <= self.poll <= 60:
            raise InputError(f"must be in [0.05, 60], got {self.poll}", field="--poll")
        if not 1 <= self.max_attempts <= 100:
            raise InputError(f"must be in [1, 100], got {self.max_attempts}", field="--max-attempts")
        if self.job_timeout < 0:
            raise InputError(f"must be >= 0 (0: no limit), got {self.job_timeout}", field="--job-timeout",
                             fix="e.g. --job-timeout 86400")
        if self.executor not in ("local", "ray"):
            raise InputError(f"unknown executor '{self.executor}'", field="--executor", fix="use local or ray")
        if self.executor == "ray" and not self.ray_address:
            self.ray_address = os.environ.get("RAY_ADDRESS", "")
            if not self.ray_address:
                raise InputError("--executor ray needs the cluster's address", field="--ray-address",
                                 fix="give the head's HOST:PORT (`ray start --head` prints it), or set RAY_ADDRESS")
        if self.stale_after < 3 * self.poll:
            raise InputError(f"must be at least 3 x --poll ({3 * self.poll}), got {self.stale_after}",
                             field="--stale-after", fix="heartbeats come every --poll seconds")


def _memory_gib() -> int:
    """This host's memory in whole GiB: what a job's ``memory`` resource is counted against."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (ValueError, OSError, AttributeError):
        return 0


def make_worker(store, config: WorkerConfig | None = None, log=print) -> "Worker":
    """The worker ``config.executor`` names: local subprocesses, or tasks on a Ray cluster."""
    config = config or WorkerConfig()
    if config.executor == "ray":
        from modelmill.jobs.ray_executor import RayWorker

        return RayWorker(store, config, log)
    return Worker(store, config, log)


class Worker:
    def __init__(self, store, config: WorkerConfig | None = None, log=print):
        from modelmill.jobs.queue import JobQueue

        self.store = store
        self.config = config or WorkerConfig()
        self.queue = JobQueue(store)
        self.resources = self._offer()
        self.running: dict[str, tuple[subprocess.Popen, dict]] = {}  # job id -> (runner, resources)
        self.started: dict[str, float] = {}  # job id -> when its runner started (monotonic)
        self.attempts: dict[str, int] = {}  # job id -> the attempt its runner runs (the fence)
        self.timed_out: set[str] = set()  # jobs stopped for running past --job-timeout
        self.stopping = False
        self.log = log
        self.id = self.queue.register_worker(self.resources)
        self._beat_stop = threading.Event()
        self._beater: threading.Thread | None = None

    def _offer(self) -> dict:
        """The CPU slots and GPUs this worker offers."""
        from modelmill.jobs.kinds import _gpu_count

        return {"cpu": self.config.cpu_slots, "gpu": _gpu_count() if self.config.gpus == -1 else self.config.gpus,
                "memory": _memory_gib()}

    # -- the lease: beats from a thread of their own

    def start_heartbeat(self) -> None:
        self._beat_stop.clear()
        self._beater = threading.Thread(target=self._beat_loop, name="modelmill-heartbeat", daemon=True)
        self._beater.start()

    def stop_heartbeat(self) -> None:
        self._beat_stop.set()
        if self._beater is not None:
            self._beater.join(timeout=10)

    def _beat_loop(self) -> None:
        from modelmill.jobs.queue import JobQueue

        queue = JobQueue(self.store)  # its own sessions; nothing shared with the loop but the pool
        while not self._beat_stop.is_set():
            try:
                queue.heartbeat(self.id, list(self.running))
            except Exception as e:  # noqa: BLE001 - busy or away for a moment: the next beat tries again
                self.log(f"worker {self.id}: heartbeat failed ({type(e).__name__}: {e}); retrying")
            self._beat_stop.wait(self.config.poll)

    def free(self) -> dict:
        used = {k: 0 for k in self.resources}
        for _, need in self.running.values():
            for k in used:
                used[k] += need.get(k, 0)
        return {k: self.resources[k] - used[k] for k in self.resources}

    def _start_runner(self, job):
        """Start the job's runner: a subprocess here (the Ray executor starts it on a node). What it
        returns is polled, signalled and killed like a ``subprocess.Popen``; a ``pid`` of None is none
        on this host, a ``failure`` (code, message, param) fails the job with that error and a ``lost``
        says why a killed one was killed."""
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return subprocess.Popen([sys.executable, "-m", "modelmill.jobs.runner", job.id, self.id, str(job.attempts)],
                                env=env, stdin=subprocess.DEVNULL)

    def _spawn(self, job) -> None:
        proc = self._start_runner(job)
        self.running[job.id] = (proc, job.resources or {})
        self.attempts[job.id] = job.attempts
        self.started[job.id] = time.monotonic()
        if proc.pid is not None:
            self.queue.set_pid(job.id, proc.pid)
        where = f"pid {proc.pid}" if proc.pid is not None else "a Ray task"
        self.log(f"worker {self.id}: started {job.kind} job {job.id} (attempt {job.attempts}, {where})")

    def _reap(self) -> None:
        from modelmill.jobs.queue import FINISHED, held_by
        from modelmill.jobs.runner import KILLED, REQUEUE

        for job_id, (proc, _) in list(self.running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            attempt = self.attempts.pop(job_id, None)
            del self.running[job_id]
            self.started.pop(job_id, None)
            timed_out = job_id in self.timed_out
            self.timed_out.discard(job_id)
            job = self.queue.get(job_id)
            if job.status not in FINISHED and held_by(job, self.id, attempt):
                if job.cancel_requested:  # stopped by its cancel before it could say so itself
                    self.queue.event(job_id, "The job was cancelled", level="warn")
                    if self.queue.finish(job_id, "cancelled", worker_id=self.id, attempt=attempt):
                        self.queue.drop_run(job)
                elif timed_out:
                    msg = f"the job ran longer than this worker's --job-timeout ({self.config.job_timeout:g} s)"
                    name = (job.spec or {}).get("name") if job.kind == "train" else None
                    if name and (self.store.runs_dir / name / "checkpoints").is_dir():
                        msg += f"; its checkpoints are kept: `modelmill train --name {name} --resume` continues it"
                    self.queue.event(job_id, f"The job failed: {msg}", level="error")
                    self.queue.finish(job_id, "failed", error={"code": "timeout", "message": msg, "param": None},
                                      worker_id=self.id, attempt=attempt)
                elif getattr(proc, "failure", None):  # it could not run there (a Ray node without the store)
                    code, msg, param = proc.failure
                    self.queue.event(job_id, f"The job failed: {msg}", level="error")
                    self.queue.finish(job_id, "failed", error={"code": code, "message": msg, "param": param},
                                      worker_id=self.id, attempt=attempt)
                elif (rc < 0 or rc == KILLED) and not self.stopping and job.attempts < self.config.max_attempts:
                    # killed from outside (runner or trainer): resumes from its checkpoint, a bounded number of times
                    how = getattr(proc, "lost", None) or (f"signal {-rc}" if rc < 0 else "its trainer was killed")
                    self._give_back(job, f"Attempt {job.attempts} was killed ({how}); re-queued, attempt "
                                         f"{job.attempts + 1} of at most {self.config.max_attempts} resumes from the "
                                         "last checkpoint")
                elif self.stopping or rc == REQUEUE:  # stopped on purpose: back in the queue, resumes from its checkpoint
                    self._give_back(job, f"Worker {self.id} stopped the job; re-queued")
                else:
                    msg = f"the job's process exited with code {rc} without a result (see jobs/{job_id}/job.log)"
                    self.queue.event(job_id, f"The job failed: {msg}", level="error")
                    self.queue.finish(job_id, "failed", error={"code": "runner_died", "message": msg, "param": None},
                                      worker_id=self.id, attempt=attempt)
            self.log(f"worker {self.id}: job {job_id} left with exit code {rc}")

    def _give_back(self, job, message: str) -> None:
        """Put our job back in the queue, saying ``message``; a job with a recorded cancel ends cancelled."""
        now = self.queue.requeue(job.id, self.id)
        if now == "cancelled":
            self.queue.event(job.id, "The job was cancelled", level="warn")
            self.queue.drop_run(job)
        elif now:
            self.queue.event(job.id, message, level="warn")

    def _cancels(self) -> None:
        """Stop runners whose job was cancelled, or is no longer this worker's (re-queued while we
        were paused): SIGTERM first (the trainer checkpoints), SIGKILL if it is still there 60 s later."""
        from modelmill.jobs.queue import held_by

        limit = self.config.job_timeout
        for job_id, (proc, _) in self.running.items():
            job = self.queue.get(job_id)
            lost = job.status != "running" or not held_by(job, self.id, self.attempts.get(job_id))
            if limit and job_id not in self.timed_out and time.monotonic() - self.started.get(job_id, 0.0) > limit \
                    and not (job.cancel_requested or lost) and proc.poll() is None:
                self.timed_out.add(job_id)
                self.queue.event(job_id, f"Running for more than --job-timeout ({limit:g} s): stopping the job",
                                 level="warn")
            if not (job.cancel_requested or lost or job_id in self.timed_out) or proc.poll() is not None:
                continue
            sent = getattr(proc, "_mm_stop_sent", None)
            if sent is None:
                if lost and job.status in ("queued", "running"):  # not one that just finished as it left
                    self.log(f"worker {self.id}: job {job_id} was re-queued elsewhere; stopping our copy")
                proc.send_signal(signal.SIGTERM)
                proc._mm_stop_sent = time.monotonic()
            elif time.monotonic() - sent > 60:
                proc.kill()

    def step(self) -> None:
        if self._beater is None:  # stepped by hand (tests): the beat comes with the step
            self.queue.heartbeat(self.id, list(self.running))
        self._reap()
        for job_id in self.queue.requeue_stale(self.config.stale_after):
            self.log(f"worker {self.id}: re-queued {job_id} (its worker stopped heartbeating)")
        self.queue.sweep_validating()
        self._cancels()
        while not self.stopping:
            # not a job whose earlier copy we are still stopping: it waits for that copy to leave
            job = self.queue.claim(self.id, self.free(), exclude=list(self.running))
            if job is None:
                break
            self._spawn(job)

    def run(self) -> None:
        def _stop(signum, frame):
            self.stopping = True

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        self.log(f"worker {self.id}: offering {self.resources}; polling the queue every {self.config.poll}s")
        self.start_heartbeat()
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
                self._reap()
                time.sleep(0.2)
        finally:
            self.stop_heartbeat()
            self.queue.stop_worker(self.id)
            self.log(f"worker {self.id}: stopped")
