/* The T/R ring benchmark of hz-bench (hz-bench/src/matrix.rs), in C, for
 * running unmodified under LD_PRELOAD=libhz.so / libmimalloc / libjemalloc /
 * libtcmalloc, or plain glibc.
 *
 * usage: bench_matrix THREADS REMOTE_PCT MIN MAX ITERS_PER_THREAD WS RING_CAP SEED
 * environment: HZB_PIN=1 pins thread i to the (i mod n)-th allowed CPU.
 * prints: HZB_RESULT allocs=.. local=.. sent=.. recv=.. fallback=.. cleanup=.. ns=.. maxrss_kib=.. backlog=..
 *
 * Same generator (xorshift64*), same reductions, same accounting as the Rust
 * version. Rings are mmap'd so the allocator under test never sees them. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

#include "hzb_common.h"

typedef struct {
    uint64_t allocs, local, sent, recv, fallback, cleanup;
    /* The most blocks one drain of this thread's ring found queued: the
     * benchmark's own backlog, which peak RSS includes (not the allocator's). */
    uint64_t backlog;
    struct timespec begin, end;
} counts_t;

static size_t T, WS, RING_CAP, MIN, MAX;
static uint64_t REMOTE, ITERS, SEED;
static ring_t *rings;
static pthread_barrier_t barrier;
static atomic_size_t done_threads;

static int ts_less(const struct timespec *a, const struct timespec *b) {
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static inline void ring_drain(ring_t *r, counts_t *c) {
    size_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
    size_t t = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (h == t) return;
    if (t - h > c->backlog) c->backlog = t - h;
    for (size_t i = h; i != t; i++) {
        free(r->buf[i & (r->cap - 1)]);
        c->recv++;
    }
    atomic_store_explicit(&r->head, t, memory_order_release);
}

static void *worker(void *arg) {
    size_t id = (size_t)arg;
    hzb_pin(id);
    ring_t *rx = &rings[id], *tx = &rings[(id + 1) % T];
    uint64_t remote = T > 1 ? REMOTE : 0, span = MAX - MIN + 1;
    void **slots = map(WS * sizeof(void *));
    counts_t *c = map(sizeof(counts_t));
    uint64_t s = xs_seed(SEED, id);
    pthread_barrier_wait(&barrier);
    clock_gettime(CLOCK_MONOTONIC, &c->begin);
    for (uint64_t it = 0; it < ITERS; it++) {
        ring_drain(rx, c);
        size_t k = (size_t)xs_below(&s, WS);
        if (!slots[k]) {
            size_t size = MIN + (size_t)xs_below(&s, span);
            unsigned char *p = malloc(size);
            if (!p) abort();
            p[0] = (unsigned char)id;
            p[size - 1] = (unsigned char)k;
            slots[k] = p;
            c->allocs++;
        } else {
            void *p = slots[k];
            slots[k] = NULL;
            if (remote && xs_below(&s, 100) < remote) {
                if (ring_push(tx, p)) {
                    c->sent++;
                    continue;
                }
                c->fallback++;
            }
            free(p);
            c->local++;
        }
    }
    atomic_fetch_add_explicit(&done_threads, 1, memory_order_release);
    for (;;) {
        int all = atomic_load_explicit(&done_threads, memory_order_acquire) == T;
        ring_drain(rx, c);
        if (all) break;
        sched_yield();
    }
    clock_gettime(CLOCK_MONOTONIC, &c->end);
    for (size_t k = 0; k < WS; k++)
        if (slots[k]) {
            free(slots[k]);
            c->cleanup++;
        }
    munmap(slots, WS * sizeof(void *));
    return c;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s THREADS REMOTE_PCT MIN MAX ITERS_PER_THREAD WS RING_CAP SEED\n", argv[0]);
        return 2;
    }
    T = strtoull(argv[1], 0, 10);
    REMOTE = strtoull(argv[2], 0, 10);
    MIN = strtoull(argv[3], 0, 10);
    MAX = strtoull(argv[4], 0, 10);
    ITERS = strtoull(argv[5], 0, 10);
    WS = strtoull(argv[6], 0, 10);
    RING_CAP = strtoull(argv[7], 0, 10);
    SEED = strtoull(argv[8], 0, 10);
    if (T < 1 || MIN < 2 || MAX < MIN || WS < 1 || RING_CAP < 2) return 2;
    size_t cap = 2;
    while (cap < RING_CAP) cap <<= 1;
    rings = rings_new(T, cap);
    pthread_barrier_init(&barrier, NULL, (unsigned)T + 1);
    pthread_t *th = map(T * sizeof(pthread_t));
    for (size_t i = 0; i < T; i++)
        if (pthread_create(&th[i], NULL, worker, (void *)i)) abort();
    pthread_barrier_wait(&barrier);
    /* From the first thread's start to the last one's end: each thread reads
     * the clock itself, as main may be descheduled when the barrier opens. */
    counts_t tot = {0};
    struct timespec start = {0}, end = {0};
    for (size_t i = 0; i < T; i++) {
        counts_t *c;
        pthread_join(th[i], (void **)&c);
        tot.allocs += c->allocs;
        tot.local += c->local;
        tot.sent += c->sent;
        tot.recv += c->recv;
        tot.fallback += c->fallback;
        tot.cleanup += c->cleanup;
        tot.backlog += c->backlog;
        if (i == 0 || ts_less(&c->begin, &start)) start = c->begin;
        if (i == 0 || ts_less(&end, &c->end)) end = c->end;
    }
    long long ns = (long long)(end.tv_sec - start.tv_sec) * 1000000000LL + (end.tv_nsec - start.tv_nsec);
    /* backlog: the sum over rings of the most blocks one drain found. */
    printf("HZB_RESULT allocs=%llu local=%llu sent=%llu recv=%llu fallback=%llu cleanup=%llu ns=%lld maxrss_kib=%ld "
           "backlog=%llu\n",
           (unsigned long long)tot.allocs, (unsigned long long)tot.local, (unsigned long long)tot.sent,
           (unsigned long long)tot.recv, (unsigned long long)tot.fallback, (unsigned long long)tot.cleanup, ns,
           hzb_peak_rss_kib(), (unsigned long long)tot.backlog);
    return 0;
}
