//! Renders a model's chat template the way Hugging Face transformers' `apply_chat_template` does,
//! so a prompt built here is byte for byte the prompt the model was trained and exported with.
//!
//! transformers compiles templates in a Jinja2 `ImmutableSandboxedEnvironment` with
//! `trim_blocks`, `lstrip_blocks` and the loop-controls extension, adds `raise_exception`,
//! `strftime_now` and its own `tojson`, and renders with `messages`, `add_generation_prompt`,
//! the tokenizer's special tokens, `tools` and `documents`. This module rebuilds that environment
//! on minijinja and bridges what Python does differently: `{{ none }}` prints `None`, a list
//! prints as Python's `repr`, `tojson` is `json.dumps(ensure_ascii=False)`, strings have Python's
//! methods (through minijinja-contrib's pycompat), and a message is a dict whose keys keep their
//! order. The expected strings in the tests come from transformers itself
//! (`tests/data/chat_templates/render_reference.py`).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Rest, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};

/// File a model folder may carry its chat template in; it wins over tokenizer_config.json.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// Tokenizer settings: `chat_template`, `bos_token`, `eos_token`.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Legacy home of the special tokens, read only when tokenizer_config.json lacks one.
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";
/// The name transformers gives the template to use when a folder carries several.
const DEFAULT_TEMPLATE_NAME: &str = "default";
/// Name of the compiled template inside the environment; it appears in no message.
const TEMPLATE_NAME: &str = "chat_template";

/// One turn of a conversation, as the template sees it: a dict with `role` and `content`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    fn to_value(&self) -> Value {
        Value::from_object(OrderedMap(vec![
            (Value::from("role"), Value::from(self.role.as_str())),
            (Value::from("content"), Value::from(self.content.as_str())),
        ]))
    }
}

/// Why a chat template could not be loaded, compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not valid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {reason}", path.display())]
    InvalidConfig { path: PathBuf, reason: String },
    /// The template is not valid Jinja (or uses syntax minijinja does not know).
    #[error("chat template {origin} does not compile{}: {message}", at_line(*.line))]
    Compile {
        origin: String,
        line: Option<usize>,
        message: String,
    },
    /// The template called `raise_exception(message)`: it refuses these messages (roles that do
    /// not alternate, an unsupported role, ...). The text is the template's own, for the client.
    #[error("{0}")]
    Raised(String),
    /// Rendering failed for another reason, e.g. the template indexed past the end of `messages`.
    #[error("chat template {origin} failed to render{}: {message}", at_line(*.line))]
    Render {
        origin: String,
        line: Option<usize>,
        message: String,
    },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|line| format!(" at line {line}"))
        .unwrap_or_default()
}

/// A compiled chat template with the special tokens it renders. Compile once, share it across
/// threads (it is `Send + Sync`), render per request.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Value,
    eos_token: Value,
    /// Where the template came from, for error messages.
    origin: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("bos_token", &self.bos_token.as_str())
            .field("eos_token", &self.eos_token.as_str())
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Loads the template of a model folder: `chat_template.jinja` if present, else
    /// tokenizer_config.json's `chat_template` (a string, or a list of `{name, template}` of
    /// which "default" is used). `bos_token` and `eos_token` come from tokenizer_config.json
    /// (a string or an AddedToken object `{"content": ...}`), falling back to
    /// special_tokens_map.json; a missing one renders as "". `Ok(None)`: the folder has no template.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>, ChatTemplateError> {
        Self::load(dir, Clock::System)
    }

    /// Compiles `source`. Syntax errors are reported with their line.
    pub fn new(
        source: String,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self, ChatTemplateError> {
        Self::compile(
            source,
            bos_token,
            eos_token,
            "<inline>".to_owned(),
            Clock::System,
        )
    }

    /// Renders `messages`; `add_generation_prompt` appends the header that starts the
    /// assistant's turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        let messages: Vec<Value> = messages.iter().map(ChatMessage::to_value).collect();
        let context = Value::from(std::collections::BTreeMap::from([
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", self.bos_token.clone()),
            ("eos_token", self.eos_token.clone()),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ]));
        self.env
            .get_template(TEMPLATE_NAME)
            .and_then(|template| template.render(context))
            .map_err(|err| self.render_error(err))
    }

    /// Where the template was loaded from (a file, `tokenizer_config.json (chat_template)`, or
    /// `<inline>`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn bos_token(&self) -> &str {
        self.bos_token.as_str().unwrap_or_default()
    }

    pub fn eos_token(&self) -> &str {
        self.eos_token.as_str().unwrap_or_default()
    }

    fn load(dir: &Path, clock: Clock) -> Result<Option<Self>, ChatTemplateError> {
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let config = read_json_if_exists(&config_path)?;
        let jinja_path = dir.join(CHAT_TEMPLATE_FILE);
        let (source, origin) = match read_if_exists(&jinja_path)? {
            Some(source) => (source, jinja_path.display().to_string()),
            None => match config
                .as_ref()
                .map(|config| template_from_config(config, &config_path))
                .transpose()?
                .flatten()
            {
                Some(source) => (source, format!("{} (chat_template)", config_path.display())),
                None => return Ok(None),
            },
        };
        let mut bos_token = config.as_ref().and_then(|c| special_token(c, "bos_token"));
        let mut eos_token = config.as_ref().and_then(|c| special_token(c, "eos_token"));
        if bos_token.is_none() || eos_token.is_none() {
            let map_path = dir.join(SPECIAL_TOKENS_MAP_FILE);
            if let Some(map) = read_json_if_exists(&map_path)? {
                bos_token = bos_token.or_else(|| special_token(&map, "bos_token"));
                eos_token = eos_token.or_else(|| special_token(&map, "eos_token"));
            }
        }
        Self::compile(
            source,
            bos_token.unwrap_or_default(),
            eos_token.unwrap_or_default(),
            origin,
            clock,
        )
        .map(Some)
    }

    fn compile(
        source: String,
        bos_token: String,
        eos_token: String,
        origin: String,
        clock: Clock,
    ) -> Result<Self, ChatTemplateError> {
        let compile_error = |err: minijinja::Error| ChatTemplateError::Compile {
            origin: origin.clone(),
            line: err.line(),
            message: describe(&err),
        };
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .keep_trailing_newline(false)
                .build()
                .map_err(compile_error)?,
        );
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_debug(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, _state, value| {
            match value.as_str() {
                Some(s) => out.write_str(s),
                None => out.write_str(&py_str(value)),
            }
            .map_err(minijinja::Error::from)
        });
        env.add_filter("tojson", tojson);
        env.add_filter("string", |value: &Value| py_str(value));
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", move |format: &str| {
            strftime(format, &clock.now())
        });
        let source = rewrite_generation_tags(&source).into_owned();
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(compile_error)?;
        Ok(Self {
            env,
            bos_token: Value::from(bos_token),
            eos_token: Value::from(eos_token),
            origin,
        })
    }

    fn render_error(&self, err: minijinja::Error) -> ChatTemplateError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(current) = cause {
            if let Some(raised) = current.downcast_ref::<RaisedByTemplate>() {
                return ChatTemplateError::Raised(raised.0.clone());
            }
            cause = current.source();
        }
        ChatTemplateError::Render {
            origin: self.origin.clone(),
            line: err.line(),
            message: describe(&err),
        }
    }
}

/// The error's kind and detail, without minijinja's "(in chat_template:3)" suffix.
fn describe(err: &minijinja::Error) -> String {
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    }
}

fn read_if_exists(path: &Path) -> Result<Option<String>, ChatTemplateError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ChatTemplateError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn read_json_if_exists(path: &Path) -> Result<Option<serde_json::Value>, ChatTemplateError> {
    read_if_exists(path)?
        .map(|text| {
            serde_json::from_str(&text).map_err(|source| ChatTemplateError::Json {
                path: path.to_owned(),
                source,
            })
        })
        .transpose()
}

/// tokenizer_config.json's `chat_template`: a string, or a list of `{name, template}` from which
/// transformers picks "default" (it refuses a list without one, and so do we).
fn template_from_config(
    config: &serde_json::Value,
    path: &Path,
) -> Result<Option<String>, ChatTemplateError> {
    let invalid = |reason: String| ChatTemplateError::InvalidConfig {
        path: path.to_owned(),
        reason,
    };
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(source)) => Ok(Some(source.clone())),
        Some(serde_json::Value::Array(templates)) => {
            let mut names = Vec::with_capacity(templates.len());
            for entry in templates {
                let name = entry.get("name").and_then(serde_json::Value::as_str);
                let template = entry.get("template").and_then(serde_json::Value::as_str);
                match (name, template) {
                    (Some(DEFAULT_TEMPLATE_NAME), Some(template)) => {
                        return Ok(Some(template.to_owned()));
                    }
                    (Some(name), Some(_)) => names.push(name),
                    _ => {
                        return Err(invalid(
                            "each entry of `chat_template` must be {\"name\": string, \"template\": string}"
                                .to_owned(),
                        ));
                    }
                }
            }
            Err(invalid(format!(
                "`chat_template` lists templates {names:?} but none is named \"{DEFAULT_TEMPLATE_NAME}\""
            )))
        }
        Some(other) => Err(invalid(format!(
            "`chat_template` must be a string or a list of {{name, template}}, not {}",
            json_type_name(other)
        ))),
    }
}

fn json_type_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A special token: a plain string, or an AddedToken object whose `content` is the token.
fn special_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(token) => Some(token.clone()),
        serde_json::Value::Object(added) => added
            .get("content")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

/// transformers' `{% generation %}...{% endgeneration %}` marks assistant text for training
/// masks and renders its body unchanged. minijinja has no such tag, so it becomes an
/// `{% if true %}` block, which keeps the tag's whitespace control and line numbers.
fn rewrite_generation_tags(source: &str) -> Cow<'_, str> {
    if !source.contains("generation") {
        return Cow::Borrowed(source);
    }
    let mut out = String::with_capacity(source.len() + 16);
    let mut rest = source;
    while let Some(start) = rest.find('{') {
        let (before, tail) = rest.split_at(start);
        out.push_str(before);
        if let Some(body) = tail.strip_prefix("{#") {
            // Comments are copied as they are.
            let end = body.find("#}").map_or(tail.len(), |end| end + 4);
            out.push_str(&tail[..end]);
            rest = &tail[end..];
        } else if let Some(body) = tail.strip_prefix("{%") {
            let trim = body.starts_with(['-', '+']);
            let after_trim = if trim { &body[1..] } else { body };
            let word_start = after_trim.trim_start();
            let word_len = word_start
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(word_start.len());
            let word = &word_start[..word_len];
            let replacement = match word {
                "generation" => Some("if true"),
                "endgeneration" => Some("endif"),
                _ => None,
            };
            let closes = word_start[word_len..]
                .trim_start()
                .trim_start_matches(['-', '+'])
                .starts_with("%}");
            match replacement {
                Some(replacement) if closes => {
                    let prefix_len = tail.len() - word_start.len();
                    out.push_str(&tail[..prefix_len]);
                    out.push_str(replacement);
                    rest = &word_start[word_len..];
                }
                _ if word == "raw" => {
                    // A raw block's text is not template syntax: copy it through endraw.
                    let end = find_endraw(tail).unwrap_or(tail.len());
                    out.push_str(&tail[..end]);
                    rest = &tail[end..];
                }
                _ => {
                    out.push_str("{%");
                    rest = body;
                }
            }
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The end of the `{% endraw %}` tag closing a raw block that starts at `tail`.
fn find_endraw(tail: &str) -> Option<usize> {
    let mut offset = 2;
    while let Some(found) = tail[offset..].find("{%") {
        let tag_start = offset + found;
        let inner = tail[tag_start + 2..]
            .trim_start_matches(['-', '+'])
            .trim_start();
        if let Some(after) = inner.strip_prefix("endraw") {
            let close = after.find("%}")?;
            return Some(tail.len() - after.len() + close + 2);
        }
        offset = tag_start + 2;
    }
    None
}

/// The error `raise_exception` returns; render() finds it in the error chain and hands the
/// template's text to the client unchanged.
#[derive(Debug)]
struct RaisedByTemplate(String);

impl fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

fn raise_exception(message: &Value) -> Result<Value, minijinja::Error> {
    let message = match message.as_str() {
        Some(text) => text.to_owned(),
        None => py_str(message),
    };
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(RaisedByTemplate(message)),
    )
}

/// A dict that keeps its keys in insertion order, as Python's does: `message.items()` and
/// `message|tojson` list `role` before `content`. (minijinja's own maps sort their keys.)
#[derive(Debug)]
struct OrderedMap(Vec<(Value, Value)>);

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.iter().map(|(k, _)| k.clone()).collect())
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.0.len())
    }
}

// ---- Python's str() and repr() of template values ----------------------------------------

/// What Python's `str()` gives for the value, which is what Jinja2 prints for `{{ value }}`.
fn py_str(value: &Value) -> String {
    let mut out = String::new();
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::String => out.push_str(value.as_str().unwrap_or_default()),
        _ => py_repr_into(&mut out, value),
    }
    out
}

fn py_repr_into(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => out.push_str("Undefined"),
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => {
            if value.is_integer() {
                let _ = write!(out, "{value}");
            } else {
                match f64::try_from(value.clone()) {
                    Ok(float) => out.push_str(&py_float_repr(float)),
                    Err(_) => {
                        let _ = write!(out, "{value}");
                    }
                }
            }
        }
        ValueKind::String => py_str_repr_into(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let tuple = value.is_tuple();
            out.push(if tuple { '(' } else { '[' });
            let mut count = 0;
            if let Ok(items) = value.try_iter() {
                for item in items {
                    if count > 0 {
                        out.push_str(", ");
                    }
                    py_repr_into(out, &item);
                    count += 1;
                }
            }
            if tuple && count == 1 {
                out.push(',');
            }
            out.push(if tuple { ')' } else { ']' });
        }
        ValueKind::Map => {
            out.push('{');
            for (index, (key, item)) in map_pairs(value).into_iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                py_repr_into(out, &key);
                out.push_str(": ");
                py_repr_into(out, &item);
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

fn map_pairs(value: &Value) -> Vec<(Value, Value)> {
    match value.as_object().and_then(|object| object.try_iter_pairs()) {
        Some(pairs) => pairs.collect(),
        None => Vec::new(),
    }
}

/// Python's `repr()` of a str: single quotes unless the text has one and no double quote.
fn py_str_repr_into(out: &mut String, text: &str) {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !py_is_printable(c) => {
                let code = u32::from(c);
                let _ = if code < 0x100 {
                    write!(out, "\\x{code:02x}")
                } else if code < 0x10000 {
                    write!(out, "\\u{code:04x}")
                } else {
                    write!(out, "\\U{code:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable()` for one character, short of its full Unicode tables: control
/// characters, separators other than the ASCII space, format characters and private use.
fn py_is_printable(c: char) -> bool {
    !(c.is_control()
        || matches!(c,
            '\u{a0}' | '\u{ad}' | '\u{1680}' | '\u{180e}' | '\u{2000}'..='\u{200f}'
            | '\u{2028}'..='\u{202f}' | '\u{205f}'..='\u{2064}' | '\u{2066}'..='\u{206f}'
            | '\u{3000}' | '\u{e000}'..='\u{f8ff}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}'
            | '\u{e0001}' | '\u{e0020}'..='\u{e007f}' | '\u{f0000}'..='\u{10ffff}'))
}

/// Python's `repr()` of a float: the shortest digits that round-trip, in positional notation
/// while the exponent is in [-4, 16), else scientific with a signed two-digit exponent.
fn py_float_repr(value: f64) -> String {
    if value.is_nan() {
        return "nan".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    // `{:e}` prints the shortest round-trip digits, e.g. "-1.5e-7".
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .unwrap_or((scientific.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let point = exponent + 1;
    let mut out = String::with_capacity(digits.len() + 8);
    if negative {
        out.push('-');
    }
    let len = digits.len() as i32;
    if -4 < point && point <= 16 {
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(&digits);
        } else if point >= len {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (point - len) as usize));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exponent < 0 { '-' } else { '+' },
            exponent.abs()
        );
    }
    out
}

// ---- tojson: Python's json.dumps ------------------------------------------------------------

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// which is `json.dumps` with those arguments (positional or keyword).
fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let positional = |index: usize, name: &str| -> Result<Option<Value>, minijinja::Error> {
        let keyword: Option<Value> = kwargs.get(name)?;
        Ok(args.get(index).cloned().or(keyword))
    };
    if args.len() > 4 {
        return Err(minijinja::Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments: ensure_ascii, indent, separators, sort_keys",
        ));
    }
    let ensure_ascii = positional(0, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match positional(1, "indent")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(match v.as_str() {
            Some(text) => text.to_owned(),
            None => {
                let width = v.as_i64().ok_or_else(|| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: indent must be an integer or a string",
                    )
                })?;
                " ".repeat(usize::try_from(width).unwrap_or(0))
            }
        }),
    };
    let separators = match positional(2, "separators")? {
        Some(v) if !(v.is_none() || v.is_undefined()) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] => match (item.as_str(), key.as_str()) {
                    (Some(item), Some(key)) => Some((item.to_owned(), key.to_owned())),
                    _ => None,
                },
                _ => None,
            }
            .ok_or_else(|| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be a pair of strings",
                )
            })?
        }
        _ => (
            if indent.is_some() { "," } else { ", " }.to_owned(),
            ": ".to_owned(),
        ),
    };
    let sort_keys = positional(3, "sort_keys")?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let options = JsonOptions {
        ensure_ascii,
        indent,
        item_separator: separators.0,
        key_separator: separators.1,
        sort_keys,
    };
    let mut out = String::new();
    write_json(&mut out, value, &options, 0)?;
    Ok(Value::from(out))
}

struct JsonOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

fn not_serializable(kind: &str) -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("Object of type {kind} is not JSON serializable"),
    )
}

fn write_json(
    out: &mut String,
    value: &Value,
    options: &JsonOptions,
    depth: usize,
) -> Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                let _ = write!(out, "{value}");
            } else {
                let float = f64::try_from(value.clone())?;
                if float.is_nan() {
                    out.push_str("NaN");
                } else if float.is_infinite() {
                    out.push_str(if float > 0.0 { "Infinity" } else { "-Infinity" });
                } else {
                    out.push_str(&py_float_repr(float));
                }
            }
        }
        ValueKind::String => write_json_string(out, value.as_str().unwrap_or_default(), options),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_json_container(out, '[', ']', items.len(), options, depth, |out, i| {
                write_json(out, &items[i], options, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut pairs = Vec::new();
            for (key, item) in map_pairs(value) {
                pairs.push((json_key(&key)?, item));
            }
            if options.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_json_container(out, '{', '}', pairs.len(), options, depth, |out, i| {
                write_json_string(out, &pairs[i].0, options);
                out.push_str(&options.key_separator);
                write_json(out, &pairs[i].1, options, depth + 1)
            })?;
        }
        ValueKind::Undefined => return Err(not_serializable("Undefined")),
        other => return Err(not_serializable(&other.to_string())),
    }
    Ok(())
}

fn write_json_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    options: &JsonOptions,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), minijinja::Error>,
) -> Result<(), minijinja::Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(indent) = &options.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    };
    for i in 0..len {
        if i > 0 {
            out.push_str(&options.item_separator);
        }
        newline(out, depth + 1);
        item(out, i)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

/// A dict key as json.dumps writes it: strings as they are, numbers, booleans and None
/// converted, anything else refused.
fn json_key(key: &Value) -> Result<String, minijinja::Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::None => Ok("null".to_owned()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_owned()),
        ValueKind::Number => {
            let mut out = String::new();
            write_json(
                &mut out,
                key,
                &JsonOptions {
                    ensure_ascii: false,
                    indent: None,
                    item_separator: String::new(),
                    key_separator: String::new(),
                    sort_keys: false,
                },
                0,
            )?;
            Ok(out)
        }
        other => Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("keys must be str, int, float, bool or None, not {other}"),
        )),
    }
}

fn write_json_string(out: &mut String, text: &str, options: &JsonOptions) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 || (options.ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---- strftime_now ---------------------------------------------------------------------------

/// The time `strftime_now` formats. transformers calls `datetime.now()` (local time); the
/// appliance runs in UTC, so the system clock is read as UTC. Tests pin it to an instant.
#[derive(Debug, Clone, Copy)]
enum Clock {
    System,
    #[cfg(test)]
    Fixed {
        unix_seconds: i64,
    },
}

impl Clock {
    fn now(&self) -> CivilTime {
        match self {
            Clock::System => {
                let since_epoch = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
                CivilTime::from_unix(seconds, since_epoch.subsec_micros())
            }
            #[cfg(test)]
            Clock::Fixed { unix_seconds } => CivilTime::from_unix(*unix_seconds, 0),
        }
    }
}

/// A UTC calendar time, broken down the way C's `struct tm` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CivilTime {
    unix_seconds: i64,
    year: i64,
    /// 1..=12
    month: u32,
    /// 1..=31
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    microsecond: u32,
    /// 0 = Sunday
    weekday: u32,
    /// 1..=366
    day_of_year: u32,
}

impl CivilTime {
    fn from_unix(unix_seconds: i64, microsecond: u32) -> Self {
        let days = unix_seconds.div_euclid(86_400);
        let second_of_day = unix_seconds.rem_euclid(86_400) as u32;
        // Howard Hinnant's days_from_civil, inverted.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_march_year =
            day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_from_march = (5 * day_of_march_year + 2) / 153;
        let day = (day_of_march_year - (153 * month_from_march + 2) / 5 + 1) as u32;
        let month = if month_from_march < 10 {
            month_from_march + 3
        } else {
            month_from_march - 9
        } as u32;
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        const DAYS_BEFORE_MONTH: [u32; 12] =
            [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let day_of_year =
            DAYS_BEFORE_MONTH[(month - 1) as usize] + day + u32::from(leap && month > 2);
        Self {
            unix_seconds,
            year,
            month,
            day,
            hour: second_of_day / 3600,
            minute: second_of_day / 60 % 60,
            second: second_of_day % 60,
            microsecond,
            weekday: (days.rem_euclid(7) as u32 + 4) % 7,
            day_of_year,
        }
    }
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Python's `datetime.strftime` in the C locale, with glibc's extensions (`%-d` drops the
/// padding, `%e`, `%F`, `%T`, ...). An unknown directive is copied as it is, as glibc does.
fn strftime(format: &str, t: &CivilTime) -> String {
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let flag = match chars.peek() {
            Some(&flag @ ('-' | '_' | '0')) => {
                chars.next();
                Some(flag)
            }
            _ => None,
        };
        let Some(directive) = chars.next() else {
            out.push('%');
            if let Some(flag) = flag {
                out.push(flag);
            }
            break;
        };
        let number = |out: &mut String, value: i64, width: usize, pad: char| {
            let pad = match flag {
                Some('-') => None,
                Some('_') => Some(' '),
                Some('0') => Some('0'),
                _ => Some(pad),
            };
            let digits = value.to_string();
            if let Some(pad) = pad {
                for _ in digits.len()..width {
                    out.push(pad);
                }
            }
            out.push_str(&digits);
        };
        let weekday = WEEKDAYS[t.weekday as usize % 7];
        let month = MONTHS[(t.month as usize + 11) % 12];
        let hour12 = if t.hour.is_multiple_of(12) {
            12
        } else {
            t.hour % 12
        };
        match directive {
            'a' => out.push_str(&weekday[..3]),
            'A' => out.push_str(weekday),
            'b' | 'h' => out.push_str(&month[..3]),
            'B' => out.push_str(month),
            'c' => out.push_str(&strftime("%a %b %e %H:%M:%S %Y", t)),
            'C' => number(&mut out, t.year.div_euclid(100), 2, '0'),
            'd' => number(&mut out, t.day.into(), 2, '0'),
            'D' | 'x' => out.push_str(&strftime("%m/%d/%y", t)),
            'e' => number(&mut out, t.day.into(), 2, ' '),
            'f' => number(&mut out, t.microsecond.into(), 6, '0'),
            'F' => out.push_str(&strftime("%Y-%m-%d", t)),
            'H' => number(&mut out, t.hour.into(), 2, '0'),
            'I' => number(&mut out, hour12.into(), 2, '0'),
            'j' => number(&mut out, t.day_of_year.into(), 3, '0'),
            'k' => number(&mut out, t.hour.into(), 2, ' '),
            'l' => number(&mut out, hour12.into(), 2, ' '),
            'm' => number(&mut out, t.month.into(), 2, '0'),
            'M' => number(&mut out, t.minute.into(), 2, '0'),
            'n' => out.push('\n'),
            'p' => out.push_str(if t.hour < 12 { "AM" } else { "PM" }),
            'P' => out.push_str(if t.hour < 12 { "am" } else { "pm" }),
            'r' => out.push_str(&strftime("%I:%M:%S %p", t)),
            'R' => out.push_str(&strftime("%H:%M", t)),
            's' => number(&mut out, t.unix_seconds, 1, '0'),
            'S' => number(&mut out, t.second.into(), 2, '0'),
            't' => out.push('\t'),
            'T' | 'X' => out.push_str(&strftime("%H:%M:%S", t)),
            'u' => number(
                &mut out,
                (if t.weekday == 0 { 7 } else { t.weekday }).into(),
                1,
                '0',
            ),
            'U' => number(
                &mut out,
                ((t.day_of_year + 6 - t.weekday) / 7).into(),
                2,
                '0',
            ),
            'w' => number(&mut out, t.weekday.into(), 1, '0'),
            'W' => number(
                &mut out,
                ((t.day_of_year + 6 - (t.weekday + 6) % 7) / 7).into(),
                2,
                '0',
            ),
            'y' => number(&mut out, t.year.rem_euclid(100), 2, '0'),
            'Y' => number(&mut out, t.year, 1, '0'),
            // A naive datetime has no zone: Python prints nothing.
            'z' | 'Z' => {}
            '%' => out.push('%'),
            other => {
                out.push('%');
                if let Some(flag) = flag {
                    out.push(flag);
                }
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// 2025-03-07T09:05:03Z, the instant render_reference.py pins `strftime_now` to.
    const FIXED_NOW: Clock = Clock::Fixed {
        unix_seconds: 1_741_338_303,
    };

    fn data_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat_templates")
    }

    fn message(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    fn inline(source: &str) -> ChatTemplate {
        ChatTemplate::compile(
            source.to_owned(),
            "<s>".to_owned(),
            "</s>".to_owned(),
            "<test>".to_owned(),
            FIXED_NOW,
        )
        .expect("test template compiles")
    }

    fn load_dir(dir: &Path) -> ChatTemplate {
        ChatTemplate::from_model_dir(dir)
            .expect("folder loads")
            .expect("folder has a template")
    }

    #[derive(Deserialize)]
    struct Reference {
        fixed_now: String,
        conversations: HashMap<String, Vec<ChatMessage>>,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        template: Option<String>,
        model_dir: Option<String>,
        probe: Option<String>,
        source: Option<String>,
        bos_token: String,
        eos_token: String,
        conversation: String,
        add_generation_prompt: bool,
        output: Option<String>,
        error: Option<ExpectedError>,
        #[serde(default)]
        known_divergence: bool,
    }

    #[derive(Deserialize)]
    struct ExpectedError {
        #[serde(rename = "type")]
        kind: String,
        message: String,
    }

    impl Case {
        fn subject(&self) -> String {
            self.template
                .clone()
                .or_else(|| self.model_dir.clone())
                .or_else(|| self.probe.as_ref().map(|probe| format!("probe {probe}")))
                .unwrap_or_default()
        }

        fn compile(&self) -> ChatTemplate {
            let dir = data_dir();
            if let Some(model_dir) = &self.model_dir {
                let template = ChatTemplate::load(&dir.join(model_dir), FIXED_NOW)
                    .expect("model folder loads")
                    .expect("model folder has a template");
                assert_eq!(template.bos_token(), self.bos_token, "{model_dir}");
                assert_eq!(template.eos_token(), self.eos_token, "{model_dir}");
                return template;
            }
            let source = match (&self.template, &self.source) {
                (Some(path), _) => {
                    std::fs::read_to_string(dir.join(path)).expect("template file reads")
                }
                (None, Some(source)) => source.clone(),
                (None, None) => panic!("case names no template"),
            };
            ChatTemplate::compile(
                source,
                self.bos_token.clone(),
                self.eos_token.clone(),
                self.subject(),
                FIXED_NOW,
            )
            .expect("reference template compiles")
        }
    }

    fn load_reference() -> Reference {
        let path = data_dir().join("reference.json");
        let text = std::fs::read_to_string(&path).expect("reference.json reads");
        serde_json::from_str(&text).expect("reference.json parses")
    }

    /// Every case render_reference.py recorded from transformers renders to the same bytes here,
    /// or fails the same way: `raise_exception` with the same text, anything else as a render
    /// error. The few known divergences are listed in render_reference.py's KNOWN_DIVERGENCES.
    #[test]
    fn renders_exactly_what_transformers_renders() {
        let reference = load_reference();
        assert_eq!(reference.fixed_now, "2025-03-07T09:05:03");
        let mut templates: HashMap<String, ChatTemplate> = HashMap::new();
        let mut failures = Vec::new();
        for case in &reference.cases {
            let subject = case.subject();
            let template = templates
                .entry(format!("{subject}\0{:?}", case.source))
                .or_insert_with(|| case.compile());
            let messages = &reference.conversations[&case.conversation];
            let label = format!(
                "{subject} / {} / add_generation_prompt={}",
                case.conversation, case.add_generation_prompt
            );
            let rendered = template.render(messages, case.add_generation_prompt);
            if case.known_divergence {
                if let (Some(expected), Ok(actual)) = (&case.output, &rendered)
                    && expected == actual
                {
                    failures.push(format!(
                        "{label}: now matches transformers; move it from KNOWN_DIVERGENCES to PROBES"
                    ));
                }
                continue;
            }
            match (&case.output, &case.error, rendered) {
                (Some(expected), _, Ok(actual)) if *expected == actual => {}
                (Some(expected), _, actual) => failures.push(format!(
                    "{label}\n  transformers: {expected:?}\n  here:         {actual:?}"
                )),
                (None, Some(expected), Err(ChatTemplateError::Raised(message)))
                    if expected.kind == "TemplateError" && expected.message == message => {}
                (None, Some(expected), Err(ChatTemplateError::Render { .. }))
                    if expected.kind != "TemplateError" => {}
                (None, Some(expected), actual) => failures.push(format!(
                    "{label}\n  transformers: {} {:?}\n  here:         {actual:?}",
                    expected.kind, expected.message
                )),
                (None, None, _) => failures.push(format!("{label}: case has no expectation")),
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases differ from transformers:\n{}",
            failures.len(),
            reference.cases.len(),
            failures.join("\n")
        );
    }

    /// The reference covers the templates the brief names, each with real output, not only errors.
    #[test]
    fn reference_covers_the_well_known_templates() {
        let reference = load_reference();
        for subject in [
            "templates/Qwen-Qwen2.5-7B-Instruct.jinja",
            "templates/Qwen-Qwen3-0.6B.jinja",
            "templates/meta-llama-Meta-Llama-3-8B-Instruct.jinja",
            "templates/meta-llama-Llama-3.1-8B-Instruct.jinja",
            "templates/meta-llama-Llama-3.2-3B-Instruct.jinja",
            "templates/microsoft-Phi-3.5-mini-instruct.jinja",
            "model_dirs/gpt-oss-20b",
            "model_dirs/phi-3.5-moe-instruct",
            "model_dirs/llama-2-chat-list-form",
        ] {
            let rendered = reference
                .cases
                .iter()
                .filter(|case| case.subject() == subject && case.output.is_some())
                .count();
            assert!(rendered >= 8, "{subject}: only {rendered} rendered cases");
        }
    }

    #[test]
    fn gpt_oss_folder_uses_chat_template_jinja() {
        let dir = data_dir().join("model_dirs/gpt-oss-20b");
        let template = load_dir(&dir);
        assert!(template.origin().ends_with("chat_template.jinja"));
        assert_eq!(template.bos_token(), "<|startoftext|>");
        assert_eq!(template.eos_token(), "<|return|>");
        let prompt = template
            .render(&[message("user", "Hi")], true)
            .expect("renders");
        assert!(prompt.starts_with("<|start|>system<|message|>You are ChatGPT"));
        assert!(prompt.ends_with("<|start|>user<|message|>Hi<|end|><|start|>assistant"));
    }

    #[test]
    fn added_token_objects_give_their_content() {
        let dir = data_dir().join("model_dirs/phi-3.5-moe-instruct");
        let template = load_dir(&dir);
        assert_eq!(template.bos_token(), "<s>");
        assert_eq!(template.eos_token(), "<|endoftext|>");
        assert!(
            template
                .origin()
                .ends_with("tokenizer_config.json (chat_template)")
        );
        assert_eq!(
            template
                .render(&[message("user", "Hi")], false)
                .expect("renders"),
            "<|user|>\nHi<|end|>\n<|endoftext|>"
        );
    }

    #[test]
    fn list_form_picks_the_default_template() {
        let dir = data_dir().join("model_dirs/llama-2-chat-list-form");
        let template = load_dir(&dir);
        assert_eq!(
            template
                .render(&[message("user", "Hi")], true)
                .expect("renders"),
            "<s>[INST] Hi [/INST]"
        );
        let err = template
            .render(&[message("user", "a"), message("user", "b")], true)
            .expect_err("must fail");
        assert!(matches!(err, ChatTemplateError::Raised(_)));
        assert_eq!(
            err.to_string(),
            "Conversation roles must alternate user/assistant/user/assistant/..."
        );
    }

    #[test]
    fn list_form_without_default_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("temporary folder");
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG_FILE),
            r#"{"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "rag", "template": "y"}]}"#,
        )
        .expect("writes the fixture");
        let err = ChatTemplate::from_model_dir(dir.path()).expect_err("must fail");
        assert!(
            matches!(err, ChatTemplateError::InvalidConfig { .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(TOKENIZER_CONFIG_FILE), "{message}");
        assert!(message.contains("\"tool_use\", \"rag\""), "{message}");
        assert!(message.contains("\"default\""), "{message}");
    }

    #[test]
    fn chat_template_of_the_wrong_type_is_refused() {
        let dir = tempfile::tempdir().expect("temporary folder");
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG_FILE),
            r#"{"chat_template": 3}"#,
        )
        .expect("writes the fixture");
        let err = ChatTemplate::from_model_dir(dir.path()).expect_err("must fail");
        assert!(err.to_string().contains("not a number"), "{err}");
    }

    #[test]
    fn folder_without_template_gives_none() {
        let dir = data_dir().join("model_dirs/no-template");
        assert!(
            ChatTemplate::from_model_dir(&dir)
                .expect("folder loads")
                .is_none()
        );
        let empty = tempfile::tempdir().expect("temporary folder");
        assert!(
            ChatTemplate::from_model_dir(empty.path())
                .expect("folder loads")
                .is_none()
        );
        let null = tempfile::tempdir().expect("temporary folder");
        std::fs::write(
            null.path().join(TOKENIZER_CONFIG_FILE),
            r#"{"chat_template": null}"#,
        )
        .expect("writes the fixture");
        assert!(
            ChatTemplate::from_model_dir(null.path())
                .expect("folder loads")
                .is_none()
        );
    }

    #[test]
    fn invalid_json_names_the_file() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join(TOKENIZER_CONFIG_FILE);
        std::fs::write(&path, "{\"chat_template\": ").expect("writes the fixture");
        let err = ChatTemplate::from_model_dir(dir.path()).expect_err("must fail");
        assert!(matches!(err, ChatTemplateError::Json { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn unreadable_template_file_names_the_file() {
        let dir = tempfile::tempdir().expect("temporary folder");
        // A folder where the file should be: reading it fails with something other than NotFound.
        std::fs::create_dir(dir.path().join(CHAT_TEMPLATE_FILE)).expect("writes the fixture");
        let err = ChatTemplate::from_model_dir(dir.path()).expect_err("must fail");
        assert!(matches!(err, ChatTemplateError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(CHAT_TEMPLATE_FILE), "{err}");
    }

    #[test]
    fn tokens_missing_from_tokenizer_config_come_from_special_tokens_map_or_are_empty() {
        let dir = tempfile::tempdir().expect("temporary folder");
        std::fs::write(
            dir.path().join(CHAT_TEMPLATE_FILE),
            "{{ bos_token }}|{{ eos_token }}",
        )
        .expect("writes the fixture");
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG_FILE),
            r#"{"eos_token": null}"#,
        )
        .expect("writes the fixture");
        let template = load_dir(dir.path());
        assert_eq!(template.render(&[], false).expect("renders"), "|");
        std::fs::write(
            dir.path().join(SPECIAL_TOKENS_MAP_FILE),
            r#"{"bos_token": {"content": "<bos>", "lstrip": false}, "eos_token": "<eos>"}"#,
        )
        .expect("writes the fixture");
        let template = load_dir(dir.path());
        assert_eq!(template.render(&[], false).expect("renders"), "<bos>|<eos>");
    }

    #[test]
    fn the_projects_exported_fixture_loads() {
        // The same path render_reference.py uses: the repository's tests/fixtures/tiny-moe.
        let dir = data_dir().join("../../../../../tests/fixtures/tiny-moe");
        let template = load_dir(&dir);
        assert_eq!(template.bos_token(), "<|bos|>");
        assert_eq!(
            template
                .render(&[message("user", " Hi ")], true)
                .expect("renders"),
            "<|bos|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn syntax_errors_report_their_line() {
        let err = ChatTemplate::new(
            "{% for m in messages %}\n{{ m.content }}\n{% if %}\n{% endfor %}".to_owned(),
            String::new(),
            String::new(),
        )
        .expect_err("must fail");
        assert!(
            matches!(err, ChatTemplateError::Compile { line: Some(3), .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("at line 3"), "{err}");
    }

    #[test]
    fn render_errors_report_their_line() {
        let template = inline("ok\n{{ messages[0].content.nope.deeper }}");
        let err = template
            .render(&[message("user", "x")], false)
            .expect_err("must fail");
        assert!(
            matches!(err, ChatTemplateError::Render { line: Some(2), .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("at line 2"), "{err}");
    }

    #[test]
    fn raise_exception_keeps_its_text_from_inside_macros_and_loops() {
        let template = inline(
            "{% macro check(m) %}{% if m.role == 'tool' %}{{ raise_exception('No \"' ~ m.role ~ '\" role, sorry: é 🎉') }}{% endif %}{% endmacro %}\n\
             {% for m in messages %}{{ check(m) }}{{ m.content }}{% endfor %}",
        );
        let err = template
            .render(&[message("user", "a"), message("tool", "b")], false)
            .expect_err("must fail");
        assert!(matches!(err, ChatTemplateError::Raised(_)), "{err:?}");
        assert_eq!(err.to_string(), "No \"tool\" role, sorry: é 🎉");
    }

    #[test]
    fn templates_are_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
        let template = Arc::new(inline("{% for m in messages %}{{ m.content }}{% endfor %}"));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let template = Arc::clone(&template);
                std::thread::spawn(move || {
                    template
                        .render(&[message("user", &i.to_string())], false)
                        .expect("renders")
                })
            })
            .collect();
        let outputs: Vec<String> = handles
            .into_iter()
            .map(|h| h.join().expect("thread finishes"))
            .collect();
        assert_eq!(outputs, ["0", "1", "2", "3"]);
    }

    #[test]
    fn generation_tags_inside_raw_blocks_and_comments_stay_text() {
        let template = inline(
            "{# {% generation %} #}{% raw %}{% generation %}{% endraw %}{%- generation -%} x {%- endgeneration %}",
        );
        assert_eq!(
            template.render(&[], false).expect("renders"),
            "{% generation %}x"
        );
    }

    #[test]
    fn strftime_matches_python_in_the_c_locale() {
        let format =
            "%Y-%m-%d %H:%M:%S %a %A %b %B %j %U %W %w %u %y %C %I %p %e|%-d|%-m|%F %T|%D|%c";
        for (seconds, expected) in [
            (
                0,
                "1970-01-01 00:00:00 Thu Thursday Jan January 001 00 00 4 4 70 19 12 AM  1|1|1|1970-01-01 00:00:00|01/01/70|Thu Jan  1 00:00:00 1970",
            ),
            (
                951_782_400,
                "2000-02-29 00:00:00 Tue Tuesday Feb February 060 09 09 2 2 00 20 12 AM 29|29|2|2000-02-29 00:00:00|02/29/00|Tue Feb 29 00:00:00 2000",
            ),
            (
                978_220_800,
                "2000-12-31 00:00:00 Sun Sunday Dec December 366 53 52 0 7 00 20 12 AM 31|31|12|2000-12-31 00:00:00|12/31/00|Sun Dec 31 00:00:00 2000",
            ),
            (
                -1,
                "1969-12-31 23:59:59 Wed Wednesday Dec December 365 52 52 3 3 69 19 11 PM 31|31|12|1969-12-31 23:59:59|12/31/69|Wed Dec 31 23:59:59 1969",
            ),
            (
                1_709_251_199,
                "2024-02-29 23:59:59 Thu Thursday Feb February 060 08 09 4 4 24 20 11 PM 29|29|2|2024-02-29 23:59:59|02/29/24|Thu Feb 29 23:59:59 2024",
            ),
            (
                4_102_444_800,
                "2100-01-01 00:00:00 Fri Friday Jan January 001 00 00 5 5 00 21 12 AM  1|1|1|2100-01-01 00:00:00|01/01/00|Fri Jan  1 00:00:00 2100",
            ),
        ] {
            assert_eq!(
                strftime(format, &CivilTime::from_unix(seconds, 0)),
                expected,
                "{seconds}"
            );
        }
        assert_eq!(
            strftime("100%% %q %", &CivilTime::from_unix(0, 0)),
            "100% %q %"
        );
    }

    #[test]
    fn floats_print_like_python_repr() {
        for (value, expected) in [
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123_456_789_012_345_680.0, "1.2345678901234568e+17"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (-0.0, "-0.0"),
            (2.5, "2.5"),
            (1e22, "1e+22"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (-1.5e-7, "-1.5e-07"),
            (100.0, "100.0"),
            (1_234_567.125, "1234567.125"),
        ] {
            assert_eq!(py_float_repr(value), expected);
        }
    }

    #[test]
    fn strings_repr_like_python() {
        for (text, expected) in [
            ("it's", r#""it's""#),
            ("a\"b", r#"'a"b'"#),
            ("both ' and \"", r#"'both \' and "'"#),
            (
                "\u{0}\u{7f}\u{a0}\u{200b}\u{2028}é漢🎉\u{e000}",
                r"'\x00\x7f\xa0\u200b\u2028é漢🎉\ue000'",
            ),
            ("\\", r"'\\'"),
        ] {
            let mut out = String::new();
            py_str_repr_into(&mut out, text);
            assert_eq!(out, expected);
        }
    }
}
