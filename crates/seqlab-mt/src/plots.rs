//! Pictures of a translation model: encoder-decoder attention of one sentence, and the
//! sinusoidal positional-encoding table.

use crate::task::MtTask;
use anyhow::{bail, Result};
use candle_core::Tensor;
use std::path::Path;

/// A token as text for an axis label, leading space shown as `▁`. Byte-level BPE stores
/// bytes as stand-in characters: decode them, unless the token is a partial UTF-8 sequence.
pub fn piece(tok: &seqlab_data::Tokenizer, id: u32) -> String {
    match tok.decode(&[id], false) {
        Ok(t) if !t.is_empty() && !t.contains('\u{FFFD}') => match t.strip_prefix(' ') {
            Some(rest) => format!("▁{rest}"),
            None => t,
        },
        _ => match tok.id_to_token(id) {
            Some(t) => t.replace('Ġ', "▁"),
            None => format!("#{id}"),
        },
    }
}

/// Which attention [`plot_attention`] draws.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionPlot {
    /// Decoder layer (0-based); `None` = the last.
    pub layer: Option<usize>,
    /// One panel per head instead of the mean over heads.
    pub per_head: bool,
}

/// Draws the encoder-decoder attention of one translation (`src` → `hyp`) to a .png or .svg:
/// rows are output tokens (and `<eos>`), columns source tokens (and `<eos>`). Rejects a layer
/// the decoder does not have.
pub fn plot_attention(task: &MtTask, src: &str, hyp: &str, out: &Path, what: AttentionPlot) -> Result<()> {
    let (layer, heads) = (what.layer, what.per_head);
    let c = |e: candle_core::Error| anyhow::anyhow!("{e}");
    let s_ids = task.encode_source(src)?;
    let mut t_ids = vec![seqlab_data::tokenizer::BOS_ID];
    t_ids.extend(task.tgt_tok.encode(hyp)?);
    let dev = task.vs.device();
    let s = Tensor::from_slice(&s_ids, (1, s_ids.len()), dev).map_err(c)?;
    let t = Tensor::from_slice(&t_ids, (1, t_ids.len()), dev).map_err(c)?;
    let layers = task.net.cross_attention(&s, &t)?;
    let l = layer.unwrap_or(layers.len() - 1);
    let Some(w) = layers.get(l) else {
        bail!("--attention-layer {l}: the decoder has {} layers", layers.len());
    };
    let w = w.squeeze(0).map_err(c)?; // (H, T, S)
    let cols: Vec<String> = s_ids.iter().map(|&i| piece(&task.src_tok, i)).collect();
    let mut rows: Vec<String> = t_ids[1..].iter().map(|&i| piece(&task.tgt_tok, i)).collect();
    rows.push("<eos>".into());
    let panels: Vec<(String, Vec<Vec<f32>>)> = if heads {
        (0..w.dim(0).map_err(c)?)
            .map(|h| {
                Ok((
                    format!("layer {l} head {h}"),
                    w.get(h).and_then(|x| x.to_vec2::<f32>()).map_err(c)?,
                ))
            })
            .collect::<Result<_>>()?
    } else {
        vec![(
            format!("layer {l}, mean over heads"),
            w.mean(0).and_then(|x| x.to_vec2::<f32>()).map_err(c)?,
        )]
    };
    let n = panels.len();
    seqlab_train::plot::heatmaps(out, &panels, &rows, &cols, if n >= 4 { n.div_ceil(2) } else { n })
}

/// Draws the sinusoidal positional-encoding table (`max_len` positions × `d_model`
/// dimensions, Vaswani et al. 2017 §3.5) as a heat map to a .png or .svg. Rejects a zero size.
pub fn plot_positional_encoding(output: &Path, d_model: usize, max_len: usize) -> Result<()> {
    if d_model == 0 || max_len == 0 {
        bail!("positional encoding: d_model ({d_model}) and max_len ({max_len}) must be positive");
    }
    // CPU by design: a picture of the table, no model involved.
    let t =
        seqlab_nn::sinusoidal_table(max_len, d_model, &candle_core::Device::Cpu).map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = t.reshape((max_len, d_model)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rows = t.to_vec2::<f32>().map_err(|e| anyhow::anyhow!("{e}"))?;
    let rl: Vec<String> = (0..max_len).map(|i| i.to_string()).collect();
    let cl: Vec<String> = (0..d_model).map(|i| i.to_string()).collect();
    let title = format!(
        "sinusoidal positional encoding (d_model {}, positions 0..{})",
        d_model, max_len
    );
    seqlab_train::plot::heatmap(output, &title, &rows, &rl, &cl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positional_encoding_writes_an_image_and_rejects_zero() {
        let out = std::env::temp_dir().join(format!("seqlab-mt-pe-{}.svg", std::process::id()));
        plot_positional_encoding(&out, 16, 10).unwrap();
        assert!(std::fs::metadata(&out).unwrap().len() > 100);
        let _ = std::fs::remove_file(&out);
        let e = plot_positional_encoding(&out, 0, 10).unwrap_err().to_string();
        assert!(e.contains("d_model"), "{e}");
    }
}
