//! `gptq inspect MODEL`: config, tensors, dtypes and sizes.

/// Print a model's config, layers, dtypes and sizes.
#[derive(clap::Args)]
pub struct Args {
    /// Model: HF folder, .gguf file or Hub id.
    pub model: String,
    /// List every tensor.
    #[arg(long)]
    pub tensors: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let files = super::open(&a.model)?;
    let c = &files.config;
    let field = |k: &str| {
        c.get(k)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into())
    };
    println!("model        {}", files.name);
    for k in [
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "max_position_embeddings",
    ] {
        println!("{k:<24} {}", field(k));
    }
    let names = files.weights.names();
    let mut total = 0usize;
    for n in &names {
        let shape = files.weights.shape(n).unwrap_or_default();
        total += shape.iter().product::<usize>();
        if a.tensors {
            println!("  {n:<60} {shape:?}");
        }
    }
    println!(
        "tensors      {} ({:.2}M values)",
        names.len(),
        total as f64 / 1e6
    );
    println!(
        "tokenizer    {}",
        if files.tokenizer_json.is_some() {
            "tokenizer.json"
        } else {
            "none"
        }
    );
    match gptq_io::gptq::quantize_config_for(&files)? {
        Some(q) => {
            let g = q
                .group_size()
                .map_or("per-channel".to_string(), |g| g.to_string());
            let n_q = names.iter().filter(|n| n.ends_with(".qweight")).count();
            println!(
                "quantization gptq {}-bit, group {g}, {}, desc_act {}, static_groups {}, format {}, {n_q} quantized linears, {} dynamic rules",
                q.bits,
                if q.sym { "sym" } else { "asym" },
                q.desc_act,
                q.static_groups,
                q.checkpoint_format,
                q.dynamic.len()
            );
        }
        None => println!("quantization none"),
    }
    Ok(())
}
