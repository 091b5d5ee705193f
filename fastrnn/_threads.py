"""Thread counts: the one resolver, the global default, and BLAS limits.

The kernels are the only parallel level: they split work across OpenMP
threads and call BLAS single-threaded inside. SciPy's OpenBLAS has its own
thread pool; running it multi-threaded inside our OpenMP region oversubscribes
the cores, so every kernel call runs under ``single_threaded_blas()``.
"""
import contextlib
import warnings

import numpy as np

from . import _openmp

_default_n_threads = None


def set_num_threads(n_threads):
    """Set the default thread count of every layer whose ``n_threads`` is None.

    ``None`` restores the default: the CPUs this process may use (honouring
    OMP_NUM_THREADS). Negative values count back from that: -1 is all of them.
    """
    global _default_n_threads
    _default_n_threads = None if n_threads is None else _check_n_threads(n_threads)


def get_num_threads():
    """The thread count a layer with ``n_threads=None`` uses now."""
    return resolve_n_threads(None)


def _check_n_threads(n_threads):
    if (isinstance(n_threads, (bool, np.bool_)) or not isinstance(n_threads, (int, np.integer))
            or n_threads == 0):
        raise ValueError(f"n_threads must be None or a non-zero int, got {n_threads!r}")
    return int(n_threads)


def resolve_n_threads(n_threads):
    """None -> the global default; n > 0 -> n; n < 0 -> cpus + 1 + n (at least 1).

    A build without OpenMP always gives 1 (scikit-learn's
    ``_openmp_effective_n_threads`` rule).
    """
    if n_threads is None:
        n_threads = _default_n_threads
        if n_threads is None:
            return _default_count()
    if type(n_threads) is int and n_threads > 0 and _OPENMP:
        return n_threads  # the common case, first (a streaming step calls this)
    if not _OPENMP:
        return 1
    n_threads = _check_n_threads(n_threads)
    if n_threads < 0:
        return max(1, _openmp.max_threads() + 1 + n_threads)
    return n_threads


_OPENMP = _openmp.openmp_enabled()
_max_threads = None


def _default_count():
    # OpenMP reads OMP_NUM_THREADS once, at start-up: the count cannot change later.
    global _max_threads
    if _max_threads is None:
        _max_threads = _openmp.max_threads() if _OPENMP else 1
    return _max_threads


_blas_controller = None


def single_threaded_blas():
    """Context manager: BLAS libraries limited to one thread, restored on exit."""
    global _blas_controller
    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            warnings.warn("threadpoolctl is not installed: BLAS threads are not limited "
                          "inside fastrnn's kernels, which may oversubscribe the CPU")
            _blas_controller = False
        else:
            _blas_controller = ThreadpoolController().select(user_api="blas")
    if _blas_controller is False:
        return contextlib.nullcontext()
    return _blas_controller.limit(limits=1)
