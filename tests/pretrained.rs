//! A correct forward pass reproduces PyTorch's accuracy with PyTorch-trained weights: ResNet-20
//! from ../shared/pretrained on the CIFAR-10 test set that ../shared/data/cifar10.sh builds
//! (PyTorch: 81.03% top-1), also with Winograd in every layer it fits. Skips with a message when
//! the weights or the data are absent.

mod common;

use sasprune::checkpoint;
use sasprune::data::cifar::Cifar10;
use sasprune::models::Model;
use std::path::PathBuf;

#[test]
fn pretrained_resnet20_reproduces_pytorch_top1_on_cifar10() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let weights = root.join("../shared/pretrained/resnet20.safetensors");
    let data = root.join("data");
    let missing = format!(
        "needs {} and {}/cifar-10-batches-bin (run bash data/get-cifar10.sh)",
        weights.display(),
        data.display()
    );
    let present = weights.exists() && data.join("cifar-10-batches-bin/test_batch.bin").exists();
    if !common::inputs_present("pretrained_resnet20", present, &missing) {
        return;
    }
    let cifar = Cifar10::open(&data).unwrap();
    let mut model = Model::build("resnet20", 10, 0).unwrap();
    let norm = checkpoint::load_model(&mut model, &weights).unwrap().expect("the file names its normalization");
    let r = sasprune::train::evaluate(&mut model, &cifar.test, norm, 500, false).unwrap();
    assert_eq!(r.images, 10_000);
    assert!((r.top1 - 81.03).abs() <= 0.05, "top-1 {:.2}%, PyTorch gets 81.03%", r.top1);
    assert!(r.loss > 0.5 && r.loss < 1.2, "mean loss {}", r.loss);
}

/// Winograd F(2x2, 3x3) (the plan the tuner may choose on a GPU for 3x3 stride-1 layers) gives
/// the pretrained network the same predictions as the default plans: the same top-1 and a loss
/// within 1e-5 (relative) on the first 1,000 test images, with Winograd in every layer it fits.
#[test]
fn pretrained_resnet20_with_winograd_predicts_as_the_default_plans() {
    use sasprune::ops::matmul;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let weights = root.join("../shared/pretrained/resnet20.safetensors");
    let data = root.join("data");
    let missing = format!("needs {} and {}/cifar-10-batches-bin", weights.display(), data.display());
    let present = weights.exists() && data.join("cifar-10-batches-bin/test_batch.bin").exists();
    if !common::inputs_present("pretrained_resnet20_winograd", present, &missing) {
        return;
    }
    let cifar = Cifar10::open(&data).unwrap();
    let test = sasprune::data::First { inner: &cifar.test, n: 1000 };
    let mut model = Model::build("resnet20", 10, 0).unwrap();
    let norm = checkpoint::load_model(&mut model, &weights).unwrap().expect("the file names its normalization");
    let default = sasprune::train::evaluate(&mut model, &test, norm, 500, false).unwrap();
    let (winograd, plans) = matmul::plans_used(|| {
        matmul::with_plan(matmul::WINOGRAD, 1, || sasprune::train::evaluate(&mut model, &test, norm, 500, false))
    });
    let winograd = winograd.unwrap();
    let ran = plans.iter().filter(|(_, p)| p.tile == matmul::WINOGRAD).count();
    // 17 of ResNet-20's 19 convolutions are 3x3 stride 1 (the stem too; two are stride 2), in
    // each of two batches of 500
    assert_eq!(ran, 17 * 2, "Winograd runs: {plans:?}");
    eprintln!(
        "1,000 test images: top-1 {:.2}% / {:.2}%, loss {:.6} / {:.6} (default plans / Winograd)",
        default.top1, winograd.top1, default.loss, winograd.loss
    );
    assert_eq!(winograd.top1, default.top1);
    assert!((winograd.loss - default.loss).abs() <= 1e-5 * default.loss, "{} vs {}", winograd.loss, default.loss);
}
