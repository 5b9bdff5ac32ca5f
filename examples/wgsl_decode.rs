//! Batched decode on the WGSL backend, side by side in one run: the same call over a dense KV
//! cache and over a paged one (16-token pages handed out in shuffled order, as an engine's
//! allocator leaves them), the shapes of BENCHMARKS.md's decode row by default:
//!
//! `wgsl_decode [NK] [REPS] [DTYPE] [SPLIT]`: B = 4, Nq = 1, Hq = 32, Hkv = 8, d = 128,
//! Nk = NK (8192) keys per sequence, DTYPE f16 (or f32, bf16); each cache unsplit
//! (`SplitKv::Off`) and with split-KV (`SPLIT`: keys per split, default 1024, or `auto` / `on`
//! for the heuristic). Prints the median device time of each (timestamps around the compute
//! pass, which holds the split combine too; inputs resident), the ratios to the unsplit dense
//! call and split over unsplit.
use outlier_attn::cases::{InputSpec, Rng, random_inputs};
use outlier_attn::wgsl::{WgslBackend, WgslOptions};
use outlier_attn::{
    Backend, DType, HostInputs, HostTensor, KvSeqs, Problem, QuerySeqs, SeqIndices, Sequences,
    Shape, SplitKv,
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
    let split = match args.get(3).map(String::as_str) {
        None => SplitKv::KeysPerSplit(1024),
        Some("auto") => SplitKv::Auto,
        Some("on") => SplitKv::On,
        Some(keys) => SplitKv::KeysPerSplit(keys.parse()?),
    };
    let (batch, hq, hkv, d) = (4, 32, 8, 128);
    let dense = Problem::new(Shape::new(batch, hq, hkv, 1, nk, d), dtype);
    let dense_inputs = random_inputs(&dense, &InputSpec::default());
    let (paged, paged_inputs) = paged_copy(&dense, &dense_inputs);

    let unsplit = WgslBackend::with_options(WgslOptions {
        split_kv: SplitKv::Off,
        ..WgslOptions::default()
    })?;
    let with_split = WgslBackend::with_options(WgslOptions {
        split_kv: split,
        ..WgslOptions::default()
    })?;
    println!("{}", unsplit.name());
    println!("B = {batch}, Nq = 1, Hq = {hq}, Hkv = {hkv}, d = {d}, Nk = {nk}, {dtype:?}");
    let splits = with_split.attention().splits(&dense)?;
    println!("split-KV {split:?}: {splits} splits of each row's keys");
    let median = |backend: &WgslBackend, problem: &Problem, inputs: &HostInputs| {
        let mut times = backend
            .device_times(problem, inputs, 1, reps)
            .map_err(|e| e.to_string())?
            .ok_or("the adapter has no TIMESTAMP_QUERY")?;
        times.sort();
        Ok::<f64, String>(times[reps / 2].as_secs_f64() * 1e3)
    };
    let calls: [(&str, &WgslBackend, &Problem, &HostInputs); 4] = [
        (
            "dense [B, Nk, Hkv, d], unsplit",
            &unsplit,
            &dense,
            &dense_inputs,
        ),
        (
            "dense [B, Nk, Hkv, d], split",
            &with_split,
            &dense,
            &dense_inputs,
        ),
        (
            "paged, 16-token pages, shuffled, unsplit",
            &unsplit,
            &paged,
            &paged_inputs,
        ),
        (
            "paged, 16-token pages, shuffled, split",
            &with_split,
            &paged,
            &paged_inputs,
        ),
    ];
    // Alternate the four, so that all see the same machine load.
    let mut times = vec![Vec::new(); calls.len()];
    for _ in 0..3 {
        for (t, (_, backend, problem, inputs)) in times.iter_mut().zip(&calls) {
            t.push(median(backend, problem, inputs)?);
        }
    }
    let mid = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let t: Vec<f64> = times.iter().map(|v| mid(v)).collect();
    println!("| cache | ms | vs dense unsplit | split vs unsplit |");
    println!("| --- | ---: | ---: | ---: |");
    for (i, (name, ..)) in calls.iter().enumerate() {
        let vs_unsplit = if i % 2 == 1 {
            format!("{:.2}x", t[i] / t[i - 1])
        } else {
            String::new()
        };
        println!(
            "| {name} | {:.3} | {:.2}x | {vs_unsplit} |",
            t[i],
            t[i] / t[0]
        );
    }
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
