//! Every shipped example loads, and mistakes are reported with file, key and expectation.

use std::path::{Path, PathBuf};

use rosetta_config::{load_file, parse_str, ConfigError, Dtype, EngineDevice, ModelSource};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_loads() {
    let files = examples();
    assert!(
        files.len() >= 3,
        "expected the shipped examples, found {files:?}"
    );
    for f in files {
        let config = load_file(&f).unwrap_or_else(|e| panic!("{} does not load: {e}", f.display()));
        assert!(!config.models.is_empty());
    }
}

#[test]
fn embedded_default_is_the_small_demo_model_on_loopback() {
    let c = rosetta_config::embedded_default();
    assert!(c.server.listen.ip().is_loopback());
    assert_eq!(c.models.len(), 1);
    assert!(matches!(c.models[0].source(), Some(ModelSource::Demo(_))));
}

#[test]
fn defaults_fill_what_is_left_out() {
    let c = parse_str(
        "auth: {allow_unauthenticated: true}\nmodels: [{id: m, path: /x, licence: mit}]",
        Path::new("t.yaml"),
    )
    .unwrap();
    let m = &c.models[0];
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(m.dtype, Dtype::Auto);
    assert_eq!(m.engine.kv_block_size, 16);
    assert_eq!(m.engine.device, EngineDevice::Cpu);
    assert_eq!(m.max_context, None);
}

#[test]
fn engine_device_is_cpu_or_a_cuda_ordinal() {
    let device = |d: &str| {
        parse_str(
            &format!("auth: {{allow_unauthenticated: true}}\nmodels: [{{id: m, path: /x, licence: mit, engine: {{device: \"{d}\"}}}}]"),
            Path::new("t.yaml"),
        )
        .map(|c| c.models[0].engine.device)
    };
    assert_eq!(device("cpu").unwrap(), EngineDevice::Cpu);
    assert_eq!(device("cuda").unwrap(), EngineDevice::Cuda(0));
    assert_eq!(device("cuda:3").unwrap(), EngineDevice::Cuda(3));
    let e = device("gpu").unwrap_err().to_string();
    assert!(
        e.contains("models[0].engine.device") && e.contains("use `cpu`, `cuda` or `cuda:N`"),
        "{e}"
    );
}

#[test]
fn relative_model_paths_resolve_against_the_config_folder() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        "auth: {allow_unauthenticated: true}\nmodels: [{id: m, path: models/m, licence: mit}]",
    )
    .unwrap();
    let c = load_file(&file).unwrap();
    assert_eq!(
        c.models[0].path.as_deref(),
        Some(dir.path().join("models/m").as_path())
    );
}

fn error(yaml: &str) -> String {
    match parse_str(yaml, Path::new("bad.yaml")) {
        Ok(_) => panic!("config should be rejected:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn wrong_type_names_file_key_and_expectation() {
    let e = error("models:\n  - id: m\n    path: /x\n    licence: mit\n    dtype: f64\n");
    assert!(
        e.starts_with("bad.yaml: at `models[0].dtype` (line 5"),
        "{e}"
    );
    assert!(
        e.contains("unknown variant `f64`, expected one of `auto`, `f32`, `bf16`"),
        "{e}"
    );
}

#[test]
fn unknown_key_is_rejected() {
    let e = error("models: [{id: m, path: /x, licence: mit, engine: {kv_blocks: 3}}]");
    assert!(
        e.starts_with("bad.yaml: at `models[0].engine.kv_blocks` (line 1"),
        "{e}"
    );
    assert!(
        e.contains(": unknown field `kv_blocks`, expected one of `kv_block_size`"),
        "{e}"
    );
}

#[test]
fn missing_field_is_named() {
    let e = error("models: [{id: m, path: /x}]");
    assert!(e.contains("missing field `licence`"), "{e}");
}

#[test]
fn semantic_mistakes_are_all_reported() {
    let yaml = "models:\n  - {id: a, path: /x, demo: {size: tiny}, licence: mit}\n  - {id: a, licence: ' ', engine: {kv_block_size: 24}, languages: [English]}\n";
    let Err(ConfigError::Invalid { issues, .. }) = parse_str(yaml, Path::new("bad.yaml")) else {
        panic!("expected validation issues");
    };
    let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
    for k in [
        "models[0].path",
        "models[1].id",
        "models[1].path",
        "models[1].licence",
        "models[1].languages",
        "models[1].engine.kv_block_size",
    ] {
        assert!(keys.contains(&k), "no issue for {k}: {issues:?}");
    }
}

#[test]
fn malformed_yaml_is_a_parse_error() {
    let e = error("models: [");
    assert!(e.starts_with("bad.yaml:"), "{e}");
}

#[test]
fn schema_describes_every_section() {
    let schema: serde_json::Value = serde_json::from_str(&rosetta_config::json_schema()).unwrap();
    let text = schema.to_string();
    for key in [
        "models",
        "server",
        "kv_block_size",
        "licence",
        "languages",
        "max_context",
    ] {
        assert!(text.contains(key), "schema lacks {key}");
    }
}

const ACCESS: &str = "models: [{id: m, path: /x, licence: cc-by-nc-4.0}]\n";

#[test]
fn access_mistakes_are_reported() {
    let yaml = format!(
        "{ACCESS}auth: {{anonymous_tenant: ghost}}\ntenants:\n  - id: t\n    keys: [{{hash: rsk-plaintext}}]\n    accepted_licences: [nope]\n    region: Europe\n    models: [other]\n    limits: {{requests_per_minute: 0, models: {{other: {{tokens_per_minute: 5}}}}}}\n  - id: t\n"
    );
    let Err(ConfigError::Invalid { issues, .. }) = parse_str(&yaml, Path::new("bad.yaml")) else {
        panic!("expected validation issues");
    };
    let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
    for k in [
        "auth.anonymous_tenant",
        "tenants[0].keys[0].hash",
        "tenants[0].accepted_licences",
        "tenants[0].region",
        "tenants[0].models",
        "tenants[0].limits.requests_per_minute",
        "tenants[0].limits.models",
        "tenants[1].id",
    ] {
        assert!(keys.contains(&k), "no issue for {k}: {issues:?}");
    }
}

#[test]
fn unknown_licence_names_the_catalogue() {
    let e =
        error("auth: {allow_unauthenticated: true}\nmodels: [{id: m, path: /x, licence: wtfpl}]");
    assert!(e.contains("unknown licence `wtfpl`"), "{e}");
    assert!(e.contains("llama3.1"), "{e}");
    let ok = parse_str(
        "auth: {allow_unauthenticated: true}\nmodels: [{id: m, path: /x, licence: wtfpl}]\nlicences: [{id: wtfpl, name: WTFPL, commercial_use: true}]",
        Path::new("ok.yaml"),
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn a_config_without_keys_must_allow_unauthenticated_use() {
    let e = error(ACCESS);
    assert!(e.contains("no API keys are configured"), "{e}");
}
