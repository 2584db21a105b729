//! Every relative link in the Markdown a newcomer reads (README.md, docs/, clients/)
//! resolves inside a clone: the file exists, stays inside the repository, and a
//! `#anchor` names a heading of its target.

use std::path::{Path, PathBuf};

/// The repository's root: the parent of the tests crate.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Markdown files checked: README.md, docs/*.md and clients/**/*.md.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, recurse: bool, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                // Build output (a pip in-tree build) is not documentation.
                if recurse && name != "build" && name != "target" {
                    walk(&path, recurse, out);
                }
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut files = vec![root.join("README.md")];
    walk(&root.join("docs"), false, &mut files);
    walk(&root.join("clients"), true, &mut files);
    files.sort();
    files
}

/// A Markdown document's lines outside fenced code blocks, numbered from 1.
fn lines_outside_fences(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push((n + 1, line));
        }
    }
    out
}

/// The lines outside fenced code blocks with inline code spans blanked out (a `](` in
/// code is not a link).
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in lines_outside_fences(text) {
        let mut prose = String::with_capacity(line.len());
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
                prose.push(' ');
            } else {
                prose.push(if in_code { ' ' } else { c });
            }
        }
        out.push((n, prose));
    }
    out
}

/// The targets of the inline links `[text](target "title")` of a document, with their
/// line numbers; a target in `<...>` may contain spaces.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (line_no, line) in prose_lines(text) {
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let (target, after) = if let Some(inner) = rest.strip_prefix('<') {
                match inner.find('>') {
                    Some(end) => (&inner[..end], &inner[end + 1..]),
                    None => break,
                }
            } else {
                let end = rest.find(')').unwrap_or(rest.len());
                let target = rest[..end].split_whitespace().next().unwrap_or("");
                (target, &rest[end..])
            };
            out.push((line_no, target.to_string()));
            rest = after;
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a document's headings (outside code blocks).
fn anchors(text: &str) -> Vec<String> {
    lines_outside_fences(text)
        .into_iter()
        .filter_map(|(_, line)| {
            let title = line.trim_start_matches('#');
            (line.starts_with('#') && title.starts_with(' ')).then(|| slug(title))
        })
        .collect()
}

/// Whether a link leaves the repository's files: a URL or an e-mail address.
fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

#[test]
fn links_in_readme_docs_and_clients_resolve_inside_the_repository() {
    let root = root().canonicalize().unwrap();
    let files = markdown_files(&root);
    assert!(files.len() >= 4, "too few Markdown files found: {files:?}");
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(&root).unwrap().display().to_string();
        for (line, target) in links(&text) {
            if is_external(&target) {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            let Ok(resolved) = resolved.canonicalize() else {
                broken.push(format!("{shown}:{line}: {target}: no such file"));
                continue;
            };
            if !resolved.starts_with(&root) {
                broken.push(format!("{shown}:{line}: {target}: outside the repository"));
                continue;
            }
            if let Some(anchor) = anchor.filter(|_| resolved.extension().is_some_and(|e| e == "md"))
            {
                let target_text = std::fs::read_to_string(&resolved).unwrap_or_default();
                if !anchors(&target_text).iter().any(|a| a == anchor) {
                    broken.push(format!("{shown}:{line}: {target}: no heading #{anchor}"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked >= 5, "only {checked} relative links found");
}

#[test]
fn the_link_scanner_reads_links_and_skips_code() {
    let text = "See [a](docs/a.md) and [b](<docs/b c.md>) or [c](x.md#Part \"title\").\n\
                `not [a](link)` here, [web](https://example.com)\n\
                ```\n[code](in/a/block.md)\n```\n\
                ## The two commands, `.ci/run`\n";
    let found: Vec<_> = links(text).into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        found,
        [
            "docs/a.md",
            "docs/b c.md",
            "x.md#Part",
            "https://example.com"
        ]
    );
    assert_eq!(anchors(text), ["the-two-commands-cirun"]);
    assert_eq!(slug("Arrow Flight SQL"), "arrow-flight-sql");
    assert_eq!(slug("Connection slots"), "connection-slots");
}
