//! The graph builder the models describe their inference pass to (`Model::onnx`): one method
//! per operator they use, each adding an ONNX node and the constants it reads. Constants are
//! kept on the host until [`Graph::finish`], so batch norm can still be folded into the
//! convolution before it and pruned weights can still be stored compactly.

use super::proto::{self, attribute_type, data_type, AttributeProto, NodeProto, TensorProto};
use super::{sparse, ExportOptions, LayerSize};
use crate::checkpoint::Normalize;
use crate::nn::StateDict;
use crate::{Error, Result};
use std::collections::HashMap;

/// The graph input's name: images [batch, channels, height, width].
pub const INPUT: &str = "input";
/// The graph output's name: logits [batch, classes].
pub const OUTPUT: &str = "logits";

/// A constant tensor waiting to be written.
pub(super) struct Constant {
    pub name: String,
    pub dims: Vec<i64>,
    pub data: Data,
    /// A pruned layer's weight: written compactly under `--sparse` when that is smaller.
    pub prunable: bool,
}

pub(super) enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
}

impl Data {
    fn raw(&self) -> (i32, Vec<u8>) {
        match self {
            Data::F32(v) => (data_type::FLOAT, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Data::I64(v) => (data_type::INT64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Data::I32(v) => (data_type::INT32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Data::U8(v) => (data_type::UINT8, v.clone()),
        }
    }
}

impl Constant {
    pub(super) fn to_proto(&self) -> TensorProto {
        let (data_type, raw_data) = self.data.raw();
        TensorProto { dims: self.dims.clone(), data_type, name: self.name.clone(), raw_data, ..Default::default() }
    }
}

pub struct Graph<'a> {
    weights: &'a StateDict,
    options: ExportOptions,
    nodes: Vec<NodeProto>,
    constants: Vec<Constant>,
    /// Constant name → index in `constants`.
    by_name: HashMap<String, usize>,
    /// Image size (channels, height, width) of the input.
    input: (usize, usize, usize),
    normalize: Normalize,
    /// Starts every node name (node names are unique in a graph; the sparse decoders are built in
    /// a graph of their own and join the main one at the end).
    node_prefix: &'static str,
}

pub(super) fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i, r#type: attribute_type::INT, ..Default::default() }
}

pub(super) fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), ints: v.to_vec(), r#type: attribute_type::INTS, ..Default::default() }
}

fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), f, r#type: attribute_type::FLOAT, ..Default::default() }
}

impl<'a> Graph<'a> {
    /// A graph reading `weights` (this model's tensors by PyTorch name) for images of `input`
    /// size, normalized with `normalize` (in the graph, or by the caller, per `options`).
    pub(super) fn new(
        weights: &'a StateDict,
        options: ExportOptions,
        input: (usize, usize, usize),
        normalize: Normalize,
    ) -> Self {
        Graph {
            weights,
            options,
            nodes: Vec::new(),
            constants: Vec::new(),
            by_name: HashMap::new(),
            input,
            normalize,
            node_prefix: "",
        }
    }

    /// The value the network's first layer reads: the input, or `(input - mean) / std` when the
    /// normalization is in the graph.
    pub fn input(&mut self) -> String {
        if !self.options.normalize_in_graph {
            return INPUT.to_string();
        }
        let (mean, std) = (self.normalize.mean.to_vec(), self.normalize.std.to_vec());
        let mean = self.constant("normalize.mean", vec![1, 3, 1, 1], Data::F32(mean), false);
        let std = self.constant("normalize.std", vec![1, 3, 1, 1], Data::F32(std), false);
        let centered = self.node("Sub", &[INPUT, &mean], vec![]);
        self.node("Div", &[&centered, &std], vec![])
    }

    /// `Conv` with weight `weight` [c_out, c_in, k, k] (and `bias` `[c_out]`), square stride and
    /// zero padding on every side.
    pub fn conv(&mut self, x: &str, weight: &str, bias: Option<&str>, stride: usize, pad: usize) -> Result<String> {
        let shape = self.weight_shape(weight)?;
        let w = self.parameter(weight, true)?;
        let mut inputs = vec![x.to_string(), w];
        if let Some(b) = bias {
            inputs.push(self.parameter(b, false)?);
        }
        let (s, p) = (stride as i64, pad as i64);
        let attrs = vec![
            ints("kernel_shape", &[shape[2] as i64, shape[3] as i64]),
            ints("strides", &[s, s]),
            ints("pads", &[p, p, p, p]),
            ints("dilations", &[1, 1]),
            int("group", 1),
        ];
        Ok(self.node_with("Conv", inputs, attrs))
    }

    /// Inference batch norm from running statistics: `(x - mean) / sqrt(var + eps) * weight +
    /// bias` per channel, with the four tensors under `prefix` (`prefix.weight`, ...). With
    /// `--fold-bn`, when `x` comes straight from a convolution, folded into it instead.
    pub fn batch_norm(&mut self, x: &str, prefix: &str, eps: f32) -> Result<String> {
        let names = ["weight", "bias", "running_mean", "running_var"].map(|t| format!("{prefix}.{t}"));
        if self.options.fold_bn {
            if let Some(conv) = self.nodes.iter().rposition(|n| n.op_type == "Conv" && n.output[0] == x) {
                self.fold_into_conv(conv, &names, eps)?;
                return Ok(x.to_string());
            }
        }
        let mut inputs = vec![x.to_string()];
        for n in &names {
            inputs.push(self.parameter(n, false)?);
        }
        Ok(self.node_with("BatchNormalization", inputs, vec![float("epsilon", eps)]))
    }

    /// Folds batch norm into the convolution `nodes[conv]`: with s = weight / sqrt(var + eps),
    /// W'[o] = W[o]·s[o] and b'[o] = (b[o] − mean[o])·s[o] + bias[o] (b = 0 without a bias).
    /// Computed in f64 and rounded once; a pruned weight stays an exact zero.
    fn fold_into_conv(&mut self, conv: usize, names: &[String; 4], eps: f32) -> Result<()> {
        let [gamma, beta, mean, var] = [0, 1, 2, 3].map(|i| self.tensor(&names[i]).map(|t| t.1.clone()));
        let (gamma, beta, mean, var) = (gamma?, beta?, mean?, var?);
        let scale: Vec<f64> =
            gamma.iter().zip(&var).map(|(&g, &v)| g as f64 / (v as f64 + eps as f64).sqrt()).collect();
        let weight = self.nodes[conv].input[1].clone();
        let Data::F32(w) = &mut self.constants[self.by_name[&weight]].data else {
            unreachable!("conv weights are f32")
        };
        let per_filter = w.len() / scale.len();
        for (o, filter) in w.chunks_mut(per_filter).enumerate() {
            for v in filter {
                *v = (*v as f64 * scale[o]) as f32;
            }
        }
        let old_bias = match self.nodes[conv].input.get(2) {
            Some(b) => match &self.constants[self.by_name[b]].data {
                Data::F32(v) => v.clone(),
                _ => unreachable!("biases are f32"),
            },
            None => vec![0.0; scale.len()],
        };
        let bias: Vec<f32> = (0..scale.len())
            .map(|o| ((old_bias[o] as f64 - mean[o] as f64) * scale[o] + beta[o] as f64) as f32)
            .collect();
        let name = format!("{}.folded_bias", names[0].trim_end_matches(".weight"));
        let bias = self.constant(&name, vec![scale.len() as i64], Data::F32(bias), false);
        self.nodes[conv].input.truncate(2);
        self.nodes[conv].input.push(bias);
        Ok(())
    }

    pub fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], vec![])
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.node("Add", &[a, b], vec![])
    }

    /// `MaxPool` with a square window, stride and padding.
    pub fn max_pool(&mut self, x: &str, kernel: usize, stride: usize, pad: usize) -> String {
        let (k, s, p) = (kernel as i64, stride as i64, pad as i64);
        let attrs = vec![ints("kernel_shape", &[k, k]), ints("strides", &[s, s]), ints("pads", &[p, p, p, p])];
        self.node("MaxPool", &[x], attrs)
    }

    /// [batch, c, h, w] → [batch, c, 1, 1] means.
    pub fn global_avg_pool(&mut self, x: &str) -> String {
        self.node("GlobalAveragePool", &[x], vec![])
    }

    /// [batch, ...] → [batch, product of the rest].
    pub fn flatten(&mut self, x: &str) -> String {
        self.node("Flatten", &[x], vec![int("axis", 1)])
    }

    /// `x · weightᵀ + bias` for `weight` [out, in] (PyTorch's `Linear`).
    pub fn linear(&mut self, x: &str, weight: &str, bias: &str) -> Result<String> {
        let inputs = vec![x.to_string(), self.parameter(weight, true)?, self.parameter(bias, false)?];
        Ok(self.node_with("Gemm", inputs, vec![int("transB", 1)]))
    }

    /// The option-A shortcut of the CIFAR ResNets in standard operators: `x[:, :, ::2, ::2]`
    /// (Slice with steps 2) zero-padded with `pad_c` channels on each side (Pad).
    pub fn shortcut_a(&mut self, x: &str, pad_c: usize) -> String {
        let starts = self.const_i64(&[0, 0]);
        let ends = self.const_i64(&[i64::MAX, i64::MAX]);
        let axes = self.const_i64(&[2, 3]);
        let steps = self.const_i64(&[2, 2]);
        let sliced = self.node("Slice", &[x, &starts, &ends, &axes, &steps], vec![]);
        let p = pad_c as i64;
        let pads = self.const_i64(&[0, p, 0, 0, 0, p, 0, 0]);
        self.node("Pad", &[&sliced, &pads], vec![])
    }

    /// The model's tensor `name` (host copy).
    fn tensor(&self, name: &str) -> Result<&'a (Vec<usize>, Vec<f32>)> {
        self.weights.get(name).ok_or_else(|| {
            Error::invalid(format!("the exported weights have no tensor '{name}', which the model reads"))
        })
    }

    fn weight_shape(&self, name: &str) -> Result<Vec<usize>> {
        let shape = &self.tensor(name)?.0;
        if shape.len() != 4 {
            return Err(Error::shape("ONNX export", format!("conv weight '{name}' is {shape:?}, not 4-D")));
        }
        Ok(shape.clone())
    }

    /// Registers the model's tensor `name` as a constant of the same name; returns the name.
    fn parameter(&mut self, name: &str, prunable: bool) -> Result<String> {
        let (shape, values) = self.tensor(name)?;
        let dims = shape.iter().map(|&d| d as i64).collect();
        Ok(self.constant(name, dims, Data::F32(values.clone()), prunable))
    }

    /// Registers a constant (once per name); returns its name.
    pub(super) fn constant(&mut self, name: &str, dims: Vec<i64>, data: Data, prunable: bool) -> String {
        if !self.by_name.contains_key(name) {
            self.by_name.insert(name.to_string(), self.constants.len());
            self.constants.push(Constant { name: name.to_string(), dims, data, prunable });
        }
        name.to_string()
    }

    /// A 1-D int64 constant, shared by every node that reads the same values.
    pub(super) fn const_i64(&mut self, values: &[i64]) -> String {
        let text: Vec<String> =
            values.iter().map(|v| if *v == i64::MAX { "max".into() } else { v.to_string() }).collect();
        self.constant(
            &format!("const.i64[{}]", text.join(",")),
            vec![values.len() as i64],
            Data::I64(values.to_vec()),
            false,
        )
    }

    /// Adds a node reading `inputs`; returns its output's name.
    pub(super) fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.node_with(op, inputs.iter().map(|s| s.to_string()).collect(), attrs)
    }

    fn node_with(&mut self, op: &str, inputs: Vec<String>, attrs: Vec<AttributeProto>) -> String {
        let name = format!("{}{}_{}", self.node_prefix, op, self.nodes.len());
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![name.clone()],
            name: name.clone(),
            op_type: op.into(),
            attribute: attrs,
        });
        name
    }

    /// Renames the value `from` to `to` wherever a node writes or reads it.
    pub(super) fn rename_output(&mut self, from: &str, to: &str) {
        for n in self.nodes.iter_mut() {
            for v in n.output.iter_mut().chain(n.input.iter_mut()) {
                if v == from {
                    *v = to.to_string();
                }
            }
        }
    }

    /// The finished graph, its output `out` renamed [`OUTPUT`], with `classes` logits per image;
    /// and the size of every pruned layer as stored.
    pub(super) fn finish(mut self, out: &str, classes: usize) -> (proto::GraphProto, Vec<LayerSize>) {
        self.rename_output(out, OUTPUT);
        let constants = std::mem::take(&mut self.constants);
        let mut decode = Graph::new(self.weights, self.options, self.input, self.normalize);
        decode.node_prefix = "decode_";
        let mut initializer = Vec::new();
        let mut layers = Vec::new();
        for c in constants {
            if !c.prunable {
                initializer.push(c.to_proto());
                continue;
            }
            let Data::F32(values) = &c.data else { unreachable!("weights are f32") };
            let dense = 4 * values.len() as u64;
            let nonzero = values.iter().filter(|v| **v != 0.0).count();
            let stored = if self.options.sparse && sparse::smaller(values.len(), nonzero) {
                sparse::encode(&mut decode, &c.name, &c.dims, values)
            } else {
                initializer.push(c.to_proto());
                dense
            };
            layers.push(LayerSize {
                name: c.name,
                numel: values.len(),
                nonzero,
                dense_bytes: dense,
                stored_bytes: stored,
            });
        }
        // The decoders' nodes come first: ONNX wants nodes in topological order.
        initializer.extend(decode.constants.iter().map(Constant::to_proto));
        let mut node = decode.nodes;
        node.extend(self.nodes);
        let (c, h, w) = self.input;
        let input = value_info(INPUT, &[None, Some(c), Some(h), Some(w)]);
        let output = value_info(OUTPUT, &[None, Some(classes)]);
        let graph = proto::GraphProto {
            node,
            name: "sasprune".into(),
            initializer,
            input: vec![input],
            output: vec![output],
            ..Default::default()
        };
        (graph, layers)
    }
}

/// A float tensor's name and shape; `None` is the free dimension "batch".
fn value_info(name: &str, dims: &[Option<usize>]) -> proto::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Some(n) => proto::Dimension { dim_value: Some(*n as i64), dim_param: None },
            None => proto::Dimension { dim_value: None, dim_param: Some("batch".into()) },
        })
        .collect();
    let tensor_type =
        proto::TensorTypeProto { elem_type: data_type::FLOAT, shape: Some(proto::TensorShapeProto { dim }) };
    proto::ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto { tensor_type: Some(tensor_type) }),
        ..Default::default()
    }
}
