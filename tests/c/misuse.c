/* Heap misuse for the secure build (tests/secure.rs). Usage:
 *   misuse CASE
 * performs one misuse; under libhz-secure.so every case but "fill" must
 * kill the program (SIGABRT with "hz: fatal: <check> 0x<ptr>", or SIGSEGV
 * for "guard_large") before it prints "CASE: survived" and exits 0.
 *   double_free       free(p); free(p)            small block
 *   double_free_large free(p); free(p)            1 MiB block
 *   interior          free(p + 16)                small block
 *   interior_large    free(p + 4096)              1 MiB block
 *   foreign_stack     free(&local)
 *   foreign_static    free(&global)
 *   foreign_mmap      free(mmap'ed page)
 *   realloc_freed     free(p); realloc(p, 100)
 *   overflow_link     a linear overflow clobbers free neighbours' links;
 *                     allocating the span again walks them
 *   guard_large       one byte past malloc_usable_size of a 200000-byte block
 *   fill              frees 48/256/1000-byte blocks filled with 0x11 and
 *                     prints "fill: df" when bytes 16.. of each now read
 *                     0xdf, "fill: old" when they kept 0x11, "fill: mixed"
 *                     otherwise (reading freed memory is the point here)
 * Before a misuse naming one pointer it prints "ptr 0x..." (that pointer).
 * Pointers go through launder() so the compiler cannot see the misuse. */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "check.h"

/* Using freed pointers is what this program is for. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic ignored "-Wuse-after-free"
#endif

static void *launder(void *p) {
    __asm__ volatile("" : "+r"(p) : : "memory");
    return p;
}

/* Prints "ptr 0x..." (the pointer the fatal line must name), returns it
 * laundered. stdout is unbuffered: the line is out before the abort. */
static void *named(void *p) {
    printf("ptr %p\n", p);
    return launder(p);
}

static uint64_t global_word[4];

/* Allocates many 48-byte blocks and frees all but one whose right-hand
 * neighbour is among them, flushes the caches (so the freed blocks sit on
 * their spans' free lists, links encoded, not in the thread cache's pointer
 * stack), then overflows from the kept block 64 bytes into that free
 * neighbour, clobbering both its link words. */
static void overflow_link(void) {
    enum { N = 1024 };
    static unsigned char *blocks[N];
    for (int i = 0; i < N; i++) {
        blocks[i] = malloc(48);
        CHECK(blocks[i]);
    }
    int victim = -1;
    for (int i = 0; i < N && victim < 0; i++) {
        /* The overflow must stay inside the victim's last page: past a page
         * boundary could be a guard page (SIGSEGV, not the check under
         * test). */
        uintptr_t end = (uintptr_t)blocks[i] + 47, last = end + 64;
        if ((end >> 12) != (last >> 12))
            continue;
        for (int j = 0; j < N; j++)
            if (blocks[j] == blocks[i] + 48) {
                victim = i;
                break;
            }
    }
    CHECK(victim >= 0);
    for (int i = N - 1; i >= 0; i--)
        if (i != victim)
            free(blocks[i]);
    /* Thread cache and heap lists back onto the spans' own free lists. */
    malloc_trim(0);
    memset(launder(blocks[victim]), 0x41, 48 + 64);
    /* Allocating the span again decodes every free-list link. */
    for (int i = 0; i < 5000; i++) {
        void *r = malloc(48);
        CHECK(r);
        memset(r, 0, 48);
    }
}

/* Returns 0 when bytes [16, n) of freed block p read 0xdf, 1 when they
 * kept 0x11, 2 otherwise. */
static int fill_state(size_t n) {
    unsigned char *p = malloc(n);
    CHECK(p);
    /* Laundered: else the compiler drops the stores to a block about to be
     * freed. */
    memset(launder(p), 0x11, n);
    free(launder(p));
    unsigned char tail[1024];
    volatile unsigned char *v = launder(p);
    for (size_t i = 16; i < n; i++)
        tail[i - 16] = v[i];
    size_t df = 0, old = 0;
    for (size_t i = 0; i < n - 16; i++) {
        df += tail[i] == 0xdf;
        old += tail[i] == 0x11;
    }
    return df == n - 16 ? 0 : old == n - 16 ? 1 : 2;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: misuse CASE\n");
        return 2;
    }
    const char *c = argv[1];
    /* stdio's buffers first, so they are not allocated mid-case. */
    setvbuf(stdout, NULL, _IONBF, 0);
    unsigned char *p = malloc(48);
    CHECK(p);
    memset(p, 1, 48);
    if (!strcmp(c, "double_free")) {
        free(p);
        free(named(p));
    } else if (!strcmp(c, "double_free_large")) {
        unsigned char *q = malloc(1 << 20);
        CHECK(q);
        free(q);
        free(named(q));
    } else if (!strcmp(c, "interior")) {
        free(named(p + 16));
    } else if (!strcmp(c, "interior_large")) {
        unsigned char *q = malloc(1 << 20);
        CHECK(q);
        free(named(q + 4096));
    } else if (!strcmp(c, "foreign_stack")) {
        uint64_t local[4] = {0};
        free(named(local));
        CHECK(local[0] == 0);
    } else if (!strcmp(c, "foreign_static")) {
        free(named(global_word));
    } else if (!strcmp(c, "foreign_mmap")) {
        void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
        CHECK(m != MAP_FAILED);
        free(named(m));
    } else if (!strcmp(c, "realloc_freed")) {
        free(p);
        void *r = realloc(named(p), 100);
        printf("realloc returned %p\n", r);
    } else if (!strcmp(c, "overflow_link")) {
        overflow_link();
    } else if (!strcmp(c, "guard_large")) {
        unsigned char *q = malloc(200000);
        CHECK(q);
        size_t u = malloc_usable_size(q);
        CHECK(u >= 200000);
        ((volatile unsigned char *)launder(q))[u] = 1; /* one past the end */
    } else if (!strcmp(c, "fill")) {
        int a = fill_state(48), b = fill_state(256), d = fill_state(1000);
        printf("fill: %s\n", (a | b | d) == 0 ? "df" : (a & b & d) == 1 ? "old" : "mixed");
        return 0;
    } else {
        fprintf(stderr, "misuse: unknown case %s\n", c);
        return 2;
    }
    printf("%s: survived\n", c);
    return 0;
}
