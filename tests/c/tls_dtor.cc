// Allocation and free inside thread teardown: pthread-key destructors
// (which re-arm their key, so glibc runs them for several rounds, after
// the allocator's own per-thread teardown) and C++ thread_local destructors
// (registered through __cxa_thread_atexit_impl). Threads come in waves;
// a destructor also frees a block another thread allocated.
// Usage: `tls_dtor [waves] [threads]`; prints "tls_dtor: ok".
#include <pthread.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "check.h"

static pthread_key_t keys[4];
static std::atomic<long> dtor_runs{0};
static std::atomic<long> tl_dtor_runs{0};
static std::atomic<void *> handoff{nullptr};

struct Payload {
    size_t n;
    int rounds;
    unsigned char *bytes;
};

static Payload *payload(size_t n, int rounds) {
    Payload *p = static_cast<Payload *>(malloc(sizeof(Payload)));
    CHECK(p);
    p->n = n;
    p->rounds = rounds;
    p->bytes = static_cast<unsigned char *>(malloc(n));
    CHECK(p->bytes);
    memset(p->bytes, 0x5c, n);
    return p;
}

static void key_dtor(void *v) {
    Payload *p = static_cast<Payload *>(v);
    for (size_t i = 0; i < p->n; i++) CHECK(p->bytes[i] == 0x5c);
    // Allocate and free freely while the thread is being torn down.
    std::string s(p->n % 300 + 1, 'k');
    void *tmp = calloc(p->n, 2);
    CHECK(tmp);
    free(tmp);
    free(handoff.exchange(malloc(p->n)));
    int rounds = p->rounds;
    size_t n = p->n;
    free(p->bytes);
    free(p);
    dtor_runs++;
    // Re-arm: glibc calls the destructor again in its next round.
    for (auto k : keys)
        if (rounds > 0 && pthread_getspecific(k) == nullptr) {
            CHECK(pthread_setspecific(k, payload(n * 2 + 1, rounds - 1)) == 0);
            break;
        }
}

struct Heavy {
    std::vector<std::string> v;
    std::map<int, std::string> m;
    Heavy() {
        for (int i = 0; i < 50; i++) v.emplace_back(std::string(i * 3, 'h'));
    }
    ~Heavy() {
        // Allocate inside the thread_local destructor.
        for (int i = 0; i < 100; i++) m[i] = std::string(i, 'd');
        std::vector<char> big(100000, 'b');
        CHECK(big[99999] == 'b' && v.size() == 50 && m.size() == 100);
        free(handoff.exchange(malloc(33)));
        tl_dtor_runs++;
    }
};

thread_local Heavy heavy;
thread_local std::string tl_string;

static void *worker(void *arg) {
    long id = static_cast<long>(reinterpret_cast<intptr_t>(arg));
    tl_string.assign(1000 + id % 100, 's');
    CHECK(heavy.v.size() == 50);
    for (int k = 0; k < 4; k++)
        CHECK(pthread_setspecific(keys[k], payload(static_cast<size_t>(id * 31 + k * 1000) % 20000 + 1, 2)) ==
              0);
    std::vector<void *> blocks;
    for (int i = 0; i < 2000; i++) blocks.push_back(malloc(static_cast<size_t>(i % 700) + 1));
    for (void *b : blocks) free(b);
    return nullptr;
}

int main(int argc, char **argv) {
    int waves = argc > 1 ? atoi(argv[1]) : 10;
    int threads = argc > 2 ? atoi(argv[2]) : 8;
    CHECK(waves > 0 && threads > 0 && threads <= 64);
    for (auto &k : keys) CHECK(pthread_key_create(&k, key_dtor) == 0);
    long id = 0;
    for (int w = 0; w < waves; w++) {
        pthread_t tid[64];
        for (int t = 0; t < threads; t++)
            CHECK(pthread_create(&tid[t], nullptr, worker, reinterpret_cast<void *>(id++)) == 0);
        for (int t = 0; t < threads; t++) CHECK(pthread_join(tid[t], nullptr) == 0);
    }
    free(handoff.exchange(nullptr));
    long expect = static_cast<long>(waves) * threads;
    // Each thread sets 4 keys; each payload re-arms a key twice (a key is
    // always free to take: the destructor's own), so 4 * 3 runs per thread.
    CHECK(dtor_runs.load() == expect * 12);
    CHECK(tl_dtor_runs.load() == expect);
    printf("tls_dtor: ok (%ld key destructor runs)\n", dtor_runs.load());
    return 0;
}
