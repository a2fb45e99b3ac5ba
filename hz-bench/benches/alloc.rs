//! Microbenchmarks, hz against the mimalloc crate and System (glibc):
//! malloc/free pairs per size class, realloc growth, aligned allocation,
//! cross-thread free throughput. `cargo bench -p hz-bench` (HTML report in
//! $CARGO_TARGET_DIR/criterion/report/index.html); a subset:
//! `cargo bench -p hz-bench -- malloc_free/hz`.

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use hz_bench::spsc::{Entry, Spsc};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::{Duration, Instant};

const PAIR_SIZES: [usize; 13] = [
    16,
    32,
    48,
    64,
    96,
    128,
    256,
    512,
    1024,
    4096,
    32768,
    262_144,
    4 << 20,
];

fn quick(g: &mut BenchmarkGroup<'_, WallTime>) {
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
}

/// One allocation and its free, per size.
fn pairs<A: GlobalAlloc>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, a: &A) {
    for size in PAIR_SIZES {
        let l = Layout::from_size_align(size, 8).expect("layout");
        g.bench_with_input(BenchmarkId::new(name, size), &l, |b, &l| {
            b.iter(|| {
                // SAFETY: non-zero size; the block is freed with its layout.
                unsafe {
                    let p = a.alloc(l);
                    black_box(p).write(1);
                    a.dealloc(p, l);
                }
            })
        });
    }
}

/// 64 live blocks of one size allocated, then freed in reverse (a bin's worth).
fn batches<A: GlobalAlloc>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, a: &A) {
    for size in [16usize, 128, 1024] {
        let l = Layout::from_size_align(size, 8).expect("layout");
        g.throughput(Throughput::Elements(64));
        g.bench_with_input(BenchmarkId::new(name, size), &l, |b, &l| {
            let mut v = [std::ptr::null_mut::<u8>(); 64];
            b.iter(|| {
                for slot in v.iter_mut() {
                    // SAFETY: non-zero size.
                    *slot = unsafe { a.alloc(l) };
                }
                for &p in black_box(&v).iter().rev() {
                    // SAFETY: allocated just above with l.
                    unsafe { a.dealloc(p, l) };
                }
            })
        });
    }
}

/// A buffer grown from 16 B to `max` by doubling with realloc, then freed.
fn realloc_growth<A: GlobalAlloc>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, a: &A) {
    for max in [4096usize, 1 << 20] {
        g.bench_with_input(BenchmarkId::new(name, max), &max, |b, &max| {
            b.iter(|| {
                let mut size = 16;
                // SAFETY: every call passes the block's current layout.
                unsafe {
                    let mut p = a.alloc(Layout::from_size_align_unchecked(size, 8));
                    while size < max {
                        p = a.realloc(p, Layout::from_size_align_unchecked(size, 8), size * 2);
                        size *= 2;
                        p.add(size - 1).write(1);
                    }
                    a.dealloc(black_box(p), Layout::from_size_align_unchecked(size, 8));
                }
            })
        });
    }
}

/// Over-aligned allocation and free.
fn aligned<A: GlobalAlloc>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, a: &A) {
    for (size, align) in [(64usize, 64usize), (256, 1024), (4096, 4096), (100, 65536)] {
        let l = Layout::from_size_align(size, align).expect("layout");
        g.bench_with_input(
            BenchmarkId::new(name, format!("{size}@{align}")),
            &l,
            |b, &l| {
                b.iter(|| {
                    // SAFETY: non-zero size; freed with its layout.
                    unsafe {
                        let p = a.alloc(l);
                        assert_eq!(p as usize % l.align(), 0);
                        a.dealloc(black_box(p), l);
                    }
                })
            },
        );
    }
}

/// One thread allocates 64-byte blocks, another frees them (through an SPSC
/// ring that never calls the allocator): remote-free throughput.
fn cross_thread<A: GlobalAlloc + Sync>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, a: &A) {
    const BATCH: u64 = 1000;
    let l = Layout::from_size_align(64, 8).expect("layout");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function(BenchmarkId::new(name, 64), |b| {
        b.iter_custom(|iters| {
            let ring = Spsc::new(4096);
            let n = iters * BATCH;
            let start = Instant::now();
            std::thread::scope(|s| {
                let ring = &ring;
                s.spawn(move || {
                    let mut freed = 0;
                    while freed < n {
                        // SAFETY: each entry is a live block of `a` with layout l.
                        freed += ring.drain(|e| unsafe { a.dealloc(e.ptr, l) }) as u64;
                        std::hint::spin_loop();
                    }
                });
                for _ in 0..n {
                    // SAFETY: non-zero size.
                    let ptr = unsafe { a.alloc(l) };
                    let e = Entry { ptr, size: 64 };
                    while !ring.push(e) {
                        std::thread::yield_now();
                    }
                }
            });
            start.elapsed()
        })
    });
}

macro_rules! each_allocator {
    ($c:expr, $group:literal, $f:ident) => {{
        let mut g = $c.benchmark_group($group);
        quick(&mut g);
        $f(&mut g, "hz", &hz_core::HzAlloc);
        $f(&mut g, "mimalloc", &mimalloc::MiMalloc);
        $f(&mut g, "system", &System);
        g.finish();
    }};
}

fn benches(c: &mut Criterion) {
    each_allocator!(c, "malloc_free", pairs);
    each_allocator!(c, "batch64", batches);
    each_allocator!(c, "realloc_growth", realloc_growth);
    each_allocator!(c, "aligned", aligned);
    each_allocator!(c, "cross_thread_free", cross_thread);
}

criterion_group!(all, benches);
criterion_main!(all);
