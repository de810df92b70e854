//! Signed release metadata: what a release's minisign signature binds besides its bytes.
//!
//! A detached minisign signature proves only that the key once signed these bytes. Its *trusted
//! comment* is signed too (minisign's global signature covers the file's signature and the
//! comment), so upshift puts there what a replayed or mixed-up release would get wrong: the
//! product, the version, the target triple and the sha256 of the published file. With a key
//! configured, the master reads the comment **before** downloading anything and refuses a release
//! for another product, another target, or a version at or below its floor; after the download,
//! the signature check proves the comment is the publisher's, and the published file's sha256 is
//! compared with the signed one.
//!
//! The comment is minisign's own format, fields separated by tabs:
//!
//! ```text
//! timestamp:1764770000	file:app	product:app	version:1.4.0	target:x86_64-unknown-linux-gnu	sha256:9f86…
//! ```
//!
//! A [delta patch](crate::delta)'s signature says the same of the patch (its own `sha256`, the
//! release's product, version and target) and adds `base:`, the sha256 of the build the patch
//! applies to:
//!
//! ```text
//! timestamp:1764770000	file:app.from-0f1e….bidiff.zst	product:app	version:1.4.0	target:…	sha256:5d41…	base:0f1e…
//! ```
//!
//! A master reading a signature as a full release's refuses one with `base:` (`vouch` here), so
//! a patch's signature cannot pass for a release's. Masters from before delta releases ignore
//! the field, as every field they do not know, and never download a patch: its name is not the
//! release's, and the GitHub fetcher passes over `.zst` assets.
//!
//! `upshift-publish --sign` writes it. By hand (bash), after computing the sha256:
//!
//! ```text
//! minisign -S -m app -t $'product:app\tversion:1.4.0\ttarget:x86_64-unknown-linux-gnu\tsha256:9f86…'
//! ```

// The format's fields are tab-separated: the example above shows real tabs, as they are signed.
#![allow(clippy::tabs_in_doc_comments)]

use std::fmt;

use super::version::parse_version;

/// The target triple this build of upshift was compiled for: the default target a signed release
/// must name ([`Upgrader::target`](crate::Upgrader::target)).
pub const BUILD_TARGET: &str = env!("UPSHIFT_BUILD_TARGET");

/// The longest trusted comment read: a release's metadata is a few hundred bytes.
const MAX_COMMENT: usize = 4096;

/// What a signed release says about itself, read from (or written to) its signature's trusted
/// comment.
///
/// ```
/// use upshift::release::SignedMetadata;
///
/// let meta = SignedMetadata {
///     product: "app".into(),
///     version: "1.4.0".into(),
///     target: "x86_64-unknown-linux-gnu".into(),
///     sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
///     base: None,
/// };
/// let comment = meta.to_trusted_comment(1_764_770_000, "app").unwrap();
/// assert!(comment.starts_with("timestamp:1764770000\tfile:app\tproduct:app\tversion:1.4.0"));
/// assert_eq!(SignedMetadata::from_trusted_comment(&comment).unwrap(), meta);
/// // minisign's default comment carries none of it.
/// assert!(SignedMetadata::from_trusted_comment("timestamp:1764770000\tfile:app").is_err());
/// ```
///
/// A delta patch's, which names the build it applies to:
///
/// ```
/// use upshift::release::SignedMetadata;
///
/// let old_build = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
/// let patch = SignedMetadata {
///     product: "app".into(),
///     version: "1.4.0".into(),
///     target: "x86_64-unknown-linux-gnu".into(),
///     sha256: "5d41402abc4b2a76b9719d911017c592ae2a6b1f2bd7d8ba1f6c0b52ac0d2b4d".into(),
///     base: Some(old_build.into()),
/// };
/// let name = upshift::delta::patch_name("app", old_build);
/// let comment = patch.to_trusted_comment(1_764_770_000, &name).unwrap();
/// assert!(comment.ends_with(&format!("\tbase:{old_build}")));
/// assert_eq!(SignedMetadata::from_trusted_comment(&comment).unwrap(), patch);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedMetadata {
    /// The product: the installed binary's file name unless configured
    /// ([`Upgrader::product`](crate::Upgrader::product)).
    pub product: String,
    /// The release's semantic version (`1.4.0` or `v1.4.0`).
    pub version: String,
    /// The target triple the binary is built for (`x86_64-unknown-linux-gnu`).
    pub target: String,
    /// The lower-case hex sha256 of the published file (the archive, for archives; the patch,
    /// for a delta patch).
    pub sha256: String,
    /// For a [delta patch](crate::delta) only: the lower-case hex sha256 of the build it
    /// applies to (`base:` in the comment). `None` for a full release.
    pub base: Option<String>,
}

/// Why a trusted comment is not usable release metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// A required field is absent (a signature made without upshift's metadata).
    #[error(
        "the signature's trusted comment has no {0} field; sign releases with `upshift-publish \
         --sign` (or `minisign -S -t` with product:, version:, target: and sha256: fields)"
    )]
    Missing(&'static str),
    /// A field appears twice: which one counts would be a guess.
    #[error("the signature's trusted comment names {0} twice")]
    Duplicate(String),
    /// A field's value is not usable.
    #[error("the signature's trusted comment has an invalid {field}: {value:?} ({why})")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Its value, as written.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl SignedMetadata {
    /// The trusted comment `upshift-publish` signs: minisign's `timestamp` and `file`, then the
    /// metadata, separated by tabs.
    ///
    /// # Errors
    /// A field that would not read back (empty, or holding a tab, line break or control
    /// character; a version that is not semantic; a sha256 that is not 64 hex digits).
    pub fn to_trusted_comment(&self, timestamp: u64, file: &str) -> Result<String, MetadataError> {
        self.validate()?;
        check_text("file", file)?;
        let base = match &self.base {
            Some(base) => format!("\tbase:{base}"),
            None => String::new(),
        };
        Ok(format!(
            "timestamp:{timestamp}\tfile:{file}\tproduct:{}\tversion:{}\ttarget:{}\tsha256:{}{base}",
            self.product, self.version, self.target, self.sha256
        ))
    }

    /// Reads the metadata from a trusted comment (without its `trusted comment: ` prefix).
    /// Fields it does not know (`timestamp`, `file`, anything else) are ignored; each of its own
    /// must appear exactly once, `base` at most once.
    ///
    /// # Errors
    /// A missing, repeated or invalid field.
    pub fn from_trusted_comment(comment: &str) -> Result<SignedMetadata, MetadataError> {
        if comment.len() > MAX_COMMENT {
            return Err(MetadataError::Invalid {
                field: "comment",
                value: format!("{}…", comment.chars().take(40).collect::<String>()),
                why: "longer than 4096 bytes",
            });
        }
        let mut fields: [(&'static str, Option<&str>); 5] = [
            ("product", None),
            ("version", None),
            ("target", None),
            ("sha256", None),
            ("base", None),
        ];
        for part in comment.split('\t') {
            let Some((key, value)) = part.split_once(':') else {
                continue;
            };
            if let Some((name, slot)) = fields.iter_mut().find(|(name, _)| *name == key.trim()) {
                if slot.is_some() {
                    return Err(MetadataError::Duplicate((*name).to_string()));
                }
                *slot = Some(value.trim());
            }
        }
        let [product, version, target, sha256, (_, base)] = fields;
        let take = |(name, value): (&'static str, Option<&str>)| {
            value
                .map(str::to_string)
                .ok_or(MetadataError::Missing(name))
        };
        let meta = SignedMetadata {
            product: take(product)?,
            version: take(version)?,
            target: take(target)?,
            sha256: take(sha256)?.to_ascii_lowercase(),
            base: base.map(str::to_ascii_lowercase),
        };
        meta.validate()?;
        Ok(meta)
    }

    fn validate(&self) -> Result<(), MetadataError> {
        check_text("product", &self.product)?;
        check_text("target", &self.target)?;
        check_text("version", &self.version)?;
        if parse_version(&self.version).is_none() {
            return Err(MetadataError::Invalid {
                field: "version",
                value: self.version.clone(),
                why: "not a semantic version such as 1.4.0",
            });
        }
        check_sha256("sha256", &self.sha256)?;
        if let Some(base) = &self.base {
            check_sha256("base", base)?;
        }
        Ok(())
    }
}

fn check_sha256(field: &'static str, value: &str) -> Result<(), MetadataError> {
    if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(MetadataError::Invalid {
            field,
            value: value.to_string(),
            why: "not 64 hex digits",
        });
    }
    Ok(())
}

fn check_text(field: &'static str, value: &str) -> Result<(), MetadataError> {
    let why = if value.trim().is_empty() {
        "empty"
    } else if value.chars().any(char::is_control) {
        "holds a tab, line break or control character"
    } else if value.trim() != value {
        "has surrounding spaces"
    } else {
        return Ok(());
    };
    Err(MetadataError::Invalid {
        field,
        value: value.to_string(),
        why,
    })
}

/// What a signed release must say to be installed here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expected {
    pub(crate) product: String,
    pub(crate) target: String,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "product {} for {}", self.product, self.target)
    }
}

/// Reads a release's signed metadata before its body is read, and checks what can be checked
/// without the body: the product, the target, and that a version the source states (a GitHub
/// tag) is the signed one. Returns the metadata, whose version the pipeline then holds against
/// the floor, or the reason to refuse.
///
/// The comment is not yet proven here: a forged one can only make the release be refused early,
/// never accepted, because the signature check after the download covers it.
pub(crate) fn vouch(
    signature: Option<&str>,
    source_version: Option<&str>,
    expected: &Expected,
) -> Result<SignedMetadata, String> {
    let Some(text) = signature else {
        // The pipeline's own check says this one, with the fix.
        return Err(crate::InstallError::Unsigned.to_string());
    };
    let signature = minisign_verify::Signature::decode(text)
        .map_err(|e| format!("cannot read the release's minisign signature: {e}"))?;
    let meta = SignedMetadata::from_trusted_comment(signature.trusted_comment())
        .map_err(|e| e.to_string())?;
    if let Some(base) = &meta.base {
        return Err(format!(
            "the signature is a delta patch's (it names the build it applies to, base {}…), not \
             a full release's: the release's own .minisig was replaced by a patch's",
            &base[..12]
        ));
    }
    if meta.product != expected.product {
        return Err(format!(
            "the release is signed for product {:?}, not {:?} (another product signed with the \
             same key; set Upgrader::product if this host's product name differs from the \
             binary's file name)",
            meta.product, expected.product
        ));
    }
    if meta.target != expected.target {
        return Err(format!(
            "the release is signed as a build for {}, but this host runs {} (another \
             platform's build; set Upgrader::target to accept another triple on purpose)",
            meta.target, expected.target
        ));
    }
    if let Some(stated) = source_version {
        if parse_version(stated) != parse_version(&meta.version) {
            return Err(format!(
                "the source names this release {stated}, but its signature says version {} \
                 (a signature taken from another release)",
                meta.version
            ));
        }
    }
    Ok(meta)
}

/// Checks, before a delta patch is downloaded, that its signed metadata binds it to the release
/// it rebuilds: the same product, version and target as the release's own signed metadata
/// (`release_comment`), the build it applies to (`base`), and its own sha256 (`patch_sha256`,
/// from its checksum). The comments are proven later: the patch's signature when it is staged,
/// the release's when the rebuilt bytes are checked; a forged comment can only make the patch go
/// unused.
pub(crate) fn vouch_patch(
    release_comment: &str,
    patch_comment: &str,
    base: &str,
    patch_sha256: &str,
) -> Result<(), String> {
    let release = SignedMetadata::from_trusted_comment(release_comment)
        .map_err(|e| format!("the release's signature: {e}"))?;
    let patch = SignedMetadata::from_trusted_comment(patch_comment)
        .map_err(|e| format!("the patch's signature: {e}"))?;
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    if !patch.base.as_deref().is_some_and(|b| same(b, base)) {
        return Err(format!(
            "the patch's signature names base {:?}, not the build it would be applied to ({base})",
            patch.base
        ));
    }
    if !same(&patch.sha256, patch_sha256) {
        return Err(format!(
            "the patch's signature names sha256 {}, but its checksum is {patch_sha256}",
            patch.sha256
        ));
    }
    if patch.product != release.product
        || patch.target != release.target
        || parse_version(&patch.version) != parse_version(&release.version)
    {
        return Err(format!(
            "the patch is signed for {} {} ({}), the release for {} {} ({}): a patch of another \
             release",
            patch.product,
            patch.version,
            patch.target,
            release.product,
            release.version,
            release.target
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "signed_tests.rs"]
mod tests;
