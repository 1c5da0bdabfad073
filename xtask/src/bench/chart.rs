//! A PNG bar chart of the speed-ups of a benchmark table (plotters, with the system's DejaVu
//! Sans for labels).

use std::path::Path;

use anyhow::{Context, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::{Row, median};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Draws one horizontal bar per row: peer median / casket median, on a log scale.
pub(crate) fn speedups(rows: &[Row], png: &Path) -> anyhow::Result<()> {
    let font = std::fs::read(FONT)
        .with_context(|| format!("cannot read {FONT} (apt-get install fonts-dejavu-core)"))?;
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("{FONT} is not a usable font"))?;
    let ratios: Vec<(String, f64)> = rows
        .iter()
        .map(|row| (row.what.clone(), median(&row.theirs) / median(&row.ours)))
        .collect();
    let height = 80 + 34 * ratios.len() as u32;
    let root = BitMapBackend::new(png, (1100, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let top = ratios.iter().map(|(_, r)| *r).fold(1.0, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "casket speed-up over BuildStream 1.6.8 (x, log scale)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(430)
        .build_cartesian_2d((0.1f64..top).log_scale(), (0..ratios.len()).into_segmented())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_label_formatter(&|y| match y {
            SegmentValue::CenterOf(i) => ratios.get(*i).map_or_else(String::new, |(name, _)| name.clone()),
            _ => String::new(),
        })
        .y_labels(ratios.len())
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(ratios.iter().enumerate().map(|(i, (_, ratio))| {
            let color = if *ratio >= 1.0 {
                BLUE.mix(0.7)
            } else {
                RED.mix(0.7)
            };
            Rectangle::new(
                [
                    (0.1, SegmentValue::Exact(i)),
                    (*ratio, SegmentValue::Exact(i + 1)),
                ],
                color.filled(),
            )
        }))
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
