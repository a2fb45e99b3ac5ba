// C++ operator new and delete in every replaceable form, and their failure
// contract: new_handler retries, std::bad_alloc, nullptr from the nothrow
// forms, over-aligned types. Prints which object defines the operators the
// program calls (libhz.so exports them) and a deterministic report compared
// with the plain glibc run; exits non-zero if any check fails.
#include <dlfcn.h>
#include <malloc.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <thread>
#include <vector>

static int failures = 0;

#define CHECK(cond)                                              \
    do {                                                         \
        if (!(cond)) {                                           \
            std::printf("FAIL line %d: %s\n", __LINE__, #cond); \
            failures++;                                          \
        }                                                        \
    } while (0)

// Beyond any user address space: every allocator must fail it.
static const size_t HUGE_SIZE = size_t(1) << 50;
// Where new-expressions' results go, so the compiler cannot elide them.
static void *volatile sink;

static int handler_calls = 0;
static void counting_handler() {
    if (++handler_calls == 3) std::set_new_handler(nullptr);
}
static void throwing_handler() {
    handler_calls++;
    throw std::bad_alloc();
}

struct alignas(64) Line {
    char b[64];
};
struct alignas(4096) PageObj {
    char b[100];
};

static bool aligned(const void *p, size_t a) { return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0; }

// The object that defines the operator new this program calls.
static const char *definer() {
    void *(*f)(size_t) = &::operator new;
    Dl_info info;
    if (!dladdr(reinterpret_cast<void *>(f), &info) || !info.dli_fname) return "?";
    const char *slash = std::strrchr(info.dli_fname, '/');
    return slash ? slash + 1 : info.dli_fname;
}

int main() {
    std::printf("operator new from %s\n", definer());

    // Every size class and some large blocks, scalar and array forms; the
    // contents survive until the matching delete.
    std::vector<unsigned char *> blocks;
    for (size_t n = 0; n <= 70000; n = n < 64 ? n + 1 : n * 5 / 4) {
        unsigned char *p = (n % 2) ? static_cast<unsigned char *>(::operator new(n)) : new unsigned char[n];
        CHECK(p != nullptr && aligned(p, 16));
        std::memset(p, int(n & 0xff), n);
        blocks.push_back(p);
    }
    size_t i = 0;
    for (size_t n = 0; n <= 70000; n = n < 64 ? n + 1 : n * 5 / 4, i++) {
        unsigned char *p = blocks[i];
        for (size_t k = 0; k < n; k += 97) CHECK(p[k] == (n & 0xff));
        if (n % 2)
            ::operator delete(p, n);  // sized
        else
            delete[] p;
    }
    int *zero1 = static_cast<int *>(::operator new(0)), *zero2 = static_cast<int *>(::operator new(0));
    CHECK(zero1 && zero2 && zero1 != zero2);
    ::operator delete(zero1);
    ::operator delete(zero2);

    // Over-aligned types and explicit alignments.
    Line *l = new Line[7];
    CHECK(aligned(l, 64));
    delete[] l;
    PageObj *po = new PageObj;
    CHECK(aligned(po, 4096));
    delete po;
    for (size_t a = 32; a <= (size_t(1) << 21); a *= 4) {
        void *p = ::operator new(a + 3, std::align_val_t(a));
        CHECK(aligned(p, a));
        std::memset(p, 1, a + 3);
        ::operator delete(p, a + 3, std::align_val_t(a));
        void *q = ::operator new[](a / 2, std::align_val_t(a), std::nothrow);
        CHECK(q && aligned(q, a));
        ::operator delete[](q, std::align_val_t(a), std::nothrow);
    }
    void *nt = ::operator new(100, std::nothrow);
    CHECK(nt != nullptr);
    ::operator delete(nt, std::nothrow);

    // Out of memory: no handler -> std::bad_alloc, in every throwing form.
    int thrown = 0;
    try {
        sink = ::operator new(HUGE_SIZE);
    } catch (const std::bad_alloc &) {
        thrown++;
    }
    try {
        sink = new char[HUGE_SIZE];
    } catch (const std::bad_alloc &) {
        thrown++;
    }
    try {
        sink = ::operator new(HUGE_SIZE, std::align_val_t(256));
    } catch (const std::bad_alloc &) {
        thrown++;
    }
    try {
        sink = new PageObj[HUGE_SIZE / 4096];
    } catch (const std::bad_alloc &) {
        thrown++;
    }
    CHECK(thrown == 4);
    std::printf("bad_alloc thrown %d of 4\n", thrown);

    // The nothrow forms return nullptr.
    CHECK(::operator new(HUGE_SIZE, std::nothrow) == nullptr);
    CHECK(::operator new[](HUGE_SIZE, std::nothrow) == nullptr);
    CHECK(::operator new(HUGE_SIZE, std::align_val_t(64), std::nothrow) == nullptr);
    CHECK(::operator new[](HUGE_SIZE, std::align_val_t(64), std::nothrow) == nullptr);

    // A new_handler is called before each retry until it gives up.
    std::set_new_handler(counting_handler);
    bool caught = false;
    try {
        sink = ::operator new(HUGE_SIZE);
    } catch (const std::bad_alloc &) {
        caught = true;
    }
    CHECK(caught && handler_calls == 3);
    std::printf("new_handler calls %d\n", handler_calls);

    // A handler that throws: the throwing form passes it on, the nothrow
    // form turns it into nullptr.
    handler_calls = 0;
    std::set_new_handler(throwing_handler);
    caught = false;
    try {
        sink = ::operator new[](HUGE_SIZE, std::align_val_t(128));
    } catch (const std::bad_alloc &) {
        caught = true;
    }
    CHECK(caught);
    CHECK(::operator new(HUGE_SIZE, std::nothrow) == nullptr);
    CHECK(handler_calls == 2);
    std::set_new_handler(nullptr);

    // Allocation works again after the failures.
    std::vector<int> v(100000, 7);
    CHECK(v[99999] == 7);

    // Threads: blocks made with new on one thread, deleted on another.
    std::atomic<long> sum{0};
    std::vector<std::vector<long *>> made(4);
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; t++)
        ts.emplace_back([&, t] {
            for (int k = 0; k < 20000; k++) made[t].push_back(new long(k));
        });
    for (auto &th : ts) th.join();
    ts.clear();
    for (int t = 0; t < 4; t++)
        ts.emplace_back([&, t] {
            long s = 0;
            for (long *p : made[(t + 1) % 4]) {
                s += *p;
                delete p;
            }
            sum += s;
        });
    for (auto &th : ts) th.join();
    CHECK(sum == 4L * (20000L * 19999 / 2));
    std::printf("cross-thread sum %ld\n", sum.load());

    std::printf("cxx_new: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
