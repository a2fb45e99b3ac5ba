//! Turning raw repetitions into medians, ratios, tables (markdown, CSV) and JSON.

use crate::matrix::{Counts, FALLBACK_LIMIT_PCT};
use std::fmt::Write as _;

/// Which cell and allocator a measurement belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// "in-process" or "LD_PRELOAD".
    pub mode: &'static str,
    /// Lane name (matrix) or workload name.
    pub group: String,
    /// Human description of the group, e.g. "16..32768 B".
    pub desc: String,
    pub threads: usize,
    /// R (matrix only).
    pub remote: Option<u32>,
    pub alloc: String,
}

impl Cell {
    /// Same cell (any allocator).
    fn same_cell(&self, o: &Cell) -> bool {
        self.mode == o.mode
            && self.group == o.group
            && self.threads == o.threads
            && self.remote == o.remote
    }
}

/// One repetition of one allocator in one cell.
#[derive(Clone, Debug)]
pub struct Sample {
    pub cell: Cell,
    pub rep: usize,
    pub ns: u64,
    pub ops: u64,
    pub maxrss_kib: u64,
    /// Ring accounting (matrix only).
    pub counts: Option<Counts>,
    /// Cross-core round trip measured just before this run (matrix only;
    /// see `machine::cross_core_round_trip_ns`).
    pub xcore_ns: Option<f64>,
}

/// Medians over the repetitions of one allocator in one cell.
#[derive(Clone, Debug)]
pub struct Summary {
    pub cell: Cell,
    pub reps: usize,
    pub ns: f64,
    pub mops: f64,
    pub remote_pct: Option<f64>,
    /// Worst repetition's fallback %.
    pub fallback_pct: Option<f64>,
    pub maxrss_kib: f64,
    /// Median of the program's backlog ([`Counts::backlog`]; matrix only).
    pub backlog: Option<f64>,
    /// hz's median time divided by this allocator's (None without hz).
    pub hz_ratio: Option<f64>,
}

// Samples and summaries read as their cell (`s.threads`, `s.alloc`).
impl std::ops::Deref for Sample {
    type Target = Cell;
    fn deref(&self) -> &Cell {
        &self.cell
    }
}
impl std::ops::Deref for Summary {
    type Target = Cell;
    fn deref(&self) -> &Cell {
        &self.cell
    }
}

impl Summary {
    /// False when a ring overflowed too often for an honest comparison.
    pub fn comparable(&self) -> bool {
        self.fallback_pct.is_none_or(|f| f <= FALLBACK_LIMIT_PCT)
    }
}

/// Median of a non-empty list (mean of the middle two for even lengths).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Groups samples by (mode, group, T, R, allocator), in first-seen order.
pub fn summarize(samples: &[Sample]) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    for s in samples {
        if out.iter().any(|o| o.cell == s.cell) {
            continue;
        }
        let reps: Vec<&Sample> = samples.iter().filter(|o| o.cell == s.cell).collect();
        let counts: Vec<Counts> = reps.iter().filter_map(|r| r.counts).collect();
        out.push(Summary {
            cell: s.cell.clone(),
            reps: reps.len(),
            ns: median(reps.iter().map(|r| r.ns as f64).collect()),
            mops: median(
                reps.iter()
                    .map(|r| r.ops as f64 / r.ns.max(1) as f64 * 1e3)
                    .collect(),
            ),
            remote_pct: (!counts.is_empty())
                .then(|| median(counts.iter().map(|c| c.remote_pct()).collect())),
            fallback_pct: counts.iter().map(|c| c.fallback_pct()).reduce(f64::max),
            maxrss_kib: median(reps.iter().map(|r| r.maxrss_kib as f64).collect()),
            backlog: (!counts.is_empty())
                .then(|| median(counts.iter().map(|c| c.backlog as f64).collect())),
            hz_ratio: None,
        });
    }
    let hz: Vec<Summary> = out.iter().filter(|s| s.alloc == "hz").cloned().collect();
    for s in &mut out {
        s.hz_ratio = hz
            .iter()
            .find(|h| h.same_cell(&s.cell))
            .map(|h| h.ns / s.ns);
    }
    out
}

/// hz against its fastest rival in one cell, paired: see [`paired`].
#[derive(Clone, Debug)]
pub struct Paired {
    pub cell: Cell,
    /// The rival with the highest paired ratio (the one hz is furthest
    /// behind, or least ahead of).
    pub best: String,
    /// Median over the pairs of hz's time ÷ that rival's time.
    pub ratio: f64,
    /// Pairs used, at placements "near" and "far".
    pub near: usize,
    pub far: usize,
}

/// "far" when a sample's cross-core round trip was `machine::FAR_NS` or
/// more; samples without a probe count as "near".
fn is_far(s: &Sample) -> bool {
    s.xcore_ns.is_some_and(|v| v >= crate::machine::FAR_NS)
}

/// `num`'s time ÷ `den`'s time in the cell of `at`, paired: for every
/// repetition in which both ran at the same placement (see [`paired`]),
/// the ratio of the two runs; their median, and the pairs used at the
/// "near" and "far" placements. None when no repetition pairs up.
fn pair_ratio(samples: &[Sample], at: &Cell, num: &str, den: &str) -> Option<(f64, usize, usize)> {
    let (mut ratios, mut near, mut far) = (Vec::new(), 0, 0);
    for a in samples
        .iter()
        .filter(|s| s.alloc == num && s.cell.same_cell(at))
    {
        let b = samples
            .iter()
            .find(|s| s.alloc == den && s.rep == a.rep && s.cell.same_cell(at));
        if let Some(b) = b.filter(|b| is_far(b) == is_far(a)) {
            ratios.push(a.ns as f64 / b.ns.max(1) as f64);
            if is_far(a) {
                far += 1;
            } else {
                near += 1;
            }
        }
    }
    (!ratios.is_empty()).then(|| (median(ratios), near, far))
}

/// hz against each rival, repetition by repetition: for every repetition in
/// which hz and the rival ran at the same placement (both probes "near" or
/// both "far"), the ratio of hz's time to the rival's; the median of those
/// ratios per rival, and the rival with the highest. Repetitions are
/// interleaved, so the two runs of a pair are seconds apart: the pairing
/// takes out the drift of the machine (M1 in docs/PERFORMANCE.md) that
/// independent medians keep. Cells where no rival has a pair are left out.
pub fn paired(samples: &[Sample]) -> Vec<Paired> {
    let mut out: Vec<Paired> = Vec::new();
    for h in samples.iter().filter(|s| s.alloc == "hz") {
        if out.iter().any(|p| p.cell.same_cell(&h.cell)) {
            continue;
        }
        let mut rivals: Vec<&str> = Vec::new();
        for s in samples {
            if s.alloc != "hz" && s.cell.same_cell(&h.cell) && !rivals.contains(&s.alloc.as_str()) {
                rivals.push(&s.alloc);
            }
        }
        let mut best: Option<Paired> = None;
        for r in rivals {
            let Some((ratio, near, far)) = pair_ratio(samples, &h.cell, "hz", r) else {
                continue;
            };
            if best.as_ref().is_none_or(|b| ratio > b.ratio) {
                best = Some(Paired {
                    cell: h.cell.clone(),
                    best: r.to_string(),
                    ratio,
                    near,
                    far,
                });
            }
        }
        out.extend(best);
    }
    out
}

/// The [`paired`] table (matrix only), with a count of cells at or under
/// 0.90 and at or under 1.00.
pub fn paired_markdown(p: &[Paired]) -> String {
    if p.is_empty() {
        return String::new();
    }
    let mut md = format!(
        "\n### hz time ÷ fastest rival, paired by repetition at the same placement\n\n\
         Each ratio is hz's time over the rival's in the same repetition (runs seconds apart), \
         kept only when both runs saw the same cross-core placement (near < {:.0} ns ≤ far); \
         the median of those ratios, for the rival hz is furthest behind.\n\n\
         | mode | lane | T | R% | hz ÷ fastest (paired) | rival | pairs near / far |\n\
         |:--|:--|--:|--:|--:|:--|--:|\n",
        crate::machine::FAR_NS
    );
    for x in p {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | **{:.2}** | {} | {} / {} |",
            x.cell.mode,
            x.cell.group,
            x.cell.threads,
            x.cell.remote.unwrap_or(0),
            x.ratio,
            x.best,
            x.near,
            x.far
        );
    }
    for mode in ["in-process", "LD_PRELOAD"] {
        let m: Vec<&Paired> = p.iter().filter(|x| x.cell.mode == mode).collect();
        if m.is_empty() {
            continue;
        }
        let _ = writeln!(
            md,
            "\n- {mode}: {} of {} cells at or under 0.90, {} at or under 1.00 (paired)",
            m.iter().filter(|x| x.ratio <= 0.90).count(),
            m.len(),
            m.iter().filter(|x| x.ratio <= 1.00).count()
        );
    }
    md
}

/// hz against the fastest rival in one cell.
#[derive(Clone, Debug)]
pub struct Versus {
    pub mode: &'static str,
    pub group: String,
    pub threads: usize,
    pub remote: Option<u32>,
    pub hz_mops: f64,
    pub best: String,
    pub best_mops: f64,
    /// hz time ÷ best rival time: above 1 hz is slower.
    pub ratio: f64,
    /// (rival, hz time ÷ rival time) for every rival.
    pub each: Vec<(String, f64)>,
    pub comparable: bool,
}

/// One [`Versus`] per cell that has hz and at least one rival.
pub fn versus(sums: &[Summary]) -> Vec<Versus> {
    let mut out = Vec::new();
    for hz in sums.iter().filter(|s| s.alloc == "hz") {
        let rivals: Vec<&Summary> = sums
            .iter()
            .filter(|s| s.same_cell(hz) && s.alloc != "hz")
            .collect();
        let Some(best) = rivals.iter().min_by(|a, b| a.ns.total_cmp(&b.ns)) else {
            continue;
        };
        out.push(Versus {
            mode: hz.mode,
            group: hz.group.clone(),
            threads: hz.threads,
            remote: hz.remote,
            hz_mops: hz.mops,
            best: best.alloc.clone(),
            best_mops: best.mops,
            ratio: hz.ns / best.ns,
            each: rivals
                .iter()
                .map(|r| (r.alloc.clone(), hz.ns / r.ns))
                .collect(),
            comparable: hz.comparable() && best.comparable(),
        });
    }
    out
}

/// Three significant digits (throughputs span 0.001 to 100 Mops/s).
pub fn sig(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "—".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.5}")
    }
}

fn mib(kib: f64) -> String {
    format!("{:.1}", kib / 1024.0)
}

/// A count of blocks, in thousands from 10 000 on ("—" when not measured).
fn blocks(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v >= 10_000.0 => format!("{:.0}k", v / 1000.0),
        Some(v) => format!("{v:.0}"),
    }
}

fn notes(s: &Summary, cores: usize) -> String {
    let mut n = Vec::new();
    if !s.comparable() {
        n.push(format!(
            "**not comparable** (fallback > {FALLBACK_LIMIT_PCT}%)"
        ));
    }
    if s.threads > cores {
        n.push("oversubscribed".to_string());
    }
    n.join(", ")
}

fn ratio_cell(s: &Summary, sums: &[Summary]) -> String {
    if s.alloc == "hz" {
        let v = versus(sums);
        match v.iter().find(|v| {
            (v.mode, &v.group, v.threads, v.remote) == (s.mode, &s.group, s.threads, s.remote)
        }) {
            Some(v) => format!("vs best: **{:.2}** ({})", v.ratio, v.best),
            None => "—".into(),
        }
    } else {
        s.hz_ratio
            .map(|r| format!("{r:.2}"))
            .unwrap_or_else(|| "—".into())
    }
}

/// What a report's rows are: matrix cells (the ring), workloads, programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ring,
    Workloads,
    Programs,
}

impl Kind {
    /// The table title's word and the first column's name (not the ring's).
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Kind::Programs => ("programs", "program"),
            _ => ("workloads", "workload"),
        }
    }
}

/// Markdown tables, one per (mode, group) for the matrix ([`Kind::Ring`]),
/// or one per mode for workloads and programs.
pub fn markdown(sums: &[Summary], cores: usize, kind: Kind) -> String {
    let ring = kind == Kind::Ring;
    let (title, col) = kind.labels();
    let mut md = String::new();
    let mut tables: Vec<(&'static str, String, String)> = Vec::new();
    for s in sums {
        let t = if ring {
            (s.mode, s.group.clone(), s.desc.clone())
        } else {
            (s.mode, String::new(), String::new())
        };
        if !tables.contains(&t) {
            tables.push(t);
        }
    }
    for (mode, group, desc) in tables {
        if ring {
            let _ = writeln!(md, "\n### {mode} · lane {group} ({desc})\n");
            md.push_str("| T | R% | allocator | Mops/s | time ms | hz time ÷ this | remote % | fallback % | peak RSS MiB | backlog | note |\n");
            md.push_str("|--:|--:|:--|--:|--:|:--|--:|--:|--:|--:|:--|\n");
        } else {
            let _ = writeln!(md, "\n### {title} · {mode}\n");
            let _ = writeln!(
                md,
                "| {col} | T | allocator | Mops/s | time ms | hz time ÷ this | peak RSS MiB | note |"
            );
            md.push_str("|:--|--:|:--|--:|--:|:--|--:|:--|\n");
        }
        let mut last: Option<(String, usize, Option<u32>)> = None;
        for s in sums
            .iter()
            .filter(|s| s.mode == mode && (!ring || s.group == group))
        {
            let cell = (s.group.clone(), s.threads, s.remote);
            let first = last.as_ref() != Some(&cell);
            last = Some(cell);
            let show = |v: String| if first { v } else { String::new() };
            let ratio = ratio_cell(s, sums);
            let name = if s.alloc == "hz" {
                "**hz**".to_string()
            } else {
                s.alloc.clone()
            };
            if ring {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {:.1} | {} | {:.1} | {:.3} | {} | {} | {} |",
                    show(s.threads.to_string()),
                    show(s.remote.unwrap_or(0).to_string()),
                    name,
                    sig(s.mops),
                    s.ns / 1e6,
                    ratio,
                    s.remote_pct.unwrap_or(0.0),
                    s.fallback_pct.unwrap_or(0.0),
                    mib(s.maxrss_kib),
                    blocks(s.backlog),
                    notes(s, cores)
                );
            } else {
                let mops = sig(s.mops);
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {:.1} | {} | {} | {} |",
                    show(s.group.clone()),
                    show(s.threads.to_string()),
                    name,
                    mops,
                    s.ns / 1e6,
                    ratio,
                    mib(s.maxrss_kib),
                    notes(s, cores)
                );
            }
        }
    }
    if !ring {
        md.push('\n');
        let mut seen: Vec<&str> = Vec::new();
        for x in sums {
            if !seen.contains(&x.group.as_str()) {
                seen.push(&x.group);
                let _ = writeln!(md, "- **{}**: {}", x.group, x.desc);
            }
        }
    }
    md
}

/// The headline table: per cell, hz against the fastest rival and each rival.
pub fn versus_markdown(sums: &[Summary], kind: Kind) -> String {
    let ring = kind == Kind::Ring;
    let v = versus(sums);
    if v.is_empty() {
        return String::new();
    }
    let mut md = String::from("\n### hz time ÷ rival time (below 1.00: hz faster)\n\n");
    let rivals: Vec<String> = {
        let mut r: Vec<String> = Vec::new();
        for x in &v {
            for (n, _) in &x.each {
                if !r.contains(n) {
                    r.push(n.clone());
                }
            }
        }
        r
    };
    let _ = write!(
        md,
        "| mode | {} | T |{} hz Mops/s | best rival | hz ÷ best |",
        if ring { "lane" } else { kind.labels().1 },
        if ring { " R% |" } else { "" }
    );
    for r in &rivals {
        let _ = write!(md, " ÷ {r} |");
    }
    md.push('\n');
    md.push_str(if ring {
        "|:--|:--|--:|--:|--:|:--|--:|"
    } else {
        "|:--|:--|--:|--:|:--|--:|"
    });
    for _ in &rivals {
        md.push_str("--:|");
    }
    md.push('\n');
    for x in &v {
        let r = if ring {
            format!(" {} |", x.remote.unwrap_or(0))
        } else {
            String::new()
        };
        let flag = if x.comparable {
            ""
        } else {
            " (not comparable)"
        };
        let _ = write!(
            md,
            "| {} | {} | {} |{} {} | {} | **{:.2}**{} |",
            x.mode,
            x.group,
            x.threads,
            r,
            sig(x.hz_mops),
            x.best,
            x.ratio,
            flag
        );
        for r in &rivals {
            match x.each.iter().find(|(n, _)| n == r) {
                Some((_, q)) => {
                    let _ = write!(md, " {q:.2} |");
                }
                None => md.push_str(" — |"),
            }
        }
        md.push('\n');
    }
    md
}

/// Peak RSS of hz against `reference` (mimalloc) in every cell that has
/// both: per mode, how many cells are at or under `limit` times the
/// reference's, then the cells over it. Matrix cells also show both runs'
/// backlog ([`Counts::backlog`]): blocks queued in the rings are live, so a
/// run that queues more holds more memory whatever the allocator.
pub fn rss_markdown(sums: &[Summary], reference: &str, limit: f64) -> String {
    let cells: Vec<(&Summary, &Summary)> = sums
        .iter()
        .filter(|s| s.alloc == "hz")
        .filter_map(|h| {
            sums.iter()
                .find(|r| r.alloc == reference && r.same_cell(h))
                .map(|r| (h, r))
        })
        .collect();
    if cells.is_empty() {
        return String::new();
    }
    let over = |(h, r): &(&Summary, &Summary)| h.maxrss_kib > limit * r.maxrss_kib;
    let mut md = format!("\n### peak RSS: hz ÷ {reference} (target: at most {limit:.2})\n\n");
    let mut modes: Vec<&str> = Vec::new();
    for (h, _) in &cells {
        if !modes.contains(&h.mode) {
            modes.push(h.mode);
        }
    }
    for m in modes {
        let n = cells.iter().filter(|(h, _)| h.mode == m).count();
        let ok = cells.iter().filter(|c| c.0.mode == m && !over(c)).count();
        let _ = writeln!(md, "- {m}: {ok} of {n} cells at or under {limit:.2}");
    }
    let bad: Vec<_> = cells.iter().filter(|c| over(c)).collect();
    if bad.is_empty() {
        return md;
    }
    let _ = writeln!(
        md,
        "\n| mode | lane or workload | T | R% | hz MiB | {reference} MiB | hz ÷ {reference} | hz backlog | {reference} backlog |"
    );
    md.push_str("|:--|:--|--:|--:|--:|--:|--:|--:|--:|\n");
    for (h, r) in bad {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | **{:.2}** | {} | {} |",
            h.mode,
            h.group,
            h.threads,
            h.remote
                .map(|r| r.to_string())
                .unwrap_or_else(|| "—".into()),
            mib(h.maxrss_kib),
            mib(r.maxrss_kib),
            h.maxrss_kib / r.maxrss_kib,
            blocks(h.backlog),
            blocks(r.backlog)
        );
    }
    md
}

/// One cell of `hz-bench secure`: each hardened build against its default.
#[derive(Clone, Debug)]
pub struct SecureRow {
    pub mode: &'static str,
    pub group: String,
    pub threads: usize,
    pub remote: Option<u32>,
    /// (default, hardened) summaries of hz and of mimalloc, where measured.
    pub hz: (Option<Summary>, Option<Summary>),
    pub mi: (Option<Summary>, Option<Summary>),
    /// hz-secure ÷ hz paired by repetition at the same placement
    /// ([`pair_ratio`]); set by [`add_paired`].
    pub hz_paired: Option<f64>,
}

/// Fills each row's [`SecureRow::hz_paired`] from the raw repetitions.
pub fn add_paired(rows: &mut [SecureRow], samples: &[Sample]) {
    for r in rows {
        let at = Cell {
            mode: r.mode,
            group: r.group.clone(),
            desc: String::new(),
            threads: r.threads,
            remote: r.remote,
            alloc: String::new(),
        };
        r.hz_paired = pair_ratio(samples, &at, SECURE_PAIRS[0].1, SECURE_PAIRS[0].0).map(|p| p.0);
    }
}

/// Hardened time ÷ default time (above 1: the hardened build is slower).
fn slowdown(pair: &(Option<Summary>, Option<Summary>)) -> Option<f64> {
    match pair {
        (Some(d), Some(s)) => Some(s.ns / d.ns),
        _ => None,
    }
}

impl SecureRow {
    /// hz-secure time ÷ hz time.
    pub fn hz_ratio(&self) -> Option<f64> {
        slowdown(&self.hz)
    }
    /// mimalloc-secure time ÷ mimalloc time.
    pub fn mi_ratio(&self) -> Option<f64> {
        slowdown(&self.mi)
    }
    /// hz-secure ÷ hz, paired (see [`add_paired`]).
    pub fn hz_paired(&self) -> Option<f64> {
        self.hz_paired
    }
}

/// Allocator names of the hardened builds and their defaults.
pub const SECURE_PAIRS: [(&str, &str); 2] = [("hz", "hz-secure"), ("mimalloc", "mimalloc-secure")];

/// One [`SecureRow`] per cell, in first-seen order, grouped by mode.
pub fn secure_rows(sums: &[Summary]) -> Vec<SecureRow> {
    let mut modes: Vec<&str> = Vec::new();
    for s in sums {
        if !modes.contains(&s.mode) {
            modes.push(s.mode);
        }
    }
    let mut rows = secure_rows_unsorted(sums);
    rows.sort_by_key(|r| modes.iter().position(|m| *m == r.mode));
    rows
}

fn secure_rows_unsorted(sums: &[Summary]) -> Vec<SecureRow> {
    let mut out: Vec<SecureRow> = Vec::new();
    for s in sums {
        if out.iter().any(|r| {
            (r.mode, &r.group, r.threads, r.remote) == (s.mode, &s.group, s.threads, s.remote)
        }) {
            continue;
        }
        let find = |name: &str| {
            sums.iter()
                .find(|o| o.same_cell(s) && o.alloc == name)
                .cloned()
        };
        let [(hz, hzs), (mi, mis)] = SECURE_PAIRS;
        out.push(SecureRow {
            mode: s.mode,
            group: s.group.clone(),
            threads: s.threads,
            remote: s.remote,
            hz: (find(hz), find(hzs)),
            mi: (find(mi), find(mis)),
            hz_paired: None,
        });
    }
    out
}

/// Geometric mean of positive values (NaN when empty).
pub fn geomean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

/// Over the rows of `mode` (all when None) that have the ratio `pick`: its
/// geometric mean, its worst (largest) value, that row's index, how many rows.
pub fn ratio_stats(
    rows: &[SecureRow],
    pick: fn(&SecureRow) -> Option<f64>,
    mode: Option<&str>,
) -> Option<(f64, f64, usize, usize)> {
    let v: Vec<(f64, usize)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| mode.is_none_or(|m| r.mode == m))
        .filter_map(|(i, r)| pick(r).map(|x| (x, i)))
        .collect();
    let &(worst, i) = v.iter().max_by(|a, b| a.0.total_cmp(&b.0))?;
    let g = geomean(&v.iter().map(|x| x.0).collect::<Vec<_>>());
    Some((g, worst, i, v.len()))
}

/// The `hz-bench secure` table and its summary lines: per cell the
/// throughput of each build and hardened time ÷ default time, then the
/// geometric mean and worst cell of hz-secure ÷ hz (all cells and per mode),
/// and the cells over `limit` (e.g. 1.10).
pub fn secure_markdown(rows: &[SecureRow], limit: f64) -> String {
    let mut md = String::from(
        "\n### hardened ÷ default time (above 1.00: the hardened build is slower)\n\n",
    );
    md.push_str("| mode | lane | T | R% | hz Mops/s | hz-secure Mops/s | **hz-secure ÷ hz** | paired | mimalloc Mops/s | mimalloc-secure Mops/s | mimalloc-secure ÷ mimalloc | peak RSS MiB hz → hz-secure |\n");
    md.push_str("|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    let mops = |s: &Option<Summary>| s.as_ref().map(|s| sig(s.mops)).unwrap_or("—".into());
    let ratio = |r: Option<f64>, bold: bool| match r {
        Some(r) if bold => format!("**{r:.2}**"),
        Some(r) => format!("{r:.2}"),
        None => "—".into(),
    };
    for r in rows {
        let rss = match &r.hz {
            (Some(d), Some(s)) => format!("{} → {}", mib(d.maxrss_kib), mib(s.maxrss_kib)),
            _ => "—".into(),
        };
        let flag = [&r.hz.0, &r.hz.1, &r.mi.0, &r.mi.1]
            .iter()
            .any(|s| s.as_ref().is_some_and(|s| !s.comparable()));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {}{} | {} | {} | {} | {} | {} |",
            r.mode,
            r.group,
            r.threads,
            r.remote.unwrap_or(0),
            mops(&r.hz.0),
            mops(&r.hz.1),
            ratio(r.hz_ratio(), true),
            if flag { " (not comparable)" } else { "" },
            ratio(r.hz_paired(), false),
            mops(&r.mi.0),
            mops(&r.mi.1),
            ratio(r.mi_ratio(), false),
            rss
        );
    }
    let cell = |r: &SecureRow| {
        format!(
            "{} {} T={} R={}",
            r.mode,
            r.group,
            r.threads,
            r.remote.unwrap_or(0)
        )
    };
    md.push('\n');
    let mut summary = |label: &str, pick: fn(&SecureRow) -> Option<f64>, mode: Option<&str>| {
        if let Some((g, worst, i, n)) = ratio_stats(rows, pick, mode) {
            let _ = writeln!(
                md,
                "- {label}{}: geometric mean **{g:.3}**, worst **{worst:.2}** ({}), {n} cells",
                mode.map(|m| format!(" ({m})")).unwrap_or_default(),
                cell(&rows[i]),
            );
        }
    };
    summary("hz-secure ÷ hz", SecureRow::hz_ratio, None);
    summary("hz-secure ÷ hz", SecureRow::hz_ratio, Some("in-process"));
    summary("hz-secure ÷ hz", SecureRow::hz_ratio, Some("LD_PRELOAD"));
    summary(
        "hz-secure ÷ hz, paired by repetition at the same placement",
        SecureRow::hz_paired,
        None,
    );
    summary("mimalloc-secure ÷ mimalloc", SecureRow::mi_ratio, None);
    let over: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.hz_ratio()
                .filter(|&x| x > limit)
                .map(|x| format!("{} ({x:.2})", cell(r)))
        })
        .collect();
    let pct = ((limit - 1.0) * 100.0).round();
    if over.is_empty() {
        let _ = writeln!(md, "- every cell of hz-secure is within {pct}% of hz");
    } else {
        let _ = writeln!(
            md,
            "- hz-secure more than {pct}% slower than hz in {} of {} cells: {}",
            over.len(),
            rows.iter().filter(|r| r.hz_ratio().is_some()).count(),
            over.join(", ")
        );
    }
    md
}

/// A CSV field (RFC 4180): quoted, with quotes doubled, when it holds a
/// comma, a quote or a line break (workload descriptions have commas).
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

/// CSV, one row per summary.
pub fn csv(sums: &[Summary]) -> String {
    let mut s = String::from(
        "mode,group,desc,threads,remote_pct_asked,allocator,reps,median_ns,median_mops,remote_pct,fallback_pct,peak_rss_kib,backlog,hz_time_ratio,comparable\n",
    );
    for x in sums {
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{:.0},{:.4},{},{},{:.0},{},{},{}",
            csv_field(x.mode),
            csv_field(&x.group),
            csv_field(&x.desc),
            x.threads,
            x.remote.map(|r| r.to_string()).unwrap_or_default(),
            csv_field(&x.alloc),
            x.reps,
            x.ns,
            x.mops,
            opt(x.remote_pct),
            opt(x.fallback_pct),
            x.maxrss_kib,
            x.backlog.map(|b| format!("{b:.0}")).unwrap_or_default(),
            opt(x.hz_ratio),
            x.comparable()
        );
    }
    s
}

/// A JSON string literal.
pub fn js(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn jf(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

fn jo(v: Option<f64>) -> String {
    v.map(jf).unwrap_or_else(|| "null".into())
}

/// JSON with the run's header fields, every summary and every raw sample.
pub fn json(header: &[(String, String)], sums: &[Summary], samples: &[Sample]) -> String {
    let mut s = String::from("{\n");
    for (k, v) in header {
        let _ = writeln!(s, "  {}: {},", js(k), js(v));
    }
    s.push_str("  \"summaries\": [\n");
    for (i, x) in sums.iter().enumerate() {
        let _ = write!(
            s,
            "    {{\"mode\": {}, \"group\": {}, \"desc\": {}, \"threads\": {}, \"remote_pct_asked\": {}, \"allocator\": {}, \"reps\": {}, \"median_ns\": {}, \"median_mops\": {}, \"remote_pct\": {}, \"fallback_pct\": {}, \"peak_rss_kib\": {}, \"backlog\": {}, \"hz_time_ratio\": {}, \"comparable\": {}}}",
            js(x.mode), js(&x.group), js(&x.desc), x.threads,
            x.remote.map(|r| r.to_string()).unwrap_or_else(|| "null".into()),
            js(&x.alloc), x.reps, jf(x.ns), jf(x.mops), jo(x.remote_pct), jo(x.fallback_pct),
            jf(x.maxrss_kib), jo(x.backlog), jo(x.hz_ratio), x.comparable()
        );
        s.push_str(if i + 1 < sums.len() { ",\n" } else { "\n" });
    }
    s.push_str("  ],\n  \"samples\": [\n");
    for (i, x) in samples.iter().enumerate() {
        let c = x.counts.map(|c| {
            format!(
                ", \"allocs\": {}, \"local_frees\": {}, \"remote_sent\": {}, \"remote_recv\": {}, \"fallbacks\": {}, \"cleanup_frees\": {}, \"backlog\": {}",
                c.allocs, c.local_frees, c.remote_sent, c.remote_recv, c.fallbacks, c.cleanup_frees, c.backlog
            )
        });
        let _ = write!(
            s,
            "    {{\"mode\": {}, \"group\": {}, \"threads\": {}, \"remote_pct_asked\": {}, \"allocator\": {}, \"rep\": {}, \"ns\": {}, \"ops\": {}, \"peak_rss_kib\": {}{}}}",
            js(x.mode), js(&x.group), x.threads,
            x.remote.map(|r| r.to_string()).unwrap_or_else(|| "null".into()),
            js(&x.alloc), x.rep, x.ns, x.ops, x.maxrss_kib, c.unwrap_or_default()
        );
        if let Some(v) = x.xcore_ns {
            s.truncate(s.len() - 1);
            let _ = write!(s, ", \"cross_core_round_trip_ns\": {v:.0}}}");
        }
        s.push_str(if i + 1 < samples.len() { ",\n" } else { "\n" });
    }
    s.push_str("  ]\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(alloc: &str, rep: usize, ns: u64) -> Sample {
        Sample {
            cell: Cell {
                mode: "in-process",
                group: "main".into(),
                desc: "16..32768 B".into(),
                threads: 4,
                remote: Some(90),
                alloc: alloc.into(),
            },
            rep,
            ns,
            ops: 1000,
            maxrss_kib: 2048,
            counts: Some(Counts {
                allocs: 500,
                local_frees: 50,
                remote_sent: 220,
                remote_recv: 220,
                fallbacks: 1,
                cleanup_frees: 0,
                backlog: 40,
            }),
            xcore_ns: None,
        }
    }

    #[test]
    fn paired_ratios_use_same_placement_repetitions_only() {
        let at = |alloc: &str, rep: usize, ns: u64, probe: f64| Sample {
            xcore_ns: Some(probe),
            ..sample(alloc, rep, ns)
        };
        let s = vec![
            // rep 0: all near; rep 1: hz far, tcmalloc near (no pair);
            // rep 2: all far.
            at("hz", 0, 100, 50.0),
            at("tcmalloc", 0, 80, 60.0),
            at("jemalloc", 0, 200, 55.0),
            at("hz", 1, 300, 400.0),
            at("tcmalloc", 1, 100, 70.0),
            at("jemalloc", 1, 600, 410.0),
            at("hz", 2, 250, 390.0),
            at("tcmalloc", 2, 250, 420.0),
            at("jemalloc", 2, 500, 380.0),
        ];
        let p = paired(&s);
        assert_eq!(p.len(), 1);
        // tcmalloc: pairs from reps 0 and 2 (1.25, 1.0) -> median 1.125;
        // jemalloc: reps 0, 1, 2 all pair (0.5 each).
        assert_eq!(p[0].best, "tcmalloc");
        assert!((p[0].ratio - 1.125).abs() < 1e-12, "{}", p[0].ratio);
        assert_eq!((p[0].near, p[0].far), (1, 1));
        let md = paired_markdown(&p);
        assert!(md.contains("| **1.12** | tcmalloc | 1 / 1 |"), "{md}");
        assert!(
            md.contains("0 of 1 cells at or under 0.90, 0 at or under 1.00"),
            "{md}"
        );
    }

    #[test]
    fn rss_against_mimalloc_counts_cells_and_lists_those_over() {
        let with = |alloc: &str, rep: usize, threads: usize, kib: u64, backlog: u64| {
            let mut x = sample(alloc, rep, 100);
            x.cell.threads = threads;
            x.maxrss_kib = kib;
            x.counts.as_mut().unwrap().backlog = backlog;
            x
        };
        let s = vec![
            // T=4: hz 1.10x (at the limit), T=16: hz 1.50x with 3x the backlog.
            with("hz", 0, 4, 1100, 10),
            with("mimalloc", 0, 4, 1000, 10),
            with("hz", 0, 16, 3072, 30_000),
            with("hz", 1, 16, 3072, 36_000),
            with("mimalloc", 0, 16, 2048, 11_000),
            with("mimalloc", 1, 16, 2048, 9_000),
        ];
        let sums = summarize(&s);
        assert_eq!(sums[2].backlog, Some(33_000.0));
        let md = rss_markdown(&sums, "mimalloc", 1.10);
        assert!(
            md.contains("- in-process: 1 of 2 cells at or under 1.10"),
            "{md}"
        );
        assert!(
            md.contains("| in-process | main | 16 | 90 | 3.0 | 2.0 | **1.50** | 33k | 10k |"),
            "{md}"
        );
        assert!(!md.contains("| main | 4 |"), "{md}");
        assert_eq!(rss_markdown(&sums, "jemalloc", 1.10), "");
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let s = vec![
            sample("hz", 0, 300),
            sample("mimalloc", 0, 100),
            sample("system", 0, 150),
            sample("hz", 1, 200),
            sample("mimalloc", 1, 100),
            sample("system", 1, 150),
            sample("hz", 2, 250),
            sample("mimalloc", 2, 999),
            sample("system", 2, 150),
        ];
        let sums = summarize(&s);
        assert_eq!(sums.len(), 3);
        assert_eq!(sums[0].ns, 250.0);
        assert_eq!(sums[1].hz_ratio, Some(2.5));
        let v = versus(&sums);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].best, "mimalloc");
        assert!((v[0].ratio - 2.5).abs() < 1e-9);
        // 1 fallback of 221 attempted remote frees: 0.45% > 0.1%.
        assert!(!sums[0].comparable());
        let md = markdown(&sums, 2, Kind::Ring);
        assert!(
            md.contains("not comparable") && md.contains("oversubscribed"),
            "{md}"
        );
        assert!(csv(&sums).lines().count() == 4);
        assert!(json(&[("k".into(), "v".into())], &sums, &s).contains("\"summaries\""));
    }

    #[test]
    fn csv_quotes_fields_with_commas_and_quotes() {
        let mut s = vec![sample("hz", 0, 300), sample("mimalloc", 0, 100)];
        for x in &mut s {
            x.cell.desc = "threads replace blocks, then \"hand\" them on".into();
        }
        let out = csv(&summarize(&s));
        let header = out.lines().next().unwrap().split(',').count();
        for line in out.lines().skip(1) {
            // Split on the commas outside quotes: as many fields as the header.
            let (mut fields, mut quoted) = (1, false);
            for ch in line.chars() {
                match ch {
                    '"' => quoted = !quoted,
                    ',' if !quoted => fields += 1,
                    _ => {}
                }
            }
            assert_eq!(fields, header, "{line}");
            assert!(
                line.contains(r#","threads replace blocks, then ""hand"" them on","#),
                "{line}"
            );
        }
    }

    #[test]
    fn secure_ratios() {
        let mut s = vec![
            sample("hz", 0, 100),
            sample("hz-secure", 0, 105),
            sample("mimalloc", 0, 200),
            sample("mimalloc-secure", 0, 300),
        ];
        let mut other = s.clone();
        for x in &mut other {
            x.cell.threads = 16;
            x.cell.mode = "LD_PRELOAD";
        }
        other[1].ns = 120; // hz-secure 20% slower in this cell
        other.pop(); // no mimalloc-secure under LD_PRELOAD
        s.extend(other);
        let mut rows = secure_rows(&summarize(&s));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].hz_paired(), None);
        add_paired(&mut rows, &s);
        // One repetition per build, no probes (both "near"): one pair each.
        assert!((rows[0].hz_paired().unwrap() - 1.05).abs() < 1e-9);
        assert!((rows[1].hz_paired().unwrap() - 1.2).abs() < 1e-9);
        assert!((rows[0].hz_ratio().unwrap() - 1.05).abs() < 1e-9);
        assert!((rows[0].mi_ratio().unwrap() - 1.5).abs() < 1e-9);
        assert_eq!(rows[1].mi_ratio(), None);
        let (g, worst, i, n) = ratio_stats(&rows, SecureRow::hz_ratio, None).unwrap();
        assert!((g - (1.05f64 * 1.2).sqrt()).abs() < 1e-9);
        assert!((worst - 1.2).abs() < 1e-9);
        assert_eq!((i, n), (1, 2));
        let md = secure_markdown(&rows, 1.10);
        assert!(
            md.contains("**1.05**") && md.contains("1.50") && md.contains("1 of 2 cells"),
            "{md}"
        );
        assert!(md.contains("LD_PRELOAD main T=16 R=90 (1.20)"), "{md}");
    }
}
