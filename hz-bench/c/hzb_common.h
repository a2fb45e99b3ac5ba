/* Shared by the C benchmark programs: the generator (xorshift64*, the same
 * as hz-bench/src/rng.rs), the SPSC ring (as hz-bench/src/spsc.rs, holding
 * plain pointers), and mmap'd storage that the allocator under test never sees. */
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

/* HZB_PIN=1: thread `id` runs only on the id-th CPU (round robin) of those
 * the process may use, so the scheduler cannot leave one CPU with more of
 * the threads than another (with 4 threads on 2 CPUs, a 3+1 split makes a
 * run 1.5x longer whatever the allocator). */
static inline void hzb_pin(size_t id) {
    const char *e = getenv("HZB_PIN");
    if (!e || strcmp(e, "1") != 0) return;
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
    int n = CPU_COUNT(&allowed);
    if (n < 1) return;
    int want = (int)(id % (size_t)n), seen = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &allowed)) continue;
        if (seen++ == want) {
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            /* A refusal leaves the thread unpinned: the run is still valid. */
            (void)sched_setaffinity(0, sizeof one, &one);
            return;
        }
    }
}

/* HZB_PIN=1: pins the calling thread to the next CPU in round robin (one
 * process-wide counter), for programs whose threads have no index. */
static inline void hzb_pin_next(void) {
    static atomic_size_t next;
    hzb_pin(atomic_fetch_add_explicit(&next, 1, memory_order_relaxed));
}

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
/* Peak RSS of this program, KiB: VmHWM from /proc/self/status, the peak
 * of the memory this program mapped since its exec. Not getrusage's
 * ru_maxrss: Linux carries that across exec, so a child started by vfork
 * (posix_spawn: Rust's Command, Python's subprocess) reports at least the
 * RSS its parent had. Read with a stack buffer: nothing is allocated. */
static inline long hzb_peak_rss_kib(void) {
    char buf[4096];
    long kib = -1;
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0) {
            buf[n] = 0;
            char *p = strstr(buf, "VmHWM:");
            if (p) kib = strtol(p + 6, NULL, 10);
        }
    }
    if (kib < 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        kib = ru.ru_maxrss;
    }
    return kib;
}

#endif
