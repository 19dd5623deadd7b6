//! Every launch function beside the kernels, run against the parameter lists the kernels declare
//! in their PTX (read from the fatbins build.rs made, by cuobjdump), with [`Kernels::declared`]:
//! a launch whose arguments do not match its kernel in number or size fails here, without a GPU,
//! instead of on one. Between them the launches below reach every kernel of the table.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use super::super::attention::{attention_bwd, attention_fwd};
use super::super::dropout::{dropout_bwd, dropout_fwd, DropoutArgs};
use super::super::embedding::{
    embedding_bwd, embedding_fwd, EmbeddingBwdArgs, EmbeddingFwdArgs, EmbeddingScratch,
};
use super::super::gather_rows::{gather_rows_bwd, gather_rows_fwd, GatherRowsArgs};
use super::super::launch_args::{
    AttentionBwdArgs, AttentionFwdArgs, BceHeadArgs, LayerNormBwdArgs, LayerNormFwdArgs,
    LinearBwdArgs, LinearFwdArgs, SoftmaxXentArgs,
};
use super::super::layernorm::{layernorm_bwd, layernorm_fwd};
use super::super::linear::{bias_gelu_fwd, bias_grads};
use super::super::losses::{
    bce_head, loss_sums, replace_tokens, softmax_xent, LossSumsArgs, ReplaceTokensArgs,
};
use super::super::memory::Dtype;
use super::super::optim::{
    accumulate, adamw, grad_norm, params_to_bf16, AccumulateArgs, AdamwArgs, GradNormArgs,
};
use super::{embedded, Kernels, Launcher};
use crate::backend::{AdamW, AttentionDims, Dropout, LinearDims};

thread_local! {
    /// The kernels whose launches this thread's host tests checked.
    static CHECKED: RefCell<BTreeSet<&'static str>> = const { RefCell::new(BTreeSet::new()) };
}

/// Notes that a launch of `kernel` passed its checks (called by `launch` for the host tests'
/// table, whose kernels have no functions).
pub(super) fn checked(kernel: &'static str) {
    CHECKED.with(|c| c.borrow_mut().insert(kernel));
}

/// The byte size of a PTX parameter declaration's type (`.u64`, `.f32`, `.align 8 .b8 x[16]`).
fn ptx_param_bytes(decl: &str) -> usize {
    if let Some(open) = decl.find('[') {
        let close = decl.find(']').expect("a closing bracket");
        return decl[open + 1..close].parse().expect("an array length");
    }
    let ty = decl
        .split_whitespace()
        .find(|w| w.len() > 2 && w.starts_with('.') && w != &".param" && w != &".ptr")
        .expect("a parameter type");
    match &ty[2..] {
        "64" => 8,
        "32" => 4,
        "16" => 2,
        "8" => 1,
        other => panic!("PTX parameter type {ty} ({other} bits?) in `{decl}`"),
    }
}

/// Each kernel's parameter sizes, from the PTX of every embedded fatbin.
fn declared_params() -> HashMap<String, Vec<u8>> {
    let root = env!("CARGO_MANIFEST_DIR");
    let tools = Command::new("bash")
        .arg(format!("{root}/scripts/install-sass-tools.sh"))
        .output()
        .expect("running scripts/install-sass-tools.sh");
    assert!(tools.status.success(), "installing cuobjdump failed");
    let bin = String::from_utf8(tools.stdout).expect("a path");
    let cuobjdump = Path::new(bin.trim()).join("cuobjdump");
    let mut params = HashMap::new();
    for &(stem, _) in embedded::KERNELS {
        let fatbin = Path::new(env!("OUT_DIR")).join(format!("{stem}.fatbin"));
        let out = Command::new(&cuobjdump)
            .arg("-ptx")
            .arg(&fatbin)
            .output()
            .expect("running cuobjdump");
        assert!(out.status.success(), "cuobjdump -ptx {}", fatbin.display());
        let ptx = String::from_utf8_lossy(&out.stdout);
        let mut entry: Option<(String, Vec<u8>)> = None;
        for line in ptx.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix(".visible .entry ") {
                let name = rest.trim_end_matches('(').to_string();
                entry = Some((name, Vec::new()));
            } else if let Some((_, sizes)) = entry.as_mut().filter(|_| line.starts_with(".param")) {
                sizes.push(ptx_param_bytes(line) as u8);
            } else if line.starts_with(')') {
                if let Some((name, sizes)) = entry.take() {
                    params.insert(name, sizes);
                }
            }
        }
    }
    params
}

/// A launcher of `kernels` on the null stream of an H200-sized device.
fn launcher<'a>(kernels: &'a Kernels, last: &'a Cell<&'static str>) -> Launcher<'a> {
    Launcher {
        kernels,
        stream: std::ptr::null_mut(),
        sms: 132,
        sync_each_launch: false,
        last_kernel: last,
        clock: None,
    }
}

/// Distinct 256-byte aligned stand-ins for device addresses (nothing is launched).
fn addr(i: u64) -> u64 {
    0x1000_0000 + (i << 20)
}

#[test]
fn every_launch_passes_the_arguments_its_kernel_declares() {
    let declared = declared_params();
    assert!(
        declared.len() >= 40,
        "read {} kernels' parameters from the PTX",
        declared.len()
    );
    let kernels = Kernels::declared(|name| {
        declared
            .get(name)
            .unwrap_or_else(|| panic!("kernel {name} is not in the PTX"))
            .clone()
    });
    let last = Cell::new("(none)");
    let l = launcher(&kernels, &last);
    let dropouts = [None, Some(Dropout { p: 0.1, site: 3 })];
    // SAFETY: the table has no functions, so every launch stops after its checks and no address
    // is read.
    unsafe {
        for (head_dim, dropout) in [16, 32, 64]
            .into_iter()
            .flat_map(|d| dropouts.map(|p| (d, p)))
        {
            let dims = AttentionDims {
                batch: 2,
                seq: 37,
                heads: 2,
                head_dim,
            };
            let keep_bits = if dropout.is_some() { addr(4) } else { 0 };
            let fwd = AttentionFwdArgs {
                qkv: addr(0),
                key_mask: addr(1),
                ctx: addr(2),
                lse: addr(3),
                keep_bits,
                dims,
                dropout,
                step: addr(5),
            };
            attention_fwd(&l, &fwd).unwrap();
            let bwd = AttentionBwdArgs {
                qkv: addr(0),
                key_mask: addr(1),
                ctx: addr(2),
                dctx: addr(6),
                lse: addr(3),
                keep_bits,
                delta: addr(7),
                dqkv: addr(8),
                dims,
                dropout,
                step: addr(5),
                overwrite_dqkv: false,
            };
            attention_bwd(&l, &bwd).unwrap();
        }
        for (width, dropout) in [256, 1024]
            .into_iter()
            .flat_map(|w| dropouts.map(|p| (w, p)))
        {
            let fwd = LayerNormFwdArgs {
                x: addr(0),
                residual: addr(1),
                gain: addr(2),
                bias: addr(3),
                y: addr(4),
                xhat: addr(5),
                rstd: addr(6),
                rows: 100,
                width,
                eps: 1e-12,
                dropout,
                per_sequence: 10 * width as u64,
                step: addr(7),
            };
            layernorm_fwd(&l, &fwd).unwrap();
            let bwd = LayerNormBwdArgs {
                dy: addr(8),
                xhat: addr(5),
                rstd: addr(6),
                gain: addr(2),
                dx: addr(9),
                dresidual: addr(10),
                dgain: addr(11),
                dbias: addr(12),
                partials: addr(13),
                rows: 100,
                width,
                overwrite_dx: true,
                overwrite_dresidual: false,
                dropout,
                per_sequence: 10 * width as u64,
                step: addr(7),
            };
            layernorm_bwd(&l, &bwd).unwrap();
            let head = BceHeadArgs {
                h: addr(0),
                w: addr(1),
                b: addr(2),
                labels: addr(3),
                mask: addr(4),
                logits: addr(5),
                row_loss: addr(6),
                dh: addr(7),
                dw: addr(8),
                db: addr(9),
                partials: addr(10),
                grad_scale: 0.5,
                tokens: 100,
                width,
            };
            bce_head(&l, &head).unwrap();
        }
        let loss = SoftmaxXentArgs {
            logits: addr(0),
            dlogits: addr(1),
            ld: 30_528,
            targets: addr(2),
            row_loss: addr(3),
            grad_scale: 0.1,
            pick_mode: 2,
            picks: addr(4),
            rows: 19,
            vocab: 30_522,
            step: addr(5),
        };
        softmax_xent(&l, &loss).unwrap();
        // A linear layer's kernels around its products (which cuBLASLt runs): with GELU, with a
        // bias alone, and with neither (no kernel), into dense and padded output rows.
        let dims = LinearDims {
            rows: 100,
            inp: 64,
            out: 256,
        };
        let gelu = LinearFwdArgs {
            x: addr(0),
            w: addr(1),
            bias: addr(2),
            y: addr(3),
            y_dtype: Dtype::Bf16,
            pre: addr(4),
            dims,
            y_stride: 256,
        };
        bias_gelu_fwd(&l, &gelu).unwrap();
        for (pre, dbias, y_stride) in [(addr(4), addr(7), 256), (0, addr(7), 264), (0, 0, 256)] {
            let bwd = LinearBwdArgs {
                x: addr(0),
                w: addr(1),
                dy: addr(5),
                pre,
                dpre: if pre != 0 { addr(6) } else { 0 },
                dx: addr(8),
                dw: addr(9),
                dbias,
                partials: addr(10),
                dims,
                y_stride,
                overwrite_dx: false,
            };
            bias_grads(&l, &bwd, false).unwrap();
            bias_grads(&l, &bwd, true).unwrap();
        }
        for overwrite in [false, true] {
            let drop = DropoutArgs {
                input: addr(0),
                output: addr(1),
                n: 1000,
                dropout: Dropout { p: 0.1, site: 1 },
                per_sequence: 100,
                step: addr(2),
                overwrite,
            };
            dropout_fwd(&l, &drop).unwrap();
            dropout_bwd(&l, &drop).unwrap();
            let sum = AccumulateArgs {
                src: addr(0),
                dst: addr(1),
                n: 1000,
                overwrite,
            };
            accumulate(&l, &sum).unwrap();
        }
        let norm = GradNormArgs {
            grads: addr(0),
            n: 1000,
            partials: addr(1),
            counter: addr(2),
            max_norm: 1.0,
            out: addr(3),
        };
        grad_norm(&l, &norm).unwrap();
        let update = AdamwArgs {
            params: addr(0),
            grads: addr(1),
            m: addr(2),
            v: addr(3),
            params_bf16: addr(4),
            n: 1000,
            lr_scale: 1.0,
            hyper: AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-6,
                weight_decay: 0.01,
            },
            grad_scale: 1.0,
            step: addr(5),
            clip: addr(6),
        };
        adamw(&l, &update).unwrap();
        params_to_bf16(&l, addr(0), addr(1), 1000).unwrap();
        let gather = GatherRowsArgs {
            rows_of: addr(0),
            rows: addr(1),
            picked: addr(2),
            n: 19,
            width: 256,
        };
        gather_rows_fwd(&l, &gather).unwrap();
        gather_rows_bwd(&l, &gather).unwrap();
        let replace = ReplaceTokensArgs {
            original: addr(0),
            positions: addr(1),
            picks: addr(2),
            corrupted: addr(3),
            is_replaced: addr(4),
            tokens: 128,
            positions_len: 19,
        };
        replace_tokens(&l, &replace).unwrap();
        for picks in [addr(5), 0] {
            let sums = LossSumsArgs {
                gen_row_loss: addr(0),
                disc_row_loss: addr(1),
                disc_logits: addr(2),
                is_replaced: addr(3),
                mask: addr(4),
                picks,
                targets: addr(6),
                masked: 19,
                tokens: 128,
                first: picks != 0,
                sums: addr(7),
            };
            loss_sums(&l, &sums).unwrap();
        }
        // The embedding's forward and every phase of its backward, the sort in one pass (a
        // vocabulary of at most 256 ids) and in two.
        for (width, vocab) in [(128, 200), (768, 30_522)] {
            let fwd = EmbeddingFwdArgs {
                ids: addr(0),
                token_types: addr(1),
                seq: 64,
                word: addr(2),
                position: addr(3),
                token_type: addr(4),
                gain: addr(5),
                bias: addr(6),
                out: addr(7),
                xhat: addr(8),
                rstd: addr(9),
                rows: 256,
                width,
                eps: 1e-12,
            };
            embedding_fwd(&l, &fwd).unwrap();
            let bwd = EmbeddingBwdArgs {
                dout: addr(10),
                xhat: addr(8),
                rstd: addr(9),
                gain: addr(5),
                ids: addr(0),
                token_types: addr(1),
                dsum: addr(11),
                dgain: addr(12),
                dbias: addr(13),
                dword: addr(14),
                dposition: addr(15),
                dtype: addr(16),
                rows: 256,
                width,
                seq: 64,
                vocab,
                types: 2,
                scratch: EmbeddingScratch {
                    partials: addr(17),
                    sort: [addr(18), addr(19), addr(20), addr(21)],
                    tile_hist: addr(22),
                    pieces: [addr(23), addr(24)],
                    type_partials: addr(25),
                },
            };
            embedding_bwd(&l, &bwd).unwrap();
        }
    }
    let missed: Vec<_> = Kernels::NAMES
        .iter()
        .filter(|name| !CHECKED.with(|c| c.borrow().contains(*name)))
        .collect();
    assert!(missed.is_empty(), "no launch above reached {missed:?}");
}

#[test]
fn a_launch_with_an_argument_missing_is_refused_before_it_runs() {
    let kernels = Kernels::declared(|_| vec![8, 4]);
    let last = Cell::new("(none)");
    let l = launcher(&kernels, &last);
    // SAFETY: as above: nothing is launched.
    let e = unsafe {
        l.run(
            kernels.grad_norm,
            (1, 1, 1),
            32,
            &[super::Arg::Ptr(addr(0))],
        )
    }
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("arguments of sizes [8] passed to parameters of sizes [8, 4]"),
        "{e}"
    );
}
