//! The emulator's PTX instructions against the PTX ISA: ldmatrix (x1, x2, x4, .trans),
//! mma.sync m16n8k16 (f16, bf16, f32 accumulate), cp.async (.cg 16 and .ca 4/8 with zero fill,
//! commit and wait groups), the cvt packs (round to nearest even, which operand goes high),
//! cvt.f32.f16, ex2, max.NaN and the warp shuffles. Test kernels (tests/cuda_emu/isa.cu) feed each
//! instruction index-encoded operands; every (lane, register) result is checked here against
//! the ISA's fragment tables, written again in Rust, and conversions against the `half` crate.
#![cfg(feature = "cuda-emulator")]
mod common;

use std::sync::{Arc, OnceLock};

use half::{bf16, f16};
use outlier_attn::cuda_emu::{EmuBuffer, EmuModule};

const SOURCE: &str = include_str!("cuda_emu/isa.cu");

fn module() -> Option<Arc<EmuModule>> {
    static MODULE: OnceLock<Result<Arc<EmuModule>, String>> = OnceLock::new();
    let entries = [
        "ldmatrix_test",
        "mma_test",
        "cp_async_test",
        "cvt_test",
        "shfl_test",
        "max_nan_test",
    ];
    match MODULE
        .get_or_init(|| EmuModule::build("isa-tests", SOURCE, &entries).map_err(|e| e.to_string()))
    {
        Ok(m) => Some(m.clone()),
        Err(why) => {
            common::skip_or_fail("cuda-emu", why);
            None
        }
    }
}

/// Runs `entry` on one block of `threads` threads.
fn run(m: &EmuModule, entry: &str, threads: u32, smem: usize, args: &[u8], buffers: &[EmuBuffer]) {
    // SAFETY: the test kernels reach memory only through the emulator's checked pointers and
    // its instructions, and index their local arrays in range.
    unsafe { m.launch(entry, [1, 1, 1], [threads, 1, 1], smem, args, buffers) }
        .unwrap_or_else(|e| panic!("{entry}: {e}"));
}

fn args_of(words: &[u64]) -> Vec<u8> {
    bytemuck::cast_slice(words).to_vec()
}

#[test]
fn ldmatrix_fragments_follow_the_isa() {
    let Some(m) = module() else { return };
    // Element (row r, column c) of matrix i holds i·64 + r·8 + c + 1.
    let input: Vec<u16> = (0..256u16).map(|e| e + 1).collect();
    let value = |i: usize, r: usize, c: usize| (i * 64 + r * 8 + c + 1) as u32;
    for num in [1usize, 2, 4] {
        for trans in [false, true] {
            let mut out = vec![0u32; 32 * 4];
            let bufs = [
                EmuBuffer::input("in", &input),
                EmuBuffer::output("out", &mut out),
            ];
            let mut args = args_of(&[bufs[0].addr(), bufs[1].addr()]);
            args.extend_from_slice(bytemuck::cast_slice(&[num as i32, trans as i32]));
            run(&m, "ldmatrix_test", 32, 4 * 8 * 24 * 2, &args, &bufs);
            drop(bufs);
            for lane in 0..32 {
                // The ISA: thread l holds row l/4, columns 2(l%4) and 2(l%4)+1 of each matrix
                // (of its transpose with .trans), the lower column in the lower half.
                let (g, t) = (lane / 4, lane % 4);
                for i in 0..num {
                    let (lo, hi) = if trans {
                        (value(i, 2 * t, g), value(i, 2 * t + 1, g))
                    } else {
                        (value(i, g, 2 * t), value(i, g, 2 * t + 1))
                    };
                    assert_eq!(
                        out[lane * 4 + i],
                        lo | (hi << 16),
                        "x{num} trans {trans}: lane {lane}, register {i}"
                    );
                }
            }
        }
    }
}

#[test]
fn mma_m16n8k16_follows_the_isa_tables() {
    let Some(m) = module() else { return };
    // Small integers: exact in f16, bf16 and in the f32 sums.
    let a: Vec<f32> = (0..256).map(|e| ((e * 7 % 17) as f32) - 8.0).collect();
    let b: Vec<f32> = (0..128).map(|e| ((e * 5 % 13) as f32) - 6.0).collect();
    let c: Vec<f32> = (0..128).map(|e| e as f32 * 0.5).collect();
    for use_bf16 in [false, true] {
        let bits = |x: &[f32]| -> Vec<u16> {
            x.iter()
                .map(|&v| {
                    if use_bf16 {
                        bf16::from_f32(v).to_bits()
                    } else {
                        f16::from_f32(v).to_bits()
                    }
                })
                .collect()
        };
        let (a16, b16) = (bits(&a), bits(&b));
        let mut d = vec![f32::NAN; 32 * 4];
        let bufs = [
            EmuBuffer::input("a", &a16),
            EmuBuffer::input("b", &b16),
            EmuBuffer::input("c", &c),
            EmuBuffer::output("d", &mut d),
        ];
        let mut args = args_of(&[
            bufs[0].addr(),
            bufs[1].addr(),
            bufs[2].addr(),
            bufs[3].addr(),
        ]);
        args.extend_from_slice(bytemuck::cast_slice(&[use_bf16 as i32, 0i32]));
        run(&m, "mma_test", 32, 0, &args, &bufs);
        drop(bufs);
        for lane in 0..32 {
            let (g, t) = (lane / 4, lane % 4);
            for i in 0..4 {
                // The ISA's C/D table: row groupID (+ 8 for c2, c3), column 2·tig + (i & 1).
                let (row, col) = (g + 8 * (i / 2), 2 * t + i % 2);
                let expected: f32 = c[row * 8 + col]
                    + (0..16)
                        .map(|k| a[row * 16 + k] * b[k * 8 + col])
                        .sum::<f32>();
                assert_eq!(
                    d[lane * 4 + i],
                    expected,
                    "bf16 {use_bf16}: lane {lane}, d{i} = D[{row}][{col}]"
                );
            }
        }
    }
}

#[test]
fn cp_async_zero_fills_and_completes_by_group() {
    let Some(m) = module() else { return };
    // 16-byte aligned source: 1024 bytes, byte e = e % 251 + 1 (never 0, never 0xff).
    let words: Vec<u128> = (0..64u128)
        .map(|w| {
            (0..16u128).fold(0, |acc, b| {
                acc | ((((w * 16 + b) % 251 + 1) & 0xff) << (8 * b))
            })
        })
        .collect();
    let src: &[u8] = bytemuck::cast_slice(&words);
    let mut out = vec![0u8; 1024];
    let bufs = [
        EmuBuffer::input("src", src),
        EmuBuffer::output("out", &mut out),
    ];
    let args = args_of(&[bufs[0].addr(), bufs[1].addr()]);
    run(&m, "cp_async_test", 32, 1024, &args, &bufs);
    drop(bufs);
    for lane in 0..32 {
        let src_size = [16, 8, 4, 0][lane % 4];
        for e in 0..16 {
            let expected = if e < src_size { src[lane * 16 + e] } else { 0 };
            assert_eq!(
                out[lane * 16 + e],
                expected,
                "group 0, lane {lane}, byte {e}"
            );
        }
        let (cp_size, src_size) = match lane % 4 {
            1 => (8, 8),
            3 => (8, 4),
            _ => (4, 4),
        };
        for e in 0..16 {
            let expected = if e < src_size {
                src[512 + lane * 16 + e]
            } else if e < cp_size {
                0
            } else {
                0xff // untouched: the poison of a fresh block's shared memory
            };
            assert_eq!(
                out[512 + lane * 16 + e],
                expected,
                "group 1, lane {lane}, byte {e}"
            );
        }
    }
}

#[test]
fn cvt_rounds_to_nearest_even_and_packs_the_first_operand_high() {
    let Some(m) = module() else { return };
    let mut x: Vec<f32> = vec![
        1.0 + f32::powi(2.0, -11),       // f16 tie: to even (1.0)
        1.0 + 3.0 * f32::powi(2.0, -11), // f16 tie: to even (1 + 2^-9)
        1.0 + f32::powi(2.0, -8),        // bf16 tie: to even
        1.0 + 3.0 * f32::powi(2.0, -8),
        65504.0,
        65519.9,
        65520.0, // f16 overflow
        -65520.0,
        f32::powi(2.0, -24),       // smallest f16 subnormal
        f32::powi(2.0, -25),       // a tie between 0 and it: to 0
        1.5 * f32::powi(2.0, -25), // above the tie
        3.0e38,                    // bf16: rounds to inf? (no: bf16 max is 3.39e38)
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -0.0,
        0.0,
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    while x.len() < 4096 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let v = f32::from_bits(state as u32);
        if v.is_finite() && v.abs() < 1e6 || x.len() % 5 == 0 {
            x.push(v);
        }
    }
    let n = x.len();
    let (mut f16x2, mut bf16x2) = (vec![0u32; n / 2], vec![0u32; n / 2]);
    let (mut widened, mut ex2) = (vec![0f32; 65536], vec![0f32; n]);
    let bufs = [
        EmuBuffer::input("x", &x),
        EmuBuffer::output("f16x2", &mut f16x2),
        EmuBuffer::output("bf16x2", &mut bf16x2),
        EmuBuffer::output("widened", &mut widened),
        EmuBuffer::output("ex2", &mut ex2),
    ];
    let mut args = args_of(&bufs.iter().map(|b| b.addr()).collect::<Vec<_>>());
    args.extend_from_slice(bytemuck::cast_slice(&[n as i32, 0i32]));
    run(&m, "cvt_test", 128, 0, &args, &bufs);
    drop(bufs);
    let same = |got: u16, want: u16, nan: bool| {
        if nan {
            (got & 0x7fff) > 0x7c00 || (got & 0x7fff) > 0x7f80
        } else {
            got == want
        }
    };
    for i in 0..n / 2 {
        let (a, b) = (x[2 * i], x[2 * i + 1]);
        // cvt.rn.f16x2.f32 d, a, b: a in the upper half.
        let (hi, lo) = ((f16x2[i] >> 16) as u16, f16x2[i] as u16);
        assert!(
            same(hi, f16::from_f32(a).to_bits(), a.is_nan()),
            "f16 of {a:e}: {hi:#06x}"
        );
        assert!(
            same(lo, f16::from_f32(b).to_bits(), b.is_nan()),
            "f16 of {b:e}: {lo:#06x}"
        );
        let (hi, lo) = ((bf16x2[i] >> 16) as u16, bf16x2[i] as u16);
        assert!(
            same(hi, bf16::from_f32(a).to_bits(), a.is_nan()),
            "bf16 of {a:e}: {hi:#06x}"
        );
        assert!(
            same(lo, bf16::from_f32(b).to_bits(), b.is_nan()),
            "bf16 of {b:e}: {lo:#06x}"
        );
    }
    for (bits, &w) in widened.iter().enumerate() {
        let want = f16::from_bits(bits as u16).to_f32();
        assert!(
            w.to_bits() == want.to_bits() || (w.is_nan() && want.is_nan()),
            "cvt.f32.f16 of {bits:#06x}: {w:e}, not {want:e}"
        );
    }
    for (i, &e) in ex2.iter().enumerate() {
        let want = (x[i] * 1e-3).exp2();
        let subnormal_in = (x[i] * 1e-3).is_subnormal();
        if want.is_nan() {
            assert!(e.is_nan());
        } else if want.is_infinite() || want == 0.0 {
            assert_eq!(e, want, "ex2 of {}", x[i] * 1e-3);
        } else if !subnormal_in && !want.is_subnormal() {
            assert!(
                (e - want).abs() <= want.abs() * f32::powi(2.0, -22),
                "ex2 of {}: {e:e}, not {want:e}",
                x[i] * 1e-3
            );
        }
    }
}

/// max.NaN.f32: NaN when either operand is NaN, else the larger (the plain max returns the
/// other operand; the fast path floors its exponents with max.NaN so that NaN survives).
#[test]
fn max_nan_keeps_nan() {
    let Some(m) = module() else { return };
    let x = [
        f32::NAN,
        f32::NEG_INFINITY,
        -127.0,
        -1.5,
        -0.0,
        0.0,
        2.0,
        f32::INFINITY,
    ];
    let n = x.len();
    let mut out = vec![0f32; n * n];
    let bufs = [
        EmuBuffer::input("x", &x),
        EmuBuffer::output("out", &mut out),
    ];
    let mut args = args_of(&bufs.iter().map(|b| b.addr()).collect::<Vec<_>>());
    args.extend_from_slice(bytemuck::cast_slice(&[n as i32, 0i32]));
    run(&m, "max_nan_test", 32, 0, &args, &bufs);
    drop(bufs);
    for (e, &got) in out.iter().enumerate() {
        let (a, b) = (x[e / n], x[e % n]);
        if a.is_nan() || b.is_nan() {
            assert!(got.is_nan(), "max.NaN({a}, {b}) = {got}");
        } else {
            assert_eq!(got, if a > b { a } else { b }, "max.NaN({a}, {b})");
        }
    }
}

#[test]
fn shuffles_read_the_lanes_cuda_documents() {
    let Some(m) = module() else { return };
    let mut out = vec![0i32; 6 * 32];
    let bufs = [EmuBuffer::output("out", &mut out)];
    let args = args_of(&[bufs[0].addr()]);
    run(&m, "shfl_test", 32, 0, &args, &bufs);
    drop(bufs);
    let ballot = (0..32)
        .filter(|l| l % 3 == 0)
        .fold(0u32, |acc, l| acc | 1 << l) as i32;
    for lane in 0..32i32 {
        let v = |l: i32| 100 + l;
        assert_eq!(out[lane as usize], v(lane ^ 5), "xor, lane {lane}");
        assert_eq!(out[32 + lane as usize], v(7), "idx, lane {lane}");
        let up = if lane % 8 >= 3 { lane - 3 } else { lane };
        assert_eq!(out[64 + lane as usize], v(up), "up width 8, lane {lane}");
        let down = if lane % 16 + 2 < 16 { lane + 2 } else { lane };
        assert_eq!(
            out[96 + lane as usize],
            v(down),
            "down width 16, lane {lane}"
        );
        assert_eq!(out[128 + lane as usize], ballot, "ballot, lane {lane}");
        let sub = if lane % 2 == 0 { v(lane ^ 2) } else { -1 };
        assert_eq!(out[160 + lane as usize], sub, "sub-warp mask, lane {lane}");
    }
}
