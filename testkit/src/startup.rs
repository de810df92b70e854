//! A `hello` master that must refuse to start (a configuration error): run it to its exit,
//! bounded in time, and hand back how it exited and what it said.

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs `binary` with `--listen 127.0.0.1:0` and `args` in a clean environment (plus `envs`)
/// until it exits, at most `bound` (then it is killed by its pid and the test fails). Returns
/// its exit status and its stderr.
pub fn run_to_exit(
    binary: &Path,
    args: &[String],
    envs: &[(String, String)],
    bound: Duration,
) -> (ExitStatus, String) {
    let scratch = crate::hello::Scratch::new("refused");
    let mut child = Command::new(binary)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", scratch.path())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for hello") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "hello {args:?} was still running after {bound:?}; it should have refused to start"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr)
}
