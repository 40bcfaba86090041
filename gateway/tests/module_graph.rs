//! The gateway's modules must not import each other in a cycle: the request path reads one
//! way (endpoints → pipeline → pool/engine), so that adding an endpoint is one new module and
//! one route line, never an edit to the pipeline, and domain modules (access, pool, state)
//! never import the HTTP layer. Each source file is a node; an edge is any `crate::`,
//! `super::` or `self::` path in its non-test code that names another file's module. Checked
//! between files, and between top-level modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `gateway/src/api/chat.rs` → `["api", "chat"]`; `mod.rs` and `lib.rs` name their folder.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code outside `#[cfg(test)]` modules and comments.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands `use a::{b, c::{d, self}}` into `a::b`, `a::c::d`, `a::c`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        return vec![path.trim_end_matches("::self").to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| {
            let p = p.trim();
            if p == "self" {
                vec![prefix.trim_end_matches("::").to_string()]
            } else {
                expand(&format!("{prefix}{p}"))
            }
        })
        .collect()
}

/// Every module path the code names, relative paths made absolute for `module`.
fn references(module: &[String], is_mod_file: bool, code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for stmt in code.split(';') {
        if let Some(tree) = stmt.trim_start().strip_prefix("use ").or_else(|| {
            stmt.trim_start()
                .strip_prefix("pub use ")
                .or_else(|| stmt.trim_start().strip_prefix("pub(crate) use "))
        }) {
            paths.extend(expand(tree));
        }
    }
    // Paths written inline in the code.
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            let before = at.checked_sub(1).map(|j| bytes[j]);
            if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                let end = code[at..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .map_or(code.len(), |e| at + e);
                paths.push(code[at..end].trim_end_matches(':').to_string());
            }
            from = at + start.len();
        }
    }
    // A mod.rs is its folder's module: `super` from it is the folder's parent.
    let here: Vec<String> = module.to_vec();
    paths
        .into_iter()
        .filter_map(|p| {
            let mut segs = p.split("::").filter(|s| !s.is_empty());
            let mut abs: Vec<String> = match segs.next()? {
                "crate" => Vec::new(),
                "self" => here.clone(),
                "super" => {
                    let mut m = here.clone();
                    if !is_mod_file || !m.is_empty() {
                        m.pop();
                    }
                    m
                }
                _ if is_mod_file => here.clone(),
                _ => return None,
            };
            for s in segs {
                if s == "super" {
                    abs.pop();
                } else {
                    abs.push(s.to_string());
                }
            }
            Some(abs)
        })
        .collect()
}

#[test]
fn gateway_modules_import_each_other_in_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let modules: BTreeMap<Vec<String>, PathBuf> = all
        .iter()
        .filter(|f| !f.ends_with("main.rs"))
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        let is_mod_file = file.ends_with("mod.rs") || file.ends_with("lib.rs");
        for path in references(module, is_mod_file, &code(&text)) {
            // The longest prefix that is a module of this crate.
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains_key(p));
            let Some(target) = target else { continue };
            // A folder's mod.rs declares its children; a child naming its parent's items
            // (not a sibling) is an edge like any other.
            let is_ancestor = module.starts_with(&target);
            if target != *module && !target.is_empty() && !is_ancestor {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        m: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(m.clone());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.clone());
        None
    }
    let mut done = BTreeSet::new();
    for m in modules.keys() {
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
            panic!("module import cycle: {}", names.join(" → "));
        }
    }
    // The same between the crate's top-level modules (`api`, `pool`, `access`, ...): domain
    // modules never reach back into the HTTP layer, not even for its error type.
    let mut top: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (from, tos) in &edges {
        for to in tos {
            if from[0] != to[0] {
                top.entry(vec![from[0].clone()])
                    .or_default()
                    .insert(vec![to[0].clone()]);
            }
        }
    }
    let mut done = BTreeSet::new();
    for m in top.keys() {
        if let Some(cycle) = visit(m, &top, &mut Vec::new(), &mut done) {
            let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
            panic!(
                "import cycle between top-level modules: {}",
                names.join(" → ")
            );
        }
    }
    // The check sees the request path: endpoints import the pipeline, not the reverse.
    let api = |m: &str| vec!["api".to_string(), m.to_string()];
    assert!(edges[&api("chat")].contains(&api("pipeline")), "{edges:?}");
    assert!(!edges[&api("pipeline")].contains(&api("chat")));
}
