//! `upshift-publish`: see the crate documentation, or run `upshift-publish --help`.

use std::io::IsTerminal;
use std::process::ExitCode;

use upshift_publish::cli::{self, Command};

fn main() -> ExitCode {
    let config = match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            println!("{}", cli::usage());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("upshift-publish {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
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
        Ok(published) => {
            print!("{published}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("upshift-publish: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
