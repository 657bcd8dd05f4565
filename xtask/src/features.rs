//! `cargo xtask check-features`: building tsm-model's bench example, the test suite and tsm-cli
//! must resolve tsm-model's dependency graph with the same features, or each of them rebuilds
//! candle-core and everything up to tsm-model for itself (`crates/workspace-hack` adds what
//! tsm-cli's other dependencies enable).

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};

use crate::{cargo, project_root};

/// The package selections compared, as cargo arguments, by name.
const SELECTIONS: &[(&str, &[&str])] = &[
    ("tsm-cli", &["-p", "cli", "-e", "normal,build"]),
    (
        "tsm-model's examples",
        &["-p", "tsm-model", "-e", "normal,build,dev"],
    ),
    (
        "the test suite",
        &[
            "--workspace",
            "--features",
            "cli/mpi",
            "-e",
            "normal,build,dev",
        ],
    ),
];

/// Fails naming every package of tsm-model's graph whose features differ between selections.
pub fn check() -> Result<()> {
    let direct: BTreeSet<String> = cargo_tree(&["-p", "tsm-model", "-e", "normal,build"])?
        .iter()
        .filter(|(depth, _, _)| *depth == 1)
        .map(|(_, package, _)| package.clone())
        .collect();
    let resolved: Vec<(&str, BTreeSet<String>)> = SELECTIONS
        .iter()
        .map(|(name, args)| Ok((*name, model_graph(args, &direct)?)))
        .collect::<Result<_>>()?;
    let (first, base) = &resolved[0];
    let mut differences = Vec::new();
    for (name, graph) in &resolved[1..] {
        differences.extend(base.difference(graph).map(|p| format!("{first} only: {p}")));
        differences.extend(graph.difference(base).map(|p| format!("{name} only: {p}")));
    }
    if !differences.is_empty() {
        bail!(
            "tsm-model's dependencies resolve with different features (add what tsm-cli has to \
             crates/workspace-hack/Cargo.toml):\n  {}",
            differences.join("\n  ")
        );
    }
    eprintln!(
        "xtask: check-features: tsm-model's graph ({} packages) resolves alike for {}",
        base.len(),
        SELECTIONS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Every `package|features` of tsm-model's normal and build dependencies, transitively, as the
/// selection `args` resolves them (tsm-model's own dev-dependencies left out).
fn model_graph(args: &[&str], direct: &BTreeSet<String>) -> Result<BTreeSet<String>> {
    let mut graph = BTreeSet::new();
    // (tsm-model's depth, whether the current child of tsm-model is a dev-dependency)
    let mut inside: Option<(usize, bool)> = None;
    for (depth, package, features) in cargo_tree(args)? {
        if inside.is_some_and(|(root, _)| depth <= root) {
            inside = None;
        }
        match &mut inside {
            None if package.starts_with("tsm-model ") => inside = Some((depth, false)),
            None => continue,
            Some((root, dev)) if depth == *root + 1 => *dev = !direct.contains(&package),
            Some(_) => {}
        }
        if inside.is_some_and(|(_, dev)| !dev) {
            graph.insert(format!("{package}|{features}"));
        }
    }
    Ok(graph)
}

/// `cargo tree` for `args`, every path expanded: (depth, `name vX.Y.Z`, features) per line.
fn cargo_tree(args: &[&str]) -> Result<Vec<(usize, String, String)>> {
    let out = cargo()
        .current_dir(project_root())
        .args(["tree", "--no-dedupe", "--prefix", "depth"])
        .args(["--format", "{p}|{f}"])
        .args(args)
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            let digits = line.find(|c: char| !c.is_ascii_digit())?;
            let (depth, rest) = line.split_at(digits);
            let (package, features) = rest.split_once('|')?;
            // `name vX.Y.Z (path) (proc-macro)`: the name and version say which package it is.
            let package = package.split(" (").next().unwrap_or(package);
            Some((
                depth.parse().ok()?,
                package.to_string(),
                features.to_string(),
            ))
        })
        .collect())
}
