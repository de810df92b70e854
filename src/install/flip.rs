//! [`InstallMode::ReleaseDirectories`](crate::InstallMode): a release-directory layout
//! (`bin/app -> ../releases/v1/app`) gets each release in a directory of its own beside the
//! current one, and the symlink flipped to it atomically. Files of earlier releases are never
//! written; a rollback flips the link back.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::{InstallError, Staged};

/// What the symlink at `invoked` says, for [`flip_link`] to put back.
pub(crate) fn read_link(invoked: &Path) -> Result<PathBuf, InstallError> {
    let meta = fs::symlink_metadata(invoked)
        .map_err(|e| InstallError::io(format!("reading {}", invoked.display()), e))?;
    if !meta.file_type().is_symlink() {
        return Err(InstallError::io(
            format!(
                "InstallMode::ReleaseDirectories needs {} to be a symlink to the release's file \
                 (bin/app -> ../releases/v1/app)",
                invoked.display()
            ),
            io::Error::from(io::ErrorKind::InvalidInput),
        ));
    }
    fs::read_link(invoked)
        .map_err(|e| InstallError::io(format!("reading the link {}", invoked.display()), e))
}

/// Moves `staged` into a new directory beside the current release's (named after `identity`),
/// and flips the symlink `invoked` to it. Returns the new file. On error the link is unchanged.
pub(crate) fn install_flip(
    mut staged: Staged,
    invoked: &Path,
    target: &Path,
    identity: &str,
) -> Result<PathBuf, InstallError> {
    let old_link = read_link(invoked)?;
    let (Some(release_dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(InstallError::io(
            format!("{} is not a file in a release directory", target.display()),
            io::Error::from(io::ErrorKind::InvalidInput),
        ));
    };
    let releases = release_dir.parent().unwrap_or(release_dir);
    let new_dir = fresh_dir(releases, identity)?;
    let new_file = new_dir.join(name);
    let current = fs::metadata(target)
        .map_err(|e| InstallError::io(format!("reading {}", target.display()), e))?;
    let mode = current.mode() & 0o7777;
    let placed = (|| {
        fs::set_permissions(
            &staged.path,
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )?;
        fs::File::open(&staged.path)?.sync_all()?;
        fs::rename(&staged.path, &new_file)?;
        fs::File::open(&new_dir)?.sync_all()
    })();
    if let Err(e) = placed {
        let _ = fs::remove_file(&new_file);
        let _ = fs::remove_dir(&new_dir);
        return Err(InstallError::io(
            format!("placing the new release at {}", new_file.display()),
            e,
        ));
    }
    staged.keep();
    let link_text = if old_link.is_absolute() {
        new_file.clone()
    } else {
        relative_to(&new_file, &link_dir(invoked)?)
    };
    if let Err(e) = flip_link(invoked, &link_text) {
        let _ = fs::remove_file(&new_file);
        let _ = fs::remove_dir(&new_dir);
        return Err(e);
    }
    tracing::info!(link = %invoked.display(), to = %new_file.display(), was = %old_link.display(), "flipped the release link");
    Ok(new_file)
}

/// Points the symlink `invoked` at `to`, atomically (a new link at a temporary name, renamed over).
pub(crate) fn flip_link(invoked: &Path, to: &Path) -> Result<(), InstallError> {
    let mut tmp = invoked.as_os_str().to_owned();
    tmp.push(format!(".link-{}.tmp", &super::random_hex()[..12]));
    let tmp = PathBuf::from(tmp);
    let flipped = std::os::unix::fs::symlink(to, &tmp).and_then(|()| fs::rename(&tmp, invoked));
    if let Err(e) = flipped {
        let _ = fs::remove_file(&tmp);
        return Err(InstallError::io(
            format!("pointing {} at {}", invoked.display(), to.display()),
            e,
        ));
    }
    if let Ok(dir) = link_dir(invoked) {
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// A new directory under `releases` named after the release (made safe for a file name).
fn fresh_dir(releases: &Path, identity: &str) -> Result<PathBuf, InstallError> {
    let mut base: String = identity
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .take(48)
        .collect();
    if base.trim_matches('.').is_empty() {
        base = "release".into();
    }
    for attempt in 0..4 {
        let name = match attempt {
            0 => base.clone(),
            _ => format!("{base}-{}", &super::random_hex()[..8]),
        };
        let dir = releases.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(InstallError::io(
                    format!("creating the release directory {}", dir.display()),
                    e,
                ))
            }
        }
    }
    Err(InstallError::io(
        format!(
            "no free release directory name under {}",
            releases.display()
        ),
        io::Error::from(io::ErrorKind::AlreadyExists),
    ))
}

/// The directory a relative link at `invoked` is read from, resolved.
fn link_dir(invoked: &Path) -> Result<PathBuf, InstallError> {
    let parent = match invoked.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::canonicalize(parent)
        .map_err(|e| InstallError::io(format!("resolving {}", parent.display()), e))
}

/// `path` (absolute, resolved) relative to the directory `from` (absolute, resolved).
fn relative_to(path: &Path, from: &Path) -> PathBuf {
    let a: Vec<Component> = path.components().collect();
    let b: Vec<Component> = from.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &a[common..] {
        out.push(c.as_os_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_ancestor() {
        assert_eq!(
            relative_to(
                Path::new("/srv/app/releases/v2/app"),
                Path::new("/srv/app/bin")
            ),
            PathBuf::from("../releases/v2/app")
        );
        assert_eq!(
            relative_to(Path::new("/srv/app/v2/app"), Path::new("/srv/app")),
            PathBuf::from("v2/app")
        );
    }

    #[test]
    fn release_directories_are_named_safely_and_never_reused() {
        let root = std::env::temp_dir().join(format!("upshift-flip-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        let a = fresh_dir(&root, "sha256:../../etc").unwrap();
        assert_eq!(a.parent(), Some(root.as_path()));
        assert!(!a.file_name().unwrap().to_string_lossy().contains('/'));
        let b = fresh_dir(&root, "sha256:../../etc").unwrap();
        assert_ne!(a, b);
        let dots = fresh_dir(&root, "..").unwrap();
        assert_eq!(dots.parent(), Some(root.as_path()));
        fs::remove_dir_all(&root).unwrap();
    }
}
