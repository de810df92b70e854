//! Detached minisign signatures, as upshift's install pipeline verifies them (with
//! `minisign-verify`, which accepts only prehashed signatures: minisign's `ED` algorithm, the
//! only one the `minisign` crate's `sign` writes).

use std::fs::File;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use minisign::{PublicKey, SecretKey, SecretKeyBox};
use upshift::release::SignedMetadata;

use crate::config::SignConfig;
use crate::Error;

/// Bytes of a decoded secret key: algorithm, KDF, checksum algorithm, salt, limits, key id,
/// key, checksum.
const SECRET_KEY_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;
/// Bytes of a decoded public key: algorithm, key id, key.
const PUBLIC_KEY_LEN: usize = 2 + 8 + 32;

/// A loaded (decrypted) secret key, with the public key derived from it.
pub struct Signer {
    sk: SecretKey,
    pk: PublicKey,
    trusted_comment: Option<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

fn key_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Key {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// What the key file holds, told from its second line's decoded bytes.
enum KeyKind {
    Unencrypted,
    Encrypted,
    Public,
    Unknown,
}

fn kind_of(text: &str) -> KeyKind {
    let Some(line) = text.lines().nth(1) else {
        return KeyKind::Unknown;
    };
    let Ok(bytes) = aws_smithy_types::base64::decode(line.trim()) else {
        return KeyKind::Unknown;
    };
    match (bytes.len(), bytes.get(..2), bytes.get(2..4)) {
        (PUBLIC_KEY_LEN, Some(b"Ed"), _) => KeyKind::Public,
        (SECRET_KEY_LEN, Some(b"Ed"), Some([0, 0])) => KeyKind::Unencrypted,
        (SECRET_KEY_LEN, Some(b"Ed"), Some(b"Sc")) => KeyKind::Encrypted,
        _ => KeyKind::Unknown,
    }
}

impl Signer {
    /// Reads and, if it is encrypted, decrypts the secret key of `config`. The password comes
    /// only from the environment variable `config.password_env`: never from the command line,
    /// and never from a prompt (a release job has no terminal).
    pub fn load(config: &SignConfig) -> Result<Signer, Error> {
        let path = &config.key;
        let text = std::fs::read_to_string(path)
            .map_err(|e| key_error(path, format!("cannot be read: {e}")))?;
        let var = &config.password_env;
        let sk = match kind_of(&text) {
            KeyKind::Public => {
                return Err(key_error(
                    path,
                    "is a public key; --sign needs the secret key (minisign.key, not \
                     minisign.pub)",
                ))
            }
            KeyKind::Unknown => {
                return Err(key_error(
                    path,
                    "is not a minisign secret key (expected the two-line file that \
                     `minisign -G` writes, such as ~/.minisign/minisign.key)",
                ))
            }
            KeyKind::Unencrypted => SecretKeyBox::from_string(&text)
                .and_then(|b| b.into_unencrypted_secret_key())
                .map_err(|e| key_error(path, format!("cannot be read: {e}")))?,
            KeyKind::Encrypted => {
                // An empty value is a password too (`minisign -G` accepts one).
                let Some(password) = std::env::var_os(var) else {
                    return Err(key_error(
                        path,
                        format!(
                            "is encrypted: put its password in the environment variable {var} \
                             (or name another variable with --password-env)"
                        ),
                    ));
                };
                let password = password.into_string().map_err(|_| {
                    key_error(path, format!("the password in {var} is not valid UTF-8"))
                })?;
                SecretKeyBox::from_string(&text)
                    .and_then(|b| b.into_secret_key(Some(password)))
                    .map_err(|e| match e.kind() {
                        minisign::ErrorKind::Verify => key_error(
                            path,
                            format!("the password in {var} does not decrypt it (wrong password)"),
                        ),
                        _ => key_error(path, format!("cannot be decrypted: {e}")),
                    })?
            }
        };
        let pk = PublicKey::from_secret_key(&sk)
            .map_err(|e| key_error(path, format!("has no usable public key: {e}")))?;
        Ok(Signer {
            sk,
            pk,
            trusted_comment: config.trusted_comment.clone(),
        })
    }

    /// The public key that verifies this key's signatures, base64 (the second line of
    /// `minisign.pub`): what `Upgrader::minisign_public_key` is given.
    pub fn public_key(&self) -> String {
        self.pk.to_base64()
    }

    /// Signs the file at `path`, published as `name`: the text of `name.minisig`. The trusted
    /// comment carries `metadata` (product, version, target and the file's sha256), which a
    /// master with the public key requires and checks. The signature is checked against the
    /// public key before it is returned. Blocking.
    pub fn sign_file(
        &self,
        path: &Path,
        name: &str,
        metadata: &SignedMetadata,
    ) -> Result<String, Error> {
        let sign_error = |reason: String| Error::Sign {
            name: name.to_string(),
            reason,
        };
        let file = File::open(path).map_err(|e| sign_error(format!("{}: {e}", path.display())))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut trusted = metadata
            .to_trusted_comment(now, name)
            .map_err(|e| sign_error(e.to_string()))?;
        if let Some(note) = &self.trusted_comment {
            if note.chars().any(char::is_control) {
                return Err(sign_error(
                    "--trusted-comment must be one line without tabs".into(),
                ));
            }
            trusted.push_str("\tnote:");
            trusted.push_str(note);
        }
        let signature = minisign::sign(Some(&self.pk), &self.sk, file, Some(&trusted), None)
            .map_err(|e| sign_error(e.to_string()))?;
        if !signature.is_prehashed() {
            return Err(sign_error(
                "the signature is not prehashed, which upshift cannot verify".into(),
            ));
        }
        Ok(signature.into_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(key: &Path, env: &str) -> SignConfig {
        SignConfig {
            key: key.to_path_buf(),
            password_env: env.to_string(),
            trusted_comment: Some("built by ci".into()),
            product: "app".into(),
            version: "1.2.0".into(),
        }
    }

    fn metadata(path: &Path) -> SignedMetadata {
        SignedMetadata {
            product: "app".into(),
            version: "1.2.0".into(),
            target: "x86_64-unknown-linux-gnu".into(),
            sha256: crate::artifact::sha256_file(path).unwrap().0,
            base: None,
        }
    }

    #[test]
    fn unencrypted_keys_sign_what_minisign_verify_accepts() {
        let dir = crate::artifact::Staging::new().unwrap();
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let key = dir.path().join("k.key");
        std::fs::write(&key, kp.sk.to_box(None).unwrap().to_string()).unwrap();
        let data = dir.path().join("app");
        std::fs::write(&data, b"the release").unwrap();
        let signer = Signer::load(&config(&key, "UPSHIFT_PUBLISH_TEST_UNSET_VAR")).unwrap();
        assert_eq!(signer.public_key(), kp.pk.to_base64());
        let meta = metadata(&data);
        let sig = signer.sign_file(&data, "app", &meta).unwrap();
        assert!(sig.contains("file:app"), "{sig}");
        let pk = minisign_verify::PublicKey::from_base64(&signer.public_key()).unwrap();
        let parsed = minisign_verify::Signature::decode(&sig).unwrap();
        // The metadata the master requires reads back from the signed comment, note and all.
        assert_eq!(
            SignedMetadata::from_trusted_comment(parsed.trusted_comment()).unwrap(),
            meta
        );
        assert!(parsed.trusted_comment().ends_with("\tnote:built by ci"));
        pk.verify(b"the release", &parsed, false).unwrap();
        assert!(pk.verify(b"another release", &parsed, false).is_err());
    }

    #[test]
    fn wrong_files_are_named() {
        let dir = crate::artifact::Staging::new().unwrap();
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let public = dir.path().join("k.pub");
        std::fs::write(&public, kp.pk.to_box().unwrap().to_string()).unwrap();
        let e = Signer::load(&config(&public, "X")).unwrap_err().to_string();
        assert!(e.contains("is a public key"), "{e}");
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "untrusted comment: x\nnot base64 at all\n").unwrap();
        let e = Signer::load(&config(&junk, "X")).unwrap_err().to_string();
        assert!(e.contains("not a minisign secret key"), "{e}");
        let e = Signer::load(&config(&dir.path().join("missing"), "X"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be read"), "{e}");
    }
}
