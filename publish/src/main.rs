//! `upshift-publish`: see the crate documentation, or run `upshift-publish --help`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use upshift_publish::cli::{self, Command};

fn main() -> ExitCode {
    let config = match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => return print(&format!("{}\n", cli::usage())),
        Ok(Command::Version) => {
            return print(&format!("upshift-publish {}\n", env!("CARGO_PKG_VERSION")))
        }
        Ok(Command::Publish(config)) => config,
        Err(e) => {
            eprintln!("upshift-publish: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let default_filter = match (config.quiet, config.verbose) {
        (_, true) => "upshift_publish=debug,info",
        (true, false) => "warn,octocrab=off",
        // octocrab logs each failed request as an error of its own; ours says more.
        (false, false) => "upshift_publish=info,octocrab=off,warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("upshift-publish: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(upshift_publish::publish(&config)) {
        Ok(published) => print(&published.to_string()),
        Err(e) => {
            eprintln!("upshift-publish: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Writes `text` to stdout. A reader that went away (`upshift-publish --help | head`) is not an
/// error: what it wanted, it read. `print!` would panic there.
fn print(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upshift-publish: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}
