//! The C ABI end to end: `tests/c/capi_test.c`, compiled against `include/electra.h` and
//! `libelectra.so` (under valgrind when it is installed), trains, saves, resumes and exports a
//! model, runs the encoder and tokenizer, calls every CPU op and checks every error path; this
//! file then checks its results against the Rust API: the checkpoint byte for byte against
//! `PretrainRun`'s (what `electra pretrain` runs) on the same batches, the hidden states and
//! logits against the trainer's discriminator pass, and each op against the CPU backend.

mod common;

use common::{scratch, Rng};
use electra::backend::cpu::CpuBackend;
use electra::backend::{
    AttentionDims, AttentionOp, Backend, BceHeadOp, Buf, Dropout, IBuf, LayerNormOp,
    LayerNormParams, LayerNormSaved, LinearDims, LinearOp, Pick, Sizes, SoftmaxXentOp, Space,
    StepScalars,
};
use electra::data::{prepare, train_tokenizer, Batch, Batcher, PrepareOptions};
use electra::io::run_dir::{self, RunConfig};
use electra::model::config::ElectraConfig;
use electra::pretrain::{Observer, PretrainRun, Start};
use electra::train::{Corruption, Masking, TrainConfig, Trainer};
use std::path::{Path, PathBuf};
use std::process::Command;

const STEPS: u64 = 3;
const BATCH: usize = 4;

struct Quiet;
impl Observer for Quiet {}

/// The folder of the `libelectra.so` built with this test: `cargo test` leaves it beside the test
/// executable, in `deps/`; `cargo build` also copies it one folder up.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_path_buf()
}

fn has(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// A small corpus of generated sentences, prepared into shards of 32 tokens.
fn shards(dir: &Path) -> PathBuf {
    let words = [
        "the",
        "people",
        "of",
        "nation",
        "we",
        "shall",
        "work",
        "for",
        "peace",
        "and",
        "a",
        "better",
        "world",
        "all",
        "us",
        "congress",
        "states",
        "government",
        "year",
        "new",
    ];
    let mut rng = Rng(5);
    let mut text = String::new();
    for _ in 0..400 {
        let n = 4 + rng.below(10);
        let sentence: Vec<&str> = (0..n).map(|_| words[rng.below(words.len())]).collect();
        text.push_str(&sentence.join(" "));
        text.push_str(".\n");
    }
    let file = dir.join("corpus.txt");
    std::fs::write(&file, text).unwrap();
    let tokenizer = train_tokenizer(std::slice::from_ref(&file), 200).unwrap();
    let out = dir.join("shards");
    let options = PrepareOptions {
        seq_len: 32,
        ..PrepareOptions::default()
    };
    prepare(&[file], &out, &tokenizer, &options).unwrap();
    out
}

/// The reference run: `STEPS` steps of `PretrainRun`, as `electra pretrain` takes them.
fn rust_run(dir: &Path, data: &Path) -> RunConfig {
    let tokenizer =
        electra::data::WordPieceTokenizer::from_vocab_file(&data.join("vocab.txt")).unwrap();
    let mut model = ElectraConfig::preset("tiny").unwrap();
    model.vocab_size = tokenizer.vocab_size();
    model.special_tokens = tokenizer.special_tokens();
    model.max_position_embeddings = 64;
    let config = RunConfig {
        model,
        train: TrainConfig {
            seed: 11,
            total_steps: 20,
            warmup_steps: 2,
            peak_lr: 1e-3,
            ..TrainConfig::default()
        },
        data: data.to_path_buf(),
        batch_size: BATCH,
        accumulate: 1,
        world_size: 1,
        log_every: 1,
        checkpoint_every: STEPS,
        keep_checkpoints: 5,
        data_checksum: None,
    };
    run_dir::write_config(dir, &config).unwrap();
    let lock = run_dir::lock_for_training(dir).unwrap();
    let mut run = PretrainRun::new(
        CpuBackend::new(),
        dir,
        config.clone(),
        Start::Fresh(None),
        lock,
    )
    .unwrap();
    run.train(Some(STEPS), &mut Quiet).unwrap();
    config
}

/// The fixtures the C program reads: the run's model and recipe as JSON, the batches the run
/// consumed, and the vocabulary.
fn write_fixtures(fx: &Path, config: &RunConfig) {
    std::fs::create_dir_all(fx).unwrap();
    std::fs::write(
        fx.join("model.json"),
        serde_json::to_string(&config.model).unwrap(),
    )
    .unwrap();
    std::fs::write(
        fx.join("train.json"),
        serde_json::to_string(&config.train).unwrap(),
    )
    .unwrap();
    std::fs::copy(config.data.join("vocab.txt"), fx.join("vocab.txt")).unwrap();
    let mut batcher = Batcher::open(&config.data, BATCH, config.train.seed).unwrap();
    let mut bytes = vec![];
    for v in [STEPS, BATCH as u64, batcher.seq_len() as u64] {
        bytes.extend(v.to_le_bytes());
    }
    for _ in 0..STEPS {
        let b = batcher.next_batch();
        for arr in [&b.input_ids, &b.attention_mask, &b.token_types] {
            bytes.extend(arr.iter().flat_map(|v| v.to_le_bytes()));
        }
    }
    std::fs::write(fx.join("batches.bin"), bytes).unwrap();
}

fn f32s(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn u32s(path: &Path) -> Vec<u32> {
    f32s(path).into_iter().map(f32::to_bits).collect()
}

fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{name}[{i}]: C API {g}, Rust {w}"
        );
    }
}

/// Compiles the C test (and the header alone as C++), runs it, and returns its output folder.
fn run_c_program(work: &Path, fx: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let include = root.join("include");
    let lib = lib_dir();
    let exe = work.join("capi_test");
    let flags = ["-Wall", "-Wextra", "-Werror", "-pedantic"];
    let status = Command::new("cc")
        .args(["-std=c99"])
        .args(flags)
        .arg("-I")
        .arg(&include)
        .arg(root.join("tests/c/capi_test.c"))
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lelectra", "-lm", "-o"])
        .arg(&exe)
        .status()
        .unwrap();
    assert!(status.success(), "compiling tests/c/capi_test.c failed");
    if has("c++") {
        let cpp = work.join("header.cpp");
        std::fs::write(&cpp, "#include \"electra.h\"\nint main() { return electra_abi_version() == ELECTRA_ABI_VERSION ? 0 : 1; }\n").unwrap();
        let status = Command::new("c++")
            .args(flags)
            .arg("-I")
            .arg(&include)
            .arg(&cpp)
            .arg("-fsyntax-only")
            .status()
            .unwrap();
        assert!(
            status.success(),
            "include/electra.h does not compile as C++"
        );
    }
    let out = work.join("c-out");
    std::fs::create_dir_all(out.join("ops")).unwrap();
    let mut cmd = if has("valgrind") {
        let mut c = Command::new("valgrind");
        c.args([
            "--error-exitcode=1",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite",
            "--quiet",
        ])
        .arg(&exe);
        c
    } else {
        eprintln!("valgrind is not installed: running the C test without it");
        Command::new(&exe)
    };
    let result = cmd.arg(fx).arg(&out).output().unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "the C test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all C API checks passed"), "{stdout}");
    out
}

/// The folder of `cuda.h`: `CUDA_HOME`'s, or the pip install of nvcc that
/// `scripts/install-cuda-compiler.sh` makes in `.cuda/`.
fn cuda_include() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("include"))
        .into_iter()
        .chain([root.join(".cuda/site-packages/nvidia/cu13/include")])
        .find(|d| d.join("cuda.h").is_file())
}

/// `tests/c/capi_cuda_test.c` (each device op against the host op, on a GPU) compiles against
/// the header and the library wherever cuda.h is, and runs: on a machine with no GPU, or with
/// a library built without CUDA, it reports that it skipped; with both, every op must agree.
#[test]
fn device_ops_c_test_compiles_and_runs() {
    let Some(cuda) = cuda_include() else {
        eprintln!(
            "skipped: no cuda.h (CUDA_HOME, or .cuda/ from scripts/install-cuda-compiler.sh)"
        );
        return;
    };
    if !has("cc") {
        eprintln!("skipped: no C compiler (cc) on PATH");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir();
    let exe = scratch("capi-cuda").join("capi_cuda_test");
    let status = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg("-I")
        .arg(root.join("include"))
        // cuda.h itself is not pedantic C99: a system header's warnings are not ours.
        .arg("-isystem")
        .arg(&cuda)
        .arg(root.join("tests/c/capi_cuda_test.c"))
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lelectra", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "compiling tests/c/capi_cuda_test.c failed"
    );
    let result = Command::new(&exe).output().unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stdout}\n{stderr}");
    if stdout.contains("skipped:") {
        eprintln!("{}", stdout.trim());
        // Only a library without CUDA may skip where a device is.
        assert!(
            !(cfg!(feature = "cuda") && stdout.contains("built without CUDA")),
            "{stdout}"
        );
    } else {
        assert!(stdout.contains("all device op checks passed"), "{stdout}");
    }
}

#[test]
fn c_program_matches_the_rust_api() {
    if !has("cc") {
        eprintln!("skipped: no C compiler (cc) on PATH");
        return;
    }
    assert!(
        lib_dir().join("libelectra.so").is_file(),
        "{} has no libelectra.so",
        lib_dir().display()
    );
    let work = scratch("capi");
    let data = shards(&work);
    let rust_dir = work.join("rust-run");
    let config = rust_run(&rust_dir, &data);
    let fx = work.join("fixtures");
    write_fixtures(&fx, &config);
    let out = run_c_program(&work, &fx);

    // The checkpoint: byte for byte.
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let rel = format!("checkpoints/step-{STEPS}/{file}");
        let (c, r) = (out.join("run").join(&rel), rust_dir.join(&rel));
        assert!(
            std::fs::read(&c).unwrap() == std::fs::read(&r).unwrap(),
            "{} differs from {}",
            c.display(),
            r.display()
        );
    }
    check_encoder(&out);
    check_ops(&out.join("ops"));
}

/// The encoder's outputs against the discriminator pass of a trainer on the same export.
fn check_encoder(out: &Path) {
    let loaded = electra::io::hf::load_pretraining_dir(&out.join("hf")).unwrap();
    let h = loaded.model.config.discriminator.hidden_size;
    let mut trainer = Trainer::new(
        CpuBackend::new(),
        loaded.model,
        TrainConfig::default(),
        &loaded.values,
    )
    .unwrap();
    trainer.dropout = false;
    let ids = u32s(&out.join("enc_ids.bin"));
    let batch = Batch {
        batch: 3,
        seq: ids.len() / 3,
        input_ids: ids.clone(),
        token_types: u32s(&out.join("enc_types.bin")),
        attention_mask: u32s(&out.join("enc_mask.bin")),
    };
    // The generator's side is not compared; one chosen position lets the pass run.
    let masking = Masking {
        positions: vec![1],
        masked_ids: ids.clone(),
    };
    trainer
        .forward_backward(&batch, &masking, Corruption::Given(&ids))
        .unwrap();
    let acts = trainer.acts().unwrap();
    let n = ids.len();
    let hidden = trainer.read_acts(acts.discriminator.output());
    let logits = trainer.read_acts(acts.disc_logits);
    assert_close(
        "hidden",
        &f32s(&out.join("enc_hidden.bin")),
        &hidden[..n * h],
        1e-5,
    );
    assert_close(
        "logits",
        &f32s(&out.join("enc_logits.bin")),
        &logits[..n],
        1e-5,
    );
}

/// Buffers on a CPU backend, for the reference of each op.
struct Mem {
    be: CpuBackend,
    next: [usize; 3],
}

impl Mem {
    fn new() -> Self {
        let mut be = CpuBackend::new();
        let sizes = Sizes {
            params: 4096,
            acts: 1 << 16,
            ints: 4096,
            grad_sum: 0,
        };
        be.reserve(sizes).unwrap();
        for (space, len) in [
            (Space::Param, 4096),
            (Space::Grad, 4096),
            (Space::Act, 1 << 16),
            (Space::ActGrad, 1 << 16),
        ] {
            be.fill(
                Buf {
                    space,
                    offset: 0,
                    len,
                },
                0.0,
            );
        }
        Mem { be, next: [0; 3] }
    }

    fn buf(&mut self, space: Space, values: &[f32]) -> Buf {
        let slot = if space == Space::Param { 0 } else { 1 };
        let b = Buf {
            space,
            offset: self.next[slot],
            len: values.len(),
        };
        self.next[slot] += values.len().next_multiple_of(64);
        self.be.write(b, values);
        b
    }

    fn act(&mut self, values: &[f32]) -> Buf {
        self.buf(Space::Act, values)
    }

    fn param(&mut self, values: &[f32]) -> Buf {
        self.buf(Space::Param, values)
    }

    fn zeros(&mut self, len: usize) -> Buf {
        self.act(&vec![0.0; len])
    }

    fn ints(&mut self, values: &[u32]) -> IBuf {
        let b = IBuf {
            offset: self.next[2],
            len: values.len(),
        };
        self.next[2] += values.len();
        self.be.write_ints(b, values);
        b
    }

    fn get(&self, b: Buf) -> Vec<f32> {
        let mut v = vec![0.0; b.len];
        self.be.read(b, &mut v);
        v
    }
}

/// Each op of the C test against the same op through the CPU backend.
fn check_ops(dir: &Path) {
    let f = |name: &str| f32s(&dir.join(name));
    let cmp = |m: &Mem, name: &str, b: Buf| assert_close(name, &f(name), &m.get(b), 1e-6);

    // Attention with dropout (seed 42, site 3) and a padded sequence.
    let mut m = Mem::new();
    let dims = AttentionDims {
        batch: 2,
        seq: 5,
        heads: 2,
        head_dim: 4,
    };
    let op = AttentionOp {
        qkv: m.act(&f("attn.qkv")),
        key_mask: m.ints(&u32s(&dir.join("attn.mask"))),
        ctx: m.zeros(2 * 5 * 8),
        probs: m.zeros(2 * 2 * 5 * 5),
        dims,
        dropout: Some(Dropout { p: 0.1, site: 3 }),
        overwrite_dqkv: false,
    };
    let scalars = StepScalars {
        lr: 0.0,
        dropout_seed: 42,
        ..StepScalars::default()
    };
    m.be.begin_step(scalars, None);
    m.be.attention_fwd(&op);
    m.be.write(op.ctx.grad(), &f("attn.dctx"));
    m.be.attention_bwd(&op);
    m.be.end_step();
    cmp(&m, "attn.ctx", op.ctx);
    cmp(&m, "attn.probs", op.probs);
    cmp(&m, "attn.dqkv", op.qkv.grad());

    // Residual + LayerNorm.
    let mut m = Mem::new();
    let (rows, width) = (3, 6);
    let op = LayerNormOp {
        x: m.act(&f("ln.x")),
        residual: Some(m.act(&f("ln.residual"))),
        params: LayerNormParams {
            gain: m.param(&f("ln.gain")),
            bias: m.param(&f("ln.bias")),
            eps: 1e-12,
        },
        y: m.zeros(rows * width),
        saved: LayerNormSaved {
            xhat: m.zeros(rows * width),
            rstd: m.zeros(rows),
        },
        rows,
        width,
        dropout: None,
        sequences: 1,
        overwrite_dx: false,
        overwrite_dresidual: false,
    };
    m.be.layernorm_fwd(&op);
    m.be.write(op.y.grad(), &f("ln.dy"));
    m.be.layernorm_bwd(&op);
    cmp(&m, "ln.y", op.y);
    cmp(&m, "ln.dx", op.x.grad());
    cmp(&m, "ln.dresidual", op.residual.unwrap().grad());
    cmp(&m, "ln.dgain", op.params.gain.grad());
    cmp(&m, "ln.dbias", op.params.bias.grad());

    // Linear + bias + GELU.
    let mut m = Mem::new();
    let dims = LinearDims {
        rows: 4,
        inp: 6,
        out: 5,
    };
    let op = LinearOp {
        x: m.act(&f("lin.x")),
        w: m.param(&f("lin.w")),
        b: Some(m.param(&f("lin.b"))),
        y: m.zeros(20),
        y_stride: 5,
        gelu_pre: Some(m.zeros(20)),
        dims,
        overwrite_dx: false,
    };
    m.be.linear_fwd(&op);
    m.be.write(op.y.grad(), &f("lin.dy"));
    m.be.linear_bwd(&op);
    cmp(&m, "lin.y", op.y);
    cmp(&m, "lin.pre", op.gelu_pre.unwrap());
    cmp(&m, "lin.dx", op.x.grad());
    cmp(&m, "lin.dw", op.w.grad());
    cmp(&m, "lin.db", op.b.unwrap().grad());

    // The generator's loss with argmax picks.
    let mut m = Mem::new();
    let picks = m.ints(&[0; 3]);
    let op = SoftmaxXentOp {
        logits: m.act(&f("gen.logits")),
        row_stride: 7,
        targets: m.ints(&u32s(&dir.join("gen.targets"))),
        row_loss: m.zeros(3),
        grad_scale: 1.0 / 3.0,
        pick: Some((Pick::Argmax, picks)),
        rows: 3,
        vocab: 7,
    };
    m.be.softmax_xent(&op);
    cmp(&m, "gen.row_loss", op.row_loss);
    cmp(&m, "gen.dlogits", op.logits.grad());
    let mut got = vec![0; 3];
    m.be.read_ints(picks, &mut got);
    assert_eq!(u32s(&dir.join("gen.picks")), got, "gen.picks");

    // The BCE head.
    let mut m = Mem::new();
    let op = BceHeadOp {
        h: m.act(&f("bce.h")),
        w: m.param(&f("bce.w")),
        b: m.param(&[0.25]),
        labels: m.act(&[1.0, 0.0, 0.0, 1.0, 0.0, 1.0]),
        mask: m.ints(&[1, 1, 1, 1, 1, 0]),
        logits: m.zeros(6),
        row_loss: m.zeros(6),
        grad_scale: 10.0,
    };
    m.be.bce_head(&op);
    cmp(&m, "bce.logits", op.logits);
    cmp(&m, "bce.row_loss", op.row_loss);
    cmp(&m, "bce.dh", op.h.grad());
    cmp(&m, "bce.dw", op.w.grad());
    cmp(&m, "bce.db", op.b.grad());
}
