//! The generator's ceiling: how fast it drives a trivial server, next to
//! `wrk` driving the same server in the same run, so a benchmark can show
//! that the generator was not what limited a target.

use std::process::Command;
use std::time::Duration;

use crate::error::BenchError;
use crate::procstat;

/// What `wrk --latency` reports, and the CPU time it used.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkFigures {
    pub requests: u64,
    pub requests_per_s: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Socket errors and non-2xx/3xx answers.
    pub errors: u64,
    pub cpu_s: Option<f64>,
}

/// "1.23ms", "450.00us", "2.01s", "1.5m" as milliseconds.
fn wrk_time_ms(text: &str) -> Option<f64> {
    let (num, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * factor)
}

/// Reads `wrk --latency` output; `None` without a Requests/sec line.
pub fn parse_wrk(output: &str) -> Option<WrkFigures> {
    let mut f = WrkFigures {
        requests: 0,
        requests_per_s: f64::NAN,
        p50_ms: None,
        p90_ms: None,
        p99_ms: None,
        errors: 0,
        cpu_s: None,
    };
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => f.requests_per_s = v.parse().ok()?,
            ["50%", v] => f.p50_ms = wrk_time_ms(v),
            ["90%", v] => f.p90_ms = wrk_time_ms(v),
            ["99%", v] => f.p99_ms = wrk_time_ms(v),
            [n, "requests", "in", ..] => f.requests = n.parse().unwrap_or(0),
            ["Non-2xx", "or", "3xx", "responses:", n] => f.errors += n.parse::<u64>().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                f.errors += rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>()
            }
            _ => {}
        }
    }
    f.requests_per_s.is_finite().then_some(f)
}

/// Runs `wrk -t THREADS -c USERS -d SECONDS --latency URL` and reads it.
/// Blocks for the duration of the run.
pub fn run_wrk(url: &str, users: u32, threads: u32, duration: Duration) -> Result<WrkFigures, BenchError> {
    let before = procstat::reaped_children_cpu_s();
    let out = Command::new("wrk")
        .args(["-t", &threads.max(1).to_string(), "-c", &users.max(threads).to_string()])
        .args(["-d", &format!("{}s", duration.as_secs().max(1)), "--latency", url])
        .output()
        .map_err(BenchError::io("running wrk (is it installed? Debian: apt-get install wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut figures = parse_wrk(&text).ok_or_else(|| {
        BenchError::Node(format!("cannot read wrk's output: {}{}", text, String::from_utf8_lossy(&out.stderr)))
    })?;
    figures.cpu_s = match (before, procstat::reaped_children_cpu_s()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "Running 5s test @ http://127.0.0.1:8080/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   512.11us  300.00us   5.00ms   80.00%
    Req/Sec    45.00k     2.00k   50.00k    70.00%
  Latency Distribution
     50%  450.00us
     75%  600.00us
     90%  800.00us
     99%    1.50ms
  450000 requests in 5.00s, 40.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  90000.00
Transfer/sec:      8.00MB
";

    #[test]
    fn wrk_output_is_read() {
        let f = parse_wrk(OUTPUT).expect("parses");
        assert_eq!(f.requests, 450_000);
        assert!((f.requests_per_s - 90_000.0).abs() < 1e-6);
        assert_eq!(f.p50_ms, Some(0.45));
        assert_eq!(f.p90_ms, Some(0.8));
        assert_eq!(f.p99_ms, Some(1.5));
        assert_eq!(f.errors, 8);
        assert_eq!(parse_wrk("nothing"), None);
        assert_eq!(wrk_time_ms("2.00s"), Some(2000.0));
    }
}
