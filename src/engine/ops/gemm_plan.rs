//! What a GEMM plan is made of, shared by the GEMM-based kernels (`matmul`, `conv2d`) and the
//! tuner that chooses among plans (`tune`): the tile shapes, their kernels' WGSL preludes, and
//! [`Plan`]. It depends on nothing above the gpu module, so the tuner and the kernels that ask it
//! import it without importing each other.

/// One tile shape of the GEMM engines: `rows` x `cols` outputs per workgroup of `threads`.
pub struct Tile {
    pub name: &'static str,
    pub rows: usize,
    pub cols: usize,
    pub threads: usize,
    /// Whether it is one of the register-tiled shapes for GPUs with many cores.
    pub gpu: bool,
    /// For the cooperative-matrix shapes, the size S of the S x S x S f16 matrices they need
    /// (0 for the others): see [`Tile::cooperative_fits`].
    pub coop: u32,
    /// The WGSL constants of this shape, then the engine (prepended to the op family's file).
    pub prelude: &'static str,
    pub engine: &'static str,
}

const CPU_ENGINE: &str = include_str!("../../../shaders/tiled_gemm.wgsl");
const WIDE_ENGINE: &str = include_str!("../../../shaders/tiled_gemm_wide.wgsl");
const GPU_ENGINE: &str = include_str!("../../../shaders/tiled_gemm_gpu.wgsl");
const COOP_ENGINE: &str = include_str!("../../../shaders/tiled_gemm_coop.wgsl");

/// A register-tiled shape of tiled_gemm_gpu.wgsl: tx x ty threads, rm x rn outputs each, bc B
/// columns loaded side by side (min(threads, tile columns)), k chunks of 16.
macro_rules! gpu_tile {
    ($name:literal, $tx:literal, $ty:literal, $rm:literal, $rn:literal, $bc:literal) => {
        Tile {
            name: $name,
            rows: $ty * $rm,
            cols: $tx * $rn,
            threads: $tx * $ty,
            gpu: true,
            coop: 0,
            prelude: concat!(
                "const TX: u32 = ",
                stringify!($tx),
                "u; const TY: u32 = ",
                stringify!($ty),
                "u; const RM: u32 = ",
                stringify!($rm),
                "u; const RN: u32 = ",
                stringify!($rn),
                "u; const TK: u32 = 16u; const BC: u32 = ",
                stringify!($bc),
                "u;"
            ),
            engine: GPU_ENGINE,
        }
    };
}

/// A shape of tiled_gemm_coop.wgsl: `$cs`-sized f16 cooperative matrices, a `$tm` x `$tn`
/// tile of C per workgroup of `$threads` threads, K in chunks of 32, up to 4 blocks per subgroup.
macro_rules! coop_tile {
    ($name:literal, $cs:literal, $tm:literal, $tn:literal, $threads:literal) => {
        Tile {
            name: $name,
            rows: $tm,
            cols: $tn,
            threads: $threads,
            gpu: false,
            coop: $cs,
            prelude: concat!(
                // (global directives: Kernel::wgsl moves them to the top of the text)
                "enable f16;\nenable wgpu_cooperative_matrix;\ndiagnostic(off, derivative_uniformity);\n",
                "const CS: u32 = ",
                stringify!($cs),
                "u; const TM: u32 = ",
                stringify!($tm),
                "u; const TN: u32 = ",
                stringify!($tn),
                "u; const TK: u32 = 32u; const THREADS: u32 = ",
                stringify!($threads),
                "u;\n",
                "alias CA = coop_mat",
                stringify!($cs),
                "x",
                stringify!($cs),
                "<f16, A>; alias CB = coop_mat",
                stringify!($cs),
                "x",
                stringify!($cs),
                "<f16, B>; alias CC = coop_mat",
                stringify!($cs),
                "x",
                stringify!($cs),
                "<f32, C>;"
            ),
            engine: COOP_ENGINE,
        }
    };
}

/// Every tile shape a GEMM-based kernel is declared in (`gemm_kernels!`, same order). The first
/// three (64 threads, scalar shared reads) suit CPU drivers such as lavapipe; the `g*` shapes
/// (128-256 threads, 4x4 register blocks read as vec4) suit GPUs; the `c*` shapes run mixed
/// precision's f16 products on cooperative matrices where the adapter has them (`c8*` on 8x8x8
/// matrices, `c16*` on 16x16x16): `*h` 256 threads, each subgroup one to four blocks of C by its
/// width; `*q` 64x64 or 32x64 in fewer threads, so each subgroup holds 4 blocks and loads their
/// shared B matrix once; `*n` 8 or 16 rows for the layers with few output channels, whose blocks
/// share their A matrix; `c8s` 32x32, 16 blocks, so that subgroups of up to 64 threads hold them,
/// as wgpu reports Apple GPUs' to be. Which one runs is a [`Plan`]: fixed defaults per device
/// type, or the autotuner's measured choice (src/engine/tune/).
pub const TILES: [Tile; 17] = [
    Tile { name: "wide16", rows: 16, cols: 256, threads: 64, gpu: false, coop: 0, prelude: "", engine: WIDE_ENGINE },
    Tile {
        name: "rm4",
        rows: 32,
        cols: 64,
        threads: 64,
        gpu: false,
        coop: 0,
        prelude: "const RM: u32 = 4u;",
        engine: CPU_ENGINE,
    },
    Tile {
        name: "rm8",
        rows: 64,
        cols: 64,
        threads: 64,
        gpu: false,
        coop: 0,
        prelude: "const RM: u32 = 8u;",
        engine: CPU_ENGINE,
    },
    gpu_tile!("g16", 32, 4, 4, 8, 128),
    gpu_tile!("g16s", 64, 4, 4, 4, 256),
    gpu_tile!("g32", 16, 8, 4, 8, 128),
    gpu_tile!("g32s", 32, 8, 4, 4, 128),
    gpu_tile!("g64", 16, 16, 4, 4, 64),
    gpu_tile!("g64w", 16, 8, 8, 8, 128),
    gpu_tile!("g128", 16, 16, 8, 8, 128),
    coop_tile!("c8h", 8, 32, 64, 256),
    coop_tile!("c16h", 16, 64, 64, 256),
    coop_tile!("c8q", 8, 32, 64, 64),
    coop_tile!("c16q", 16, 64, 64, 128),
    coop_tile!("c8n", 8, 8, 128, 64),
    coop_tile!("c16n", 16, 16, 128, 128),
    coop_tile!("c8s", 8, 32, 32, 256),
];

/// Blocks of C each subgroup of a cooperative-matrix tile holds (tiled_gemm_coop.wgsl's acc0-3).
const COOP_SLOTS: u32 = 4;
/// K-depth of a cooperative-matrix tile's chunk (its prelude's TK).
const COOP_TK: u32 = 32;

/// K-depth of a register tile's chunk (`gpu_tile!`'s TK).
const GPU_TK: u32 = 16;
/// K-depth of the 64-thread tiles' chunk (tiled_gemm.wgsl's and tiled_gemm_wide.wgsl's TK).
const CPU_TK: u32 = 32;

impl Tile {
    /// Bytes of workgroup memory its engine declares (the shared A, B and C tiles): an adapter
    /// that gives a workgroup less cannot build its kernels. WebGPU guarantees 16,384; `g16` and
    /// `g16s` need 17,664, `g128` 16,640, `c16h` / `c16q` 27,136 and `c16n` 18,432, which every
    /// desktop GPU gives (NVIDIA 48 KiB, AMD, Intel and Apple 32–64).
    pub fn workgroup_bytes(&self) -> u32 {
        let (rows, cols) = (self.rows as u32, self.cols as u32);
        if self.coop != 0 {
            // f16 A and B tiles, f32 C tile, each row padded by 16 bytes (tiled_gemm_coop.wgsl)
            (rows * (COOP_TK + 8) + COOP_TK * (cols + 8)) * 2 + rows * (cols + 4) * 4
        } else if self.gpu {
            // vec4 A tile [k][m / 4 + 1] (one vec4 of padding a row) and B tile [k][n / 4]
            GPU_TK * (rows / 4 + 1 + cols / 4) * 16
        } else if self.engine == WIDE_ENGINE {
            // tiled_gemm_wide.wgsl shares A only (B is read from its buffer); (the engine's text is
            // compared: a `const` has no one address)
            CPU_TK * rows * 4
        } else {
            CPU_TK * (rows + cols) * 4
        }
    }

    /// Whether this tile's kernels can be built on an adapter that gives a workgroup
    /// `storage_max` bytes.
    pub fn fits_workgroup(&self, storage_max: u32) -> bool {
        self.workgroup_bytes() <= storage_max
    }

    /// Whether this cooperative-matrix tile can run on an adapter that offers f16 matrices of
    /// `sizes`, runs subgroups of up to `subgroup_max` threads and gives a workgroup
    /// `storage_max` bytes: its matrix size is offered, its subgroups hold all its blocks (see
    /// tiled_gemm_coop.wgsl) and its shared tiles fit. False for the other tiles.
    pub fn cooperative_fits(&self, sizes: &[u32], subgroup_max: u32, storage_max: u32) -> bool {
        if self.coop == 0 || !sizes.contains(&self.coop) {
            return false;
        }
        let (rows, cols, threads) = (self.rows as u32, self.cols as u32, self.threads as u32);
        let blocks = (rows / self.coop) * (cols / self.coop);
        let subgroups = threads / subgroup_max.max(1);
        blocks <= COOP_SLOTS * subgroups && self.fits_workgroup(storage_max)
    }
}

/// Declares a GEMM-based kernel once per tile shape of [`TILES`] (same order).
macro_rules! gemm_kernels {
    ($label:literal, $file:literal, $section:expr) => {
        $crate::ops::gemm_plan::gemm_kernels!(@each $label, $file, $section,
            [0 "wide16", 1 "rm4", 2 "rm8", 3 "g16", 4 "g16s", 5 "g32", 6 "g32s", 7 "g64", 8 "g64w", 9 "g128",
             10 "c8h", 11 "c16h", 12 "c8q", 13 "c16q", 14 "c8n", 15 "c16n", 16 "c8s"])
    };
    (@each $label:literal, $file:literal, $section:expr, [$($i:literal $name:literal),*]) => {
        [$($crate::gpu::Kernel {
            label: concat!($label, ".", $name),
            prelude: &[$crate::ops::gemm_plan::TILES[$i].prelude, $crate::ops::gemm_plan::TILES[$i].engine],
            source: include_str!(concat!("../../../shaders/", $file)),
            section: $section,
            entry: "main",
        }),*]
    };
}
pub(crate) use gemm_kernels;

/// The plan "tiles" that stand for a family's non-GEMM kernels, where it has them for a product
/// (3x3 stride-1 convolutions), numbered past the GEMM tiles: the direct kernel ...
pub const DIRECT: usize = TILES.len();
/// ... and Winograd F(2x2, 3x3).
pub const WINOGRAD: usize = TILES.len() + 1;
/// Their names in plans and in the tuner's cache.
pub const DIRECT_NAME: &str = "direct3x3";
pub const WINOGRAD_NAME: &str = "winograd2x2";

/// The name of a plan's tile (a GEMM tile, [`DIRECT_NAME`] or [`WINOGRAD_NAME`]).
pub fn tile_name(tile: usize) -> &'static str {
    match tile {
        DIRECT => DIRECT_NAME,
        WINOGRAD => WINOGRAD_NAME,
        _ => TILES[tile].name,
    }
}

/// The plan tile of a name (a GEMM tile, [`DIRECT_NAME`] or [`WINOGRAD_NAME`]).
pub fn tile_index(name: &str) -> Option<usize> {
    (TILES.iter().position(|t| t.name == name))
        .or((name == DIRECT_NAME).then_some(DIRECT))
        .or((name == WINOGRAD_NAME).then_some(WINOGRAD))
}

/// How a GEMM runs: which tile shape, and into how many K-splits (partial products summed by a
/// second kernel; 1 = none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Plan {
    pub tile: usize,
    pub splits: usize,
}
