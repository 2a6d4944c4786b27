//! `cargo xtask outside [--arch A|all]`: the outside service VM
//! (`guest/examples/keystore`) built and run as another project would: copied to
//! a temporary directory outside the workspace, its path dependencies
//! pointed at this repository's published crates (nothing else from here),
//! then the `cargo` commands of its README run there, in order: build the
//! image, boot it with the host client, which checks every answer and the
//! power-off. Also checks the line count its README gives.

use std::fs;
use std::path::{Path, PathBuf};

use svmc_host::Arch;

use crate::util::{Result, cargo, root, run};

/// The example, relative to the repository.
const EXAMPLE: &str = "guest/examples/keystore";

/// The files its author wrote, whose lines its README counts.
const AUTHORED: [&str; 3] = [
    "protocol/src/lib.rs",
    "guest/src/main.rs",
    "host/src/main.rs",
];

/// The authored files of the outside service VM stay under this many
/// lines in all: the point is that a service is small to write.
const MAX_LINES: usize = 200;

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Copies `from` to `to`, without `target` directories.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    let entries = fs::read_dir(from).map_err(|e| format!("reading {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", from.display()))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_name() == "target" {
            continue;
        }
        if src.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            fs::copy(&src, &dst).map_err(|e| format!("copying {}: {e}", src.display()))?;
        }
    }
    Ok(())
}

/// The `cargo` commands of the README's first `sh` block.
fn readme_commands(readme: &str) -> Vec<Vec<String>> {
    readme
        .split("```sh\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .unwrap_or("")
        .lines()
        .filter(|l| l.starts_with("cargo "))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Runs the check for `archs`.
pub fn run_outside(archs: &[Arch]) -> Result<()> {
    let repo = root();
    let dir = TempDir(std::env::temp_dir().join(format!("svmc-outside-{}", std::process::id())));
    let _ = fs::remove_dir_all(&dir.0);
    copy_tree(&repo.join(EXAMPLE), &dir.0)?;
    // Path dependencies on the crates of this repository, absolute.
    let manifest = dir.0.join("Cargo.toml");
    let text = fs::read_to_string(&manifest).map_err(|e| format!("reading the manifest: {e}"))?;
    let example = repo.join(EXAMPLE);
    let rewritten: Vec<String> = text
        .lines()
        .map(|l| match l.split_once("path = \"../") {
            // A path out of the example's folder: the same crate, by an
            // absolute path (paths inside it, e.g. `protocol`, stay).
            Some((head, rest)) => {
                let (rel, tail) = rest.split_once('"').unwrap_or((rest, ""));
                let abs = example.join(format!("../{rel}"));
                let abs = abs.canonicalize().unwrap_or(abs);
                format!("{head}path = \"{}\"{tail}", abs.display())
            }
            None => l.to_string(),
        })
        .collect();
    fs::write(&manifest, rewritten.join("\n") + "\n")
        .map_err(|e| format!("writing the manifest: {e}"))?;

    let readme = fs::read_to_string(dir.0.join("README.md"))
        .map_err(|e| format!("reading the example's README: {e}"))?;
    let mut lines = 0;
    for file in AUTHORED {
        let text = fs::read_to_string(dir.0.join(file)).map_err(|e| format!("{file}: {e}"))?;
        lines += text.lines().count();
    }
    if lines >= MAX_LINES || !readme.contains(&format!("**{lines} lines**")) {
        return Err(format!(
            "the key store is {lines} lines of Rust: its README must say `**{lines} lines**`, \
             and they must stay under {MAX_LINES}"
        ));
    }
    let commands = readme_commands(&readme);
    if commands.is_empty() {
        return Err("the example's README has no `cargo` commands in a sh block".into());
    }
    for arch in archs {
        let name = arch.to_string();
        let mine: Vec<_> = commands
            .iter()
            .filter(|c| c.iter().any(|w| w.contains(&name)))
            .collect();
        if mine.is_empty() {
            return Err(format!("the example's README has no command for {arch}"));
        }
        for command in mine {
            println!("outside ({}): {}", dir.0.display(), command.join(" "));
            run(cargo()
                .args(&command[1..])
                .current_dir(&dir.0)
                .env("SVMC_TOOLS_DIR", repo.join(".tools"))
                .env_remove("CARGO_TARGET_DIR"))?;
        }
    }
    println!("outside: key store ({lines} lines) built and answered on {archs:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_commands_of_the_first_sh_block() {
        let readme =
            "x\n```sh\ncargo build -p a\n# no\ncargo run -- x86_64 t\n```\n```sh\ncargo y\n```";
        assert_eq!(
            readme_commands(readme),
            [
                vec!["cargo", "build", "-p", "a"],
                vec!["cargo", "run", "--", "x86_64", "t"]
            ]
        );
    }
}
