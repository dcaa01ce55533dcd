//! Bad input to the engine ends in an error that names the problem, never a panic.

mod common;
use common::*;
use sasprune::gpu::{self, Gpu, GpuOptions};
use sasprune::ops::{conv2d, elementwise, loss, matmul, pool};
use sasprune::{Error, Tensor};

#[test]
fn shape_mismatches_name_the_op_and_the_shapes() {
    let x = tensor(&[1.0; 2 * 3 * 8 * 8], &[2, 3, 8, 8]);
    let w = tensor(&[1.0; 4 * 5 * 3 * 3], &[4, 5, 3, 3]);
    let err = conv2d::conv2d(&x, &w, None, 1, 1).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "conv2d", .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("[2, 3, 8, 8]") && text.contains("[4, 5, 3, 3]"), "{text}");

    let a = tensor(&[1.0; 6], &[2, 3]);
    let b = tensor(&[1.0; 8], &[4, 2]);
    let text = matmul::matmul(&a, &b).unwrap_err().to_string();
    assert!(text.contains("matmul") && text.contains("[2, 3]") && text.contains("[4, 2]"), "{text}");
    let text = elementwise::add(&a, &tensor(&[1.0; 6], &[3, 2])).unwrap_err().to_string();
    assert!(text.contains("add") && text.contains("[2, 3] vs [3, 2]"), "{text}");
    let text = matmul::linear(&a, &b, None).unwrap_err().to_string();
    assert!(text.contains("linear"), "{text}");
    let text = loss::cross_entropy(&a, &tensor(&[0.0; 3], &[3])).unwrap_err().to_string();
    assert!(text.contains("cross_entropy") && text.contains("[2]"), "{text}");
    let text = pool::max_pool2d(&a, 3, 2, 0).unwrap_err().to_string();
    assert!(text.contains("max_pool2d") && text.contains("4 dimensions"), "{text}");
    let text = Tensor::from_slice(&[1.0; 5], &[2, 3]).unwrap_err().to_string();
    assert!(text.contains("5 values do not fill shape [2, 3]"), "{text}");
    let text = a.reshape(&[4, 2]).unwrap_err().to_string();
    assert!(text.contains("[2, 3] cannot become [4, 2]"), "{text}");
}

#[test]
fn a_buffer_larger_than_the_device_allows_is_an_error() {
    let limit = gpu::get().unwrap().adapter.max_buffer_size;
    let err = Tensor::uninit(&[(limit / 4 + 1024) as usize]).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("use a smaller batch size"), "{err}");
}

#[test]
fn no_matching_adapter_says_what_was_looked_for() {
    let options = GpuOptions { adapter: Some("no-such-gpu-xyz".into()), ..Default::default() };
    let err = Gpu::open(&options).err().expect("no adapter has that name");
    let text = err.to_string();
    assert!(matches!(err, Error::NoAdapter(_)), "{text}");
    assert!(text.contains("no-such-gpu-xyz"), "{text}");
}

#[test]
fn an_unknown_backend_is_an_error() {
    let options = GpuOptions { backend: Some("glide".into()), ..Default::default() };
    let text = Gpu::open(&options).err().expect("unknown backend").to_string();
    assert!(text.contains("unknown backend 'glide'"), "{text}");
}
