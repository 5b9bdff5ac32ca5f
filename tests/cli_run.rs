//! `outlier-attn run`: a replay that works, and one test per malformed input, each a clear
//! message and exit status 2, never a panic.

mod cli_common;
use cli_common::{temp, text, tool};

use std::path::PathBuf;
use std::process::Output;

use outlier_attn::cases::{InputSpec, random_inputs};
use outlier_attn::{DType, HostTensor, Problem, Shape, Stat, Variant};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// A tensor of the file: name, dtype, dims, raw bytes.
struct T(&'static str, Dtype, Vec<usize>, Vec<u8>);

fn t(name: &'static str, dims: &[usize], data: &HostTensor) -> T {
    let dtype = match data.dtype() {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::Bf16 => Dtype::BF16,
    };
    T(name, dtype, dims.to_vec(), data.as_bytes().to_vec())
}

fn write(name: &str, tensors: &[T]) -> PathBuf {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|T(n, d, dims, bytes)| (*n, TensorView::new(*d, dims.clone(), bytes).unwrap()))
        .collect();
    let path = temp(name);
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    path
}

const SHAPE: Shape = Shape {
    batch: 1,
    q_heads: 4,
    kv_heads: 2,
    q_len: 5,
    kv_len: 9,
    head_dim: 16,
};
const QD: [usize; 4] = [1, 5, 4, 16];
const KD: [usize; 4] = [1, 9, 2, 16];

/// Q, K, V and the parameters of `variant` in `dtype`, as a call file holds them.
fn call(variant: Variant, dtype: DType) -> Vec<T> {
    let problem = Problem::new(SHAPE, dtype).with_variant(variant);
    let x = random_inputs(&problem, &InputSpec::default());
    let mut out = vec![t("q", &QD, &x.q), t("k", &KD, &x.k), t("v", &KD, &x.v)];
    let p = &x.params;
    if let Some(k) = &p.k_sink {
        out.push(t("k_sink", &[4, 16], k));
    }
    if let Some(v) = &p.v_sink {
        out.push(t("v_sink", &[4, 16], v));
    }
    if let Some(g) = &p.gate {
        out.push(t("gate", &[1, 5, 4], g));
    }
    if let Some(s) = &p.sink_logits {
        out.push(t("sink_logits", &[4], s));
    }
    out
}

/// Runs `run` on `tensors` and requires exit status 2 with `message` on stderr.
fn refused(name: &str, tensors: &[T], flags: &[&str], message: &str) {
    let path = write(name, tensors);
    let mut args = vec!["run", path.to_str().unwrap()];
    args.extend_from_slice(flags);
    let out = tool(&args);
    std::fs::remove_file(&path).ok();
    assert_malformed(&out, message);
}

fn assert_malformed(out: &Output, message: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(message),
        "expected {message:?} in: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn without(mut tensors: Vec<T>, name: &str) -> Vec<T> {
    tensors.retain(|t| t.0 != name);
    tensors
}

fn replace(mut tensors: Vec<T>, new: T) -> Vec<T> {
    tensors.retain(|t| t.0 != new.0);
    tensors.push(new);
    tensors
}

#[test]
fn a_replay_writes_every_output_and_passes_parity() {
    let path = write("good", &call(Variant::KvSink, DType::Bf16));
    let out_path = temp("good-out");
    let out = tool(&[
        "run",
        path.to_str().unwrap(),
        "--variant",
        "kv-sink",
        "--mask",
        "causal",
        "--softcap",
        "20",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("KvSink/bf16/causal"), "{stdout}");
    assert!(stdout.contains("key_mass"), "{stdout}");
    let bytes = std::fs::read(&out_path).unwrap();
    std::fs::remove_file(&path).ok();
    std::fs::remove_file(&out_path).ok();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let dims = |n: &str| st.tensor(n).unwrap().shape().to_vec();
    assert_eq!(dims("o"), QD);
    assert_eq!(st.tensor("o").unwrap().dtype(), Dtype::BF16);
    assert_eq!(dims("lse"), [1, 4, 5]);
    assert_eq!(dims("stats"), [1, 4, Stat::COUNT]);
    assert_eq!(dims("key_mass"), [1, 4, 9]);
}

#[test]
fn a_per_channel_gate_and_stats_off_are_read_from_the_file() {
    let problem = Problem::new(SHAPE, DType::F16).with_variant(Variant::ContextScale {
        gate: outlier_attn::Gate::Identity,
        granularity: outlier_attn::GateGranularity::PerChannel,
    });
    let x = random_inputs(&problem, &InputSpec::default());
    let tensors = vec![
        t("q", &QD, &x.q),
        t("k", &KD, &x.k),
        t("v", &KD, &x.v),
        t("gate", &QD, x.params.gate.as_ref().unwrap()),
        t("unused", &[2], &HostTensor::F32(vec![1.0, 2.0])),
    ];
    let path = write("gate", &tensors);
    let out = tool(&[
        "run",
        path.to_str().unwrap(),
        "--variant",
        "context-scale",
        "--gate",
        "identity",
        "--stats",
        "off",
    ]);
    std::fs::remove_file(&path).ok();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("ContextScale[Identity,PerChannel]/f16"),
        "{stdout}"
    );
    assert!(text(&out.stderr).contains("tensor `unused` is not read"));
}

#[test]
fn a_missing_file() {
    let out = tool(&["run", "/nonexistent/outlier-attn/input.safetensors"]);
    assert_malformed(&out, "cannot read the file");
}

#[test]
fn a_file_that_is_not_safetensors() {
    let path = temp("garbage");
    std::fs::write(&path, b"this is not a safetensors file at all").unwrap();
    let out = tool(&["run", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert_malformed(&out, "not a valid safetensors file");
}

#[test]
fn a_truncated_file() {
    let good = write("trunc-src", &call(Variant::Softmax, DType::F32));
    let bytes = std::fs::read(&good).unwrap();
    std::fs::remove_file(&good).ok();
    let path = temp("truncated");
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let out = tool(&["run", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert_malformed(&out, "not a valid safetensors file");
}

#[test]
fn a_missing_data_tensor() {
    let tensors = without(call(Variant::Softmax, DType::F32), "v");
    refused("no-v", &tensors, &[], "tensor `v` is missing");
}

#[test]
fn a_missing_parameter() {
    let tensors = without(call(Variant::KvSink, DType::F32), "k_sink");
    refused(
        "no-ksink",
        &tensors,
        &["--variant", "kv-sink"],
        "tensor `k_sink` is missing (the KvSink variant needs it)",
    );
}

#[test]
fn a_dtype_the_contract_does_not_take() {
    let tensors = replace(
        call(Variant::Softmax, DType::F32),
        T("q", Dtype::I32, QD.to_vec(), vec![0; 5 * 4 * 16 * 4]),
    );
    refused(
        "q-i32",
        &tensors,
        &[],
        "tensor `q` has dtype I32; expected F32, F16 or BF16",
    );
    let tensors = replace(
        call(Variant::Softmax, DType::F32),
        T("k", Dtype::F64, KD.to_vec(), vec![0; 9 * 2 * 16 * 8]),
    );
    refused("k-f64", &tensors, &[], "tensor `k` has dtype F64");
}

#[test]
fn data_tensors_of_different_dtypes() {
    let f16 = call(Variant::Softmax, DType::F16);
    let f32 = call(Variant::Softmax, DType::F32);
    let mut tensors = without(f16, "k");
    tensors.extend(f32.into_iter().filter(|t| t.0 == "k"));
    refused("mixed", &tensors, &[], "k: dtype is f32, expected f16");
}

#[test]
fn a_gate_of_another_dtype_than_q() {
    let problem = Problem::new(SHAPE, DType::F32).with_variant(Variant::ContextScale {
        gate: outlier_attn::Gate::TwoSigmoid,
        granularity: outlier_attn::GateGranularity::PerHead,
    });
    let x = random_inputs(&problem, &InputSpec::default());
    let gate = HostTensor::from_f64(DType::F32, &x.params.gate.as_ref().unwrap().to_f64_vec());
    let tensors = replace(
        call(
            Variant::ContextScale {
                gate: outlier_attn::Gate::TwoSigmoid,
                granularity: outlier_attn::GateGranularity::PerHead,
            },
            DType::Bf16,
        ),
        t("gate", &[1, 5, 4], &gate),
    );
    refused(
        "gate-dtype",
        &tensors,
        &["--variant", "context-scale"],
        "gate: dtype is f32, expected bf16",
    );
}

#[test]
fn a_data_tensor_of_the_wrong_rank() {
    let q = HostTensor::F32(vec![0.0; 5 * 4 * 16]);
    let tensors = replace(call(Variant::Softmax, DType::F32), t("q", &[20, 16], &q));
    refused(
        "rank2",
        &tensors,
        &[],
        "tensor `q` has shape [20, 16]; expected rank 4 [B, Nq, Hq, d] or rank 3 [total_q, Hq, d]",
    );
    // Rank 3 is a packed Q, which needs its cumulative lengths.
    let tensors = replace(call(Variant::Softmax, DType::F32), t("q", &[5, 4, 16], &q));
    refused(
        "rank3",
        &tensors,
        &[],
        "tensor `cu_seqlens_q` is missing (q is packed [total_q, Hq, d])",
    );
}

#[test]
fn k_and_q_disagree_on_the_batch() {
    let k = HostTensor::F32(vec![0.0; 2 * 9 * 2 * 16]);
    let v = k.clone();
    let tensors = replace(
        replace(
            call(Variant::Softmax, DType::F32),
            t("k", &[2, 9, 2, 16], &k),
        ),
        t("v", &[2, 9, 2, 16], &v),
    );
    refused(
        "batch",
        &tensors,
        &[],
        "k: batch (dim 0) is 2, expected 1 to match q",
    );
}

#[test]
fn v_and_k_disagree_on_the_length() {
    let v = HostTensor::F32(vec![0.0; 8 * 2 * 16]);
    let tensors = replace(
        call(Variant::Softmax, DType::F32),
        t("v", &[1, 8, 2, 16], &v),
    );
    refused(
        "vlen",
        &tensors,
        &[],
        "v: sequence (dim 1) is 8, expected 9 to match k",
    );
}

#[test]
fn a_head_dim_that_is_no_multiple_of_eight() {
    let q = HostTensor::F32(vec![0.0; 5 * 4 * 12]);
    let k = HostTensor::F32(vec![0.0; 9 * 2 * 12]);
    let tensors = vec![
        t("q", &[1, 5, 4, 12], &q),
        t("k", &[1, 9, 2, 12], &k),
        t("v", &[1, 9, 2, 12], &k),
    ];
    refused("d12", &tensors, &[], "the head dim must be a multiple of 8");
}

#[test]
fn query_heads_that_are_no_multiple_of_kv_heads() {
    let q = HostTensor::F32(vec![0.0; 5 * 3 * 16]);
    let tensors = replace(
        call(Variant::Softmax, DType::F32),
        t("q", &[1, 5, 3, 16], &q),
    );
    refused(
        "gqa",
        &tensors,
        &[],
        "heads (dim 2) is 3, not a multiple of the 2 kv heads",
    );
}

#[test]
fn a_zero_length() {
    let empty = HostTensor::F32(Vec::new());
    let tensors = replace(
        call(Variant::Softmax, DType::F32),
        t("q", &[1, 0, 4, 16], &empty),
    );
    refused("zero", &tensors, &[], "q: sequence (dim 1) is zero");
}

#[test]
fn a_parameter_of_the_wrong_shape() {
    let k_sink = HostTensor::F32(vec![0.0; 4 * 8]);
    let tensors = replace(
        call(Variant::KvSink, DType::F32),
        t("k_sink", &[4, 8], &k_sink),
    );
    refused(
        "ksink-shape",
        &tensors,
        &["--variant", "kv-sink"],
        "tensor `k_sink` has shape [4, 8]; expected [Hq=4, d=16]",
    );
    let theta = HostTensor::F32(vec![0.0; 2]);
    let tensors = replace(
        call(Variant::LogitSink, DType::F32),
        t("sink_logits", &[2], &theta),
    );
    refused(
        "theta-shape",
        &tensors,
        &["--variant", "logit-sink"],
        "tensor `sink_logits` has shape [2]; expected [Hq=4]",
    );
    let gate = HostTensor::F32(vec![0.0; 5 * 4 * 2]);
    let tensors = replace(
        call(
            Variant::ContextScale {
                gate: outlier_attn::Gate::TwoSigmoid,
                granularity: outlier_attn::GateGranularity::PerHead,
            },
            DType::F32,
        ),
        t("gate", &[1, 5, 4, 2], &gate),
    );
    refused(
        "gate-shape",
        &tensors,
        &["--variant", "context-scale"],
        "tensor `gate` has shape [1, 5, 4, 2]; expected [B=1, Nq=5, Hq=4] or [B=1, Nq=5, Hq=4, d=16]",
    );
}

#[test]
fn a_parameter_that_is_not_a_float() {
    let tensors = replace(
        call(Variant::LogitSink, DType::F32),
        T("sink_logits", Dtype::U8, vec![4], vec![0; 4]),
    );
    refused(
        "theta-u8",
        &tensors,
        &["--variant", "logit-sink"],
        "tensor `sink_logits` has dtype U8",
    );
}

#[test]
fn scalar_flags_out_of_range() {
    let tensors = call(Variant::Softmax, DType::F32);
    refused(
        "scale",
        &tensors,
        &["--scale", "-1"],
        "scale = -1 is invalid: it must be finite and > 0",
    );
    refused(
        "softcap",
        &tensors,
        &["--softcap", "0"],
        "softcap = 0 is invalid",
    );
    refused(
        "zeta",
        &tensors,
        &["--variant", "clipped-softmax", "--zeta", "0.5"],
        "zeta = 0.5 is invalid: it must be finite and >= 1",
    );
}

#[test]
fn an_unknown_backend_or_an_unwritable_output() {
    let tensors = call(Variant::Softmax, DType::F32);
    refused(
        "backend",
        &tensors,
        &["--backend", "nosuch"],
        "backend `nosuch` is not available",
    );
    refused(
        "out",
        &tensors,
        &["--out", "/nonexistent/dir/out.safetensors"],
        "/nonexistent/dir/out.safetensors",
    );
}

#[test]
fn one_layer_of_a_model_dump_replays_with_a_prefix() {
    let fixture = outlier_attn::safetensors_io::MINILM_FIXTURE;
    let out = tool(&["run", fixture, "--prefix", "layers.3.", "--stats", "heads"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Softmax/f32/none/b2h12g12/q12k12/d32/Heads"),
        "{stdout}"
    );
    // layers.3.o and layers.3.probs are not read; other layers are not mentioned.
    assert!(
        stderr.contains("`layers.3.o`") && stderr.contains("`layers.3.probs`"),
        "{stderr}"
    );
    assert!(!stderr.contains("layers.2."), "{stderr}");

    let out = tool(&["run", fixture, "--prefix", "layers.9."]);
    assert_malformed(&out, "tensor `layers.9.q` is missing");
}

/// `--no-reference` runs the backend and writes the same outputs as a checked run, without the
/// reference or its report.
#[test]
fn no_reference_skips_the_check_and_still_writes_the_outputs() {
    let path = write("no-ref", &call(Variant::Softmax, DType::F32));
    let (checked, unchecked) = (temp("no-ref-checked"), temp("no-ref-unchecked"));
    let run = |extra: &[&str], out: &std::path::Path| {
        let mut args = vec![
            "run",
            path.to_str().unwrap(),
            "--backend",
            "reference",
            "--out",
        ];
        args.push(out.to_str().unwrap());
        args.extend_from_slice(extra);
        let output = tool(&args);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        text(&output.stdout)
    };
    let with = run(&[], &checked);
    let without = run(&["--no-reference"], &unchecked);
    assert!(with.contains("nmse"), "{with}");
    assert!(!without.contains("nmse"), "{without}");
    assert!(
        without.contains("not checked against the reference"),
        "{without}"
    );
    let (a, b) = (
        std::fs::read(&checked).unwrap(),
        std::fs::read(&unchecked).unwrap(),
    );
    for p in [&path, &checked, &unchecked] {
        std::fs::remove_file(p).ok();
    }
    let o = |bytes: &[u8]| {
        SafeTensors::deserialize(bytes)
            .unwrap()
            .tensor("o")
            .unwrap()
            .data()
            .to_vec()
    };
    assert_eq!(o(&a), o(&b));
}
