//! `cargo bench`: the cross-vendor benchmark (the same code as `sasprune bench`) on the chosen
//! adapter (SASPRUNE_BACKEND / SASPRUNE_ADAPTER pick it). `cargo bench -- --quick` for a short
//! run, `--filter TEXT` to pick measurements; results are appended to bench-results.jsonl.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let filter = args.iter().position(|a| a == "--filter").and_then(|i| args.get(i + 1)).cloned();
    let cfg = sasprune::bench::BenchConfig { quick: args.iter().any(|a| a == "--quick"), filter, compact: None };
    if let Err(e) = sasprune::bench::run_and_record(&cfg, std::path::Path::new("bench-results.jsonl")) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
