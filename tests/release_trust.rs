//! Release trust end to end: with a minisign key, whoever controls the release origin but not the
//! key can install nothing old, foreign or tampered. The real master (the fixture as `app`,
//! watching `next` with the File fetcher) is offered releases signed by the right key but bound
//! to the wrong product, the wrong target, no metadata, or a version at or below the floor: each
//! is refused with a reason that says which, the binary stays byte-identical and the old worker
//! keeps serving. A correctly bound release installs and raises the floor, so replaying the
//! build it replaced is refused too.

mod common;

use std::fs;

use common::*;
use upshift::release::BUILD_TARGET;

/// Signs the prepared `next.tmp` with `comment`, publishes it, and asserts the refusal contract;
/// returns the reason.
fn refused_signed(
    rig: &mut Rig,
    stamp: &str,
    sign: impl Fn(&std::path::Path) -> String,
    expected: &[&str],
) -> String {
    let traffic = rig.watch();
    let sha = rig.prepare_build(stamp, 0);
    rig.write_side("next.minisig", sign(&rig.path("next.tmp")).as_bytes());
    let identity = rig.publish_prepared(&sha);
    let reason = rig.wait_rejected(&identity);
    for e in expected {
        rig.expect(
            reason.contains(e),
            format!("the refusal of {stamp} does not say {e:?}: {reason}"),
        );
    }
    std::thread::sleep(HOLD);
    let seen = traffic.stop();
    rig.assert_master_alive(stamp);
    rig.assert_no_temp_files(stamp);
    let bad = seen
        .iter()
        .filter(|o| !matches!(o, Obs::Served { pid, .. } if *pid == rig.base_pid))
        .count();
    rig.expect(
        bad == 0 && seen.len() >= 20,
        format!(
            "{stamp}: {bad} of {} responses did not come from the old worker",
            seen.len()
        ),
    );
    reason
}

#[test]
fn a_signed_release_must_name_this_product_this_target_and_a_newer_version() {
    let mut rig = Rig::new("rt-bound");
    let key = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let pubfile = rig.path("minisign.pub");
    fs::write(&pubfile, key.pk.to_box().unwrap().into_string()).unwrap();
    let pubarg = pubfile.display().to_string();
    rig.start(&["--minisign-pubkey", &pubarg, "--version", "1.0.0"]);
    let k = &key;

    // Another product signed with the same key.
    refused_signed(
        &mut rig,
        "foreign-product",
        |p| sign_for(k, p, "billing", "2.0.0", BUILD_TARGET),
        &["signed for product \"billing\", not \"app\""],
    );
    rig.assert_app_is_original("after a release for another product");
    // Another platform's build.
    refused_signed(
        &mut rig,
        "foreign-target",
        |p| sign_for(k, p, "app", "2.0.0", "riscv64gc-unknown-linux-gnu"),
        &["riscv64gc-unknown-linux-gnu", BUILD_TARGET],
    );
    rig.assert_app_is_original("after another platform's build");
    // Signed with minisign's default comment: nothing binds it.
    refused_signed(
        &mut rig,
        "no-metadata",
        |p| sign_with_comment(k, p, "timestamp:1764770000\tfile:next"),
        &["no product field", "upshift-publish --sign"],
    );
    rig.assert_app_is_original("after a release without metadata");
    // A replayed old build: signed, for this product and target, but older than what runs.
    refused_signed(
        &mut rig,
        "old",
        |p| sign_for(k, p, "app", "0.9.0", BUILD_TARGET),
        &["0.9.0 is not newer than 1.0.0"],
    );
    rig.assert_app_is_original("after a replayed older release");
    // Signed metadata that names another file's sha256: the signature is good, the binding not.
    refused_signed(
        &mut rig,
        "other-sha",
        |p| {
            let meta = upshift::release::SignedMetadata {
                product: "app".into(),
                version: "2.0.0".into(),
                target: BUILD_TARGET.into(),
                sha256: "00".repeat(32),
                base: None,
            };
            sign_with_comment(k, p, &meta.to_trusted_comment(1, "next").unwrap())
        },
        &["signed metadata names sha256 0000"],
    );
    rig.assert_app_is_original("after metadata for another file");

    // Correctly bound: installed, and its version becomes the floor.
    let sha = rig.prepare_build("v1.1", 0);
    rig.write_side(
        "next.minisig",
        sign_for(k, &rig.path("next.tmp"), "app", "1.1.0", BUILD_TARGET).as_bytes(),
    );
    rig.publish_prepared(&sha);
    rig.base_pid = rig.wait_build("v1.1", VERDICT);
    rig.expect(
        file_sha(&rig.app) == sha,
        "app is not the signed 1.1.0 build",
    );

    // A release between the old floor and the new one is a downgrade now.
    let traffic = rig.watch();
    let old = rig.prepare_build("v1.0.5", 0);
    rig.write_side(
        "next.minisig",
        sign_for(k, &rig.path("next.tmp"), "app", "1.0.5", BUILD_TARGET).as_bytes(),
    );
    let identity = rig.publish_prepared(&old);
    let reason = rig.wait_rejected(&identity);
    rig.expect(
        reason.contains("1.0.5 is not newer than 1.1.0"),
        format!("the downgrade's refusal does not name the floor: {reason}"),
    );
    std::thread::sleep(HOLD);
    let seen = traffic.stop();
    rig.expect(
        seen.iter().all(
            |o| matches!(o, Obs::Served { pid, build } if *pid == rig.base_pid && build == "v1.1"),
        ),
        "a response after the downgrade did not come from 1.1.0's worker",
    );
    rig.expect(
        file_sha(&rig.app) == sha,
        "the downgrade changed app on disk",
    );
    rig.expect(
        log_lines_with(rig.m(), &format!("release {identity} rejected: ")).len() == 1,
        "the downgrade was reported more than once",
    );
}
