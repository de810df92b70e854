//! A fault injector, not a server under test: a raw TCP upstream that answers every request with
//! `Content-Length: <claimed>`, sends fewer bytes and closes. nginx cannot cut a static file
//! short by itself, so the nginx harness proxies `faults/truncate<uri>`-marked URIs here; nginx
//! passes the announced length on and, when this upstream closes early, closes the client's
//! connection too: the fetcher sees a real truncated transfer through a real HTTP server.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

type Payload = Arc<Mutex<Option<(Vec<u8>, u64)>>>;

pub struct Truncating {
    port: u16,
    payload: Payload,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Truncating {
    pub fn start() -> Truncating {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the truncating upstream");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("local addr").port();
        let payload: Payload = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (payload, stop) = (payload.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => answer(conn, &payload),
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }
        });
        Truncating {
            port,
            payload,
            stop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// From now on, answers with `bytes` announced as `claimed` bytes.
    pub fn serve(&self, bytes: &[u8], claimed: u64) {
        *self.payload.lock().expect("payload lock") = Some((bytes.to_vec(), claimed));
    }
}

fn answer(mut conn: TcpStream, payload: &Payload) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    // Read the whole request first: closing with unread input would reset the connection and
    // could destroy the response in flight.
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let Some((bytes, claimed)) = payload.lock().expect("payload lock").clone() else {
        let _ = conn.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {claimed}\r\nConnection: close\r\n\r\n"
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&bytes);
    let _ = conn.shutdown(Shutdown::Write);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
}

impl Drop for Truncating {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
