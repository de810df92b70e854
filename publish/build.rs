//! Records the target triple this tool is built for: the default `--target`, named in GitHub
//! asset names so that the GitHub fetcher's platform matching picks them.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rustc-env=UPSHIFT_PUBLISH_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
