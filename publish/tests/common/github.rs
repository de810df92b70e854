//! The GitHub REST fixture server (`fixtures/github`), the test kit's, with the repositories a
//! test publishes into created first.

use std::path::Path;

pub use upshift_testkit::servers::github::Fixture;

/// The fixture serving `data`, with `data/<owner>/<repo>` created for each of `repos`, and extra
/// flags.
pub fn start(data: &Path, repos: &[&str], args: &[&str]) -> Fixture {
    for repo in repos {
        std::fs::create_dir_all(data.join(repo)).expect("mkdir repo");
    }
    Fixture::start(data, args)
}
