"""Save and load a whole model in one file: architecture, weights, optimiser
(and scheduler) state, vocabulary and free-form metadata.

::

    fastrnn.io.save("lm.npz", model, optimizer=opt, vocab=vocab)
    ckpt = fastrnn.io.load("lm.npz")
    ckpt.model, ckpt.optimizer, ckpt.vocab      # rebuilt, ready to use
    model = fastrnn.io.load_model("lm.npz")      # just the model

File format "fastrnn-model", version 1
--------------------------------------
A NumPy ``.npz`` archive (a zip of ``.npy`` arrays, uncompressed), readable
with ``np.load(path, allow_pickle=False)``: nothing in it is pickled, and
loading never runs code from the file. Its entries:

- ``__fastrnn_meta__``: uint8 array holding UTF-8 JSON (read it with
  ``json.loads(archive["__fastrnn_meta__"].tobytes())``)::

      {"format": "fastrnn-model", "version": 1, "fastrnn_version": "0.1.0",
       "created": "2026-01-01T12:00:00+00:00",
       "model": {"class": "fastrnn.nn.LanguageModel", "config": {...}},
       "params": {"embed.weight": {"shape": [65, 128], "dtype": "float32"}, ...},
       "optimizer": null | {"class": "Adam", "param_groups": [...],
                            "state": [[param name, {key: scalar | {"__array__": entry}}], ...]},
       "scheduler": null | {"class": "StepLR", "state": {...}},
       "vocab": null | {"type": "char", "chars": "...", "unk": null},
       "extra": {...}}

  ``model`` is ``fastrnn.nn.module_config(model)``: class paths and
  constructor arguments, nested for containers; a class outside fastrnn must
  be registered (``fastrnn.nn.register_module_class``) to be loaded. JSON has
  no tuples: a tuple is stored as ``{"__tuple__": [...]}``.
- ``param/<name>``: each model parameter under its ``state_dict()`` name.
- ``optimizer/<i>/<key>``: optimiser state arrays (``i`` indexes
  ``optimizer.state``).

Readers must reject a different ``format`` and a ``version`` newer than they
know; version 1 readers ignore unknown metadata keys.

Errors: a truncated, corrupt or non-fastrnn file, a wrong format or version, a
missing array or one of the wrong shape raises ``ModelFileError`` (a
``ValueError``) naming the file and the problem. A missing file raises
``FileNotFoundError``.

Saving writes a temporary file in the destination's directory, flushes it to
disk and renames it over the destination (``os.replace``, atomic on POSIX and
Windows): a crash or error mid-way leaves any existing file untouched.
"""
import contextlib
import datetime
import inspect
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from . import optim as _optim
from .nn import module_config, module_from_config

__all__ = ["save", "load", "load_model", "read_metadata", "Checkpoint", "ModelFileError",
           "FORMAT", "VERSION", "META_KEY"]

FORMAT = "fastrnn-model"
VERSION = 1
META_KEY = "__fastrnn_meta__"


class ModelFileError(ValueError):
    """A model file that cannot be loaded: truncated or corrupt, not a fastrnn
    model file, an unsupported format version, or missing/invalid arrays.
    ``path`` and ``problem`` hold the file and what is wrong with it."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# -- JSON with tuples ---------------------------------------------------------------

def _encode(value, where):
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"{where}: dict keys must be strings to be saved, got {key!r}")
        return {k: _encode(v, where) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"{where}: a {type(value).__name__} cannot be saved in a model file's "
                    f"metadata (JSON values, tuples and numpy scalars only)")


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_decode(v) for v in value["__tuple__"])
        return {k: _decode(v) for k, v in value.items()}
    return value


# -- saving --------------------------------------------------------------------

def _vocab_config(vocab):
    if vocab is None:
        return None
    to_config = getattr(vocab, "to_config", None)
    if callable(to_config):
        return _encode(to_config(), "vocab")
    if isinstance(vocab, (list, tuple)) and all(isinstance(t, str) for t in vocab):
        return {"type": "list", "tokens": list(vocab)}
    raise TypeError(f"vocab must have to_config() (e.g. fastrnn.data.CharVocab) or be a list "
                    f"of strings, got {type(vocab).__name__}")


def _optimizer_entry(optimizer, arrays):
    state_dict = optimizer.state_dict()
    state = []
    for i, (name, entry) in enumerate(state_dict["state"].items()):
        saved = {}
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                array_key = f"optimizer/{i}/{key}"
                arrays[array_key] = value
                saved[key] = {"__array__": array_key}
            else:
                saved[key] = _encode(value, f"optimizer state {name}.{key}")
        state.append([name, saved])
    return {"class": type(optimizer).__name__,
            "param_groups": _encode(state_dict["param_groups"], "optimizer param_groups"),
            "state": state}


def _write_archive(fileobj, arrays):
    """Write the arrays as an .npz to an open binary file (a hook for tests)."""
    np.savez(fileobj, **arrays)


def _file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path, arrays):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_archive(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError, AttributeError):     # make the rename durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save(path, model, optimizer=None, *, scheduler=None, vocab=None, extra=None):
    """Save ``model`` (architecture from ``fastrnn.nn.module_config``, weights),
    and optionally the optimiser's and scheduler's state, a vocabulary and
    ``extra`` (JSON-able dict) to ``path``, atomically (see the module doc).
    The file is written exactly at ``path`` (no extension added). Returns
    ``path``."""
    path = os.fspath(path)
    arrays = {}
    params = {}
    for name, value in model.state_dict().items():
        value = np.asarray(value)
        arrays[f"param/{name}"] = value
        params[name] = {"shape": list(value.shape), "dtype": value.dtype.name}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "fastrnn_version": _fastrnn_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": _encode(module_config(model), "model config"),
        "params": params,
        "optimizer": None if optimizer is None else _optimizer_entry(optimizer, arrays),
        "scheduler": (None if scheduler is None else
                      {"class": type(scheduler).__name__,
                       "state": _encode(scheduler.state_dict(), "scheduler state")}),
        "vocab": _vocab_config(vocab),
        "extra": _encode(extra or {}, "extra"),
    }
    text = json.dumps(meta, allow_nan=True)
    arrays[META_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    _atomic_write(path, arrays)
    return path


def _fastrnn_version():
    from . import __version__
    return __version__


# -- loading -------------------------------------------------------------------

class Checkpoint:
    """What ``load`` returns: ``model`` (rebuilt, weights loaded, training mode),
    ``optimizer`` (rebuilt over ``model`` with its saved hyperparameters and
    state, if one was saved and is a single-group fastrnn optimiser, else None),
    ``optimizer_state`` (the saved ``state_dict()``, for
    ``my_optimizer.load_state_dict``), ``scheduler_state`` (for
    ``scheduler.load_state_dict``), ``vocab`` (a ``CharVocab``, a list of
    tokens, or None), ``extra`` and ``metadata`` (the whole JSON)."""

    def __init__(self, path, model, optimizer, optimizer_state, scheduler_state, vocab, extra,
                 metadata):
        self.path = path
        self.model = model
        self.optimizer = optimizer
        self.optimizer_state = optimizer_state
        self.scheduler_state = scheduler_state
        self.vocab = vocab
        self.extra = extra
        self.metadata = metadata

    def __repr__(self):
        opt = type(self.optimizer).__name__ if self.optimizer is not None else None
        return (f"Checkpoint({self.path!r}, model={type(self.model).__name__}, optimizer={opt}, "
                f"vocab={self.vocab!r})")


# What reading a damaged archive raises: zipfile also raises NotImplementedError
# (a compression method or zip version it does not know) and RuntimeError (an
# entry marked encrypted) when those header fields are damaged.
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError,
                IndexError, TypeError, NotImplementedError, RuntimeError)


class _Archive:
    """An open .npz whose every failure becomes a ModelFileError."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:              # FileNotFoundError etc. propagate
            head = f.read(8)
        if not head:
            raise ModelFileError(path, "the file is empty")
        if head.startswith(b"\x93NUMPY"):
            raise ModelFileError(path, "holds a single .npy array, not a fastrnn model archive")
        if not head.startswith(b"PK"):
            raise ModelFileError(path, "not a .npz (zip) archive: not a fastrnn model file, "
                                       "or a corrupt one")
        try:
            archive = np.load(path, allow_pickle=False)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except _READ_ERRORS as exc:
            raise ModelFileError(path, f"not a readable .npz archive (truncated or corrupt "
                                       f"file?): {exc}") from exc
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ModelFileError(path, "holds a single .npy array, not a fastrnn model archive")
        self.archive = archive

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.archive.close()

    def get(self, key):
        if key not in self.archive.files:
            raise ModelFileError(self.path, f"missing array {key!r}")
        try:
            return self.archive[key]
        except _READ_ERRORS as exc:
            raise ModelFileError(self.path, f"array {key!r} is corrupt: {exc}") from exc

    def metadata(self):
        if META_KEY not in self.archive.files:
            raise ModelFileError(self.path, f"no {META_KEY!r} entry: not a fastrnn model file")
        raw = self.get(META_KEY)
        try:
            meta = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ModelFileError(self.path, f"the metadata is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise ModelFileError(self.path, "the metadata is not a JSON object")
        if meta.get("format") != FORMAT:
            raise ModelFileError(self.path, f"format {meta.get('format')!r} is not {FORMAT!r}")
        version = meta.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ModelFileError(self.path, f"invalid format version {version!r}")
        if version > VERSION:
            raise ModelFileError(self.path, f"format version {version} is newer than this "
                                            f"fastrnn reads ({VERSION}); upgrade fastrnn")
        for key in ("model", "params"):
            if key not in meta:
                raise ModelFileError(self.path, f"the metadata has no {key!r} entry")
        return meta


def read_metadata(path):
    """The JSON metadata of a model file (checked: format and version)."""
    with _Archive(os.fspath(path)) as archive:
        return archive.metadata()


def _load_vocab(config):
    if config is None:
        return None
    if config.get("type") == "char":
        from .data import CharVocab
        return CharVocab.from_config(config)
    if config.get("type") == "list":
        return list(config["tokens"])
    return config


def _rebuild_optimizer(entry, model, state_dict, path):
    cls = getattr(_optim, str(entry.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, _optim.Optimizer)):
        return None
    groups = state_dict["param_groups"]
    names = [name for name, _ in model.named_parameters()]
    if len(groups) != 1 or list(groups[0]["params"]) != names:
        return None
    accepted = inspect.signature(cls.__init__).parameters
    hyper = {k: v for k, v in groups[0].items() if k in accepted and k not in ("params", "grads")}
    try:
        optimizer = cls(model, **hyper)
        optimizer.load_state_dict(state_dict)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(path, f"cannot restore the {entry.get('class')} optimiser: "
                                   f"{exc}") from exc
    return optimizer


def load(path):
    """Load a model file written by ``save``; returns a ``Checkpoint``."""
    path = os.fspath(path)
    with _Archive(path) as archive:
        meta = archive.metadata()
        try:
            model = module_from_config(_decode(meta["model"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelFileError(path, f"cannot rebuild the model from its config: "
                                       f"{exc}") from exc
        expected = model.state_dict()
        params = meta["params"]
        if not isinstance(params, dict) or set(params) != set(expected):
            saved = set(params) if isinstance(params, dict) else set()
            raise ModelFileError(path, f"the saved parameters do not match the model: missing "
                                       f"{sorted(set(expected) - saved)}, unexpected "
                                       f"{sorted(saved - set(expected))}")
        state = {}
        for name, current in expected.items():
            value = archive.get(f"param/{name}")
            if value.shape != current.shape:
                raise ModelFileError(path, f"array 'param/{name}' has shape {value.shape}, the "
                                           f"model needs {current.shape}")
            if not np.issubdtype(value.dtype, np.floating):
                raise ModelFileError(path, f"array 'param/{name}' has dtype {value.dtype}, "
                                           f"not floating point")
            state[name] = value
        model.load_state_dict(state)
        model.train()
        optimizer = optimizer_state = None
        entry = meta.get("optimizer")
        if entry is not None:
            try:
                opt_state = {}
                for name, saved in entry["state"]:
                    opt_state[name] = {
                        key: (np.array(archive.get(v["__array__"]))
                              if isinstance(v, dict) and set(v) == {"__array__"} else _decode(v))
                        for key, v in saved.items()}
                optimizer_state = {"state": opt_state,
                                   "param_groups": _decode(entry["param_groups"])}
            except ModelFileError:
                raise
            except (TypeError, KeyError, ValueError) as exc:
                raise ModelFileError(path, f"invalid optimizer entry: {exc}") from exc
            optimizer = _rebuild_optimizer(entry, model, optimizer_state, path)
        scheduler = meta.get("scheduler")
        scheduler_state = None if scheduler is None else _decode(scheduler.get("state"))
        vocab = _load_vocab(meta.get("vocab"))
        return Checkpoint(path, model, optimizer, optimizer_state, scheduler_state, vocab,
                          _decode(meta.get("extra") or {}), meta)


def load_model(path):
    """Just the model of a model file (weights loaded, training mode)."""
    return load(path).model
