//! `cargo xtask check-features`: building tsm-model's bench example, the test suite and tsm-cli
//! must resolve candle's dependency graph with the same features, or each of them rebuilds
//! candle-core (minutes) for itself (`crates/workspace-hack` adds what tsm-cli's other
//! dependencies enable). tsm-model's own features may differ (tsm-cli turns on `onnx`): that
//! rebuilds tsm-model alone.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};

use crate::{cargo, project_root};

/// The package selections compared, as cargo arguments, by name.
const SELECTIONS: &[(&str, &[&str])] = &[
    ("tsm-cli", &["-p", "cli", "-e", "normal,build"]),
    (
        "tsm-model's examples",
        &[
            "-p",
            "tsm-model",
            "--features",
            "onnx",
            "-e",
            "normal,build,dev",
        ],
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

/// Fails naming every package of candle's graph whose features differ between selections.
pub fn check() -> Result<()> {
    let resolved: Vec<(&str, BTreeSet<String>)> = SELECTIONS
        .iter()
        .map(|(name, args)| Ok((*name, candle_graph(args)?)))
        .collect::<Result<_>>()?;
    let (first, base) = &resolved[0];
    let mut differences = Vec::new();
    for (name, graph) in &resolved[1..] {
        differences.extend(base.difference(graph).map(|p| format!("{first} only: {p}")));
        differences.extend(graph.difference(base).map(|p| format!("{name} only: {p}")));
    }
    if !differences.is_empty() {
        bail!(
            "candle's dependencies resolve with different features (add what tsm-cli has to \
             crates/workspace-hack/Cargo.toml):\n  {}",
            differences.join("\n  ")
        );
    }
    eprintln!(
        "xtask: check-features: candle's graph ({} packages) resolves alike for {}",
        base.len(),
        SELECTIONS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Every `package|features` in candle-nn's dependency graph (candle-core's with it), as the
/// selection `args` resolves them.
fn candle_graph(args: &[&str]) -> Result<BTreeSet<String>> {
    let mut graph = BTreeSet::new();
    let mut root: Option<usize> = None;
    for (depth, package, features) in cargo_tree(args)? {
        if root.is_some_and(|r| depth <= r) {
            root = None;
        }
        if root.is_none() && package.starts_with("candle-nn ") {
            root = Some(depth);
        }
        if root.is_some() {
            graph.insert(format!("{package}|{features}"));
        }
    }
    if graph.is_empty() {
        bail!("cargo tree {}: no candle-nn in the graph", args.join(" "))
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
