use super::*;

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn meta(product: &str, version: &str, target: &str) -> SignedMetadata {
    SignedMetadata {
        product: product.into(),
        version: version.into(),
        target: target.into(),
        sha256: SHA.into(),
        base: None,
    }
}

fn expected() -> Expected {
    Expected {
        product: "app".into(),
        target: "x86_64-unknown-linux-gnu".into(),
    }
}

/// A real minisign signature over `data` whose trusted comment is `comment`.
fn signed(comment: &str) -> String {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let data = std::io::Cursor::new(b"the release".to_vec());
    minisign::sign(Some(&kp.pk), &kp.sk, data, Some(comment), None)
        .unwrap()
        .into_string()
}

#[test]
fn the_comment_reads_back_and_ignores_minisigns_own_fields() {
    let m = meta("app", "v1.4.0-rc.1", "aarch64-apple-darwin");
    let comment = m.to_trusted_comment(7, "app-aarch64.tar.gz").unwrap();
    assert_eq!(SignedMetadata::from_trusted_comment(&comment).unwrap(), m);
    // Order does not matter; unknown fields are ignored; the hex is read in any case.
    let shuffled = format!(
        "sha256:{}\tnote:built by ci\tversion:1.4.0\ttarget:t\tproduct:app",
        SHA.to_ascii_uppercase()
    );
    let read = SignedMetadata::from_trusted_comment(&shuffled).unwrap();
    assert_eq!(read.sha256, SHA);
    assert_eq!(read.version, "1.4.0");
}

#[test]
fn a_comment_without_all_four_fields_or_with_one_twice_is_refused() {
    let plain = "timestamp:1764770000\tfile:app\tprehashed";
    let err = SignedMetadata::from_trusted_comment(plain).unwrap_err();
    assert_eq!(err, MetadataError::Missing("product"));
    assert!(err.to_string().contains("upshift-publish --sign"), "{err}");
    let twice = format!("product:app\tversion:1.0.0\ttarget:t\tsha256:{SHA}\tversion:9.0.0");
    assert_eq!(
        SignedMetadata::from_trusted_comment(&twice).unwrap_err(),
        MetadataError::Duplicate("version".into())
    );
    let no_sha = "product:app\tversion:1.0.0\ttarget:t";
    assert_eq!(
        SignedMetadata::from_trusted_comment(no_sha).unwrap_err(),
        MetadataError::Missing("sha256")
    );
}

#[test]
fn invalid_values_are_refused_when_read_and_when_written() {
    for (comment, field) in [
        (
            format!("product:app\tversion:latest\ttarget:t\tsha256:{SHA}"),
            "version",
        ),
        (
            "product:app\tversion:1.0.0\ttarget:t\tsha256:abc".to_string(),
            "sha256",
        ),
        (
            format!("product:\tversion:1.0.0\ttarget:t\tsha256:{SHA}"),
            "product",
        ),
    ] {
        match SignedMetadata::from_trusted_comment(&comment) {
            Err(MetadataError::Invalid { field: f, .. }) => assert_eq!(f, field, "{comment}"),
            other => panic!("{comment}: {other:?}"),
        }
    }
    let long = format!(
        "product:{}\tversion:1.0.0\ttarget:t\tsha256:{SHA}",
        "a".repeat(5000)
    );
    assert!(SignedMetadata::from_trusted_comment(&long).is_err());
    // A tab in a value would split into another field when read back: refused when written.
    let sneaky = meta("app\tversion:9.9.9", "1.0.0", "t");
    assert!(matches!(
        sneaky.to_trusted_comment(1, "app"),
        Err(MetadataError::Invalid {
            field: "product",
            ..
        })
    ));
    assert!(meta("app", "1.0.0", "t")
        .to_trusted_comment(1, "a\nb")
        .is_err());
}

#[test]
fn vouch_refuses_another_product_another_target_and_a_mismatched_tag() {
    let good = meta("app", "1.4.0", "x86_64-unknown-linux-gnu");
    let sig = signed(&good.to_trusted_comment(1, "app").unwrap());
    assert_eq!(vouch(Some(&sig), None, &expected()).unwrap(), good);
    assert_eq!(
        vouch(Some(&sig), Some("v1.4.0"), &expected()).unwrap(),
        good
    );

    let tag = vouch(Some(&sig), Some("v1.5.0"), &expected()).unwrap_err();
    assert!(tag.contains("v1.5.0") && tag.contains("1.4.0"), "{tag}");

    let other = meta("billing", "1.4.0", "x86_64-unknown-linux-gnu");
    let sig = signed(&other.to_trusted_comment(1, "billing").unwrap());
    let why = vouch(Some(&sig), None, &expected()).unwrap_err();
    assert!(
        why.contains("\"billing\"") && why.contains("Upgrader::product"),
        "{why}"
    );

    let arm = meta("app", "1.4.0", "aarch64-unknown-linux-gnu");
    let sig = signed(&arm.to_trusted_comment(1, "app").unwrap());
    let why = vouch(Some(&sig), None, &expected()).unwrap_err();
    assert!(
        why.contains("aarch64-unknown-linux-gnu") && why.contains("x86_64"),
        "{why}"
    );

    let plain = signed("timestamp:1\tfile:app");
    let why = vouch(Some(&plain), None, &expected()).unwrap_err();
    assert!(why.contains("no product field"), "{why}");

    let why = vouch(None, None, &expected()).unwrap_err();
    assert!(why.contains("not signed"), "{why}");
    let why = vouch(Some("garbage"), None, &expected()).unwrap_err();
    assert!(why.contains("cannot read"), "{why}");
}

#[test]
fn a_patch_names_its_base_once_and_a_full_release_none() {
    let base = "0F1E2D3C4B5A69788796A5B4C3D2E1F00F1E2D3C4B5A69788796A5B4C3D2E1F0";
    let full = format!("product:app\tversion:1.0.0\ttarget:t\tsha256:{SHA}");
    assert_eq!(
        SignedMetadata::from_trusted_comment(&full).unwrap().base,
        None
    );
    let patch = SignedMetadata::from_trusted_comment(&format!("{full}\tbase:{base}")).unwrap();
    assert_eq!(patch.base.as_deref(), Some(&*base.to_ascii_lowercase()));
    let twice = format!("{full}\tbase:{base}\tbase:{base}");
    assert_eq!(
        SignedMetadata::from_trusted_comment(&twice).unwrap_err(),
        MetadataError::Duplicate("base".into())
    );
    match SignedMetadata::from_trusted_comment(&format!("{full}\tbase:abc")) {
        Err(MetadataError::Invalid { field: "base", .. }) => {}
        other => panic!("{other:?}"),
    }
    let mut m = meta("app", "1.0.0", "t");
    m.base = Some("xyz".into());
    assert!(m.to_trusted_comment(1, "app").is_err());
}

#[test]
fn vouch_refuses_a_patchs_signature_for_a_full_release() {
    let mut patch = meta("app", "1.4.0", "x86_64-unknown-linux-gnu");
    patch.base = Some(SHA.into());
    let sig = signed(&patch.to_trusted_comment(1, "app").unwrap());
    let why = vouch(Some(&sig), None, &expected()).unwrap_err();
    assert!(why.contains("delta patch"), "{why}");
}

#[test]
fn the_build_target_is_a_triple() {
    assert!(BUILD_TARGET.split('-').count() >= 3, "{BUILD_TARGET}");
}

#[test]
fn a_patch_is_vouched_for_only_as_the_patch_of_this_release_and_base() {
    const PATCH: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";
    const BASE: &str = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";
    let release = meta("app", "1.4.0", "x86_64-unknown-linux-gnu");
    let release_comment = release.to_trusted_comment(7, "app").unwrap();
    let patch = |edit: &dyn Fn(&mut SignedMetadata)| {
        let mut m = release.clone();
        m.sha256 = PATCH.into();
        m.base = Some(BASE.into());
        edit(&mut m);
        m.to_trusted_comment(7, "app.from-ab12ab12ab12ab12.bidiff.zst")
            .unwrap()
    };
    assert_eq!(
        vouch_patch(&release_comment, &patch(&|_| {}), BASE, PATCH),
        Ok(())
    );
    let refused = [
        ("no base", patch(&|m| m.base = None)),
        ("another base", patch(&|m| m.base = Some(SHA.into()))),
        ("another patch", patch(&|m| m.sha256 = SHA.into())),
        ("another product", patch(&|m| m.product = "other".into())),
        ("another version", patch(&|m| m.version = "1.3.9".into())),
        (
            "another target",
            patch(&|m| m.target = "aarch64-apple-darwin".into()),
        ),
        ("no metadata", "timestamp:7\tfile:app.from".to_string()),
    ];
    for (what, comment) in refused {
        assert!(
            vouch_patch(&release_comment, &comment, BASE, PATCH).is_err(),
            "{what} was vouched for"
        );
    }
}
