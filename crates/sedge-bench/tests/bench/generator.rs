use std::time::Duration;

use bytes::Bytes;
use sedge_bench::load::{self, LoadPlan, Stop};
use sedge_bench::{Outcome, Summary};

use crate::server;

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_counts_every_request_and_times_the_delay() {
    let base = server().await;
    let result = load::run(&LoadPlan::new(format!("{base}/delay/20"), 4, Stop::Requests(40))).await.expect("run");
    let s = Summary::of_run(&result.samples, result.elapsed);
    assert_eq!((s.count, s.successes), (40, 40));
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    for user in 0..4 {
        assert!(result.samples.iter().any(|x| x.user == user), "user {user} sent nothing");
    }
    assert!(result.samples.iter().all(|x| x.status == 200 && x.bytes == 2));
    let lat = s.latency_ms.expect("latency");
    // The server sleeps 20 ms: nothing can be faster; slower only by scheduling.
    assert!(result.samples.iter().all(|x| ms(x.latency_us) >= 19.9), "{lat:?}");
    assert!(lat.p50 >= 20.0 && lat.p50 < 500.0, "{lat:?}");
    assert!(lat.p50 <= lat.p90 && lat.p90 <= lat.p95 && lat.p95 <= lat.p99 && lat.p99 <= lat.max, "{lat:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duration_stops_sending_in_time() {
    let base = server().await;
    let result =
        load::run(&LoadPlan::new(format!("{base}/"), 2, Stop::After(Duration::from_millis(300)))).await.expect("run");
    assert!(!result.samples.is_empty());
    assert!(result.samples.iter().all(|x| x.outcome == Outcome::Ok && x.send_us < 300_000));
    assert!(result.samples.windows(2).all(|w| w[0].send_us <= w[1].send_us), "rows are in send order");
}

async fn classes(url: String, users: u32, n: u64, tweak: impl FnOnce(&mut LoadPlan)) -> Summary {
    let mut plan = LoadPlan::new(url, users, Stop::Requests(n));
    tweak(&mut plan);
    let result = load::run(&plan).await.expect("run");
    assert_eq!(result.samples.len() as u64, n);
    Summary::of_run(&result.samples, result.elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_lands_in_its_class() {
    let base = server().await;
    let s = classes(format!("{base}/every/4/503"), 1, 20, |_| {}).await;
    assert_eq!((s.successes, s.errors_of(Outcome::Http5xx)), (15, 5), "{:?}", s.errors);
    assert!((s.success_rate - 0.75).abs() < 1e-9);

    let s = classes(format!("{base}/status/404"), 2, 3, |_| {}).await;
    assert_eq!((s.successes, s.errors_of(Outcome::Http4xx)), (0, 3));
    assert_eq!(s.latency_ms, None);

    let s = classes(format!("{base}/echo"), 1, 3, |p| {
        p.method = "POST".into();
        p.body = Bytes::from_static(b"hello edge");
        p.expect = Some("bye".into());
    })
    .await;
    assert_eq!(s.errors_of(Outcome::BodyMismatch), 3);
    let s = classes(format!("{base}/echo"), 1, 3, |p| {
        p.method = "POST".into();
        p.body = Bytes::from_static(b"hello edge");
        p.expect = Some("lo ed".into());
    })
    .await;
    assert_eq!(s.successes, 3);

    let s = classes(format!("{base}/delay/5000"), 2, 2, |p| p.timeout = Duration::from_millis(100)).await;
    assert_eq!(s.errors_of(Outcome::Timeout), 2, "{:?}", s.errors);

    let s = classes(format!("{base}/close"), 1, 3, |_| {}).await;
    assert_eq!(s.errors_of(Outcome::Io), 3, "{:?}", s.errors);

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let s = classes(format!("http://{closed}/"), 2, 4, |_| {}).await;
    assert_eq!(s.errors_of(Outcome::Connect), 4, "{:?}", s.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_reconnects_after_a_broken_connection() {
    let base = server().await;
    let s = classes(format!("{base}/close-every/3"), 1, 9, |_| {}).await;
    assert_eq!((s.successes, s.errors_of(Outcome::Io)), (6, 3), "{:?}", s.errors);
    let s = classes(format!("{base}/"), 2, 6, |p| p.keep_alive = false).await;
    assert_eq!(s.successes, 6, "a new connection per request works too: {:?}", s.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_on_schedule() {
    let base = server().await;
    let mut plan = LoadPlan::new(format!("{base}/"), 4, Stop::Requests(20));
    plan.rate = Some(200.0);
    let result = load::run(&plan).await.expect("run");
    let sends: Vec<u64> = result.samples.iter().map(|x| x.send_us).collect();
    let due: Vec<u64> = (0..20).map(|i| i * 5_000).collect();
    assert_eq!(sends, due, "send times are the due times, 5 ms apart");
    assert!(result.samples.iter().all(|x| x.outcome == Outcome::Ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_counts_queueing_behind_a_slow_target() {
    let base = server().await;
    // One connection, 50 ms per answer, but one request due every 10 ms:
    // request i is due at 10i ms and cannot be answered before 50(i+1) ms.
    let mut plan = LoadPlan::new(format!("{base}/delay/50"), 1, Stop::Requests(10));
    plan.rate = Some(100.0);
    let result = load::run(&plan).await.expect("run");
    let last = result.samples.last().expect("samples");
    assert_eq!(last.send_us, 90_000);
    assert!(ms(last.latency_us) >= 400.0, "queueing shows: {} ms", ms(last.latency_us));
    let s = Summary::of_run(&result.samples, result.elapsed);
    assert!(s.latency_ms.expect("latency").max >= 400.0);
}
