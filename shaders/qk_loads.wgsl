// Vector loads of Q and K, shared by the two kernels that read them (forward.wgsl and
// key_mass.wgsl, which each declare `q_buf` and `k_buf`; kernel.rs includes this file with
// them only).
//
// Four consecutive elements starting at element i: four words for f32, the three words that
// hold them for 16-bit dtypes (the third clamped to the binding, for an even i at its end).
fn load_q4(i: u32) -> vec4<f32> {
    if ELEM == ELEM_F32 {
        return bitcast<vec4<f32>>(vec4<u32>(q_buf[i], q_buf[i + 1u], q_buf[i + 2u], q_buf[i + 3u]));
    }
    let w = i >> 1u;
    return decode_half_quad(q_buf[w], q_buf[w + 1u], q_buf[min(w + 2u, arrayLength(&q_buf) - 1u)], i);
}

fn load_k4(i: u32) -> vec4<f32> {
    if ELEM == ELEM_F32 {
        return bitcast<vec4<f32>>(vec4<u32>(k_buf[i], k_buf[i + 1u], k_buf[i + 2u], k_buf[i + 3u]));
    }
    let w = i >> 1u;
    return decode_half_quad(k_buf[w], k_buf[w + 1u], k_buf[min(w + 2u, arrayLength(&k_buf) - 1u)], i);
}
