//! Rates, per-layer plans and the SAS-ADMM schedule, with exact expected counts.

use sasprune::models::Model;
use sasprune::prune::admm::SasConfig;
use sasprune::prune::rate::{self, parse_rate, pruned_count, Rate};
use std::path::PathBuf;

#[test]
fn rates_parse_in_every_accepted_form() {
    assert_eq!(parse_rate("6.6x").unwrap(), Rate::Times(6.6));
    assert_eq!(parse_rate(" 9.93X ").unwrap(), Rate::Times(9.93));
    assert_eq!(parse_rate("85%").unwrap(), Rate::Percent(85.0));
    for bad in ["1x", "0.5", "100%", "0%", "-3x", "fast", "x", "85%%", "inf"] {
        let err = parse_rate(bad).unwrap_err().to_string();
        assert!(err.contains("--rate"), "'{bad}': {err}");
    }
    // A bare number has no single meaning (85 in a --layer-rates file is 85%): it is refused
    // with both readings spelled out.
    for bare in ["6.6", "85"] {
        let err = parse_rate(bare).unwrap_err().to_string();
        assert!(
            err.contains("needs a unit") && err.contains(&format!("{bare}x")) && err.contains(&format!("{bare}%")),
            "{err}"
        );
    }
}

/// NumPy's `np.percentile(a, 100 * p)` (default method 'linear', as documented): the sorted
/// values' virtual index i = p·(n − 1), interpolated between its floor and ceiling neighbours.
/// Written from the documentation, not from the code under test.
fn numpy_percentile(values: &[f64], p: f64) -> f64 {
    let mut s = values.to_vec();
    s.sort_by(f64::total_cmp);
    let i = p * (s.len() - 1) as f64;
    let (lo, hi) = (i.floor() as usize, i.ceil() as usize);
    s[lo] + (i - lo as f64) * (s[hi] - s[lo])
}

#[test]
fn pruned_counts_follow_the_numpy_percentile() {
    // By hand: n = 432 at 85% puts the percentile at virtual index 0.85·431 = 366.35, between
    // the 367th and 368th smallest magnitudes; the 367 at indices 0..=366 lie strictly below.
    // n = 101 at 50%: index 50.0 exactly, the percentile IS the 51st value; 50 lie below.
    // n = 10 at 0%: the minimum itself; none below. n = 1: nothing below its only value.
    assert_eq!(pruned_count(432, 0.85), 367);
    assert_eq!(pruned_count(101, 0.5), 50);
    assert_eq!(pruned_count(10, 0.0), 0);
    assert_eq!(pruned_count(1, 0.9), 0);
    // The ResNet layer sizes at 85%, against the documented definition applied to distinct
    // random magnitudes: count |w| strictly below np.percentile(|w|, 85).
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for (n, p) in [
        (432, 0.85),
        (2304, 0.85),
        (4608, 0.85),
        (9216, 0.85),
        (18432, 0.85),
        (36864, 0.85),
        (640, 0.2),
        (101, 0.5),
        (7, 0.999),
    ] {
        let magnitudes: Vec<f64> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 11) as f64 / (1u64 << 53) as f64
            })
            .collect();
        let threshold = numpy_percentile(&magnitudes, p);
        let below = magnitudes.iter().filter(|&&m| m < threshold).count();
        assert_eq!(pruned_count(n, p), below, "n = {n}, p = {p}");
    }
    // the code's own closed form, kept as a regression check on the same sizes
    assert_eq!(pruned_count(2304, 0.85), 1958);
    assert_eq!(pruned_count(4608, 0.85), 3916);
    assert_eq!(pruned_count(9216, 0.85), 7833);
    assert_eq!(pruned_count(18432, 0.85), 15667);
    assert_eq!(pruned_count(36864, 0.85), 31334);
    assert_eq!(pruned_count(101, 0.5), 50);
    assert_eq!(pruned_count(10, 0.0), 0);
    assert_eq!(pruned_count(1, 0.9), 0);
}

#[test]
fn resnet32_at_85_percent_is_6_61x_and_6_6x_needs_84_97_percent() {
    let m = Model::build("resnet32", 10, 0).unwrap();
    let layers = rate::prunable_layers(&m.store);
    assert_eq!(layers.len(), 32);
    assert_eq!(layers.iter().map(|l| l.len).sum::<usize>(), 461_872);
    let plan = rate::plan_uniform(layers.clone(), Rate::Percent(85.0), true).unwrap();
    // By hand, kept = n − ⌈0.85(n − 1)⌉ per layer: conv1 432 → 65; 10 × 2304 → 10 × 346;
    // 4608 → 692; 9 × 9216 → 9 × 1383; 18432 → 2765; 9 × 36864 → 9 × 5530; fc 640 dense:
    // 65 + 3460 + 692 + 12447 + 2765 + 49770 + 640 = 69,839.
    assert_eq!(plan.kept(), 69_839, "kept weights at 85% (the paper's 69,825 uses fractional counts)");
    assert_eq!(format!("{:.2}", plan.rate()), "6.61");
    assert_eq!(plan.pruned.last(), Some(&0), "the fc layer stays dense");
    let plan = rate::plan_uniform(layers.clone(), Rate::Times(6.6), true).unwrap();
    let p = 100.0 * plan.fractions[0];
    assert!((p - 84.97).abs() < 0.005, "6.6x needs {p:.4}% of every conv layer");
    assert!(plan.rate() >= 6.6 && plan.rate() < 6.61, "{}", plan.rate());
    let err = rate::plan_uniform(layers, Rate::Times(1000.0), true).unwrap_err().to_string();
    assert!(err.contains("cannot be reached"), "{err}");
}

#[test]
fn resnet56_at_90_percent_is_9_93x() {
    let m = Model::build("resnet56", 10, 0).unwrap();
    let plan = rate::plan_uniform(rate::prunable_layers(&m.store), Rate::Percent(90.0), true).unwrap();
    assert_eq!(format!("{:.2}", plan.rate()), "9.93");
}

#[test]
fn layer_rate_files_give_per_layer_plans_and_name_bad_lines() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/alexnet_admm_nn_rates.txt");
    let m = Model::build("alexnet", 1000, 0).unwrap();
    let plan = rate::plan_from_file(rate::prunable_layers(&m.store), &file).unwrap();
    assert_eq!(plan.pruned[0], pruned_count(64 * 3 * 121, 0.19));
    assert_eq!(plan.pruned[5], pruned_count(4096 * 9216, 0.972));
    assert!((plan.rate() - 21.0).abs() < 1.0, "ADMM-NN's AlexNet ratios give about 21x, got {:.2}", plan.rate());

    let dir = std::env::temp_dir().join(format!("sasprune-rates-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let r20 = Model::build("resnet20", 10, 0).unwrap();
    let cases = [
        ("conv1 50\nlayer9.0.conv1 80\n", "unknown layer 'layer9.0.conv1'"),
        ("conv1 fifty\n", "'fifty' is not a percentage"),
        ("conv1 100%\n", "below 100%"),
        ("conv1\n", "expected 'layer-name percentage'"),
        ("conv1 50\nlinear 20\nconv1 60\n", "line 3: layer 'conv1' is already given on line 1"),
        ("", "prunes no weight"),
        ("# nothing\nconv1 0\nlinear 0%\n", "prunes no weight"),
        ("conv1 1e-300\n", "prunes no weight"),
    ];
    for (text, expected) in cases {
        let path = dir.join("rates.txt");
        std::fs::write(&path, text).unwrap();
        let err = rate::plan_from_file(rate::prunable_layers(&r20.store), &path).unwrap_err().to_string();
        assert!(err.contains(expected) && err.contains("rates.txt"), "expected '{expected}' in: {err}");
    }
    // one unit, percent: `1` is 1% (not 100%); a byte-order mark before the first name is ignored
    let path = dir.join("ok.txt");
    std::fs::write(&path, "\u{feff}conv1 1\n# comment\nlayer1.0.conv1.weight: 50\nlinear 20%\n").unwrap();
    let plan = rate::plan_from_file(rate::prunable_layers(&r20.store), &path).unwrap();
    assert_eq!(plan.pruned[0], pruned_count(432, 0.01));
    assert_eq!(plan.pruned[1], pruned_count(2304, 0.5));

    assert_eq!(*plan.pruned.last().unwrap(), pruned_count(640, 0.2));
    assert_eq!(plan.pruned[2..plan.pruned.len() - 1].iter().sum::<usize>(), 0, "unnamed layers stay dense");
    // the same rule for --rate: a percentage too small to remove one weight prunes nothing
    let err = rate::plan_uniform(rate::prunable_layers(&r20.store), Rate::Percent(1e-300), true).unwrap_err();
    assert!(err.to_string().contains("prunes no weight"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn sas_admm_paper_schedule_costs_21107_minibatch_gradients() {
    let cfg = SasConfig::paper();
    // Independent numbers, from src/prune/ALGORITHM.md's formulas evaluated by hand (Python, f64):
    // M_k = 50 and η_k = 1/25 for k < k0 = 50; from k0 on M_k = ⌈c·k^1.1⌉, c = 50/50^1.1,
    // η_k = 50·51 / (25·M_k(M_k+1)). E.g. k = 51: 50·1.02^1.1 = 51.10 → 52, η = 2550/68900.
    let by_hand: [(usize, usize, f64); 8] = [
        (1, 50, 0.04),
        (49, 50, 0.04),
        (50, 50, 0.04),
        (51, 52, 0.03701015965166909),
        (52, 53, 0.03563941299790356),
        (188, 215, 0.0021963824289405686),
        (189, 216, 0.0021761392729134667),
        (190, 218, 0.002136483599346487),
    ];
    for (k, m, eta) in by_hand {
        let (mk, etak) = cfg.inner_schedule(k);
        assert_eq!(mk, m, "M_{k}");
        assert!((etak - eta).abs() <= 1e-15 * eta, "η_{k} = {etak}, by hand {eta}");
    }
    // Σ M_k over k = 1..190 (the same Python sum): 49·50 + Σ_{k=50}^{190} ⌈c·k^1.1⌉
    assert_eq!(cfg.total_gradients(), 21_107);
    assert_eq!(cfg.inner_schedule(1), (50, 1.0 / 25.0));
    let (m50, eta50) = cfg.inner_schedule(50);
    assert_eq!(m50, 50);
    assert!((eta50 - 1.0 / 25.0).abs() < 1e-12, "η is continuous at k0");
    let (m190, eta190) = cfg.inner_schedule(190);
    assert_eq!(m190, (50.0 * (190.0f64 / 50.0).powf(1.1)).ceil() as usize);
    assert!((eta190 - 50.0 * 51.0 / (25.0 * (m190 * (m190 + 1)) as f64)).abs() < 1e-15);
    let epochs = cfg.total_gradients() as f64 * 256.0 / 50_000.0;
    assert!((epochs - 108.0).abs() < 1.0, "about 108 epochs of CIFAR-10, got {epochs:.1}");
}
