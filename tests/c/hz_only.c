/* Checks that only hold under libhz.so (glibc 2.36 aborts on a foreign
 * free and has no free_sized). Usage:
 *   hz_only exports   every exported entry point exists and works
 *   hz_only foreign   free() of stack/static/mmap pointers is survived
 *   hz_only stats     mallinfo/mallinfo2/malloc_info/malloc_trim/malloc_stats agree
 * Prints "FAIL ..." and exits 1 on a broken rule, "<mode>: ok" otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "check.h"

/* Not declared by glibc 2.36's headers. */
extern void free_sized(void *, size_t) __attribute__((weak));
extern void free_aligned_sized(void *, size_t, size_t) __attribute__((weak));
extern void cfree(void *) __attribute__((weak));
extern void *__libc_malloc(size_t) __attribute__((weak));
extern void *__libc_calloc(size_t, size_t) __attribute__((weak));
extern void *__libc_realloc(void *, size_t) __attribute__((weak));
extern void __libc_free(void *) __attribute__((weak));
extern void *__libc_memalign(size_t, size_t) __attribute__((weak));
extern void *__libc_valloc(size_t) __attribute__((weak));
extern void *__libc_pvalloc(size_t) __attribute__((weak));
extern struct mallinfo __libc_mallinfo(void) __attribute__((weak));
extern int __libc_mallopt(int, int) __attribute__((weak));

static void exports(void) {
    CHECK(free_sized && free_aligned_sized && cfree);
    CHECK(__libc_malloc && __libc_calloc && __libc_realloc && __libc_free);
    CHECK(__libc_memalign && __libc_valloc && __libc_pvalloc);
    CHECK(__libc_mallinfo && __libc_mallopt);
    CHECK(__libc_mallopt(M_ARENA_MAX, 1) == 1);
    for (size_t n = 1; n < (1u << 21); n = n * 4 + 1) {
        void *p = malloc(n);
        CHECK(p);
        memset(p, 1, n);
        errno = 77;
        free_sized(p, n);
        CHECK(errno == 77);
        p = aligned_alloc(256, n);
        CHECK(p && ALIGNED(p, 256));
        errno = 78;
        free_aligned_sized(p, 256, n);
        CHECK(errno == 78);
    }
    void *p = malloc(10);
    errno = 79;
    cfree(p);
    CHECK(errno == 79);
    free_sized(NULL, 0);

    /* The __libc_ names must be hz's: their blocks go to hz's free. */
    unsigned char *a = __libc_malloc(100);
    CHECK(a && malloc_usable_size(a) >= 100);
    memset(a, 9, 100);
    a = __libc_realloc(a, 5000);
    CHECK(a && a[99] == 9);
    free(a);
    unsigned char *c = __libc_calloc(10, 10);
    CHECK(c && c[0] == 0 && c[99] == 0);
    __libc_free(c);
    p = __libc_memalign(4096, 10);
    CHECK(p && ALIGNED(p, 4096));
    free(p);
    p = __libc_valloc(10);
    CHECK(p && ALIGNED(p, 4096));
    free(p);
    p = __libc_pvalloc(10);
    CHECK(p && ALIGNED(p, 4096) && malloc_usable_size(p) >= 4096);
    __libc_free(p);
    /* A block from plain malloc is hz's too. */
    p = malloc(33);
    CHECK(malloc_usable_size(p) >= 33);
    __libc_free(p);
}

static char static_buf[4096] __attribute__((aligned(4096)));
static long static_word = 5;

static void foreign(void) {
    char stack_buf[256] __attribute__((aligned(64)));
    memset(stack_buf, 1, sizeof stack_buf);
    void *mapped = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mapped != MAP_FAILED);
    void *ptrs[] = {stack_buf,         stack_buf + 16,  stack_buf + 3,
                    static_buf,        static_buf + 64, &static_word,
                    (void *)"literal", mapped,          (char *)mapped + 4096};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) {
        errno = 55;
        free(ptrs[i]);
        CHECK(errno == 55);
    }
    /* The allocator still works and the memory freed "by mistake" is intact. */
    CHECK(stack_buf[200] == 1 && static_word == 5);
    memset(mapped, 3, 1 << 16);
    void *p = malloc(100);
    CHECK(p);
    free(p);
    munmap(mapped, 1 << 16);
}

/* malloc_info's document, read back from a temporary file. */
static size_t info(char *doc, size_t cap) {
    FILE *f = tmpfile();
    CHECK(f);
    CHECK(malloc_info(0, f) == 0);
    rewind(f);
    size_t n = fread(doc, 1, cap - 1, f);
    doc[n] = 0;
    fclose(f);
    return n;
}

/* The last "<total type=\"mmap\" count=.. size=../>" of the document (the
 * process-wide one), and a check that every <size> line is consistent and
 * sums to "rest". */
static void info_totals(const char *doc, size_t *mmap_count, size_t *mmap_size) {
    const char *p = doc, *last = NULL;
    size_t rooms = 0, bytes = 0, prev_to = 0;
    while ((p = strstr(p, "<size from=\""))) {
        size_t from, to, total, count;
        CHECK(sscanf(p, "<size from=\"%zu\" to=\"%zu\" total=\"%zu\" count=\"%zu\"/>",
                     &from, &to, &total, &count) == 4);
        CHECK(from > prev_to && from <= to && count > 0 && total == count * to);
        prev_to = to;
        rooms += count;
        bytes += total;
        p++;
    }
    size_t c, b;
    p = strstr(doc, "<total type=\"rest\" ");
    CHECK(p && sscanf(p, "<total type=\"rest\" count=\"%zu\" size=\"%zu\"/>", &c, &b) == 2);
    CHECK(c == rooms && b == bytes);
    for (p = doc; (p = strstr(p, "<total type=\"mmap\" ")); p++) last = p;
    CHECK(last && sscanf(last, "<total type=\"mmap\" count=\"%zu\" size=\"%zu\"/>",
                         mmap_count, mmap_size) == 2);
}

static void stats(void) {
    enum { N = 64, SZ = 256 * 1024 };
    void *blocks[N];
    struct mallinfo2 before = mallinfo2();
    static char doc0[16384];
    size_t count_before, size_before;
    info(doc0, sizeof doc0);
    info_totals(doc0, &count_before, &size_before);
    for (int i = 0; i < N; i++) {
        blocks[i] = malloc(SZ);
        CHECK(blocks[i]);
        memset(blocks[i], i, SZ);
    }
    struct mallinfo2 during = mallinfo2();
    struct mallinfo during1 = mallinfo();
    /* malloc_info counts the 64 live large blocks and their 16 MiB. */
    static char doc[16384];
    size_t count_during, size_during;
    info(doc, sizeof doc);
    info_totals(doc, &count_during, &size_during);
    /* 16 MiB live: allocated bytes and mapped bytes must show it. */
    CHECK(during.uordblks >= before.uordblks + (size_t)N * SZ);
    CHECK(during.arena >= (size_t)N * SZ);
    CHECK(during1.uordblks > 0 && (size_t)during1.uordblks >= (size_t)N * SZ);
    /* hz's, not glibc's (which would see none of these blocks). */
    struct mallinfo during2 = __libc_mallinfo();
    CHECK(during2.hblks == during1.hblks && (size_t)during2.uordblks >= (size_t)N * SZ);
    CHECK(count_during == count_before + N && count_during == during.hblks);
    CHECK(size_during >= size_before + (size_t)N * SZ);
    for (int i = 0; i < N; i++) free(blocks[i]);
    struct mallinfo2 after = mallinfo2();
    size_t count_after, size_after;
    info(doc, sizeof doc);
    info_totals(doc, &count_after, &size_after);
    CHECK(count_after == count_before && size_after == size_before);
    /* A stream that cannot be written: -1 (glibc ignores the failure). */
    FILE *full = fopen("/dev/full", "w");
    if (full) {
        setvbuf(full, NULL, _IONBF, 0);
        CHECK(malloc_info(0, full) == -1);
        fclose(full);
    }
    CHECK(after.uordblks + (size_t)N * SZ / 2 <= during.uordblks);
    /* keepcost is what malloc_trim can give back: it returns 1 exactly when
     * there was some, leaves none, and a second trim has nothing to do. */
    int trimmed = malloc_trim(0);
    CHECK(trimmed == (after.keepcost > 0));
    CHECK(mallinfo2().keepcost == 0);
    CHECK(malloc_trim(0) == 0);
    malloc_stats();
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "exports") == 0)
        exports();
    else if (strcmp(mode, "foreign") == 0)
        foreign();
    else if (strcmp(mode, "stats") == 0)
        stats();
    else {
        printf("FAIL unknown mode '%s'\n", mode);
        return 2;
    }
    printf("%s: ok\n", mode);
    return 0;
}
