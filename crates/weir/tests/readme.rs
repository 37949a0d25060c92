//! The README says which dependency does what (the brief asks for it): every crate any
//! manifest of the repository depends on has a line in its "Dependencies" section.

use std::path::Path;

/// The dependency names a manifest lists, in every dependency table.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut names = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line.ends_with("dependencies]");
            continue;
        }
        if !in_deps || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
        if !name.is_empty() && !name.starts_with("weir") {
            names.push(name.to_string());
        }
    }
    names
}

#[test]
fn the_readme_says_what_every_dependency_does() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let read =
        |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let readme = read(&root.join("README.md"));
    let section = readme
        .split("\n## Dependencies")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README.md has a \"## Dependencies\" section");
    let mut manifests = vec![root.join("Cargo.toml"), root.join("fuzz/Cargo.toml")];
    for entry in std::fs::read_dir(root.join("crates")).expect("crates/") {
        manifests.push(entry.expect("crates/ entry").path().join("Cargo.toml"));
    }
    let mut missing = Vec::new();
    for m in &manifests {
        for name in dependencies(&read(m)) {
            if !section.contains(&format!("`{name}`")) && !missing.contains(&name) {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README.md's Dependencies section does not say what these do: {missing:?}"
    );
}
