//! The package of the `hello` example (`hello.rs` beside this file), the README's demo. The
//! library is empty: Cargo needs one target besides the example.
//!
//! ```text
//! cargo build --release --example hello                            # --watch (File fetcher)
//! cargo build --release --example hello --features remote-fetchers # also --url, --github, --s3
//! ```
