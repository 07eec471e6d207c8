use std::path::Path;

use sedge_bench::report;
use sedge_bench::run::{self, RunOptions};
use sedge_bench::Experiment;

use crate::server;

fn experiment(base: &str, dir: &Path) -> String {
    std::fs::write(dir.join("payload.txt"), "hello edge").expect("write payload");
    format!(
        r#"
        name = "tiny"
        description = "Two functions on a trivial server."

        [load]
        users = [1, 3]
        repetitions = 2
        warmup = "50ms"
        duration = "150ms"
        pause = "0s"
        timeout = "2s"

        [[target]]
        name = "local"
        kind = "url"
        url = "{base}/{{name}}"

        [[function]]
        name = "echo"
        payload = "@payload.txt"
        expect = "edge"
        labels = {{ workload = "hello", language = "python", style = "openfaas" }}

        [[function]]
        name = "delay"
        labels = {{ workload = "hello", language = "node", style = "fission" }}
        "#
    )
}

fn non_empty(path: &Path) {
    let len = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).len();
    assert!(len > 0, "{} is empty", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_writes_its_report_and_the_report_can_be_regenerated() {
    let base = server().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("tiny.toml");
    std::fs::write(&file, experiment(&base, tmp.path())).expect("write experiment");
    let exp = Experiment::load(&file, false).expect("valid experiment");
    let out = tmp.path().join("out");
    let mut lines = Vec::new();
    let record = run::run(&exp, &RunOptions { out: out.clone(), ..RunOptions::default() }, &mut |l: &str| {
        lines.push(l.to_owned())
    })
    .await
    .expect("run");
    assert_eq!(record.steps.len(), 2 * 2 * 2, "functions × users × repetitions");
    assert!(lines.iter().any(|l| l.contains("[  8/8]")), "progress lines: {lines:?}");

    // PNGs are drawn by the same code as SVGs (and tested with it); leaving
    // them out keeps this test fast in a debug build.
    let first = report::write_with(&out, report::Formats { png: false }).expect("report");
    for f in ["run.json", "raw.csv", "summary.json", "summary.md", "report.html", "experiment.toml"] {
        non_empty(&out.join(f));
    }
    assert_eq!(first.levels.len(), 4);
    for level in &first.levels {
        assert!(level.summary.count > 0 && level.summary.success_rate == 1.0, "{level:?}");
        assert_eq!(level.repetitions, 2);
    }
    let files: Vec<&str> = first.charts.iter().map(|c| c.file.as_str()).collect();
    for f in [
        "charts/latency-hello.svg",
        "charts/throughput-hello.svg",
        "charts/success-hello.svg",
        "charts/cdf-local-echo.svg",
    ] {
        assert!(files.contains(&f), "{f} not in {files:?}");
        non_empty(&out.join(f));
    }
    let latency = std::fs::read_to_string(out.join("charts/latency-hello.svg")).expect("chart");
    assert!(latency.contains("python · openfaas") && latency.contains("node · fission"), "one line per language/style");
    let html = std::fs::read_to_string(out.join("report.html")).expect("html");
    assert!(html.contains("<svg") && html.contains("local/echo"));
    let md = std::fs::read_to_string(out.join("summary.md")).expect("md");
    assert!(md.contains("| local/echo | python | openfaas | 1 |"), "{md}");
    assert!(report::terminal_table(&first).contains("local/delay"));

    // From the raw files alone, the same figures come back.
    std::fs::remove_file(out.join("summary.json")).expect("rm");
    std::fs::remove_dir_all(out.join("charts")).expect("rm");
    let again = report::write_with(&out, report::Formats { png: false }).expect("report again");
    non_empty(&out.join("summary.json"));
    non_empty(&out.join("charts/latency-hello.svg"));
    let counts = |r: &report::Report| {
        r.levels.iter().map(|l| (l.scenario.clone(), l.users, l.summary.count)).collect::<Vec<_>>()
    };
    assert_eq!(counts(&first), counts(&again));
}

#[test]
fn a_bad_experiment_file_names_the_field() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("bad.toml");
    let text = experiment("http://127.0.0.1:9", tmp.path()).replace("repetitions = 2", "repetitions = 0");
    std::fs::write(&file, text).expect("write");
    let err = Experiment::load(&file, false).expect_err("refused").to_string();
    assert!(err.contains("bad.toml") && err.contains("load.repetitions"), "{err}");
    let text = experiment("http://127.0.0.1:9", tmp.path()).replace("expect =", "expected =");
    std::fs::write(&file, text).expect("write");
    let err = Experiment::load(&file, false).expect_err("refused").to_string();
    assert!(err.contains("expected"), "{err}");
}
