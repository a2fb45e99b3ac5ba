/* Shared by the test programs: CHECK(cond) prints "FAIL file:line: cond"
 * and exits 1 when cond is false. */
#ifndef HZ_TEST_CHECK_H
#define HZ_TEST_CHECK_H
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            printf("FAIL %s:%d: %s (errno=%d)\n", __FILE__, __LINE__, #cond,   \
                   errno);                                                     \
            fflush(stdout);                                                    \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

#define ALIGNED(p, a) (((uintptr_t)(p) & ((uintptr_t)(a) - 1)) == 0)

#endif
