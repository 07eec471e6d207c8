//! Charts, as SVG and as PNG: lines (a figure against users, a latency
//! CDF), strips (every cold start of each scenario, one row each) and
//! stacks (where a scenario's cold starts went, phase by phase, one bar each). The
//! legend sits right of the plot, never over a line. Text is laid out (and,
//! in PNGs, drawn) with a small font embedded in the binary, so charts come
//! out the same on a machine without any font installed.

use std::ops::Range;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{AsRangedCoord, DefaultFormatting, KeyPointHint, Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axes::{self, tick};

/// DejaVu Sans cut down to the characters labels use (see
/// `assets/LICENSE-DejaVu.txt`).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");

const WIDTH: u32 = 960;
const LINE_HEIGHT: u32 = 500;
/// Strip charts grow with their rows.
const STRIP_ROW: u32 = 34;
const LEGEND_FONT: u32 = 13;
const LEGEND_ROW: i32 = 22;

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

/// One row of dots: every value of a named scenario, its median marked.
#[derive(Debug, Clone)]
pub struct Strip {
    pub name: String,
    pub values: Vec<f64>,
}

/// One bar of parts laid end to end: a scenario's median cold start by
/// phase. Every stack of a chart names the same parts in the same order.
#[derive(Debug, Clone)]
pub struct Stack {
    pub name: String,
    pub parts: Vec<(String, f64)>,
}

/// What a chart draws.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    Lines(&'a [Line]),
    Strips(&'a [Strip]),
    Stacks(&'a [Stack]),
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

fn size(data: Data<'_>) -> (u32, u32) {
    match data {
        Data::Lines(_) => (WIDTH, LINE_HEIGHT),
        Data::Strips(rows) => (WIDTH, (130 + STRIP_ROW * rows.len() as u32).max(260)),
        Data::Stacks(rows) => (WIDTH, (130 + STRIP_ROW * rows.len() as u32).max(260)),
    }
}

/// The chart as an SVG document.
pub fn svg(spec: &Spec<'_>, data: Data<'_>) -> Result<String, String> {
    font()?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size(data)).into_drawing_area();
        draw(&root, spec, data)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The chart as a PNG image.
pub fn png(spec: &Spec<'_>, data: Data<'_>) -> Result<Vec<u8>, String> {
    font()?;
    let (w, h) = size(data);
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw(&root, spec, data)?;
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

fn colour(i: usize) -> RGBColor {
    let (r, g, b) = COLOURS[i % COLOURS.len()];
    RGBColor(r, g, b)
}

/// How an entry of the legend is drawn.
enum Mark {
    Line(RGBColor),
    Dot(RGBColor),
    Tick,
    Block(RGBColor),
}

fn legend(data: Data<'_>) -> Vec<(String, Mark)> {
    match data {
        Data::Lines(lines) => lines.iter().enumerate().map(|(i, l)| (l.name.clone(), Mark::Line(colour(i)))).collect(),
        Data::Strips(_) => {
            vec![("one cold start".to_owned(), Mark::Dot(RGBColor(90, 90, 90))), ("median".to_owned(), Mark::Tick)]
        }
        Data::Stacks(rows) => rows
            .first()
            .map(|r| r.parts.iter().enumerate().map(|(i, (name, _))| (name.clone(), Mark::Block(colour(i)))).collect())
            .unwrap_or_default(),
    }
}

fn err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> String {
    e.to_string()
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, spec: &Spec<'_>, data: Data<'_>) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let body = root.titled(spec.title, ("sans-serif", 20)).map_err(err)?;
    let entries = legend(data);
    let style = TextStyle::from(("sans-serif", LEGEND_FONT).into_font());
    let widest = entries.iter().map(|(name, _)| body.estimate_text_size(name, &style).map_or(0, |(w, _)| w)).max();
    // Room for the mark, the gap and the text; none without entries.
    let legend_width = widest.map_or(0, |w| (w + 52).min(WIDTH / 3));
    let (plot_area, legend_area) = body.split_horizontally(body.dim_in_pixel().0.saturating_sub(legend_width));
    match data {
        Data::Lines(lines) => lines_chart(&plot_area, spec, lines)?,
        Data::Strips(rows) => strips_chart(&plot_area, spec, rows)?,
        Data::Stacks(rows) => stacks_chart(&plot_area, spec, rows)?,
    }
    draw_legend(&legend_area, &entries, &style)
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, Mark)],
    style: &TextStyle<'_>,
) -> Result<(), String> {
    let style = style.pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (name, mark)) in entries.iter().enumerate() {
        // Level with the plot's top, below its margin.
        let y = 24 + LEGEND_ROW * i as i32;
        match mark {
            Mark::Line(c) => area.draw(&PathElement::new(vec![(8, y), (30, y)], c.stroke_width(2))),
            Mark::Dot(c) => area.draw(&Circle::new((19, y), 4, c.stroke_width(2))),
            Mark::Tick => area.draw(&PathElement::new(vec![(19, y - 7), (19, y + 7)], BLACK.stroke_width(2))),
            Mark::Block(c) => area.draw(&Rectangle::new([(10, y - 6), (28, y + 6)], c.filled())),
        }
        .map_err(err)?;
        area.draw_text(name, &style, (38, y)).map_err(err)?;
    }
    Ok(())
}

/// A log range around the positive values, a little wider than they are.
fn log_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values.filter(|v| *v > 0.0).fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let range = if lo.is_finite() && hi > lo {
        lo * 0.9..hi * 1.1
    } else if lo.is_finite() {
        lo * 0.5..lo * 2.0
    } else {
        0.1..10.0
    };
    axes::snap_log(range)
}

fn lines_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    spec: &Spec<'_>,
    lines: &[Line],
) -> Result<(), String> {
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let ys = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let y = spec.y_range.clone().unwrap_or_else(|| {
        let top = ys.fold(0.0f64, f64::max);
        0.0..if top > 0.0 { top * 1.1 } else { 1.0 }
    });
    if spec.x_log {
        let range = log_range(xs);
        let ticks = axes::log_ticks(&range);
        let x = range.log_scale().with_key_points(ticks.labelled).with_light_points(ticks.light);
        plot_lines(area, spec, lines, x, y)
    } else {
        let hi = xs.fold(0.0f64, f64::max);
        plot_lines(area, spec, lines, 0.0..if hi > 0.0 { hi * 1.05 } else { 1.0 }, y)
    }
}

fn plot_lines<DB, X>(
    area: &DrawingArea<DB, Shift>,
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
    let mut chart = ChartBuilder::on(area)
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
        let color = colour(i);
        chart.draw_series(LineSeries::new(line.points.iter().copied(), color.stroke_width(2))).map_err(err)?;
        if line.points.len() <= 40 {
            chart.draw_series(line.points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
        }
    }
    Ok(())
}

/// One row per strip, first at the top, on a log axis: values of one
/// scenario can differ a hundredfold (a first import against a warm spare).
fn strips_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    spec: &Spec<'_>,
    rows: &[Strip],
) -> Result<(), String> {
    let range = log_range(rows.iter().flat_map(|r| r.values.iter().copied()));
    let ticks = axes::log_ticks(&range);
    let x = range.log_scale().with_key_points(ticks.labelled).with_light_points(ticks.light);
    let n = rows.len();
    let row_y = |i: usize| (n - i) as f64;
    let y = Rows(n.max(1));
    let label_style = TextStyle::from(("sans-serif", 12).into_font());
    let widest = rows.iter().map(|r| area.estimate_text_size(&r.name, &label_style).map_or(0, |(w, _)| w)).max();
    let label = |v: &f64| {
        let i = n as f64 - v.round();
        if i >= 0.0 && (i as usize) < n {
            rows[i as usize].name.clone()
        } else {
            String::new()
        }
    };
    let mut chart = ChartBuilder::on(area)
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(widest.unwrap_or(40) + 16)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(spec.x_desc)
        .light_line_style(RGBColor(235, 235, 235))
        .x_label_formatter(&tick)
        .y_label_formatter(&label)
        .draw()
        .map_err(err)?;
    for (i, row) in rows.iter().enumerate() {
        let (color, y) = (colour(i), row_y(i));
        chart.draw_series(row.values.iter().map(|&v| Circle::new((v, y), 4, color.stroke_width(2)))).map_err(err)?;
        if let Some(m) = median(&row.values) {
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(m, y - 0.3), (m, y + 0.3)], BLACK.stroke_width(2))))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// One bar per stack, first at the top, on a linear axis from zero: the
/// parts add up to the whole, which a log axis would hide.
fn stacks_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    spec: &Spec<'_>,
    rows: &[Stack],
) -> Result<(), String> {
    let top = rows.iter().map(|r| r.parts.iter().map(|p| p.1.max(0.0)).sum::<f64>()).fold(0.0f64, f64::max);
    let n = rows.len();
    let label_style = TextStyle::from(("sans-serif", 12).into_font());
    let widest = rows.iter().map(|r| area.estimate_text_size(&r.name, &label_style).map_or(0, |(w, _)| w)).max();
    let label = |v: &f64| {
        let i = n as f64 - v.round();
        if i >= 0.0 && (i as usize) < n {
            rows[i as usize].name.clone()
        } else {
            String::new()
        }
    };
    let mut chart = ChartBuilder::on(area)
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(widest.unwrap_or(40) + 16)
        .build_cartesian_2d(0.0..if top > 0.0 { top * 1.08 } else { 1.0 }, Rows(n.max(1)))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(spec.x_desc)
        .light_line_style(RGBColor(235, 235, 235))
        .x_label_formatter(&tick)
        .y_label_formatter(&label)
        .draw()
        .map_err(err)?;
    for (i, row) in rows.iter().enumerate() {
        let y = (n - i) as f64;
        let mut at = 0.0;
        for (k, (_, v)) in row.parts.iter().enumerate() {
            let end = at + v.max(0.0);
            chart
                .draw_series(std::iter::once(Rectangle::new([(at, y - 0.3), (end, y + 0.3)], colour(k).filled())))
                .map_err(err)?;
            at = end;
        }
    }
    Ok(())
}

/// The rows of a strip chart: a continuous axis from 0.5 to n + 0.5 (so a
/// mark can span part of a row) whose ticks are the rows' centres, 1 to n.
struct Rows(usize);

impl Ranged for Rows {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let share = (value - 0.5) / self.0 as f64;
        limit.0 + (share * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        (1..=self.0).map(|i| i as f64).collect()
    }

    fn range(&self) -> Range<f64> {
        0.5..self.0 as f64 + 0.5
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_lines() -> Vec<Line> {
        vec![
            Line { name: "python · sedge".into(), points: vec![(1.0, 2.0), (5.0, 3.0), (10.0, 8.0)] },
            Line { name: "node · sedge".into(), points: vec![(1.0, 1.0), (5.0, 1.5), (10.0, 2.0)] },
        ]
    }

    #[test]
    fn a_chart_names_its_lines_and_axes() {
        let lines = two_lines();
        let spec = Spec { title: "hello", x_desc: "users", y_desc: "mean latency (ms)", x_log: false, y_range: None };
        let text = svg(&spec, Data::Lines(&lines)).expect("draws");
        assert!(text.starts_with("<svg"), "{}", &text[..40.min(text.len())]);
        for needle in ["python · sedge", "node · sedge", "users", "mean latency (ms)", "<polyline"] {
            assert!(text.contains(needle), "missing {needle}");
        }
        let log = Spec { x_log: true, y_range: Some(0.0..1.0), ..spec };
        assert!(svg(&log, Data::Lines(&lines)).expect("draws").contains("<polyline"));
        let image = png(&log, Data::Lines(&lines)).expect("draws");
        assert!(image.starts_with(b"\x89PNG"), "a PNG");
    }

    /// The x of every text element whose content is exactly `text`.
    fn text_x(svg: &str, text: &str) -> Vec<f64> {
        svg.split("<text")
            .filter(|el| {
                el.split_once('>')
                    .and_then(|(_, rest)| rest.split_once("</text>"))
                    .is_some_and(|(t, _)| t.trim() == text)
            })
            .filter_map(|el| el.split("x=\"").nth(1)?.split('"').next()?.parse().ok())
            .collect()
    }

    #[test]
    fn the_legend_sits_right_of_the_plot() {
        let lines = two_lines();
        let spec = Spec { title: "t", x_desc: "users", y_desc: "%", x_log: false, y_range: Some(0.0..105.0) };
        let text = svg(&spec, Data::Lines(&lines)).expect("draws");
        let legend = text_x(&text, "python · sedge");
        let axis_end = text_x(&text, "10");
        assert_eq!(legend.len(), 1, "{text}");
        assert!(!axis_end.is_empty());
        assert!(axis_end.iter().all(|x| *x < legend[0]), "legend at {legend:?}, axis labels at {axis_end:?}");
    }

    #[test]
    fn a_log_axis_has_labels_within_each_decade() {
        let lines = vec![Line { name: "1 user".into(), points: vec![(0.15, 0.0), (0.4, 50.0), (3.0, 100.0)] }];
        let spec = Spec { title: "cdf", x_desc: "ms", y_desc: "%", x_log: true, y_range: Some(0.0..100.0) };
        let text = svg(&spec, Data::Lines(&lines)).expect("draws");
        for label in ["0.2", "0.5", "1", "2"] {
            assert_eq!(text_x(&text, label).len(), 1, "one {label} label");
        }
    }

    #[test]
    fn stacks_name_their_rows_and_parts() {
        let rows = vec![Stack {
            name: "sedge/digits-python".into(),
            parts: vec![("process".into(), 2.0), ("imports".into(), 150.0), ("first answer".into(), 3.0)],
        }];
        let spec = Spec { title: "phases", x_desc: "ms", y_desc: "", x_log: false, y_range: None };
        let text = svg(&spec, Data::Stacks(&rows)).expect("draws");
        for needle in ["sedge/digits-python", "process", "imports", "first answer"] {
            assert!(text.contains(needle), "{needle} in the chart");
        }
        assert!(png(&spec, Data::Stacks(&rows)).expect("draws").starts_with(b"\x89PNG"));
    }

    #[test]
    fn strips_show_every_value_and_name_their_rows() {
        let rows = vec![
            Strip { name: "sedge/hello-python".into(), values: vec![2.0, 3.0, 2.5, 40.0, 2.2] },
            Strip { name: "sedge/digits-python".into(), values: vec![300.0, 320.0] },
        ];
        let spec = Spec { title: "cold starts", x_desc: "ms", y_desc: "", x_log: true, y_range: None };
        let text = svg(&spec, Data::Strips(&rows)).expect("draws");
        for needle in ["sedge/hello-python", "sedge/digits-python", "one cold start", "median"] {
            assert!(text.contains(needle), "missing {needle}");
        }
        assert!(text.matches("<circle").count() >= 7, "a dot per value");
        assert!(png(&spec, Data::Strips(&rows)).expect("draws").starts_with(b"\x89PNG"));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
    }

    #[test]
    fn empty_data_still_draws() {
        let spec = Spec { title: "none", x_desc: "x", y_desc: "y", x_log: true, y_range: None };
        assert!(svg(&spec, Data::Lines(&[])).expect("draws").contains("<svg"));
        assert!(svg(&spec, Data::Strips(&[])).expect("draws").contains("<svg"));
    }
}
