//! ONNX export: a model's inference graph (batch norm from running statistics, no dropout) with
//! its weights, in opset 13 with a free batch dimension, for deployment runtimes (ONNX Runtime,
//! TensorRT, OpenVINO, tract, ...). Each model describes its graph next to its forward pass
//! (`Model::onnx`), to the builder in [`graph`]; [`sparse`] stores pruned weights compactly.

pub mod graph;
pub mod proto;
mod sparse;

pub use graph::{Graph, INPUT, OUTPUT};

use crate::checkpoint::Normalize;
use crate::models::Model;
use crate::Result;
use prost::Message;

/// The operator set the graph uses (ONNX 1.8, 2020; every current runtime reads it).
pub const OPSET: i64 = 13;
/// The file format version that goes with [`OPSET`].
pub const IR_VERSION: i64 = 7;

#[derive(Clone, Copy, Debug, Default)]
pub struct ExportOptions {
    /// Fold each batch norm into the convolution before it (`--fold-bn`).
    pub fold_bn: bool,
    /// Put the input normalization in the graph: it then takes pixels in [0, 1]
    /// (`--normalize-in-graph`). Otherwise the caller normalizes, as the metadata says.
    pub normalize_in_graph: bool,
    /// Store pruned weights as values plus a bitmask where that is smaller (`--sparse`).
    pub sparse: bool,
}

/// How one prunable layer's weight was stored.
#[derive(Clone, Debug)]
pub struct LayerSize {
    pub name: String,
    pub numel: usize,
    pub nonzero: usize,
    /// 4 bytes per element.
    pub dense_bytes: u64,
    /// What the file holds for it (dense, or values plus bitmask).
    pub stored_bytes: u64,
}

/// An exported model: the file's bytes and how its prunable layers were stored.
pub struct Exported {
    pub bytes: Vec<u8>,
    pub layers: Vec<LayerSize>,
}

impl Exported {
    /// About what the file would take with every weight dense.
    pub fn dense_file_bytes(&self) -> u64 {
        let saved: u64 = self.layers.iter().map(|l| l.dense_bytes.saturating_sub(l.stored_bytes)).sum();
        self.bytes.len() as u64 + saved
    }
}

/// The ONNX file of `model` as it stands (its tensors are read back from the device once), with
/// `normalize` in the graph or in the metadata, the class names when known, and `metadata`
/// entries of the caller's (e.g. where the weights came from).
pub fn export(
    model: &Model,
    options: ExportOptions,
    normalize: Normalize,
    class_names: Option<&[String]>,
    metadata: &[(&str, String)],
) -> Result<Exported> {
    let weights = model.store.state_dict()?;
    let mut g = Graph::new(&weights, options, model.input, normalize);
    let x = g.input();
    let out = model.onnx(&mut g, &x)?;
    let (graph, layers) = g.finish(&out, model.classes);
    let mut stats = std::collections::HashMap::new();
    normalize.to_metadata(&mut stats);
    let mut props = vec![
        ("model".to_string(), model.name.clone()),
        ("input".to_string(), input_text(model, options, normalize)),
        ("normalize_in_graph".to_string(), options.normalize_in_graph.to_string()),
        ("batch_norm_folded".to_string(), options.fold_bn.to_string()),
        ("prunable_weights".to_string(), prunable_text(&layers)),
    ];
    props.extend(stats);
    if let Some(names) = class_names {
        props.push(("class_names".to_string(), serde_json::to_string(names).expect("strings serialize")));
    }
    props.extend(metadata.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let file = proto::ModelProto {
        ir_version: IR_VERSION,
        producer_name: "sasprune".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: "sasprune".into(),
        model_version: 1,
        doc_string: format!("{} exported by sasprune {}", model.name, env!("CARGO_PKG_VERSION")),
        graph: Some(graph),
        opset_import: vec![proto::OperatorSetIdProto { domain: String::new(), version: OPSET }],
        metadata_props: props.into_iter().map(|(key, value)| proto::StringStringEntryProto { key, value }).collect(),
    };
    Ok(Exported { bytes: file.encode_to_vec(), layers })
}

/// What the graph's input is, in words (the metadata's `input`).
fn input_text(model: &Model, options: ExportOptions, n: Normalize) -> String {
    let (c, h, w) = model.input;
    let what = format!("float32 [batch, {c}, {h}, {w}], RGB, channels first");
    if options.normalize_in_graph {
        format!("{what}: pixels in [0, 1] (the graph subtracts normalize_mean and divides by normalize_std)")
    } else {
        format!("{what}: (pixel in [0, 1] - mean) / std per channel, {}", n.describe())
    }
}

/// The metadata's `prunable_weights`: non-zeros of every prunable layer, e.g. "30123 of 268336
/// non-zero (8.91x compression)"; "(all zero)" where a rate would divide by zero.
pub fn prunable_text(layers: &[LayerSize]) -> String {
    let (n, nz): (usize, usize) = layers.iter().fold((0, 0), |(a, b), l| (a + l.numel, b + l.nonzero));
    match nz {
        0 => format!("0 of {n} non-zero (all zero)"),
        _ => format!("{nz} of {n} non-zero ({:.2}x compression)", n as f64 / nz as f64),
    }
}
