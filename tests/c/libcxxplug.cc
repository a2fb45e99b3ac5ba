// A C++ library for a C program to dlopen with RTLD_LOCAL (as Python loads
// extension modules): its `new` binds to libhz.so's operators while its C++
// runtime stays out of the global scope. Out of memory, the throwing forms
// must still throw std::bad_alloc and the nothrow forms return nullptr.
#include <cstddef>
#include <new>
#include <vector>

static void *volatile sink;

// Returns how many of four out-of-memory checks behaved, after making and
// freeing a few containers.
extern "C" int plug_run(void) {
    const size_t huge = size_t(1) << 50;
    int ok = 0;
    std::vector<std::vector<int>> vs;
    for (int i = 0; i < 1000; i++) vs.emplace_back(i % 50, i);
    ok += vs[999].size() == 49 && vs[999][0] == 999 ? 0 : -100;
    try {
        sink = new char[huge];
    } catch (const std::bad_alloc &) {
        ok++;
    }
    try {
        sink = ::operator new(huge, std::align_val_t(64));
    } catch (const std::bad_alloc &) {
        ok++;
    }
    ok += ::operator new(huge, std::nothrow) == nullptr;
    ok += ::operator new[](huge, std::align_val_t(64), std::nothrow) == nullptr;
    return ok;
}
