//! The rate ramp: the search for the highest publish rate that still meets
//! the bound (zero loss, p99 under the limit, the publisher keeping up).
//!
//! It grows the rate geometrically from the start until a step fails (or
//! the ceiling passes), then bisects between the best passing and the
//! lowest failing rate until they are within the precision. When even the
//! start fails it walks down instead. Always bounded by a number of steps.

#[derive(Debug, Clone)]
pub struct RampSearch {
    factor: f64,
    max_rate: f64,
    min_rate: f64,
    precision: f64,
    steps_left: u32,
    next: Option<f64>,
    /// Highest rate that passed.
    pass: Option<f64>,
    /// Lowest rate that failed.
    fail: Option<f64>,
}

impl RampSearch {
    /// `factor` > 1 is the growth per step; `precision` the relative width
    /// at which bisection stops (0.05 = within 5 %).
    pub fn new(start: f64, factor: f64, max_rate: f64, max_steps: u32, precision: f64) -> Self {
        let start = start.clamp(f64::MIN_POSITIVE, max_rate.max(f64::MIN_POSITIVE));
        Self {
            factor: factor.max(1.01),
            max_rate,
            min_rate: start / 1000.0,
            precision: precision.max(0.001),
            steps_left: max_steps,
            next: (max_steps > 0).then_some(start),
            pass: None,
            fail: None,
        }
    }

    /// Never walks down below `floor` (at most the start): a step must
    /// carry enough publishes for its percentiles and rate to mean
    /// something.
    pub fn with_floor(mut self, floor: f64) -> Self {
        self.min_rate = floor.min(self.next.unwrap_or(floor));
        self
    }

    /// The rate of the next step, or `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        self.next
    }

    /// The highest rate that passed so far (the fan-out report takes the
    /// best step from its own list).
    #[cfg(test)]
    pub fn best(&self) -> Option<f64> {
        self.pass
    }

    /// Records the outcome of a step at `rate` and picks the next rate.
    pub fn record(&mut self, rate: f64, passed: bool) {
        self.steps_left = self.steps_left.saturating_sub(1);
        if passed {
            self.pass = Some(self.pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.fail = Some(self.fail.map_or(rate, |f| f.min(rate)));
        }
        self.next = if self.steps_left == 0 {
            None
        } else {
            match (self.pass, self.fail) {
                (Some(p), None) if p >= self.max_rate => None,
                (Some(p), None) => Some((p * self.factor).min(self.max_rate)),
                (None, Some(f)) => Some(f / self.factor).filter(|r| *r >= self.min_rate),
                (Some(p), Some(f)) if (f - p) / p <= self.precision || f <= p => None,
                (Some(p), Some(f)) => Some((p + f) / 2.0),
                (None, None) => None,
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a system whose capacity is `capacity`.
    fn run(mut s: RampSearch, capacity: f64) -> (Option<f64>, Vec<f64>) {
        let mut tried = Vec::new();
        while let Some(rate) = s.next_rate() {
            tried.push(rate);
            s.record(rate, rate <= capacity);
        }
        (s.best(), tried)
    }

    #[test]
    fn finds_the_capacity_within_the_precision() {
        let (best, tried) = run(RampSearch::new(10.0, 2.0, 1e6, 30, 0.05), 700.0);
        let best = best.unwrap();
        assert!((700.0 / 1.05..=700.0).contains(&best), "best {best}");
        assert_eq!(&tried[..7], &[10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0]);
        assert_eq!(tried[7], 1280.0);
        assert_eq!(tried[8], 960.0, "then bisects");
    }

    #[test]
    fn stops_at_the_ceiling_when_everything_passes() {
        let (best, tried) = run(RampSearch::new(100.0, 4.0, 1000.0, 30, 0.05), f64::INFINITY);
        assert_eq!(best, Some(1000.0));
        assert_eq!(tried, vec![100.0, 400.0, 1000.0]);
    }

    #[test]
    fn walks_down_when_the_start_fails() {
        let (best, tried) = run(RampSearch::new(100.0, 2.0, 1e6, 30, 0.1), 30.0);
        assert_eq!(&tried[..3], &[100.0, 50.0, 25.0]);
        let best = best.unwrap();
        assert!((25.0..=30.0).contains(&best), "best {best}");
    }

    #[test]
    fn bounded_by_steps_and_by_a_floor() {
        let (best, tried) = run(RampSearch::new(10.0, 2.0, 1e9, 5, 0.0), 1e12);
        assert_eq!(tried.len(), 5);
        assert_eq!(best, Some(160.0));
        let (best, tried) = run(RampSearch::new(10.0, 10.0, 1e9, 100, 0.05), 0.0);
        assert_eq!(best, None);
        assert_eq!(tried.len(), 4, "10, 1, 0.1, 0.01 then below the floor");
        assert_eq!(run(RampSearch::new(10.0, 2.0, 1e9, 0, 0.05), 1.0).1.len(), 0);
    }

    #[test]
    fn a_floor_stops_the_walk_down() {
        let (best, tried) = run(RampSearch::new(5.0, 2.0, 1e9, 30, 0.1).with_floor(2.0), 0.5);
        assert_eq!(best, None);
        assert_eq!(tried, vec![5.0, 2.5], "1.25 is below the floor");
        // A floor above the start is the start.
        let (_, tried) = run(RampSearch::new(5.0, 2.0, 1e9, 30, 0.1).with_floor(50.0), 0.0);
        assert_eq!(tried, vec![5.0]);
    }
}
