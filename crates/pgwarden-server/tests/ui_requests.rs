//! The approvers' page (`/ui/requests`) in a real headless Chromium driven over WebDriver: an
//! approver signs in with the token it typed, sees a pending request, approves it with a
//! reason, and the requester then reads a working PostgreSQL password; a requester trying to
//! approve its own request, or deciding one decided meanwhile, sees the server's refusal inline;
//! a denial with a reason sticks.
//!
//! Needs Debian's `chromium` and `chromium-driver` (or `PGWARDEN_CHROMIUM` and
//! `PGWARDEN_CHROMEDRIVER` naming the binaries). Without them the test prints why and passes,
//! unless `PGWARDEN_REQUIRE_BROWSER` is set (as in CI), when it fails. With
//! `PGWARDEN_UPDATE_SCREENSHOT` set it rewrites `docs/approvals-page.png` from the approver's view.

mod common;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use pgwarden_testkit::issuer::{TestIssuer, TestKey};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AUD: &str = "pgwarden";

/// Developers may request `appdb-admin`; a DBA must approve.
const POLICY: &str = r#"
grants:
  - subjects: ["group:dev"]
    roles: ["database/appdb-admin"]
    requires_approval: true
    approvers: ["group:dba"]
    max_ttl: 1h
"#;

/// How long the page gets to show what the test waits for.
const PATIENCE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The browser harness.

/// The chromedriver and chromium binaries, or why they cannot be used.
fn browser_binaries() -> Result<(PathBuf, PathBuf), String> {
    let driver = binary("PGWARDEN_CHROMEDRIVER", &["chromedriver"]);
    let chromium = binary(
        "PGWARDEN_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    match (driver, chromium) {
        (Some(driver), Some(chromium)) => Ok((driver, chromium)),
        (driver, chromium) => {
            let missing: Vec<&str> = [(driver, "chromedriver"), (chromium, "chromium")]
                .into_iter()
                .filter_map(|(found, name)| found.is_none().then_some(name))
                .collect();
            Err(format!(
                "{} not found (Debian: apt-get install -y chromium chromium-driver)",
                missing.join(" and ")
            ))
        }
    }
}

/// The file `env` names, else the first of `names` found on `PATH`.
fn binary(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// A chromedriver process of this test (in a process group of its own, killed with the
/// browsers it started when dropped) and one WebDriver session on a headless Chromium.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session on a headless `chromium`.
    async fn start(driver: &Path, chromium: &Path) -> Browser {
        let port = free_port();
        let mut command = Command::new(driver);
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut driver = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", driver.display()));
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(response) = reqwest::get(format!("{url}/status")).await
                && response.status().is_success()
            {
                break;
            }
            if let Ok(Some(status)) = driver.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            assert!(
                started.elapsed() < PATIENCE,
                "chromedriver did not answer on {url}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1440,760", "--no-first-run", "--no-default-browser-check",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = match ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&url)
            .await
        {
            Ok(client) => client,
            Err(e) => {
                kill_group(&mut driver);
                panic!("no WebDriver session on {}: {e}", chromium.display());
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Ends the session (Chromium quits); the driver goes when dropped.
    async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    /// The element `css` matches, waiting for it to appear.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css:?} on the page: {e}"))
    }

    /// The text of `css` once `expected` accepts it; panics with the last text seen.
    async fn text_until(&self, css: &str, expected: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        let mut last = String::from("(no element)");
        while started.elapsed() < PATIENCE {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if expected(&text) {
                    return text;
                }
                last = text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{css:?} never showed the expected text; last: {last:?}")
    }

    /// Waits until nothing matches `css`.
    async fn gone(&self, css: &str) {
        let started = Instant::now();
        while started.elapsed() < PATIENCE {
            if self.client.find(Locator::Css(css)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{css:?} is still on the page");
    }

    /// Signs in with `token` through the form and waits for the list.
    async fn sign_in(&self, token: &str) {
        self.find("#token").await.send_keys(token).await.unwrap();
        self.find("#signin-button").await.click().await.unwrap();
        self.text_until("#status", |t| {
            t.ends_with("requests.") || t.ends_with("request.")
        })
        .await;
    }

    /// Runs `script` in the page and returns its value.
    async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, Vec::new()).await.unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}

/// Kills chromedriver and whatever it started (its process group), and reaps it.
fn kill_group(driver: &mut Child) {
    if let Ok(pid) = i32::try_from(driver.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = driver.wait();
}

/// A TCP port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// The broker, its people and their requests.

/// A broker whose `jwt` auth mount logs people in by email with their groups, under [`POLICY`].
struct Approvals {
    env: Env,
    issuer: TestIssuer,
    _policy_dir: tempfile::TempDir,
}

impl Approvals {
    async fn start() -> Approvals {
        let issuer = TestIssuer::start(&[TestKey::Ec1]).await;
        let policy_dir = tempfile::tempdir().unwrap();
        let policy_file = policy_dir.path().join("policy.yaml");
        std::fs::write(&policy_file, POLICY).unwrap();
        let extra = format!(
            r#"
policy_file: "{policy}"
auth:
  jwt:
    type: jwt
    issuer: "{iss}"
    keys: {{ oidc_discovery: true }}
    audiences: [{AUD}]
    roles:
      people: {{ user_claim: email, groups_claim: groups }}
"#,
            policy = policy_file.display(),
            iss = issuer.issuer(),
        );
        let env = Env::start_with(ROLES, &extra).await;
        Approvals {
            env,
            issuer,
            _policy_dir: policy_dir,
        }
    }

    /// A login token of `email` in `group`.
    async fn token(&self, email: &str, group: &str) -> String {
        self.env.login_person(&self.issuer, email, &[group]).await
    }

    /// Requests `appdb-admin` as `token` with `reason`; returns the request's id.
    async fn request(&self, token: &str, reason: &str) -> String {
        let (status, body) = self
            .env
            .call_as(
                token,
                "POST",
                "pgwarden/requests",
                Some(json!({ "role": "database/appdb-admin", "reason": reason, "ttl": "30m" })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["state"], "pending", "{body}");
        body["data"]["id"].as_str().unwrap().to_string()
    }
}

/// `tr[data-request-id="<id>"]` followed by `inner`.
fn in_row(id: &str, inner: &str) -> String {
    format!("tr[data-request-id=\"{id}\"] {inner}")
}

#[tokio::test]
async fn approvers_decide_in_the_browser_and_a_requester_cannot_approve_its_own() {
    let (driver, chromium) = match browser_binaries() {
        Ok(found) => found,
        Err(why) if std::env::var_os("PGWARDEN_REQUIRE_BROWSER").is_none() => {
            println!("SKIPPED: the approvers' page browser test needs a browser: {why}");
            eprintln!("SKIPPED: the approvers' page browser test needs a browser: {why}");
            return;
        }
        Err(why) => panic!("PGWARDEN_REQUIRE_BROWSER is set, but {why}"),
    };
    let approvals = Approvals::start().await;
    let env = &approvals.env;
    let ola = approvals.token("ola@example.com", "dev").await;
    let kari = approvals.token("kari@example.com", "dba").await;
    let urgent = approvals.request(&ola, "fix invoice 42 by hand").await;
    // Creation times are milliseconds: "newest first" below needs them apart.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let later = approvals
        .request(&ola, "migrate the orders table (DB-77)")
        .await;

    // The page itself needs no token and comes with its security headers.
    let page = reqwest::get(format!("{}/ui/requests", env.broker.base))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'sha256-"),
        "{csp}"
    );

    let browser = Browser::start(&driver, &chromium).await;
    let page_url = format!("{}/ui/requests", env.broker.base);
    browser.client.goto(&page_url).await.unwrap();

    // A wrong token is refused at sign-in, with the server's words, and not kept.
    browser
        .find("#token")
        .await
        .send_keys("pgw_wrong")
        .await
        .unwrap();
    browser.find("#signin-button").await.click().await.unwrap();
    let refused = browser.text_until("#signin-error", |t| !t.is_empty()).await;
    assert!(refused.contains("permission denied"), "{refused}");
    assert_eq!(browser.eval("return sessionStorage.length").await, json!(0));

    // Kari, a DBA, sees both pending requests, newest first.
    browser.sign_in(&kari).await;
    browser
        .text_until("#whoami", |t| t == "Signed in as user:kari@example.com")
        .await;
    browser
        .text_until(&in_row(&urgent, "[data-field=reason]"), |t| {
            t == "fix invoice 42 by hand"
        })
        .await;
    let ids = browser
        .eval(
            "return [...document.querySelectorAll('#requests tbody tr')]\
             .map(tr => tr.dataset.requestId)",
        )
        .await;
    assert_eq!(ids, json!([later, urgent]));
    let shown = |field: &str| in_row(&urgent, &format!("[data-field={field}]"));
    for (field, expected) in [
        ("requester", "user:ola@example.com"),
        ("role", "database/appdb-admin"),
        ("subjects", "user:ola@example.com"),
        ("ttl", "30m"),
        ("approval-count", "0 / 1"),
        ("state", "pending"),
    ] {
        browser.text_until(&shown(field), |t| t == expected).await;
    }
    // The token is in this tab's sessionStorage, never in the address.
    assert!(
        !browser
            .client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains(&kari)
    );
    assert_eq!(
        browser
            .eval("return sessionStorage.getItem('pgwarden.token')")
            .await,
        json!(kari)
    );

    // Approve with a reason: the list refreshes and the request leaves the pending list.
    browser
        .find(&in_row(&urgent, "[data-field=decision-reason]"))
        .await
        .send_keys("INC-1234, with the on-call")
        .await
        .unwrap();
    browser
        .find(&in_row(&urgent, "button[data-action=approve]"))
        .await
        .click()
        .await
        .unwrap();
    browser
        .text_until("#status", |t| {
            t.starts_with(&format!("Approved {urgent}: now approved"))
        })
        .await;
    browser.gone(&in_row(&urgent, "")).await;
    browser.find(&in_row(&later, "")).await;

    // All requests: the approved one says by whom and why.
    browser
        .find("#state-filter")
        .await
        .select_by_value("")
        .await
        .unwrap();
    browser
        .text_until(&shown("state"), |t| t == "approved")
        .await;
    browser
        .text_until(&shown("approval-count"), |t| t == "1 / 1")
        .await;
    browser
        .text_until(&in_row(&urgent, ".decisions"), |t| {
            t == "approved by user:kari@example.com: INC-1234, with the on-call"
        })
        .await;
    browser
        .eval("document.activeElement.blur(); window.scrollTo(0, 0)")
        .await;
    let png = browser.client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    if std::env::var_os("PGWARDEN_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("approvals-page.png"), png).unwrap();
    }

    // Signing out forgets the token.
    browser.find("#signout").await.click().await.unwrap();
    browser.find("#signin-form").await;
    assert_eq!(browser.eval("return sessionStorage.length").await, json!(0));
    assert_eq!(
        browser
            .eval("return document.getElementById('list').hidden")
            .await,
        json!(true)
    );

    // Ola sees its own requests; markup in data is shown as text, never run or rendered.
    let markup = approvals
        .request(
            &ola,
            "<b>now</b><img src=x onerror=\"document.title='owned'\">",
        )
        .await;
    browser.sign_in(&ola).await;
    browser
        .text_until(&in_row(&markup, "[data-field=reason]"), |t| {
            t == "<b>now</b><img src=x onerror=\"document.title='owned'\">"
        })
        .await;
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('#requests img, #requests b').length")
            .await,
        json!(0)
    );
    assert_eq!(
        browser.eval("return document.title").await,
        json!("pgwarden · access requests")
    );

    // Ola may not approve its own request: the server's refusal appears in the row.
    browser
        .find(&in_row(&later, "button[data-action=approve]"))
        .await
        .click()
        .await
        .unwrap();
    let error = browser
        .text_until(&in_row(&later, "[data-field=error]"), |t| !t.is_empty())
        .await;
    assert_eq!(
        error,
        format!(
            "user:ola@example.com made request {later} and may not decide it; another approver must"
        )
    );
    browser
        .text_until(&in_row(&later, "[data-field=state]"), |t| t == "pending")
        .await;

    // Kari denies the request with markup in it, with a reason.
    browser.find("#signout").await.click().await.unwrap();
    browser.sign_in(&kari).await;
    browser
        .find(&in_row(&markup, "[data-field=decision-reason]"))
        .await
        .send_keys("not without a ticket")
        .await
        .unwrap();
    browser
        .find(&in_row(&markup, "button[data-action=deny]"))
        .await
        .click()
        .await
        .unwrap();
    browser
        .text_until("#status", |t| {
            t.starts_with(&format!("Denied {markup}: now denied"))
        })
        .await;
    browser
        .text_until(&in_row(&markup, "[data-field=state]"), |t| t == "denied")
        .await;

    // A decision made elsewhere meanwhile: the stale row's Deny gets the 409, inline.
    let (status, body) = env
        .call_as(
            &kari,
            "POST",
            &format!("pgwarden/requests/{later}/approve"),
            Some(json!({ "reason": "from the CLI" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    browser
        .find(&in_row(&later, "button[data-action=deny]"))
        .await
        .click()
        .await
        .unwrap();
    let error = browser
        .text_until(&in_row(&later, "[data-field=error]"), |t| !t.is_empty())
        .await;
    assert!(
        error.starts_with(&format!(
            "request {later} is already approved (by user:kari@example.com at "
        )),
        "{error}"
    );
    browser.close().await;

    // Through the API: approved by Kari, and Ola's credential logs in to PostgreSQL.
    let (status, body) = env
        .call("GET", &format!("pgwarden/requests/{urgent}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["state"], "approved", "{body}");
    assert_eq!(
        body["data"]["approvals"][0]["approver"],
        "user:kari@example.com"
    );
    assert_eq!(
        body["data"]["approvals"][0]["reason"],
        "INC-1234, with the on-call"
    );
    let (status, body) = env
        .call_as(&ola, "GET", &format!("pgwarden/requests/{later}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["state"], "approved", "{body}");
    assert_eq!(body["data"]["denial"], Value::Null, "{body}");
    let (status, body) = env
        .call("GET", &format!("pgwarden/requests/{markup}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["state"], "denied", "{body}");
    assert_eq!(body["data"]["denial"]["reason"], "not without a ticket");
    let (status, creds) = env
        .call_as(
            &ola,
            "GET",
            &format!("pgwarden/requests/{urgent}/creds"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{creds}");
    let client = env
        .cluster
        .connect_as(
            creds["data"]["username"].as_str().unwrap(),
            creds["data"]["password"].as_str().unwrap(),
            "appdb",
        )
        .await
        .unwrap();
    let row = client
        .query_one("SELECT session_user::text", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        creds["data"]["username"].as_str().unwrap()
    );
}
