//! Line charts as SVG text (plotters' SVG backend: the viewer renders the
//! text, so no font is needed here).

use std::ops::Range;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

const SIZE: (u32, u32) = (820, 500);

/// One named line of (x, y) points.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// What a chart shows.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    /// Latency distributions span decades: a log axis keeps the body and
    /// the tail both readable.
    pub x_log: bool,
    /// Fixed y range (success rate, CDF); `None`: from zero to the data.
    pub y_range: Option<Range<f64>>,
}

/// The chart as an SVG document.
pub fn svg(spec: &Spec<'_>, lines: &[Line]) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(&root, spec, lines)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, spec: &Spec<'_>, lines: &[Line]) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let ys = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let y = spec.y_range.clone().unwrap_or_else(|| {
        let top = ys.fold(0.0f64, f64::max);
        0.0..if top > 0.0 { top * 1.1 } else { 1.0 }
    });
    if spec.x_log {
        let lo = xs.clone().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
        let hi = xs.fold(0.0f64, f64::max);
        let (lo, hi) = if lo.is_finite() && hi > lo { (lo * 0.9, hi * 1.1) } else { (0.1, 10.0) };
        plot(root, spec, lines, (lo..hi).log_scale(), y)
    } else {
        let hi = xs.fold(0.0f64, f64::max);
        plot(root, spec, lines, 0.0..if hi > 0.0 { hi * 1.05 } else { 1.0 }, y)
    }
}

fn plot<DB, X>(
    root: &DrawingArea<DB, Shift>,
    spec: &Spec<'_>,
    lines: &[Line],
    x: X,
    y: Range<f64>,
) -> Result<(), String>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let mut chart = ChartBuilder::on(root)
        .caption(spec.title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(spec.x_desc)
        .y_desc(spec.y_desc)
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    for (i, line) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(line.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        if line.points.len() <= 40 {
            chart.draw_series(line.points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_names_its_lines_and_axes() {
        let lines = vec![
            Line { name: "python · sedge".into(), points: vec![(1.0, 2.0), (5.0, 3.0), (10.0, 8.0)] },
            Line { name: "node · sedge".into(), points: vec![(1.0, 1.0), (5.0, 1.5), (10.0, 2.0)] },
        ];
        let spec = Spec { title: "hello", x_desc: "users", y_desc: "mean latency (ms)", x_log: false, y_range: None };
        let text = svg(&spec, &lines).expect("draws");
        assert!(text.starts_with("<svg"), "{}", &text[..40.min(text.len())]);
        for needle in ["python · sedge", "node · sedge", "users", "mean latency (ms)", "<polyline"] {
            assert!(text.contains(needle), "missing {needle}");
        }
        let log = svg(&Spec { x_log: true, y_range: Some(0.0..1.0), ..spec }, &lines).expect("draws");
        assert!(log.contains("<polyline"));
    }

    #[test]
    fn empty_data_still_draws() {
        let spec = Spec { title: "none", x_desc: "x", y_desc: "y", x_log: true, y_range: None };
        assert!(svg(&spec, &[]).expect("draws").contains("<svg"));
    }
}
