//! The `hello` example without upshift: the same axum router, handlers, answer and tokio runtime,
//! served by `axum::serve` on a listener it binds itself. It is the "B" of the overhead A/B, the
//! plain side of the startup comparison and the server of the naive kill+start baseline.
//!
//! ```text
//! plain_hello --listen 127.0.0.1:8080 [--build-id ID] [--gen N]
//! curl 127.0.0.1:8080/      # hello from plain pid 4242 gen 1
//! ```
//!
//! The answer is `hello from <BUILD_ID> pid <pid> gen <n>`, exactly as `hello` formats it, so the
//! harness's parsers and wrk's per-build counting work on both. `BUILD_ID` is `--build-id`, else
//! the compile-time `BUILD_ID`, else `plain`; `gen` is `--gen` (default 1): the naive baseline
//! restarts it with a new id and generation each time. SIGTERM is not handled, so it ends the
//! process at once, as it does for a server without graceful shutdown.

use std::time::Duration;

use axum::extract::Query;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;

const USAGE: &str = "usage: plain_hello [--listen HOST:PORT] [--build-id ID] [--gen N]";

struct Args {
    listen: String,
    build_id: String,
    generation: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:8080".into(),
        build_id: option_env!("BUILD_ID").unwrap_or("plain").into(),
        generation: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = value()?,
            "--build-id" => args.build_id = value()?,
            "--gen" => {
                let v = value()?;
                args.generation = v
                    .parse()
                    .map_err(|_| format!("--gen {v:?} is not a whole number"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

#[derive(serde::Deserialize)]
struct SleepQuery {
    ms: Option<u64>,
}

/// `hello`'s answer, byte for byte.
fn greeting(build_id: &str, generation: u64) -> String {
    format!(
        "hello from {build_id} pid {} gen {generation}\n",
        std::process::id()
    )
}

fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::other(format!("{addr:?} is not host:port: {e}")))?;
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("plain_hello: {msg}");
            }
            eprintln!("{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    // Leaked once, so that the handlers are `Copy` closures over a `&'static str` like `hello`'s.
    let build: &'static str = Box::leak(args.build_id.into_boxed_str());
    let generation = args.generation;
    // The same routes as `hello`: `/` and `/sleep?ms=N`.
    let app = Router::new()
        .route("/", get(move || async move { greeting(build, generation) }))
        .route(
            "/sleep",
            get(move |Query(q): Query<SleepQuery>| async move {
                tokio::time::sleep(Duration::from_millis(q.ms.unwrap_or(0))).await;
                greeting(build, generation)
            }),
        );
    // Bound as upshift binds (SO_REUSEADDR, a backlog of 1024; tokio's own `bind` would use 128),
    // and TCP_NODELAY on every connection, as `upshift::http` sets it.
    let listener = match bind(&args.listen) {
        Ok(l) => l.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        }),
        Err(e) => {
            eprintln!(
                "plain_hello: cannot listen on {}: {e} (is the port in use?)",
                args.listen
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!(
        "plain_hello: {build} gen {generation} pid {} serving on {}",
        std::process::id(),
        args.listen
    );
    match axum::serve(listener, app).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plain_hello: serving failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
