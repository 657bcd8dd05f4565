//! Pictures: the confusion-matrix heat map, training curves (and the font every picture uses).
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

/// One line of a chart: a name for the legend, its colour, its points (a non-finite value breaks
/// the line, as a diverged loss does) and whether to mark each point (epoch-level series).
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: &'static str,
    /// Line colour.
    pub color: RGBColor,
    /// (x, y) points, x increasing.
    pub points: Vec<(f64, f64)>,
    /// Draw a dot at every point.
    pub markers: bool,
}

/// One chart of a grid: a title, the y range, and its series.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Title above the chart.
    pub title: &'static str,
    /// Fixed y range; `None` fits the data (from 0).
    pub y_range: Option<(f64, f64)>,
    /// Where the legend goes (a corner the lines tend to leave free).
    pub legend: SeriesLabelPosition,
    /// The lines.
    pub series: Vec<Series>,
}

/// Draws `panels` in a grid two wide under `title`, x from 0 to `x_max` (epochs), as a PNG.
pub fn line_charts_png(path: &Path, title: &str, x_max: f64, panels: &[Panel]) -> Result<()> {
    register_font();
    let cols = 2;
    let rows = panels.len().div_ceil(cols).max(1);
    let (width, height) = (1100u32, 40 + 360 * rows as u32);
    let mut buf = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        let draw_err = |e| anyhow!("drawing {}: {e}", path.display());
        root.fill(&WHITE).map_err(draw_err)?;
        let (top, body) = root.split_vertically(40);
        top.draw(&Text::new(
            title,
            (10, 12),
            TextStyle::from((FONT, 16.0).into_font()).pos(Pos::new(HPos::Left, VPos::Top)),
        ))
        .map_err(draw_err)?;
        let x_max = if x_max > 0.0 { x_max } else { 1.0 };
        for (panel, area) in panels.iter().zip(body.split_evenly((rows, cols))) {
            let finite = || {
                panel
                    .series
                    .iter()
                    .flat_map(|s| s.points.iter().map(|p| p.1))
                    .filter(|v| v.is_finite())
            };
            let (y0, y1) = panel.y_range.unwrap_or_else(|| {
                let hi = finite().fold(0.0f64, f64::max);
                (
                    finite().fold(0.0f64, f64::min),
                    if hi > 0.0 { hi * 1.05 } else { 1.0 },
                )
            });
            let mut chart = ChartBuilder::on(&area)
                .caption(panel.title, (FONT, 15.0))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..x_max, y0..y1)
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .label_style((FONT, 12.0))
                .max_light_lines(2)
                .light_line_style(RGBColor(240, 240, 240))
                .draw()
                .map_err(draw_err)?;
            for s in &panel.series {
                let style = s.color.stroke_width(2);
                // Unbroken runs of finite points, each one path.
                let runs = s.points.split(|p| !p.1.is_finite());
                for run in runs.filter(|r| !r.is_empty()) {
                    chart
                        .draw_series(std::iter::once(PathElement::new(run.to_vec(), style)))
                        .map_err(draw_err)?;
                }
                if s.markers {
                    let dots = s.points.iter().filter(|p| p.1.is_finite());
                    chart
                        .draw_series(dots.map(|&p| Circle::new(p, 3, s.color.filled())))
                        .map_err(draw_err)?;
                }
                // An empty series, drawn only to carry the legend entry.
                let color = s.color;
                chart
                    .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
                    .map_err(draw_err)?
                    .label(s.name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .label_font((FONT, 12.0))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(panel.legend.clone())
                .draw()
                .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    save_png(path, width, height, buf)
}

/// One window's cell of a timeline band.
#[derive(Debug, Clone, Copy)]
pub struct TimelineCell {
    /// Seconds the cell starts and ends.
    pub start: f64,
    /// See `start`.
    pub end: f64,
    /// Which band (row).
    pub band: usize,
    /// The band's class's score in this window, 0..1: the shade.
    pub score: f32,
    /// Whether the class is the window's top class (marked by a bar under the cell).
    pub top: bool,
}

/// Tableau's ten colours, one per band (cycled).
const BAND_COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// `m:ss`, or `h:mm:ss` from an hour on.
pub fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// A timeline: one band per name, each cell shaded from white to the band's colour by its
/// score, a bar under the cells where the band's class is the top class, time in m:ss from 0 to
/// `seconds`.
pub fn timeline_png(
    path: &Path,
    title: &str,
    names: &[String],
    cells: &[TimelineCell],
    seconds: f64,
) -> Result<()> {
    register_font();
    let bands = names.len().max(1);
    let band_h = 28u32;
    let font = 13.0;
    let longest = names.iter().map(|s| s.chars().count()).max().unwrap_or(1);
    let label_w = (longest as f64 * font * MONO_ADVANCE).ceil() as u32 + 16;
    let width = 1200u32.max(label_w + 400);
    let height = 50 + band_h * bands as u32 + 50;
    let mut buf = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        let draw_err = |e| anyhow!("drawing {}: {e}", path.display());
        root.fill(&WHITE).map_err(draw_err)?;
        let x_max = if seconds > 0.0 { seconds } else { 1.0 };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 15.0))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(label_w)
            .build_cartesian_2d(0.0..x_max, 0.0..bands as f64)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(12)
            .x_label_formatter(&|x| clock(*x))
            .x_desc("time (m:ss)")
            .label_style((FONT, 12.0))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(draw_err)?;
        let mix = |c: RGBColor, v: f32| {
            let v = f64::from(v.clamp(0.0, 1.0));
            let m = |a: u8| (255.0 + (f64::from(a) - 255.0) * v).round() as u8;
            RGBColor(m(c.0), m(c.1), m(c.2))
        };
        // Band 0 at the top.
        let row = |band: usize| (bands - 1 - band) as f64;
        chart
            .draw_series(cells.iter().map(|c| {
                let colour = mix(BAND_COLOURS[c.band % BAND_COLOURS.len()], c.score);
                let y = row(c.band);
                Rectangle::new([(c.start, y + 0.22), (c.end, y + 0.95)], colour.filled())
            }))
            .map_err(draw_err)?;
        chart
            .draw_series(cells.iter().filter(|c| c.top).map(|c| {
                let y = row(c.band);
                Rectangle::new(
                    [(c.start, y + 0.05), (c.end, y + 0.17)],
                    BAND_COLOURS[c.band % BAND_COLOURS.len()].filled(),
                )
            }))
            .map_err(draw_err)?;
        for (band, name) in names.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(0.0, row(band) + 0.55));
            root.draw(&Text::new(
                name.as_str(),
                (x - 8, y),
                TextStyle::from((FONT, font).into_font()).pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    save_png(path, width, height, buf)
}
