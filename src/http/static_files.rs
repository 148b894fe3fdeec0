//! The web client's files: embedded in the binary from `www/`, or read from `http.web_root` with path containment.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use parking_lot::Mutex;

use super::{text_response, Body};
use crate::config::HttpConfig;

#[derive(rust_embed::Embed)]
#[folder = "www/"]
struct Assets;

/// Where files come from.
pub enum WebRoot {
    Embedded {
        gzip_cache: Mutex<HashMap<String, Bytes>>,
    },
    /// Canonical directory; every served file must canonicalise to a path inside it.
    Disk(PathBuf),
}

/// A path component that must never be served, whatever its encoding.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not decodable or containing NUL/backslash: 400.
    Malformed,
    /// `..`, hidden files, or anything else outside the web root: 404 (do not confirm existence).
    Outside,
}

impl WebRoot {
    pub fn from_config(cfg: &HttpConfig) -> anyhow::Result<WebRoot> {
        Ok(match &cfg.web_root {
            None => WebRoot::Embedded { gzip_cache: Mutex::new(HashMap::new()) },
            Some(dir) => {
                let canon = dir
                    .canonicalize()
                    .map_err(|e| anyhow::anyhow!("http.web_root: cannot open {}: {e}", dir.display()))?;
                tracing::info!("serving the web client from {} (http.web_root)", canon.display());
                WebRoot::Disk(canon)
            }
        })
    }

    pub async fn serve<B>(&self, req: &Request<B>) -> Response<Body> {
        let rel = match relative_path(req.uri().path()) {
            Ok(r) => r,
            Err(PathError::Malformed) => return text_response(StatusCode::BAD_REQUEST, "bad path\n"),
            Err(PathError::Outside) => return not_found(),
        };
        let (data, etag) = match self {
            WebRoot::Embedded { .. } => match Assets::get(&rel) {
                Some(f) => {
                    let hash = f.metadata.sha256_hash();
                    let etag = format!("\"{}\"", hex8(&hash));
                    (Bytes::from(f.data.into_owned()), etag)
                }
                None => return not_found(),
            },
            WebRoot::Disk(root) => match read_contained(root, &rel).await {
                Some(found) => found,
                None => return not_found(),
            },
        };

        let if_none_match = req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
        if if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
            let mut r = Response::new(Body::default());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            set_cache_headers(&mut r, &etag);
            return r;
        }

        let mime = mime_guess::from_path(&rel).first_or_octet_stream();
        let compressible = mime.type_() == "text"
            || matches!(mime.subtype().as_str(), "javascript" | "json" | "svg" | "manifest+json" | "xml");
        let accepts_gzip = req
            .headers()
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|e| e.split(';').next().unwrap_or("").trim() == "gzip"));
        let use_gzip = compressible && accepts_gzip && data.len() > 512;
        let body = if use_gzip {
            match self {
                WebRoot::Embedded { gzip_cache } => {
                    let cached = gzip_cache.lock().get(&rel).cloned();
                    match cached {
                        Some(b) => b,
                        None => {
                            let b = gzip(&data);
                            gzip_cache.lock().insert(rel.clone(), b.clone());
                            b
                        }
                    }
                }
                WebRoot::Disk(_) => gzip(&data),
            }
        } else {
            data
        };

        let mut r = Response::new(Body::new(body));
        let content_type = if mime.type_() == "text" || mime.subtype() == "javascript" {
            format!("{mime}; charset=utf-8")
        } else {
            mime.to_string()
        };
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_str(&content_type).expect("mime is ASCII"));
        if compressible {
            r.headers_mut().insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        }
        if use_gzip {
            r.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        set_cache_headers(&mut r, &etag);
        r
    }
}

fn not_found() -> Response<Body> {
    text_response(StatusCode::NOT_FOUND, "not found\n")
}

/// File names are not content-hashed, so browsers revalidate every time; ETags make that a cheap 304.
fn set_cache_headers(r: &mut Response<Body>, etag: &str) {
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
}

fn hex8(hash: &[u8]) -> String {
    hash.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

fn gzip(data: &[u8]) -> Bytes {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 3), flate2::Compression::best());
    enc.write_all(data).expect("writing to a Vec cannot fail");
    Bytes::from(enc.finish().expect("writing to a Vec cannot fail"))
}

/// Map a URL path to a file path relative to the web root, refusing anything that could escape it.
pub fn relative_path(url_path: &str) -> Result<String, PathError> {
    let decoded = percent_encoding::percent_decode_str(url_path).decode_utf8().map_err(|_| PathError::Malformed)?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return Err(PathError::Malformed);
    }
    let mut parts = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" => {}
            // `.` is harmless but never produced by our links; `..` and dot-files are refused outright.
            s if s.starts_with('.') => return Err(PathError::Outside),
            s => parts.push(s),
        }
    }
    let mut rel = parts.join("/");
    if rel.is_empty() || decoded.ends_with('/') {
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str("index.html");
    } else if !rel.contains('.') {
        // Extension-less pages: `/diag` → `diag.html`.
        rel.push_str(".html");
    }
    Ok(rel)
}

/// Read `rel` under `root` only if its canonical path (symlinks resolved) stays inside `root`.
async fn read_contained(root: &Path, rel: &str) -> Option<(Bytes, String)> {
    let candidate = root.join(rel);
    let canon = tokio::fs::canonicalize(&candidate).await.ok()?;
    if !canon.starts_with(root) {
        tracing::warn!(path = %rel, "refused a file outside http.web_root");
        return None;
    }
    let meta = tokio::fs::metadata(&canon).await.ok()?;
    if !meta.is_file() {
        return None;
    }
    let data = tokio::fs::read(&canon).await.ok()?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Some((Bytes::from(data), format!("\"{:x}-{:x}\"", meta.len(), mtime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(relative_path("/").unwrap(), "index.html");
        assert_eq!(relative_path("/app.js").unwrap(), "app.js");
        assert_eq!(relative_path("/diag").unwrap(), "diag.html");
        assert_eq!(relative_path("/i18n/pt-BR.js").unwrap(), "i18n/pt-BR.js");
        assert_eq!(relative_path("//a//b.css").unwrap(), "a/b.css");
        assert_eq!(relative_path("/../etc/passwd"), Err(PathError::Outside));
        assert_eq!(relative_path("/%2e%2e/%2e%2e/etc/passwd"), Err(PathError::Outside));
        assert_eq!(relative_path("/a/%2E%2E/b"), Err(PathError::Outside));
        assert_eq!(relative_path("/.git/config"), Err(PathError::Outside));
        assert_eq!(relative_path("/..%5c..%5cwin.ini"), Err(PathError::Malformed));
        assert_eq!(relative_path("/a%5cb"), Err(PathError::Malformed));
        assert_eq!(relative_path("/a%00b"), Err(PathError::Malformed));
        assert_eq!(relative_path("/%ff"), Err(PathError::Malformed));
    }
}
