//! Pictures: the confusion-matrix heat map (and the font every picture uses).
//!
//! plotters draws into an RGB buffer with its bitmap backend and an embedded font (DejaVu Sans
//! Mono, `assets/fonts`), so no system fontconfig is needed; `image` writes the PNG.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;

/// The family name pictures use for text.
pub const FONT: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSansMono.ttf");
/// Advance of one DejaVu Sans Mono glyph, in ems: lets a layout size text without a font query.
const MONO_ADVANCE: f64 = 0.61;

/// Registers the embedded font as [`FONT`]; call before drawing text.
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and known to parse; a failure would show as missing text.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

/// Writes an RGB buffer as a PNG.
pub fn save_png(path: &Path, width: u32, height: u32, rgb: Vec<u8>) -> Result<()> {
    let img = image::RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| anyhow!("image buffer does not match {width}x{height}"))?;
    img.save_with_format(path, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", path.display()))
}

/// White to dark blue (matplotlib's "Blues" ends).
fn blues(v: f64) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * v).round() as u8;
    RGBColor(mix(247, 8), mix(251, 48), mix(255, 107))
}

/// A heat map of `matrix` (rows: true class, columns: predicted), each row normalised to its
/// total, with the class `names` along both axes and the counts in the cells when they fit.
pub fn confusion_png(path: &Path, matrix: &[Vec<u64>], names: &[String]) -> Result<()> {
    register_font();
    let n = matrix.len().max(1);
    let cell = (800 / n).clamp(8, 36) as i32;
    let font = (f64::from(cell) * 0.8).clamp(7.0, 14.0);
    let longest = names.iter().map(|s| s.chars().count()).max().unwrap_or(1);
    let label_w = (longest as f64 * font * MONO_ADVANCE).ceil() as i32 + 10;
    let title = "confusion matrix: rows true class, columns predicted; shade = share of the row";
    let title_w = (title.len() as f64 * 14.0 * MONO_ADVANCE) as i32 + 20;
    let (left, top) = (label_w + 10, 40);
    let side = cell * n as i32;
    let width = (left + side + 20).max(title_w) as u32;
    let height = (top + side + 10 + label_w + 10) as u32;

    let mut buf = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        let draw_err = |e| anyhow!("drawing {}: {e}", path.display());
        root.fill(&WHITE).map_err(draw_err)?;
        let text = |size: f64, color: &'static RGBColor, pos: Pos| {
            TextStyle::from((FONT, size).into_font())
                .color(color)
                .pos(pos)
        };
        root.draw(&Text::new(
            title,
            (10, 12),
            text(14.0, &BLACK, Pos::new(HPos::Left, VPos::Top)),
        ))
        .map_err(draw_err)?;
        for (r, row) in matrix.iter().enumerate() {
            let total: u64 = row.iter().sum();
            let y = top + r as i32 * cell;
            for (c, &count) in row.iter().enumerate() {
                let x = left + c as i32 * cell;
                let share = if total == 0 {
                    0.0
                } else {
                    count as f64 / total as f64
                };
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    blues(share).filled(),
                ))
                .map_err(draw_err)?;
                if cell >= 20 && count > 0 {
                    let color = if share > 0.5 { &WHITE } else { &BLACK };
                    let style = text(
                        f64::from(cell) * 0.4,
                        color,
                        Pos::new(HPos::Center, VPos::Center),
                    );
                    root.draw(&Text::new(
                        count.to_string(),
                        (x + cell / 2, y + cell / 2),
                        style,
                    ))
                    .map_err(draw_err)?;
                }
            }
        }
        root.draw(&Rectangle::new(
            [(left, top), (left + side, top + side)],
            BLACK.stroke_width(1),
        ))
        .map_err(draw_err)?;
        for (i, name) in names.iter().enumerate() {
            let mid = i as i32 * cell + cell / 2;
            root.draw(&Text::new(
                name.as_str(),
                (left - 6, top + mid),
                text(font, &BLACK, Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(draw_err)?;
            root.draw(&Text::new(
                name.as_str(),
                (left + mid, top + side + 6),
                text(font, &BLACK, Pos::new(HPos::Left, VPos::Center))
                    .transform(FontTransform::Rotate90),
            ))
            .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    save_png(path, width, height, buf)
}
