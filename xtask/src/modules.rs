//! `cargo xtask modules [--check]`: the daemon's module graph, read from the `crate::`/`super::`
//! paths of `metadataproxy/src` (test code left out), and the cycles in it.
//!
//! An edge A → B means some non-test code of module A (or a module below it) names an item of
//! module B (or below it). Cycles are looked for among the children of every module: the top-level
//! modules of the crate, the modules inside each folder, and so on down. Items are not nodes: a type
//! and its own methods are one module, so they never form a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use syn::visit::Visit;

use crate::repo;

/// A module path below the crate root, e.g. `["identity", "cgroup"]`; empty is the crate root.
type ModPath = Vec<String>;

/// Prints the graph (top level, then every folder) and its cycles; with `check`, fails on a cycle.
pub fn run(check: bool) -> Result<()> {
    let src = repo::root().join("metadataproxy").join("src");
    let uses = collect(&src)?;
    let report = report(&uses);
    print!("{}", report.text);
    if check && report.cycles > 0 {
        bail!(
            "{} module cycle(s) in metadataproxy/src (see above)",
            report.cycles
        );
    }
    Ok(())
}

/// Every `(from module, to module, file)` reference, deduplicated.
type Uses = BTreeSet<(ModPath, ModPath, String)>;

/// Every `(from module, absolute path named, file)`, before paths are resolved to modules.
type Raw = BTreeSet<(ModPath, Vec<String>, String)>;

/// Parses every module file reachable from `lib.rs` and collects what each refers to.
fn collect(src: &Path) -> Result<Uses> {
    let mut raw = Raw::new();
    let mut modules = BTreeSet::from([ModPath::new()]);
    let mut pending = vec![(src.join("lib.rs"), ModPath::new())];
    while let Some((file, module)) = pending.pop() {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let ast = syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
        let rel = file
            .strip_prefix(src)
            .unwrap_or(&file)
            .display()
            .to_string();
        let mut visitor = Visitor {
            module: module.clone(),
            file: &file,
            rel: &rel,
            raw: &mut raw,
            modules: &mut modules,
            children: Vec::new(),
        };
        visitor.visit_file(&ast);
        pending.extend(visitor.children);
    }
    Ok(resolve(&raw, &modules))
}

/// Each path as the longest known module it starts with (`a::b::Item` → `a::b`); paths naming
/// the crate root alone are dropped.
fn resolve(raw: &Raw, modules: &BTreeSet<ModPath>) -> Uses {
    raw.iter()
        .filter_map(|(from, path, file)| {
            let to = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|prefix| modules.contains(prefix))?;
            Some((from.clone(), to, file.clone()))
        })
        .collect()
}

/// Walks one file: records references, and the files of its out-of-line child modules.
struct Visitor<'a> {
    module: ModPath,
    file: &'a Path,
    rel: &'a str,
    raw: &'a mut Raw,
    modules: &'a mut BTreeSet<ModPath>,
    children: Vec<(PathBuf, ModPath)>,
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>().is_ok_and(|m| match m {
                syn::Meta::Path(p) => p.is_ident("test"),
                // `cfg(any(test, …))` and the like: test or fuzzing-only code is left out too.
                syn::Meta::List(l) => l
                    .tokens
                    .to_string()
                    .split(|c: char| !c.is_alphanumeric() && c != '_')
                    .any(|t| t == "test" || t == "fuzzing"),
                syn::Meta::NameValue(_) => false,
            })
    })
}

fn path_attr(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| {
        let syn::Meta::NameValue(nv) = &a.meta else {
            return None;
        };
        if !nv.path.is_ident("path") {
            return None;
        }
        match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        }
    })
}

impl Visitor<'_> {
    /// The directory holding this module's children (`foo/` for `foo.rs`, the file's own folder
    /// for `mod.rs` and `lib.rs`).
    fn child_dir(&self) -> PathBuf {
        let dir = self.file.parent().unwrap_or(Path::new("."));
        let stem = self.file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if matches!(stem, "mod" | "lib" | "main") {
            dir.to_path_buf()
        } else {
            dir.join(stem)
        }
    }

    /// The absolute path (below the crate root) that `crate::…`, `super::…` or `self::…` names;
    /// `None` for other paths (std, dependencies, local names).
    fn absolute(&self, segments: &[String]) -> Option<Vec<String>> {
        let (mut base, rest) = match segments.first().map(String::as_str) {
            Some("crate") => (ModPath::new(), &segments[1..]),
            Some("super") => {
                let mut base = self.module.clone();
                let mut rest = segments;
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                (base, rest)
            }
            Some("self") => (self.module.clone(), &segments[1..]),
            _ => return None,
        };
        base.extend(rest.iter().filter(|s| *s != "self").cloned());
        Some(base)
    }

    fn record(&mut self, segments: &[String]) {
        if let Some(path) = self.absolute(segments) {
            self.raw
                .insert((self.module.clone(), path, self.rel.to_owned()));
        }
    }
}

fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut full = prefix.clone();
            full.push(n.ident.to_string());
            out.push(full);
        }
        syn::UseTree::Rename(r) => {
            let mut full = prefix.clone();
            full.push(r.ident.to_string());
            out.push(full);
        }
        syn::UseTree::Glob(_) => {
            // `use crate::a::*`: the module `a` itself (a placeholder item keeps it whole).
            let mut full = prefix.clone();
            full.push("*".to_owned());
            out.push(full);
        }
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_paths(t, prefix, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for Visitor<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Type(t) => &t.attrs,
            syn::Item::Macro(m) => &m.attrs,
            _ => &[],
        };
        if is_test_only(attrs) {
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        let name = m.ident.to_string();
        let mut child = self.module.clone();
        child.push(name.clone());
        self.modules.insert(child.clone());
        if let Some((_, items)) = &m.content {
            // An inline module: its items belong to the child module.
            let parent = std::mem::replace(&mut self.module, child);
            for item in items {
                self.visit_item(item);
            }
            self.module = parent;
            return;
        }
        let dir = self.child_dir();
        let file = match path_attr(&m.attrs) {
            Some(p) => self.file.parent().unwrap_or(Path::new(".")).join(p),
            None if dir.join(format!("{name}.rs")).exists() => dir.join(format!("{name}.rs")),
            None => dir.join(&name).join("mod.rs"),
        };
        self.children.push((file, child));
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut paths = Vec::new();
        use_paths(&u.tree, &mut Vec::new(), &mut paths);
        for p in paths {
            self.record(&p);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        self.record(&segments);
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        // Paths inside macro calls (`tracing::info!(… crate::x::y …)`) are tokens, not syntax:
        // read `crate :: a :: b` runs from the flattened token stream.
        let mut tokens = Vec::new();
        flatten(m.tokens.clone(), &mut tokens);
        let mut i = 0;
        while i < tokens.len() {
            if !matches!(tokens[i].as_str(), "crate" | "super") {
                i += 1;
                continue;
            }
            let mut segments = vec![tokens[i].clone()];
            let mut j = i + 1;
            while tokens.get(j).map(String::as_str) == Some(":")
                && tokens.get(j + 1).map(String::as_str) == Some(":")
                && let Some(next) = tokens.get(j + 2)
            {
                segments.push(next.clone());
                j += 3;
            }
            self.record(&segments);
            i = j;
        }
        syn::visit::visit_macro(self, m);
    }
}

/// The tokens of `stream` as strings, groups opened.
fn flatten(stream: proc_macro2::TokenStream, out: &mut Vec<String>) {
    for t in stream {
        match t {
            proc_macro2::TokenTree::Group(g) => flatten(g.stream(), out),
            other => out.push(other.to_string()),
        }
    }
}

/// What [`report`] found.
struct Report {
    text: String,
    cycles: usize,
}

/// For every module with children: the edges between its children and their cycles.
fn report(uses: &Uses) -> Report {
    // parent → (child A → child B → files)
    let mut levels: BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, BTreeSet<String>>>> =
        BTreeMap::new();
    for (from, to, file) in uses {
        // The deepest common ancestor decides the level; the edge joins its two children.
        let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
        let (Some(a), Some(b)) = (from.get(common), to.get(common)) else {
            // One is inside the other (a module using its own child or parent): not a sibling edge.
            continue;
        };
        levels
            .entry(from[..common].to_vec())
            .or_default()
            .entry(a.clone())
            .or_default()
            .entry(b.clone())
            .or_default()
            .insert(file.clone());
    }
    let mut text = String::new();
    let mut cycles = 0;
    for (parent, edges) in &levels {
        let name = if parent.is_empty() {
            "crate".to_owned()
        } else {
            format!("crate::{}", parent.join("::"))
        };
        let sccs = cycles_in(edges);
        let _ = writeln!(
            text,
            "{name}: {} dependencies between its modules, {} cycle(s)",
            edges.values().map(BTreeMap::len).sum::<usize>(),
            sccs.len()
        );
        for (a, targets) in edges {
            let _ = writeln!(
                text,
                "  {a} -> {}",
                targets.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        for scc in &sccs {
            cycles += 1;
            let _ = writeln!(text, "  CYCLE: {}", scc.join(" <-> "));
            for a in scc {
                for (b, files) in &edges[a] {
                    if scc.contains(b) {
                        let files: Vec<&str> = files.iter().map(String::as_str).collect();
                        let _ = writeln!(text, "    {a} -> {b}  ({})", files.join(", "));
                    }
                }
            }
        }
    }
    Report { text, cycles }
}

/// The strongly connected components with more than one node (Tarjan's algorithm).
fn cycles_in(edges: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            let edges = self.edges;
            for w in edges.get(v).into_iter().flat_map(BTreeMap::keys) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    scc.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.out.push(scc);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uses(edges: &[(&str, &str)]) -> Uses {
        edges
            .iter()
            .map(|(a, b)| {
                let split = |s: &str| s.split("::").map(str::to_owned).collect::<ModPath>();
                (split(a), split(b), format!("{a}.rs"))
            })
            .collect()
    }

    #[test]
    fn a_two_way_pair_between_top_level_modules_is_a_cycle() {
        let r = report(&uses(&[
            ("config", "docker"),
            ("docker::sync", "config"),
            ("role", "clock"),
        ]));
        assert_eq!(r.cycles, 1, "{}", r.text);
        assert!(r.text.contains("CYCLE: config <-> docker"), "{}", r.text);
        assert!(
            r.text.contains("docker -> config  (docker::sync.rs)"),
            "{}",
            r.text
        );
    }

    #[test]
    fn edges_inside_one_folder_are_judged_there_and_a_chain_is_no_cycle() {
        let r = report(&uses(&[
            ("imds::service", "imds::path"),
            ("imds::path", "imds::token"),
            ("imds::service", "identity"),
            ("identity", "role"),
        ]));
        assert_eq!(r.cycles, 0, "{}", r.text);
        assert!(r.text.contains("crate::imds: 2 dependencies"), "{}", r.text);
        let r = report(&uses(&[
            ("imds::a", "imds::b"),
            ("imds::b", "imds::c"),
            ("imds::c", "imds::a"),
        ]));
        assert_eq!(r.cycles, 1, "{}", r.text);
        assert!(r.text.contains("CYCLE: a <-> b <-> c"), "{}", r.text);
    }

    #[test]
    fn paths_resolve_to_the_longest_known_module() {
        let seg = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
        let file = PathBuf::from("x/src/identity/cgroup.rs");
        let (mut raw, mut modules) = (Raw::new(), BTreeSet::new());
        let mut v = Visitor {
            module: seg("identity::cgroup"),
            file: &file,
            rel: "identity/cgroup.rs",
            raw: &mut raw,
            modules: &mut modules,
            children: Vec::new(),
        };
        assert_eq!(v.absolute(&seg("super::super::ebpf")), Some(seg("ebpf")));
        assert_eq!(v.absolute(&seg("std::sync::Arc")), None);
        for p in [
            "crate::docker::Container",
            "crate::docker::identify::answer",
            "super::mapping_file::Mapping",
            "crate::docker::{self}",
            "super::super::ebpf",
            "crate::nothing_known",
        ] {
            v.record(&seg(&p.replace("{self}", "self")));
        }
        let known = [
            "docker",
            "docker::identify",
            "identity",
            "identity::mapping_file",
            "ebpf",
        ]
        .iter()
        .map(|m| seg(m))
        .collect();
        let to: BTreeSet<ModPath> = resolve(&raw, &known)
            .into_iter()
            .map(|(_, t, _)| t)
            .collect();
        let want: BTreeSet<ModPath> = [
            "docker",
            "docker::identify",
            "identity::mapping_file",
            "ebpf",
        ]
        .iter()
        .map(|m| seg(m))
        .collect();
        assert_eq!(to, want);
    }

    #[test]
    fn test_code_is_left_out() {
        let parse = |s: &str| syn::parse_str::<syn::ItemMod>(s).expect("item");
        assert!(is_test_only(&parse("#[cfg(test)] mod t {}").attrs));
        assert!(is_test_only(
            &parse("#[cfg(any(test, fuzzing))] mod t {}").attrs
        ));
        assert!(!is_test_only(&parse("#[cfg(unix)] mod t {}").attrs));
    }
}
