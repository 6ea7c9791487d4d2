"""Training on many devices and machines: choosing the `tf.distribute` strategy and
what each worker does under it.

`make_strategy(Config.STRATEGY)` picks the strategy `MaskRCNN` builds its training
model in: "auto" takes `MultiWorkerMirroredStrategy` when TF_CONFIG names a
cluster of several tasks, `MirroredStrategy` when more than one GPU is visible,
else none; a strategy scope the user entered wins. One strategy of each kind is
made per process (TensorFlow allows one multi-worker strategy, made before any
op runs). `fit_replicas` holds matterport's batch semantics: IMAGES_PER_GPU is the
per-replica batch and GPU_COUNT the number of replicas of the whole job, so
BATCH_SIZE is the global batch. `is_chief` says which worker writes the run
folder; `agree` gives every worker the first replica's values (the run folder's
time stamp, an unseeded shuffle seed); `worker_failure` turns the collective
error of a dead worker into `WorkerFailed`, naming it.
"""

import copy
import json
import logging
import os
import re

import tensorflow as tf

from mrcnn.config import STRATEGIES

__all__ = ["WorkerFailed", "cluster_spec", "make_strategy", "fit_replicas",
           "is_chief", "num_workers", "agree", "worker_failure"]

# A collective that waits longer than this for a peer fails (a stuck, not dead, worker).
COLLECTIVE_TIMEOUT_S = 600.0

_made = {}   # kind -> strategy: one per kind and process

logger = logging.getLogger(__name__)


class WorkerFailed(RuntimeError):
    """Another worker of a multi-worker job stopped; every worker must be restarted."""


def cluster_spec():
    """TF_CONFIG's "cluster" as {task type: [addresses]}, or None when TF_CONFIG is unset."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        cluster = json.loads(text).get("cluster") or {}
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"TF_CONFIG is not a JSON object ({e}): {text[:200]!r}. Set it to "
                         '{"cluster": {"worker": ["host1:port", ...]}, "task": {"type": "worker", '
                         '"index": i}} or unset it.') from None
    if not isinstance(cluster, dict) or not all(isinstance(v, list) for v in cluster.values()):
        raise ValueError(f"TF_CONFIG's cluster is {cluster!r}; it must map task types to lists "
                         'of "host:port" addresses.')
    return cluster


def make_strategy(kind="auto"):
    """The strategy for `kind` (one of STRATEGIES, or a `tf.distribute.Strategy`, returned as is).

    Inside a user's `strategy.scope()` that strategy is returned whatever `kind` says.
    """
    if isinstance(kind, tf.distribute.Strategy):
        return kind
    if tf.distribute.has_strategy():
        return tf.distribute.get_strategy()
    if not isinstance(kind, str) or kind not in STRATEGIES:
        raise ValueError(f"Config.STRATEGY is {kind!r}. Use one of {', '.join(STRATEGIES)}, "
                         "or a tf.distribute.Strategy.")
    if kind == "auto":
        cluster = cluster_spec()
        if cluster and sum(len(v) for k, v in cluster.items() if k in ("chief", "worker")) > 1:
            kind = "multi-worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "none"
    if kind == "none":
        return tf.distribute.get_strategy()
    if kind not in _made:
        if kind == "mirrored":
            _made[kind] = tf.distribute.MirroredStrategy()
        else:
            options = tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=COLLECTIVE_TIMEOUT_S)
            try:
                _made[kind] = tf.distribute.MultiWorkerMirroredStrategy(
                    communication_options=options)
            except RuntimeError as e:
                raise RuntimeError(
                    f"Cannot start the multi-worker strategy ({e}). It must be created before "
                    "TensorFlow runs any op: build the MaskRCNN model (or call "
                    "mrcnn.distribute.make_strategy) at the start of the program.") from e
    return _made[kind]


def fit_replicas(config, strategy):
    """`config`, or a copy with GPU_COUNT set to the strategy's replicas (logged) when it is 1.

    GPU_COUNT counts the replicas of the whole job (every GPU of every worker);
    a GPU_COUNT > 1 that differs from them is an error, as BATCH_SIZE (the global
    batch) would be wrong.
    """
    replicas = strategy.num_replicas_in_sync
    if config.GPU_COUNT == replicas:
        return config
    if config.GPU_COUNT != 1:
        raise ValueError(
            f"{type(config).__name__}.GPU_COUNT is {config.GPU_COUNT} but the training strategy "
            f"({type(strategy).__name__}) has {replicas} replicas. Set GPU_COUNT = {replicas} "
            "(or 1, which is then set for you), or make that many GPUs visible.")
    fitted = copy.copy(config)
    fitted.GPU_COUNT = replicas
    fitted.BATCH_SIZE = fitted.computed_settings()["BATCH_SIZE"]
    logger.warning("GPU_COUNT 1 -> %d: the %s has %d replicas; the global batch (BATCH_SIZE) is "
                   "IMAGES_PER_GPU x %d = %d.", replicas, type(strategy).__name__, replicas,
                   replicas, fitted.BATCH_SIZE)
    return fitted


def _task(strategy):
    """(task type, task id) of this process, or (None, None) outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, None
    return resolver.task_type, resolver.task_id


def num_workers(strategy):
    """The number of worker processes the strategy trains on (1 outside a cluster)."""
    if _task(strategy)[0] is None:
        return 1
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(spec.get("chief", [])) + len(spec.get("worker", []))


def is_chief(strategy):
    """True for the process that writes the run folder: the "chief" task, else worker 0."""
    task_type, task_id = _task(strategy)
    if task_type is None or task_type == "chief":
        return True
    has_chief = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def agree(strategy, values):
    """The first replica's int64 `values` (a list), on every worker: one collective broadcast."""
    if num_workers(strategy) == 1:
        return list(values)
    mine = tf.constant(values, tf.int64)
    distributed = strategy.experimental_distribute_values_from_function(
        lambda context: mine if context.replica_id_in_sync_group == 0 else tf.zeros_like(mine))
    return [int(v) for v in strategy.reduce("SUM", distributed, axis=None).numpy()]


def worker_failure(error, strategy, checkpoint_hint):
    """`WorkerFailed` naming the stopped tasks for a multi-worker job's collective error, else None."""
    if num_workers(strategy) == 1 or not isinstance(
            error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                    tf.errors.CancelledError, tf.errors.AbortedError)):
        return None
    tasks = sorted(set(re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", str(error))))
    names = ", ".join(f"{job} {task}" for job, task in tasks) or "a peer worker"
    return WorkerFailed(
        f"Training stopped: {names} of the multi-worker job stopped responding "
        f"({type(error).__name__}). Restart every worker with train(..., resume=True) "
        f"(mrcnn train --resume); {checkpoint_hint}.")
