//! The web UI: static pages and scripts embedded in the binary (no Node.js at run
//! time), served with a strict Content-Security-Policy. The pages call the JSON API
//! with the session cookie; every state-changing call carries the CSRF header.
//!
//! CSP: scripts only from this origin (no inline script, no `eval`), connections only
//! to this origin (which covers the console's `wss:` socket), no framing. Styles allow
//! `'unsafe-inline'` because xterm.js sizes and themes the terminal with `<style>`
//! elements it creates at run time; no script can be injected that way.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; \
                   img-src 'self' data:; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
/// The recording page's: asciinema-player's terminal emulator is WebAssembly, which
/// needs `'wasm-unsafe-eval'` (compiling WebAssembly; JavaScript `eval` stays forbidden).
const RECORDING_CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; \
                             connect-src 'self'; img-src 'self' data:; font-src 'self'; frame-ancestors 'none'; \
                             base-uri 'none'; form-action 'self'";

/// `(name, content type, bytes)` of every file under `/ui/static/`.
const STATIC: &[(&str, &str, &[u8])] = &[
    ("app.css", "text/css; charset=utf-8", include_bytes!("../../web/app.css")),
    ("common.js", "text/javascript; charset=utf-8", include_bytes!("../../web/common.js")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../web/app.js")),
    ("console.js", "text/javascript; charset=utf-8", include_bytes!("../../web/console.js")),
    ("admin.js", "text/javascript; charset=utf-8", include_bytes!("../../web/admin.js")),
    ("admin-fleet.js", "text/javascript; charset=utf-8", include_bytes!("../../web/admin-fleet.js")),
    ("admin-policy.js", "text/javascript; charset=utf-8", include_bytes!("../../web/admin-policy.js")),
    ("device.js", "text/javascript; charset=utf-8", include_bytes!("../../web/device.js")),
    ("xterm.js", "text/javascript; charset=utf-8", include_bytes!("../../web/vendor/xterm/xterm.js")),
    ("xterm.css", "text/css; charset=utf-8", include_bytes!("../../web/vendor/xterm/xterm.css")),
    ("addon-fit.js", "text/javascript; charset=utf-8", include_bytes!("../../web/vendor/xterm/addon-fit.js")),
    ("recording.js", "text/javascript; charset=utf-8", include_bytes!("../../web/recording.js")),
    (
        "asciinema-player.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/vendor/asciinema-player/asciinema-player.min.js"),
    ),
    (
        "asciinema-player.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/vendor/asciinema-player/asciinema-player.css"),
    ),
];

const INDEX: &[u8] = include_bytes!("../../web/index.html");
const CONSOLE: &[u8] = include_bytes!("../../web/console.html");
const ADMIN: &[u8] = include_bytes!("../../web/admin.html");
const DEVICE: &[u8] = include_bytes!("../../web/device.html");
const RECORDING: &[u8] = include_bytes!("../../web/recording.html");

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(|| async { page(INDEX) }))
        .route("/ui/console", get(|| async { page(CONSOLE) }))
        .route("/ui/admin", get(|| async { page(ADMIN) }))
        .route("/ui/device", get(|| async { page(DEVICE) }))
        .route("/ui/recording", get(|| async { page_with(RECORDING, RECORDING_CSP) }))
        .route("/ui/static/{name}", get(asset))
}

/// Headers every UI response carries.
fn secured(response: Response, cache: &'static str) -> Response {
    secured_with(response, cache, CSP)
}

fn secured_with(mut response: Response, cache: &'static str, csp: &'static str) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name: HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::CONTENT_SECURITY_POLICY, csp);
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::CACHE_CONTROL, cache);
    set(h, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    response
}

fn page(html: &'static [u8]) -> Response {
    page_with(html, CSP)
}

fn page_with(html: &'static [u8], csp: &'static str) -> Response {
    secured_with(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(), "no-store", csp)
}

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match STATIC.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => {
            secured(([(header::CONTENT_TYPE, *content_type)], *bytes).into_response(), "public, max-age=300")
        }
        None => secured(StatusCode::NOT_FOUND.into_response(), "no-store"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_page_has_inline_script_or_handlers() {
        for html in [INDEX, CONSOLE, ADMIN, DEVICE, RECORDING] {
            let text = String::from_utf8_lossy(html);
            for line in text.lines().filter(|l| l.contains("<script")) {
                assert!(line.contains(" src=\"/ui/static/") && line.contains("></script>"), "inline script: {line}");
            }
            assert!(!text.contains("javascript:"), "no javascript: URLs");
            for handler in ["onclick=", "onload=", "onsubmit=", "onerror="] {
                assert!(!text.contains(handler), "inline handler {handler}");
            }
        }
        assert!(CSP.contains("script-src 'self';") && CSP.contains("frame-ancestors 'none'"));
        // Only the recording page compiles WebAssembly; nothing allows JavaScript eval.
        assert!(RECORDING_CSP.contains("script-src 'self' 'wasm-unsafe-eval';"));
        assert!(!CSP.contains("unsafe-eval'") && !RECORDING_CSP.contains(" 'unsafe-eval'"));
    }
}
