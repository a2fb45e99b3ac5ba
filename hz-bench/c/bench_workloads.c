/* The workloads of hz-bench (hz-bench/src/workloads.rs), in C, for running
 * under LD_PRELOAD. Same parameters, generator and operation counts as the
 * Rust versions (rust-collections has no C version).
 *
 * usage: bench_workloads NAME THREADS SCALE
 *   NAME: larson | pipeline | xmalloc | cache-scratch | cache-thrash | realloc |
 *         realloc-medium | large
 * prints: HZB_WORK ns=.. ops=.. maxrss_kib=..
 * environment: HZB_PIN=1 pins each worker thread to the next allowed CPU,
 * round robin, in the order the threads start. HZB_LARGE_MIN / HZB_LARGE_MAX
 * (bytes) change the block sizes of `large` (default 128 KiB .. 1 MiB);
 * HZB_LARGE_FILL=1 makes it write every byte of each block, 2 one byte of
 * each 4 KiB page, instead of its first and last (the Rust version has none
 * of these settings). */
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

static void *xmalloc_or_die(size_t n) {
    unsigned char *p = malloc(n);
    if (!p) abort();
    p[0] = (unsigned char)n;
    return p;
}

/* ---- rings with back-pressure */
static int ring_pop(ring_t *r, void **out) {
    size_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
    if (h == atomic_load_explicit(&r->tail, memory_order_acquire)) return 0;
    *out = r->buf[h & (r->cap - 1)];
    atomic_store_explicit(&r->head, h + 1, memory_order_release);
    return 1;
}
static void push_wait(ring_t *r, void *p) {
    while (!ring_push(r, p)) sched_yield();
}
static void *pop_wait(ring_t *r) {
    void *p;
    while (!ring_pop(r, &p)) sched_yield();
    return p;
}

/* ---- shared parameters */
static size_t T;
static uint64_t N, ROUNDS, ITERS;
static ring_t *rings;
static atomic_size_t done_count;
static atomic_uint_fast64_t total_ops;
static void **first_blocks;
#define END_MARK ((void *)1)

/* ---- larson: generations of threads work on the chunks the last one left */
#define LARSON_SLOTS 1000
static void ***chunks;
static size_t larson_round;

static void *larson_thread(void *arg) {
    hzb_pin_next();
    size_t i = (size_t)arg;
    void **c = chunks[i];
    uint64_t s = xs_seed(larson_round + 7, i), ops = 0;
    for (uint64_t n = 0; n < N; n++) {
        size_t k = (size_t)xs_below(&s, LARSON_SLOTS);
        if (c[k]) {
            free(c[k]);
            ops++;
        }
        c[k] = xmalloc_or_die(16 + (size_t)xs_below(&s, 985));
        ops++;
    }
    atomic_fetch_add(&total_ops, ops);
    return NULL;
}

static void run_larson(void) {
    chunks = map(T * sizeof(void **));
    for (size_t i = 0; i < T; i++) chunks[i] = map(LARSON_SLOTS * sizeof(void *));
    pthread_t *th = map(T * sizeof(pthread_t));
    for (larson_round = 0; larson_round < ROUNDS; larson_round++) {
        void **first = chunks[0]; /* rotate: each chunk goes to another thread */
        memmove(chunks, chunks + 1, (T - 1) * sizeof(void **));
        chunks[T - 1] = first;
        for (size_t i = 0; i < T; i++) pthread_create(&th[i], NULL, larson_thread, (void *)i);
        for (size_t i = 0; i < T; i++) pthread_join(th[i], NULL);
    }
    for (size_t i = 0; i < T; i++)
        for (size_t k = 0; k < LARSON_SLOTS; k++) free(chunks[i][k]);
}

/* ---- pipeline: stage 0 allocates, middle stages replace, last frees */
static void *pipe_thread(void *arg) {
    hzb_pin_next();
    size_t stage = (size_t)arg;
    uint64_t s = xs_seed(11, stage);
    if (stage == 0) {
        for (uint64_t n = 0; n < N; n++) push_wait(&rings[0], xmalloc_or_die(16 + (size_t)xs_below(&s, 4081)));
        push_wait(&rings[0], END_MARK);
        return NULL;
    }
    int last = stage == T - 1;
    for (;;) {
        unsigned char *e = pop_wait(&rings[stage - 1]);
        if (e == END_MARK) {
            if (!last) push_wait(&rings[stage], END_MARK);
            return NULL;
        }
        unsigned char first = e[0];
        free(e);
        if (!last) {
            unsigned char *p = xmalloc_or_die(16 + (size_t)xs_below(&s, 4081));
            p[1] = first;
            push_wait(&rings[stage], p);
        }
    }
}

static void run_pipeline(void) {
    if (T < 2) T = 2;
    rings = rings_new(T - 1, 1024);
    pthread_t *th = map(T * sizeof(pthread_t));
    for (size_t i = 0; i < T; i++) pthread_create(&th[i], NULL, pipe_thread, (void *)i);
    for (size_t i = 0; i < T; i++) pthread_join(th[i], NULL);
    atomic_store(&total_ops, 2 * N * (T - 1));
}

/* ---- xmalloc: T-1 producers, one consumer frees everything */
static void *xm_producer(void *arg) {
    hzb_pin_next();
    size_t i = (size_t)arg;
    uint64_t s = xs_seed(13, i);
    for (uint64_t n = 0; n < N; n++) push_wait(&rings[i], xmalloc_or_die(16 + (size_t)xs_below(&s, 497)));
    atomic_fetch_add_explicit(&done_count, 1, memory_order_release);
    return NULL;
}
static void *xm_consumer(void *arg) {
    hzb_pin_next();
    (void)arg;
    for (;;) {
        int all = atomic_load_explicit(&done_count, memory_order_acquire) == T - 1;
        size_t got = 0;
        void *p;
        for (size_t i = 0; i < T - 1; i++)
            while (ring_pop(&rings[i], &p)) {
                free(p);
                got++;
            }
        if (all && !got) return NULL;
        if (!got) sched_yield();
    }
}
static void run_xmalloc(void) {
    if (T < 2) T = 2;
    N /= T - 1; /* N is the total; per producer */
    rings = rings_new(T - 1, 4096);
    pthread_t *th = map(T * sizeof(pthread_t));
    for (size_t i = 0; i < T - 1; i++) pthread_create(&th[i], NULL, xm_producer, (void *)i);
    pthread_create(&th[T - 1], NULL, xm_consumer, NULL);
    for (size_t i = 0; i < T; i++) pthread_join(th[i], NULL);
    atomic_store(&total_ops, 2 * N * (T - 1));
}

/* ---- cache-scratch / cache-thrash */
static void *cache_thread(void *arg) {
    hzb_pin_next();
    size_t i = (size_t)arg;
    if (first_blocks) free(first_blocks[i]);
    for (uint64_t n = 0; n < ITERS; n++) {
        volatile unsigned char *q = xmalloc_or_die(8);
        for (int w = 0; w < 100; w++)
            for (int b = 0; b < 8; b++) q[b] = (unsigned char)w;
        free((void *)q);
    }
    return NULL;
}
static void run_cache(int handoff) {
    pthread_t *th = map(T * sizeof(pthread_t));
    if (handoff) {
        first_blocks = map(T * sizeof(void *));
        for (size_t i = 0; i < T; i++) first_blocks[i] = xmalloc_or_die(8);
    }
    for (size_t i = 0; i < T; i++) pthread_create(&th[i], NULL, cache_thread, (void *)i);
    for (size_t i = 0; i < T; i++) pthread_join(th[i], NULL);
    atomic_store(&total_ops, 2 * ITERS * T + (handoff ? 2 * T : 0));
}

/* ---- realloc growth 16 B -> GROW_MAX by x1.5 steps, ROUNDS times per thread:
 * realloc (16 MiB, one byte written per 4 KiB page of each new range) and
 * realloc-medium (32 KiB, every new byte written) */
static size_t GROW_MAX;
static int grow_dense;
static void *realloc_thread(void *arg) {
    hzb_pin_next();
    (void)arg;
    const size_t max = GROW_MAX;
    uint64_t ops = 0;
    for (uint64_t r = 0; r < ROUNDS; r++) {
        size_t size = 16;
        unsigned char *p = xmalloc_or_die(size);
        if (grow_dense) memset(p, 1, size);
        ops++;
        while (size < max) {
            size_t nsize = size + size / 2 + 16;
            if (nsize > max) nsize = max;
            p = realloc(p, nsize);
            if (!p) abort();
            if (grow_dense)
                memset(p + size, (int)(r & 0xff), nsize - size);
            else
                for (size_t off = size; off < nsize; off += 4096) p[off] = 1;
            size = nsize;
            ops++;
        }
        free(p);
        ops++;
    }
    atomic_fetch_add(&total_ops, ops);
    return NULL;
}
static void run_realloc(size_t max, int dense) {
    GROW_MAX = max;
    grow_dense = dense;
    pthread_t *th = map(T * sizeof(pthread_t));
    for (size_t i = 0; i < T; i++) pthread_create(&th[i], NULL, realloc_thread, NULL);
    for (size_t i = 0; i < T; i++) pthread_join(th[i], NULL);
}

/* ---- large: 16 slots per thread of 128 KiB..1 MiB blocks, freed or filled at random */
static size_t large_min = 128u << 10, large_max = 1u << 20;
static int large_fill;
static void *large_thread(void *arg) {
    hzb_pin_next();
    uint64_t s = xs_seed(17, (size_t)arg);
    unsigned char *slot[16] = {0};
    for (uint64_t n = 0; n < ITERS; n++) {
        size_t k = (size_t)xs_below(&s, 16);
        if (slot[k]) {
            free(slot[k]);
            slot[k] = NULL;
        } else {
            size_t size = large_min + (size_t)xs_below(&s, large_max - large_min);
            slot[k] = xmalloc_or_die(size);
            if (large_fill == 1) memset(slot[k], (int)k, size);
            if (large_fill == 2)
                for (size_t o = 0; o < size; o += 4096) slot[k][o] = (unsigned char)k;
            slot[k][size - 1] = (unsigned char)k;
        }
    }
    for (int k = 0; k < 16; k++) free(slot[k]);
    return NULL;
}
static void run_large(void) {
    const char *lo = getenv("HZB_LARGE_MIN"), *hi = getenv("HZB_LARGE_MAX");
    if (lo) large_min = strtoull(lo, NULL, 0);
    if (hi) large_max = strtoull(hi, NULL, 0);
    if (getenv("HZB_LARGE_FILL")) large_fill = atoi(getenv("HZB_LARGE_FILL"));
    if (large_max <= large_min || large_min < 16) {
        fprintf(stderr, "bench_workloads: need 16 <= HZB_LARGE_MIN < HZB_LARGE_MAX\n");
        exit(2);
    }
    pthread_t *th = map(T * sizeof(pthread_t));
    for (size_t i = 0; i < T; i++) pthread_create(&th[i], NULL, large_thread, (void *)i);
    for (size_t i = 0; i < T; i++) pthread_join(th[i], NULL);
    atomic_store(&total_ops, ITERS * T);
}

static uint64_t scaled(double base, double scale) {
    uint64_t v = (uint64_t)(base * scale);
    return v ? v : 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s NAME THREADS SCALE\n", argv[0]);
        return 2;
    }
    const char *name = argv[1];
    T = strtoull(argv[2], 0, 10);
    if (T < 1) T = 1;
    double scale = strtod(argv[3], 0);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    if (!strcmp(name, "larson")) {
        ROUNDS = scaled(5, scale);
        N = scaled(100000, scale);
        run_larson();
    } else if (!strcmp(name, "pipeline")) {
        N = scaled(200000, scale);
        run_pipeline();
    } else if (!strcmp(name, "xmalloc")) {
        N = scaled(400000, scale);
        run_xmalloc();
    } else if (!strcmp(name, "cache-scratch") || !strcmp(name, "cache-thrash")) {
        ITERS = scaled(20000, scale);
        run_cache(!strcmp(name, "cache-scratch"));
    } else if (!strcmp(name, "large")) {
        ITERS = scaled(50000, scale);
        run_large();
    } else if (!strcmp(name, "realloc")) {
        ROUNDS = scaled(8, scale);
        run_realloc(16u << 20, 0);
    } else if (!strcmp(name, "realloc-medium")) {
        ROUNDS = scaled(4000, scale);
        run_realloc(32u << 10, 1);
    } else {
        fprintf(stderr, "unknown workload %s\n", name);
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    long long ns = (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    printf("HZB_WORK ns=%lld ops=%llu maxrss_kib=%ld\n", ns, (unsigned long long)atomic_load(&total_ops),
           hzb_peak_rss_kib());
    return 0;
}
