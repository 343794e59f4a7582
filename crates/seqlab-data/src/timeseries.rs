//! CSV time series: one numeric column chosen by header name, split chronologically into
//! train/valid/test, standardised with statistics of the training part only, and cut into
//! `input → target` windows.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, ErrorKind, Result};
use crate::text::{numbered_lines, read_text};

/// Splits one CSV line on commas outside double quotes; `""` inside quotes is a quote.
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// Which chronological part of a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Train,
    Valid,
    Test,
}

/// `(x - mean) / std`, fitted on the training part.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Mean of the training values.
    pub mean: f64,
    /// Population standard deviation; 1 when the training part is constant.
    pub std: f64,
}

impl Standardizer {
    /// Mean and population standard deviation of `values` (std 1 when constant or empty).
    pub fn fit(values: &[f64]) -> Self {
        let n = values.len().max(1) as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let std = if var.sqrt() > 0.0 { var.sqrt() } else { 1.0 };
        Self { mean, std }
    }
    /// Standardises `v`: `(v - mean) / std`.
    pub fn apply(&self, v: f64) -> f64 {
        (v - self.mean) / self.std
    }
    /// Undoes [`Standardizer::apply`]: `z * std + mean`.
    pub fn invert(&self, z: f64) -> f64 {
        z * self.std + self.mean
    }
}

/// Fixed-size windows, row-major: `inputs` is `[n, input_len]`, `targets` is `[n, horizon]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Windows {
    /// Number of windows.
    pub n: usize,
    /// Input steps per window.
    pub input_len: usize,
    /// Target steps per window (forecast horizon).
    pub horizon: usize,
    /// Inputs, `[n, input_len]` row-major.
    pub inputs: Vec<f32>,
    /// Targets, `[n, horizon]` row-major.
    pub targets: Vec<f32>,
    /// Index in the full series of each window's first target.
    pub target_start: Vec<usize>,
}

/// A univariate series read from a CSV column.
#[derive(Clone, Debug)]
pub struct TimeSeries {
    /// The CSV file read.
    pub path: PathBuf,
    /// The column read.
    pub column: String,
    /// Values as read.
    pub raw: Vec<f64>,
    /// Values standardised with `scaler`.
    pub normalized: Vec<f32>,
    /// Standardisation fitted on the training part.
    pub scaler: Standardizer,
    /// Train is `0..bounds[0]`, valid `bounds[0]..bounds[1]`, test `bounds[1]..len`.
    pub bounds: [usize; 2],
}

impl TimeSeries {
    /// Reads column `column` (matched against the header, quotes removed) of the CSV at `path`
    /// and keeps the last `valid_frac` and `test_frac` of the points (chronological order)
    /// for validation and test. Normalisation is fitted on the training part only.
    pub fn read_csv(path: impl AsRef<Path>, column: &str, valid_frac: f64, test_frac: f64) -> Result<Self> {
        let path = path.as_ref();
        let invalid = |msg: String| DataError::file(path, ErrorKind::Invalid(msg));
        if !(0.0..1.0).contains(&valid_frac) || !(0.0..1.0).contains(&test_frac) || valid_frac + test_frac >= 1.0 {
            return Err(invalid(format!(
                "valid_frac {valid_frac} and test_frac {test_frac} must be in [0, 1) and sum below 1"
            )));
        }
        let text = read_text(path)?;
        let mut lines = numbered_lines(&text);
        let (hline, header) = lines.next().expect("read_text rejects blank files");
        let header = csv_fields(header);
        let col = header.iter().position(|h| h.trim() == column).ok_or_else(|| {
            DataError::at(
                path,
                hline,
                ErrorKind::MissingColumn {
                    column: column.into(),
                    available: header.join(", "),
                },
            )
        })?;
        let mut raw = Vec::new();
        for (line, l) in lines {
            let fields = csv_fields(l);
            if fields.len() != header.len() {
                return Err(DataError::at(
                    path,
                    line,
                    ErrorKind::ColumnCount {
                        expected: header.len(),
                        found: fields.len(),
                        sep: "comma-separated",
                    },
                ));
            }
            let s = fields[col].trim();
            match s.parse::<f64>() {
                Ok(v) if v.is_finite() => raw.push(v),
                _ => {
                    return Err(DataError::at(
                        path,
                        line,
                        ErrorKind::NotNumeric {
                            column: column.into(),
                            value: s.into(),
                        },
                    ))
                }
            }
        }
        let n = raw.len();
        let n_test = (n as f64 * test_frac).round() as usize;
        let n_valid = (n as f64 * valid_frac).round() as usize;
        let train_end = n - n_test - n_valid;
        if train_end < 2 {
            return Err(invalid(format!(
                "{n} data points leave {train_end} for training (need at least 2)"
            )));
        }
        let scaler = Standardizer::fit(&raw[..train_end]);
        let normalized = raw.iter().map(|&v| scaler.apply(v) as f32).collect();
        Ok(Self {
            path: path.to_path_buf(),
            column: column.into(),
            raw,
            normalized,
            scaler,
            bounds: [train_end, train_end + n_valid],
        })
    }

    /// Index range of `part` in the series (chronological train / valid / test split).
    pub fn range(&self, part: Part) -> std::ops::Range<usize> {
        match part {
            Part::Train => 0..self.bounds[0],
            Part::Valid => self.bounds[0]..self.bounds[1],
            Part::Test => self.bounds[1]..self.raw.len(),
        }
    }

    /// Every window (stride 1) whose `horizon` targets all lie in `part`; the `input_len`
    /// inputs just before may reach back into earlier parts (never into later ones), as at
    /// forecast time. Values are normalised.
    pub fn windows(&self, part: Part, input_len: usize, horizon: usize) -> Result<Windows> {
        if input_len == 0 || horizon == 0 {
            return Err(DataError::file(
                &self.path,
                ErrorKind::Invalid("input_len and horizon must be positive".into()),
            ));
        }
        let r = self.range(part);
        let first = r.start.max(input_len);
        let mut w = Windows {
            n: 0,
            input_len,
            horizon,
            inputs: Vec::new(),
            targets: Vec::new(),
            target_start: Vec::new(),
        };
        let mut t = first;
        while t + horizon <= r.end {
            w.inputs.extend_from_slice(&self.normalized[t - input_len..t]);
            w.targets.extend_from_slice(&self.normalized[t..t + horizon]);
            w.target_start.push(t);
            w.n += 1;
            t += 1;
        }
        if w.n == 0 {
            return Err(DataError::file(
                &self.path,
                ErrorKind::Invalid(format!(
                    "{part:?} part ({} points) is too short for windows of {input_len} inputs and {horizon} targets",
                    r.len()
                )),
            ));
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, body: &str) -> (PathBuf, impl Drop) {
        struct Rm(PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let p = std::env::temp_dir().join(format!("seqlab-ts-{}-{name}", std::process::id()));
        std::fs::write(&p, body).unwrap();
        (p.clone(), Rm(p))
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(csv_fields(r#""a,b",1,"say ""hi""""#), ["a,b", "1", r#"say "hi""#]);
    }

    #[test]
    fn reads_column_and_fits_on_train_only() {
        let mut body = String::from("\"\",\"time\",\"value\"\n");
        for i in 0..10 {
            body += &format!("\"{}\",{},{}\n", i + 1, 1900 + i, i * 10);
        }
        let (p, _rm) = scratch("ok.csv", &body);
        let ts = TimeSeries::read_csv(&p, "value", 0.2, 0.2).unwrap();
        assert_eq!(ts.raw[9], 90.0);
        assert_eq!(ts.range(Part::Train), 0..6);
        assert_eq!(ts.range(Part::Valid), 6..8);
        assert_eq!(ts.range(Part::Test), 8..10);
        // mean/std of 0,10,..,50 only: 25 and sqrt(291.67)
        assert!((ts.scaler.mean - 25.0).abs() < 1e-12);
        assert!((ts.scaler.std - (1750.0f64 / 6.0).sqrt()).abs() < 1e-9);
        assert!((ts.scaler.invert(ts.normalized[9] as f64) - 90.0).abs() < 1e-4);

        let w = ts.windows(Part::Valid, 3, 1).unwrap();
        assert_eq!((w.n, w.target_start.clone()), (2, vec![6, 7]));
        assert_eq!(&w.inputs[..3], &ts.normalized[3..6]);
        assert_eq!(w.targets, [ts.normalized[6], ts.normalized[7]]);
        let w = ts.windows(Part::Train, 3, 2).unwrap();
        assert_eq!(w.target_start, [3, 4]);
        assert_eq!((w.inputs.len(), w.targets.len()), (6, 4));
        let e = ts.windows(Part::Test, 3, 3).unwrap_err();
        assert!(e.to_string().contains("too short"), "{e}");
    }

    #[test]
    fn bad_csv_errors() {
        let (p, _a) = scratch("cols.csv", "t,v\n1,2\n2,3,4\n");
        assert_eq!(
            TimeSeries::read_csv(&p, "v", 0.0, 0.0).unwrap_err().to_string(),
            format!("{}:3: expected 2 comma-separated columns, found 3", p.display())
        );
        let (p, _b) = scratch("nan.csv", "t,v\n1,2\n2,NA\n");
        assert_eq!(
            TimeSeries::read_csv(&p, "v", 0.0, 0.0).unwrap_err().to_string(),
            format!("{}:3: column \"v\": not a number: \"NA\"", p.display())
        );
        let (p, _c) = scratch("miss.csv", "t,v\n1,2\n");
        assert_eq!(
            TimeSeries::read_csv(&p, "x", 0.0, 0.0).unwrap_err().to_string(),
            format!("{}:1: column \"x\" not found in header (columns: t, v)", p.display())
        );
        let (p, _d) = scratch("short.csv", "t,v\n1,2\n");
        assert!(TimeSeries::read_csv(&p, "v", 0.0, 0.0).is_err());
        let (p, _e) = scratch("fr.csv", "t,v\n1,2\n2,3\n3,4\n");
        assert!(TimeSeries::read_csv(&p, "v", 0.6, 0.6).is_err());
        let (p, _f) = scratch("empty.csv", "");
        assert!(matches!(
            TimeSeries::read_csv(&p, "v", 0.0, 0.0).unwrap_err().kind,
            ErrorKind::EmptyFile
        ));
    }
}
