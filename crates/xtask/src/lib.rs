//! Man pages and shell completions for `peerd` and `peerctl`, generated
//! from the one source of truth: their clap definitions
//! (`peerd::cli::Cli`, `peerctl::cli::Cli`). `make man` and `make
//! completions` run this; nothing here is hand-written documentation.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// The commands documented: (binary name, its clap definition).
pub fn commands() -> Vec<clap::Command> {
    vec![peerd::cli::Cli::command(), peerctl::cli::Cli::command()]
}

/// Every shell `clap_complete` generates for.
pub const SHELLS: [Shell; 5] = [
    Shell::Bash,
    Shell::Zsh,
    Shell::Fish,
    Shell::Elvish,
    Shell::PowerShell,
];

/// Write `peerd.1`, `peerctl.1` and one page per subcommand
/// (`peerctl-send.1`, ...) into `dir`; returns the files written.
pub fn man(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    for cmd in commands() {
        let mut cmd = cmd.disable_help_subcommand(true);
        cmd.build();
        man_pages(cmd, dir, None)?;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    files.sort();
    Ok(files)
}

/// The page of `cmd` and of each of its subcommands. `inherited` is the
/// parent's `after_long_help`: a subcommand's page carries the same FILES,
/// ENVIRONMENT and EXIT STATUS, so each page stands alone.
fn man_pages(cmd: clap::Command, dir: &Path, inherited: Option<&str>) -> anyhow::Result<()> {
    let own = cmd.get_after_long_help().map(|a| a.to_string());
    let more = own.as_deref().or(inherited);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub.clone(), dir, more)?;
    }
    let page = clap_mangen::Man::new(cmd.clone());
    // clap_mangen would put the help's trailer under "EXTRA" as running
    // text. Ours is `Title:` blocks (tables and paragraphs): each becomes
    // a proper section.
    let mut out = Vec::new();
    page.render_title(&mut out)?;
    page.render_name_section(&mut out)?;
    page.render_synopsis_section(&mut out)?;
    page.render_description_section(&mut out)?;
    page.render_options_section(&mut out)?;
    if cmd.has_subcommands() {
        page.render_subcommands_section(&mut out)?;
    }
    if let Some(more) = more {
        out.extend_from_slice(sections(more).as_bytes());
    }
    if cmd.get_version().is_some() || cmd.get_long_version().is_some() {
        page.render_version_section(&mut out)?;
    }
    std::fs::write(dir.join(page.get_filename()), out)?;
    Ok(())
}

/// `Title:` blocks as roff sections: `  TAG  TEXT` lines (two spaces after
/// the tag) become tagged paragraphs, other indented lines one paragraph.
fn sections(text: &str) -> String {
    let mut out = String::new();
    let mut para: Vec<&str> = Vec::new();
    let flush = |para: &mut Vec<&str>, out: &mut String| {
        if !para.is_empty() {
            out.push_str(&format!(".PP\n{}\n", roff(&para.join(" "))));
            para.clear();
        }
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut para, &mut out);
        } else if !line.starts_with(' ') {
            flush(&mut para, &mut out);
            let title = line.trim().trim_end_matches(':').to_uppercase();
            out.push_str(&format!(".SH \"{title}\"\n"));
        } else if let Some((tag, rest)) = line.trim().split_once("  ") {
            flush(&mut para, &mut out);
            out.push_str(&format!(".TP\n{}\n{}\n", roff(tag), roff(rest.trim())));
        } else {
            para.push(line.trim());
        }
    }
    flush(&mut para, &mut out);
    out
}

/// Escape text for roff: backslashes, hyphens, and a leading dot or quote.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// Write a completion script for each binary and each shell into `dir`
/// (`peerctl.bash`, `_peerctl`, `peerctl.fish`, ...).
pub fn completions(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for mut cmd in commands() {
        let name = cmd.get_name().to_string();
        for shell in SHELLS {
            files.push(clap_complete::generate_to(shell, &mut cmd, &name, dir)?);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_for_both_binaries_and_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let files = man(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .filter_map(|f| f.file_name()?.to_str().map(String::from))
            .collect();
        for want in [
            "peerd.1",
            "peerd-check-config.1",
            "peerctl.1",
            "peerctl-send.1",
            "peerctl-tail.1",
            "peerctl-status.1",
            "peerctl-attach.1",
            "peerctl-completions.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        let page = std::fs::read_to_string(dir.path().join("peerctl.1")).unwrap();
        assert!(page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH peerctl 1"));
        assert!(page.contains(".SH NAME") && page.contains(".SH SYNOPSIS"));
        assert!(
            page.contains(".SH \"EXIT STATUS\"\n.TP\n0\nsuccess"),
            "exit codes as a table: {page}"
        );
        assert!(
            page.contains("daemon is not running"),
            "exit codes documented"
        );
        let send = std::fs::read_to_string(dir.path().join("peerctl-send.1")).unwrap();
        assert!(send.contains("\\-\\-null"), "{send}");
        let peerd = std::fs::read_to_string(dir.path().join("peerd.1")).unwrap();
        assert!(peerd.contains("\\-\\-state\\-dir"), "{peerd}");
        // Pages stand alone: the sections are there, defaults spelled out,
        // nothing points at a README that is not installed.
        for section in ["FILES", "ENVIRONMENT", "SIGNALS", "EXIT STATUS"] {
            assert!(
                peerd.contains(&format!(".SH \"{section}\"")),
                "{section}: {peerd}"
            );
        }
        assert!(peerd.contains("/var/lib/peerd/<instance>"), "{peerd}");
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(
                !text.contains("README"),
                "{} mentions the README",
                f.display()
            );
            assert!(text.contains(".SH \"EXIT STATUS\""), "{}", f.display());
        }
        assert!(send.contains(".SH \"WHICH INSTANCE\"") && send.contains(".SH \"ENVIRONMENT\""));
    }

    #[test]
    fn roff_escapes() {
        assert_eq!(roff("send --wait"), "send \\-\\-wait");
        assert_eq!(roff(".x"), "\\&.x");
        assert_eq!(roff("a\\b"), "a\\eb");
    }

    #[test]
    fn completions_for_every_shell() {
        let dir = tempfile::tempdir().unwrap();
        let files = completions(dir.path()).unwrap();
        assert_eq!(files.len(), 2 * SHELLS.len());
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(text.len() > 200, "{} is too short", f.display());
            if f.to_string_lossy().contains("peerctl") {
                assert!(text.contains("attach"), "{}", f.display());
            }
        }
    }
}
