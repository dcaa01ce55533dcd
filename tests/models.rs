//! Model definitions: parameter counts, PyTorch names and shapes, checkpoint round trips and
//! the errors a checkpoint that does not fit gets.

mod common;

use sasprune::checkpoint::{self, Checkpoint, Normalize};
use sasprune::models::{Model, Pass};
use sasprune::nn::Role;
use sasprune::Tensor;
use std::path::PathBuf;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sasprune-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn resnet_parameter_counts_match_the_paper() {
    for (name, count, prunable) in [
        ("resnet20", 269_722, None),
        ("resnet32", 464_154, Some(461_232 + 640)),
        ("resnet44", 658_586, None),
        ("resnet56", 853_018, None),
        ("resnet110", 1_727_962, None),
    ] {
        let m = Model::build(name, 10, 0).unwrap();
        assert_eq!(m.store.parameter_count(), count, "{name} parameters");
        if let Some(p) = prunable {
            let n: usize = m.store.entries().iter().filter(|e| e.role == Role::PrunableWeight).map(|e| e.numel()).sum();
            assert_eq!(n, p, "{name} conv + fc weights");
        }
    }
}

#[test]
fn alexnet_has_torchvision_names_and_61_million_parameters() {
    let m = Model::build("alexnet", 1000, 0).unwrap();
    assert_eq!(m.store.parameter_count(), 61_100_840);
    let names: Vec<&str> = m.store.entries().iter().map(|e| e.name.as_str()).collect();
    for n in [
        "features.0.weight",
        "features.0.bias",
        "features.10.weight",
        "classifier.1.weight",
        "classifier.4.bias",
        "classifier.6.weight",
    ] {
        assert!(names.contains(&n), "missing {n}");
    }
    let fc6 = m.store.entry(m.store.find("classifier.1.weight").unwrap());
    assert_eq!(fc6.shape, [4096, 9216]);
    let small = Model::build("alexnet", 10, 0).unwrap();
    assert_eq!(small.store.parameter_count(), 61_100_840 - 990 * 4096 - 990);
}

#[test]
fn resnet_state_dict_names_and_shapes_equal_the_pytorch_checkpoint() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/pretrained/resnet20.safetensors");
    let missing = format!("{} is not here (it comes with the project's shared folder)", path.display());
    if !common::inputs_present("resnet_state_dict_names_and_shapes", path.exists(), &missing) {
        return;
    }
    let ck = Checkpoint::load(&path).unwrap();
    let m = Model::build("resnet20", 10, 0).unwrap();
    let ours = m.store.state_dict().unwrap();
    let theirs: Vec<(&String, &Vec<usize>)> = ck.tensors.iter().map(|(k, (s, _))| (k, s)).collect();
    let mine: Vec<(&String, &Vec<usize>)> = ours.iter().map(|(k, (s, _))| (k, s)).collect();
    assert_eq!(mine, theirs);
    assert_eq!(ck.normalize().unwrap(), Some(Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }));
}

#[test]
fn checkpoint_round_trip_is_exact_and_has_pytorch_counters() {
    let dir = temp_dir("roundtrip");
    let path = dir.join("m.safetensors");
    let mut a = Model::build("resnet20", 10, 1).unwrap();
    a.store.batches_tracked = 7;
    let norm = Normalize { mean: [0.1, 0.2, 0.3], std: [0.4, 0.5, 0.6] };
    checkpoint::save_model(&a, &path, norm, &[]).unwrap();
    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!(ck.batches_tracked, 7);
    assert_eq!(ck.normalize().unwrap(), Some(norm));
    let mut b = Model::build("resnet20", 10, 2).unwrap();
    assert_ne!(a.store.state_dict().unwrap(), b.store.state_dict().unwrap());
    checkpoint::load_model(&mut b, &path).unwrap();
    assert_eq!(a.store.state_dict().unwrap(), b.store.state_dict().unwrap());
    // the file has every BN counter PyTorch's strict loading expects
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let counters = st.names().into_iter().filter(|n| n.ends_with(".num_batches_tracked")).count();
    assert_eq!(counters, 1 + 2 * 9, "one per batch-norm layer of ResNet-20");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_checkpoint_that_does_not_fit_names_the_tensor() {
    let dir = temp_dir("misfit");
    let m = Model::build("resnet20", 10, 1).unwrap();
    let good = m.store.state_dict().unwrap();
    type Edit = Box<dyn Fn(&mut sasprune::nn::StateDict)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "missing tensor 'linear.bias'",
            Box::new(|d| {
                d.remove("linear.bias");
            }),
        ),
        (
            "unexpected tensor 'fc.weight'",
            Box::new(|d| {
                d.insert("fc.weight".into(), (vec![1], vec![0.0]));
            }),
        ),
        (
            "tensor 'conv1.weight' has shape [16, 3, 5, 5], expected [16, 3, 3, 3]",
            Box::new(|d| {
                d.insert("conv1.weight".into(), (vec![16, 3, 5, 5], vec![0.0; 16 * 75]));
            }),
        ),
        (
            // evaluation would give NaN for that channel; the error names where
            "tensor 'layer2.1.bn2.running_var' holds 2 running variance(s) of -1e-5 or less (first: channel 5, -0.25)",
            Box::new(|d| {
                let var = &mut d.get_mut("layer2.1.bn2.running_var").unwrap().1;
                var[5] = -0.25;
                var[30] = -1e-5;
                var[31] = -1e-9; // a rounding's trace, finite in evaluation: kept
            }),
        ),
    ];
    for (expected, edit) in cases {
        let mut dict = good.clone();
        edit(&mut dict);
        let path = dir.join("bad.safetensors");
        checkpoint::save(&path, &dict, &[], Default::default()).unwrap();
        let mut target = Model::build("resnet20", 10, 3).unwrap();
        let before = target.store.state_dict().unwrap();
        let err = checkpoint::load_model(&mut target, &path).unwrap_err().to_string();
        assert!(err.contains(expected), "expected '{expected}' in: {err}");
        assert_eq!(target.store.state_dict().unwrap(), before, "a rejected checkpoint changes nothing");
    }
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint").unwrap();
    let err = Checkpoint::load(&garbage).err().unwrap().to_string();
    assert!(err.contains("not a valid safetensors file"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn resnet_forward_shapes_and_wrong_input_error() {
    let mut m = Model::build("resnet20", 10, 0).unwrap();
    let x = Tensor::zeros(&[3, 3, 32, 32]).unwrap();
    assert_eq!(m.forward(&x, Pass::Eval).unwrap().shape(), [3, 10]);
    let err = m.forward(&Tensor::zeros(&[3, 3, 28, 28]).unwrap(), Pass::Eval).unwrap_err().to_string();
    assert!(err.contains("resnet20 takes images [batch, 3, 32, 32]"), "{err}");
    let err = Model::build("resnet33", 10, 0).err().unwrap().to_string();
    assert!(err.contains("unknown model 'resnet33'"), "{err}");
}

/// AlexNet's dropout masks are a function of the pass's noise key (derived from seed and step by
/// the training loops): the same key gives the same logits, another key other logits, so a
/// resumed run draws the masks an uninterrupted one would.
#[test]
fn alexnet_dropout_masks_follow_the_noise_key() {
    let mut m = Model::build("alexnet", 10, 1).unwrap();
    let mut rng = common::Rng::new(3);
    let x = Tensor::from_slice(
        &rng.vec(2 * 3 * 224 * 224).iter().map(|&v| v as f32).collect::<Vec<_>>(),
        &[2, 3, 224, 224],
    )
    .unwrap();
    let mut logits = |pass| sasprune::autograd::no_grad(|| m.forward(&x, pass).unwrap().to_vec().unwrap());
    let a = logits(Pass::Train { noise: 7 });
    let b = logits(Pass::Train { noise: 7 });
    let c = logits(Pass::Train { noise: 8 });
    let e = logits(Pass::Eval);
    assert_eq!(a, b, "the same key must give the same dropout masks");
    assert_ne!(a, c, "another key must give other masks");
    assert_ne!(a, e, "evaluation has no dropout");
}

/// A model of the test's own, added the way README's Layout says: its network (a `Network`) and
/// build function in its own file (here, this test), and one `ModelSpec` entry (in `MODELS` for
/// the command line; here a static the test builds from). Nothing else in sasprune changes: the
/// training step, checkpoints and ONNX export take it as they take the ResNets.
mod toy {
    use rand::rngs::StdRng;
    use sasprune::export::onnx::Graph;
    use sasprune::models::{Arch, DataKind, ModelSpec, Network, Recipe};
    use sasprune::nn::{Linear, LinearInit, ParamStore};
    use sasprune::{Result, Tensor};

    /// One fully connected layer on 3x4x4 images.
    pub struct Toy {
        fc: Linear,
    }

    impl Network for Toy {
        fn forward(&self, s: &ParamStore, x: &Tensor, _noise: Option<u64>) -> Result<Tensor> {
            self.fc.forward(s, &x.reshape(&[x.shape()[0], 48])?)
        }

        fn onnx(&self, s: &ParamStore, g: &mut Graph, x: &str) -> Result<String> {
            let flat = g.flatten(x);
            self.fc.onnx(s, g, &flat)
        }
    }

    fn build(store: &mut ParamStore, arch: &Arch, rng: &mut StdRng) -> Box<dyn Network> {
        Box::new(Toy { fc: Linear::new(store, "fc", 48, arch.classes, LinearInit::Normal(0.1), rng) })
    }

    pub static SPEC: ModelSpec = ModelSpec {
        name: "toy",
        input: (3, 4, 4),
        classes: 3,
        mean: [0.5; 3],
        std: [0.25; 3],
        data: DataKind::Cifar10,
        largest_activation_per_image: 48 * 4,
        fc_dense: false,
        recipe: Recipe { epochs: 1, batch: 4, lr: 0.1, momentum: 0.9, weight_decay: 0.0, milestones: &[], gamma: 0.1 },
        classifier: "fc.weight",
        build,
    };
}

#[test]
fn a_toy_model_added_in_its_own_file_trains_saves_and_exports() {
    let mut model = Model::from_spec(&toy::SPEC, 3, 1).unwrap();
    assert_eq!((model.name.as_str(), model.store.parameter_count()), ("toy", 48 * 3 + 3));
    let mut rng = common::Rng::new(5);
    let x = common::tensor(&rng.vec(4 * 48), &[4, 3, 4, 4]);
    let y = Tensor::from_slice(&[0.0, 1.0, 2.0, 1.0], &[4]).unwrap();
    // the shared training step: loss down after a few SGD steps on one batch
    let first = model.gradient(&x, &y, 0).unwrap().item().unwrap();
    let sgd = sasprune::ops::sgd::SgdConfig { lr: 0.1, momentum: 0.0, weight_decay: 0.0, nesterov: false };
    for _ in 0..5 {
        model.gradient(&x, &y, 0).unwrap();
        model.store.sgd_step(&sgd, None).unwrap();
    }
    let last = model.gradient(&x, &y, 0).unwrap().item().unwrap();
    assert!(last < first, "loss {first} → {last}");
    // checkpoints and export know it by its spec
    let dir = temp_dir("toy-model");
    checkpoint::save_model(&model, &dir.join("toy.safetensors"), Normalize { mean: [0.5; 3], std: [0.25; 3] }, &[])
        .unwrap();
    let mut again = Model::from_spec(&toy::SPEC, 3, 2).unwrap();
    checkpoint::load_model(&mut again, &dir.join("toy.safetensors")).unwrap();
    let a = model.forward(&x, Pass::Eval).unwrap().to_vec().unwrap();
    let b = again.forward(&x, Pass::Eval).unwrap().to_vec().unwrap();
    assert_eq!(a, b, "the reloaded toy model computes the same logits");
    let exported = sasprune::export::onnx::export(&model, Default::default(), Normalize::CIFAR, None, &[]).unwrap();
    assert!(exported.bytes.len() > 4 * 147 && exported.layers.len() == 1, "the fc weight is the prunable layer");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resnet_evaluation_fuses_batch_norm_into_the_convolutions_with_the_same_logits() {
    // In evaluation without a graph each ResNet convolution applies its batch norm, the block's
    // residual and the ReLU on the way out: the logits must be the very bits the separate
    // kernels give, in f32 and with mixed precision's f16 activations, and no separate
    // batch-norm pass may run (each layer's one small kernel prepares its running statistics).
    let gpu = sasprune::gpu::get().unwrap();
    let mut precisions = vec![sasprune::models::Precision::F32];
    if gpu.adapter.shader_f16 {
        precisions.push(sasprune::models::Precision::Mixed);
    }
    let mut rng = common::Rng::new(31);
    let x =
        Tensor::from_slice(&rng.vec(4 * 3 * 32 * 32).iter().map(|&v| v as f32).collect::<Vec<_>>(), &[4, 3, 32, 32])
            .unwrap();
    for precision in precisions {
        let mut m = Model::build("resnet20", 10, 5).unwrap();
        m.set_precision(precision).unwrap();
        // running statistics of its own (two training passes), not the initial 0 and 1
        for noise in 0..2 {
            m.forward(&x, Pass::Train { noise }).unwrap();
        }
        let mut eval = || sasprune::autograd::no_grad(|| m.forward(&x, Pass::Eval).unwrap().to_vec().unwrap());
        let timed = gpu.start_device_timer(true).unwrap();
        let fused = eval();
        let launches = gpu.stop_device_timer().unwrap().map(|t| {
            let count = |label: &str| t.by_kernel.iter().filter(|k| k.0 == label).map(|k| k.2).sum::<u32>();
            (count("batchnorm.normalize_eval"), count("batchnorm.eval_affine"))
        });
        let separate = sasprune::ops::conv2d::with_separate_ops(&mut eval);
        assert!(fused.iter().all(|v| v.is_finite()));
        let differ = fused.iter().zip(&separate).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{precision:?}: logits {fused:?} vs separate ops {separate:?}");
        match (timed, launches) {
            // (19 batch norms in ResNet-20; the timer is the device's, so tests running beside
            // this one may add evaluations of their own, never separate passes)
            (true, Some((separate_passes, prepared))) => {
                assert_eq!(separate_passes, 0, "{precision:?}: no separate batch-norm pass");
                assert!(prepared >= 19, "{precision:?}: {prepared} preparations, one per batch norm");
            }
            (true, None) => panic!("a timed forward reports its kernels"),
            (false, _) => eprintln!("SKIPPED counting launches: the adapter has no timestamp queries"),
        }
    }
}
