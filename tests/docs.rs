//! The documentation stays true to the code: the flags table of
//! `docs/configuration.md` lists exactly the flags (and environment variables)
//! that `sseplane serve --help` prints, and every relative link in `README.md`
//! and `docs/*.md` points to a file that exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The first `--long-flag` in `text`, if any.
fn long_flag(text: &str) -> Option<String> {
    let start = text.find("--")?;
    let flag: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    (flag.len() > 2).then_some(flag)
}

/// The first `SSEPLANE_…` name in `text`, if any.
fn env_var(text: &str) -> Option<String> {
    let start = text.find("SSEPLANE_")?;
    Some(
        text[start..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect(),
    )
}

/// Flag → environment variable, as `sseplane serve --help` prints them.
fn flags_from_help() -> BTreeMap<String, Option<String>> {
    let output = Command::new(env!("CARGO_BIN_EXE_sseplane"))
        .args(["serve", "--help"])
        .output()
        .expect("run sseplane serve --help");
    assert!(output.status.success(), "sseplane serve --help failed");
    let help = String::from_utf8(output.stdout).expect("help is UTF-8");
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        // An option line: `--name <NAME>`, or `-h, --help`.
        if trimmed.starts_with("--") || (trimmed.starts_with('-') && trimmed.contains(", --")) {
            current = long_flag(trimmed);
            if let Some(flag) = &current {
                flags.insert(flag.clone(), None);
            }
        } else if let (Some(flag), Some(rest)) = (&current, trimmed.strip_prefix("[env: ")) {
            flags.insert(flag.clone(), env_var(rest));
        }
    }
    flags.remove("--help");
    flags.remove("--version");
    flags
}

/// Flag → environment variable, as the flags table of `docs/configuration.md`
/// lists them (the table whose header starts `| Flag | Environment variable |`).
fn flags_from_table() -> BTreeMap<String, Option<String>> {
    let path = root().join("docs/configuration.md");
    let text = read(&path);
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with("| Flag | Environment variable |"));
    assert!(
        lines.next().is_some(),
        "{} has no flags table",
        path.display()
    );
    let mut flags = BTreeMap::new();
    for row in lines.skip(1).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let flag = long_flag(cells[1]).unwrap_or_else(|| panic!("no flag in row {row:?}"));
        let env = env_var(cells[2]);
        assert!(
            flags.insert(flag.clone(), env).is_none(),
            "{flag} is listed twice in the flags table"
        );
    }
    flags
}

#[test]
fn the_flags_table_lists_exactly_the_flags_of_serve() {
    let help = flags_from_help();
    let table = flags_from_table();
    assert!(help.len() > 10, "too few flags read from --help: {help:?}");
    let mut problems = Vec::new();
    for (flag, env) in &help {
        match table.get(flag) {
            None => problems.push(format!("{flag} ({env:?}) is missing from the table")),
            Some(listed) if listed != env => problems.push(format!(
                "{flag}: the table says {listed:?}, --help says {env:?}"
            )),
            Some(_) => {}
        }
    }
    for flag in table.keys().filter(|f| !help.contains_key(*f)) {
        problems.push(format!(
            "{flag} is in the table but not in `sseplane serve --help`"
        ));
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md and `sseplane serve --help` disagree:\n{}",
        problems.join("\n")
    );
}

/// The link targets of a markdown text, outside fenced code blocks and code
/// spans: `[text](target)`, `![alt](target)` and `[label]: target`.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop code spans: what is between backticks is not a link.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after
                .find(|c: char| c == ')' || c.is_whitespace())
                .unwrap_or(after.len());
            targets.push(after[..end].trim_matches(['<', '>']).to_owned());
            rest = &after[end..];
        }
        let definition = prose.trim_start();
        if let (true, Some(colon)) = (definition.starts_with('['), definition.find("]: ")) {
            if let Some(target) = definition[colon + 3..].split_whitespace().next() {
                targets.push(target.to_owned());
            }
        }
    }
    targets
}

#[test]
fn relative_links_in_the_docs_point_to_existing_files() {
    let root = root();
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("read docs/") {
        let path = entry.expect("docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let mut checked = 0;
    let mut broken = Vec::new();
    for page in &pages {
        let dir = page.parent().expect("a page has a directory");
        for target in link_targets(&read(page)) {
            let external = target.contains("://") || target.starts_with("mailto:");
            let path = target.split(['#', '?']).next().unwrap_or_default();
            if external || path.is_empty() {
                continue;
            }
            checked += 1;
            if !dir.join(path).exists() {
                broken.push(format!(
                    "{}: {target}",
                    page.strip_prefix(&root).unwrap_or(page).display()
                ));
            }
        }
    }
    assert!(checked > 10, "too few relative links found ({checked})");
    assert!(
        broken.is_empty(),
        "links to files that do not exist:\n{}",
        broken.join("\n")
    );
}
