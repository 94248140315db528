//! The web console: a single-page application served by the management listener at `/`.
//!
//! Every asset is compiled into the binary (`include_bytes!`), so the console works with
//! no network and no files beside the binary. The page is plain JavaScript with no build
//! step; it talks only to the management API under `/api/` with HTTP Basic credentials it
//! keeps in `sessionStorage`, exactly as any other API client would, so it sees what the
//! logged-in user's tags allow and nothing more. The charts use uPlot (MIT, vendored
//! unmodified from its npm package, licence served at `/js/uPlot.LICENSE`).
//!
//! Layout of `assets/`: `index.html` (the shell), `css/` (styles), `js/` in load order
//! `dom.js` (DOM helpers, sortable tables), `api.js` (fetch wrapper, 401 -> login),
//! `charts.js` (rolling time series over uPlot), `views.js` (one function per page),
//! `app.js` (login, hash router, periodic refresh).

/// One embedded file: URL path, content type, bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";
const TEXT: &str = "text/plain; charset=utf-8";

macro_rules! asset {
    ($path:literal, $ty:expr) => {
        Asset {
            path: $path,
            content_type: $ty,
            bytes: include_bytes!(concat!("assets", $path)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("/index.html", HTML),
    asset!("/favicon.svg", SVG),
    asset!("/css/console.css", CSS),
    asset!("/css/uPlot.min.css", CSS),
    asset!("/js/uPlot.iife.min.js", JS),
    asset!("/js/uPlot.LICENSE", TEXT),
    asset!("/js/dom.js", JS),
    asset!("/js/api.js", JS),
    asset!("/js/charts.js", JS),
    asset!("/js/views.js", JS),
    asset!("/js/app.js", JS),
];

/// The console file for a request path (without query string): its content type and
/// bytes, or `None` (the caller answers 404). `/` is the page itself; the console's own
/// navigation lives in the URL fragment, so no other HTML path exists.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = if path == "/" { "/index.html" } else { path };
    ASSETS
        .iter()
        .find(|a| a.path == path)
        .map(|a| (a.content_type, a.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_index_are_the_page() {
        let (ty, root) = asset("/").unwrap();
        assert_eq!(ty, HTML);
        assert_eq!(asset("/index.html").unwrap().1, root);
        assert!(std::str::from_utf8(root)
            .unwrap()
            .contains("<title>qgate</title>"));
    }

    #[test]
    fn unknown_paths_are_none() {
        for p in [
            "",
            "/js/",
            "/js/nope.js",
            "/index.htm",
            "/../Cargo.toml",
            "/api/overview",
        ] {
            assert!(asset(p).is_none(), "{p}");
        }
    }

    /// Every `src="..."` and `href="..."` in the page names an embedded asset, so a
    /// renamed file cannot leave the page loading a 404.
    #[test]
    fn page_references_only_embedded_assets() {
        let page = std::str::from_utf8(asset("/").unwrap().1).unwrap();
        let mut seen = 0;
        for attr in ["src=\"", "href=\""] {
            for (i, _) in page.match_indices(attr) {
                let rest = &page[i + attr.len()..];
                let url = &rest[..rest.find('"').unwrap()];
                if url.starts_with('#') {
                    continue;
                }
                assert!(asset(url).is_some(), "index.html references missing {url}");
                seen += 1;
            }
        }
        assert!(
            seen >= 8,
            "expected the page to load its scripts and styles"
        );
    }

    #[test]
    fn content_types_follow_extensions() {
        for a in ASSETS {
            let want = match a.path.rsplit('.').next().unwrap() {
                "html" => HTML,
                "js" => JS,
                "css" => CSS,
                "svg" => SVG,
                _ => TEXT,
            };
            assert_eq!(a.content_type, want, "{}", a.path);
            assert!(!a.bytes.is_empty(), "{}", a.path);
        }
    }
}
