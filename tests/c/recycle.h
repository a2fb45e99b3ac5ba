/* Shared by mlock.c and nomadvise.c: blocks of 3, 6 and 20 MiB (a
 * thread's segment, a run of the page allocator) filled with 0xab, handed
 * to `hold` (which may refuse a block: it is then freed and skipped), freed,
 * the purge forced (malloc_trim) or left to the purge delay, and taken
 * again by calloc, which must read zero throughout. Returns how many
 * blocks `hold` took; a non-zero byte ends the program with "FAIL ...". */
#ifndef HZ_TEST_RECYCLE_H
#define HZ_TEST_RECYCLE_H
#include <malloc.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

static int calloc_after_free_rounds(int (*hold)(unsigned char *p, size_t n)) {
    const size_t sizes[] = {3u << 20, 6u << 20, 20u << 20};
    int held = 0;
    for (int round = 0; round < 6; round++) {
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            size_t n = sizes[k];
            unsigned char *p = malloc(n);
            CHECK(p != NULL);
            memset(p, 0xab, n);
            /* The block escapes: the compiler may not drop the writes. */
            __asm__ volatile("" : : "r"(p) : "memory");
            if (!hold(p, n)) {
                free(p);
                continue;
            }
            held++;
            free(p);
            if (round % 2)
                malloc_trim(0);
            else
                usleep(30000);
            unsigned char *q = calloc(1, n);
            CHECK(q != NULL);
            for (size_t i = 0; i < n; i++) {
                if (q[i] != 0) {
                    printf("FAIL round %d, %zu bytes: calloc byte %zu is %#x\n", round, n, i, q[i]);
                    exit(1);
                }
            }
            free(q);
        }
    }
    return held;
}

#endif
