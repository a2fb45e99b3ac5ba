/* Shared by the C and C++ benchmark programs: pinning threads to CPUs
 * (HZB_PIN=1) and the program's peak RSS. Plain C that a C++ compiler
 * accepts too (GCC's __atomic builtins, no <stdatomic.h>). */
#ifndef HZB_SYS_H
#define HZB_SYS_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* HZB_PIN=1: thread `id` runs only on the id-th CPU (round robin) of those
 * the process may use, so the scheduler cannot leave one CPU with more of
 * the threads than another (with 4 threads on 2 CPUs, a 3+1 split makes a
 * run 1.5x longer whatever the allocator). */
static inline void hzb_pin(size_t id) {
    const char *e = getenv("HZB_PIN");
    if (!e || strcmp(e, "1") != 0) return;
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
    int n = CPU_COUNT(&allowed);
    if (n < 1) return;
    int want = (int)(id % (size_t)n), seen = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &allowed)) continue;
        if (seen++ == want) {
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            /* A refusal leaves the thread unpinned: the run is still valid. */
            (void)sched_setaffinity(0, sizeof one, &one);
            return;
        }
    }
}

/* HZB_PIN=1: pins the calling thread to the next CPU in round robin (one
 * process-wide counter), for programs whose threads have no index. */
static inline void hzb_pin_next(void) {
    static size_t next;
    hzb_pin(__atomic_fetch_add(&next, 1, __ATOMIC_RELAXED));
}

/* Peak RSS of this program, KiB: VmHWM from /proc/self/status, the peak
 * of the memory this program mapped since its exec. Not getrusage's
 * ru_maxrss: Linux carries that across exec, so a child started by vfork
 * (posix_spawn: Rust's Command, Python's subprocess) reports at least the
 * RSS its parent had. Read with a stack buffer: nothing is allocated. */
static inline long hzb_peak_rss_kib(void) {
    char buf[4096];
    long kib = -1;
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0) {
            buf[n] = 0;
            char *p = strstr(buf, "VmHWM:");
            if (p) kib = strtol(p + 6, NULL, 10);
        }
    }
    if (kib < 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        kib = ru.ru_maxrss;
    }
    return kib;
}

#endif
