//! `cargo bench`: GFLOP/s of GEMM (1024³) and the conv2d kernels at ResNet-32's shapes
//! (batch 128) on the chosen adapter (SASPRUNE_BACKEND / SASPRUNE_ADAPTER pick it).

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (batch, runs) = if quick { (16, 3) } else { (128, 5) };
    let batch = if std::env::args().any(|a| a == "--gemm-only") { 0 } else { batch };
    match sasprune::bench::kernel_benchmarks(1024, batch, runs).and_then(|r| sasprune::bench::print_table(&r)) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
