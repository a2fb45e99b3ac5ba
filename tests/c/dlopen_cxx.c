/* A C program that dlopens a C++ library with RTLD_LOCAL (its C++ runtime
 * out of the global scope) and runs its out-of-memory checks.
 * Usage: `dlopen_cxx PATH-TO-libcxxplug.so`. Prints "dlopen_cxx: ok". */
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        printf("FAIL dlopen: %s\n", dlerror());
        return 1;
    }
    int (*run)(void) = (int (*)(void))dlsym(h, "plug_run");
    if (!run) {
        printf("FAIL dlsym: %s\n", dlerror());
        return 1;
    }
    int ok = run();
    if (ok != 4) {
        printf("FAIL %d of 4 out-of-memory checks\n", ok);
        return 1;
    }
    dlclose(h);
    printf("dlopen_cxx: ok\n");
    return 0;
}
