//! Compiles the CUDA kernels (`kernels/*.cu`) when the `cuda` feature is on; does nothing otherwise,
//! so the crate builds on any machine with no CUDA at all.
//!
//! Each `kernels/NAME.cu` becomes one fatbin holding cubin for sm_80 and sm_90 plus PTX for
//! compute_80 (which the driver can JIT for newer GPUs), built by nvcc with ptxas' resource report
//! on. The fatbins are embedded through `$OUT_DIR/kernels.rs`:
//!
//! ```ignore
//! include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
//! // KERNELS: &[(&str, &[u8])]            file stem -> fatbin bytes (16-byte aligned)
//! // KERNEL_FUNCTIONS: &[(&str, &[&str])] file stem -> its extern "C" entry points
//! ```
//!
//! ptxas' per-kernel registers, stack frame, spills and shared memory go to
//! `$OUT_DIR/ptxas-report.txt`; a kernel that spills or uses a stack frame is a `cargo:warning`.
//!
//! nvcc is found through `NVCC`, then `CUDA_HOME/bin/nvcc`, then `PATH`, then the copy that
//! `scripts/install-cuda-compiler.sh` puts in `.cuda/`. Extra flags can be passed in
//! `ELECTRA_NVCC_FLAGS` (space-separated).
//!
//! Standard library only, on purpose: no build dependency to download or compile.

use std::collections::BTreeMap;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

/// Where `scripts/install-cuda-compiler.sh` installs nvcc, relative to the crate root.
const LOCAL_NVCC: &str = ".cuda/site-packages/nvidia/cu13/bin/nvcc";

/// The nvcc flags every kernel file is compiled with (besides `-o` and the input).
///
/// No `--use_fast_math`: it would turn `erff`/`expf`/`logf` into approximations and flush
/// denormals, and the exact-erf GELU, the losses and the Gumbel noise must match the f32 CPU
/// reference (the noise bit for bit). Kernels that want the fast path (attention's softmax) call
/// `exp2f`/`ex2.approx` explicitly.
const NVCC_FLAGS: &[&str] = &[
    "--fatbin",
    "-std=c++17",
    "-O3",
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_80,code=compute_80",
    "-Xptxas=-v",
    "-Xptxas=-warn-spills",
    "-Xptxas=-warn-lmem-usage",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in ["NVCC", "CUDA_HOME", "PATH", "ELECTRA_NVCC_FLAGS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let kernel_dir = root.join("kernels");
    println!("cargo:rerun-if-changed={}", kernel_dir.display());

    let nvcc = find_nvcc(&root).unwrap_or_else(|| {
        fail(&format!(
            "the `cuda` feature needs nvcc (CUDA 13.0) and none was found through NVCC, \
             CUDA_HOME/bin/nvcc, PATH or {LOCAL_NVCC}.\n\
             Install the pinned compiler with `bash scripts/install-cuda-compiler.sh` \
             (or set NVCC=/path/to/nvcc), then build again."
        ))
    });

    // A different compiler (a reinstall, another version) rebuilds the kernels.
    println!("cargo:rerun-if-changed={}", nvcc.display());

    let mut sources = Vec::new();
    let mut headers = Vec::new();
    for entry in fs::read_dir(&kernel_dir).unwrap_or_else(|e| {
        fail(&format!("cannot read {}: {e}", kernel_dir.display()));
    }) {
        let path = entry.expect("kernels/ entry").path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("cu") => sources.push(path),
            Some("cuh") => headers.push(path),
            _ => {}
        }
    }
    sources.sort();
    for path in sources.iter().chain(&headers) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    if sources.is_empty() {
        fail(&format!("no .cu files in {}", kernel_dir.display()));
    }

    // Fatbins of kernel files that no longer exist.
    if let Ok(entries) = fs::read_dir(&out) {
        for path in entries.flatten().map(|e| e.path()) {
            let stale = path.extension().is_some_and(|e| e == "fatbin")
                && !sources.iter().any(|s| s.file_stem() == path.file_stem());
            if stale {
                let _ = fs::remove_file(&path);
            }
        }
    }

    let extra: Vec<String> = env::var("ELECTRA_NVCC_FLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();

    // Compile the files in parallel, as many at once as cargo gives this build jobs.
    let jobs: usize = env::var("NUM_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut results: Vec<Compiled> = Vec::new();
    for batch in sources.chunks(jobs) {
        let handles: Vec<_> = batch
            .iter()
            .map(|src| {
                let (nvcc, src, out, kdir, extra) = (
                    nvcc.clone(),
                    src.clone(),
                    out.clone(),
                    kernel_dir.clone(),
                    extra.clone(),
                );
                thread::spawn(move || compile(&nvcc, &src, &out, &kdir, &extra))
            })
            .collect();
        for h in handles {
            results.push(h.join().expect("nvcc thread panicked"));
        }
    }

    let mut failures = String::new();
    for r in &results {
        if let Err(msg) = &r.result {
            let _ = writeln!(failures, "{msg}");
        }
    }
    if !failures.is_empty() {
        fail(&failures);
    }

    write_report(&out, &nvcc, &extra, &results);
    write_embedding(&out, &results);
}

/// The outcome of compiling one kernel file.
struct Compiled {
    stem: String,
    fatbin: PathBuf,
    /// ptxas' report, one entry per (function, arch).
    functions: Vec<FunctionReport>,
    result: Result<(), String>,
}

#[derive(Default, Clone)]
struct FunctionReport {
    name: String,
    arch: String,
    registers: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
    smem: u32,
}

fn fail(msg: &str) -> ! {
    eprintln!("\nerror: {msg}\n");
    std::process::exit(1);
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    let usable = |p: &Path| p.is_file();
    if let Some(p) = env::var_os("NVCC").map(PathBuf::from) {
        if usable(&p) {
            return Some(p);
        }
        // A bare name ("nvcc") is looked up in PATH below.
        if p.components().count() > 1 {
            fail(&format!(
                "NVCC={} does not exist; unset it or run `bash scripts/install-cuda-compiler.sh`",
                p.display()
            ));
        }
    }
    if let Some(home) = env::var_os("CUDA_HOME") {
        let p = PathBuf::from(home).join("bin").join("nvcc");
        if usable(&p) {
            return Some(p);
        }
    }
    if let Some(paths) = env::var_os("PATH") {
        for dir in env::split_paths(&paths) {
            let p = dir.join("nvcc");
            if usable(&p) {
                return Some(p);
            }
        }
    }
    let local = root.join(LOCAL_NVCC);
    usable(&local).then_some(local)
}

fn compile(nvcc: &Path, src: &Path, out: &Path, kernel_dir: &Path, extra: &[String]) -> Compiled {
    let stem = src
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("kernel file name is UTF-8")
        .to_owned();
    let fatbin = out.join(format!("{stem}.fatbin"));
    let mut cmd = Command::new(nvcc);
    cmd.args(NVCC_FLAGS)
        .arg(format!("-I{}", kernel_dir.display()))
        .args(extra)
        .arg("-o")
        .arg(&fatbin)
        .arg(src);
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            return Compiled {
                stem,
                fatbin,
                functions: Vec::new(),
                result: Err(format!("cannot run {}: {e}", nvcc.display())),
            }
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let functions = parse_ptxas(&stderr);
    let result = if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nvcc failed on {} ({}):\n{:?}\n{stdout}{}",
            src.display(),
            output.status,
            cmd,
            stderr
                .lines()
                .filter(|l| !l.starts_with("ptxas info") && !l.starts_with("    "))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    };
    Compiled {
        stem,
        fatbin,
        functions,
        result,
    }
}

/// Reads ptxas' `-v` report:
/// ```text
/// ptxas info    : Compiling entry function 'layernorm_residual_fwd' for 'sm_90'
/// ptxas info    : Function properties for layernorm_residual_fwd
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 40 registers, used 1 barriers, 8192 bytes smem, 400 bytes cmem[0]
/// ```
fn parse_ptxas(stderr: &str) -> Vec<FunctionReport> {
    // One record per entry function and architecture, plus one per device function that ptxas
    // kept out of line ("Function properties for" a name other than the entry's); the stack and
    // register lines belong to the latest record.
    let mut out: Vec<FunctionReport> = Vec::new();
    let number_before = |line: &str, unit: &str| -> u32 {
        line.find(unit)
            .and_then(|i| line[..i].split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut entry_name = String::new();
    let mut arch = String::new();
    for line in stderr.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            entry_name = parts.next().unwrap_or("").to_owned();
            arch = parts.nth(1).unwrap_or("").to_owned();
            out.push(FunctionReport {
                name: entry_name.clone(),
                arch: arch.clone(),
                ..Default::default()
            });
        } else if let Some(name) = line.split("Function properties for ").nth(1) {
            if name.trim() != entry_name {
                out.push(FunctionReport {
                    name: format!("{} (callee)", name.trim()),
                    arch: arch.clone(),
                    ..Default::default()
                });
            }
        } else if let Some(f) = out.last_mut() {
            if line.contains("bytes stack frame") {
                f.stack = number_before(line, "bytes stack frame");
                f.spill_stores = number_before(line, "bytes spill stores");
                f.spill_loads = number_before(line, "bytes spill loads");
            } else if line.contains("Used ") && line.contains("registers") {
                f.registers = number_before(line, "registers");
                f.smem = number_before(line, "bytes smem");
            }
        }
    }
    out
}

fn write_report(out: &Path, nvcc: &Path, extra: &[String], results: &[Compiled]) {
    let mut report = String::new();
    let _ = writeln!(
        report,
        "# ptxas resource report, one line per kernel and architecture\n# nvcc: {} {} {}",
        nvcc.display(),
        NVCC_FLAGS.join(" "),
        extra.join(" ")
    );
    let _ = writeln!(
        report,
        "{:<20} {:<40} {:<6} {:>5} {:>6} {:>7} {:>7} {:>7}",
        "file", "kernel", "arch", "regs", "stack", "spill_st", "spill_ld", "smem"
    );
    for r in results {
        for f in &r.functions {
            let _ = writeln!(
                report,
                "{:<20} {:<40} {:<6} {:>5} {:>6} {:>7} {:>7} {:>7}",
                r.stem, f.name, f.arch, f.registers, f.stack, f.spill_stores, f.spill_loads, f.smem
            );
            if f.spill_stores > 0 || f.spill_loads > 0 || f.stack > 0 {
                println!(
                    "cargo:warning=ptxas: {}::{} ({}) uses {} registers and spills: {} bytes stack \
                     frame, {} bytes spill stores, {} bytes spill loads",
                    r.stem, f.name, f.arch, f.registers, f.stack, f.spill_stores, f.spill_loads
                );
            }
        }
    }
    let path = out.join("ptxas-report.txt");
    fs::write(&path, report).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
}

fn write_embedding(out: &Path, results: &[Compiled]) {
    let mut src = String::from(
        "// Generated by build.rs: the CUDA kernels, one fatbin per kernels/*.cu file.\n\
         #[repr(C, align(16))]\n\
         struct Aligned<T: ?Sized>(T);\n\n",
    );
    let mut entries = String::new();
    let mut names = String::new();
    for r in results {
        let len = fs::metadata(&r.fatbin)
            .unwrap_or_else(|e| fail(&format!("{}: {e}", r.fatbin.display())))
            .len();
        let ident = r
            .stem
            .to_uppercase()
            .replace(|c: char| !c.is_alphanumeric(), "_");
        let _ = writeln!(
            src,
            "static FATBIN_{ident}: &Aligned<[u8; {len}]> = &Aligned(*include_bytes!({:?}));",
            r.fatbin.display().to_string()
        );
        let _ = writeln!(entries, "    ({:?}, &FATBIN_{ident}.0),", r.stem);
        // Entry points in first-seen order, each once (ptxas reports one per architecture).
        let mut seen = BTreeMap::new();
        for (i, f) in r.functions.iter().enumerate() {
            if !f.name.ends_with(" (callee)") {
                seen.entry(f.name.clone()).or_insert(i);
            }
        }
        let mut fns: Vec<_> = seen.into_iter().collect();
        fns.sort_by_key(|&(_, i)| i);
        let list: Vec<String> = fns.iter().map(|(n, _)| format!("{n:?}")).collect();
        let _ = writeln!(names, "    ({:?}, &[{}]),", r.stem, list.join(", "));
    }
    let _ = write!(
        src,
        "\n/// (kernel file stem, fatbin with sm_80 + sm_90 cubin and compute_80 PTX).\n\
         pub const KERNELS: &[(&str, &[u8])] = &[\n{entries}];\n\n\
         /// (kernel file stem, the extern \"C\" entry points it holds).\n\
         pub const KERNEL_FUNCTIONS: &[(&str, &[&str])] = &[\n{names}];\n"
    );
    let path = out.join("kernels.rs");
    fs::write(&path, src).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
}
