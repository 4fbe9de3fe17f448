//! Finds libloratune for the linker, in this order:
//!   1. LORATUNE_LIB_DIR: the directory holding libloratune.so (and libloratune.a);
//!   2. pkg-config (`pkg-config --libs loratune`; honours PKG_CONFIG and PKG_CONFIG_PATH);
//!   3. the linker's default search path (-lloratune), with a warning.
//! LORATUNE_STATIC=1 links libloratune.a instead (plus its dependencies jansson, openblas, gomp, m;
//! a CUDA build of the static library also needs the CUDA libraries, which this does not add).
//! Dependents get DEP_LORATUNE_INCLUDE (the header directory) and DEP_LORATUNE_LIB_DIR when known.
use std::env;
use std::path::Path;
use std::process::Command;

fn emit_static_deps() {
    for l in ["jansson", "openblas", "gomp", "m"] {
        println!("cargo:rustc-link-lib=dylib={}", l);
    }
}

fn main() {
    for v in ["LORATUNE_LIB_DIR", "LORATUNE_INCLUDE_DIR", "LORATUNE_STATIC", "PKG_CONFIG", "PKG_CONFIG_PATH"] {
        println!("cargo:rerun-if-env-changed={}", v);
    }
    println!("cargo:rerun-if-changed=build.rs");
    let statik = env::var("LORATUNE_STATIC").map(|v| v == "1").unwrap_or(false);
    let kind = if statik { "static" } else { "dylib" };

    if let Ok(dir) = env::var("LORATUNE_LIB_DIR") {
        println!("cargo:rustc-link-search=native={}", dir);
        println!("cargo:rustc-link-lib={}=loratune", kind);
        if statik {
            emit_static_deps();
        }
        println!("cargo:lib_dir={}", dir);
        let inc = env::var("LORATUNE_INCLUDE_DIR").unwrap_or_else(|_| format!("{}/../include", dir));
        if Path::new(&inc).join("loratune.h").exists() {
            println!("cargo:include={}", inc);
        }
        return;
    }

    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let mut cmd = Command::new(&pkg_config);
    cmd.arg("--libs");
    if statik {
        cmd.arg("--static");
    }
    cmd.arg("loratune");
    match cmd.output() {
        Ok(out) if out.status.success() => {
            let flags = String::from_utf8_lossy(&out.stdout).to_string();
            for tok in flags.split_whitespace() {
                if let Some(dir) = tok.strip_prefix("-L") {
                    println!("cargo:rustc-link-search=native={}", dir);
                    println!("cargo:lib_dir={}", dir);
                } else if let Some(lib) = tok.strip_prefix("-l") {
                    let k = if lib == "loratune" { kind } else { "dylib" };
                    println!("cargo:rustc-link-lib={}={}", k, lib);
                }
            }
            if let Ok(o) = Command::new(&pkg_config).args(["--variable=includedir", "loratune"]).output() {
                let inc = String::from_utf8_lossy(&o.stdout).trim().to_string();
                if !inc.is_empty() {
                    println!("cargo:include={}", inc);
                }
            }
        }
        _ => {
            println!(
                "cargo:warning=loratune-sys: set LORATUNE_LIB_DIR or install loratune.pc for pkg-config; \
                 linking -lloratune from the default search path"
            );
            println!("cargo:rustc-link-lib={}=loratune", kind);
            if statik {
                emit_static_deps();
            }
        }
    }
}
