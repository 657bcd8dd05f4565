//! The command lines our documentation shows, for tests that parse them with the real argument
//! parsers (so a doc cannot drift from the CLI).

use std::path::{Path, PathBuf};

/// A documented command: where it stands, and the words after the program's name.
#[derive(Debug, Clone)]
pub struct DocCommand {
    /// `file:line` (relative to the project root) of its first line.
    pub place: String,
    pub args: Vec<String>,
}

/// The files that show commands: README.md, every crate's README.md, docs/*.md (their fenced
/// code blocks) and assets/configs/*.toml (their indented comment lines).
fn doc_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let listed = |dir: &Path, ext: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.retain(|p| p.extension().is_some_and(|e| e == ext));
        v.sort();
        v
    };
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .map(|d| d.flatten().map(|e| e.path().join("README.md")).collect())
        .unwrap_or_default();
    crates.retain(|p| p.exists());
    crates.sort();
    files.extend(crates);
    files.extend(listed(&root.join("docs"), "md"));
    files.extend(listed(&root.join("assets/configs"), "toml"));
    files
}

/// Every command line in the documentation that runs `program` (a word that is the program or
/// ends in `/program`, after any launcher such as `mpirun -np 4`): shell prompts (`$ `),
/// trailing comments and backslash continuations handled. Panics when a doc file cannot be read.
pub fn documented_commands(program: &str) -> Vec<DocCommand> {
    let root = crate::project_root();
    let mut out = Vec::new();
    for file in doc_files(&root) {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let rel = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let toml = file.extension().is_some_and(|e| e == "toml");
        let mut fenced = false;
        // (first line number, text so far) of a command continued with a backslash
        let mut pending: Option<(usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            let code = if toml {
                // commands stand indented in the comment (`#   tsm-cli train ...`); the rest is
                // prose, which may name a command in backquotes
                line.trim_start()
                    .strip_prefix('#')
                    .filter(|c| c.starts_with("  "))
                    .map(str::trim)
            } else if line.trim_start().starts_with("```") {
                fenced = !fenced;
                None
            } else {
                fenced.then_some(line.trim())
            };
            let Some(code) = code else {
                pending = None;
                continue;
            };
            let code = code.strip_prefix("$ ").unwrap_or(code);
            let code = code.split(" #").next().unwrap_or(code).trim_end();
            let (start, joined) = match pending.take() {
                Some((start, mut so_far)) => {
                    so_far.push(' ');
                    so_far.push_str(code);
                    (start, so_far)
                }
                None => (i + 1, code.to_string()),
            };
            if let Some(head) = joined.strip_suffix('\\') {
                pending = Some((start, head.trim_end().to_string()));
                continue;
            }
            let words: Vec<&str> = joined.split_whitespace().collect();
            let at = words
                .iter()
                .position(|w| *w == program || w.ends_with(&format!("/{program}")));
            if let Some(at) = at {
                out.push(DocCommand {
                    place: format!("{rel}:{start}"),
                    args: words[at + 1..].iter().map(|w| w.to_string()).collect(),
                });
            }
        }
    }
    out
}

/// Panics (naming each `file:line`) unless every documented `program` command parses with
/// `parse` (its argv with `program` first; `Err` is the parser's message), and unless there are
/// at least `min` of them (so that a broken extraction cannot pass).
pub fn assert_documented_commands_parse<E: std::fmt::Display>(
    program: &str,
    min: usize,
    parse: impl Fn(Vec<&str>) -> Result<(), E>,
) {
    let commands = documented_commands(program);
    assert!(commands.len() >= min, "found only {commands:?}");
    let failures: Vec<String> = commands
        .iter()
        .filter_map(|c| {
            let argv = std::iter::once(program).chain(c.args.iter().map(String::as_str));
            parse(argv.collect())
                .err()
                .map(|e| format!("{}: {program} {}: {e}", c.place, c.args.join(" ")))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
