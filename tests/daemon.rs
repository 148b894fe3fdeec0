//! The daemon in-process: static files (embedded and from disk, traversal refused), /healthz, lifecycle.

mod common;

use common::{header, http_get, test_config, TestServer};

#[tokio::test]
async fn serves_embedded_index_with_type_cache_and_security_headers() {
    let s = TestServer::start_default().await;
    let (status, headers, body) = http_get(s.http, "/", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("text/html; charset=utf-8"));
    assert!(String::from_utf8_lossy(&body).contains("<title>ponte"), "index.html is the web client");
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
    assert!(header(&headers, "content-security-policy").unwrap().contains("default-src 'self'"));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));

    // Revalidation with the ETag is a 304 with no body.
    let etag = header(&headers, "etag").expect("etag").to_string();
    let (status, _, body) = http_get(s.http, "/", &[("If-None-Match", &etag)]).await;
    assert_eq!(status, 304);
    assert!(body.is_empty());

    // /index.html is the same file; an unknown file is 404.
    assert_eq!(http_get(s.http, "/index.html", &[]).await.0, 200);
    assert_eq!(http_get(s.http, "/no-such-file.js", &[]).await.0, 404);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn traversal_attempts_are_refused() {
    let s = TestServer::start_default().await;
    for path in [
        "/../Cargo.toml",
        "/..%2fCargo.toml",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/%2E%2E/src/main.rs",
        "/a/../../Cargo.toml",
        "/.git/config",
        "/..%5cCargo.toml",
        "/%00index.html",
    ] {
        let (status, _, body) = http_get(s.http, path, &[]).await;
        assert!(status == 404 || status == 400, "{path} → {status}");
        assert!(!String::from_utf8_lossy(&body).contains("[package]"), "{path} leaked a file");
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn web_root_from_disk_is_contained_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("index.html"), "<!doctype html><title>custom</title>").unwrap();
    let css = "body { color: black; }\n".repeat(200);
    std::fs::write(root.join("app.css"), &css).unwrap();
    std::fs::write(dir.path().join("secret.txt"), "TOP-SECRET").unwrap();
    // A symlink inside the root pointing outside it must not be followed.
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.txt")).unwrap();

    let mut c = test_config();
    c.http.web_root = Some(root.clone());
    let s = TestServer::start(c).await;

    let (status, _, body) = http_get(s.http, "/", &[]).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("custom"));

    let (status, headers, body) = http_get(s.http, "/app.css", &[("Accept-Encoding", "gzip, br")]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain).unwrap();
    assert_eq!(plain, css);
    assert!(body.len() < css.len() / 4);

    for path in ["/../secret.txt", "/%2e%2e/secret.txt", "/link.txt"] {
        let (status, _, body) = http_get(s.http, path, &[]).await;
        assert!(status == 404 || status == 400, "{path} → {status}");
        assert!(!String::from_utf8_lossy(&body).contains("TOP-SECRET"), "{path} escaped web_root");
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn healthz_reports_version_and_components() {
    let s = TestServer::start_default().await;
    let (status, headers, body) = http_get(s.http, "/healthz", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    for c in ["http", "signaling", "turn"] {
        assert_eq!(v["components"][c], "ok", "{v}");
    }
    s.stop().await.unwrap();

    let mut c = test_config();
    c.turn.enabled = false;
    let s = TestServer::start(c).await;
    let (status, _, body) = http_get(s.http, "/healthz", &[]).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["components"]["turn"], "disabled");
    assert!(s.turn_udp.is_empty() && s.turn_tcp.is_empty(), "no TURN sockets when disabled");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn other_methods_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_default().await;
    let mut conn = tokio::net::TcpStream::connect(s.http).await.unwrap();
    conn.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert!(out.to_ascii_lowercase().contains("allow: get, head"), "{out}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_core_task_stops_the_daemon_with_an_error() {
    // The web root passes validation, then disappears before the HTTP task starts: the task fails, and
    // run() must stop everything and return the error instead of limping on without HTTP.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir(&root).unwrap();
    let mut c = test_config();
    c.http.web_root = Some(root.clone());
    assert!(c.validate().is_empty());
    std::fs::remove_dir(&root).unwrap();
    let listeners = ponte::Listeners::bind(&c).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = ponte::run(c, listeners, shutdown.clone());
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), run).await.expect("run returned");
    let err = result.expect_err("run must fail");
    let text = format!("{err:#}");
    assert!(text.contains("http failed") && text.contains("http.web_root"), "{text}");
    assert!(shutdown.is_cancelled(), "the other tasks were told to stop");
}

#[tokio::test]
async fn shutdown_is_prompt_and_closes_the_listener() {
    let s = TestServer::start_default().await;
    let addr = s.http;
    // An idle keep-alive connection must not hold shutdown up.
    let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.stop().await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener still accepting after shutdown");
}

#[test]
fn bind_error_names_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = test_config();
    c.http.listen = taken.local_addr().unwrap();
    let err = ponte::Listeners::bind(&c).unwrap_err();
    assert_eq!(err.key, "http.listen");
    let text = err.to_string();
    assert!(text.contains("http.listen") && text.contains("already uses this port"), "{text}");

    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut c = test_config();
    c.turn.listen_udp = vec!["127.0.0.1:0".parse().unwrap(), udp.local_addr().unwrap()];
    let err = ponte::Listeners::bind(&c).unwrap_err();
    assert_eq!(err.key, "turn.listen_udp[1]");
}

#[test]
fn example_config_is_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let parsed = ponte::config::Config::load(&path).unwrap();
    assert_eq!(parsed, ponte::config::Config::default(), "config.example.toml and the built-in defaults differ");

    // Every optional key shown commented out in the example is a real key with a valid value; commented
    // `[[table]]` blocks are checked as a whole.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut section = String::new();
    let mut block: Option<String> = None;
    let mut checked = 0;
    let check = |doc: &str, what: &str| {
        if let Err(e) = toml::from_str::<ponte::config::Config>(doc) {
            panic!("example `{what}` does not parse: {e}\n{doc}");
        }
    };
    for line in text.lines() {
        let commented_kv = line.strip_prefix("# ").and_then(|r| r.split_once(" = ")).filter(|(k, _)| !k.contains(' '));
        if let Some(b) = block.as_mut() {
            if let Some((k, v)) = commented_kv {
                b.push_str(&format!("{k} = {}\n", v.split("  #").next().unwrap()));
                continue;
            }
            if !line.starts_with('#') {
                check(b, "block");
                checked += 1;
                block = None;
            }
        }
        if let Some(header) = line.strip_prefix("# [[") {
            block = Some(format!("[[{header}\n"));
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
        }
        // A commented-out optional table (e.g. `# [tls.acme]`): its commented keys belong to it.
        if let Some(header) = line.strip_prefix("# [").filter(|h| !h.starts_with('[')) {
            section = format!("[{header}");
        }
        if let Some((key, value)) = commented_kv {
            check(&format!("{section}\n{key} = {}\n", value.split("  #").next().unwrap()), line);
            checked += 1;
        }
    }
    assert!(checked >= 8, "expected the optional keys to be shown; checked {checked}");
}

#[tokio::test]
async fn metrics_endpoint_counts_http_responses() {
    let s = TestServer::start_default().await;
    let before = s.scrape().await;
    assert_eq!(
        ponte::metrics::value_of(&before, &format!("ponte_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))),
        Some(1.0)
    );
    let ok_before = ponte::metrics::value_of(&before, "ponte_http_responses_total{code=\"2xx\"}").unwrap();
    let nf_before = ponte::metrics::value_of(&before, "ponte_http_responses_total{code=\"4xx\"}").unwrap();
    http_get(s.http, "/", &[]).await;
    http_get(s.http, "/healthz", &[]).await;
    http_get(s.http, "/missing", &[]).await;
    let after = s.scrape().await;
    assert_eq!(ponte::metrics::value_of(&after, "ponte_http_responses_total{code=\"2xx\"}").unwrap() - ok_before, 2.0);
    assert_eq!(ponte::metrics::value_of(&after, "ponte_http_responses_total{code=\"4xx\"}").unwrap() - nf_before, 1.0);
    // Metrics are not served on the public listener.
    assert_eq!(http_get(s.http, "/metrics", &[]).await.0, 404);
    s.stop().await.unwrap();
}
