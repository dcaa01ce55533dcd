//! Kernel benchmarks shared by `cargo bench` and `sasprune bench`: GFLOP/s of GEMM and of the
//! three conv2d kernels at ResNet-32's shapes, timed on the host around submit + wait after a
//! warm-up, median of several runs.

use crate::gpu;
use crate::ops::{conv2d, matmul};
use crate::{Result, Tensor};
use std::time::Instant;

/// One benchmark result.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub name: String,
    pub seconds: f64,
    /// Floating-point operations per run (2 per multiply-add).
    pub flops: f64,
}

impl Measurement {
    pub fn gflops(&self) -> f64 {
        self.flops / self.seconds / 1e9
    }
}

/// Median wall time of `runs` runs of `f` (after one warm-up run), each ending in a full
/// device synchronization.
pub fn time_median(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let gpu = gpu::get()?;
    f()?;
    gpu.synchronize()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        gpu.synchronize()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn random(shape: &[usize], seed: u64) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data: Vec<f32> = (0..crate::tensor::numel(shape)).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_slice(&data, shape)
}

/// The convolution shapes of ResNet-32 at `batch` (one per distinct layer geometry).
pub fn resnet32_conv_shapes(batch: usize) -> Vec<(&'static str, conv2d::ConvGeom)> {
    let g = |c_in, h, c_out, stride| conv2d::ConvGeom { n: batch, c_in, h, w: h, c_out, kh: 3, kw: 3, stride, pad: 1 };
    vec![
        ("conv 3->16 32px", g(3, 32, 16, 1)),
        ("conv 16->16 32px", g(16, 32, 16, 1)),
        ("conv 16->32 32px/2", g(16, 32, 32, 2)),
        ("conv 32->32 16px", g(32, 16, 32, 1)),
        ("conv 32->64 16px/2", g(32, 16, 64, 2)),
        ("conv 64->64 8px", g(64, 8, 64, 1)),
    ]
}

/// GEMM at `size`³ and every ResNet-32 conv shape at `batch` (forward, grad-input, grad-weight).
pub fn kernel_benchmarks(gemm_size: usize, batch: usize, runs: usize) -> Result<Vec<Measurement>> {
    let mut out = Vec::new();
    let s = gemm_size;
    let (a, b) = (random(&[s, s], 1)?, random(&[s, s], 2)?);
    let seconds = time_median(runs, || matmul::gemm(&a, &b, None, s, s, s, false, false).map(drop))?;
    out.push(Measurement { name: format!("gemm {s}x{s}x{s}"), seconds, flops: 2.0 * (s * s * s) as f64 });
    for (name, g) in resnet32_conv_shapes(batch).into_iter().filter(|_| batch > 0) {
        let x = random(&[g.n, g.c_in, g.h, g.w], 3)?;
        let w = random(&[g.c_out, g.c_in, g.kh, g.kw], 4)?;
        let dy = random(&[g.n, g.c_out, g.out_h(), g.out_w()], 5)?;
        let flops = 2.0 * g.macs() as f64;
        let fwd = time_median(runs, || conv2d::conv2d_forward(&x, &w, None, &g).map(drop))?;
        let gi = time_median(runs, || conv2d::conv2d_grad_input(&dy, &w, &g).map(drop))?;
        let gw = time_median(runs, || conv2d::conv2d_grad_weight(&dy, &x, &g).map(drop))?;
        out.push(Measurement { name: format!("{name} b{batch} forward"), seconds: fwd, flops });
        out.push(Measurement { name: format!("{name} b{batch} grad-input"), seconds: gi, flops });
        out.push(Measurement { name: format!("{name} b{batch} grad-weight"), seconds: gw, flops });
    }
    Ok(out)
}

/// Prints measurements as a table headed by the adapter.
pub fn print_table(results: &[Measurement]) -> Result<()> {
    println!("adapter: {}", gpu::get()?.adapter);
    println!("{:<40} {:>12} {:>10}", "kernel", "ms", "GFLOP/s");
    for m in results {
        println!("{:<40} {:>12.3} {:>10.2}", m.name, m.seconds * 1e3, m.gflops());
    }
    Ok(())
}
