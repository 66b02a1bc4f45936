"""The run directory's bookkeeping callback: metrics CSV, best model, resume state."""

import contextlib
import csv
import json
import math
import os
import shutil

import keras

BACKUP_DIR = "backup"
STATE_POINTER = "latest"
STATE_WEIGHTS = "state.weights.h5"  # in each epoch state: the model's and optimizer's weights


def read_metrics(path):
    """The rows of a run's metrics.csv as dicts (an empty list if there is none)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _state_dir(run_dir):
    """The directory of a run's current resume state, or None if it has none."""
    pointer = os.path.join(run_dir, BACKUP_DIR, STATE_POINTER)
    if not os.path.exists(pointer):
        return None
    with open(pointer) as handle:
        return os.path.join(run_dir, BACKUP_DIR, handle.read().strip())


def epoch_states(run_dir):
    """The complete epoch states kept under a run's `backup/`, oldest first:
    a list of `(epoch, directory)`, `epoch` counting the epochs the state holds."""
    backup = os.path.join(run_dir, BACKUP_DIR)
    names = sorted(name for name in os.listdir(backup) if name.startswith("epoch-")
                   and not name.endswith(".tmp")) if os.path.isdir(backup) else []
    return [(int(name.split("-")[1]), os.path.join(backup, name)) for name in names]


def saved_epoch(run_dir):
    """How many epochs the resume state of a run directory holds (0 if it has none)."""
    state_dir = _state_dir(run_dir)
    if state_dir is None:
        return 0
    with open(os.path.join(state_dir, "state.json")) as handle:
        return json.load(handle)["epoch"]


def replace_atomically(path, write):
    """Calls write(temporary_path), then renames the result onto `path`."""
    root, extension = os.path.splitext(path)
    temporary = f"{root}.tmp{extension}"  # keeps the extension: Keras checks it
    write(temporary)
    os.replace(temporary, path)


def build_optimizer(model):
    """Makes the compiled `model`'s optimizer variables now, if it has an optimizer
    without them; returns `model`.

    Needed before loading or assigning optimizer state. Before `fit` it also
    saves a trace: Keras' TensorFlow trainer otherwise makes the variables
    inside the first traced training step, and `tf.function` then traces that
    step a second time, one that creates no variables.
    """
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    return model


def ema_variables(model):
    """`(variables, averages)` of a compiled `model` whose optimizer keeps an
    exponential moving average of the weights (`use_ema=True`), else None."""
    optimizer = getattr(model, "optimizer", None)  # none before `compile`
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    if optimizer is None or not getattr(optimizer, "use_ema", False) or not optimizer.built:
        return None
    return optimizer._trainable_variables, optimizer._model_variables_moving_average


@contextlib.contextmanager
def ema_weights(model):
    """Within the block, `model` holds its optimizer's moving averages as its
    trainable weights (nothing changes without `use_ema`); the raw weights are
    back afterwards.

    Used for validation (`EMAValidation`) and to save `best.keras` in the
    middle of an epoch's bookkeeping (`RunCheckpoint`).
    """
    pairs = ema_variables(model)
    if pairs is None:
        yield model
        return
    variables, averages = pairs
    raw = [keras.ops.convert_to_numpy(variable) for variable in variables]
    for variable, average in zip(variables, averages):
        variable.assign(average)
    try:
        yield model
    finally:
        for variable, value in zip(variables, raw):
            variable.assign(value)


class EMAValidation(keras.callbacks.Callback):
    """Validates with the optimizer's moving average of the weights (`use_ema=True`),
    and puts the raw weights back after.

    What `keras.callbacks.SwapEMAWeights` does for evaluation, but exact: its
    TensorFlow swap (by additions and subtractions) rounds both sets of
    weights a little at every validation; this copies them (`ema_weights`).
    """

    def on_test_begin(self, logs=None):
        self._swapped = contextlib.ExitStack()
        self._swapped.enter_context(ema_weights(self.model))

    def on_test_end(self, logs=None):
        self._swapped.close()


class RunCheckpoint(keras.callbacks.Callback):
    """Per-epoch bookkeeping of a run directory that survives being killed.

    At each epoch end, in this order: the metrics row is appended to
    `metrics.csv`, the model is saved as `best.keras` if its `val_loss` is the
    best so far (with the optimizer's moving average of the weights when it
    keeps one, `use_ema=True`), and the training state (the raw weights and
    the optimizer, its averages included) is saved under `backup/` for
    resuming, unless a logged value is NaN or infinite (the state then stays
    at the last good epoch). The last `keep` epochs' states are kept there
    (`epoch_states`), e.g. to average them. Every file is written beside its
    target and renamed into place, and the resume state becomes current only
    when a pointer file is replaced, so a process killed at any instant
    leaves the previous complete state. The state is kept when training ends,
    so that a finished run can be continued for more epochs.

    On `fit` start, a saved state is restored and `fit` continues from the
    epoch after it (the mechanism of `keras.callbacks.BackupAndRestore`, which
    this replaces because it writes its weights file in place: a kill during
    the first save leaves a corrupt file it cannot recover from, and a kill
    between its weights and metadata writes pairs new weights with an old
    epoch). Rows of epochs the state does not cover are dropped from the CSV
    and logged again, so each epoch appears exactly once.

    Args:
        run_dir: The run directory.
        metrics_file: Name of the CSV file in it.
        best_file: Name of the best-model file in it.
        monitor: The logged quantity that picks the best model.
        mode: `"min"` (lower is better, as a loss) or `"max"`.
        sync: None, or `sync(model, epoch) -> epoch`, called after the restore
            with the epoch restored: what the workers of a multi-worker run
            use to all start from the chief's state.
        keep: How many epochs' states to keep (the latest one resumes).

    Example:

    >>> model.fit(data, validation_data=valid, epochs=10,
    ...           callbacks=[RunCheckpoint("runs/demo")])
    """

    def __init__(self, run_dir, metrics_file="metrics.csv", best_file="best.keras",
                 monitor="val_loss", sync=None, keep=1, mode="min"):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` must be 'min' or 'max'. Received: mode={mode!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"`keep` must be a positive integer. Received: keep={keep!r}")
        self.sync, self.keep = sync, keep
        self.run_dir = os.fspath(run_dir)
        self.backup_dir = os.path.join(self.run_dir, BACKUP_DIR)
        self.csv_path = os.path.join(self.run_dir, metrics_file)
        self.best_path = os.path.join(self.run_dir, best_file)
        self.monitor, self.sign = monitor, 1.0 if mode == "min" else -1.0
        self.best = math.inf  # of sign * value: lower is better

    # ----------------------------------------------------------------- resume
    def on_train_begin(self, logs=None):
        os.makedirs(self.backup_dir, exist_ok=True)
        epoch = self._restore()
        if self.sync is not None:
            epoch = self.sync(self.model, epoch)
        # `fit` reads this after on_train_begin, as for BackupAndRestore.
        self.model._initial_epoch = epoch
        rows = read_metrics(self.csv_path)
        kept = [row for row in rows if int(row["epoch"]) < epoch]
        if len(kept) != len(rows):
            self._write_rows(kept, list(rows[0]))
        best = self.best_row(kept)
        self.best = math.inf if best is None else self.sign * float(best[self.monitor])

    def best_row(self, rows):
        """The metrics row (`read_metrics`) with the best finite `monitor` value, or None."""
        scored = [row for row in rows
                  if row.get(self.monitor) and math.isfinite(float(row[self.monitor]))]
        return min(scored, key=lambda row: self.sign * float(row[self.monitor]), default=None)

    def _restore(self):
        state_dir = _state_dir(self.run_dir)
        if state_dir is None:
            return 0
        build_optimizer(self.model)  # its variables are in the file
        self.model.load_weights(os.path.join(state_dir, STATE_WEIGHTS))
        with open(os.path.join(state_dir, "state.json")) as handle:
            return json.load(handle)["epoch"]

    # -------------------------------------------------------------- each epoch
    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"epoch": epoch, **{key: float(value) for key, value in logs.items()}}
        rows = read_metrics(self.csv_path)
        self._write_rows(rows + [row], list(rows[0]) if rows else list(row))

        value = logs.get(self.monitor)
        if value is not None and math.isfinite(float(value)) and (
                self.sign * float(value) < self.best):
            self.best = self.sign * float(value)
            with ema_weights(self.model):
                replace_atomically(self.best_path, lambda path: self.model.save(path))
        if all(math.isfinite(value) for value in row.values()):
            self._save_state(epoch + 1)

    def _save_state(self, next_epoch):
        name = f"epoch-{next_epoch:05d}"
        final_dir = os.path.join(self.backup_dir, name)
        building = final_dir + ".tmp"
        shutil.rmtree(building, ignore_errors=True)
        os.makedirs(building)
        self.model.save_weights(os.path.join(building, STATE_WEIGHTS))
        with open(os.path.join(building, "state.json"), "w") as handle:
            json.dump({"epoch": next_epoch}, handle)
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(building, final_dir)

        def point(path):
            with open(path, "w") as handle:
                handle.write(name)

        replace_atomically(os.path.join(self.backup_dir, STATE_POINTER), point)
        kept = [path for epoch, path in epoch_states(self.run_dir) if epoch <= next_epoch]
        for old in os.listdir(self.backup_dir):  # and unfinished ones of a killed run
            path = os.path.join(self.backup_dir, old)
            if old.startswith("epoch-") and path not in kept[-self.keep:]:
                shutil.rmtree(path, ignore_errors=True)

    def _write_rows(self, rows, fields):
        def write(path):
            with open(path, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

        replace_atomically(self.csv_path, write)


class InterruptBetweenSteps(keras.callbacks.Callback):
    """Turns Ctrl-C during `fit` into a `KeyboardInterrupt` at the next batch end.

    Python raises `KeyboardInterrupt` wherever the main thread happens to be,
    which may be inside an epoch's bookkeeping (the run's files, TensorBoard's
    writer), where it can leave the process hanging at exit. Installed as the
    SIGINT handler (`with InterruptBetweenSteps() as callback:`), it raises at
    once outside `fit`, and during `fit` only at a batch end, a safe point; a
    second Ctrl-C raises at once.
    """

    def __init__(self):
        super().__init__()
        self.requested = self._fitting = False
        self._previous = None

    def __enter__(self):
        import signal

        self._previous = signal.signal(signal.SIGINT, self._request)
        return self

    def __exit__(self, *exc_info):
        import signal

        signal.signal(signal.SIGINT, self._previous)

    def _request(self, signum, frame):
        if not self._fitting or self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def on_train_begin(self, logs=None):
        self._fitting = True

    def on_train_end(self, logs=None):
        self._fitting = False

    def on_train_batch_end(self, batch, logs=None):
        if self.requested:
            raise KeyboardInterrupt

    on_test_batch_end = on_train_batch_end
