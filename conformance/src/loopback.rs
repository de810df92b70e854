//! Test servers on 127.0.0.1 speak plain `http://`, which remote fetchers refuse without a
//! minisign key unless the operator opts in (`Upgrader::allow_insecure_transport(true)`, the
//! hello example's `--allow-insecure-transport`). Tests that call a fetcher's `check` directly
//! hand it that same opt-in here, as `Upgrader::run` would.

use upshift::fetch::{Fetcher, TrustPolicy};

/// The policy `Upgrader::allow_insecure_transport(true)` hands fetchers: no key, plain transport
/// allowed.
pub const LOOPBACK_POLICY: TrustPolicy = TrustPolicy {
    signature_required: false,
    allow_insecure_transport: true,
};

/// `fetcher.loopback()`: the fetcher with the opt-in for plain `http://` applied, ready for a
/// loopback test server. Panics (a test helper) if the fetcher refuses even that policy.
pub trait Loopback: Sized {
    /// Applies [`LOOPBACK_POLICY`] and returns the fetcher.
    fn loopback(self) -> Self;
}

impl<F: Fetcher> Loopback for F {
    fn loopback(mut self) -> Self {
        if let Err(e) = self.apply_policy(&LOOPBACK_POLICY) {
            panic!("{} refused the loopback opt-in: {e}", self.name());
        }
        self
    }
}
