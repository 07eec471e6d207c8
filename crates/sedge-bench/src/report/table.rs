//! Tables as aligned text (terminal) or Markdown, from the same rows.

use super::{fmt_ms, ColdSummary, LevelSummary, Report, StepSummary};

/// Columns after the first few are numbers, aligned right.
pub(crate) struct Table {
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    /// How many leading columns hold text.
    pub text_columns: usize,
}

impl Table {
    pub fn text(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| self.rows.iter().map(|r| r[i].chars().count()).chain([self.headers[i].len()]).max().unwrap_or(0))
            .collect();
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i < self.text_columns || i + 1 == cells.len() {
                        format!("{c:<w$}", w = widths[i])
                    } else {
                        format!("{c:>w$}", w = widths[i])
                    }
                })
                .collect();
            padded.join("  ").trim_end().to_owned()
        };
        let mut out = vec![line(self.headers.clone())];
        out.extend(self.rows.iter().map(|r| line(r.iter().map(String::as_str).collect())));
        out.join("\n") + "\n"
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("| {} |\n", self.headers.join(" | "));
        let rules: Vec<&str> = (0..self.headers.len())
            .map(|i| if i < self.text_columns || i + 1 == self.headers.len() { "---" } else { "---:" })
            .collect();
        out += &format!("|{}|\n", rules.join("|"));
        for r in &self.rows {
            out += &format!("| {} |\n", r.join(" | "));
        }
        out
    }
}

fn ms_or_dash(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), fmt_ms)
}

/// One row per (scenario, users) level. `labels`: include language and style.
pub(crate) fn levels(levels: &[LevelSummary], labels: bool) -> Table {
    let mut headers = vec!["scenario"];
    if labels {
        headers.extend(["language", "style"]);
    }
    let text_columns = headers.len();
    headers.extend([
        "users",
        "requests",
        "ok %",
        "req/s",
        "mean ms",
        "p50",
        "p90",
        "p95",
        "p99",
        "max",
        "cpu s node+wkr",
        "rss MiB node+wkr",
        "errors",
    ]);
    let rows = levels
        .iter()
        .map(|l| {
            let s = &l.summary;
            let lat = s.latency_ms.as_ref();
            let mut row = vec![l.scenario.clone()];
            if labels {
                row.extend([l.language.clone(), l.style.clone()]);
            }
            let throughput = if l.repetitions > 1 && l.throughput_sd > 0.0 {
                format!("{:.0} ±{:.0}", s.throughput, l.throughput_sd)
            } else {
                format!("{:.0}", s.throughput)
            };
            row.extend([
                l.users.to_string(),
                s.count.to_string(),
                format!("{:.1}", s.success_rate * 100.0),
                throughput,
                ms_or_dash(lat.map(|x| x.mean)),
                ms_or_dash(lat.map(|x| x.p50)),
                ms_or_dash(lat.map(|x| x.p90)),
                ms_or_dash(lat.map(|x| x.p95)),
                ms_or_dash(lat.map(|x| x.p99)),
                ms_or_dash(lat.map(|x| x.max)),
                l.resources.map_or_else(|| "-".into(), |r| format!("{:.2}+{:.2}", r.node_cpu_s, r.workers_cpu_s)),
                l.resources.map_or_else(
                    || "-".into(),
                    |r| format!("{:.0}+{:.0}", r.node_peak_rss_mib, r.workers_peak_rss_mib),
                ),
                s.errors_text(),
            ]);
            row
        })
        .collect();
    Table { headers, rows, text_columns }
}

pub(crate) fn cold(cold: &[ColdSummary]) -> Table {
    let rows = cold
        .iter()
        .map(|c| {
            let errors = if c.errors.is_empty() {
                "-".to_owned()
            } else {
                c.errors.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
            };
            vec![
                c.scenario.clone(),
                c.count.to_string(),
                c.successes.to_string(),
                ms_or_dash(c.mean_ms),
                ms_or_dash(c.min_ms),
                ms_or_dash(c.median_ms),
                ms_or_dash(c.max_ms),
                errors,
                c.phases_ms.map_or_else(
                    || "-".to_owned(),
                    |p| format!("{:.1} / {:.1} / {:.1} / {:.1} ({})", p[0], p[1], p[2], p[3], c.kinds.join(", ")),
                ),
            ]
        })
        .collect();
    Table {
        headers: vec![
            "scenario",
            "cold starts",
            "ok",
            "mean ms",
            "min",
            "median",
            "max",
            "errors",
            "phases p50: process / imports / model / first answer ms",
        ],
        rows,
        text_columns: 1,
    }
}

/// One row per step, in the order they ran.
pub(crate) fn steps(steps: &[StepSummary]) -> Table {
    let rows = steps
        .iter()
        .map(|s| {
            let lat = s.summary.latency_ms.as_ref();
            vec![
                s.id.to_string(),
                s.kind.as_str().to_owned(),
                s.scenario.clone(),
                s.users.to_string(),
                s.repetition.to_string(),
                s.summary.count.to_string(),
                format!("{:.1}", s.summary.success_rate * 100.0),
                format!("{:.0}", s.summary.throughput),
                ms_or_dash(lat.map(|l| l.p50)),
                ms_or_dash(lat.map(|l| l.p99)),
                s.summary.errors_text(),
            ]
        })
        .collect();
    Table {
        headers: vec![
            "step", "kind", "scenario", "users", "rep", "requests", "ok %", "req/s", "p50 ms", "p99", "errors",
        ],
        rows,
        text_columns: 3,
    }
}

/// The end-of-run table for the terminal.
pub fn terminal_table(report: &Report) -> String {
    let mut out = levels(&report.levels, false).text();
    if !report.cold_starts.is_empty() {
        out += "\n";
        out += &cold(&report.cold_starts).text();
        if let Some(caveat) = super::cold_caveat(&report.cold_starts) {
            out += &format!("note: {caveat}\n");
        }
    }
    out
}

/// One run's figures as a two-column table (`sedge bench load`).
pub fn summary_table(s: &super::Summary) -> String {
    let lat = s.latency_ms.as_ref();
    let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{} ms", fmt_ms(v)));
    let mut rows = vec![
        vec!["requests".to_owned(), s.count.to_string()],
        vec!["successes".to_owned(), s.successes.to_string()],
        vec!["success rate".to_owned(), format!("{:.2} %", s.success_rate * 100.0)],
        vec!["elapsed".to_owned(), format!("{:.2} s", s.elapsed_s)],
        vec!["throughput".to_owned(), format!("{:.1} req/s", s.throughput)],
        vec!["mean".to_owned(), ms(lat.map(|l| l.mean))],
        vec!["p50".to_owned(), ms(lat.map(|l| l.p50))],
        vec!["p90".to_owned(), ms(lat.map(|l| l.p90))],
        vec!["p95".to_owned(), ms(lat.map(|l| l.p95))],
        vec!["p99".to_owned(), ms(lat.map(|l| l.p99))],
        vec!["max".to_owned(), ms(lat.map(|l| l.max))],
    ];
    for o in crate::outcome::Outcome::ALL.iter().filter(|o| !o.is_ok()) {
        rows.push(vec![format!("errors: {}", o.as_str()), s.errors_of(*o).to_string()]);
    }
    Table { headers: vec!["metric", "value"], rows, text_columns: 1 }.text()
}
