//! Release versions: semantic versions, read leniently from tags and configuration.

pub use semver::Version;

/// The semantic version a string names: `1.2.3`, `v1.2.3`, `1.2.3-rc.1`, and the short forms
/// `v1.2` / `1` (padded with zeros). `None` for anything else (`latest`, `2024-05-01`, `1.2.3.4`).
///
/// ```
/// use upshift::release::parse_version;
/// assert_eq!(parse_version("v1.2").unwrap().to_string(), "1.2.0");
/// assert!(parse_version("v1.3.0-rc.1").unwrap() < parse_version("1.3.0").unwrap());
/// assert!(parse_version("nightly").is_none());
/// ```
pub fn parse_version(s: &str) -> Option<Version> {
    let s = s.trim();
    let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
    if let Ok(v) = Version::parse(s) {
        return Some(v);
    }
    let split = s.find(['-', '+']).unwrap_or(s.len());
    let (core, rest) = s.split_at(split);
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !numeric || parts.len() >= 3 {
        return None;
    }
    let mut padded = parts.join(".");
    for _ in parts.len()..3 {
        padded.push_str(".0");
    }
    Version::parse(&format!("{padded}{rest}")).ok()
}
