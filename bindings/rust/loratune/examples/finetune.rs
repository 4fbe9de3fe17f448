//! Fine-tune a LoRA adapter on a pre-tokenized JSONL file and save it in the PEFT layout.
//!
//!   cargo run --example finetune -- MODEL_DIR OUT_DIR [DATA.jsonl]   (DATA defaults to MODEL_DIR/data.jsonl)
//!
//! Each line of DATA is {"input_ids": [...], "labels": [...]} ("labels" optional); without a data file
//! the example learns counting sequences.
use loratune::{Adapter, AdapterParams, Batch, Context, Model, Optimizer, OptimizerParams, Schedule, Trainer, TrainerParams};

/// The integer array after `"key":` in one JSON line (enough for these files; no JSON crate needed).
fn int_array(line: &str, key: &str) -> Option<Vec<i32>> {
    let at = line.find(&format!("\"{}\"", key))?;
    let rest = &line[at..];
    let open = rest.find('[')?;
    let close = rest.find(']')?;
    Some(rest[open + 1..close].split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: finetune MODEL_DIR OUT_DIR [DATA.jsonl]".into());
    }
    let (model_dir, out_dir) = (&args[1], &args[2]);
    let data_path = args.get(3).cloned().unwrap_or_else(|| format!("{}/data.jsonl", model_dir));

    let ctx = Context::builder().backend("cpu").build()?;
    let model = Model::load(&ctx, model_dir)?;
    let vocab = model.vocab_size()? as i32;
    let (mut ids, mut labels) = (Vec::new(), Vec::new());
    match std::fs::read_to_string(&data_path) {
        Ok(text) => {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let i = int_array(line, "input_ids").ok_or("a line without input_ids")?;
                labels.push(int_array(line, "labels").unwrap_or_else(|| i.clone()));
                ids.push(i);
            }
        }
        Err(_) => {
            for s in 0..8 {
                ids.push((0..16).map(|t| (s + t) % vocab).collect::<Vec<i32>>());
            }
            labels = ids.clone();
        }
    }

    let adapter = Adapter::create(&model, &AdapterParams { rank: 8, alpha: 16.0, ..Default::default() })?;
    let opt_params = OptimizerParams { lr: 2e-3, schedule: Schedule::Cosine, total_steps: 40, ..Default::default() };
    let opt = Optimizer::new(&adapter, &opt_params)?;
    let mut trainer = Trainer::new(&model, &adapter, &opt, &TrainerParams::default())?;
    for step in 0..40 {
        let first = (step * 4) % ids.len();
        let end = (first + 4).min(ids.len());
        let batch = Batch::padded(&ids[first..end], Some(&labels[first..end]), None, 0)?;
        let r = trainer.step(&batch)?;
        if r.step % 10 == 0 {
            println!("step {:3}  loss {:.4}  lr {:.2e}", r.step, r.loss, r.lr);
        }
    }
    let all = Batch::padded(&ids, Some(&labels), None, 0)?;
    println!("eval loss {:.4}", trainer.evaluate(&all)?.mean());
    adapter.save(out_dir)?;
    println!("saved {} LoRA parameters to {}", adapter.n_params(), out_dir);
    Ok(())
}
