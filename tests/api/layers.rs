//! The shape of `src/` holds: a module imports only from layers below it, and modules of one
//! layer talk only through `domain` (the table of `../shared/DESIGN.md`, "Layout"). A small scan
//! of every `crate::…` path outside comments.

use std::path::{Path, PathBuf};

/// The layer of each top-level module of `src/`.
const LAYERS: &[(&str, u8)] = &[
    ("domain", 1),
    ("keys", 1),
    ("telemetry", 1),
    ("config", 2),
    ("store", 3),
    ("db", 3),
    ("delivery", 3),
    ("error", 4),
    ("auth", 5),
    ("messaging", 6),
    ("api", 7),
    ("app", 8),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `crate::module` references of `text`, outside comments, with their line numbers.
fn references(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let tail = &rest[at + "crate::".len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((n + 1, name));
            }
            rest = tail;
        }
    }
    found
}

/// Every import that breaks the layering: (file:line, from, to).
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut bad = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or("")
            .trim_end_matches(".rs")
            .to_string();
        let Some(from) = layer(&top) else {
            // lib.rs and main.rs sit above everything.
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read file");
        for (line, to_module) in references(&text) {
            if to_module == top {
                continue;
            }
            let Some(to) = layer(&to_module) else {
                bad.push(format!(
                    "{}:{line}: {top} uses crate::{to_module}, which has no layer",
                    relative.display()
                ));
                continue;
            };
            let allowed = to < from || (to == from && to_module == "domain" && top != "domain");
            if !allowed || (top == "domain" && to_module != "domain") {
                bad.push(format!(
                    "{}:{line}: {top} (layer {from}) uses crate::{to_module} (layer {to})",
                    relative.display()
                ));
            }
        }
    }
    bad
}

#[test]
fn every_module_imports_only_from_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn the_scan_finds_an_upward_import() {
    // A check that cannot fail is no check: a temporary tree with one upward import.
    let dir = std::env::temp_dir().join(format!("otpgate-layers-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("store")).expect("dir");
    std::fs::write(
        dir.join("store/mod.rs"),
        "// crate::app in a comment is fine\nuse crate::domain::quota::Quota;\nuse crate::auth::AuthService;\n",
    )
    .expect("write");
    std::fs::write(dir.join("delivery.rs"), "use crate::db::user;\n").expect("write");
    let bad = violations(&dir);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad[0].contains("crate::auth") || bad[1].contains("crate::auth"),
        "{bad:?}"
    );
    assert!(
        bad.iter().any(|b| b.contains("delivery.rs:1")),
        "same-layer import: {bad:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
