"""Fine-tune a LoRA adapter on a pre-tokenized JSONL file and save it in the PEFT layout.

usage: python finetune.py MODEL_DIR OUT_DIR [DATA.jsonl]   (DATA defaults to MODEL_DIR/data.jsonl)
"""
import os
import sys

import loratune as lt

model_dir, out_dir = sys.argv[1], sys.argv[2]
data_path = sys.argv[3] if len(sys.argv) > 3 else os.path.join(model_dir, "data.jsonl")
with lt.Context(backend="cpu") as ctx:
    model = lt.Model.load(ctx, model_dir)
    if os.path.exists(data_path):
        rows = lt.read_jsonl(data_path)
    else:  # no data: learn to continue a counting sequence
        rows = [{"input_ids": [(s + t) % model.vocab_size for t in range(16)]} for s in range(8)]
    adapter = lt.Adapter.create(model, rank=8, alpha=16)
    trainer = lt.Trainer(model, adapter, lt.Optimizer(adapter, lr=2e-3, schedule="cosine", total_steps=40))
    for step in range(40):
        batch = lt.Batch.from_rows(rows[(step * 4) % len(rows):][:4])
        r = trainer.step(batch)
        if r.step % 10 == 0:
            print(f"step {r.step:3d}  loss {r.loss:.4f}  lr {r.lr:.2e}")
    print(f"eval loss {trainer.evaluate(lt.Batch.from_rows(rows)).mean:.4f}")
    adapter.save(out_dir)
    print(f"saved {adapter.n_params} LoRA parameters to {out_dir}")
