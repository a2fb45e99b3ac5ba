//! `cargo run --release -p hz-bench -- matrix|workloads|all|programs|secure [options]`.
//! Hidden subcommands `__cell` and `__workload` run one measurement in a
//! child process (so that peak RSS is per cell) and print one result line;
//! `__names` prints this build's in-process allocator names.

use hz_bench::allocs::{InProc, Switch, FLOOR_NAME};
use hz_bench::matrix::{result_line, run_ring, self_maxrss_kib};
use hz_bench::runner::{parse_cell_args, work_line};
use hz_bench::suite::{self, Opts, USAGE};
use hz_bench::with_inproc;

// The process's own allocations go to System unless HZ_BENCH_GLOBAL names
// another allocator (set for workload children only).
#[global_allocator]
static GLOBAL: Switch = Switch;

fn die(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { die(USAGE) };
    let rest = &args[1..];
    match cmd.as_str() {
        "__cell" => {
            let which = rest
                .first()
                .and_then(|a| InProc::from_name(a))
                .unwrap_or_else(|| die("__cell ALLOC ARGS"));
            let cfg = parse_cell_args(&rest[1..]).unwrap_or_else(|| die("__cell: bad arguments"));
            let r = with_inproc!(which, |a| run_ring(a, &cfg));
            println!("{}", result_line(&r, self_maxrss_kib()));
        }
        "__workload" => {
            // ALLOC is an in-process allocator's name, or `floor` (the measuring
            // stick, hz_bench::floor; not a rival).
            let floor = rest.first().map(String::as_str) == Some(FLOOR_NAME);
            let (Some(which), Some(name), Some(t), Some(scale)) = (
                rest.first()
                    .and_then(|a| InProc::from_name(a))
                    .or(floor.then_some(InProc::System)),
                rest.get(1),
                rest.get(2).and_then(|t| t.parse().ok()),
                rest.get(3).and_then(|s| s.parse().ok()),
            ) else {
                die("__workload ALLOC NAME THREADS SCALE")
            };
            let r = if floor {
                hz_bench::workloads::run(&hz_bench::floor::Floor, name, t, scale)
            } else {
                with_inproc!(which, |a| hz_bench::workloads::run(a, name, t, scale))
            };
            match r {
                Some(r) => println!("{}", work_line(&r)),
                None => die(&format!("unknown workload {name}")),
            }
        }
        "matrix" | "workloads" | "all" => {
            let o = Opts::parse(rest).unwrap_or_else(|e| die(&e));
            if cmd != "workloads" {
                suite::matrix(&o);
            }
            if cmd != "matrix" {
                if cmd == "all" {
                    println!();
                }
                suite::workloads(&o);
            }
        }
        "programs" => {
            let o = Opts::parse(rest).unwrap_or_else(|e| die(&e));
            suite::programs(&o);
        }
        "secure" => {
            let o = Opts::parse(rest).unwrap_or_else(|e| die(&e));
            if let Err(e) = hz_bench::secure::run(&o) {
                die(&format!("secure: {e}"))
            }
        }
        // The in-process allocator names of this build (`secure` checks the
        // other binary with it).
        "__names" => {
            let names: Vec<&str> = InProc::ALL.iter().map(|a| a.name()).collect();
            println!("{}", names.join(" "));
        }
        "-h" | "--help" | "help" => println!("{USAGE}"),
        other => die(&format!("unknown command {other}\n\n{USAGE}")),
    }
}
