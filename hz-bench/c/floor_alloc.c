/* floor_alloc: about the least a thread-safe malloc can do per call, as an
 * LD_PRELOAD library. It is a measuring stick for the T/R matrix
 * (scripts/bench-floor.sh, docs/PERFORMANCE.md M24), not an allocator to
 * use: memory never goes back to the system, and a freed block joins the
 * freeing thread's cache whoever allocated it (no owner, no remote queue).
 * A thread cache holds up to 256 KiB of a class; a full one moves half to
 * the class's shared stack (a spin lock), which an empty one takes from
 * before it carves (-DUNBOUNDED: caches grow without bound, no sharing).
 *   - 48 classes, four per doubling from 16 B to 128 KiB; class c lives in
 *     its own 4 GiB region, so free finds the class with one subtraction and
 *     one shift and touches neither the block nor any metadata;
 *   - per thread and class a LIFO array of pointers (initial-exec TLS);
 *   - fresh blocks by bump pointer from 256 KiB chunks taken from the class
 *     region with one atomic add; each class region starts at its own
 *     colour (a multiple of 64 B below 4 KiB), so the classes' blocks do
 *     not all start in the same L1 sets;
 *   - anything bigger, or aligned to more than 16 B, comes from a bump
 *     region and is never reused.
 * Build (-fno-builtin: GCC would turn calloc's malloc + memset into a call
 * to calloc, itself):
 *   cc -O2 -fno-builtin -fPIC -shared -ftls-model=initial-exec \
 *      -o libfloor.so floor_alloc.c */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define NCLASS 48
#define REGION_SHIFT 32
#define MAX_SMALL 131072
#define CHUNK (256 << 10)
#define BIG_BYTES (1ULL << 40)

static char *base; /* NCLASS regions, then the big region */
static _Atomic size_t next_off[NCLASS];
static _Atomic size_t big_off;

static __thread void **stk[NCLASS];
static __thread uint32_t top[NCLASS], cap[NCLASS];
static __thread char *cur[NCLASS], *lim[NCLASS];

static inline unsigned class_of(size_t n) {
    if (n <= 64) return n <= 16 ? 0 : (unsigned)((n + 15) >> 4) - 1;
    size_t s = n - 1;
    unsigned e = 63 - __builtin_clzll(s);
    return 4 + (e - 6) * 4 + (unsigned)((s >> (e - 2)) & 3);
}
static inline size_t class_size(unsigned c) {
    if (c < 4) return (size_t)(c + 1) << 4;
    unsigned e = (c - 4) / 4 + 6, sub = (c - 4) & 3;
    return (size_t)(4 + sub + 1) << (e - 2);
}

__attribute__((constructor(101))) static void floor_init(void) {
    if (base) return;
    void *m = mmap(0, ((size_t)NCLASS << REGION_SHIFT) + BIG_BYTES, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) __builtin_trap();
    base = m;
    for (unsigned c = 0; c < NCLASS; c++) atomic_store(&next_off[c], (c * 448) & 4095 & ~(size_t)63);
}

static void *big(size_t n, size_t align) {
    if (!base) floor_init();
    if (align < 16) align = 16;
    for (;;) {
        size_t o = atomic_load(&big_off), a = (o + align - 1) & ~(align - 1);
        if (a + n > BIG_BYTES) { errno = ENOMEM; return 0; }
        if (atomic_compare_exchange_weak(&big_off, &o, a + n))
            return base + ((size_t)NCLASS << REGION_SHIFT) + a;
    }
}

__attribute__((noinline)) static void *carve(unsigned c) {
    if (!base) floor_init();
    size_t sz = class_size(c), take = sz > CHUNK ? sz * 4 : CHUNK;
    size_t o = atomic_fetch_add(&next_off[c], take);
    cur[c] = base + ((size_t)c << REGION_SHIFT) + o;
    lim[c] = cur[c] + take - sz + 1;
    char *p = cur[c];
    cur[c] += sz;
    return p;
}

/* A pointer array of `nc` slots holding the `used` first of `old` (`oc`
 * slots, or null), which is unmapped. */
static void **regrow(void **old, size_t used, size_t oc, size_t nc) {
    void **s = mmap(0, nc * sizeof(void *), PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (s == MAP_FAILED) __builtin_trap();
    if (old) {
        memcpy(s, old, used * sizeof(void *));
        munmap(old, oc * sizeof(void *));
    }
    return s;
}

__attribute__((noinline)) static void grow(unsigned c) {
    uint32_t nc = cap[c] ? cap[c] * 2 : 1 << 16;
    stk[c] = regrow(stk[c], top[c], cap[c], nc);
    cap[c] = nc;
}

#ifdef UNBOUNDED
__attribute__((noinline)) static void full(unsigned c) { grow(c); }
#else
/* A thread cache holds at most LIMIT bytes of a class (at least
 * MIN_BLOCKS blocks; -D to change either); a full one moves its older
 * half to the class's shared stack,
 * from which an empty one takes up to half a cache before it carves. */
#ifndef LIMIT
#define LIMIT (256 << 10)
#endif
#ifndef MIN_BLOCKS
#define MIN_BLOCKS 64
#endif
static inline uint32_t limit(unsigned c) {
    size_t n = LIMIT / class_size(c);
    return n < MIN_BLOCKS ? MIN_BLOCKS : (uint32_t)n;
}
static struct {
    atomic_flag lock;
    void **s;
    size_t n, cap;
} shared[NCLASS];
static void lock(unsigned c) {
    while (atomic_flag_test_and_set_explicit(&shared[c].lock, memory_order_acquire))
        __builtin_ia32_pause();
}
static void unlock(unsigned c) { atomic_flag_clear_explicit(&shared[c].lock, memory_order_release); }
__attribute__((noinline)) static void full(unsigned c) {
    if (cap[c] < limit(c)) {
        grow(c);
        return;
    }
    uint32_t k = cap[c] / 2;
    lock(c);
    if (shared[c].n + k > shared[c].cap) {
        size_t nc = shared[c].cap ? shared[c].cap * 2 : 1 << 20;
        shared[c].s = regrow(shared[c].s, shared[c].n, shared[c].cap, nc);
        shared[c].cap = nc;
    }
    memcpy(shared[c].s + shared[c].n, stk[c], k * sizeof(void *));
    shared[c].n += k;
    unlock(c);
    memmove(stk[c], stk[c] + k, (top[c] - k) * sizeof(void *));
    top[c] -= k;
}
static uint32_t take_shared(unsigned c) {
    if (!__atomic_load_n(&shared[c].n, __ATOMIC_RELAXED)) return 0;
    if (!cap[c]) grow(c);
    lock(c);
    size_t k = shared[c].n < cap[c] / 2 ? shared[c].n : cap[c] / 2;
    shared[c].n -= k;
    memcpy(stk[c], shared[c].s + shared[c].n, k * sizeof(void *));
    unlock(c);
    return (uint32_t)k;
}
#endif

void *malloc(size_t n) {
    if (__builtin_expect(n > MAX_SMALL, 0)) return big(n, 16);
    unsigned c = class_of(n);
    uint32_t t = top[c];
#ifndef UNBOUNDED
    if (__builtin_expect(t == 0, 0)) t = take_shared(c);
#endif
    if (__builtin_expect(t != 0, 1)) {
        top[c] = t - 1;
        return stk[c][t - 1];
    }
    char *p = cur[c];
    if (p && p < lim[c]) {
        cur[c] = p + class_size(c);
        return p;
    }
    return carve(c);
}

void free(void *p) {
    size_t off = (char *)p - base;
    if (__builtin_expect(off >= ((size_t)NCLASS << REGION_SHIFT), 0)) return; /* null, big, foreign */
    unsigned c = (unsigned)(off >> REGION_SHIFT);
    if (__builtin_expect(top[c] == cap[c], 0)) full(c);
    uint32_t t = top[c];
    stk[c][t] = p;
    top[c] = t + 1;
}

size_t malloc_usable_size(void *p) {
    size_t off = (char *)p - base;
    return p && off < ((size_t)NCLASS << REGION_SHIFT) ? class_size((unsigned)(off >> REGION_SHIFT)) : 0;
}
void *calloc(size_t k, size_t n) {
    size_t b;
    if (__builtin_mul_overflow(k, n, &b)) { errno = ENOMEM; return 0; }
    void *p = malloc(b);
    if (p) memset(p, 0, b);
    return p;
}
void *realloc(void *p, size_t n) {
    if (!p) return malloc(n);
    void *q = malloc(n);
    if (q) {
        size_t old = malloc_usable_size(p);
        memcpy(q, p, old && old < n ? old : n);
        free(p);
    }
    return q;
}
int posix_memalign(void **r, size_t a, size_t n) {
    void *p = a <= 16 ? malloc(n) : big(n, a);
    if (!p) return ENOMEM;
    *r = p;
    return 0;
}
void *aligned_alloc(size_t a, size_t n) { return a <= 16 ? malloc(n) : big(n, a); }
void *memalign(size_t a, size_t n) { return aligned_alloc(a, n); }
void *valloc(size_t n) { return big(n, 4096); }
void *pvalloc(size_t n) { return big((n + 4095) & ~(size_t)4095, 4096); }
