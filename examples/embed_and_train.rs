//! Embedding the engine in another program: build a `tiny` ELECTRA on the CPU backend and run a
//! few training steps on random token ids, printing the losses.
//!
//! ```text
//! cargo run --release --example embed_and_train -- [preset] [steps] [batch] [seq]
//! ```

use electra::backend::cpu::CpuBackend;
use electra::data::Batch;
use electra::model::{config::ElectraConfig, Model};
use electra::train::{TrainConfig, Trainer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let preset = args.first().map_or("tiny", String::as_str);
    let number = |i: usize, default: usize| args.get(i).map_or(Ok(default), |s| s.parse());
    let (steps, batch, seq) = (number(1, 5)?, number(2, 4)?, number(3, 64)?);

    // A small vocabulary keeps the demo fast; real runs take it from the data.
    let mut config = ElectraConfig::preset(preset)?;
    if preset == "tiny" {
        config.vocab_size = 1000;
    }
    let model = Model::new(config);
    let values = model.initial_values(42)?;
    let recipe = TrainConfig {
        peak_lr: 1e-3,
        warmup_steps: 2,
        total_steps: steps as u64,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(CpuBackend::new(), model, recipe, &values)?;
    let special = trainer.model.config.special_tokens;
    let vocab = trainer.model.config.vocab_size;
    let started = std::time::Instant::now();
    for step in 0..steps {
        let data = Batch::random(batch, seq, vocab, step as u64, &special);
        let r = trainer.train_step(&data)?;
        println!(
            "step {:>3}  generator {:.4}  discriminator {:.4}  lr {:.2e}  grad norm {:.3}",
            r.step, r.loss.gen_loss, r.loss.disc_loss, r.lr, r.grad_norm
        );
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{:.1} tokens/s", (steps * batch * seq) as f64 / secs);
    Ok(())
}
