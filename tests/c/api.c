/* The glibc malloc API, corner case by corner case, errno included.
 * Self-checking: prints "FAIL ..." and exits 1 on the first broken rule,
 * "api: ok" on success. The test runs it on plain glibc too, so every
 * expectation here is glibc 2.36's actual behaviour. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

/* Keeps the compiler from folding malloc/free pairs or known sizes away. */
static volatile size_t big = SIZE_MAX;
static void *volatile sink;

static void fill_check(unsigned char *p, size_t n, unsigned char v) {
    memset(p, v, n);
    for (size_t i = 0; i < n; i++) CHECK(p[i] == v);
}

static void test_malloc(void) {
    void *a = malloc(0), *b = malloc(0);
    CHECK(a && b && a != b);
    CHECK(ALIGNED(a, 16) && ALIGNED(b, 16));
    free(a);
    free(b);
    for (size_t n = 1; n <= (1u << 22); n = n * 3 + 1) {
        unsigned char *p = malloc(n);
        CHECK(p && ALIGNED(p, 16));
        CHECK(malloc_usable_size(p) >= n);
        fill_check(p, malloc_usable_size(p), 0xa5);
        free(p);
    }
    errno = 0;
    sink = malloc(big);
    CHECK(sink == NULL && errno == ENOMEM);
    errno = 0;
    sink = malloc((size_t)PTRDIFF_MAX + 1);
    CHECK(sink == NULL && errno == ENOMEM);
    errno = 0;
    sink = malloc(big - 4096);
    CHECK(sink == NULL && errno == ENOMEM);
}

static void test_calloc(void) {
    /* Dirty some memory first so calloc must really zero recycled blocks. */
    for (int i = 0; i < 64; i++) {
        void *d = malloc(1000);
        memset(d, 0xff, 1000);
        free(d);
    }
    for (size_t n = 1; n < 300000; n = n * 5 + 3) {
        unsigned char *p = calloc(n, 1);
        CHECK(p && ALIGNED(p, 16));
        for (size_t i = 0; i < n; i++) CHECK(p[i] == 0);
        free(p);
    }
    unsigned char *p = calloc(1000, 8);
    CHECK(p);
    for (size_t i = 0; i < 8000; i++) CHECK(p[i] == 0);
    free(p);
    void *z = calloc(0, 0);
    CHECK(z != NULL);
    free(z);
    errno = 0;
    sink = calloc(big / 2, 3);
    CHECK(sink == NULL && errno == ENOMEM);
    errno = 0;
    sink = calloc(big, big);
    CHECK(sink == NULL && errno == ENOMEM);
    errno = 0;
    sink = calloc(1, (size_t)PTRDIFF_MAX + 1);
    CHECK(sink == NULL && errno == ENOMEM);
}

static void test_realloc(void) {
    unsigned char *p = realloc(NULL, 10);
    CHECK(p && ALIGNED(p, 16));
    memset(p, 10, 10);
    /* Grow through small, medium and large sizes, content preserved. */
    size_t old = 10;
    for (size_t n = 37; n < (8u << 20); n = n * 3) {
        p = realloc(p, n);
        CHECK(p && ALIGNED(p, 16));
        for (size_t i = 0; i < old; i++) CHECK(p[i] == (unsigned char)(old % 251));
        memset(p, (int)(n % 251), n);
        old = n;
    }
    /* And shrink back down. */
    for (size_t n = old / 2; n > 8; n /= 3) {
        p = realloc(p, n);
        CHECK(p);
        for (size_t i = 0; i < n; i++) CHECK(p[i] == (unsigned char)(old % 251));
    }
    /* A failed realloc leaves the block intact. */
    unsigned char *q = malloc(100);
    CHECK(q);
    memset(q, 0x3c, 100);
    errno = 0;
    CHECK(realloc(q, big) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(realloc(q, (size_t)PTRDIFF_MAX + 1) == NULL && errno == ENOMEM);
    for (int i = 0; i < 100; i++) CHECK(q[i] == 0x3c);
    CHECK(malloc_usable_size(q) >= 100);
    /* realloc(p, 0) frees and returns NULL (glibc), errno unchanged. */
    errno = 0;
    CHECK(realloc(q, 0) == NULL && errno == 0);
    /* realloc(NULL, 0) is malloc(0): non-null. */
    void *r = realloc(NULL, 0);
    CHECK(r != NULL);
    free(r);
    free(p);
}

static void test_reallocarray(void) {
    int *p = reallocarray(NULL, 10, sizeof(int));
    CHECK(p);
    for (int i = 0; i < 10; i++) p[i] = i;
    p = reallocarray(p, 1000, sizeof(int));
    CHECK(p);
    for (int i = 0; i < 10; i++) CHECK(p[i] == i);
    errno = 0;
    CHECK(reallocarray(p, big / 2, 3) == NULL && errno == ENOMEM);
    for (int i = 0; i < 10; i++) CHECK(p[i] == i);
    errno = 0;
    CHECK(reallocarray(p, 0, 4) == NULL && errno == 0); /* frees, like realloc(p, 0) */
}

static void test_posix_memalign(void) {
    void *out;
    for (size_t a = sizeof(void *); a <= ((size_t)4 << 20); a *= 2) {
        for (size_t n = 0; n < 3 * a && n < (1u << 20); n = n * 2 + 7) {
            out = NULL;
            CHECK(posix_memalign(&out, a, n) == 0);
            CHECK(out && ALIGNED(out, a));
            CHECK(malloc_usable_size(out) >= n);
            memset(out, 0x5a, n);
            free(out);
        }
    }
    /* Bad alignments: EINVAL returned, out untouched. */
    size_t bad[] = {0, 1, 2, 4, 12, 24, 48, 100, (size_t)1 << 63 | 8};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        out = (void *)0x1234;
        CHECK(posix_memalign(&out, bad[i], 64) == EINVAL);
        CHECK(out == (void *)0x1234);
    }
    /* OOM: ENOMEM returned (not just errno), out untouched. */
    out = (void *)0x1234;
    CHECK(posix_memalign(&out, 64, big) == ENOMEM);
    CHECK(out == (void *)0x1234);
    CHECK(posix_memalign(&out, 4096, (size_t)PTRDIFF_MAX) == ENOMEM);
    CHECK(out == (void *)0x1234);
    /* Size 0 gives a freeable pointer. */
    CHECK(posix_memalign(&out, 256, 0) == 0 && out != (void *)0x1234);
    free(out);
}

static void test_memalign_family(void) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (size_t a = 1; a <= ((size_t)2 << 20); a *= 2) {
        void *p = memalign(a, 100);
        CHECK(p && ALIGNED(p, a) && ALIGNED(p, 16));
        free(p);
        p = aligned_alloc(a, 3 * a);
        CHECK(p && ALIGNED(p, a));
        memset(p, 1, 3 * a);
        free(p);
    }
    /* glibc 2.36 rounds a non-power-of-two alignment up to the next power
     * of two in memalign, and aligned_alloc is the same function there. */
    void *p = memalign(24, 100);
    CHECK(p && ALIGNED(p, 32));
    free(p);
    p = memalign(100, 10);
    CHECK(p && ALIGNED(p, 128));
    free(p);
    p = aligned_alloc(48, 96);
    CHECK(p && ALIGNED(p, 64));
    free(p);
    p = memalign(0, 10);
    CHECK(p && ALIGNED(p, 16));
    free(p);
    /* An alignment above SIZE_MAX/2+1 cannot be rounded up: EINVAL. */
    errno = 0;
    CHECK(memalign(((size_t)1 << 63) + 1, 10) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(memalign(64, big) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(aligned_alloc(64, big) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(memalign((size_t)1 << 63, 100) == NULL && errno == ENOMEM);

    p = valloc(1);
    CHECK(p && ALIGNED(p, page));
    free(p);
    p = valloc(3 * page + 5);
    CHECK(p && ALIGNED(p, page) && malloc_usable_size(p) >= 3 * page + 5);
    free(p);
    p = pvalloc(1);
    CHECK(p && ALIGNED(p, page) && malloc_usable_size(p) >= page);
    memset(p, 2, page);
    free(p);
    p = pvalloc(page + 1);
    CHECK(p && ALIGNED(p, page) && malloc_usable_size(p) >= 2 * page);
    free(p);
    p = pvalloc(0);
    CHECK(p && ALIGNED(p, page));
    free(p);
    errno = 0;
    CHECK(valloc(big - 100) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(pvalloc(big - 100) == NULL && errno == ENOMEM);
}

static void test_free_and_misc(void) {
    CHECK(malloc_usable_size(NULL) == 0);
    errno = 1234;
    free(NULL);
    CHECK(errno == 1234);
    for (size_t n = 1; n < (4u << 20); n *= 7) {
        void *p = malloc(n);
        CHECK(p);
        errno = 4321;
        free(p);
        CHECK(errno == 4321);
    }
    void *p = realloc(malloc(10), 0);
    CHECK(p == NULL);
    int r = malloc_trim(0);
    CHECK(r == 0 || r == 1);
    CHECK(mallopt(M_ARENA_MAX, 1) == 1);
    struct mallinfo2 m2 = mallinfo2();
    struct mallinfo m = mallinfo();
    (void)m2;
    (void)m;
    /* malloc_info: glibc returns EINVAL for options != 0 and leaves errno
     * alone (its manual page says -1); otherwise an XML document. */
    FILE *f = tmpfile();
    CHECK(f);
    errno = 55;
    CHECK(malloc_info(1, f) == EINVAL && errno == 55);
    CHECK(malloc_info(0, f) == 0);
    char doc[16384];
    rewind(f);
    size_t n = fread(doc, 1, sizeof doc - 1, f);
    doc[n] = 0;
    fclose(f);
    CHECK(strncmp(doc, "<malloc version=\"1\">\n", 20) == 0);
    CHECK(n > 10 && strcmp(doc + n - 10, "</malloc>\n") == 0);
    CHECK(strstr(doc, "<total type=\"mmap\" count=\""));
    CHECK(strstr(doc, "<system type=\"current\" size=\""));
}

int main(void) {
    test_malloc();
    test_calloc();
    test_realloc();
    test_reallocarray();
    test_posix_memalign();
    test_memalign_family();
    test_free_and_misc();
    puts("api: ok");
    return 0;
}
