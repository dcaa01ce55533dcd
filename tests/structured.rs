//! Structured pruning (`--structure filter|2:4`) without data: the models' channel sets, the
//! plans' per-layer counts and multiply-adds counted by hand, the Z-step prox and the projection
//! against f64 references on a real network's layout, and the compact network computing the
//! masked network's logits. The pipeline runs are in tests/pipeline.rs (they need CIFAR-10).

mod common;
use common::*;
use sasprune::models::{Model, Pass};
use sasprune::prune::admm_nn::Penalty;
use sasprune::prune::rate::{self, Plan, Rate};
use sasprune::prune::structure::{self, Grouping, Structure};
use sasprune::reference as cpu;
use sasprune::Tensor;

fn filter_plan(model: &Model, rate: Rate) -> Plan {
    structure::plan_filters(rate::prunable_layers(&model.store), &model.channel_sets(), rate, &model.name).unwrap()
}

#[test]
fn channel_sets_name_each_blocks_inner_channels_and_alexnets_filters_and_neurons() {
    let m = Model::build("resnet20", 10, 0).unwrap();
    let sets = m.channel_sets();
    assert_eq!(sets.len(), 9, "one per basic block");
    assert_eq!(sets[0].producer, "layer1.0.conv1.weight");
    assert_eq!(sets[0].consumer, "layer1.0.conv2.weight");
    assert_eq!(
        sets[0].per_channel,
        ["layer1.0.bn1.weight", "layer1.0.bn1.bias", "layer1.0.bn1.running_mean", "layer1.0.bn1.running_var"]
    );
    let widths: Vec<usize> = sets.iter().map(|s| s.width).collect();
    assert_eq!(widths, [16, 16, 16, 32, 32, 32, 64, 64, 64]);
    assert!(sets.iter().all(|s| s.span == 9));
    let a = Model::build("alexnet", 10, 0).unwrap();
    let sets = a.channel_sets();
    let summary: Vec<(&str, &str, usize, usize)> =
        sets.iter().map(|s| (s.producer.as_str(), s.consumer.as_str(), s.span, s.width)).collect();
    assert_eq!(
        summary,
        [
            ("features.0.weight", "features.3.weight", 25, 64),
            ("features.3.weight", "features.6.weight", 9, 192),
            ("features.6.weight", "features.8.weight", 9, 384),
            ("features.8.weight", "features.10.weight", 9, 256),
            ("features.10.weight", "classifier.1.weight", 36, 256),
            ("classifier.1.weight", "classifier.4.weight", 1, 4096),
            ("classifier.4.weight", "classifier.6.weight", 1, 4096),
        ]
    );
    assert_eq!(sets[0].per_channel, ["features.0.bias"]);
}

#[test]
fn resnet20_filter_plan_counts_and_multiply_adds_by_hand() {
    let m = Model::build("resnet20", 10, 0).unwrap();
    let plan = filter_plan(&m, Rate::Percent(50.0));
    let removed: Vec<usize> = plan.cuts.iter().map(|c| c.removed).collect();
    assert_eq!(removed, [8, 8, 8, 16, 16, 16, 32, 32, 32]);
    // by hand: a block's conv1 keeps half its rows, its conv2 half its input channels; the stem
    // (3·16·9 = 432) and the fc layer (640) stay
    for (l, &pruned) in plan.layers.iter().zip(&plan.pruned) {
        let expected =
            if l.name.ends_with("conv1.weight") && l.name.starts_with("layer") || l.name.ends_with("conv2.weight") {
                l.len / 2
            } else {
                0
            };
        assert_eq!(pruned, expected, "{}", l.name);
    }
    assert_eq!(plan.total(), 268_336);
    assert_eq!(plan.kept(), 432 + 640 + (268_336 - 432 - 640) / 2);
    // multiply-adds per image: stem 3·16·9·32² = 442,368; stage 1: six 16·16·9 convs at 32²;
    // stages 2 and 3: a 16→32 (32→64) conv and five 32·32·9 (64·64·9) convs at 16² (8²); fc 640
    let stage1 = 6 * 16 * 16 * 9 * 1024;
    let stage2 = 16 * 32 * 9 * 256 + 5 * 32 * 32 * 9 * 256;
    let stage3 = 32 * 64 * 9 * 64 + 5 * 64 * 64 * 9 * 64;
    let dense = 442_368 + stage1 + stage2 + stage3 + 640;
    assert_eq!(dense, 40_551_040);
    let kept: Vec<usize> = plan.layers.iter().zip(&plan.pruned).map(|(l, p)| l.len - p).collect();
    let (d, k) = structure::macs(&m, &plan.layers, &kept).unwrap();
    assert_eq!((d, k), (dense as u64, (442_368 + (stage1 + stage2 + stage3) / 2 + 640) as u64));
    // a compression target: the smallest share whose exact counts reach it
    let two = filter_plan(&m, Rate::Times(1.5));
    assert!(two.rate() >= 1.5 && two.rate() < 1.6, "{}", two.rate());
    assert!(structure::plan_filters(rate::prunable_layers(&m.store), &m.channel_sets(), Rate::Times(80.0), "resnet20")
        .is_err());
    assert_eq!(structure::removed_channels(16, 0.999), 15, "every set keeps a channel");
}

#[test]
fn two_four_plan_halves_layers_in_whole_quads_and_keeps_the_stem_and_fc_dense() {
    let m = Model::build("resnet20", 10, 0).unwrap();
    let plan = structure::plan_two_four(rate::prunable_layers(&m.store), true).unwrap();
    assert_eq!(plan.structure, Structure::TwoFour);
    for (l, &pruned) in plan.layers.iter().zip(&plan.pruned) {
        let expected = if l.name == "conv1.weight" || l.is_fc { 0 } else { l.len / 2 };
        assert_eq!(pruned, expected, "{} (rows of {})", l.name, l.len / l.shape[0]);
    }
}

/// The Z-step's prox and the projection on ResNet-20's real layout (filter rows and 2:4 layers
/// at their arena offsets), against the f64 references.
#[test]
fn structured_prox_and_projection_match_references_on_resnet20() {
    let m = Model::build("resnet20", 10, 0).unwrap();
    let p = m.store.prunable_len();
    let mut rng = Rng::new(60);
    let mut v = f32_exact(&rng.vec(p).iter().map(|x| x * 0.1).collect::<Vec<_>>());
    let filters = filter_plan(&m, Rate::Percent(40.0));
    let rows: Vec<(usize, usize)> = (filters.cuts.iter())
        .flat_map(|c| {
            let l = &filters.layers[c.producer];
            let row = l.len / c.set.width;
            (0..c.set.width).map(move |i| (l.offset + i * row, row))
        })
        .collect();
    // a filter of zeros (the group soft threshold's 0/0) and ties between two rows
    v[rows[3].0..rows[3].0 + rows[3].1].fill(0.0);
    let copy: Vec<f64> = v[rows[5].0..rows[5].0 + rows[5].1].to_vec();
    v[rows[6].0..rows[6].0 + rows[6].1].copy_from_slice(&copy);
    let vt = tensor(&v, &[p]);
    let z = tensor(&vec![0.0; p], &[p]);
    let tau = 0.03; // ‖row‖ ≈ 0.058·√144: some rows vanish, the others shrink
    let g = Grouping::new(&filters, p).unwrap();
    g.prox(&vt, &z, tau as f32).unwrap();
    assert_close("filter prox", &values(&z), &cpu::group_soft_threshold(&v, &rows, tau), ELEMENTWISE);
    // projection: per channel set the smallest row norms go (ties to the lower row)
    let mask = tensor(&vec![7.0; p], &[p]);
    g.projection_mask(&vt, &mask).unwrap();
    let norms = cpu::group_sum_squares(&v, &rows);
    let mut expected = vec![1.0; p];
    let mut first = 0;
    for c in &filters.cuts {
        let keep = cpu::magnitude_mask(&norms[first..first + c.set.width], &[(0, c.set.width, c.removed)]);
        for (i, &k) in keep.iter().enumerate() {
            let (o, l) = rows[first + i];
            expected[o..o + l].iter_mut().for_each(|e| *e = k);
        }
        first += c.set.width;
    }
    assert_eq!(values(&mask), expected, "filter projection");
    // 2:4: prox and projection over the layers it covers, the rest untouched (prox: z = v)
    let quads = structure::plan_two_four(rate::prunable_layers(&m.store), true).unwrap();
    let layers: Vec<(usize, usize)> =
        (quads.layers.iter().zip(&quads.pruned)).filter(|(_, &k)| k > 0).map(|(l, _)| (l.offset, l.len)).collect();
    let g = Grouping::new(&quads, p).unwrap();
    g.prox(&vt, &z, tau as f32).unwrap();
    assert_close("2:4 prox", &values(&z), &cpu::two_four(&v, &layers, Some(tau)), ELEMENTWISE);
    g.projection_mask(&vt, &mask).unwrap();
    assert_eq!(values(&mask), cpu::two_four(&v, &layers, None), "2:4 projection");
}

/// ADMM-NN's W-step penalty ρ(W − Z + U) lands only on the layers Π prunes (its authors add it
/// only for the layers they prune): on ResNet-20's layout, against the f64 reference, for a
/// weight plan with the fc layer and one middle layer left dense (two runs), the filter plan (the
/// producers only) and 2:4 (the stem and fc uncovered).
#[test]
fn admm_nn_penalty_only_on_the_layers_the_projection_prunes() {
    let m = Model::build("resnet20", 10, 0).unwrap();
    let p = m.store.prunable_len();
    let layers = rate::prunable_layers(&m.store);
    let dense_middle = layers.iter().position(|l| l.name == "layer2.0.conv1.weight").unwrap();
    let fractions: Vec<f64> =
        (0..layers.len()).map(|i| if layers[i].is_fc || i == dense_middle { 0.0 } else { 0.6 }).collect();
    let weights = Plan::new(layers.clone(), fractions);
    let filters = filter_plan(&m, Rate::Percent(40.0));
    let quads = structure::plan_two_four(layers.clone(), true).unwrap();
    // arena order: the stem, the blocks' convolutions, the fc layer last
    let end = |l: &rate::Layer| l.offset + l.len;
    let (stem, fc, last_conv) = (&layers[0], &layers[layers.len() - 1], &layers[layers.len() - 2]);
    assert!(stem.name == "conv1.weight" && fc.is_fc && !last_conv.is_fc);
    let run = |from: &rate::Layer, to: &rate::Layer| (from.offset, end(to) - from.offset);
    let producers: Vec<(usize, usize)> =
        filters.cuts.iter().map(|c| &filters.layers[c.producer]).map(|l| (l.offset, l.len)).collect();
    assert_eq!(producers.len(), 9);
    let cases = [
        ("weight", &weights, vec![run(stem, &layers[dense_middle - 1]), run(&layers[dense_middle + 1], last_conv)]),
        ("filter", &filters, producers),
        ("2:4", &quads, vec![run(&layers[1], last_conv)]),
    ];
    let mut rng = Rng::new(61);
    let v = |rng: &mut Rng| f32_exact(&rng.vec(p));
    for (what, plan, runs) in cases {
        let g = Grouping::new(plan, p).unwrap();
        assert_eq!(g.projected_runs(), runs.as_slice(), "{what}: runs");
        let (w, z, u, grad) = (v(&mut rng), v(&mut rng), v(&mut rng), v(&mut rng));
        let (wt, zt, ut, gt) = (tensor(&w, &[p]), tensor(&z, &[p]), tensor(&u, &[p]), tensor(&grad, &[p]));
        Penalty::new(&g, &wt, &zt, &ut, &gt).unwrap().add(0.37).unwrap();
        let mut expected = grad.clone();
        for &(o, n) in &runs {
            for i in o..o + n {
                expected[i] += 0.37 * (w[i] - z[i] + u[i]);
            }
        }
        assert_close(&format!("{what}: penalty"), &values(&gt), &expected, ELEMENTWISE);
        assert_eq!(values(&gt)[fc.offset..end(fc)], grad[fc.offset..end(fc)], "{what}: the fc layer's gradient");
    }
}

/// Random batch-norm scales, shifts and statistics: a removed channel whose batch norm were not
/// masked would then be a non-zero constant, and the compact network would differ.
fn randomize_batch_norms(m: &Model, rng: &mut Rng) {
    let mut dict = m.store.state_dict().unwrap();
    for (name, (_, v)) in dict.iter_mut() {
        let fill: Option<(f64, f64)> = match name.rsplit('.').next() {
            Some("running_var") => Some((0.5, 2.0)),
            Some("running_mean") | Some("bias") if name.contains("bn") => Some((-0.5, 0.5)),
            Some("weight") if name.contains("bn") => Some((0.5, 1.5)),
            _ => None,
        };
        if let Some((lo, hi)) = fill {
            *v = rng.vec_in(v.len(), lo, hi).iter().map(|&x| x as f32).collect();
        }
    }
    m.store.load_state_dict(&dict, "randomized").unwrap();
}

fn logits(m: &mut Model, x: &Tensor) -> Vec<f64> {
    sasprune::autograd::no_grad(|| values(&m.forward(x, Pass::Eval).unwrap()))
}

#[test]
fn compact_resnet_computes_the_masked_networks_logits() {
    let mut m = Model::build("resnet20", 10, 3).unwrap();
    let mut rng = Rng::new(61);
    randomize_batch_norms(&m, &mut rng);
    let plan = filter_plan(&m, Rate::Percent(40.0));
    let g = Grouping::new(&plan, m.store.prunable_len()).unwrap();
    let w = Tensor::view_into(m.store.params_flat().unwrap().storage().clone(), 0, &[m.store.prunable_len()]).unwrap();
    let (mask, removed) = g.arena_mask(&m, &w).unwrap();
    sasprune::ops::admm::multiply_in_place(&m.store.params_flat().unwrap(), &mask).unwrap();
    assert_eq!(
        removed.iter().map(Vec::len).collect::<Vec<_>>(),
        plan.cuts.iter().map(|c| c.removed).collect::<Vec<_>>()
    );
    // the masked network holds exactly the plan's non-zero weights, its removed bn entries are 0
    let dict = m.store.state_dict().unwrap();
    let nonzero: usize = plan.layers.iter().map(|l| dict[&l.name].1.iter().filter(|&&v| v != 0.0).count()).sum();
    assert_eq!(nonzero, plan.kept());
    let bn = &dict["layer2.1.bn1.weight"].1;
    assert!(removed[4].iter().all(|&c| bn[c] == 0.0) && bn.iter().filter(|&&v| v == 0.0).count() == removed[4].len());
    let x = tensor(&rng.vec(3 * 3 * 32 * 32), &[3, 3, 32, 32]);
    let masked = logits(&mut m, &x);
    let (state, widths) = structure::compact_state(&m, &removed).unwrap();
    assert_eq!(widths, plan.cuts.iter().map(|c| c.set.width - c.removed).collect::<Vec<_>>());
    let mut compact = Model::build_compact("resnet20", 10, &widths, 0).unwrap();
    compact.store.load_state_dict(&state, "compact").unwrap();
    let prunable: usize = (compact.store.entries().iter())
        .filter(|e| e.role == sasprune::nn::Role::PrunableWeight)
        .map(|e| e.numel())
        .sum();
    assert_eq!(prunable, plan.kept(), "the compact network holds exactly the kept weights");
    assert_eq!(compact.widths.as_deref(), Some(&widths[..]));
    // the same function; the GEMMs differ in length, so the f32 sums round differently
    assert_close("compact logits", &logits(&mut compact, &x), &masked, (1e-4, 1e-4));
    // bad widths are refused with the reason
    let e = Model::build_compact("resnet20", 10, &[16; 8], 0).err().unwrap().to_string();
    assert!(e.contains("9 prunable channel sets") && e.contains("8"), "{e}");
    let e = Model::build_compact("resnet20", 10, &[17, 16, 16, 32, 32, 32, 64, 64, 64], 0).err().unwrap().to_string();
    assert!(e.contains("17") && e.contains("layer1.0.conv1.weight"), "{e}");
}

/// AlexNet's chain of channel sets (conv → conv, the last conv → fc1 in 36 columns per channel,
/// fc → fc): the compact network computes the masked one's logits.
#[test]
fn compact_alexnet_computes_the_masked_networks_logits() {
    let mut m = Model::build("alexnet", 10, 4).unwrap();
    // biases start at 0: give every channel one, so hard pruning must remove a channel's bias too
    let mut dict = m.store.state_dict().unwrap();
    let mut rng = Rng::new(62);
    for (_, (_, v)) in dict.iter_mut().filter(|(n, _)| n.ends_with(".bias")) {
        v.iter_mut().for_each(|b| *b = 0.05 * rng.uniform() as f32);
    }
    m.store.load_state_dict(&dict, "biased").unwrap();
    let plan = filter_plan(&m, Rate::Percent(90.0));
    let p = m.store.prunable_len();
    let g = Grouping::new(&plan, p).unwrap();
    let w = Tensor::view_into(m.store.params_flat().unwrap().storage().clone(), 0, &[p]).unwrap();
    let (mask, removed) = g.arena_mask(&m, &w).unwrap();
    sasprune::ops::admm::multiply_in_place(&m.store.params_flat().unwrap(), &mask).unwrap();
    let x = tensor(&rng.vec(2 * 3 * 224 * 224), &[2, 3, 224, 224]);
    let masked = logits(&mut m, &x);
    let (state, widths) = structure::compact_state(&m, &removed).unwrap();
    assert_eq!(widths, [6, 19, 38, 25, 25, 409, 409], "⌈90%⌉ of each set removed");
    let mut compact = Model::build_compact("alexnet", 10, &widths, 0).unwrap();
    compact.store.load_state_dict(&state, "compact").unwrap();
    assert_eq!(compact.store.entry(compact.store.find("classifier.1.weight").unwrap()).shape, [409, 25 * 36]);
    assert_close("compact AlexNet logits", &logits(&mut compact, &x), &masked, (1e-4, 1e-3));
}
