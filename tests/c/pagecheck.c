/* Run with tests/c/libpageshim.c and libhz.so preloaded (tests/pages.rs).
 *
 * No argument: the shim is in force: getauxval(AT_PAGESZ) and sysconf
 * report HZ_SHIM_PAGE, and a madvise at an address aligned to 4 KiB but
 * not to that page is refused. Prints "pagecheck: ok PAGE".
 *
 * "recycle": blocks of every kind hz has (small classes, large runs,
 * segment blocks, 20 MiB runs) filled with a pattern of their own; every
 * other one freed and the free memory purged (malloc_trim, and the purge
 * delay); the survivors must hold their patterns (a purge rounded up to a
 * larger page than hz meant would zero a neighbour); then blocks taken
 * again by calloc read zero (recycle.h), and one block grown by realloc
 * from 1 to 40 MiB and back keeps its contents. Prints "pagecheck:
 * recycled ok". */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <unistd.h>

#include "recycle.h"

static int take(unsigned char *p, size_t n) {
    (void)p;
    (void)n;
    return 1;
}

static size_t size_of(int i) {
    static const size_t sizes[] = {24, 200, 1500, 9000, 70000, 300000, 1u << 20, 5u << 20, 20u << 20};
    return sizes[i % 9] + (size_t)(i / 9) * 8;
}

static unsigned char tag(int i, size_t k) {
    return (unsigned char)(i * 31 + (k >> 12) * 7 + 1);
}

static void fill(unsigned char *p, int i, size_t n) {
    for (size_t k = 0; k < n; k += 512)
        p[k] = tag(i, k);
    p[n - 1] = tag(i, n - 1);
}

static void verify(const unsigned char *p, int i, size_t n) {
    for (size_t k = 0; k < n; k += 512) {
        if (p[k] != tag(i, k)) {
            printf("FAIL block %d (%zu bytes): byte %zu is %#x, not %#x\n", i, n, k, p[k], tag(i, k));
            exit(1);
        }
    }
}

static void recycle(void) {
    enum { N = 90 };
    static unsigned char *blocks[N];
    for (int i = 0; i < N; i++) {
        blocks[i] = malloc(size_of(i));
        CHECK(blocks[i] != NULL);
        fill(blocks[i], i, size_of(i));
    }
    for (int round = 0; round < 2; round++) {
        for (int i = round; i < N; i += 2) {
            free(blocks[i]);
            blocks[i] = NULL;
        }
        malloc_trim(0);
        usleep(250000);
        /* Work after the delay: the purges that are due run on it. */
        free(malloc(100000));
        free(malloc(3u << 20));
        for (int i = 0; i < N; i++)
            if (blocks[i])
                verify(blocks[i], i, size_of(i));
        /* The freed half again, for the next round to free the other. */
        for (int i = round; i < N; i += 2) {
            blocks[i] = malloc(size_of(i));
            CHECK(blocks[i] != NULL);
            fill(blocks[i], i, size_of(i));
        }
    }
    for (int i = 0; i < N; i++) {
        verify(blocks[i], i, size_of(i));
        CHECK(blocks[i][size_of(i) - 1] == tag(i, size_of(i) - 1));
        free(blocks[i]);
    }

    CHECK(calloc_after_free_rounds(take) == 18);

    size_t n = 1u << 20;
    unsigned char *p = malloc(n);
    CHECK(p != NULL);
    fill(p, 7, n);
    for (; n < (40u << 20); n += n / 2 + 12345) {
        p = realloc(p, n + n / 2 + 12345);
        CHECK(p != NULL);
        verify(p, 7, n);
        fill(p, 7, n + n / 2 + 12345);
    }
    for (; n > 4096; n /= 3) {
        p = realloc(p, n);
        CHECK(p != NULL);
        verify(p, 7, n);
    }
    free(p);
    printf("pagecheck: recycled ok\n");
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "recycle") == 0) {
        recycle();
        return 0;
    }
    const char *e = getenv("HZ_SHIM_PAGE");
    CHECK(e != NULL);
    long page = strtol(e, 0, 10);
    CHECK(sysconf(_SC_PAGESIZE) == page);
    CHECK((long)getauxval(AT_PAGESZ) == page);
    char *m = mmap(0, 4 * (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED && (uintptr_t)m % (uintptr_t)page == 0);
    errno = 0;
    CHECK(madvise(m + 4096, 4096, MADV_DONTNEED) == -1 && errno == EINVAL);
    m[page + 100] = 1;
    CHECK(madvise(m, 4096, MADV_DONTNEED) == 0);
    CHECK(m[page + 100] == 1);
    m[100] = 1;
    CHECK(madvise(m, 4096, MADV_DONTNEED) == 0);
    /* The whole first page went, not just its first 4 KiB. */
    CHECK(m[100] == 0);
    m[page - 1] = 2;
    CHECK(madvise(m, 4096, MADV_DONTNEED) == 0 && m[page - 1] == 0);
    CHECK(munmap(m, 4 * (size_t)page) == 0);
    printf("pagecheck: ok %ld\n", page);
    return 0;
}
