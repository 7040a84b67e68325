"""The job queue, in the database every process shares.

    q = JobQueue(open_store())
    job = q.submit("train", {"data": "reviews-train", "max_steps": 40})
    q.events(job.id)          # message and metrics events, oldest first
    q.cancel(job.id)

States: ``validating_files -> queued -> running -> succeeded | failed | cancelled``. Workers
claim a queued job with a compare-and-set UPDATE (two workers never get the same job),
heartbeat it while it runs (from a thread of its own, so no work of the worker can delay a beat),
and any worker re-queues a running job whose heartbeat it has seen unchanged for ``stale_after``
seconds: its worker died, and the next attempt resumes from the last checkpoint. Staleness is
timed on the watching worker's own monotonic clock and a heartbeat is only compared with the
previous one for equality, so workers on hosts whose clocks disagree never re-queue a live job or
keep a dead one.

Each attempt is fenced by ``(worker, attempts)``: an attempt whose job was re-queued meanwhile
(a copy that lived on after all) can neither finish the job nor publish its result, and a
recorded cancel wins over every re-queue: the job ends ``cancelled`` instead of running again.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update

from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.store import Store
from modelmill.store.tables import Job, JobEvent, Worker

STATES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
ACTIVE = ("validating_files", "queued", "running")


def now() -> datetime:
    return datetime.now(timezone.utc)


def aware(t: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their zone; they were written in UTC."""
    if t is not None and t.tzinfo is None:
        return t.replace(tzinfo=timezone.utc)
    return t


def new_job_id() -> str:
    return "ftjob-" + uuid.uuid4().hex[:24]


class JobQueue:
    def __init__(self, store: Store):
        self.store = store
        # job id -> (its heartbeat value as last read, when this process first read that value,
        # how many times it has read that value)
        self._beats: dict[str, tuple[datetime | None, float, int]] = {}

    # -- submitting and reading

    def submit(self, kind: str, spec: dict, *, resources: dict | None = None, created_by: str | None = None,
               metadata: dict[str, str] | None = None, **columns) -> Job:
        """Check ``spec`` with the kind's own config and checks, then queue it. ``metadata`` (the
        submitter's labels, e.g. OpenAI's fine-tuning ``metadata``) is kept in the spec under "metadata".

        Bad parameters, unknown names and invalid files raise an error naming the field, and
        nothing of the job is kept.
        """
        from modelmill.jobs.kinds import METADATA, get_kind

        k = get_kind(kind)
        cfg = k.config(spec)  # raises InputError naming the field
        labels = {METADATA: dict(metadata)} if metadata else {}
        # what the caller asked for is checked now; what the kind needs is worked out once the spec is
        # valid (counting GPUs imports torch: seconds on a busy host, not to be spent on a refusal)
        res = check_resources(resources) if resources is not None else {}
        job = Job(id=new_job_id(), kind=kind, status="validating_files", spec={**k.to_spec(cfg), **labels},
                  resources=res, attempts=0, cancel_requested=False, result={}, created_by=created_by, **columns)
        with self.store.session() as s:
            s.add(job)
        try:
            self.event(job.id, f"Created {kind} job {job.id}")
            cfg, extra = k.validate(self.store, cfg, job)
            with self.store.session() as s:
                row = s.get(Job, job.id)
                row.spec = {**k.to_spec(cfg), **labels}
                if resources is None:
                    row.resources = k.resources(cfg)
                for key, value in extra.items():
                    setattr(row, key, value)
                if row.status == "validating_files":  # not cancelled meanwhile
                    row.status = "queued"
            self.event(job.id, "Validated; queued")
        except BaseException:
            try:
                self._delete(job.id)  # refused at the door: nothing of it stays behind
            except Exception:  # noqa: BLE001 - the database is away: sweep_validating() ends it later
                pass
            raise
        return self.get(job.id)

    def _delete(self, job_id: str) -> None:
        from sqlalchemy import delete

        with self.store.session() as s:
            s.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
            s.execute(delete(Job).where(Job.id == job_id))

    def get(self, job_id: str) -> Job:
        with self.store.session() as s:
            job = s.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job '{job_id}'", field="job_id", fix="list jobs with GET /api/jobs")
        return job

    def list(self, *, status: str | None = None, kind: str | None = None, limit: int = 100,
             after: str | None = None) -> list[Job]:
        q = select(Job).order_by(Job.created_at.desc(), Job.id.desc())
        if status:
            q = q.where(Job.status == status)
        if kind:
            q = q.where(Job.kind == kind)
        if after:
            ref = self.get(after)
            q = q.where(Job.created_at < ref.created_at)
        with self.store.session() as s:
            return list(s.scalars(q.limit(limit)))

    def find_active(self, **where) -> list[Job]:
        q = select(Job).where(Job.status.in_(ACTIVE))
        for k, v in where.items():
            q = q.where(getattr(Job, k) == v)
        with self.store.session() as s:
            return list(s.scalars(q))

    # -- events

    def event(self, job_id: str, message: str, *, level: str = "info", type: str = "message",
              data: dict | None = None) -> None:
        with self.store.session() as s:
            s.add(JobEvent(job_id=job_id, message=message, level=level, type=type, data=data))

    def events(self, job_id: str, *, after: int | None = None, limit: int = 1000, type: str | None = None,
               newest_first: bool = False) -> list[JobEvent]:
        q = select(JobEvent).where(JobEvent.job_id == job_id)
        if after is not None:
            q = q.where(JobEvent.id < after) if newest_first else q.where(JobEvent.id > after)
        if type:
            q = q.where(JobEvent.type == type)
        q = q.order_by(JobEvent.id.desc() if newest_first else JobEvent.id)
        with self.store.session() as s:
            return list(s.scalars(q.limit(limit)))

    def all_events(self, job_id: str, *, after: int | None = None, type: str | None = None,
                   page: int = 1000) -> Iterator[JobEvent]:
        """Every event after ``after``, oldest first, however many: ``events`` a page at a time
        until a page comes back empty (one page holds ``page`` events)."""
        while True:
            rows = self.events(job_id, after=after, limit=page, type=type)
            if not rows:
                return
            yield from rows
            after = rows[-1].id

    # -- state changes

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once; a running one when its worker has stopped it."""
        job = self.get(job_id)
        if job.status in FINISHED:
            raise ConflictError(f"job {job_id} has already {job.status}", field="job_id",
                                fix="only a job that is validating, queued or running can be cancelled")
        from sqlalchemy import case

        # one statement: a job re-queued by a worker's death between two updates cannot slip through
        with self.store.session() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE)).values(
                cancel_requested=True,
                status=case((Job.status == "running", Job.status), else_="cancelled"),
                finished_at=case((Job.status == "running", Job.finished_at), else_=now())))
        job = self.get(job_id)
        self.event(job_id, "Cancelled" if job.status == "cancelled" else "Cancel requested; stopping the run",
                   level="warn")
        return job

    def claim(self, worker_id: str, free: dict, exclude=()) -> Job | None:
        """Take the oldest queued job that fits in ``free`` resources and is not in ``exclude`` (jobs
        whose earlier copy this worker is still stopping); None when there is none."""
        q = select(Job).where(Job.status == "queued", Job.cancel_requested.is_(False))
        if exclude:
            q = q.where(Job.id.not_in(list(exclude)))
        with self.store.session() as s:
            queued = list(s.scalars(q.order_by(Job.created_at).limit(200)))
        for job in queued:
            need = job.resources or {}
            if any(need.get(r, 0) > free.get(r, 0) for r in need):
                continue
            beat = now()
            with self.store.session() as s:
                # a cancel recorded since the read above wins: the job is not started
                n = s.execute(update(Job).where(Job.id == job.id, Job.status == "queued",
                                                Job.cancel_requested.is_(False))
                              .values(status="running", worker=worker_id, attempts=Job.attempts + 1,
                                      heartbeat_at=beat, started_at=job.started_at or beat)).rowcount
                if n:
                    # read in the claiming transaction: a database busy for a moment after the
                    # UPDATE cannot leave a job marked running that no runner was started for
                    return s.get(Job, job.id, populate_existing=True)
        return None

    def owns(self, job_id: str, worker_id: str | None, attempt: int | None) -> bool:
        """Whether this attempt (``worker_id``, ``attempt``) still holds the job: it is running on
        that worker at that attempt, and no cancel is recorded. A copy that lost its job to a
        re-queue, or was cancelled, must not publish or finish anything."""
        with self.store.session() as s:
            row = s.get(Job, job_id)
        return row is not None and row.status == "running" and not row.cancel_requested \
            and held_by(row, worker_id, attempt)

    def set_pid(self, job_id: str, pid: int) -> None:
        with self.store.session() as s:
            s.execute(update(Job).where(Job.id == job_id).values(pid=pid))

    def heartbeat(self, worker_id: str, job_ids: list[str]) -> None:
        t = now()
        with self.store.session() as s:
            s.execute(update(Worker).where(Worker.id == worker_id).values(heartbeat_at=t, status="alive"))
            if job_ids:
                s.execute(update(Job).where(Job.id.in_(job_ids), Job.worker == worker_id).values(heartbeat_at=t))

    def progress(self, job_id: str, progress: dict) -> None:
        with self.store.session() as s:
            row = s.get(Job, job_id)
            if row is not None:
                row.result = {**(row.result or {}), "progress": progress}

    def finish(self, job_id: str, status: str, *, result: dict | None = None, error: dict | None = None,
               worker_id: str | None = None, attempt: int | None = None, **columns) -> bool:
        """Set a final state; False when the job is no longer this attempt's (it was re-queued,
        and maybe claimed again: ``attempt`` fences an earlier attempt off from a later one)."""
        assert status in FINISHED
        with self.store.session() as s:
            row = s.get(Job, job_id)
            if row is None or row.status in FINISHED or not held_by(row, worker_id, attempt):
                return False
            row.status = status
            row.finished_at = now()
            if result is not None:
                row.result = {**(row.result or {}), **result}
            if error is not None:
                row.error = error
            for k, v in columns.items():
                setattr(row, k, v)
        return True

    def requeue_stale(self, stale_after: float, min_looks: int = 3) -> list[str]:
        """Put back in the queue every running job whose worker stopped heartbeating: whose
        heartbeat this queue object has read unchanged for ``stale_after`` seconds (of its own
        clock; a fresh watcher waits that long before it judges anything) and in at least
        ``min_looks`` reads. The second condition keeps a watcher that was itself stalled (a
        loaded host, a paused VM) from judging on its first look after the pause: the workers it
        watches were stalled with it, and their next beat is one poll away."""
        t = time.monotonic()
        with self.store.session() as s:
            running = list(s.scalars(select(Job).where(Job.status == "running")))
        beats, stale = {}, []
        for j in running:
            seen = self._beats.get(j.id)
            if seen is None or seen[0] != j.heartbeat_at:
                seen = (j.heartbeat_at, t, 1)  # a new beat (or a new job): its clock starts now
            else:
                seen = (seen[0], seen[1], seen[2] + 1)
                if t - seen[1] >= stale_after and seen[2] >= min_looks:
                    stale.append(j)
            beats[j.id] = seen
        self._beats = beats
        back = []
        for job in stale:
            worker = job.worker  # as read above: the UPDATE below clears it
            with self.store.session() as s:
                n = s.execute(update(Job).where(Job.id == job.id, Job.status == "running",
                                                Job.heartbeat_at == job.heartbeat_at)
                              .values(worker=None, pid=None, **requeue_values())).rowcount
                if n and worker is not None:  # a job that beat meanwhile says nothing of its worker
                    s.execute(update(Worker).where(Worker.id == worker).values(status="lost"))
            if not n:
                continue
            job = self.get(job.id)
            if job.status == "cancelled":
                self.event(job.id, f"Worker {worker} stopped heartbeating; the job was cancelled", level="warn")
                self.drop_run(job)
            else:
                back.append(job.id)
                self.event(job.id, f"Worker {worker} stopped heartbeating for {stale_after:.0f}s; job re-queued "
                                   f"(attempt {job.attempts + 1} resumes from its last checkpoint)", level="warn")
        return back

    def requeue(self, job_id: str, worker_id: str) -> str | None:
        """This worker gives its running job back (it stopped it on purpose): queued again, or
        cancelled when a cancel is recorded. The new status, or None when it was not ours."""
        with self.store.session() as s:
            n = s.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.worker == worker_id)
                          .values(worker=None, pid=None, **requeue_values())).rowcount
        return self.get(job_id).status if n else None

    def drop_run(self, job: Job) -> None:
        """A cancelled training job's run folder (its checkpoints) goes: the name is free again."""
        if job.kind == "train" and (job.spec or {}).get("name"):
            self.store.remove_tree(self.store.runs_dir / job.spec["name"])

    def sweep_validating(self, older_than: float = 600.0) -> None:
        """Jobs left in validating_files by an API process that died mid-submission: gone."""
        cutoff = now() - timedelta(seconds=older_than)
        with self.store.session() as s:
            old = [j.id for j in s.scalars(select(Job).where(Job.status == "validating_files"))
                   if aware(j.created_at) < cutoff]
        for job_id in old:
            self._delete(job_id)

    # -- workers

    def register_worker(self, resources: dict) -> str:
        import os

        wid = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        with self.store.session() as s:
            s.add(Worker(id=wid, host=socket.gethostname(), pid=os.getpid(), resources=resources))
        return wid

    def stop_worker(self, worker_id: str) -> None:
        with self.store.session() as s:
            s.execute(update(Worker).where(Worker.id == worker_id).values(status="stopped"))

    def workers(self) -> list[Worker]:
        with self.store.session() as s:
            return list(s.scalars(select(Worker).order_by(Worker.started_at.desc())))


def held_by(job: Job, worker_id: str | None, attempt: int | None) -> bool:
    """Whether ``job`` (a row as read) is this attempt's: on worker ``worker_id`` at attempt
    ``attempt`` (None: any). The fence every finish, publish and stop decision goes through."""
    return (worker_id is None or job.worker == worker_id) and (attempt is None or job.attempts == attempt)


def requeue_values() -> dict:
    """The columns of a running job put back: queued, or cancelled when a cancel is recorded,
    decided by the database in the same UPDATE, so a cancel that lands meanwhile is never lost."""
    from sqlalchemy import case

    cancelled = Job.cancel_requested.is_(True)
    return dict(status=case((cancelled, "cancelled"), else_="queued"),
                finished_at=case((cancelled, now()), else_=None))


def check_resources(res: dict) -> dict:
    if not isinstance(res, dict):
        raise InputError("must be an object like {\"cpu\": 1, \"gpu\": 0}", field="resources")
    out = {}
    for k, v in res.items():
        if k not in ("cpu", "gpu", "memory"):
            raise InputError(f"unknown resource '{k}'", field="resources", fix="use cpu, gpu and memory (GiB)")
        top = 65536 if k == "memory" else 64
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= top:
            raise InputError(f"{k} must be a whole number from 0 to {top}, got {v!r}", field="resources")
        out[k] = v
    return out
