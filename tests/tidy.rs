//! The layering DESIGN.md asks for, checked on the real dependency graph: the synchronous core
//! crates (`armada-storage`, `armada-table`) know nothing of async runtimes, gRPC, HTTP, TLS,
//! QUIC or Raft. A dependency that brings one of those into either crate's normal closure (as
//! `armada-proto`'s tonic services once did, now behind its `grpc` feature) fails this test.

use std::collections::BTreeSet;
use std::process::Command;

/// Crates the core must not depend on, directly or through anything else.
const FORBIDDEN: [&str; 7] = [
    "tokio", "tonic", "hyper", "h2", "rustls", "quinn", "openraft",
];

/// Names of every crate in `package`'s normal (non-dev, non-build) dependency closure, with the
/// features that building `package` alone would enable.
fn normal_closure(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "--locked", "--offline", "-p", package])
        .args(["-e", "normal", "--prefix", "none", "-f", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn forbidden_in(package: &str) -> Vec<&'static str> {
    let closure = normal_closure(package);
    assert!(
        closure.contains(package),
        "{package} missing from its own tree"
    );
    FORBIDDEN
        .into_iter()
        .filter(|name| closure.contains(*name))
        .collect()
}

#[test]
fn the_core_crates_depend_on_no_runtime_network_or_raft_crate() {
    for package in ["armada-storage", "armada-table"] {
        assert_eq!(
            forbidden_in(package),
            Vec::<&str>::new(),
            "{package} must stay synchronous and IO-free (DESIGN.md §2); see `cargo tree -p \
             {package} -e normal -i <crate>` for the path that brings it in"
        );
    }
}

#[test]
fn the_check_sees_what_the_server_crate_depends_on() {
    // The same method must find the forbidden crates where they belong.
    assert_eq!(forbidden_in("armada-server"), FORBIDDEN.to_vec());
}

/// No two source files of a crate import from each other, directly or around a longer circle
/// (issue #14 item 2). A file's imports are every `use` tree and every path in its code that
/// starts with `crate::`, `super::`, `self::` or the name of a module it declares; each one is
/// an arrow to the file of the deepest module the path names. Test-only code (`#[cfg(test)]`
/// items and the modules they declare) is left out: a test may look at whatever it tests.
mod imports {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    use syn::visit::Visit;

    /// A module's path inside its crate: `[]` for the crate root, `["groups", "log"]` for
    /// `groups/log/mod.rs`.
    type ModulePath = Vec<String>;

    struct SourceFile {
        file: PathBuf,
        syntax: syn::File,
    }

    fn is_test_only(attrs: &[syn::Attribute]) -> bool {
        attrs.iter().any(|attr| {
            attr.path().is_ident("cfg")
                && attr
                    .parse_args::<syn::Meta>()
                    .is_ok_and(|meta| meta.path().is_ident("test"))
        })
    }

    fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
        match item {
            syn::Item::Const(item) => &item.attrs,
            syn::Item::Enum(item) => &item.attrs,
            syn::Item::Fn(item) => &item.attrs,
            syn::Item::Impl(item) => &item.attrs,
            syn::Item::Macro(item) => &item.attrs,
            syn::Item::Mod(item) => &item.attrs,
            syn::Item::Static(item) => &item.attrs,
            syn::Item::Struct(item) => &item.attrs,
            syn::Item::Trait(item) => &item.attrs,
            syn::Item::Type(item) => &item.attrs,
            syn::Item::Union(item) => &item.attrs,
            syn::Item::Use(item) => &item.attrs,
            _ => &[],
        }
    }

    /// Every module file of the crate whose root is `root`, following `mod name;` declarations
    /// that are not test-only.
    fn module_files(root: &Path) -> BTreeMap<ModulePath, SourceFile> {
        let mut modules = BTreeMap::new();
        let mut pending = vec![(Vec::new(), root.to_path_buf())];
        while let Some((module, file)) = pending.pop() {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|error| panic!("read {}: {error}", file.display()));
            let syntax = syn::parse_file(&text)
                .unwrap_or_else(|error| panic!("parse {}: {error}", file.display()));
            let is_directory_owner = file == root || file.ends_with("mod.rs");
            let directory = if is_directory_owner {
                file.parent().expect("file has a directory").to_path_buf()
            } else {
                file.with_extension("")
            };
            for item in &syntax.items {
                let syn::Item::Mod(declared) = item else {
                    continue;
                };
                if declared.content.is_some() || is_test_only(&declared.attrs) {
                    continue;
                }
                let name = declared.ident.to_string();
                let flat = directory.join(format!("{name}.rs"));
                let nested = directory.join(&name).join("mod.rs");
                let child = if flat.exists() { flat } else { nested };
                let mut child_module = module.clone();
                child_module.push(name);
                pending.push((child_module, child));
            }
            modules.insert(module, SourceFile { file, syntax });
        }
        modules
    }

    /// The paths a file mentions, as written (`["crate", "node", "Node"]`).
    #[derive(Default)]
    struct Mentions {
        paths: Vec<Vec<String>>,
        /// Which of `paths` a `use … as name` gave another name.
        renames: Vec<(usize, String)>,
        /// `pub use` items: the name they give → the path they name. A re-export is the module's
        /// signboard, not a use: an arrow goes to the file that defines what is re-exported.
        reexports: BTreeMap<String, Vec<String>>,
    }

    impl Mentions {
        fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
            match tree {
                syn::UseTree::Path(path) => {
                    prefix.push(path.ident.to_string());
                    self.use_tree(prefix, &path.tree);
                    prefix.pop();
                }
                syn::UseTree::Name(name) => {
                    let mut path = prefix.clone();
                    path.push(name.ident.to_string());
                    self.paths.push(path);
                }
                syn::UseTree::Rename(rename) => {
                    let mut path = prefix.clone();
                    path.push(rename.ident.to_string());
                    self.paths.push(path);
                    let renamed = self.paths.len() - 1;
                    self.renames.push((renamed, rename.rename.to_string()));
                }
                syn::UseTree::Glob(_) => {
                    let mut path = prefix.clone();
                    path.push("*".to_string());
                    self.paths.push(path);
                }
                syn::UseTree::Group(group) => {
                    for tree in &group.items {
                        self.use_tree(prefix, tree);
                    }
                }
            }
        }
    }

    impl<'ast> Visit<'ast> for Mentions {
        fn visit_item(&mut self, item: &'ast syn::Item) {
            if !is_test_only(item_attrs(item)) {
                syn::visit::visit_item(self, item);
            }
        }

        fn visit_impl_item_fn(&mut self, function: &'ast syn::ImplItemFn) {
            if !is_test_only(&function.attrs) {
                syn::visit::visit_impl_item_fn(self, function);
            }
        }

        fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
            let first = self.paths.len();
            self.use_tree(&mut Vec::new(), &item.tree);
            let renames: BTreeMap<usize, String> = self.renames.drain(..).collect();
            if matches!(item.vis, syn::Visibility::Inherited) {
                return;
            }
            for (index, path) in self.paths.drain(first..).enumerate() {
                if path.last().is_some_and(|segment| segment == "*") {
                    continue;
                }
                let name = renames
                    .get(&(first + index))
                    .cloned()
                    .or_else(|| path.last().cloned())
                    .unwrap_or_default();
                self.reexports.insert(name, path);
            }
        }

        fn visit_visibility(&mut self, _: &'ast syn::Visibility) {
            // `pub(crate)` and `pub(super)` name who may see an item, not what it uses.
        }

        fn visit_path(&mut self, path: &'ast syn::Path) {
            let segments = path.segments.iter().map(|s| s.ident.to_string()).collect();
            self.paths.push(segments);
            syn::visit::visit_path(self, path);
        }
    }

    /// What each module file declares and mentions.
    struct Module {
        source: SourceFile,
        children: BTreeSet<String>,
        mentions: Mentions,
    }

    /// The module a path written in `module` names, if it is one of this crate's, and the
    /// segments after it.
    fn locate(
        modules: &BTreeMap<ModulePath, Module>,
        module: &ModulePath,
        path: &[String],
    ) -> Option<(ModulePath, Vec<String>)> {
        let (mut full, rest): (ModulePath, &[String]) = match path.first()?.as_str() {
            "crate" => (Vec::new(), &path[1..]),
            "self" => (module.clone(), &path[1..]),
            "super" => {
                let mut base = module.clone();
                let mut rest = path;
                while rest.first().is_some_and(|segment| segment == "super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                (base, rest)
            }
            name if modules[module].children.contains(name) => (module.clone(), path),
            _ => return None,
        };
        full.extend(rest.iter().cloned());
        (0..=full.len()).rev().find_map(|length| {
            let prefix = full[..length].to_vec();
            modules
                .contains_key(&prefix)
                .then(|| (prefix, full[length..].to_vec()))
        })
    }

    /// The module file that defines what `path`, written in `module`, names: re-exports are
    /// followed to where the item lives.
    fn resolve(
        modules: &BTreeMap<ModulePath, Module>,
        module: &ModulePath,
        path: &[String],
    ) -> Option<ModulePath> {
        let (mut target, mut rest) = locate(modules, module, path)?;
        for _ in 0..16 {
            let Some(reexported) = rest
                .first()
                .and_then(|name| modules[&target].mentions.reexports.get(name))
            else {
                break;
            };
            let mut next = reexported.clone();
            next.extend(rest[1..].iter().cloned());
            match locate(modules, &target, &next) {
                Some((found, remaining)) => (target, rest) = (found, remaining),
                None => break,
            }
        }
        Some(target)
    }

    /// `file → files it imports from`, over the crate whose root file is `root`.
    fn import_graph(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
        let files = module_files(root);
        let paths: Vec<ModulePath> = files.keys().cloned().collect();
        let modules: BTreeMap<ModulePath, Module> = files
            .into_iter()
            .map(|(module, source)| {
                let children = paths
                    .iter()
                    .filter(|other| other.len() == module.len() + 1 && other.starts_with(&module))
                    .map(|other| other[module.len()].clone())
                    .collect();
                let mut mentions = Mentions::default();
                mentions.visit_file(&source.syntax);
                (
                    module,
                    Module {
                        source,
                        children,
                        mentions,
                    },
                )
            })
            .collect();
        let base = root.parent().expect("root has a directory");
        let name = |module: &ModulePath| {
            let file = &modules[module].source.file;
            file.strip_prefix(base)
                .unwrap_or(file)
                .display()
                .to_string()
        };
        modules
            .iter()
            .map(|(module, entry)| {
                let targets = entry
                    .mentions
                    .paths
                    .iter()
                    .filter_map(|path| resolve(&modules, module, path))
                    .filter(|target| target != module)
                    .map(|target| name(&target))
                    .collect();
                (name(module), targets)
            })
            .collect()
    }

    /// The strongly connected components with more than one file (Tarjan's algorithm).
    fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
        struct Search<'a> {
            graph: &'a BTreeMap<String, BTreeSet<String>>,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on_stack: BTreeSet<&'a str>,
            found: Vec<Vec<String>>,
        }
        impl<'a> Search<'a> {
            fn visit(&mut self, node: &'a str) {
                let order = self.index.len();
                self.index.insert(node, order);
                self.low.insert(node, order);
                self.stack.push(node);
                self.on_stack.insert(node);
                for next in self.graph.get(node).into_iter().flatten() {
                    let next = next.as_str();
                    if !self.index.contains_key(next) {
                        self.visit(next);
                        let low = self.low[node].min(self.low[next]);
                        self.low.insert(node, low);
                    } else if self.on_stack.contains(next) {
                        let low = self.low[node].min(self.index[next]);
                        self.low.insert(node, low);
                    }
                }
                if self.low[node] == self.index[node] {
                    let mut component = Vec::new();
                    while let Some(member) = self.stack.pop() {
                        self.on_stack.remove(member);
                        component.push(member.to_string());
                        if member == node {
                            break;
                        }
                    }
                    if component.len() > 1 {
                        component.sort();
                        self.found.push(component);
                    }
                }
            }
        }
        let mut search = Search {
            graph,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            found: Vec::new(),
        };
        for node in graph.keys() {
            if !search.index.contains_key(node.as_str()) {
                search.visit(node);
            }
        }
        search.found
    }

    fn describe(graph: &BTreeMap<String, BTreeSet<String>>, circle: &[String]) -> String {
        let members: BTreeSet<&String> = circle.iter().collect();
        let arrows: Vec<String> = circle
            .iter()
            .flat_map(|from| {
                graph[from]
                    .iter()
                    .filter(|to| members.contains(to))
                    .map(move |to| format!("    {from} → {to}"))
            })
            .collect();
        arrows.join("\n")
    }

    fn circles_in(root: &str) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(root);
        let graph = import_graph(&root);
        circles(&graph)
            .iter()
            .map(|circle| describe(&graph, circle))
            .collect()
    }

    #[test]
    fn no_two_files_of_a_crate_import_from_each_other() {
        let mut report = Vec::new();
        for root in [
            "crates/storage/src/lib.rs",
            "crates/table/src/lib.rs",
            "crates/server/src/lib.rs",
            "crates/client/src/lib.rs",
        ] {
            for circle in circles_in(root) {
                report.push(format!("{root}:\n{circle}"));
            }
        }
        assert!(
            report.is_empty(),
            "import circles (move the shared item into a module both can use):\n{}",
            report.join("\n")
        );
    }

    #[test]
    fn the_check_finds_a_circle() {
        let graph = BTreeMap::from([
            ("a.rs".to_string(), BTreeSet::from(["b.rs".to_string()])),
            ("b.rs".to_string(), BTreeSet::from(["c.rs".to_string()])),
            ("c.rs".to_string(), BTreeSet::from(["a.rs".to_string()])),
            ("d.rs".to_string(), BTreeSet::from(["a.rs".to_string()])),
        ]);
        assert_eq!(circles(&graph), vec![vec!["a.rs", "b.rs", "c.rs"]]);
    }
}
