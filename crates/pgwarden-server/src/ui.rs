//! The approvers' web page, `GET /ui/requests`: one static HTML file with inline CSS and vanilla
//! JavaScript. Loading it needs no token; the user types one, the page keeps it in the tab's
//! `sessionStorage` and sends it as `X-Vault-Token` to the JSON API (`/v1/pgwarden/requests`,
//! `…/<id>/approve`, `…/<id>/deny`), which decides everything. The page only displays: it sets
//! text with `textContent`, never parses data as HTML.
//!
//! The response forbids everything the page does not need: its Content-Security-Policy allows
//! exactly its own inline script and style (by SHA-256 hash), requests to this origin only, no
//! framing, no form submission, no referrer.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// The page, as served.
const PAGE: &str = include_str!("ui/requests.html");

/// The page's Content-Security-Policy, computed once from the page.
static POLICY: LazyLock<String> = LazyLock::new(|| content_security_policy(PAGE));

/// `GET /ui/requests`: the approvers' page, with headers that keep it uncached, unframed and
/// limited to its own script and to this origin.
pub async fn requests() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, POLICY.as_str()),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
        .into_response()
}

/// The policy for `page`: nothing by default; its one inline `<script>` and one inline
/// `<style>` by hash; `fetch` to this origin only.
fn content_security_policy(page: &str) -> String {
    let script = source_hash(page, "script");
    let style = source_hash(page, "style");
    format!(
        "default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// `'sha256-<base64>'` of the text between `<tag>` and `</tag>` in `page`, as browsers hash
/// inline elements; `'none'` when the page has no such element.
fn source_hash(page: &str, tag: &str) -> String {
    let inline = page
        .split_once(&format!("<{tag}>"))
        .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
        .map(|(text, _)| text);
    match inline {
        Some(text) => {
            let digest = Sha256::digest(text.as_bytes());
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        }
        None => "'none'".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_inline_script_and_style_by_hash() {
        let policy = content_security_policy(PAGE);
        assert!(policy.starts_with("default-src 'none'; script-src 'sha256-"));
        assert!(policy.contains("; style-src 'sha256-"));
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(PAGE.matches("<script").count(), 1, "one inline script");
        assert_eq!(PAGE.matches("<style").count(), 1, "one inline style");
    }

    #[test]
    fn hashes_are_those_of_the_element_text() {
        // echo -n 'x' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            source_hash("<p><script>x</script>", "script"),
            "'sha256-LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE='"
        );
        assert_eq!(source_hash("<p>", "script"), "'none'");
    }

    #[test]
    fn the_page_never_parses_data_as_html_nor_puts_the_token_in_the_url() {
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!PAGE.contains(forbidden), "page uses {forbidden}");
        }
        assert!(
            !PAGE.contains("localStorage"),
            "the token stays in sessionStorage"
        );
        assert!(PAGE.contains("\"X-Vault-Token\": token()"));
    }

    #[tokio::test]
    async fn the_page_is_served_with_its_security_headers() {
        let response = requests().await;
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(
            headers[header::CONTENT_SECURITY_POLICY],
            content_security_policy(PAGE).as_str()
        );
    }
}
