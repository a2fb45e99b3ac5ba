/* A small shared library with thread-local storage, dlopen'ed by dlopen.c.
 * Its TLS is dynamic (the module is not loaded at startup), so glibc
 * allocates each thread's block of it with malloc on first access inside
 * __tls_get_addr, and frees it at thread exit or dlclose. */
#include <stdlib.h>
#include <string.h>

static __thread char tls_big[64 * 1024];
static __thread void *tls_block;
static __thread long tls_calls;
static void *global_block;

__attribute__((constructor)) static void tlsmod_init(void) {
    global_block = malloc(4096);
    memset(global_block, 1, 4096);
}

__attribute__((destructor)) static void tlsmod_fini(void) {
    free(global_block);
}

/* Allocates into TLS, returns a checksum the caller can predict: n + 1 per call. */
long tlsmod_work(long n) {
    tls_calls++;
    tls_big[n % sizeof tls_big] = (char)n;
    free(tls_block);
    tls_block = malloc((size_t)n * 8 + 1);
    if (!tls_block) return -1;
    memset(tls_block, (int)n, (size_t)n * 8 + 1);
    return tls_big[n % sizeof tls_big] == (char)n ? n + tls_calls : -1;
}

void tlsmod_release(void) {
    free(tls_block);
    tls_block = NULL;
    tls_calls = 0;
}
