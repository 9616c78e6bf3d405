//! The import graph of the workspace's own sources: no module of `src/` imports from a higher
//! floor, and no crate (`src/`, `raft/src/`, `storage/src/`) has an import circle between its
//! modules. Reads the sources as text; `#[cfg(test)]` modules are left out (tests may reach
//! anywhere).
//!
//! An edge A → B means A's code names an item of module B: a `crate::…` path, a `super::…` path,
//! or a path starting with one of A's own child modules. A path is resolved to the deepest module
//! file it names, through `pub use` re-exports, so a parent that re-exports its children's items
//! is not mistaken for their dependency. A `mod child;` declaration alone is no edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

/// The floors of `src/`, lowest first. A module may import from its own floor and from lower
/// ones; modules of one floor may import each other as long as there is no circle.
const FLOORS: &[&[&str]] = &[
    &["util"],
    &["server"],
    &["client"],
    &["coord"],
    &["services", "model"],
    &["crawl"],
    &["config"],
    &["worker", "master"],
    &["bench"],
    &["cli"],
];

/// One module file: its path in the crate (`["server", "grpc", "kv"]`), its text without test
/// modules, and the child modules it declares.
struct Module {
    file: PathBuf,
    path: Vec<String>,
    text: String,
    children: BTreeSet<String>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir` except `main.rs` (the binary is a crate of its own).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("main.rs") {
            out.push(p);
        }
    }
}

/// The file's text with `#[cfg(test)]` items cut (a test module is written last in every file
/// here, so everything from the first `#[cfg(test)]` on is dropped) and comments removed.
fn code_of(text: &str) -> String {
    let cut = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..cut]
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn load(src: &Path) -> Vec<Module> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mod_decl = Regex::new(r"(?m)^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;")
        .expect("regex");
    files
        .into_iter()
        .map(|file| {
            let rel = file.strip_prefix(src).expect("under src");
            let mut path: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if path.last().is_some_and(|l| l == "mod" || l == "lib") {
                path.pop();
            }
            let raw = std::fs::read_to_string(&file).expect("read source");
            let text = code_of(&raw);
            let children = mod_decl
                .captures_iter(&text)
                .map(|c| c[1].to_string())
                .collect();
            Module {
                file,
                path,
                text,
                children,
            }
        })
        .collect()
}

/// Paths named in `text`, as written: `crate::a::b`, `super::super::x`, `child::y`, with
/// `use` groups (`crate::a::{b, c::d}`) expanded and a glob (`super::*`) naming its module.
fn named_paths(text: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let path_re = Regex::new(
        r"(?:\b|::)((?:crate|super|self|[a-z_][a-z0-9_]*)(?:::[A-Za-z_][A-Za-z0-9_]*)*)(::\{|::\*)?",
    )
    .expect("regex");
    let mut out = Vec::new();
    for c in path_re.captures_iter(text) {
        let whole = c.get(0).expect("match");
        if whole.as_str().starts_with("::") {
            continue; // the tail of a longer path, already taken whole
        }
        let segs: Vec<String> = c[1].split("::").map(str::to_string).collect();
        if segs.len() == 1 && c.get(2).is_none() {
            continue; // a lone word (`self`, `super`, a local name), not a path
        }
        let head = segs[0].as_str();
        let ours = head == "crate" || head == "super" || head == "self" || children.contains(head);
        if !ours {
            continue;
        }
        if c.get(2).is_some_and(|g| g.as_str() == "::*") {
            out.push(segs); // a glob names the module itself
        } else if c.get(2).is_some() {
            // A use group: expand each member (one level of nesting is all this code uses).
            let start = whole.end();
            let mut depth = 1;
            let mut end = start;
            for (i, ch) in text[start..].char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = start + i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let inner = text[start..end].replace(['{', '}'], ",");
            for member in inner.split(',') {
                let member = member.split(" as ").next().unwrap_or("").trim();
                if member.is_empty() || member == "self" {
                    out.push(segs.clone());
                    continue;
                }
                let mut p = segs.clone();
                p.extend(member.split("::").map(|s| s.trim().to_string()));
                out.push(p);
            }
        } else {
            out.push(segs);
        }
    }
    out
}

/// Absolute module path (from the crate root) of a path written in module `at`.
fn absolute(at: &[String], written: &[String]) -> Vec<String> {
    let mut base: Vec<String>;
    let mut rest = written;
    match written.first().map(String::as_str) {
        Some("crate") => {
            base = Vec::new();
            rest = &written[1..];
        }
        Some("super") => {
            base = at.to_vec();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        Some("self") => {
            base = at.to_vec();
            rest = &written[1..];
        }
        _ => base = at.to_vec(), // a child module of `at`
    }
    base.extend(rest.iter().cloned());
    base
}

/// The module an absolute path lands in: the deepest module file that is a prefix of it,
/// following `pub use` re-exports of the remaining item.
fn resolve(
    modules: &BTreeMap<Vec<String>, usize>,
    all: &[Module],
    path: &[String],
    depth: usize,
) -> Option<usize> {
    let mut k = path.len();
    while k > 0 && !modules.contains_key(&path[..k]) {
        k -= 1;
    }
    let idx = *modules.get(&path[..k])?;
    if depth < 4 && k < path.len() {
        // A re-export: `pub use child::Item;` or `pub use crate::x::Item;`.
        let item = &path[k];
        let m = &all[idx];
        let re = Regex::new(&format!(
            r"pub(?:\([a-z]+\))?\s+use\s+([A-Za-z0-9_:]*?)(?:::)?\{{?[^;]*\b{}\b[^;]*;",
            regex::escape(item)
        ))
        .expect("regex");
        if let Some(c) = re.captures(&m.text) {
            let stmt = c.get(0).expect("match").as_str();
            for p in named_paths(stmt, &m.children) {
                if p.last() == Some(item) {
                    let abs = absolute(&m.path, &p);
                    if abs != path {
                        return resolve(modules, all, &abs, depth + 1).or(Some(idx));
                    }
                }
            }
        }
    }
    Some(idx)
}

/// Edges between the modules of one crate, `from → to` by index, with a witness path.
fn edges(all: &[Module]) -> BTreeMap<(usize, usize), String> {
    let index: BTreeMap<Vec<String>, usize> = all
        .iter()
        .enumerate()
        .map(|(i, m)| (m.path.clone(), i))
        .collect();
    let mut out = BTreeMap::new();
    for (i, m) in all.iter().enumerate() {
        for written in named_paths(&m.text, &m.children) {
            let abs = absolute(&m.path, &written);
            let Some(j) = resolve(&index, all, &abs, 0) else {
                continue;
            };
            // A module naming its own ancestors' re-exports resolves through them; naming
            // itself or its own root is no dependency.
            if j != i && !all[j].path.is_empty() {
                out.entry((i, j)).or_insert_with(|| written.join("::"));
            }
        }
    }
    out
}

/// Strongly connected components of more than one module (Tarjan).
fn circles(n: usize, edges: &BTreeMap<(usize, usize), String>) -> Vec<Vec<usize>> {
    let mut adj = vec![Vec::new(); n];
    for &(a, b) in edges.keys() {
        adj[a].push(b);
    }
    struct State {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(v: usize, adj: &[Vec<usize>], s: &mut State) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on[v] = true;
        for &w in &adj[v] {
            match s.index[w] {
                None => {
                    visit(w, adj, s);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on[w] = false;
                comp.push(w);
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        index: vec![None; n],
        low: vec![0; n],
        on: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(v, &adj, &mut s);
        }
    }
    s.out
}

fn describe_circles(crate_dir: &str) -> Vec<String> {
    let all = load(&root().join(crate_dir));
    let e = edges(&all);
    circles(all.len(), &e)
        .into_iter()
        .map(|comp| {
            let set: BTreeSet<usize> = comp.iter().copied().collect();
            let arrows: Vec<String> = e
                .iter()
                .filter(|((a, b), _)| set.contains(a) && set.contains(b))
                .map(|((a, b), w)| {
                    format!(
                        "{} → {} ({w})",
                        all[*a]
                            .file
                            .strip_prefix(root())
                            .unwrap_or(&all[*a].file)
                            .display(),
                        all[*b]
                            .file
                            .strip_prefix(root())
                            .unwrap_or(&all[*b].file)
                            .display()
                    )
                })
                .collect();
            arrows.join("\n    ")
        })
        .collect()
}

#[test]
fn no_import_circle_in_any_crate() {
    let mut found = Vec::new();
    for dir in ["src", "raft/src", "storage/src", "proto/src"] {
        for c in describe_circles(dir) {
            found.push(format!("in {dir}:\n    {c}"));
        }
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn no_module_imports_from_a_higher_floor() {
    let floor_of = |top: &str| FLOORS.iter().position(|f| f.contains(&top));
    let all = load(&root().join("src"));
    let mut unknown = BTreeSet::new();
    let mut upward = Vec::new();
    for m in &all {
        if let Some(top) = m.path.first() {
            if floor_of(top).is_none() {
                unknown.insert(top.clone());
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules on no floor (add them to FLOORS): {unknown:?}"
    );
    for ((a, b), witness) in edges(&all) {
        let (fa, fb) = (&all[a].path[0], &all[b].path[0]);
        if floor_of(fb) > floor_of(fa) {
            upward.push(format!(
                "{} ({fa}) → {} ({fb}) via {witness}",
                all[a]
                    .file
                    .strip_prefix(root())
                    .unwrap_or(&all[a].file)
                    .display(),
                all[b]
                    .file
                    .strip_prefix(root())
                    .unwrap_or(&all[b].file)
                    .display(),
            ));
        }
    }
    assert!(
        upward.is_empty(),
        "imports from a higher floor:\n{}",
        upward.join("\n")
    );
}

/// The checker itself finds a circle and an upward arrow where there is one.
#[test]
fn checker_sees_circles_and_resolves_reexports() {
    let m = |path: &[&str], text: &str, children: &[&str]| Module {
        file: PathBuf::from(path.join("/")),
        path: path.iter().map(|s| s.to_string()).collect(),
        text: code_of(text),
        children: children.iter().map(|s| s.to_string()).collect(),
    };
    let all = vec![
        m(&[], "pub mod a; pub mod b;", &["a", "b"]),
        m(&["a"], "pub mod inner; pub use inner::Thing; use crate::b::{f, g as h};", &["inner"]),
        m(&["a", "inner"], "pub struct Thing; fn x() { super::super::b::f(); }", &[]),
        m(&["b"], "use crate::a::Thing; pub fn f() {} pub fn g() {}\n#[cfg(test)]\nmod tests { use super::*; }", &[]),
    ];
    let e = edges(&all);
    // b names a::Thing, which is a::inner's: the edge goes to a::inner, not to a.
    assert!(e.contains_key(&(3, 2)), "{e:?}");
    assert!(!e.contains_key(&(3, 1)), "{e:?}");
    let c = circles(all.len(), &e);
    assert_eq!(c.len(), 1, "{c:?} from {e:?}");
    let set: BTreeSet<usize> = c[0].iter().copied().collect();
    assert_eq!(set, BTreeSet::from([2, 3]));
}

/// A group straight under `super`/`crate` and a glob are edges too (both once slipped through).
#[test]
fn checker_sees_bare_groups_and_globs() {
    let m = |path: &[&str], text: &str, children: &[&str]| Module {
        file: PathBuf::from(path.join("/")),
        path: path.iter().map(|s| s.to_string()).collect(),
        text: code_of(text),
        children: children.iter().map(|s| s.to_string()).collect(),
    };
    let all = vec![
        m(&[], "pub mod p;", &["p"]),
        m(
            &["p"],
            "mod c; mod d; pub struct S; fn f() { c::g(); d::h(); }",
            &["c", "d"],
        ),
        m(&["p", "c"], "use super::{S, d};", &[]),
        m(&["p", "d"], "use super::*;", &[]),
    ];
    let e = edges(&all);
    assert!(e.contains_key(&(2, 1)), "group under super: {e:?}");
    assert!(e.contains_key(&(3, 1)), "glob: {e:?}");
    let lone = named_paths("fn f(&self) { let x = self; }", &BTreeSet::new());
    assert!(lone.is_empty(), "{lone:?}");
}
