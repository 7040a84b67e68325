"""Training across a Ray cluster's nodes with Ray Train (``--num-workers N``, or
``--num-nodes N --gpus-per-node M``).

Each Ray Train worker runs the very code a local training process runs (``common.run`` with the
method's ``build_trainer``): Ray Train sets up torch.distributed (gloo on CPU, NCCL on GPUs) and
the environment the Hugging Face Trainer reads, so data-parallel training is the Trainer's own,
with the same shards and the same global batch as ``--num-processes N`` on one host. Rank 0 writes
the run's metrics, checkpoints and final weights under the run's folder in the shared store.

``launch`` returns the local launcher's exit codes: 0 done, 1 failed (the error printed), and
``LOST`` when a worker's process or node died: the caller treats that like a trainer killed from
outside, and the job's next attempt resumes from the newest checkpoint.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # our users' clusters never phone home
os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # the workers' lines reach the job's log without colour codes

LOST = -9


def address() -> str:
    """The Ray cluster a training run uses: the one the job's executor set, else RAY_ADDRESS; an error
    saying how to get one where neither is set (checked before the run's folder is made)."""
    from modelmill.errors import InputError

    where = os.environ.get("MODELMILL_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not where:
        raise InputError("training on several nodes needs a Ray cluster", field="--num-workers",
                         fix="run it as a job on `modelmill worker --executor ray --ray-address HEAD:PORT`, or set "
                             "RAY_ADDRESS; on one host use --num-processes")
    return where


def _worker_loop(config: dict) -> None:
    """One Ray Train worker: the method's training code, exactly as a local process runs it."""
    import importlib

    from modelmill.train import common
    from modelmill.train.config import TrainJob

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not config["use_gpu"]:
        os.environ["ACCELERATE_USE_CPU"] = "true"
    module = importlib.import_module(config["module"])
    job = TrainJob.load(Path(config["job_path"]))
    common.run(job, module.build_trainer)


def _lost(err: BaseException) -> bool:
    """Whether a failed fit lost a worker (its process or node died) rather than raising in our code."""
    import ray

    seen, todo = set(), [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError,
                          ray.exceptions.WorkerCrashedError, ray.exceptions.ActorUnavailableError)):
            return True
        todo += [getattr(e, "__cause__", None), getattr(e, "cause", None)]
        todo += list((getattr(e, "worker_failures", None) or {}).values())
    text = str(err)
    return any(w in text for w in ("ActorDiedError", "NodeDiedError", "WorkerCrashedError", "node was terminated",
                                   "The actor died"))


def launch(module: str, job_path: Path, *, workers: int, use_gpu: bool = False) -> int:
    """Train ``job_path`` with ``workers`` Ray Train workers on the cluster at ``address()``."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    where = address()
    if not ray.is_initialized():
        ray.init(address=where, namespace="modelmill", logging_level="WARNING", log_to_driver=True)
    run_dir = Path(job_path).parent
    threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    scaling = ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                            resources_per_worker={"GPU": 1, "CPU": 1} if use_gpu else {"CPU": 1},
                            placement_strategy="PACK")
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"module": module, "job_path": str(job_path), "use_gpu": use_gpu},
        scaling_config=scaling,
        run_config=RunConfig(name=run_dir.name, storage_path=str(run_dir / "ray"),
                             failure_config=FailureConfig(max_failures=0),
                             worker_runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads),
                                                              "RAY_USAGE_STATS_ENABLED": "0"}}),
    )
    print(f"Ray Train: {workers} worker(s) ({'GPU' if use_gpu else 'CPU'}) on the cluster at {where}", flush=True)
    try:
        trainer.fit()
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - sorted: a lost worker resumes, our code's error fails the run
        if _lost(e):
            print(f"Ray Train lost a worker: {str(e).splitlines()[0][:500]}", file=sys.stderr, flush=True)
            return LOST
        traceback.print_exc()
        return 1
    return 0
