//! PaddleVideo's index lists: `path label` for videos, `path num_frames label` for frame
//! folders. UCF101's split files omit the `.avi` suffix and Kinetics lists are relative to a
//! data root, so both are configurable.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// How to turn the path column of a list into a file path.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListOptions {
    /// Prefix joined to relative paths (PaddleVideo's `data_prefix`).
    pub root: Option<PathBuf>,
    /// Appended to every path when it does not already end with it (UCF101: `.avi`).
    pub suffix: String,
}

/// Where a sample's frames come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SampleLocation {
    /// A video file.
    Video(PathBuf),
    /// A folder of `img_{:05}.jpg` frames numbered from 1, with its frame count from the list.
    Frames {
        /// The folder.
        dir: PathBuf,
        /// Number of frames the list declares.
        num_frames: usize,
    },
}

impl SampleLocation {
    /// The path the sample is read from (video file or frame folder).
    pub fn path(&self) -> &Path {
        match self {
            SampleLocation::Video(p) => p,
            SampleLocation::Frames { dir, .. } => dir,
        }
    }
}

/// One line of an index list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// Where to read it.
    pub location: SampleLocation,
    /// Class index.
    pub label: usize,
    /// 1-based line of the list it came from, for messages.
    pub line: usize,
}

/// The two list formats PaddleVideo reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListFormat {
    /// `path label` per line.
    Videos,
    /// `path num_frames label` per line.
    Frames,
}

/// Reads an index list file.
pub fn read_list(path: &Path, format: ListFormat, opts: &ListOptions) -> Result<Vec<ListEntry>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_list(&text, path, format, opts)
}

/// Parses list text; `origin` names the list in errors. Blank lines and `#` comments are
/// skipped; paths may contain spaces (the numeric columns are taken from the right).
pub fn parse_list(
    text: &str,
    origin: &Path,
    format: ListFormat,
    opts: &ListOptions,
) -> Result<Vec<ListEntry>> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let err = |reason: String| Error::ListLine {
            list: origin.to_path_buf(),
            line,
            reason,
        };
        let numeric_cols = match format {
            ListFormat::Videos => 1,
            ListFormat::Frames => 2,
        };
        let mut rest = content;
        let mut nums = Vec::with_capacity(numeric_cols);
        for _ in 0..numeric_cols {
            let Some((head, tail)) = rest.rsplit_once(char::is_whitespace) else {
                return Err(err(format!(
                    "expected `{}`, found `{content}`",
                    match format {
                        ListFormat::Videos => "path label",
                        ListFormat::Frames => "path num_frames label",
                    }
                )));
            };
            let n: usize = tail
                .parse()
                .map_err(|_| err(format!("`{tail}` is not a non-negative integer")))?;
            nums.push(n);
            rest = head.trim_end();
        }
        let label = nums[0];
        let mut file = rest.to_string();
        if !opts.suffix.is_empty() && !file.ends_with(&opts.suffix) {
            file.push_str(&opts.suffix);
        }
        let file = match &opts.root {
            Some(root) => root.join(file),
            None => PathBuf::from(file),
        };
        let location = match format {
            ListFormat::Videos => SampleLocation::Video(file),
            ListFormat::Frames => {
                let num_frames = nums[1];
                if num_frames == 0 {
                    return Err(err("frame folder declares 0 frames".into()));
                }
                SampleLocation::Frames {
                    dir: file,
                    num_frames,
                }
            }
        };
        entries.push(ListEntry {
            location,
            label,
            line,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, format: ListFormat, opts: &ListOptions) -> Result<Vec<ListEntry>> {
        parse_list(text, Path::new("train.list"), format, opts)
    }

    #[test]
    fn ucf101_video_list_with_root_and_suffix() {
        let opts = ListOptions {
            root: Some("/data/UCF-101".into()),
            suffix: ".avi".into(),
        };
        let e = parse(
            "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01 0\n\n# c\nYoYo/v_YoYo_g25_c05.avi 100\n",
            ListFormat::Videos,
            &opts,
        )
        .unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[0].location,
            SampleLocation::Video(
                "/data/UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi".into()
            )
        );
        assert_eq!((e[1].label, e[1].line), (100, 4));
        assert_eq!(
            e[1].location.path(),
            Path::new("/data/UCF-101/YoYo/v_YoYo_g25_c05.avi")
        );
    }

    #[test]
    fn frame_list_and_paths_with_spaces() {
        let e = parse(
            "my dir/clip 1 120 3",
            ListFormat::Frames,
            &ListOptions::default(),
        )
        .unwrap();
        assert_eq!(
            e[0].location,
            SampleLocation::Frames {
                dir: "my dir/clip 1".into(),
                num_frames: 120
            }
        );
        assert_eq!(e[0].label, 3);
    }

    #[test]
    fn malformed_lines_name_list_and_line() {
        let o = ListOptions::default();
        let msg = parse("a.avi 1\nb.avi x\n", ListFormat::Videos, &o)
            .unwrap_err()
            .to_string();
        assert_eq!(msg, "train.list:2: `x` is not a non-negative integer");
        let msg = parse("lonely", ListFormat::Videos, &o)
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("train.list:1: expected `path label`"),
            "{msg}"
        );
        let msg = parse("d 0 1", ListFormat::Frames, &o)
            .unwrap_err()
            .to_string();
        assert_eq!(msg, "train.list:1: frame folder declares 0 frames");
        let msg = parse("a.avi -1", ListFormat::Videos, &o)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`-1`"), "{msg}");
    }
}
