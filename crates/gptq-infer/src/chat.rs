//! Chat templates: the Jinja template from `tokenizer_config.json`
//! (`chat_template`, a string or a list of named templates), rendered with
//! minijinja and its Python-compatibility methods (`.strip()`, ...).

use crate::{Error, Result, Tokenizer};
use gptq_io::ModelFiles;

/// The model's default chat template, if it has one.
pub fn template_of(files: &ModelFiles) -> Option<String> {
    let t = files.tokenizer_config.as_ref()?.get("chat_template")?;
    match t {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(a) => a
            .iter()
            .find(|e| e.get("name").and_then(|n| n.as_str()) == Some("default"))
            .or_else(|| a.first())
            .and_then(|e| e.get("template"))
            .and_then(|s| s.as_str())
            .map(String::from),
        _ => None,
    }
}

/// Renders a single user turn (optionally after a system prompt) with the
/// generation prompt appended.
pub fn render(template: &str, tok: &Tokenizer, system: Option<&str>, user: &str) -> Result<String> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| Error::Template(e.to_string()))?;
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(serde_json::json!({"role": "system", "content": s}));
    }
    messages.push(serde_json::json!({"role": "user", "content": user}));
    let ctx = serde_json::json!({
        "messages": messages,
        "add_generation_prompt": true,
        "bos_token": tok.bos_token.clone().unwrap_or_default(),
        "eos_token": tok.eos_token.clone().unwrap_or_default(),
    });
    env.get_template("chat")
        .and_then(|t| t.render(ctx))
        .map_err(|e| Error::Template(e.to_string()))
}
