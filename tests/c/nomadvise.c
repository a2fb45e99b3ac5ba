/* A process whose seccomp filter denies madvise and mremap (EPERM), as some
 * sandboxes do: no purge of the allocator's can succeed, and every calloc
 * must still hand out zeros; no large block can be moved by mremap, and
 * realloc must still keep the contents. Blocks of 3, 6 and 20 MiB (a
 * thread's segment, a run of the page allocator) are filled with 0xab and
 * freed, the purge forced (malloc_trim) or left to the purge delay, then
 * taken again by calloc; then one block grows by realloc from 1 to 40 MiB
 * and shrinks back, its contents checked at every step. Needs no privilege
 * (PR_SET_NO_NEW_PRIVS). Prints "nomadvise: ok", or "nomadvise: skipped"
 * where seccomp filters are not available. */
#define _GNU_SOURCE /* mremap */
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include "recycle.h"

/* Every block takes part. */
static int take(unsigned char *p, size_t n) {
    (void)p;
    (void)n;
    return 1;
}

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#endif

static int deny_madvise_and_mremap(void) {
#ifdef ARCH
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_madvise, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mremap, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
#else
    return -1;
#endif
}

int main(void) {
    if (deny_madvise_and_mremap() != 0) {
        printf("nomadvise: skipped (errno %d)\n", errno);
        return 0;
    }
    CHECK(madvise(NULL, 0, MADV_NORMAL) != 0 && errno == EPERM);
    CHECK(mremap(NULL, 0, 0, 0) == MAP_FAILED && errno == EPERM);
    CHECK(calloc_after_free_rounds(take) == 18);
    unsigned char *b = NULL;
    size_t have = 0;
    for (size_t mib = 1; mib <= 40; mib++) {
        size_t n = mib << 20;
        unsigned char *q = realloc(b, n);
        CHECK(q != NULL);
        for (size_t i = 0; i < have; i += 4093)
            CHECK(q[i] == (unsigned char)(i * 7));
        for (size_t i = have; i < n; i++)
            q[i] = (unsigned char)(i * 7);
        b = q;
        have = n;
    }
    for (int half_mib = 79; half_mib > 0; half_mib -= 2) {
        size_t n = (size_t)half_mib << 19;
        b = realloc(b, n);
        CHECK(b != NULL);
        for (size_t i = 0; i < n; i += 4093)
            CHECK(b[i] == (unsigned char)(i * 7));
    }
    free(b);
    printf("nomadvise: ok\n");
    return 0;
}
