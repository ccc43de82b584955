//! The lecture's figure: minimum distribution time against N for client-server and P2P, with
//! measured lab points on top. SVG only (plotters' SVG backend needs no fonts or image codecs).

use std::path::Path;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::bound::Problem;

/// One measured lab result to overlay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasuredPoint {
    /// `"p2p"` or `"client-server"`.
    pub architecture: String,
    pub n: usize,
    pub seconds: f64,
}

/// Plotting failed.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("only .svg plots are supported (got {0}); use a .svg file name")]
    Format(String),
    #[error("cannot draw the plot: {0}")]
    Draw(String),
}

fn draw_err<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// How the figure's axes are scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Axes {
    /// Linear N and seconds, as the lecture draws it.
    #[default]
    Linear,
    /// Logarithmic N and seconds, so 10 and 10,000 peers (and the P2P bound next to the
    /// client-server one) are both readable.
    LogLog,
}

/// Draws D_cs and D_p2p for N = 1..=`n_max` (of `problem`'s per-peer uploads, cycled) and the
/// measured points, into the SVG file `path`.
pub fn bounds_svg(
    path: &Path,
    problem: &Problem,
    n_max: usize,
    measured: &[MeasuredPoint],
    axes: Axes,
) -> Result<(), PlotError> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        return Err(PlotError::Format(path.display().to_string()));
    }
    let n_max = n_max.max(1);
    let curve = |cs: bool| -> Vec<(f64, f64)> {
        (1..=n_max)
            .map(|n| {
                let p = problem.with_peers(n);
                let b = if cs { p.client_server() } else { p.p2p() };
                (n as f64, b.seconds)
            })
            .collect()
    };
    let (cs, p2p) = (curve(true), curve(false));
    let ys = || cs.iter().chain(&p2p).map(|p| p.1).chain(measured.iter().map(|m| m.seconds));
    let y_max = ys().fold(0.0f64, f64::max) * 1.1;
    let x_max = measured.iter().map(|m| m.n).max().unwrap_or(0).max(n_max) as f64;

    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption("Minimum distribution time: client-server vs P2P", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70);
    match axes {
        Axes::Linear => {
            let chart = builder
                .build_cartesian_2d(0.0..x_max + 1.0, 0.0..y_max.max(1e-9))
                .map_err(draw_err)?;
            draw(chart, cs, p2p, measured, "N (peers)", "seconds")?;
        }
        Axes::LogLog => {
            // Nothing at or below zero has a place on a log axis.
            let measured: Vec<MeasuredPoint> =
                measured.iter().filter(|m| m.n > 0 && m.seconds > 0.0).cloned().collect();
            let lowest = ys().filter(|y| *y > 0.0).fold(f64::INFINITY, f64::min);
            let y_max = y_max.max(1e-9);
            let y_min = if lowest.is_finite() { lowest.min(y_max) / 1.5 } else { y_max / 10.0 };
            let chart = builder
                .build_cartesian_2d((1.0..x_max * 1.2).log_scale(), (y_min..y_max).log_scale())
                .map_err(draw_err)?;
            draw(chart, cs, p2p, &measured, "N (peers, log scale)", "seconds (log scale)")?;
        }
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

/// Draws the two bounds, the measured points and the legend on `chart`, whatever its axes.
fn draw<'a, X, Y>(
    mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    cs: Vec<(f64, f64)>,
    p2p: Vec<(f64, f64)>,
    measured: &[MeasuredPoint],
    x_desc: &str,
    y_desc: &str,
) -> Result<(), PlotError>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw().map_err(draw_err)?;
    chart
        .draw_series(LineSeries::new(cs, RED.stroke_width(2)))
        .map_err(draw_err)?
        .label("client-server bound")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(p2p, BLUE.stroke_width(2)))
        .map_err(draw_err)?
        .label("P2P bound")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    for (arch, color, label) in
        [("client-server", RED, "client-server measured"), ("p2p", BLUE, "P2P measured")]
    {
        let pts: Vec<(f64, f64)> = measured
            .iter()
            .filter(|m| m.architecture == arch)
            .map(|m| (m.n as f64, m.seconds))
            .collect();
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(pts.into_iter().map(|p| Cross::new(p, 6, color.stroke_width(2))))
            .map_err(draw_err)?
            .label(label)
            .legend(move |(x, y)| Cross::new((x + 10, y), 5, color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_curves_and_points_into_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bounds.svg");
        let p = Problem::uniform(3600.0, 10.0, 1.0, 30, Some(10.0));
        let measured = vec![
            MeasuredPoint { architecture: "p2p".into(), n: 10, seconds: 1500.0 },
            MeasuredPoint { architecture: "client-server".into(), n: 10, seconds: 3700.0 },
            // No place on a log axis: left out there, drawn on linear axes.
            MeasuredPoint { architecture: "p2p".into(), n: 0, seconds: 0.0 },
        ];
        for axes in [Axes::Linear, Axes::LogLog] {
            bounds_svg(&path, &p, 30, &measured, axes).unwrap();
            let svg = std::fs::read_to_string(&path).unwrap();
            assert!(svg.starts_with("<svg"));
            assert!(svg.contains("P2P bound") && svg.contains("client-server measured"));
            assert_eq!(svg.contains("log scale"), axes == Axes::LogLog);
        }
        let err = bounds_svg(&dir.path().join("x.png"), &p, 30, &[], Axes::Linear).unwrap_err();
        assert!(matches!(err, PlotError::Format(_)));
    }
}
