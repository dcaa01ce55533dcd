//! A correct forward pass reproduces PyTorch's accuracy with PyTorch-trained weights: ResNet-20
//! from ../shared/pretrained on the CIFAR-10 test set that ../shared/data/cifar10.sh builds
//! (PyTorch: 81.03% top-1). Skips with a message when the weights or the data are absent.

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
        "needs {} and {}/cifar-10-batches-bin (run ../shared/data/cifar10.sh data)",
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
