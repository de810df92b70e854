use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

const STALL: Duration = Duration::from_secs(10);

/// A source that sends `chunk`, `times` times, `every` apart, then stays open (`hold`) or ends.
fn source(chunk: &'static [u8], times: usize, every: Duration, hold: bool) -> DuplexStream {
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        for _ in 0..times {
            if server.write_all(chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
        if hold {
            std::future::pending::<()>().await;
        }
    });
    client
}

async fn read_all<R: AsyncRead + Unpin>(body: &mut BoundedBody<R>) -> (Vec<u8>, io::Result<usize>) {
    let mut out = Vec::new();
    let r = body.read_to_end(&mut out).await;
    (out, r)
}

#[tokio::test(start_paused = true)]
async fn a_stall_fires_after_the_stall_deadline_and_names_the_bytes_read() {
    let start = Instant::now();
    let mut body = BoundedBody::new(source(b"abc", 1, Duration::ZERO, true), "GET x").stall(STALL);
    let (got, r) = read_all(&mut body).await;
    assert_eq!(got, b"abc");
    let e = BodyError::from_io(r.expect_err("a stalled source passed"), "GET x");
    assert!(
        matches!(e, BodyError::Stalled { read: 3, stall, .. } if stall == STALL),
        "{e:?}"
    );
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    assert!(
        e.to_string().contains("no data for 10s after 3 bytes"),
        "{e}"
    );
    assert_eq!(start.elapsed(), STALL);
}

#[tokio::test(start_paused = true)]
async fn slow_but_steady_passes_the_stall_deadline_but_not_the_total_one() {
    // A byte a second for 20 s, under a 10 s stall deadline.
    let steady = || source(b"x", 20, Duration::from_secs(1), false);
    let mut body = BoundedBody::new(steady(), "GET x").stall(STALL);
    let (got, r) = read_all(&mut body).await;
    assert_eq!(r.expect("a steady source stalled"), 20);
    assert_eq!(got.len(), 20);

    let start = Instant::now();
    let total = Duration::from_secs(5) + Duration::from_millis(500);
    let mut body = BoundedBody::new(steady(), "GET x")
        .stall(STALL)
        .total(total);
    let (got, r) = read_all(&mut body).await;
    let e = BodyError::from_io(r.expect_err("the total deadline did not fire"), "GET x");
    assert!(
        matches!(e, BodyError::DeadlineExceeded { read: 6, total: t, .. } if t == total),
        "{e:?}"
    );
    assert_eq!(got.len(), 6);
    assert_eq!(start.elapsed(), total);
}

#[tokio::test(start_paused = true)]
async fn the_cap_passes_cap_bytes_and_fails_at_cap_plus_one() {
    let exact = BoundedBody::new(&b"12345"[..], "GET x").max_bytes(5);
    assert_eq!(exact.read_to_vec().await.expect("cap bytes"), b"12345");

    let over = BoundedBody::new(&b"123456"[..], "GET x").max_bytes(5);
    let e = over.read_to_vec().await.expect_err("cap + 1 bytes passed");
    assert!(matches!(e, BodyError::TooLarge { cap: 5, .. }), "{e:?}");
    assert!(e.to_string().contains("cap of 5 bytes"), "{e}");

    // Through AsyncRead, in one large read: no byte past the cap is handed over.
    let mut over = BoundedBody::new(&b"123456789"[..], "GET x").max_bytes(5);
    let (got, r) = read_all(&mut over).await;
    assert!(got.len() <= 5, "{got:?}");
    assert_eq!(
        r.expect_err("over the cap").kind(),
        io::ErrorKind::InvalidData
    );
    // Fused: reading again after the error is an error, not more bytes or a clean end.
    let mut buf = [0u8; 8];
    assert!(over.read(&mut buf).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn the_announced_length_is_checked_and_completion_runs_once_at_a_clean_end() {
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let short = BoundedBody::new(&b"abc"[..], "GET x")
        .expect_len(Some(4))
        .on_complete(move || flag.store(true, Ordering::SeqCst));
    let e = short.read_to_vec().await.expect_err("a short body passed");
    assert!(
        matches!(
            e,
            BodyError::Truncated {
                read: 3,
                expected: 4,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!done.load(Ordering::SeqCst), "completion ran on a cut body");

    let long = BoundedBody::new(&b"abcde"[..], "GET x").expect_len(Some(4));
    let e = long.read_to_vec().await.expect_err("a long body passed");
    assert!(
        matches!(e, BodyError::LongerThanAnnounced { expected: 4, .. }),
        "{e:?}"
    );

    let flag = done.clone();
    let whole = BoundedBody::new(&b"abcd"[..], "GET x")
        .expect_len(Some(4))
        .on_complete(move || flag.store(true, Ordering::SeqCst));
    assert_eq!(whole.read_to_vec().await.expect("whole"), b"abcd");
    assert!(done.load(Ordering::SeqCst), "completion did not run");
}

#[tokio::test(start_paused = true)]
async fn a_consumer_that_pauses_between_reads_is_not_a_stall() {
    let mut body = BoundedBody::new(&b"abcdef"[..], "GET x").stall(STALL);
    let mut buf = [0u8; 3];
    body.read_exact(&mut buf).await.expect("first half");
    tokio::time::sleep(STALL * 3).await;
    body.read_exact(&mut buf)
        .await
        .expect("a pause of the reader failed the body");
    assert_eq!(&buf, b"def");
}

#[test]
fn transport_errors_keep_their_kind_and_gain_the_context() {
    let e = BodyError::from_io(io::Error::from(io::ErrorKind::ConnectionReset), "GET x");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    assert!(e.to_string().starts_with("GET x: "), "{e}");
}
