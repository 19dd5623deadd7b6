//! Drives the loop through its public API on a tiny model and a tiny prepared folder, with an
//! observer that records what it is told.

use super::*;
use crate::backend::cpu::CpuBackend;
use crate::data::{prepare, PrepareOptions, WordPieceTokenizer};
use crate::model::config::ElectraConfig;
use crate::train::TrainConfig;

/// A fresh empty folder, unique to this test process and `name`.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("electra-pretrain-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Prepares a few hundred words of text into `dir/shards` with 16-token examples.
fn tiny_data(dir: &Path) -> PathBuf {
    let words = [
        "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "far",
    ];
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let vocab: Vec<&str> = specials.iter().chain(&words).copied().collect();
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n")).unwrap();
    let tokenizer = WordPieceTokenizer::from_vocab_file(&dir.join("vocab.txt")).unwrap();
    let text: String = (0..40)
        .map(|line| {
            let n = 5 + line % 7;
            let sentence: Vec<&str> = (0..n).map(|i| words[(line * 5 + i * 3) % 12]).collect();
            // A blank line every fifth line ends a document.
            sentence.join(" ") + if line % 5 == 4 { "\n\n" } else { "\n" }
        })
        .collect();
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, text).unwrap();
    let shards = dir.join("shards");
    let options = PrepareOptions {
        seq_len: 16,
        ..PrepareOptions::default()
    };
    prepare(&[corpus], &shards, &tokenizer, &options).unwrap();
    shards
}

/// Six steps of the `tiny` preset, batch 2: metrics every 2 steps, checkpoints every 4.
fn tiny_config(data: &Path) -> RunConfig {
    let tokenizer = WordPieceTokenizer::from_vocab_file(&data.join("vocab.txt")).unwrap();
    let mut model = ElectraConfig::preset("tiny").unwrap();
    model.vocab_size = tokenizer.vocab_size();
    model.special_tokens = tokenizer.special_tokens();
    RunConfig {
        model,
        train: TrainConfig {
            seed: 3,
            warmup_steps: 2,
            total_steps: 6,
            ..TrainConfig::default()
        },
        data: data.to_path_buf(),
        batch_size: 2,
        accumulate: 1,
        world_size: 1,
        log_every: 2,
        checkpoint_every: 4,
        keep_checkpoints: 3,
        data_checksum: None,
    }
}

/// Records every event; asks to stop once it has seen `stop_after` steps.
#[derive(Default)]
struct Recorder {
    start: Option<(u64, u64)>,
    steps: Vec<u64>,
    metrics: Vec<u64>,
    checkpoints: Vec<u64>,
    stop_after: Option<usize>,
}

impl Observer for Recorder {
    fn on_start(&mut self, step: u64, end: u64) {
        self.start = Some((step, end));
    }
    fn on_step(&mut self, report: &StepReport) {
        assert!(report.loss.gen_loss.is_finite() && report.loss.disc_loss.is_finite());
        self.steps.push(report.step);
    }
    fn on_metrics(&mut self, metrics: &Metrics) {
        self.metrics.push(metrics.step);
    }
    fn on_checkpoint(&mut self, step: u64) {
        self.checkpoints.push(step);
    }
    fn should_stop(&self) -> bool {
        self.stop_after.is_some_and(|n| self.steps.len() >= n)
    }
}

/// Opens the run in `dir` from `start` on the CPU.
fn open(dir: &Path, start: Start) -> PretrainRun<CpuBackend> {
    let config = run_dir::read_config(dir).unwrap();
    let lock = run_dir::lock_for_training(dir).unwrap();
    PretrainRun::new(CpuBackend::new(), dir, config, start, lock).unwrap()
}

/// Trains the run in `dir` from `start`; returns what the observer saw, how the run ended and
/// the final parameters.
fn train(dir: &Path, start: Start, stop_after: Option<usize>) -> (Recorder, RunEnd, Vec<f32>) {
    let mut run = open(dir, start);
    let mut recorder = Recorder {
        stop_after,
        ..Recorder::default()
    };
    let end = run.train(None, &mut recorder).unwrap();
    (recorder, end, run.trainer().flat(Space::Param))
}

fn new_run(root: &Path, name: &str, data: &Path) -> PathBuf {
    let dir = root.join(name);
    run_dir::write_config(&dir, &tiny_config(data)).unwrap();
    dir
}

fn metrics_steps(dir: &Path) -> Vec<u64> {
    let lines = run_dir::read_metrics(dir).unwrap();
    lines.iter().map(|m| m.step).collect()
}

#[test]
fn the_observer_sees_every_step_metrics_line_and_checkpoint() {
    let root = scratch("observed");
    let data = tiny_data(&root);
    let dir = new_run(&root, "run", &data);
    let (seen, end, _) = train(&dir, Start::Fresh(None), None);
    assert_eq!(end, RunEnd::Finished { step: 6 });
    assert_eq!(seen.start, Some((0, 6)));
    assert_eq!(seen.steps, [1, 2, 3, 4, 5, 6]);
    assert_eq!(seen.metrics, [2, 4, 6]);
    assert_eq!(seen.checkpoints, [4, 6]);
    assert_eq!(metrics_steps(&dir), [2, 4, 6]);
    assert_eq!(checkpoint::list(&dir).unwrap(), [4, 6]);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn should_stop_ends_with_a_checkpoint_that_resumes_to_the_same_bits() {
    let root = scratch("stopped");
    let data = tiny_data(&root);
    let straight = new_run(&root, "straight", &data);
    let (_, _, expected) = train(&straight, Start::Fresh(None), None);

    let dir = new_run(&root, "stopped", &data);
    let (seen, end, _) = train(&dir, Start::Fresh(None), Some(3));
    assert_eq!(end, RunEnd::Stopped { step: 3 });
    assert_eq!(seen.steps, [1, 2, 3]);
    assert_eq!(seen.metrics, [2, 3], "a stop writes the window so far");
    assert_eq!(seen.checkpoints, [3]);
    assert_eq!(checkpoint::list(&dir).unwrap(), [3]);

    let layout = Model::new(tiny_config(&data).model).layout;
    let from = checkpoint::load(&dir, &layout, 3).unwrap();
    let (seen, end, resumed) = train(&dir, Start::Checkpoint(from), None);
    assert_eq!(end, RunEnd::Finished { step: 6 });
    assert_eq!(seen.start, Some((3, 6)));
    assert_eq!(seen.steps, [4, 5, 6]);
    assert_eq!(metrics_steps(&dir), [2, 3, 4, 6]);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&resumed) == bits(&expected), "resumed run differs");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A run stopped by its observer (with the next step already prepared) trains on, when asked
/// again, from the data after the last step it took, to the bits of a run never stopped.
#[test]
fn a_stopped_run_trained_again_continues_exactly() {
    let root = scratch("again");
    let data = tiny_data(&root);
    let straight = new_run(&root, "straight", &data);
    let (_, _, expected) = train(&straight, Start::Fresh(None), None);

    let dir = new_run(&root, "again", &data);
    let mut run = open(&dir, Start::Fresh(None));
    let mut stopping = Recorder {
        stop_after: Some(3),
        ..Recorder::default()
    };
    assert_eq!(
        run.train(None, &mut stopping).unwrap(),
        RunEnd::Stopped { step: 3 }
    );
    let mut rest = Recorder::default();
    assert_eq!(
        run.train(None, &mut rest).unwrap(),
        RunEnd::Finished { step: 6 }
    );
    assert_eq!(rest.steps, [4, 5, 6]);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let again = run.trainer().flat(Space::Param);
    assert!(
        bits(&again) == bits(&expected),
        "the run trained again differs"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_run_refuses_data_other_than_it_began_with() {
    let root = scratch("data-link");
    let data = tiny_data(&root);
    let dir = new_run(&root, "run", &data);
    let open = |config: RunConfig| {
        let lock = run_dir::lock_for_training(&dir).unwrap();
        PretrainRun::new(CpuBackend::new(), &dir, config, Start::Fresh(None), lock)
    };
    let recorded = open(tiny_config(&data)).unwrap().config().data_checksum;
    let recorded = recorded.expect("a run records its data's checksum");
    let same = RunConfig {
        data_checksum: Some(recorded),
        ..tiny_config(&data)
    };
    assert_eq!(open(same.clone()).unwrap().config(), &same);

    // The same text prepared again with another seed packs other examples.
    let tokenizer = WordPieceTokenizer::from_vocab_file(&root.join("vocab.txt")).unwrap();
    let options = PrepareOptions {
        seq_len: 16,
        seed: 1,
        ..PrepareOptions::default()
    };
    let other = root.join("shards-seed-1");
    prepare(&[root.join("corpus.txt")], &other, &tokenizer, &options).unwrap();
    let moved = RunConfig {
        data: other.clone(),
        ..same
    };
    let Err(err) = open(moved) else {
        panic!("a run resumed on other data");
    };
    let err = err.to_string();
    assert!(
        err.contains(&format!(
            "{}: its shards are not those this run began with",
            other.display()
        )) && err.contains(&format!("records {recorded:08x}")),
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
