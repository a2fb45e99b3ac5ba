/* mlockall(MCL_CURRENT | MCL_FUTURE) under libhz.so: the call succeeds, it
 * does not make hz's reserved address space resident (the test runs with
 * HZ_ARENA_MB=1024: the whole reservation locked would be over 1 GiB) nor
 * libhz.so's heap registry (8 MiB of static slots, most never written), it
 * still faults in and locks the program's own mappings (a static array
 * never touched before the call is resident after it), and blocks
 * allocated after it are locked as they are written. Prints
 * "mlockall: ok", or "mlockall: skipped" when the process may not lock
 * (RLIMIT_MEMLOCK without CAP_IPC_LOCK). */
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"

static unsigned char untouched[1 << 20];

/* Resident locked memory in KiB: "Locked:" of /proc/self/smaps_rollup
 * (VmLck of /proc/self/status counts locked mappings whole, resident or
 * not). */
static long locked_kib(void) {
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    CHECK(f != NULL);
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Locked: %ld kB", &kib) == 1)
            break;
    fclose(f);
    CHECK(kib >= 0);
    return kib;
}

int main(void) {
    void *early = malloc(100);
    CHECK(early != NULL);
    if (mlockall(MCL_CURRENT | MCL_FUTURE) != 0) {
        CHECK(errno == ENOMEM || errno == EPERM);
        printf("mlockall: skipped (errno %d)\n", errno);
        return 0;
    }
    /* Locked and resident: what the program and its libraries use, not
     * hz's reservation, nor the 8 MiB of libhz.so's heap registry that no
     * one has written (a small C program: about 2 MiB here, 10 MiB with
     * the registry made resident). Under an emulator the figure is the
     * emulator's process's: the harness passes a looser bound. */
    const char *max = getenv("HZ_TEST_LOCKED_MAX_KIB");
    long before = locked_kib();
    CHECK(before < (max ? atol(max) : 8 * 1024));

    long page = sysconf(_SC_PAGESIZE);
    unsigned char vec[1];
    unsigned char *mid = untouched + sizeof untouched / 2;
    mid -= (uintptr_t)mid % (uintptr_t)page;
    CHECK(mincore(mid, (size_t)page, vec) == 0);
    CHECK(vec[0] & 1);

    size_t n = 32u << 20;
    unsigned char *p = malloc(n);
    CHECK(p != NULL);
    memset(p, 7, n);
    /* The block escapes: the compiler may not drop the writes. */
    __asm__ volatile("" : : "r"(p) : "memory");
    long after = locked_kib();
    CHECK(after - before >= 30 * 1024);
    free(p);
    free(early);
    CHECK(munlockall() == 0);
    printf("mlockall: ok\n");
    return 0;
}
