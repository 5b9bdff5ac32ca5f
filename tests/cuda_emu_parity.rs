//! The CUDA kernels on the CPU emulator against the reference.
#![cfg(feature = "cuda-emulator")]
mod common;

use std::sync::OnceLock;

use outlier_attn::cuda_emu::EmuBackend;
use outlier_attn::{Backend, DType, Mask, Problem, Shape, StatsLevel, Variant};

fn backend() -> Option<&'static EmuBackend> {
    static BACKEND: OnceLock<Result<EmuBackend, String>> = OnceLock::new();
    match BACKEND.get_or_init(|| EmuBackend::new().map_err(|e| e.to_string())) {
        Ok(b) => Some(b),
        Err(why) => {
            common::skip_or_fail("cuda-emu", why);
            None
        }
    }
}

#[test]
fn smoke() {
    let Some(b) = backend() else { return };
    for dtype in [DType::Bf16, DType::F16, DType::F32] {
        let problem = Problem::new(Shape::new(1, 2, 1, 20, 30, 64), dtype)
            .with_variant(Variant::KvSink)
            .with_mask(Mask::Causal)
            .with_stats(StatsLevel::HeadsAndKeys);
        let case = common::Case {
            problem,
            spec: Default::default(),
            views: false,
        };
        let t = std::time::Instant::now();
        let r = common::check_case(b, &case);
        eprintln!(
            "{dtype}: {:?} in {:?}",
            r.as_ref().map(|r| r.passed()),
            t.elapsed()
        );
        r.unwrap();
    }
}
