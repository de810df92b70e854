//! The GitHub destination: an asset of the release for a tag.
//!
//! The release is found by tag (`GET /repos/{o}/{r}/releases/tags/{tag}`, which GitHub answers
//! for published releases only), else among the drafts in the release list, else created as a
//! draft. A release this run created is published (`PATCH … {"draft": false}`) only once all of
//! its assets are up, so the GitHub fetcher never sees it half-uploaded; on failure it is
//! deleted again. Assets go to the release's `upload_url` (a URI template on the upload host,
//! `uploads.github.com`), with the token, which is sent to no other host.

mod api;

use std::time::Duration;

use http::{Method, StatusCode};
use octocrab::OctoBody;
use serde_json::{json, Value};

use crate::artifact::{content_type, Artifact};
use crate::config::GithubConfig;
use crate::progress::Progress;
use crate::publish::Store;
use crate::Error;
use api::{query_escape, segment_escape, Api, FileBody};

/// Release list pages read at most when looking for a draft (100 releases a page).
const MAX_PAGES: u32 = 10;

#[derive(Debug, Clone)]
struct Asset {
    id: u64,
    name: String,
    /// `uploaded`, or `starter`/`new` for an upload that never completed.
    state: String,
}

#[derive(Debug, Clone)]
struct Release {
    id: u64,
    draft: bool,
    prerelease: bool,
    upload_url: String,
    html_url: String,
    assets: Vec<Asset>,
}

fn parse_asset(v: &Value) -> Option<Asset> {
    Some(Asset {
        id: v.get("id")?.as_u64()?,
        name: v.get("name")?.as_str()?.to_string(),
        state: v
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or("uploaded")
            .to_string(),
    })
}

fn parse_release(v: &Value) -> Option<Release> {
    Some(Release {
        id: v.get("id")?.as_u64()?,
        draft: v.get("draft").and_then(Value::as_bool).unwrap_or(false),
        prerelease: v
            .get("prerelease")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        upload_url: v.get("upload_url")?.as_str()?.to_string(),
        html_url: v
            .get("html_url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        assets: v
            .get("assets")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(parse_asset).collect())
            .unwrap_or_default(),
    })
}

/// `scheme://authority` of a URL.
fn origin(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?))
}

/// The release for a tag on GitHub.
pub(crate) struct GithubStore {
    config: GithubConfig,
    timeout: Duration,
    api: Option<Api>,
    uploads: Option<Api>,
    release: Option<Release>,
    /// Whether this run created the release (then it is deleted on failure).
    created: bool,
}

impl GithubStore {
    pub fn new(config: GithubConfig, timeout: Duration) -> GithubStore {
        GithubStore {
            config,
            timeout,
            api: None,
            uploads: None,
            release: None,
            created: false,
        }
    }

    fn repo_path(&self) -> String {
        format!("/repos/{}/{}", self.config.owner, self.config.repo)
    }

    fn api(&self) -> Result<&Api, Error> {
        self.api
            .as_ref()
            .ok_or_else(|| Error::Github("not connected".into()))
    }

    fn release(&self) -> Result<&Release, Error> {
        self.release
            .as_ref()
            .ok_or_else(|| Error::Github("no release".into()))
    }

    fn asset(&self, name: &str) -> Option<Asset> {
        let release = self.release.as_ref()?;
        release.assets.iter().find(|a| a.name == name).cloned()
    }

    /// The published release for the tag, or `None` (a 404).
    async fn by_tag(&self) -> Result<Option<Release>, Error> {
        let api = self.api()?;
        let target = format!(
            "{}/releases/tags/{}",
            self.repo_path(),
            segment_escape(&self.config.tag)
        );
        let (status, body) = api.call(Method::GET, &target, None, None).await?;
        match status {
            StatusCode::OK => release_from(api, "GET", &target, &body).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(api.status_error("GET", &target, status, &body)),
        }
    }

    /// A draft release for the tag, from the release list (drafts are listed to users with
    /// push access, but not found by tag).
    async fn draft_by_tag(&self) -> Result<Option<Release>, Error> {
        let api = self.api()?;
        for page in 1..=MAX_PAGES {
            let target = format!("{}/releases?per_page=100&page={page}", self.repo_path());
            let (status, body) = api.call(Method::GET, &target, None, None).await?;
            if status != StatusCode::OK {
                return Err(api.status_error("GET", &target, status, &body));
            }
            let list: Vec<Value> = serde_json::from_slice(&body).map_err(|e| {
                Error::Github(format!(
                    "GET {}: unexpected answer: {e}",
                    api.shown(&target)
                ))
            })?;
            if let Some(found) = list.iter().find(|r| {
                r.get("tag_name").and_then(Value::as_str) == Some(self.config.tag.as_str())
            }) {
                return Ok(parse_release(found));
            }
            if list.len() < 100 {
                break;
            }
        }
        Ok(None)
    }

    async fn create(&self) -> Result<Release, Error> {
        let api = self.api()?;
        let target = format!("{}/releases", self.repo_path());
        let mut body = json!({
            "tag_name": self.config.tag,
            "name": self.config.release_name.clone().unwrap_or_else(|| self.config.tag.clone()),
            // A draft until every asset is up: see the module documentation.
            "draft": true,
            "prerelease": self.config.prerelease,
        });
        if let Some(notes) = &self.config.notes {
            body["body"] = json!(notes);
        }
        let (status, answer) = api.call(Method::POST, &target, Some(&body), None).await?;
        match status {
            StatusCode::CREATED | StatusCode::OK => release_from(api, "POST", &target, &answer),
            _ => Err(api.status_error("POST", &target, status, &answer)),
        }
    }

    /// Re-reads the release (its asset list) by id.
    async fn refresh(&mut self) -> Result<(), Error> {
        let api = self.api()?;
        let target = format!("{}/releases/{}", self.repo_path(), self.release()?.id);
        let (status, body) = api.call(Method::GET, &target, None, None).await?;
        if status != StatusCode::OK {
            return Err(api.status_error("GET", &target, status, &body));
        }
        self.release = Some(release_from(api, "GET", &target, &body)?);
        Ok(())
    }

    async fn delete_asset(&mut self, asset: &Asset) -> Result<(), Error> {
        let api = self.api()?;
        let target = format!("{}/releases/assets/{}", self.repo_path(), asset.id);
        let (status, body) = api.call(Method::DELETE, &target, None, None).await?;
        match status {
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND => {
                if let Some(r) = self.release.as_mut() {
                    r.assets.retain(|a| a.id != asset.id);
                }
                tracing::debug!(asset = %asset.name, "deleted asset");
                Ok(())
            }
            _ => Err(api.status_error("DELETE", &target, status, &body)),
        }
    }

    /// After a failed upload: deletes what it may have left (GitHub keeps a broken asset of
    /// that name, which blocks the name), unless the whole release goes anyway.
    async fn clear_debris(&mut self, name: &str) {
        if self.created || self.refresh().await.is_err() {
            return;
        }
        if let Some(debris) = self.asset(name).filter(|a| a.state != "uploaded") {
            let _ = self.delete_asset(&debris).await;
        }
    }

    /// Renames an asset (`PATCH /repos/{o}/{r}/releases/assets/{id}`).
    async fn rename_asset(&mut self, asset: &Asset, name: &str) -> Result<(), Error> {
        let api = self.api()?;
        let target = format!("{}/releases/assets/{}", self.repo_path(), asset.id);
        let (status, body) = api
            .call(Method::PATCH, &target, Some(&json!({"name": name})), None)
            .await?;
        if status != StatusCode::OK {
            return Err(api.status_error("PATCH", &target, status, &body));
        }
        let renamed = serde_json::from_slice::<Value>(&body)
            .ok()
            .as_ref()
            .and_then(parse_asset)
            .filter(|a| a.name == name)
            .ok_or_else(|| {
                Error::Github(format!(
                    "PATCH {}: GitHub named the asset otherwise",
                    api.shown(&target)
                ))
            })?;
        if let Some(r) = self.release.as_mut() {
            r.assets.retain(|a| a.id != asset.id);
            r.assets.push(renamed);
        }
        Ok(())
    }

    /// Uploads an asset named `name`, deleting one of that name first.
    async fn upload(&mut self, name: &str, len: u64, body: OctoBody) -> Result<(), Error> {
        if let Some(old) = self.asset(name) {
            self.delete_asset(&old).await?;
        }
        let release = self.release()?;
        // `upload_url` is a URI template (`…/assets{?name,label}`): its base, then the query.
        let base = release.upload_url.split('{').next().unwrap_or_default();
        let url = format!("{base}?name={}", query_escape(name));
        let uploads = self
            .uploads
            .as_ref()
            .ok_or_else(|| Error::Github("no upload client".into()))?;
        let (status, answer) = uploads.upload(&url, content_type(name), len, body).await?;
        if status != StatusCode::CREATED {
            let mut e = uploads.status_error("POST", &url, status, &answer);
            if status == StatusCode::UNPROCESSABLE_ENTITY {
                e = Error::Github(format!(
                    "{} (an asset named {name} may exist already: --replace replaces it)",
                    e.to_string().trim_start_matches("GitHub: ")
                ));
            }
            return Err(e);
        }
        let asset = serde_json::from_slice::<Value>(&answer)
            .ok()
            .as_ref()
            .and_then(parse_asset)
            .ok_or_else(|| {
                Error::Github(format!("POST {}: unexpected answer", uploads.shown(&url)))
            })?;
        if let Some(r) = self.release.as_mut() {
            r.assets.retain(|a| a.name != asset.name);
            r.assets.push(asset);
        }
        Ok(())
    }
}

fn release_from(api: &Api, method: &str, target: &str, body: &[u8]) -> Result<Release, Error> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .as_ref()
        .and_then(parse_release)
        .ok_or_else(|| {
            Error::Github(format!(
                "{method} {}: the answer is not a release",
                api.shown(target)
            ))
        })
}

impl Store for GithubStore {
    fn location(&self, name: &str) -> String {
        format!(
            "github:{}/{}@{}/{name}",
            self.config.owner, self.config.repo, self.config.tag
        )
    }

    fn may_replace(&self) -> bool {
        self.config.replace
    }

    async fn begin(&mut self) -> Result<(), Error> {
        let token = self.config.token.clone().ok_or_else(|| {
            Error::Github(
                "publishing needs a token with write access to the repository: set GITHUB_TOKEN \
                 or pass --github-token-file FILE"
                    .into(),
            )
        })?;
        let repo = format!("{}/{}", self.config.owner, self.config.repo);
        self.api = Some(Api::new(&self.config.api, &token.0, self.timeout, &repo)?);
        let release = match self.by_tag().await? {
            Some(r) => Some(r),
            None => self.draft_by_tag().await?,
        };
        let release = match release {
            Some(r) => {
                tracing::info!(tag = %self.config.tag, draft = r.draft, "the release exists");
                if self.config.prerelease && !r.prerelease {
                    tracing::warn!(tag = %self.config.tag, "--prerelease ignored: the release exists and is not a prerelease");
                }
                r
            }
            None => match self.create().await {
                Ok(r) => {
                    self.created = true;
                    tracing::info!(tag = %self.config.tag, id = r.id, "created a draft release");
                    r
                }
                // Another run (a CI job for another platform) created it meanwhile.
                Err(e) if e.to_string().contains("already_exists") => {
                    let again = match self.by_tag().await? {
                        Some(r) => Some(r),
                        None => self.draft_by_tag().await?,
                    };
                    again.ok_or(e)?
                }
                Err(e) => return Err(e),
            },
        };
        // The upload host gets the token too: GitHub names it in `upload_url`. Not over plain
        // HTTP when the API itself is HTTPS.
        let upload_origin = origin(&release.upload_url).ok_or_else(|| {
            Error::Github(format!(
                "the release's upload_url {:?} is not a URL",
                release.upload_url
            ))
        })?;
        if self.config.api.starts_with("https:") && !upload_origin.starts_with("https:") {
            return Err(Error::Github(format!(
                "the release's upload_url {} is not HTTPS; the token is not sent there",
                release.upload_url
            )));
        }
        self.uploads = Some(Api::new(&upload_origin, &token.0, self.timeout, &repo)?);
        self.release = Some(release);
        Ok(())
    }

    async fn exists(&mut self, name: &str) -> Result<bool, Error> {
        // An asset whose upload never completed (`starter`) is debris: it is replaced anyway.
        Ok(self.asset(name).is_some_and(|a| a.state == "uploaded"))
    }

    async fn read_small(&mut self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let Some(asset) = self.asset(name).filter(|a| a.state == "uploaded") else {
            return Ok(None);
        };
        let api = self.api()?;
        let target = format!("{}/releases/assets/{}", self.repo_path(), asset.id);
        // GitHub answers with a redirect to its storage host, followed without the token.
        let (status, body) = api
            .call(Method::GET, &target, None, Some("application/octet-stream"))
            .await?;
        match status {
            StatusCode::OK => Ok(Some(body)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(api.status_error("GET", &target, status, &body)),
        }
    }

    async fn put_small(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), Error> {
        let len = bytes.len() as u64;
        self.upload(name, len, OctoBody::from(bytes)).await
    }

    async fn remove(&mut self, name: &str) -> Result<(), Error> {
        match self.asset(name) {
            Some(asset) => self.delete_asset(&asset).await,
            None => Ok(()),
        }
    }

    async fn put_main(&mut self, artifact: &Artifact, progress: &Progress) -> Result<(), Error> {
        let name = &artifact.name;
        let body = FileBody::new(
            artifact.path.clone(),
            artifact.size,
            Some(progress.counter(0)),
        );
        let Some(old) = self.asset(name).filter(|a| a.state == "uploaded") else {
            let sent = self.upload(name, artifact.size, OctoBody::new(body)).await;
            if sent.is_err() {
                self.clear_debris(name).await;
            }
            return sent;
        };
        // Replacing: the new file goes up under a temporary name first, so that a failed
        // upload leaves the old asset in place; then the old one is deleted and the new one
        // renamed. The `.txt` ending keeps the GitHub fetcher from ever choosing it.
        let temp = format!("{name}.upshift-publish-upload.txt");
        if let Some(debris) = self.asset(&temp) {
            self.delete_asset(&debris).await?;
        }
        if let Err(e) = self.upload(&temp, artifact.size, OctoBody::new(body)).await {
            self.clear_debris(&temp).await;
            return Err(e);
        }
        let Some(new) = self.asset(&temp) else {
            return Err(Error::Github(format!(
                "the uploaded asset {temp} is not listed"
            )));
        };
        if let Err(e) = self.delete_asset(&old).await {
            let _ = self.delete_asset(&new).await;
            return Err(e);
        }
        self.rename_asset(&new, name).await.map_err(|e| {
            e.with_note(format!(
                "the new file is the asset {temp}: rename it to {name} on GitHub, or publish again"
            ))
        })
    }

    async fn commit(&mut self) -> Result<Vec<String>, Error> {
        let mut release = self.release()?.clone();
        if self.created && !self.config.draft {
            let api = self.api()?;
            let target = format!("{}/releases/{}", self.repo_path(), release.id);
            let (status, body) = api
                .call(Method::PATCH, &target, Some(&json!({"draft": false})), None)
                .await?;
            if status != StatusCode::OK {
                return Err(api.status_error("PATCH", &target, status, &body));
            }
            release = release_from(api, "PATCH", &target, &body)?;
            tracing::info!(tag = %self.config.tag, "published the release");
        }
        let state = match (release.draft, release.prerelease) {
            (true, _) => " (draft)",
            (false, true) => " (prerelease)",
            (false, false) => "",
        };
        Ok(vec![format!("release {}{state}", release.html_url)])
    }

    async fn abort(&mut self) -> String {
        if !self.created {
            return String::new();
        }
        let Ok(release) = self.release() else {
            return String::new();
        };
        let (id, tag) = (release.id, self.config.tag.clone());
        let target = format!("{}/releases/{id}", self.repo_path());
        let Ok(api) = self.api() else {
            return String::new();
        };
        match api.call(Method::DELETE, &target, None, None).await {
            Ok((StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND, _)) => {
                format!("the draft release {tag} this run created was deleted again")
            }
            Ok((status, body)) => format!(
                "the draft release {tag} this run created could not be deleted, delete it by \
                 hand: {}",
                api.status_error("DELETE", &target, status, &body)
            ),
            Err(e) => format!(
                "the draft release {tag} this run created could not be deleted, delete it by \
                 hand: {e}"
            ),
        }
    }

    fn abort_removes_all(&self) -> bool {
        self.created
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_json() {
        let v = json!({
            "id": 7, "draft": true, "prerelease": false,
            "upload_url": "https://uploads.github.com/repos/o/r/releases/7/assets{?name,label}",
            "html_url": "https://github.com/o/r/releases/tag/v1",
            "assets": [{"id": 9, "name": "app", "state": "uploaded"}, {"id": 10, "name": "x", "state": "starter"}],
        });
        let r = parse_release(&v).unwrap();
        assert_eq!((r.id, r.draft, r.assets.len()), (7, true, 2));
        assert_eq!(r.assets[1].state, "starter");
        assert_eq!(
            origin(&r.upload_url).as_deref(),
            Some("https://uploads.github.com")
        );
    }
}
