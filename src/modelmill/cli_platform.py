"""The platform commands: up, worker, keys, jobs.

    modelmill up                          # API + serving + web UI on http://127.0.0.1:8000, and one worker
    modelmill worker --cpu-slots 2        # a worker on its own, sharing the database and MODELMILL_HOME
    modelmill worker --executor ray --ray-address HEAD:6379   # jobs run on a Ray cluster's nodes
    modelmill keys create ci --scope train --scope infer
    modelmill jobs list
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import click

from modelmill.cli import _store, _table, build_config, dataclass_options, main
from modelmill.jobs.worker import WorkerConfig
from modelmill.serve.router import ServeConfig


def _check_host(config: ServeConfig, store) -> ServeConfig:
    """With no key to protect it, the server listens on localhost only, and says so."""
    from dataclasses import replace

    from modelmill.api.auth import LOCAL_HOSTS, local_only

    if local_only(store, config):
        if config.host not in LOCAL_HOSTS:
            click.echo(f"modelmill: no API key exists, so the server listens on 127.0.0.1 only, not {config.host}. "
                       "Create a key with `modelmill keys create NAME --scope admin` to listen there.", err=True)
            config = replace(config, host="127.0.0.1")
        else:
            click.echo("modelmill: no API keys: open to this machine only (create one with `modelmill keys create`)",
                       err=True)
    return config


def _worker_argv(wcfg: WorkerConfig) -> list[str]:
    return [sys.executable, "-m", "modelmill.cli", "worker", "--cpu-slots", str(wcfg.cpu_slots),
            "--gpus", str(wcfg.gpus), "--poll", str(wcfg.poll), "--stale-after", str(wcfg.stale_after),
            "--job-timeout", str(wcfg.job_timeout), "--max-attempts", str(wcfg.max_attempts),
            "--executor", wcfg.executor] + (["--ray-address", wcfg.ray_address] if wcfg.ray_address else [])


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM (a clean stop) when `up` goes, however it goes.

    uvicorn ends a SIGTERM'd server by raising the signal again, so `up` can die without running
    its own clean-up; the kernel's parent-death signal still reaches the workers (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Supervisor:
    """Keeps ``n`` worker processes alive: one that dies (even by SIGKILL) is started again."""

    def __init__(self, n: int, wcfg: WorkerConfig):
        self.argv = _worker_argv(wcfg)
        self.procs: list[subprocess.Popen] = []
        self.n = n
        self.stopping = threading.Event()

    def start(self) -> None:
        # their own sessions: Ctrl-C reaches `up` alone, which then stops them in order
        self.procs = [self._spawn() for _ in range(self.n)]
        threading.Thread(target=self._watch, daemon=True).start()

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(self.argv, start_new_session=True, preexec_fn=_die_with_parent)

    def _watch(self) -> None:
        while not self.stopping.wait(1.0):
            for i, p in enumerate(self.procs):
                if p.poll() is not None and not self.stopping.is_set():
                    click.echo(f"modelmill: worker pid {p.pid} exited ({p.returncode}); starting another", err=True)
                    self.procs[i] = self._spawn()

    def stop(self) -> None:
        self.stopping.set()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=150)
            except subprocess.TimeoutExpired:
                p.kill()


@main.command("up")
@dataclass_options(ServeConfig)
@dataclass_options(WorkerConfig)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(0, 64),
              help="Worker processes to start beside the server (0: jobs wait for `modelmill worker`).")
@click.option("--config", "config_file", default=None, help="YAML file with the server settings (flags win).")
def up_cmd(workers, config_file, **flags):
    """Start the platform: the API (OpenAI-compatible and native), the web UI and workers.

    \b
      modelmill up                 # then open http://127.0.0.1:8000
      modelmill up --workers 2 --host 0.0.0.0     # needs an API key (`modelmill keys create`)
    """
    from modelmill.api.app import serve
    from modelmill.serve.router import check_engine

    wnames = {f for f in WorkerConfig.__dataclass_fields__}
    wcfg = WorkerConfig(**{k: v for k, v in flags.items() if k in wnames and v is not None})
    config = build_config(ServeConfig, {k: v for k, v in flags.items() if k not in wnames}, config_file)
    check_engine(config.engine)
    if wcfg.executor == "ray" and workers:
        from modelmill.jobs.ray_executor import reachable

        reachable(wcfg.ray_address)
    store = _store()
    config = _check_host(config, store)
    sup = _Supervisor(workers, wcfg)
    sup.start()
    click.echo(f"modelmill: web UI and API on http://{config.host}:{config.port}/ ({workers} worker(s)); "
               "Ctrl-C stops", err=True)
    try:
        serve(config, store)
    finally:
        sup.stop()


@main.command("worker")
@dataclass_options(WorkerConfig)
def worker_cmd(**flags):
    """Run queued jobs (train, eval, grid) in subprocesses, as many at once as the slots allow.

    Point several at the same database (MODELMILL_DATABASE_URL) and MODELMILL_HOME to share the work.
    """
    from modelmill.jobs.worker import make_worker

    cfg = build_config(WorkerConfig, flags, None)
    make_worker(_store(), cfg, log=lambda m: click.echo(m, err=True)).run()


# ----------------------------------------------------------------------------- keys

@main.group("keys")
def keys():
    """API keys: `create` prints a key once; only its hash is stored."""


@keys.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(["admin", "train", "infer"]),
              help="What the key may do (repeat): infer, train, admin.")
@click.option("--model", "models", multiple=True, help="Limit the key to these models/adapters (repeat).")
def keys_create(name, scopes, models):
    from modelmill.api.auth import Keys

    row, key = Keys(_store()).create(name, list(scopes), list(models) or None)
    click.echo(key)
    click.echo(f"key '{row.name}' ({', '.join(row.scopes)}"
               + (f"; models: {', '.join(row.models)}" if row.models else "") + "). It is shown only this once: "
               "store it now.", err=True)


@keys.command("list")
def keys_list():
    from modelmill.api.auth import Keys

    rows = Keys(_store()).list()
    _table([[k.name, k.prefix + "...", ",".join(k.scopes), ",".join(k.models or []) or "all",
             k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else "never"] for k in rows],
           ["NAME", "KEY", "SCOPES", "MODELS", "LAST USED"])


@keys.command("revoke")
@click.argument("name")
def keys_revoke(name):
    from modelmill.api.auth import Keys

    Keys(_store()).revoke(name)
    click.echo(f"revoked key '{name}'")


# ----------------------------------------------------------------------------- jobs

@main.group("jobs")
def jobs():
    """The job queue: list, show with events, cancel."""


@jobs.command("list")
@click.option("--status", default=None, help="Only jobs in this state.")
def jobs_list(status):
    from modelmill.jobs.queue import JobQueue

    rows = JobQueue(_store()).list(status=status)
    _table([[j.id, j.kind, j.status, (j.spec or {}).get("name") or "", str(j.attempts),
             f"{(j.result or {}).get('progress', {}).get('step', '-')}/{(j.result or {}).get('progress', {}).get('max_steps', '-')}",
             j.created_at.strftime("%Y-%m-%d %H:%M")] for j in rows],
           ["ID", "KIND", "STATUS", "NAME", "ATTEMPTS", "STEP", "CREATED"])


@jobs.command("show")
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the job finishes.")
def jobs_show(job_id, follow):
    from modelmill.jobs.queue import FINISHED, JobQueue

    q = JobQueue(_store())
    job = q.get(job_id)
    click.echo(json.dumps({"id": job.id, "kind": job.kind, "status": job.status, "spec": job.spec,
                           "fine_tuned_model": job.fine_tuned_model, "error": job.error}, indent=2, default=str))
    last = None
    while True:
        # the state first, then every event: a job's last events are written before it finishes,
        # so once it has finished, this drain holds them all
        finished = not follow or q.get(job_id).status in FINISHED
        for e in q.all_events(job_id, after=last):
            last = e.id
            click.echo(f"{e.created_at:%H:%M:%S} {e.level:5} {e.message}")
        if finished:
            return
        time.sleep(1.0)


@jobs.command("cancel")
@click.argument("job_id")
def jobs_cancel(job_id):
    from modelmill.jobs.queue import JobQueue

    job = JobQueue(_store()).cancel(job_id)
    click.echo(f"{job.id}: {job.status}" + (" (cancel requested)" if job.status == "running" else ""))

