//! Time-series forecasting (`task = "forecast"`): windows of `input_len` standardised values → the next `horizon`
//! values, MSE; RMSE/MAE in the series' own units beside last-value and seasonal-naive
//! baselines.

use crate::common::c;
use crate::config::{Config, ModelKind, TaskConfig};
use crate::models::forecaster;
use anyhow::{bail, Result};
use candle_core::Tensor;
use seqlab_data::{fixed_batches, Part, TimeSeries, Windows};
use seqlab_nn::loss::{mse_loss, Reduction};
use seqlab_nn::recurrent::RecurrentClassifier;
use seqlab_nn::VarStore;
use seqlab_train::trainer::{Shard, ShardLoss, TrainTask};
use seqlab_train::{BuildFrom, Report, Split, Task};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// A recurrent forecaster with its standardised series and windows.
pub struct ForecastTask {
    /// The whole run config (engine settings plus task keys).
    pub cfg: Config,
    /// The series, standardised, with its split.
    pub ts: TimeSeries,
    /// The recurrent forecasting network.
    pub net: RecurrentClassifier,
    /// The model's parameters.
    pub vs: VarStore,
    train: Windows,
    valid: Windows,
}

/// Errors in the series' units.
#[derive(Clone, Copy, Debug, Default)]
pub struct Errors {
    /// Root mean squared error.
    pub rmse: f64,
    /// Mean absolute error.
    pub mae: f64,
}

fn errors(pred: &[f64], truth: &[f64]) -> Errors {
    let n = truth.len().max(1) as f64;
    let se: f64 = pred.iter().zip(truth).map(|(p, t)| (p - t) * (p - t)).sum();
    let ae: f64 = pred.iter().zip(truth).map(|(p, t)| (p - t).abs()).sum();
    Errors {
        rmse: (se / n).sqrt(),
        mae: ae / n,
    }
}

/// The seasonal-naive baseline for step `k` (0-based) after `history`: the value one season
/// (`season` ≥ 1 steps) before it, going back whole seasons past the end of the history;
/// the last value when the history is shorter than that. `history` must not be empty.
pub fn seasonal_naive(history: &[f64], k: usize, season: usize) -> f64 {
    let t0 = history.len();
    let back = season * (1 + k / season);
    if t0 + k >= back {
        history[t0 + k - back]
    } else {
        history[t0 - 1]
    }
}

impl ForecastTask {
    /// Reads the series (the scaler is fitted on its training part, so evaluation reads it
    /// too) and builds the forecaster.
    fn new(cfg: &Config, vs: &VarStore) -> Result<Self> {
        let d = &cfg.task.data;
        let column = d.column.as_deref().expect("validated");
        let ts = TimeSeries::read_csv(&d.train, column, d.valid_frac, d.test_frac)?;
        let net = forecaster(&cfg.task.model, d.horizon, vs)?;
        let train = ts.windows(Part::Train, d.input_len, d.horizon)?;
        let valid = ts.windows(Part::Valid, d.input_len, d.horizon)?;
        if train.n == 0 {
            bail!(
                "{}: the training part has no window of {} inputs + {} targets",
                d.train.display(),
                d.input_len,
                d.horizon
            );
        }
        Ok(Self {
            cfg: cfg.clone(),
            ts,
            net,
            vs: vs.clone(),
            train,
            valid,
        })
    }

    fn batch(&self, w: &Windows, idx: &[usize], train: bool) -> Result<(Tensor, Tensor)> {
        let dev = self.vs.device();
        let (l, h) = (w.input_len, w.horizon);
        let mut x = Vec::with_capacity(idx.len() * l);
        let mut y = Vec::with_capacity(idx.len() * h);
        for &i in idx {
            x.extend_from_slice(&w.inputs[i * l..(i + 1) * l]);
            y.extend_from_slice(&w.targets[i * h..(i + 1) * h]);
        }
        let x = c(Tensor::from_vec(x, (idx.len(), l, 1), dev))?;
        let pred = c(self.net.forward(&x, None, train))?;
        Ok((pred, c(Tensor::from_vec(y, (idx.len(), h), dev))?))
    }

    /// Model predictions (original units), truths, and the two baselines for every window.
    fn predict(&self, w: &Windows) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>)> {
        let (mut pred, mut truth, mut last, mut seasonal) = (vec![], vec![], vec![], vec![]);
        let s = self.cfg.task.data.season.max(1);
        for b in c(fixed_batches(w.n, 256, None).map_err(|e| candle_core::Error::Msg(e.0)))? {
            let (p, _) = self.batch(w, &b, false)?;
            for row in c(p.to_vec2::<f32>())? {
                pred.extend(row.into_iter().map(|z| self.ts.scaler.invert(z as f64)));
            }
            for &i in &b {
                let t0 = w.target_start[i];
                for k in 0..w.horizon {
                    truth.push(self.ts.raw[t0 + k]);
                    last.push(self.ts.raw[t0 - 1]);
                    seasonal.push(seasonal_naive(&self.ts.raw[..t0], k, s));
                }
            }
        }
        Ok((pred, truth, last, seasonal))
    }

    /// RMSE and MAE of the model and both baselines on the test or validation part of the
    /// series; another file (`path`) is rejected.
    fn split_report(&self, split: Split, path: Option<&Path>) -> Result<Report> {
        if path.is_some() {
            bail!("forecasting evaluates the parts of its own series (data.train with valid_frac/test_frac); --data is not supported");
        }
        let d = &self.cfg.task.data;
        let (part, name) = match split {
            Split::Test => (Part::Test, "test"),
            Split::Valid => (Part::Valid, "valid"),
        };
        let w = self.ts.windows(part, d.input_len, d.horizon)?;
        anyhow::ensure!(w.n > 0, "the {name} part has no complete window");
        let (pred, truth, last, seasonal) = self.predict(&w)?;
        let (m, l, s) = (errors(&pred, &truth), errors(&last, &truth), errors(&seasonal, &truth));
        let text = format!(
            "{} column {:?}, {name} part ({} windows, horizon {}):\n  model           RMSE {:10.4}  MAE {:10.4}\n  last value      RMSE {:10.4}  MAE {:10.4}\n  seasonal naive  RMSE {:10.4}  MAE {:10.4}  (season {})\n  model RMSE / seasonal-naive RMSE = {:.3} (below 1 means the model beats the baseline)",
            d.train.display(),
            d.column.as_deref().unwrap_or(""),
            w.n,
            d.horizon,
            m.rmse,
            m.mae,
            l.rmse,
            l.mae,
            s.rmse,
            s.mae,
            d.season,
            m.rmse / s.rmse
        );
        let json = json!({"part": name, "windows": w.n, "horizon": d.horizon, "rmse": m.rmse, "mae": m.mae,
            "last_value": {"rmse": l.rmse, "mae": l.mae}, "seasonal_naive": {"rmse": s.rmse, "mae": s.mae, "season": d.season}});
        Ok(Report {
            text,
            json,
            files: Vec::new(),
        })
    }
}

impl Task for ForecastTask {
    type Config = TaskConfig;
    const NAME: &'static str = "forecast";
    const ABOUT: &'static str = "time-series forecasting of a CSV column (RMSE/MAE beside naive baselines)";

    fn validate(cfg: &Config) -> Result<()> {
        crate::config::validate_common(cfg)?;
        let t = &cfg.task;
        anyhow::ensure!(
            t.data.column.is_some(),
            "forecasting needs data.column (the CSV column to model)"
        );
        anyhow::ensure!(
            !matches!(t.model.kind, ModelKind::Transformer | ModelKind::Mamba),
            "forecasting supports rnn, rnn_relu, lstm and gru models"
        );
        anyhow::ensure!(
            t.loss.label_smoothing == 0.0,
            "forecasting trains with MSE: loss.label_smoothing does not apply"
        );
        Ok(())
    }

    fn config_keys() -> Result<Vec<seqlab_train::keys::TableDoc>> {
        crate::config::config_keys()
    }

    fn build(cfg: &Config, vs: &VarStore, _from: BuildFrom<'_>) -> Result<Self> {
        Self::new(cfg, vs)
    }

    /// Forecasting always has a test part (the end of the series).
    fn final_split(_cfg: &Config) -> Option<Split> {
        Some(Split::Test)
    }

    fn report(&self, split: Split, path: Option<&Path>) -> Result<Report> {
        self.split_report(split, path)
    }

    fn guide(&self) -> String {
        "RMSE is in the series' units; a model worth using beats the seasonal-naive and last-value baselines.".into()
    }
}

impl TrainTask for ForecastTask {
    fn batches_per_epoch(&self) -> usize {
        self.train.n.div_ceil(self.cfg.task.data.batch_size)
    }

    fn train_loss(&mut self, epoch: u64, index: usize) -> Result<(Tensor, usize)> {
        self.train_loss_shard(epoch, index, Shard::WHOLE)?.into_mean()
    }

    /// The shard's windows of the batch; the summed squared error over its values.
    fn train_loss_shard(&mut self, epoch: u64, index: usize, shard: Shard) -> Result<ShardLoss> {
        let b = c(fixed_batches(
            self.train.n,
            self.cfg.task.data.batch_size,
            Some((self.cfg.run.train.seed, epoch)),
        )
        .map_err(|e| candle_core::Error::Msg(e.0)))?;
        let idx = &b[index][shard.range(b[index].len())];
        if idx.is_empty() {
            return ShardLoss::empty(self.vs.device());
        }
        let (p, y) = self.batch(&self.train, idx, true)?;
        Ok(ShardLoss::sum_over(
            c(mse_loss(&p, &y, Reduction::Sum))?,
            p.elem_count(),
            idx.len(),
        ))
    }

    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>> {
        anyhow::ensure!(
            self.valid.n > 0,
            "the validation part has no complete window; lower data.input_len or raise data.valid_frac"
        );
        let (pred, truth, _, seasonal) = self.predict(&self.valid)?;
        let (m, s) = (errors(&pred, &truth), errors(&seasonal, &truth));
        let loss = (m.rmse / self.ts.scaler.std).powi(2);
        Ok(BTreeMap::from([
            ("loss".into(), loss),
            ("rmse".into(), m.rmse),
            ("mae".into(), m.mae),
            ("seasonal_naive_rmse".into(), s.rmse),
        ]))
    }

    fn write_extra(&self, dir: &Path) -> Result<()> {
        std::fs::write(dir.join("scaler.json"), serde_json::to_string_pretty(&self.ts.scaler)?)?;
        Ok(())
    }
}
