//! Downloads into the standard HF cache (feature `hub`): `blobs/<etag>`, `snapshots/<commit>/<file>`
//! linking to the blob, `refs/main` holding the commit, as Python's `huggingface_hub` lays it out.
//!
//! Our own small client over ureq, not hf-hub's: hf-hub 0.4 joins the server's `ETag`,
//! `X-Repo-Commit` and file names into cache paths as sent and copies a body without bound
//! (`ApiRepo::download_with_progress`, `Api::download_from` in its `api/sync.rs`), so a hostile
//! `HF_ENDPOINT` could write anywhere. Here every name from the server must be a plain name
//! before it touches a path, a body must be exactly its advertised size, and every write goes to
//! a temporary file inside the cache that is renamed into place. hf-hub still gives the cache's
//! location and token (`Cache`) and a repository's folder and URL names (`Repo`).

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::{Cache, Repo, RepoType};
use std::io::{IsTerminal, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{is_offline, RepoKind};

/// Files a model folder needs, and the optional ones fetched when the repository has them.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
const OPTIONAL: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
];
const WEIGHTS: &[&str] = &["model.safetensors", "pytorch_model.bin"];

/// The only revision fetched, and the ref that records its commit.
const REVISION: &str = "main";
/// Relative redirects followed before the file's headers (the hub uses one for a renamed repo).
const MAX_REDIRECTS: usize = 10;
/// A repository's file list is JSON of tens of bytes per file; more than this is no listing.
const MAX_LISTING: u64 = 64 << 20;

fn repo(id: &str, kind: RepoKind) -> Repo {
    let kind = match kind {
        RepoKind::Model => RepoType::Model,
        RepoKind::Dataset => RepoType::Dataset,
    };
    Repo::new(id.to_string(), kind)
}

/// The cache folder holding model `id`'s files, fetched unless offline.
pub fn model(id: &str) -> Result<PathBuf> {
    let repo = repo(id, RepoKind::Model);
    if is_offline() {
        fetch_cached(&repo)
    } else {
        fetch_online(&repo)
    }
}

/// Fetches files of a hub repository into the cache.
pub fn files(id: &str, kind: RepoKind, files: &[&str]) -> Result<Vec<PathBuf>> {
    let repo = &repo(id, kind);
    let cache = Cache::from_env();
    let hub = if is_offline() {
        None
    } else {
        Some(Hub::from_env()?)
    };
    files
        .iter()
        .map(|f| match &hub {
            None => cached(&cache, repo, f)?.with_context(|| offline_miss(repo, f, &cache)),
            Some(hub) => hub
                .get(repo, f)?
                .with_context(|| format!("cannot fetch {f} of {}: it does not exist", repo.url())),
        })
        .collect()
}

fn offline_miss(repo: &Repo, file: &str, cache: &Cache) -> String {
    format!(
        "{file} of {} is not in the HF cache ({}) and HF_HUB_OFFLINE is set: \
         run once with network access, or unset HF_HUB_OFFLINE",
        repo.url(),
        cache.path().display()
    )
}

fn fetch_cached(repo: &Repo) -> Result<PathBuf> {
    let cache = Cache::from_env();
    let mut dir = None;
    for f in REQUIRED {
        let p = cached(&cache, repo, f)?.with_context(|| offline_miss(repo, f, &cache))?;
        dir = p.parent().map(Path::to_path_buf);
    }
    let mut weights = false;
    for w in WEIGHTS {
        weights |= cached(&cache, repo, w)?.is_some();
    }
    if !weights {
        bail!(offline_miss(repo, WEIGHTS[0], &cache));
    }
    Ok(dir.expect("REQUIRED is not empty"))
}

fn fetch_online(repo: &Repo) -> Result<PathBuf> {
    let hub = Hub::from_env()?;
    let mut dir = None;
    for f in REQUIRED {
        let p = hub.get(repo, f)?.with_context(|| {
            format!(
                "cannot fetch {f} of {}: the repository or file does not exist (check the model id)",
                repo.url()
            )
        })?;
        dir = p.parent().map(Path::to_path_buf);
    }
    for f in OPTIONAL {
        hub.get(repo, f)?;
    }
    let mut found = false;
    for f in WEIGHTS {
        if hub.get(repo, f)?.is_some() {
            found = true;
            break;
        }
    }
    if !found {
        bail!(
            "{} has neither model.safetensors nor pytorch_model.bin",
            repo.url()
        );
    }
    Ok(dir.expect("REQUIRED is not empty"))
}

/// The files of a hub repository (its `siblings`), listed through the hub API.
pub fn list(id: &str, kind: RepoKind) -> Result<Vec<String>> {
    let repo = &repo(id, kind);
    if is_offline() {
        bail!(
            "cannot list the files of {} with HF_HUB_OFFLINE set: name the file, as in hf://datasets/OWNER/NAME/PATH",
            repo.url()
        );
    }
    let hub = Hub::from_env()?;
    hub.list(repo)
        .with_context(|| format!("cannot list the files of {}", repo.url()))
}

/// Why `name` is not a relative path of plain names joined by `/`, if it is not.
fn unsafe_path(name: &str) -> Option<&'static str> {
    if name.starts_with(['/', '\\']) {
        return Some("is an absolute path");
    }
    if name.split(['/', '\\']).any(|p| p == "..") {
        return Some("climbs out of its folder with `..`");
    }
    if name.contains('\\') {
        return Some("holds a `\\`");
    }
    if name.chars().any(char::is_control) {
        return Some("holds a control character");
    }
    let plain = name.split('/').all(|p| {
        let mut c = Path::new(p).components();
        matches!((c.next(), c.next()), (Some(Component::Normal(_)), None))
    });
    (!plain).then_some("has an empty, `.` or drive part")
}

/// Why `name` is not one plain name (no separator), if it is not.
fn unsafe_name(name: &str) -> Option<&'static str> {
    unsafe_path(name).or(name.contains('/').then_some("holds a `/`"))
}

/// Refuses a name the server sent for use in a cache path, saying what it sent and what to do.
fn refuse(endpoint: &str, what: &str, value: &str, why: &str) -> anyhow::Error {
    anyhow!(
        "the hub at {endpoint} sent {what} {value:?}, which {why}; refused, as it would place \
         files outside the HF cache: check HF_ENDPOINT, which must name the Hugging Face hub or \
         a faithful mirror"
    )
}

/// The server's `ETag`, quotes and weak marker removed, as the blob's name.
fn etag_name(etag: &str) -> &str {
    etag.trim().trim_start_matches("W/").trim_matches('"')
}

/// The local path of `file` of `repo` in the cache's snapshot of `refs/main`, if it is there.
fn cached(cache: &Cache, repo: &Repo, file: &str) -> Result<Option<PathBuf>> {
    if let Some(why) = unsafe_path(file) {
        bail!("{file:?} is not a file name in a repository: it {why}");
    }
    let dir = cache.path().join(repo.folder_name());
    let ref_path = dir.join("refs").join(REVISION);
    let commit = match std::fs::read_to_string(&ref_path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", ref_path.display())),
    };
    let commit = commit.trim();
    if let Some(why) = unsafe_name(commit) {
        bail!(
            "{} holds {commit:?}, which {why}, not a commit: delete that file",
            ref_path.display()
        );
    }
    let path = dir.join("snapshots").join(commit).join(file);
    Ok(path.exists().then_some(path))
}

/// A temporary name beside `path`, unique to this process and call: concurrent downloads of
/// the same file (ranks under mpirun) each write their own, and the last rename wins.
fn temp_beside(path: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".{}.{}.incomplete",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    path.with_file_name(name)
}

/// Runs `write` on a temporary path beside `path`, then renames it over `path`; the temporary
/// file is removed when either fails.
fn replace(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_beside(path);
    let done = write(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// The hub named by `HF_ENDPOINT` (default huggingface.co), with the cache under `HF_HOME`.
struct Hub {
    endpoint: String,
    cache: Cache,
    token: Option<String>,
    /// Reads the hub's own answers: redirects are followed by hand, relative ones only.
    direct: ureq::Agent,
    /// Fetches bodies, from the hub or the storage it redirects to.
    follow: ureq::Agent,
}

/// The hub's headers for a file: what names it in the cache and how long it is.
struct Meta {
    commit: String,
    etag: String,
    size: u64,
    /// Where the body is: the file's URL, or the storage that the hub redirects to.
    url: String,
    /// Whether `url` is on the hub itself, and so gets the token.
    on_hub: bool,
}

impl Hub {
    fn from_env() -> Result<Self> {
        let endpoint = std::env::var("HF_ENDPOINT")
            .unwrap_or_else(|_| "https://huggingface.co".into())
            .trim_end_matches('/')
            .to_string();
        if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
            bail!("HF_ENDPOINT={endpoint:?} is not an http:// or https:// URL");
        }
        let cache = Cache::from_env();
        let agent = || {
            ureq::AgentBuilder::new()
                .try_proxy_from_env(true)
                .user_agent(concat!("crossenc/", env!("CARGO_PKG_VERSION")))
        };
        Ok(Self {
            endpoint,
            token: cache.token(),
            cache,
            direct: agent().redirects(0).build(),
            follow: agent().build(),
        })
    }

    fn request(&self, agent: &ureq::Agent, method: &str, url: &str, token: bool) -> ureq::Request {
        // Identity: sizes are of the file, not of a compressed transfer.
        let req = agent
            .request(method, url)
            .set("Accept-Encoding", "identity");
        match &self.token {
            Some(t) if token => req.set("Authorization", &format!("Bearer {t}")),
            _ => req,
        }
    }

    /// Sends `req`; `None` for a 404.
    fn call(&self, req: ureq::Request) -> Result<Option<ureq::Response>> {
        match req.call() {
            Ok(r) => Ok(Some(r)),
            Err(ureq::Error::Status(404, _)) => Ok(None),
            Err(ureq::Error::Status(code, r)) => {
                bail!(
                    "the hub at {} answered {code} for {}",
                    self.endpoint,
                    r.get_url()
                )
            }
            Err(e) => Err(anyhow!(
                "{e} (no network? set HF_HUB_OFFLINE=1 to use the cache only)"
            )),
        }
    }

    /// The local path of `file` of `repo`, downloaded unless cached; `None` when the hub has
    /// no such file.
    fn get(&self, repo: &Repo, file: &str) -> Result<Option<PathBuf>> {
        if let Some(p) = cached(&self.cache, repo, file)? {
            return Ok(Some(p));
        }
        self.download(repo, file)
            .with_context(|| format!("cannot fetch {file} of {}", repo.url()))
    }

    /// The hub's headers for `file` (after a `HEAD`, as `huggingface_hub` does), each name
    /// checked and the size required.
    fn meta(&self, repo: &Repo, file: &str) -> Result<Option<Meta>> {
        let mut url = format!(
            "{}/{}/resolve/{REVISION}/{}",
            self.endpoint,
            repo.url(),
            url_path(file)
        );
        let mut redirects = 0;
        let resp = loop {
            let req = self.request(&self.direct, "HEAD", &url, true);
            let Some(resp) = self.call(req)? else {
                return Ok(None);
            };
            let location = resp.header("location").filter(|l| l.starts_with('/'));
            match location {
                Some(l) if (300..400).contains(&resp.status()) && !l.starts_with("//") => {
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        bail!("the hub at {} redirects {url} in a loop", self.endpoint);
                    }
                    url = format!("{}{l}", origin(&self.endpoint));
                }
                _ => break resp,
            }
        };
        let header = |name: &str| {
            resp.header(name).with_context(|| {
                format!(
                    "the hub at {} sent no {name} header for {url}: check HF_ENDPOINT",
                    self.endpoint
                )
            })
        };
        let commit = header("x-repo-commit")?.trim().to_string();
        let etag = match resp.header("x-linked-etag") {
            Some(e) => e,
            None => header("etag")?,
        };
        let etag = etag_name(etag).to_string();
        for (what, value) in [("X-Repo-Commit", &commit), ("ETag", &etag)] {
            if let Some(why) = unsafe_name(value) {
                return Err(refuse(&self.endpoint, what, value, why));
            }
        }
        let size = match resp.header("x-linked-size") {
            Some(s) => s,
            None => header("content-length")?,
        };
        let size = size.trim().parse().map_err(|_| {
            anyhow!(
                "the hub at {} sent size {size:?} for {url}, not a number: check HF_ENDPOINT",
                self.endpoint
            )
        })?;
        let redirect = (300..400).contains(&resp.status());
        let (url, on_hub) = match resp.header("location") {
            Some(l) if redirect => (l.to_string(), false),
            _ => (url, true),
        };
        Ok(Some(Meta {
            commit,
            etag,
            size,
            url,
            on_hub,
        }))
    }

    fn download(&self, repo: &Repo, file: &str) -> Result<Option<PathBuf>> {
        let Some(meta) = self.meta(repo, file)? else {
            return Ok(None);
        };
        let dir = self.cache.path().join(repo.folder_name());
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs)
            .with_context(|| format!("cannot create {}", blobs.display()))?;
        let blob = blobs.join(&meta.etag);
        let have = std::fs::metadata(&blob).is_ok_and(|m| m.is_file() && m.len() == meta.size);
        if !have {
            replace(&blob, |tmp| self.fetch_body(&meta, file, tmp))?;
        }
        let pointer = dir.join("snapshots").join(&meta.commit).join(file);
        let parent = pointer.parent().context("a snapshot path has a folder")?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        replace(&pointer, |tmp| link(&blob, &meta.etag, file, tmp))?;
        let refs = dir.join("refs");
        std::fs::create_dir_all(&refs)
            .with_context(|| format!("cannot create {}", refs.display()))?;
        replace(&refs.join(REVISION), |tmp| {
            std::fs::write(tmp, &meta.commit)
                .with_context(|| format!("cannot write {}", tmp.display()))
        })?;
        Ok(Some(pointer))
    }

    /// Writes the body at `meta.url` to `dest`, refused unless it is exactly `meta.size` bytes.
    fn fetch_body(&self, meta: &Meta, file: &str, dest: &Path) -> Result<()> {
        let req = self.request(&self.follow, "GET", &meta.url, meta.on_hub);
        let resp = self.call(req)?.with_context(|| {
            format!("the hub at {} said {file} exists, then 404", self.endpoint)
        })?;
        let size = meta.size;
        let too_big = |sent: &dyn std::fmt::Display| {
            anyhow!(
                "the hub at {} advertised {size} bytes for {file} and sends {sent}: refused; \
                 check HF_ENDPOINT, which must name the Hugging Face hub or a faithful mirror",
                self.endpoint
            )
        };
        if let Some(len) = resp.header("content-length") {
            if len.trim().parse::<u64>().ok() != Some(size) {
                return Err(too_big(&format!("Content-Length {len:?}")));
            }
        }
        let out = std::fs::File::create_new(dest)
            .with_context(|| format!("cannot create {}", dest.display()))?;
        let bar = if std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(size).with_message(file.to_string())
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} ({eta})",
            )
            .expect("a valid template"),
        );
        // One byte past the advertised size is enough to tell a longer body.
        let got = std::io::copy(
            &mut resp.into_reader().take(size.saturating_add(1)),
            &mut bar.wrap_write(out),
        )
        .with_context(|| format!("cannot download {file} to {}", dest.display()))?;
        bar.finish_and_clear();
        if got > size {
            return Err(too_big(&"a longer body"));
        }
        if got < size {
            bail!(
                "the download of {file} from {} stopped at {got} of {size} bytes: try again",
                self.endpoint
            );
        }
        Ok(())
    }

    fn list(&self, repo: &Repo) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Info {
            siblings: Vec<Sibling>,
        }
        #[derive(serde::Deserialize)]
        struct Sibling {
            rfilename: String,
        }
        let url = format!("{}/api/{}", self.endpoint, repo.api_url());
        let resp = self
            .call(self.request(&self.follow, "GET", &url, true))?
            .context("the repository does not exist (check its id)")?;
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_LISTING + 1)
            .read_to_end(&mut body)
            .with_context(|| format!("cannot read {url}"))?;
        if body.len() as u64 > MAX_LISTING {
            bail!(
                "the hub at {} sent a file list over {} MiB for {url}: check HF_ENDPOINT",
                self.endpoint,
                MAX_LISTING >> 20
            );
        }
        let info: Info = serde_json::from_slice(&body).with_context(|| {
            format!(
                "the hub at {} sent no file list for {url}: check HF_ENDPOINT",
                self.endpoint
            )
        })?;
        info.siblings
            .into_iter()
            .map(|s| match unsafe_path(&s.rfilename) {
                Some(why) => Err(refuse(&self.endpoint, "file name", &s.rfilename, why)),
                None => Ok(s.rfilename),
            })
            .collect()
    }
}

/// `file` in a URL path: `%`, `?` and `#` escaped, so no name is read as a query or fragment
/// (which would fetch another file under this name).
fn url_path(file: &str) -> String {
    file.replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23")
}

/// `scheme://host[:port]` of an endpoint URL, for the hub's relative redirects.
fn origin(endpoint: &str) -> &str {
    let host = endpoint.find("://").map_or(0, |i| i + 3);
    endpoint[host..]
        .find('/')
        .map_or(endpoint, |i| &endpoint[..host + i])
}

/// Creates at `tmp` the snapshot entry for `file` (within `snapshots/<commit>/`): a relative
/// symlink to `blobs/<etag>`, as `huggingface_hub` makes, or a copy where links are not made.
fn link(blob: &Path, etag: &str, file: &str, tmp: &Path) -> Result<()> {
    let up = "../".repeat(file.split('/').count() + 1);
    let target = format!("{up}blobs/{etag}");
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink(&target, tmp);
    #[cfg(not(unix))]
    let made = std::fs::copy(blob, tmp).map(drop);
    made.with_context(|| format!("cannot link {} to {}", tmp.display(), blob.display()))
}

#[cfg(test)]
mod tests {
    use super::{etag_name, origin, unsafe_name, unsafe_path, url_path};

    #[test]
    fn server_names_must_stay_in_their_folder() {
        for ok in [
            "config.json",
            "data/train-00000.parquet",
            "a..b",
            ".gitattributes",
        ] {
            assert_eq!(unsafe_path(ok), None, "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a/",
            "a\\b",
            "\\x",
            "a\nb",
        ] {
            assert!(unsafe_path(bad).is_some(), "{bad:?}");
        }
        assert_eq!(unsafe_name("0123abcd"), None);
        assert!(unsafe_name("a/b").is_some());
        assert!(unsafe_name("..").is_some());
        assert_eq!(etag_name("W/\"abc\""), "abc");
        assert_eq!(etag_name("\"/tmp/x\""), "/tmp/x");
    }

    #[test]
    fn urls_of_redirects_and_files() {
        assert_eq!(origin("https://huggingface.co"), "https://huggingface.co");
        assert_eq!(
            origin("http://127.0.0.1:8080/mirror"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(url_path("a b/c#d?e%f"), "a b/c%23d%3Fe%25f");
    }
}
