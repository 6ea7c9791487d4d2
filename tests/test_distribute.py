"""Training under tf.distribute: the strategy helpers, and real training processes
(tests/distributed_worker.py) on two logical CPUs and as two workers of a
MultiWorkerMirroredStrategy cluster on 127.0.0.1, compared with one process."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from mrcnn import distribute
from mrcnn.config import Config
from tests.conftest import TinyConfig

ROOT = Path(__file__).resolve().parents[1]
WORKER = "tests/distributed_worker.py"
STEPS = 3
TIMEOUT_S = 300     # any one training process; they take 15-40 s on 2 cores


def launch(out, strategy, images_per_gpu, logs, tf_config=None, **args):
    """Start one training process; its results go to `out` (.npz)."""
    args = {"strategy": strategy, "images_per_gpu": images_per_gpu, "epochs": 1, "steps": STEPS,
            "logs": str(logs), "out": str(out), **args}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, WORKER, json.dumps(args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def cluster(n):
    """TF_CONFIGs of an n-worker cluster on free local ports."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    workers = [f"127.0.0.1:{port}" for port in ports]
    return [{"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
            for i in range(n)]


def workers(tmp_path, name, logs, **args):
    """Start a two-worker job; its workers' results go to tmp_path/name{0,1}.npz."""
    return [launch(tmp_path / f"{name}{i}.npz", "multi-worker", 1, logs(i), tf_config, **args)
            for i, tf_config in enumerate(cluster(2))]


def finish(processes, timeout=TIMEOUT_S):
    """Each process's (return code, output); all are killed if one overruns `timeout`."""
    results = []
    try:
        for p in processes:
            out, _ = p.communicate(timeout=timeout)
            results.append((p.returncode, out))
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def succeeded(results):
    for code, out in results:
        assert code == 0 and "DONE" in out, out[-4000:]


def weights(path):
    data = np.load(path)
    return [data[k] for k in sorted(data.files) if k.startswith("w")]


def max_difference(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(weights(a), weights(b)))


def written(folder):
    """The files under `folder`'s run folder, relative to it (the folder's time stamp varies)."""
    return sorted(str(Path(*path.relative_to(folder).parts[1:]))
                  for path in Path(folder).rglob("*") if path.is_file())


############################################################
#  Real training processes
############################################################

@pytest.mark.large
def test_two_devices_and_two_workers_train_as_one_process_on_the_global_batch(tmp_path):
    """A batch of 2 images per step on one device, on two logical CPUs (1 each) and on two
    workers of a cluster (1 each) give the same losses and weights: the data of each
    global step, the losses (means over the global batch) and the clipped step agree."""
    t0 = time.time()
    processes = [launch(tmp_path / "one.npz", "none", 2, tmp_path / "logs_one"),
                 launch(tmp_path / "cpus.npz", "mirrored-cpus", 1, tmp_path / "logs_cpus"),
                 *workers(tmp_path, "worker", lambda i: tmp_path / f"logs_worker{i}")]
    results = finish(processes)
    succeeded(results)
    print(f"4 processes (1 device, 2 CPUs, 2 workers) in {time.time() - t0:.1f} s")
    one, cpus, w0, w1 = (np.load(tmp_path / f"{n}.npz") for n in ("one", "cpus", "worker0",
                                                                  "worker1"))
    assert one["gpu_count"] == 1 and cpus["gpu_count"] == w0["gpu_count"] == 2  # set, logged
    assert "GPU_COUNT 1 -> 2" in results[1][1] and "GPU_COUNT 1 -> 2" in results[2][1]
    assert one["moved"] > 1e-3                    # training moved the weights ...
    differences = {"workers": max_difference(tmp_path / "worker0.npz", tmp_path / "worker1.npz"),
                   "workers vs one": max_difference(tmp_path / "worker0.npz", tmp_path / "one.npz"),
                   "cpus vs one": max_difference(tmp_path / "cpus.npz", tmp_path / "one.npz")}
    print("max weight differences", differences)
    assert differences["workers"] == 0.0          # ... identically on both workers
    assert differences["workers vs one"] < 1e-5 and differences["cpus vs one"] < 1e-5
    for run in (cpus, w0, w1):
        np.testing.assert_allclose(run["loss"], one["loss"], rtol=1e-5)

    # Each worker loaded its own share of the epoch: together, what one process loaded.
    first = [list(run["loaded"][:STEPS]) for run in (w0, w1)]
    assert not set(first[0]) & set(first[1])
    assert sorted(first[0] + first[1]) == sorted(one["loaded"][:2 * STEPS])
    assert all(len(run["loaded"]) < 20 for run in (w0, w1))   # of 40 images: not all

    # Only the chief (worker 0) wrote: the checkpoint, its state and the event file.
    chief = written(tmp_path / "logs_worker0")
    assert chief[:2] == ["mask_rcnn_dist_0001.h5", "mask_rcnn_dist_0001.state.h5"]
    assert len(chief) == 3 and chief[2].startswith(os.path.join("train", "events.out.tfevents"))
    assert written(tmp_path / "logs_one")[:2] == chief[:2]
    assert not (tmp_path / "logs_worker1").exists()


@pytest.mark.large
def test_synchronised_batchnorm_normalises_over_the_global_batch(tmp_path):
    """With TRAIN_BN, BatchNorm over two replicas of one image each equals one device's
    over both images only with SYNC_BATCH_NORM; per-replica statistics move elsewhere.
    SCALE_LEARNING_RATE multiplies the learning rate by the replicas."""
    bn = {"train_bn": True}
    results = finish([launch(tmp_path / "one.npz", "none", 2, tmp_path / "one", **bn),
                      launch(tmp_path / "sync.npz", "mirrored-cpus", 1, tmp_path / "sync",
                             sync_bn=True, **bn),
                      launch(tmp_path / "local.npz", "mirrored-cpus", 1, tmp_path / "local", **bn),
                      launch(tmp_path / "scaled.npz", "mirrored-cpus", 1, tmp_path / "scaled",
                             sync_bn=True, scale_lr=True, **bn)])
    succeeded(results)
    # SCALE_LEARNING_RATE: train()'s 0.02 times the 2 replicas, said in the log.
    assert np.load(tmp_path / "scaled.npz")["learning_rate"] == pytest.approx(0.04)
    assert "SCALE_LEARNING_RATE: learning rate 0.02 x 2 replicas" in results[3][1]
    assert np.load(tmp_path / "sync.npz")["learning_rate"] == pytest.approx(0.02)
    synced = max_difference(tmp_path / "sync.npz", tmp_path / "one.npz")
    local = max_difference(tmp_path / "local.npz", tmp_path / "one.npz")
    print(f"max weight difference to one device: synchronised {synced:.2e}, per replica {local:.2e}")
    # Keras' synchronised variance is E[x^2] - E[x]^2, rounded differently (seen: 4.7e-05).
    assert synced < 5e-4 and local > 1000 * synced


@pytest.mark.large
def test_a_killed_worker_stops_the_job_and_a_restart_resumes_it(tmp_path):
    """kill -9 of worker 1 after the first checkpoint: worker 0 stops with WorkerFailed naming
    it (not a hang); both restarted with resume=True continue from the newest checkpoint,
    in the same run folder, with the epoch count continuing up to the target."""
    logs = tmp_path / "logs"      # shared by the workers, as model_dir must be to resume
    run = {"epochs": 4, "steps": 4}
    processes = workers(tmp_path, "first", lambda i: logs, **run)
    deadline = time.time() + TIMEOUT_S
    while not list(logs.glob("*/mask_rcnn_dist_0001.h5")):
        assert time.time() < deadline and all(p.poll() is None for p in processes), \
            finish(processes, timeout=1)
        time.sleep(0.2)
    processes[1].kill()
    killed = time.time()
    (code, out), _ = finish(processes, timeout=120)
    stopped_s = time.time() - killed
    print(f"worker 0 stopped {stopped_s:.1f} s after worker 1 was killed")
    assert code != 0 and "WorkerFailed" in out and "worker 1" in out, out[-4000:]
    assert "resume=True" in out
    (run_dir,) = logs.iterdir()
    done = sorted(p.name for p in run_dir.glob("mask_rcnn_dist_000?.h5"))
    assert done and "mask_rcnn_dist_0004.h5" not in done

    t0 = time.time()
    results = finish(workers(tmp_path, "resumed", lambda i: logs, resume=True, **run))
    succeeded(results)
    print(f"resumed job in {time.time() - t0:.1f} s")
    resumed_from = len(done)
    for _, out in results:
        assert f"Re-starting from epoch {resumed_from}" in out
        assert f"Restored the optimizer state of epoch {resumed_from}" in out
    for i in (0, 1):
        state = np.load(tmp_path / f"resumed{i}.npz")
        assert state["epoch"] == 4 and len(state["loss"]) == 4 - resumed_from
    assert list(logs.iterdir()) == [run_dir]
    assert sorted(p.name for p in run_dir.glob("mask_rcnn_dist_000?.h5")) == [
        f"mask_rcnn_dist_000{e}.h5" for e in range(1, 5)]


############################################################
#  Choosing the strategy, fitting the config to it
############################################################

class Replicas:
    """A stand-in strategy with `n` replicas (fit_replicas reads only that)."""

    def __init__(self, n):
        self.num_replicas_in_sync = n


def test_gpu_count_1_is_set_to_the_replicas_and_another_count_is_an_error(caplog):
    config = TinyConfig()
    assert distribute.fit_replicas(config, Replicas(1)) is config
    with caplog.at_level("WARNING"):
        fitted = distribute.fit_replicas(config, Replicas(4))
    assert (fitted.GPU_COUNT, fitted.BATCH_SIZE) == (4, 4 * config.IMAGES_PER_GPU)
    assert (config.GPU_COUNT, config.BATCH_SIZE) == (1, config.IMAGES_PER_GPU)   # unchanged
    assert "GPU_COUNT 1 -> 4" in caplog.text and "IMAGES_PER_GPU x 4 = 8" in caplog.text

    class Two(TinyConfig):
        GPU_COUNT = 2
    assert distribute.fit_replicas(Two(), Replicas(2)).GPU_COUNT == 2
    with pytest.raises(ValueError, match=r"Two.GPU_COUNT is 2 but the training strategy "
                                         r"\(Replicas\) has 3 replicas. Set GPU_COUNT = 3"):
        distribute.fit_replicas(Two(), Replicas(3))


def test_make_strategy_kinds_scopes_and_bad_input(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    default = tf.distribute.get_strategy()
    assert distribute.make_strategy("none") is default
    assert distribute.make_strategy("auto") is default     # no cluster, no GPU here
    for bad in ("gpu", None, 2):
        with pytest.raises(ValueError, match="Config.STRATEGY is .* Use one of auto, none, "
                                             "mirrored, multi-worker"):
            distribute.make_strategy(bad)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert distribute.make_strategy(mirrored) is mirrored
    with mirrored.scope():                                 # the user's scope wins
        assert distribute.make_strategy("none") is mirrored
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster(1)[0]))   # a cluster of one: no cluster
    assert distribute.make_strategy("auto") is default
    monkeypatch.setenv("TF_CONFIG", "{cluster: [}")
    with pytest.raises(ValueError, match="TF_CONFIG is not a JSON object"):
        distribute.make_strategy("auto")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": "127.0.0.1:1"}}')
    with pytest.raises(ValueError, match="must map task types to lists"):
        distribute.cluster_spec()


@pytest.mark.parametrize("setting, value, message", [
    ("STRATEGY", "gpus", "STRATEGY is 'gpus'"),
    ("SYNC_BATCH_NORM", "yes", "SYNC_BATCH_NORM"),
    ("SCALE_LEARNING_RATE", 1, "SCALE_LEARNING_RATE"),
])
def test_bad_distribution_settings_are_named(setting, value, message):
    config = Config()
    setattr(config, setting, value)
    with pytest.raises(ValueError, match=message):
        config.validate()


class Cluster:
    """A stand-in strategy of a cluster: its cluster_resolver, as MultiWorkerMirroredStrategy's."""

    def __init__(self, spec, task_type, task_id):
        self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(spec), task_type=task_type, task_id=task_id)


def test_chief_workers_and_the_error_of_a_dead_worker():
    two = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    assert distribute.num_workers(tf.distribute.get_strategy()) == 1
    assert distribute.is_chief(tf.distribute.get_strategy())
    assert [distribute.is_chief(Cluster(two, "worker", i)) for i in (0, 1)] == [True, False]
    with_chief = {"chief": ["127.0.0.1:3"], **two}
    assert distribute.num_workers(Cluster(with_chief, "worker", 0)) == 3
    assert not distribute.is_chief(Cluster(with_chief, "worker", 0))
    assert distribute.is_chief(Cluster(with_chief, "chief", 0))

    lost = tf.errors.UnavailableError(None, None, "Collective ops is aborted by: Task "
                                      "/job:worker/replica:0/task:1 heartbeat timeout")
    failure = distribute.worker_failure(lost, Cluster(two, "worker", 0), "hint")
    assert isinstance(failure, distribute.WorkerFailed)
    assert "worker 1 of the multi-worker job stopped responding (UnavailableError)" in str(failure)
    assert "resume=True" in str(failure) and str(failure).endswith("hint.")
    assert distribute.worker_failure(lost, tf.distribute.get_strategy(), "hint") is None
    assert distribute.worker_failure(tf.errors.InvalidArgumentError(None, None, "bad"),
                                     Cluster(two, "worker", 0), "hint") is None
    assert distribute.agree(tf.distribute.get_strategy(), [7, 8]) == [7, 8]
