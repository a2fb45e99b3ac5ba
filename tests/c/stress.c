/* Multi-threaded stress: usage `stress [threads] [waves] [ops-per-thread]`.
 * Every block is filled with a pattern that is checked before it is freed;
 * blocks move between threads through a shared exchange (so most frees are
 * remote, some of blocks whose allocating thread has exited); threads are
 * created and destroyed in waves; sizes run from 1 byte to 4 MiB; some
 * requests are over-aligned (posix_memalign up to 2 MiB, aligned_alloc,
 * memalign); some blocks are resized with realloc or zeroed with calloc.
 * Prints "stress: ok" and exits 0, or "FAIL ..." and exits 1.
 *
 * For measuring other allocators with it (scripts/stress-footprint.sh):
 * STRESS_LARGE_MIN / STRESS_LARGE_MAX (bytes) set the range of the 1% of
 * large blocks (default 64 KiB .. 4 MiB + 64 KiB); STRESS_NO_ALIGNED=1
 * makes no over-aligned request; STRESS_PORTABLE=1 checks only the
 * alignment C requires (a block under 16 bytes may be 8-aligned, as
 * Debian's mimalloc returns after realloc), not glibc's 16 bytes. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "check.h"

typedef struct {
    unsigned char *p; /* the block */
    size_t n;         /* its requested size */
    size_t align;     /* its requested alignment (16 for plain malloc) */
    unsigned char v;  /* every byte of p[0..n) holds v */
} Blk;

enum { LOCAL = 256, EXCHANGE = 1024 };
static _Atomic(Blk *) exchange[EXCHANGE];
static int ops_per_thread = 20000;
static atomic_long frees_remote;

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t large_min = 65536, large_span = 4u << 20;
static int no_aligned, portable;

static size_t env_size(const char *name, size_t dflt) {
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 10) : dflt;
}

static void settings(void) {
    size_t max = env_size("STRESS_LARGE_MAX", large_min + large_span);
    large_min = env_size("STRESS_LARGE_MIN", large_min);
    CHECK(max > large_min);
    large_span = max - large_min;
    no_aligned = env_size("STRESS_NO_ALIGNED", 0) != 0;
    portable = env_size("STRESS_PORTABLE", 0) != 0;
}

static size_t pick_size(uint64_t *s) {
    uint64_t r = next(s) % 1000;
    if (r < 900) return 1 + next(s) % 512;
    if (r < 990) return 513 + next(s) % (64 * 1024);
    return large_min + next(s) % large_span;
}

/* The alignment a block of n bytes must have: `align`, or with
 * STRESS_PORTABLE at most what an object of n bytes needs. */
static size_t needed(size_t align, size_t n) {
    return portable && align == 16 && n < 16 ? 8 : align;
}

static void verify(const Blk *b) {
    CHECK(ALIGNED(b->p, needed(b->align, b->n)));
    CHECK(malloc_usable_size(b->p) >= b->n);
    const unsigned char *p = b->p;
    for (size_t i = 0; i < b->n; i++) {
        if (p[i] != b->v) {
            printf("FAIL block %p size %zu: byte %zu is %#x, expected %#x\n",
                   (void *)p, b->n, i, p[i], b->v);
            fflush(stdout);
            exit(1);
        }
    }
}

static void release(Blk *b) {
    verify(b);
    free(b->p);
    free(b);
}

static Blk *make(uint64_t *s) {
    Blk *b = malloc(sizeof *b);
    CHECK(b);
    b->n = pick_size(s);
    b->align = 16;
    b->v = (unsigned char)(next(s) | 1);
    uint64_t kind = next(s) % 100;
    if (no_aligned) kind = 7 + kind % 93;
    if (kind < 4) {
        b->align = (size_t)1 << (4 + next(s) % 18); /* 16 B .. 2 MiB */
        void *p = NULL;
        CHECK(posix_memalign(&p, b->align, b->n) == 0);
        b->p = p;
    } else if (kind < 6) {
        b->align = (size_t)1 << (4 + next(s) % 10);
        b->p = aligned_alloc(b->align, b->n);
    } else if (kind < 7) {
        b->align = (size_t)1 << (4 + next(s) % 12);
        b->p = memalign(b->align, b->n);
    } else if (kind < 15) {
        b->p = calloc(1, b->n);
        CHECK(b->p);
        for (size_t i = 0; i < b->n; i++) CHECK(b->p[i] == 0);
    } else {
        b->p = malloc(b->n);
    }
    CHECK(b->p);
    memset(b->p, b->v, b->n);
    return b;
}

/* realloc keeps the prefix; the block gets a new pattern afterwards. */
static void resize(Blk *b, uint64_t *s) {
    verify(b);
    size_t n = pick_size(s);
    unsigned char *p = realloc(b->p, n);
    CHECK(p && ALIGNED(p, needed(16, n)));
    size_t keep = n < b->n ? n : b->n;
    for (size_t i = 0; i < keep; i++) CHECK(p[i] == b->v);
    b->p = p;
    b->n = n;
    b->align = 16;
    b->v = (unsigned char)(next(s) | 1);
    memset(p, b->v, n);
}

static void *worker(void *arg) {
    uint64_t seed = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ull + 1;
    Blk *local[LOCAL] = {0};
    for (int op = 0; op < ops_per_thread; op++) {
        size_t i = next(&seed) % LOCAL;
        if (!local[i]) {
            local[i] = make(&seed);
            continue;
        }
        uint64_t what = next(&seed) % 10;
        if (what < 4) {
            release(local[i]);
        } else if (what < 9) {
            /* Hand the block to whoever comes next; free what was there. */
            Blk *old = atomic_exchange(&exchange[next(&seed) % EXCHANGE], local[i]);
            if (old) {
                release(old);
                atomic_fetch_add(&frees_remote, 1);
            }
        } else {
            resize(local[i], &seed);
            continue;
        }
        local[i] = NULL;
    }
    /* Leave half of what is left in the exchange for the next wave. */
    for (size_t i = 0; i < LOCAL; i++) {
        if (!local[i]) continue;
        if (i % 2) {
            release(local[i]);
        } else {
            Blk *old = atomic_exchange(&exchange[next(&seed) % EXCHANGE], local[i]);
            if (old) release(old);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 4;
    int waves = argc > 2 ? atoi(argv[2]) : 4;
    if (argc > 3) ops_per_thread = atoi(argv[3]);
    CHECK(threads > 0 && threads <= 256 && waves > 0 && ops_per_thread > 0);
    settings();
    pthread_t tid[256];
    uintptr_t id = 1;
    for (int w = 0; w < waves; w++) {
        for (int t = 0; t < threads; t++)
            CHECK(pthread_create(&tid[t], NULL, worker, (void *)id++) == 0);
        for (int t = 0; t < threads; t++) CHECK(pthread_join(tid[t], NULL) == 0);
    }
    for (size_t i = 0; i < EXCHANGE; i++) {
        Blk *b = atomic_exchange(&exchange[i], NULL);
        if (b) release(b);
    }
    CHECK(atomic_load(&frees_remote) > 0);
    printf("stress: ok\n");
    return 0;
}
