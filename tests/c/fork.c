/* fork() from a multi-threaded program: usage `fork [forks] [threads]`.
 * Allocator threads keep allocating and freeing (local and cross-thread)
 * while the main thread forks; each child frees blocks inherited from the
 * parent, allocates on its own and from a new thread, and exits through
 * exit(). A child stuck on a lock inherited in the locked state is killed
 * by alarm() and shows up as a bad wait status. Prints "fork: ok". */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static atomic_int stop;
static _Atomic(void *) shared[64];

static void *churn(void *arg) {
    uint64_t s = (uintptr_t)arg * 7919 + 1;
    void *mine[32] = {0};
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        size_t i = (s >> 33) % 32;
        size_t n = (s >> 40) % 4 == 0 ? (s >> 20) % (1 << 20) : (s >> 24) % 2048;
        free(mine[i]);
        mine[i] = malloc(n + 1);
        CHECK(mine[i]);
        memset(mine[i], 0x11, n + 1);
        /* Swap a block with the shared array: frees of others' blocks. */
        void *p = malloc(64);
        CHECK(p);
        free(atomic_exchange(&shared[(s >> 50) % 64], p));
    }
    for (size_t i = 0; i < 32; i++) free(mine[i]);
    return NULL;
}

static void *child_thread(void *arg) {
    for (int i = 0; i < 1000; i++) {
        char *p = malloc((size_t)i * 13 + 1);
        CHECK(p);
        p[0] = 1;
        free(p);
    }
    return arg;
}

static void child(char *inherited, size_t n) {
    alarm(20);
    for (size_t i = 0; i < n; i++) CHECK(inherited[i] == 0x42);
    free(inherited);
    void *blocks[200];
    for (int i = 0; i < 200; i++) {
        blocks[i] = malloc((size_t)(i * 997) % 70000 + 1);
        CHECK(blocks[i]);
        memset(blocks[i], i, (size_t)(i * 997) % 70000 + 1);
    }
    for (int i = 0; i < 200; i++) free(blocks[i]);
    /* Take a block some parent thread was cycling through the shared array. */
    free(atomic_exchange(&shared[3], NULL));
    pthread_t t;
    CHECK(pthread_create(&t, NULL, child_thread, NULL) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    exit(0);
}

int main(int argc, char **argv) {
    int forks = argc > 1 ? atoi(argv[1]) : 100;
    int threads = argc > 2 ? atoi(argv[2]) : 4;
    CHECK(forks > 0 && threads > 0 && threads <= 64);
    pthread_t tid[64];
    for (int t = 0; t < threads; t++)
        CHECK(pthread_create(&tid[t], NULL, churn, (void *)(uintptr_t)t) == 0);
    for (int f = 0; f < forks; f++) {
        size_t n = (size_t)f * 1000 + 10;
        char *inherited = malloc(n);
        CHECK(inherited);
        memset(inherited, 0x42, n);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) child(inherited, n);
        free(inherited);
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            printf("FAIL fork %d: child status %#x (signal %d)\n", f, status,
                   WIFSIGNALED(status) ? WTERMSIG(status) : 0);
            return 1;
        }
    }
    atomic_store(&stop, 1);
    for (int t = 0; t < threads; t++) CHECK(pthread_join(tid[t], NULL) == 0);
    for (size_t i = 0; i < 64; i++) free(atomic_exchange(&shared[i], NULL));
    printf("fork: ok\n");
    return 0;
}
