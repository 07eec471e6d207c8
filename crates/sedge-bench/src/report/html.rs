//! `report.html`: one self-contained page, charts inline.

use super::{table, Report};

fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn html_table(t: &table::Table) -> String {
    let mut out = String::from("<table><thead><tr>");
    for h in &t.headers {
        out += &format!("<th>{}</th>", esc(h));
    }
    out += "</tr></thead><tbody>\n";
    for r in &t.rows {
        out += "<tr>";
        for (i, c) in r.iter().enumerate() {
            let class = if i < t.text_columns || i + 1 == r.len() { "" } else { " class=\"n\"" };
            out += &format!("<td{class}>{}</td>", esc(c));
        }
        out += "</tr>\n";
    }
    out + "</tbody></table>\n"
}

/// The SVG document without its XML prologue, to sit inside the page.
fn inline_svg(svg: &str) -> &str {
    svg.find("<svg").map_or(svg, |i| &svg[i..])
}

pub(crate) fn render(r: &Report) -> String {
    let mut out = String::from("<!doctype html>\n<html><head><meta charset=\"utf-8\">\n");
    out += &format!("<title>{} — sedge bench</title>\n", esc(&r.experiment));
    out += "<style>body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;\
            font-size:13px;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 7px}th{background:#f3f3f3}\
            td.n{text-align:right;font-variant-numeric:tabular-nums}figure{display:inline-block;margin:.5em}\
            code{font-size:12px}</style></head><body>\n";
    out += &format!("<h1>{}</h1>\n", esc(&r.experiment));
    if !r.description.is_empty() {
        out += &format!("<p>{}</p>\n", esc(r.description.trim()));
    }
    out += &format!(
        "<p>Run {} to {}{} on {} ({} cores), by {}.</p>\n<p>Settings: <code>{}</code></p>\n",
        esc(&r.started),
        esc(r.finished.as_deref().unwrap_or("(unfinished)")),
        if r.quick { ", quick" } else { "" },
        esc(&r.host.os),
        r.host.cores,
        esc(&r.host.generator),
        esc(&r.settings.to_string())
    );
    out += "<p>Latencies are of successful requests, in milliseconds; req/s counts successful answers \
            (± the spread over repetitions); CPU seconds and peak RSS are of the local node and its \
            workers, averaged over repetitions.</p>\n";
    out += "<h2>Load</h2>\n";
    out += &html_table(&table::levels(&r.levels, true));
    if let Some(rate) = r.engine_rate() {
        out += "<h2>The engine alone</h2>\n<p>ONNX Runtime on the same model and input in this run, no HTTP \
                (<code>sedge bench ort</code>), and each scenario's best throughput as a share of it.</p>\n<ul>\n";
        for e in &r.engine {
            out += &format!(
                "<li>{}: {} × {} thread(s), {:.1} runs/s, run p50 {:.2} ms</li>\n",
                esc(&e.when),
                e.sessions,
                e.threads,
                e.runs_per_s,
                e.p50_ms
            );
        }
        let shares = r.step_shares();
        if shares.is_empty() {
            out += &format!("</ul>\n<p>Mean: {rate:.1} runs/s.</p>\n<ul>\n");
            for (scenario, best, users, share) in r.engine_shares() {
                out +=
                    &format!("<li>{}: {best:.1} req/s at {users} users, {:.0} %</li>\n", esc(&scenario), share * 100.0);
            }
        } else {
            out += "</ul>\n<p>Each load step against the engine measured just before and just after it:</p>\n<ul>\n";
            for s in shares {
                out += &format!(
                    "<li>{} at {} users: {:.1} req/s, engine {:.1} runs/s, {:.1} % (lowest repetition {:.1} %), {:.1} % by CPU per answer, p50 {:.2} ms over a run alone; \
                     worst user's p99 {:.1} ms, {:.2} × 1.3 × users / throughput</li>\n",
                    esc(&s.scenario),
                    s.users,
                    s.throughput,
                    s.engine,
                    s.share * 100.0,
                    s.lowest * 100.0,
                    s.cpu_share * 100.0,
                    s.added_ms,
                    s.worst_user_p99_ms,
                    s.worst_of_fair
                );
            }
        }
        out += "</ul>\n";
    }
    if !r.cold_starts.is_empty() {
        out += "<h2>Cold starts</h2>\n<p>One request to a function just scaled to zero.</p>\n";
        if let Some(caveat) = super::cold_caveat(&r.cold_starts) {
            out += &format!("<p><strong>Note:</strong> {}</p>\n", esc(&caveat));
        }
        out += &html_table(&table::cold(&r.cold_starts));
    }
    if !r.notes.is_empty() {
        out += "<h2>Notes</h2>\n<ul>\n";
        for n in &r.notes {
            out += &format!("<li>{}</li>\n", esc(n));
        }
        out += "</ul>\n";
    }
    out += "<h2>Charts</h2>\n";
    for c in &r.charts {
        out += &format!("<figure>{}<figcaption>{}</figcaption></figure>\n", inline_svg(&c.svg), esc(&c.file));
    }
    out += "<details><summary>Every step</summary>\n";
    out += &html_table(&table::steps(&r.steps));
    out += "</details>\n</body></html>\n";
    out
}
