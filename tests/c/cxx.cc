// A C++ program exercising iostream, string, containers, exceptions,
// shared_ptr and threads. Deterministic output (compared with the glibc run);
// exits non-zero if any computed value is wrong.
#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

static int failures = 0;

static void expect(bool ok, const std::string &what) {
    if (!ok) {
        std::cout << "FAIL " << what << std::endl;
        failures++;
    }
}

struct Node {
    std::string name;
    std::vector<std::shared_ptr<Node>> kids;
};

static std::shared_ptr<Node> tree(int depth, const std::string &prefix) {
    auto n = std::make_shared<Node>();
    n->name = prefix;
    if (depth > 0)
        for (int i = 0; i < 3; i++) n->kids.push_back(tree(depth - 1, prefix + "." + std::to_string(i)));
    return n;
}

static size_t count(const Node &n) {
    size_t c = 1;
    for (auto &k : n.kids) c += count(*k);
    return c;
}

static void thrower(int i) {
    if (i % 3 == 0) throw std::runtime_error("runtime error number " + std::to_string(i));
    if (i % 3 == 1) throw std::out_of_range(std::string(200, 'x'));
    throw i;
}

int main() {
    // Strings and streams.
    std::string s;
    for (int i = 0; i < 10000; i++) s += std::to_string(i % 10);
    expect(s.size() == 10000, "string size");
    std::ostringstream os;
    for (int i = 0; i < 1000; i++) os << i << ',';
    std::istringstream is(os.str());
    long sum = 0;
    std::string tok;
    while (std::getline(is, tok, ',')) sum += std::stol(tok);
    expect(sum == 499500, "stream sum");
    std::cout << "stream sum " << sum << "\n";

    // Containers.
    std::map<std::string, std::vector<int>> m;
    std::unordered_map<int, std::string> um;
    for (int i = 0; i < 20000; i++) {
        m["key" + std::to_string(i % 500)].push_back(i);
        um[i] = std::string(i % 64, 'a' + i % 26);
    }
    size_t total = 0;
    for (auto &kv : m) total += kv.second.size();
    expect(m.size() == 500 && total == 20000, "map");
    for (int i = 0; i < 20000; i += 2) um.erase(i);
    expect(um.size() == 10000, "unordered_map");
    std::vector<std::string> words;
    for (int i = 0; i < 5000; i++) words.push_back(std::to_string((i * 7919) % 5000));
    std::sort(words.begin(), words.end());
    words.erase(std::unique(words.begin(), words.end()), words.end());
    expect(words.size() == 5000, "sort unique");
    std::cout << "containers " << m.size() << " " << um.size() << " " << words.front() << " "
              << words.back() << "\n";

    // shared_ptr trees, built and dropped.
    for (int r = 0; r < 5; r++) {
        auto t = tree(6, "root");
        expect(count(*t) == 1093, "tree size");
    }
    std::cout << "tree " << count(*tree(6, "r")) << "\n";

    // Exceptions (the unwinder allocates its exception objects).
    int caught = 0;
    for (int i = 0; i < 3000; i++) {
        try {
            thrower(i);
        } catch (const std::runtime_error &e) {
            caught += std::string(e.what()).size() > 10;
        } catch (const std::out_of_range &e) {
            caught += std::string(e.what()).size() == 200;
        } catch (int v) {
            caught += v == i;
        }
    }
    expect(caught == 3000, "exceptions");
    std::cout << "exceptions " << caught << "\n";

    // Threads building strings and vectors concurrently.
    std::vector<std::thread> ts;
    std::vector<size_t> lens(4);
    for (int t = 0; t < 4; t++)
        ts.emplace_back([t, &lens] {
            std::vector<std::string> v;
            for (int i = 0; i < 20000; i++) v.emplace_back(std::string(i % 100, char('a' + t)));
            size_t l = 0;
            for (auto &x : v) l += x.size();
            lens[t] = l;
        });
    for (auto &t : ts) t.join();
    for (auto l : lens) expect(l == 990000, "thread strings");
    std::cout << "threads " << std::accumulate(lens.begin(), lens.end(), size_t(0)) << "\n";

    if (failures) return 1;
    std::cout << "cxx: ok" << std::endl;
    return 0;
}
