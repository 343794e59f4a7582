//! Classification metrics: accuracy, per-class precision/recall/F1, macro-F1 and the
//! confusion matrix, with a plain-text and a JSON rendering shared by every classifier.

use serde_json::{json, Value};

/// Precision, recall, F1 per class and the confusion matrix (rows = truth).
pub struct ClassReport {
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// Unweighted mean of the per-class F1.
    pub macro_f1: f64,
    /// (precision, recall, F1, support) of each class.
    pub per_class: Vec<(f64, f64, f64, usize)>,
    /// `confusion[truth][pred]` counts, k × k.
    pub confusion: Vec<Vec<usize>>,
}

/// Scores predictions against the truth; classes are 0..k.
pub fn class_report(truth: &[usize], pred: &[usize], k: usize) -> ClassReport {
    let mut confusion = vec![vec![0usize; k]; k];
    for (&t, &p) in truth.iter().zip(pred) {
        confusion[t][p] += 1;
    }
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    let per_class: Vec<(f64, f64, f64, usize)> = (0..k)
        .map(|i| {
            let tp = confusion[i][i] as f64;
            let predicted: usize = (0..k).map(|r| confusion[r][i]).sum();
            let support: usize = confusion[i].iter().sum();
            let p = if predicted > 0 { tp / predicted as f64 } else { 0.0 };
            let r = if support > 0 { tp / support as f64 } else { 0.0 };
            let f = if p + r > 0.0 { 2.0 * p * r / (p + r) } else { 0.0 };
            (p, r, f, support)
        })
        .collect();
    let macro_f1 = per_class.iter().map(|x| x.2).sum::<f64>() / k.max(1) as f64;
    ClassReport {
        accuracy: correct as f64 / truth.len().max(1) as f64,
        macro_f1,
        per_class,
        confusion,
    }
}

impl ClassReport {
    /// A table (per-class P/R/F1, confusion matrix with rows = truth) under `head`, and the
    /// same numbers as JSON.
    pub fn render(&self, head: &str, names: &[String], loss: f64) -> (String, Value) {
        let k = names.len();
        let w = names.iter().map(|s| s.len()).max().unwrap_or(5).max(5);
        let mut text = format!(
            "{head}  accuracy {:.4}  macro-F1 {:.4}  loss {loss:.4}\n\n",
            self.accuracy, self.macro_f1
        );
        text.push_str(&format!("{:w$}  precision  recall     F1  support\n", "class"));
        for (i, (pr, rc, f, s)) in self.per_class.iter().enumerate() {
            text.push_str(&format!("{:w$}  {pr:9.4}  {rc:6.4}  {f:6.4}  {s:7}\n", names[i]));
        }
        text.push_str(&format!(
            "\nconfusion matrix (rows = truth, columns = prediction)\n{:w$}",
            ""
        ));
        for n in names.iter().take(k) {
            text.push_str(&format!(" {:>7}", n.chars().take(7).collect::<String>()));
        }
        text.push('\n');
        for (i, row) in self.confusion.iter().enumerate() {
            text.push_str(&format!("{:w$}", names[i]));
            for v in row {
                text.push_str(&format!(" {v:7}"));
            }
            text.push('\n');
        }
        let per: serde_json::Map<String, Value> = self
            .per_class
            .iter()
            .enumerate()
            .map(|(i, (p, rc, f, s))| {
                (
                    names[i].clone(),
                    json!({"precision": p, "recall": rc, "f1": f, "support": s}),
                )
            })
            .collect();
        let json = json!({"examples": self.confusion.iter().flatten().sum::<usize>(), "accuracy": self.accuracy, "macro_f1": self.macro_f1, "loss": loss, "per_class": per, "labels": names, "confusion": self.confusion});
        (text, json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_and_renders() {
        let r = class_report(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], 3);
        assert_eq!(r.confusion, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]);
        assert!((r.accuracy - 0.6).abs() < 1e-12);
        // class 1: precision 2/3, recall 1 → F1 0.8
        assert!((r.per_class[1].2 - 0.8).abs() < 1e-12);
        let names: Vec<String> = ["a", "bb", "c"].iter().map(|s| s.to_string()).collect();
        let (text, json) = r.render("test", &names, 0.5);
        assert!(text.starts_with("test  accuracy 0.6000  macro-F1"), "{text}");
        assert_eq!(json["examples"], 5);
        assert_eq!(json["per_class"]["bb"]["recall"], 1.0);
    }
}
