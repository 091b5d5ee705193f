# cython: language_level=3
"""OpenMP build information and the thread-count resolver.

``_openmp_parallelism_enabled`` is decided at compile time: a build without
OpenMP (compiler without support, or FASTRNN_NO_OPENMP=1) always runs one thread.
"""
import os

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTRNN_OPENMP_ENABLED 1
    #else
    #define FASTRNN_OPENMP_ENABLED 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    """
    bint FASTRNN_OPENMP_ENABLED
    int omp_get_max_threads() nogil


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(FASTRNN_OPENMP_ENABLED)


def max_threads():
    """Threads OpenMP would use by default: the CPUs this process may run on,
    or OMP_NUM_THREADS when it is set (1 without OpenMP)."""
    if not FASTRNN_OPENMP_ENABLED:
        return 1
    return max(1, min(omp_get_max_threads(), _cpus_available()))


_cpus = None


def _cpus_available():
    # Read once: the affinity mask rarely changes, and the call is a syscall.
    global _cpus
    if _cpus is None:
        _cpus = _read_cpus()
    return _cpus


def _read_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
