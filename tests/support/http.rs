//! A minimal HTTP/1.1 GET for the worker's local HTTP API in tests.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `GET path` on a local HTTP server; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect HTTP");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read response");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

/// The rows of a worker's `GET /tasks` (status 200, a JSON array).
pub async fn tasks_json(addr: SocketAddr) -> Vec<serde_json::Value> {
    let (status, body) = http_get(addr, "/tasks").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("GET /tasks is a JSON array")
}
