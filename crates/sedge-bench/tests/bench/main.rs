//! The load generator and the report against a trivial server started in
//! the test on 127.0.0.1:0, with known delays and injected failures.
//! Latency is asserted with generous bounds, speed never.

mod generator;
mod report;

use sedge_bench::trivial;
use tokio::net::TcpListener;

/// A trivial server for this test alone; its base URL.
pub async fn server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(trivial::serve(listener));
    format!("http://{addr}")
}
