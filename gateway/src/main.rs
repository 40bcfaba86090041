//! `rosetta`: a multilingual LLM serving gateway with an OpenAI-compatible API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use rosetta_config::{Arch, Size};
use rosetta_engine::demo::{self, DemoSpec, StoredDtype};
use rosetta_gateway::auth::key::{self, KeyDigest};
use rosetta_gateway::policy::PolicyEngine;
use rosetta_gateway::{server, telemetry};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "rosetta",
    version,
    about = "Rosetta: serve open-weight LLMs to unchanged OpenAI clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API. Without --config, serves the embedded default: a
    /// generated demo model (made on first start, then reused) on 127.0.0.1:8080.
    ///
    /// Environment: ROSETTA_MAX_CPU_ISA=avx2|portable caps the CPU kernels' instruction set
    /// (AVX2 gives the same answers; the portable f32 and bf16 products agree to rounding).
    Serve {
        /// A YAML config file (see `rosetta config schema` and config/examples/).
        #[arg(long, short, env = "ROSETTA_CONFIG")]
        config: Option<PathBuf>,
        /// Override server.listen, for example 0.0.0.0:8080 or 127.0.0.1:0 (any free port).
        #[arg(long, env = "ROSETTA_LISTEN")]
        listen: Option<SocketAddr>,
        /// Serve only this process's engines, for a gateway to use as a remote replica: no
        /// API keys, policies, limits, routes or remotes (the gateway applies them), and the
        /// tenant headers it sends are trusted. Keep such a process on a private network.
        #[arg(long)]
        engine_only: bool,
    },
    /// Validate or describe config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Work with model folders.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Make API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a fresh random API key and the hash to put in the config. The key is shown
    /// once; the config keeps only its hash.
    New {
        /// The tenant the key is for (used in the printed config snippet).
        #[arg(long, default_value = "my-tenant")]
        tenant: String,
        /// A label for logs and audit entries.
        #[arg(long)]
        name: Option<String>,
    },
    /// Read a key on stdin and print its config hash (for keys made elsewhere).
    Hash,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a config file without serving: syntax, types, values, model folders, and the
    /// access policies against the Cedar schema.
    Check { file: PathBuf },
    /// Print the config file's JSON Schema.
    Schema,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Write a random-weight model in Hugging Face format (config.json, model.safetensors,
    /// tokenizer.json trained on the shipped multilingual corpus, tokenizer_config.json with a
    /// chat template, generation_config.json). The same seed gives the same bytes.
    Generate {
        /// Output folder: new, empty, or an earlier generated model (which is replaced).
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t = ArchArg::Llama)]
        arch: ArchArg,
        /// `tiny` for tests; `small` has SmolLM2-135M's exact shape.
        #[arg(long, value_enum, default_value_t = SizeArg::Tiny)]
        size: SizeArg,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Stored weight precision.
        #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
        dtype: DtypeArg,
        /// Split the weights over this many safetensors files with an index.
        #[arg(long, default_value_t = 1)]
        shards: usize,
    },
    /// Write a Llama, Mistral, Mixtral, Qwen2 or Qwen3 Hugging Face folder as a GGUF folder
    /// for `backend: mistralrs` (or llama.cpp): OUT/model-TYPE.gguf, beside copies of the
    /// tokenizer and config files the gateway reads.
    Gguf {
        /// A Hugging Face model folder (Llama, Mistral, Mixtral, Qwen2 or Qwen3; no rope
        /// scaling or sliding window).
        dir: PathBuf,
        /// Output folder (created).
        out: PathBuf,
        /// The matrices' type; norms stay f32.
        #[arg(long = "type", value_enum, default_value_t = GgufTypeArg::F32)]
        ty: GgufTypeArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum GgufTypeArg {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_k")]
    Q4K,
}

#[derive(Clone, Copy, ValueEnum)]
enum ArchArg {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Mixtral,
    Cohere,
    /// Cohere2 (Command R7B): sliding-window layers with rotary, global layers without.
    Cohere2,
    Bloom,
    /// DeepSeek-V3 (latent attention, routed and shared experts), for `backend: mistralrs`.
    Deepseek,
    /// An XLM-RoBERTa encoder for /v1/embeddings.
    XlmRoberta,
}

#[derive(Clone, Copy, ValueEnum)]
enum SizeArg {
    Tiny,
    Small,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    Bf16,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sets up its logs (and traces) from its config.
    if !matches!(cli.command, Command::Serve { .. }) {
        tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            engine_only,
        } => {
            // A cap that names no instruction set is refused before anything loads.
            let isa_cap = rosetta_engine::cpu::cap_from_env().map_err(anyhow::Error::msg)?;
            let embedded = config.is_none();
            let source = config.clone();
            let mut config = match config {
                Some(file) => rosetta_config::load_file(&file)?,
                None => rosetta_config::embedded_default(),
            };
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                telemetry::init(config.server.log_format, &config.server.tracing)?;
                if let Some(isa) = isa_cap {
                    tracing::info!(?isa, "CPU kernels capped by {}", rosetta_engine::cpu::ENV);
                }
                if embedded {
                    tracing::info!(
                        "no --config given: serving the embedded default (a generated demo model)"
                    );
                }
                let served = server::serve(config, engine_only, source).await;
                telemetry::shutdown();
                served
            })
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let config = rosetta_config::load_file(&file)?;
            PolicyEngine::new(&config, &config.effective_tenants())
                .with_context(|| format!("{}: access policies", file.display()))?;
            let problems = check_model_folders(&config);
            if problems.is_empty() {
                println!(
                    "ok: {} ({} model(s), {} tenant(s))",
                    file.display(),
                    config.models.len(),
                    config.effective_tenants().len()
                );
                Ok(())
            } else {
                anyhow::bail!("{}: {}", file.display(), problems.join("; "))
            }
        }
        Command::Config {
            command: ConfigCommand::Schema,
        } => {
            println!("{}", rosetta_config::json_schema());
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::New { tenant, name },
        } => {
            let key = key::generate();
            let hash = KeyDigest::of(&key).to_config();
            println!("API key (shown once; give it to the client):\n  {key}\n");
            println!("Config (under `tenants:`):");
            println!("  - id: {tenant}\n    keys:\n      - hash: {hash}");
            if let Some(name) = name {
                println!("        name: {name}");
            }
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Hash,
        } => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the key from stdin")?;
            let key = line.trim();
            anyhow::ensure!(!key.is_empty(), "no key on stdin");
            println!("{}", KeyDigest::of(key).to_config());
            Ok(())
        }
        Command::Model {
            command:
                ModelCommand::Generate {
                    dir,
                    arch,
                    size,
                    seed,
                    dtype,
                    shards,
                },
        } => {
            let arch = match arch {
                ArchArg::Llama => Arch::Llama,
                ArchArg::Mistral => Arch::Mistral,
                ArchArg::Qwen2 => Arch::Qwen2,
                ArchArg::Qwen3 => Arch::Qwen3,
                ArchArg::Mixtral => Arch::Mixtral,
                ArchArg::Cohere => Arch::Cohere,
                ArchArg::Cohere2 => Arch::Cohere2,
                ArchArg::Bloom => Arch::Bloom,
                ArchArg::Deepseek => Arch::Deepseek,
                ArchArg::XlmRoberta => Arch::XlmRoberta,
            };
            let size = match size {
                SizeArg::Tiny => Size::Tiny,
                SizeArg::Small => Size::Small,
            };
            let dtype = match dtype {
                DtypeArg::F32 => StoredDtype::F32,
                DtypeArg::Bf16 => StoredDtype::Bf16,
            };
            let spec = DemoSpec {
                arch,
                size,
                seed,
                dtype,
                shards,
            };
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "writing weights [{bar:30}] {bytes}/{total_bytes}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            demo::generate(&dir, &spec, &mut |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })?;
            bar.finish_and_clear();
            println!("wrote {} model to {}", spec.slug(), dir.display());
            Ok(())
        }
        Command::Model {
            command: ModelCommand::Gguf { dir, out, ty },
        } => {
            use rosetta_engine::model::gguf::{write_gguf, GgufType};
            let ty = match ty {
                GgufTypeArg::F32 => GgufType::F32,
                GgufTypeArg::F16 => GgufType::F16,
                GgufTypeArg::Q8_0 => GgufType::Q8_0,
                GgufTypeArg::Q4K => GgufType::Q4K,
            };
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            for f in [
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "generation_config.json",
            ] {
                if dir.join(f).exists() {
                    std::fs::copy(dir.join(f), out.join(f))
                        .with_context(|| format!("copying {f}"))?;
                }
            }
            let file = out.join(format!("model-{}.gguf", ty.name()));
            write_gguf(&dir, &file, ty)?;
            println!("wrote {}", file.display());
            Ok(())
        }
    }
}

/// `config check` also looks at model folders, which parsing alone cannot.
fn check_model_folders(config: &rosetta_config::Config) -> Vec<String> {
    config
        .models
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let path = m.path.as_ref()?;
            let missing: Vec<&str> = ["config.json", "tokenizer.json"]
                .into_iter()
                .filter(|f| !path.join(f).exists())
                .collect();
            (!missing.is_empty()).then(|| {
                format!(
                    "`models[{i}].path`: {} lacks {}",
                    path.display(),
                    missing.join(" and ")
                )
            })
        })
        .collect()
}
