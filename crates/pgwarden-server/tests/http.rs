//! Connection limits: clients that never finish their headers are closed after the header
//! timeout, and the connection cap keeps them from exhausting the server.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn slow_clients_are_closed_and_cannot_exhaust_the_server() {
    let env = Env::start_with(
        ROLES,
        "http: { max_connections: 4, header_read_timeout: 1s }",
    )
    .await;
    let addr = env.broker.base.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for _ in 0..6 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    // All four slots are held by clients that never finish; a real request still gets through
    // once the header timeout frees them.
    let start = Instant::now();
    let response = reqwest::Client::new()
        .get(format!("{}/v1/sys/health", env.broker.base))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    // Every slow client is closed by the server.
    for stream in &mut slow {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a slow client was left open");
    }
}

#[tokio::test]
async fn idle_kept_alive_connections_are_closed() {
    let env = Env::start_with(ROLES, "http: { header_read_timeout: 1s }").await;
    let addr = env.broker.base.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle keep-alive connection stays open");
}
