//! Early stopping on validation NLL: stop after `patience` epochs without a new best.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EarlyStopping {
    pub patience: usize,
    #[serde(default, with = "super::exact_float::option")]
    pub best: Option<f64>,
    pub best_epoch: usize,
    pub bad_epochs: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Improved,
    NoImprovement,
    Stop,
}

impl EarlyStopping {
    pub fn new(patience: usize) -> Self {
        Self {
            patience,
            best: None,
            best_epoch: 0,
            bad_epochs: 0,
        }
    }

    /// Records epoch `epoch`'s validation loss (lower is better).
    pub fn update(&mut self, epoch: usize, val: f64) -> Verdict {
        if self.best.is_none_or(|b| val < b) {
            self.best = Some(val);
            self.best_epoch = epoch;
            self.bad_epochs = 0;
            return Verdict::Improved;
        }
        self.bad_epochs += 1;
        if self.bad_epochs >= self.patience {
            Verdict::Stop
        } else {
            Verdict::NoImprovement
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_patience_epochs_without_a_new_best() {
        let mut es = EarlyStopping::new(2);
        assert_eq!(es.update(1, 5.0), Verdict::Improved);
        assert_eq!(es.update(2, 6.0), Verdict::NoImprovement);
        assert_eq!(es.update(3, 4.0), Verdict::Improved);
        assert_eq!(es.update(4, 4.0), Verdict::NoImprovement); // equal is not better
        assert_eq!(es.update(5, 9.0), Verdict::Stop);
        assert_eq!((es.best, es.best_epoch), (Some(4.0), 3));
    }
}
