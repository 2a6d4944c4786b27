//! `cargo xtask dist-docs [--out DIR]`: shell completions and man pages for
//! `host-cli`, generated from its clap definition (`host_cli::cli`) with
//! `clap_complete` and `clap_mangen`, into `target/dist` by default:
//!
//! ```text
//! completions/host-cli.bash  _host-cli (zsh)  host-cli.fish  host-cli.elv  _host-cli.ps1
//! man/host-cli.1  man/host-cli-<command>.1 (one per subcommand)
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

use crate::util::{self, Result};

/// Runs the command: into `out`, or `target/dist`.
pub fn dist_docs(out: Option<PathBuf>) -> Result<()> {
    let out = out.unwrap_or_else(|| util::root().join("target").join("dist"));
    for f in generate(&out)? {
        println!("{}", f.display());
    }
    Ok(())
}

/// Writes the completions and man pages under `out`; returns the files.
pub fn generate(out: &Path) -> Result<Vec<PathBuf>> {
    let io = |what: &Path, e: std::io::Error| format!("writing {}: {e}", what.display());
    let completions = out.join("completions");
    let man = out.join("man");
    for d in [&completions, &man] {
        fs::create_dir_all(d).map_err(|e| io(d, e))?;
    }
    let mut files = Vec::new();
    let name = "host-cli";
    for shell in [
        Shell::Bash,
        Shell::Zsh,
        Shell::Fish,
        Shell::Elvish,
        Shell::PowerShell,
    ] {
        let mut cmd = host_cli::cli::command();
        let f = clap_complete::generate_to(shell, &mut cmd, name, &completions)
            .map_err(|e| io(&completions, e))?;
        files.push(f);
    }
    // One page for host-cli and one per subcommand (host-cli-start.1, ...).
    clap_mangen::generate_to(host_cli::cli::command(), &man).map_err(|e| io(&man, e))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man)
        .map_err(|e| io(&man, e))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    files.extend(pages);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_man_pages_cover_every_command() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path()).unwrap();
        let read = |p: &str| fs::read_to_string(dir.path().join(p)).unwrap();
        let bash = read("completions/host-cli.bash");
        for word in [
            "start", "list", "stop", "prune", "reverse", "--vm", "--file",
        ] {
            assert!(bash.contains(word), "bash completion lacks {word}");
        }
        assert!(read("completions/_host-cli").contains("--output"));
        assert!(read("completions/host-cli.fish").contains("start"));
        let man = read("man/host-cli.1");
        assert!(man.starts_with(".ie") || man.contains(".TH"), "{man}");
        assert!(
            man.contains("host\\-cli start \\-\\-name svc"),
            "no examples in the man page"
        );
        for sub in [
            "start",
            "list",
            "stop",
            "prune",
            "reverse",
            "info",
            "power-off",
        ] {
            let page = read(&format!("man/host-cli-{sub}.1"));
            assert!(page.contains(".TH"), "{sub}");
        }
        // Five completions, the main page and one page per subcommand
        // (`help` has none).
        let subcommands = host_cli::cli::command()
            .get_subcommands()
            .filter(|c| c.get_name() != "help")
            .count();
        assert!(subcommands >= 7, "{subcommands}");
        assert_eq!(files.len(), 5 + 1 + subcommands);
        assert!(files.iter().all(|f| f.starts_with(dir.path())));
    }
}
