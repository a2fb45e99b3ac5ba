#!/usr/bin/env bash
# Footprint of a program whose threads pass blocks among themselves
# (docs/PERFORMANCE.md M40, E104): the repository's stress test
# (tests/c/stress.c: 16 threads in 5 waves, 40 000 operations each, blocks
# handed over through a shared exchange, 1% of them large) under
# LD_PRELOAD, hz against the rival allocators installed, interleaved,
# reporting the medians of wall time, peak RSS and minor faults.
#
#   scripts/stress-footprint.sh                     # 3 repetitions, 3 ranges
#   scripts/stress-footprint.sh --reps 5 --large 2097152:8388608
#
# --large MIN:MAX (bytes, repeatable) sets the range of the 1% of large
# blocks (default: 64 KiB-4 MiB, 2-4 MiB, 2-8 MiB); --threads, --waves and
# --ops change the program's shape. The stress test runs with
# STRESS_PORTABLE=1 and STRESS_NO_ALIGNED=1 (no over-aligned requests, and
# only the alignment C requires: Debian's mimalloc returns 8-aligned blocks
# under 16 bytes from realloc) so that every allocator runs the same work.
# T=16 on a 2-core machine is oversubscribed: the figures measure the
# footprint under contention, and times are for comparison in one run only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${CARGO_TARGET_DIR:-target}/stress-footprint"
mkdir -p "$out"
"${CARGO:-cargo}" build --release -q -p hz-ffi
gcc -O2 -pthread -Itests/c tests/c/stress.c -o "$out/stress"
exec python3 - "$out/stress" "${CARGO_TARGET_DIR:-target}/release/libhz.so" "$@" <<'EOF'
import os, statistics, subprocess, sys, time

exe, hz = sys.argv[1], os.path.abspath(sys.argv[2])
args = sys.argv[3:]
reps, threads, waves, ops, ranges = 3, 16, 5, 40000, []
i = 0
while i < len(args):
    a = args[i]
    v = args[i + 1] if i + 1 < len(args) else None
    if a == "--reps": reps = int(v)
    elif a == "--threads": threads = int(v)
    elif a == "--waves": waves = int(v)
    elif a == "--ops": ops = int(v)
    elif a == "--large":
        lo, hi = v.split(":"); ranges.append((int(lo), int(hi)))
    else:
        sys.exit(f"stress-footprint: unknown argument {a} (see the script's header)")
    i += 2
if not ranges:
    ranges = [(65536, 65536 + (4 << 20)), (2 << 20, 4 << 20), (2 << 20, 8 << 20)]

lib = "/usr/lib/x86_64-linux-gnu/"
rivals = [("mimalloc", lib + "libmimalloc.so.2"), ("jemalloc", lib + "libjemalloc.so.2"),
          ("tcmalloc", lib + "libtcmalloc_minimal.so.4")]
allocs = [("hz", hz)] + [(n, p) for n, p in rivals if os.path.exists(p)] + [("glibc", None)]

def run(preload, lo, hi):
    env = dict(os.environ, STRESS_PORTABLE="1", STRESS_NO_ALIGNED="1",
               STRESS_LARGE_MIN=str(lo), STRESS_LARGE_MAX=str(hi))
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = preload
    t0 = time.monotonic()
    p = subprocess.Popen([exe, str(threads), str(waves), str(ops)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, ru = os.wait4(p.pid, 0)
    secs = time.monotonic() - t0
    text = p.stdout.read().decode(errors="replace").strip()
    p.stdout.close()
    if status != 0 or text != "stress: ok":
        sys.exit(f"stress-footprint: the stress test failed under {preload or 'glibc'}: {text}")
    return secs, ru.ru_maxrss / 1024, ru.ru_minflt

mib = lambda n: f"{n // (1 << 20)} MiB" if n % (1 << 20) == 0 else f"{n // 1024} KiB"
print(f"# stress test footprint: {threads} threads, {waves} waves, {ops} operations each, "
      f"{reps} repetitions interleaved, medians")
print(f"\n- CPUs online: {os.cpu_count()} (T above that is oversubscribed)\n")
for lo, hi in ranges:
    res = {n: [] for n, _ in allocs}
    for _ in range(reps):
        for n, p in allocs:
            res[n].append(run(p, lo, hi))
    med = {n: tuple(statistics.median(x[k] for x in v) for k in range(3)) for n, v in res.items()}
    print(f"\n## 1% of blocks {mib(lo)} – {mib(hi)}\n")
    print("| allocator | time s | peak RSS MiB | minor faults | hz time ÷ this | hz RSS ÷ this |")
    print("|:--|--:|--:|--:|--:|--:|")
    h = med["hz"]
    for n, _ in allocs:
        s, r, f = med[n]
        print(f"| {'**hz**' if n == 'hz' else n} | {s:.2f} | {r:.0f} | {f:,.0f} | "
              f"{h[0] / s:.2f} | {h[1] / r:.2f} |")
EOF
