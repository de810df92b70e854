//! The README's "Using it" section, done as a newcomer does it: `cargo new`, the `cargo add` lines
//! exactly as the README writes them (with `../upshift` pointing at this checkout), the `rust`
//! block as `src/main.rs`, `cargo build`. Then it is run: a start error prints with `Display`
//! (not `Debug`), and a started server logs what upshift does, answers, and drains on SIGTERM.
//!
//! The only change made to the README's code is its port (8080 becomes a free one), so that the
//! test never collides with anything on the machine.
//!
//! The first build compiles axum, tokio and upshift into `target/readme-snippet` (a few minutes
//! on 2 cores); later runs reuse it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The README's "Using it" section: its `sh` block (the `cargo add` lines) and its `rust` block.
fn using_it_blocks() -> (Vec<String>, String) {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let start = readme
        .find("## Using it")
        .expect("README.md has a \"## Using it\" section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let block = |fence: &str| -> String {
        let open = section
            .find(fence)
            .unwrap_or_else(|| panic!("no {fence:?} block in \"Using it\""));
        let body = &section[open + fence.len()..];
        let body = &body[body.find('\n').unwrap() + 1..];
        body[..body.find("\n```").unwrap()].to_string()
    };
    let adds = block("```sh")
        .lines()
        .filter(|l| l.trim_start().starts_with("cargo add"))
        .map(|l| l.split(" #").next().unwrap().trim().to_string())
        .collect::<Vec<_>>();
    assert!(!adds.is_empty(), "no `cargo add` line in \"Using it\"");
    (adds, block("```rust"))
}

/// Makes the fresh project in `dir/myapp` with the README's commands and code; returns its binary.
fn build_the_snippet(dir: &Path, port: u16) -> PathBuf {
    let (adds, code) = using_it_blocks();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = workspace_root().join("target").join("readme-snippet");
    run_bounded(
        Command::new(&cargo)
            .args(["new", "--quiet", "--vcs", "none", "myapp"])
            .current_dir(dir),
        "cargo new myapp",
        Duration::from_secs(60),
    );
    let project = dir.join("myapp");
    // `../upshift` in the README is this checkout, wherever it is.
    std::os::unix::fs::symlink(workspace_root(), dir.join("upshift")).unwrap();
    for add in &adds {
        let words: Vec<&str> = add.split_whitespace().collect();
        assert_eq!(words[..2], ["cargo", "add"], "{add}");
        run_bounded(
            Command::new(&cargo).args(&words[1..]).current_dir(&project),
            add,
            Duration::from_secs(300),
        );
    }
    assert!(
        code.contains("127.0.0.1:8080"),
        "the snippet listens on 8080"
    );
    let code = code.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    std::fs::write(project.join("src/main.rs"), code).unwrap();
    run_bounded(
        Command::new(&cargo)
            .args(["build", "--quiet"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&project),
        "cargo build of the README's snippet",
        Duration::from_secs(1200),
    );
    target.join("debug").join("myapp")
}

#[test]
fn the_readme_snippet_builds_as_a_fresh_project_logs_and_prints_errors_for_people() {
    let _heavy = heavy_lock();
    let dir = TestDir::new("readme-snippet");
    let port = free_port();
    let binary = build_the_snippet(dir.path(), port);
    let addr = Addr::Tcp(format!("127.0.0.1:{port}").parse().unwrap());

    // The port taken: the start error, for a person.
    let taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut failing = Master::spawn(&binary, &[], &[]);
    let status = failing
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| failing.fail("the snippet kept running with its port taken"));
    let log = failing.log_contents();
    if status.code() != Some(1)
        || !log.contains("myapp: upshift could not start: ")
        || log.contains("Os {")
    {
        failing.fail(format!(
            "with its port taken the snippet exited {status} and did not print the error with Display"
        ));
    }
    drop(taken);

    // Started: events are visible, it answers, and it drains on SIGTERM.
    let mut master = Master::spawn(&binary, &[], &[]);
    let answer = master.wait_serving(&addr, Duration::from_secs(20));
    assert_eq!(answer.body, "hello\n");
    if !wait_until(Duration::from_secs(5), || {
        master.log_contents().contains("INFO")
    }) {
        master.fail("the snippet printed no INFO event: upshift's log is invisible");
    }
    master.signal(Signal::SIGTERM);
    match master.wait_exit(Duration::from_secs(20)) {
        Some(st) if st.success() => {}
        Some(st) => master.fail(format!("the snippet exited {st} after SIGTERM, expected 0")),
        None => master.fail("the snippet did not exit within 20 s of SIGTERM"),
    }
}
