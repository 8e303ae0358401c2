//! An artifact's bytes as they arrive, read on a blocking thread: the local folder's file, or a
//! download that a task feeds in order. Unchecked: the reader hashes what it reads and compares it with
//! the manifest at the end.

use std::io::Read;

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

/// What a download hands on: bytes in order, then its end, or why it broke (read back with `broke`). A
/// download that stops without saying either (its task panicked or was stopped) broke.
pub enum Piece {
    Bytes(Bytes),
    End,
    Broke(String),
}

pub struct ArtifactReader {
    source: Source,
}

enum Source {
    File(std::fs::File),
    Download {
        pieces: mpsc::Receiver<Piece>,
        piece: Bytes,
        /// The download said its end: every later read is the end too.
        ended: bool,
        broke: Option<String>,
        /// The task feeding `pieces`: stopped when the reader is dropped, on every exit path.
        task: tokio::task::JoinHandle<()>,
    },
}

impl ArtifactReader {
    pub fn file(file: std::fs::File) -> Self {
        ArtifactReader { source: Source::File(file) }
    }

    /// Reads what `task` sends to `pieces`, in order; an `Err` piece ends the stream with that reason.
    pub fn download(pieces: mpsc::Receiver<Piece>, task: tokio::task::JoinHandle<()>) -> Self {
        ArtifactReader { source: Source::Download { pieces, piece: Bytes::new(), ended: false, broke: None, task } }
    }

    /// What stops the download (nothing for a file): a reader blocked waiting for the next piece then
    /// sees the end at once.
    pub fn abort_handle(&self) -> Option<tokio::task::AbortHandle> {
        match &self.source {
            Source::Download { task, .. } => Some(task.abort_handle()),
            Source::File(_) => None,
        }
    }

    /// Why the download stopped, if it did: the reason to report rather than what decryption made of
    /// the missing bytes.
    pub fn broke(&self) -> Option<&str> {
        match &self.source {
            Source::Download { broke, .. } => broke.as_deref(),
            Source::File(_) => None,
        }
    }
}

impl Read for ArtifactReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.source {
            Source::File(f) => f.read(buf),
            Source::Download { pieces, piece, ended, broke, .. } => {
                while piece.is_empty() {
                    if *ended {
                        return Ok(0);
                    }
                    if let Some(why) = broke {
                        return Err(std::io::Error::other(why.clone()));
                    }
                    match pieces.blocking_recv() {
                        Some(Piece::Bytes(next)) => *piece = next,
                        Some(Piece::End) => *ended = true,
                        Some(Piece::Broke(why)) => *broke = Some(why),
                        None => *broke = Some("the download stopped before its end".into()),
                    }
                }
                let n = buf.len().min(piece.len());
                buf[..n].copy_from_slice(&piece[..n]);
                piece.advance(n);
                Ok(n)
            }
        }
    }
}

impl Drop for ArtifactReader {
    fn drop(&mut self) {
        if let Source::Download { task, .. } = &self.source {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pieces_are_read_in_order_and_a_broken_download_says_why() {
        let (tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            for p in [&b"abc"[..], b"", b"defgh"] {
                let _ = tx.send(Piece::Bytes(Bytes::from_static(p))).await;
            }
            let _ = tx.send(Piece::Broke("the connection was reset".into())).await;
        });
        let (got, err, broke) = tokio::task::spawn_blocking(move || {
            let mut r = ArtifactReader::download(rx, task);
            let mut got = vec![0u8; 8];
            r.read_exact(&mut got).unwrap();
            let err = r.read(&mut [0u8; 4]).unwrap_err().to_string();
            (got, err, r.broke().map(str::to_string))
        })
        .await
        .unwrap();
        assert_eq!(got, b"abcdefgh");
        assert_eq!(err, "the connection was reset");
        assert_eq!(broke.as_deref(), Some("the connection was reset"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_end_is_said_and_a_silent_stop_is_a_break() {
        let (tx, rx) = mpsc::channel(2);
        let task = tokio::spawn(async move {
            let _ = tx.send(Piece::Bytes(Bytes::from_static(b"ab"))).await;
            let _ = tx.send(Piece::End).await;
        });
        let (tx2, rx2) = mpsc::channel(2);
        let silent = tokio::spawn(async move {
            let _ = tx2.send(Piece::Bytes(Bytes::from_static(b"ab"))).await;
        });
        let (ended, stopped) = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            let mut reader = ArtifactReader::download(rx, task);
            let ended = reader.read_to_end(&mut all).map(|_| all);
            assert_eq!(reader.read(&mut [0u8; 4]).ok(), Some(0), "the end stays the end");
            let mut some = Vec::new();
            let stopped = ArtifactReader::download(rx2, silent).read_to_end(&mut some).map_err(|e| e.to_string());
            (ended.unwrap(), stopped)
        })
        .await
        .unwrap();
        assert_eq!(ended, b"ab");
        assert_eq!(stopped, Err("the download stopped before its end".to_string()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_reader_stops_the_download() {
        let (tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            loop {
                if tx.send(Piece::Bytes(Bytes::from_static(b"x"))).await.is_err() {
                    break;
                }
            }
        });
        let reader = ArtifactReader::download(rx, task);
        let Source::Download { task, .. } = &reader.source else { unreachable!() };
        let handle = task.abort_handle();
        drop(reader);
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !handle.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
    }
}
