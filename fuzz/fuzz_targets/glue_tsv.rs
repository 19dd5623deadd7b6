//! Fine-tuning files: `finetune::data::read_rows` with each GLUE task's layout (train/dev and
//! test) and a custom TSV and CSV one, then the labels (`learn_labels`, `targets`) and the
//! encoding of each row into a padded batch, as `finetune` and `predict` do.
//! Input: one byte choosing the layout, then the file.
#![no_main]

use electra::finetune::data::{encode, pad_batch, read_rows, targets, TaskSpec, GLUE_TASKS};
use electra_fuzz::{names_a_file, put, scratch, seed_tokenizer as tokenizer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, file)) = data.split_first() else {
        return;
    };
    let layouts = GLUE_TASKS.len() + 2;
    let choice = choice as usize % layouts;
    let (mut spec, name) = match choice.checked_sub(GLUE_TASKS.len()) {
        None => (TaskSpec::glue(GLUE_TASKS[choice]).unwrap(), "train.tsv"),
        Some(0) => (
            TaskSpec::custom(vec![0, 1], 2, true, false).unwrap(),
            "train.tsv",
        ),
        Some(_) => (
            TaskSpec::custom(vec![1], 0, false, false).unwrap(),
            "train.csv",
        ),
    };
    let path = scratch("glue_tsv").join(name);
    put(&path, Some(file));
    match read_rows(
        &path,
        &spec.text_columns,
        Some(spec.label_column),
        spec.header,
    ) {
        Ok(rows) => {
            spec.learn_labels(&rows);
            match targets(&spec, &rows, &path) {
                Ok(t) => assert_eq!(t.len(), rows.len()),
                Err(e) => names_a_file(&e, &[&path]),
            }
            let tok = tokenizer();
            let encoded: Vec<_> = rows
                .iter()
                .map(|r| encode(tok, &r.texts, 16).expect("rows encode"))
                .collect();
            assert!(encoded.iter().all(|e| e.ids.len() <= 16));
            if !encoded.is_empty() {
                let batch = pad_batch(&encoded.iter().collect::<Vec<_>>(), tok.pad_id());
                batch.validate().expect("a padded batch is consistent");
            }
        }
        Err(e) => names_a_file(&e, &[&path]),
    }
    // The same file as a test file (`predict` without --labelled).
    if let Err(e) = read_rows(&path, &spec.test_text_columns, None, spec.test_header) {
        names_a_file(&e, &[&path]);
    }
});
