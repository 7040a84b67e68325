"""A job's lease on a busy host: live jobs are never judged stale, a recorded cancel wins over
every re-queue, and an attempt that lost its job neither finishes it nor publishes anything.

These drive the queue and a worker in this process (the worker's loop made slow on purpose, at
our own seam), with real subprocesses standing in for runners; test_platform.py covers the
same paths end to end with real workers and training."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from modelmill.jobs.queue import JobQueue, now
from modelmill.store import open_store
from modelmill.store.tables import Job


def _running_job(store, job_id: str, worker: str, attempts: int = 1, kind: str = "eval") -> None:
    with store.session() as s:
        s.add(Job(id=job_id, kind=kind, status="running", spec={}, worker=worker, attempts=attempts,
                  heartbeat_at=now(), cancel_requested=False, result={}))


@pytest.fixture()
def store(home):
    return open_store()


def test_a_worker_whose_loop_is_stalled_keeps_its_job_while_it_lives(store):
    """The loop of the worker below takes 4 s a step (a database busy for seconds, a slow claim),
    four times --stale-after: the job stays with it, because its lease is renewed by a thread of
    its own. Once that thread stops (the worker is gone), the same watcher re-queues the job and
    the stalled worker stops its copy."""
    from modelmill.jobs.worker import Worker, WorkerConfig

    w = Worker(store, WorkerConfig(poll=0.2, stale_after=1.0), log=lambda *a: None)
    _running_job(store, "ftjob-busy", w.id)
    runner = subprocess.Popen(["sleep", "120"])
    w.running["ftjob-busy"] = (runner, {})
    w.attempts["ftjob-busy"] = 1
    slow_cancels = w._cancels

    def stalled():  # the loop's own work takes 4 s
        time.sleep(4.0)
        slow_cancels()

    w._cancels = stalled
    watcher = JobQueue(store)
    requeued: list[str] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            requeued.extend(watcher.requeue_stale(1.0))
            time.sleep(0.1)

    t = threading.Thread(target=watch)
    w.start_heartbeat()
    t.start()
    try:
        for _ in range(2):  # 8 s of a stalled loop
            w.step()
        assert requeued == [], "a live job was judged stale while its worker's loop was busy"
        assert watcher.get("ftjob-busy").status == "running"
        w.stop_heartbeat()  # the worker's lease ends: now the job is stale, and only now
        deadline = time.monotonic() + 30
        while not requeued and time.monotonic() < deadline:
            time.sleep(0.1)
        assert requeued == ["ftjob-busy"]
        w._cancels = slow_cancels
        w.step()  # the stalled worker finds its job gone and stops its copy (SIGTERM)
        assert runner.wait(10) == -15
    finally:
        stop.set()
        t.join()
        w.stop_heartbeat()
        if runner.poll() is None:
            runner.kill()
    job = watcher.get("ftjob-busy")
    assert job.status == "queued" and job.worker is None


def test_a_watcher_that_was_itself_stalled_does_not_judge_on_its_first_look(store):
    """One read before a 1.5 s pause and one after span stale_after, but two looks are not enough:
    the watched worker was paused too, and its next beat is one poll away."""
    _running_job(store, "ftjob-paused", "other-host:1")
    watcher = JobQueue(store)
    assert watcher.requeue_stale(1.0) == []
    time.sleep(1.5)
    assert watcher.requeue_stale(1.0) == []  # second look: not yet
    assert watcher.requeue_stale(1.0) == ["ftjob-paused"]  # third look, still no beat: stale


def test_a_cancel_recorded_while_a_watcher_re_queues_wins(store, monkeypatch):
    """The cancel lands between the watcher's read of the stale job and its UPDATE: the job ends
    cancelled, not queued (where no worker would ever take it, or -- before the claim checked --
    run again to the end)."""
    from sqlalchemy import event

    _running_job(store, "ftjob-race", "gone-host:1")
    watcher, api = JobQueue(store), JobQueue(store)
    for _ in range(2):
        watcher.requeue_stale(0.0)  # two looks; the third (below) acts
    fired = []

    def cancel_first(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE JOBS") and not fired:
            fired.append(1)
            api.cancel("ftjob-race")  # another connection: the API's

    engine = store.engine
    event.listen(engine, "before_cursor_execute", cancel_first)
    try:
        back = watcher.requeue_stale(0.0)
    finally:
        event.remove(engine, "before_cursor_execute", cancel_first)
    assert fired and back == []
    job = api.get("ftjob-race")
    assert job.status == "cancelled" and job.finished_at is not None
    # the worker that was read, not the column the UPDATE cleared ("Worker None ...")
    assert any(e.message == "Worker gone-host:1 stopped heartbeating; the job was cancelled"
               for e in api.events("ftjob-race"))


def test_the_requeue_event_names_the_dead_worker_and_only_a_requeue_marks_it_lost(store, monkeypatch):
    from sqlalchemy import event

    from modelmill.store.tables import Worker

    q = JobQueue(store)
    with store.session() as s:
        s.add(Worker(id="dead-host:1", host="dead-host", pid=1, resources={}))
        s.add(Worker(id="live-host:2", host="live-host", pid=2, resources={}))
    _running_job(store, "ftjob-dead", "dead-host:1", attempts=1)
    for _ in range(2):
        assert q.requeue_stale(0.0) == []
    assert q.requeue_stale(0.0) == ["ftjob-dead"]
    msgs = [e.message for e in q.events("ftjob-dead")]
    assert any(m.startswith("Worker dead-host:1 stopped heartbeating for 0s; job re-queued (attempt 2 ")
               for m in msgs), msgs
    assert not any("None" in m for m in msgs)

    # a beat lands between the watcher's read and its UPDATE: nothing is re-queued, and the
    # worker, alive after all, is not marked lost
    _running_job(store, "ftjob-live", "live-host:2")
    watcher, beater = JobQueue(store), JobQueue(store)
    for _ in range(2):
        watcher.requeue_stale(0.0)
    fired = []

    def beat_first(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE JOBS") and not fired:
            fired.append(1)
            with beater.store.session() as s2:
                s2.get(Job, "ftjob-live").heartbeat_at = now()

    event.listen(store.engine, "before_cursor_execute", beat_first)
    try:
        back = watcher.requeue_stale(0.0)
    finally:
        event.remove(store.engine, "before_cursor_execute", beat_first)
    assert fired and back == []
    assert {w.id: w.status for w in q.workers()} == {"dead-host:1": "lost", "live-host:2": "alive"}
    assert q.get("ftjob-live").status == "running" and q.get("ftjob-live").worker == "live-host:2"


def test_jobs_show_prints_every_event_past_the_first_page(store, cli):
    """1,501 events: the last one (the failure) is shown, with and without --follow."""
    from modelmill.store.tables import JobEvent

    q = JobQueue(store)
    with store.session() as s:
        s.add(Job(id="ftjob-long", kind="train", status="failed", spec={}, resources={}, attempts=1,
                  cancel_requested=False, result={}))
        s.add_all([JobEvent(job_id="ftjob-long", message=f"line {i}", level="info", type="message")
                   for i in range(1500)])
        s.add(JobEvent(job_id="ftjob-long", message="The job failed: CUDA out of memory", level="error",
                       type="message"))
    assert len(q.events("ftjob-long")) == 1000  # one page
    for args in ((), ("-f",)):
        out = cli("jobs", "show", "ftjob-long", *args, timeout=60).stdout.splitlines()
        logged = [line for line in out if " line " in line or "The job failed" in line]
        assert len(logged) == 1501 and logged[-1].endswith("error The job failed: CUDA out of memory"), args
    assert [e.message for e in q.all_events("ftjob-long", page=7)][-2:] == [
        "line 1499", "The job failed: CUDA out of memory"]
    assert len(list(q.all_events("ftjob-long", page=7))) == 1501


def test_a_worker_giving_back_a_cancelled_job_cancels_it(store):
    _running_job(store, "ftjob-back", "w:1")
    q = JobQueue(store)
    q.cancel("ftjob-back")  # running: the cancel is recorded, the worker stops the runner
    assert q.requeue("ftjob-back", "w:1") == "cancelled"
    _running_job(store, "ftjob-back2", "w:1")
    assert q.requeue("ftjob-back2", "w:1") == "queued"
    assert q.requeue("ftjob-back2", "w:1") is None  # no longer that worker's


def test_a_queued_job_cancelled_after_the_claims_read_is_not_started(store, monkeypatch):
    from sqlalchemy import event

    with store.session() as s:
        s.add(Job(id="ftjob-q", kind="eval", status="queued", spec={}, attempts=0, cancel_requested=False,
                  result={}, resources={"cpu": 1}))
    q = JobQueue(store)
    # a cancel request recorded on a queued job as an older API did it (flag only): the claim must refuse it
    fired = []

    def flag_first(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE JOBS") and not fired:
            fired.append(1)
            with store.engine.connect() as c2:
                from sqlalchemy import update

                c2.execute(update(Job).where(Job.id == "ftjob-q").values(cancel_requested=True))
                c2.commit()

    event.listen(store.engine, "before_cursor_execute", flag_first)
    try:
        assert q.claim("w:1", {"cpu": 1, "gpu": 0}) is None
    finally:
        event.remove(store.engine, "before_cursor_execute", flag_first)
    assert fired and q.get("ftjob-q").status == "queued" and q.get("ftjob-q").attempts == 0


def test_an_attempt_that_lost_its_job_cannot_finish_it(store):
    """Attempt 1 lived on after the job was re-queued and claimed again (attempt 2, the same
    worker id even): its finish is refused, and its ownership check says so before any publish."""
    from modelmill.jobs.runner import JobContext, JobLost

    _running_job(store, "ftjob-twice", "w:1", attempts=2)
    q = JobQueue(store)
    assert not q.owns("ftjob-twice", "w:1", 1) and q.owns("ftjob-twice", "w:1", 2)
    assert q.finish("ftjob-twice", "succeeded", worker_id="w:1", attempt=1) is False
    assert q.get("ftjob-twice").status == "running"
    ctx = JobContext(store, q.get("ftjob-twice"), None, store.home / "jobs" / "x", "w:1", 1)
    with pytest.raises(JobLost, match="publishes nothing"):
        ctx.still_ours()
    JobContext(store, q.get("ftjob-twice"), None, store.home / "jobs" / "x", "w:1", 2).still_ours()
    q.cancel("ftjob-twice")  # a recorded cancel: no attempt publishes any more
    assert not q.owns("ftjob-twice", "w:1", 2)
    assert q.finish("ftjob-twice", "succeeded", worker_id="w:1", attempt=2) is True


def test_a_traceback_in_a_jobs_log_is_one_event(store, tmp_path):
    """A stopped run prints KeyboardInterrupt tracebacks from the launcher and the trainer: the
    job's events get one line saying what happened, the frames stay in job.log."""
    from modelmill.jobs.runner import JobContext

    _running_job(store, "ftjob-tb", "w:1")
    q = JobQueue(store)
    job_dir = tmp_path / "jobs" / "ftjob-tb"
    job_dir.mkdir(parents=True)
    frames = "".join(f'  File "/x/y{i}.py", line {i}, in f\n    call_{i}()\n' for i in range(50))
    (job_dir / "job.log").write_text("step 1 done\n" + ("Traceback (most recent call last):\n" + frames
                                                        + "KeyboardInterrupt\n") * 2
                                     + "[rank0]: Traceback (most recent call last):\n[rank0]:   File \"z\"\n"
                                     + "[rank0]: ValueError: bad batch\nafter\n")
    ctx = JobContext(store, q.get("ftjob-tb"), None, job_dir, "w:1", 1)
    ctx.follow_log()
    time.sleep(1.0)
    ctx.stop()
    said = [e.message for e in q.events("ftjob-tb")]
    assert said[0] == "step 1 done" and said[-1] == "after", said
    assert len(said) == 4, said
    assert said[1].startswith("The process was interrupted (KeyboardInterrupt)") and "job.log" in said[1]
    assert said[2].startswith("ValueError: bad batch")


def test_a_runner_killed_from_outside_is_retried_a_bounded_number_of_times(store):
    """SIGKILL of a runner (the out-of-memory killer's way) re-queues its job, whose next attempt
    resumes from the checkpoints; after --max-attempts attempts the job fails instead."""
    from modelmill.jobs.worker import Worker, WorkerConfig

    w = Worker(store, WorkerConfig(poll=0.2, max_attempts=2), log=lambda *a: None)
    q = JobQueue(store)
    for attempt, expect in ((1, "queued"), (2, "failed")):
        with store.session() as s:
            job = s.get(Job, "ftjob-oom")
            if job is None:
                s.add(Job(id="ftjob-oom", kind="eval", status="running", spec={}, worker=w.id, attempts=attempt,
                          heartbeat_at=now(), cancel_requested=False, result={}))
            else:
                job.status, job.worker, job.attempts = "running", w.id, attempt
        killed = subprocess.Popen(["sh", "-c", "kill -9 $$"])
        killed.wait()
        w.running["ftjob-oom"] = (killed, {})
        w.attempts["ftjob-oom"] = attempt
        w._reap()
        assert q.get("ftjob-oom").status == expect
    said = [e.message for e in q.events("ftjob-oom")]
    assert any("was killed (signal 9); re-queued, attempt 2 of at most 2" in m for m in said), said
    assert q.get("ftjob-oom").error["code"] == "runner_died"


def test_a_checkpoint_its_trainer_was_killed_writing_is_not_resumed_from(tmp_path):
    """Found by bench/reliability.py's chaos: SIGKILL while checkpoint-5 was written left it without
    trainer_state.json, and the resumed attempt failed on it. The half-written one goes."""
    from modelmill.train.common import _last_checkpoint

    ckpts = tmp_path / "checkpoints"
    (ckpts / "checkpoint-2").mkdir(parents=True)
    (ckpts / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (ckpts / "checkpoint-4").mkdir()
    (ckpts / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"half")
    assert _last_checkpoint(ckpts) == str(ckpts / "checkpoint-2")
    assert not (ckpts / "checkpoint-4").exists()


def test_a_resumed_training_job_reports_only_what_is_new_after_a_long_first_attempt(store, tmp_path):
    """Attempt 1 reported 1,200 steps, validation at step 1,200 and checkpoint-1200 (over 2,400
    events with its log lines). Attempt 2 re-reads metrics.jsonl from the top: it reports steps
    1,201 to 1,250, their validation and checkpoint-1250 only (it read the first 1,000 events and
    reported 1,000 steps and checkpoint-1200 again)."""
    import json

    from modelmill.jobs.runner import JobContext
    from modelmill.store.tables import JobEvent

    _running_job(store, "ftjob-resumed", "w:1", attempts=2, kind="train")
    with store.session() as s:
        for step in range(1, 1201):
            s.add(JobEvent(job_id="ftjob-resumed", type="metrics", message=f"Step {step}",
                           data={"step": step, "loss": 1.0}))
            s.add(JobEvent(job_id="ftjob-resumed", type="message", message=f"log line {step}"))
            if step % 600 == 0:
                s.add(JobEvent(job_id="ftjob-resumed", type="metrics", message=f"Step {step}: validation",
                               data={"step": step, "valid_loss": 2.0}))
        s.add(JobEvent(job_id="ftjob-resumed", type="message", message="Saved checkpoint at step 1200",
                       data={"checkpoint": "checkpoint-1200", "step": 1200, "metrics": {}}))
        s.add_all([JobEvent(job_id="ftjob-resumed", type="message", message=f"late line {i}") for i in range(50)])
    q = JobQueue(store)
    before = max(e.id for e in q.all_events("ftjob-resumed"))
    run = tmp_path / "run"
    for step in (1200, 1250):
        (run / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        (run / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    rows = [{"step": n, "loss": 0.5, "max_steps": 1250} for n in range(1, 1251)]
    rows += [{"step": n, "eval_loss": 0.4} for n in (600, 1200, 1250)] + [{"step": 1250, "max_steps": 1250}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctx = JobContext(store, q.get("ftjob-resumed"), None, tmp_path / "job", "w:1", 2)
    ctx.watch_training(run)
    ctx.settle_training()
    new = list(q.all_events("ftjob-resumed", after=before))
    steps = [e.data["step"] for e in new if e.type == "metrics" and "valid_loss" not in e.data]
    assert steps == list(range(1201, 1251)), (steps[:3], len(steps))
    assert [e.data["step"] for e in new if e.type == "metrics" and "valid_loss" in e.data] == [1250]
    assert [e.message for e in new if e.type == "message"] == ["Saved checkpoint at step 1250"]
