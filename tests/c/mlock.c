/* calloc after blocks that were locked in memory (mlock) and freed without
 * munlock: the kernel refuses to purge locked pages (MADV_DONTNEED fails
 * with EINVAL), and the allocator must still hand out zeros. Sizes through
 * each large path: a thread's segment (3 MiB, 6 MiB) and a run of the page
 * allocator (20 MiB); the purge forced (malloc_trim) or left to the purge
 * delay. Prints "mlock: ok (N locked)", or "mlock: skipped" when the
 * process may lock nothing (RLIMIT_MEMLOCK without CAP_IPC_LOCK). */
#include <sys/mman.h>

#include "recycle.h"

/* Locks the block; refuses it when the process may lock no more. */
static int lock(unsigned char *p, size_t n) {
    if (mlock(p, n) == 0)
        return 1;
    CHECK(errno == ENOMEM || errno == EPERM);
    return 0;
}

int main(void) {
    int locked = calloc_after_free_rounds(lock);
    if (locked == 0)
        printf("mlock: skipped (RLIMIT_MEMLOCK)\n");
    else
        printf("mlock: ok (%d locked)\n", locked);
    return 0;
}
