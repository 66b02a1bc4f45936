"""Multi-worker training: `tf.distribute.MultiWorkerMirroredStrategy` over the cluster in TF_CONFIG.

Every worker runs the same `train(..., strategy="multi-worker")`, with the
`TF_CONFIG` TensorFlow documents (the cluster, and this worker's task). The
chief (task `chief`, or `worker` 0 when the cluster has no chief) writes the
run directory; the others write theirs to `workertemp_<type>_<index>` inside it,
as TensorFlow's multi-worker guide does, and delete it when training ends.
"""

import collections
import json
import os
import socket
import zlib

import tensorflow as tf

from keras_s2s_attn.callbacks import build_optimizer

TF_CONFIG = "TF_CONFIG"

# This process's task in the cluster; `workers` counts the tasks that train
# (the chief and the workers).
WorkerRole = collections.namedtuple("WorkerRole", "task_type index is_chief workers")


def worker_role(environ=None):
    """This process's `WorkerRole`, from `TF_CONFIG`, checked.

    Raises:
        ValueError: If `TF_CONFIG` is unset, not JSON, or lacks the cluster
            or this worker's task.
    """
    text = (os.environ if environ is None else environ).get(TF_CONFIG)
    if not text:
        raise ValueError("`strategy='multi-worker'` reads the cluster from the TF_CONFIG "
                         "environment variable, which is not set (see the README, "
                         "\"Training on several machines\").")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, index = task["type"], int(task["index"])
        if task_type not in cluster or not 0 <= index < len(cluster[task_type]):
            raise KeyError(task_type)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"TF_CONFIG must be JSON with a \"cluster\" and this worker's \"task\" "
                         f"(its \"type\" and \"index\" in the cluster); got {text!r} "
                         f"({type(error).__name__}: {error})") from None
    chief = task_type == "chief" or (task_type == "worker" and index == 0
                                      and "chief" not in cluster)
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    return WorkerRole(task_type, index, chief, workers)


def loopback_tf_configs(workers):
    """`TF_CONFIG` values (JSON) for a cluster of `workers` on this machine's free ports.

    For trying multi-worker training on one machine, as the tests and
    `benchmarks/multi_worker.py` do: start one `s2s-attn train` per value.
    """
    sockets = [socket.socket() for _ in range(workers)]
    for each in sockets:
        each.bind(("127.0.0.1", 0))
    hosts = [f"127.0.0.1:{each.getsockname()[1]}" for each in sockets]
    for each in sockets:
        each.close()
    return [json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})
            for index in range(workers)]


def worker_run_dir(out, role):
    """Where this worker writes its run directory: `out` on the chief, else a temporary one."""
    return out if role.is_chief else os.path.join(out, f"workertemp_{role.task_type}_{role.index}")


def multi_worker_strategy():
    """The strategy; made before any other TensorFlow op runs, as TensorFlow requires."""
    return tf.distribute.MultiWorkerMirroredStrategy()


def vocabulary_fingerprint(*tokenizers):
    """A CRC-32 of the tokenizers' vocabularies and options, to compare across workers."""
    text = json.dumps([[t.get_config(), t.vocabulary] for t in tokenizers], sort_keys=True)
    return zlib.crc32(text.encode("utf-8"))


def gather_from_workers(distribution, row):
    """Every worker's 1-D tensor `row`, as a `(workers, len(row))` tensor in task order
    (row 0 is the chief's)."""
    return distribution.gather(distribution.run(lambda: row[tf.newaxis]), axis=0)


def chief_state_sync(distribution):
    """A `RunCheckpoint` `sync`: every worker takes the chief's weights, optimizer and epoch.

    Only the chief's resume state counts: a worker restarted on another
    machine may have none, and one killed while the others saved an epoch's
    state has the epoch before. The chief is the first task of the cluster.
    """

    def sync(model, epoch):
        optimizer = build_optimizer(model).optimizer
        variables = list(model.weights) + (list(optimizer.variables) if optimizer else [])
        flat = tf.concat([tf.reshape(tf.cast(v, tf.float64), [-1]) for v in variables]
                         + [tf.constant([epoch], tf.float64)], axis=0)
        chief = gather_from_workers(distribution, flat)[0]
        offset = 0
        for variable in variables:
            size = int(tf.size(variable))
            variable.assign(tf.cast(tf.reshape(chief[offset:offset + size], variable.shape),
                                    variable.dtype))
            offset += size
        return int(chief[offset])

    return sync


def shard_by_data(dataset):
    """`dataset` with auto-sharding by element: each worker takes its share of every batch."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def work_around_keras_multi_worker_fit(model, dataset, distribution):
    """Lets Keras 3.15 `fit` run under `MultiWorkerMirroredStrategy`.

    Two bugs stop it there (keras-team/keras#20585, #20329): the first batch
    probe `_maybe_symbolic_build` reduces a dict of per-worker inputs across
    workers and fails, and `reduce_per_replica` reduces the scalar logs
    (loss, metrics) along an axis they do not have. This builds the model's
    loss and metrics from one batch of `dataset` here, skips that probe for
    this model, and reduces scalar logs over the whole value. The training
    step, the gradients' all-reduce and the callbacks are Keras' own.
    """
    from keras.src.backend.tensorflow import trainer as keras_trainer

    batch = next(iter(dataset))
    with distribution.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    reduce = keras_trainer.reduce_per_replica
    if getattr(reduce, "_scalar_safe", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction == "auto" and keras_trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return reduce(values, strategy, reduction)

    reduce_per_replica._scalar_safe = True
    keras_trainer.reduce_per_replica = reduce_per_replica
