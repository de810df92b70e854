//! The command line: flags parsed into a [`Config`]. Hand-rolled, like the workspace's other
//! binaries: a dozen flags do not need a parser crate, and errors name the flag at fault.

use std::path::PathBuf;
use std::time::Duration;

use crate::artifact::Archive;
use crate::config::{
    ChecksumMode, Config, Destination, GithubConfig, S3Config, Secret, SignConfig, MIN_PART_SIZE,
};
use crate::Error;

/// The usage text printed by `--help` and after a usage error.
pub const USAGE: &str = "\
usage: upshift-publish BINARY --dir DIR [OPTIONS]
       upshift-publish BINARY --github OWNER/REPO --tag TAG [OPTIONS]
       upshift-publish BINARY --s3 s3://BUCKET/KEY [OPTIONS]

Publishes BINARY (a built executable) as a release in the shape upshift's fetchers read:
optionally archived, with its sha256 (NAME.sha256 and/or SHA256SUMS) and an optional minisign
signature (NAME.minisig), written so that no fetcher ever sees the new file with a stale
checksum. Prints what it published on stdout; progress and logs go to stderr.

Destination (exactly one):
  --dir DIR                 write DIR/NAME (FileFetcher on DIR/NAME; HttpFetcher when a web
                            server serves DIR): checksum and signature first, then the file
                            through a temporary file, fsync and rename
  --github OWNER/REPO       upload to the release tagged --tag (created if missing, as a draft
                            that is published once every asset is up)
  --s3 s3://BUCKET/KEY      upload to S3; a KEY ending in / is a prefix that NAME is added to

What is published:
  --name NAME               the published name; `{target}` in it is replaced by --target
                            (default: BINARY's file name, plus `-{target}` for --github; the
                            key's last part for --s3; plus the archive's extension)
  --target TRIPLE           the platform the binary is for, named in GitHub asset names so the
                            GitHub fetcher picks it (default: TARGET_DEFAULT)
  --archive FORMAT          raw (default), gz, tar.gz or zip
  --archive-entry NAME      the executable's name inside a tar.gz or zip (default: BINARY's name)
  --delta-from OLD          also publish a delta patch from the previous build OLD (a binary
                            published before) to BINARY, as NAME.from-<OLD's sha256, 16 hex
                            digits>.bidiff.zst with its own checksum and signature (signed with
                            base:<OLD's sha256>), uploaded before NAME; repeat for more builds.
                            Raw releases only; a patch not under 90 % of BINARY is skipped
  --checksum WHAT           sidecar (NAME.sha256, the default), sums (a SHA256SUMS list beside
                            NAME, updated in place), both, or none
  --sums-name NAME          the checksum list's name (default SHA256SUMS)
  --sign KEYFILE            sign with this minisign secret key (NAME.minisig); the password of an
                            encrypted key is read from $MINISIGN_PASSWORD, never from a flag
  --password-env VAR        read the key's password from $VAR instead
  --product NAME            with --sign: the product the signature binds the release to; the
                            master refuses a release signed for another product (default:
                            BINARY's file name; upshift's default is the installed binary's)
  --version VERSION         with --sign: the release's semantic version, signed so that a
                            master never installs one at or below what it runs (default: a
                            --tag that is a version, else ./Cargo.toml's package version)
  --trusted-comment TEXT    with --sign: a note added to the signed metadata (one line)

GitHub:
  --tag TAG                 the release's tag (required)
  --github-api URL          the API base (default https://api.github.com; GitHub Enterprise:
                            https://HOST/api/v3)
  --github-token-file FILE  read the token from FILE (default: $GITHUB_TOKEN); it needs write
                            access to the repository's contents; it is never logged
  --release-name TEXT       a new release's title (default: TAG)
  --notes TEXT              a new release's description
  --draft                   leave a new release as a draft
  --prerelease              mark a new release as a prerelease
  --replace                 replace assets of the same names (default: refuse and change nothing)

S3:
  --s3-endpoint URL         a custom endpoint (MinIO, R2, Ceph, s3s-fs); implies path-style
  --virtual-hosted          bucket.host addressing even with --s3-endpoint
  --region REGION           the region (default: the AWS chain, else us-east-1)
  --s3-profile NAME         the AWS profile for credentials and region
  --s3-access-key-id ID     explicit credentials: this key id, the secret from
                            $AWS_SECRET_ACCESS_KEY (default: the standard AWS chain)
  --s3-secret-env VAR       with --s3-access-key-id: read the secret from $VAR instead
  --part-size MIB           multipart upload above one part of this size (default 16, min 5)

Output:
  -q, --quiet               no progress, only warnings and errors on stderr
  -v, --verbose             debug logs (RUST_LOG overrides both)
  --timeout SECS            how long a request may go without progress (default 60)
  -h, --help                this text
  -V, --version             this tool's version (--version alone)";

/// The usage text with this build's default target filled in.
pub fn usage() -> String {
    USAGE.replace("TARGET_DEFAULT", crate::TARGET)
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// `--help`.
    Help,
    /// `--version`.
    Version,
    /// Publish.
    Publish(Box<Config>),
}

const DEFAULT_PART_MIB: u64 = 16;
const DEFAULT_API: &str = "https://api.github.com";

fn usage_error(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

/// Reads a secret from the environment: `None` if unset or empty.
fn env_secret(var: &str) -> Option<Secret> {
    std::env::var(var)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .map(Secret)
}

/// Parses the arguments (without the program name). The environment supplies `GITHUB_TOKEN`
/// and the S3 secret; the key password is read only when signing.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, Error> {
    let args: Vec<String> = args.into_iter().collect();
    if args == ["--version"] {
        return Ok(Command::Version);
    }
    let mut it = args.into_iter();
    let mut version = None;
    let mut product = None;
    let mut binary: Option<PathBuf> = None;
    let mut dir = None;
    let mut github = None;
    let mut s3 = None;
    let mut name = None;
    let mut target = crate::TARGET.to_string();
    let mut archive = Archive::Raw;
    let mut archive_entry = None;
    let mut delta_from: Vec<PathBuf> = Vec::new();
    let mut checksum = ChecksumMode::Sidecar;
    let mut sums_name = "SHA256SUMS".to_string();
    let mut sign_key: Option<PathBuf> = None;
    let mut password_env = "MINISIGN_PASSWORD".to_string();
    let mut trusted_comment = None;
    let mut tag = None;
    let mut api = DEFAULT_API.to_string();
    let mut token_file: Option<PathBuf> = None;
    let mut release_name = None;
    let mut notes = None;
    let (mut draft, mut prerelease, mut replace) = (false, false, false);
    let mut endpoint = None;
    let mut path_style = None;
    let mut region = None;
    let mut profile = None;
    let mut access_key_id = None;
    let mut secret_env = "AWS_SECRET_ACCESS_KEY".to_string();
    let mut part_mib = DEFAULT_PART_MIB;
    let (mut quiet, mut verbose) = (false, false);
    let mut timeout = Duration::from_secs(60);
    let mut seen: Vec<String> = Vec::new();

    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if !flag.starts_with('-') {
            if binary.is_some() {
                return Err(usage_error(format!(
                    "unexpected argument {arg:?}: BINARY was given already"
                )));
            }
            binary = Some(PathBuf::from(arg));
            continue;
        }
        // --delta-from is the one flag given once per previous build.
        if seen.contains(&flag) && flag != "--delta-from" {
            return Err(usage_error(format!("{flag} is given twice")));
        }
        seen.push(flag.clone());
        let mut value = || -> Result<String, Error> {
            match inline.clone().or_else(|| it.next()) {
                Some(v) => Ok(v),
                None => Err(usage_error(format!("{flag} needs a value"))),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" => return Ok(Command::Version),
            "--version" => version = Some(value()?),
            "--product" => product = Some(value()?),
            "-q" | "--quiet" => quiet = true,
            "-v" | "--verbose" => verbose = true,
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--github" => github = Some(value()?),
            "--s3" => s3 = Some(value()?),
            "--name" => name = Some(value()?),
            "--target" => target = value()?,
            "--archive" => {
                let v = value()?;
                archive = Archive::parse(&v).ok_or_else(|| {
                    usage_error(format!("--archive {v:?}: expected raw, gz, tar.gz or zip"))
                })?;
            }
            "--archive-entry" => archive_entry = Some(value()?),
            "--delta-from" => delta_from.push(PathBuf::from(value()?)),
            "--checksum" => {
                checksum = match value()?.as_str() {
                    "sidecar" => ChecksumMode::Sidecar,
                    "sums" => ChecksumMode::Sums,
                    "both" => ChecksumMode::Both,
                    "none" => ChecksumMode::None,
                    other => {
                        return Err(usage_error(format!(
                            "--checksum {other:?}: expected sidecar, sums, both or none"
                        )))
                    }
                }
            }
            "--sums-name" => sums_name = value()?,
            "--sign" => sign_key = Some(PathBuf::from(value()?)),
            "--password-env" => password_env = value()?,
            "--trusted-comment" => trusted_comment = Some(value()?),
            "--tag" => tag = Some(value()?),
            "--github-api" => api = value()?.trim().trim_end_matches('/').to_string(),
            "--github-token-file" => token_file = Some(PathBuf::from(value()?)),
            "--github-token" => {
                return Err(usage_error(
                    "--github-token is not accepted: a token on the command line is visible to \
                     every user of the machine; set GITHUB_TOKEN or use --github-token-file",
                ))
            }
            "--release-name" => release_name = Some(value()?),
            "--notes" => notes = Some(value()?),
            "--draft" => draft = true,
            "--prerelease" => prerelease = true,
            "--replace" => replace = true,
            "--s3-endpoint" => endpoint = Some(value()?),
            "--virtual-hosted" => path_style = Some(false),
            "--region" => region = Some(value()?),
            "--s3-profile" => profile = Some(value()?),
            "--s3-access-key-id" => access_key_id = Some(value()?),
            "--s3-secret-env" => secret_env = value()?,
            "--part-size" => {
                let v = value()?;
                part_mib = v
                    .parse()
                    .map_err(|_| usage_error(format!("--part-size {v:?}: not a number of MiB")))?;
            }
            "--timeout" => {
                let v = value()?;
                let secs: f64 = v.parse().map_err(|_| {
                    usage_error(format!("--timeout {v:?}: not a number of seconds"))
                })?;
                if !secs.is_finite() || secs <= 0.0 {
                    return Err(usage_error(format!("--timeout {v:?}: must be positive")));
                }
                timeout = Duration::from_secs_f64(secs);
            }
            other => return Err(usage_error(format!("unknown flag {other}"))),
        }
    }

    let binary =
        binary.ok_or_else(|| usage_error("BINARY (the executable to publish) is missing"))?;
    let is_flag = |f: &str| seen.iter().any(|s| s == f);
    let destinations = [dir.is_some(), github.is_some(), s3.is_some()];
    let destination = match destinations.iter().filter(|d| **d).count() {
        0 => return Err(usage_error("say where to publish: --dir, --github or --s3")),
        1 => {
            if let Some(dir) = dir {
                Destination::Dir(dir)
            } else if let Some(repo) = github {
                let (owner, name) = parse_repo(&repo)?;
                let tag = tag.ok_or_else(|| usage_error("--github needs --tag TAG"))?;
                if tag.trim().is_empty() || tag.contains(char::is_whitespace) {
                    return Err(usage_error(format!("--tag {tag:?}: not a tag name")));
                }
                let token = match &token_file {
                    Some(path) => Some(read_token_file(path)?),
                    None => env_secret("GITHUB_TOKEN"),
                };
                Destination::Github(GithubConfig {
                    owner,
                    repo: name,
                    tag,
                    api,
                    token,
                    release_name,
                    notes,
                    draft,
                    prerelease,
                    replace,
                })
            } else {
                let url = s3.unwrap_or_default();
                let (bucket, key) = parse_s3_url(&url)?;
                if part_mib.saturating_mul(1024 * 1024) < MIN_PART_SIZE {
                    return Err(usage_error(format!(
                        "--part-size {part_mib}: S3 parts are at least 5 MiB"
                    )));
                }
                let credentials = match access_key_id {
                    None => None,
                    Some(id) => {
                        let secret = env_secret(&secret_env).ok_or_else(|| {
                            usage_error(format!(
                                "--s3-access-key-id needs the secret access key in ${secret_env}"
                            ))
                        })?;
                        Some((id, secret))
                    }
                };
                Destination::S3(S3Config {
                    bucket,
                    key,
                    endpoint,
                    path_style,
                    region,
                    profile,
                    credentials,
                    part_size: part_mib * 1024 * 1024,
                })
            }
        }
        _ => {
            return Err(usage_error(
                "--dir, --github and --s3 exclude each other: publish to one per run",
            ))
        }
    };

    // Flags of another destination are a mistake worth saying, not silently ignoring.
    let github_only = [
        "--tag",
        "--github-api",
        "--github-token-file",
        "--release-name",
        "--notes",
        "--draft",
        "--prerelease",
        "--replace",
    ];
    let s3_only = [
        "--s3-endpoint",
        "--virtual-hosted",
        "--region",
        "--s3-profile",
        "--s3-access-key-id",
        "--s3-secret-env",
        "--part-size",
    ];
    let misplaced = |flags: &[&str], wanted: &str| {
        flags
            .iter()
            .find(|f| is_flag(f))
            .map(|f| usage_error(format!("{f} is for {wanted} only")))
    };
    if !matches!(destination, Destination::Github(_)) {
        if let Some(e) = misplaced(&github_only, "--github") {
            return Err(e);
        }
    }
    if !matches!(destination, Destination::S3(_)) {
        if let Some(e) = misplaced(&s3_only, "--s3") {
            return Err(e);
        }
    }
    if is_flag("--password-env") && sign_key.is_none() {
        return Err(usage_error("--password-env is for --sign only"));
    }
    for flag in ["--trusted-comment", "--version", "--product"] {
        if is_flag(flag) && sign_key.is_none() {
            return Err(usage_error(format!(
                "{flag} is for --sign only: without a signature nothing binds it to the release"
            )));
        }
    }
    if is_flag("--sums-name") && !checksum.sums() {
        return Err(usage_error(
            "--sums-name needs --checksum sums or --checksum both",
        ));
    }
    if archive_entry.is_some() && !matches!(archive, Archive::TarGz | Archive::Zip) {
        return Err(usage_error(
            "--archive-entry is for --archive tar.gz or zip",
        ));
    }
    if !delta_from.is_empty() && archive != Archive::Raw {
        return Err(crate::delta::refused_archive());
    }
    if target.trim().is_empty() || target.contains(['/', ' ']) {
        return Err(usage_error(format!(
            "--target {target:?}: not a target triple"
        )));
    }
    let name = name.map(|n| n.replace("{target}", &target));
    if let Some(n) = &name {
        check_file_name("--name", n)?;
    }
    check_file_name("--sums-name", &sums_name)?;
    if let Some(e) = &archive_entry {
        if e.is_empty() || e.starts_with('/') || e.split('/').any(|p| p == "..") {
            return Err(usage_error(format!(
                "--archive-entry {e:?}: a relative path inside the archive"
            )));
        }
    }
    let sign = match sign_key {
        None => None,
        Some(key) => Some(SignConfig {
            product: signed_product(product, &binary)?,
            version: signed_version(version, tag_of(&destination))?,
            key,
            password_env,
            trusted_comment,
        }),
    };
    Ok(Command::Publish(Box::new(Config {
        binary,
        destination,
        name,
        target,
        archive,
        archive_entry,
        delta_from,
        checksum,
        sums_name,
        sign,
        quiet,
        verbose,
        timeout,
    })))
}

/// The product a signature binds: `--product`, else the binary's file name.
fn signed_product(product: Option<String>, binary: &std::path::Path) -> Result<String, Error> {
    let product = match product {
        Some(p) => p,
        None => binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| usage_error("--sign: BINARY has no file name; pass --product"))?,
    };
    if product.is_empty() || product.trim() != product || product.chars().any(char::is_control) {
        return Err(usage_error(format!(
            "--product {product:?}: one line, without tabs or surrounding spaces"
        )));
    }
    Ok(product)
}

/// The GitHub release's tag, if publishing to one.
fn tag_of(destination: &Destination) -> Option<&str> {
    match destination {
        Destination::Github(g) => Some(g.tag.as_str()),
        _ => None,
    }
}

/// The version a signature binds: `--version`, else a tag that is a version, else the package
/// version in `./Cargo.toml`. A tag that is a version must agree: the GitHub fetcher refuses a
/// release whose tag and signature disagree.
fn signed_version(version: Option<String>, tag: Option<&str>) -> Result<String, Error> {
    let tag_version = tag.filter(|t| upshift::release::parse_version(t).is_some());
    let version = match (version, tag_version) {
        (Some(v), _) => v,
        (None, Some(t)) => t.trim_start_matches(['v', 'V']).to_string(),
        (None, None) => {
            cargo_package_version(std::path::Path::new("Cargo.toml")).map_err(|why| {
                usage_error(format!(
                "--sign needs the release's version: pass --version (it could not be read from \
                 ./Cargo.toml: {why})"
            ))
            })?
        }
    };
    let Some(parsed) = upshift::release::parse_version(&version) else {
        return Err(usage_error(format!(
            "--version {version:?}: not a semantic version such as 1.4.0"
        )));
    };
    if let Some(t) =
        tag_version.filter(|t| upshift::release::parse_version(t) != Some(parsed.clone()))
    {
        return Err(usage_error(format!(
            "--version {version} disagrees with --tag {t}: the GitHub fetcher would refuse the \
             release"
        )));
    }
    Ok(version)
}

/// The `version = "…"` of the `[package]` table of a Cargo manifest.
fn cargo_package_version(manifest: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(manifest).map_err(|e| e.to_string())?;
    let mut in_package = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        let Some(rest) = line.strip_prefix("version") else {
            continue;
        };
        let rest = rest.trim_start();
        if !in_package || !(rest.starts_with('=') || rest.starts_with('.')) {
            continue;
        }
        let value = rest.strip_prefix('=').map(str::trim);
        match value
            .and_then(|v| v.strip_prefix('"'))
            .and_then(|v| v.split('"').next())
        {
            Some(v) => return Ok(v.to_string()),
            None => return Err(format!("its package version is not a plain string: {line}")),
        }
    }
    Err("it has no [package] version".into())
}

/// A published name is one path component.
fn check_file_name(flag: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(usage_error(format!(
            "{flag} {name:?}: a file name, without directories"
        )));
    }
    if name.starts_with('.') {
        return Err(usage_error(format!(
            "{flag} {name:?}: names starting with a dot are hidden (and renamed by GitHub)"
        )));
    }
    Ok(())
}

fn parse_repo(repo: &str) -> Result<(String, String), Error> {
    let ok = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    match repo.trim().split_once('/') {
        Some((o, r)) if ok(o) && ok(r) => Ok((o.to_string(), r.to_string())),
        _ => Err(usage_error(format!(
            "--github {repo:?}: expected OWNER/REPO"
        ))),
    }
}

/// `s3://bucket/key` (or `s3://bucket/prefix/`) into its parts.
fn parse_s3_url(url: &str) -> Result<(String, String), Error> {
    let bad = |why: &str| usage_error(format!("--s3 {url:?}: {why} (expected s3://BUCKET/KEY)"));
    let rest = match url.get(..5) {
        Some(s) if s.eq_ignore_ascii_case("s3://") => &url[5..],
        _ => return Err(bad("it does not start with s3://")),
    };
    let (bucket, key) = rest
        .split_once('/')
        .ok_or_else(|| bad("no key after the bucket"))?;
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'));
    if !bucket_ok {
        return Err(bad("not a bucket name"));
    }
    if key.is_empty() || key.starts_with('/') {
        return Err(bad("no key after the bucket"));
    }
    Ok((bucket.to_string(), key.to_string()))
}

fn read_token_file(path: &PathBuf) -> Result<Secret, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::io(
            format!("reading the GitHub token file {}", path.display()),
            e,
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(usage_error(format!(
            "--github-token-file {}: the file is empty",
            path.display()
        )));
    }
    Ok(Secret(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn config(s: &str) -> Config {
        match parse(args(s)) {
            Ok(Command::Publish(c)) => *c,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn error(s: &str) -> String {
        match parse(args(s)) {
            Err(e) => e.to_string(),
            Ok(c) => panic!("{s}: accepted as {c:?}"),
        }
    }

    #[test]
    fn destinations() {
        let c = config("app --dir /srv/app");
        assert!(
            matches!(c.destination, Destination::Dir(ref d) if d == &PathBuf::from("/srv/app"))
        );
        assert_eq!(c.checksum, ChecksumMode::Sidecar);
        let c = config("app --github acme/app --tag v1.2.3 --draft --github-api=http://x/");
        match c.destination {
            Destination::Github(g) => {
                assert_eq!(
                    (g.owner.as_str(), g.repo.as_str(), g.tag.as_str()),
                    ("acme", "app", "v1.2.3")
                );
                assert!(g.draft && !g.prerelease && !g.replace);
                assert_eq!(g.api, "http://x");
            }
            other => panic!("{other:?}"),
        }
        let c = config(
            "app --s3 s3://releases/app/linux/ --s3-endpoint http://127.0.0.1:9000 --part-size 8",
        );
        match c.destination {
            Destination::S3(s) => {
                assert_eq!(
                    (s.bucket.as_str(), s.key.as_str()),
                    ("releases", "app/linux/")
                );
                assert_eq!(s.part_size, 8 * 1024 * 1024);
                assert!(s.credentials.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mistakes_are_named() {
        assert!(error("--dir /x").contains("BINARY"));
        assert!(error("app").contains("--dir, --github or --s3"));
        assert!(error("app --dir /x --s3 s3://b/k").contains("exclude"));
        assert!(error("app --github acme/app").contains("--tag"));
        assert!(error("app --github acme --tag v1").contains("OWNER/REPO"));
        assert!(error("app --dir /x --tag v1").contains("--tag is for --github"));
        assert!(error("app --dir /x --region eu").contains("--region is for --s3"));
        assert!(error("app --dir /x --archive rar").contains("tar.gz"));
        assert!(error("app --dir /x --name a/b").contains("file name"));
        assert!(error("app --dir /x --name .hidden").contains("dot"));
        assert!(error("app --dir /x --bogus").contains("unknown flag --bogus"));
        assert!(error("app --dir").contains("--dir needs a value"));
        assert!(error("app --dir /x --dir /y").contains("twice"));
        assert!(error("app --s3 http://b/k").contains("s3://"));
        assert!(error("app --s3 s3://b/k").contains("bucket"));
        assert!(error("app --s3 s3://bucket/k --part-size 4").contains("5 MiB"));
        assert!(error("app --dir /x --github-token t").contains("GITHUB_TOKEN"));
        assert!(error("app --dir /x --archive-entry x").contains("tar.gz or zip"));
        assert!(error("app --dir /x --password-env P").contains("--sign"));
        assert!(error("app --dir /x --timeout 0").contains("positive"));
        assert!(error("app --dir /x --archive tar.gz --delta-from old").contains("raw releases"));
        assert!(error("app --dir /x --delta-from").contains("--delta-from needs a value"));
        assert_eq!(
            parse(args("app --dir /x --bogus")).unwrap_err().exit_code(),
            2
        );
    }

    #[test]
    fn delta_from_is_given_once_per_previous_build() {
        let c = config("app --dir /x --delta-from v1 --delta-from=v2");
        assert_eq!(c.delta_from, [PathBuf::from("v1"), PathBuf::from("v2")]);
        assert!(config("app --dir /x").delta_from.is_empty());
    }

    fn signing(s: &str) -> SignConfig {
        config(s).sign.expect("signing")
    }

    #[test]
    fn a_signature_binds_product_and_version() {
        // Defaults: the binary's file name; the tests run in the crate's directory, whose
        // Cargo.toml names the package version.
        let own = env!("CARGO_PKG_VERSION");
        let s = signing("target/release/app --dir /x --sign k.key");
        assert_eq!((s.product.as_str(), s.version.as_str()), ("app", own));
        let s = signing("app --dir /x --sign k.key --product billing --version v2.0.0-rc.1");
        assert_eq!(
            (s.product.as_str(), s.version.as_str()),
            ("billing", "v2.0.0-rc.1")
        );
        // A GitHub tag that is a version is the default, and must agree with --version.
        let s = signing("app --github acme/app --tag v3.1.0 --sign k.key");
        assert_eq!(s.version, "3.1.0");
        assert!(
            error("app --github acme/app --tag v3.1.0 --sign k.key --version 3.2.0")
                .contains("disagrees with --tag v3.1.0")
        );
        assert!(error("app --dir /x --sign k.key --version latest").contains("semantic version"));
        assert!(error("app --dir /x --version 1.0.0").contains("--version is for --sign only"));
        assert!(error("app --dir /x --product p").contains("--product is for --sign only"));
    }

    #[test]
    fn the_package_version_is_read_from_a_manifest() {
        let dir = crate::artifact::Staging::new().unwrap();
        let manifest = dir.path().join("Cargo.toml");
        let write = |text: &str| std::fs::write(&manifest, text).unwrap();
        write("[workspace]\nversion = \"9.9.9\"\n\n[package]\nname = \"app\"\nversion = \"1.4.2\" # x\n");
        assert_eq!(cargo_package_version(&manifest).unwrap(), "1.4.2");
        write("[package]\nname = \"app\"\nversion.workspace = true\n");
        assert!(cargo_package_version(&manifest)
            .unwrap_err()
            .contains("not a plain string"));
        write("[dependencies]\nversion = \"1\"\n");
        assert!(cargo_package_version(&manifest)
            .unwrap_err()
            .contains("no [package] version"));
    }

    #[test]
    fn names_and_help() {
        let c = config("app --dir /x --name app-{target}.tar.gz --archive tar.gz --target aarch64-unknown-linux-musl");
        assert_eq!(
            c.name.as_deref(),
            Some("app-aarch64-unknown-linux-musl.tar.gz")
        );
        assert!(matches!(parse(args("--help")), Ok(Command::Help)));
        assert!(matches!(parse(args("app -V")), Ok(Command::Version)));
        assert!(matches!(parse(args("--version")), Ok(Command::Version)));
        assert!(usage().contains(crate::TARGET));
        let s = format!("{:?}", Secret("ghp_x".into()));
        assert!(!s.contains("ghp_x"));
    }
}
