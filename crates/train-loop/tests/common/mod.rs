//! Tiny generated data sets and configs for the training tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

pub use test_support::tiny_videos;

/// A small R18 run on 32x32 clips of 4 frames: the whole recipe (mixup, label smoothing,
/// dropout, warmup-cosine, precise BN, validation) in seconds.
pub fn tiny_config(train: &Path, valid: &Path, out: &Path, epochs: usize) -> String {
    format!(
        r#"
[model]
depth = 18
num_seg = 4
num_classes = 3
dropout = 0.5

[data]
format = "videos"
train_list = "{train}"
valid_list = "{valid}"
batch_size = 2
num_workers = 2
prefetch = 2
sampling = {{ segments = {{ num_seg = 4, seg_len = 1 }} }}

[data.train_pipeline]
transforms = [
  {{ MultiScaleCrop = {{ target_size = 40 }} }},
  {{ RandomCrop = {{ target_size = 32 }} }},
  {{ RandomFlip = {{ p = 0.5 }} }},
]

[data.valid_pipeline]
transforms = [
  {{ Scale = {{ short_size = 32, fixed_ratio = false }} }},
  {{ CenterCrop = {{ target_size = 32 }} }},
]

[train]
epochs = {epochs}
seed = 7
label_smoothing = 0.1
mixup_alpha = 0.2
log_interval = 1

[lr]
warmup_start_lr = 0.01
warmup_epochs = 1
cosine_base_lr = 0.05

[precise_bn]
enabled = true
interval = 2
num_iters = 2

[output]
dir = "{out}"
"#,
        train = train.display(),
        valid = valid.display(),
        out = out.display(),
    )
}
