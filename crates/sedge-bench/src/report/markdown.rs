//! `summary.md`: the run's tables, with the charts linked.

use super::{table, Report};

pub(crate) fn render(r: &Report) -> String {
    let mut out = format!("# {}\n\n", r.experiment);
    if !r.description.is_empty() {
        out += &format!("{}\n\n", r.description.trim());
    }
    out += &format!(
        "Run {} to {}{} on {} ({} cores), by {}.\n\n",
        r.started,
        r.finished.as_deref().unwrap_or("(unfinished)"),
        if r.quick { ", quick" } else { "" },
        r.host.os,
        r.host.cores,
        r.host.generator
    );
    out += &format!("Settings: `{}`\n\n", r.settings);
    out += "Latencies are of successful requests, in milliseconds; req/s counts successful answers \
            (± the spread over repetitions); CPU seconds and peak RSS are of the local node and its \
            workers, averaged over repetitions.\n\n";
    out += "## Load\n\n";
    out += &table::levels(&r.levels, true).markdown();
    if let Some(rate) = r.engine_rate() {
        out += "\n## The engine alone\n\nONNX Runtime on the same model and input in this run, no HTTP \
                (`sedge bench ort`), and each scenario's best throughput as a share of it.\n\n";
        out += "| measured | sessions × threads | runs/s | run p50 ms | run p99 ms |\n|---|---|---|---|---|\n";
        for e in &r.engine {
            out += &format!(
                "| {} | {} × {} | {:.1} | {:.2} | {:.2} |\n",
                e.when, e.sessions, e.threads, e.runs_per_s, e.p50_ms, e.p99_ms
            );
        }
        let shares = r.step_shares();
        if shares.is_empty() {
            out += &format!(
                "\nMean: {rate:.1} runs/s.\n\n| scenario | best req/s | at users | of the engine |\n|---|---|---|---|\n"
            );
            for (scenario, best, users, share) in r.engine_shares() {
                out += &format!("| {scenario} | {best:.1} | {users} | {:.0} % |\n", share * 100.0);
            }
        } else {
            out += "\nThe engine was measured before every load step: each step is set against the engine \
                    just before and just after it.\n\n\
                    The worst user's p99 is the highest of the users' own p99 latencies, beside \
                    1.3 × users / throughput (the fair bound; at most 1 × of it is fair).\n\n\
                    \"CPU of the engine\" is the engine's CPU time per run over the CPU time per answer (node, \
                    workers and load generator): the work done rather than the share of the machine got.\n\n\
                    \"p50 added\" is the step's p50 latency less the p50 of one run of the engine with no other \
                    beside it.\n\n\
                    | scenario | users | req/s | engine runs/s | of the engine | lowest repetition | CPU of the engine | p50 added ms | worst user's p99 ms | of the fair bound |\n\
                    |---|---|---|---|---|---|---|---|---|---|\n";
            for s in shares {
                out += &format!(
                    "| {} | {} | {:.1} | {:.1} | {:.1} % | {:.1} % | {:.1} % | {:.2} | {:.1} | {:.2} × |\n",
                    s.scenario,
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
    }
    if !r.cold_starts.is_empty() {
        out += "\n## Cold starts\n\nOne request to a function just scaled to zero.\n\n";
        if let Some(caveat) = super::cold_caveat(&r.cold_starts) {
            out += &format!("Note: {caveat}\n\n");
        }
        out += &table::cold(&r.cold_starts).markdown();
    }
    if !r.notes.is_empty() {
        out += "\n## Notes\n\n";
        for n in &r.notes {
            out += &format!("- {n}\n");
        }
    }
    out += "\n## Charts\n\n";
    for c in &r.charts {
        out += &format!("![{}]({})\n\n", c.title, c.file);
    }
    out += "## Every step\n\n";
    out += &table::steps(&r.steps).markdown();
    out
}
