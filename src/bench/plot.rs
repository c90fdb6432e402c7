//! The chart of a quality report: hit rate and wrong-hit rate against the threshold, cosine
//! only (solid) and verified (dashed); all queries on top, the semantic tier below.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::metrics::Row;
use super::report::{Report, View};

const WIDTH: u32 = 900;
const LEGEND_HEIGHT: u32 = 36;
const PANEL_HEIGHT: u32 = 420;
const HIT: RGBColor = RGBColor(31, 119, 180);
const WRONG: RGBColor = RGBColor(214, 39, 40);

/// The SVG document.
pub fn svg(report: &Report) -> Result<String, String> {
    let mut out = String::new();
    // The semantic-tier panel only when some queries were exact repeats (else it is the same).
    let panels = if report.exact_queries > 0 { 2 } else { 1 };
    {
        let size = (WIDTH, LEGEND_HEIGHT + panels * PANEL_HEIGHT);
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (legend_area, rest) = root.split_vertically(LEGEND_HEIGHT);
        legend(&legend_area)?;
        let (top, bottom) = rest.split_vertically(PANEL_HEIGHT);
        let title = |what: &str| format!("{}: {what}", report.name);
        panel(&top, &title("all queries"), &report.all)?;
        if panels == 2 {
            panel(
                &bottom,
                &title("semantic tier (no verbatim copy cached)"),
                &report.semantic_tier,
            )?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    view: &View,
) -> Result<(), String> {
    let fail = |e: DrawingAreaErrorKind<_>| e.to_string();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.695f32..0.995f32, 0f32..1f32)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("similarity threshold")
        .y_desc("share of queries")
        .x_labels(16)
        .y_labels(11)
        .x_label_formatter(&|x| format!("{x:.2}"))
        .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
        .draw()
        .map_err(fail)?;

    for (_, color, dashed, rows, value) in curves(&view.cosine, &view.verified) {
        let style = color.stroke_width(2);
        let data: Vec<(f32, f32)> = rows
            .iter()
            .map(|row| (row.threshold, value(row) as f32))
            .collect();
        if dashed {
            chart.draw_series(DashedLineSeries::new(data, 6, 4, style))
        } else {
            chart.draw_series(LineSeries::new(data, style))
        }
        .map_err(fail)?;
    }
    Ok(())
}

type Curve<'v> = (&'static str, RGBColor, bool, &'v [Row], fn(&Row) -> f64);

/// The four curves: what they show, colour, dashed, rows, value.
fn curves<'v>(cosine: &'v [Row], verified: &'v [Row]) -> [Curve<'v>; 4] {
    let hit_rate: fn(&Row) -> f64 = |row| row.hit_rate;
    let wrong_rate: fn(&Row) -> f64 = |row| row.wrong_rate;
    [
        ("hit rate, cosine only", HIT, false, cosine, hit_rate),
        ("hit rate, verified", HIT, true, verified, hit_rate),
        (
            "wrong-hit rate, cosine only",
            WRONG,
            false,
            cosine,
            wrong_rate,
        ),
        (
            "wrong-hit rate, verified",
            WRONG,
            true,
            verified,
            wrong_rate,
        ),
    ]
}

/// One row above both panels, so no curve is hidden behind it.
fn legend(area: &DrawingArea<SVGBackend, Shift>) -> Result<(), String> {
    let fail = |e: DrawingAreaErrorKind<_>| e.to_string();
    let y = LEGEND_HEIGHT as i32 / 2;
    for (i, (label, color, dashed, _, _)) in curves(&[], &[]).into_iter().enumerate() {
        let x = 24 + i as i32 * 220;
        let style = color.stroke_width(2);
        let segments: &[(i32, i32)] = if dashed {
            &[(0, 8), (12, 20), (24, 30)]
        } else {
            &[(0, 30)]
        };
        for &(from, to) in segments {
            area.draw(&PathElement::new(vec![(x + from, y), (x + to, y)], style))
                .map_err(fail)?;
        }
        area.draw(&Text::new(label, (x + 36, y - 7), ("sans-serif", 14)))
            .map_err(fail)?;
    }
    Ok(())
}
