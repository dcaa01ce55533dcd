//! sasprune on the smallest GPU it may meet: a device opened with the limits every WebGPU
//! adapter guarantees (`SASPRUNE_LIMITS=webgpu`: 16 KiB of workgroup memory, 128 MiB storage
//! bindings, 256 MiB buffers, 256-byte storage offset alignment, 8 storage buffers per stage),
//! whatever the adapter offers. Every GEMM plan, forced or tuned, either builds within them or
//! gives way to one that does, with the reference's numbers; a ResNet trains and evaluates.
//! Its own test binary: the device is the whole process's.

mod common;
use common::*;
use sasprune::gpu::{self, Gpu, GpuOptions};
use sasprune::ops::matmul;
use sasprune::tune::{self, Mode, Settings};

const WEBGPU_WORKGROUP_BYTES: u32 = 16384;

fn webgpu_device() -> &'static Gpu {
    gpu::init(&GpuOptions { limits: Some("webgpu".into()), ..GpuOptions::from_env() }).unwrap()
}

/// Every plan tile the products ran on builds within WebGPU's workgroup memory.
fn assert_within_webgpu(plans: &[(&str, matmul::Plan)]) {
    for (family, plan) in plans {
        if let Some(tile) = matmul::TILES.get(plan.tile) {
            assert!(
                tile.workgroup_bytes() <= WEBGPU_WORKGROUP_BYTES,
                "{family} ran on {} ({} bytes of workgroup memory)",
                tile.name,
                tile.workgroup_bytes()
            );
        }
    }
}

#[test]
fn the_device_is_opened_with_webgpus_limits() {
    let g = webgpu_device();
    let a = &g.adapter;
    assert_eq!(a.max_workgroup_storage, WEBGPU_WORKGROUP_BYTES, "{a}");
    assert!(a.max_buffer_size <= 256 << 20 && a.max_storage_binding <= 128 << 20, "{a}");
    assert!(g.storage_alignment() >= 256 && g.max_workgroups_per_dim() <= 65535);
}

#[test]
fn every_gemm_plan_runs_within_them_or_gives_way() {
    webgpu_device();
    // the 16x256 and 128x128 register tiles need more than 16 KiB: forced, they give way to the
    // default plan (as a plan the adapter cannot run always does), which fits
    for tile in 0..=matmul::WINOGRAD {
        let ((), plans) = matmul::plans_used(|| {
            matmul::with_plan(tile, 3, || {
                let mut rng = Rng::new(40 + tile as u64);
                conv_case(&mut rng, geom(2, 20, 7, 9, 37, 3, 3, 1, 1), true);
                conv_case(&mut rng, geom(3, 9, 9, 8, 70, 3, 3, 2, 1), false);
                conv_case(&mut rng, geom(2, 16, 7, 8, 16, 3, 3, 1, 1), false);
                gemm_case(&mut rng, 130, 300, 140, true, false);
            })
        });
        assert!(!plans.is_empty());
        assert_within_webgpu(&plans);
        eprintln!("plan {}: ok", matmul::tile_name(tile));
    }
}

#[test]
fn a_resnet_tuned_on_every_candidate_trains_and_evaluates() {
    webgpu_device();
    // the tuner times every candidate plan of every product (GPU tiles included, as on a GPU)
    let dir = std::env::temp_dir().join(format!("sasprune-webgpu-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    tune::configure(Settings { mode: Some(Mode::On), cache: Some(dir.join("tune.json")) });
    let (rate, plans) = matmul::plans_used(|| sasprune::bench::step_rate("resnet20", 4, 1));
    let rate = rate.unwrap();
    assert!(rate.train_images_per_second > 0.0 && rate.eval_images_per_second > 0.0);
    assert!(!plans.is_empty());
    assert_within_webgpu(&plans);
    assert!(tune::measured() > 0, "the tuner measured the step's products");
    std::fs::remove_dir_all(&dir).ok();
}
