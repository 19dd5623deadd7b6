//! One CPU training step (forward, backward, AdamW) at ELECTRA-Small dimensions, batch 8 × 128,
//! on random token ids: the figure BENCHMARKS.md compares with the HF + PyTorch peer.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use electra::backend::cpu::CpuBackend;
use electra::data::Batch;
use electra::model::{config::ElectraConfig, Model};
use electra::train::{TrainConfig, Trainer};

fn small_step(c: &mut Criterion) {
    let (batch, seq) = (8, 128);
    let config = ElectraConfig::preset("small").unwrap();
    let model = Model::new(config);
    let values = model
        .initial_values(0)
        .expect("the small preset fits in memory");
    let mut trainer =
        Trainer::new(CpuBackend::new(), model, TrainConfig::default(), &values).unwrap();
    let special = trainer.model.config.special_tokens;
    let data = Batch::random(batch, seq, 30522, 7, &special);
    let mut group = c.benchmark_group("cpu_train_step");
    group.sample_size(10);
    group.throughput(Throughput::Elements((batch * seq) as u64));
    group.bench_function("small_b8_s128", |b| {
        b.iter(|| trainer.train_step(&data).unwrap())
    });
    group.finish();
}

criterion_group!(benches, small_step);
criterion_main!(benches);
