//! The docs agree with the code and with themselves:
//!
//! - the README's first job is, character for character, the crate-level
//!   example of `src/lib.rs`, which rustdoc compiles as a doctest;
//! - every relative link in the README, the guide (`docs/`), the deploy kit's
//!   README and the CLI's README names a file that exists and, with a
//!   `#fragment`, a heading of that file (GitHub's anchor rules).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The body of the first fenced block of `text` whose info string is `info`.
fn first_block<'a>(text: &'a str, info: &str) -> Option<&'a str> {
    let fence = format!("```{info}\n");
    let start = text.find(&fence)? + fence.len();
    let len = text[start..].find("\n```")?;
    Some(&text[start..start + len + 1])
}

#[test]
fn the_readme_job_is_the_crate_example() {
    let readme = read(&root().join("README.md"));
    let job = first_block(&readme, "rust").expect("README.md: no ```rust block");

    let lib = read(&root().join("src/lib.rs"));
    let crate_doc: String = lib
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| {
            let l = l.strip_prefix("//!").unwrap_or(l);
            format!("{}\n", l.strip_prefix(' ').unwrap_or(l))
        })
        .collect();
    let example = first_block(&crate_doc, "no_run").expect("src/lib.rs: no ```no_run example");

    if job != example {
        let line = job
            .lines()
            .zip(example.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "their lengths".to_owned(), |i| format!("line {}", i + 1));
        panic!(
            "README.md's first job and the example of src/lib.rs differ at {line}:\n\
             --- README.md\n{job}\n--- src/lib.rs\n{example}"
        );
    }
}

/// The Markdown files whose links are checked.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![
        root().join("README.md"),
        root().join("deploy/README.md"),
        root().join("crates/spotbatch-cli/README.md"),
    ];
    let docs = root().join("docs");
    for entry in std::fs::read_dir(&docs).unwrap_or_else(|e| panic!("docs/: {e}")) {
        let path = entry.expect("docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// `text` without its fenced code blocks (links there are code, not links).
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The targets of the inline links `[text](target)` in `text`.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            targets.push(rest[..end].trim().to_owned());
            rest = &rest[end..];
        }
    }
    targets
}

/// The anchors GitHub gives the headings of a Markdown file: lower case,
/// punctuation dropped (but `-` and `_`), spaces as `-`, a `-N` suffix for
/// the N-th repeat.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in prose(text).lines() {
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        let title = title.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

#[test]
fn relative_links_name_files_and_headings_that_exist() {
    let mut broken = Vec::new();
    for doc in documents() {
        let text = read(&doc);
        let name = doc
            .strip_prefix(root())
            .unwrap_or(&doc)
            .display()
            .to_string();
        for target in link_targets(&prose(&text)) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((path, fragment)) => (path, Some(fragment)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                doc.clone()
            } else {
                doc.parent().expect("a file's directory").join(path)
            };
            if !file.exists() {
                broken.push(format!("{name}: ({target}): no such file"));
                continue;
            }
            if let Some(fragment) = fragment {
                if file.is_file() && !anchors(&read(&file)).contains(fragment) {
                    broken.push(format!("{name}: ({target}): no such heading"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_follow_github() {
    let text = "# Shutdown and exit codes\n## Platforms that retry by exit code\n\
                ## The `spotbatch` command\n## S3 (feature `s3`)\n## One writer: leases and fencing\n\
                ```\n# not a heading\n```\n## Logs\n## Logs\n";
    let got: Vec<String> = anchors(text).into_iter().collect();
    assert_eq!(
        got,
        [
            "logs",
            "logs-1",
            "one-writer-leases-and-fencing",
            "platforms-that-retry-by-exit-code",
            "s3-feature-s3",
            "shutdown-and-exit-codes",
            "the-spotbatch-command",
        ]
    );
}
