//! A loopback HTTP server standing in for healthchecks and webhooks: it records every request and
//! answers, fails or hangs.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a server does with each request.
#[derive(Clone, Copy)]
pub enum Mode {
    Ok,
    Error500,
    Hang,
}

/// A loopback HTTP/1.1 server that records `METHOD PATH` and the body of every request.
pub struct Hook {
    pub url: String,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Hook {
    pub async fn start(mode: Mode) -> Hook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head, body) = loop {
                        let Ok(n) = socket.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let length = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if body.len() >= length {
                                break (head.to_string(), body.to_string());
                            }
                        }
                    };
                    let line = head.lines().next().unwrap_or("").split(' ').take(2).collect::<Vec<_>>().join(" ");
                    record.lock().unwrap().push((line, body));
                    let status = match mode {
                        Mode::Ok => "200 OK",
                        Mode::Error500 => "500 Internal Server Error",
                        Mode::Hang => {
                            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                            return;
                        }
                    };
                    let _ = socket
                        .write_all(
                            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        Hook { url, seen }
    }

    pub fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }
}
