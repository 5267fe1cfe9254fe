//! Embeds the dashboard (`ui/`) in the binary: writes the list of its files,
//! each with an `include_bytes!`, so `cargo build` alone makes a binary that
//! serves it (no Node.js, no build step of its own).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files(&path, out)?;
        } else if path.extension().is_some_and(|e| e != "md") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(std::io::Error::other)?)
        .join("ui");
    println!("cargo:rerun-if-changed=ui");
    let mut found = Vec::new();
    files(&root, &mut found)?;
    found.sort();
    let mut code = String::from(
        "/// The dashboard's files: path under `ui/` and contents.\npub static ASSETS: &[(&str, &[u8])] = &[\n",
    );
    for path in &found {
        let name = path
            .strip_prefix(&root)
            .map_err(std::io::Error::other)?
            .to_string_lossy()
            .replace('\\', "/");
        let _ = writeln!(
            code,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        );
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(std::io::Error::other)?);
    std::fs::write(out.join("ui_assets.rs"), code)
}
