//! Keeps src/lib.rs in sync with include/loratune.h and include/loratune_experimental.h:
//!  - every LT_API function is declared, with the same parameter and return types (C types mapped to
//!    Rust: `const T *` -> `*const T`, `T **` -> `*mut *mut T`, `const T *const *` -> `*const *const T`,
//!    int -> c_int, int64_t -> i64, ...),
//!    and nothing else is;
//!  - every `typedef struct` has a #[repr(C)] mirror with the same fields in the same order and types;
//!  - sizes and field offsets agree with what the C compiler says (when `cc` is available);
//!  - every enumerator and numeric #define has a constant of the same value.
//! The headers are found through LORATUNE_INCLUDE_DIR or ../../../include from this crate.
use std::collections::BTreeMap;
use std::mem::{size_of, MaybeUninit};
use std::path::PathBuf;
use std::process::Command;

use loratune_sys::experimental::*;
use loratune_sys::*;

const RUST_SOURCE: &str = include_str!("../src/lib.rs");

fn include_dir() -> Option<PathBuf> {
    let dir = match std::env::var("LORATUNE_INCLUDE_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../include"),
    };
    if dir.join("loratune.h").exists() {
        Some(dir)
    } else {
        None
    }
}

fn header(name: &str) -> Option<String> {
    let dir = match include_dir() {
        Some(d) => d,
        None => {
            eprintln!("header_sync: include/{} not found (set LORATUNE_INCLUDE_DIR); nothing checked", name);
            return None;
        }
    };
    Some(strip_comments(&std::fs::read_to_string(dir.join(name)).unwrap()))
}

fn strip_comments(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
            let end = s[i + 2..].find("*/").map(|e| i + 2 + e + 2).unwrap_or(b.len());
            out.push(' ');
            i = end;
        } else if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
            let end = s[i..].find('\n').map(|e| i + e).unwrap_or(b.len());
            i = end;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// C type (without a declarator name) to the Rust spelling used in src/lib.rs.
fn c_type_to_rust(ty: &str) -> String {
    // "const char *const *": the qualifiers before the first '*' are the base's, those after star i make
    // pointer i const, so the pointer around it points to const (`*const *const c_char`)
    let segs: Vec<&str> = ty.split('*').collect();
    let stars = segs.len() - 1;
    let toks: Vec<&str> = segs[0].split_whitespace().collect();
    let is_const = toks.contains(&"const");
    let base: Vec<&str> = toks.into_iter().filter(|t| *t != "const").collect();
    let base = base.join(" ");
    let mut rust = match base.as_str() {
        "void" if stars == 0 => return "()".to_string(),
        "void" => "c_void".to_string(),
        "unsigned" | "unsigned int" => "c_uint".to_string(),
        "int" => "c_int".to_string(),
        "char" => "c_char".to_string(),
        "float" => "c_float".to_string(),
        "double" => "c_double".to_string(),
        "size_t" => "usize".to_string(),
        "int64_t" => "i64".to_string(),
        "uint64_t" => "u64".to_string(),
        "int32_t" => "i32".to_string(),
        "uint32_t" => "u32".to_string(),
        "uint16_t" => "u16".to_string(),
        other if other.starts_with("lt_") => other.to_string(),
        other => panic!("header_sync: no Rust mapping for C type '{}'", other),
    };
    for i in 0..stars {
        let pointee_const = if i == 0 { is_const } else { segs[i].split_whitespace().any(|t| t == "const") };
        rust = if pointee_const { format!("*const {}", rust) } else { format!("*mut {}", rust) };
    }
    rust
}

/// Split "type name" into the type part (name dropped).
fn c_param_type(param: &str) -> String {
    let p = param.trim();
    let cut = p.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).expect("parameter without a type");
    c_type_to_rust(&p[..=cut])
}

type Sig = (Vec<String>, String);

fn header_functions(text: &str) -> BTreeMap<String, Sig> {
    let mut out = BTreeMap::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let line_start = offset;
        offset += line.len();
        if !line.trim_start().starts_with("LT_API ") {
            continue; // (this also skips `#define LT_API ...`)
        }
        let from = line_start + line.find("LT_API").unwrap() + "LT_API".len();
        let end = from + text[from..].find(';').unwrap();
        let decl = squash(&text[from..end]);
        let open = decl.find('(').unwrap();
        let close = decl.rfind(')').unwrap();
        let head = decl[..open].trim();
        let name_start = head.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map(|i| i + 1).unwrap_or(0);
        let name = head[name_start..].to_string();
        let ret = c_type_to_rust(&head[..name_start]);
        let args = decl[open + 1..close].trim();
        let params = if args == "void" || args.is_empty() {
            vec![]
        } else {
            args.split(',').map(c_param_type).collect()
        };
        assert!(name.starts_with("lt_"), "odd declaration: {}", decl);
        assert!(out.insert(name.clone(), (params, ret)).is_none(), "{} declared twice", name);
    }
    out
}

fn split_top_level(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' | '<' | '[' => depth += 1,
            ')' | '>' | ']' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            out.push(cur.trim().to_string());
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// `extern "C"` blocks of src/lib.rs: (module path, name) -> signature.
fn rust_functions(src: &str, experimental: bool) -> BTreeMap<String, Sig> {
    let src = strip_comments(src);
    let exp_at = src.find("pub mod experimental").unwrap();
    let mut out = BTreeMap::new();
    let mut at = 0;
    while let Some(p) = src[at..].find("extern \"C\" {") {
        let start = at + p + "extern \"C\" {".len();
        let mut depth = 1;
        let mut end = start;
        for (i, c) in src[start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = start + i;
                break;
            }
        }
        at = end;
        if (start > exp_at) != experimental {
            continue;
        }
        for item in src[start..end].split(';') {
            let item = squash(item);
            if item.is_empty() {
                continue;
            }
            let item = item.trim_start_matches("pub ").trim_start_matches("fn ");
            let open = item.find('(').unwrap();
            let name = item[..open].trim().to_string();
            let mut depth = 0;
            let mut close = open;
            for (i, c) in item.char_indices().skip(open) {
                if c == '(' {
                    depth += 1;
                } else if c == ')' {
                    depth -= 1;
                    if depth == 0 {
                        close = i;
                        break;
                    }
                }
            }
            let params = split_top_level(&item[open + 1..close])
                .into_iter()
                .map(|p| squash(p.splitn(2, ':').nth(1).expect("parameter without a type")))
                .collect();
            let ret = match item[close + 1..].trim().strip_prefix("->") {
                Some(r) => squash(r),
                None => "()".to_string(),
            };
            out.insert(name, (params, ret));
        }
    }
    out
}

fn compare_functions(header_name: &str, experimental: bool) {
    let text = match header(header_name) {
        Some(t) => t,
        None => return,
    };
    let c = header_functions(&text);
    let r = rust_functions(RUST_SOURCE, experimental);
    let c_names: Vec<_> = c.keys().cloned().collect();
    let r_names: Vec<_> = r.keys().cloned().collect();
    assert_eq!(c_names, r_names, "functions of {} vs the extern block of src/lib.rs", header_name);
    for (name, sig) in &c {
        assert_eq!(sig, &r[name], "signature of {} (C, mapped to Rust) vs src/lib.rs", name);
    }
    assert!(c.len() > 1, "parsed too few functions from {}", header_name);
}

#[test]
fn functions_match_stable_header() {
    compare_functions("loratune.h", false);
}

#[test]
fn functions_match_experimental_header() {
    compare_functions("loratune_experimental.h", true);
}

/// typedef struct NAME { fields } NAME;  ->  NAME -> [(field, rust type)]
fn header_structs(text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    let mut at = 0;
    while let Some(p) = text[at..].find("typedef struct ") {
        let start = at + p + "typedef struct ".len();
        at = start;
        let brace = match text[start..].find(|c: char| c == '{' || c == ';') {
            Some(b) if text.as_bytes()[start + b] == b'{' => start + b,
            _ => continue, // an opaque handle typedef
        };
        let name = text[start..brace].trim().to_string();
        let end = brace + text[brace..].find('}').unwrap();
        let mut fields = vec![];
        for decl in text[brace + 1..end].split(';') {
            let decl = squash(decl);
            if decl.is_empty() {
                continue;
            }
            let parts = split_top_level(&decl);
            // the type comes from the first declarator; the others share it (pointers aside)
            let first = &parts[0];
            let cut = first.rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '[' || c == ']')).unwrap();
            let base = first[..=cut].replace('*', "");
            let base_stars = first[..=cut].matches('*').count();
            for (i, part) in parts.iter().enumerate() {
                let (stars, declarator) = if i == 0 {
                    (base_stars, first[cut + 1..].to_string())
                } else {
                    (part.matches('*').count(), part.replace('*', "").trim().to_string())
                };
                let ty = format!("{}{}", base, "*".repeat(stars));
                let (fname, rust) = match declarator.find('[') {
                    Some(b) => {
                        let n = &declarator[b + 1..declarator.len() - 1];
                        (declarator[..b].to_string(), format!("[{}; {}]", c_type_to_rust(&ty), n))
                    }
                    None => (declarator.clone(), c_type_to_rust(&ty)),
                };
                fields.push((fname.trim().to_string(), rust));
            }
        }
        out.insert(name, fields);
    }
    out
}

fn rust_structs(src: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let src = strip_comments(src);
    let mut out = BTreeMap::new();
    let mut at = 0;
    while let Some(p) = src[at..].find("pub struct ") {
        let start = at + p + "pub struct ".len();
        at = start;
        let brace = start + src[start..].find('{').unwrap();
        let name = src[start..brace].trim().to_string();
        if name == "$name" {
            continue; // the opaque! macro
        }
        let end = brace + src[brace..].find('}').unwrap();
        let fields = split_top_level(&src[brace + 1..end])
            .into_iter()
            .map(|f| {
                let f = f.trim_start_matches("pub ").to_string();
                let mut it = f.splitn(2, ':');
                (it.next().unwrap().trim().to_string(), squash(it.next().unwrap()))
            })
            .collect();
        out.insert(name, fields);
    }
    out
}

/// Both headers: the experimental one's structs are mirrored in the `experimental` module.
fn both_headers() -> Option<String> {
    Some(header("loratune.h")? + &header("loratune_experimental.h")?)
}

#[test]
fn structs_match_header() {
    let text = match both_headers() {
        Some(t) => t,
        None => return,
    };
    let c = header_structs(&text);
    let r = rust_structs(RUST_SOURCE);
    assert_eq!(c.keys().collect::<Vec<_>>(), r.keys().collect::<Vec<_>>(), "struct names");
    for (name, fields) in &c {
        assert_eq!(fields, &r[name], "fields of {}", name);
        assert_eq!(fields[0], ("size".to_string(), "usize".to_string()), "{} starts with size_t size", name);
    }
}

macro_rules! layout {
    ($($t:ident { $($f:ident),* })*) => {{
        let mut v: Vec<(String, usize, Vec<(String, usize)>)> = vec![];
        $(
            let u = MaybeUninit::<$t>::uninit();
            let base = u.as_ptr();
            #[allow(unused_unsafe)]
            let fields = vec![$(
                (stringify!($f).to_string(),
                 unsafe { (std::ptr::addr_of!((*base).$f) as *const u8 as usize) - (base as *const u8 as usize) }),
            )*];
            v.push((stringify!($t).to_string(), size_of::<$t>(), fields));
        )*
        v
    }};
}

fn rust_layouts() -> Vec<(String, usize, Vec<(String, usize)>)> {
    layout! {
        lt_context_params { size, backend, n_threads, log_fn, log_user, log_level }
        lt_quant_params { size, format, blocksize, double_quant }
        lt_qtensor_info { size, format, blocksize, double_quant, ndim, shape, numel, n_blocks, bytes, nested_offset }
        lt_model_params { size, use_mmap, quantization, double_quant, quant_blocksize, quantize_lm_head, base_dtype,
                          skip_finite_check }
        lt_model_info { size, architecture, dtype, vocab_size, hidden_size, intermediate_size, n_layers, n_heads,
                        n_kv_heads, head_dim, max_position_embeddings, rope_theta, rms_norm_eps, tied_embeddings,
                        n_params, weight_bytes, quantization, quantized_params, quantized_bytes, family,
                        sliding_window, n_sliding_layers }
        lt_batch { size, n_rows, seq_len, input_ids, labels, position_ids }
        lt_adapter_params { size, rank, alpha, dropout, targets, use_rslora, init, seed, use_dora, full_finetune, modules_to_save }
        lt_optimizer_params { size, kind, lr, beta1, beta2, eps, weight_decay, momentum, schedule, warmup_steps,
                              warmup_ratio, total_steps, max_grad_norm }
        lt_trainer_params { size, objective, grad_accum, gradient_checkpointing, seed, beta, label_smoothing,
                            desirable_weight, undesirable_weight, ref_adapter, max_length, num_generations, epsilon,
                            epsilon_high, kl_beta, scale_rewards, loss_type, comm, zero_stage,
                            activation_memory }
        lt_comm_callbacks { size, rank, world_size, user, all_reduce, broadcast, reduce_scatter, all_gather, barrier }
        lt_pref_batch { size, n_rows, prompt_ids, prompt_lens, chosen_ids, chosen_lens, rejected_ids, rejected_lens,
                        labels, ref_chosen_logps, ref_rejected_logps, ref_kl_logps }
        lt_step_result { size, loss, grad_norm, lr, tokens, tokens_per_s, step, updated, rewards_chosen,
                         rewards_rejected, rewards_accuracies, rewards_margins, kl, reward_mean, reward_std,
                         clip_fraction, completion_length }
        lt_generate_params { size, max_new_tokens, temperature, top_k, top_p, seed, eos_token_id }
        lt_text_params { size, max_len, completion_only, assistant_only, add_special, add_eos }
        lt_gguf_params { size, dtype, tokenizer, name, allow_approximate }
        lt_combine_params { size, method, weights, density, t, rank, seed }
        lt_combine_report { size, rank, kept_energy, total_energy, max_module_error }
        lt_extract_params { size, rank, targets }
        lt_extract_report { size, n_modules, kept_energy, total_energy, module_kept, module_total, others_max_diff,
                            others_name }
    }
}

#[test]
fn struct_layout_matches_c_compiler() {
    let text = match both_headers() {
        Some(t) => t,
        None => return,
    };
    let layouts = rust_layouts();
    // the table above lists every field of every struct of the header
    let c = header_structs(&text);
    let listed: BTreeMap<String, Vec<String>> =
        layouts.iter().map(|(n, _, f)| (n.clone(), f.iter().map(|x| x.0.clone()).collect())).collect();
    let want: BTreeMap<String, Vec<String>> =
        c.iter().map(|(n, f)| (n.clone(), f.iter().map(|x| x.0.clone()).collect())).collect();
    assert_eq!(listed, want, "the layout! table of this test lists every struct field");

    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let tmp = std::env::temp_dir().join(format!("loratune-sys-layout-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut prog =
        String::from("#include <stdio.h>\n#include <stddef.h>\n#include \"loratune_experimental.h\"\nint main(void) {\n");
    for (name, _, fields) in &layouts {
        prog += &format!("  printf(\"{0} %zu\\n\", sizeof({0}));\n", name);
        for (f, _) in fields {
            prog += &format!("  printf(\"{0}.{1} %zu\\n\", offsetof({0}, {1}));\n", name, f);
        }
    }
    prog += "  return 0;\n}\n";
    std::fs::write(tmp.join("layout.c"), prog).unwrap();
    let exe = tmp.join("layout");
    let built = Command::new(&cc)
        .arg("-std=c11")
        .arg("-I")
        .arg(include_dir().unwrap())
        .arg(tmp.join("layout.c"))
        .arg("-o")
        .arg(&exe)
        .status();
    match built {
        Ok(s) if s.success() => {}
        _ => {
            eprintln!("header_sync: no working C compiler ({}); struct sizes not measured", cc);
            return;
        }
    }
    let out = Command::new(&exe).output().unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
    let measured: BTreeMap<String, usize> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut it = l.split_whitespace();
            (it.next().unwrap().to_string(), it.next().unwrap().parse().unwrap())
        })
        .collect();
    for (name, size, fields) in &layouts {
        assert_eq!(measured[name], *size, "sizeof({})", name);
        for (f, off) in fields {
            assert_eq!(measured[&format!("{}.{}", name, f)], *off, "offsetof({}, {})", name, f);
        }
    }
}

fn eval_c_int(expr: &str) -> Option<i64> {
    let e = expr.trim().trim_start_matches('(').trim_end_matches(')').trim();
    if let Some((a, b)) = e.split_once("<<") {
        return Some(eval_c_int(a)? << eval_c_int(b)?);
    }
    if let Some(h) = e.strip_prefix("0x") {
        return i64::from_str_radix(h, 16).ok();
    }
    e.parse().ok()
}

#[test]
fn constants_match_header() {
    let text = match header("loratune.h") {
        Some(t) => t,
        None => return,
    };
    let src = strip_comments(RUST_SOURCE);
    let mut checked = 0;
    let mut consts: Vec<(String, String)> = vec![];
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("#define LT_") {
            let mut it = rest.splitn(2, ' ');
            let name = format!("LT_{}", it.next().unwrap());
            let value = it.next().unwrap_or("").trim().to_string();
            if !value.is_empty() && !name.starts_with("LT_API") {
                consts.push((name, value));
            }
        }
    }
    // enumerators: NAME = VALUE inside enum { ... }
    let mut at = 0;
    while let Some(p) = text[at..].find("enum") {
        let start = at + p;
        at = start + 4;
        let open = match text[start..].find('{') {
            Some(o) => start + o,
            None => break,
        };
        if text[start..open].contains(';') {
            continue;
        }
        let close = open + text[open..].find('}').unwrap();
        for item in text[open + 1..close].split(',') {
            if let Some((n, v)) = item.split_once('=') {
                consts.push((n.trim().to_string(), v.trim().to_string()));
            }
        }
        at = close;
    }
    for (name, value) in consts {
        let decl = format!("pub const {}:", name);
        let pos = src.find(&decl).unwrap_or_else(|| panic!("src/lib.rs lacks {}", name));
        let rust_value = src[pos..].split_once('=').unwrap().1.split(';').next().unwrap().trim().to_string();
        if name == "LT_VERSION_STRING" {
            assert_eq!(rust_value, value, "{}", name);
        } else if let (Some(c), Some(r)) = (eval_c_int(&value), eval_c_int(&rust_value)) {
            assert_eq!(c, r, "value of {}", name);
        } else {
            assert_eq!(name, "LT_VERSION_NUMBER", "cannot evaluate {} = {} / {}", name, value, rust_value);
        }
        checked += 1;
    }
    assert!(checked > 40, "only {} constants found in the header", checked);
    assert_eq!(LT_VERSION_NUMBER, LT_VERSION_MAJOR * 10000 + LT_VERSION_MINOR * 100 + LT_VERSION_PATCH);
}

#[test]
fn linked_library_matches_declarations() {
    // calls into the linked library: the version the crate was written for is the one it runs with
    let n = unsafe { lt_version_number() };
    assert_eq!(n / 10000, LT_VERSION_MAJOR, "major version of the linked libloratune");
    let s = unsafe { std::ffi::CStr::from_ptr(lt_version_string()) }.to_str().unwrap().to_string();
    assert_eq!(s.split('.').count(), 3);
    let st = unsafe { std::ffi::CStr::from_ptr(lt_status_string(LT_ERR_FORMAT)) }.to_str().unwrap().to_string();
    assert!(st.starts_with("LT_ERR_FORMAT"));
    // the params structs of this crate are accepted as they are (size field included)
    let mut p = MaybeUninit::<lt_generate_params>::zeroed();
    unsafe { lt_generate_params_init(p.as_mut_ptr(), size_of::<lt_generate_params>()) };
    let p = unsafe { p.assume_init() };
    assert_eq!(p.size, size_of::<lt_generate_params>());
    assert_eq!(p.eos_token_id, LT_EOS_FROM_CONFIG);
}
