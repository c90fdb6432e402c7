//! The folders of `src/` form layers: no folder imports one that imports it back, directly or
//! around a loop (README "Layout"). Read from the source: every `crate::<folder>` path outside
//! comments and test modules is an edge; a strongly connected group of two or more folders
//! fails the test and names its edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn top_level_modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?.to_string();
            if path.is_dir() {
                Some(name)
            } else {
                let stem = name.strip_suffix(".rs")?;
                (stem != "lib" && stem != "main").then(|| stem.to_string())
            }
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without comment lines and without its `#[cfg(test)]` module (which by
/// this codebase's habit is the file's last item).
fn production_code(text: &str) -> String {
    let code: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect();
    let code = code.join("\n");
    match code.find("#[cfg(test)]") {
        Some(at) => code[..at].to_string(),
        None => code,
    }
}

/// The folders a file's code names: `crate::x` and each name in `crate::{x, y::z}`.
fn named_modules(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                named.insert(ident(item.trim()));
            }
        } else {
            named.insert(ident(rest));
        }
    }
    named.retain(|name| modules.contains(name));
    named
}

fn dependency_graph(src: &Path) -> Graph {
    let modules = top_level_modules(src);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap();
        let first = first.as_os_str().to_str().unwrap();
        let from = first.strip_suffix(".rs").unwrap_or(first).to_string();
        if !modules.contains(&from) {
            continue;
        }
        let code = production_code(&std::fs::read_to_string(&file).unwrap());
        for to in named_modules(&code, &modules) {
            if to != from {
                let seen_in = graph.get_mut(&from).unwrap().entry(to).or_default();
                seen_in.insert(relative.display().to_string());
            }
        }
    }
    graph
}

/// Groups of two or more folders that reach each other (Tarjan's algorithm).
fn cycles(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct Walk<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(walk: &mut Walk<'a>, node: &'a str) {
        let n = walk.index.len();
        walk.index.insert(node, n);
        walk.low.insert(node, n);
        walk.stack.push(node);
        walk.on_stack.insert(node);
        for next in walk.graph[node].keys() {
            let next = next.as_str();
            if !walk.index.contains_key(next) {
                visit(walk, next);
                let low = walk.low[node].min(walk.low[next]);
                walk.low.insert(node, low);
            } else if walk.on_stack.contains(next) {
                let low = walk.low[node].min(walk.index[next]);
                walk.low.insert(node, low);
            }
        }
        if walk.low[node] == walk.index[node] {
            let mut group = BTreeSet::new();
            while let Some(top) = walk.stack.pop() {
                walk.on_stack.remove(top);
                group.insert(top.to_string());
                if top == node {
                    break;
                }
            }
            if group.len() > 1 {
                walk.found.push(group);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            visit(&mut walk, node);
        }
    }
    walk.found
}

#[test]
fn no_folder_of_src_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = dependency_graph(&src);
    assert!(graph.len() > 10, "the folders of src/ were read: {graph:?}");
    let found = cycles(&graph);
    let explain = |group: &BTreeSet<String>| -> String {
        let mut lines = Vec::new();
        for from in group {
            for (to, files) in &graph[from] {
                if group.contains(to) {
                    lines.push(format!("  {from} -> {to} (in {files:?})"));
                }
            }
        }
        lines.join("\n")
    };
    let report: Vec<String> = found.iter().map(explain).collect();
    assert!(
        found.is_empty(),
        "folders in a dependency loop:\n{}",
        report.join("\n\n")
    );
}

#[test]
fn the_check_finds_a_loop_when_there_is_one() {
    let mut graph: Graph = BTreeMap::new();
    let edge = |graph: &mut Graph, from: &str, to: &str| {
        graph.entry(to.into()).or_default();
        graph
            .entry(from.into())
            .or_default()
            .entry(to.into())
            .or_default()
            .insert(format!("{from}/mod.rs"));
    };
    edge(&mut graph, "cache", "config");
    edge(&mut graph, "flow", "cache");
    edge(&mut graph, "app", "flow");
    assert!(cycles(&graph).is_empty());
    edge(&mut graph, "flow", "app");
    let found = cycles(&graph);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0],
        BTreeSet::from(["app".to_string(), "flow".to_string()])
    );
    // What the source reader counts as an edge, and what it leaves out.
    let modules = BTreeSet::from(["cache".to_string(), "flow".to_string(), "wire".to_string()]);
    let code = production_code(
        "use crate::{cache::Lookup, wire::body};\n// crate::flow in a comment\n\
         fn f() {}\n#[cfg(test)]\nmod tests { use crate::flow::x; }",
    );
    assert_eq!(
        named_modules(&code, &modules),
        BTreeSet::from(["cache".to_string(), "wire".to_string()])
    );
}
