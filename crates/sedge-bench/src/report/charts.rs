//! Line charts, as SVG and as PNG. Text is laid out (and, in PNGs, drawn)
//! with a small font embedded in the binary, so charts come out the same on
//! a machine without any font installed.

use std::ops::Range;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

pub use plotters::chart::SeriesLabelPosition;

const SIZE: (u32, u32) = (820, 500);

/// DejaVu Sans cut down to the characters labels use (see
/// `assets/LICENSE-DejaVu.txt`).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");

/// Registers the embedded font under the family the charts ask for.
fn font() -> Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err("the embedded chart font does not load".into())
    }
}

/// Ten colours told apart easily, also in print (Tableau 10).
const COLOURS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

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
    /// Where the legend sits, away from where the lines crowd.
    pub legend: SeriesLabelPosition,
}

/// Axis numbers without trailing zeros: "10", "2.5", "0.01".
fn tick(v: &f64) -> String {
    let text = if v.abs() >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// The chart as an SVG document.
pub fn svg(spec: &Spec<'_>, lines: &[Line]) -> Result<String, String> {
    font()?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(&root, spec, lines)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The chart as a PNG image.
pub fn png(spec: &Spec<'_>, lines: &[Line]) -> Result<Vec<u8>, String> {
    font()?;
    let (w, h) = SIZE;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        draw(&root, spec, lines)?;
        root.present().map_err(|e| e.to_string())?;
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Flat colours compress well even at the fastest setting.
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
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
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .draw()
        .map_err(err)?;
    for (i, line) in lines.iter().enumerate() {
        let (r, g, b) = COLOURS[i % COLOURS.len()];
        let color = RGBColor(r, g, b);
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
        .position(spec.legend.clone())
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
        let spec = Spec {
            title: "hello",
            x_desc: "users",
            y_desc: "mean latency (ms)",
            x_log: false,
            y_range: None,
            legend: SeriesLabelPosition::UpperLeft,
        };
        let text = svg(&spec, &lines).expect("draws");
        assert!(text.starts_with("<svg"), "{}", &text[..40.min(text.len())]);
        for needle in ["python · sedge", "node · sedge", "users", "mean latency (ms)", "<polyline"] {
            assert!(text.contains(needle), "missing {needle}");
        }
        let log = Spec { x_log: true, y_range: Some(0.0..1.0), ..spec };
        assert!(svg(&log, &lines).expect("draws").contains("<polyline"));
        let image = png(&log, &lines).expect("draws");
        assert!(image.starts_with(b"\x89PNG"), "a PNG");
    }

    #[test]
    fn ticks_lose_trailing_zeros() {
        assert_eq!(tick(&10.0), "10");
        assert_eq!(tick(&2.5), "2.5");
        assert_eq!(tick(&0.01), "0.01");
        assert_eq!(tick(&1234.56), "1235");
    }

    #[test]
    fn empty_data_still_draws() {
        let spec = Spec {
            title: "none",
            x_desc: "x",
            y_desc: "y",
            x_log: true,
            y_range: None,
            legend: SeriesLabelPosition::LowerRight,
        };
        assert!(svg(&spec, &[]).expect("draws").contains("<svg"));
    }
}
