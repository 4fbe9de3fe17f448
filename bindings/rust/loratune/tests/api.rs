//! The safe API end to end on a random model (and on $LORATUNE_TEST_MODEL when set).
use loratune::experimental::{create_random_model, save_model, TINY_LLAMA};
use loratune::*;
use std::path::PathBuf;

fn ctx() -> Context {
    Context::builder().backend("cpu").threads(2).build().unwrap()
}

fn rows(n: usize, t: usize, vocab: i32, start: i32) -> Vec<Vec<i32>> {
    (0..n as i32).map(|r| (0..t as i32).map(|k| (start + r * 7 + k * (r + 1)) % vocab).collect()).collect()
}

fn batch() -> Batch {
    Batch::from_rows(&rows(4, 16, 128, 0)).unwrap()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loratune-rs-{}-{}", std::process::id(), name));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn version_matches_c() {
    let v = version();
    let parts: Vec<u32> = v.split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(version_number(), parts[0] * 10000 + parts[1] * 100 + parts[2]);
    assert_eq!(parts[0], sys::LT_VERSION_MAJOR);
    assert!(backend_available("cpu"));
    assert!(!backend_available("no-such-backend"));
    assert!(Status::Format.description().starts_with("LT_ERR_FORMAT"));
}

#[test]
fn errors_carry_status_and_message() {
    let e = Context::builder().backend("no-such-backend").build().unwrap_err();
    assert_eq!(e.status(), Status::Backend);
    assert!(e.message().contains("no-such-backend"), "{}", e);
    assert!(e.to_string().starts_with("LT_ERR_BACKEND: "), "{}", e);
    let c = ctx();
    let e = c.set_threads(-1).unwrap_err();
    assert_eq!(e.status(), Status::Argument);
    assert!(e.message().contains("n_threads"));
    let e = Model::load(&c, "/nonexistent/model").unwrap_err();
    assert!(matches!(e.status(), Status::Io | Status::Missing), "{:?}", e);
    assert!(!e.message().is_empty());
    let boxed: Box<dyn std::error::Error> = Box::new(e);
    assert!(!boxed.to_string().is_empty());
}

#[test]
fn log_callback() {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    {
        let _c = Context::builder()
            .backend("cpu")
            .log_level(LogLevel::Debug)
            .log(move |level, msg| s2.lock().unwrap().push((level, msg.to_string())))
            .build()
            .unwrap();
    }
    assert!(seen.lock().unwrap().iter().any(|(_, m)| m.contains("libloratune")));
}

#[test]
fn defaults_come_from_the_library() {
    let a = AdapterParams::default();
    assert_eq!((a.rank, a.alpha, a.dropout), (8, 8.0, 0.0));
    assert_eq!(a.targets, Targets::ALL);
    let o = OptimizerParams::default();
    assert_eq!(o.kind, OptimizerKind::AdamW);
    assert!((o.lr - 1e-4).abs() < 1e-9 && (o.max_grad_norm - 1.0).abs() < 1e-9);
    let g = GenerateParams::default();
    assert_eq!((g.max_new_tokens, g.top_k, g.eos), (32, 0, Eos::FromConfig));
    let t = TrainerParams::default();
    assert_eq!(t.grad_accum, 1);
    assert!(t.gradient_checkpointing);
    assert!(ModelParams::default().use_mmap);
    assert_eq!(Targets::from_names("q_proj, v").unwrap(), Targets::Q | Targets::V);
    assert!(Targets::from_names("qq").is_err());
}

#[test]
fn model_info_and_loss() {
    let c = ctx();
    let m = create_random_model(&c, TINY_LLAMA, 7, 0.05).unwrap();
    let i = m.info().unwrap();
    assert_eq!(i.architecture, "LlamaForCausalLM");
    assert_eq!((i.vocab_size, i.hidden_size, i.n_layers, i.n_heads, i.n_kv_heads, i.head_dim), (128, 32, 2, 4, 2, 8));
    let l = m.loss(&batch(), None).unwrap();
    assert_eq!(l.n_tokens, 4 * 15);
    assert!(l.mean().is_finite());
    let e = m.loss(&Batch::from_rows(&[vec![1, 2, 500]]).unwrap(), None).unwrap_err();
    assert!(matches!(e.status(), Status::Data | Status::Argument));
    assert!(e.message().contains("500"), "{}", e);
    assert!(Batch::from_rows(&[vec![1, 2], vec![1]]).is_err());
    assert!(Batch::new(vec![1, 2, 3], 2, 2).is_err());
}

#[test]
fn logits_match_loss() {
    let c = ctx();
    let m = create_random_model(&c, TINY_LLAMA, 3, 0.05).unwrap();
    let r = rows(2, 6, 128, 0);
    let b = Batch::from_rows(&r).unwrap();
    let lg = m.logits(&b, None).unwrap();
    assert_eq!(lg.len(), 2 * 6 * 128);
    let mut total = 0f64;
    for (bi, row) in r.iter().enumerate() {
        for t in 0..5 {
            let o = (bi * 6 + t) * 128;
            let x = &lg[o..o + 128];
            let mx = x.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let lse = mx + x.iter().map(|v| (*v as f64 - mx).exp()).sum::<f64>().ln();
            total += lse - x[row[t + 1] as usize] as f64;
        }
    }
    let l = m.loss(&b, None).unwrap();
    assert!((total - l.loss_sum).abs() < 1e-3 * l.loss_sum.abs(), "{} vs {}", total, l.loss_sum);
}

#[test]
fn training_lowers_the_loss_and_checkpoints_resume() {
    let c = ctx();
    let m = create_random_model(&c, TINY_LLAMA, 7, 0.05).unwrap();
    let a = Adapter::create(&m, &AdapterParams { rank: 4, alpha: 8.0, seed: 1, ..Default::default() }).unwrap();
    assert_eq!(a.params().unwrap().rank, 4);
    assert!(a.n_params() > 0);
    let o = Optimizer::new(&a, &OptimizerParams { lr: 1e-2, ..Default::default() }).unwrap();
    let mut t = Trainer::new(&m, &a, &o, &TrainerParams::default()).unwrap();
    let b = batch();
    let before = t.evaluate(&b).unwrap().mean();
    let mut last = None;
    for i in 0..20 {
        let r = t.step(&b).unwrap();
        assert_eq!(r.step, i + 1);
        assert!(r.updated && r.tokens == 60);
        last = Some(r);
    }
    let after = t.evaluate(&b).unwrap().mean();
    assert!(after < before - 0.05, "{} -> {}", before, after);
    assert!(last.unwrap().loss < before);
    assert_eq!(o.step_count(), 20);

    let dir = tmpdir("ckpt");
    t.save_checkpoint(dir.join("ckpt")).unwrap();
    let cont: Vec<f64> = (0..3).map(|s| t.step(&Batch::from_rows(&rows(4, 16, 128, s)).unwrap()).unwrap().loss).collect();

    let a2 = Adapter::create(&m, &AdapterParams { rank: 4, alpha: 8.0, seed: 1, ..Default::default() }).unwrap();
    let o2 = Optimizer::new(&a2, &OptimizerParams { lr: 1e-2, ..Default::default() }).unwrap();
    let mut t2 = Trainer::new(&m, &a2, &o2, &TrainerParams::default()).unwrap();
    t2.load_checkpoint(dir.join("ckpt")).unwrap();
    assert_eq!(o2.step_count(), 20);
    let resumed: Vec<f64> =
        (0..3).map(|s| t2.step(&Batch::from_rows(&rows(4, 16, 128, s)).unwrap()).unwrap().loss).collect();
    for (x, y) in cont.iter().zip(&resumed) {
        assert!((x - y).abs() <= 1e-6 * x.abs(), "{:?} vs {:?}", cont, resumed);
    }
    o.save(dir.join("opt.bin")).unwrap();
    o2.load(dir.join("opt.bin")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn adapter_save_load_merge_export() {
    let c = ctx();
    let m = create_random_model(&c, TINY_LLAMA, 7, 0.05).unwrap();
    let a = Adapter::create(&m, &AdapterParams { rank: 4, alpha: 8.0, ..Default::default() }).unwrap();
    let b = batch();
    {
        let o = Optimizer::new(&a, &OptimizerParams { lr: 1e-2, ..Default::default() }).unwrap();
        let mut t = Trainer::new(&m, &a, &o, &TrainerParams::default()).unwrap();
        for _ in 0..5 {
            t.step(&b).unwrap();
        }
        // merged adapters cannot train
        let g = a.merged().unwrap();
        assert_eq!(t.step(&b).unwrap_err().status(), Status::State);
        g.unmerge().unwrap();
    }
    let base = m.loss(&b, None).unwrap().loss_sum;
    let trained = m.loss(&b, Some(&a)).unwrap().loss_sum;
    assert!((base - trained).abs() > 1e-6);
    {
        let _g = a.merged().unwrap();
        let merged = m.loss(&b, None).unwrap().loss_sum;
        assert!((merged - trained).abs() < 1e-4 * trained.abs());
        assert_eq!(a.merge().unwrap_err().status(), Status::State);
    }
    assert!((m.loss(&b, None).unwrap().loss_sum - base).abs() < 1e-4 * base.abs());

    let dir = tmpdir("adapter");
    a.save(dir.join("ad")).unwrap();
    assert!(dir.join("ad/adapter_config.json").exists());
    let a2 = Adapter::load(&m, dir.join("ad")).unwrap();
    assert!((m.loss(&b, Some(&a2)).unwrap().loss_sum - trained).abs() < 1e-6 * trained.abs());
    assert!(Adapter::load(&m, dir.join("nope")).is_err());

    a.export_merged(dir.join("merged"), 0).unwrap();
    let m2 = Model::load(&c, dir.join("merged")).unwrap();
    assert!((m2.loss(&b, None).unwrap().loss_sum - trained).abs() < 1e-4 * trained.abs());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn progress_callback_and_panics() {
    use std::rc::Rc;
    use std::cell::RefCell;
    let c = ctx();
    let m = create_random_model(&c, TINY_LLAMA, 7, 0.05).unwrap();
    let a = Adapter::create(&m, &AdapterParams::default()).unwrap();
    let o = Optimizer::new(&a, &OptimizerParams::default()).unwrap();
    let mut t = Trainer::new(&m, &a, &o, &TrainerParams { grad_accum: 2, ..Default::default() }).unwrap();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s2 = seen.clone();
    t.set_progress(move |r| s2.borrow_mut().push(*r));
    let b = batch();
    let r1 = t.step(&b).unwrap();
    let r2 = t.step(&b).unwrap();
    assert!(!r1.updated && r2.updated && r2.step == 1);
    t.clear_progress();
    t.step(&b).unwrap();
    assert_eq!(seen.borrow().len(), 2);
    t.set_progress(|_| panic!("from the callback"));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.step(&b)));
    assert!(caught.is_err());
}

#[test]
fn generation() {
    let c = ctx();
    let m = create_random_model(&c, TINY_LLAMA, 7, 0.05).unwrap();
    let p = GenerateParams { max_new_tokens: 6, eos: Eos::Never, ..Default::default() };
    let out = m.generate(&[vec![1, 2, 3]], &p, None).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].len(), 6);
    assert_eq!(m.generate(&[vec![1, 2, 3]], &p, None).unwrap(), out);
    let two = m.generate(&[&[1, 2, 3][..], &[4, 5][..]], &GenerateParams { max_new_tokens: 4, ..p.clone() }, None).unwrap();
    assert_eq!(two[0], out[0][..4].to_vec());
    let s = GenerateParams { temperature: 1.0, top_k: 20, seed: 42, ..p.clone() };
    assert_eq!(m.generate(&[vec![1, 2, 3]], &s, None).unwrap(), m.generate(&[vec![1, 2, 3]], &s, None).unwrap());
    let e = m.generate(&[vec![1, 2, 3]], &GenerateParams { max_new_tokens: 0, ..p }, None).unwrap_err();
    assert_eq!(e.status(), Status::Argument);
}

#[test]
fn padded_batches_and_positions() {
    let c = ctx();
    let m = create_random_model(&c, TINY_LLAMA, 7, 0.05).unwrap();
    let rows_ = vec![vec![5, 9, 13, 17, 21], vec![3, 6, 9]];
    let b = Batch::padded(&rows_, None, None, 0).unwrap();
    assert_eq!((b.n_rows(), b.seq_len()), (2, 5));
    assert_eq!(m.loss(&b, None).unwrap().n_tokens, 4 + 2);
    // packing: two sequences in one row with restarting positions == the two run separately
    let (s1, s2) = (vec![5, 9, 13, 17, 21], vec![3, 6, 9, 12]);
    let ids: Vec<i32> = s1.iter().chain(s2.iter()).cloned().collect();
    let mut labels = ids.clone();
    labels[5] = IGNORE_INDEX;
    let pos: Vec<i32> = (0..5).chain(0..4).collect();
    let packed = Batch::new(ids, 1, 9).unwrap().with_labels(labels).unwrap().with_position_ids(pos).unwrap();
    let lp = m.loss(&packed, None).unwrap();
    let sep = m.loss(&Batch::from_rows(&[s1]).unwrap(), None).unwrap().loss_sum
        + m.loss(&Batch::from_rows(&[s2]).unwrap(), None).unwrap().loss_sum;
    assert_eq!(lp.n_tokens, 7);
    assert!((lp.loss_sum - sep).abs() < 1e-4 * sep);
}

#[test]
fn one_context_per_thread() {
    let handles: Vec<_> = (0..3)
        .map(|seed| {
            let c = Context::builder().backend("cpu").threads(1).build().unwrap();
            std::thread::spawn(move || {
                // the context moved here (Send); everything made from it stays on this thread
                let m = create_random_model(&c, TINY_LLAMA, seed, 0.05).unwrap();
                let a = Adapter::create(&m, &AdapterParams { rank: 2, ..Default::default() }).unwrap();
                let o = Optimizer::new(&a, &OptimizerParams { lr: 1e-2, ..Default::default() }).unwrap();
                let mut t = Trainer::new(&m, &a, &o, &TrainerParams::default()).unwrap();
                (0..3).map(|_| t.step(&batch()).unwrap().loss).collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().len(), 3);
    }
}

#[test]
fn model_directory_round_trip() {
    // $LORATUNE_TEST_MODEL (from tests/python/make_models.py), or a random model saved to disk
    let c = ctx();
    let dir = tmpdir("model");
    let model_dir = match std::env::var("LORATUNE_TEST_MODEL") {
        Ok(d) => PathBuf::from(d),
        Err(_) => {
            let m = create_random_model(&c, TINY_LLAMA, 5, 0.05).unwrap();
            save_model(&m, dir.join("tiny")).unwrap();
            dir.join("tiny")
        }
    };
    let m = Model::load(&c, &model_dir).unwrap();
    let v = m.vocab_size().unwrap() as i32;
    let b = Batch::from_rows(&rows(4, 16, v, 0)).unwrap();
    let a = Adapter::create(&m, &AdapterParams { rank: 4, alpha: 8.0, ..Default::default() }).unwrap();
    let o = Optimizer::new(&a, &OptimizerParams { lr: 5e-3, ..Default::default() }).unwrap();
    let mut t = Trainer::new(&m, &a, &o, &TrainerParams::default()).unwrap();
    let first = t.step(&b).unwrap().loss;
    let mut last = first;
    for _ in 0..10 {
        last = t.step(&b).unwrap().loss;
    }
    assert!(last < first);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn full_finetuning_and_modules_to_save() {
    let c = ctx();
    let m = create_random_model(&c, TINY_LLAMA, 7, 0.05).unwrap();
    let info = m.info().unwrap();
    // full fine-tuning: every base weight is a trainable parameter
    let full = Adapter::create(&m, &AdapterParams { full_finetune: true, ..Default::default() }).unwrap();
    assert!(full.params().unwrap().full_finetune);
    assert_eq!(full.n_params(), info.n_params);
    let o = Optimizer::new(&full, &OptimizerParams { lr: 1e-3, ..Default::default() }).unwrap();
    let mut t = Trainer::new(&m, &full, &o, &TrainerParams::default()).unwrap();
    let b = batch();
    let before = t.evaluate(&b).unwrap().mean();
    for _ in 0..10 {
        t.step(&b).unwrap();
    }
    let after = t.evaluate(&b).unwrap().mean();
    assert!(after < before - 0.05, "{} -> {}", before, after);
    let dir = tmpdir("full");
    full.save(&dir).unwrap();
    assert!(dir.join("config.json").exists() && dir.join("model.safetensors").exists());
    // a LoRA with trained copies of embed_tokens and lm_head
    let lora = AdapterParams { rank: 4, alpha: 8.0, ..Default::default() };
    let plain = Adapter::create(&m, &lora).unwrap();
    let mts = ModulesToSave::EMBED_TOKENS | ModulesToSave::LM_HEAD;
    let with = Adapter::create(&m, &AdapterParams { modules_to_save: mts, ..lora.clone() }).unwrap();
    assert_eq!(with.params().unwrap().modules_to_save, mts);
    assert_eq!(with.n_params(), plain.n_params() + 2 * info.vocab_size * info.hidden_size);
    // refused combinations carry a status and a message
    let e = Adapter::create(&m, &AdapterParams { full_finetune: true, use_dora: true, ..Default::default() }).unwrap_err();
    assert_eq!(e.status(), Status::Argument);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ranks as threads: each stores a pointer to its buffer; after the first barrier the leader adds them in
/// rank order into every buffer; the second barrier holds the others until it is done.
struct Group {
    world: usize,
    barrier: std::sync::Barrier,
    slots: std::sync::Mutex<Vec<(usize, usize, u8)>>, // (address, values, 4 = f32 / 8 = f64 / 1 = bytes)
}

struct Member {
    g: std::sync::Arc<Group>,
    rank: usize,
}

impl Member {
    fn meet(&self, addr: usize, n: usize, kind: u8, root: Option<usize>) {
        self.g.slots.lock().unwrap()[self.rank] = (addr, n, kind);
        if self.g.barrier.wait().is_leader() {
            let slots = self.g.slots.lock().unwrap().clone();
            unsafe {
                match (kind, root) {
                    (1, Some(r)) => {
                        for s in &slots {
                            if s.0 != slots[r].0 {
                                std::ptr::copy_nonoverlapping(slots[r].0 as *const u8, s.0 as *mut u8, n);
                            }
                        }
                    }
                    (4, _) => {
                        for i in 0..n {
                            let v: f32 = slots.iter().map(|s| *(s.0 as *const f32).add(i)).sum();
                            slots.iter().for_each(|s| *(s.0 as *mut f32).add(i) = v);
                        }
                    }
                    _ => {
                        for i in 0..n {
                            let v: f64 = slots.iter().map(|s| *(s.0 as *const f64).add(i)).sum();
                            slots.iter().for_each(|s| *(s.0 as *mut f64).add(i) = v);
                        }
                    }
                }
            }
        }
        self.g.barrier.wait();
    }
}

impl Collectives for Member {
    fn all_reduce(&mut self, data: CommData<'_>) -> std::result::Result<(), String> {
        match data {
            CommData::F32(d) => self.meet(d.as_mut_ptr() as usize, d.len(), 4, None),
            CommData::F64(d) => self.meet(d.as_mut_ptr() as usize, d.len(), 8, None),
        }
        Ok(())
    }
    fn broadcast(&mut self, data: &mut [u8], root: usize) -> std::result::Result<(), String> {
        self.meet(data.as_mut_ptr() as usize, data.len(), 1, Some(root));
        Ok(())
    }
}

/// 3 updates on global batches of 4 rows; this rank's rows [r 4 / W, (r + 1) 4 / W). The loss of the
/// trained adapter on a held-out batch.
fn train_ranked(comm: Option<Comm>, rank: usize, world: usize) -> f64 {
    let c = ctx();
    let m = create_random_model(&c, TINY_LLAMA, 7, 0.05).unwrap();
    let a = Adapter::create(&m, &AdapterParams { rank: 4, alpha: 8.0, seed: 1, ..Default::default() }).unwrap();
    let o = Optimizer::new(&a, &OptimizerParams { lr: 1e-2, ..Default::default() }).unwrap();
    let p = TrainerParams { zero_stage: 1, ..Default::default() };
    let mut t = match &comm {
        Some(cm) => Trainer::new_with_comm(&m, &a, &o, &p, cm).unwrap(),
        None => Trainer::new(&m, &a, &o, &p).unwrap(),
    };
    for s in 0..3 {
        let all = rows(4, 16, 128, 10 * s);
        let mine = &all[4 * rank / world..4 * (rank + 1) / world];
        assert!(t.step(&Batch::from_rows(mine).unwrap()).unwrap().updated);
    }
    let l = m.loss(&Batch::from_rows(&rows(4, 16, 128, 99)).unwrap(), Some(&a)).unwrap();
    l.loss_sum / l.n_tokens as f64
}

#[test]
fn data_parallel_callbacks_equal_one_process() {
    assert!(Comm::available("callbacks"));
    if !Comm::available("nccl") {
        let e = unsafe { Comm::from_nccl(std::ptr::NonNull::<u8>::dangling().as_ptr() as *mut _, std::ptr::null_mut()) };
        assert_eq!(e.err().unwrap().status(), Status::Unsupported);
    }
    let one = train_ranked(None, 0, 1);
    let g = std::sync::Arc::new(Group {
        world: 2,
        barrier: std::sync::Barrier::new(2),
        slots: std::sync::Mutex::new(vec![(0, 0, 0); 2]),
    });
    let handles: Vec<_> = (0..g.world)
        .map(|r| {
            let g = g.clone();
            std::thread::spawn(move || {
                let comm = Comm::from_callbacks(r, 2, Box::new(Member { g, rank: r })).unwrap();
                assert_eq!((comm.rank(), comm.world_size()), (r, 2));
                train_ranked(Some(comm), r, 2)
            })
        })
        .collect();
    for h in handles {
        let two = h.join().unwrap();
        assert!((two - one).abs() <= 1e-5 * one.abs(), "2 ranks: loss {} vs one process {}", two, one);
    }
}

#[test]
fn gguf_export() {
    let c = ctx();
    let m = create_random_model(&c, TINY_LLAMA, 11, 0.05).unwrap();
    let dir = tmpdir("gguf");
    let a = Adapter::create(&m, &AdapterParams::default()).unwrap();
    let path = dir.join("adapter.gguf");
    a.export_gguf(&path, GgufDtype::F16).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..4], b"GGUF");
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"adapter.lora.alpha") && has(b".lora_a") && has(b".lora_b"));

    // DoRA has no GGUF LoRA form: refused with a status and a message, no file left behind
    let dora = Adapter::create(&m, &AdapterParams { use_dora: true, ..AdapterParams::default() }).unwrap();
    let e = dora.export_gguf(dir.join("dora.gguf"), GgufDtype::F32).unwrap_err();
    assert_eq!(e.status(), Status::Unsupported, "{}", e);
    assert!(e.message().contains("DoRA"), "{}", e);
    assert!(!dir.join("dora.gguf").exists());

    // a model made in memory has no tokenizer.json to write: a clear error, not a file without a vocabulary
    let e = m.export_gguf(None, dir.join("model.gguf"), GgufDtype::Q8_0, Some("tiny")).unwrap_err();
    assert!(!e.message().is_empty());
    assert!(!dir.join("model.gguf").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
