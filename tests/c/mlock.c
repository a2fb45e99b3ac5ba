/* calloc after blocks that were locked in memory (mlock) and freed without
 * munlock: the kernel refuses to purge locked pages (MADV_DONTNEED fails
 * with EINVAL), and the allocator must still hand out zeros. Sizes through
 * each large path: a thread's segment (3 MiB, 6 MiB) and a run of the page
 * allocator (20 MiB); the purge forced (malloc_trim) or left to the purge
 * delay. Prints "mlock: ok (N locked)", or "mlock: skipped" when the
 * process may lock nothing (RLIMIT_MEMLOCK without CAP_IPC_LOCK). */
#include <malloc.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"

int main(void) {
    const size_t sizes[] = {3u << 20, 6u << 20, 20u << 20};
    int locked = 0;
    for (int round = 0; round < 6; round++) {
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            size_t n = sizes[k];
            unsigned char *p = malloc(n);
            CHECK(p != NULL);
            memset(p, 0xab, n);
            if (mlock(p, n) != 0) {
                CHECK(errno == ENOMEM || errno == EPERM);
                free(p);
                continue;
            }
            locked++;
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
                    return 1;
                }
            }
            free(q);
        }
    }
    if (locked == 0)
        printf("mlock: skipped (RLIMIT_MEMLOCK)\n");
    else
        printf("mlock: ok (%d locked)\n", locked);
    return 0;
}
