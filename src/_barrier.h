/* A barrier for the threads of one parallel region that gives its CPU away
 * while it waits: the per-step barrier of the hidden-unit splits.
 *
 * Why not `#pragma omp barrier` (libgomp): it costs more (about 190 ns against
 * 60 ns for two threads in a loop of barriers on this machine; 2-thread forward
 * at batch 1, H=256, T=100: LSTM 0.41 -> 0.40 ms, GRU 0.34 -> 0.33 ms, RNN
 * 0.137 -> 0.128 ms), and a thread waiting in it spins GOMP_SPINCOUNT rounds of
 * `pause` before it sleeps, about one scheduler tick (4 ms) on AMD Zen, where
 * `pause` is slow. When the scheduler has queued the other thread on the
 * waiter's own CPU (seen here: it leaves libgomp's idle workers on the
 * caller's CPU at times), that thread cannot run until the spinner is
 * preempted. This barrier spins briefly, then calls sched_yield(), which lets a
 * thread queued on the same CPU run at once. (The start and end of a parallel
 * region stay libgomp's.)
 *
 * Sense by phase: every thread keeps its own count of barriers passed; the
 * last to arrive resets the arrival count and publishes the next phase.
 * Acquire/release ordering makes every write before the barrier visible to
 * every thread after it. */
#ifndef FASTRNN_BARRIER_H
#define FASTRNN_BARRIER_H

#include <sched.h>
#include <stdatomic.h>
#if defined(__x86_64__) || defined(__SSE2__)
#include <immintrin.h>
#define FR_CPU_RELAX() _mm_pause()
#else
#define FR_CPU_RELAX() ((void)0)
#endif

/* Rounds of spinning before yielding: a few microseconds, longer than the
 * usual wait at a per-step barrier of threads running on their own CPUs. */
#define FR_BARRIER_SPINS 256

typedef struct {
    _Alignas(64) atomic_int arrived;
    _Alignas(64) atomic_uint phase;
} fr_barrier;

/* Before the parallel region (its start publishes the zeros to every thread). */
static void fr_barrier_init(fr_barrier *b)
{
    atomic_init(&b->arrived, 0);
    atomic_init(&b->phase, 0);
}

/* n_threads: the region's team size; *passed: the calling thread's count of
 * barriers passed, 0 at the start of the region. */
static void fr_barrier_wait(fr_barrier *b, int n_threads, unsigned int *passed)
{
    const unsigned int next = ++*passed;
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == n_threads - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&b->phase, next, memory_order_release);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&b->phase, memory_order_acquire) != next; spins++) {
        if (spins < FR_BARRIER_SPINS)
            FR_CPU_RELAX();
        else
            sched_yield();
    }
}

#endif
