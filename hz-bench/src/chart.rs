//! The SVG chart (plotters): on top, hz time ÷ fastest rival per cell, one
//! panel per mode, bars coloured by lane (below the 1.0 line hz is faster);
//! below, throughput per lane, one line per allocator, log scale.

use crate::report::{versus, Summary};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

const LANE_COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];
const ALLOC_COLORS: [RGBColor; 7] = [
    RGBColor(214, 39, 40),  // hz: red
    RGBColor(31, 119, 180), // blue
    RGBColor(44, 160, 44),  // green
    RGBColor(255, 127, 14), // orange
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];

fn uniq<T: PartialEq + Clone>(it: impl Iterator<Item = T>) -> Vec<T> {
    let mut v = Vec::new();
    for x in it {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    v
}

fn cell_label(threads: usize, remote: Option<u32>) -> String {
    match remote {
        Some(r) => format!("{threads}/{r}"),
        None => format!("T{threads}"),
    }
}

/// Draws the chart for matrix summaries (`ring`) or workload summaries.
pub fn draw(path: &std::path::Path, sums: &[Summary], title: &str) -> Result<(), String> {
    if sums.iter().all(|s| s.remote.is_none()) {
        draw_workloads(path, sums, title).map_err(|e| e.to_string())
    } else {
        draw_inner(path, sums, title).map_err(|e| e.to_string())
    }
}

/// A segmented axis over `n` categories (plotters adds one past the end).
fn segments(
    n: usize,
) -> plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordi32> {
    (0..(n as i32 - 1).max(1)).into_segmented()
}

/// Workloads: one panel per mode, a group of bars per workload, one bar per
/// allocator, height = its time ÷ the fastest allocator's time on that
/// workload (1.0 = fastest; hz in red).
fn draw_workloads(
    path: &std::path::Path,
    sums: &[Summary],
    title: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let modes = uniq(sums.iter().map(|s| s.mode));
    let works = uniq(sums.iter().map(|s| s.group.clone()));
    let mut allocs = uniq(sums.iter().map(|s| s.alloc.clone()));
    allocs.sort_by_key(|n| n != "hz");
    let w = (140 * works.len() as u32).clamp(900, 1600);
    let root = SVGBackend::new(path, (w, 40 + 420 * modes.len().max(1) as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    for (area, mode) in root
        .split_evenly((modes.len().max(1), 1))
        .iter()
        .zip(&modes)
    {
        let g: Vec<&Summary> = sums.iter().filter(|s| s.mode == *mode).collect();
        let best = |wk: &str| {
            g.iter()
                .filter(|s| s.group == wk)
                .map(|s| s.ns)
                .fold(f64::MAX, f64::min)
        };
        let rel = |s: &Summary| s.ns / best(&s.group);
        let ymax = g.iter().map(|s| rel(s)).fold(1.0f64, f64::max).min(20.0) * 1.1;
        let n = works.len() as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{mode}: time ÷ fastest allocator per workload (lower is better)"),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(10)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..n, -0.12 * ymax..ymax)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("time ÷ fastest")
            .draw()?;
        let k = allocs.len().max(1) as f64;
        for (ai, alloc) in allocs.iter().enumerate() {
            let color = ALLOC_COLORS[ai % ALLOC_COLORS.len()];
            let bars: Vec<Rectangle<(f64, f64)>> = works
                .iter()
                .enumerate()
                .filter_map(|(wi, wk)| {
                    let s = g.iter().find(|s| &s.group == wk && &s.alloc == alloc)?;
                    let x0 = wi as f64 + 0.1 + ai as f64 * 0.8 / k;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + 0.8 / k, rel(s).min(ymax))],
                        color.filled(),
                    ))
                })
                .collect();
            if bars.is_empty() {
                continue;
            }
            chart
                .draw_series(bars)?
                .label(alloc.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart.draw_series(LineSeries::new(
            vec![(0.0, 1.0), (n, 1.0)],
            BLACK.stroke_width(1),
        ))?;
        let label = ("sans-serif", 14).into_font().color(&BLACK).pos(
            plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Center,
            ),
        );
        chart.draw_series(works.iter().enumerate().map(|(wi, wk)| {
            Text::new(wk.clone(), (wi as f64 + 0.5, -0.06 * ymax), label.clone())
        }))?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn draw_inner(
    path: &std::path::Path,
    sums: &[Summary],
    title: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let modes = uniq(sums.iter().map(|s| s.mode));
    let groups = uniq(sums.iter().map(|s| s.group.clone()));
    let allocs = {
        let mut a = uniq(sums.iter().map(|s| s.alloc.clone()));
        a.sort_by_key(|n| n != "hz");
        a
    };
    let ncols = modes.len().max(1);
    let (w, top_h, row_h) = (640 * ncols as u32, 440u32, 380u32);
    let h = 40 + top_h + row_h * groups.len() as u32;
    let root = SVGBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (top, rest) = root.split_vertically(top_h);

    // Panel 1: hz ÷ best rival.
    let vs = versus(sums);
    for (area, mode) in top.split_evenly((1, ncols)).iter().zip(&modes) {
        let v: Vec<_> = vs.iter().filter(|x| x.mode == *mode).collect();
        if v.is_empty() {
            continue;
        }
        let labels: Vec<String> = v.iter().map(|x| cell_label(x.threads, x.remote)).collect();
        let ymax = v.iter().map(|x| x.ratio).fold(1.0f64, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{mode}: hz time ÷ fastest rival (lower is better)"),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(segments(v.len()), 0f64..ymax)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(v.len().max(1))
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc(if v[0].remote.is_some() {
                "T/R%"
            } else {
                "workload, T"
            })
            .y_desc("hz ÷ best")
            .draw()?;
        let lanes = uniq(v.iter().map(|x| x.group.clone()));
        for (li, lane) in lanes.iter().enumerate() {
            let color = LANE_COLORS[li % LANE_COLORS.len()];
            chart
                .draw_series(v.iter().enumerate().filter(|(_, x)| &x.group == lane).map(
                    |(i, x)| {
                        let mut bar = Rectangle::new(
                            [
                                (SegmentValue::Exact(i as i32), 0.0),
                                (SegmentValue::Exact(i as i32 + 1), x.ratio),
                            ],
                            color.filled(),
                        );
                        bar.set_margin(0, 0, 3, 3);
                        bar
                    },
                ))?
                .label(lane.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart.draw_series(LineSeries::new(
            vec![(SegmentValue::Exact(0), 1.0), (SegmentValue::Last, 1.0)],
            BLACK.stroke_width(1),
        ))?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }

    // Panels 2..: throughput per lane (or workload), one line per allocator.
    for (row, group) in rest
        .split_evenly((groups.len().max(1), 1))
        .iter()
        .zip(&groups)
    {
        for (area, mode) in row.split_evenly((1, ncols)).iter().zip(&modes) {
            let g: Vec<&Summary> = sums
                .iter()
                .filter(|s| s.mode == *mode && &s.group == group)
                .collect();
            if g.is_empty() {
                continue;
            }
            let cells = uniq(g.iter().map(|s| (s.threads, s.remote)));
            let labels: Vec<String> = cells.iter().map(|c| cell_label(c.0, c.1)).collect();
            let vals = g.iter().map(|s| s.mops).filter(|m| *m > 0.0);
            let (lo, hi) = vals.fold((f64::MAX, 0f64), |(lo, hi), m| (lo.min(m), hi.max(m)));
            if hi <= 0.0 {
                continue;
            }
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!("{mode} · {group} ({}): Mops/s", g[0].desc),
                    ("sans-serif", 15),
                )
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(55)
                .build_cartesian_2d(segments(cells.len()), (lo / 1.5..hi * 1.5).log_scale())?;
            chart
                .configure_mesh()
                .x_labels(cells.len().max(1))
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) => {
                        labels.get(*i as usize).cloned().unwrap_or_default()
                    }
                    _ => String::new(),
                })
                .y_labels(6)
                .y_label_formatter(&|y| crate::report::sig(*y))
                .x_desc(if g[0].remote.is_some() { "T/R%" } else { "T" })
                .y_desc("Mops/s (log)")
                .draw()?;
            for (ai, alloc) in allocs.iter().enumerate() {
                let pts: Vec<(SegmentValue<i32>, f64)> = cells
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| {
                        g.iter()
                            .find(|s| {
                                &s.alloc == alloc && (s.threads, s.remote) == *c && s.mops > 0.0
                            })
                            .map(|s| (SegmentValue::CenterOf(i as i32), s.mops))
                    })
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                let color = ALLOC_COLORS[ai % ALLOC_COLORS.len()];
                let width = if alloc == "hz" { 3 } else { 2 };
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))?
                    .label(alloc.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(width))
                    });
                chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerLeft)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
