// The C++ workload of hz-bench, run under LD_PRELOAD: cxx-collections, the
// twin of the in-process rust-collections (hz-bench/src/workloads.rs) in
// standard C++ containers, so that `new`/`delete` through each allocator's
// C++ operators are measured as a C++ program makes them.
//
// usage: bench_cxx NAME THREADS SCALE      (NAME: cxx-collections)
// prints: HZB_WORK ns=.. ops=.. maxrss_kib=..
//        bench_cxx pairs N
// the single-thread probe of scripts/instructions.sh: as c/pairs.c, with
// `operator new` and `operator delete` (sized, as a C++14 `delete` of a
// known type calls it) in place of malloc and free.
// environment: HZB_PIN=1 pins each worker thread to the next allowed CPU,
// round robin, in the order the threads start.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "hzb_sys.h"

// Where results go, so that nothing built is optimised away.
static volatile size_t sink;

// Per thread, three rounds of: a hash map of n string keys to vectors of
// 0..15 integers, an ordered map of every other entry's key, a string built
// from a quarter of it; all dropped at the end of the round.
static void collections(size_t id, size_t n) {
    hzb_pin_next();
    for (int round = 0; round < 3; round++) {
        std::unordered_map<std::string, std::vector<uint64_t>> h;
        for (size_t i = 0; i < n; i++) {
            std::vector<uint64_t> v(i % 16);
            std::iota(v.begin(), v.end(), uint64_t(0));
            h.emplace("key-" + std::to_string(id) + "-" + std::to_string(i), std::move(v));
        }
        std::map<uint64_t, std::string> b;
        size_t i = 0;
        for (const auto &kv : h) {
            if (i % 2 == 0) b.emplace(uint64_t(i) ^ kv.second.size(), kv.first);
            i++;
        }
        std::string text;
        size_t taken = 0;
        for (const auto &kv : b) {
            if (taken++ == n / 4) break;
            text += kv.second;
            text += std::to_string(kv.first);
        }
        sink = sink + h.size() + b.size() + text.size() + size_t(round);
    }
}

// As c/pairs.c: one live block of each size 16..1024 kept, 100 000 warm-up
// pairs, then n pairs, sizes cycling through 16..1024 by 16, each written once.
static void pairs(uint64_t n) {
    for (uint64_t i = 0; i < n; i++) {
        size_t s = 16 + size_t(i & 63) * 16;
        char *p = static_cast<char *>(::operator new(s));
        *static_cast<volatile char *>(p) = 1;
        sink = reinterpret_cast<size_t>(p);
        ::operator delete(p, s);
    }
}

static int run_pairs(uint64_t n) {
    void *keep[64];
    for (int i = 0; i < 64; i++) keep[i] = ::operator new(16 + size_t(i) * 16);
    pairs(100000);
    pairs(n);
    for (int i = 0; i < 64; i++) ::operator delete(keep[i]);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && std::strcmp(argv[1], "pairs") == 0) return run_pairs(std::strtoull(argv[2], nullptr, 10));
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s NAME THREADS SCALE\n", argv[0]);
        return 2;
    }
    size_t t = std::strtoull(argv[2], nullptr, 10);
    if (t < 1) t = 1;
    double scale = std::strtod(argv[3], nullptr);
    if (std::strcmp(argv[1], "cxx-collections") != 0) {
        std::fprintf(stderr, "unknown workload %s\n", argv[1]);
        return 2;
    }
    size_t n = size_t(20000.0 * scale);
    if (n < 1) n = 1;
    auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (size_t id = 0; id < t; id++) threads.emplace_back(collections, id, n);
    for (auto &th : threads) th.join();
    long long ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
    std::printf("HZB_WORK ns=%lld ops=0 maxrss_kib=%ld\n", ns, hzb_peak_rss_kib());
    return 0;
}
