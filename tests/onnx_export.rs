//! ONNX export checked by an independent runtime: tract (pure Rust, no code shared with
//! sasprune) loads the exported files and its logits match sasprune's on the same images; the
//! pruned zeros are exact in the file; `--sparse` files are smaller by about the pruning rate
//! and still run; the pretrained ResNet-32, exported and run in tract, gives PyTorch's top-1.

mod common;

use prost::Message;
use sasprune::checkpoint::{self, Normalize};
use sasprune::data::{cifar::Cifar10, fill_batch, BatchSpec, Dataset};
use sasprune::export::onnx::{self, ExportOptions};
use sasprune::models::{Model, Pass};
use sasprune::nn::{Role, StateDict};
use sasprune::Tensor;
use std::path::PathBuf;
use std::process::Command;
use tract_onnx::prelude::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs an ONNX file in tract on images [n, c, h, w]; returns the logits, row-major.
fn tract_logits(bytes: &[u8], images: &[f32], shape: [usize; 4]) -> Vec<f32> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .expect("tract reads the file")
        .with_input_fact(0, f32::fact(shape).into())
        .expect("input fact")
        .into_optimized()
        .expect("tract optimizes the graph")
        .into_runnable()
        .expect("tract plans the graph");
    let input = tract_ndarray::Array4::from_shape_vec(shape, images.to_vec()).expect("shape").into_tensor();
    let out = model.run(tvec!(input.into())).expect("tract runs the graph");
    out[0].to_plain_array_view::<f32>().expect("f32 logits").iter().copied().collect()
}

/// sasprune's own logits for normalized images [n, c, h, w].
fn our_logits(model: &mut Model, images: &[f32], shape: [usize; 4]) -> Vec<f32> {
    let x = Tensor::from_slice(images, &shape).unwrap();
    model.forward(&x, Pass::Eval).unwrap().to_vec().unwrap()
}

/// Every logit within 1e-4 of its image's largest |logit| (relative error measured against the
/// row's scale: a logit near zero has no relative error of its own to speak of). Float
/// summation order differs between the two implementations, at the 1e-6 level.
#[track_caller]
fn assert_logits_match(what: &str, theirs: &[f32], ours: &[f32], classes: usize) {
    assert_eq!(theirs.len(), ours.len(), "{what}: logit counts differ");
    for (i, (t, o)) in theirs.chunks(classes).zip(ours.chunks(classes)).enumerate() {
        let scale = o.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{what}: image {i}'s logits are all zero; the test would prove nothing");
        for (c, (a, b)) in t.iter().zip(o).enumerate() {
            assert!((a - b).abs() <= 1e-4 * scale, "{what}: image {i} class {c}: tract {a}, sasprune {b}");
        }
    }
}

/// Random batch-norm statistics and scales (so folding and the running statistics matter) and
/// `pruned` of every prunable weight set to exact zeros (the smallest magnitudes).
fn perturb_and_prune(model: &mut Model, pruned: f64, seed: u64) {
    let mut rng = common::Rng::new(seed);
    let mut dict = model.store.state_dict().unwrap();
    let roles: Vec<(String, Role)> = model.store.entries().iter().map(|e| (e.name.clone(), e.role)).collect();
    for (name, role) in roles {
        let values = &mut dict.get_mut(&name).unwrap().1;
        let range = if name.ends_with("running_var")
            || (role == Role::Param && name.contains("bn") && name.ends_with("weight"))
        {
            Some((0.5, 2.0))
        } else if role != Role::PrunableWeight && name.contains("bn") {
            Some((-0.3, 0.3))
        } else {
            None
        };
        if let Some((lo, hi)) = range {
            let fresh = rng.vec_in(values.len(), lo, hi);
            for (v, r) in values.iter_mut().zip(fresh) {
                *v = r as f32;
            }
        }
        if role == Role::PrunableWeight {
            let mut order: Vec<f32> = values.iter().map(|v| v.abs()).collect();
            order.sort_by(f32::total_cmp);
            let cut = order[((values.len() as f64 * pruned) as usize).min(values.len() - 1)];
            values.iter_mut().filter(|v| v.abs() < cut).for_each(|v| *v = 0.0);
        }
    }
    model.store.load_state_dict(&dict, "the test's weights").unwrap();
}

/// The first `n` CIFAR-10 test images, normalized with `norm`, or None (with a skip line) when
/// the data is absent.
fn cifar_images(test: &str, n: usize, norm: Normalize) -> Option<(Vec<f32>, Vec<f32>)> {
    let data = root().join("data");
    let present = data.join("cifar-10-batches-bin/test_batch.bin").exists();
    if !common::inputs_present(test, present, "needs data/cifar-10-batches-bin (run bash data/get-cifar10.sh)") {
        return None;
    }
    let cifar = Cifar10::open(&data).unwrap();
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let spec = BatchSpec::eval(32, 32, norm.mean, norm.std);
    let indices: Vec<usize> = (0..n.min(cifar.test.len())).collect();
    fill_batch(&cifar.test, &indices, &spec, &mut rand::rng(), &mut images, &mut labels);
    Some((images, labels))
}

/// Pixels in [0, 1]: the "normalization" with mean 0 and std 1.
const RAW: Normalize = Normalize { mean: [0.0; 3], std: [1.0; 3] };

/// Prunable initializers of a dense export, by name, decoded with tract's own protobuf types.
fn initializers(bytes: &[u8]) -> StateDict {
    let model = tract_onnx::pb::ModelProto::decode(bytes).expect("tract's schema decodes the file");
    let graph = model.graph.expect("a graph");
    graph
        .initializer
        .iter()
        .filter(|t| t.data_type == 1)
        .map(|t| {
            let v = t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            (t.name.clone(), (t.dims.iter().map(|&d| d as usize).collect(), v))
        })
        .collect()
}

#[test]
fn resnet20_exports_run_in_tract_with_our_logits_and_exact_zeros() {
    let norm = Normalize::CIFAR;
    let Some((images, _)) = cifar_images("onnx_resnet20", 5, norm) else { return };
    let Some((pixels, _)) = cifar_images("onnx_resnet20", 5, RAW) else { return };
    let mut model = Model::build("resnet20", 10, 11).unwrap();
    perturb_and_prune(&mut model, 0.7, 3);
    let shape = [5, 3, 32, 32];
    let ours = our_logits(&mut model, &images, shape);
    let dict = model.store.state_dict().unwrap();

    let plain = onnx::export(&model, ExportOptions::default(), norm, None, &[]).unwrap();
    assert_logits_match("plain", &tract_logits(&plain.bytes, &images, shape), &ours, 10);
    // a free batch dimension: the same file runs 2 images
    assert_logits_match("batch 2", &tract_logits(&plain.bytes, &images[..2 * 3072], [2, 3, 32, 32]), &ours[..20], 10);
    // the file holds our weights bit for bit, pruned zeros as exact zeros
    let stored = initializers(&plain.bytes);
    let mut zeros = 0;
    for e in model.store.entries().iter().filter(|e| e.role == Role::PrunableWeight) {
        let (shape, values) = &stored[&e.name];
        assert_eq!((shape, values), (&dict[&e.name].0, &dict[&e.name].1), "{} differs in the file", e.name);
        zeros += values.iter().filter(|v| **v == 0.0 && v.is_sign_positive()).count();
    }
    let expected: usize = plain.layers.iter().map(|l| l.numel - l.nonzero).sum();
    assert!(expected > 0 && zeros == expected, "{zeros} exact zeros in the file, {expected} pruned");

    let folded = onnx::export(&model, ExportOptions { fold_bn: true, ..Default::default() }, norm, None, &[]).unwrap();
    let folded_stored = initializers(&folded.bytes);
    assert!(!folded_stored.contains_key("bn1.running_mean"), "--fold-bn leaves no batch norm");
    let folded_zeros: usize = model
        .store
        .entries()
        .iter()
        .filter(|e| e.role == Role::PrunableWeight)
        .map(|e| folded_stored[&e.name].1.iter().filter(|v| **v == 0.0).count())
        .sum();
    assert_eq!(folded_zeros, expected, "folding keeps the pruned zeros exact");
    assert_logits_match("--fold-bn", &tract_logits(&folded.bytes, &images, shape), &ours, 10);

    let in_graph = ExportOptions { normalize_in_graph: true, ..Default::default() };
    let normalized = onnx::export(&model, in_graph, norm, None, &[]).unwrap();
    assert_logits_match("--normalize-in-graph", &tract_logits(&normalized.bytes, &pixels, shape), &ours, 10);

    let sparse_options = ExportOptions { sparse: true, fold_bn: true, ..Default::default() };
    let sparse = onnx::export(&model, sparse_options, norm, None, &[]).unwrap();
    assert_logits_match("--sparse", &tract_logits(&sparse.bytes, &images, shape), &ours, 10);
    let (dense_bytes, stored_bytes) =
        sparse.layers.iter().fold((0, 0), |(d, s), l| (d + l.dense_bytes, s + l.stored_bytes));
    for l in &sparse.layers {
        // values (4 bytes per non-zero) plus one bit per weight, when smaller than dense
        let compact = 4 * l.nonzero.max(1) as u64 + l.numel.div_ceil(8) as u64;
        assert_eq!(l.stored_bytes, compact.min(l.dense_bytes), "{}", l.name);
    }
    let rate = 1.0 / 0.3;
    let shrink = dense_bytes as f64 / stored_bytes as f64;
    assert!(shrink > 0.85 * rate && shrink < rate, "pruned layers {shrink:.2}x smaller at {rate:.2}x pruning");
    assert!(
        (sparse.bytes.len() as f64) < folded.bytes.len() as f64 / (0.85 * rate) + 40_000.0,
        "--sparse file {} bytes against {} dense",
        sparse.bytes.len(),
        folded.bytes.len()
    );
}

#[test]
fn alexnet_exports_dense_and_sparse_and_runs_in_tract() {
    let classes = 5;
    let mut model = Model::build("alexnet", classes, 5).unwrap();
    perturb_and_prune(&mut model, 0.8, 9);
    let mut rng = common::Rng::new(17);
    let shape = [2, 3, 224, 224];
    let images: Vec<f32> = rng.vec(2 * 3 * 224 * 224).into_iter().map(|v| v as f32).collect();
    let ours = our_logits(&mut model, &images, shape);
    let norm = Normalize::IMAGENET;
    let dense = onnx::export(&model, ExportOptions::default(), norm, None, &[]).unwrap();
    assert_logits_match("alexnet", &tract_logits(&dense.bytes, &images, shape), &ours, classes);
    let sparse = onnx::export(&model, ExportOptions { sparse: true, ..Default::default() }, norm, None, &[]).unwrap();
    assert_logits_match("alexnet --sparse", &tract_logits(&sparse.bytes, &images, shape), &ours, classes);
    let shrink = dense.bytes.len() as f64 / sparse.bytes.len() as f64;
    assert!(shrink > 0.85 * 5.0 && shrink < 5.0, "the --sparse file is {shrink:.2}x smaller at 5x pruning");
}

fn sasprune(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sasprune")).args(args).output().expect("the binary runs");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// `sasprune export` of PyTorch's ResNet-32 with the normalization and batch norm in the graph
/// folded, run in tract on the whole CIFAR-10 test set from raw pixels: PyTorch's 82.56%.
#[test]
fn pretrained_resnet32_exported_runs_in_tract_at_pytorch_top1() {
    let weights = root().join("../shared/pretrained/resnet32.safetensors");
    let data = root().join("data");
    let present = weights.exists() && data.join("cifar-10-batches-bin/test_batch.bin").exists();
    let missing = format!("needs {} and data/cifar-10-batches-bin", weights.display());
    if !common::inputs_present("onnx_pretrained_resnet32", present, &missing) {
        return;
    }
    let tmp = common::TempDir::new("onnx-resnet32");
    let file = tmp.path().join("resnet32.onnx");
    let (code, stdout, stderr) = sasprune(&[
        "export",
        "--model",
        "resnet32",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
        "--fold-bn",
        "--normalize-in-graph",
    ]);
    assert_eq!(code, Some(0), "export failed: {stderr}");
    assert!(stdout.contains("wrote") && stdout.contains("opset 13"), "{stdout}");
    let bytes = std::fs::read(&file).unwrap();
    let meta = tract_onnx::pb::ModelProto::decode(&bytes[..]).unwrap().metadata_props;
    let get = |k: &str| meta.iter().find(|p| p.key == k).map(|p| p.value.clone()).unwrap_or_default();
    assert!(get("class_names").contains("airplane") && get("normalize_in_graph") == "true", "{meta:?}");
    assert_eq!(get("normalize_mean"), "0.485,0.456,0.406", "the file's own normalization is kept");

    let cifar = Cifar10::open(&data).unwrap();
    let batch = 500;
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .with_input_fact(0, f32::fact([batch, 3, 32, 32]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let spec = BatchSpec::eval(32, 32, RAW.mean, RAW.std);
    let (mut images, mut labels, mut correct) = (Vec::new(), Vec::new(), 0usize);
    for start in (0..cifar.test.len()).step_by(batch) {
        let indices: Vec<usize> = (start..start + batch).collect();
        fill_batch(&cifar.test, &indices, &spec, &mut rand::rng(), &mut images, &mut labels);
        let input = tract_ndarray::Array4::from_shape_vec([batch, 3, 32, 32], images.clone()).unwrap().into_tensor();
        let out = plan.run(tvec!(input.into())).unwrap();
        let logits = out[0].to_plain_array_view::<f32>().unwrap();
        for (row, label) in logits.as_slice().unwrap().chunks(10).zip(&labels) {
            let best = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            correct += (best == *label as usize) as usize;
        }
    }
    let top1 = 100.0 * correct as f64 / cifar.test.len() as f64;
    assert!((top1 - 82.56).abs() <= 0.05, "tract's top-1 {top1:.2}%, PyTorch gets 82.56%");
}

#[test]
fn export_refuses_bad_weights_with_one_line() {
    let tmp = common::TempDir::new("onnx-bad");
    let corrupt = tmp.path().join("corrupt.safetensors");
    std::fs::write(&corrupt, b"not a safetensors file at all").unwrap();
    let out = tmp.path().join("m.onnx");
    let (code, _, stderr) = sasprune(&[
        "export",
        "--model",
        "resnet20",
        "--weights",
        corrupt.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("is not a valid safetensors file") && !stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists(), "nothing is written for bad weights");

    // resnet20's tensors are not resnet32's
    let model = Model::build("resnet20", 10, 0).unwrap();
    let small = tmp.path().join("resnet20.safetensors");
    checkpoint::save_model(&model, &small, Normalize::CIFAR, &[]).unwrap();
    let (code, _, stderr) = sasprune(&[
        "export",
        "--model",
        "resnet32",
        "--weights",
        small.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("does not fit this model")
            && stderr.contains("missing tensor 'layer1.3.conv1.weight'")
            && stderr.contains("its tensors are those of resnet20: use --model resnet20"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error:")).count(), 1, "{stderr}");

    let names = tmp.path().join("names.txt");
    std::fs::write(&names, "cat\ndog\n").unwrap();
    let (code, _, stderr) = sasprune(&[
        "export",
        "--model",
        "resnet20",
        "--weights",
        small.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--class-names",
        names.to_str().unwrap(),
        "--classes",
        "10",
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("names 2 classes, but the model has 10"), "{stderr}");

    // weights whose prunable layers are all zero export (a valid file), with a warning
    let zero = Model::build("resnet20", 10, 0).unwrap();
    let mut dict = zero.store.state_dict().unwrap();
    for e in zero.store.entries().iter().filter(|e| e.role == Role::PrunableWeight) {
        dict.get_mut(&e.name).unwrap().1.fill(0.0);
    }
    zero.store.load_state_dict(&dict, "all zero").unwrap();
    let zeros = tmp.path().join("zeros.safetensors");
    checkpoint::save_model(&zero, &zeros, Normalize::CIFAR, &[]).unwrap();
    let (code, stdout, stderr) = sasprune(&[
        "export",
        "--model",
        "resnet20",
        "--weights",
        zeros.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("prunable weights 0 of 268336 non-zero (all zero)"), "{stdout}");
    assert!(stderr.contains("warning: every prunable weight in") && stderr.contains("is 0"), "{stderr}");
}
