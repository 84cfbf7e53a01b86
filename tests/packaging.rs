//! The Dockerfile, checked without Docker: every `COPY` source exists, the
//! binary and ports match the project, the runtime user is not root.

use std::path::Path;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Dockerfile instructions with continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((keyword.to_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    out
}

#[test]
fn the_dockerfile_builds_what_the_project_ships() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let steps = instructions(&text);
    let stages: Vec<&String> = steps
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, v)| v)
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    assert!(
        stages.last().unwrap().contains("distroless") || stages.last().unwrap().contains("slim"),
        "a small runtime image: {stages:?}"
    );
    // Every COPY from the build context names files that exist.
    for (_, args) in steps.iter().filter(|(k, _)| k == "COPY") {
        if args.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = args
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for source in &words[..words.len() - 1] {
            assert!(repo(source).exists(), "COPY source {source} does not exist");
        }
    }
    // Dependencies are built in a layer of their own, before the sources come in.
    let first_build = steps
        .iter()
        .position(|(k, v)| k == "RUN" && v.contains("cargo build"))
        .unwrap();
    let sources = steps
        .iter()
        .position(|(k, v)| k == "COPY" && v.starts_with("src"))
        .unwrap();
    assert!(
        first_build < sources,
        "dependencies are cached before the sources are copied"
    );

    // The runtime stage: the sseplane binary, `serve`, the project's ports, a non-root user.
    let runtime_start = steps.iter().rposition(|(k, _)| k == "FROM").unwrap();
    let runtime = &steps[runtime_start..];
    let value = |key: &str| {
        runtime
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"sseplane\""));
    assert!(
        value("ENTRYPOINT").contains("/sseplane\""),
        "{}",
        value("ENTRYPOINT")
    );
    assert!(value("CMD").contains("\"serve\""));
    let defaults = sseplane::config::ServeArgs::default();
    let mut ports: Vec<u16> = value("EXPOSE")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    ports.sort();
    assert_eq!(
        ports,
        vec![defaults.listen.port(), defaults.admin_listen.port()]
    );
    let user = value("USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        !user.is_empty() && uid != "root" && uid != "0",
        "runtime user {user:?} must not be root"
    );

    let ignore = std::fs::read_to_string(repo(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim_end_matches('/') == "target"),
        "target/ stays out of the context"
    );
}

#[test]
fn the_tiltfile_uses_the_chart_and_the_examples() {
    let text = std::fs::read_to_string(repo("Tiltfile")).unwrap();
    assert!(text.contains("docker_build(") && text.contains("'sseplane'"));
    assert!(text.contains("charts/sseplane") && repo("charts/sseplane").exists());
    assert!(text.contains("manifests/examples") && repo("manifests/examples").exists());
    for port in ["8080:8080", "9090:9090", "16686:16686"] {
        assert!(text.contains(port), "port-forward {port}");
    }
}
