/* The single-thread malloc+free pair probe for instruction counts
 * (scripts/instructions.sh, under callgrind and LD_PRELOAD).
 *
 *   pairs N
 *
 * One live block of each size 16, 32, ..., 1024 is kept for the whole run,
 * so no span empties; 100 000 warm-up pairs; then N pairs, the size cycling
 * through 16..1024 in steps of 16, each block written once. The script runs
 * N = 1 000 000 and 2 000 000 and divides the difference of the two runs'
 * instruction counts by 1 000 000: the cost of one iteration, start-up and
 * exit cancelled out. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static void *volatile sink;

static void run(uint64_t n) {
    for (uint64_t i = 0; i < n; i++) {
        size_t s = 16 + (size_t)(i & 63) * 16;
        char *p = malloc(s);
        if (!p) abort();
        *(volatile char *)p = 1;
        sink = p;
        free(p);
    }
}

int main(int argc, char **argv) {
    uint64_t n = argc > 1 ? strtoull(argv[1], 0, 10) : 1000000;
    void *keep[64];
    for (int i = 0; i < 64; i++)
        if (!(keep[i] = malloc(16 + (size_t)i * 16))) return 1;
    run(100000);
    run(n);
    for (int i = 0; i < 64; i++) free(keep[i]);
    return 0;
}
