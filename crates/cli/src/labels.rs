//! Class-name files: one name per line (`assets/labels/kinetics400.txt`), or UCF101's
//! `classInd.txt` form, `index name`, numbered from 1 (or 0) in order.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Class names, or none (then classes are shown by number).
#[derive(Debug, Clone, Default)]
pub struct Labels {
    names: Vec<String>,
}

impl Labels {
    /// Reads `path` (when given) and checks it names exactly `num_classes` classes.
    pub fn load(path: Option<&PathBuf>, num_classes: usize, weights: &Path) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let names = parse(&text).with_context(|| format!("{}", path.display()))?;
        if names.len() != num_classes {
            bail!(
                "labels file {} has {} classes but the model {} has {num_classes}",
                path.display(),
                names.len(),
                weights.display()
            )
        }
        Ok(Self { names })
    }

    /// The name of class `i`, if a labels file was given.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.names.get(i).map(String::as_str)
    }

    /// The name of class `i`, or `class i`.
    pub fn display(&self, i: usize) -> String {
        self.get(i)
            .map_or_else(|| format!("class {i}"), str::to_string)
    }
}

/// The names in class order. Lines are numbered (`1 ApplyEyeMakeup`) when every line starts
/// with a number and a space; the numbers must then count up by one from 0 or 1.
fn parse(text: &str) -> Result<Vec<String>> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    let numbered: Option<Vec<(usize, usize, &str)>> = lines
        .iter()
        .map(|&(n, l)| {
            let (num, name) = l.split_once(char::is_whitespace)?;
            Some((n, num.parse().ok()?, name.trim()))
        })
        .collect();
    let Some(numbered) = numbered else {
        return Ok(lines.iter().map(|(_, l)| l.to_string()).collect());
    };
    let first = numbered.first().map_or(0, |&(_, i, _)| i);
    if first > 1 {
        bail!("numbered labels must start at 0 or 1, not {first}")
    }
    numbered
        .iter()
        .enumerate()
        .map(|(k, &(line, index, name))| {
            if index != first + k {
                bail!("line {line}: class number {index}, expected {}", first + k)
            }
            Ok(name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn asset(name: &str) -> Vec<String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../assets/labels")
            .join(name);
        parse(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn shipped_label_files() {
        let ucf = asset("ucf101_classInd.txt");
        assert_eq!(ucf.len(), 101);
        assert_eq!(
            (ucf[0].as_str(), ucf[100].as_str()),
            ("ApplyEyeMakeup", "YoYo")
        );
        let k400 = asset("kinetics400.txt");
        assert_eq!(k400.len(), 400);
        assert_eq!(
            (k400[0].as_str(), k400[399].as_str()),
            ("abseiling", "zumba")
        );
        assert_eq!(k400[1], "air drumming");
    }

    #[test]
    fn formats_and_errors() {
        assert_eq!(parse("0 a b\n1 c\n").unwrap(), vec!["a b", "c"]);
        assert_eq!(parse("a b\n\n2 c\n").unwrap(), vec!["a b", "2 c"]);
        let e = parse("1 a\n3 b\n").unwrap_err().to_string();
        assert_eq!(e, "line 2: class number 3, expected 2");
    }
}
