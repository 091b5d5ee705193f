"""Training loop: ``Trainer(model, loss, optimizer, ...).fit(train_data, epochs, ...)``.

::

    model = fastrnn.LanguageModel.build(vocab_size, 128, seed=0)
    opt = fastrnn.optim.Adam(model, lr=2e-3)
    trainer = fastrnn.Trainer(model, fastrnn.CrossEntropyLoss(), opt,
                              clip_grad_norm=5.0, seed=0)
    history = trainer.fit(StreamBatcher(train, 32, 64), epochs=5,
                          val_data=StreamBatcher(val, 32, 64),
                          early_stopping_patience=2, checkpoint_path="lm.npz")
    history["val_perplexity"]      # one value per epoch

What ``train_data`` / ``val_data`` can be:

- a tuple ``(x, y)`` or ``(x, y, lengths)`` of NumPy arrays with the samples
  along axis 0 (``x`` may also be a list of variable-length sequences, ``y`` a
  list of per-step target sequences): batched by ``fastrnn.data.ArrayLoader``
  with ``batch_size``, shuffled (training data, ``shuffle=True``) with the
  trainer's ``seed``, padded with ``lengths``, in the model's layout;
- any re-iterable of batches (``ArrayLoader``, ``StreamBatcher``, a list) or a
  function returning a fresh iterator per epoch (a one-shot generator works
  for ``epochs=1`` only). A batch is a ``fastrnn.data.Batch``, a tuple
  ``(inputs, targets[, lengths])`` or a dict with those keys, already in the
  model's layout.

Targets are per step (taggers, language models: the loss is masked past each
sequence's length) or per sequence (classifiers). For per-step models the
recurrent state is carried between batches marked ``carry=True``
(``StreamBatcher``) and, with ``bptt=k``, a long batch is cut into chunks of
``k`` steps with the state carried between them: truncated BPTT. The carried
state is a copy of the values: the gradient stops at the chunk boundary.

Each optimiser step: ``zero_grad``, forward, loss, backward, clipping
(``clip_grad_value`` then ``clip_grad_norm``), ``optimizer.step()``, and the
scheduler if ``scheduler_interval="step"`` (else it steps once per epoch, after
validation, torch's convention).

Metrics (``metrics="auto"``): the loss always; for a cross-entropy loss the
accuracy (over the counted targets) and, with per-step targets, the
perplexity ``exp(loss per token)``. Means are weighted by the number of
counted targets. A callable ``fn(outputs, targets, mask) -> float`` is averaged
over batches weighted by batch size. ``fit`` returns the history: metric name
-> one value per epoch (``loss``, ``accuracy``, ``perplexity``, the same with
``val_`` for validation, ``lr``, ``time`` and ``throughput``).

Progress: a tqdm bar per epoch with the running loss and throughput (tokens/s
for per-step targets, sequences/s otherwise) when ``progress=True`` and tqdm is
installed (without it, a one-line note and no bar); a summary line per epoch
when ``verbose`` (default: same as ``progress``).

Reproducible: the same model initialisation, data and ``seed`` give
bit-identical losses (shuffling draws from ``seed``; dropout masks from the
model's own seeded generators).
"""
import contextlib
import math
import sys
import time

import numpy as np

from . import losses as _losses
from . import optim as _optim
from ._threads import single_threaded_blas
from .data import ArrayLoader, Batch
from .nn import Sequential, SequenceClassifier, SequenceTagger, _returns_state, sequence_mask

__all__ = ["Trainer"]

_TQDM_NOTE_SHOWN = False


def _get_tqdm():
    """tqdm's class, or None (with a one-line note, once per process)."""
    global _TQDM_NOTE_SHOWN
    try:
        from tqdm.auto import tqdm
        return tqdm
    except ImportError:
        if not _TQDM_NOTE_SHOWN:
            print("fastrnn: no progress bar (tqdm is not installed; pip install tqdm)",
                  file=sys.stderr, flush=True)
            _TQDM_NOTE_SHOWN = True
        return None


def _detach(state):
    """A copy of a recurrent state (array, tuple of arrays, or dict of those)."""
    if state is None:
        return None
    if isinstance(state, dict):
        return {k: _detach(v) for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        return tuple(_detach(v) for v in state)
    return np.array(state, copy=True)


def _state_batch(state):
    """The batch size of a state (its first array's axis -2), or None."""
    if state is None:
        return None
    if isinstance(state, dict):
        for v in state.values():
            return _state_batch(v)
        return None
    if isinstance(state, (tuple, list)):
        return _state_batch(state[0]) if state else None
    shape = np.shape(state)
    return shape[-2] if len(shape) >= 2 else None


def _keep_ended(new, old, ended):
    """``new`` with the sequences flagged in ``ended`` (batch axis -2) reset to
    their values in ``old`` (sequences past their end keep their final state)."""
    if new is None or old is None:
        return new
    if isinstance(new, dict):
        return {k: _keep_ended(v, old.get(k), ended) for k, v in new.items()}
    if isinstance(new, (tuple, list)):
        return tuple(_keep_ended(n, o, ended) for n, o in zip(new, old))
    new[..., ended, :] = np.asarray(old)[..., ended, :]
    return new


def _as_batch(item):
    if isinstance(item, Batch):
        return item
    if isinstance(item, dict):
        keys = {"x": "inputs", "y": "targets"}
        fields = {keys.get(k, k): v for k, v in item.items()}
        unknown = set(fields) - set(Batch._fields)
        if unknown:
            raise TypeError(f"unknown batch keys {sorted(unknown)} (expected {Batch._fields})")
        return Batch(**fields)
    if isinstance(item, (tuple, list)) and 2 <= len(item) <= 3:
        return Batch(*item)
    raise TypeError(f"a batch must be a fastrnn.data.Batch, a tuple (inputs, targets[, "
                    f"lengths]) or a dict, got {type(item).__name__}")


def _fmt_rate(rate):
    return f"{rate / 1000:.1f}k" if rate >= 1000 else f"{rate:.0f}"


_LOSSES = {"cross_entropy": _losses.CrossEntropyLoss, "mse": _losses.MSELoss}
_SHORT = {"accuracy": "acc", "perplexity": "ppl"}


class _Meter:
    """Running sums of an epoch's metrics."""

    def __init__(self, names, custom):
        self.names = names
        self.custom = custom
        self.loss_sum = 0.0
        self.count = 0
        self.correct = 0
        self.units = 0
        self.custom_sums = {name: 0.0 for name, _ in custom}
        self.custom_weight = 0

    def mean_loss(self):
        return self.loss_sum / self.count if self.count else float("nan")

    def result(self, prefix=""):
        logs = {prefix + "loss": self.mean_loss()}
        if "accuracy" in self.names:
            logs[prefix + "accuracy"] = self.correct / self.count if self.count else float("nan")
        if "perplexity" in self.names:
            loss = self.mean_loss()
            logs[prefix + "perplexity"] = math.exp(min(loss, 700.0)) if loss == loss else loss
        for name, _ in self.custom:
            logs[prefix + name] = (self.custom_sums[name] / self.custom_weight
                                   if self.custom_weight else float("nan"))
        return logs


class Trainer:
    """Train a model: ``Trainer(model, loss, optimizer, *, clip_grad_norm=None,
    clip_grad_value=None, scheduler=None, scheduler_interval="epoch",
    metrics="auto", progress=True, verbose=None, seed=None, vocab=None)``.

    - ``model``: a fastrnn model (``SequenceClassifier``, ``SequenceTagger``,
      ``LanguageModel``, ``Sequential``, a recurrent layer, or any module with
      ``forward(x, lengths=..., hx=...)`` / ``backward(grad)``).
    - ``loss``: a loss object (``CrossEntropyLoss``, ``MSELoss``, or anything
      with ``loss(outputs, targets, mask=...)`` and ``backward()``), or
      "cross_entropy" / "mse".
    - ``optimizer``: a ``fastrnn.optim`` optimiser over the model.
    - ``clip_grad_norm`` / ``clip_grad_value``: clip the gradients before each
      step (global L2 norm / elementwise).
    - ``scheduler``: a ``fastrnn.optim`` scheduler, stepped per epoch (or per
      optimiser step with ``scheduler_interval="step"``).
    - ``metrics``: "auto", or names among "accuracy", "perplexity" and
      callables ``fn(outputs, targets, mask) -> float``.
    - ``progress``: tqdm bar; ``verbose``: one summary line per epoch.
    - ``seed``: shuffling seed (None: different every run).
    - ``vocab``: stored in checkpoints (e.g. a ``fastrnn.data.CharVocab``).
    - ``blas_threads``: 1 (default) runs NumPy's BLAS (the Linear/Embedding
      matrix products) single-threaded during ``fit``/``evaluate``: the
      recurrent kernels' OpenMP threads are the parallel level, and a
      multi-threaded BLAS competing with them (or with other processes) is
      several times slower on a busy machine. None leaves BLAS alone.

    After ``fit``: ``history`` (also returned), ``step_losses`` (every
    optimiser step's loss), ``state`` (the last carried recurrent state),
    ``best`` / ``best_epoch`` (of the monitored value), ``stopped_epoch``.
    """

    def __init__(self, model, loss, optimizer, *, clip_grad_norm=None, clip_grad_value=None,
                 scheduler=None, scheduler_interval="epoch", metrics="auto", progress=True,
                 verbose=None, seed=None, vocab=None, blas_threads=1):
        for attr in ("backward", "train", "eval"):
            if not callable(getattr(model, attr, None)):
                raise TypeError(f"model must be a fastrnn module (it has no {attr}())")
        if isinstance(loss, str):
            if loss not in _LOSSES:
                raise ValueError(f"loss must be a loss object or one of {sorted(_LOSSES)}, "
                                 f"got {loss!r}")
            loss = _LOSSES[loss]()
        if not callable(loss) or not callable(getattr(loss, "backward", None)):
            raise TypeError("loss must be callable as loss(outputs, targets) and have "
                            "backward() (e.g. fastrnn.CrossEntropyLoss())")
        if not (callable(getattr(optimizer, "step", None))
                and callable(getattr(optimizer, "zero_grad", None))):
            raise TypeError("optimizer must have step() and zero_grad() "
                            "(e.g. fastrnn.optim.Adam(model))")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got "
                             f"{scheduler_interval!r}")
        for name, value in (("clip_grad_norm", clip_grad_norm),
                            ("clip_grad_value", clip_grad_value)):
            if value is not None and not float(value) > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.progress = bool(progress)
        self.verbose = self.progress if verbose is None else bool(verbose)
        self.seed = seed
        self.vocab = vocab
        if blas_threads is not None and blas_threads != 1:
            raise ValueError("blas_threads must be 1 (limit BLAS to one thread while "
                             "training) or None (leave BLAS alone)")
        self.blas_threads = blas_threads
        self._is_ce = isinstance(loss, _losses.CrossEntropyLoss) or hasattr(loss, "ignore_index")
        self._names, self._custom = self._parse_metrics(metrics)
        self.history = {}
        self.step_losses = []
        self.state = None
        self.best = None
        self.best_epoch = None
        self.stopped_epoch = None
        self._used_iterators = []

    # -- configuration -----------------------------------------------------

    def _parse_metrics(self, metrics):
        if metrics == "auto" or metrics is None:
            return None, []          # resolved at the first batch
        if isinstance(metrics, str) or callable(metrics):
            metrics = [metrics]
        names, custom = [], []
        for m in metrics:
            if callable(m):
                custom.append((getattr(m, "__name__", f"metric{len(custom)}"), m))
            elif m == "loss":
                continue
            elif m in ("accuracy", "perplexity"):
                if not self._is_ce:
                    raise ValueError(f"metric {m!r} needs a cross-entropy loss")
                names.append(m)
            else:
                raise ValueError(f"unknown metric {m!r} (known: 'accuracy', 'perplexity', "
                                 f"or a callable)")
        return names, custom

    def _resolve_metrics(self, per_step):
        if self._names is None:
            names = []
            if self._is_ce:
                names.append("accuracy")
                if per_step:
                    names.append("perplexity")
            self._names = names
        return self._names

    @property
    def batch_first(self):
        model = self.model
        if isinstance(model, Sequential):
            for child in model:
                if _returns_state(child):
                    return bool(getattr(child, "batch_first", False))
            return False
        return bool(getattr(model, "batch_first", False))

    # -- data ----------------------------------------------------------------

    def _source(self, data, batch_size, shuffle, seed):
        if isinstance(data, Batch):
            return [data]
        if isinstance(data, tuple):
            if len(data) not in (2, 3):
                raise ValueError("array data must be a tuple (x, y) or (x, y, lengths)")
            return ArrayLoader(data[0], data[1], data[2] if len(data) == 3 else None,
                               batch_size=batch_size, shuffle=shuffle, seed=seed,
                               time_major=not self.batch_first)
        if hasattr(data, "__iter__") or callable(data):
            return data
        raise TypeError(f"data must be a tuple of arrays, an iterable of batches or a "
                        f"function returning one, got {type(data).__name__}")

    def _iterate(self, source, epoch, what):
        if callable(source) and not hasattr(source, "__iter__"):
            return iter(source())
        if hasattr(source, "set_epoch"):
            source.set_epoch(epoch)
        it = iter(source)
        if it is source:
            if any(used is source for used in self._used_iterators):
                raise ValueError(f"{what} is a one-shot iterator that was already used up; "
                                 f"pass a list, a loader, or a function returning a fresh "
                                 f"iterator for more than one pass")
            self._used_iterators.append(source)
        return it

    def _per_step(self, batch):
        if isinstance(self.model, SequenceClassifier):
            return False
        if isinstance(self.model, SequenceTagger):
            return True
        if batch.targets is None:
            return False
        x, y = np.shape(batch.inputs), np.shape(batch.targets)
        return len(x) >= 2 and len(y) >= 2 and x[:2] == y[:2]

    def _time_axis(self):
        return 1 if self.batch_first else 0

    def _mask(self, batch, per_step):
        if batch.mask is not None:
            return batch.mask
        if batch.lengths is not None and per_step:
            T = np.shape(batch.inputs)[self._time_axis()]
            return sequence_mask(batch.lengths, T, self.batch_first)
        return None

    def _chunks(self, batch, bptt, per_step):
        """Cut a batch into chunks of ``bptt`` steps (truncated BPTT). Yields
        ``(chunk, ended)``: ``ended`` flags the sequences that ended before the
        chunk (they run on padding; their state is kept), or None."""
        axis = self._time_axis()
        T = np.shape(batch.inputs)[axis]
        if bptt is None or T <= bptt:
            yield batch, None
            return
        if not per_step:
            raise ValueError("bptt chunking needs per-step targets (a tagger or language "
                             "model); a per-sequence target sees the whole sequence")
        full_mask = self._mask(batch, per_step)
        for k, start in enumerate(range(0, T, bptt)):
            stop = min(start + bptt, T)
            index = [slice(None)] * 2
            index[axis] = slice(start, stop)
            index = tuple(index)
            x = np.asarray(batch.inputs)[index]
            y = np.asarray(batch.targets)[index]
            mask = None
            if full_mask is not None:
                m = np.asarray(full_mask)
                mask = m[index] if m.ndim >= 2 and m.shape[axis] == T else m
            lengths = ended = None
            if batch.lengths is not None:
                lengths = np.clip(np.asarray(batch.lengths) - start, 0, stop - start)
                if lengths.max() == 0:
                    break
                # Sequences that already ended run on padding (their targets are
                # masked, their state is restored afterwards).
                ended = lengths == 0
                lengths = np.maximum(lengths, 1)
            yield Batch(x, y, lengths, mask, carry=batch.carry if k == 0 else True), ended

    # -- one step --------------------------------------------------------------

    def _forward(self, batch, state):
        kwargs = {}
        if batch.lengths is not None:
            kwargs["lengths"] = batch.lengths
        if state is not None:
            kwargs["hx"] = state
        result = self.model(batch.inputs, **kwargs)
        if _returns_state(self.model):
            out, new_state = result
        elif isinstance(self.model, Sequential):
            out, new_state = result, (dict(self.model.states) or None)
        else:
            out, new_state = result, getattr(self.model, "final_state", None)
        return out, new_state

    def _loss(self, out, targets, mask):
        if mask is None:
            return self.loss(out, targets)
        return self.loss(out, targets, mask=mask)

    def _update_meter(self, meter, out, batch, mask, loss_value, per_step):
        targets = np.asarray(batch.targets)
        if self._is_ce:
            valid = targets != getattr(self.loss, "ignore_index", -100)
            if mask is not None:
                valid = valid & np.broadcast_to(np.asarray(mask, dtype=bool), targets.shape)
            n = int(valid.sum())
            if "accuracy" in meter.names and n:
                meter.correct += int(((np.argmax(out, axis=-1) == targets) & valid).sum())
        else:
            n = (int(np.broadcast_to(np.asarray(mask, dtype=bool), np.shape(out)).sum())
                 if mask is not None else int(np.size(out)))
        if n and loss_value == loss_value:
            meter.loss_sum += float(loss_value) * n
            meter.count += n
        if meter.custom:
            weight = int(np.shape(batch.inputs)[1 - self._time_axis()])
            for name, fn in meter.custom:
                meter.custom_sums[name] += float(fn(out, targets, mask)) * weight
            meter.custom_weight += weight
        # throughput units: tokens for per-step targets, sequences otherwise
        shape = np.shape(batch.inputs)
        batch_size = shape[1 - self._time_axis()]
        if per_step:
            meter.units += (int(np.sum(batch.lengths)) if batch.lengths is not None
                            else shape[0] * shape[1])
        else:
            meter.units += int(batch_size)

    def _train_step(self, chunk, state, meter, per_step):
        self.optimizer.zero_grad()
        out, new_state = self._forward(chunk, state)
        mask = self._mask(chunk, per_step)
        loss_value = self._loss(out, chunk.targets, mask)
        self.model.backward(self.loss.backward())
        if self.clip_grad_value is not None:
            _optim.clip_grad_value_(self._grad_source(), self.clip_grad_value)
        if self.clip_grad_norm is not None:
            _optim.clip_grad_norm_(self._grad_source(), self.clip_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        self.step_losses.append(float(loss_value))
        self._update_meter(meter, out, chunk, mask, loss_value, per_step)
        return new_state

    def _grad_source(self):
        return self.optimizer if isinstance(self.optimizer, _optim.Optimizer) else self.model

    # -- epochs ----------------------------------------------------------------

    def _carry(self, state, batch, per_step):
        """The state to start ``batch`` from (None: zeros)."""
        if not (batch.carry and per_step) or state is None:
            return None
        batch_size = np.shape(batch.inputs)[1 - self._time_axis()]
        return state if _state_batch(state) == batch_size else None

    def _blas(self):
        return (single_threaded_blas() if self.blas_threads == 1
                else contextlib.nullcontext())

    def train_epoch(self, source, epoch=0, *, bptt=None, desc=None):
        """One pass over ``source`` (an iterable of batches, as ``fit`` takes it
        after batching); returns the epoch's training metrics."""
        with self._blas():
            return self._train_epoch(source, epoch, bptt, desc)

    def _train_epoch(self, source, epoch, bptt, desc):
        self.model.train()
        meter = None
        state = None
        bar = None
        start = time.perf_counter()
        total = len(source) if hasattr(source, "__len__") else None
        if self.progress:
            tqdm = _get_tqdm()
            if tqdm is not None:
                bar = tqdm(total=total, desc=desc or f"epoch {epoch + 1}", unit="batch",
                           leave=False, dynamic_ncols=True, file=sys.stderr)
        try:
            for item in self._iterate(source, epoch, "train_data"):
                batch = _as_batch(item)
                per_step = self._per_step(batch)
                if meter is None:
                    meter = _Meter(self._resolve_metrics(per_step), self._custom)
                state = self._carry(state, batch, per_step)
                for chunk, ended in self._chunks(batch, bptt, per_step):
                    state = self._carry(state, chunk, per_step)
                    new_state = self._train_step(chunk, state, meter, per_step)
                    new_state = _detach(new_state) if per_step else None
                    if ended is not None and ended.any():
                        new_state = _keep_ended(new_state, state, ended)
                    state = new_state
                if bar is not None:
                    elapsed = max(time.perf_counter() - start, 1e-9)
                    unit = "tok/s" if per_step else "seq/s"
                    bar.set_postfix_str(f"loss {meter.mean_loss():.4f}, "
                                        f"{_fmt_rate(meter.units / elapsed)} {unit}",
                                        refresh=False)
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        if meter is None:
            raise ValueError("train_data yielded no batches")
        self.state = state
        elapsed = time.perf_counter() - start
        logs = meter.result()
        logs["time"] = elapsed
        logs["throughput"] = meter.units / elapsed if elapsed > 0 else float("nan")
        self._unit = "tok/s" if per_step else "seq/s"
        return logs

    def evaluate(self, data, *, batch_size=32, prefix=""):
        """Metrics of the model on ``data`` (eval mode, no gradients; the state
        is carried across ``carry=True`` batches). Keys get ``prefix``."""
        source = self._source(data, batch_size, shuffle=False, seed=0)
        with self._blas():
            return self._evaluate(source, prefix)

    def _evaluate(self, source, prefix):
        was_training = bool(getattr(self.model, "training", True))
        self.model.eval()
        meter = None
        state = None
        try:
            for item in self._iterate(source, 0, "val_data"):
                batch = _as_batch(item)
                per_step = self._per_step(batch)
                if meter is None:
                    meter = _Meter(self._resolve_metrics(per_step), self._custom)
                state = self._carry(state, batch, per_step)
                out, new_state = self._forward(batch, state)
                mask = self._mask(batch, per_step)
                loss_value = self._loss(out, batch.targets, mask)
                self._update_meter(meter, out, batch, mask, loss_value, per_step)
                state = _detach(new_state) if per_step else None
        finally:
            if was_training:
                self.model.train()
        if meter is None:
            raise ValueError("val_data yielded no batches")
        return meter.result(prefix)

    def fit(self, train_data, epochs=1, val_data=None, *, batch_size=32, shuffle=True,
            bptt=None, early_stopping_patience=None, monitor=None, min_delta=0.0,
            restore_best=False, checkpoint_path=None, save_best_only=None, callbacks=()):
        """Train for ``epochs`` epochs; returns the history (metric -> list per epoch).

        - ``batch_size`` / ``shuffle``: for array data (a tuple).
        - ``bptt``: cut batches longer than ``bptt`` steps into chunks, carrying
          the (detached) state between them.
        - ``val_data``: evaluated after every epoch (``val_loss``, ...).
        - ``early_stopping_patience``: stop after that many epochs without an
          improvement of ``monitor`` (default "val_loss" with validation data,
          else "loss"; accuracies are maximised, the rest minimised) by more
          than ``min_delta``. ``restore_best``: load the best epoch's weights at
          the end.
        - ``checkpoint_path``: save model, optimiser, scheduler, vocabulary and
          history there (``fastrnn.io`` format; ``{epoch}`` in the path is
          replaced by the epoch number) after every epoch, or only when the
          monitored value improved (``save_best_only``, the default when there
          is validation data).
        - ``callbacks``: functions ``fn(trainer, epoch, logs)`` called after each
          epoch; one returning True stops training.
        """
        epochs = int(epochs)
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        if bptt is not None and int(bptt) < 1:
            raise ValueError(f"bptt must be a positive int, got {bptt!r}")
        if early_stopping_patience is not None and int(early_stopping_patience) < 1:
            raise ValueError("early_stopping_patience must be a positive int")
        train_source = self._source(train_data, batch_size, shuffle, self.seed)
        val_source = (None if val_data is None
                      else self._source(val_data, batch_size, shuffle=False, seed=0))
        monitor = monitor or ("val_loss" if val_source is not None else "loss")
        maximize = "accuracy" in monitor
        if save_best_only is None:
            save_best_only = val_source is not None
        self.history = {}
        self.step_losses = []
        self._used_iterators = []
        self.best, self.best_epoch, self.stopped_epoch = None, None, None
        best_state = None
        bad_epochs = 0
        for epoch in range(epochs):
            lr = (self.optimizer.param_groups[0]["lr"]
                  if getattr(self.optimizer, "param_groups", None) else None)
            logs = self.train_epoch(train_source, epoch, bptt=bptt,
                                    desc=f"epoch {epoch + 1}/{epochs}")
            if val_source is not None:
                logs.update(self.evaluate(val_source, prefix="val_"))
            logs["lr"] = lr
            if self.scheduler is not None and self.scheduler_interval == "epoch":
                self.scheduler.step()
            for key, value in logs.items():
                self.history.setdefault(key, []).append(value)
            if monitor not in logs:
                raise ValueError(f"monitor {monitor!r} is not a logged metric "
                                 f"(logged: {sorted(logs)})")
            value = logs[monitor]
            improved = value == value and (
                self.best is None
                or (value > self.best + min_delta if maximize else value < self.best - min_delta))
            if improved:
                self.best, self.best_epoch, bad_epochs = value, epoch + 1, 0
                if restore_best:
                    best_state = self.model.state_dict()
            else:
                bad_epochs += 1
            if self.verbose:
                self._print_epoch(epoch, epochs, logs)
            if checkpoint_path is not None and (improved or not save_best_only):
                self.save(str(checkpoint_path).format(epoch=epoch + 1), epoch=epoch + 1)
            stop = any(bool(cb(self, epoch + 1, logs)) for cb in callbacks)
            if early_stopping_patience is not None and bad_epochs >= early_stopping_patience:
                if self.verbose:
                    print(f"early stopping: no improvement of {monitor} for {bad_epochs} "
                          f"epochs (best {self.best:.4f} at epoch {self.best_epoch})",
                          flush=True)
                stop = True
            if stop:
                self.stopped_epoch = epoch + 1
                break
        if restore_best and best_state is not None:
            self.model.load_state_dict(best_state)
        return self.history

    def _print_epoch(self, epoch, epochs, logs):
        def part(prefix):
            items = []
            for name in ["loss"] + list(self._names or []) + [n for n, _ in self._custom]:
                key = prefix + name
                if key in logs:
                    label = prefix + _SHORT.get(name, name)
                    fmt = ".3f" if name == "accuracy" else ".4f"
                    items.append(f"{label} {logs[key]:{fmt}}")
            return "  ".join(items)
        text = f"epoch {epoch + 1}/{epochs}  {part('')}"
        if any(k.startswith("val_") for k in logs):
            text += f" | {part('val_')}"
        text += f" | {_fmt_rate(logs['throughput'])} {self._unit}  {logs['time']:.1f} s"
        print(text, flush=True)

    def save(self, path, epoch=None):
        """Save the model, optimiser, scheduler, vocabulary and history to ``path``
        (``fastrnn.io.save``)."""
        from . import io
        io.save(path, self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                vocab=self.vocab,
                extra={"trainer": {"epoch": epoch, "history": self.history,
                                   "best": self.best, "best_epoch": self.best_epoch}})
