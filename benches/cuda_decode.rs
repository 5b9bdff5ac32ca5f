//! CUDA decode bandwidth: bytes of K/V read per second over the device's measured copy
//! bandwidth (scripts/h200/decode.sh runs it, then decode_compare.py times PyTorch and
//! FlashInfer on the same shapes).
//!
//! - the device's copy bandwidth: a 4 GiB device-to-device copy, (read + written bytes) / time;
//! - decode (Nq = 1, no mask), bf16, Hq/Hkv = 64/8 and 32/8, d = 64 and 128, B = 1, 4, 16, 64,
//!   Nk = 4k..128k, with the K/V cache dense and paged (16- and 64-token pages, each sequence's
//!   pages scattered through the cache);
//! - a gpt-oss layer (LogitSink, 64/8 heads, d = 64): a 128-token sliding window (left 127,
//!   causal) against the same layer dense, at 8k and 32k tokens, prefill (Nq = Nk) and decode.
//!
//! Each case prints one `outlier-attn-decode {json}` line (and appends the JSON to
//! `OUTLIER_ATTN_BENCH_OUT` when set); a case the kernels refuse (a layout or mask not in this
//! build) or that does not fit in memory prints a line with its reason and the run goes on, so
//! a partial build still measures what it has. `OUTLIER_ATTN_DECODE_QUICK=1` keeps B <= 4 and
//! Nk <= 32k (a smoke run); `OUTLIER_ATTN_DECODE_MAX_GB` caps the K/V bytes of one case
//! (default 40); `OUTLIER_ATTN_DECODE_CASES` (comma-separated parts of case names) runs only
//! the cases whose name contains one of them (to profile one kernel, e.g. under Nsight
//! Compute). Without a GPU it prints why and measures nothing.

use std::sync::Arc;

mod common;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use outlier_attn::cuda::{CudaAttention, DeviceArgs, DeviceParams, Workspace, detect};
use outlier_attn::{
    DType, KvSeqs, Mask, Problem, QuerySeqs, SeqIndices, Sequences, Shape, Variant,
};

/// Elements of the random chunk that fills large buffers by device copies.
const FILL_CHUNK: usize = 1 << 22;

fn emit(json: String) {
    println!("outlier-attn-decode {json}");
    common::append_json(&json);
}

/// A case that was not measured, and why.
fn skipped(case: &str, why: &str) {
    let why = why.replace(['"', '\\', '\n'], " ");
    emit(format!(
        "{{\"kind\":\"skipped\",\"case\":\"{case}\",\"why\":\"{why}\"}}"
    ));
}

/// Values in [-1, 1) (benches/common), as bf16.
fn fill(len: usize, seed: u64) -> Vec<bf16> {
    common::lcg_fill(len, seed)
        .into_iter()
        .map(bf16::from_f32)
        .collect()
}

/// A device buffer of `len` elements: one random chunk uploaded, then copied over the rest.
fn device_buffer(
    stream: &Arc<CudaStream>,
    len: usize,
    seed: u64,
) -> Result<CudaSlice<bf16>, String> {
    let chunk = stream
        .clone_htod(&fill(FILL_CHUNK.min(len), seed))
        .map_err(|e| e.to_string())?;
    let mut out = stream
        .alloc_zeros::<bf16>(len)
        .map_err(|e| format!("{len} elements: {e}"))?;
    let mut at = 0;
    while at < len {
        let n = chunk.len().min(len - at);
        stream
            .memcpy_dtod(&chunk.slice(..n), &mut out.slice_mut(at..at + n))
            .map_err(|e| e.to_string())?;
        at += n;
    }
    Ok(out)
}

/// Seconds per call of `f` over `iters` calls after `warmup`, by CUDA events.
fn time(
    stream: &Arc<CudaStream>,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<(), String>,
) -> Result<f64, String> {
    for _ in 0..warmup {
        f()?;
    }
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let start = stream.record_event(flags).map_err(|e| e.to_string())?;
    for _ in 0..iters {
        f()?;
    }
    let end = stream.record_event(flags).map_err(|e| e.to_string())?;
    end.synchronize().map_err(|e| e.to_string())?;
    let ms = start.elapsed_ms(&end).map_err(|e| e.to_string())?;
    Ok(f64::from(ms) / 1e3 / iters as f64)
}

/// (read + written bytes) per second of a 4 GiB device-to-device copy.
fn copy_bandwidth(stream: &Arc<CudaStream>) -> Result<f64, String> {
    let len = 2usize << 30; // bf16 elements: 4 GiB
    let src = device_buffer(stream, len, 1)?;
    let mut dst = stream.alloc_zeros::<bf16>(len).map_err(|e| e.to_string())?;
    let seconds = time(stream, 2, 10, || {
        stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(|e| e.to_string())
    })?;
    Ok(2.0 * (len * 2) as f64 / seconds)
}

/// One timed configuration.
struct Case {
    label: String,
    problem: Problem,
    /// Tokens per page; `None`: the dense cache.
    page_size: Option<usize>,
}

fn decode_cases(quick: bool) -> Vec<Case> {
    let mut out = Vec::new();
    let batches: &[usize] = if quick { &[1, 4] } else { &[1, 4, 16, 64] };
    let lens: &[usize] = if quick {
        &[4096, 32768]
    } else {
        &[4096, 8192, 16384, 32768, 65536, 131072]
    };
    for page_size in [None, Some(16), Some(64)] {
        for (hq, hkv) in [(64, 8), (32, 8)] {
            for d in [64, 128] {
                for &b in batches {
                    for &nk in lens {
                        let problem = Problem::new(Shape::new(b, hq, hkv, 1, nk, d), DType::Bf16);
                        let layout = page_size.map_or("dense".to_string(), |p| format!("paged{p}"));
                        out.push(Case {
                            label: format!("decode/{layout}/h{hq}-{hkv}/d{d}/b{b}/nk{nk}"),
                            problem,
                            page_size,
                        });
                    }
                }
            }
        }
    }
    out
}

/// gpt-oss's attention layer at `n` tokens: prefill (Nq = Nk = n) and decode (Nq = 1), each
/// with the 128-token window and dense.
fn gpt_oss_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for n in [8192, 32768] {
        for (what, nq) in [("prefill", n), ("decode", 1)] {
            for (mask_name, mask) in [
                ("window128", Mask::window(Some(127), Some(0))),
                ("dense", Mask::Causal),
            ] {
                let problem = Problem::new(Shape::new(1, 64, 8, nq, n, 64), DType::Bf16)
                    .with_variant(Variant::LogitSink)
                    .with_mask(mask);
                out.push(Case {
                    label: format!("gpt-oss/{what}/{mask_name}/n{n}"),
                    problem,
                    page_size: None,
                });
            }
        }
    }
    out
}

fn mask_json(mask: Mask) -> String {
    let (left, right) = mask.bounds();
    let side = |x: Option<usize>| x.map_or("null".to_string(), |v| v.to_string());
    format!("[{},{}]", side(left), side(right))
}

/// A permutation of 0..n from a fixed LCG (Fisher-Yates).
fn permutation(n: usize, seed: u64) -> Vec<i32> {
    let mut out: Vec<i32> = (0..n as i32).collect();
    let mut x = seed | 1;
    for i in (1..n).rev() {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        out.swap(i, (x >> 33) as usize % (i + 1));
    }
    out
}

/// Runs one case: K/V dense, or paged with each sequence's pages scattered through the cache.
fn measure(
    attn: &CudaAttention,
    stream: &Arc<CudaStream>,
    case: &Case,
    copy: f64,
) -> Result<(), String> {
    let mut p = case.problem;
    let s = p.shape;
    let q_len = s.batch * s.q_len * s.q_heads * s.head_dim;
    let mut kv_len = s.batch * s.kv_len * s.kv_heads * s.head_dim;
    let mut indices: Option<(CudaSlice<i32>, CudaSlice<i32>)> = None;
    if let Some(page_size) = case.page_size {
        let max_pages = s.kv_len.div_ceil(page_size);
        let pages = s.batch * max_pages;
        p = p.with_seqs(Sequences {
            q: QuerySeqs::Dense,
            kv: KvSeqs::Paged {
                pages,
                page_size,
                max_pages,
            },
        });
        kv_len = pages * page_size * s.kv_heads * s.head_dim;
        let upload = |x: &[i32]| stream.clone_htod(x).map_err(|e| e.to_string());
        indices = Some((
            upload(&vec![s.kv_len as i32; s.batch])?,
            upload(&permutation(pages, 5))?,
        ));
    }
    let p = &p;
    let s = &p.shape;
    let q = device_buffer(stream, q_len, 2)?;
    let k = device_buffer(stream, kv_len, 3)?;
    let v = device_buffer(stream, kv_len, 4)?;
    let mut o = stream
        .alloc_zeros::<bf16>(q_len)
        .map_err(|e| e.to_string())?;
    let mut lse = stream
        .alloc_zeros::<f32>(s.lse_len())
        .map_err(|e| e.to_string())?;
    let theta = stream
        .clone_htod(&vec![0.5f32; s.q_heads])
        .map_err(|e| e.to_string())?;
    let mut workspace = Workspace::new();
    let mut call = || {
        let mut args = DeviceArgs::dense(
            p,
            q.as_view(),
            k.as_view(),
            v.as_view(),
            o.as_view_mut(),
            lse.as_view_mut(),
        )
        .with_layouts(p.contiguous_layouts());
        if let Some((seqlens_k, block_table)) = &indices {
            args = args.with_indices(SeqIndices {
                seqlens_k: Some(seqlens_k.as_view()),
                block_table: Some(block_table.as_view()),
                ..SeqIndices::none()
            });
        }
        if p.variant == Variant::LogitSink {
            args = args.with_params(DeviceParams {
                sink_logits: Some(theta.as_view()),
                ..DeviceParams::default()
            });
        }
        attn.forward(stream, p, args, &mut workspace)
            .map_err(|e| e.to_string())
    };
    let seconds = time(stream, 3, 20, &mut call)?;
    // K/V bytes the call must read: the keys any row sees (a contiguous range), once per kv
    // head of each sequence.
    let (first, last) = (
        p.mask.key_range(0, s.q_len, s.kv_len),
        p.mask.key_range(s.q_len - 1, s.q_len, s.kv_len),
    );
    let visible = last.end.saturating_sub(first.start) as f64;
    let kv_bytes = 2.0 * s.batch as f64 * visible * s.kv_heads as f64 * s.head_dim as f64 * 2.0;
    let bandwidth = kv_bytes / seconds;
    emit(format!(
        "{{\"kind\":\"ours\",\"case\":\"{}\",\"variant\":\"{}\",\"mask\":{},\"batch\":{},\"hq\":{},\"hkv\":{},\"d\":{},\"nq\":{},\"nk\":{},\"page_size\":{},\"ms\":{:.4},\"kv_gbps\":{:.1},\"of_copy\":{:.3},\"tflops\":{:.2},\"workspace_mb\":{:.1}}}",
        case.label,
        p.variant.name(),
        mask_json(p.mask),
        s.batch,
        s.q_heads,
        s.kv_heads,
        s.head_dim,
        s.q_len,
        s.kv_len,
        case.page_size.map_or("null".to_string(), |x| x.to_string()),
        seconds * 1e3,
        bandwidth / 1e9,
        bandwidth / copy,
        p.flops() / seconds / 1e12,
        workspace.bytes() as f64 / 1e6,
    ));
    Ok(())
}

fn main() {
    let ctx = match detect() {
        Ok(ctx) => ctx,
        Err(e) => {
            println!("outlier-attn-decode: no CUDA device, nothing measured: {e}");
            return;
        }
    };
    let stream = ctx.new_stream().expect("stream");
    let attn = CudaAttention::new(ctx.clone()).expect("nvrtc");
    let quick = std::env::var("OUTLIER_ATTN_DECODE_QUICK").is_ok_and(|v| v == "1");
    let max_bytes = std::env::var("OUTLIER_ATTN_DECODE_MAX_GB")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(40.0)
        * 1e9;
    let copy = match copy_bandwidth(&stream) {
        Ok(bw) => bw,
        Err(e) => {
            println!("outlier-attn-decode: the copy bandwidth could not be measured: {e}");
            return;
        }
    };
    emit(format!(
        "{{\"kind\":\"copy\",\"device\":\"{}\",\"multiprocessors\":{},\"copy_gbps\":{:.1}}}",
        ctx.name().unwrap_or_default(),
        attn.plan_options().multiprocessors,
        copy / 1e9
    ));
    let wanted: Option<Vec<String>> = std::env::var("OUTLIER_ATTN_DECODE_CASES")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    let chosen = |label: &str| {
        wanted
            .as_ref()
            .is_none_or(|parts| parts.iter().any(|part| label.contains(part.as_str())))
    };
    for case in decode_cases(quick).iter().chain(&gpt_oss_cases()) {
        if !chosen(&case.label) {
            continue;
        }
        let s = &case.problem.shape;
        let bytes = 2.0 * (s.batch * s.kv_len * s.kv_heads * s.head_dim * 2) as f64;
        if bytes > max_bytes {
            skipped(
                &case.label,
                &format!(
                    "{:.1} GB of K/V, above OUTLIER_ATTN_DECODE_MAX_GB",
                    bytes / 1e9
                ),
            );
            continue;
        }
        if let Err(why) = measure(&attn, &stream, case, copy) {
            skipped(&case.label, &why);
        }
    }
}
