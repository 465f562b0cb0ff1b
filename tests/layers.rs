//! The crate's layering, checked: every `crate::<module>` path in a file of
//! `src/` names a module of a lower layer than the file's own, by the table
//! at the top of `src/lib.rs`. A test of the checker itself shows it failing
//! on a deliberate violation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layer of each top-level module, read from the table between the
/// `layers:begin` and `layers:end` markers in src/lib.rs.
fn layer_table(lib: &str) -> BTreeMap<String, usize> {
    let begin = lib
        .find("layers:begin")
        .expect("src/lib.rs has a layer table");
    let end = lib.find("layers:end").expect("the layer table ends");
    let mut layers = BTreeMap::new();
    for row in lib[begin..end].lines() {
        let cells: Vec<&str> = row.trim_start_matches("//!").split('|').collect();
        let (Some(layer), Some(modules)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Ok(layer) = layer.trim().parse::<usize>() else {
            continue;
        };
        for module in modules.split('`').skip(1).step_by(2) {
            layers.insert(module.to_owned(), layer);
        }
    }
    layers
}

/// Top-level modules named by `crate::` paths in `source`, outside comments
/// and string literals.
fn crate_paths(source: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (i, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        // Paths in string literals (messages naming a module) do not count.
        let mut in_string = false;
        let mut bare = String::new();
        for c in code.chars() {
            if c == '"' {
                in_string = !in_string;
            } else if !in_string {
                bare.push(c);
            }
        }
        let mut rest = bare.as_str();
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` groups: each member.
            if let Some(group) = after.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or("");
                for item in group.split(',') {
                    let module = item.trim().split("::").next().unwrap_or("").trim();
                    if !module.is_empty() {
                        found.push((i + 1, module.to_owned()));
                    }
                }
            } else if !name.is_empty() {
                found.push((i + 1, name.clone()));
            }
            rest = &after[name.len().max(1).min(after.len())..];
        }
    }
    found
}

/// Every breach of the table: a module importing its own layer or above.
fn violations(layers: &BTreeMap<String, usize>, files: &[(String, String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (module, file, source) in files {
        let Some(&own) = layers.get(module) else {
            out.push(format!(
                "{file}: module `{module}` is missing from the layer table"
            ));
            continue;
        };
        for (line, used) in crate_paths(source) {
            if used == *module {
                continue;
            }
            match layers.get(&used) {
                Some(&layer) if layer < own => {}
                Some(&layer) => out.push(format!(
                    "{file}:{line}: `{module}` (layer {own}) uses `crate::{used}` (layer {layer})"
                )),
                None => out.push(format!(
                    "{file}:{line}: `crate::{used}` is not in the layer table"
                )),
            }
        }
    }
    out
}

/// (top-level module, path, source) for every .rs file under src/ except
/// the crate root and the binary.
fn sources(src: &Path) -> Vec<(String, String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable src/").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(src, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(src).ok()?;
            let first = relative.components().next()?.as_os_str().to_str()?;
            let module = first.trim_end_matches(".rs").to_owned();
            if module == "lib" || module == "main" {
                return None;
            }
            let source = std::fs::read_to_string(&path).ok()?;
            Some((module, format!("src/{}", relative.display()), source))
        })
        .collect()
}

#[test]
fn every_module_imports_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let layers = layer_table(&lib);
    assert!(
        layers.len() >= 20,
        "the table lists the modules: {layers:?}"
    );
    let files = sources(&src);
    let broken = violations(&layers, &files);
    assert!(
        broken.is_empty(),
        "{} import(s) break the layering of src/lib.rs:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn the_checker_catches_a_deliberate_violation() {
    let lib = "//! <!-- layers:begin -->\n\
               //! | layer | modules | what |\n\
               //! | 0 | `ids` | ids |\n\
               //! | 1 | `room` `media` | rooms, media |\n\
               //! <!-- layers:end -->\n";
    let layers = layer_table(lib);
    assert_eq!(layers["media"], 1);
    let file = |module: &str, source: &str| {
        (
            module.to_owned(),
            format!("src/{module}.rs"),
            source.to_owned(),
        )
    };
    let fine = [file(
        "room",
        "use crate::ids::RoomName;\n// crate::media is only mentioned\nlet s = \"crate::media\";",
    )];
    assert!(violations(&layers, &fine).is_empty());
    let upward = [file("ids", "use crate::room::RoomHandle;")];
    assert_eq!(
        violations(&layers, &upward),
        ["src/ids.rs:1: `ids` (layer 0) uses `crate::room` (layer 1)"]
    );
    let sideways = [file("media", "fn f() { crate::{ids::X, room::Y}; }")];
    assert_eq!(
        violations(&layers, &sideways),
        ["src/media.rs:1: `media` (layer 1) uses `crate::room` (layer 1)"]
    );
    let unknown = [file("room", "use crate::cluster::Node;")];
    assert_eq!(
        violations(&layers, &unknown),
        ["src/room.rs:1: `crate::cluster` is not in the layer table"]
    );
}
