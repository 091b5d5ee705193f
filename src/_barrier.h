/* A barrier for the threads of one parallel region: the per-step barrier of
 * the hidden-unit splits, and the end of the batch splits.
 *
 * Why not `#pragma omp barrier` (libgomp): it costs more, about 190 ns against
 * 60 ns for two threads in a loop of barriers on this machine, with more
 * cache-line transfers between the cores, which is what the per-step exchange
 * pays for when this VM's two vCPUs are far apart. 2-thread forwards, libgomp's
 * barrier against this one, in two interleaved runs: B=1 H=256 T=100 LSTM
 * 0.494 -> 0.471 and 0.421 -> 0.413 ms, GRU 0.413 -> 0.386 and 0.358 -> 0.348
 * ms, RNN 0.159 -> 0.139 and 0.224 -> 0.226 ms; B=8 H=128 T=50 GRU 0.408 ->
 * 0.368 and 0.407 -> 0.385 ms.
 *
 * Waiting: spin as long as libgomp does by default (FR_BARRIER_SPINS rounds of
 * `pause`), and only then yield. Giving the CPU away sooner made things worse
 * here: yielding after 256 rounds, or sleeping on a futex, let the scheduler
 * keep both threads on one CPU, taking turns (50-100 context switches per
 * call), in 12-26 of 40 calls with ONNX Runtime run in the same process; spinning
 * this long had no such call in 40, as with libgomp's barrier.
 *
 * Sense by count: every thread keeps its own count of barriers passed. Small
 * teams (FR_FLAG_THREADS) publish it in a flag per thread and wait for every
 * other flag to reach it: against one arrival counter and a phase, 2-thread
 * forwards at B=1 H=256 T=100, interleaved, with the cores far apart (this
 * VM's slow state): RNN 0.203 -> 0.196 and 0.93x, GRU 0.451 -> 0.432 and
 * 0.98x, LSTM 0.528 -> 0.507 and 0.98x ms; with the cores close, 0.99-1.00x.
 * Larger teams: the last to arrive resets the arrival count and publishes the
 * next phase. Acquire/release ordering makes every write before the barrier
 * visible to every thread after it. */
#ifndef FASTRNN_BARRIER_H
#define FASTRNN_BARRIER_H

#include <sched.h>
#include <stdatomic.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__SSE2__)
#include <immintrin.h>
#define FR_CPU_RELAX() _mm_pause()
#else
#define FR_CPU_RELAX() ((void)0)
#endif

/* Rounds of spinning before yielding: libgomp's default GOMP_SPINCOUNT
 * (a `pause` takes about 23 ns on this VM, so about 7 ms). */
#define FR_BARRIER_SPINS 300000

/* Rounds before yielding at the end of a batch split (fr_barrier_finish),
 * about 50 us. Each thread runs its rows with no barrier until the end of the
 * region; there libgomp's own barrier spins as long as above. In the bench,
 * right after ONNX Runtime's pool had spun on the other CPU, the scheduler at
 * times queued our second thread on the caller's CPU, and every call then took
 * a whole 4 ms tick while the caller spun (2-thread forward at batch 8, 4 ms
 * medians in 2 of 8 runs of the rows). Yielding after this short spin lets the
 * queued thread run there instead: 0 such runs in 14, and medians as low as
 * with the hidden split or lower. */
#define FR_FINISH_SPINS 2000

/* Threads in fastrnn's parallel regions with these barriers, process-wide
 * (fr_team_enter/leave around each region). When there are more than CPUs,
 * some are descheduled, and spinning FR_BARRIER_SPINS rounds for one of them
 * costs a time slice per step: two threads each calling a 2-thread small-batch
 * forward on this 2-CPU machine took 96 ms a call against 0.5 alone. Then a
 * waiter spins FR_THROTTLED_SPINS rounds (about 23 us) before yielding, as
 * libgomp's own barriers do when it runs more threads than CPUs (its throttled
 * spin count is 1000). */
#define FR_THROTTLED_SPINS 1000
static atomic_int fr_team_threads;
static atomic_int fr_cpus;

static void fr_team_enter(int n_threads)
{
    if (atomic_load_explicit(&fr_cpus, memory_order_relaxed) == 0) {
#ifdef _OPENMP
        atomic_store_explicit(&fr_cpus, omp_get_num_procs(), memory_order_relaxed);
#else
        atomic_store_explicit(&fr_cpus, 1, memory_order_relaxed);
#endif
    }
    atomic_fetch_add_explicit(&fr_team_threads, n_threads, memory_order_relaxed);
}

static void fr_team_leave(int n_threads)
{
    atomic_fetch_sub_explicit(&fr_team_threads, n_threads, memory_order_relaxed);
}

static int fr_team_threads_now(void)
{
    return atomic_load_explicit(&fr_team_threads, memory_order_relaxed);
}

/* Up to FR_FLAG_THREADS threads, each announces its arrival in a flag of its
 * own (one cache line each) and waits until every other flag shows the same
 * barrier: after the last arrival, one line moves to each waiter. With more
 * threads: an arrival counter and a phase (their own lines), which moves more
 * lines per barrier (the counter from thread to thread, then the phase). */
#define FR_FLAG_THREADS 8

/* Teams of up to this many threads use the flags (at most FR_FLAG_THREADS);
 * tests lower it to check the counter on two threads. */
static int fr_barrier_flag_threads = FR_FLAG_THREADS;

typedef struct {
    atomic_uint value;
    char separate_lines[64 - sizeof(atomic_uint)];
} fr_barrier_flag;

/* The struct lives in a Python object or on a stack, neither aligned to a line:
 * the padding keeps every field on a line of its own all the same. */
typedef struct {
    atomic_int arrived;
    char separate_lines[64 - sizeof(atomic_int)];
    atomic_uint phase;
    char separate_lines2[64 - sizeof(atomic_uint)];
    fr_barrier_flag flags[FR_FLAG_THREADS];
} fr_barrier;

/* Before the parallel region (its start publishes the zeros to every thread). */
static void fr_barrier_init(fr_barrier *b)
{
    atomic_init(&b->arrived, 0);
    atomic_init(&b->phase, 0);
    for (int i = 0; i < FR_FLAG_THREADS; i++)
        atomic_init(&b->flags[i].value, 0);
}

static inline void fr_barrier_pause(long *spins, long max_spins)
{
    if (*spins < max_spins) {
        ++*spins;
        FR_CPU_RELAX();
        /* Checked once per wait, and only in a long one: a short wait pays
         * nothing for it. */
        if (*spins == FR_THROTTLED_SPINS
            && atomic_load_explicit(&fr_team_threads, memory_order_relaxed)
                   > atomic_load_explicit(&fr_cpus, memory_order_relaxed))
            *spins = max_spins;
    } else {
        sched_yield();
    }
}

/* n_threads: the region's team size; tid: the calling thread's number in it;
 * *passed: the calling thread's count of barriers passed, 0 at the start of the
 * region; max_spins: rounds of spinning before yielding. */
static void fr_barrier_wait_spins(fr_barrier *b, int n_threads, int tid, unsigned int *passed,
                                  long max_spins)
{
    const unsigned int next = ++*passed;
    long spins = 0;
    if (n_threads <= fr_barrier_flag_threads) {
        atomic_store_explicit(&b->flags[tid].value, next, memory_order_release);
        for (int i = 0; i < n_threads; i++)
            if (i != tid)
                /* Counts only grow; a thread may already be one barrier ahead. */
                while ((int)(atomic_load_explicit(&b->flags[i].value, memory_order_acquire)
                             - next) < 0)
                    fr_barrier_pause(&spins, max_spins);
        return;
    }
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == n_threads - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&b->phase, next, memory_order_release);
        return;
    }
    while (atomic_load_explicit(&b->phase, memory_order_acquire) != next)
        fr_barrier_pause(&spins, max_spins);
}

/* The per-step barrier. */
static void fr_barrier_wait(fr_barrier *b, int n_threads, int tid, unsigned int *passed)
{
    fr_barrier_wait_spins(b, n_threads, tid, passed, FR_BARRIER_SPINS);
}

/* The last barrier of a region whose threads had none before (a batch split). */
static void fr_barrier_finish(fr_barrier *b, int n_threads, int tid)
{
    unsigned int passed = 0;
    fr_barrier_wait_spins(b, n_threads, tid, &passed, FR_FINISH_SPINS);
}

#endif
