"""Start a training method in a subprocess through ``accelerate launch``.

One process on one CPU or GPU by default; ``num_processes > 1`` runs data parallel (gloo on
CPU, NCCL on GPUs) through torchrun underneath. DeepSpeed or FSDP are an accelerate config
file away (``accelerate_config``), with no change to the method's code.

The child runs in its own process group. Ctrl-C here is forwarded to that whole group, and
we wait until every process has left: the method saves a checkpoint and exits with 130. SIGTERM
(``kill``, a service manager's stop) does the same where nobody else handles it, and a parent
that dies without a word (SIGKILL) takes its trainer with it: the launcher asks the kernel for a
signal when its parent dies (Linux) and passes it to the group as Ctrl-C, so no orphaned trainer
keeps the cores and gigabytes of a command that is gone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

INTERRUPTED = 130

# Process groups this process has launched and not yet reaped: a job runner whose worker died
# kills these before it leaves, so no orphaned trainer keeps writing the run's checkpoints.
RUNNING: set[int] = set()
# Set by a job runner told to stop (cancel, worker shutdown) before its trainer has started: the
# trainer is then stopped the moment it starts, as if Ctrl-C had come.
STOP = threading.Event()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(module: str, job_path: Path, num_processes: int = 1, use_cuda: bool = False,
                   accelerate_config: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "modelmill.train.accelerate_launch"]
    if accelerate_config:
        cmd += ["--config_file", accelerate_config]
    else:
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if num_processes > 1:
            # torchrun underneath; the trainer picks gloo when it runs on the CPU (use_cpu=True)
            cmd += ["--multi_gpu", "--num_processes", str(num_processes),
                    "--main_process_port", str(_free_port())]
        else:
            cmd += ["--num_processes", "1"]
            if not use_cuda:
                cmd += ["--cpu"]
    return cmd + ["-m", module, str(job_path)]


def launch(module: str, job_path: Path, *, num_processes: int = 1, use_cuda: bool = False,
           log_file: Path | None = None, accelerate_config: str | None = None) -> int:
    """Run the method and return its exit code (0 done, 130 interrupted with a checkpoint)."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # torchrun (num_processes > 1) would catch the group's Ctrl-C and signal its workers a second
    # time, which stops them before they save; it leaves SIGINT alone with this
    env.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", "SIGTERM,SIGHUP,SIGQUIT")
    if not use_cuda:
        env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    env[PARENT_ENV] = str(os.getpid())  # the launcher stops the group when this process is gone
    cmd = launch_command(module, job_path, num_processes, use_cuda, accelerate_config)
    out = open(log_file, "ab") if log_file else None
    proc = None
    restore = _sigterm_as_ctrl_c()
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=out, stderr=out)
        RUNNING.add(proc.pid)
        if STOP.is_set():
            raise KeyboardInterrupt
        return proc.wait()
    except KeyboardInterrupt:
        if proc is None:
            raise
        _forward_interrupt(proc)
        # accelerate's launcher may leave before its child has saved: wait for the whole group
        _wait_group(proc.pid)
        return INTERRUPTED
    finally:
        restore()
        if proc is not None:
            RUNNING.discard(proc.pid)
        if out:
            out.close()


PARENT_ENV = "MODELMILL_TRAIN_PARENT"


def _sigterm_as_ctrl_c():
    """While a trainer runs, SIGTERM stops it as Ctrl-C does, unless the program already handles
    SIGTERM itself (a job runner does) or this is not the main thread (only it can set handlers).
    Returns what puts the old handler back."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None

    def term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, term)

    def restore():
        if signal.getsignal(signal.SIGTERM) is term:  # not one set since
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return restore


def stop_group_with_parent() -> None:
    """In the launcher (the child ``launch`` starts): when the process that launched us dies, send
    the whole group Ctrl-C (the trainer saves a checkpoint and exits). Linux's PR_SET_PDEATHSIG;
    elsewhere a no-op."""
    parent = os.environ.pop(PARENT_ENV, None)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    def orphaned(signum=None, frame=None):
        try:
            os.killpg(os.getpgrp(), signal.SIGINT)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGUSR1, orphaned)
    try:  # the signal comes when the *thread* that started us ends: launch() waits in it until we exit
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(signal.SIGUSR1), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # it died before the request was made
        orphaned()


def _forward_interrupt(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    while True:
        try:
            proc.wait()
            return
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                return


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in the group."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _wait_group(pgid: int, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
