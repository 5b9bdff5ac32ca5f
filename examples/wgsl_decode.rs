//! Batched decode on the WGSL backend, side by side in one run: the same call over a dense KV
//! cache and over a paged one (16-token pages handed out in shuffled order, as an engine's
//! allocator leaves them), the shapes of BENCHMARKS.md's decode row by default:
//!
//! `wgsl_decode [NK] [REPS] [DTYPE]`: B = 4, Nq = 1, Hq = 32, Hkv = 8, d = 128, Nk = NK (8192)
//! keys per sequence, DTYPE f16 (or f32, bf16). Prints the median device time of each
//! (timestamps around the compute pass, inputs resident) and the paged/dense ratio.
use outlier_attn::cases::{InputSpec, Rng, random_inputs};
use outlier_attn::wgsl::WgslBackend;
use outlier_attn::{
    Backend, DType, HostInputs, HostTensor, KvSeqs, Problem, QuerySeqs, SeqIndices, Sequences,
    Shape,
};

/// Tokens per page of the paged cache.
const PAGE_SIZE: usize = 16;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nk: usize = args.first().map(|x| x.parse()).transpose()?.unwrap_or(8192);
    let reps: usize = args.get(1).map(|x| x.parse()).transpose()?.unwrap_or(5);
    let dtype = match args.get(2).map(String::as_str) {
        None | Some("f16") => DType::F16,
        Some("f32") => DType::F32,
        Some("bf16") => DType::Bf16,
        Some(other) => return Err(format!("dtype {other}: f32, f16 or bf16").into()),
    };
    let (batch, hq, hkv, d) = (4, 32, 8, 128);
    let dense = Problem::new(Shape::new(batch, hq, hkv, 1, nk, d), dtype);
    let dense_inputs = random_inputs(&dense, &InputSpec::default());
    let (paged, paged_inputs) = paged_copy(&dense, &dense_inputs);

    let backend = WgslBackend::new()?;
    println!("{}", backend.name());
    println!("B = {batch}, Nq = 1, Hq = {hq}, Hkv = {hkv}, d = {d}, Nk = {nk}, {dtype:?}");
    let median = |problem: &Problem, inputs: &HostInputs| -> Result<f64, String> {
        let mut times = backend
            .device_times(problem, inputs, 1, reps)
            .map_err(|e| e.to_string())?
            .ok_or("the adapter has no TIMESTAMP_QUERY")?;
        times.sort();
        Ok(times[reps / 2].as_secs_f64() * 1e3)
    };
    // Alternate the two, so that both see the same machine load.
    let (mut t_dense, mut t_paged) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        t_dense.push(median(&dense, &dense_inputs)?);
        t_paged.push(median(&paged, &paged_inputs)?);
    }
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (t_dense, t_paged) = (mid(t_dense), mid(t_paged));
    println!("| cache | ms | vs dense |");
    println!("| --- | ---: | ---: |");
    println!("| dense [B, Nk, Hkv, d] | {t_dense:.3} | 1.00x |");
    println!(
        "| paged, {PAGE_SIZE}-token pages, shuffled | {t_paged:.3} | {:.2}x |",
        t_paged / t_dense
    );
    Ok(())
}

/// The same call with K and V in a paged cache: page p of sequence b is a random physical page.
fn paged_copy(dense: &Problem, inputs: &HostInputs) -> (Problem, HostInputs) {
    let s = &dense.shape;
    let row = s.kv_heads * s.head_dim;
    let max_pages = s.kv_len.div_ceil(PAGE_SIZE);
    let pages = s.batch * max_pages;
    let mut order: Vec<usize> = (0..pages).collect();
    let mut rng = Rng::new(7);
    for i in (1..pages).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut k = HostTensor::filled(dense.dtype, pages * PAGE_SIZE * row, 0.0);
    let mut v = k.clone();
    let mut table = vec![0i32; s.batch * max_pages];
    for b in 0..s.batch {
        for p in 0..max_pages {
            let physical = order[b * max_pages + p];
            table[b * max_pages + p] = physical as i32;
            for slot in 0..PAGE_SIZE.min(s.kv_len - p * PAGE_SIZE) {
                let from = (b * s.kv_len + p * PAGE_SIZE + slot) * row;
                let to = (physical * PAGE_SIZE + slot) * row;
                for x in 0..row {
                    k.set(to + x, inputs.k.get(from + x).unwrap_or(0.0));
                    v.set(to + x, inputs.v.get(from + x).unwrap_or(0.0));
                }
            }
        }
    }
    let problem = dense.with_seqs(Sequences {
        q: QuerySeqs::Dense,
        kv: KvSeqs::Paged {
            pages,
            page_size: PAGE_SIZE,
            max_pages,
        },
    });
    let indices = SeqIndices {
        seqlens_k: Some(vec![s.kv_len as i32; s.batch]),
        block_table: Some(table),
        ..SeqIndices::none()
    };
    let paged = HostInputs::dense(&problem, inputs.q.clone(), k, v).with_indices(indices);
    (problem, paged)
}
