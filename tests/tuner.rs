//! The kernel autotuner: its cache file round-trips, a corrupt or foreign cache is ignored with
//! a note (never fatal), and tuning on a real product picks a candidate that computes the same
//! numbers, stores it under this adapter and is read back instead of re-measured.
//! (Its own test binary: the tuner's settings are process-wide.)

mod common;
use common::*;
use sasprune::ops::{conv2d, matmul};
use sasprune::reference as cpu;
use sasprune::tune::{self, Cache, Choice, Mode, Settings};

fn choice(tile: &str, splits: usize) -> Choice {
    Choice { tile: tile.into(), splits, seconds: 1e-4 }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sasprune-tuner-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn cache_round_trips_and_bad_files_are_ignored_with_a_note() {
    let dir = temp_dir("file");
    let path = dir.join("tune.json");
    let mut cache = Cache::default();
    cache
        .adapters
        .entry("GPU A | Vulkan | 1.0 | sasprune 0".into())
        .or_default()
        .insert("k 1x2x3".into(), choice("g64", 4));
    cache
        .adapters
        .entry("GPU B | Metal | 2 | sasprune 0".into())
        .or_default()
        .insert("k 4x5x6".into(), choice("wide16", 1));
    cache
        .left_out
        .entry("GPU B | Metal | 2 | sasprune 0".into())
        .or_default()
        .insert("c8s".into(), "a run ended while the tuner timed it for k 7x8x9".into());
    cache.save(&path).unwrap();
    let (back, note) = Cache::load(&path);
    assert_eq!(back, cache);
    assert!(note.is_none());
    // A missing file is an empty cache without a note.
    let (empty, note) = Cache::load(&dir.join("absent.json"));
    assert!(empty.adapters.is_empty() && note.is_none());
    // Corrupt files: every one is an empty cache and a note naming the file.
    let text = cache.to_json();
    let bad: Vec<Vec<u8>> = vec![
        vec![],
        b"\x00\xff garbage".to_vec(),
        text.as_bytes()[..text.len() / 2].to_vec(),
        br#"{"format":"something-else","adapters":{}}"#.to_vec(),
        br#"{"format":"sasprune-tune-1"}"#.to_vec(),
        br#"[1, 2, 3]"#.to_vec(),
    ];
    for (i, bytes) in bad.iter().enumerate() {
        std::fs::write(&path, bytes).unwrap();
        let (c, note) = Cache::load(&path);
        assert!(c.adapters.is_empty(), "variant {i}");
        let note = note.unwrap_or_else(|| panic!("variant {i} gave no note"));
        assert!(note.contains("tune.json"), "{note}");
    }
    // A directory where the file should be: a note, not a panic.
    let (c, note) = Cache::load(&dir);
    assert!(c.adapters.is_empty() && note.is_some());
    // Entries this build cannot use (unknown tile, zero or absurd splits, wrong types) are
    // dropped one by one; the good entry stays.
    std::fs::write(
        &path,
        br#"{"format":"sasprune-tune-1","adapters":{"A":{
            "good":{"tile":"g32","splits":2,"seconds":0.001},
            "tile":{"tile":"g999","splits":1},
            "zero":{"tile":"g32","splits":0},
            "huge":{"tile":"g32","splits":99999999999},
            "type":{"tile":5,"splits":"1"}}}}"#,
    )
    .unwrap();
    let (c, note) = Cache::load(&path);
    assert_eq!(c.adapters["A"].len(), 1);
    assert_eq!(c.adapters["A"]["good"], Choice { tile: "g32".into(), splits: 2, seconds: 0.001 });
    assert!(note.unwrap().contains("4 malformed"));
    // So are left-out tiles this build does not know or whose reason is not text, and a
    // "left_out" that is not an object.
    std::fs::write(
        &path,
        br#"{"format":"sasprune-tune-1","adapters":{},"left_out":{
            "A":{"c16q":"crashed","g999":"unknown tile","g64":5},
            "B":"not an object"}}"#,
    )
    .unwrap();
    let (c, note) = Cache::load(&path);
    assert_eq!(c.left_out.len(), 1);
    assert_eq!(c.left_out["A"].keys().collect::<Vec<_>>(), ["c16q"]);
    assert!(note.unwrap().contains("3 malformed"));
    std::fs::write(
        &path,
        br#"{"format":"sasprune-tune-1","adapters":{"A":{"k":{"tile":"g32","splits":1}}},"left_out":[]}"#,
    )
    .unwrap();
    let (c, note) = Cache::load(&path);
    assert!(c.left_out.is_empty() && c.adapters["A"].len() == 1 && note.unwrap().contains("1 malformed"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tuning_picks_a_correct_plan_stores_it_and_reads_it_back() {
    let dir = temp_dir("run");
    let path = dir.join("tune.json");
    // Another adapter's entry must survive our writes.
    let mut foreign = Cache::default();
    foreign
        .adapters
        .entry("Other GPU | Dx12 | 9 | sasprune 0".into())
        .or_default()
        .insert("x".into(), choice("g16", 1));
    foreign.save(&path).unwrap();
    tune::configure(Settings { mode: Some(Mode::On), cache: Some(path.clone()) });

    let g = cpu::Conv2dGeom { n: 2, c_in: 5, h: 9, w: 7, c_out: 20, kh: 3, kw: 3, stride: 1, pad: 1 };
    let mut rng = Rng::new(3);
    let x = f32_exact(&rng.vec(g.n * g.c_in * g.h * g.w));
    let w = f32_exact(&rng.vec(g.c_out * g.c_in * g.kh * g.kw));
    let geom = conv_geom(&g);
    let run = || {
        let y = conv2d::conv2d_forward(
            &tensor(&x, &[g.n, g.c_in, g.h, g.w]),
            &tensor(&w, &[g.c_out, g.c_in, 3, 3]),
            None,
            &geom,
        );
        assert_close("tuned conv forward", &values(&y.unwrap()), &cpu::conv2d(&x, &w, None, &g), LONG_SUM);
    };
    run();
    assert!(tune::enabled());
    let first = tune::choices();
    // (20 output channels: Winograd is a candidate beside the GEMM tiles, the direct kernel is not)
    let key = "conv2d.forward 20x126x45 +winograd2x2";
    let (_, tile, _, seconds) = first.iter().find(|c| c.0 == key).unwrap_or_else(|| panic!("{first:?}")).clone();
    assert!(seconds > 0.0, "a tuned choice carries its time");
    let gpu_tile = matmul::TILES.iter().any(|t| t.name == tile && t.gpu);
    assert!(gpu_tile || tile == matmul::WINOGRAD_NAME, "{tile} is a GPU tile or Winograd");

    let (stored, note) = Cache::load(&path);
    assert!(note.is_none());
    assert_eq!(stored.adapters.len(), 2, "ours and the foreign adapter's");
    let ours = stored.adapters.iter().find(|(k, _)| !k.starts_with("Other GPU")).unwrap().1;
    assert_eq!(ours[key].tile, tile);

    // A fresh tuner (as in the next process) reads the choice instead of measuring again: the
    // stored time comes back unchanged.
    tune::configure(Settings { mode: Some(Mode::On), cache: Some(path.clone()) });
    run();
    let again = tune::choices();
    let (a, f) = (again.iter().find(|c| c.0 == key).unwrap(), first.iter().find(|c| c.0 == key).unwrap());
    assert_eq!((&a.1, a.2), (&f.1, f.2), "same tile and splits");
    assert!((a.3 - f.3).abs() <= 1e-12 * f.3, "the stored time, not a new measurement: {} vs {}", a.3, f.3);

    // A corrupt cache is ignored (with a note on stderr) and rewritten: still correct results.
    std::fs::write(&path, b"{ not json").unwrap();
    tune::configure(Settings { mode: Some(Mode::On), cache: Some(path.clone()) });
    run();
    assert!(Cache::load(&path).1.is_none(), "rewritten as a valid cache");

    // Another process tuning with the same file saves its results while this one runs: this one's
    // next save keeps them.
    let (mut side, _) = Cache::load(&path);
    side.adapters.entry("Side GPU | Vulkan | 1 | sasprune 0".into()).or_default().insert("y".into(), choice("g64", 2));
    side.left_out.entry("Side GPU | Vulkan | 1 | sasprune 0".into()).or_default().insert("c16q".into(), "hung".into());
    side.save(&path).unwrap();

    // A product into a column block of a wider output (a linear layer's weight in row blocks):
    // the tuner fills the output with NaN to check each candidate, and must give back the
    // columns of the blocks before it.
    let unit = matmul::row_block_granularity().unwrap();
    let (n, in_f, out_f) = (3, 70, 2 * unit + 3);
    let (xl, wl, bl) = (f32_exact(&rng.vec(n * in_f)), f32_exact(&rng.vec(out_f * in_f)), f32_exact(&rng.vec(out_f)));
    let y = matmul::linear_in_row_blocks(
        &tensor(&xl, &[n, in_f]),
        &tensor(&wl, &[out_f, in_f]),
        Some(&tensor(&bl, &[out_f])),
        unit,
    )
    .unwrap();
    assert!(tune::choices().iter().any(|c| c.0.starts_with("matmul.gemm") && c.3 > 0.0), "the blocks were tuned");
    assert_close("tuned blocked linear", &values(&y), &cpu::linear(&xl, &wl, Some(&bl), n, in_f, out_f), LONG_SUM);
    let (merged, _) = Cache::load(&path);
    assert_eq!(merged.adapters.len(), 2, "ours and the side process's: {merged:?}");
    assert_eq!(merged.adapters["Side GPU | Vulkan | 1 | sasprune 0"]["y"], choice("g64", 2));
    assert_eq!(merged.left_out["Side GPU | Vulkan | 1 | sasprune 0"]["c16q"], "hung");

    // Off: fixed defaults, nothing measured.
    tune::configure(Settings { mode: Some(Mode::Off), cache: Some(path.clone()) });
    run();
    assert!(!tune::enabled());
    assert!(tune::choices().iter().all(|c| c.3 == 0.0));
    std::fs::remove_dir_all(&dir).unwrap();
}
