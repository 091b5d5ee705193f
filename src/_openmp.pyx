# cython: language_level=3
"""OpenMP build information, the thread-count resolver, and a measure of how
fast data moves between two CPUs (cross_core_read, for the benchmarks).

``_openmp_parallelism_enabled`` is decided at compile time: a build without
OpenMP (compiler without support, or FASTRNN_NO_OPENMP=1) always runs one thread.
"""
import os

import numpy as np

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

cdef extern from *:
    """
    #include <sched.h>
    #include <time.h>
    #ifndef __linux__
    static int sched_getcpu(void) { return -1; }   /* unknown off Linux */
    #endif

    static double fr_seconds(void)
    {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return t.tv_sec + 1e-9 * t.tv_nsec;
    }

    /* One float of each cache line: the rate at which lines reach this core. */
    static float fr_read_lines(const float *buf, size_t n)
    {
        float sum = 0.0f;
        for (size_t i = 0; i < n; i += 16)
            sum += buf[i];
        return sum;
    }

    /* The best rates (bytes/s) over `rounds` at which thread 0 of a team of two
     * reads n floats just written by thread 1 (across) and by itself (own);
     * cpus: the CPU each ran on. Returns 0 when no team of two ran. */
    static int fr_cross_core_read(float *buf, size_t n, int rounds, double *across,
                                  double *own, int *cpus)
    {
        double best_across = 1e30, best_own = 1e30;
        int team = 0;
        volatile float sink = 0.0f;
    #ifdef _OPENMP
        #pragma omp parallel num_threads(2)
        {
            const int tid = omp_get_thread_num();
            #pragma omp single
            team = omp_get_num_threads();
            if (team == 2) {
                cpus[tid] = sched_getcpu();
                for (int r = 0; r < rounds; r++) {
                    if (tid == 1)
                        for (size_t i = 0; i < n; i++)
                            buf[i] = (float)r;
                    #pragma omp barrier
                    if (tid == 0) {
                        double start = fr_seconds();
                        sink += fr_read_lines(buf, n);
                        double t = fr_seconds() - start;
                        best_across = t < best_across ? t : best_across;
                        for (size_t i = 0; i < n; i++)
                            buf[i] = (float)r;
                        start = fr_seconds();
                        sink += fr_read_lines(buf, n);
                        t = fr_seconds() - start;
                        best_own = t < best_own ? t : best_own;
                    }
                    #pragma omp barrier
                }
            }
        }
    #endif
        (void)sink;
        if (team != 2)
            return 0;
        *across = n * sizeof(float) / best_across;
        *own = n * sizeof(float) / best_own;
        return 1;
    }
    """
    int fr_cross_core_read(float *buf, size_t n, int rounds, double *across, double *own,
                           int *cpus) nogil


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


def cross_core_read(nbytes=4 << 20, rounds=10):
    """How fast one CPU reads what another has just written, against what it
    wrote itself: {"across": bytes/s, "own": bytes/s, "cpus": (cpu, cpu)}, the
    best of `rounds` reads of an `nbytes` buffer by one thread of a team of two;
    None without OpenMP or a team of two. Two CPUs of one virtual machine can
    share a cache at one time and not at another: then "across" falls to a
    fraction of "own", and so do the gains of a second thread wherever the
    threads exchange data (see bench/README.md)."""
    if not FASTRNN_OPENMP_ENABLED or max_threads() < 2:
        return None
    cdef float[::1] buf = np.zeros(max(16, int(nbytes) // 4), np.float32)
    cdef double across = 0, own = 0
    cdef int cpus[2]
    cdef int ran, repeats = max(1, rounds)
    cdef size_t n = buf.shape[0]
    cpus[0] = cpus[1] = -1
    with nogil:
        ran = fr_cross_core_read(&buf[0], n, repeats, &across, &own, cpus)
    if not ran:
        return None
    return {"across": across, "own": own, "cpus": (cpus[0], cpus[1])}
