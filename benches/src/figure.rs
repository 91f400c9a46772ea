//! One printed benchmark figure and the run mode.

use serde_json::json;

/// How much work a harness does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Small cases for CI (`--quick`).
    Quick,
    /// The standard cases (a few minutes on a 2-core machine).
    Standard,
}

impl Mode {
    /// Reads `--quick` from the command line.
    pub fn from_args() -> Self {
        if std::env::args().any(|a| a == "--quick") {
            Mode::Quick
        } else {
            Mode::Standard
        }
    }

    /// Picks the quick or the standard size.
    pub fn pick(self, quick: usize, standard: usize) -> usize {
        match self {
            Mode::Quick => quick,
            Mode::Standard => standard,
        }
    }
}

/// A harness, by name, printing its figures.
#[derive(Debug, Clone, Copy)]
pub struct Bench(pub &'static str);

impl Bench {
    /// Prints one figure of this harness as a JSON line (see [`Figure::print`]).
    pub fn figure(
        self,
        case: impl Into<String>,
        metric: &'static str,
        value: f64,
        unit: &'static str,
        baseline: Option<f64>,
    ) {
        Figure {
            bench: self.0,
            case: case.into(),
            metric,
            value,
            unit,
            baseline,
        }
        .print();
    }
}

/// One measured figure, optionally beside its same-run baseline.
#[derive(Debug, Clone)]
pub struct Figure {
    /// The harness, e.g. `store-perf`.
    pub bench: &'static str,
    /// The case, e.g. `embedded/update-16w`.
    pub case: String,
    /// What was measured, e.g. `throughput`.
    pub metric: &'static str,
    /// The value.
    pub value: f64,
    /// Its unit, e.g. `ops/s`.
    pub unit: &'static str,
    /// The baseline's value in the same unit, measured in the same run.
    pub baseline: Option<f64>,
}

impl Figure {
    /// `value / baseline`, when there is a baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b != 0.0).map(|b| self.value / b)
    }

    /// Prints the figure as one JSON line on stdout.
    pub fn print(&self) {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        println!(
            "{}",
            json!({
                "bench": self.bench,
                "case": self.case,
                "metric": self.metric,
                "value": round(self.value),
                "unit": self.unit,
                "baseline": self.baseline.map(round),
                "ratio": self.ratio().map(round),
            })
        );
    }
}
