"""Jobs run as Ray work: ``modelmill worker --executor ray --ray-address HOST:PORT``.

The SQL queue stays the source of truth. This worker claims jobs from it as the local one does,
but instead of a subprocess on this host each job's runner (``python -m modelmill.jobs.runner``)
starts on a Ray node that has the CPUs and GPUs the job asks for; Ray picks the node, we write no
scheduler. Everything else is the local worker's: heartbeats, cancels (a Ray cancel, which the
task turns into the runner's SIGTERM: training checkpoints and leaves), timeouts, re-queues.

A node that dies under a job (its raylet killed, the machine gone) fails the Ray task: the job
goes back in the queue like a runner killed from outside, and its next attempt resumes from the
newest checkpoint on whichever node has room. A multi-worker training job (``--num-workers``,
``--num-nodes``) starts its driver on a node with no resources of its own and Ray Train places
the workers (``train/ray_train.py``).

Every node must reach the same store: MODELMILL_HOME at the same path (a shared mount) and the
same database (PostgreSQL; SQLite only while every node is this host). Before a job starts, its
task checks on the node that the home is the platform's (a store id file), is writable, the
database answers and the node's modelmill is the platform's version; each failure is the job's
error, naming the setting and the fix. Ray's usage stats stay off unless a user turns them on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from modelmill.errors import InputError
from modelmill.jobs.worker import Worker

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # our users' clusters never phone home

STORE_ID = ".modelmill-store-id"
PRECHECK = 78  # the task's code for "this node cannot run the job" (its error says why)
LOST = -9  # what a task lost with its node reads as: killed from outside, so re-queued and resumed


def _ray():
    try:
        import ray
    except ImportError:
        raise InputError("Ray is not installed", field="--executor",
                         fix="pip install 'modelmill[ray]' (or `pip install ray[train]`), or use --executor local") \
            from None
    return ray


def connect(address: str):
    """Join the Ray cluster at ``address`` as a driver; a clear error when nobody answers there."""
    if not address:
        raise InputError("no Ray cluster address", field="--ray-address",
                         fix="give the head's HOST:PORT (`ray start --head` prints it; default port 6379)")
    ray = _ray()
    if ray.is_initialized():
        return ray
    reachable(address)
    try:
        ray.init(address=address, namespace="modelmill", logging_level="WARNING", log_to_driver=False,
                 configure_logging=False)
    except (ConnectionError, RuntimeError) as e:
        raise InputError(f"could not join the Ray cluster at {address}: {e}", field="--ray-address",
                         fix="check the address and that the head runs the same Ray version "
                             f"({ray.__version__})") from None
    return ray


def reachable(address: str) -> None:
    """A clear error at once when nothing listens at the head's address (Ray itself retries for a minute)."""
    import socket

    if address and address != "auto":
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
                pass
        except (OSError, ValueError) as e:
            raise InputError(f"no Ray cluster answers at {address} ({e})", field="--ray-address",
                             fix="start the head there (`ray start --head --port PORT --disable-usage-stats`) or "
                                 "give its address as HOST:PORT") from None


def store_id(home: Path) -> str:
    """This store's id (written once into its home): a node that sees another folder at the same
    path (its own disk, not the shared mount) is told so instead of writing somewhere no one reads."""
    path = Path(home) / STORE_ID
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        sid = uuid.uuid4().hex
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(sid, encoding="utf-8")
        os.replace(tmp, path)
        return path.read_text(encoding="utf-8").strip()


def node_check(home: str, database_url: str | None, sid: str, version: str) -> str | None:
    """On the node: why it cannot run a job of this platform, or None."""
    import modelmill

    here = os.uname().nodename
    if modelmill.__version__ != version:
        return (f"node {here} has modelmill {modelmill.__version__}, the platform {version}: install the same "
                f"version on every node (pip install modelmill=={version}) [setting: the nodes' Python environment]")
    path = Path(home)
    try:
        theirs = (path / STORE_ID).read_text(encoding="utf-8").strip()
    except OSError as e:
        return (f"node {here} cannot read the store at MODELMILL_HOME={home} ({type(e).__name__}: {e}): mount the "
                "shared store at the same path on every node (NFS, a cloud file share) [setting: MODELMILL_HOME]")
    if theirs != sid:
        return (f"node {here} has another store at MODELMILL_HOME={home} (a node-local folder, not the shared one): "
                "mount the platform's store at that path on every node [setting: MODELMILL_HOME]")
    probe = path / "jobs" / f".probe-{here}-{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        return (f"node {here} cannot write the store at MODELMILL_HOME={home} ({type(e).__name__}: {e}): give the "
                "nodes' user write access to the shared store [setting: MODELMILL_HOME]")
    if database_url:
        try:
            from sqlalchemy import create_engine, text

            engine = create_engine(database_url, pool_pre_ping=True)
            with engine.connect() as conn:
                conn.execute(text("select 1"))
            engine.dispose()
        except Exception as e:  # noqa: BLE001 - any driver's error: said with the setting to fix
            return (f"node {here} cannot reach the database ({type(e).__name__}: {str(e).splitlines()[0][:300]}): "
                    "every node needs the platform's database [setting: MODELMILL_DATABASE_URL]")
    return None


def run_on_node(job_id: str, worker_id: str, attempt: int, env: dict, sid: str, version: str) -> dict:
    """The Ray task: check this node, then run the job's runner in a subprocess until it leaves.
    A Ray cancel lands here as KeyboardInterrupt and becomes the runner's SIGTERM (a second one,
    or 60 s without an exit, its SIGKILL)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    where = f"{os.uname().nodename} (Ray node {node[:12]})"
    why = node_check(env["MODELMILL_HOME"], env.get("MODELMILL_DATABASE_URL"), sid, version)
    if why:
        return {"rc": PRECHECK, "error": why}
    child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "MODELMILL_RAY_NODE": where}
    proc = subprocess.Popen([sys.executable, "-m", "modelmill.jobs.runner", job_id, worker_id, str(attempt)],
                            env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    stopped = None
    while True:
        try:
            while proc.poll() is None:
                time.sleep(0.2)
                if stopped is not None and time.monotonic() - stopped > 60:
                    proc.kill()
            return {"rc": proc.returncode}
        except KeyboardInterrupt:  # ray.cancel: stop the runner the way the local worker does
            if stopped is None:
                proc.send_signal(signal.SIGTERM)
                stopped = time.monotonic()
            else:
                proc.kill()


class RayProc:
    """A job's Ray task seen through the calls the worker makes on a runner process (``Worker._start_runner``)."""

    pid = None  # none on this host

    def __init__(self, ray, ref):
        self.ray, self.ref = ray, ref
        self.returncode: int | None = None
        self.failure: tuple[str, str, str | None] | None = None  # the node could not run the job: why
        self.lost: str | None = None  # the task died with its node or worker process: how

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        ready, _ = self.ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            out = self.ray.get(self.ref)
            self.returncode = out["rc"]
            if self.returncode == PRECHECK:
                why = out["error"]
                setting = why.rsplit("[setting: ", 1)[-1].rstrip("]") if "[setting: " in why else None
                self.failure = ("node_cannot_run", why, setting)
        except self.ray.exceptions.TaskCancelledError:
            self.returncode = -signal.SIGTERM
        except self.ray.exceptions.RayError as e:  # the node or its worker process died under the job
            self.returncode = LOST
            self.lost = f"its Ray task was lost: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
        return self.returncode

    def send_signal(self, sig) -> None:
        self.ray.cancel(self.ref, force=False)

    def kill(self) -> None:
        self.ray.cancel(self.ref, force=True)


def task_options(job) -> dict:
    """The Ray resources a job's task holds: what the job asks for, except a multi-worker training
    job's driver, which holds none (Ray Train's workers hold them) and a grid that fans out."""
    from modelmill.jobs.kinds import get_kind

    need = dict(job.resources or {})
    cfg = get_kind(job.kind).config(job.spec)
    memory = {"memory": need["memory"] * 2**30} if need.get("memory") else {}
    if getattr(cfg, "ray_workers", 0):
        return {"num_cpus": 0, "num_gpus": 0}
    return {"num_cpus": need.get("cpu", 1), "num_gpus": need.get("gpu", 0), **memory}


class RayWorker(Worker):
    """The worker whose jobs run on a Ray cluster; its resources are the cluster's."""

    def __init__(self, store, config=None, log=print):
        import modelmill

        self.ray = connect(config.ray_address)
        self._sid = store_id(store.home)
        self._version = modelmill.__version__
        self._warned: set[str] = set()
        self._task = self.ray.remote(max_retries=0)(run_on_node)
        _check_database(store, self.ray)
        super().__init__(store, config, log)

    def _offer(self) -> dict:
        return self._cluster()  # the whole cluster's; re-read at every claim (nodes come and go)

    def _cluster(self) -> dict:
        total = self.ray.cluster_resources()
        return {"cpu": int(total.get("CPU", 0)), "gpu": int(total.get("GPU", 0)),
                "memory": int(total.get("memory", 0) / 2**30)}

    def free(self) -> dict:
        self.resources = self._cluster()
        return super().free()

    def _start_runner(self, job) -> RayProc:
        from modelmill.config import get_settings

        s = get_settings()
        env = {"MODELMILL_HOME": str(self.store.home), "MODELMILL_RAY_ADDRESS": self.config.ray_address}
        if s.database_url:
            env["MODELMILL_DATABASE_URL"] = s.database_url
        ref = self._task.options(name=f"modelmill-job-{job.id}", **task_options(job)).remote(
            job.id, self.id, job.attempts, env, self._sid, self._version)
        return RayProc(self.ray, ref)

    def step(self) -> None:
        super().step()
        self._explain_waiting()

    def _explain_waiting(self) -> None:
        """A queued job that asks for more than the whole cluster has says so, once: it waits (nodes may
        join) instead of hanging without a word."""
        from sqlalchemy import select

        from modelmill.store.tables import Job

        total = self.resources  # the cluster's, as read for this step's claims
        with self.store.session() as s:
            queued = list(s.scalars(select(Job).where(Job.status == "queued").limit(200)))
        for job in queued:
            need = job.resources or {}
            short = {r: (n, total.get(r, 0)) for r, n in need.items() if n > total.get(r, 0)}
            if short and job.id not in self._warned:
                self._warned.add(job.id)
                unit = {"cpu": "CPUs", "gpu": "GPUs", "memory": "GiB of memory"}
                what = ", ".join(f"{n} {unit.get(r, r)} (the cluster has {t})" for r, (n, t) in short.items())
                self.queue.event(job.id, f"Waiting: the job asks for {what} on the Ray cluster at "
                                         f"{self.config.ray_address}; it starts when nodes with them join (add "
                                         "nodes, or cancel it and ask for less: --gpus-per-node, --num-workers, "
                                         "resources)",
                                 level="warn", data={"waiting_for": {r: n for r, (n, _) in short.items()}})


def _check_database(store, ray) -> None:
    """SQLite works only while every node is this host: a cluster of several hosts needs a database they all reach."""
    if not str(store.engine.url).startswith("sqlite"):
        return
    import socket

    here = {"127.0.0.1", "localhost"}
    try:
        here |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    here.add(ray.util.get_node_ip_address())
    others = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")} - here)
    if others:
        raise InputError(f"the metadata database is a SQLite file, which the Ray nodes at {', '.join(others)} "
                         "cannot share", field="MODELMILL_DATABASE_URL",
                         fix="point every node at PostgreSQL: MODELMILL_DATABASE_URL=postgresql+psycopg://USER@HOST/DB")
