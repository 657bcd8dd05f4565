//! Paddle parameter names to ours: the rename table and the Linear transpose flag.

/// The rename table, applied to each dot-separated component of a Paddle name (after the
/// optional `backbone.` prefix is set aside): Paddle's private layer names to candle's.
pub const RENAME_RULES: &[(&str, &str)] = &[
    ("_conv", "conv"),
    ("_batch_norm", "bn"),
    ("_mean", "running_mean"),
    ("_variance", "running_var"),
];

/// Paddle name -> (our name, transpose?) or `None` for names that are not model tensors.
///
/// `backbone.conv1_1._conv.weight` and `conv1_1._conv.weight` (ImageNet backbones, no prefix)
/// both give `backbone.conv1_1.conv.weight`; `head.fc.weight` gives `head.fc.weight`, transposed.
pub fn rename(paddle: &str) -> Option<(String, bool)> {
    if let Some(rest) = paddle.strip_prefix("head.") {
        return match rest {
            "fc.weight" => Some(("head.fc.weight".into(), true)),
            "fc.bias" => Some(("head.fc.bias".into(), false)),
            _ => None,
        };
    }
    let rest = paddle.strip_prefix("backbone.").unwrap_or(paddle);
    let first = rest.split('.').next().unwrap_or("");
    if !(first.starts_with("conv1_") || first.starts_with("bb_") || first.starts_with("res")) {
        return None;
    }
    let parts: Vec<&str> = rest
        .split('.')
        .map(|c| {
            RENAME_RULES
                .iter()
                .find(|(from, _)| *from == c)
                .map_or(c, |(_, to)| to)
        })
        .collect();
    Some((format!("backbone.{}", parts.join(".")), false))
}
