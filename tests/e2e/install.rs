//! `make install` / `make uninstall` lay out exactly the files README
//! "Running as a service" lists, and the example config documents every
//! config key.

use std::path::{Path, PathBuf};
use std::process::Command;

use peerlink_e2e::{Sandbox, peerd_bin, strip_cargo_env};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The installed files README documents, as `$PREFIX/...` rows of its
/// table.
fn documented() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `$PREFIX/"))
        .filter_map(|rest| rest.split('`').next())
        .map(|p| format!("/{p}"))
        .collect()
}

/// Every file under `root`, as `/relative/path`.
fn files_under(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(format!("/{}", rel.display()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn make(target: &str, destdir: &Path, prefix: &str, gen_dir: Option<&Path>) {
    let bin_dir = peerd_bin().parent().expect("bin dir");
    let mut cmd = Command::new("make");
    if let Some(g) = gen_dir {
        cmd.arg(format!("GEN_DIR={}", g.display()));
    }
    cmd.current_dir(repo())
        .args(["--no-print-directory", "-s", target])
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("PREFIX={prefix}"))
        .arg(format!("BIN_DIR={}", bin_dir.display()))
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS");
    strip_cargo_env(&mut cmd);
    let out = cmd.output().expect("run make");
    assert!(
        out.status.success(),
        "make {target} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn make_install_lays_out_exactly_the_documented_files_and_uninstall_removes_them() {
    let sb = Sandbox::new();
    let dest: PathBuf = sb.path().join("root");
    let want_rel = documented();
    assert!(
        want_rel.len() >= 5,
        "README lists the installed files: {want_rel:?}"
    );
    let mut want: Vec<String> = want_rel.iter().map(|p| format!("/usr{p}")).collect();
    want.sort();

    // Man pages and completions come from the clap definitions.
    let gen_dir = sb.path().join("gen");
    let mut gen_cmd = Command::new("make");
    gen_cmd
        .current_dir(repo())
        .args(["--no-print-directory", "-s", "man", "completions"])
        .arg(format!("GEN_DIR={}", gen_dir.display()))
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS");
    strip_cargo_env(&mut gen_cmd);
    let gen_out = gen_cmd.output().expect("make man completions");
    assert!(
        gen_out.status.success(),
        "{}",
        String::from_utf8_lossy(&gen_out.stderr)
    );
    make("install", &dest, "/usr", Some(&gen_dir));
    assert_eq!(files_under(&dest), want, "installed files vs README");

    // The unit runs the installed binary, not the default prefix's.
    let unit =
        std::fs::read_to_string(dest.join("usr/lib/systemd/system/peerd@.service")).expect("unit");
    assert!(unit.contains("\nExecStart=/usr/bin/peerd %i\n"), "{unit}");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(dest.join(p))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    assert_eq!(mode("usr/bin/peerd"), 0o755);
    assert_eq!(mode("usr/bin/peerctl"), 0o755);
    assert_eq!(mode("usr/lib/systemd/system/peerd@.service"), 0o644);
    let installed = dest.join("usr/bin/peerd");
    let v = Command::new(&installed)
        .arg("--version")
        .output()
        .expect("installed peerd");
    assert!(v.status.success());

    make("uninstall", &dest, "/usr", None);
    assert_eq!(
        files_under(&dest),
        Vec::<String>::new(),
        "uninstall leaves no file"
    );
}

#[test]
fn make_install_without_built_binaries_says_what_to_do() {
    let sb = Sandbox::new();
    let mut cmd = Command::new("make");
    cmd.current_dir(repo())
        .args(["--no-print-directory", "-s", "install"])
        .arg(format!("DESTDIR={}", sb.path().join("root").display()))
        .arg(format!("BIN_DIR={}", sb.path().join("nothing").display()))
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS");
    strip_cargo_env(&mut cmd);
    let out = cmd.output().expect("run make");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("make release"), "{err}");
    assert!(!sb.path().join("root").exists(), "nothing installed");
}

/// The section of the example whose settings cannot all be uncommented
/// at once: `secret` and `secret_file` exclude each other, and the file
/// must exist with safe modes (tests/e2e/auth.rs checks those keys).
const NOT_ALL_AT_ONCE: &str = "# --- Authentication";

#[test]
fn example_config_is_valid_and_documents_every_key() {
    let text =
        std::fs::read_to_string(repo().join("systemd/peerd.example.toml")).expect("example config");
    // Uncomment every setting (`#key = ...`, `#[[peer]]`), section by section.
    let mut skipping = false;
    let mut uncommented = String::new();
    for line in text.lines() {
        if line.starts_with("# ---") {
            skipping = line.starts_with(NOT_ALL_AT_ONCE);
        }
        let setting = line
            .strip_prefix('#')
            .filter(|rest| rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '['));
        if let (Some(s), false) = (setting, skipping) {
            uncommented.push_str(s);
            uncommented.push('\n');
        }
    }
    let sb = Sandbox::new();
    let cfg = sb.path().join("x.toml");
    std::fs::write(&cfg, &uncommented).expect("write");
    let out = Command::new(peerd_bin())
        .args(["check-config", "x", "--config"])
        .arg(&cfg)
        .output()
        .expect("peerd check-config");
    assert!(
        out.status.success(),
        "the example, uncommented, is a valid config: {}\n{uncommented}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every key the effective config has is in the example.
    let effective = String::from_utf8_lossy(&out.stdout);
    for line in effective.lines() {
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        assert!(
            uncommented
                .lines()
                .any(|l| l.starts_with(&format!("{key} = "))),
            "key `{key}` (from `peerd check-config`) is missing from systemd/peerd.example.toml"
        );
    }
}
