//! Every refusal of DESIGN.md section 4 returns its own error, naming the tensor and dimension,
//! and no input whatsoever makes validation or the reference panic.
mod common;

use outlier_attn::cases::{InputSpec, random_inputs};
use outlier_attn::reference;
use outlier_attn::{
    Args, BufferArg, DType, Dim, EngineFeature, Error, Gate, GateGranularity, HostTensor, Layout,
    Layouts, Params, Problem, Shape, Stat, StatsLevel, Strides, TensorArg, TensorName, Variant,
    validate,
};
use proptest::prelude::*;

fn shape() -> Shape {
    Shape::new(2, 8, 2, 5, 7, 64)
}

fn problem(variant: Variant, stats: StatsLevel) -> Problem {
    Problem::new(shape(), DType::F16)
        .with_variant(variant)
        .with_stats(stats)
}

/// Dense, correctly sized arguments for `p`.
fn args(p: &Problem) -> Args {
    let s = p.shape;
    let layouts = Layouts::contiguous(&s);
    let tensor = |t: TensorName, layout: Layout| TensorArg {
        dtype: p.dtype,
        len: s.dims(t).iter().product(),
        layout,
    };
    let f32s = |len| BufferArg {
        dtype: DType::F32,
        len,
    };
    let per_head = s.q_heads * s.head_dim;
    let mut params = Params::none();
    for name in p.variant.params() {
        match name {
            TensorName::KSink => params.k_sink = Some(f32s(per_head)),
            TensorName::VSink => params.v_sink = Some(f32s(per_head)),
            TensorName::VBias => params.v_bias = Some(f32s(per_head)),
            TensorName::SinkLogits => params.sink_logits = Some(f32s(s.q_heads)),
            TensorName::Gate => {
                params.gate = Some(BufferArg {
                    dtype: p.dtype,
                    len: p.gate_len(),
                })
            }
            _ => unreachable!(),
        }
    }
    Args {
        q: tensor(TensorName::Q, layouts.q),
        k: tensor(TensorName::K, layouts.k),
        v: tensor(TensorName::V, layouts.v),
        o: tensor(TensorName::O, layouts.o),
        lse: Some(f32s(s.lse_len())),
        stats: p.stats.heads().then(|| f32s(s.heads_total() * Stat::COUNT)),
        key_mass: p.stats.keys().then(|| f32s(s.key_mass_len())),
        params,
        param_layouts: Params::none(),
        indices: outlier_attn::SeqIndices::none(),
    }
}

/// Validates `p` with `args` changed by `f`, returning the error and checking its message
/// names what it must.
fn refuse(p: &Problem, f: impl FnOnce(&mut Args), names: &[&str]) -> Error {
    let mut a = args(p);
    f(&mut a);
    let err = validate(p, &a).expect_err("must be refused");
    let msg = err.to_string();
    for n in names {
        assert!(msg.contains(n), "message {msg:?} does not name {n:?}");
    }
    err
}

fn refuse_problem(p: &Problem, names: &[&str]) -> Error {
    refuse(p, |_| {}, names)
}

const ALL_VARIANTS_WITH_PARAMS: [Variant; 4] = [
    Variant::ValueBias,
    Variant::KvSink,
    Variant::LogitSink,
    Variant::ContextScale {
        gate: Gate::Sigmoid,
        granularity: GateGranularity::PerChannel,
    },
];

#[test]
fn valid_arguments_pass_for_every_variant_and_level() {
    for variant in Variant::all_default()
        .into_iter()
        .chain(ALL_VARIANTS_WITH_PARAMS)
    {
        for stats in [StatsLevel::Off, StatsLevel::Heads, StatsLevel::HeadsAndKeys] {
            let p = problem(variant, stats);
            validate(&p, &args(&p)).unwrap_or_else(|e| panic!("{variant} {stats}: {e}"));
        }
    }
}

#[test]
fn rank_and_shape_mismatches_name_the_tensor_and_dimension() {
    let q = [2, 5, 8, 64];
    let k = [2, 7, 2, 64];
    assert!(matches!(
        Shape::from_dims(&q, &k[..3], &k),
        Err(Error::Rank {
            tensor: TensorName::K,
            rank: 3
        })
    ));
    let err = Shape::from_dims(&q, &[3, 7, 2, 64], &k).unwrap_err();
    assert!(matches!(
        err,
        Error::ShapeMismatch {
            tensor: TensorName::K,
            dim: Dim::Batch,
            got: 3,
            expected: 2,
            ..
        }
    ));
    assert!(err.to_string().contains("batch (dim 0)"), "{err}");
    let err = Shape::from_dims(&q, &[2, 7, 2, 32], &k).unwrap_err();
    assert!(matches!(
        err,
        Error::ShapeMismatch {
            tensor: TensorName::K,
            dim: Dim::Channels,
            ..
        }
    ));
    let err = Shape::from_dims(&q, &k, &[2, 6, 2, 64]).unwrap_err();
    assert!(matches!(
        err,
        Error::ShapeMismatch {
            tensor: TensorName::V,
            dim: Dim::Seq,
            other: TensorName::K,
            ..
        }
    ));
    assert_eq!(Shape::from_dims(&q, &k, &k).unwrap(), shape());
}

#[test]
fn zero_dimensions_are_refused() {
    for (i, (tensor, dim)) in [
        (TensorName::Q, Dim::Batch),
        (TensorName::Q, Dim::Seq),
        (TensorName::Q, Dim::Heads),
        (TensorName::Q, Dim::Channels),
        (TensorName::K, Dim::Seq),
        (TensorName::K, Dim::Heads),
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = shape();
        *[
            &mut s.batch,
            &mut s.q_len,
            &mut s.q_heads,
            &mut s.head_dim,
            &mut s.kv_len,
            &mut s.kv_heads,
        ][i] = 0;
        let p = Problem::new(s, DType::F32);
        let err = validate(&p, &args(&problem(Variant::Softmax, StatsLevel::Off))).unwrap_err();
        assert_eq!(err, Error::ZeroDim { tensor, dim }, "case {i}");
        assert!(err.to_string().contains("is zero"));
    }
}

#[test]
fn head_groups_and_head_dims_are_checked() {
    let p = Problem::new(Shape::new(1, 6, 4, 3, 3, 64), DType::F32);
    assert_eq!(
        refuse_problem(&p, &["6", "4"]),
        Error::HeadGroups {
            q_heads: 6,
            kv_heads: 4
        }
    );
    for d in [12, 4, 264, 1000] {
        let p = Problem::new(Shape::new(1, 2, 1, 3, 3, d), DType::F32);
        assert_eq!(
            refuse_problem(&p, &["channels (dim 3)", &d.to_string()]),
            Error::HeadDim { head_dim: d }
        );
    }
}

#[test]
fn layouts_are_checked() {
    let p = problem(Variant::Softmax, StatsLevel::Off);
    let err = refuse(&p, |a| a.k.layout.strides.channel = 2, &["k", "stride 2"]);
    assert_eq!(
        err,
        Error::ChannelStride {
            tensor: TensorName::K,
            stride: 2
        }
    );
    let err = refuse(&p, |a| a.v.len -= 1, &["v", "holds"]);
    assert!(matches!(
        err,
        Error::BufferTooShort {
            tensor: TensorName::V,
            ..
        }
    ));
    let err = refuse(&p, |a| a.q.layout.offset = 1, &["q"]);
    assert!(matches!(
        err,
        Error::BufferTooShort {
            tensor: TensorName::Q,
            ..
        }
    ));
    let err = refuse(
        &p,
        |a| {
            a.k.layout.strides.batch = u64::MAX / 2;
            a.k.layout.strides.seq = u64::MAX / 8;
        },
        &["k", "64-bit"],
    );
    assert_eq!(
        err,
        Error::IndexOverflow {
            tensor: TensorName::K
        }
    );
    let err = refuse(
        &p,
        |a| {
            a.o.layout.strides.head = 32;
        },
        &["o", "overlap"],
    );
    assert_eq!(
        err,
        Error::OverlappingOutput {
            tensor: TensorName::O
        }
    );
}

#[test]
fn large_offsets_are_64_bit() {
    // A batch of 64 sequences of 128k tokens x 8 heads x 128 channels: past 2^32 elements.
    let s = Shape::new(64, 8, 8, 1, 131_072, 128);
    let p = Problem::new(s, DType::Bf16);
    let mut a = args(&p);
    let reach = a.k.layout.reach(s.dims(TensorName::K)).unwrap();
    assert!(reach > u32::MAX as u64);
    a.k.len = reach as usize - 1;
    assert!(
        matches!(validate(&p, &a), Err(Error::BufferTooShort { needed, .. }) if needed == reach)
    );
}

#[test]
fn dtypes_are_checked() {
    let p = problem(
        Variant::ContextScale {
            gate: Gate::TwoSigmoid,
            granularity: GateGranularity::PerHead,
        },
        StatsLevel::Heads,
    );
    let err = refuse(&p, |a| a.k.dtype = DType::Bf16, &["k", "bf16", "f16"]);
    assert_eq!(
        err,
        Error::DType {
            tensor: TensorName::K,
            got: DType::Bf16,
            expected: DType::F16
        }
    );
    let err = refuse(&p, |a| a.o.dtype = DType::F32, &["o"]);
    assert!(matches!(
        err,
        Error::DType {
            tensor: TensorName::O,
            ..
        }
    ));
    let err = refuse(
        &p,
        |a| a.params.gate.as_mut().unwrap().dtype = DType::F32,
        &["gate"],
    );
    assert!(matches!(
        err,
        Error::DType {
            tensor: TensorName::Gate,
            ..
        }
    ));
    let err = refuse(&p, |a| a.lse.as_mut().unwrap().dtype = DType::F16, &["lse"]);
    assert!(matches!(
        err,
        Error::DType {
            tensor: TensorName::Lse,
            ..
        }
    ));
    let p = problem(Variant::LogitSink, StatsLevel::Off);
    let err = refuse(
        &p,
        |a| a.params.sink_logits.as_mut().unwrap().dtype = DType::F16,
        &["sink_logits"],
    );
    assert!(matches!(
        err,
        Error::DType {
            tensor: TensorName::SinkLogits,
            expected: DType::F32,
            ..
        }
    ));
}

#[test]
fn scalars_are_checked() {
    let base = problem(Variant::Softmax, StatsLevel::Off);
    for scale in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let err = refuse_problem(&base.with_scale(scale), &["scale"]);
        assert!(matches!(err, Error::Scalar { name: "scale", .. }), "{err}");
    }
    for cap in [0.0, -3.0, f32::NAN, f32::INFINITY] {
        let err = refuse_problem(&base.with_softcap(cap), &["softcap"]);
        assert!(
            matches!(
                err,
                Error::Scalar {
                    name: "softcap",
                    ..
                }
            ),
            "{err}"
        );
    }
    for bias in [f32::NAN, f32::NEG_INFINITY] {
        let p = problem(Variant::Sigmoid { bias: Some(bias) }, StatsLevel::Off);
        assert!(matches!(
            refuse_problem(&p, &["sigmoid bias"]),
            Error::Scalar {
                name: "sigmoid bias",
                ..
            }
        ));
    }
    for (zeta, gamma, name) in [
        (0.9, 0.0, "zeta"),
        (f32::NAN, 0.0, "zeta"),
        (1.0, 0.1, "gamma"),
        (1.0, f32::NEG_INFINITY, "gamma"),
    ] {
        let p = problem(Variant::ClippedSoftmax { zeta, gamma }, StatsLevel::Off);
        let err = refuse_problem(&p, &[name]);
        assert!(
            matches!(err, Error::Scalar { name: n, .. } if n == name),
            "{err}"
        );
    }
}

#[test]
fn variant_parameters_are_checked() {
    let p = problem(Variant::KvSink, StatsLevel::Off);
    let err = refuse(&p, |a| a.params.v_sink = None, &["v_sink", "KvSink"]);
    assert_eq!(
        err,
        Error::MissingParam {
            param: TensorName::VSink,
            variant: "KvSink"
        }
    );
    let err = refuse(
        &p,
        |a| {
            a.params.sink_logits = Some(BufferArg {
                dtype: DType::F32,
                len: 8,
            })
        },
        &["sink_logits"],
    );
    assert_eq!(
        err,
        Error::ExtraParam {
            param: TensorName::SinkLogits,
            variant: "KvSink"
        }
    );
    let err = refuse(
        &p,
        |a| a.params.k_sink.as_mut().unwrap().len = 64,
        &["k_sink", "512", "Hq=8, d=64"],
    );
    assert!(matches!(
        err,
        Error::Size {
            tensor: TensorName::KSink,
            got: 64,
            expected: 512,
            ..
        }
    ));
    let p = problem(Variant::Softmax, StatsLevel::Off);
    let err = refuse(
        &p,
        |a| {
            a.params.v_bias = Some(BufferArg {
                dtype: DType::F32,
                len: 512,
            })
        },
        &["v_bias", "Softmax"],
    );
    assert!(matches!(
        err,
        Error::ExtraParam {
            param: TensorName::VBias,
            ..
        }
    ));
    let p = problem(
        Variant::ContextScale {
            gate: Gate::Identity,
            granularity: GateGranularity::PerChannel,
        },
        StatsLevel::Off,
    );
    let err = refuse(
        &p,
        |a| a.params.gate.as_mut().unwrap().len = 2 * 5 * 8,
        &["gate", "d=64"],
    );
    assert!(matches!(
        err,
        Error::Size {
            tensor: TensorName::Gate,
            ..
        }
    ));
}

#[test]
fn output_buffers_are_checked() {
    let p = problem(Variant::Softmax, StatsLevel::HeadsAndKeys);
    let err = refuse(&p, |a| a.lse.as_mut().unwrap().len += 1, &["lse", "Nq=5"]);
    assert!(matches!(
        err,
        Error::Size {
            tensor: TensorName::Lse,
            ..
        }
    ));
    let err = refuse(&p, |a| a.stats.as_mut().unwrap().len -= 1, &["stats"]);
    assert!(matches!(
        err,
        Error::Size {
            tensor: TensorName::Stats,
            ..
        }
    ));
    let err = refuse(&p, |a| a.key_mass = None, &["key_mass"]);
    assert!(matches!(
        err,
        Error::Size {
            tensor: TensorName::KeyMass,
            got: 0,
            ..
        }
    ));
    let p = problem(Variant::Softmax, StatsLevel::Off);
    let err = refuse(
        &p,
        |a| {
            a.stats = Some(BufferArg {
                dtype: DType::F32,
                len: 16 * Stat::COUNT,
            })
        },
        &["stats", "Off"],
    );
    assert_eq!(
        err,
        Error::UnexpectedOutput {
            tensor: TensorName::Stats,
            level: "Off"
        }
    );
}

#[test]
fn host_inputs_of_the_wrong_size_are_refused_by_the_reference() {
    let p = problem(Variant::Softmax1, StatsLevel::Heads);
    let mut inputs = random_inputs(&p, &InputSpec::default());
    inputs.k = HostTensor::filled(DType::F16, 10, 0.0);
    assert!(matches!(
        reference::forward(&p, &inputs),
        Err(Error::BufferTooShort {
            tensor: TensorName::K,
            ..
        })
    ));
}

fn arb_layout() -> impl Strategy<Value = Layout> {
    (0u64..64, 0u64..4096, 0u64..512, 0u64..128, 0u64..3).prop_map(
        |(offset, batch, seq, head, channel)| Layout {
            offset,
            strides: Strides {
                batch,
                seq,
                head,
                channel,
            },
        },
    )
}

proptest! {
    #![proptest_config(common::config())]

    /// Arbitrary sizes, strides, lengths and scalars: validation answers, and whatever it
    /// accepts the reference runs without panicking or reading out of bounds.
    #[test]
    fn no_input_panics(
        dims in proptest::collection::vec(0usize..6, 6),
        d in prop_oneof![Just(8usize), Just(16), 0usize..40],
        layouts in proptest::collection::vec(arb_layout(), 4),
        lens in proptest::collection::vec(0usize..3000, 3),
        variant in common::arb_variant(),
        scale in prop_oneof![Just(None), any::<f32>().prop_map(Some)],
        softcap in prop_oneof![Just(None), any::<f32>().prop_map(Some)],
        stats in prop_oneof![Just(StatsLevel::Off), Just(StatsLevel::Heads), Just(StatsLevel::HeadsAndKeys)],
        param_len in 0usize..64,
    ) {
        let s = Shape::new(dims[0], dims[1], dims[2], dims[3], dims[4], d);
        let p = Problem { shape: s, dtype: DType::F32, variant, mask: outlier_attn::Mask::Causal, scale, softcap, stats, seqs: outlier_attn::Sequences::DENSE };
        let tensor = |i: usize| HostTensor::filled(DType::F32, lens[i], 0.5);
        let mut inputs = outlier_attn::HostInputs {
            q: tensor(0),
            k: tensor(1),
            v: tensor(2),
            layouts: Layouts { q: layouts[0], k: layouts[1], v: layouts[2], o: layouts[3], params: Params::none() },
            params: Params::none(),
            indices: outlier_attn::SeqIndices::none(),
        };
        for name in variant.params() {
            let t = Some(HostTensor::filled(DType::F32, param_len, 0.1));
            match name {
                TensorName::KSink => inputs.params.k_sink = t,
                TensorName::VSink => inputs.params.v_sink = t,
                TensorName::VBias => inputs.params.v_bias = t,
                TensorName::SinkLogits => inputs.params.sink_logits = t,
                _ => inputs.params.gate = t,
            }
        }
        let _ = reference::forward(&p, &inputs);
        let _ = reference::baseline(&p, &inputs);
    }
}

/// A valid engine-shaped call to break: packed Q of 3 sequences over a paged cache of 4-token
/// pages, LogitSink, with statistics.
fn paged_call() -> (Problem, outlier_attn::HostInputs) {
    let template = Problem::new(Shape::new(1, 4, 2, 1, 1, 8), DType::F32)
        .with_variant(Variant::LogitSink)
        .with_mask(outlier_attn::Mask::Causal)
        .with_stats(StatsLevel::HeadsAndKeys);
    outlier_attn::cases::engine_inputs(
        &template,
        &outlier_attn::cases::SeqCase {
            q_lens: vec![2, 1, 3],
            kv_lens: vec![5, 9, 3],
            packed_q: true,
            kv: outlier_attn::cases::KvStorage::Paged {
                page_size: 4,
                spare_pages: 2,
            },
        },
        &InputSpec::default(),
    )
}

/// As [`paged_call`] with packed K/V.
fn packed_call() -> (Problem, outlier_attn::HostInputs) {
    let (template, _) = paged_call();
    outlier_attn::cases::engine_inputs(
        &template,
        &outlier_attn::cases::SeqCase {
            q_lens: vec![2, 1, 3],
            kv_lens: vec![5, 9, 3],
            packed_q: true,
            kv: outlier_attn::cases::KvStorage::Packed,
        },
        &InputSpec::default(),
    )
}

/// Host validation of `inputs` changed by `f` must refuse with an error naming `names`.
fn refuse_host(
    p: &Problem,
    inputs: &outlier_attn::HostInputs,
    f: impl FnOnce(&mut Problem, &mut outlier_attn::HostInputs),
    names: &[&str],
) -> Error {
    let (mut p, mut inputs) = (*p, inputs.clone());
    f(&mut p, &mut inputs);
    let err = inputs.validate(&p).expect_err("must be refused");
    let msg = err.to_string();
    for n in names {
        assert!(msg.contains(n), "message {msg:?} does not name {n:?}");
    }
    // The reference refuses the same way, and never panics.
    assert_eq!(reference::forward(&p, &inputs).err(), Some(err.clone()));
    err
}

#[test]
fn engine_shaped_calls_are_valid_as_built() {
    for (p, inputs) in [paged_call(), packed_call()] {
        inputs.validate(&p).expect("valid");
        reference::forward(&p, &inputs).expect("valid");
    }
}

#[test]
fn cumulative_lengths_are_checked() {
    let (p, inputs) = packed_call();
    fn cu_q(i: &mut outlier_attn::HostInputs) -> &mut Vec<i32> {
        i.indices.cu_seqlens_q.as_mut().unwrap()
    }
    fn cu_k(i: &mut outlier_attn::HostInputs) -> &mut Vec<i32> {
        i.indices.cu_seqlens_k.as_mut().unwrap()
    }
    type Pick = fn(&mut outlier_attn::HostInputs) -> &mut Vec<i32>;
    for (tensor, cu) in [
        ("cu_seqlens_q", cu_q as Pick),
        ("cu_seqlens_k", cu_k as Pick),
    ] {
        let err = refuse_host(&p, &inputs, |_, i| cu(i)[0] = 1, &[tensor, "start at 0"]);
        assert!(matches!(err, Error::SeqStart { value: 1, .. }));
        let err = refuse_host(
            &p,
            &inputs,
            |_, i| cu(i)[2] = 1,
            &[tensor, "[2]", "decrease"],
        );
        assert!(
            matches!(
                err,
                Error::SeqOrder {
                    index: 2,
                    value: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = refuse_host(&p, &inputs, |_, i| cu(i)[3] -= 1, &[tensor, "total"]);
        assert!(matches!(err, Error::SeqEnd { .. }), "{err:?}");
        // B disagreeing between the index tensors: one entry too many.
        let err = refuse_host(&p, &inputs, |_, i| cu(i).push(0), &[tensor, "B+1=4"]);
        assert!(
            matches!(
                err,
                Error::Size {
                    expected: 4,
                    got: 5,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    // A sequence longer than the call declares (Nq = 3 is the longest).
    let err = refuse_host(
        &p,
        &inputs,
        |p, _| p.shape.q_len = 2,
        &["cu_seqlens_q", "sequence 2", "length 3"],
    );
    assert!(
        matches!(
            err,
            Error::SeqLen {
                batch: 2,
                len: 3,
                max: 2,
                ..
            }
        ),
        "{err:?}"
    );
    // A packed tensor of no tokens.
    let err = refuse_host(
        &p,
        &inputs,
        |p, _| p.seqs.q = outlier_attn::QuerySeqs::Packed { total: 0 },
        &["q", "sequence (dim 1)"],
    );
    assert!(matches!(err, Error::ZeroDim { .. }), "{err:?}");
}

#[test]
fn paged_caches_are_checked() {
    let (p, inputs) = paged_call();
    let outlier_attn::KvSeqs::Paged {
        pages,
        page_size,
        max_pages,
    } = p.seqs.kv
    else {
        unreachable!()
    };
    fn table(i: &mut outlier_attn::HostInputs) -> &mut Vec<i32> {
        i.indices.block_table.as_mut().unwrap()
    }
    // Sequence 1 has 9 keys: pages 0, 1 and 2 of its row are read.
    let err = refuse_host(
        &p,
        &inputs,
        |_, i| table(i)[max_pages + 2] = pages as i32,
        &["block_table[1, 2]", "outside"],
    );
    assert!(
        matches!(
            err,
            Error::PageIndex {
                batch: 1,
                page: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let err = refuse_host(
        &p,
        &inputs,
        |_, i| table(i)[max_pages] = -1,
        &["block_table[1, 0]"],
    );
    assert!(matches!(err, Error::PageIndex { value: -1, .. }), "{err:?}");
    // Entries past the pages a sequence uses are never read: anything goes there.
    let mut lax = inputs.clone();
    table(&mut lax)[2 * max_pages + 2] = 1_000_000;
    lax.validate(&p).expect("unused entries are not checked");
    // A sequence longer than its cache, and a negative length.
    let err = refuse_host(
        &p,
        &inputs,
        |_, i| i.indices.seqlens_k.as_mut().unwrap()[0] = (max_pages * page_size + 1) as i32,
        &["seqlens_k", "sequence 0"],
    );
    assert!(matches!(err, Error::SeqLen { batch: 0, .. }), "{err:?}");
    let err = refuse_host(
        &p,
        &inputs,
        |_, i| i.indices.seqlens_k.as_mut().unwrap()[2] = -1,
        &["seqlens_k", "sequence 2", "length -1"],
    );
    assert!(
        matches!(
            err,
            Error::SeqLen {
                batch: 2,
                len: -1,
                ..
            }
        ),
        "{err:?}"
    );
    // The layout's settings.
    for (field, kv) in [
        (
            "page_size",
            outlier_attn::KvSeqs::Paged {
                pages,
                page_size: 0,
                max_pages,
            },
        ),
        (
            "pages",
            outlier_attn::KvSeqs::Paged {
                pages: 0,
                page_size,
                max_pages,
            },
        ),
        (
            "max_pages",
            outlier_attn::KvSeqs::Paged {
                pages,
                page_size,
                max_pages: 1,
            },
        ),
    ] {
        let err = refuse_host(&p, &inputs, |p, _| p.seqs.kv = kv, &[field]);
        assert!(matches!(err, Error::Paging { .. }), "{field}: {err:?}");
    }
    // Index tensors missing, unexpected, or of the wrong length.
    let err = refuse_host(
        &p,
        &inputs,
        |_, i| i.indices.block_table = None,
        &["block_table", "required"],
    );
    assert!(matches!(err, Error::MissingIndex { .. }));
    let err = refuse_host(
        &p,
        &inputs,
        |_, i| i.indices.cu_seqlens_k = Some(vec![0, 5, 14, 17]),
        &["cu_seqlens_k", "does not read"],
    );
    assert!(matches!(err, Error::UnexpectedIndex { .. }));
    let err = refuse_host(
        &p,
        &inputs,
        |_, i| {
            i.indices.seqlens_k.as_mut().unwrap().pop();
        },
        &["seqlens_k", "B=3"],
    );
    assert!(matches!(
        err,
        Error::Size {
            expected: 3,
            got: 2,
            ..
        }
    ));
}

#[test]
fn windows_in_the_signed_convention_are_checked() {
    use outlier_attn::Mask;
    assert_eq!(Mask::from_signed(-1, -1), Ok(Mask::None));
    assert_eq!(Mask::from_signed(-1, 0), Ok(Mask::Causal));
    assert_eq!(
        Mask::from_signed(127, 0),
        Ok(Mask::Window {
            left: Some(127),
            right: Some(0)
        })
    );
    for (left, right, side) in [(-2, 0, "left"), (3, -7, "right")] {
        let err = Mask::from_signed(left, right).expect_err("below -1");
        assert!(matches!(err, Error::Window { .. }));
        assert!(err.to_string().contains(side), "{err}");
    }
}

#[test]
fn outputs_and_gate_views_of_engine_shaped_calls_are_checked() {
    let (p, _) = packed_call();
    let p = p.with_variant(Variant::ContextScale {
        gate: Gate::Sigmoid,
        granularity: GateGranularity::PerChannel,
    });
    let mut a = args(&p);
    let tokens = 6;
    let (hq, d) = (p.shape.q_heads, p.shape.head_dim);
    a.indices = packed_call().1.indices.lens();
    let dims = |t| p.tensor_dims(t);
    for (arg, t) in [
        (&mut a.q, TensorName::Q),
        (&mut a.o, TensorName::O),
        (&mut a.k, TensorName::K),
        (&mut a.v, TensorName::V),
    ] {
        arg.layout = Layout::contiguous(dims(t)[1], dims(t)[2], d);
        arg.len = dims(t).iter().product();
    }
    a.lse = Some(BufferArg {
        dtype: DType::F32,
        len: hq * tokens,
    });
    a.key_mass = Some(BufferArg {
        dtype: DType::F32,
        len: hq * 17,
    });
    a.params.gate = Some(BufferArg {
        dtype: DType::F32,
        len: tokens * hq * d,
    });
    validate(&p, &a).expect("valid packed call");
    // No LSE buffer: accepted, and said so.
    let mut no_lse = a.clone();
    no_lse.lse = None;
    let checked = validate(&p, &no_lse).expect("an LSE is optional");
    assert!(!checked.writes_lse());
    assert!(checked.engine_features().contains(&EngineFeature::NoLse));
    let refuse_a = |f: &dyn Fn(&mut Args), names: &[&str]| {
        let mut b = a.clone();
        f(&mut b);
        let err = validate(&p, &b).expect_err("must be refused");
        for n in names {
            assert!(err.to_string().contains(n), "{err} does not name {n}");
        }
        err
    };
    let err = refuse_a(&|a| a.lse.as_mut().unwrap().len += 1, &["lse", "total_q=6"]);
    assert!(matches!(err, Error::Size { .. }));
    let err = refuse_a(
        &|a| a.key_mass.as_mut().unwrap().len = 3 * hq * 9,
        &["key_mass", "total_k=17"],
    );
    assert!(matches!(err, Error::Size { .. }));
    // A gate view: inside its buffer, channels contiguous.
    let wide = Layout {
        offset: d as u64,
        strides: Strides {
            batch: 0,
            seq: (hq * 2 * d) as u64,
            head: (2 * d) as u64,
            channel: 1,
        },
    };
    let mut viewed = a.clone();
    viewed.params.gate = Some(BufferArg {
        dtype: DType::F32,
        len: tokens * hq * 2 * d,
    });
    viewed.param_layouts.gate = Some(wide);
    let checked = validate(&p, &viewed).expect("a gate view");
    assert!(
        checked
            .engine_features()
            .contains(&EngineFeature::StridedParams)
    );
    let mut short = viewed.clone();
    short.params.gate.as_mut().unwrap().len -= 1;
    let err = validate(&p, &short).expect_err("one element short");
    assert!(
        matches!(
            err,
            Error::BufferTooShort {
                tensor: TensorName::Gate,
                ..
            }
        ),
        "{err:?}"
    );
    let mut strided = viewed.clone();
    strided.param_layouts.gate.as_mut().unwrap().strides.channel = 2;
    let err = validate(&p, &strided).expect_err("channels not contiguous");
    assert!(
        matches!(
            err,
            Error::ChannelStride {
                tensor: TensorName::Gate,
                ..
            }
        ),
        "{err:?}"
    );
}

proptest! {
    #![proptest_config(common::config())]

    /// Arbitrary sequence layouts and index tensors, valid or not: validation answers, and
    /// whatever it accepts the reference runs without panicking or reading out of bounds.
    #[test]
    fn no_index_tensor_panics(
        b in 1usize..4,
        nq in 1usize..6,
        nk in 1usize..12,
        packed_q in prop_oneof![Just(None), (0usize..14).prop_map(Some)],
        kv in 0..4u8,
        total_k in 0usize..20,
        pages in 0usize..6,
        page_size in 0usize..6,
        max_pages in 0usize..5,
        values in proptest::collection::vec(proptest::collection::vec(-3i32..24, 0..16), 4),
        present in proptest::collection::vec(any::<bool>(), 4),
    ) {
        use outlier_attn::{KvSeqs, QuerySeqs, SeqIndices, Sequences};
        let seqs = Sequences {
            q: packed_q.map_or(QuerySeqs::Dense, |total| QuerySeqs::Packed { total }),
            kv: match kv {
                0 => KvSeqs::Dense,
                1 => KvSeqs::DenseWithLens,
                2 => KvSeqs::Packed { total: total_k },
                _ => KvSeqs::Paged { pages, page_size, max_pages },
            },
        };
        let p = Problem::new(Shape::new(b, 2, 1, nq, nk, 8), DType::F32)
            .with_variant(Variant::Softmax)
            .with_mask(outlier_attn::Mask::window(Some(2), None))
            .with_stats(StatsLevel::HeadsAndKeys)
            .with_seqs(seqs);
        let filled = |t| HostTensor::filled(DType::F32, p.tensor_dims(t).iter().product::<usize>().min(4000), 0.25);
        let mut inputs = outlier_attn::HostInputs::dense(&p, filled(TensorName::Q), filled(TensorName::K), filled(TensorName::V));
        let [_, qt, _, _] = p.tensor_dims(TensorName::Q);
        let [_, kt, _, _] = p.tensor_dims(TensorName::K);
        inputs.layouts.q = Layout::contiguous(qt, 2, 8);
        inputs.layouts.k = Layout::contiguous(kt, 1, 8);
        inputs.layouts.v = inputs.layouts.k;
        let pick = |i: usize| present[i].then(|| values[i].clone());
        inputs.indices = SeqIndices {
            cu_seqlens_q: pick(0),
            cu_seqlens_k: pick(1),
            seqlens_k: pick(2),
            block_table: pick(3),
        };
        let _ = inputs.validate(&p);
        let _ = reference::forward(&p, &inputs);
        let _ = reference::baseline(&p, &inputs);
        let _ = outlier_attn::SeqMap::new(&p.shape, &p.seqs, &inputs.indices);
    }
}
