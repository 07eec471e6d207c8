//! Where an axis gets its ticks and how their numbers read.
//!
//! plotters labels a log axis at every integer multiple of each decade and
//! crowds the top of a decade (`7 8 9 10` overlap), or only at decades when
//! the range is wide, which leaves a sub-millisecond curve with no label
//! near it. Here a log axis is labelled at 1, 2 and 5 of each decade (every
//! multiple when the range is under a decade), with a light line at each
//! multiple.

use std::ops::Range;

/// Ticks of a log axis: labelled ones and the light grid between them.
#[derive(Debug, Clone, PartialEq)]
pub struct LogTicks {
    pub labelled: Vec<f64>,
    pub light: Vec<f64>,
}

/// Every `m × 10^k` for `m` in `multiples` that falls within `range`.
fn multiples_within(range: &Range<f64>, multiples: &[f64]) -> Vec<f64> {
    let (lo, hi) = (range.start, range.end);
    if !(lo > 0.0 && hi > lo && lo.is_finite() && hi.is_finite()) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for k in lo.log10().floor() as i32..=hi.log10().ceil() as i32 {
        for m in multiples {
            // Computed from the decade each time, so 0.3 stays 0.3 and not 0.30000000000000004.
            let v = decade_value(*m, k);
            if v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                out.push(v);
            }
        }
    }
    out
}

fn decade_value(m: f64, k: i32) -> f64 {
    if k >= 0 {
        m * 10f64.powi(k)
    } else {
        m / 10f64.powi(-k)
    }
}

/// The range widened to the 1-2-5 values around it, so that both ends of
/// the axis carry a label (a curve at 0.6 ms otherwise starts left of the
/// first label, 1).
pub fn snap_log(range: Range<f64>) -> Range<f64> {
    let (lo, hi) = (range.start, range.end);
    if !(lo > 0.0 && hi > lo && lo.is_finite() && hi.is_finite()) {
        return range;
    }
    let steps = multiples_within(&(lo / 10.0..hi * 10.0), &[1.0, 2.0, 5.0]);
    let below = steps.iter().copied().filter(|v| *v <= lo).fold(lo, |_, v| v);
    let above = steps.iter().copied().find(|v| *v >= hi).unwrap_or(hi);
    below..above
}

pub fn log_ticks(range: &Range<f64>) -> LogTicks {
    let every: Vec<f64> = (1..=9).map(f64::from).collect();
    let light = multiples_within(range, &every);
    let mut labelled = multiples_within(range, &[1.0, 2.0, 5.0]);
    if labelled.len() < 4 {
        // Under a decade: 1-2-5 would leave one or two labels.
        labelled = light.clone();
    }
    LogTicks { labelled, light }
}

/// Axis numbers with three significant digits at most and no trailing
/// zeros: "10", "2.5", "0.01", "0.0005", "1235".
pub fn tick(v: &f64) -> String {
    let v = *v;
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (2 - magnitude).clamp(0, 6) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_lose_trailing_zeros() {
        assert_eq!(tick(&10.0), "10");
        assert_eq!(tick(&2.5), "2.5");
        assert_eq!(tick(&0.01), "0.01");
        assert_eq!(tick(&0.0005), "0.0005");
        assert_eq!(tick(&0.2), "0.2");
        assert_eq!(tick(&1234.56), "1235");
        assert_eq!(tick(&0.0), "0");
        assert_eq!(tick(&100.0), "100");
    }

    #[test]
    fn a_log_axis_is_labelled_at_one_two_and_five() {
        let t = log_ticks(&(0.15..35.0));
        assert_eq!(t.labelled, vec![0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0]);
        assert!(t.light.contains(&0.3) && t.light.contains(&30.0) && !t.light.contains(&40.0));
    }

    #[test]
    fn a_log_range_ends_on_labels() {
        assert_eq!(snap_log(0.6..36.0), 0.5..50.0);
        assert_eq!(snap_log(2.0..4.5), 2.0..5.0);
        assert_eq!(snap_log(120.0..480.0), 100.0..500.0);
        assert_eq!(snap_log(0.0..1.0), 0.0..1.0);
    }

    #[test]
    fn under_a_decade_every_multiple_is_labelled() {
        let t = log_ticks(&(0.55..4.9));
        assert_eq!(t.labelled, vec![0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn an_empty_or_bad_range_has_no_ticks() {
        assert!(log_ticks(&(0.0..1.0)).labelled.is_empty());
        assert!(log_ticks(&(5.0..1.0)).labelled.is_empty());
    }
}
