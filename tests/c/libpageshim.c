/* A kernel with larger pages, on this one: preloaded in front of libhz.so
 * (LD_PRELOAD="libpageshim.so libhz.so"), or in front of a Rust program
 * that uses hz_core::HzAlloc, it makes the process see pages of
 * HZ_SHIM_PAGE bytes (default 65536; arm64 kernels use 4, 16 or 64 KiB,
 * ppc64 64 KiB) the way such a kernel shows them:
 *
 *   - getauxval(AT_PAGESZ), sysconf(_SC_PAGESIZE) and getpagesize() say so;
 *   - an anonymous mmap returns an address aligned to the page and covers
 *     whole pages;
 *   - munmap, mprotect, madvise, mincore and mremap refuse an address not
 *     aligned to the page (EINVAL) and round the length up to whole pages,
 *     so a madvise(MADV_DONTNEED) of the first 4 KiB of a page discards
 *     all of it, as the real kernel would: an allocator that purges or
 *     protects in 4 KiB units loses live data or faults here;
 *   - mincore reports one byte per page (resident if any part of it is).
 *
 * The calls reach the kernel as raw system calls, so the shim allocates
 * nothing and needs no dlsym. File mappings pass through unchanged (ld.so
 * maps the libraries with its own calls in any case), and so do glibc's
 * internal calls (thread stacks): only what the program and the allocator
 * call through the PLT is shimmed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

extern unsigned long __getauxval(unsigned long type);
extern long __sysconf(int name);

static size_t shim_page(void) {
    static size_t page;
    if (page == 0) {
        const char *e = getenv("HZ_SHIM_PAGE");
        size_t p = e ? strtoul(e, 0, 10) : 65536;
        if (p < 4096 || (p & (p - 1)) != 0 || p > (1 << 20))
            p = 65536;
        page = p;
    }
    return page;
}

static size_t round_up(size_t n) {
    size_t p = shim_page();
    return (n + p - 1) & ~(p - 1);
}

static int misaligned(const void *addr) {
    return ((uintptr_t)addr & (shim_page() - 1)) != 0;
}

static long fail(int e) {
    errno = e;
    return -1;
}

unsigned long getauxval(unsigned long type) {
    if (type == AT_PAGESZ)
        return shim_page();
    return __getauxval(type);
}

long sysconf(int name) {
    if (name == _SC_PAGESIZE)
        return (long)shim_page();
    return __sysconf(name);
}

int getpagesize(void) {
    return (int)shim_page();
}

static void *raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    long r = syscall(SYS_mmap, addr, len, prot, flags, fd, off);
    return r == -1 ? MAP_FAILED : (void *)r;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    size_t p = shim_page();
    if (len == 0)
        return fail(EINVAL), MAP_FAILED;
    if (!(flags & MAP_ANONYMOUS)) {
        if ((size_t)off & (p - 1))
            return fail(EINVAL), MAP_FAILED;
        return raw_mmap(addr, len, prot, flags, fd, off);
    }
    len = round_up(len);
    if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) {
        if (misaligned(addr))
            return fail(EINVAL), MAP_FAILED;
        return raw_mmap(addr, len, prot, flags, fd, off);
    }
    /* Over-map by a page, keep the aligned part. */
    char *r = raw_mmap(addr, len + p, prot, flags, fd, off);
    if (r == MAP_FAILED)
        return r;
    char *a = (char *)(((uintptr_t)r + p - 1) & ~(uintptr_t)(p - 1));
    if (a > r)
        syscall(SYS_munmap, r, (size_t)(a - r));
    if (a + len < r + len + p)
        syscall(SYS_munmap, a + len, (size_t)(r + len + p - (a + len)));
    return a;
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
    __attribute__((alias("mmap")));

int munmap(void *addr, size_t len) {
    if (misaligned(addr) || len == 0)
        return (int)fail(EINVAL);
    return (int)syscall(SYS_munmap, addr, round_up(len));
}

int mprotect(void *addr, size_t len, int prot) {
    if (misaligned(addr))
        return (int)fail(EINVAL);
    return (int)syscall(SYS_mprotect, addr, round_up(len), prot);
}

int madvise(void *addr, size_t len, int advice) {
    if (misaligned(addr))
        return (int)fail(EINVAL);
    return (int)syscall(SYS_madvise, addr, round_up(len), advice);
}

int mincore(void *addr, size_t len, unsigned char *vec) {
    size_t p = shim_page();
    if (misaligned(addr))
        return (int)fail(EINVAL);
    size_t pages = round_up(len) / p;
    unsigned char small[256];
    for (size_t i = 0; i < pages; i++) {
        if (syscall(SYS_mincore, (char *)addr + i * p, p, small) != 0)
            return -1;
        unsigned char any = 0;
        for (size_t j = 0; j < p / 4096; j++)
            any |= small[j] & 1;
        vec[i] = any;
    }
    return 0;
}

void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...) {
    void *new_addr = 0;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        new_addr = va_arg(ap, void *);
        va_end(ap);
        if (misaligned(new_addr))
            return fail(EINVAL), MAP_FAILED;
    }
    if (misaligned(old) || new_len == 0)
        return fail(EINVAL), MAP_FAILED;
    old_len = round_up(old_len);
    new_len = round_up(new_len);
    long r;
    if ((flags & MREMAP_MAYMOVE) && !(flags & MREMAP_FIXED)) {
        /* In place if the kernel can; else to an aligned place of ours. */
        r = syscall(SYS_mremap, old, old_len, new_len, 0, 0);
        if (r != -1)
            return (void *)r;
        void *to = mmap(0, new_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (to == MAP_FAILED)
            return to;
        r = syscall(SYS_mremap, old, old_len, new_len, flags | MREMAP_FIXED, to);
        if (r == -1) {
            int e = errno;
            syscall(SYS_munmap, to, new_len);
            errno = e;
        }
    } else {
        r = syscall(SYS_mremap, old, old_len, new_len, flags, new_addr);
    }
    return r == -1 ? MAP_FAILED : (void *)r;
}
