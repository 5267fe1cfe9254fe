//! Issue #19's server side: the dashboard's files (embedded, compressed,
//! revalidated by ETag, under a strict Content-Security-Policy) at each
//! view's path, and browser sessions: an HttpOnly cookie from
//! `/v1/auth/session`, a CSRF token every change must carry, cross-site
//! requests refused, sign-out. The browser itself is driven in
//! `crates/fabric-cli/tests/it/dashboard.rs`.

use reqwest::header;
use serde_json::{Value, json};

use crate::harness::{ADMIN_PASSWORD, TestServer};

/// A client that keeps no cookies: each request carries exactly what the test gives it.
fn plain() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_is_served_at_each_view_with_a_strict_policy() {
    let s = TestServer::start().await;
    let http = plain();
    for path in [
        "/",
        "/tasks",
        "/tasks/0192d3f0-0000-7000-8000-000000000000",
        "/approvals",
        "/login",
    ] {
        let r = http.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(r.headers()[header::X_FRAME_OPTIONS], "DENY");
        let page = r.text().await.unwrap();
        assert!(page.contains("/ui/app.js"), "{path}: the app's page");
        assert!(!page.contains("<script>"), "no inline script");
    }
    // Files: compressed when asked, revalidated by ETag.
    let r = http
        .get(s.url("/ui/app.js"))
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
    assert!(
        r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let etag = r.headers()[header::ETAG].clone();
    let r = http
        .get(s.url("/ui/app.js"))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    // Unknown files and paths are JSON 404s; the API keeps its own.
    let r = http.get(s.url("/ui/nope.js")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    let r = http.get(s.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_session_is_a_cookie_whose_changes_need_the_csrf_token() {
    let s = TestServer::start().await;
    let http = plain();
    let origin = s.base.clone();

    let r = http
        .post(s.url("/v1/auth/session"))
        .json(&json!({"username": "admin", "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get(header::SET_COOKIE).is_none());

    let r = http
        .post(s.url("/v1/auth/session"))
        .header(header::ORIGIN, &origin)
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set_cookie = r.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain http: {set_cookie}");
    let session: Value = r.json().await.unwrap();
    assert_eq!(session["user"], "admin");
    let csrf = session["csrf_token"].as_str().unwrap().to_owned();
    let body = session.to_string();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let secret = cookie.split_once('=').unwrap().1;
    assert!(!body.contains(secret), "the secret is never in a body");

    // Reads need only the cookie; the session answers its CSRF token again.
    let r = http
        .get(s.url("/v1/auth/session"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["csrf_token"], csrf.as_str());
    let r = http
        .get(s.url("/v1/tasks"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A change with the cookie but without the token is refused, and so is
    // one with a wrong token; with it, it goes through.
    let task = json!({"commands": ["echo hi"]});
    for token in [None, Some("0000")] {
        let mut request = http
            .post(s.url("/v1/tasks"))
            .header(header::COOKIE, &cookie)
            .json(&task);
        if let Some(token) = token {
            request = request.header("X-CSRF-Token", token);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 403, "{token:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "csrf_failed");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("X-CSRF-Token")
        );
    }
    let r = http
        .post(s.url("/v1/tasks"))
        .header(header::COOKIE, &cookie)
        .header("X-CSRF-Token", &csrf)
        .header(header::ORIGIN, &origin)
        .json(&task)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    // Another site's page is refused even for a read.
    let r = http
        .get(s.url("/v1/tasks"))
        .header(header::COOKIE, &cookie)
        .header(header::ORIGIN, "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Bearer tokens keep working without any of it.
    let token = s.login().await;
    let r = http
        .post(s.url("/v1/tasks"))
        .bearer_auth(&token)
        .json(&task)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Sign out: needs the token too; then the cookie is dead and cleared.
    let r = http
        .delete(s.url("/v1/auth/session"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .delete(s.url("/v1/auth/session"))
        .header(header::COOKIE, &cookie)
        .header("X-CSRF-Token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let cleared = r.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let r = http
        .get(s.url("/v1/auth/session"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Over https (as the browser's Origin says), the cookie is Secure.
    let r = http
        .post(s.url("/v1/auth/session"))
        .header("X-Forwarded-Proto", "https")
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
}

/// An agent config may be sent as TOML, as agent files are written (the
/// dashboard's paste box sends what is pasted); a TOML error says where.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_config_may_be_sent_as_toml() {
    let s = TestServer::start().await;
    let token = s.login().await;
    let http = plain();
    let r = http
        .post(s.url("/v1/agents"))
        .bearer_auth(&token)
        .header(header::CONTENT_TYPE, "application/toml")
        .body("id = \"tomly\"\ncommand = \"sleep 600\"\n[isolation]\nlevel = \"none\"\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let agent: Value = r.json().await.unwrap();
    assert_eq!(agent["config"]["command"], "sleep 600");
    assert_eq!(agent["config"]["isolation"]["level"], "none");

    let r = http
        .post(s.url("/v1/agents"))
        .bearer_auth(&token)
        .header(header::CONTENT_TYPE, "application/toml")
        .body("id = \"broken\"\ncommand = sleep\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("invalid TOML body") && message.contains("line 2"),
        "{message}"
    );
    let r = http
        .post(s.url("/v1/agents"))
        .bearer_auth(&token)
        .header(header::CONTENT_TYPE, "text/plain")
        .body("id = \"x\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415, "other types are still refused");
    let r = http
        .delete(s.url("/v1/agents/tomly"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}
