/* Shared by the C benchmark programs: the generator (xorshift64*, the same
 * as hz-bench/src/rng.rs), the SPSC ring (as hz-bench/src/spsc.rs, holding
 * plain pointers), and mmap'd storage that the allocator under test never
 * sees; pinning and peak RSS come from hzb_sys.h (C and C++). */
#ifndef HZB_COMMON_H
#define HZB_COMMON_H
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "hzb_sys.h"

static inline uint64_t xs_seed(uint64_t seed, size_t id) {
    uint64_t s = seed ^ ((uint64_t)(id + 1) * 0x9E3779B97F4A7C15ULL);
    return s ? s : 0x2545F4914F6CDD1DULL;
}
static inline uint64_t xs_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}
/* Uniform in 0..n (multiply-shift, no division). */
static inline uint64_t xs_below(uint64_t *s, uint64_t n) { return ((xs_next(s) >> 32) * n) >> 32; }

static inline void *map(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) abort();
    return p;
}

/* head is written by the consumer only, tail by the producer only; cap is a
 * power of two. */
typedef struct {
    _Alignas(128) atomic_size_t head;
    _Alignas(128) atomic_size_t tail;
    _Alignas(128) void **buf;
    size_t cap;
} ring_t;

static inline ring_t *rings_new(size_t n, size_t cap) {
    ring_t *r = map(n * sizeof(ring_t));
    for (size_t i = 0; i < n; i++) {
        r[i].cap = cap;
        r[i].buf = map(cap * sizeof(void *));
    }
    return r;
}
/* Producer: 0 when full. */
static inline int ring_push(ring_t *r, void *p) {
    size_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    if (t - atomic_load_explicit(&r->head, memory_order_acquire) >= r->cap) return 0;
    r->buf[t & (r->cap - 1)] = p;
    atomic_store_explicit(&r->tail, t + 1, memory_order_release);
    return 1;
}
#endif
