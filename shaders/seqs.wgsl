// The sequence pass: reads the engine's index tensors (DESIGN.md section 6) once per call,
// before the other kernels, and leaves in the scratch buffer what they read instead: one
// record per sequence (`Seq` in common.wgsl) and the block table with every entry a sequence
// uses checked. One invocation per sequence.
//
// The index tensors live on the device, so nothing here trusts them (crate docs, "Bad index
// tensors on the device"): every read is clamped into its binding, and
// - cumulative lengths that do not start at 0, decrease, hold a sequence longer than the
//   shape's longest or end anywhere but the tensor's length make the whole call bad: the
//   sequences then cut Q and K into B near-equal runs instead, so that every row is still
//   written, as NaN;
// - a `seqlens_k` entry outside [0, Nk] makes its sequence bad (its length clamped);
// - a `block_table` entry the sequence uses outside [0, pages) makes its sequence bad (the
//   entry clamped).

@group(0) @binding(1) var<storage, read> cu_q_buf: array<i32>;
@group(0) @binding(2) var<storage, read> cu_k_buf: array<i32>;
@group(0) @binding(3) var<storage, read> lens_buf: array<i32>;
@group(0) @binding(4) var<storage, read> table_buf: array<i32>;
@group(0) @binding(5) var<storage, read_write> scratch: array<f32>;

fn cu_q(k: u32) -> i32 {
    return cu_q_buf[min(p.cu_q_offset + k, arrayLength(&cu_q_buf) - 1u)];
}

fn cu_k(k: u32) -> i32 {
    return cu_k_buf[min(p.cu_k_offset + k, arrayLength(&cu_k_buf) - 1u)];
}

fn seq_len_k(b: u32) -> i32 {
    return lens_buf[min(p.lens_offset + b, arrayLength(&lens_buf) - 1u)];
}

fn table_entry(k: u32) -> i32 {
    return table_buf[min(p.block_table_offset + k, arrayLength(&table_buf) - 1u)];
}

// Whether cumulative lengths `[B + 1]` are what the contract says: 0 first, non-decreasing,
// no run longer than `longest`, `total` last. `from_q` picks cu_seqlens_q or cu_seqlens_k.
fn cumulative_ok(from_q: bool, longest: u32, total: u32) -> bool {
    var previous = select(cu_k(0u), cu_q(0u), from_q);
    var ok = previous == 0;
    for (var k = 1u; k <= p.batch; k++) {
        let value = select(cu_k(k), cu_q(k), from_q);
        ok = ok && value >= previous && u32(value - previous) <= longest;
        previous = value;
    }
    return ok && previous == i32(total);
}

// Run b of `total` rows cut into B near-equal runs (the first total % B one row longer),
// each at most `longest`: (start, length).
fn even_run(b: u32, total: u32, longest: u32) -> vec2<u32> {
    let base = total / p.batch;
    let extra = total % p.batch;
    let start = b * base + min(b, extra);
    return vec2<u32>(start, min(base + select(0u, 1u, b < extra), longest));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn seqs(@builtin(global_invocation_id) id: vec3<u32>) {
    let b = id.x;
    if b >= p.batch {
        return;
    }
    let q_ok = p.q_packed == 0u || cumulative_ok(true, p.q_len, p.q_total);
    let k_ok = p.kv_mode != KV_PACKED || cumulative_ok(false, p.kv_len, p.kv_total);
    let call_ok = q_ok && k_ok;
    var seq = Seq(0u, p.q_len, 0u, p.kv_len, 0u);
    if p.q_packed != 0u {
        var run = even_run(b, p.q_total, p.q_len);
        if call_ok {
            run = vec2<u32>(u32(cu_q(b)), u32(cu_q(b + 1u) - cu_q(b)));
        }
        seq.q_start = run.x;
        seq.q_len = run.y;
    }
    var ok = call_ok;
    switch p.kv_mode {
        case KV_PACKED: {
            var run = even_run(b, p.kv_total, p.kv_len);
            if call_ok {
                run = vec2<u32>(u32(cu_k(b)), u32(cu_k(b + 1u) - cu_k(b)));
            }
            seq.kv_start = run.x;
            seq.kv_len = run.y;
        }
        case KV_LENS, KV_PAGED: {
            let len = seq_len_k(b);
            ok = ok && len >= 0 && u32(len) <= p.kv_len;
            seq.kv_len = u32(clamp(len, 0, i32(p.kv_len)));
        }
        default: {}
    }
    if p.kv_mode == KV_PAGED {
        // Entries past the pages the sequence uses are never read (engines leave −1 there);
        // they are stored clamped all the same, so that every stored entry names a page.
        let used = (seq.kv_len + p.page_size - 1u) / p.page_size;
        for (var page = 0u; page < p.max_pages; page++) {
            let at = b * p.max_pages + page;
            let entry = table_entry(at);
            ok = ok && (page >= used || (entry >= 0 && u32(entry) < p.pages));
            let checked = u32(clamp(entry, 0, i32(p.pages) - 1));
            scratch[p.table_offset + at] = bitcast<f32>(checked);
        }
    }
    seq.bad = select(1u, 0u, ok);
    let at = p.seqs_offset + b * SEQ_LEN;
    scratch[at + SEQ_Q_START] = bitcast<f32>(seq.q_start);
    scratch[at + SEQ_Q_LEN] = bitcast<f32>(seq.q_len);
    scratch[at + SEQ_KV_START] = bitcast<f32>(seq.kv_start);
    scratch[at + SEQ_KV_LEN] = bitcast<f32>(seq.kv_len);
    scratch[at + SEQ_BAD] = bitcast<f32>(seq.bad);
}
