//! A real OpenID Connect provider (`node tests/idp/idp.js`, the `oidc-provider` npm
//! package) on a port the OS chose, killed on drop; and [`Browser`], a minimal user
//! agent (manual redirects, a cookie jar, form posts) that plays the user's side of the
//! device and code flows over HTTP.
//!
//! Fails loudly when `node` or `tests/idp/node_modules` is missing (`./scripts/test.sh`
//! installs them): a missing IdP must never look like a passing test.

use reqwest::StatusCode;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

pub const CLIENT_ID: &str = "portcullis";
pub const CLIENT_SECRET: &str = "portcullis-test-secret";

pub struct Idp {
    /// `http://127.0.0.1:PORT`
    pub issuer: String,
    child: Child,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("idp")
}

impl Idp {
    /// Starts the IdP with `redirect_uri` registered for the static client;
    /// `device_code_ttl` shortens the device code's life (seconds).
    pub fn start(redirect_uri: &str, device_code_ttl: Option<u64>) -> Idp {
        let dir = idp_dir();
        assert!(
            Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()),
            "`node` is not installed: the OIDC tests need Node.js (./scripts/test.sh installs it)"
        );
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "{} is missing: run `npm ci --prefix tests/idp` (./scripts/test.sh does)",
            dir.join("node_modules").display()
        );
        let tmp = tempfile::Builder::new().prefix("idp-test-").tempdir().unwrap();
        let log_path = tmp.path().join("idp.stderr");
        let mut child = Command::new("node")
            .arg(dir.join("idp.js"))
            .env("PORT", "0")
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("REDIRECT_URIS", redirect_uri)
            .env("DEVICE_CODE_TTL", device_code_ttl.unwrap_or(600).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("cannot start node tests/idp/idp.js");
        let pipe = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let issuer = loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    if let Some(issuer) = line.strip_prefix("IDP_ISSUER=") {
                        break issuer.trim().to_owned();
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    panic!(
                        "the test IdP did not start ({e}):\n{}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
            }
        };
        Idp { issuer, child, log_path, _dir: tmp }
    }

    /// The IdP's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Writes an `[oidc]` file for `portcullisd all-in-one --oidc-config` into `dir`: the
    /// first callback as `redirect_url`, the others as `redirect_urls`.
    pub fn oidc_config_file(&self, dir: &Path, redirect_urls: &[&str]) -> PathBuf {
        let (first, more) = redirect_urls.split_first().expect("at least one redirect URL");
        let more: Vec<String> = more.iter().map(|u| format!("{u:?}")).collect();
        let secret = dir.join("oidc-client-secret");
        std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
        let path = dir.join("oidc.toml");
        std::fs::write(
            &path,
            format!(
                "[oidc]\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}\"\n\
                 redirect_url = \"{first}\"\nredirect_urls = [{}]\n",
                self.issuer,
                secret.display(),
                more.join(", ")
            ),
        )
        .unwrap();
        path
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- test IdP log ---\n{}", self.log());
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What a response said, with its cookies already taken into the jar.
pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub body: String,
    pub url: String,
}

/// A user agent for one person: never follows redirects by itself, keeps cookies by
/// name (paths and domains ignored: every test host is 127.0.0.1).
pub struct Browser {
    http: reqwest::Client,
    pub cookies: BTreeMap<String, String>,
}

impl Browser {
    /// `http` must not follow redirects; for the CA use a pinned client.
    pub fn new(http: reqwest::Client) -> Browser {
        Browser { http, cookies: BTreeMap::new() }
    }

    /// A plain-HTTP client for the IdP.
    pub fn idp_client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    async fn finish(&mut self, url: &str, resp: reqwest::Response) -> Page {
        let status = resp.status();
        let location = resp.headers().get("location").map(|v| {
            let raw = v.to_str().unwrap();
            reqwest::Url::parse(url).unwrap().join(raw).unwrap().to_string()
        });
        let set_cookies: Vec<String> =
            resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        for c in &set_cookies {
            let pair = c.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty() {
                self.cookies.remove(k.trim());
            } else {
                self.cookies.insert(k.trim().to_owned(), v.to_owned());
            }
        }
        let body = resp.text().await.unwrap_or_default();
        Page { status, location, set_cookies, body, url: url.to_owned() }
    }

    pub async fn get(&mut self, url: &str) -> Page {
        let resp = self.http.get(url).header("cookie", self.cookie_header()).send().await.unwrap();
        self.finish(url, resp).await
    }

    pub async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> Page {
        let resp = self.http.post(url).header("cookie", self.cookie_header()).form(form).send().await.unwrap();
        self.finish(url, resp).await
    }

    /// Follows redirects while they stay on `host_prefix`; returns the last page on it,
    /// or the first response whose redirect leaves it (its `location` says where).
    pub async fn follow(&mut self, mut page: Page, host_prefix: &str) -> Page {
        for _ in 0..20 {
            match &page.location {
                Some(next) if next.starts_with(host_prefix) => {
                    let next = next.clone();
                    page = self.get(&next).await;
                }
                _ => return page,
            }
        }
        panic!("redirect loop at {}", page.url);
    }
}

/// The `action` and the hidden inputs of the first `<form>` in an HTML page.
pub fn form_of(page: &Page) -> (String, Vec<(String, String)>) {
    let body = &page.body;
    let start = body.find("<form").unwrap_or_else(|| panic!("no form at {}: {}", page.url, body));
    let form = &body[start..];
    let form = &form[..form.find("</form>").unwrap_or(form.len())];
    let attr = |tag: &str, name: &str| -> Option<String> {
        let key = format!("{name}=\"");
        let at = tag.find(&key)? + key.len();
        Some(html_unescape(&tag[at..at + tag[at..].find('"')?]))
    };
    let action = attr(form, "action").unwrap_or_default();
    let action = reqwest::Url::parse(&page.url).unwrap().join(&action).unwrap().to_string();
    let mut inputs = Vec::new();
    for piece in form.split("<input").skip(1) {
        let tag = &piece[..piece.find('>').unwrap_or(piece.len())];
        if attr(tag, "type").as_deref() == Some("hidden")
            && let (Some(n), Some(v)) = (attr(tag, "name"), attr(tag, "value"))
        {
            inputs.push((n, v));
        }
    }
    (action, inputs)
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// Answers oidc-provider's devInteractions pages (login, then consent) as `user` until a
/// redirect leaves the IdP; returns that redirect (or the final IdP page, e.g. the device
/// flow's "success" page).
pub async fn sign_in_at_idp(browser: &mut Browser, idp: &Idp, page: Page, user: &str, password: &str) -> Page {
    through_idp(browser, idp, page, user, password).await.0
}

/// [`sign_in_at_idp`], and how many times the IdP asked for the password (none when its
/// own session still held and nothing asked it to sign the user in again).
pub async fn through_idp(
    browser: &mut Browser,
    idp: &Idp,
    mut page: Page,
    user: &str,
    password: &str,
) -> (Page, usize) {
    let mut logins = 0;
    for _ in 0..6 {
        page = browser.follow(page, &idp.issuer).await;
        if page.location.is_some() || !page.url.contains("/interaction/") {
            return (page, logins);
        }
        let (action, _) = form_of(&page);
        page = if page.body.contains("name=\"prompt\" value=\"login\"") {
            logins += 1;
            browser.post_form(&action, &[("prompt", "login"), ("login", user), ("password", password)]).await
        } else if page.body.contains("name=\"prompt\" value=\"consent\"") {
            browser.post_form(&action, &[("prompt", "consent")]).await
        } else {
            panic!("unexpected interaction page at {}: {}", page.url, page.body)
        };
        assert!(
            page.status.is_redirection(),
            "the IdP refused the interaction at {} ({}): {}",
            page.url,
            page.status,
            page.body
        );
    }
    panic!("too many interaction steps at the IdP")
}
