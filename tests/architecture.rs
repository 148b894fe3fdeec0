//! The module graph of src/, read from the source text: which top-level module names which (`crate::x`), with no
//! cycle anywhere and the daemon's lifecycle (src/server.rs) imported only by the CLI.
//!
//! Run `cargo test --test architecture -- --nocapture` to print the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules it names. Tests inside a file count too: they are code a newcomer
/// reads, and a test that needs an upward import says something about the design.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap().to_string_lossy().to_string();
            let top = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
            if top == "main" || top == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let deps = g.entry(top.clone()).or_default();
            for name in crate_paths(&text) {
                if name != top {
                    deps.insert(name);
                }
            }
        }
    }
    g
}

/// The first segment of every `crate::…` path, including the ones inside `use crate::{a::x, b::y}`.
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_lowercase()) {
                out.push(name);
            }
        }
        rest = after;
    }
    out
}

/// A cycle through `start`, if any (depth-first search for a path back to it).
fn cycle_through(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        g: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in g.get(at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(g, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn the_module_graph_has_no_cycle() {
    let g = graph();
    for (m, deps) in &g {
        println!("{m} -> {}", deps.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    assert!(g.len() > 10, "the source scan found too few modules: {g:?}");
    let cycles: Vec<String> = g.keys().filter_map(|m| cycle_through(&g, m)).map(|c| c.join(" -> ")).collect();
    assert!(cycles.is_empty(), "import cycles between top-level modules:\n{}", cycles.join("\n"));
}

#[test]
fn only_the_cli_reaches_the_daemon_lifecycle() {
    let g = graph();
    let users: Vec<&String> = g.iter().filter(|(_, deps)| deps.contains("server")).map(|(m, _)| m).collect();
    assert_eq!(users, ["cli"], "modules that import crate::server (subsystems get narrow handles instead)");
}

#[test]
fn the_bottom_layer_imports_no_subsystem() {
    let g = graph();
    let subsystems = ["server", "http", "signaling", "turn", "tls", "acme", "doctor", "cli", "cluster"];
    for bottom in ["config", "metrics", "health", "live", "listeners", "addr", "pem", "challenges", "credentials"] {
        let deps = g.get(bottom).unwrap_or_else(|| panic!("no module {bottom}"));
        let up: Vec<&String> = deps.iter().filter(|d| subsystems.contains(&d.as_str())).collect();
        assert!(up.is_empty(), "{bottom} imports {up:?}");
    }
}

/// The cluster link (Redis transport) sits under signaling and knows nothing of it: it routes opaque envelopes
/// by ID (docs/architecture.md, "Several nodes").
#[test]
fn the_cluster_link_knows_no_signaling() {
    let g = graph();
    let deps = g.get("cluster").expect("no module cluster");
    let allowed = ["config", "metrics", "health"];
    let extra: Vec<&String> = deps.iter().filter(|d| !allowed.contains(&d.as_str())).collect();
    assert!(extra.is_empty(), "cluster imports {extra:?} (layer: signaling -> cluster -> config, metrics, health)");
    let users: Vec<&String> = g.iter().filter(|(_, d)| d.contains("cluster")).map(|(m, _)| m).collect();
    assert_eq!(users, ["server", "signaling"], "modules that import crate::cluster");
}

#[test]
fn the_scanner_sees_grouped_and_inline_paths() {
    let found = crate_paths("use crate::{config::Config, live::LiveConfig};\nlet x = crate::turn::serve();");
    assert_eq!(found, ["config", "live", "turn"]);
}
