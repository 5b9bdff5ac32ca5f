//! `outlier-attn run` on engine-shaped calls written by PyTorch (scripts/make_engine_replays.py):
//! a packed prefill batch, a paged decode batch and a gpt-oss windowed layer replay with the
//! flags stored in each file, pass the parity rule, and agree with PyTorch's own float64
//! results stored beside the inputs (output, LSE, first-key mass); every malformed index tensor
//! is exit status 2 with a message naming it. The three replays run on the reference and, with
//! the `wgpu` and `cuda-emulator` features, on the WGSL backend and the CUDA emulator.

mod cli_common;
#[cfg(any(feature = "cuda-emulator", feature = "wgpu"))]
mod common;
use cli_common::{temp, text, tool};

use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(format!("{name}.safetensors"))
}

/// The flags a fixture says replay it (its metadata entry `args`).
fn replay_flags(bytes: &[u8]) -> Vec<String> {
    let (_, meta) = SafeTensors::read_metadata(bytes).expect("a safetensors file");
    let meta = meta.metadata().clone().unwrap_or_default();
    meta.get("args")
        .expect("metadata `args`")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f64>) {
    let view = st.tensor(name).unwrap_or_else(|_| panic!("tensor {name}"));
    let bytes = view.data();
    let values = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        other => panic!("{name}: dtype {other}"),
    };
    (view.shape().to_vec(), values)
}

/// Replays `name` on `backend` with the flags the file stores: the run passes the parity rule
/// against the reference (exit status 0) and writes its outputs, which it returns with the
/// fixture's bytes.
fn replay(name: &str, backend: &str) -> (Vec<u8>, Vec<u8>) {
    let input = fixture(name);
    let bytes = std::fs::read(&input).expect("fixture");
    let out_path = temp(&format!("{name}-{backend}.out.safetensors"));
    let mut args = vec![
        "run".to_string(),
        input.display().to_string(),
        "--backend".to_string(),
        backend.to_string(),
        "--out".to_string(),
        out_path.display().to_string(),
    ];
    args.extend(replay_flags(&bytes));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = tool(&args);
    let stdout = text(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{name}: {stdout}\n{}",
        text(&run.stderr)
    );
    assert!(stdout.contains("wrote"), "{stdout}");

    let written = std::fs::read(&out_path).expect("the outputs were written");
    std::fs::remove_file(&out_path).ok();
    (written, bytes)
}

/// Replays `name` on `backend`, and holds the written outputs to PyTorch's: O within one
/// rounding to the output dtype, LSE and first-key mass within f32 rounding.
fn replay_agrees_with_pytorch(name: &str, backend: &str) {
    let (written, bytes) = replay(name, backend);
    let (ours, theirs) = (
        SafeTensors::deserialize(&written).unwrap(),
        SafeTensors::deserialize(&bytes).unwrap(),
    );
    // One rounding of the f64 result to f16 (2^-11 relative) or bf16 (2^-8).
    let o_view = ours.tensor("o").unwrap();
    let rounding = match o_view.dtype() {
        Dtype::F16 => 2f64.powi(-11),
        Dtype::BF16 => 2f64.powi(-8),
        _ => 2f64.powi(-24),
    };
    for (out, torch, rel) in [("o", "torch.o", rounding), ("lse", "torch.lse", 1e-6)] {
        let (dims, x) = f32s(&ours, out);
        let (torch_dims, t) = f32s(&theirs, torch);
        assert_eq!(dims, torch_dims, "{name}: {out} dims");
        for (i, (&a, &b)) in x.iter().zip(&t).enumerate() {
            assert!(
                (a - b).abs() <= rel * b.abs() + 1e-7,
                "{name}: {out}[{i}] = {a}, PyTorch {b}"
            );
        }
    }
    let (dims, stats) = f32s(&ours, "stats");
    let (_, fkm) = f32s(&theirs, "torch.first_key_mass");
    let count = *dims.last().unwrap();
    for (head, &want) in fkm.iter().enumerate() {
        let got = stats[head * count];
        assert!(
            (got - want).abs() <= 1e-6,
            "{name}: first_key_mass of (sequence, head) {head} = {got}, PyTorch {want}"
        );
    }
}

#[test]
fn packed_prefill_written_by_pytorch_replays() {
    replay_agrees_with_pytorch("packed_prefill", "reference");
}

#[test]
fn paged_decode_written_by_pytorch_replays() {
    replay_agrees_with_pytorch("paged_decode", "reference");
}

#[test]
fn gpt_oss_window_written_by_pytorch_replays() {
    replay_agrees_with_pytorch("gpt_oss_window", "reference");
}

/// The CUDA kernels replay the three engine-shaped files on the emulator (packed prefill,
/// paged decode over shuffled 16-token pages, a gpt-oss window with sinks) and pass the parity
/// rule against the reference. (PyTorch's float64 results are the reference's bar, one
/// rounding of O: a flash kernel rounds P to 16 bits before P·V, which the rule allows.)
#[cfg(feature = "cuda-emulator")]
#[test]
fn engine_replays_run_on_the_cuda_emulator() {
    if let Err(e) = outlier_attn::cuda_emu::compiler_version() {
        common::skip_or_fail("cuda-emu", &e.to_string());
        return;
    }
    for name in ["packed_prefill", "paged_decode", "gpt_oss_window"] {
        replay(name, "cuda-emu");
    }
}

/// The same replays on the WGSL backend (lavapipe in CI): packed, paged and windowed calls
/// through `--backend wgsl`.
#[cfg(feature = "wgpu")]
#[test]
fn engine_replays_run_on_wgsl() {
    if let Err(e) = outlier_attn::wgsl::WgslBackend::new() {
        return common::skip_or_fail("wgsl", &e.to_string());
    }
    for name in ["packed_prefill", "paged_decode", "gpt_oss_window"] {
        replay_agrees_with_pytorch(name, "wgsl");
    }
}

/// A file of the temporary directory, removed when the test is done with it.
struct TempFile(PathBuf);

impl std::ops::Deref for TempFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

/// The fixture `name` with tensor `tensor` replaced by `dtype`, `dims`, `bytes` (or removed
/// when `new` is `None`), written to a file of its own for the test `tag`.
fn altered(
    tag: &str,
    name: &str,
    tensor: &str,
    new: Option<(Dtype, Vec<usize>, Vec<u8>)>,
) -> TempFile {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != tensor)
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    if let Some((dtype, dims, data)) = new {
        owned.push((tensor.to_string(), dtype, dims, data));
    }
    let views: Vec<(&str, TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, dims, b)| (n.as_str(), TensorView::new(*d, dims.clone(), b).unwrap()))
        .collect();
    let path = temp(&format!("{tag}-{name}-{tensor}.safetensors"));
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    TempFile(path)
}

fn i32_bytes(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn i32s(name: &str, tensor: &str) -> (Vec<usize>, Vec<i32>) {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(tensor).unwrap();
    let values = v
        .data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (v.shape().to_vec(), values)
}

/// `run` on `path` with the fixture's flags (plus `extra`) must exit with status 2 and a
/// message containing every one of `names`, never a panic.
fn refused(fixture_name: &str, path: &Path, extra: &[&str], names: &[&str]) {
    let flags = replay_flags(&std::fs::read(fixture(fixture_name)).unwrap());
    let mut args = vec!["run", path.to_str().unwrap(), "--backend", "reference"];
    args.extend(flags.iter().map(String::as_str));
    args.extend_from_slice(extra);
    let out = tool(&args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in names {
        assert!(stderr.contains(n), "expected {n:?} in: {stderr}");
    }
}

#[test]
fn an_index_tensor_of_the_wrong_dtype() {
    let (dims, values) = i32s("packed_prefill", "cu_seqlens_q");
    let as_f32: Vec<u8> = values
        .iter()
        .flat_map(|&v| (v as f32).to_le_bytes())
        .collect();
    let path = altered(
        "t1",
        "packed_prefill",
        "cu_seqlens_q",
        Some((Dtype::F32, dims, as_f32)),
    );
    refused(
        "packed_prefill",
        &path,
        &[],
        &["cu_seqlens_q", "F32", "I32"],
    );
    let as_i64: Vec<u8> = values
        .iter()
        .flat_map(|&v| (v as i64).to_le_bytes())
        .collect();
    let path = altered(
        "t2",
        "paged_decode",
        "seqlens_k",
        Some((Dtype::I64, vec![values.len()], as_i64)),
    );
    refused("paged_decode", &path, &[], &["seqlens_k", "I64", "I32"]);
}

#[test]
fn an_index_tensor_of_the_wrong_length() {
    let (_, mut values) = i32s("packed_prefill", "cu_seqlens_k");
    values.push(*values.last().unwrap());
    let path = altered(
        "t3",
        "packed_prefill",
        "cu_seqlens_k",
        Some((Dtype::I32, vec![values.len()], i32_bytes(&values))),
    );
    refused("packed_prefill", &path, &[], &["cu_seqlens_k", "B+1=4"]);
    let (_, values) = i32s("paged_decode", "seqlens_k");
    let path = altered(
        "t4",
        "paged_decode",
        "seqlens_k",
        Some((Dtype::I32, vec![3], i32_bytes(&values[..3]))),
    );
    refused("paged_decode", &path, &[], &["seqlens_k", "B=4"]);
}

#[test]
fn a_page_outside_the_cache() {
    let (dims, mut table) = i32s("paged_decode", "block_table");
    // Sequence 3 (190 keys) uses its first 12 pages; the cache holds 40.
    table[3 * dims[1] + 5] = 40;
    let path = altered(
        "t5",
        "paged_decode",
        "block_table",
        Some((Dtype::I32, dims, i32_bytes(&table))),
    );
    refused(
        "paged_decode",
        &path,
        &[],
        &["block_table[3, 5] = 40", "outside [0, 40)"],
    );
}

#[test]
fn cumulative_lengths_that_decrease() {
    let (dims, mut cu) = i32s("gpt_oss_window", "cu_seqlens_q");
    cu[1] = cu[2] + 1;
    let path = altered(
        "t6",
        "gpt_oss_window",
        "cu_seqlens_q",
        Some((Dtype::I32, dims.clone(), i32_bytes(&cu))),
    );
    refused(
        "gpt_oss_window",
        &path,
        &[],
        &["cu_seqlens_q[2]", "decrease"],
    );
    let (_, mut cu) = i32s("gpt_oss_window", "cu_seqlens_k");
    cu[0] = 2;
    let path = altered(
        "t7",
        "gpt_oss_window",
        "cu_seqlens_k",
        Some((Dtype::I32, dims, i32_bytes(&cu))),
    );
    refused(
        "gpt_oss_window",
        &path,
        &[],
        &["cu_seqlens_k[0] = 2", "start at 0"],
    );
}

#[test]
fn a_sequence_longer_than_its_cache() {
    let (dims, mut lens) = i32s("paged_decode", "seqlens_k");
    lens[1] = 12 * 16 + 1;
    let path = altered(
        "t8",
        "paged_decode",
        "seqlens_k",
        Some((Dtype::I32, dims, i32_bytes(&lens))),
    );
    refused(
        "paged_decode",
        &path,
        &[],
        &["seqlens_k", "sequence 1", "193"],
    );
}

#[test]
fn a_missing_index_tensor() {
    let path = altered("t9", "packed_prefill", "cu_seqlens_q", None);
    refused("packed_prefill", &path, &[], &["cu_seqlens_q", "missing"]);
    let path = altered("t10", "paged_decode", "block_table", None);
    refused("paged_decode", &path, &[], &["block_table", "missing"]);
}

#[test]
fn window_flags_out_of_range() {
    let path = fixture("gpt_oss_window");
    refused(
        "gpt_oss_window",
        &path,
        &["--window-right", "3"],
        &["--window-right 3", "causal"],
    );
    let path = fixture("paged_decode");
    refused(
        "paged_decode",
        &path,
        &["--window-left", "-5"],
        &["window left = -5"],
    );
}
