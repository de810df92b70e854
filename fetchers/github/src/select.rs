//! Choosing what to install: tag patterns, versions from tags, and the asset for this platform.

use semver::Version;

/// The target triple this crate was compiled for (`x86_64-unknown-linux-gnu`, …): what the default
/// asset selection looks for in asset names.
///
/// ```
/// assert!(!upshift_github::TARGET.is_empty());
/// ```
pub const TARGET: &str = env!("UPSHIFT_GITHUB_TARGET");

/// `*` matches any run of characters (also none), `?` exactly one; everything else itself.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it currently absorbs up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A tag filter: a glob (`app-v*`) or, without wildcards, a prefix (`app-v`).
#[derive(Debug, Clone)]
pub(crate) struct TagPattern {
    pattern: String,
    /// The literal part before the first wildcard: stripped from a tag to find its version.
    prefix: String,
    glob: bool,
}

impl TagPattern {
    pub(crate) fn new(pattern: &str) -> TagPattern {
        let cut = pattern.find(['*', '?']).unwrap_or(pattern.len());
        TagPattern {
            pattern: pattern.to_string(),
            prefix: pattern[..cut].to_string(),
            glob: cut < pattern.len(),
        }
    }

    pub(crate) fn matches(&self, tag: &str) -> bool {
        match self.glob {
            true => glob_match(&self.pattern, tag),
            false => tag.starts_with(&self.prefix),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.pattern
    }
}

/// The version a tag names: the tag minus the pattern's prefix (if it has it), minus a leading
/// `v`, parsed as semver (`1.2` and `1` are read as `1.2.0` and `1.0.0`).
pub(crate) fn tag_version(tag: &str, pattern: Option<&TagPattern>) -> Option<Version> {
    let rest = pattern
        .and_then(|p| tag.strip_prefix(p.prefix.as_str()))
        .unwrap_or(tag);
    upshift::release::parse_version(rest)
}

/// What a release asset is, as far as choosing one goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AssetMeta {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub digest: Option<String>,
}

/// Extensions of release files that are not something to install: checksums, signatures,
/// metadata, packages for other installers, compressions the install pipeline cannot unpack.
const NOT_INSTALLABLE: &[&str] = &[
    ".sha256",
    ".sha256sum",
    ".sha512",
    ".sha512sum",
    ".sha1",
    ".md5",
    ".minisig",
    ".sig",
    ".asc",
    ".pem",
    ".crt",
    ".cert",
    ".pub",
    ".key",
    ".sbom",
    ".spdx",
    ".json",
    ".jsonl",
    ".txt",
    ".md",
    ".html",
    ".pdf",
    ".yml",
    ".yaml",
    ".deb",
    ".rpm",
    ".apk",
    ".msi",
    ".dmg",
    ".pkg",
    ".xz",
    ".zst",
    ".bz2",
    ".7z",
    ".sh",
    ".ps1",
    ".whl",
];

/// Whether an asset name is a checksum list (`SHA256SUMS`, goreleaser's `app_1.0_checksums.txt`).
pub(crate) fn is_checksum_list(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == "sha256sums"
        || lower.starts_with("sha256sums.")
        || lower.ends_with("sha256sums")
        || lower.ends_with("sha256sums.txt")
        || lower.ends_with("checksums.txt")
        || lower == "checksums"
}

/// Whether an asset could be the program itself (not a checksum, signature or metadata file).
pub(crate) fn installable(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !is_checksum_list(name) && !NOT_INSTALLABLE.iter().any(|ext| lower.ends_with(ext))
}

/// The platform assets are chosen for.
#[derive(Debug, Clone)]
pub(crate) struct Platform {
    triple: String,
    os_words: Vec<&'static str>,
    arch_words: Vec<String>,
    /// Arch words that must *not* appear (`x86_64` for a 32-bit x86 target).
    other_arch_words: Vec<&'static str>,
    /// The ABI word this target prefers (`musl`, `gnu`, `msvc`), if any.
    env_word: Option<&'static str>,
    windows: bool,
}

impl Platform {
    pub(crate) fn this() -> Platform {
        Platform::from_triple(TARGET)
    }

    pub(crate) fn from_triple(triple: &str) -> Platform {
        let triple = triple.to_ascii_lowercase();
        let arch = triple.split('-').next().unwrap_or("").to_string();
        let has = |w: &str| triple.split('-').any(|p| p.starts_with(w));
        let os_words: Vec<&'static str> = if has("android") {
            vec!["android"]
        } else if has("linux") {
            vec!["linux"]
        } else if has("darwin") {
            vec!["darwin", "macos", "apple", "osx", "mac"]
        } else if has("windows") {
            vec!["windows", "win64", "win32", "win"]
        } else if has("freebsd") {
            vec!["freebsd"]
        } else if has("netbsd") {
            vec!["netbsd"]
        } else if has("openbsd") {
            vec!["openbsd"]
        } else if has("illumos") {
            vec!["illumos"]
        } else {
            vec![]
        };
        let x86_64: &[&'static str] = &["x86_64", "x86-64", "amd64", "x64"];
        let arm64: &[&'static str] = &["aarch64", "arm64"];
        let (mut arch_words, other_arch_words): (Vec<&str>, Vec<&'static str>) = match arch.as_str()
        {
            "x86_64" => (x86_64.to_vec(), vec![]),
            "aarch64" | "arm64" => (arm64.to_vec(), vec![]),
            "i686" | "i586" | "i386" => {
                (vec!["i686", "i586", "i386", "x86", "386"], x86_64.to_vec())
            }
            a if a.starts_with("armv7") => {
                (vec!["armv7", "armv7l", "armhf", "arm"], arm64.to_vec())
            }
            a if a.starts_with("arm") => (vec!["armv6", "armel", "armhf", "arm"], arm64.to_vec()),
            "riscv64gc" | "riscv64" => (vec!["riscv64", "riscv64gc"], vec![]),
            "powerpc64le" => (vec!["powerpc64le", "ppc64le"], vec![]),
            "s390x" => (vec!["s390x"], vec![]),
            "loongarch64" => (vec!["loongarch64"], vec![]),
            _ => (vec![], vec![]),
        };
        if has("darwin") {
            arch_words.push("universal");
            arch_words.push("universal2");
        }
        let mut arch_words: Vec<String> = arch_words.into_iter().map(String::from).collect();
        if arch_words.is_empty() && !arch.is_empty() {
            arch_words.push(arch.clone());
        }
        let env_word = if triple.ends_with("musl") || triple.contains("-musl") {
            Some("musl")
        } else if triple.ends_with("-gnu") || triple.contains("-gnu") {
            Some("gnu")
        } else if triple.ends_with("-msvc") {
            Some("msvc")
        } else {
            None
        };
        Platform {
            windows: has("windows"),
            triple,
            os_words,
            arch_words,
            other_arch_words,
            env_word,
        }
    }

    /// How well an asset name fits this platform: `None` if it is not for this platform.
    fn score(&self, lower: &str) -> Option<i32> {
        if self.other_arch_words.iter().any(|w| has_word(lower, w)) {
            return None;
        }
        let mut score = if lower.contains(&self.triple) {
            100
        } else {
            let os = self.os_words.iter().any(|w| has_word(lower, w));
            let arch = self.arch_words.iter().any(|w| has_word(lower, w));
            match (os, arch) {
                (true, true) => 50,
                _ => return None,
            }
        };
        match self.env_word {
            // A musl binary runs on a glibc system too, so it is only a weaker match there.
            Some("gnu") if has_word(lower, "musl") => score -= 5,
            Some(w) if has_word(lower, w) => score += 5,
            _ => {}
        }
        Some(score)
    }

    fn format_bonus(&self, lower: &str) -> i32 {
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            3
        } else if lower.ends_with(".zip") {
            if self.windows {
                4
            } else {
                2
            }
        } else if lower.ends_with(".gz") {
            1
        } else {
            0
        }
    }
}

/// Whether `word` occurs in `text` with no letter or digit right before or after it.
fn has_word(text: &str, word: &str) -> bool {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find(word) {
        let start = from + at;
        let end = start + word.len();
        let before = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let after = end == bytes.len() || !bytes[end].is_ascii_alphanumeric();
        if before && after {
            return true;
        }
        from = start + 1;
        while !text.is_char_boundary(from) {
            from += 1;
        }
    }
    false
}

/// Chooses the asset to install: with `pattern`, among the installable assets whose name matches
/// the glob (ties broken by platform fit, then packaging); without, the installable asset whose
/// name names this platform best. `Err` says why none fits, listing the assets.
pub(crate) fn choose<'a>(
    assets: &'a [AssetMeta],
    pattern: Option<&str>,
    platform: &Platform,
) -> Result<&'a AssetMeta, String> {
    let mut best: Option<((i32, std::cmp::Reverse<usize>), &AssetMeta)> = None;
    for asset in assets.iter().filter(|a| installable(&a.name)) {
        let lower = asset.name.to_ascii_lowercase();
        let fit = match pattern {
            Some(p) if !glob_match(p, &asset.name) => continue,
            Some(_) => platform.score(&lower).unwrap_or(0),
            None => match platform.score(&lower) {
                Some(s) => s,
                None => continue,
            },
        };
        let key = (
            fit + platform.format_bonus(&lower),
            std::cmp::Reverse(asset.name.len()),
        );
        let better = match &best {
            None => true,
            Some((k, b)) => key > *k || (key == *k && asset.name < b.name),
        };
        if better {
            best = Some((key, asset));
        }
    }
    if let Some((_, asset)) = best {
        return Ok(asset);
    }
    let names: Vec<&str> = assets.iter().map(|a| a.name.as_str()).collect();
    Err(match pattern {
        Some(p) => format!("no installable asset matches {p:?} among {names:?}"),
        None => format!(
            "no asset for this platform ({}) among {names:?}; set an asset pattern",
            platform.triple
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assets(names: &[&str]) -> Vec<AssetMeta> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| AssetMeta {
                id: i as u64,
                name: n.to_string(),
                size: 1,
                digest: None,
            })
            .collect()
    }

    fn pick(names: &[&str], pattern: Option<&str>, triple: &str) -> Result<String, String> {
        let list = assets(names);
        choose(&list, pattern, &Platform::from_triple(triple)).map(|a| a.name.clone())
    }

    #[test]
    fn globs() {
        assert!(glob_match("v*", "v1.2.3"));
        assert!(glob_match("app-v*", "app-v1.0.0"));
        assert!(!glob_match("app-v*", "tool-v1.0.0"));
        assert!(glob_match("*linux*.tar.gz", "app-x86_64-linux-musl.tar.gz"));
        assert!(!glob_match(
            "*linux*.tar.gz",
            "app-x86_64-linux-musl.tar.gz.sha256"
        ));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
        assert!(glob_match("**a**", "xxaxx"));
        assert!(!glob_match("", "a"));
    }

    #[test]
    fn tag_patterns_and_versions() {
        let p = TagPattern::new("app-v*");
        assert!(p.matches("app-v1.2.3"));
        assert!(!p.matches("tool-v9.0.0"));
        assert_eq!(
            tag_version("app-v1.2.3", Some(&p)),
            Version::parse("1.2.3").ok()
        );
        let prefix = TagPattern::new("app-");
        assert!(prefix.matches("app-1.0.0"));
        assert_eq!(
            tag_version("app-v2.0.0", Some(&prefix)),
            Version::parse("2.0.0").ok()
        );
        assert_eq!(tag_version("v1.2.3", None), Version::parse("1.2.3").ok());
        assert_eq!(tag_version("1.2", None), Version::parse("1.2.0").ok());
        assert_eq!(tag_version("v2", None), Version::parse("2.0.0").ok());
        assert_eq!(
            tag_version("v1.3.0-rc.1", None),
            Version::parse("1.3.0-rc.1").ok()
        );
        assert_eq!(
            tag_version("v1.3-beta.2", None),
            Version::parse("1.3.0-beta.2").ok()
        );
        assert_eq!(tag_version("nightly", None), None);
        assert_eq!(tag_version("v1.2.3.4", None), None);
        assert_eq!(tag_version("", None), None);
    }

    #[test]
    fn exact_triple_wins() {
        let names = [
            "app-aarch64-unknown-linux-gnu.tar.gz",
            "app-x86_64-unknown-linux-gnu.tar.gz",
            "app-x86_64-unknown-linux-musl.tar.gz",
            "app-x86_64-apple-darwin.tar.gz",
            "app-x86_64-pc-windows-msvc.zip",
            "app-x86_64-unknown-linux-gnu.tar.gz.sha256",
            "SHA256SUMS",
        ];
        let t = "x86_64-unknown-linux-gnu";
        assert_eq!(pick(&names, None, t).unwrap(), names[1]);
        let t = "x86_64-unknown-linux-musl";
        assert_eq!(pick(&names, None, t).unwrap(), names[2]);
        let t = "aarch64-unknown-linux-gnu";
        assert_eq!(pick(&names, None, t).unwrap(), names[0]);
        let t = "x86_64-apple-darwin";
        assert_eq!(pick(&names, None, t).unwrap(), names[3]);
        let t = "x86_64-pc-windows-msvc";
        assert_eq!(pick(&names, None, t).unwrap(), names[4]);
        assert!(pick(&names, None, "riscv64gc-unknown-linux-gnu").is_err());
    }

    #[test]
    fn os_and_arch_words() {
        let names = [
            "app_1.2.0_linux_amd64.tar.gz",
            "app_1.2.0_linux_arm64.tar.gz",
            "app_1.2.0_linux_386.tar.gz",
            "app_1.2.0_darwin_arm64.tar.gz",
            "app_1.2.0_windows_amd64.zip",
            "app_1.2.0_checksums.txt",
        ];
        assert_eq!(
            pick(&names, None, "x86_64-unknown-linux-gnu").unwrap(),
            names[0]
        );
        assert_eq!(
            pick(&names, None, "aarch64-unknown-linux-musl").unwrap(),
            names[1]
        );
        assert_eq!(
            pick(&names, None, "i686-unknown-linux-gnu").unwrap(),
            names[2]
        );
        assert_eq!(
            pick(&names, None, "aarch64-apple-darwin").unwrap(),
            names[3]
        );
        assert_eq!(
            pick(&names, None, "x86_64-pc-windows-gnu").unwrap(),
            names[4]
        );
        // Raw binaries with a version in the name, and "x86" never matching x86_64 builds.
        let raw = ["tool-v2.0.1-linux-x86_64", "tool-v2.0.1-macos-x86_64"];
        assert_eq!(
            pick(&raw, None, "x86_64-unknown-linux-gnu").unwrap(),
            raw[0]
        );
        assert!(pick(&raw, None, "i686-unknown-linux-gnu").is_err());
        // "mac" inside another word is not macOS, "win" inside "darwin" is not Windows.
        let tricky = ["app-machine-amd64.tar.gz", "app-darwin-amd64.tar.gz"];
        assert!(pick(&tricky, None, "x86_64-pc-windows-msvc").is_err());
        assert_eq!(
            pick(&tricky, None, "x86_64-apple-darwin").unwrap(),
            tricky[1]
        );
    }

    #[test]
    fn packaging_preference_and_exclusions() {
        let names = [
            "app-linux-x86_64",
            "app-linux-x86_64.gz",
            "app-linux-x86_64.tar.gz",
            "app-linux-x86_64.tar.xz",
            "app-linux-x86_64.deb",
            "app-linux-x86_64.tar.gz.minisig",
        ];
        assert_eq!(
            pick(&names, None, "x86_64-unknown-linux-gnu").unwrap(),
            names[2]
        );
        assert_eq!(
            pick(&names[..2], None, "x86_64-unknown-linux-gnu").unwrap(),
            names[1]
        );
        assert!(pick(&names[3..], None, "x86_64-unknown-linux-gnu")
            .unwrap_err()
            .contains("no asset for this platform"));
    }

    #[test]
    fn asset_patterns() {
        let names = [
            "server-linux-amd64.tar.gz",
            "server-linux-amd64.tar.gz.sha256",
            "client-linux-amd64.tar.gz",
            "server-linux-arm64.tar.gz",
        ];
        let t = "x86_64-unknown-linux-gnu";
        assert_eq!(pick(&names, Some("server-*"), t).unwrap(), names[0]);
        assert_eq!(pick(&names, Some("client-*"), t).unwrap(), names[2]);
        // A pattern may choose an asset that is not for this platform: the user said so.
        assert_eq!(pick(&names, Some("*arm64*"), t).unwrap(), names[3]);
        let err = pick(&names, Some("nothing*"), t).unwrap_err();
        assert!(err.contains("nothing*"), "{err}");
    }

    #[test]
    fn checksum_lists_are_recognised() {
        for n in [
            "SHA256SUMS",
            "sha256sums.txt",
            "app_1.0_checksums.txt",
            "SHA256SUMS.txt",
        ] {
            assert!(is_checksum_list(n), "{n}");
            assert!(!installable(n), "{n}");
        }
        assert!(!is_checksum_list("app.tar.gz"));
    }
}
