//! The launch plan: everything a forward pass needs to launch its kernels, computed once in
//! plain Rust from a validated problem, for every executor (the GPU through cudarc, the CPU
//! through the emulator): the specialisation, each kernel's grid, block and dynamic shared
//! memory, the workspace layout, and the argument block with the buffers' addresses.

use super::params::{KernelParams, TensorLayout};
use super::spec::{
    Arch, CHANNEL_ENTRY, CHANNEL_RECORD, FINALIZE_ENTRY, KEY_MASS_ENTRY, PARTIAL_COUNT, SCAN_ROWS,
    STATS_THREADS, Specialization,
};
use crate::contract::{Error, Gate, GateGranularity, Mask, Result, Validated, Variant};

/// The backend name in refusals: the plan's limits are the CUDA kernels', on either executor.
const BACKEND: &str = "cuda";

/// One kernel launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Entry point in the module.
    pub entry: &'static str,
    /// Grid (x, y, z).
    pub grid: [u32; 3],
    /// Threads per block (x only).
    pub threads: u32,
    /// Dynamic shared memory in bytes.
    pub dynamic_smem: usize,
}

/// Where the parts of the workspace lie, in f32 elements from its start: the forward kernel's
/// per-query-block partial records, the row weights of ClippedSoftmax, the channel scan's
/// chunk records (stats.cu finds the chunks after the row weights), then the per-query-block
/// key mass of `HeadsAndKeys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WorkspaceLayout {
    /// Floats of partial records (`[B, Hq, m_blocks, PARTIAL_COUNT]`), at 0.
    pub partials: usize,
    /// Floats of row weights (`[B, Hq, Nq]`), after the partials.
    pub row_weights: usize,
    /// Floats of chunk records, after the row weights.
    pub chunks: usize,
    /// Floats of per-query-block key mass (`[B, Hq, m_blocks, Nk]`), after the chunks.
    pub key_partials: usize,
}

impl WorkspaceLayout {
    /// Floats the workspace must hold (0 without statistics).
    pub fn len(&self) -> usize {
        self.partials + self.row_weights + self.chunks + self.key_partials
    }

    /// Whether the call needs no workspace.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The addresses of one call's buffers: device addresses on a GPU, host addresses in the
/// emulator; 0 where a buffer is absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    /// Q, K, V, O.
    pub q: u64,
    /// K.
    pub k: u64,
    /// V.
    pub v: u64,
    /// O.
    pub o: u64,
    /// LSE.
    pub lse: u64,
    /// k′.
    pub k_sink: u64,
    /// v′ (ContextBias, KvSink) or the bias (ValueBias).
    pub v_param: u64,
    /// θ.
    pub sink_logits: u64,
    /// z.
    pub gate: u64,
    /// The statistics record.
    pub stats: u64,
    /// The key mass.
    pub key_mass: u64,
    /// The workspace (at least [`WorkspaceLayout::len`] floats).
    pub workspace: u64,
}

/// Everything one forward pass launches.
#[derive(Clone, Debug)]
pub struct LaunchPlan {
    /// The module.
    pub spec: Specialization,
    /// The launches, in stream order.
    pub launches: Vec<Launch>,
    /// The workspace the launches use.
    pub workspace: WorkspaceLayout,
    scalars: KernelParams,
    elem_bytes: u64,
}

impl LaunchPlan {
    /// The plan of `checked` on a device of `arch`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for more than 65535 (batch, head) pairs (the grid's y limit), a
    /// sequence above 2^31 tokens, or a grid above 2^32 blocks.
    pub fn new(checked: &Validated, arch: Arch) -> Result<LaunchPlan> {
        // The engine-shaped calls of DESIGN.md section 6 are not implemented by these kernels
        // yet: refused by name.
        checked.require_dense(BACKEND)?;
        let problem = checked.problem();
        let s = checked.shape();
        let spec = Specialization::select(problem.dtype, s.head_dim, arch);
        let heads = s.batch * s.q_heads;
        let unsupported = |reason: String| Error::Unsupported {
            backend: BACKEND.to_string(),
            reason,
        };
        if heads > 65535 {
            return Err(unsupported(format!(
                "batch x heads = {heads}, above the grid limit 65535"
            )));
        }
        if [s.q_len, s.kv_len].iter().any(|&n| n > i32::MAX as usize) {
            return Err(unsupported("a sequence above 2^31 tokens".to_string()));
        }
        let to_u32 = |x: usize| u32::try_from(x).map_err(|_| unsupported(format!("grid of {x}")));
        let m_blocks = s.q_len.div_ceil(spec.block_m());
        let scan_chunks = s.q_len.max(s.kv_len).div_ceil(SCAN_ROWS);
        let stats_on = problem.stats.heads();
        let workspace = if stats_on {
            WorkspaceLayout {
                partials: heads * m_blocks * PARTIAL_COUNT,
                row_weights: heads * s.q_len,
                chunks: heads * scan_chunks * CHANNEL_RECORD,
                key_partials: if problem.stats.keys() {
                    heads * m_blocks * s.kv_len
                } else {
                    0
                },
            }
        } else {
            WorkspaceLayout::default()
        };
        let heads = heads as u32;
        let mut launches = vec![Launch {
            entry: spec.entry(),
            grid: [to_u32(m_blocks)?, heads, 1],
            threads: spec.threads(),
            dynamic_smem: spec.forward_smem_bytes(s.head_dim),
        }];
        if stats_on {
            launches.push(Launch {
                entry: CHANNEL_ENTRY,
                grid: [to_u32(scan_chunks)?, heads, 1],
                threads: STATS_THREADS,
                dynamic_smem: 0,
            });
            launches.push(Launch {
                entry: FINALIZE_ENTRY,
                grid: [heads, 1, 1],
                threads: STATS_THREADS,
                dynamic_smem: 0,
            });
        }
        if problem.stats.keys() {
            launches.push(Launch {
                entry: KEY_MASS_ENTRY,
                grid: [to_u32(s.kv_len.div_ceil(STATS_THREADS as usize))?, heads, 1],
                threads: STATS_THREADS,
                dynamic_smem: 0,
            });
        }
        Ok(LaunchPlan {
            spec,
            launches,
            workspace,
            scalars: kernel_params(checked, m_blocks),
            elem_bytes: problem.dtype.size_bytes() as u64,
        })
    }

    /// The argument block every launch of the plan takes, with the buffers at `a`. The
    /// workspace parts follow [`WorkspaceLayout`]; `aligned` is set when every row of Q, K and V
    /// starts 16-byte aligned (cp.async moves 16 bytes).
    pub(crate) fn arguments(&self, a: &Addresses) -> KernelParams {
        let mut p = self.scalars;
        p.q = a.q;
        p.k = a.k;
        p.v = a.v;
        p.o = a.o;
        p.lse = a.lse;
        p.k_sink = a.k_sink;
        p.v_param = a.v_param;
        p.sink_logits = a.sink_logits;
        p.gate = a.gate;
        p.stats = a.stats;
        p.key_mass = a.key_mass;
        if !self.workspace.is_empty() {
            p.partials = a.workspace;
            let w = &self.workspace;
            p.row_weight_sum = a.workspace + (w.partials * 4) as u64;
            if w.key_partials > 0 {
                p.key_mass_partials = a.workspace + ((w.len() - w.key_partials) * 4) as u64;
            }
        }
        let elem = self.elem_bytes;
        p.aligned = [(a.q, &p.lq), (a.k, &p.lk), (a.v, &p.lv)]
            .iter()
            .all(|(ptr, l)| {
                ptr % 16 == 0
                    && [l.offset, l.batch, l.seq, l.head]
                        .iter()
                        .all(|&x| x.wrapping_mul(elem) % 16 == 0)
            }) as i32;
        p
    }

    /// The most dynamic shared memory any specialisation's forward kernel takes (at d = 256):
    /// what a GPU executor opts the function into.
    pub fn max_forward_smem(spec: Specialization) -> usize {
        spec.forward_smem_bytes(256)
    }
}

/// The scalar part of the kernel arguments, from a validated problem.
fn kernel_params(checked: &Validated, m_blocks: usize) -> KernelParams {
    let problem = checked.problem();
    let s = checked.shape();
    let l = checked.layouts();
    let (mut zeta, mut gamma) = (1.0, 0.0);
    let (mut gate_kind, mut per_channel) = (0, 0);
    let variant = match problem.variant {
        Variant::Softmax => 0,
        Variant::ValueBias => 1,
        Variant::ContextBias => 2,
        Variant::KvSink => 3,
        Variant::ContextScale { gate, granularity } => {
            gate_kind = match gate {
                Gate::TwoSigmoid => 0,
                Gate::Sigmoid => 1,
                Gate::Identity => 2,
            };
            per_channel = (granularity == GateGranularity::PerChannel) as i32;
            4
        }
        Variant::Sigmoid { .. } => 5,
        Variant::LogitSink => 6,
        Variant::Softmax1 => 7,
        Variant::ClippedSoftmax { zeta: z, gamma: g } => {
            (zeta, gamma) = (z, g);
            8
        }
    };
    // `new` refused sequences above 2^31; heads fit the grid limit; d <= 256.
    let int = |x: usize| x as i32;
    KernelParams {
        lq: TensorLayout::from(&l.q),
        lk: TensorLayout::from(&l.k),
        lv: TensorLayout::from(&l.v),
        lo: TensorLayout::from(&l.o),
        batch: int(s.batch),
        q_heads: int(s.q_heads),
        kv_heads: int(s.kv_heads),
        q_len: int(s.q_len),
        kv_len: int(s.kv_len),
        head_dim: int(s.head_dim),
        group: int(s.group_size()),
        variant,
        causal: (problem.mask == Mask::Causal) as i32,
        has_softcap: checked.softcap().is_some() as i32,
        gate_kind,
        gate_per_channel: per_channel,
        aligned: 0,
        m_blocks: int(m_blocks),
        scale: checked.scale(),
        softcap: checked.softcap().unwrap_or(1.0),
        sigmoid_bias: checked.sigmoid_bias(),
        clip_zeta: zeta,
        clip_gamma: gamma,
        stats_on: problem.stats.heads() as i32,
        ..KernelParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::{InputSpec, random_inputs};
    use crate::{DType, Problem, Shape, StatsLevel};

    fn plan_of(problem: &Problem) -> LaunchPlan {
        let inputs = random_inputs(problem, &InputSpec::default());
        let checked = inputs.validate(problem).expect("valid");
        LaunchPlan::new(&checked, Arch::SM90).expect("plan")
    }

    /// The codes must follow `VariantCode` and `GateCode` in cuda/common.cuh.
    #[test]
    fn variants_and_scalars_reach_the_kernel_arguments() {
        let shape = Shape::new(2, 4, 2, 5, 7, 24);
        let base = Problem::new(shape, DType::F16);
        let codes: Vec<i32> = Variant::all_default()
            .iter()
            .map(|&v| plan_of(&base.with_variant(v)).scalars.variant)
            .collect();
        assert_eq!(codes, (0..9).collect::<Vec<_>>());

        let p = plan_of(
            &base
                .with_variant(Variant::ContextScale {
                    gate: Gate::Identity,
                    granularity: GateGranularity::PerChannel,
                })
                .with_mask(Mask::Causal)
                .with_softcap(30.0)
                .with_stats(StatsLevel::Heads),
        )
        .scalars;
        assert_eq!((p.gate_kind, p.gate_per_channel), (2, 1));
        assert_eq!((p.causal, p.has_softcap, p.softcap), (1, 1, 30.0));
        assert_eq!((p.group, p.m_blocks, p.stats_on), (2, 1, 1));
        assert_eq!(p.scale, 1.0 / 24f32.sqrt());

        let p = plan_of(&base.with_variant(Variant::ClippedSoftmax {
            zeta: 1.1,
            gamma: -0.05,
        }))
        .scalars;
        assert_eq!((p.clip_zeta, p.clip_gamma), (1.1, -0.05));
        let p = plan_of(&base.with_variant(Variant::Sigmoid { bias: None })).scalars;
        assert_eq!(p.sigmoid_bias, -(7f32).ln());
        assert_eq!(
            p.lk.seq,
            (2 * 24) as u64,
            "K strides come from its own layout"
        );
    }

    #[test]
    fn launches_and_workspace_follow_the_statistics_level() {
        let shape = Shape::new(2, 4, 2, 130, 300, 128);
        let base = Problem::new(shape, DType::Bf16);
        let off = plan_of(&base);
        assert_eq!(off.launches.len(), 1);
        assert_eq!(
            off.launches[0].grid,
            [3, 8, 1],
            "ceil(130 / 64) query blocks, B·Hq"
        );
        assert_eq!(off.launches[0].entry, "attention_tc");
        assert!(off.workspace.is_empty());
        let keys = plan_of(&base.with_stats(StatsLevel::HeadsAndKeys));
        let entries: Vec<_> = keys.launches.iter().map(|l| l.entry).collect();
        assert_eq!(
            entries,
            [
                "attention_tc",
                "channel_partials",
                "finalize_stats",
                "key_mass"
            ]
        );
        assert_eq!(keys.launches[1].grid, [3, 8, 1], "ceil(300 / 128) chunks");
        assert_eq!(
            keys.launches[3].grid,
            [2, 8, 1],
            "ceil(300 / 256) key blocks"
        );
        assert_eq!(
            keys.workspace,
            WorkspaceLayout {
                partials: 8 * 3 * PARTIAL_COUNT,
                row_weights: 8 * 130,
                chunks: 8 * 3 * CHANNEL_RECORD,
                key_partials: 8 * 3 * 300,
            }
        );
        let a = Addresses {
            q: 0x1000,
            k: 0x2000,
            v: 0x3000,
            workspace: 0x10000,
            ..Addresses::default()
        };
        let p = keys.arguments(&a);
        assert_eq!(p.partials, 0x10000);
        assert_eq!(p.row_weight_sum, 0x10000 + 4 * 8 * 3 * PARTIAL_COUNT as u64);
        let before_keys = 8 * 3 * PARTIAL_COUNT + 8 * 130 + 8 * 3 * CHANNEL_RECORD;
        assert_eq!(p.key_mass_partials, 0x10000 + 4 * before_keys as u64);
        assert_eq!(p.aligned, 1);
        assert_eq!(keys.arguments(&Addresses { k: 0x2002, ..a }).aligned, 0);
    }
}
