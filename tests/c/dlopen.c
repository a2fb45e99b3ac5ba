/* dlopen/dlclose of a library with TLS while other threads allocate.
 * Usage: `dlopen PATH-TO-libtlsmod.so [waves]`. Loader threads, in waves,
 * open the library, touch its TLS (glibc mallocs the TLS block), call into
 * it, close it, and exit (glibc frees their TLS). Prints "dlopen: ok". */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "check.h"

static const char *path;
static atomic_int stop;

static void *churn(void *arg) {
    uint64_t s = (uintptr_t)arg + 99;
    void *mine[64] = {0};
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        size_t i = (s >> 33) % 64;
        free(mine[i]);
        size_t n = (s >> 45) % 5000 + 1;
        mine[i] = malloc(n);
        CHECK(mine[i]);
        memset(mine[i], 7, n);
    }
    for (size_t i = 0; i < 64; i++) free(mine[i]);
    return NULL;
}

static void *loader(void *arg) {
    long id = (long)(uintptr_t)arg;
    for (int round = 0; round < 20; round++) {
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            printf("FAIL dlopen: %s\n", dlerror());
            exit(1);
        }
        long (*work)(long) = (long (*)(long))dlsym(h, "tlsmod_work");
        void (*release)(void) = (void (*)(void))dlsym(h, "tlsmod_release");
        CHECK(work && release);
        for (long k = 1; k <= 10; k++) CHECK(work(id * 100 + k) == id * 100 + k + k);
        release();
        CHECK(dlclose(h) == 0);
    }
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc > 1);
    path = argv[1];
    int waves = argc > 2 ? atoi(argv[2]) : 10;
    pthread_t churners[3];
    for (int t = 0; t < 3; t++) CHECK(pthread_create(&churners[t], NULL, churn, (void *)(uintptr_t)t) == 0);
    long id = 0;
    for (int w = 0; w < waves; w++) {
        pthread_t tid[3];
        for (int t = 0; t < 3; t++) CHECK(pthread_create(&tid[t], NULL, loader, (void *)(uintptr_t)id++) == 0);
        for (int t = 0; t < 3; t++) CHECK(pthread_join(tid[t], NULL) == 0);
    }
    atomic_store(&stop, 1);
    for (int t = 0; t < 3; t++) CHECK(pthread_join(churners[t], NULL) == 0);
    printf("dlopen: ok\n");
    return 0;
}
